//! Loading whole models: a GGUF file, or a Hugging Face folder's files, handed in as readers.

use crate::error::{bail, Result};
use crate::formats::safetensors::SafetensorsSource;
use crate::formats::source::TensorSource;
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufSource;
use crate::model::store::{LayerStore, Spill, Streamed};
use crate::model::tokenizer::Tokenizer;
use crate::model::transformer::{check_source, Model};
use candle_core::quantized::GgmlDType;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Seek};

/// The files of a Hugging Face model folder; the weights as one reader per safetensors shard.
pub struct HfFiles<R> {
    pub config: Vec<u8>,
    pub tokenizer_json: Option<Vec<u8>>,
    pub tokenizer_config: Option<Vec<u8>>,
    pub generation_config: Option<Vec<u8>>,
    pub shards: Vec<R>,
}

/// What `inspect` reports: transformers' config names, read from headers only.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub architecture: String,
    pub num_hidden_layers: usize,
    pub hidden_size: usize,
    /// The widest layer's MLP width where the layers differ; then `intermediate_sizes` lists them.
    pub intermediate_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intermediate_sizes: Option<Vec<usize>>,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub parameters: u64,
    pub dtype: String,
    pub tie_word_embeddings: bool,
    pub format: String,
}

impl Summary {
    fn new(cfg: &ModelConfig, dtype: String, format: &str) -> Self {
        Summary {
            architecture: cfg.arch.model_type().to_string(),
            num_hidden_layers: cfg.num_hidden_layers,
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            intermediate_sizes: cfg.intermediate_sizes.clone(),
            num_attention_heads: cfg.num_attention_heads,
            num_key_value_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            vocab_size: cfg.vocab_size,
            parameters: cfg.parameter_count(),
            dtype,
            tie_word_embeddings: cfg.tie_word_embeddings,
            format: format.to_string(),
        }
    }
}

/// A loaded model with its tokenizer and the side files export needs.
pub struct Bundle {
    pub model: Model,
    /// Absent for weight-only folders without tokenizer.json.
    pub tokenizer: Option<Tokenizer>,
    pub generation_config: Option<Value>,
    pub summary: Summary,
    /// The source GGUF's `tokenizer.*` metadata, carried into GGUF exports unchanged.
    pub gguf_tokenizer: Option<Vec<(String, candle_core::quantized::gguf_file::Value)>>,
}

impl Bundle {
    /// Tokenizer metadata for a GGUF export: the source GGUF's, else derived from tokenizer.json.
    pub fn gguf_tokenizer_metadata(&self) -> Result<Vec<(String, candle_core::quantized::gguf_file::Value)>> {
        match &self.gguf_tokenizer {
            Some(m) => Ok(m.clone()),
            None => self.tokenizer()?.gguf_metadata(),
        }
    }

    /// The tokenizer, or an error saying the model has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| crate::Error::Tokenizer("this model has no tokenizer.json".into()))
    }

    /// Token ids that end generation: generation_config's, else the config's, else the tokenizer's EOS.
    pub fn stop_ids(&self) -> Vec<u32> {
        let from = crate::model::config::id_list;
        let g = from(self.generation_config.as_ref().and_then(|g| g.get("eos_token_id")));
        if !g.is_empty() {
            return g;
        }
        self.model.cfg.eos_token_ids.clone()
    }
}

/// Most common value, by count, of a list of names (ties: first in name order).
fn majority(names: impl Iterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in names {
        *counts.entry(n).or_default() += 1;
    }
    counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).map(|x| x.0).unwrap_or_else(|| "unknown".into())
}

fn ggml_name(d: GgmlDType) -> String {
    format!("{d:?}").to_uppercase()
}

