//! Where a model's layers live while a job runs: all in memory (`Vec<Layer>`), or read from their
//! source when a layer is used and let go after ([`Streamed`]), so that what must fit in memory is
//! one layer, not the model. Layers a job replaces (pruned ones) go to a [`Spill`]: memory, or
//! natively a temporary file.

use crate::error::{bail, Result};
use crate::formats::source::TensorSource;
use crate::model::config::ModelConfig;
use crate::model::transformer::{checked_reader, Layer};
use candle_core::{Device, Tensor};

/// A model's layers, one at a time.
pub trait LayerStore {
    /// The number of layers.
    fn count(&self) -> usize;
    /// Layer `l` in f32: held in memory, a clone sharing its weights; streamed, read now.
    fn layer(&mut self, l: usize) -> Result<Layer>;
    /// Puts `layer` in the place of layer `l` (a pruned one).
    fn replace(&mut self, l: usize, layer: Layer) -> Result<()>;
    /// Keeps only the layers `kept` (ascending), renumbered from 0.
    fn retain(&mut self, kept: &[usize]) -> Result<()>;
    /// Rows `rows` of the embedding table or of the LM head, in f32, where this store keeps the
    /// tables (a streamed model's stay in its file: [`Streamed::tables_from_source`]); `None` where
    /// the model holds them.
    fn table_rows(&mut self, _table: Table, _rows: std::ops::Range<usize>) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// The model's two tables of vocabulary rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `model.embed_tokens.weight`.
    Embedding,
    /// `lm_head.weight`, or the embedding where the two are tied.
    Head,
}

impl Table {
    /// The table's tensor in a model shaped `cfg`.
    pub fn tensor_name(self, cfg: &ModelConfig) -> &'static str {
        match self {
            Table::Head if !cfg.tie_word_embeddings => "lm_head.weight",
            _ => "model.embed_tokens.weight",
        }
    }
}

fn check_index(l: usize, n: usize) -> Result<()> {
    if l >= n {
        bail!(Input, "layer {l} asked of a model of {n} layers");
    }
    Ok(())
}

impl LayerStore for Vec<Layer> {
    fn count(&self) -> usize {
        self.len()
    }
    fn layer(&mut self, l: usize) -> Result<Layer> {
        check_index(l, self.len())?;
        Ok(self[l].clone())
    }
    fn replace(&mut self, l: usize, layer: Layer) -> Result<()> {
        check_index(l, self.len())?;
        self[l] = layer;
        Ok(())
    }
    fn retain(&mut self, kept: &[usize]) -> Result<()> {
        let mut slots: Vec<Option<Layer>> = std::mem::take(self).into_iter().map(Some).collect();
        for &l in kept {
            check_index(l, slots.len())?;
            match slots[l].take() {
                Some(layer) => self.push(layer),
                None => bail!(Input, "layer {l} kept twice"),
            }
        }
        Ok(())
    }
}

/// Where replaced layers are kept until they are used again.
pub trait Spill {
    /// Keeps `layer` as layer `l` (replacing what was kept for `l`).
    fn put(&mut self, l: usize, layer: &Layer) -> Result<()>;
    /// Layer `l` as put.
    fn get(&mut self, l: usize) -> Result<Layer>;
}

/// Replaced layers kept in memory (they count towards what must fit).
#[derive(Default)]
pub struct MemorySpill(Vec<Option<Layer>>);

impl Spill for MemorySpill {
    fn put(&mut self, l: usize, layer: &Layer) -> Result<()> {
        if self.0.len() <= l {
            self.0.resize(l + 1, None);
        }
        self.0[l] = Some(layer.clone());
        Ok(())
    }
    fn get(&mut self, l: usize) -> Result<Layer> {
        match self.0.get(l) {
            Some(Some(layer)) => Ok(layer.clone()),
            _ => bail!(Input, "layer {l} was never spilled"),
        }
    }
}

/// One tensor of a layer as a spill stores it: its name, shape, and values as little-endian f32.
pub type TensorBytes = (String, Vec<usize>, Vec<u8>);

