//! The embedding table and the LM head of a model whose tables stay in its file (a streamed model,
//! [`crate::model::store::Streamed::tables_from_source`]): a vocabulary of 128,256 rows of 2,048
//! is 1 GB in f32, more than the rest of what a layer-by-layer job holds. Embedding reads only the
//! rows of the tokens in play; the LM head is applied a block of rows at a time.

use crate::error::{bail, Result};
use crate::model::store::{LayerStore, Table};
use crate::model::transformer::Model;
use candle_core::{Device, Tensor};

/// Rows of `ids` closer than this are read together (one read instead of two).
const GAP: usize = 64;
/// Bytes of one block of LM-head rows in f32.
const HEAD_BLOCK_BYTES: usize = 32 << 20;
/// Bytes of one block of logits.
const LOGIT_BYTES: usize = 8 << 20;

/// Rows of `hidden` f32 values in `bytes`, and at most a third of the vocabulary: every model,
/// the tests' tiny ones too, goes through several blocks.
pub(crate) fn rows_per_block(bytes: usize, hidden: usize, vocab: usize) -> usize {
    (bytes / (4 * hidden.max(1))).min(vocab.div_ceil(3)).max(1)
}

fn table_rows(layers: &mut dyn LayerStore, table: Table, rows: std::ops::Range<usize>) -> Result<Tensor> {
    match layers.table_rows(table, rows)? {
        Some(t) => Ok(t),
        None => bail!(Input, "the model's tables are neither in memory nor in the store of its layers"),
    }
}

/// The embedding rows of `ids`, `[ids, hidden]`, read from `layers` in runs of nearby rows.
pub(crate) fn gather_rows(layers: &mut dyn LayerStore, ids: &[u32], hidden: usize) -> Result<Tensor> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_unstable_by_key(|&i| ids[i]);
    let mut out = vec![0f32; ids.len() * hidden];
    let mut i = 0;
    while i < order.len() {
        // One run: ids from `first` on, each within GAP rows of the one before.
        let first = ids[order[i]] as usize;
        let mut end = i + 1;
        while end < order.len() && ids[order[end]] as usize <= ids[order[end - 1]] as usize + GAP {
            end += 1;
        }
        let last = ids[order[end - 1]] as usize;
        let run = table_rows(layers, Table::Embedding, first..last + 1)?;
        crate::kernels::with_slice(&run, |v| {
            for &k in &order[i..end] {
                let r = ids[k] as usize - first;
                out[k * hidden..(k + 1) * hidden].copy_from_slice(&v[r * hidden..(r + 1) * hidden]);
            }
        })?;
        i = end;
    }
    Ok(Tensor::from_vec(out, (ids.len(), hidden), &Device::Cpu)?)
}

/// [`Model::nll`] with the LM head read from `layers` a block of vocabulary rows at a time: the
/// final norm, then each block's logits for every row, folded into a running log-sum-exp per row,
/// so neither the head nor the logits `[rows, vocab]` are ever whole. The same sums as
/// [`Model::nll`] taken in another order: equal to it within rounding.
pub(crate) fn nll_by_blocks(
    model: &Model,
    layers: &mut dyn LayerStore,
    x: &Tensor,
    targets: &[u32],
) -> Result<Vec<f32>> {
    let (cfg, n) = (&model.cfg, targets.len());
    let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!(Input, "token id {bad} is outside the vocabulary of {vocab}");
    }
    let h = model.rms_norm(&x.narrow(0, 0, n)?, &model.norm)?;
    let block = rows_per_block(HEAD_BLOCK_BYTES, hidden, vocab);
    let rows_at_once = (LOGIT_BYTES / (4 * block)).max(1);
    // Per row: the largest logit so far, the sum of exp(logit − it), and the target's logit.
    let (mut max, mut sum, mut target) = (vec![f32::NEG_INFINITY; n], vec![0f64; n], vec![0f32; n]);
    each_block(layers, Table::Head, vocab, block, &mut |v0, w| {
        let vb = w.dims()[0];
        for r0 in (0..n).step_by(rows_at_once) {
            let r = rows_at_once.min(n - r0);
            let mut logits = crate::kernels::linear(&h.narrow(0, r0, r)?, w, None)?;
            if let Some(cap) = cfg.final_logit_softcapping {
                logits = Model::softcap(&logits, cap)?;
            }
            crate::kernels::with_slice(&logits, |l| {
                for (i, row) in l.chunks_exact(vb).enumerate() {
                    let k = r0 + i;
                    fold_block(row, v0, targets[k] as usize, &mut max[k], &mut sum[k], &mut target[k]);
                }
            })?;
        }
        Ok(())
    })?;
    Ok((0..n).map(|k| (sum[k].ln() as f32 + max[k]) - target[k]).collect())
}

