//! A GGUF file as a model: transformers' config from llama.cpp's metadata keys, and tensors by
//! transformers' names and layouts (llama.cpp's q/k row order and Gemma's `1 + w` norms undone).
//! The bytes themselves are `formats::gguf`'s.

use crate::error::{bail, Error, Result};
use crate::formats::gguf::{value_u64, GgufFile, GgufHeader};
use crate::formats::source::{StorageDtype, TensorSource};
use crate::model::config::{Activation, Arch, LayerType, ModelConfig, RopeScaling};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::Tensor;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Seek};

/// The model config from a GGUF header's metadata alone (plus tensor shapes, never data).
pub fn config_of(h: &GgufHeader) -> Result<ModelConfig> {
    let name = h.architecture()?;
    let arch = match name {
        // llama.cpp's Llama with per-layer widths (Nemotron's DeciLM; podar's per-layer prunes).
        "llama" | "deci" => Arch::Llama,
        "mistral" => Arch::Mistral,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma2" => Arch::Gemma2,
        "gemma3" => Arch::Gemma3,
        other => return Err(Error::UnsupportedArchitecture(other.to_string())),
    };
    let k = |s: &str| format!("{name}.{s}");
    let req = |s: &str| -> Result<usize> {
        let key = k(s);
        match h.get(&key) {
            Some(Value::Array(a)) => {
                // Per-layer lists are accepted when all entries agree.
                let vals: Vec<u64> = a.iter().filter_map(value_u64).collect();
                match vals.first() {
                    Some(&f) if vals.len() == a.len() && vals.iter().all(|&v| v == f) => Ok(f as usize),
                    _ => bail!(Gguf, "`{key}` varies per layer; podar needs one value"),
                }
            }
            Some(v) => value_u64(v)
                .filter(|&x| x <= 1 << 20)
                .map(|x| x as usize)
                .ok_or_else(|| Error::Gguf(format!("`{key}` is not a valid size"))),
            None => bail!(Gguf, "missing `{key}`"),
        }
    };
    let hidden = req("embedding_length")?;
    let layers = req("block_count")?;
    let heads = req("attention.head_count")?;
    let kv_heads =
        h.get(&k("attention.head_count_kv")).map(|_| req("attention.head_count_kv")).transpose()?.unwrap_or(heads);
    if hidden == 0 || heads == 0 || layers == 0 || layers > 1024 {
        bail!(Gguf, "embedding_length and attention.head_count must be positive and block_count between 1 and 1024");
    }
    // The MLP width: one value, or (llama.cpp's `deci`) one per layer.
    let ffn_key = k("feed_forward_length");
    let widths: Vec<usize> = match h.get(&ffn_key) {
        Some(Value::Array(a)) if name == "deci" => {
            let w: Vec<usize> = a.iter().filter_map(value_u64).filter(|&x| x <= 1 << 20).map(|x| x as usize).collect();
            if w.len() != a.len() || w.len() != layers || w.contains(&0) {
                bail!(Gguf, "`{ffn_key}` must list a positive width for each of the {layers} layers");
            }
            w
        }
        _ => vec![req("feed_forward_length")?; layers],
    };
    let head_dim = match h.get_u64(&k("attention.key_length")) {
        Some(d) => d as usize,
        None if hidden % heads == 0 => hidden / heads,
        None => bail!(Gguf, "embedding_length {hidden} is not a multiple of attention.head_count {heads}"),
    };
    if let Some(r) = h.get_u64(&k("rope.dimension_count")) {
        if r as usize != head_dim {
            bail!(Gguf, "rope.dimension_count is {r}, but heads are {head_dim} wide: partial rotary embeddings are not supported");
        }
    }
    let vocab = match h.get_u64(&k("vocab_size")) {
        Some(v) => v as usize,
        None => match h.get("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => h
                .tensor_shape("token_embd.weight")
                .and_then(|s| s.first().copied())
                .ok_or_else(|| Error::Gguf("cannot tell the vocabulary size".into()))?,
        },
    };
    let sliding_window = h.get_u64(&k("attention.sliding_window")).map(|x| x as usize);
    // llama.cpp's layout: Gemma 2 alternates; Gemma 3 slides except every `p`-th layer
    // (`attention.sliding_window_pattern`, 6 when absent).
    let period = match arch {
        Arch::Gemma2 => Some(2),
        Arch::Gemma3 => Some(h.get_u64(&k("attention.sliding_window_pattern")).map_or(6, |p| p as usize)),
        _ => None,
    };
    let layer_types: Vec<LayerType> = (0..layers)
        .map(|i| match period {
            Some(p) if p == 0 || (i + 1) % p != 0 => LayerType::Sliding,
            _ => LayerType::Full,
        })
        .collect();
    let rope_scaling = match (h.get_str(&k("rope.scaling.type")), h.get_f64(&k("rope.scaling.factor"))) {
        (Some("linear"), Some(f)) if f != 1.0 => Some(RopeScaling::Linear { factor: f }),
        (Some("none") | None, _) | (Some("linear"), _) => None,
        (Some(other), _) => bail!(Gguf, "unsupported rope scaling `{other}`"),
    };
    let bos = h.get_u64("tokenizer.ggml.bos_token_id").map(|x| x as u32);
    let eos: Vec<u32> = h.get_u64("tokenizer.ggml.eos_token_id").map(|x| vec![x as u32]).unwrap_or_default();
    let tie = !h.content.tensor_infos.contains_key("output.weight");
    let has_qkv_bias = h.content.tensor_infos.contains_key("blk.0.attn_q.bias");
    let max_pos = h.get_u64(&k("context_length")).map(|x| x as usize).unwrap_or(2048);
    let eps = h.get_f64(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
    let theta = h.get_f64(&k("rope.freq_base")).unwrap_or(10000.0);
    let (attn_cap, final_cap) = (h.get_f64(&k("attn_logit_softcapping")), h.get_f64(&k("final_logit_softcapping")));
    let mut raw = json!({
        "architectures": [arch.hf_class()],
        "model_type": arch.model_type(),
        "hidden_size": hidden,
        "intermediate_size": widths.iter().copied().max(),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": max_pos,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "tie_word_embeddings": tie,
        "hidden_act": if arch.is_gemma() { "gelu_pytorch_tanh" } else { "silu" },
        "torch_dtype": "float32",
        "attention_bias": has_qkv_bias && arch != Arch::Qwen2,
        "bos_token_id": bos,
        "eos_token_id": eos.first(),
    });
    let obj = raw.as_object_mut().expect("json! object");
    if let Some(RopeScaling::Linear { factor }) = &rope_scaling {
        obj.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": factor}));
    }
    if arch.is_gemma() {
        obj.insert("sliding_window".into(), json!(sliding_window));
        obj.insert("query_pre_attn_scalar".into(), json!(head_dim));
        obj.insert("attn_logit_softcapping".into(), json!(attn_cap));
        obj.insert("final_logit_softcapping".into(), json!(final_cap));
        let lt: Vec<&str> = layer_types
            .iter()
            .map(|t| if *t == LayerType::Sliding { "sliding_attention" } else { "full_attention" })
            .collect();
        obj.insert("layer_types".into(), json!(lt));
    }
    if arch == Arch::Gemma3 {
        obj.insert("rope_local_base_freq".into(), json!(10000.0));
    }
    let mut cfg = ModelConfig {
        arch,
        hidden_size: hidden,
        intermediate_size: 0,
        intermediate_sizes: None,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        vocab_size: vocab,
        max_position_embeddings: max_pos,
        rms_norm_eps: eps,
        rope_theta: theta,
        rope_local_base_freq: (arch == Arch::Gemma3).then_some(10000.0),
        rope_scaling,
        tie_word_embeddings: tie,
        qkv_bias: has_qkv_bias,
        o_bias: false,
        sliding_window: if arch.is_gemma() { sliding_window } else { None },
        layer_types,
        attn_logit_softcapping: attn_cap,
        final_logit_softcapping: final_cap,
        query_pre_attn_scalar: arch.is_gemma().then_some(head_dim as f64),
        hidden_act: if arch.is_gemma() { Activation::GeluTanh } else { Activation::Silu },
        bos_token_id: bos,
        eos_token_ids: eos,
        raw,
    };
    cfg.set_mlp_widths(&widths);
    cfg.validate()?;
    Ok(cfg)
}

/// Per-layer tensor name pairs (transformers suffix, llama.cpp suffix).
fn layer_names(arch: Arch) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("input_layernorm.weight", "attn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.o_proj.bias", "attn_output.bias"),
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];
    if arch.is_gemma() {
        v.extend([
            ("post_attention_layernorm.weight", "post_attention_norm.weight"),
            ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
            ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        ]);
    } else {
        v.push(("post_attention_layernorm.weight", "ffn_norm.weight"));
    }
    v
}

