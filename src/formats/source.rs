//! Where weights come from: a small trait over GGUF files and (sharded) safetensors, always by canonical
//! (transformers) tensor names, always dequantized to f32.

use crate::error::{bail, Result};
use candle_core::{Device, Tensor};

/// How a tensor is stored in its source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
        }
    }
    /// safetensors' name for the dtype.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "F32",
            StorageDtype::F16 => "F16",
            StorageDtype::BF16 => "BF16",
        }
    }
    /// transformers' `torch_dtype` name.
    pub fn torch_name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::F16 => "float16",
            StorageDtype::BF16 => "bfloat16",
        }
    }
}

/// A collection of named tensors that can be read one at a time.
pub trait TensorSource {
    /// Canonical names of every tensor available.
    fn names(&self) -> Vec<String>;
    /// Shape of a tensor without reading it.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Storage dtype when it is a plain float type (None for quantized GGUF types).
    fn storage_dtype(&self, name: &str) -> Option<StorageDtype>;
    /// Reads one tensor and converts it to f32.
    fn load(&mut self, name: &str) -> Result<Tensor>;
    /// The tensor's stored bytes, unconverted (little-endian, in canonical layout).
    fn load_raw(&mut self, name: &str) -> Result<Vec<u8>>;
    /// Rows `rows` of a tensor (along its first dimension) in f32. The formats read only those
    /// rows; this default reads the whole tensor.
    fn load_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> Result<Tensor> {
        rows_of(self.load(name)?, name, rows)
    }
}

/// Rows `rows` of the whole tensor `t` (named `name`), refusing a range outside it.
pub(crate) fn rows_of(t: Tensor, name: &str, rows: std::ops::Range<usize>) -> Result<Tensor> {
    let n = t.dims().first().copied().unwrap_or(0);
    if rows.start > rows.end || rows.end > n {
        bail!(Input, "rows {rows:?} of `{name}`, which has {n}");
    }
    Ok(t.narrow(0, rows.start, rows.len())?)
}

/// Converts little-endian stored bytes to an f32 tensor.
/// Sorts the tensors' byte ranges `(start, end, name)` and gives the first two that overlap, if any
/// (a corrupt file: tensors share no bytes in GGUF or safetensors).
pub(crate) fn first_overlap<'a>(spans: &mut [(u64, u64, &'a str)]) -> Option<(&'a str, &'a str)> {
    spans.sort_unstable();
    spans.windows(2).find(|w| w[0].1 > w[1].0).map(|w| (w[0].2, w[1].2))
}

pub fn to_f32_tensor(buf: &[u8], dtype: StorageDtype, shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    if buf.len() != n * dtype.size() {
        bail!(Input, "tensor data is {} bytes, expected {}", buf.len(), n * dtype.size());
    }
    let v: Vec<f32> = match dtype {
        StorageDtype::F32 => buf.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        StorageDtype::F16 => buf.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        StorageDtype::BF16 => buf.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    };
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}
