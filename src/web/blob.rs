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
pub struct BlobReader {
    blob: Blob,
    reader: FileReaderSync,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

/// The most a `BlobReader` reads in one slice.
pub(super) const SLICE: u64 = 4 << 20;

impl BlobReader {
    pub fn new(blob: Blob) -> std::result::Result<Self, JsValue> {
        let reader = FileReaderSync::new().map_err(|_| super::input_err("FileReaderSync needs a Web Worker"))?;
        let size = blob.size() as u64;
        Ok(BlobReader { blob, reader, size, pos: 0, buf: Vec::new(), buf_at: 0 })
    }

    /// Bytes `start..end` of the blob. Chromium now and then refuses a read of a blob it holds
    /// (NotReadableError) and serves the same read a moment later: a few tries, each with a fresh
    /// reader, before the error is reported.
    fn read_range(&mut self, start: u64, end: u64) -> std::io::Result<js_sys::ArrayBuffer> {
        let slice =
            self.blob.slice_with_f64_and_f64(start as f64, end as f64).map_err(|e| io_err("slicing a file", e))?;
        let mut tries = 0;
        loop {
            match self.reader.read_as_array_buffer(&slice) {
                Ok(ab) => return Ok(ab),
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
        let ab = self.read_range(self.pos, end)?;
        self.buf = Uint8Array::new(&ab).to_vec();
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
                let end = (self.pos + out.len() as u64).min(self.size);
                let ab = self.read_range(self.pos, end)?;
                let arr = Uint8Array::new(&ab);
                let n = arr.length() as usize;
                arr.copy_to(&mut out[..n]);
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
