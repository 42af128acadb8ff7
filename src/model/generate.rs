//! Greedy decoding with a KV cache.

use crate::error::{bail, Result};
use crate::model::store::LayerStore;
use crate::model::transformer::{KvCache, Model};
use candle_core::{Tensor, D};

/// Greedily continues `prompt` by up to `max_new` tokens, stopping after any id in `stop`.
/// `on_token` sees each new id as it is chosen and may return false to stop early.
pub fn greedy(
    model: &Model,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    model.check_resident()?;
    greedy_layered(model, &mut model.layers.clone(), prompt, max_new, stop, on_token)
}

/// [`greedy`] for a model whose layers are in `layers` (read from the model's file as they are
/// used, [`crate::model::Streamed`], or the model's own): each step runs the new tokens through
/// layer 1, then layer 2, and so on, each layer taken from the store once a step, and where the
/// store keeps the tables, the next token is the largest logit of the LM head read by blocks of
/// the vocabulary. The prompt is one step; every later token one more. Memory: one layer and the
/// KV cache, not the model. The same products as [`greedy`] on a model held whole, so the same
/// tokens (up to ties within rounding).
pub fn greedy_layered(
    model: &Model,
    layers: &mut dyn LayerStore,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!(Input, "the prompt is empty");
    }
    let limit = model.cfg.max_position_embeddings;
    if prompt.len() >= limit {
        bail!(
            Input,
            "the prompt has {} tokens; the model's context is {limit}, so no room is left to generate",
            prompt.len()
        );
    }
    let mut cache = KvCache::default();
    let mut out = Vec::with_capacity(max_new);
    let mut next = next_token(model, layers, prompt, &mut cache)?;
    while out.len() < max_new {
        out.push(next);
        if !on_token(next) || stop.contains(&next) || cache.len + 1 > limit || out.len() == max_new {
            break;
        }
        next = next_token(model, layers, &[next], &mut cache)?;
    }
    Ok(out)
}

/// Runs `ids` (positions from `cache.len` on) through every layer of `layers`, adding them to
/// `cache`, and returns the most likely token after the last of them.
fn next_token(model: &Model, layers: &mut dyn LayerStore, ids: &[u32], cache: &mut KvCache) -> Result<u32> {
    let t = ids.len();
    let mut x = model.embed_in(layers, ids, 1, t)?;
    for l in 0..layers.count() {
        let layer = layers.layer(l)?;
        x = model.layer_forward_with(&layer, l, &x, 1, t, Some(cache), None)?;
    }
    cache.len += t;
    let last = x.narrow(0, t - 1, 1)?;
    if model.tables_in_store() {
        crate::model::tables::argmax_by_blocks(model, layers, &last)
    } else {
        argmax(&model.head(&last)?)
    }
}

/// The index of the largest value of a `[1, n]` row (the first of equals).
fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0])
}
