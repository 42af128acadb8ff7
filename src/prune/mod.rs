//! Pruning, the product: score MLP neurons (statically from weights, or from their activations on
//! the user's calibration text), keep the same count in every layer, slice gate/up rows and down
//! columns together, re-fit the down projection by ridge regression so each layer's output matches
//! the unpruned one, and drop heads and whole layers.
//!
//! - [`calib`]: the calibration pass, a layer at a time; [`stats`]: the statistics it gathers;
//! - [`scores`]: neuron and head scores; [`options`]: what to prune and the widths that leaves;
//! - `ridge`: the re-fit (and Optimal Brain Surgeon's selection); [`depth`]: which layers to drop;
//! - here: [`prune_owned`], the job's algorithm, and its steps.
//!
//! To add a score: a [`Score`] variant and its formula in `scores::score_of`.
//! May import: `error`, `kernels`, `model`.

use crate::error::{bail, Result};
use crate::kernels::{par_for, select_cols, select_rows};
use crate::model::config::ModelConfig;
use crate::model::store::LayerStore;
use crate::model::transformer::{Layer, Linear, Model};
use candle_core::Tensor;
use stats::LayerStats;
use std::sync::Mutex;

pub mod calib;
pub mod depth;
pub mod options;
mod ridge;
pub mod scores;
pub mod stats;
pub mod widths;
pub use depth::layers_to_drop;
pub use options::{check_recovery, heads_target, mlp_target, Precision, PruneOptions, Widths};
pub use ridge::{obs_select, refit_down};
use scores::{group_columns, head_group_scores, score_of};
pub use scores::{score_layer, top_k, Score};

/// `layer` with only the KV groups `groups` (and their query heads); `o_proj` replaces the sliced one if given.
fn slice_heads(layer: &Layer, groups: &[usize], group: usize, hd: usize, o_proj: Option<Tensor>) -> Result<Layer> {
    let mut out = layer.clone();
    let qrows = group_columns(groups, group, hd);
    let kvrows = group_columns(groups, 1, hd);
    let rows = |lin: &Linear, idx: &[usize]| -> Result<Linear> {
        Ok(Linear {
            weight: select_rows(&lin.weight, idx)?,
            bias: lin.bias.as_ref().map(|b| select_rows(b, idx)).transpose()?,
        })
    };
    out.q_proj = rows(&layer.q_proj, &qrows)?;
    out.k_proj = rows(&layer.k_proj, &kvrows)?;
    out.v_proj = rows(&layer.v_proj, &kvrows)?;
    out.o_proj = Linear {
        weight: match o_proj {
            Some(o) => o,
            None => select_cols(&layer.o_proj.weight, &qrows)?,
        },
        bias: layer.o_proj.bias.clone(),
    };
    Ok(out)
}

/// `layer` with only the MLP neurons `kept`; `down` replaces the sliced down projection if given.
fn slice_layer(layer: &Layer, kept: &[usize], down: Option<Tensor>) -> Result<Layer> {
    let mut out = layer.clone();
    out.gate_proj = Linear { weight: select_rows(&layer.gate_proj.weight, kept)?, bias: None };
    out.up_proj = Linear { weight: select_rows(&layer.up_proj.weight, kept)?, bias: None };
    let down = match down {
        Some(d) => d,
        None => select_cols(&layer.down_proj.weight, kept)?,
    };
    out.down_proj = Linear { weight: down, bias: None };
    Ok(out)
}

/// Result of a prune: the smaller model and what was kept.
pub struct Pruned {
    pub model: Model,
    /// Kept MLP neuron indices per kept layer.
    pub kept: Vec<Vec<usize>>,
    /// Indices (in the source model) of the layers kept.
    pub kept_layers: Vec<usize>,
    /// Kept KV groups per kept layer.
    pub kept_heads: Vec<Vec<usize>>,
    /// Block influence (1 − mean cos(input, output)) of every source layer, when calibrated.
    pub layer_influence: Vec<f64>,
    /// With `drop_block`: the angular distance of the block starting at each layer.
    pub block_distances: Vec<f64>,
    pub calib_tokens: usize,
    /// Seconds spent choosing neurons and heads, re-fitting and slicing the layers (recovery);
    /// the rest of a calibrated prune is calibration's forward passes and statistics.
    pub recovery_seconds: f64,
}

