//! A streaming zip writer (stored entries, data descriptors, zip64 offsets): how the page hands a
//! Hugging Face folder to the user as one download without holding the folder in memory twice.

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

/// Counts bytes and the CRC-32 of what passes through; refuses to pass [`LIMIT`] bytes.
struct Tally<'a> {
    w: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    n: u64,
    over: bool,
}

impl Write for Tally<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.n + buf.len() as u64 >= LIMIT {
            self.over = true;
            return Err(std::io::Error::other("a zip entry reaches 4 GiB"));
        }
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
/// file in a data descriptor, so nothing is buffered. A file must stay under 4 GiB (a larger one is
/// refused as it is written); the archive may pass 4 GiB: its offsets then go in zip64 records
/// (APPNOTE 4.3.14–4.3.15, 4.5.3), which an archive under 4 GiB does not have.
pub struct ZipWriter<W: Write> {
    w: W,
    at: u64,
    entries: Vec<Entry>,
    /// Offsets from here on are written as zip64 values (4 GiB; less in tests).
    zip64_from: u64,
}

/// A 32-bit field holding this says "see the zip64 record"; sizes must stay below it.
const LIMIT: u64 = u32::MAX as u64;
/// Bit 3: sizes in a data descriptor; bit 11: names are UTF-8.
const FLAGS: u16 = 0x0808;
/// 1980-01-01 00:00, the earliest DOS date, so archives of the same model are byte-identical.
const DOS_DATE: u16 = 0x0021;
/// Version 2.0 (stored files, data descriptors) and 4.5 (zip64) of APPNOTE.
const VERSION: u16 = 20;
const VERSION_ZIP64: u16 = 45;
const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const END_SIG: u32 = 0x0605_4b50;
const END64_SIG: u32 = 0x0606_4b50;
const LOCATOR_SIG: u32 = 0x0706_4b50;
/// The zip64 extended information extra field.
const ZIP64_EXTRA: u16 = 0x0001;

impl<W: Write> ZipWriter<W> {
    pub fn new(w: W) -> Self {
        ZipWriter { w, at: 0, entries: Vec::new(), zip64_from: LIMIT }
    }

    /// Uses zip64 offsets from `at` on rather than from 4 GiB: zip64 archives small enough for a test.
    #[cfg(test)]
    fn with_zip64_from(w: W, at: u64) -> Self {
        ZipWriter { zip64_from: at.min(LIMIT), ..Self::new(w) }
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
            let zip64 = e.offset >= self.zip64_from;
            let (version, extra_len) = if zip64 { (VERSION_ZIP64, 12u16) } else { (VERSION, 0) };
            let mut h = Vec::with_capacity(46 + e.name.len() + extra_len as usize);
            h.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            h.extend_from_slice(&version.to_le_bytes()); // made by
            h.extend_from_slice(&version.to_le_bytes()); // needed
            h.extend_from_slice(&FLAGS.to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&DOS_DATE.to_le_bytes());
            h.extend_from_slice(&e.crc.to_le_bytes());
            h.extend_from_slice(&(e.size as u32).to_le_bytes());
            h.extend_from_slice(&(e.size as u32).to_le_bytes());
            h.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&extra_len.to_le_bytes());
            h.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
            h.extend_from_slice(&(0o100644u32 << 16).to_le_bytes()); // external: a regular file, rw-r--r--
            h.extend_from_slice(&(if zip64 { LIMIT } else { e.offset } as u32).to_le_bytes());
            h.extend_from_slice(e.name.as_bytes());
            if zip64 {
                h.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
                h.extend_from_slice(&8u16.to_le_bytes());
                h.extend_from_slice(&e.offset.to_le_bytes());
            }
            self.put(&h)?;
        }
        let size = self.at - start;
        let count = entries.len() as u64;
        let zip64 = count >= 0xFFFF || size >= self.zip64_from || start >= self.zip64_from;
        if zip64 {
            let at = self.at;
            let mut z = Vec::with_capacity(56 + 20);
            z.extend_from_slice(&END64_SIG.to_le_bytes());
            z.extend_from_slice(&44u64.to_le_bytes()); // the size of what follows
            z.extend_from_slice(&VERSION_ZIP64.to_le_bytes()); // made by
            z.extend_from_slice(&VERSION_ZIP64.to_le_bytes()); // needed
            z.extend_from_slice(&[0; 8]); // this disk, the directory's disk
            z.extend_from_slice(&count.to_le_bytes()); // entries on this disk
            z.extend_from_slice(&count.to_le_bytes()); // entries
            z.extend_from_slice(&size.to_le_bytes());
            z.extend_from_slice(&start.to_le_bytes());
            z.extend_from_slice(&LOCATOR_SIG.to_le_bytes());
            z.extend_from_slice(&0u32.to_le_bytes()); // the disk of the record above
            z.extend_from_slice(&at.to_le_bytes());
            z.extend_from_slice(&1u32.to_le_bytes()); // disks
            self.put(&z)?;
        }
        // Past the limits, a field holds all ones and the zip64 record the value.
        let field = |v: u64| if v >= self.zip64_from { LIMIT } else { v } as u32;
        let (count16, size32, start32) = (count.min(0xFFFF) as u16, field(size), field(start));
        let mut end = Vec::with_capacity(22);
        end.extend_from_slice(&END_SIG.to_le_bytes());
        end.extend_from_slice(&[0; 4]);
        end.extend_from_slice(&count16.to_le_bytes());
        end.extend_from_slice(&count16.to_le_bytes());
        end.extend_from_slice(&size32.to_le_bytes());
        end.extend_from_slice(&start32.to_le_bytes());
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
        h.extend_from_slice(&LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&FLAGS.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&DOS_DATE.to_le_bytes());
        h.extend_from_slice(&[0; 12]); // crc and sizes: in the data descriptor
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        self.put(&h)?;
        let mut t = Tally { w: &mut self.w, crc: crc32fast::Hasher::new(), n: 0, over: false };
        let done = body(&mut t);
        if t.over {
            bail!(Input, "`{name}` reaches 4 GiB, more than one file of the archive may hold");
        }
        done?;
        let (crc, size) = (t.crc.finalize(), t.n);
        self.at += size;
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

