//! GGUF export that llama.cpp reads: architecture keys from the (pruned) config, tokenizer
//! metadata carried over, tensors in llama.cpp's names and layouts, streamed one at a time.

use crate::error::{bail, Result};
use crate::export::hf::write_values;
use crate::formats::source::StorageDtype;
use crate::model::config::Arch;
use crate::model::gguf::{name_map, permute_qk};
use crate::model::store::LayerStore;
use crate::model::transformer::{expected_tensors, Model};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
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

/// The period `p` of a Gemma model's sliding-window layout as llama.cpp describes it (layer `i`
/// slides unless `(i + 1) % p == 0`): Gemma 3 writes it as `gemma3.attention.sliding_window_pattern`;
/// Gemma 2's is always 2. A layout no period gives (after dropping layers, say) cannot be written
/// as GGUF, and is refused rather than written wrong.
pub fn swa_period(c: &crate::model::config::ModelConfig) -> Result<Option<usize>> {
    use crate::model::config::{Arch, LayerType};
    let n = c.layer_types.len();
    let fits = |p: usize| (0..n).all(|i| (c.layer_types[i] == LayerType::Sliding) == ((i + 1) % p != 0));
    let shown = || {
        let s: Vec<&str> = c.layer_types.iter().map(|t| if *t == LayerType::Sliding { "S" } else { "F" }).collect();
        s.join("")
    };
    match c.arch {
        Arch::Gemma2 if fits(2) => Ok(None),
        Arch::Gemma2 => bail!(
            Gguf,
            "the model's sliding (S) and full (F) attention layers, {}, no longer alternate as llama.cpp's Gemma 2 \
             expects; write it with --format hf, or drop layers in pairs",
            shown()
        ),
        Arch::Gemma3 => match (1..=n + 1).find(|&p| fits(p)) {
            Some(p) => Ok(Some(p)),
            None => bail!(
                Gguf,
                "the model's sliding (S) and full (F) attention layers, {}, follow no period that GGUF can \
                 record; write it with --format hf",
                shown()
            ),
        },
        _ => Ok(None),
    }
}

/// llama.cpp's name for an architecture: its own, or `deci` (llama.cpp's Llama with a feed-forward
/// width per layer, from Nemotron's DeciLM) for a Llama whose layers' MLP widths differ
/// (`per_layer`). The other architectures take one width in llama.cpp, so per-layer widths are refused.
pub fn gguf_architecture(arch: Arch, per_layer: bool) -> Result<&'static str> {
    match (per_layer, arch) {
        (false, a) => Ok(a.gguf_name()),
        (true, Arch::Llama | Arch::Mistral) => Ok("deci"),
        (true, a) => bail!(
            Gguf,
            "llama.cpp reads a feed-forward width per layer only for Llama models (its `deci` architecture), and \
             this is a {} model; prune it with the same width in every layer",
            a.model_type()
        ),
    }
}