/// The most likely next token after the hidden row `x` (`[1, hidden]`), with the LM head read from
/// `layers` a block of vocabulary rows at a time: the final norm, each block's logits, and the
/// largest kept (the first of equals, as `argmax` over the whole row).
pub(crate) fn argmax_by_blocks(model: &Model, layers: &mut dyn LayerStore, x: &Tensor) -> Result<u32> {
    let cfg = &model.cfg;
    let h = model.rms_norm(x, &model.norm)?;
    let block = rows_per_block(HEAD_BLOCK_BYTES, cfg.hidden_size, cfg.vocab_size);
    let (mut best, mut at) = (f32::NEG_INFINITY, 0usize);
    each_block(layers, Table::Head, cfg.vocab_size, block, &mut |v0, w| {
        let mut logits = crate::kernels::linear(&h, w, None)?;
        if let Some(cap) = cfg.final_logit_softcapping {
            logits = Model::softcap(&logits, cap)?;
        }
        crate::kernels::with_slice(&logits, |row| {
            for (i, &z) in row.iter().enumerate() {
                if z > best {
                    (best, at) = (z, v0 + i);
                }
            }
        })
    })?;
    Ok(at as u32)
}

/// Folds one row's logits for the vocabulary from `v0` into its running largest logit `max` and
/// sum of exp(logit − max) `sum` (rescaled when the largest grows), and takes the logit of `target`
/// when this block holds it.
fn fold_block(row: &[f32], v0: usize, target: usize, max: &mut f32, sum: &mut f64, logit: &mut f32) {
    let m = row.iter().copied().fold(*max, f32::max);
    if m > *max {
        *sum *= ((*max - m) as f64).exp();
        *max = m;
    }
    *sum += row.iter().map(|&z| (z - m).exp() as f64).sum::<f64>();
    if let Some(&z) = target.checked_sub(v0).and_then(|t| row.get(t)) {
        *logit = z;
    }
}

/// The rows of `table` in blocks of at most `rows_at_once`, each handed to `f(first row, block)`.
pub(crate) fn each_block(
    layers: &mut dyn LayerStore,
    table: Table,
    vocab: usize,
    rows_at_once: usize,
    f: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
) -> Result<()> {
    for v0 in (0..vocab).step_by(rows_at_once.max(1)) {
        let t = table_rows(layers, table, v0..vocab.min(v0 + rows_at_once.max(1)))?;
        f(v0, &t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::Layer;

    /// A store that keeps only a table, and counts its reads.
    struct TableOnly(Tensor, usize);

    impl LayerStore for TableOnly {
        fn count(&self) -> usize {
            0
        }
        fn layer(&mut self, l: usize) -> Result<Layer> {
            bail!(Input, "no layer {l}")
        }
        fn replace(&mut self, _: usize, _: Layer) -> Result<()> {
            Ok(())
        }
        fn retain(&mut self, _: &[usize]) -> Result<()> {
            Ok(())
        }
        fn table_rows(&mut self, _: Table, rows: std::ops::Range<usize>) -> Result<Option<Tensor>> {
            self.1 += 1;
            Ok(Some(self.0.narrow(0, rows.start, rows.len())?))
        }
    }

    #[test]
    fn gathered_rows_are_the_rows_of_the_ids_read_in_runs() {
        let (vocab, hidden) = (1000, 3);
        let table =
            Tensor::arange(0f32, (vocab * hidden) as f32, &Device::Cpu).unwrap().reshape((vocab, hidden)).unwrap();
        // Repeats, out of order: three runs (5..=70, 500, 999).
        let ids: Vec<u32> = vec![70, 5, 999, 5, 40, 500, 70];
        let mut store = TableOnly(table.clone(), 0);
        let got = gather_rows(&mut store, &ids, hidden).unwrap();
        let idx = Tensor::from_slice(&ids, ids.len(), &Device::Cpu).unwrap();
        let want = table.index_select(&idx, 0).unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
        assert_eq!(store.1, 3, "ids within {GAP} rows of each other are read in one run");
    }

    #[test]
    fn blocks_cover_the_table_once() {
        assert_eq!(rows_per_block(32 << 20, 2048, 128_256), 4096);
        assert_eq!(rows_per_block(32 << 20, 64, 256), 86);
        let table = Tensor::arange(0f32, 30.0, &Device::Cpu).unwrap().reshape((10, 3)).unwrap();
        let mut store = TableOnly(table, 0);
        let mut seen = Vec::new();
        each_block(&mut store, Table::Head, 10, 4, &mut |v0, t| {
            seen.push((v0, t.dims()[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(0, 4), (4, 4), (8, 2)]);
    }
}