/// Prunes MLP width uniformly. `calib_ids` (already cut into `calib_samples × calib_len`) enables
/// data-driven scores and recovery. `progress(stage, done, total)`. `model` is left as it was; see
/// [`prune_owned`] to prune without keeping the original.
pub fn prune_mlp(
    model: &Model,
    calib_ids: Option<&[u32]>,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Pruned> {
    prune_owned(model.clone(), calib_ids, o, progress)
}

/// [`prune_mlp`] on a model the caller gives up: each layer's original weights are freed as soon as
/// its pruned replacement exists, so memory peaks at about one model plus one layer (the page's
/// way to stay within the browser's memory), instead of the original plus the pruned model.
///
/// With calibration text, every layer is pruned as calibration reaches it (`prune_layer`) and its
/// pruned output feeds the next; without, neurons are scored from the weights alone. Then whole
/// layers are dropped, by their influence on the text or as given.
pub fn prune_owned(
    mut model: Model,
    calib_ids: Option<&[u32]>,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Pruned> {
    let mut layers = std::mem::take(&mut model.layers);
    let mut pruned = prune_in(model, &mut layers, calib_ids, o, progress)?;
    pruned.model.layers = layers;
    Ok(pruned)
}

/// [`prune_owned`] on a model whose layers are in `layers` (in memory, or read from the model's
/// file as they are used, [`crate::model::Streamed`]): each layer is read, pruned, and its
/// replacement put back in `layers`, one at a time. The model returned has the pruned shape and no
/// layers of its own: they are the ones `layers` then holds.
pub fn prune_in(
    mut model: Model,
    layers: &mut dyn LayerStore,
    calib_ids: Option<&[u32]>,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Pruned> {
    model.layers.clear();
    let mut t = Targets::of(&model.cfg, o, calib_ids.is_some())?;
    if let (Widths::PerLayer, Some(ids), true) = (o.mlp_widths, calib_ids, t.pruning()) {
        t.keep = choose_widths(&model, layers, ids, &t, o, progress)?;
    }
    let found = match calib_ids {
        Some(ids) => prune_while_calibrating(&model, layers, ids, &t, o, progress)?,
        None => Found::unmeasured(prune_statically(layers, &t, o, progress)?, &t, model.cfg.num_hidden_layers),
    };
    let drop = layers_to_drop(model.cfg.num_hidden_layers, o, &found.influence, &found.block)?;
    found.into_pruned(model, layers, &t, &drop)
}

/// What every layer keeps, from the options and the model's shape; checked before any work.
struct Targets {
    /// MLP neurons each layer keeps, of `intermediate`: the same in every layer, unless chosen
    /// per layer ([`choose_widths`]).
    keep: Vec<usize>,
    intermediate: usize,
    /// KV groups kept per layer, of `kv_heads`; `group` query heads share each.
    kv_keep: usize,
    kv_heads: usize,
    group: usize,
    head_dim: usize,
}

impl Targets {
    fn of(cfg: &ModelConfig, o: &PruneOptions, calibrating: bool) -> Result<Self> {
        if cfg.intermediate_sizes.is_some() {
            bail!(
                Input,
                "this model's layers already have MLP widths of their own ({}); podar prunes models whose layers \
                 are equally wide",
                cfg.mlp_width_range()
            );
        }
        let keep = vec![mlp_target(cfg.intermediate_size, o)?; cfg.num_hidden_layers];
        check_recovery(o)?;
        if o.mlp_widths == Widths::PerLayer && !calibrating {
            bail!(Input, "per-layer widths are chosen on calibration text: give --calib");
        }
        if o.score.needs_data() && !calibrating {
            bail!(Input, "score `{}` needs calibration text (--calib)", o.score);
        }
        let kv_keep = heads_target(cfg.num_key_value_heads, o.heads)?;
        if kv_keep < cfg.num_key_value_heads && !calibrating {
            bail!(Input, "--heads scores heads on calibration text: give --calib");
        }
        Ok(Self {
            keep,
            intermediate: cfg.intermediate_size,
            kv_keep,
            kv_heads: cfg.num_key_value_heads,
            group: cfg.num_attention_heads / cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }
    fn pruning(&self) -> bool {
        self.keep.iter().any(|&k| k < self.intermediate)
    }
    fn heads_pruning(&self) -> bool {
        self.kv_keep < self.kv_heads
    }
}

/// What pruning found for each source layer, and what calibration measured.
struct Found {
    recovery_seconds: f64,
    kept: Vec<Vec<usize>>,
    kept_heads: Vec<Vec<usize>>,
    calib_tokens: usize,
    influence: Vec<f64>,
    block: Vec<f64>,
}

impl Found {
    /// Kept neurons from static scores: every head kept, nothing measured.
    fn unmeasured(kept: Vec<Vec<usize>>, t: &Targets, n: usize) -> Self {
        let kept_heads = vec![(0..t.kv_heads).collect(); n];
        Self { recovery_seconds: 0.0, kept, kept_heads, calib_tokens: 0, influence: vec![], block: vec![] }
    }

    /// The pruned model's shape, and `layers` (already sliced) less the dropped ones, with what was kept.
    fn into_pruned(self, mut model: Model, layers: &mut dyn LayerStore, t: &Targets, drop: &[usize]) -> Result<Pruned> {
        let Found { recovery_seconds, mut kept, mut kept_heads, calib_tokens, influence, block } = self;
        let n = model.cfg.num_hidden_layers;
        let widths: Vec<usize> = (0..n).filter(|l| !drop.contains(l)).map(|l| t.keep[l]).collect();
        model.cfg.set_mlp_widths(&widths);
        if t.heads_pruning() {
            model.cfg.num_key_value_heads = t.kv_keep;
            model.cfg.num_attention_heads = t.kv_keep * t.group;
        }
        let kept_layers: Vec<usize> = (0..n).filter(|l| !drop.contains(l)).collect();
        if !drop.is_empty() {
            layers.retain(&kept_layers)?;
            model.cfg.layer_types = kept_layers.iter().map(|&l| model.cfg.layer_types[l]).collect();
            model.cfg.num_hidden_layers = kept_layers.len();
            kept = kept_layers.iter().map(|&l| std::mem::take(&mut kept[l])).collect();
            kept_heads = kept_layers.iter().map(|&l| std::mem::take(&mut kept_heads[l])).collect();
        }
        Ok(Pruned {
            model,
            kept,
            kept_layers,
            kept_heads,
            layer_influence: influence,
            block_distances: block,
            calib_tokens,
            recovery_seconds,
        })
    }
}

/// Scores every layer's neurons from its weights alone and slices each layer to the kept ones, a
/// few layers at a time (as many as there are threads), those in parallel; the kept neurons.
fn prune_statically(
    layers: &mut dyn LayerStore,
    t: &Targets,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Vec<Vec<usize>>> {
    let n = layers.count();
    let batch = crate::kernels::threads().max(1);
    let mut kept = Vec::with_capacity(n);
    for l0 in (0..n).step_by(batch) {
        let group: Vec<Layer> = (l0..n.min(l0 + batch)).map(|l| layers.layer(l)).collect::<Result<_>>()?;
        let results: Vec<Mutex<Option<Result<Vec<usize>>>>> = group.iter().map(|_| Mutex::new(None)).collect();
        par_for(group.len(), &|i| {
            let r = score_of(&group[i], o.score, None).map(|s| top_k(&s, t.keep[l0 + i]));
            if let Ok(mut slot) = results[i].lock() {
                *slot = Some(r);
            }
        });
        for (i, (layer, r)) in group.into_iter().zip(results).enumerate() {
            let k = r.into_inner().ok().flatten().unwrap_or_else(|| Ok(vec![]))?;
            if t.pruning() {
                layers.replace(l0 + i, slice_layer(&layer, &k, None)?)?;
            }
            kept.push(k);
            crate::error::go_on(progress("score", l0 + i + 1, n))?;
        }
    }
    Ok(kept)
}

/// Runs the calibration windows through the model a layer at a time and prunes each layer as they
/// reach it (`prune_layer`); the pruned layer replaces the original in `model` and, with
/// `o.sequential`, its output is what the next layer sees.
fn prune_while_calibrating(
    model: &Model,
    layers: &mut dyn LayerStore,
    ids: &[u32],
    t: &Targets,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Found> {
    let cfg = model.cfg.clone();
    let n = cfg.num_hidden_layers;
    let recover = o.recover && t.pruning();
    let mut kept: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut kept_heads: Vec<Vec<usize>> = vec![(0..t.kv_heads).collect(); n];
    let mut recovery_seconds = 0.0;
    let mut on_layer = |l: usize, layer: &Layer, st: &LayerStats| -> Result<Option<calib::Replacement>> {
        if !t.pruning() && !t.heads_pruning() {
            kept[l] = (0..t.intermediate).collect();
            return Ok(None);
        }
        let t0 = crate::clock::seconds();
        let (neurons, heads, layer) = prune_layer(layer, st, t.keep[l], t, o)?;
        recovery_seconds += crate::clock::seconds() - t0;
        kept[l] = neurons;
        kept_heads[l] = heads;
        Ok(Some(calib::Replacement {
            layer,
            kept: kept[l].clone(),
            attention_changed: t.heads_pruning(),
            continue_pruned: o.sequential,
        }))
    };
    let want = calib::Want {
        gram: t.pruning() && (recover || o.score == Score::Obs),
        attn_gram: t.heads_pruning() && o.recover,
        // Gemma normalises the MLP output, so the error is not linear in the down projection there.
        track_error: recover && o.sequential && o.correct != 0.0 && !cfg.arch.is_gemma(),
        mlp_only: t.pruning() && !t.heads_pruning() && o.sequential,
        bf16: o.calib_precision == Precision::Bf16,
        error: o.error_estimate,
        // Obs selects on the full Gram matrix.
        kept_gram: o.score != Score::Obs,
    };
    let stats =
        calib::collect(model, layers, ids, o.calib_samples, o.calib_len, want, &mut on_layer, &mut |d, total| {
            progress("calibrate", d, total)
        })?;
    let mut block = Vec::new();
    if let Some(k) = o.drop_block {
        if k > 0 && k < n {
            block = stats::block_distances(&stats.boundary, k, cfg.hidden_size)?;
        }
    }
    Ok(Found {
        recovery_seconds,
        kept,
        kept_heads,
        calib_tokens: stats.tokens,
        influence: stats.layers.iter().map(|l| 1.0 - l.io_cosine).collect(),
        block,
    })
}

/// One layer, pruned from what calibration measured on it: heads chosen (and the output projection
/// re-fit over them), neurons chosen, the down projection re-fit over the kept neurons (steered
/// against the error the pruned stream carries), then the weights sliced. Returns the kept neurons,
/// the kept KV groups and the pruned layer, which keeps `keep` neurons.
fn prune_layer(
    layer: &Layer,
    st: &LayerStats,
    keep: usize,
    t: &Targets,
    o: &PruneOptions,
) -> Result<(Vec<usize>, Vec<usize>, Layer)> {
    let (heads, o_proj) = choose_heads(layer, st, t, o)?;
    let correct = st.err_cross.as_ref().map(|c| (c, o.correct));
    let (kept, mut down) = choose_neurons(layer, st, keep, t, o, correct.is_none())?;
    if o.recover && t.pruning() && down.is_none() {
        down = refit_neurons(layer, st, &kept, o, correct)?;
    }
    let mut layer = slice_layer(layer, &kept, down)?;
    if t.heads_pruning() {
        layer = slice_heads(&layer, &heads, t.group, t.head_dim, o_proj)?;
    }
    Ok((kept, heads, layer))
}

/// The KV groups a layer keeps (all, unless pruning heads) and, with recovery, its output
/// projection re-fit over their columns.
fn choose_heads(layer: &Layer, st: &LayerStats, t: &Targets, o: &PruneOptions) -> Result<(Vec<usize>, Option<Tensor>)> {
    if !t.heads_pruning() {
        return Ok(((0..t.kv_heads).collect(), None));
    }
    let heads = top_k(&head_group_scores(layer, st, t.kv_heads, t.group, t.head_dim)?, t.kv_keep);
    let o_proj = match (o.recover, &st.attn_gram) {
        (true, Some(g)) => {
            let cols = group_columns(&heads, t.group, t.head_dim);
            Some(refit_down(&layer.o_proj.weight, g, &cols, o.ridge, None)?)
        }
        _ => None,
    };
    Ok((heads, o_proj))
}

/// The `keep` neurons a layer keeps by the chosen score; Optimal Brain Surgeon selects on the Gram
/// matrix and, when it may (recovery without error correction), hands back its own re-fit down
/// projection.
fn choose_neurons(
    layer: &Layer,
    st: &LayerStats,
    keep: usize,
    t: &Targets,
    o: &PruneOptions,
    uncorrected: bool,
) -> Result<(Vec<usize>, Option<Tensor>)> {
    match (o.score, &st.gram) {
        (Score::Obs, Some(g)) if t.pruning() => {
            let recover = o.recover && uncorrected;
            obs_select(&layer.down_proj.weight, g, keep, o.ridge, recover)
        }
        _ => Ok((top_k(&score_of(layer, o.score, Some(st))?, keep), None)),
    }
}

/// Each layer's MLP width for [`Widths::PerLayer`]: one calibration pass over the unpruned model
/// measures every neuron's output energy, relative to the geometric mean of its layer's residual
/// stream energy and MLP output energy, and [`widths::allocate`] spreads the uniform job's total
/// over the layers by it (in blocks of the divisor, where one is given), each layer losing between
/// half and one and a half times the uniform cut. Chosen on the benchmark's tuning half
/// (docs/pruning.md).
fn choose_widths(
    model: &Model,
    layers: &mut dyn LayerStore,
    ids: &[u32],
    t: &Targets,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Vec<usize>> {
    let mut shares = vec![Vec::new(); model.cfg.num_hidden_layers];
    let mut on_layer = |l: usize, layer: &Layer, st: &LayerStats| -> Result<Option<calib::Replacement>> {
        let e = score_of(layer, Score::Energy, Some(st))?;
        let norm = (st.residual_sq * e.iter().sum::<f64>()).sqrt().max(f64::MIN_POSITIVE);
        shares[l] = e.into_iter().map(|e| e / norm).collect();
        Ok(None)
    };
    let want = calib::Want { bf16: o.calib_precision == Precision::Bf16, ..Default::default() };
    calib::collect(model, layers, ids, o.calib_samples, o.calib_len, want, &mut on_layer, &mut |d, total| {
        progress("widths", d, total)
    })?;
    let uniform = t.keep.first().copied().unwrap_or(t.intermediate);
    widths::allocate(&shares, uniform, o.divisor.unwrap_or(1))
}

/// The down projection re-fit by ridge regression over the kept neurons, from the full Gram matrix
/// or from the kept neurons' parts calibration handed over; `correct` steers it against the error.
fn refit_neurons(
    layer: &Layer,
    st: &LayerStats,
    kept: &[usize],
    o: &PruneOptions,
    correct: Option<(&stats::ErrorCross, f64)>,
) -> Result<Option<Tensor>> {
    let down = &layer.down_proj.weight;
    Ok(match (&st.gram, &st.refit) {
        (Some(g), _) => Some(refit_down(down, g, kept, o.ridge, correct)?),
        (None, Some(parts)) => {
            let (gss, b) = parts.system(kept, o.correct)?;
            let lambda = ridge::lambda_of(&st.act_sq, o.ridge);
            Some(ridge::refit_system(down, kept, gss, b, lambda)?)
        }
        (None, None) => None,
    })
}

/// SHA-256 of token ids written as comma-separated decimals (how reports identify calibration data).
pub fn ids_sha256(ids: &[u32]) -> String {
    use sha2::{Digest, Sha256};
    let joined = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    format!("{:x}", Sha256::digest(joined.as_bytes()))
}

/// Per-layer and per-neuron importance on calibration text (for charts and `podar importance`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Importance {
    pub score: Score,
    pub tokens: usize,
    /// The number format of the products the statistics were gathered with.
    pub calib_precision: Precision,
    /// Block influence of each layer: 1 − mean cos(input, output) of its residual stream.
    pub layer_influence: Vec<f64>,
    /// MLP neuron scores per layer (for `obs`, its first greedy step's diagonal cost).
    pub mlp: Vec<Vec<f64>>,
}

/// Scores every layer and MLP neuron on `ids` (`samples × len`), without pruning anything.
pub fn importance(
    model: &Model,
    ids: &[u32],
    samples: usize,
    len: usize,
    score: Score,
    precision: Precision,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Importance> {
    if score == Score::Obs {
        bail!(
            Input,
            "score `obs` chooses neurons in blocks by what their joint removal costs after a re-fit, so it has no \
             score per neuron to show; `energy` is the closest that has one"
        );
    }
    let mut mlp = vec![Vec::new(); model.cfg.num_hidden_layers];
    let mut on_layer = |l: usize, layer: &Layer, st: &LayerStats| -> Result<Option<calib::Replacement>> {
        mlp[l] = score_of(layer, score, Some(st))?;
        Ok(None)
    };
    let want = calib::Want { bf16: precision == Precision::Bf16, ..Default::default() };
    let stats = calib::collect(model, &mut model.layers.clone(), ids, samples, len, want, &mut on_layer, progress)?;
    Ok(Importance {
        score,
        tokens: stats.tokens,
        calib_precision: precision,
        layer_influence: stats.layers.iter().map(|l| 1.0 - l.io_cosine).collect(),
        mlp,
    })
}
