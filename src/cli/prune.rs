//! `podar prune`: its arguments, the job from files to an output folder, and the folder's checks.

use super::*;
use podar::model::LayerStore;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub(super) struct PruneArgs {
    model: PathBuf,
    /// Domain text for calibration (data-driven scores and recovery).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Fraction of MLP neurons to remove from every layer, e.g. 0.2 (the page's default). A prune
    /// needs at least one of --mlp, --mlp-size, --heads, --drop-layers, --drop-layers-at, --drop-block.
    #[arg(long)]
    mlp: Option<f64>,
    /// MLP width to keep instead of a fraction.
    #[arg(long)]
    mlp_size: Option<usize>,
    /// uniform: every layer keeps the same MLP width. per-layer: each layer keeps as many neurons
    /// as their measured output energy earns (one more calibration pass), the same total, every
    /// layer losing between half and 1.5 times the uniform cut; written as a GGUF of llama.cpp's
    /// `deci` architecture (Llama models, --format gguf).
    #[arg(long, value_name = "uniform|per-layer", default_value = "uniform")]
    mlp_widths: String,
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
    /// model's output by this fraction of the error the pruned layers before it left, as
    /// --error-estimate learns it (by default from the re-fit residuals, at no extra pass; 0: off).
    /// Default: 0.5.
    #[arg(long)]
    correct: Option<f64>,
    /// How error correction learns the error it steers against. residuals (default): the sum of
    /// the earlier pruned layers' re-fit residuals on the calibration tokens, carried on as the
    /// residual connections carry it (no extra pass). stream: measured by running the unpruned
    /// model beside the pruned one (one more pass of every layer; closer, and slower).
    #[arg(long, value_name = "residuals|stream")]
    error_estimate: Option<String>,
    /// The number format of calibration's matrix products: f32, or bf16 (both operands rounded
    /// to bf16, sums in f32; with AVX-512 BF16 where the CPU has it, elsewhere rounded the same way
    /// before f32 products). auto: bf16 where one product timed both ways at the start ran at least
    /// 1.15× as fast in bf16 (AMD's AVX-512 BF16 does; the Intel Xeons measured do not), else f32
    /// (the page's). podar-report.json keeps the timing.
    #[arg(long, value_name = "auto|f32|bf16", default_value = "auto")]
    calib_precision: String,
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
    /// Calibration windows taken from the start of --calib.
    #[arg(long, default_value_t = 64)]
    calib_samples: usize,
    /// Tokens per calibration window (at most the model's context).
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
    /// Print the job's summary as JSON on stdout (parameters before and after, seconds, out, and
    /// the --eval perplexities).
    #[arg(long)]
    json: bool,
    /// on: read the model's layers from its files as they are used (what must fit in memory is
    /// then about one layer, the calibration streams and recovery's matrices, not the model);
    /// off: load the whole model first; auto: on when the model in f32 would take more than half
    /// the memory the system has available now. The pruned weights are the same either way, the
    /// perplexities within rounding.
    #[arg(long, value_name = STREAM_VALUES, default_value = "auto")]
    stream: String,
}