/// A layer's tensors as [`TensorBytes`].
pub fn layer_bytes(layer: &Layer) -> Result<Vec<TensorBytes>> {
    layer
        .named()
        .into_iter()
        .map(|(name, t)| {
            let bytes =
                crate::kernels::with_slice(&t, |s| s.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
            Ok((name, t.dims().to_vec(), bytes))
        })
        .collect()
}

/// A layer rebuilt from [`layer_bytes`]'s parts, shaped as they were (pruned widths included).
pub fn layer_from_bytes(parts: Vec<TensorBytes>) -> Result<Layer> {
    let mut by_name: std::collections::HashMap<String, Tensor> = std::collections::HashMap::new();
    for (name, shape, bytes) in parts {
        let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        by_name.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
    }
    Layer::from_named(&mut |name| by_name.remove(name))
}

/// Where a tensor is in a [`FileSpill`]: name, shape, start and end.
#[cfg(not(target_arch = "wasm32"))]
type Spilled = (String, Vec<usize>, u64, u64);

/// Replaced layers kept in a temporary file: the CLI's way to hold a pruned model bigger than its
/// memory. On Unix the file is unlinked as soon as it is open, so its space lives exactly as long as
/// the spill and a killed job leaves nothing behind; elsewhere it is deleted when dropped.
#[cfg(not(target_arch = "wasm32"))]
pub struct FileSpill {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// Per layer: each tensor's name, shape, and byte range in the file.
    index: Vec<Option<Vec<Spilled>>>,
    end: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSpill {
    /// A new spill file in the system's temporary folder.
    pub fn new() -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("podar-spill-{}-{}.bin", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        #[cfg(unix)]
        std::fs::remove_file(&path)?;
        Ok(FileSpill { file, path, index: Vec::new(), end: 0 })
    }

    /// Where the file was made (on Unix no name leads to it any more).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for FileSpill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Spill for FileSpill {
    fn put(&mut self, l: usize, layer: &Layer) -> Result<()> {
        use std::io::{Seek, SeekFrom, Write};
        self.file.seek(SeekFrom::Start(self.end))?;
        let mut entries = Vec::new();
        for (name, shape, bytes) in layer_bytes(layer)? {
            self.file.write_all(&bytes)?;
            entries.push((name, shape, self.end, self.end + bytes.len() as u64));
            self.end += bytes.len() as u64;
        }
        if self.index.len() <= l {
            self.index.resize(l + 1, None);
        }
        self.index[l] = Some(entries);
        Ok(())
    }
    fn get(&mut self, l: usize) -> Result<Layer> {
        use std::io::{Read, Seek, SeekFrom};
        let Some(Some(entries)) = self.index.get(l) else {
            bail!(Input, "layer {l} was never spilled");
        };
        let mut parts = Vec::with_capacity(entries.len());
        for (name, shape, start, end) in entries.clone() {
            let mut bytes = vec![0u8; (end - start) as usize];
            self.file.seek(SeekFrom::Start(start))?;
            self.file.read_exact(&mut bytes)?;
            parts.push((name, shape, bytes));
        }
        layer_from_bytes(parts)
    }
}

/// Layers read from their source each time they are used, in f32, and let go after; a layer the
/// job replaces is kept in `spill` and read from there.
pub struct Streamed<S> {
    cfg: ModelConfig,
    src: S,
    spill: Box<dyn Spill>,
    /// For each layer now: `(source layer, replaced)`: where its weights are read from.
    map: Vec<(usize, bool)>,
    /// The embedding and LM head are read from `src` too, by rows ([`LayerStore::table_rows`]).
    tables: bool,
}

impl<S: TensorSource> Streamed<S> {
    /// The layers of the model shaped `cfg` in `src` (checked against it already).
    pub fn new(cfg: &ModelConfig, src: S, spill: Box<dyn Spill>) -> Self {
        let map = (0..cfg.num_hidden_layers).map(|l| (l, false)).collect();
        Streamed { cfg: cfg.clone(), src, spill, map, tables: false }
    }

    /// The same, and the embedding table and LM head stay in `src` as well: they are read by rows
    /// when used, for a model loaded without them ([`crate::Model::load_shell_without_tables`]).
    pub fn tables_from_source(mut self) -> Self {
        self.tables = true;
        self
    }
}

impl<S: TensorSource> LayerStore for Streamed<S> {
    fn count(&self) -> usize {
        self.map.len()
    }
    fn layer(&mut self, l: usize) -> Result<Layer> {
        check_index(l, self.map.len())?;
        match self.map[l] {
            (_, true) => self.spill.get(l),
            (from, false) => Layer::read(&self.cfg, from, &mut checked_reader(&mut self.src)),
        }
    }
    fn replace(&mut self, l: usize, layer: Layer) -> Result<()> {
        check_index(l, self.map.len())?;
        self.spill.put(l, &layer)?;
        self.map[l].1 = true;
        Ok(())
    }
    fn table_rows(&mut self, table: Table, rows: std::ops::Range<usize>) -> Result<Option<Tensor>> {
        if !self.tables {
            return Ok(None);
        }
        let name = table.tensor_name(&self.cfg);
        if rows.start > rows.end || rows.end > self.cfg.vocab_size {
            bail!(Input, "rows {rows:?} of `{name}`, which has {}", self.cfg.vocab_size);
        }
        let t = self.src.load_rows(name, rows.clone())?;
        crate::model::transformer::expect_shape(name, &t, &[rows.len(), self.cfg.hidden_size])?;
        crate::model::transformer::expect_finite(name, &t)?;
        Ok(Some(t))
    }
    fn retain(&mut self, kept: &[usize]) -> Result<()> {
        let mut map = Vec::with_capacity(kept.len());
        for (to, &l) in kept.iter().enumerate() {
            check_index(l, self.map.len())?;
            if self.map[l].1 && to != l {
                // A replaced layer moves down: its weights are read and kept at its new place.
                let layer = self.spill.get(l)?;
                self.spill.put(to, &layer)?;
            }
            map.push(self.map[l]);
        }
        self.map = map;
        Ok(())
    }
}