/// Maps every transformers tensor name of `arch` with `layers` layers to its llama.cpp name.
pub fn name_map(arch: Arch, layers: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string());
    m.insert("model.norm.weight".to_string(), "output_norm.weight".to_string());
    m.insert("lm_head.weight".to_string(), "output.weight".to_string());
    let pairs = layer_names(arch);
    for i in 0..layers {
        for (hf, gg) in &pairs {
            m.insert(format!("model.layers.{i}.{hf}"), format!("blk.{i}.{gg}"));
        }
    }
    m
}

/// llama.cpp stores Llama q/k rows interleaved for its rotary kernel; transformers wants halves.
/// `forward` = true goes transformers → GGUF.
pub fn permute_qk(t: &Tensor, n_head: usize, forward: bool) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        bail!(Gguf, "cannot permute q/k with {rows} rows for {n_head} heads");
    }
    let half = rows / n_head / 2;
    let rest: usize = dims[1..].iter().product();
    let (a, b) = if forward { (2, half) } else { (half, 2) };
    let out = t.reshape((n_head, a, b, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?;
    Ok(out)
}

/// A GGUF file as a tensor source, in transformers' names and layout.
pub struct GgufSource<R> {
    file: GgufFile<R>,
    arch: Arch,
    unpermute: bool,
    heads: usize,
    kv_heads: usize,
    /// transformers name → GGUF name, for tensors present in the file.
    names: BTreeMap<String, String>,
}

impl<R: Read + Seek> GgufSource<R> {
    /// Reads the header and config; tensors are read on demand.
    pub fn new(reader: R) -> Result<(Self, ModelConfig)> {
        let mut file = GgufFile::open(reader)?;
        let header = file.header();
        let mut cfg = config_of(header)?;
        let raw = header.content.tensor_infos.keys().map(String::as_str);
        crate::model::transformer::extra_layers(cfg.num_hidden_layers, raw, "blk.")?;
        let unpermute = matches!(header.architecture()?, "llama" | "deci");
        // Llama 3.1-style files carry their rope scaling as per-frequency factors.
        if file.has("rope_freqs.weight") {
            let factors = file.tensor("rope_freqs.weight")?.flatten_all()?.to_vec1::<f32>()?;
            let Some(r) = RopeScaling::llama3_from_factors(cfg.rope_theta, cfg.head_dim, &factors) else {
                bail!(Gguf, "`rope_freqs.weight` holds factors that no Llama 3 rope scaling reproduces");
            };
            if let (
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings },
                Some(o),
            ) = (&r, cfg.raw.as_object_mut())
            {
                o.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings}),
                );
            }
            cfg.rope_scaling = Some(r);
        }
        let names = name_map(cfg.arch, cfg.num_hidden_layers).into_iter().filter(|(_, g)| file.has(g)).collect();
        let src = GgufSource {
            file,
            arch: cfg.arch,
            unpermute,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            names,
        };
        Ok((src, cfg))
    }
    /// The parsed header (for the tokenizer and `inspect`).
    pub fn header(&self) -> &GgufHeader {
        self.file.header()
    }
    /// Storage type of a tensor in the file, by its transformers name.
    pub fn ggml_dtype(&self, name: &str) -> Option<GgmlDType> {
        self.file.ggml_dtype(self.names.get(name)?)
    }
}

