//! The command line's face: parses arguments, opens files (mmap for models), prints, and serves the
//! page (`serve`). All work is in the library below; nothing here computes. May import any layer.

mod prune;
mod serve;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use podar::{Bundle, Error, HfFiles, Summary};
use prune::{prune, PruneArgs};
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "podar", version, about = "Prune small language models for your own domain")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// x86-64 matrix kernels: auto (the widest vectors the CPU has: AVX-512 where it is) or avx2
    /// (AVX2 and FMA only, the path of a CPU without AVX-512; also PODAR_KERNELS=avx2).
    #[arg(long, global = true, value_name = "auto|avx2", default_value = "auto", value_parser = ["auto", "avx2"])]
    kernels: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Describe a model from its headers, without reading weights.
    Inspect {
        /// A .gguf file, a folder holding config.json, or a .safetensors file beside config.json.
        model: PathBuf,
        /// Print the summary as JSON with transformers' config names.
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
        /// Print {perplexity, tokens, predictions, seconds, …} as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// on: read the model's layers from its files as they are used (a model larger than memory);
        /// off: load it whole; auto: on when the model in f32 would take more than half the memory
        /// available now. The perplexity is the same within rounding.
        #[arg(long, value_name = STREAM_VALUES, default_value = "auto")]
        stream: String,
    },
    /// Greedy generation.
    Generate {
        model: PathBuf,
        /// The text to continue (with --chat, the user's message).
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 30)]
        max_tokens: usize,
        /// Wrap the prompt in the model's chat template.
        #[arg(long)]
        chat: bool,
        /// on: read the model's layers from its files as they are used, once for the prompt and
        /// once for each new token (a model larger than memory, slowly); off: load it whole; auto:
        /// on when the model in f32 would take more than half the memory available now.
        #[arg(long, value_name = STREAM_VALUES, default_value = "auto")]
        stream: String,
    },
    /// Prune MLP neurons, attention heads and layers for a domain; write a Hugging Face folder or a GGUF.
    Prune(Box<PruneArgs>),
    /// Per-layer and per-neuron importance on calibration text, for charts and scripts.
    Importance {
        model: PathBuf,
        /// Domain text to score the layers and neurons on.
        #[arg(long)]
        calib: PathBuf,
        /// Neuron score (wanda, flap, energy, optipfair, obs or a static one); energy, as prune's default.
        #[arg(long, default_value = "energy")]
        score: String,
        /// Calibration windows taken from the start of --calib.
        #[arg(long, default_value_t = 64)]
        calib_samples: usize,
        /// Tokens per calibration window (at most the model's context).
        #[arg(long, default_value_t = 128)]
        calib_len: usize,
        /// The number format of calibration's matrix products, as prune's.
        #[arg(long, value_name = "auto|f32|bf16", default_value = "auto")]
        calib_precision: String,
        /// Print {score, tokens, layer_influence, mlp} as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Serve the browser app (www/, pkg/, models/ and examples/ under --root) on 127.0.0.1.
    ///
    /// Only pages from this server's own origin may read what it serves (add others with
    /// --allow-origin); requests must name it as 127.0.0.1, localhost or [::1] (add names with
    /// --allow-host); files are served only from inside www/, pkg/ and models/ (each may itself be a
    /// link, e.g. models/ to a folder of models; no link inside them may lead out).
    Serve {
        /// Port to listen on (0: any free port, printed).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The podar checkout holding www/, pkg/ and models/.
        #[arg(long, default_value = ".")]
        root: PathBuf,
        /// Address to listen on. Anything but loopback lets other machines read what is served.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// An origin (e.g. http://localhost:3000) whose pages may read responses; repeatable.
        #[arg(long = "allow-origin", value_name = "ORIGIN")]
        allow_origins: Vec<String>,
        /// A host name requests may use besides the listening address and localhost; repeatable.
        #[arg(long = "allow-host", value_name = "NAME")]
        allow_hosts: Vec<String>,
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
        self.map_err(|e| Failure { file: Some(file.to_path_buf()), err: in_words(e.into()) })
    }
}

