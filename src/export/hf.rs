//! Export: a Hugging Face folder (config.json, model.safetensors or its shards and index, tokenizer
//! files) written from the model itself, so the config and the tensor shapes can never disagree.

use crate::error::{bail, Result};
use crate::formats::source::StorageDtype;
use crate::formats::zip::FileSink;
use crate::kernels::with_slice;
use crate::model::store::LayerStore;
use crate::model::tokenizer::Tokenizer;
use crate::model::transformer::{expected_tensors, Model};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::io::Write;
use std::ops::Range;

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

/// Tensor data per safetensors file past which the weights are split into shards: 2 GB, so that
/// every file, header included, stays below 4 GiB (a zip entry without zip64 sizes, FAT32).
pub const SHARD_BYTES: u64 = 2_000_000_000;

/// The index transformers reads a sharded folder by.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// Bytes of one tensor's data in `dtype`.
fn data_bytes(name: &str, shape: &[usize], dtype: StorageDtype) -> Result<u64> {
    shape
        .iter()
        .try_fold(dtype.size() as u64, |n, &d| n.checked_mul(d as u64))
        .ok_or_else(|| crate::Error::Config(format!("tensor `{name}` of shape {shape:?} is too large")))
}

/// The safetensors header, its 8-byte length first, of `tensors` laid out back to back in this
/// order. Shapes and dtype are all it needs: it can be written before any tensor exists.
pub fn safetensors_header(tensors: &[(String, Vec<usize>)], dtype: StorageDtype) -> Result<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let end = offset
            .checked_add(data_bytes(name, shape, dtype)?)
            .ok_or_else(|| crate::Error::Config("the tensors' total size overflows".into()))?;
        let entry = json!({"dtype": dtype.safetensors_name(), "shape": shape, "data_offsets": [offset, end]});
        if header.insert(name.clone(), entry).is_some() {
            bail!(Config, "tensor name `{name}` is given twice");
        }
        offset = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    Ok(out)
}

/// Splits `tensors`, in order, into the index ranges of the shards: a shard ends where the next
/// tensor would take its data past `shard_bytes`; a tensor larger than that is a shard of its own.
pub fn shard_ranges(
    tensors: &[(String, Vec<usize>)],
    dtype: StorageDtype,
    shard_bytes: u64,
) -> Result<Vec<Range<usize>>> {
    let mut ranges = Vec::new();
    let (mut start, mut filled) = (0, 0u64);
    for (i, (name, shape)) in tensors.iter().enumerate() {
        let bytes = data_bytes(name, shape, dtype)?;
        if i > start && filled.saturating_add(bytes) > shard_bytes {
            ranges.push(start..i);
            (start, filled) = (i, 0);
        }
        filled = filled.saturating_add(bytes);
    }
    ranges.push(start..tensors.len());
    Ok(ranges)
}

/// The file name of shard `i` (from 0) of `n`: `model.safetensors` when alone, else transformers'
/// `model-00001-of-00003.safetensors`.
pub fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".into()
    } else {
        format!("model-{:05}-of-{n:05}.safetensors", i + 1)
    }
}

/// `model.safetensors.index.json` as transformers writes it: the total tensor data bytes and
/// the shard file of every tensor.
pub fn safetensors_index(
    tensors: &[(String, Vec<usize>)],
    dtype: StorageDtype,
    shards: &[Range<usize>],
) -> Result<Vec<u8>> {
    let mut total = 0u64;
    let mut map = serde_json::Map::new();
    for (i, r) in shards.iter().enumerate() {
        let Some(part) = tensors.get(r.clone()) else {
            bail!(Config, "shard {i} ({r:?}) lies outside the {} tensors", tensors.len());
        };
        for (name, shape) in part {
            total = total.saturating_add(data_bytes(name, shape, dtype)?);
            map.insert(name.clone(), json!(shard_name(i, shards.len())));
        }
    }
    let mut out = serde_json::to_vec_pretty(&json!({"metadata": {"total_size": total}, "weight_map": map}))?;
    out.push(b'\n');
    Ok(out)
}

/// Streams one safetensors file into `w`: the header of the tensors numbered `range` of
/// `expected` (the model's, in `expected_tensors` order), then their data, read from the model
/// and `layers` one tensor at a time.
fn write_file<W: Write + ?Sized>(
    model: &Model,
    layers: &mut dyn LayerStore,
    expected: &[(String, Vec<usize>)],
    range: Range<usize>,
    dtype: StorageDtype,
    w: &mut W,
) -> Result<()> {
    let Some(shapes) = expected.get(range.clone()) else {
        bail!(Config, "tensors {range:?} lie outside the model's {}", expected.len());
    };
    w.write_all(&safetensors_header(shapes, dtype)?)?;
    model.each_tensor(layers, range, &mut |_, t, _| write_values(t, dtype, w).map(|_| ()))
}

