//! safetensors: header parsing (with caps, checked offsets) and tensor reads from any `Read + Seek`.

use crate::error::{bail, Error, Result};
use crate::formats::source::{to_f32_tensor, StorageDtype, TensorSource};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};

/// Headers larger than this are refused (the safetensors crate uses the same cap).
pub const MAX_HEADER_SIZE: u64 = 100_000_000;

/// Where one tensor lives in a safetensors file.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    pub dtype: StorageDtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: u64,
    pub end: u64,
}

/// A parsed safetensors header.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub tensors: BTreeMap<String, TensorMeta>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads and validates the header; no tensor data is touched.
pub fn read_header<R: Read + Seek>(r: &mut R) -> Result<Header> {
    let file_len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut len8 = [0u8; 8];
    r.read_exact(&mut len8).map_err(|_| Error::Safetensors("file is shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER_SIZE {
        bail!(Safetensors, "header length {n} exceeds the {MAX_HEADER_SIZE}-byte cap");
    }
    let data_start = 8 + n;
    if data_start > file_len {
        bail!(Safetensors, "header claims {n} bytes but the file has {file_len}: truncated?");
    }
    let mut buf = vec![0u8; n as usize];
    r.read_exact(&mut buf)?;
    let json: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| Error::Safetensors(format!("header is not valid JSON: {e}")))?;
    let Some(obj) = json.as_object() else {
        bail!(Safetensors, "header is not a JSON object");
    };
    let mut out = Header::default();
    for (name, v) in obj {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    if let Some(s) = v.as_str() {
                        out.metadata.insert(k.clone(), s.to_string());
                    }
                }
            }
            continue;
        }
        let dtype = match v.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => StorageDtype::F32,
            Some("F16") => StorageDtype::F16,
            Some("BF16") => StorageDtype::BF16,
            Some(other) => bail!(Safetensors, "tensor `{name}` has dtype {other}; podar reads F32, F16 and BF16"),
            None => bail!(Safetensors, "tensor `{name}` has no dtype"),
        };
        let shape: Vec<usize> = match v.get("shape").and_then(|s| s.as_array()) {
            Some(a) if a.len() <= 8 => a
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::Safetensors(format!("tensor `{name}` has a bad shape")))?,
            _ => bail!(Safetensors, "tensor `{name}` has a missing or bad shape"),
        };
        let offs: Vec<u64> = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        let [s, e] = offs[..] else {
            bail!(Safetensors, "tensor `{name}` has bad data_offsets");
        };
        let elems = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| Error::Safetensors(format!("tensor `{name}`: shape overflows")))?;
        let bytes = elems
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| Error::Safetensors(format!("tensor `{name}`: size overflows")))?;
        let (Some(start), Some(end)) = (data_start.checked_add(s), data_start.checked_add(e)) else {
            bail!(Safetensors, "tensor `{name}`: offsets overflow");
        };
        if e < s || e - s != bytes {
            bail!(Safetensors, "tensor `{name}`: data_offsets [{s}, {e}] do not match shape {shape:?} ({bytes} bytes)");
        }
        if end > file_len {
            bail!(Safetensors, "tensor `{name}` ends at byte {end} but the file has {file_len}: truncated?");
        }
        out.tensors.insert(name.clone(), TensorMeta { dtype, shape, start, end });
    }
    // Tensors share no bytes (the format lays them out back to back).
    let mut spans: Vec<(u64, u64, &str)> = out.tensors.iter().map(|(n, t)| (t.start, t.end, n.as_str())).collect();
    if let Some((a, b)) = crate::formats::source::first_overlap(&mut spans) {
        bail!(Safetensors, "the data of tensors `{a}` and `{b}` overlap: the file is corrupt");
    }
    Ok(out)
}

/// One or more safetensors files (shards) as a tensor source.
pub struct SafetensorsSource<R> {
    files: Vec<(R, Header)>,
    index: BTreeMap<String, usize>,
}

impl<R: Read + Seek> SafetensorsSource<R> {
    /// Reads every shard's header. A tensor present in two shards is an error.
    pub fn new(readers: Vec<R>) -> Result<Self> {
        let mut files = Vec::with_capacity(readers.len());
        let mut index = BTreeMap::new();
        for (i, mut r) in readers.into_iter().enumerate() {
            let h = read_header(&mut r)?;
            for name in h.tensors.keys() {
                if index.insert(name.clone(), i).is_some() {
                    bail!(Safetensors, "tensor `{name}` appears in more than one shard");
                }
            }
            files.push((r, h));
        }
        Ok(Self { files, index })
    }
}

impl<R: Read + Seek> TensorSource for SafetensorsSource<R> {
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let &i = self.index.get(name)?;
        Some(self.files[i].1.tensors[name].shape.clone())
    }
    fn storage_dtype(&self, name: &str) -> Option<StorageDtype> {
        let &i = self.index.get(name)?;
        Some(self.files[i].1.tensors[name].dtype)
    }
    fn load(&mut self, name: &str) -> Result<Tensor> {
        let buf = self.load_raw(name)?;
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let meta = &self.files[i].1.tensors[name];
        to_f32_tensor(&buf, meta.dtype, &meta.shape)
    }
    fn load_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> Result<Tensor> {
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let (r, h) = &mut self.files[i];
        let meta = &h.tensors[name];
        let n = meta.shape.first().copied().unwrap_or(1);
        if rows.start > rows.end || rows.end > n {
            bail!(Safetensors, "rows {rows:?} of `{name}`, which has {n}");
        }
        let row_bytes = (meta.end - meta.start) / n.max(1) as u64;
        let mut buf = vec![0u8; (rows.len() as u64 * row_bytes) as usize];
        r.seek(SeekFrom::Start(meta.start + rows.start as u64 * row_bytes))?;
        r.read_exact(&mut buf)?;
        let mut shape = meta.shape.clone();
        shape[0] = rows.len();
        to_f32_tensor(&buf, meta.dtype, &shape)
    }
    fn load_raw(&mut self, name: &str) -> Result<Vec<u8>> {
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let (r, h) = &mut self.files[i];
        let meta = &h.tensors[name];
        let mut buf = vec![0u8; (meta.end - meta.start) as usize];
        r.seek(SeekFrom::Start(meta.start))?;
        r.read_exact(&mut buf)?;
        Ok(buf)
    }
}

/// Lists the shard file names of a `model.safetensors.index.json`, in order, without duplicates.
pub fn shard_names(index_json: &[u8]) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(index_json)?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        bail!(Safetensors, "index has no `weight_map`");
    };
    let mut names: Vec<String> = Vec::new();
    for f in map.values() {
        let Some(f) = f.as_str() else {
            bail!(Safetensors, "index `weight_map` holds a non-string");
        };
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            bail!(Safetensors, "index names shard `{f}` outside the model folder");
        }
        if !names.iter().any(|n| n == f) {
            names.push(f.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_a_tensor() {
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let bytes = file(h, &[0, 0, 128, 63, 0, 0, 0, 64]);
        let mut s = SafetensorsSource::new(vec![Cursor::new(bytes)]).unwrap();
        assert_eq!(s.load("a").unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn rejects_truncated_and_lying_headers() {
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        assert!(read_header(&mut Cursor::new(file(h, &[0; 8]))).is_err());
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
        assert!(read_header(&mut Cursor::new(file(h, &[0; 8]))).is_err());
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(read_header(&mut Cursor::new(huge)).is_err());
        assert!(read_header(&mut Cursor::new(vec![1, 2])).is_err());
        assert!(read_header(&mut Cursor::new(file("not json", &[]))).is_err());
    }
}
