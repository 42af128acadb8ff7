//! GGUF export that llama.cpp reads: architecture keys from the (pruned) config, tokenizer
//! metadata carried over, tensors in llama.cpp's names and layouts, streamed one at a time.

use crate::error::{bail, Result};
use crate::export::write_values;
use crate::gguf::{name_map, permute_qk};
use crate::model::Model;
use crate::source::StorageDtype;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use std::io::Write;

/// Tensor storage in an exported GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufDtype {
    F32,
    F16,
    Q8_0,
}

impl GgufDtype {
    /// ggml's type id.
    fn type_id(self) -> u32 {
        match self {
            GgufDtype::F32 => 0,
            GgufDtype::F16 => 1,
            GgufDtype::Q8_0 => 8,
        }
    }
}

const ALIGN: u64 = 32;

fn put_str(w: &mut Vec<u8>, s: &str) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(w: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => w.push(*x),
        Value::I8(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => w.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => w.push(*x as u8),
        Value::String(s) => put_str(w, s),
        Value::Array(a) => {
            let t = a.first().map_or(4, type_id);
            if a.iter().any(|x| type_id(x) != t) {
                bail!(Gguf, "metadata array mixes value types");
            }
            w.extend_from_slice(&t.to_le_bytes());
            w.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(w, x)?;
            }
        }
    }
    Ok(())
}

/// Architecture metadata for the model's current (possibly pruned) shape.
pub fn arch_metadata(model: &Model) -> Vec<(String, Value)> {
    let c = &model.cfg;
    let a = c.arch.gguf_name();
    let k = |s: &str| format!("{a}.{s}");
    let mut v = vec![
        ("general.architecture".to_string(), Value::String(a.to_string())),
        ("general.name".to_string(), Value::String("pruned with podar".to_string())),
        (k("block_count"), Value::U32(c.num_hidden_layers as u32)),
        (k("context_length"), Value::U32(c.max_position_embeddings as u32)),
        (k("embedding_length"), Value::U32(c.hidden_size as u32)),
        (k("feed_forward_length"), Value::U32(c.intermediate_size as u32)),
        (k("attention.head_count"), Value::U32(c.num_attention_heads as u32)),
        (k("attention.head_count_kv"), Value::U32(c.num_key_value_heads as u32)),
        (k("attention.key_length"), Value::U32(c.head_dim as u32)),
        (k("attention.value_length"), Value::U32(c.head_dim as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(c.rms_norm_eps as f32)),
        (k("rope.freq_base"), Value::F32(c.rope_theta as f32)),
        (k("rope.dimension_count"), Value::U32(c.head_dim as u32)),
        (k("vocab_size"), Value::U32(c.vocab_size as u32)),
    ];
    if let Some(w) = c.sliding_window {
        v.push((k("attention.sliding_window"), Value::U32(w as u32)));
    }
    if let Some(x) = c.attn_logit_softcapping {
        v.push((k("attn_logit_softcapping"), Value::F32(x as f32)));
    }
    if let Some(x) = c.final_logit_softcapping {
        v.push((k("final_logit_softcapping"), Value::F32(x as f32)));
    }
    if let Some(crate::config::RopeScaling::Linear { factor }) = &c.rope_scaling {
        v.push((k("rope.scaling.type"), Value::String("linear".into())));
        v.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
    }
    v
}

/// Writes `model` as GGUF v3 with `extra` metadata (tokenizer keys) appended.
pub fn write_gguf<W: Write + ?Sized>(
    model: &Model,
    extra: &[(String, Value)],
    dtype: GgufDtype,
    w: &mut W,
) -> Result<()> {
    let c = &model.cfg;
    let names = name_map(c.arch, c.num_hidden_layers);
    let mut meta = arch_metadata(model);
    meta.extend(extra.iter().cloned());
    meta.push(("general.alignment".into(), Value::U32(ALIGN as u32)));
    // Tensor directory first: names, shapes (reversed, innermost first), types, offsets.
    let tensors = model.named_tensors();
    let mut plan = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, t) in &tensors {
        let Some(g) = names.get(name) else {
            bail!(Gguf, "no llama.cpp name for tensor `{name}`");
        };
        let dims = t.dims().to_vec();
        let row = *dims.last().unwrap_or(&1);
        // Quantize matrices only; norms and biases stay F32 as llama.cpp expects.
        let dt = if dims.len() < 2 || (dtype == GgufDtype::Q8_0 && row % 32 != 0) { GgufDtype::F32 } else { dtype };
        let n = t.elem_count() as u64;
        let size = match dt {
            GgufDtype::F32 => n * 4,
            GgufDtype::F16 => n * 2,
            GgufDtype::Q8_0 => n / 32 * 34,
        };
        plan.push((name.clone(), g.clone(), t.clone(), dims, dt, offset, size));
        offset += size.div_ceil(ALIGN) * ALIGN;
    }
    // Llama 3 rope scaling travels as llama.cpp's per-frequency factors.
    if let Some(f) = c.rope_scaling.as_ref().and_then(|r| r.llama3_factors(c.rope_theta, c.head_dim)) {
        let n = f.len();
        let size = 4 * n as u64;
        let t = candle_core::Tensor::from_vec(f, n, &candle_core::Device::Cpu)?;
        plan.push(("rope_freqs.weight".into(), "rope_freqs.weight".into(), t, vec![n], GgufDtype::F32, offset, size));
    }
    let mut h = Vec::new();
    h.extend_from_slice(&0x46554747u32.to_le_bytes());
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(plan.len() as u64).to_le_bytes());
    h.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in &meta {
        put_str(&mut h, k);
        h.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut h, v)?;
    }
    for (_, g, _, dims, dt, off, _) in &plan {
        put_str(&mut h, g);
        h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims.iter().rev() {
            h.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        h.extend_from_slice(&dt.type_id().to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
    }
    while !(h.len() as u64).is_multiple_of(ALIGN) {
        h.push(0);
    }
    w.write_all(&h)?;
    let llama = c.arch.gguf_name() == "llama";
    for (name, _, t, _, dt, _, size) in plan {
        let mut t = t;
        if llama && name.contains("self_attn.q_proj.") {
            t = permute_qk(&t, c.num_attention_heads, true)?;
        } else if llama && name.contains("self_attn.k_proj.") {
            t = permute_qk(&t, c.num_key_value_heads, true)?;
        }
        if c.arch.is_gemma() && name.ends_with("norm.weight") {
            t = t.affine(1.0, 1.0)?; // llama.cpp stores Gemma norms as 1 + w
        }
        let written = match dt {
            GgufDtype::F32 => write_values(&t, StorageDtype::F32, w)?,
            GgufDtype::F16 => write_values(&t, StorageDtype::F16, w)?,
            GgufDtype::Q8_0 => {
                // Q8_0 blocks run along rows, so quantizing a few thousand rows at a time gives the
                // same bytes as the whole tensor without a tensor-sized buffer.
                let rows = t.dims().first().copied().unwrap_or(1);
                let mut n = 0u64;
                for r in (0..rows).step_by(4096) {
                    let part = t.narrow(0, r, 4096.min(rows - r))?.contiguous()?;
                    let q = QTensor::quantize(&part, GgmlDType::Q8_0)?.data()?.into_owned();
                    w.write_all(&q)?;
                    n += q.len() as u64;
                }
                n
            }
        };
        if written != size {
            bail!(Gguf, "tensor `{name}`: encoded {written} bytes, planned {size}");
        }
        let pad = size.div_ceil(ALIGN) * ALIGN - size;
        w.write_all(&vec![0u8; pad as usize])?;
    }
    Ok(())
}
