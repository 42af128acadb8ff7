//! Neuron and head scores: how important each MLP neuron (statically from its weights, or from its
//! activations on the calibration text) and each KV group is. Higher is kept.

use super::stats::LayerStats;
use crate::error::{bail, Result};
use crate::model::transformer::{Layer, Model};

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

/// Scores of one layer's MLP neurons.
pub fn score_layer(model: &Model, l: usize, score: Score, stats: Option<&LayerStats>) -> Result<Vec<f64>> {
    score_of(&model.layers[l], score, stats)
}

/// Neuron scores of one layer (see [`Score`]).
pub(crate) fn score_of(layer: &Layer, score: Score, stats: Option<&LayerStats>) -> Result<Vec<f64>> {
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

/// Output-projection columns (query-head features) of the KV groups `groups`.
pub(crate) fn group_columns(groups: &[usize], group: usize, hd: usize) -> Vec<usize> {
    groups.iter().flat_map(|&j| (j * group * hd)..((j + 1) * group * hd)).collect()
}

/// Scores KV groups: Σ over the group's o_proj input features of ‖z_c‖ · Σ|o_proj[:, c]|.
pub(crate) fn head_group_scores(
    layer: &Layer,
    st: &LayerStats,
    kv: usize,
    group: usize,
    hd: usize,
) -> Result<Vec<f64>> {
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