fn gguf_summary<R: Read + Seek>(src: &GgufSource<R>, cfg: &ModelConfig) -> Summary {
    // The dtype that holds most of the weights (2-D tensors), e.g. Q4_1.
    let dtype = majority(
        src.names()
            .iter()
            .filter(|n| src.shape(n).is_some_and(|s| s.len() == 2))
            .filter_map(|n| src.ggml_dtype(n).map(ggml_name)),
    );
    Summary::new(cfg, dtype, "gguf")
}

fn st_summary(src: &dyn TensorSource, cfg: &ModelConfig) -> Summary {
    let dtype = majority(src.names().iter().filter_map(|n| src.storage_dtype(n).map(|d| d.torch_name().to_string())));
    Summary::new(cfg, dtype, "safetensors")
}

/// Reads a GGUF header and reports the model without reading weights. Checks tensor shapes against the config.
pub fn inspect_gguf<R: Read + Seek>(reader: R) -> Result<Summary> {
    let (src, cfg) = GgufSource::new(reader)?;
    check_source(&cfg, &src)?;
    Ok(gguf_summary(&src, &cfg))
}

/// Reads `config.json` and the shards' headers and reports the model without reading weights.
pub fn inspect_hf<R: Read + Seek>(config: &[u8], shards: Vec<R>) -> Result<Summary> {
    let cfg = ModelConfig::from_hf_json(config)?;
    let src = SafetensorsSource::new(shards)?;
    check_source(&cfg, &src)?;
    Ok(st_summary(&src, &cfg))
}

/// A GGUF's source, config, tokenizer and side data, before any weight is read.
fn open_gguf<R: Read + Seek>(reader: R) -> Result<(GgufSource<R>, Bundle)> {
    let (src, cfg) = GgufSource::new(reader)?;
    let tokenizer = match src.header().get("tokenizer.ggml.tokens") {
        Some(_) => Some(Tokenizer::from_gguf(src.header())?),
        None => None,
    };
    let summary = gguf_summary(&src, &cfg);
    let mut gguf_tokenizer: Vec<_> = src
        .header()
        .content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    gguf_tokenizer.sort_by(|a, b| a.0.cmp(&b.0));
    let model = Model::empty(cfg)?;
    Ok((src, Bundle { model, tokenizer, generation_config: None, summary, gguf_tokenizer: Some(gguf_tokenizer) }))
}

/// A Hugging Face folder's source, config, tokenizer and side files, before any weight is read.
fn open_hf<R: Read + Seek>(files: HfFiles<R>) -> Result<(SafetensorsSource<R>, Bundle)> {
    let cfg = ModelConfig::from_hf_json(&files.config)?;
    let tokenizer = match files.tokenizer_json.as_deref() {
        Some(tj) => Some(Tokenizer::from_hf(tj, files.tokenizer_config.as_deref())?),
        None => None,
    };
    let generation_config = files.generation_config.as_deref().map(serde_json::from_slice).transpose()?;
    if files.shards.is_empty() {
        bail!(Safetensors, "no safetensors file given");
    }
    let src = SafetensorsSource::new(files.shards)?;
    let summary = st_summary(&src, &cfg);
    let model = Model::empty(cfg)?;
    Ok((src, Bundle { model, tokenizer, generation_config, summary, gguf_tokenizer: None }))
}

/// Loads the final norm into `b.model` and leaves the layers and the tables (embedding, LM head) in
/// `src`, to be read as they are used, with replaced layers kept in `spill`.
fn stream_layers<S: TensorSource + 'static>(
    b: &mut Bundle,
    mut src: S,
    spill: Box<dyn Spill>,
) -> Result<Box<dyn LayerStore>> {
    let cfg = b.model.cfg.clone();
    b.model = Model::load_shell_without_tables(cfg.clone(), &mut src)?;
    Ok(Box::new(Streamed::new(&cfg, src, spill).tables_from_source()))
}