/// The file system's commonest answers said the same way in every subcommand ("no such file or
/// folder", not "i/o error: … (os error 2)").
fn in_words(e: Error) -> Error {
    use std::io::ErrorKind;
    match &e {
        Error::Io(io) => match io.kind() {
            ErrorKind::NotFound => Error::Input("no such file or folder".into()),
            ErrorKind::PermissionDenied => Error::Input("permission denied".into()),
            ErrorKind::IsADirectory => Error::Input("is a folder, not a file".into()),
            _ => e,
        },
        _ => e,
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
            podar::formats::safetensors::shard_names(&bytes).at(&index)?.into_iter().map(|n| path.join(n)).collect()
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
            let maps = shards.iter().map(|s| map(s)).collect::<Result<Vec<_>, _>>()?;
            let files = hf_files(&dir, maps.iter().map(|m| Cursor::new(&m[..])).collect())?;
            podar::load_hf(files, &mut progress).at(path)?
        }
    };
    pb.finish_and_clear();
    Ok(b)
}

/// A Hugging Face folder's small files, read, with `shards` as its weights.
fn hf_files<R>(dir: &Path, shards: Vec<R>) -> Result<HfFiles<R>, Failure> {
    let cfg_path = dir.join("config.json");
    Ok(HfFiles {
        config: std::fs::read(&cfg_path).at(&cfg_path)?,
        tokenizer_json: read_opt(dir.join("tokenizer.json"))?,
        tokenizer_config: read_opt(dir.join("tokenizer_config.json"))?,
        generation_config: read_opt(dir.join("generation_config.json"))?,
        shards,
    })
}

/// Loads the model at `path` with its layers and tables left in the file, read (not mapped, so that
/// they do not stay in the process's memory) as each is used; replaced layers go to a temporary file.
fn load_streamed(path: &Path) -> Result<(Bundle, Box<dyn podar::model::LayerStore>), Failure> {
    use podar::model::load::{stream_gguf, stream_hf};
    let spill = |at: &Path| podar::model::store::FileSpill::new().map(|s| Box::new(s) as _).at(at);
    Ok(match resolve(path)? {
        ModelPath::Gguf(p) => stream_gguf(File::open(&p).at(&p)?, spill(&p)?).at(&p)?,
        ModelPath::Hf { dir, shards } => {
            let readers = shards.iter().map(|s| File::open(s).at(s)).collect::<Result<Vec<_>, _>>()?;
            stream_hf(hf_files(&dir, readers)?, spill(&dir)?).at(path)?
        }
    })
}

/// The values of `--stream`.
const STREAM_VALUES: &str = "auto|on|off";

/// Whether to stream the model's layers, from `--stream` and, for auto, the model's f32 size
/// against the memory available now.
fn streaming(stream: &str, model: &Path) -> Result<bool, Failure> {
    match stream {
        "on" => Ok(true),
        "off" => Ok(false),
        "auto" => {
            let f32_bytes = inspect(model)?.parameters.saturating_mul(4);
            Ok(available_memory().is_some_and(|free| f32_bytes > free / 2))
        }
        other => {
            Err(Failure { file: None, err: Error::Input(format!("--stream must be auto, on or off, not {other:?}")) })
        }
    }
}

/// The model at `path`, and the store of its layers: read from its files as they are used where
/// `stream` (`--stream`) says so, else loaded whole and moved out of `Bundle::model`.
fn load_layers(path: &Path, stream: &str) -> Result<(Bundle, Box<dyn podar::model::LayerStore>), Failure> {
    if streaming(stream, path)? {
        load_streamed(path)
    } else {
        let mut b = load(path)?;
        let layers = std::mem::take(&mut b.model.layers);
        Ok((b, Box::new(layers)))
    }
}