/// SHA-256 of the model's weight files (the GGUF, or the safetensors shards in order), read in
/// pieces (a mapped file would count towards this process's memory as it is read).
fn source_sha256(path: &Path) -> Result<String, Failure> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let files = match resolve(path)? {
        ModelPath::Gguf(p) => vec![p],
        ModelPath::Hf { shards, .. } => shards,
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut file = File::open(&f).at(&f)?;
        loop {
            let n = file.read(&mut buf).at(&f)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Perplexity (ctx 512 or the model's context) of `m` on ids read from `file` (for error messages).
fn ppl_of(m: &podar::Model, layers: &mut dyn LayerStore, ids: &[u32], file: &Path) -> Result<f64, Failure> {
    let pb = bar(0, "eval");
    // 512 tokens, or the model's context if shorter.
    let ctx = m.cfg.max_position_embeddings.clamp(2, 512);
    let r = podar::model::eval::perplexity_layered(m, layers, ids, ctx, &mut |d, n| {
        pb.set_length(n as u64);
        pb.set_position(d as u64);
        true
    })
    .at(file)?;
    pb.finish_and_clear();
    Ok(r.perplexity)
}

/// A folder on disk as a place to write a model's files.
struct DirSink<'a>(&'a Path);

impl podar::formats::zip::FileSink for DirSink<'_> {
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
        return Err(bad("--out is the folder of the input model, which would be overwritten; choose another".into()));
    }
    if !force && std::fs::read_dir(out).at(out)?.next().is_some() {
        return Err(bad(
            "--out is not empty; choose a new folder, or add --force to replace the model files in it".into()
        ));
    }
    Ok(())
}