/// Loads a GGUF model and its tokenizer; `progress(layer, layers)`.
pub fn load_gguf<R: Read + Seek>(reader: R, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Bundle> {
    let (mut src, mut b) = open_gguf(reader)?;
    b.model = Model::load(b.model.cfg.clone(), &mut src, progress)?;
    Ok(b)
}

/// Loads a Hugging Face model from its files; `progress(layer, layers)`.
pub fn load_hf<R: Read + Seek>(files: HfFiles<R>, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Bundle> {
    let (mut src, mut b) = open_hf(files)?;
    b.model = Model::load(b.model.cfg.clone(), &mut src, progress)?;
    Ok(b)
}

/// A GGUF model whose layers stay in `reader`, read as they are used (see [`Streamed`]): the
/// bundle holds the rest of the model, the store its layers.
pub fn stream_gguf<R: Read + Seek + 'static>(
    reader: R,
    spill: Box<dyn Spill>,
) -> Result<(Bundle, Box<dyn LayerStore>)> {
    let (src, mut b) = open_gguf(reader)?;
    let layers = stream_layers(&mut b, src, spill)?;
    Ok((b, layers))
}

/// A Hugging Face model whose layers stay in its shards (see [`stream_gguf`]).
pub fn stream_hf<R: Read + Seek + 'static>(
    files: HfFiles<R>,
    spill: Box<dyn Spill>,
) -> Result<(Bundle, Box<dyn LayerStore>)> {
    let (src, mut b) = open_hf(files)?;
    let layers = stream_layers(&mut b, src, spill)?;
    Ok((b, layers))
}

/// Loads only the weights of a Hugging Face model (no tokenizer needed), e.g. for fixtures.
pub fn load_hf_weights<R: Read + Seek>(config: &[u8], shards: Vec<R>) -> Result<Model> {
    let cfg = ModelConfig::from_hf_json(config)?;
    let mut src = SafetensorsSource::new(shards)?;
    Model::load(cfg, &mut src, &mut |_, _| true)
}

/// Which of a set of user-chosen files make up a model (indices into the names given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picked {
    /// One `.gguf` file.
    Gguf(usize),
    /// A Hugging Face folder's files; shards in name order.
    Hf {
        config: usize,
        shards: Vec<usize>,
        tokenizer_json: Option<usize>,
        tokenizer_config: Option<usize>,
        generation_config: Option<usize>,
    },
}

/// Picks the model files out of `names` (a file picker's or a drop's, possibly with folder paths):
/// a single `.gguf`, or `config.json` with `*.safetensors` and the tokenizer files.
///
/// A whole dropped repository may hold more than the model: hidden files (`.git`, macOS `._*`
/// copies) are ignored; the `config.json` nearest the top is the model's, and its folder's weights
/// and tokenizer files are taken over ones elsewhere; where shards are named `model*.safetensors`,
/// other safetensors files beside them (e.g. Mistral's `consolidated.safetensors`) are not weights
/// of that layout and are left out.
pub fn pick_files(names: &[String]) -> Result<Picked> {
    let base = |n: &String| n.rsplit(['/', '\\']).next().unwrap_or(n).to_string();
    let dir = |n: &String| n.rsplit_once(['/', '\\']).map_or(String::new(), |(d, _)| d.to_string());
    let depth = |n: &String| n.matches(['/', '\\']).count();
    let hidden = |n: &String| n.split(['/', '\\']).any(|part| part.starts_with('.') && part != "." && part != "..");
    let visible: Vec<usize> = (0..names.len()).filter(|&i| !hidden(&names[i])).collect();
    let config =
        visible.iter().copied().filter(|&i| base(&names[i]) == "config.json").min_by_key(|&i| depth(&names[i]));
    let home = config.map(|c| dir(&names[c]));
    // Files named `want`, those in the config's folder first.
    let find = |want: &str| {
        let all: Vec<usize> = visible.iter().copied().filter(|&i| base(&names[i]) == want).collect();
        all.iter().copied().find(|&i| Some(dir(&names[i])) == home).or(all.first().copied())
    };
    let ggufs: Vec<usize> =
        visible.iter().copied().filter(|&i| base(&names[i]).to_lowercase().ends_with(".gguf")).collect();
    let mut shards: Vec<usize> =
        visible.iter().copied().filter(|&i| base(&names[i]).ends_with(".safetensors")).collect();
    if shards.iter().any(|&i| Some(dir(&names[i])) == home) {
        shards.retain(|&i| Some(dir(&names[i])) == home);
    }
    if shards.iter().any(|&i| base(&names[i]).starts_with("model")) {
        shards.retain(|&i| base(&names[i]).starts_with("model"));
    }
    shards.sort_by_key(|&i| base(&names[i]));
    match (ggufs.as_slice(), config) {
        ([g], _) if shards.is_empty() => Ok(Picked::Gguf(*g)),
        ([], Some(config)) if !shards.is_empty() => Ok(Picked::Hf {
            config,
            shards,
            tokenizer_json: find("tokenizer.json"),
            tokenizer_config: find("tokenizer_config.json"),
            generation_config: find("generation_config.json"),
        }),
        ([], Some(_)) => bail!(Input, "config.json is there but no .safetensors file: add the weights"),
        ([], None) if !shards.is_empty() => {
            bail!(Input, "the .safetensors files need the folder's config.json too")
        }
        ([], None) => bail!(
            Input,
            "no model among {} file(s): give one .gguf, or a Hugging Face folder's config.json, *.safetensors and tokenizer files",
            names.len()
        ),
        _ => bail!(Input, "give one model at a time: one .gguf, or one Hugging Face folder"),
    }
}

