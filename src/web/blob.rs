//! Bytes between the page's files and the core: `Read + Seek` over a `Blob` (a file the reader chose,
//! read slice by slice, never whole), and a `Write` that hands an export to JavaScript in chunks.

use js_sys::{Function, Uint8Array};
use std::io::{Read, Seek, SeekFrom, Write};
use wasm_bindgen::prelude::*;
use web_sys::{Blob, FileReaderSync};

fn io_err(what: &str, e: JsValue) -> std::io::Error {
    let msg = e.as_string().or_else(|| js_sys::Error::from(e).message().as_string()).unwrap_or_default();
    std::io::Error::other(format!("{what}: {msg}"))
}

/// `Read + Seek` over a `Blob`, reading slices of up to 4 MiB through `FileReaderSync`.
///
/// A `Blob` whose bytes the page also holds in memory (a downloaded model: the worker sets its
/// `podarBytes` to the downloaded `Uint8Array`s, in order) is read from those instead. Chromium
/// copies the bytes of every slice of a Blob built in memory into a new Blob, which stays until
/// garbage collection: reading a model that way a few times filled the browser's Blob storage,
/// after which reads failed (`NotReadableError`).
pub struct BlobReader {
    blob: Blob,
    reader: FileReaderSync,
    /// The Blob's bytes as the page holds them, and where each part starts.
    parts: Option<(Vec<Uint8Array>, Vec<u64>)>,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

/// The most a `BlobReader` reads in one slice.
pub(super) const SLICE: u64 = 4 << 20;

/// The `Uint8Array`s a worker attached to a Blob as its bytes, if they add up to its size.
fn parts_of(blob: &Blob) -> Option<(Vec<Uint8Array>, Vec<u64>)> {
    let v = js_sys::Reflect::get(blob, &JsValue::from_str("podarBytes")).ok()?;
    let arr: js_sys::Array = v.dyn_into().ok()?;
    let mut parts = Vec::with_capacity(arr.length() as usize);
    let mut starts = Vec::with_capacity(parts.capacity());
    let mut at = 0u64;
    for p in arr.iter() {
        let p: Uint8Array = p.dyn_into().ok()?;
        starts.push(at);
        at += p.length() as u64;
        parts.push(p);
    }
    (at == blob.size() as u64).then_some((parts, starts))
}

impl BlobReader {
    pub fn new(blob: Blob) -> std::result::Result<Self, JsValue> {
        let reader = FileReaderSync::new().map_err(|_| super::input_err("FileReaderSync needs a Web Worker"))?;
        let size = blob.size() as u64;
        let parts = parts_of(&blob);
        Ok(BlobReader { blob, reader, parts, size, pos: 0, buf: Vec::new(), buf_at: 0 })
    }

    /// Bytes `start..start + out.len()` of the blob, into `out`. Chromium now and then refuses a
    /// read of a blob it holds (NotReadableError) and serves the same read a moment later: a few
    /// tries, each with a fresh reader, before the error is reported.
    fn read_range(&mut self, start: u64, out: &mut [u8]) -> std::io::Result<()> {
        let end = start + out.len() as u64;
        if let Some((parts, starts)) = &self.parts {
            let first = starts.partition_point(|&s| s <= start).saturating_sub(1);
            let mut done = 0usize;
            for (p, &at) in parts.iter().zip(starts).skip(first) {
                if at >= end {
                    break;
                }
                let from = start.max(at) - at;
                let to = (end.min(at + p.length() as u64) - at) as u32;
                let n = (to as u64 - from) as usize;
                p.subarray(from as u32, to).copy_to(&mut out[done..done + n]);
                done += n;
            }
            return if done == out.len() {
                Ok(())
            } else {
                Err(std::io::Error::other("reading past the end of a file"))
            };
        }
        let slice =
            self.blob.slice_with_f64_and_f64(start as f64, end as f64).map_err(|e| io_err("slicing a file", e))?;
        let mut tries = 0;
        loop {
            match self.reader.read_as_array_buffer(&slice) {
                Ok(ab) => {
                    let arr = Uint8Array::new(&ab);
                    if arr.length() as usize != out.len() {
                        return Err(std::io::Error::other("a file was shorter than it said"));
                    }
                    arr.copy_to(out);
                    return Ok(());
                }
                Err(e) if tries >= 3 => return Err(io_err("reading a file", e)),
                Err(_) => {
                    tries += 1;
                    if let Ok(r) = FileReaderSync::new() {
                        self.reader = r;
                    }
                }
            }
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let end = (self.pos + SLICE).min(self.size);
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize((end - self.pos) as usize, 0);
        self.read_range(self.pos, &mut buf)?;
        self.buf = buf;
        self.buf_at = self.pos;
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let in_buf = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf.len() as u64;
        if !in_buf {
            if out.len() as u64 >= SLICE {
                // Large reads (tensor data) go straight into the caller's buffer.
                let n = (out.len() as u64).min(self.size - self.pos) as usize;
                self.read_range(self.pos, &mut out[..n])?;
                self.pos += n as u64;
                return Ok(n);
            }
            self.fill()?;
        }
        let off = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - off);
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| std::io::Error::other("seek before the start of a file"))?;
        Ok(self.pos)
    }
}

/// Sends the bytes written to it to a JavaScript function in chunks of `cap` bytes (each one a fresh
/// `Uint8Array`), so an export never holds a second copy of the model in wasm memory.
pub(super) struct ChunkWriter<'a> {
    pub(super) sink: &'a Function,
    pub(super) buf: Vec<u8>,
    pub(super) cap: usize,
}

impl ChunkWriter<'_> {
    fn emit(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let arr = Uint8Array::from(self.buf.as_slice());
            let go_on = self.sink.call1(&JsValue::NULL, &arr).map_err(|e| io_err("handing over a chunk", e))?;
            self.buf.clear();
            // The sink answers `false` to stop (Cancel).
            if go_on.as_bool() == Some(false) {
                return Err(std::io::Error::other("cancelled"));
            }
        }
        Ok(())
    }
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // Never grows past `cap`: a large write is taken in pieces.
        let n = b.len().min(self.cap - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= self.cap {
            self.emit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.emit()
    }
}