pub(super) fn prune(a: PruneArgs) -> Result<(), Failure> {
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
    use podar::export::job::{EvalPair, OutputFormat, Record, Seconds};
    use podar::prune::{PruneOptions, Score};
    let t0 = Instant::now();
    let bad = |p: &Path, m: String| Failure { file: Some(p.to_path_buf()), err: Error::Input(m) };
    let widths = [a.mlp.is_some(), a.mlp_size.is_some(), a.heads.is_some()];
    let depths = [a.drop_layers.is_some(), a.drop_layers_at.is_some(), a.drop_block.is_some()];
    if !widths.iter().chain(&depths).any(|&x| x) {
        return Err(bad(
            &a.model,
            "nothing to prune: give --mlp F (e.g. 0.2, as the page), --mlp-size N, --heads F, --drop-layers N, \
             --drop-layers-at I,J or --drop-block N"
                .into(),
        ));
    }
    let format = OutputFormat::parse(&a.format, &a.dtype).map_err(|e| bad(&a.out, format!("--{e}")))?;
    let score = match (&a.score, &a.calib) {
        (Some(s), _) => Score::parse(s).at(&a.model)?,
        (None, Some(_)) => Score::Energy,
        (None, None) => Score::Maw,
    };
    let defaults = PruneOptions::default();
    let error_estimate = match a.error_estimate.as_deref() {
        None => defaults.error_estimate,
        Some(e) => podar::prune::calib::ErrorEstimate::parse(e).at(&a.model)?,
    };
    if (a.no_recover || a.calib.is_none()) && (a.ridge.is_some() || a.correct.is_some() || a.error_estimate.is_some()) {
        let why = if a.no_recover { "--no-recover" } else { "there is no --calib" };
        eprintln!("podar: warning: --ridge, --correct and --error-estimate tune recovery, which does not run: {why}");
    }
    if a.error_estimate.is_some() && a.correct == Some(0.0) {
        eprintln!("podar: warning: --error-estimate has nothing to do with --correct 0 (error correction off)");
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
        error_estimate,
        calib_precision: podar::prune::Precision::parse(&a.calib_precision).at(&a.model)?,
        mlp_widths: podar::prune::Widths::parse(&a.mlp_widths).at(&a.model)?,
    };
    // The source's hash reads its files once more: on a thread of its own from the start, beside
    // the job, rather than after it (where it waits behind the written model's disk writes).
    let source_hash = {
        let p = a.model.clone();
        std::thread::spawn(move || source_sha256(&p))
    };
    // The model's layers, in memory or read from its files as they are used; `b.model` holds the rest.
    let t_load = Instant::now();
    let (mut b, mut layers) = load_layers(&a.model, &a.stream)?;
    // Every size and layer choice is checked before any long computation, and so is what a
    // GGUF needs from the source (its tokenizer).
    let load_secs = t_load.elapsed().as_secs_f64();
    for w in podar::export::job::plan(&b.model.cfg, &opts, format).at(&a.model)?.warnings {
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
            Some(podar::prune::calib::windows(&ids, a.calib_samples, a.calib_len).at(p)?)
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
        eprintln!("podar: warning: without --calib only static weight scores are possible; they damage small models badly (see docs/pruning.md)");
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
    // The --eval texts' perplexities under a model whose layers are in `layers`.
    let ppls = |m: &podar::Model, layers: &mut dyn LayerStore| -> Result<Vec<f64>, Failure> {
        a.eval.iter().zip(&eval_ids).map(|(f, ids)| ppl_of(m, layers, ids, f)).collect()
    };
    let t_eval = Instant::now();
    let before = ppls(&b.model, layers.as_mut())?;
    let mut eval_secs = t_eval.elapsed().as_secs_f64();
    let t_prune = Instant::now();
    let pb = bar(0, "prune");
    // The original is consumed layer by layer: only its configuration is needed afterwards.
    let source_cfg = b.model.cfg.clone();
    let source = b.model;
    let pruned = podar::prune::prune_in(source, layers.as_mut(), calib_ids.as_deref(), &opts, &mut |stage, d, n| {
        pb.set_message(stage.to_string());
        pb.set_length(n as u64);
        pb.set_position(d as u64);
        // Calibration's layers free and allocate working sets of the same sizes, which the
        // allocator reuses in place; handing the pages back after each layer would only make the
        // next layer fault them in again (a quarter of the job's time). Its freed memory goes back
        // once it is done, before the pruned model is written.
        if stage != "calibrate" || d == n {
            super::release_free_memory();
        }
        true
    })
    .at(&a.model)?;
    b.model = pruned.model.clone();
    pb.finish_and_clear();
    let prune_secs = t_prune.elapsed().as_secs_f64();
    for f in stale_model_files(&a.out)? {
        std::fs::remove_file(&f).at(&f)?;
    }
    let t_write = Instant::now();
    podar::export::job::write_model(&b, &pruned.model, layers.as_mut(), format, &mut DirSink(&a.out)).at(&a.out)?;
    let write_secs = t_write.elapsed().as_secs_f64();
    let t_eval = Instant::now();
    let after = ppls(&pruned.model, layers.as_mut())?;
    eval_secs += t_eval.elapsed().as_secs_f64();
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
    let seconds = Seconds {
        load: Some(load_secs),
        eval: (!a.eval.is_empty()).then_some(eval_secs),
        write: Some(write_secs),
        total: secs,
        ..Seconds::of_prune(prune_secs, pruned.recovery_seconds)
    };
    let source_name = a.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let record = Record {
        source_name: &source_name,
        source_sha256: Some(source_hash.join().unwrap_or_else(|_| source_sha256(&a.model))?),
        source: &source_cfg,
        pruned: &pruned,
        options: &opts,
        calib_ids: calib_ids.as_deref(),
        evals: &evals,
        seconds,
    };
    podar::export::job::write_record(&record, &mut DirSink(&a.out)).at(&a.out)?;
    let (pb_, pa) = (source_cfg.parameter_count(), pruned.model.parameter_count());
    if a.json {
        println!(
            "{}",
            serde_json::json!({"parameters_before": pb_, "parameters_after": pa, "seconds": secs, "stages": seconds, "out": a.out,
                "peak_rss_bytes": peak_rss(), "perplexity": evals})
        );
    } else {
        for e in &evals {
            eprintln!("perplexity {}: {:.3} -> {:.3}", e.name, e.before, e.after);
        }
        eprintln!(
            "wrote {} ({:.2}M -> {:.2}M parameters) in {secs:.1} s: load {load_secs:.1} s, calibration {:.1} s, \
             recovery {:.1} s, write {write_secs:.1} s{}",
            a.out.display(),
            pb_ as f64 / 1e6,
            pa as f64 / 1e6,
            seconds.calibration,
            seconds.recovery,
            seconds.eval.map(|e| format!(", scoring --eval {e:.1} s")).unwrap_or_default()
        );
    }
    Ok(())
}
