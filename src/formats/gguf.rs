//! GGUF at the byte level: the header (metadata and tensor directory) first, checked against the
//! file's length, then tensors one at a time by their llama.cpp names, dequantized to f32. What the
//! names and metadata mean for a model is `model::gguf`'s business.

use crate::error::{bail, first_line, Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use std::io::{Read, Seek, SeekFrom};

/// A GGUF file's header: metadata and tensor directory.
pub struct GgufHeader {
    pub content: Content,
}

impl GgufHeader {
    /// Parses the header (magic, metadata, tensor infos). Sizes are capped by candle's reader.
    pub fn read<R: Read + Seek>(r: &mut R) -> Result<Self> {
        r.seek(SeekFrom::Start(0))?;
        refuse_zero_alignment(&mut std::io::BufReader::new(&mut *r))?;
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

    /// A tensor's shape as the file states it.
    pub fn tensor_shape(&self, gguf_name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(gguf_name).map(|t| t.shape.dims().to_vec())
    }
}

/// Walks the header's metadata without keeping it, and refuses a `general.alignment` of 0, which
/// candle's reader divides by (a panic, found by fuzzing). Everything else is left to that reader:
/// a file this walk cannot follow is passed on, and candle says what is wrong with it.
fn refuse_zero_alignment<R: Read + Seek>(r: &mut std::io::BufReader<R>) -> Result<()> {
    fn u32_of(r: &mut impl Read) -> std::io::Result<u32> {
        let mut b = [0; 4];
        r.read_exact(&mut b).map(|_| u32::from_le_bytes(b))
    }
    fn u64_of(r: &mut impl Read) -> std::io::Result<u64> {
        let mut b = [0; 8];
        r.read_exact(&mut b).map(|_| u64::from_le_bytes(b))
    }
    struct Walk<'a, R> {
        r: &'a mut std::io::BufReader<R>,
        // Version 1 writes lengths and counts as u32, later versions as u64.
        wide: bool,
    }
    impl<R: Read + Seek> Walk<'_, R> {
        fn len(&mut self) -> std::io::Result<u64> {
            if self.wide {
                u64_of(self.r)
            } else {
                u32_of(self.r).map(u64::from)
            }
        }
        fn skip(&mut self, n: u64) -> std::io::Result<()> {
            let n = i64::try_from(n).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
            self.r.seek_relative(n)
        }
        /// Skips a value of type `ty`; `Some(value)` for an integer that is not in an array.
        fn value(&mut self, ty: u32, depth: u32) -> std::io::Result<Option<u64>> {
            let size = match ty {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                8 => {
                    let n = self.len()?;
                    return self.skip(n).map(|_| None);
                }
                9 if depth < 8 => {
                    let (ty, n) = (u32_of(self.r)?, self.len()?);
                    for _ in 0..n {
                        self.value(ty, depth + 1)?;
                    }
                    return Ok(None);
                }
                _ => return Err(std::io::ErrorKind::InvalidData.into()),
            };
            let mut b = [0; 8];
            self.r.read_exact(&mut b[..size])?;
            let v = u64::from_le_bytes(b);
            Ok(matches!(ty, 0..=5 | 10 | 11).then_some(v))
        }
    }
    let walk = |r: &mut std::io::BufReader<R>| -> std::io::Result<bool> {
        let (_magic, version) = (u32_of(r)?, u32_of(r)?);
        let mut w = Walk { r, wide: version != 1 };
        let (_tensors, kvs) = (w.len()?, w.len()?);
        for _ in 0..kvs {
            let n = w.len()?;
            let mut key = vec![0; n.min(64) as usize];
            w.r.read_exact(&mut key)?;
            w.skip(n - key.len() as u64)?;
            let ty = u32_of(w.r)?;
            if w.value(ty, 0)? == Some(0) && key == b"general.alignment" {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if walk(r).unwrap_or(false) {
        bail!(Gguf, "`general.alignment` is 0: the file is corrupt");
    }
    Ok(())
}

pub fn value_u64(v: &Value) -> Option<u64> {
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

/// A GGUF file: its header, read and checked against the file's length, and its tensors on demand.
pub struct GgufFile<R> {
    reader: R,
    header: GgufHeader,
}

impl<R: Read + Seek> GgufFile<R> {
    /// Reads the header and refuses a file whose tensors do not fit it (truncated, overlapping, off
    /// the alignment); no tensor data is read.
    pub fn open(mut reader: R) -> Result<Self> {
        let header = GgufHeader::read(&mut reader)?;
        check_layout(&header, reader.seek(SeekFrom::End(0))?)?;
        Ok(Self { reader, header })
    }
    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }
    /// Storage type of a tensor, by its llama.cpp name.
    pub fn ggml_dtype(&self, gguf_name: &str) -> Option<GgmlDType> {
        self.header.content.tensor_infos.get(gguf_name).map(|t| t.ggml_dtype)
    }
    /// Whether the file holds a tensor of this name.
    pub fn has(&self, gguf_name: &str) -> bool {
        self.header.content.tensor_infos.contains_key(gguf_name)
    }
    /// A tensor by its llama.cpp name, dequantized to f32 in the file's shape.
    pub fn tensor(&mut self, gguf_name: &str) -> Result<Tensor> {
        let Some(info) = self.header.content.tensor_infos.get(gguf_name) else {
            return Err(Error::MissingTensor(gguf_name.to_string()));
        };
        let q = info
            .read(&mut self.reader, self.header.content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| Error::Gguf(format!("tensor `{gguf_name}`: {}", first_line(&e))))?;
        dequantize(&q)
    }
    /// Rows `rows` of a tensor (along its first dimension, a run of whole blocks each) dequantized
    /// to f32, read without the rest of it.
    pub fn tensor_rows(&mut self, gguf_name: &str, rows: std::ops::Range<usize>) -> Result<Tensor> {
        let Some(info) = self.header.content.tensor_infos.get(gguf_name) else {
            return Err(Error::MissingTensor(gguf_name.to_string()));
        };
        let dims = info.shape.dims().to_vec();
        let (n, per_row) = (dims.first().copied().unwrap_or(1), dims.iter().skip(1).product::<usize>());
        let (bs, ts) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        if rows.start > rows.end || rows.end > n || bs == 0 || !per_row.is_multiple_of(bs) {
            bail!(Gguf, "rows {rows:?} of `{gguf_name}` ({dims:?}, {:?}) cannot be read apart", info.ggml_dtype);
        }
        let row_bytes = (per_row / bs * ts) as u64;
        let mut raw = vec![0u8; (rows.len() as u64 * row_bytes) as usize];
        let at = self.header.content.tensor_data_offset + info.offset + rows.start as u64 * row_bytes;
        self.reader.seek(SeekFrom::Start(at))?;
        self.reader.read_exact(&mut raw)?;
        let mut shape = dims;
        shape[0] = rows.len();
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(info.ggml_dtype, &raw, shape, &Device::Cpu)
            .map_err(|e| Error::Gguf(format!("tensor `{gguf_name}`: {}", first_line(&e))))?;
        dequantize(&q)
    }
}

/// Refuses a file whose tensor data does not fit its header: a tensor that runs past the end of
/// the file (a truncated download), overlaps the next one, or starts off the file's alignment.
fn check_layout(header: &GgufHeader, file_len: u64) -> Result<()> {
    let c = &header.content;
    let align = match c.metadata.get("general.alignment") {
        Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
        Some(v) => bail!(Gguf, "`general.alignment` is {v:?}, not a power of two as a u32: the file is corrupt"),
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
        if t.offset % align != 0 {
            bail!(
                Gguf,
                "tensor `{name}` starts at offset {}, off the file's alignment of {align}: the file is corrupt",
                t.offset
            );
        }
        spans.push((t.offset, t.offset.saturating_add(bytes), name));
    }
    if let Some((a, b)) = crate::formats::source::first_overlap(&mut spans) {
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
}
