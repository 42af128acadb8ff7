//! Model configuration: one struct for every supported family, read from a Hugging Face `config.json`
//! or from GGUF metadata, and written back as `config.json` with transformers' key names.

use crate::error::{bail, Error, Result};
use serde_json::{json, Map, Value};

/// Supported decoder-only families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
}

impl Arch {
    /// transformers' `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3_text",
        }
    }
    /// transformers' class name for `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Gemma2 => "Gemma2ForCausalLM",
            Arch::Gemma3 => "Gemma3ForCausalLM",
        }
    }
    /// llama.cpp's architecture name (the GGUF `general.architecture`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Mistral => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
        }
    }
    fn from_model_type(s: &str) -> Result<Self> {
        Ok(match s {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma2" => Arch::Gemma2,
            "gemma3_text" | "gemma3" => Arch::Gemma3,
            other => return Err(Error::UnsupportedArchitecture(other.to_string())),
        })
    }
    /// Gemma-style models: (1+w) RMSNorm, scaled embeddings, four norms per layer.
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }
    /// Families with per-head RMSNorm on queries and keys.
    pub fn has_qk_norm(self) -> bool {
        matches!(self, Arch::Qwen3 | Arch::Gemma3)
    }
}

/// The MLP gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
    Gelu,
}

/// Attention kind of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    Full,
    Sliding,
}

impl LayerType {
    fn as_str(self) -> &'static str {
        match self {
            LayerType::Full => "full_attention",
            LayerType::Sliding => "sliding_attention",
        }
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// Everything the forward pass needs to know, in transformers' terms.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    /// The MLP width; the widest layer's where the layers differ.
    pub intermediate_size: usize,
    /// Each layer's MLP width, where the layers differ (a prune with per-layer widths, or a GGUF
    /// of llama.cpp's `deci` architecture); `None` where every layer is `intermediate_size` wide.
    pub intermediate_sizes: Option<Vec<usize>>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Gemma 3: base frequency of the sliding-window layers.
    pub rope_local_base_freq: Option<f64>,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection too (Llama's `attention_bias`).
    pub o_bias: bool,
    pub sliding_window: Option<usize>,
    pub layer_types: Vec<LayerType>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    pub query_pre_attn_scalar: Option<f64>,
    pub hidden_act: Activation,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The original `config.json` (or one synthesized from GGUF metadata); export edits it.
    pub raw: Value,
}

/// Upper bound on every size, so a hostile config cannot make us allocate without bound.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;

fn get_usize(m: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (n as usize) <= MAX_DIM => Ok(Some(n as usize)),
            _ => bail!(Config, "`{key}` must be a non-negative integer at most {MAX_DIM}, got {v}"),
        },
    }
}

fn req_usize(m: &Map<String, Value>, key: &str) -> Result<usize> {
    get_usize(m, key)?.ok_or_else(|| Error::Config(format!("missing `{key}`")))
}

fn get_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => bail!(Config, "`{key}` must be a number, got {v}"),
        },
    }
}

fn get_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!(Config, "`{key}` must be true or false, got {v}"),
    }
}

/// Token ids given as one number or a list (transformers allows both).
pub(crate) fn id_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

fn parse_rope_scaling(rs: &Map<String, Value>) -> Result<Option<RopeScaling>> {
    let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("default");
    let factor = get_f64(rs, "factor")?.unwrap_or(1.0);
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor: get_f64(rs, "low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: get_f64(rs, "high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: get_f64(rs, "original_max_position_embeddings")?.unwrap_or(8192.0),
        }),
        other => bail!(Config, "unsupported rope scaling `{other}`"),
    })
}

