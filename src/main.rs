//! The `podar` command line: parses arguments, opens files, prints. All work is in the library.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod serve;

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use clap::{Parser, Subcommand};
    use indicatif::{ProgressBar, ProgressStyle};
    use podar::{Bundle, Error, HfFiles, Summary};
    use std::fs::File;
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    #[derive(Parser)]
    #[command(name = "podar", version, about = "Prune small language models for your own domain")]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Describe a model from its headers, without reading weights.
        Inspect {
            /// A .gguf file, a folder holding config.json, or a .safetensors file beside config.json.
            model: PathBuf,
            #[arg(long)]
            json: bool,
        },
        /// Perplexity on a text (consecutive windows of --ctx tokens, each scored on its own).
        Eval {
            model: PathBuf,
            /// Text file to score.
            #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
            text: Option<PathBuf>,
            /// A JSON list of token ids to score instead of text.
            #[arg(long)]
            ids: Option<PathBuf>,
            /// Window length in tokens [default: 512, or the model's context if shorter].
            #[arg(long)]
            ctx: Option<usize>,
            /// Keep only the first N ids.
            #[arg(long)]
            max_tokens: Option<usize>,
            #[arg(long)]
            json: bool,
        },
        /// Greedy generation.
        Generate {
            model: PathBuf,
            #[arg(long)]
            prompt: String,
            #[arg(long, default_value_t = 30)]
            max_tokens: usize,
            /// Wrap the prompt in the model's chat template.
            #[arg(long)]
            chat: bool,
        },
        /// Prune MLP neurons, attention heads and layers for a domain; write a Hugging Face folder or a GGUF.
        Prune(Box<PruneArgs>),
        /// Per-layer and per-neuron importance on calibration text, for charts and scripts.
        Importance {
            model: PathBuf,
            #[arg(long)]
            calib: PathBuf,
            /// Neuron score (wanda, flap, energy, optipfair, obs or a static one); energy, as prune's default.
            #[arg(long, default_value = "energy")]
            score: String,
            #[arg(long, default_value_t = 64)]
            calib_samples: usize,
            #[arg(long, default_value_t = 128)]
            calib_len: usize,
            #[arg(long)]
            json: bool,
        },
        /// Serve the browser app (www/, pkg/, models/ under --root) on 127.0.0.1.
        Serve {
            #[arg(long, default_value_t = 8080)]
            port: u16,
            #[arg(long, default_value = ".")]
            root: PathBuf,
        },
    }

    /// An error with the file it concerns, printed as one line.
    struct Failure {
        file: Option<PathBuf>,
        err: Error,
    }

    trait Context<T> {
        fn at(self, file: &Path) -> Result<T, Failure>;
    }

    impl<T, E: Into<Error>> Context<T> for Result<T, E> {
        fn at(self, file: &Path) -> Result<T, Failure> {
            self.map_err(|e| Failure { file: Some(file.to_path_buf()), err: e.into() })
        }
    }

    pub fn main() {
        // podar's kernels bring their own threads; candle's spinning pool would compete for the cores.
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        let cli = Cli::parse();
        if let Err(f) = run(cli) {
            match f.file {
                Some(p) => eprintln!("podar: {}: {}", p.display(), f.err),
                None => eprintln!("podar: {}", f.err),
            }
            std::process::exit(2);
        }
    }

    fn bar(len: u64, what: &str) -> ProgressBar {
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}<{eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    }

    /// Maps a whole file read-only.
    fn map(path: &Path) -> Result<memmap2::Mmap, Failure> {
        let f = File::open(path).at(path)?;
        // SAFETY: the map is read-only and lives while we read from it; podar never writes to model
        // files, and a user truncating the file underneath us is outside what we can guard against.
        unsafe { memmap2::Mmap::map(&f) }.at(path)
    }

    enum ModelPath {
        Gguf(PathBuf),
        Hf { dir: PathBuf, shards: Vec<PathBuf> },
    }

    fn resolve(path: &Path) -> Result<ModelPath, Failure> {
        let bad = |msg: &str| Failure { file: Some(path.to_path_buf()), err: Error::Input(msg.to_string()) };
        if !path.exists() {
            return Err(bad("no such file or folder"));
        }
        if path.is_dir() {
            if !path.join("config.json").exists() {
                return Err(bad("the folder holds no config.json"));
            }
            let index = path.join("model.safetensors.index.json");
            let shards = if index.exists() {
                let bytes = std::fs::read(&index).at(&index)?;
                podar::safetensors::shard_names(&bytes).at(&index)?.into_iter().map(|n| path.join(n)).collect()
            } else if path.join("model.safetensors").exists() {
                vec![path.join("model.safetensors")]
            } else {
                return Err(bad("the folder holds neither model.safetensors nor model.safetensors.index.json"));
            };
            return Ok(ModelPath::Hf { dir: path.to_path_buf(), shards });
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("gguf") => Ok(ModelPath::Gguf(path.to_path_buf())),
            Some("safetensors") => {
                let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                if !dir.join("config.json").exists() {
                    return Err(bad("no config.json beside this .safetensors file"));
                }
                Ok(ModelPath::Hf { dir, shards: vec![path.to_path_buf()] })
            }
            _ => Err(bad("expected a .gguf file, a .safetensors file or a model folder")),
        }
    }

    fn read_opt(p: PathBuf) -> Result<Option<Vec<u8>>, Failure> {
        if p.exists() {
            Ok(Some(std::fs::read(&p).at(&p)?))
        } else {
            Ok(None)
        }
    }

    fn inspect(path: &Path) -> Result<Summary, Failure> {
        match resolve(path)? {
            ModelPath::Gguf(p) => {
                let m = map(&p)?;
                podar::inspect_gguf(Cursor::new(&m[..])).at(&p)
            }
            ModelPath::Hf { dir, shards } => {
                let cfg_path = dir.join("config.json");
                let cfg = std::fs::read(&cfg_path).at(&cfg_path)?;
                let maps = shards.iter().map(|s| map(s)).collect::<Result<Vec<_>, _>>()?;
                podar::inspect_hf(&cfg, maps.iter().map(|m| Cursor::new(&m[..])).collect()).at(path)
            }
        }
    }

    fn load(path: &Path) -> Result<Bundle, Failure> {
        let pb = bar(0, "loading");
        let mut progress = |d: usize, n: usize| {
            pb.set_length(n as u64);
            pb.set_position(d as u64);
            true
        };
        let b = match resolve(path)? {
            ModelPath::Gguf(p) => {
                let m = map(&p)?;
                podar::load_gguf(Cursor::new(&m[..]), &mut progress).at(&p)?
            }
            ModelPath::Hf { dir, shards } => {
                let cfg_path = dir.join("config.json");
                let maps = shards.iter().map(|s| map(s)).collect::<Result<Vec<_>, _>>()?;
                let files = HfFiles {
                    config: std::fs::read(&cfg_path).at(&cfg_path)?,
                    tokenizer_json: read_opt(dir.join("tokenizer.json"))?,
                    tokenizer_config: read_opt(dir.join("tokenizer_config.json"))?,
                    generation_config: read_opt(dir.join("generation_config.json"))?,
                    shards: maps.iter().map(|m| Cursor::new(&m[..])).collect(),
                };
                podar::load_hf(files, &mut progress).at(path)?
            }
        };
        pb.finish_and_clear();
        Ok(b)
    }

    /// Peak resident memory of this process (Linux: VmHWM), if known.
    fn peak_rss() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    #[derive(clap::Args)]
    struct PruneArgs {
        model: PathBuf,
        /// Domain text for calibration (data-driven scores and recovery).
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Fraction of MLP neurons to remove, e.g. 0.2.
        #[arg(long)]
        mlp: Option<f64>,
        /// MLP width to keep instead of a fraction.
        #[arg(long)]
        mlp_size: Option<usize>,
        /// maw, vow, pon, l2 (static) or wanda, flap, energy, optipfair, obs (need --calib). Default: energy with --calib, else maw.
        #[arg(long)]
        score: Option<String>,
        /// Skip the ridge re-fit of the down projections.
        #[arg(long)]
        no_recover: bool,
        /// Ridge strength of recovery, relative to the Gram matrix's mean diagonal; it also shrinks the
        /// re-fit towards the original weights. Default: 0.3.
        #[arg(long)]
        ridge: Option<f64>,
        /// Error correction of recovery, 0..1: also steer each re-fitted layer towards the unpruned
        /// model's output by this fraction of the error the pruned layers before it left (0: off, and
        /// faster, as the unpruned model no longer runs beside the pruned one). Default: 0.5.
        #[arg(long)]
        correct: Option<f64>,
        /// The number format of calibration's matrix products: f32, or bf16 (both operands rounded
        /// to bf16, sums in f32; with AVX-512 BF16 where the CPU has it, elsewhere rounded the same way
        /// before f32 products). Default: auto, bf16 where that is faster (AMD's AVX-512 BF16), else
        /// f32 (the page's).
        #[arg(long, value_name = "auto|f32|bf16")]
        calib_precision: Option<String>,
        /// Round the kept MLP width down to a multiple of 32, 64, 128 or 256.
        #[arg(long)]
        divisor: Option<usize>,
        /// Remove N layers, those whose output differs least from their input on the calibration text.
        #[arg(long)]
        drop_layers: Option<usize>,
        /// Remove these layers (comma-separated indices).
        #[arg(long, value_delimiter = ',')]
        drop_layers_at: Option<Vec<usize>>,
        /// Remove the contiguous block of N layers whose input and output residual streams are
        /// closest in angle on the calibration text.
        #[arg(long)]
        drop_block: Option<usize>,
        /// Fraction of KV heads (each with its query heads) to remove from every layer.
        #[arg(long)]
        heads: Option<f64>,
        /// Gather every layer's statistics on the unpruned model (as OptiPFair does) instead of
        /// calibrating each layer on the already-pruned layers before it.
        #[arg(long)]
        parallel_calib: bool,
        #[arg(long, default_value_t = 64)]
        calib_samples: usize,
        #[arg(long, default_value_t = 128)]
        calib_len: usize,
        /// f32, f16 or bf16 (hf); f32, f16 or q8_0 (gguf).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// hf (a Hugging Face folder) or gguf (DIR/model.gguf for llama.cpp).
        #[arg(long, default_value = "hf")]
        format: String,
        /// Output folder: new, or empty (see --force).
        #[arg(long)]
        out: PathBuf,
        /// Write into a folder that already holds files: model files left there by an earlier
        /// run (*.safetensors, their index, *.gguf) are removed first, so they cannot mix with the new
        /// model. Never allowed on the folder of the input model.
        #[arg(long)]
        force: bool,
        /// Text files to evaluate before and after (perplexity, ctx 512, or the model's context if shorter).
        #[arg(long)]
        eval: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    }

    /// SHA-256 of the model's weight files (the GGUF, or the safetensors shards in order).
    fn source_sha256(path: &Path) -> Result<String, Failure> {
        use sha2::{Digest, Sha256};
        let files = match resolve(path)? {
            ModelPath::Gguf(p) => vec![p],
            ModelPath::Hf { shards, .. } => shards,
        };
        let mut h = Sha256::new();
        for f in files {
            let m = map(&f)?;
            h.update(&m[..]);
        }
        Ok(format!("{:x}", h.finalize()))
    }

    /// Perplexity (ctx 512 or the model's context) of `m` on ids read from `file` (for error messages).
    fn ppl_of(m: &podar::Model, ids: &[u32], file: &Path) -> Result<f64, Failure> {
        let pb = bar(0, "eval");
        // 512 tokens, or the model's context if shorter.
        let ctx = m.cfg.max_position_embeddings.clamp(2, 512);
        let r = podar::perplexity(m, ids, ctx, &mut |d, n| {
            pb.set_length(n as u64);
            pb.set_position(d as u64);
            true
        })
        .at(file)?;
        pb.finish_and_clear();
        Ok(r.perplexity)
    }

    /// A UTF-8 text file, without a leading byte-order mark (as browsers read files, so that the
    /// page and the command line calibrate on the same tokens).
    fn read_text(p: &Path) -> Result<String, Failure> {
        let mut text = String::from_utf8(std::fs::read(p).at(p)?).map_err(|e| Failure {
            file: Some(p.to_path_buf()),
            err: Error::Input(format!(
                "not UTF-8 text (byte {} is not valid UTF-8); save the file as UTF-8",
                e.utf8_error().valid_up_to()
            )),
        })?;
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        Ok(text)
    }

    /// A folder on disk as a place to write a model's files.
    struct DirSink<'a>(&'a Path);

    impl podar::zip::FileSink for DirSink<'_> {
        fn file(
            &mut self,
            name: &str,
            body: &mut dyn FnMut(&mut dyn std::io::Write) -> podar::Result<()>,
        ) -> podar::Result<()> {
            let path = self.0.join(name);
            let mut w = std::io::BufWriter::new(File::create(&path)?);
            let r = body(&mut w).and_then(|()| Ok(std::io::Write::flush(&mut w)?));
            if r.is_err() {
                // No half-written file is left behind to be taken for a model.
                drop(w);
                let _ = std::fs::remove_file(&path);
            }
            r
        }
    }

    /// Files of an earlier model in an output folder, which would mix with a new one.
    fn stale_model_files(out: &Path) -> Result<Vec<PathBuf>, Failure> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(out).at(out)? {
            let p = e.at(out)?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            if p.is_file() && [".safetensors", ".safetensors.index.json", ".gguf"].iter().any(|x| name.ends_with(x)) {
                found.push(p);
            }
        }
        Ok(found)
    }

    /// Refuses an output folder that is a file, holds the input model, or (without `force`) holds files.
    fn check_out(out: &Path, model: &Path, force: bool) -> Result<(), Failure> {
        let bad = |m: String| Failure { file: Some(out.to_path_buf()), err: Error::Input(m) };
        if !out.exists() {
            return Ok(());
        }
        if !out.is_dir() {
            return Err(bad("--out names a file; give a folder to write the model into".into()));
        }
        let (o, m) = (out.canonicalize().at(out)?, model.canonicalize().at(model)?);
        let model_dir = if m.is_dir() { m.clone() } else { m.parent().map(Path::to_path_buf).unwrap_or_default() };
        if o == model_dir || m.starts_with(&o) {
            return Err(bad(
                "--out is the folder of the input model, which would be overwritten; choose another".into()
            ));
        }
        if !force && std::fs::read_dir(out).at(out)?.next().is_some() {
            return Err(bad(
                "--out is not empty; choose a new folder, or add --force to replace the model files in it".into(),
            ));
        }
        Ok(())
    }

    fn prune(a: PruneArgs) -> Result<(), Failure> {
        check_out(&a.out, &a.model, a.force)?;
        // The output folder is made first, so that a path that cannot be written fails at once, not
        // after the prune; if it is new and the job fails, it is removed with what the job wrote.
        let made = !a.out.exists();
        std::fs::create_dir_all(&a.out).at(&a.out)?;
        let r = prune_into(&a);
        if r.is_err() && made {
            // The folder is this job's own: nothing of a failed job stays in it.
            let _ = std::fs::remove_dir_all(&a.out);
        }
        r
    }

    fn prune_into(a: &PruneArgs) -> Result<(), Failure> {
        use podar::job::{EvalPair, OutputFormat, Record};
        use podar::prune::{PruneOptions, Score};
        let t0 = Instant::now();
        let bad = |p: &Path, m: String| Failure { file: Some(p.to_path_buf()), err: Error::Input(m) };
        let format = OutputFormat::parse(&a.format, &a.dtype).map_err(|e| bad(&a.out, format!("--{e}")))?;
        let score = match (&a.score, &a.calib) {
            (Some(s), _) => Score::parse(s).at(&a.model)?,
            (None, Some(_)) => Score::Energy,
            (None, None) => Score::Maw,
        };
        let defaults = PruneOptions::default();
        if (a.no_recover || a.calib.is_none()) && (a.ridge.is_some() || a.correct.is_some()) {
            let why = if a.no_recover { "--no-recover" } else { "there is no --calib" };
            eprintln!("podar: warning: --ridge and --correct tune recovery, which does not run: {why}");
        }
        let opts = PruneOptions {
            mlp_fraction: a.mlp,
            mlp_size: a.mlp_size,
            divisor: a.divisor,
            score,
            recover: !a.no_recover && a.calib.is_some(),
            ridge: a.ridge.unwrap_or(defaults.ridge),
            calib_samples: a.calib_samples,
            calib_len: a.calib_len,
            drop_layers: a.drop_layers,
            drop_layers_at: a.drop_layers_at.clone(),
            drop_block: a.drop_block,
            sequential: !a.parallel_calib,
            heads: a.heads,
            correct: a.correct.unwrap_or(defaults.correct),
            calib_precision: match a.calib_precision.as_deref() {
                None | Some("auto") if podar::kernels::bf16_faster() => podar::prune::Precision::Bf16,
                None | Some("auto") => podar::prune::Precision::F32,
                Some(p) => podar::prune::Precision::parse(p).at(&a.model)?,
            },
        };
        let mut b = load(&a.model)?;
        // Every size and layer choice is checked before any long computation, and so is what a
        // GGUF needs from the source (its tokenizer).
        for w in podar::job::plan(&b.model.cfg, &opts, format).at(&a.model)?.warnings {
            eprintln!("podar: warning: {w}");
        }
        if let OutputFormat::Gguf(_) = format {
            b.gguf_tokenizer_metadata().at(&a.model)?;
        }
        let calib_ids = match &a.calib {
            Some(p) => {
                let text = read_text(p)?;
                // Calibration reads the text's first windows only.
                let want = a.calib_samples.saturating_mul(a.calib_len);
                let ids = b.tokenizer().at(&a.model)?.encode_prefix(&text, want).at(p)?.0;
                Some(podar::calib::windows(&ids, a.calib_samples, a.calib_len).at(p)?)
            }
            None => None,
        };
        let layer_choice = a.drop_layers.is_some() || a.drop_block.is_some();
        if a.calib.is_none() && (score.needs_data() || a.heads.is_some() || layer_choice) {
            return Err(bad(
                &a.model,
                format!("{} need calibration text (--calib)", {
                    let mut what = Vec::new();
                    if score.needs_data() {
                        what.push(format!("score `{score}`"));
                    }
                    if a.heads.is_some() {
                        what.push("--heads".to_string());
                    }
                    if a.drop_layers.is_some() {
                        what.push("--drop-layers".to_string());
                    }
                    if a.drop_block.is_some() {
                        what.push("--drop-block".to_string());
                    }
                    what.join(", ")
                }),
            ));
        }
        if a.calib.is_none() && (a.mlp.is_some_and(|f| f > 0.0) || a.mlp_size.is_some()) {
            eprintln!("podar: warning: without --calib only static weight scores are possible; they damage small models badly (see README)");
        }
        // Evaluation texts are tokenized once and scored before and after.
        let eval_ids: Vec<Vec<u32>> = a
            .eval
            .iter()
            .map(|f| {
                let text = read_text(f)?;
                b.tokenizer().at(&a.model)?.encode(&text, false).at(f)
            })
            .collect::<Result<_, _>>()?;
        let before: Vec<f64> =
            a.eval.iter().zip(&eval_ids).map(|(f, ids)| ppl_of(&b.model, ids, f)).collect::<Result<_, _>>()?;
        let t_prune = Instant::now();
        let pb = bar(0, "prune");
        // The original is consumed layer by layer: only its configuration is needed afterwards.
        let source_cfg = b.model.cfg.clone();
        let source = b.model;
        let pruned = podar::prune::prune_owned(source, calib_ids.as_deref(), &opts, &mut |stage, d, n| {
            pb.set_message(stage.to_string());
            pb.set_length(n as u64);
            pb.set_position(d as u64);
            crate::release_free_memory();
            true
        })
        .at(&a.model)?;
        b.model = pruned.model.clone();
        pb.finish_and_clear();
        let prune_secs = t_prune.elapsed().as_secs_f64();
        for f in stale_model_files(&a.out)? {
            std::fs::remove_file(&f).at(&f)?;
        }
        podar::job::write_model(&b, &pruned.model, format, &mut DirSink(&a.out)).at(&a.out)?;
        let after: Vec<f64> =
            a.eval.iter().zip(&eval_ids).map(|(f, ids)| ppl_of(&pruned.model, ids, f)).collect::<Result<_, _>>()?;
        let evals: Vec<EvalPair> = a
            .eval
            .iter()
            .zip(before.iter().zip(&after))
            .map(|(f, (&before, &after))| EvalPair {
                name: f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                before,
                after,
            })
            .collect();
        let secs = t0.elapsed().as_secs_f64();
        let source_name = a.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let record = Record {
            source_name: &source_name,
            source_sha256: Some(source_sha256(&a.model)?),
            source: &source_cfg,
            pruned: &pruned,
            options: &opts,
            calib_ids: calib_ids.as_deref(),
            evals: &evals,
            prune_seconds: prune_secs,
            total_seconds: secs,
        };
        podar::job::write_record(&record, &mut DirSink(&a.out)).at(&a.out)?;
        let (pb_, pa) = (source_cfg.parameter_count(), pruned.model.parameter_count());
        if a.json {
            println!(
                "{}",
                serde_json::json!({"parameters_before": pb_, "parameters_after": pa, "seconds": secs, "out": a.out,
                    "peak_rss_bytes": peak_rss(), "perplexity": evals})
            );
        } else {
            for e in &evals {
                eprintln!("perplexity {}: {:.3} -> {:.3}", e.name, e.before, e.after);
            }
            eprintln!(
                "wrote {} ({:.2}M -> {:.2}M parameters) in {secs:.1} s",
                a.out.display(),
                pb_ as f64 / 1e6,
                pa as f64 / 1e6
            );
        }
        Ok(())
    }

    fn run(cli: Cli) -> Result<(), Failure> {
        match cli.cmd {
            Cmd::Inspect { model, json } => {
                let s = inspect(&model)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s).at(&model)?);
                } else {
                    println!("{} ({}, {})", s.architecture, s.format, s.dtype);
                    println!("  layers {}, hidden {}, MLP {}", s.num_hidden_layers, s.hidden_size, s.intermediate_size);
                    println!(
                        "  heads {} / {} KV, head_dim {}",
                        s.num_attention_heads, s.num_key_value_heads, s.head_dim
                    );
                    println!("  vocabulary {}, parameters {:.2}M", s.vocab_size, s.parameters as f64 / 1e6);
                }
            }
            Cmd::Eval { model, text, ids: ids_path, ctx, max_tokens, json } => {
                let t0 = Instant::now();
                let b = load(&model)?;
                let mut ids = match (&text, &ids_path) {
                    (Some(t), _) => {
                        let s = read_text(t)?;
                        b.tokenizer().at(&model)?.encode_prefix(&s, max_tokens.unwrap_or(usize::MAX)).at(t)?.0
                    }
                    (None, Some(p)) => {
                        let bytes = std::fs::read(p).at(p)?;
                        serde_json::from_slice::<Vec<u32>>(&bytes).at(p)?
                    }
                    (None, None) => unreachable!("clap requires --text or --ids"),
                };
                let src = text.clone().or(ids_path.clone()).unwrap_or(model.clone());
                let max_ctx = b.model.cfg.max_position_embeddings;
                let ctx = match ctx {
                    Some(c) if c > max_ctx => {
                        return Err(podar::Error::Input(format!(
                            "--ctx {c} is longer than the model's context of {max_ctx} tokens"
                        )))
                        .at(&model)
                    }
                    Some(c) => c,
                    None => max_ctx.clamp(2, 512),
                };
                if let Some(n) = max_tokens {
                    ids.truncate(n);
                    // --max-tokens is to blame only when it cut the text short.
                    if ids.len() < ctx && ids.len() == n {
                        return Err(podar::Error::Input(format!(
                            "--max-tokens {n} keeps {} tokens; one window of --ctx {ctx} needs at least {ctx}",
                            ids.len()
                        )))
                        .at(&src);
                    }
                }
                let t1 = Instant::now();
                let pb = bar(0, "eval");
                let r = podar::perplexity(&b.model, &ids, ctx, &mut |d, n| {
                    pb.set_length(n as u64);
                    pb.set_position(d as u64);
                    true
                })
                .at(&src)?;
                pb.finish_and_clear();
                if !r.perplexity.is_finite() {
                    return Err(podar::Error::Input(
                        "the model's log-likelihoods are not finite (NaN or infinite): its weights or config are broken"
                            .into(),
                    ))
                    .at(&model);
                }
                let secs = t1.elapsed().as_secs_f64();
                if json {
                    let v = serde_json::json!({"perplexity": r.perplexity, "tokens": r.tokens,
                        "predictions": r.predictions, "seconds": secs, "load_seconds": (t1 - t0).as_secs_f64(), "peak_rss_bytes": peak_rss()});
                    println!("{v}");
                } else {
                    println!(
                        "perplexity {:.4} over {} predictions ({} tokens read) in {:.1} s ({:.0} tokens/s)",
                        r.perplexity,
                        r.predictions,
                        r.tokens,
                        secs,
                        (r.tokens / ctx * ctx) as f64 / secs
                    );
                }
            }
            Cmd::Generate { model, prompt, max_tokens, chat } => {
                let b = load(&model)?;
                let tok = b.tokenizer().at(&model)?;
                let text = if chat { tok.apply_chat_template(&prompt).at(&model)? } else { prompt };
                let ids = tok.encode(&text, false).at(&model)?;
                let mut out = Vec::new();
                let mut shown = String::new();
                let stop = b.stop_ids();
                let new = podar::greedy(&b.model, &ids, max_tokens, &stop, &mut |id| {
                    out.push(id);
                    if let Ok(s) = tok.decode(&out) {
                        if s.len() >= shown.len() && s.starts_with(&shown) {
                            print!("{}", &s[shown.len()..]);
                            use std::io::Write;
                            let _ = std::io::stdout().flush();
                            shown = s;
                        }
                    }
                    true
                })
                .at(&model)?;
                println!();
                if new.len() < max_tokens && !new.last().is_some_and(|id| stop.contains(id)) {
                    eprintln!(
                        "podar: stopped at the model's context of {} tokens",
                        b.model.cfg.max_position_embeddings
                    );
                }
            }
            Cmd::Prune(a) => prune(*a)?,
            Cmd::Importance { model, calib, score, calib_samples, calib_len, json } => {
                let score = podar::prune::Score::parse(&score).at(&model)?;
                let b = load(&model)?;
                let text = read_text(&calib)?;
                let ids = b.tokenizer().at(&model)?.encode(&text, false).at(&calib)?;
                let ids = podar::calib::windows(&ids, calib_samples, calib_len).at(&calib)?;
                let pb = bar(0, "calibrate");
                let imp = podar::prune::importance(&b.model, &ids, calib_samples, calib_len, score, &mut |d, n| {
                    pb.set_length(n as u64);
                    pb.set_position(d as u64);
                    true
                })
                .at(&model)?;
                pb.finish_and_clear();
                if json {
                    println!("{}", serde_json::to_string(&imp).at(&model)?);
                } else {
                    println!("layer  influence  mean neuron score");
                    for (l, (inf, s)) in imp.layer_influence.iter().zip(&imp.mlp).enumerate() {
                        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
                        println!("{l:>5}  {inf:>9.5}  {mean:.4e}");
                    }
                }
            }
            Cmd::Serve { port, root } => {
                crate::serve::serve(&root, port).at(&root)?;
            }
        }
        Ok(())
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// Hands the allocator's free pages back to the system (called after each calibrated layer): the
/// activations of one layer are freed before the next layer's exist, but glibc keeps the pages,
/// and scattered between long-lived pruned weights they would add up to a second working set.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