/// Streams the whole model (its layers in memory) as one `model.safetensors` into `w`, in
/// `expected_tensors` order, whatever its size ([`write_weights`] splits it into shards).
pub fn write_safetensors<W: Write + ?Sized>(model: &Model, dtype: StorageDtype, w: &mut W) -> Result<()> {
    let expected = expected_tensors(&model.cfg);
    write_file(model, &mut model.layers.clone(), &expected, 0..expected.len(), dtype, w)
}

/// Writes the weights of `model` (its layers in `layers`) into `sink`: one `model.safetensors`
/// while the tensor data fits `shard_bytes` ([`SHARD_BYTES`] for an export), else shards in
/// `expected_tensors` order and `model.safetensors.index.json`. Every header comes from the
/// config's shapes, so each file is written as its tensors are read, a layer at a time.
pub fn write_weights(
    model: &Model,
    layers: &mut dyn LayerStore,
    dtype: StorageDtype,
    shard_bytes: u64,
    sink: &mut dyn FileSink,
) -> Result<()> {
    let expected = expected_tensors(&model.cfg);
    let shards = shard_ranges(&expected, dtype, shard_bytes)?;
    for (i, r) in shards.iter().enumerate() {
        sink.file(&shard_name(i, shards.len()), &mut |w| write_file(model, layers, &expected, r.clone(), dtype, w))?;
    }
    if shards.len() > 1 {
        let index = safetensors_index(&expected, dtype, &shards)?;
        sink.file(INDEX_NAME, &mut |w| Ok(w.write_all(&index)?))?;
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
    if model.cfg.intermediate_sizes.is_some() {
        bail!(
            Input,
            "this model's layers have MLP widths of their own ({}), and transformers' config.json holds one \
             intermediate_size: save it as GGUF (llama.cpp's `deci` architecture)",
            model.cfg.mlp_width_range()
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::safetensors::{read_header, shard_names};
    use std::io::Cursor;

    /// An untied llama (its embedding and head are 64 KiB each in f32), config from the fixtures.
    const CONFIG: &[u8] = include_bytes!("../../tests/fixtures/tiny/llama_sharded/config.json");

    /// The files a sink was given, in memory.
    #[derive(Default)]
    struct Files(Vec<(String, Vec<u8>)>);

    impl FileSink for Files {
        fn file(&mut self, name: &str, body: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()> {
            let mut v = Vec::new();
            body(&mut v)?;
            self.0.push((name.to_string(), v));
            Ok(())
        }
    }

    /// The fixture's architecture with pseudo-random weights, written by `safetensors_header`.
    fn random_model() -> Model {
        let cfg = crate::model::config::ModelConfig::from_hf_json(CONFIG).unwrap();
        let shapes = expected_tensors(&cfg);
        let mut file = safetensors_header(&shapes, StorageDtype::F32).unwrap();
        let n: usize = shapes.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let mut x = 12345u32;
        for _ in 0..n {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            file.extend_from_slice(&((x >> 8) as f32 / (1 << 24) as f32 - 0.5).to_le_bytes());
        }
        crate::model::load::load_hf_weights(CONFIG, vec![Cursor::new(file)]).unwrap()
    }

    fn shapes(bytes: &[u64]) -> Vec<(String, Vec<usize>)> {
        bytes.iter().enumerate().map(|(i, &b)| (format!("t{i}"), vec![b as usize / 2])).collect()
    }

    #[test]
    fn shards_fill_in_order_and_a_big_tensor_stands_alone() {
        let f16 = StorageDtype::F16;
        let r = shard_ranges(&shapes(&[10, 10, 30, 4, 4, 4, 20]), f16, 20).unwrap();
        assert_eq!(r, vec![0..2, 2..3, 3..6, 6..7]);
        assert_eq!(shard_ranges(&shapes(&[10, 10]), f16, 20).unwrap(), vec![0..2]);
        assert_eq!(shard_ranges(&[], f16, 20).unwrap(), vec![0..0]);
        assert_eq!(
            (shard_name(0, 1), shard_name(1, 12)),
            ("model.safetensors".into(), "model-00002-of-00012.safetensors".into())
        );
    }

    #[test]
    fn a_header_from_shapes_alone_reads_back() {
        let s = shapes(&[8, 6, 0, 2]);
        let mut file = safetensors_header(&s, StorageDtype::F16).unwrap();
        assert_eq!(file.len() % 8, 0);
        file.extend_from_slice(&[0; 16]);
        let h = read_header(&mut Cursor::new(&file)).unwrap();
        let data = file.len() as u64 - 16;
        assert_eq!((h.tensors["t1"].start, h.tensors["t1"].end), (data + 8, data + 14));
        assert_eq!(h.tensors["t3"].shape, vec![1]);
        let twice = [s[0].clone(), s[0].clone()];
        assert!(safetensors_header(&twice, StorageDtype::F16).unwrap_err().to_string().contains("twice"));
        let huge = [("h".to_string(), vec![usize::MAX, 2])];
        assert!(safetensors_header(&huge, StorageDtype::F32).is_err());
    }

    #[test]
    fn below_the_shard_size_one_file_as_before() {
        let m = random_model();
        let mut one = Vec::new();
        write_safetensors(&m, StorageDtype::BF16, &mut one).unwrap();
        let total: u64 =
            expected_tensors(&m.cfg).iter().map(|(n, s)| data_bytes(n, s, StorageDtype::BF16).unwrap()).sum();
        for shard_bytes in [SHARD_BYTES, total] {
            let mut files = Files::default();
            write_weights(&m, &mut m.layers.clone(), StorageDtype::BF16, shard_bytes, &mut files).unwrap();
            assert_eq!(files.0, vec![("model.safetensors".to_string(), one.clone())]);
        }
        let mut files = Files::default();
        write_weights(&m, &mut m.layers.clone(), StorageDtype::BF16, total - 1, &mut files).unwrap();
        assert_eq!(files.0.len(), 3, "two shards and the index");
    }

    #[test]
    fn a_sharded_folder_loads_back_to_the_same_tensors() {
        let m = random_model();
        let limit = 40_000;
        let mut files = Files::default();
        write_weights(&m, &mut m.layers.clone(), StorageDtype::F32, limit, &mut files).unwrap();
        let (index, shards) = files.0.split_last().unwrap();
        assert_eq!(index.0, INDEX_NAME);
        let n = shards.len();
        assert!(n > 3, "{n} shards");
        let names: Vec<String> = shards.iter().map(|f| f.0.clone()).collect();
        assert_eq!(names, (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect::<Vec<_>>());
        assert_eq!(shard_names(&index.1).unwrap(), names);

        // Tensors in `expected_tensors` order, no shard past the limit unless one tensor is.
        let expected = expected_tensors(&m.cfg);
        let mut order = Vec::new();
        let mut total = 0;
        for (name, bytes) in shards {
            let h = read_header(&mut Cursor::new(bytes)).unwrap();
            let mut here: Vec<(&String, u64, u64)> = h.tensors.iter().map(|(n, t)| (n, t.start, t.end)).collect();
            here.sort_by_key(|t| t.1);
            let data: u64 = here.iter().map(|t| t.2 - t.1).sum();
            assert!(data <= limit || here.len() == 1, "{name}: {data} bytes in {} tensors", here.len());
            assert_eq!(here.last().unwrap().2, bytes.len() as u64, "{name} ends with its last tensor");
            order.extend(here.iter().map(|t| t.0.clone()));
            total += data;
        }
        assert_eq!(order, expected.iter().map(|t| t.0.clone()).collect::<Vec<_>>());

        let idx: Value = serde_json::from_slice(&index.1).unwrap();
        assert_eq!(idx["metadata"]["total_size"], json!(total));
        let map = idx["weight_map"].as_object().unwrap();
        assert_eq!(map.len(), expected.len());
        for (name, bytes) in shards {
            for t in read_header(&mut Cursor::new(bytes)).unwrap().tensors.keys() {
                assert_eq!(map[t], json!(name), "{t}");
            }
        }

        let back =
            crate::model::load::load_hf_weights(CONFIG, shards.iter().map(|f| Cursor::new(f.1.clone())).collect())
                .unwrap();
        for ((n, a), (_, b)) in m.named_tensors().iter().zip(back.named_tensors()) {
            let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
            assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "{n}");
        }
        // As the page loads a folder: every file by its name, the index among them.
        let mut named: Vec<_> = files.0.iter().map(|(n, b)| (n.clone(), Cursor::new(b.clone()))).collect();
        named.push(("config.json".into(), Cursor::new(CONFIG.to_vec())));
        let bundle = crate::model::load::load_named(named, &mut |_, _| true).unwrap();
        assert_eq!(bundle.model.parameter_count(), m.parameter_count());
    }
}