/// Memory the system could give this process now (Linux: MemAvailable), if known.
fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory of this process (Linux: VmHWM), if known.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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

fn run(cli: Cli) -> Result<(), Failure> {
    if cli.kernels == "avx2" {
        podar::kernels::set_avx2_only(true);
    }
    match cli.cmd {
        Cmd::Inspect { model, json } => {
            let s = inspect(&model)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).at(&model)?);
            } else {
                println!("{} ({}, {})", s.architecture, s.format, s.dtype);
                let mlp = match &s.intermediate_sizes {
                    Some(w) => format!("per layer {}", w.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(" ")),
                    None => s.intermediate_size.to_string(),
                };
                println!("  layers {}, hidden {}, MLP {mlp}", s.num_hidden_layers, s.hidden_size);
                println!("  heads {} / {} KV, head_dim {}", s.num_attention_heads, s.num_key_value_heads, s.head_dim);
                println!("  vocabulary {}, parameters {:.2}M", s.vocab_size, s.parameters as f64 / 1e6);
            }
        }
        Cmd::Eval { model, text, ids: ids_path, ctx, max_tokens, json, stream } => {
            let t0 = Instant::now();
            let (b, mut layers) = load_layers(&model, &stream)?;
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
            let r = podar::model::eval::perplexity_layered(&b.model, layers.as_mut(), &ids, ctx, &mut |d, n| {
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
        Cmd::Generate { model, prompt, max_tokens, chat, stream } => {
            let (b, mut layers) = load_layers(&model, &stream)?;
            let tok = b.tokenizer().at(&model)?;
            let text = if chat { tok.apply_chat_template(&prompt).at(&model)? } else { prompt };
            let ids = tok.encode(&text, false).at(&model)?;
            let mut out = Vec::new();
            let mut shown = String::new();
            let stop = b.stop_ids();
            let new = podar::greedy_layered(&b.model, layers.as_mut(), &ids, max_tokens, &stop, &mut |id| {
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
                eprintln!("podar: stopped at the model's context of {} tokens", b.model.cfg.max_position_embeddings);
            }
        }
        Cmd::Prune(a) => prune(*a)?,
        Cmd::Importance { model, calib, score, calib_samples, calib_len, calib_precision, json } => {
            let score = podar::prune::Score::parse(&score).at(&model)?;
            let precision = podar::prune::Precision::parse(&calib_precision).at(&model)?;
            let b = load(&model)?;
            let text = read_text(&calib)?;
            let ids = b.tokenizer().at(&model)?.encode(&text, false).at(&calib)?;
            let ids = podar::prune::calib::windows(&ids, calib_samples, calib_len).at(&calib)?;
            let pb = bar(0, "calibrate");
            let imp =
                podar::prune::importance(&b.model, &ids, calib_samples, calib_len, score, precision, &mut |d, n| {
                    pb.set_length(n as u64);
                    pb.set_position(d as u64);
                    true
                })
                .at(&model)?;
            pb.finish_and_clear();
            if json {
                let mut v = serde_json::to_value(&imp).at(&model)?;
                v["kernels"] = serde_json::to_value(podar::kernels::in_use()).at(&model)?;
                println!("{v}");
            } else {
                println!("layer  influence  mean neuron score");
                for (l, (inf, s)) in imp.layer_influence.iter().zip(&imp.mlp).enumerate() {
                    let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
                    println!("{l:>5}  {inf:>9.5}  {mean:.4e}");
                }
            }
        }
        Cmd::Serve { port, root, host, allow_origins, allow_hosts } => {
            let opts = serve::ServeOptions { root: root.clone(), host, port, allow_origins, allow_hosts };
            serve::serve(opts).at(&root)?;
        }
    }
    Ok(())
}

/// Hands the allocator's free pages back to the system (called when calibration is done, and
/// between the steps of static scoring): glibc keeps freed pages, and what calibration's
/// activations leave scattered between the long-lived pruned weights would otherwise sit beside
/// the export's own buffers as a second working set.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
