//! Greedy decoding with a KV cache.

use crate::error::{bail, Result};
use crate::model::transformer::{KvCache, Model};
use candle_core::D;

/// Greedily continues `prompt` by up to `max_new` tokens, stopping after any id in `stop`.
/// `on_token` sees each new id as it is chosen and may return false to stop early.
pub fn greedy(
    model: &Model,
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
    let mut logits = model.forward_last(prompt, 1, prompt.len(), Some(&mut cache))?;
    for _ in 0..max_new {
        let next = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0];
        out.push(next);
        if !on_token(next) || stop.contains(&next) || cache.len + 1 > limit {
            break;
        }
        logits = model.forward_last(&[next], 1, 1, Some(&mut cache))?;
    }
    Ok(out)
}