/// A model found among named readers: one GGUF, or a Hugging Face folder with its small files read.
enum Named<R> {
    Gguf(R),
    Hf(HfFiles<R>),
}

/// Picks the model out of named readers (see [`pick_files`]) and reads the small JSON files whole.
fn open_named<R: Read>(files: Vec<(String, R)>) -> Result<Named<R>> {
    let names: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    let mut slots: Vec<Option<R>> = files.into_iter().map(|f| Some(f.1)).collect();
    // `pick_files` names each file at most once, so every slot is taken at most once.
    let mut take = |i: usize| slots[i].take().ok_or_else(|| crate::Error::Input(format!("`{}` given twice", names[i])));
    let read = |r: R| -> Result<Vec<u8>> {
        let mut v = Vec::new();
        let mut r = r;
        r.read_to_end(&mut v)?;
        Ok(v)
    };
    Ok(match pick_files(&names)? {
        Picked::Gguf(i) => Named::Gguf(take(i)?),
        Picked::Hf { config, shards, tokenizer_json, tokenizer_config, generation_config } => {
            let mut opt = |i: Option<usize>| i.map(|i| take(i).and_then(read)).transpose();
            let (tokenizer_json, tokenizer_config, generation_config) =
                (opt(tokenizer_json)?, opt(tokenizer_config)?, opt(generation_config)?);
            Named::Hf(HfFiles {
                config: read(take(config)?)?,
                tokenizer_json,
                tokenizer_config,
                generation_config,
                shards: shards.into_iter().map(&mut take).collect::<Result<_>>()?,
            })
        }
    })
}

/// Reports the model among named readers (a file picker's files, a zip's entries) from headers only.
pub fn inspect_named<R: Read + Seek>(files: Vec<(String, R)>) -> Result<Summary> {
    match open_named(files)? {
        Named::Gguf(r) => inspect_gguf(r),
        Named::Hf(f) => inspect_hf(&f.config, f.shards),
    }
}

/// Loads the model among named readers: one `.gguf`, or a Hugging Face folder's files.
pub fn load_named<R: Read + Seek>(
    files: Vec<(String, R)>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Bundle> {
    match open_named(files)? {
        Named::Gguf(r) => load_gguf(r, progress),
        Named::Hf(f) => load_hf(f, progress),
    }
}

/// A model among named readers (one `.gguf`, or a Hugging Face folder's files) whose layers and
/// tables stay in the readers, read as they are used, with replaced layers kept in `spill`.
pub fn stream_named<R: Read + Seek + 'static>(
    files: Vec<(String, R)>,
    spill: Box<dyn Spill>,
) -> Result<(Bundle, Box<dyn LayerStore>)> {
    match open_named(files)? {
        Named::Gguf(r) => stream_gguf(r, spill),
        Named::Hf(f) => stream_hf(f, spill),
    }
}

