//! Width pruning of GLU MLPs: score neurons (statically from weights, or from calibration
//! activations), keep the same count in every layer, slice gate/up rows and down columns together,
//! and optionally re-fit the down projection by ridge regression so each layer's output matches the
//! unpruned one on the calibration activations.

use crate::error::{bail, Result};
use crate::kernels::{par_for, select_cols, select_rows};
use crate::model::transformer::{Layer, Linear, Model};
use calib::LayerStats;
use candle_core::Tensor;
use std::sync::Mutex;

pub mod calib;
mod ridge;
pub use ridge::{obs_select, refit_down};

/// How MLP neurons are scored (higher = more important = kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Score {
    /// Max + |min| of the gate and up rows (OptiPFair's static MAW).
    Maw,
    /// Variance of the gate and up rows.
    Vow,
    /// Product of the L1 norms of the gate and up rows.
    Pon,
    /// L2 norms of the gate row, up row and down column.
    L2,
    /// Σ|W|·‖x‖ over the neuron's weights (inputs of gate/up, and its own activation for down).
    Wanda,
    /// Fluctuation of the neuron's activation across calibration tokens × ‖down column‖².
    Flap,
    /// The energy the neuron writes into the residual stream over the calibration tokens:
    /// Σ_t a_t² · ‖down column‖², i.e. Σ_t ‖a_t · d‖². On SmolLM2-135M it prunes best for the
    /// calibration domain (code, prose and German), at some cost on other domains.
    Energy,
    /// OptiPFair's activation-weighted hybrid: (max-normalised MAW of gate row + up row + down
    /// column) × the L2 norm of the neuron's activation over the calibration tokens.
    Optipfair,
    /// Optimal-brain-surgeon selection: greedily removes the neuron whose removal (with the
    /// remaining down-projection columns re-fitted) costs least on the calibration activations,
    /// accounting for correlations between neurons.
    Obs,
}

impl std::fmt::Display for Score {
    /// The CLI name (`energy`, `maw`…).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        f.write_str(&s)
    }
}

impl Score {
    /// Whether the score needs calibration text.
    pub fn needs_data(self) -> bool {
        matches!(self, Score::Wanda | Score::Flap | Score::Energy | Score::Obs | Score::Optipfair)
    }
    /// Parses a CLI name.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "maw" => Score::Maw,
            "vow" => Score::Vow,
            "pon" => Score::Pon,
            "l2" => Score::L2,
            "wanda" => Score::Wanda,
            "flap" => Score::Flap,
            "energy" => Score::Energy,
            "optipfair" => Score::Optipfair,
            "obs" => Score::Obs,
            other => bail!(Input, "unknown score `{other}` (maw, vow, pon, l2, wanda, flap, energy, optipfair, obs)"),
        })
    }
}

/// What to prune and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PruneOptions {
    /// Fraction of MLP neurons to remove (0..1), or
    pub mlp_fraction: Option<f64>,
    /// the MLP width to keep.
    pub mlp_size: Option<usize>,
    /// Round the kept width down to a multiple of this.
    pub divisor: Option<usize>,
    pub score: Score,
    /// Ridge re-fit of the down projections (needs calibration).
    pub recover: bool,
    /// Ridge strength relative to the mean diagonal of the Gram matrix (default 0.3, with `correct`
    /// 0.5: measured best of 0.1 / 0.3 × 0…1 on SmolLM2-135M with code calibration, and better on
    /// prose and German calibration too; see the README).
    pub ridge: f64,
    pub calib_samples: usize,
    pub calib_len: usize,
    /// Remove this many layers, the ones that change the residual stream least (1 − cos(in, out)).
    pub drop_layers: Option<usize>,
    /// Remove exactly these layers.
    pub drop_layers_at: Option<Vec<usize>>,
    /// Remove the contiguous block of this many layers whose input and output are closest in angle.
    pub drop_block: Option<usize>,
    /// Calibrate each layer on the outputs of the already-pruned layers before it.
    pub sequential: bool,
    /// Fraction of KV groups (each KV head with its query heads) to remove from every layer.
    pub heads: Option<f64>,
    /// Error correction in recovery (0 = off, 1 = full): each re-fitted down projection also steers
    /// its layer's output towards the unpruned model's, by this fraction of the difference the
    /// pruned stream carries. Needs sequential calibration.
    pub correct: f64,
    /// How error correction learns the error it steers against (see [`calib::ErrorEstimate`]).
    pub error_estimate: calib::ErrorEstimate,
    /// The number format of calibration's matrix products (see [`Precision`]).
    pub calib_precision: Precision,
}

