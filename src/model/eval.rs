//! Perplexity as the benchmarks define it: consecutive windows of `ctx` ids, each scored on its own,
//! no BOS, mean NLL of tokens 2..ctx given the earlier tokens of the same window.

use crate::error::{bail, Result};
use crate::model::store::LayerStore;
use crate::model::transformer::Model;
use candle_core::Tensor;

/// Largest context podar accepts for evaluation.
pub const MAX_CTX: usize = 32_768;

/// Result of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Ids read (after `max_tokens`).
    pub tokens: usize,
    /// Tokens scored.
    pub predictions: usize,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
}

/// Checks `ctx` and cuts `ids` into windows; errors say how much text is needed.
pub fn windows(ids: &[u32], ctx: usize, max_ctx: usize) -> Result<Vec<&[u32]>> {
    if ctx < 2 || ctx > max_ctx.min(MAX_CTX) {
        bail!(Input, "--ctx must be between 2 and {}, got {ctx}", max_ctx.min(MAX_CTX));
    }
    if ids.len() < ctx {
        bail!(Input, "the text has {} tokens; one evaluation window of {ctx} tokens needs at least {ctx}", ids.len());
    }
    Ok(ids.chunks_exact(ctx).collect())
}

/// Perplexity of `model` on `ids`; `progress(done, total)` after each window
/// (returning `false` cancels).
pub fn perplexity(
    model: &Model,
    ids: &[u32],
    ctx: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Perplexity> {
    // Windows longer than the model was trained on are allowed (the positions still rotate), up to
    // a bound that keeps one window's activations small.
    let wins = windows(ids, ctx, MAX_CTX)?;
    let mut total = 0f64;
    let mut n = 0usize;
    for (k, w) in wins.iter().enumerate() {
        let h = model.hidden(w, 1, ctx)?;
        let nll = model.nll(&h.narrow(0, 0, ctx - 1)?, &w[1..])?;
        total += nll.iter().map(|&x| x as f64).sum::<f64>();
        n += nll.len();
        crate::error::go_on(progress(k + 1, wins.len()))?;
    }
    let mean = total / n as f64;
    Ok(Perplexity { perplexity: mean.exp(), tokens: ids.len(), predictions: n, nll: mean })
}

/// Tokens of the windows that go through the layers together in [`perplexity_layered`].
const GROUP_TOKENS: usize = 16_384;

/// [`perplexity`] of a model whose layers are in `layers` (read from the model's file as they are
/// used, [`crate::model::Streamed`]), layer by layer: a group of windows goes through layer 1, then
/// through layer 2, and so on, each layer read once per group. The same products as [`perplexity`]
/// on the same windows, so the same result; where the store keeps the tables, the LM head's
/// log-sum-exp is folded by blocks of the vocabulary, equal within rounding. `progress(done, total)`
/// after each layer of each group.
pub fn perplexity_layered(
    model: &Model,
    layers: &mut dyn LayerStore,
    ids: &[u32],
    ctx: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Perplexity> {
    let wins = windows(ids, ctx, MAX_CTX)?;
    let per_group = (GROUP_TOKENS / ctx).max(1);
    let n_layers = layers.count();
    let steps = wins.len().div_ceil(per_group) * n_layers;
    let mut total = 0f64;
    let mut n = 0usize;
    for (g, group) in wins.chunks(per_group).enumerate() {
        let mut xs: Vec<Tensor> = group.iter().map(|w| model.embed_in(layers, w, 1, ctx)).collect::<Result<_>>()?;
        for l in 0..n_layers {
            let layer = layers.layer(l)?;
            for x in xs.iter_mut() {
                *x = model.layer_forward_with(&layer, l, x, 1, ctx, None, None)?;
            }
            crate::error::go_on(progress(g * n_layers + l + 1, steps))?;
        }
        let nlls = if model.tables_in_store() {
            // The LM head read from the model's file once for the whole group.
            let hs: Vec<Tensor> = xs.iter().map(|h| h.narrow(0, 0, ctx - 1)).collect::<candle_core::Result<_>>()?;
            let targets: Vec<u32> = group.iter().flat_map(|w| w[1..].iter().copied()).collect();
            vec![model.nll_in(layers, &Tensor::cat(&hs, 0)?, &targets)?]
        } else {
            group.iter().zip(&xs).map(|(w, h)| model.nll(&h.narrow(0, 0, ctx - 1)?, &w[1..])).collect::<Result<_>>()?
        };
        drop(xs);
        for nll in nlls {
            total += nll.iter().map(|&x| x as f64).sum::<f64>();
            n += nll.len();
        }
    }
    let mean = total / n as f64;
    Ok(Perplexity { perplexity: mean.exp(), tokens: ids.len(), predictions: n, nll: mean })
}