/// The memory a browser gives WebAssembly (wasm32's whole address space).
pub const PAGE_MEMORY: u64 = 4 << 30;
/// The page's peak memory during a prune, in f32 bytes of the model: 1.38–1.46× measured
/// (`make bench-web`, SmolLM2-135M and a model with Qwen2.5-0.5B's shapes).
const PAGE_PEAK_PER_F32_BYTE: f64 = 1.46;

/// Refuses, before any weight is read, a model the page cannot prune within [`PAGE_MEMORY`]: it
/// holds the weights in f32, and a prune peaks near 1.46× their bytes. Beyond that the browser
/// would stop the engine with an out-of-memory trap partway through; this says why first.
pub fn fits_in_page(parameters: u64) -> Result<()> {
    let f32_bytes = parameters as f64 * 4.0;
    let need = f32_bytes * PAGE_PEAK_PER_F32_BYTE;
    if need > PAGE_MEMORY as f64 {
        bail!(
            TooLarge,
            "this model has {:.2}B parameters: pruning it in the page needs about {:.1} GB of memory ({PAGE_PEAK_PER_F32_BYTE}× \
             its {:.1} GB of f32 weights), more than the {} GiB a browser gives WebAssembly. The command-line tool \
             (podar prune) has no such limit; in the page, models up to about {:.0}M parameters fit",
            parameters as f64 / 1e9,
            need / 1e9,
            f32_bytes / 1e9,
            PAGE_MEMORY >> 30,
            PAGE_MEMORY as f64 / (4.0 * PAGE_PEAK_PER_F32_BYTE) / 1e6
        );
    }
    Ok(())
}

/// Calibration tokens the page's streamed bound counts on (its default, 64 windows of 128).
const PAGE_STREAM_CALIB_TOKENS: f64 = 8192.0;

/// The page's peak memory for a prune with the layers and tables read from the files as they are
/// used ([`stream_named`]), from the model's shapes: one layer in f32 (and the slices of it being
/// pruned), the calibration streams and MLP activations (64×128 tokens), and recovery's matrices
/// over the kept neurons (an f32 Gram matrix and its f64 copy in the solve). Counted for 20% of
/// the MLP pruned; a prune that keeps more needs more.
pub fn page_stream_need(s: &Summary) -> f64 {
    let (h, i) = (s.hidden_size as f64, s.intermediate_size as f64);
    let attn = h * s.head_dim as f64 * (2.0 * s.num_attention_heads as f64 + 2.0 * s.num_key_value_heads as f64);
    let layer = 4.0 * (attn + 3.0 * h * i);
    let kept = 0.8 * i;
    1.8 * layer + PAGE_STREAM_CALIB_TOKENS * 4.0 * (i + 3.0 * h) + 12.0 * kept * kept + (96 << 20) as f64
}