/// The number format of calibration's matrix products (the forward passes, the Gram matrices and
/// the cross products; the re-fits stay f32 and f64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// Both operands rounded to bf16 (to nearest even), their products summed in f32: where the
    /// CPU has bf16 dot products (x86-64 with AVX-512 BF16) at twice the f32 speed; elsewhere the
    /// same rounding before f32 products, so that every machine computes the same.
    Bf16,
}

impl Precision {
    /// `f32`, `bf16`, or `auto`: bf16 where the CPU's bf16 products are the faster ones
    /// ([`crate::kernels::bf16_faster`]), else f32.
    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "auto" if crate::kernels::bf16_faster() => Ok(Precision::Bf16),
            "auto" | "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => bail!(Input, "unknown calibration precision `{other}` (auto, f32, bf16)"),
        }
    }
}

impl PruneOptions {
    /// Whether the job runs on calibration text: a data-driven score, recovery, head pruning or a
    /// choice of layers to drop by their influence.
    pub fn calibrates(&self) -> bool {
        self.score.needs_data()
            || self.recover
            || self.heads.is_some()
            || self.drop_layers.is_some()
            || self.drop_block.is_some()
    }
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            mlp_fraction: None,
            mlp_size: None,
            divisor: None,
            score: Score::Energy,
            recover: true,
            ridge: 0.3,
            calib_samples: 64,
            calib_len: 128,
            drop_layers: None,
            drop_layers_at: None,
            drop_block: None,
            sequential: true,
            heads: None,
            correct: 0.5,
            error_estimate: calib::ErrorEstimate::Residuals,
            calib_precision: Precision::F32,
        }
    }
}

/// The width every layer keeps: from a fraction or a size, rounded down to the divisor, never larger
/// than the model's.
pub fn mlp_target(intermediate: usize, o: &PruneOptions) -> Result<usize> {
    let mut keep = match (o.mlp_fraction, o.mlp_size) {
        (Some(_), Some(_)) => bail!(Input, "give either --mlp or --mlp-size, not both"),
        (Some(f), None) if (0.0..1.0).contains(&f) => intermediate - (intermediate as f64 * f) as usize,
        (Some(f), None) => bail!(Input, "--mlp must be a fraction in [0, 1), got {f}"),
        (None, Some(n)) if n > 0 && n <= intermediate => n,
        (None, Some(n)) => bail!(Input, "--mlp-size must be between 1 and {intermediate}, got {n}"),
        (None, None) => intermediate,
    };
    if let Some(d) = o.divisor {
        if !matches!(d, 32 | 64 | 128 | 256) {
            bail!(Input, "--divisor must be 32, 64, 128 or 256, got {d}");
        }
        keep = keep / d * d;
        if keep == 0 {
            bail!(Input, "rounding the kept width down to a multiple of {d} leaves no neurons");
        }
    }
    Ok(keep)
}

/// Checks the recovery parameters: `ridge` a finite number ≥ 0, `correct` in [0, 1].
pub fn check_recovery(o: &PruneOptions) -> Result<()> {
    if !(o.ridge.is_finite() && o.ridge >= 0.0) {
        bail!(Input, "--ridge must be a number of at least 0, got {}", o.ridge);
    }
    if !(0.0..=1.0).contains(&o.correct) {
        bail!(Input, "--correct must be between 0 (off) and 1, got {}", o.correct);
    }
    Ok(())
}

/// Scores of one layer's MLP neurons.
pub fn score_layer(model: &Model, l: usize, score: Score, stats: Option<&LayerStats>) -> Result<Vec<f64>> {
    score_of(&model.layers[l], score, stats)
}