impl ModelConfig {
    /// Parses a transformers `config.json`.
    pub fn from_hf_json(bytes: &[u8]) -> Result<Self> {
        let raw: Value = serde_json::from_slice(bytes)?;
        let Some(top) = raw.as_object() else {
            bail!(Config, "config.json is not a JSON object");
        };
        let model_type = top
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Config("missing `model_type`".into()))?;
        let arch = Arch::from_model_type(model_type)?;
        // A multimodal Gemma 3 config nests the text model.
        let m = match (model_type, top.get("text_config").and_then(Value::as_object)) {
            ("gemma3", Some(tc)) => tc,
            _ => top,
        };
        let hidden_size = req_usize(m, "hidden_size")?;
        let num_attention_heads = req_usize(m, "num_attention_heads")?;
        let num_hidden_layers = req_usize(m, "num_hidden_layers")?;
        if num_attention_heads == 0 || hidden_size == 0 || num_hidden_layers > MAX_LAYERS {
            bail!(
                Config,
                "hidden_size, num_attention_heads must be positive and num_hidden_layers at most {MAX_LAYERS}"
            );
        }
        let num_key_value_heads = get_usize(m, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = get_usize(m, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        let hidden_act = match m
            .get("hidden_activation")
            .or_else(|| m.get("hidden_act"))
            .and_then(Value::as_str)
            .unwrap_or(if arch.is_gemma() { "gelu_pytorch_tanh" } else { "silu" })
        {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => bail!(Config, "unsupported activation `{other}`"),
        };
        // transformers ≥ 5 writes `rope_parameters` (theta included), per layer type for Gemma 3.
        let rp = m.get("rope_parameters").and_then(Value::as_object);
        let (global_rp, local_rp) = match rp {
            Some(p) if p.contains_key("full_attention") => (
                p.get("full_attention").and_then(Value::as_object),
                p.get("sliding_attention").and_then(Value::as_object),
            ),
            other => (other, None),
        };
        let rope_scaling = match global_rp.or(m.get("rope_scaling").and_then(Value::as_object)) {
            None => None,
            Some(rs) => parse_rope_scaling(rs)?,
        };
        let rope_theta = match global_rp {
            Some(p) => get_f64(p, "rope_theta")?,
            None => None,
        }
        .or(get_f64(m, "rope_theta")?)
        .unwrap_or(10000.0);
        let rope_local = match local_rp {
            Some(p) => get_f64(p, "rope_theta")?,
            None => None,
        }
        .or(get_f64(m, "rope_local_base_freq")?);
        if get_bool(m, "mlp_bias")?.unwrap_or(false) {
            bail!(Config, "`mlp_bias: true` is not supported");
        }
        let attention_bias = get_bool(m, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama => (attention_bias, attention_bias),
            _ => (attention_bias, false),
        };
        let mut sliding_window = get_usize(m, "sliding_window")?;
        if matches!(arch, Arch::Qwen2 | Arch::Qwen3) && !get_bool(m, "use_sliding_window")?.unwrap_or(false) {
            sliding_window = None;
        }
        if arch == Arch::Llama {
            sliding_window = None;
        }
        let layer_types = match m.get("layer_types").and_then(Value::as_array) {
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for v in list {
                    out.push(match v.as_str() {
                        Some("full_attention") => LayerType::Full,
                        Some("sliding_attention") => LayerType::Sliding,
                        _ => bail!(Config, "unknown entry {v} in `layer_types`"),
                    });
                }
                out
            }
            None => {
                let pattern = match arch {
                    Arch::Gemma2 => Some(2),
                    Arch::Gemma3 => Some(get_usize(m, "sliding_window_pattern")?.unwrap_or(6)),
                    _ => None,
                };
                let max_window_layers = get_usize(m, "max_window_layers")?.unwrap_or(0);
                (0..num_hidden_layers)
                    .map(|i| match (arch, pattern) {
                        (_, Some(p)) if p > 0 && (i + 1) % p != 0 => LayerType::Sliding,
                        (_, Some(_)) => LayerType::Full,
                        (Arch::Mistral, _) if sliding_window.is_some() => LayerType::Sliding,
                        (Arch::Qwen2 | Arch::Qwen3, _) if sliding_window.is_some() && i >= max_window_layers => {
                            LayerType::Sliding
                        }
                        _ => LayerType::Full,
                    })
                    .collect()
            }
        };
        let cfg = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: req_usize(m, "intermediate_size")?,
            intermediate_sizes: None,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: req_usize(m, "vocab_size")?,
            max_position_embeddings: get_usize(m, "max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps: get_f64(m, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_local_base_freq: if arch == Arch::Gemma3 { Some(rope_local.unwrap_or(10000.0)) } else { None },
            rope_scaling,
            tie_word_embeddings: get_bool(top, "tie_word_embeddings")?
                .or(get_bool(m, "tie_word_embeddings")?)
                .unwrap_or(arch.is_gemma()),
            qkv_bias,
            o_bias,
            sliding_window,
            layer_types,
            attn_logit_softcapping: get_f64(m, "attn_logit_softcapping")?,
            final_logit_softcapping: get_f64(m, "final_logit_softcapping")?,
            query_pre_attn_scalar: get_f64(m, "query_pre_attn_scalar")?,
            hidden_act,
            bos_token_id: id_list(m.get("bos_token_id")).first().copied(),
            eos_token_ids: id_list(m.get("eos_token_id")),
            raw,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the sizes agree with each other.
    pub fn validate(&self) -> Result<()> {
        if self.num_key_value_heads == 0 || !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            bail!(
                Config,
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            bail!(Config, "head_dim ({}) must be even and positive", self.head_dim);
        }
        if self.layer_types.len() != self.num_hidden_layers {
            bail!(
                Config,
                "`layer_types` lists {} layers, num_hidden_layers is {}",
                self.layer_types.len(),
                self.num_hidden_layers
            );
        }
        if self.layer_types.contains(&LayerType::Sliding) && self.sliding_window.is_none() {
            bail!(Config, "sliding-attention layers need `sliding_window`");
        }
        if self.vocab_size == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            bail!(Config, "vocab_size, intermediate_size and num_hidden_layers must be positive");
        }
        if let Some(w) = &self.intermediate_sizes {
            if w.len() != self.num_hidden_layers || w.contains(&0) {
                bail!(
                    Config,
                    "the per-layer MLP widths list {} layers (each must be positive), num_hidden_layers is {}",
                    w.len(),
                    self.num_hidden_layers
                );
            }
        }
        if self.max_position_embeddings < 2 {
            bail!(
                Config,
                "the model's context (max_position_embeddings) is {} tokens; it must be at least 2",
                self.max_position_embeddings
            );
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            bail!(Config, "rms_norm_eps must be a number of at least 0, got {}", self.rms_norm_eps);
        }
        let positive = |name: &str, x: f64| -> Result<()> {
            if !(x.is_finite() && x > 0.0) {
                bail!(Config, "{name} must be a positive number, got {x}");
            }
            Ok(())
        };
        positive("rope_theta", self.rope_theta)?;
        if let Some(b) = self.rope_local_base_freq {
            positive("rope_local_base_freq", b)?;
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => positive("rope_scaling.factor", *factor)?,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                positive("rope_scaling.original_max_position_embeddings", *original_max_position_embeddings)?;
                if high_freq_factor <= low_freq_factor {
                    bail!(Config, "rope_scaling.high_freq_factor must be larger than low_freq_factor");
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Attention score scale (1/sqrt(d), or Gemma's `query_pre_attn_scalar`).
    pub fn attn_scale(&self) -> f64 {
        match (self.arch.is_gemma(), self.query_pre_attn_scalar) {
            (true, Some(s)) => 1.0 / s.sqrt(),
            _ => 1.0 / (self.head_dim as f64).sqrt(),
        }
    }

    /// Layer `l`'s MLP width.
    pub fn mlp_width(&self, l: usize) -> usize {
        self.intermediate_sizes.as_ref().and_then(|w| w.get(l).copied()).unwrap_or(self.intermediate_size)
    }

    /// Every layer's MLP width.
    pub fn mlp_widths(&self) -> Vec<usize> {
        (0..self.num_hidden_layers).map(|l| self.mlp_width(l)).collect()
    }

    /// The narrowest and the widest layer's MLP width, for messages ("1076 to 1383").
    pub fn mlp_width_range(&self) -> String {
        let w = self.mlp_widths();
        format!("{} to {}", w.iter().min().unwrap_or(&0), w.iter().max().unwrap_or(&0))
    }

    /// Sets every layer's MLP width: `intermediate_size` alone where they are equal, else the
    /// per-layer list too (with `intermediate_size` the widest).
    pub fn set_mlp_widths(&mut self, widths: &[usize]) {
        self.intermediate_size = widths.iter().copied().max().unwrap_or(self.intermediate_size);
        self.intermediate_sizes = widths.iter().any(|&w| w != self.intermediate_size).then(|| widths.to_vec());
    }

    /// Number of parameters implied by the config (tied embeddings counted once).
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let i: u64 = self.mlp_widths().iter().map(|&w| w as u64).sum();
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let mut layer = h * q + 2 * h * kv + q * h;
        if self.qkv_bias {
            layer += q + 2 * kv;
        }
        if self.o_bias {
            layer += h;
        }
        layer += if self.arch.is_gemma() { 4 * h } else { 2 * h };
        if self.arch.has_qk_norm() {
            layer += 2 * self.head_dim as u64;
        }
        let emb = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + h + layer * self.num_hidden_layers as u64 + 3 * h * i
    }

    /// The `config.json` to write for this configuration: the original with every size we know updated.
    pub fn to_hf_json(&self) -> Value {
        let mut v = self.raw.clone();
        if !v.is_object() {
            v = json!({});
        }
        let m = v.as_object_mut().expect("checked above");
        let set = |m: &mut Map<String, Value>, k: &str, x: Value| {
            m.insert(k.to_string(), x);
        };
        set(m, "architectures", json!([self.arch.hf_class()]));
        set(m, "model_type", json!(self.arch.model_type()));
        set(m, "hidden_size", json!(self.hidden_size));
        set(m, "intermediate_size", json!(self.intermediate_size));
        set(m, "num_hidden_layers", json!(self.num_hidden_layers));
        set(m, "num_attention_heads", json!(self.num_attention_heads));
        set(m, "num_key_value_heads", json!(self.num_key_value_heads));
        set(m, "head_dim", json!(self.head_dim));
        set(m, "vocab_size", json!(self.vocab_size));
        set(m, "tie_word_embeddings", json!(self.tie_word_embeddings));
        if m.contains_key("layer_types") || self.arch.is_gemma() {
            let lt: Vec<&str> = self.layer_types.iter().map(|t| t.as_str()).collect();
            set(m, "layer_types", json!(lt));
        }
        v
    }
}

/// RoPE frequencies `1 / base^(2i/d)`, in f32 as transformers and llama.cpp compute them.
pub fn rope_freqs(base: f64, d: usize) -> Vec<f32> {
    (0..d / 2).map(|i| (1.0 / base.powf((2 * i) as f64 / d as f64)) as f32).collect()
}

impl RopeScaling {
    /// Llama 3 scaling of one frequency (transformers' `_compute_llama3_parameters`).
    pub fn llama3_scale(freq: f64, factor: f64, low: f64, high: f64, original: f64) -> f64 {
        let wl = 2.0 * std::f64::consts::PI / freq;
        if wl < original / high {
            freq
        } else if wl > original / low {
            freq / factor
        } else {
            let smooth = (original / wl - low) / (high - low);
            (1.0 - smooth) * freq / factor + smooth * freq
        }
    }

    /// llama.cpp's `rope_freqs.weight` for Llama 3 scaling: per frequency, the divisor of the plain
    /// frequency (1 for high frequencies, `factor` for low ones, smooth in between).
    pub fn llama3_factors(&self, base: f64, d: usize) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } = *self
        else {
            return None;
        };
        let scale =
            |f: f64| Self::llama3_scale(f, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings);
        Some(rope_freqs(base, d).iter().map(|&f| (f as f64 / scale(f as f64)) as f32).collect())
    }

    /// The Llama 3 parameters that reproduce llama.cpp's per-frequency `factors`, if there are any.
    /// Only two ratios are identifiable from the factors, so `low_freq_factor` is taken as 1 (the
    /// usual value); every choice consistent with the factors gives the same frequencies.
    pub fn llama3_from_factors(base: f64, d: usize, factors: &[f32]) -> Option<RopeScaling> {
        let freqs = rope_freqs(base, d);
        if factors.len() != freqs.len() || factors.iter().any(|&f| !(f.is_finite() && f >= 1.0)) {
            return None;
        }
        let factor = factors.iter().fold(1f32, |a, &b| a.max(b)) as f64;
        if factor <= 1.0 {
            return None; // no scaling at all
        }
        // s = (L·x − lo)/(hi − lo) = a·x + b, with x = 1 / wavelength.
        let x: Vec<f64> = freqs.iter().map(|&f| f as f64 / (2.0 * std::f64::consts::PI)).collect();
        let eps = 1e-6;
        let smooth: Vec<(f64, f64)> = factors
            .iter()
            .zip(&x)
            .filter(|(&f, _)| (f as f64) > 1.0 + eps && (f as f64) < factor * (1.0 - eps))
            .map(|(&f, &x)| (x, (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor)))
            .collect();
        let hi_min =
            factors.iter().zip(&x).filter(|(&f, _)| (f as f64) <= 1.0 + eps).map(|(_, &x)| x).fold(f64::MAX, f64::min);
        let lo_max = factors
            .iter()
            .zip(&x)
            .filter(|(&f, _)| (f as f64) >= factor * (1.0 - eps))
            .map(|(_, &x)| x)
            .fold(0.0, f64::max);
        let (a, b) = match smooth.as_slice() {
            [] if hi_min < f64::MAX && lo_max > 0.0 => {
                let a = 1.0 / (hi_min - lo_max);
                (a, -a * lo_max)
            }
            [(xs, ss)] if lo_max > 0.0 => (ss / (xs - lo_max), -ss / (xs - lo_max) * lo_max),
            [(xs, ss)] if hi_min < f64::MAX => ((1.0 - ss) / (hi_min - xs), ss - (1.0 - ss) / (hi_min - xs) * xs),
            pts if pts.len() >= 2 => {
                let n = pts.len() as f64;
                let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
                let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
                let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
                let a = sxy / sxx;
                (a, my - a * mx)
            }
            _ => return None,
        };
        if !(a > 0.0 && b < 0.0) {
            return None;
        }
        let r = RopeScaling::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 1.0 - 1.0 / b,
            original_max_position_embeddings: -a / b,
        };
        let back = r.llama3_factors(base, d)?;
        let exact = back.iter().zip(factors).all(|(p, q)| ((p - q) / q).abs() < 1e-5);
        exact.then_some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_rope_scaling_survives_llama_cpp_factors() {
        // Llama 3.1 8B: many smooth frequencies; the fit recovers the parameters themselves.
        let r = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let f = r.llama3_factors(500000.0, 128).unwrap();
        let RopeScaling::Llama3 { factor, high_freq_factor, original_max_position_embeddings, .. } =
            RopeScaling::llama3_from_factors(500000.0, 128, &f).unwrap()
        else {
            panic!("not llama3");
        };
        assert!((factor - 8.0).abs() < 1e-6);
        assert!((high_freq_factor - 4.0).abs() < 1e-3, "{high_freq_factor}");
        assert!((original_max_position_embeddings - 8192.0).abs() < 1.0, "{original_max_position_embeddings}");
        // Factors no Llama 3 scaling gives are refused.
        let mut bad = f.clone();
        bad[10] = 3.0;
        bad[11] = 1.5;
        assert!(RopeScaling::llama3_from_factors(500000.0, 128, &bad).is_none());
        assert!(RopeScaling::llama3_from_factors(500000.0, 128, &f[..10]).is_none());
    }

    #[test]
    fn rejects_bad_head_ratio() {
        let j = br#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":3,"vocab_size":10}"#;
        assert!(matches!(ModelConfig::from_hf_json(j), Err(Error::Config(_))));
    }

    #[test]
    fn rejects_unknown_arch() {
        let j = br#"{"model_type":"gpt2"}"#;
        assert!(matches!(ModelConfig::from_hf_json(j), Err(Error::UnsupportedArchitecture(_))));
    }

    #[test]
    fn gemma2_layer_types_alternate() {
        let j = br#"{"model_type":"gemma2","hidden_size":64,"intermediate_size":128,"num_hidden_layers":3,
            "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10,"sliding_window":4}"#;
        let c = ModelConfig::from_hf_json(j).unwrap();
        assert_eq!(c.layer_types, vec![LayerType::Sliding, LayerType::Full, LayerType::Sliding]);
    }
}
