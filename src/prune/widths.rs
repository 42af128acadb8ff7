//! Per-layer MLP widths: how many neurons each layer keeps when the layers need not keep the same
//! number, with the same total as the uniform job (so the same parameter count).
//!
//! The measure (`choose_widths` in the parent module) is a neuron's output energy `Σ a² · ‖d‖²`
//! (the `energy` score) relative to its layer: over the geometric mean of the energy `Σ ‖r‖²` of
//! the stream its layer's MLP adds to and the MLP's own output energy, summed over the calibration
//! tokens of the unpruned model. Neurons are ranked by it across all layers, a block of `unit` of
//! them at a time, and the best are kept, within bounds: every layer loses between half and one
//! and a half times the uniform job's cut. (Unbounded, the ranking emptied the middle layers to
//! their floor and kept the first ones whole, and lost to uniform widths; docs/pruning.md.)

use crate::error::{bail, Result};

/// Each layer's kept width: `costs[l]` holds layer `l`'s neurons' measures, `keep` is the uniform
/// job's width (a multiple of `unit`), and the widths sum to `keep` times the number of layers,
/// each a multiple of `unit`, between [`min_keep`] and [`max_keep`].
pub fn allocate(costs: &[Vec<f64>], keep: usize, unit: usize) -> Result<Vec<usize>> {
    let unit = unit.max(1);
    if costs.is_empty() || !keep.is_multiple_of(unit) {
        bail!(Input, "per-layer widths need layers and a width that is a multiple of {unit}");
    }
    // Per layer, its blocks of `unit` neurons from the most to the least valued, each block's value
    // the sum of its measures (so a layer's blocks fall in value, and taking the best blocks takes
    // a prefix of every layer's ranking).
    let mut floors = Vec::with_capacity(costs.len());
    let mut blocks: Vec<(f64, usize)> = Vec::new();
    for (l, c) in costs.iter().enumerate() {
        if c.iter().any(|x| !x.is_finite()) {
            bail!(Input, "layer {l}'s neuron measures are not finite: the calibration text overflowed the model");
        }
        let width = c.len() / unit * unit;
        if keep > width {
            bail!(Input, "layer {l} has {} neurons, fewer than the {keep} each layer keeps", c.len());
        }
        let floor = min_keep(width, keep, unit);
        let ceil = max_keep(width, keep, unit);
        floors.push(floor);
        let mut sorted = c.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        blocks.extend(sorted[..ceil].chunks(unit).skip(floor / unit).map(|b| (b.iter().sum::<f64>(), l)));
    }
    let total = keep * costs.len();
    let given: usize = floors.iter().sum();
    let mut widths = floors;
    let extra = (total.saturating_sub(given)) / unit;
    if extra > blocks.len() {
        bail!(Input, "the layers have fewer neurons than the {total} to keep");
    }
    blocks.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, l) in &blocks[..extra] {
        widths[l] += unit;
    }
    Ok(widths)
}

/// The fewest neurons a layer `width` wide keeps where the uniform job keeps `keep`: the uniform
/// cut and half again at most, at least one block.
pub fn min_keep(width: usize, keep: usize, unit: usize) -> usize {
    let cut = width.saturating_sub(keep);
    (width.saturating_sub(cut + cut / 2) / unit * unit).max(unit).min(keep)
}

/// The most neurons a layer `width` wide keeps where the uniform job keeps `keep`: it loses at
/// least half the uniform cut (in whole blocks).
pub fn max_keep(width: usize, keep: usize, unit: usize) -> usize {
    let cut = width.saturating_sub(keep);
    (width.saturating_sub(cut / 2).div_ceil(unit) * unit).clamp(keep, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_kept_and_the_valued_layer_keeps_more() {
        // Layer 0's neurons are worth ten times layer 1's; the uniform job keeps 12 of 16.
        let costs: Vec<Vec<f64>> =
            vec![(0..16).map(|i| 10.0 * (i + 1) as f64).collect(), (0..16).map(|i| (i + 1) as f64).collect()];
        let w = allocate(&costs, 12, 1).unwrap();
        assert_eq!(w, vec![14, 10], "each layer loses between half and 1.5 times the uniform cut of 4");
        // Equal measures: the total still.
        let same = vec![vec![1.0; 16], vec![1.0; 16]];
        assert_eq!(allocate(&same, 12, 1).unwrap().iter().sum::<usize>(), 24);
        // Blocks of 2: 14 and 10 are whole blocks.
        assert_eq!(allocate(&costs, 12, 2).unwrap(), vec![14, 10]);
        assert!(allocate(&costs, 5, 2).is_err());
        assert!(allocate(&[vec![f64::NAN; 8]], 6, 1).is_err());
    }

    #[test]
    fn each_layer_loses_between_half_and_one_and_a_half_the_uniform_cut() {
        assert_eq!((min_keep(100, 80, 1), max_keep(100, 80, 1)), (70, 90));
        assert_eq!((min_keep(100, 60, 1), max_keep(100, 60, 1)), (40, 80));
        assert_eq!((min_keep(1536, 1229, 1), max_keep(1536, 1229, 1)), (1076, 1383));
        assert_eq!((min_keep(128, 96, 32), max_keep(128, 96, 32)), (64, 128));
        assert_eq!((min_keep(100, 100, 1), max_keep(100, 100, 1)), (100, 100));
    }
}