/// Neuron scores of one layer (see [`Score`]).
fn score_of(layer: &Layer, score: Score, stats: Option<&LayerStats>) -> Result<Vec<f64>> {
    let gate = layer.gate_proj.weight.to_vec2::<f32>()?;
    let up = layer.up_proj.weight.to_vec2::<f32>()?;
    let down_t = layer.down_proj.weight.t()?.contiguous()?.to_vec2::<f32>()?; // [I, H]
    let need = || stats.ok_or_else(|| crate::Error::Input(format!("score `{score}` needs calibration text (--calib)")));
    let n = gate.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (g, u, d) = (&gate[i], &up[i], &down_t[i]);
        let s = match score {
            Score::Maw => {
                let mm = |r: &[f32]| {
                    let (mx, mn) = r.iter().fold((f32::MIN, f32::MAX), |(a, b), &x| (a.max(x), b.min(x)));
                    (mx + mn.abs()) as f64
                };
                mm(g) + mm(u)
            }
            Score::Vow => {
                let var = |r: &[f32]| {
                    let m = r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64;
                    r.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / r.len() as f64
                };
                var(g) + var(u)
            }
            Score::Pon => {
                let l1 = |r: &[f32]| r.iter().map(|x| x.abs() as f64).sum::<f64>();
                l1(g) * l1(u)
            }
            Score::L2 => {
                let l2 = |r: &[f32]| r.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                l2(g) + l2(u) + l2(d)
            }
            Score::Wanda => {
                let st = need()?;
                let xn: Vec<f64> = st.input_sq.iter().map(|v| v.sqrt()).collect();
                let w = |r: &[f32]| r.iter().zip(&xn).map(|(&w, x)| w.abs() as f64 * x).sum::<f64>();
                w(g) + w(u) + st.act_sq[i].sqrt() * d.iter().map(|x| x.abs() as f64).sum::<f64>()
            }
            Score::Optipfair => 0.0, // filled in below: needs per-layer maxima
            // The output energy Σ a² · ‖d‖². For OBS it is the first-step cost with the inverse Gram
            // matrix approximated by its diagonal; `prune_mlp` runs the real greedy selection.
            Score::Energy | Score::Obs => need()?.act_sq[i] * d.iter().map(|&x| (x as f64).powi(2)).sum::<f64>(),
            Score::Flap => {
                let st = need()?;
                let t = st.tokens.max(1) as f64;
                let mean = st.act_sum[i] / t;
                let var = (st.act_sq[i] / t - mean * mean).max(0.0);
                var * d.iter().map(|&x| (x as f64).powi(2)).sum::<f64>()
            }
        };
        out.push(s);
    }
    if score == Score::Optipfair {
        let st = need()?;
        let maw = |r: &[f32]| {
            let (mx, mn) = r.iter().fold((f32::MIN, f32::MAX), |(a, b), &x| (a.max(x), b.min(x)));
            (mx + mn.abs()) as f64
        };
        let norm = |v: Vec<f64>| {
            let m = v.iter().copied().fold(f64::MIN, f64::max) + 1e-8;
            v.into_iter().map(|x| x / m).collect::<Vec<_>>()
        };
        let g = norm(gate.iter().map(|r| maw(r)).collect());
        let u = norm(up.iter().map(|r| maw(r)).collect());
        let d = norm(down_t.iter().map(|r| maw(r)).collect());
        for i in 0..n {
            out[i] = (g[i] + u[i] + d[i]) * st.act_sq[i].sqrt();
        }
    }
    Ok(out)
}

/// Indices of the `keep` highest scores, in ascending index order (ties broken by lower index).
pub fn top_k(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(keep);
    idx.sort_unstable();
    idx
}

/// KV groups every layer keeps: all, or all but ⌊groups · fraction⌋ (at least one stays).
pub fn heads_target(kv_heads: usize, fraction: Option<f64>) -> Result<usize> {
    match fraction {
        None => Ok(kv_heads),
        Some(f) if (0.0..1.0).contains(&f) => {
            let keep = kv_heads - (kv_heads as f64 * f) as usize;
            if keep == 0 {
                bail!(Input, "--heads {f} would remove all {kv_heads} KV heads");
            }
            if keep == kv_heads && f > 0.0 {
                bail!(
                    Input,
                    "--heads {f} removes none of the model's {kv_heads} KV groups (whole groups go, each {:.1}% of the \
                     heads): give at least {:.3}, or leave --heads out",
                    100.0 / kv_heads as f64,
                    1.0 / kv_heads as f64
                );
            }
            Ok(keep)
        }
        Some(f) => bail!(Input, "--heads must be a fraction in [0, 1), got {f}"),
    }
}