impl<R: Read + Seek> TensorSource for GgufSource<R> {
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.file.header().tensor_shape(self.names.get(name)?)
    }
    fn storage_dtype(&self, name: &str) -> Option<StorageDtype> {
        match self.ggml_dtype(name)? {
            GgmlDType::F32 => Some(StorageDtype::F32),
            GgmlDType::F16 => Some(StorageDtype::F16),
            GgmlDType::BF16 => Some(StorageDtype::BF16),
            _ => None,
        }
    }
    fn load(&mut self, name: &str) -> Result<Tensor> {
        let g = self.names.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let mut t = self.file.tensor(g)?;
        if self.unpermute {
            if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias") {
                t = permute_qk(&t, self.heads, false)?;
            } else if name.ends_with("self_attn.k_proj.weight") || name.ends_with("self_attn.k_proj.bias") {
                t = permute_qk(&t, self.kv_heads, false)?;
            }
        }
        // llama.cpp stores Gemma's RMSNorm weights as (1 + w); transformers stores w.
        if self.arch.is_gemma() && name.ends_with("norm.weight") {
            t = t.affine(1.0, -1.0)?;
        }
        Ok(t)
    }
    fn load_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> Result<Tensor> {
        // Rows are read apart only where no conversion applies to the whole tensor (the tables).
        let g = self.names.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if name.contains("self_attn.q_proj.") || name.contains("self_attn.k_proj.") || name.ends_with("norm.weight") {
            return crate::formats::source::rows_of(self.load(name)?, name, rows);
        }
        self.file.tensor_rows(g, rows)
    }
    fn load_raw(&mut self, name: &str) -> Result<Vec<u8>> {
        let t = self.load(name)?;
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn permute_round_trips() {
        let t = Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((8, 6)).unwrap();
        let f = permute_qk(&t, 2, true).unwrap();
        let b = permute_qk(&f, 2, false).unwrap();
        assert_eq!(b.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        assert_ne!(f.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    }
}
