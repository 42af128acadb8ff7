//! Depth pruning: which whole layers to drop, as given, by their influence on the calibration text,
//! or as the contiguous block that changes the residual stream least.

use super::PruneOptions;
use crate::error::{bail, Result};

/// The layers to drop: `at` as given (checked), the `n` with the lowest block influence, or the
/// contiguous block with the smallest angular distance (`block[l]` for the block starting at `l`).
pub fn layers_to_drop(n_layers: usize, o: &PruneOptions, influence: &[f64], block: &[f64]) -> Result<Vec<usize>> {
    let mut drop = match (&o.drop_layers, &o.drop_layers_at, o.drop_block) {
        (None, None, None) => vec![],
        (None, Some(at), None) => {
            if let Some(&bad) = at.iter().find(|&&i| i >= n_layers) {
                bail!(Input, "--drop-layers-at names layer {bad}; the model has layers 0..{}", n_layers - 1);
            }
            at.clone()
        }
        (Some(k), None, None) => {
            if influence.len() != n_layers {
                bail!(Input, "--drop-layers chooses layers by their influence on calibration text: give --calib");
            }
            let mut idx: Vec<usize> = (0..n_layers).collect();
            idx.sort_by(|&a, &b| influence[a].total_cmp(&influence[b]).then(a.cmp(&b)));
            idx.truncate(*k);
            idx
        }
        (None, None, Some(k)) => {
            if k == 0 {
                bail!(Input, "--drop-block 0 is a block of no layers: give at least 1");
            }
            if k >= n_layers {
                bail!(Input, "--drop-block {k}: the model has {n_layers} layers and at least one must stay");
            }
            if block.len() != n_layers - k + 1 {
                bail!(Input, "--drop-block measures layers on calibration text: give --calib");
            }
            let start = (0..block.len()).min_by(|&a, &b| block[a].total_cmp(&block[b]).then(a.cmp(&b))).unwrap_or(0);
            (start..start + k).collect()
        }
        _ => bail!(Input, "give only one of --drop-layers, --drop-layers-at and --drop-block"),
    };
    drop.sort_unstable();
    drop.dedup();
    if drop.len() >= n_layers {
        bail!(Input, "cannot drop {} of {n_layers} layers: at least one must stay", drop.len());
    }
    Ok(drop)
}