/// Refuses, before any weight is read, a model the page cannot prune even with its layers read as
/// they are used: [`page_stream_need`] above [`PAGE_MEMORY`].
pub fn fits_streamed_in_page(s: &Summary) -> Result<()> {
    let need = page_stream_need(s);
    if need > PAGE_MEMORY as f64 {
        bail!(
            TooLarge,
            "this model has {:.2}B parameters with layers of {} × {} MLP neurons: even read from its files a layer at \
             a time, pruning it in the page needs about {:.1} GB of memory, more than the {} GiB a browser gives \
             WebAssembly. The command-line tool (podar prune) has no such limit",
            s.parameters as f64 / 1e9,
            s.hidden_size,
            s.intermediate_size,
            need / 1e9,
            PAGE_MEMORY >> 30
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_too_big_for_the_page_are_refused_with_the_numbers() {
        // SmolLM2-135M and Qwen2.5-0.5B fit (measured); Llama-3.2-1B's 1.24B parameters do not.
        assert!(fits_in_page(134_515_008).is_ok());
        assert!(fits_in_page(494_032_768).is_ok());
        let e = fits_in_page(1_235_814_400).unwrap_err().to_string();
        assert!(e.contains("1.24B parameters") && e.contains("7.2 GB") && e.contains("4 GiB"), "{e}");
        assert!(e.contains("735M"), "{e}");
    }

    fn summary(hidden: usize, mlp: usize, layers: usize, heads: (usize, usize, usize), vocab: usize) -> Summary {
        Summary {
            architecture: "llama".into(),
            num_hidden_layers: layers,
            hidden_size: hidden,
            intermediate_size: mlp,
            intermediate_sizes: None,
            num_attention_heads: heads.0,
            num_key_value_heads: heads.1,
            head_dim: heads.2,
            vocab_size: vocab,
            parameters: (layers * (3 * hidden * mlp + hidden * heads.2 * (2 * heads.0 + 2 * heads.1)) + vocab * hidden)
                as u64,
            dtype: "bf16".into(),
            tie_word_embeddings: true,
            format: "safetensors".into(),
        }
    }

    #[test]
    fn streamed_the_page_takes_models_by_their_layers_not_their_size() {
        // Llama-3.2-1B and 3B: refused whole, taken streamed (their layers need 1.5 and 1.9 GB).
        for (s, gb) in
            [(summary(2048, 8192, 16, (32, 8, 64), 128256), 1.5), (summary(3072, 8192, 28, (24, 8, 128), 128256), 1.9)]
        {
            assert!(fits_in_page(s.parameters).is_err());
            assert!(fits_streamed_in_page(&s).is_ok());
            assert!((page_stream_need(&s) / 1e9 - gb).abs() < 0.1, "{} GB", page_stream_need(&s) / 1e9);
        }
        // Llama-3.1-70B's layers do not fit: refused with the numbers.
        let e = fits_streamed_in_page(&summary(8192, 28672, 80, (64, 8, 128), 128256)).unwrap_err().to_string();
        assert!(e.contains("8192 × 28672") && e.contains("4 GiB"), "{e}");
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_model_files() {
        assert_eq!(pick_files(&names(&["a/m.Q4.GGUF"])).unwrap(), Picked::Gguf(0));
        let p = pick_files(&names(&[
            "m/tokenizer.json",
            "m/model-00002-of-00002.safetensors",
            "m/config.json",
            "m/model-00001-of-00002.safetensors",
            "m/README.md",
        ]))
        .unwrap();
        assert_eq!(
            p,
            Picked::Hf {
                config: 2,
                shards: vec![3, 1],
                tokenizer_json: Some(0),
                tokenizer_config: None,
                generation_config: None
            }
        );
        for bad in [&["config.json"][..], &["x.safetensors"], &["a.gguf", "b.gguf"], &["notes.txt"], &[]] {
            assert!(pick_files(&names(bad)).is_err(), "{bad:?}");
        }
        // A whole repository dropped: hidden files, a consolidated checkpoint beside the shards, and
        // another config.json deeper down.
        let p = pick_files(&names(&[
            "repo/.git/config.json",
            "repo/._model.safetensors",
            "repo/original/config.json",
            "repo/original/model.safetensors",
            "repo/consolidated.safetensors",
            "repo/model.safetensors",
            "repo/config.json",
            "repo/original/tokenizer.json",
            "repo/tokenizer.json",
        ]))
        .unwrap();
        assert_eq!(
            p,
            Picked::Hf {
                config: 6,
                shards: vec![5],
                tokenizer_json: Some(8),
                tokenizer_config: None,
                generation_config: None
            }
        );
    }
}
