//! Export: a Hugging Face folder (config.json, model.safetensors, tokenizer files) written from the
//! model itself, so the config and the tensor shapes can never disagree.

use crate::error::Result;
use crate::formats::source::StorageDtype;
use crate::kernels::with_slice;
use crate::model::tokenizer::Tokenizer;
use crate::model::transformer::{expected_tensors, Model};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::io::Write;

fn encode(v: &[f32], dtype: StorageDtype, out: &mut Vec<u8>) {
    match dtype {
        StorageDtype::F32 => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        StorageDtype::F16 => v.iter().for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
        StorageDtype::BF16 => v.iter().for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
    }
}

/// Writes a tensor's values little-endian in `dtype`, 64 Ki values at a time, so no tensor-sized
/// buffer is ever allocated (the embedding alone is 113 MB in f32 for SmolLM2). Returns the bytes written.
pub(crate) fn write_values<W: Write + ?Sized>(t: &Tensor, dtype: StorageDtype, w: &mut W) -> Result<u64> {
    let mut buf = Vec::with_capacity((64 << 10) * dtype.size());
    with_slice(t, |s| -> Result<u64> {
        for chunk in s.chunks(64 << 10) {
            buf.clear();
            encode(chunk, dtype, &mut buf);
            w.write_all(&buf)?;
        }
        Ok((s.len() * dtype.size()) as u64)
    })?
}

/// Streams `model.safetensors` into `w`, one tensor at a time, in `expected_tensors` order.
pub fn write_safetensors<W: Write + ?Sized>(model: &Model, dtype: StorageDtype, w: &mut W) -> Result<()> {
    let tensors = model.named_tensors();
    let expected = expected_tensors(&model.cfg);
    // The writer and the config agree by construction; check anyway before writing a byte.
    for ((name, t), (ename, shape)) in tensors.iter().zip(&expected) {
        if name != ename || t.dims() != shape.as_slice() {
            return Err(crate::Error::Shape { name: name.clone(), expected: shape.clone(), got: t.dims().to_vec() });
        }
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, t) in &tensors {
        let bytes = t.elem_count() * dtype.size();
        header.insert(
            name.clone(),
            json!({"dtype": dtype.safetensors_name(), "shape": t.dims(), "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    for (_, t) in &tensors {
        write_values(t, dtype, w)?;
    }
    Ok(())
}

/// The small files of a Hugging Face folder: config.json, tokenizer.json, tokenizer_config.json,
/// generation_config.json.
pub fn hf_side_files(
    model: &Model,
    tokenizer: Option<&Tokenizer>,
    generation_config: Option<&Value>,
    dtype: StorageDtype,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut cfg = model.cfg.to_hf_json();
    cfg["torch_dtype"] = json!(dtype.torch_name());
    // transformers ≥ 4.56 names it `dtype` (and reads that first): a source's own must not survive.
    if cfg.get("dtype").is_some() {
        cfg["dtype"] = json!(dtype.torch_name());
    }
    let mut files = vec![("config.json".to_string(), serde_json::to_vec_pretty(&cfg)?)];
    if let Some(t) = tokenizer {
        files.push(("tokenizer.json".into(), t.json.clone()));
        files.push(("tokenizer_config.json".into(), serde_json::to_vec_pretty(&t.config)?));
    }
    let gen = match generation_config {
        Some(g) => g.clone(),
        None => {
            let mut g = json!({"_from_model_config": true});
            if let Some(b) = model.cfg.bos_token_id {
                g["bos_token_id"] = json!(b);
            }
            if let Some(e) = model.cfg.eos_token_ids.first() {
                g["eos_token_id"] = json!(e);
            }
            g
        }
    };
    files.push(("generation_config.json".into(), serde_json::to_vec_pretty(&gen)?));
    Ok(files)
}
