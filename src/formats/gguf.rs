//! GGUF: header and metadata first (architecture, sizes, tokenizer), then tensors one at a time,
//! dequantized to f32 and renamed/reshaped to transformers' conventions.

use crate::config::{Activation, Arch, LayerType, ModelConfig, RopeScaling};
use crate::error::{bail, first_line, Error, Result};
use crate::source::{StorageDtype, TensorSource};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

/// A GGUF file's header: metadata and tensor directory.
pub struct GgufHeader {
    pub content: Content,
}

impl GgufHeader {
    /// Parses the header (magic, metadata, tensor infos). Sizes are capped by candle's reader.
    pub fn read<R: Read + Seek>(r: &mut R) -> Result<Self> {
        r.seek(SeekFrom::Start(0))?;
        let content = Content::read(r).map_err(|e| Error::Gguf(explain_dtype(first_line(&e))))?;
        Ok(Self { content })
    }
    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }
    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// An integer metadata value (any integer type).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        value_u64(self.get(key)?)
    }
    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            // The shortest decimal that round-trips the f32, so 1e-5 stays 1e-5 in config.json.
            Value::F32(x) => format!("{x}").parse().ok(),
            Value::F64(x) => Some(*x),
            v => value_u64(v).map(|x| x as f64),
        }
    }
    /// A boolean metadata value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture").ok_or_else(|| Error::Gguf("missing `general.architecture`".into()))
    }

    /// Builds the model config from metadata alone (plus tensor shapes, never data).
    pub fn config(&self) -> Result<ModelConfig> {
        let name = self.architecture()?;
        let arch = match name {
            "llama" => Arch::Llama,
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
            match self.get(&key) {
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
        let kv_heads = self
            .get(&k("attention.head_count_kv"))
            .map(|_| req("attention.head_count_kv"))
            .transpose()?
            .unwrap_or(heads);
        if hidden == 0 || heads == 0 || layers == 0 || layers > 1024 {
            bail!(
                Gguf,
                "embedding_length and attention.head_count must be positive and block_count between 1 and 1024"
            );
        }
        let head_dim = match self.get_u64(&k("attention.key_length")) {
            Some(d) => d as usize,
            None if hidden % heads == 0 => hidden / heads,
            None => bail!(Gguf, "embedding_length {hidden} is not a multiple of attention.head_count {heads}"),
        };
        if let Some(r) = self.get_u64(&k("rope.dimension_count")) {
            if r as usize != head_dim {
                bail!(Gguf, "rope.dimension_count is {r}, but heads are {head_dim} wide: partial rotary embeddings are not supported");
            }
        }
        let vocab = match self.get_u64(&k("vocab_size")) {
            Some(v) => v as usize,
            None => match self.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => self
                    .tensor_shape("token_embd.weight")
                    .and_then(|s| s.first().copied())
                    .ok_or_else(|| Error::Gguf("cannot tell the vocabulary size".into()))?,
            },
        };
        let sliding_window = self.get_u64(&k("attention.sliding_window")).map(|x| x as usize);
        // llama.cpp's layout: Gemma 2 alternates; Gemma 3 slides except every `p`-th layer
        // (`attention.sliding_window_pattern`, 6 when absent).
        let period = match arch {
            Arch::Gemma2 => Some(2),
            Arch::Gemma3 => Some(self.get_u64(&k("attention.sliding_window_pattern")).map_or(6, |p| p as usize)),
            _ => None,
        };
        let layer_types: Vec<LayerType> = (0..layers)
            .map(|i| match period {
                Some(p) if p == 0 || (i + 1) % p != 0 => LayerType::Sliding,
                _ => LayerType::Full,
            })
            .collect();
        let rope_scaling = match (self.get_str(&k("rope.scaling.type")), self.get_f64(&k("rope.scaling.factor"))) {
            (Some("linear"), Some(f)) if f != 1.0 => Some(RopeScaling::Linear { factor: f }),
            (Some("none") | None, _) | (Some("linear"), _) => None,
            (Some(other), _) => bail!(Gguf, "unsupported rope scaling `{other}`"),
        };
        let bos = self.get_u64("tokenizer.ggml.bos_token_id").map(|x| x as u32);
        let eos: Vec<u32> = self.get_u64("tokenizer.ggml.eos_token_id").map(|x| vec![x as u32]).unwrap_or_default();
        let tie = !self.content.tensor_infos.contains_key("output.weight");
        let has_qkv_bias = self.content.tensor_infos.contains_key("blk.0.attn_q.bias");
        let max_pos = self.get_u64(&k("context_length")).map(|x| x as usize).unwrap_or(2048);
        let eps = self.get_f64(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6);
        let theta = self.get_f64(&k("rope.freq_base")).unwrap_or(10000.0);
        let (attn_cap, final_cap) =
            (self.get_f64(&k("attn_logit_softcapping")), self.get_f64(&k("final_logit_softcapping")));
        let mut raw = json!({
            "architectures": [arch.hf_class()],
            "model_type": arch.model_type(),
            "hidden_size": hidden,
            "intermediate_size": req("feed_forward_length")?,
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
        let cfg = ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: req("feed_forward_length")?,
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
        cfg.validate()?;
        Ok(cfg)
    }

    fn tensor_shape(&self, gguf_name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(gguf_name).map(|t| t.shape.dims().to_vec())
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
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

/// `q` as f32, its blocks dequantized in runs spread over the worker threads (candle's own
/// dequantization runs on one thread, and the load would wait for it).
fn dequantize(q: &candle_core::quantized::QTensor) -> Result<Tensor> {
    let dtype = q.dtype();
    let (bs, ts) = (dtype.block_size(), dtype.type_size());
    let data = q.data()?;
    let len = q.shape().elem_count();
    if bs == 0 || !len.is_multiple_of(bs) || data.len() != len / bs * ts {
        bail!(Gguf, "a {dtype:?} tensor of {len} values holds {} bytes", data.len());
    }
    // Runs of whole blocks; a run's blocks are copied out of the file's bytes (aligned for their
    // type) and dequantized into its part of the output.
    let run = bs * 256;
    let failed = std::sync::Mutex::new(None);
    let out = crate::kernels::par_fill(len, run, &|r0, out| {
        // A run at a time, so that the temporaries stay small.
        for (i, out) in out.chunks_mut(run).enumerate() {
            let (b0, nb) = ((r0 + i) * run / bs, out.len() / bs);
            let part = dtype.from_data(std::borrow::Cow::Borrowed(&data[b0 * ts..(b0 + nb) * ts]));
            match part.dequantize(out.len()) {
                Ok(candle_core::CpuStorage::F32(v)) if v.len() == out.len() => {
                    out.iter_mut().zip(v).for_each(|(o, x)| _ = o.write(x));
                }
                other => {
                    // The output must still be written in full; the error is reported below.
                    out.iter_mut().for_each(|o| _ = o.write(0.0));
                    let e = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => format!("{dtype:?} dequantized to something other than {} f32 values", out.len()),
                    };
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        bail!(Gguf, "dequantizing a {dtype:?} tensor: {e}");
    }
    Ok(Tensor::from_vec(out, q.shape(), &Device::Cpu)?)
}

/// A GGUF file as a tensor source, in transformers' names and layout.
pub struct GgufSource<R> {
    reader: R,
    header: GgufHeader,
    arch: Arch,
    unpermute: bool,
    heads: usize,
    kv_heads: usize,
    /// transformers name → GGUF name, for tensors present in the file.
    names: BTreeMap<String, String>,
}

/// Refuses a file whose tensor data does not fit its header: a tensor that runs past the end of
/// the file (a truncated download), overlaps the next one, or starts off the file's alignment.
fn check_layout(header: &GgufHeader, file_len: u64) -> Result<()> {
    let c = &header.content;
    let align = match c.metadata.get("general.alignment") {
        Some(v) => v.to_u32().map_err(|e| Error::Gguf(format!("general.alignment: {e}")))? as u64,
        None => 32,
    };
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(c.tensor_infos.len());
    for (name, t) in &c.tensor_infos {
        let corrupt = || Error::Gguf(format!("tensor `{name}` is larger than any file: the file is corrupt"));
        let n = t.shape.dims().iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).ok_or_else(corrupt)?;
        let bs = t.ggml_dtype.block_size() as u64;
        if n % bs != 0 {
            bail!(Gguf, "tensor `{name}` has {n} values, not a whole number of {:?} blocks", t.ggml_dtype);
        }
        let bytes = (n / bs).checked_mul(t.ggml_dtype.type_size() as u64).ok_or_else(corrupt)?;
        if align > 0 && t.offset % align != 0 {
            bail!(
                Gguf,
                "tensor `{name}` starts at offset {}, off the file's alignment of {align}: the file is corrupt",
                t.offset
            );
        }
        spans.push((t.offset, t.offset.saturating_add(bytes), name));
    }
    if let Some((a, b)) = crate::source::first_overlap(&mut spans) {
        bail!(Gguf, "the data of tensors `{a}` and `{b}` overlap: the file is corrupt");
    }
    if let Some(&(_, span_end, name)) = spans.last() {
        let end = c.tensor_data_offset.saturating_add(span_end);
        if end > file_len {
            bail!(
                Gguf,
                "the file has {file_len} bytes, but tensor `{name}` ends at byte {end}: the file is truncated (an \
                 interrupted download?)"
            );
        }
    }
    Ok(())
}

impl<R: Read + Seek> GgufSource<R> {
    /// Reads the header and config; tensors are read on demand.
    pub fn new(mut reader: R) -> Result<(Self, ModelConfig)> {
        let header = GgufHeader::read(&mut reader)?;
        let mut cfg = header.config()?;
        check_layout(&header, reader.seek(std::io::SeekFrom::End(0))?)?;
        let raw = header.content.tensor_infos.keys().map(String::as_str);
        crate::model::extra_layers(cfg.num_hidden_layers, raw, "blk.")?;
        // Llama 3.1-style files carry their rope scaling as per-frequency factors.
        if header.content.tensor_infos.contains_key("rope_freqs.weight") {
            let t = header.content.tensor(&mut reader, "rope_freqs.weight", &candle_core::Device::Cpu)?;
            let factors = t.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
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
        let names = name_map(cfg.arch, cfg.num_hidden_layers)
            .into_iter()
            .filter(|(_, g)| header.content.tensor_infos.contains_key(g))
            .collect();
        let unpermute = header.architecture()? == "llama";
        let src = GgufSource {
            reader,
            arch: cfg.arch,
            unpermute,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            names,
            header,
        };
        Ok((src, cfg))
    }
    /// The parsed header (for the tokenizer and `inspect`).
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }
    /// Storage type of a tensor in the file.
    pub fn ggml_dtype(&self, name: &str) -> Option<GgmlDType> {
        let g = self.names.get(name)?;
        self.header.content.tensor_infos.get(g).map(|t| t.ggml_dtype)
    }
}

impl<R: Read + Seek> TensorSource for GgufSource<R> {
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.header.tensor_shape(self.names.get(name)?)
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
        let info = &self.header.content.tensor_infos[g];
        let q = info
            .read(&mut self.reader, self.header.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| Error::Gguf(format!("tensor `{g}`: {}", first_line(&e))))?;
        let mut t = dequantize(&q)?;
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
    fn load_raw(&mut self, name: &str) -> Result<Vec<u8>> {
        let t = self.load(name)?;
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// candle's "unknown dtype for tensor N" (N: the ggml type number) said in words: which type, and
/// which ones podar reads.
fn explain_dtype(msg: String) -> String {
    let Some(n) = msg.strip_prefix("unknown dtype for tensor ").and_then(|n| n.trim().parse::<u32>().ok()) else {
        return msg;
    };
    const NAMES: &[(u32, &str)] = &[
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    let name = NAMES.iter().find(|&&(k, _)| k == n).map_or_else(|| format!("type {n}"), |&(_, s)| s.to_string());
    format!(
        "a tensor is stored as {name}, which podar cannot read; use a GGUF in F32, F16, BF16, Q4_0, Q4_1, Q5_0, \
         Q5_1, Q8_0 or a K-quant (Q2_K to Q8_K, e.g. Q4_K_M)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tensor_types_are_named() {
        assert!(explain_dtype("unknown dtype for tensor 20".into()).starts_with("a tensor is stored as IQ4_NL,"));
        assert!(explain_dtype("unknown dtype for tensor 99".into()).contains("stored as type 99,"));
        assert_eq!(explain_dtype("unexpected end of file".into()), "unexpected end of file");
    }

    /// The threaded dequantization gives candle's own values, bit for bit, for block types and
    /// plain floats, on a tensor of several runs with a short last one.
    #[test]
    fn threaded_dequantization_matches_candles() {
        use candle_core::quantized::QTensor;
        let t = crate::kernels::tests::wavy(7, 256 * 38, 31);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::F16, GgmlDType::F32] {
            let q = QTensor::quantize(&t, dtype).unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = dequantize(&q).unwrap();
            assert_eq!(got.dims(), &[7, 256 * 38]);
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype:?}");
        }
    }

    #[test]
    fn permute_round_trips() {
        let t = Tensor::arange(0f32, 48.0, &Device::Cpu).unwrap().reshape((8, 6)).unwrap();
        let f = permute_qk(&t, 2, true).unwrap();
        let b = permute_qk(&f, 2, false).unwrap();
        assert_eq!(b.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
        assert_ne!(f.to_vec2::<f32>().unwrap(), t.to_vec2::<f32>().unwrap());
    }
}
