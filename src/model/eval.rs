//! Perplexity as the benchmarks define it: consecutive windows of `ctx` ids, each scored on its own,
//! no BOS, mean NLL of tokens 2..ctx given the earlier tokens of the same window.

use crate::error::{bail, Result};
use crate::model::transformer::Model;

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