/// A little-endian number from up to 8 bytes.
fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |n, &x| n << 8 | u64::from(x))
}

/// Puts in place the values that a central directory entry's 32-bit fields (uncompressed size,
/// compressed size, local header offset, in this order) leave to its zip64 extra field (APPNOTE 4.5.3).
fn zip64_fields(extra: &[u8], fields: [&mut u64; 3]) -> Option<()> {
    let mut rest = extra;
    while let (Some(id), Some(n)) = (rest.get(..2), rest.get(2..4)) {
        let n = le(n) as usize;
        let body = rest.get(4..4 + n)?;
        if le(id) == u64::from(ZIP64_EXTRA) {
            let mut values = body.chunks_exact(8).map(le);
            for f in fields.into_iter().filter(|f| **f == LIMIT) {
                *f = values.next()?;
            }
            return Some(());
        }
        rest = &rest[4 + n..];
    }
    None
}

/// Reads back the stored files of a zip written by [`ZipWriter`] (or any stored-only zip without
/// a comment, zip64 included), checking each CRC: `(name, bytes)` in archive order.
pub fn read_stored(zip: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let bad = |m: &str| crate::Error::Input(format!("zip: {m}"));
    // Bytes `o..o + n`, or "truncated" when the archive ends before (offsets are checked here).
    let get = |o: u64, n: u64| {
        let range = usize::try_from(o).ok().zip(o.checked_add(n).and_then(|e| usize::try_from(e).ok()));
        range.and_then(|(s, e)| zip.get(s..e)).ok_or_else(|| bad("truncated"))
    };
    let num = |o: u64, n: u64| get(o, n).map(le);
    let end = (zip.len() as u64).checked_sub(22).ok_or_else(|| bad("too short"))?;
    if num(end, 4)? != u64::from(END_SIG) {
        return Err(bad("no end of central directory (archive comments are not supported)"));
    }
    let (mut count, mut at) = (num(end + 10, 2)?, num(end + 16, 4)?);
    if count == 0xFFFF || at == LIMIT || num(end + 12, 4)? == LIMIT {
        let locator = end.checked_sub(20).filter(|&l| num(l, 4).ok() == Some(u64::from(LOCATOR_SIG)));
        if let Some(l) = locator {
            let record = num(l + 8, 8)?;
            if num(record, 4)? != u64::from(END64_SIG) {
                return Err(bad("the zip64 locator points to no zip64 end of central directory"));
            }
            (count, at) = (num(record + 32, 8)?, num(record + 48, 8)?);
        }
    }
    let mut out = Vec::with_capacity(count.min(zip.len() as u64 / 46) as usize);
    for _ in 0..count {
        // Each field is read after the one at `at` (or `local`), which `get` has checked.
        if num(at, 4)? != u64::from(CENTRAL_SIG) {
            return Err(bad("bad central directory entry"));
        }
        let (method, crc) = (num(at + 10, 2)?, num(at + 16, 4)?);
        let (mut packed, mut size, mut local) = (num(at + 20, 4)?, num(at + 24, 4)?, num(at + 42, 4)?);
        let (nlen, xlen, clen) = (num(at + 28, 2)?, num(at + 30, 2)?, num(at + 32, 2)?);
        let name = String::from_utf8_lossy(get(at + 46, nlen)?).into_owned();
        if [packed, size, local].contains(&LIMIT) {
            zip64_fields(get(at + 46 + nlen, xlen)?, [&mut size, &mut packed, &mut local])
                .ok_or_else(|| bad(&format!("`{name}` lacks its zip64 sizes or offset")))?;
        }
        if method != 0 {
            return Err(bad(&format!("`{name}` is compressed; only stored entries are read")));
        }
        if packed != size {
            return Err(bad(&format!("`{name}`: stored, yet its two sizes differ")));
        }
        if num(local, 4)? != u64::from(LOCAL_SIG) {
            return Err(bad(&format!("`{name}` has no local header where the directory says")));
        }
        let data_at = local + 30 + num(local + 26, 2)? + num(local + 28, 2)?;
        let data = get(data_at, size)?.to_vec();
        if u64::from(crc32fast::hash(&data)) != crc {
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

    fn u(b: &[u8], at: usize, n: usize) -> u64 {
        le(&b[at..at + n])
    }

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
        // Under 4 GiB, no zip64: the end record follows the directory, whose entries need 2.0.
        let end = bytes.len() - 22;
        let (size, start) = (u(&bytes, end + 12, 4), u(&bytes, end + 16, 4));
        assert_eq!(start + size, end as u64);
        assert_eq!(u(&bytes, start as usize + 6, 2), 20);
    }

    #[test]
    fn zip64_records_read_back() {
        let mut z = ZipWriter::with_zip64_from(Vec::new(), 100);
        let files = [("a", vec![1u8; 50]), ("b", vec![2; 200]), ("c", vec![3; 7]), ("d", vec![])];
        for (n, b) in &files {
            z.file(n, &mut |w| Ok(w.write_all(b)?)).unwrap();
        }
        let bytes = z.finish().unwrap();
        let back = read_stored(&bytes).unwrap();
        assert_eq!(back, files.iter().map(|(n, b)| (n.to_string(), b.clone())).collect::<Vec<_>>());
        let end = bytes.len() - 22;
        assert_eq!((u(&bytes, end + 10, 2), u(&bytes, end + 16, 4)), (4, LIMIT));
        assert_eq!(u(&bytes, end - 20, 4), u64::from(LOCATOR_SIG));
        assert_eq!(u(&bytes, end - 20 + 8, 8), end as u64 - 76);
        assert!(read_stored(&bytes[..end - 1]).is_err());
        let mut lost = bytes.clone();
        lost[end - 76] ^= 1; // the zip64 end record's signature
        assert!(read_stored(&lost).unwrap_err().to_string().contains("zip64"));
    }

    /// Keeps of what is written its length and each write under 64 KiB with its offset: a zip's
    /// headers, descriptors and directory, when bodies come in larger chunks.
    #[derive(Default)]
    struct Sparse {
        len: u64,
        small: Vec<(u64, Vec<u8>)>,
    }

    impl Write for Sparse {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if buf.len() < 64 << 10 {
                self.small.push((self.len, buf.to_vec()));
            }
            self.len += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sparse {
        /// `n` bytes at `at`, from the one small write that holds them.
        fn at(&self, at: u64, n: usize) -> &[u8] {
            let (start, b) =
                self.small.iter().rev().find(|(s, b)| *s <= at && at + n as u64 <= s + b.len() as u64).unwrap();
            &b[(at - start) as usize..][..n]
        }
    }

    fn zeros(w: &mut dyn Write, n: u64) -> Result<()> {
        let chunk = vec![0u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..k])?;
            left -= k as u64;
        }
        Ok(())
    }

    /// Two 2.2 GB shards and a small file: the third's offset and the directory's pass 4 GiB.
    /// Only counts are kept, so it needs no 4 GiB of memory or disk (about 2 s in release).
    #[test]
    fn an_archive_past_4_gib_has_zip64_offsets() {
        const BIG: u64 = 2_200_000_000;
        let mut z = ZipWriter::new(Sparse::default());
        let config = b"{\"model_type\": \"llama\"}".to_vec();
        let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json"];
        z.file(names[0], &mut |w| zeros(w, BIG)).unwrap();
        z.file(names[1], &mut |w| zeros(w, BIG)).unwrap();
        z.file(names[2], &mut |w| Ok(w.write_all(&config)?)).unwrap();
        let zip = z.finish().unwrap();

        let mut crc = crc32fast::Hasher::new();
        zeros(&mut CrcOnly(&mut crc), BIG).unwrap();
        let zero_crc = u64::from(crc.finalize());
        let sizes = [BIG, BIG, config.len() as u64];
        let crcs = [zero_crc, zero_crc, u64::from(crc32fast::hash(&config))];
        let mut offsets = vec![0u64];
        for (n, s) in names.iter().zip(sizes) {
            offsets.push(offsets.last().unwrap() + 30 + n.len() as u64 + s + 16);
        }
        let start = offsets.pop().unwrap();
        assert!(offsets[2] > LIMIT && offsets[1] < LIMIT);

        // The end record, the zip64 locator and the zip64 end record.
        let len = zip.len;
        let end = zip.at(len - 22, 22);
        assert_eq!((u(end, 0, 4), u(end, 10, 2), u(end, 16, 4)), (u64::from(END_SIG), 3, LIMIT));
        let dir_size = u(end, 12, 4);
        let locator = zip.at(len - 42, 20);
        assert_eq!((u(locator, 0, 4), u(locator, 8, 8), u(locator, 16, 4)), (u64::from(LOCATOR_SIG), len - 98, 1));
        let record = zip.at(len - 98, 56);
        assert_eq!(
            (u(record, 0, 4), u(record, 4, 8), u(record, 12, 2), u(record, 14, 2)),
            (u64::from(END64_SIG), 44, 45, 45)
        );
        assert_eq!((u(record, 24, 8), u(record, 32, 8), u(record, 40, 8), u(record, 48, 8)), (3, 3, dir_size, start));
        assert_eq!(start + dir_size, len - 98);

        // Each directory entry, its local header and data descriptor.
        let mut at = start;
        for i in 0..3 {
            let e = zip.at(at, 46);
            let (nlen, xlen) = (u(e, 28, 2) as usize, u(e, 30, 2) as usize);
            let whole = zip.at(at, 46 + nlen + xlen);
            assert_eq!(&whole[46..46 + nlen], names[i].as_bytes());
            assert_eq!((u(e, 16, 4), u(e, 20, 4), u(e, 24, 4)), (crcs[i], sizes[i], sizes[i]), "{}", names[i]);
            let zip64 = offsets[i] >= LIMIT;
            assert_eq!(u(e, 6, 2), if zip64 { 45 } else { 20 });
            if zip64 {
                assert_eq!((u(e, 42, 4), xlen), (LIMIT, 12));
                let x = &whole[46 + nlen..];
                assert_eq!((u(x, 0, 2), u(x, 2, 2), u(x, 4, 8)), (1, 8, offsets[i]));
            } else {
                assert_eq!((u(e, 42, 4), xlen), (offsets[i], 0));
            }
            let local = zip.at(offsets[i], 30 + nlen);
            assert_eq!((u(local, 0, 4), &local[30..]), (u64::from(LOCAL_SIG), names[i].as_bytes()));
            let d = zip.at(offsets[i] + 30 + nlen as u64 + sizes[i], 16);
            assert_eq!((u(d, 0, 4), u(d, 4, 4), u(d, 8, 4), u(d, 12, 4)), (0x0807_4b50, crcs[i], sizes[i], sizes[i]));
            at += (46 + nlen + xlen) as u64;
        }
        assert_eq!(zip.at(offsets[2] + 30 + names[2].len() as u64, config.len()), &config[..]);
    }

    /// Feeds a CRC and drops the bytes.
    struct CrcOnly<'a>(&'a mut crc32fast::Hasher);

    impl Write for CrcOnly<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_file_of_4_gib_is_refused_before_it_is_written_whole() {
        let mut z = ZipWriter::new(Sparse::default());
        let err = z.file("model.gguf", &mut |w| zeros(w, 5 << 30)).unwrap_err();
        assert_eq!(err.code(), "bad-input");
        assert!(err.to_string().contains("`model.gguf` reaches 4 GiB"), "{err}");
        assert!(z.w.len < LIMIT + 30 + 10);
    }
}