/// Output-projection columns (query-head features) of the KV groups `groups`.
fn group_columns(groups: &[usize], group: usize, hd: usize) -> Vec<usize> {
    groups.iter().flat_map(|&j| (j * group * hd)..((j + 1) * group * hd)).collect()
}

/// Scores KV groups: Σ over the group's o_proj input features of ‖z_c‖ · Σ|o_proj[:, c]|.
fn head_group_scores(layer: &Layer, st: &LayerStats, kv: usize, group: usize, hd: usize) -> Result<Vec<f64>> {
    let o = layer.o_proj.weight.t()?.contiguous()?.to_vec2::<f32>()?; // [nh·hd, H]
    Ok((0..kv)
        .map(|j| {
            group_columns(&[j], group, hd)
                .into_iter()
                .map(|c| st.attn_sq[c].sqrt() * o[c].iter().map(|x| x.abs() as f64).sum::<f64>())
                .sum()
        })
        .collect())
}

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
}

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
pub fn prune_owned(
    mut model: Model,
    calib_ids: Option<&[u32]>,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize) -> bool,
) -> Result<Pruned> {
    let cfg = &model.cfg.clone();
    let keep = mlp_target(cfg.intermediate_size, o)?;
    check_recovery(o)?;
    let n = cfg.num_hidden_layers;
    if o.score.needs_data() && calib_ids.is_none() {
        bail!(Input, "score `{}` needs calibration text (--calib)", o.score);
    }
    let mut kept: Vec<Vec<usize>> = vec![Vec::new(); n];
    let kv_keep = heads_target(cfg.num_key_value_heads, o.heads)?;
    let group = cfg.num_attention_heads / cfg.num_key_value_heads;
    let mut kept_heads: Vec<Vec<usize>> = vec![(0..cfg.num_key_value_heads).collect(); n];
    if kv_keep < cfg.num_key_value_heads && calib_ids.is_none() {
        bail!(Input, "--heads scores heads on calibration text: give --calib");
    }
    let mut calib_tokens = 0;
    let mut influence = Vec::new();
    let mut block = Vec::new();
    match calib_ids {
        Some(ids) => {
            let pruning = keep < cfg.intermediate_size;
            let recover = o.recover && pruning;
            let heads_pruning = kv_keep < cfg.num_key_value_heads;
            let want_gram = pruning && (recover || o.score == Score::Obs);
            // Gemma normalises the MLP output, so the error is not linear in the down projection there.
            let track_error = recover && o.sequential && o.correct != 0.0 && !cfg.arch.is_gemma();
            let mut on_layer = |l: usize, layer: &Layer, st: &LayerStats| -> Result<Option<calib::Replacement>> {
                if !pruning && !heads_pruning {
                    kept[l] = (0..cfg.intermediate_size).collect();
                    return Ok(None);
                }
                let mut o_proj = None;
                if heads_pruning {
                    let sc = head_group_scores(layer, st, cfg.num_key_value_heads, group, cfg.head_dim)?;
                    kept_heads[l] = top_k(&sc, kv_keep);
                    if let (true, Some(g)) = (o.recover, &st.attn_gram) {
                        let cols = group_columns(&kept_heads[l], group, cfg.head_dim);
                        o_proj = Some(refit_down(&layer.o_proj.weight, g, &cols, o.ridge, None)?);
                    }
                }
                let down = &layer.down_proj.weight;
                let mut new_down = None;
                let correct = st.err_cross.as_ref().map(|c| (c, o.correct));
                match (o.score, &st.gram) {
                    (Score::Obs, Some(g)) if pruning => {
                        let (k, new) = obs_select(down, g, keep, o.ridge, recover && correct.is_none())?;
                        kept[l] = k;
                        new_down = new;
                    }
                    _ => kept[l] = top_k(&score_of(layer, o.score, Some(st))?, keep),
                }
                if let (true, None) = (recover, &new_down) {
                    new_down = match (&st.gram, &st.refit) {
                        (Some(g), _) => Some(refit_down(down, g, &kept[l], o.ridge, correct)?),
                        (None, Some(parts)) => {
                            let (gss, b) = parts.system(&kept[l], o.correct)?;
                            let lambda = ridge::lambda_of(&st.act_sq, o.ridge);
                            Some(ridge::refit_system(down, &kept[l], gss, b, lambda)?)
                        }
                        (None, None) => None,
                    };
                }
                let mut layer = slice_layer(layer, &kept[l], new_down)?;
                if heads_pruning {
                    layer = slice_heads(&layer, &kept_heads[l], group, cfg.head_dim, o_proj)?;
                }
                Ok(Some(calib::Replacement {
                    layer,
                    kept: kept[l].clone(),
                    attention_changed: heads_pruning,
                    continue_pruned: o.sequential,
                }))
            };
            let stats = calib::collect(
                &mut model,
                ids,
                o.calib_samples,
                o.calib_len,
                calib::Want {
                    gram: want_gram,
                    attn_gram: heads_pruning && o.recover,
                    track_error,
                    mlp_only: pruning && !heads_pruning && o.sequential,
                    bf16: o.calib_precision == Precision::Bf16,
                    error: o.error_estimate,
                    // Obs selects on the full Gram matrix.
                    kept_gram: o.score != Score::Obs,
                },
                &mut on_layer,
                &mut |d, t| progress("calibrate", d, t),
            )?;
            calib_tokens = stats.tokens;
            influence = stats.layers.iter().map(|l| 1.0 - l.io_cosine).collect();
            if let Some(k) = o.drop_block {
                if k > 0 && k < n {
                    block = calib::block_distances(&stats.boundary, k, cfg.hidden_size)?;
                }
            }
        }
        None => {
            let results: Vec<Mutex<Option<Result<Vec<usize>>>>> = (0..n).map(|_| Mutex::new(None)).collect();
            par_for(n, &|l| {
                let r = score_layer(&model, l, o.score, None).map(|s| top_k(&s, keep));
                if let Ok(mut slot) = results[l].lock() {
                    *slot = Some(r);
                }
            });
            for (l, r) in results.into_iter().enumerate() {
                kept[l] = r.into_inner().ok().flatten().unwrap_or_else(|| Ok(vec![]))?;
                crate::error::go_on(progress("score", l + 1, n))?;
            }
        }
    }
    let drop = layers_to_drop(n, o, &influence, &block)?;
    // With calibration every layer was replaced by its pruned version as it was calibrated.
    let mut out = model;
    out.cfg.intermediate_size = keep;
    if calib_ids.is_none() && keep < cfg.intermediate_size {
        for (l, layer) in out.layers.iter_mut().enumerate() {
            *layer = slice_layer(layer, &kept[l], None)?;
        }
    }
    if kv_keep < cfg.num_key_value_heads {
        out.cfg.num_key_value_heads = kv_keep;
        out.cfg.num_attention_heads = kv_keep * group;
    }
    let kept_layers: Vec<usize> = (0..n).filter(|l| !drop.contains(l)).collect();
    if !drop.is_empty() {
        out.layers = kept_layers.iter().map(|&l| out.layers[l].clone()).collect();
        out.cfg.layer_types = kept_layers.iter().map(|&l| out.cfg.layer_types[l]).collect();
        out.cfg.num_hidden_layers = kept_layers.len();
        kept = kept_layers.iter().map(|&l| std::mem::take(&mut kept[l])).collect();
        kept_heads = kept_layers.iter().map(|&l| std::mem::take(&mut kept_heads[l])).collect();
    }
    Ok(Pruned {
        model: out,
        kept,
        kept_layers,
        kept_heads,
        layer_influence: influence,
        block_distances: block,
        calib_tokens,
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
    let mut mlp = vec![Vec::new(); model.layers.len()];
    let mut on_layer = |l: usize, layer: &Layer, st: &LayerStats| -> Result<Option<calib::Replacement>> {
        mlp[l] = score_of(layer, score, Some(st))?;
        Ok(None)
    };
    let want = calib::Want { bf16: precision == Precision::Bf16, ..Default::default() };
    let stats = calib::collect(&mut model.clone(), ids, samples, len, want, &mut on_layer, progress)?;
    Ok(Importance {
        score,
        tokens: stats.tokens,
        calib_precision: precision,
        layer_influence: stats.layers.iter().map(|l| 1.0 - l.io_cosine).collect(),
        mlp,
    })
}
