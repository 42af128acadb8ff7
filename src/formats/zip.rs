//! A streaming zip writer (stored entries, data descriptors): how the page hands a Hugging Face
//! folder to the user as one download without holding the folder in memory twice.

use crate::error::{bail, Result};
use std::io::Write;

/// Anything that takes a folder's files one at a time: a directory on disk (CLI), a zip (page).
pub trait FileSink {
    /// Writes one file; `body` streams its bytes into the writer it is given.
    fn file(&mut self, name: &str, body: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()>;
}

/// Puts every file of `sink` under one folder: `InFolder("model-podar", zip)` writes
/// `model-podar/config.json`, so that unpacking the archive makes one folder, not loose files.
pub struct InFolder<'a, S: FileSink>(pub &'a str, pub &'a mut S);

impl<S: FileSink> FileSink for InFolder<'_, S> {
    fn file(&mut self, name: &str, body: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()> {
        self.1.file(&format!("{}/{name}", self.0), body)
    }
}

struct Entry {
    name: String,
    crc: u32,
    size: u64,
    offset: u64,
}

/// Counts bytes and the CRC-32 of what passes through.
struct Tally<'a> {
    w: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    n: u64,
}

impl Write for Tally<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.w.write(buf)?;
        self.crc.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Writes a zip archive of stored (uncompressed) files to `W` in one pass: sizes and CRCs follow each
/// file in a data descriptor, so nothing is buffered. Files and the archive stay under 4 GiB (no zip64).
pub struct ZipWriter<W: Write> {
    w: W,
    at: u64,
    entries: Vec<Entry>,
}

const LIMIT: u64 = u32::MAX as u64;
/// Bit 3: sizes in a data descriptor; bit 11: names are UTF-8.
const FLAGS: u16 = 0x0808;
/// 1980-01-01 00:00, the earliest DOS date, so archives of the same model are byte-identical.
const DOS_DATE: u16 = 0x0021;

impl<W: Write> ZipWriter<W> {
    pub fn new(w: W) -> Self {
        ZipWriter { w, at: 0, entries: Vec::new() }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    /// Writes the central directory and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        let start = self.at;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            let mut h = Vec::with_capacity(46 + e.name.len());
            h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            h.extend_from_slice(&20u16.to_le_bytes()); // made by
            h.extend_from_slice(&20u16.to_le_bytes()); // needed
            h.extend_from_slice(&FLAGS.to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&DOS_DATE.to_le_bytes());
            h.extend_from_slice(&e.crc.to_le_bytes());
            h.extend_from_slice(&(e.size as u32).to_le_bytes());
            h.extend_from_slice(&(e.size as u32).to_le_bytes());
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attributes
            h.extend_from_slice(&(0o100644u32 << 16).to_le_bytes()); // external: a regular file, rw-r--r--
            h.extend_from_slice(&(e.offset as u32).to_le_bytes());
            h.extend_from_slice(e.name.as_bytes());
            self.put(&h)?;
        }
        let size = self.at - start;
        if self.at > LIMIT || entries.len() > u16::MAX as usize {
            bail!(Input, "the archive would exceed 4 GiB; choose GGUF or a smaller dtype");
        }
        let mut end = Vec::with_capacity(22);
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&[0; 4]);
        end.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        end.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        end.extend_from_slice(&(size as u32).to_le_bytes());
        end.extend_from_slice(&(start as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.put(&end)?;
        self.w.flush()?;
        Ok(self.w)
    }
}

impl<W: Write> FileSink for ZipWriter<W> {
    fn file(&mut self, name: &str, body: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()> {
        if name.is_empty() || name.len() > u16::MAX as usize {
            bail!(Input, "bad file name for the archive: {name:?}");
        }
        let offset = self.at;
        let mut h = Vec::with_capacity(30 + name.len());
        h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        h.extend_from_slice(&20u16.to_le_bytes());
        h.extend_from_slice(&FLAGS.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&DOS_DATE.to_le_bytes());
        h.extend_from_slice(&[0; 12]); // crc and sizes: in the data descriptor
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        self.put(&h)?;
        let mut t = Tally { w: &mut self.w, crc: crc32fast::Hasher::new(), n: 0 };
        body(&mut t)?;
        let (crc, size) = (t.crc.finalize(), t.n);
        self.at += size;
        if size > LIMIT || self.at > LIMIT {
            bail!(Input, "`{name}` would make the archive exceed 4 GiB; choose GGUF or a smaller dtype");
        }
        let mut d = Vec::with_capacity(16);
        d.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        d.extend_from_slice(&crc.to_le_bytes());
        d.extend_from_slice(&(size as u32).to_le_bytes());
        d.extend_from_slice(&(size as u32).to_le_bytes());
        self.put(&d)?;
        self.entries.push(Entry { name: name.to_string(), crc, size, offset });
        Ok(())
    }
}

/// Reads back the stored files of a zip written by [`ZipWriter`] (or any stored-only zip without
/// zip64), checking each CRC: `(name, bytes)` in archive order.
pub fn read_stored(zip: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |m: &str| crate::Error::Input(format!("zip: {m}"));
    let u16_at = |o: usize| zip.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or_else(|| bad("truncated"));
    let u32_at = |o: usize| {
        zip.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or_else(|| bad("truncated"))
    };
    let end = zip.len().checked_sub(22).ok_or_else(|| bad("too short"))?;
    if u32_at(end)? != 0x0605_4b50 {
        return Err(bad("no end of central directory (archive comments are not supported)"));
    }
    let count = u16_at(end + 10)? as usize;
    let mut at = u32_at(end + 16)? as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(at)? != 0x0201_4b50 {
            return Err(bad("bad central directory entry"));
        }
        let (method, crc) = (u16_at(at + 10)?, u32_at(at + 16)?);
        let size = u32_at(at + 20)? as usize;
        let (nlen, xlen, clen) = (u16_at(at + 28)? as usize, u16_at(at + 30)? as usize, u16_at(at + 32)? as usize);
        let local = u32_at(at + 42)? as usize;
        let name = zip.get(at + 46..at + 46 + nlen).ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        if method != 0 {
            return Err(bad(&format!("`{name}` is compressed; only stored entries are read")));
        }
        let data_at = local + 30 + u16_at(local + 26)? as usize + u16_at(local + 28)? as usize;
        let data = zip.get(data_at..data_at + size).ok_or_else(|| bad("truncated data"))?.to_vec();
        if crc32fast::hash(&data) != crc {
            return Err(bad(&format!("CRC mismatch in `{name}`")));
        }
        out.push((name, data));
        at += 46 + nlen + xlen + clen;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut z = ZipWriter::new(Vec::new());
        z.file("config.json", &mut |w| Ok(w.write_all(b"{\"a\": 1}")?)).unwrap();
        z.file("empty", &mut |_| Ok(())).unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        z.file("model.safetensors", &mut |w| Ok(w.write_all(&big)?)).unwrap();
        let bytes = z.finish().unwrap();
        let files = read_stored(&bytes).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[0], ("config.json".to_string(), b"{\"a\": 1}".to_vec()));
        assert_eq!(files[1].1.len(), 0);
        assert_eq!(files[2].1, big);
        let mut broken = bytes.clone();
        broken[200] ^= 1; // inside model.safetensors
        assert!(read_stored(&broken).is_err());
        assert!(read_stored(&bytes[..bytes.len() - 3]).is_err());
    }
}