/// Architecture metadata for the model's current (possibly pruned) shape.
pub fn arch_metadata(model: &Model) -> Result<Vec<(String, Value)>> {
    let c = &model.cfg;
    let a = gguf_architecture(c.arch, c.intermediate_sizes.is_some())?;
    let k = |s: &str| format!("{a}.{s}");
    // One width, or one per layer (as convert_hf_to_gguf.py writes Python ints: INT32).
    let ffn = match &c.intermediate_sizes {
        Some(w) => Value::Array(w.iter().map(|&x| Value::I32(x as i32)).collect()),
        None => Value::U32(c.intermediate_size as u32),
    };
    let mut v = vec![
        ("general.architecture".to_string(), Value::String(a.to_string())),
        ("general.name".to_string(), Value::String("pruned with podar".to_string())),
        (k("block_count"), Value::U32(c.num_hidden_layers as u32)),
        (k("context_length"), Value::U32(c.max_position_embeddings as u32)),
        (k("embedding_length"), Value::U32(c.hidden_size as u32)),
        (k("feed_forward_length"), ffn),
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
    if let Some(crate::model::config::RopeScaling::Linear { factor }) = &c.rope_scaling {
        v.push((k("rope.scaling.type"), Value::String("linear".into())));
        v.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
    }
    Ok(v)
}

/// Writes `model` (its layers in `layers`, read one at a time) as GGUF v3 with `extra` metadata
/// (tokenizer keys) appended. The tensor table comes from the config's shapes, before any weight.
pub fn write_gguf<W: Write + ?Sized>(
    model: &Model,
    layers: &mut dyn LayerStore,
    extra: &[(String, Value)],
    dtype: GgufDtype,
    w: &mut W,
) -> Result<()> {
    let c = &model.cfg;
    let names = name_map(c.arch, c.num_hidden_layers);
    let mut meta = arch_metadata(model)?;
    if let Some(p) = swa_period(c)? {
        meta.push((format!("{}.attention.sliding_window_pattern", c.arch.gguf_name()), Value::U32(p as u32)));
    }
    meta.extend(extra.iter().cloned());
    meta.push(("general.alignment".into(), Value::U32(ALIGN as u32)));
    // Tensor directory first: names, shapes (reversed, innermost first), types, offsets.
    let tensors = expected_tensors(c);
    let mut plan = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (name, dims) in tensors {
        let Some(g) = names.get(&name) else {
            bail!(Gguf, "no llama.cpp name for tensor `{name}`");
        };
        let row = *dims.last().unwrap_or(&1);
        // Quantize matrices only; norms and biases stay F32 as llama.cpp expects. Q8_0 blocks are
        // 32 values of a row: rows of other lengths go out as F16 (the plan warns of it).
        let dt = match (dims.len(), dtype) {
            (0 | 1, _) => GgufDtype::F32,
            (_, GgufDtype::Q8_0) if row % 32 != 0 => GgufDtype::F16,
            _ => dtype,
        };
        let n = dims.iter().product::<usize>() as u64;
        let size = match dt {
            GgufDtype::F32 => n * 4,
            GgufDtype::F16 => n * 2,
            GgufDtype::Q8_0 => n / 32 * 34,
        };
        plan.push((g.clone(), dims, dt, offset, size));
        offset += size.div_ceil(ALIGN) * ALIGN;
    }
    // Llama 3 rope scaling travels as llama.cpp's per-frequency factors.
    let rope_freqs = c.rope_scaling.as_ref().and_then(|r| r.llama3_factors(c.rope_theta, c.head_dim));
    if let Some(f) = &rope_freqs {
        let n = f.len();
        plan.push(("rope_freqs.weight".into(), vec![n], GgufDtype::F32, offset, 4 * n as u64));
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
    for (g, dims, dt, off, _) in &plan {
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
    let mut sizes = plan.iter().map(|p| (p.2, p.4));
    // The tensor being written (its type and planned bytes) and the bytes written of it so far:
    // a table kept in the model's file comes in parts.
    let mut current: Option<(GgufDtype, u64)> = None;
    let mut written = 0u64;
    let mut put = |name: &str, t: &Tensor, last: bool| -> Result<()> {
        let (dt, size) = match current {
            Some(planned) => planned,
            None => {
                let Some(planned) = sizes.next() else {
                    bail!(Gguf, "tensor `{name}` is past the planned table");
                };
                current = Some(planned);
                written = 0;
                planned
            }
        };
        let mut t = t.clone();
        if llama && name.contains("self_attn.q_proj.") {
            t = permute_qk(&t, c.num_attention_heads, true)?;
        } else if llama && name.contains("self_attn.k_proj.") {
            t = permute_qk(&t, c.num_key_value_heads, true)?;
        }
        if c.arch.is_gemma() && name.ends_with("norm.weight") {
            t = t.affine(1.0, 1.0)?; // llama.cpp stores Gemma norms as 1 + w
        }
        written += match dt {
            GgufDtype::F32 => write_values(&t, StorageDtype::F32, w)?,
            GgufDtype::F16 => write_values(&t, StorageDtype::F16, w)?,
            GgufDtype::Q8_0 => write_q8_0(&t, Q8_ROWS, w)?,
        };
        if !last {
            return Ok(());
        }
        current = None;
        if written != size {
            bail!(Gguf, "tensor `{name}`: encoded {written} bytes, planned {size}");
        }
        let pad = size.div_ceil(ALIGN) * ALIGN - size;
        w.write_all(&vec![0u8; pad as usize])?;
        Ok(())
    };
    model.each_tensor(layers, 0..usize::MAX, &mut put)?;
    if let Some(f) = rope_freqs {
        let n = f.len();
        put("rope_freqs.weight", &candle_core::Tensor::from_vec(f, n, &candle_core::Device::Cpu)?, true)?;
    }
    Ok(())
}

/// Rows quantized at a time by [`write_q8_0`].
const Q8_ROWS: usize = 4096;

/// Writes `t` (rows of a multiple of 32 values) as Q8_0 blocks, `rows_at_once` rows at a time:
/// blocks run along rows, so this gives the bytes of the whole tensor without a tensor-sized buffer.
fn write_q8_0<W: Write + ?Sized>(t: &Tensor, rows_at_once: usize, w: &mut W) -> Result<u64> {
    let rows = t.dims().first().copied().unwrap_or(1);
    let mut n = 0u64;
    for r in (0..rows).step_by(rows_at_once.max(1)) {
        // A copy that starts at offset 0: candle's quantizer reads the storage from its start,
        // whatever the view's offset (a plain `contiguous()` of a row range is still a view).
        let part = t.narrow(0, r, rows_at_once.min(rows - r))?.force_contiguous()?;
        let q = QTensor::quantize(&part, GgmlDType::Q8_0)?.data()?.into_owned();
        w.write_all(&q)?;
        n += q.len() as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_in_row_blocks_equals_the_whole_tensor() {
        let (rows, cols) = (70, 64);
        let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0).collect();
        let t = Tensor::from_vec(v, (rows, cols), &candle_core::Device::Cpu).unwrap();
        let whole = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap().data().unwrap().into_owned();
        for step in [1, 16, 32, 69, 70, 4096] {
            let mut out = Vec::new();
            let n = write_q8_0(&t, step, &mut out).unwrap();
            assert_eq!(n as usize, out.len());
            assert!(out == whole, "{step} rows at a time give other bytes than the whole tensor");
        }
    }
}
