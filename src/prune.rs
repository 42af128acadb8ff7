//! Width pruning of GLU MLPs: score neurons (statically from weights, or from calibration
//! activations), keep the same count in every layer, slice gate/up rows and down columns together,
//! and optionally re-fit the down projection by ridge regression so each layer's output matches the
//! unpruned one on the calibration activations.

use crate::calib::{self, LayerStats};
use crate::error::{bail, Result};
use crate::kernels::{linear, par_for};
use crate::model::{Linear, Model};
use candle_core::{Device, Tensor};
use std::sync::Mutex;

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
}

impl Score {
    /// Whether the score needs calibration text.
    pub fn needs_data(self) -> bool {
        matches!(self, Score::Wanda | Score::Flap)
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
            other => bail!(
                Input,
                "unknown score `{other}` (maw, vow, pon, l2, wanda, flap)"
            ),
        })
    }
}

/// What to prune and how.
#[derive(Debug, Clone, serde::Serialize)]
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
    /// Ridge strength relative to the mean diagonal of the Gram matrix.
    pub ridge: f64,
    pub calib_samples: usize,
    pub calib_len: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            mlp_fraction: None,
            mlp_size: None,
            divisor: None,
            score: Score::Wanda,
            recover: true,
            ridge: 1e-2,
            calib_samples: 64,
            calib_len: 128,
        }
    }
}

/// The width every layer keeps: from a fraction or a size, rounded down to the divisor, never larger
/// than the model's.
pub fn mlp_target(intermediate: usize, o: &PruneOptions) -> Result<usize> {
    let mut keep = match (o.mlp_fraction, o.mlp_size) {
        (Some(_), Some(_)) => bail!(Input, "give either --mlp or --mlp-size, not both"),
        (Some(f), None) if (0.0..1.0).contains(&f) => {
            intermediate - (intermediate as f64 * f).round() as usize
        }
        (Some(f), None) => bail!(Input, "--mlp must be a fraction in [0, 1), got {f}"),
        (None, Some(n)) if n > 0 && n <= intermediate => n,
        (None, Some(n)) => bail!(
            Input,
            "--mlp-size must be between 1 and {intermediate}, got {n}"
        ),
        (None, None) => intermediate,
    };
    if let Some(d) = o.divisor {
        if !matches!(d, 32 | 64 | 128 | 256) {
            bail!(Input, "--divisor must be 32, 64, 128 or 256, got {d}");
        }
        keep = keep / d * d;
        if keep == 0 {
            bail!(
                Input,
                "rounding the kept width down to a multiple of {d} leaves no neurons"
            );
        }
    }
    Ok(keep)
}

/// Scores of one layer's MLP neurons.
pub fn score_layer(
    model: &Model,
    l: usize,
    score: Score,
    stats: Option<&LayerStats>,
) -> Result<Vec<f64>> {
    let layer = &model.layers[l];
    let gate = layer.gate_proj.weight.to_vec2::<f32>()?;
    let up = layer.up_proj.weight.to_vec2::<f32>()?;
    let down_t = layer.down_proj.weight.t()?.contiguous()?.to_vec2::<f32>()?; // [I, H]
    let need = || {
        stats.ok_or_else(|| {
            crate::Error::Input(format!(
                "score `{score:?}` needs calibration text (--calib)"
            ))
        })
    };
    let n = gate.len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (g, u, d) = (&gate[i], &up[i], &down_t[i]);
        let s = match score {
            Score::Maw => {
                let mm = |r: &[f32]| {
                    let (mx, mn) = r
                        .iter()
                        .fold((f32::MIN, f32::MAX), |(a, b), &x| (a.max(x), b.min(x)));
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
                let w = |r: &[f32]| {
                    r.iter()
                        .zip(&xn)
                        .map(|(&w, x)| w.abs() as f64 * x)
                        .sum::<f64>()
                };
                w(g) + w(u) + st.act_sq[i].sqrt() * d.iter().map(|x| x.abs() as f64).sum::<f64>()
            }
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
    Ok(out)
}

/// Indices of the `keep` highest scores, in ascending index order (ties broken by lower index).
pub fn top_k(scores: &[f64], keep: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(keep);
    idx.sort_unstable();
    idx
}

fn select_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let i: Vec<u32> = idx.iter().map(|&x| x as u32).collect();
    Ok(t.index_select(&Tensor::from_vec(i, idx.len(), &Device::Cpu)?, 0)?)
}

fn select_cols(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let i: Vec<u32> = idx.iter().map(|&x| x as u32).collect();
    Ok(
        t.index_select(&Tensor::from_vec(i, idx.len(), &Device::Cpu)?, 1)?
            .contiguous()?,
    )
}

/// Ridge re-fit of a down projection: `W_S = W G[:,S] (G[S,S] + λI)⁻¹` with `λ = ratio · mean diag G[S,S]`.
pub fn refit_down(down: &Tensor, gram: &Tensor, kept: &[usize], ratio: f64) -> Result<Tensor> {
    let k = kept.len();
    let gs = select_rows(gram, kept)?; // [k, I]
    let b = linear(&gs, down, None)?.to_vec2::<f32>()?; // [k, H] = G[S,:] Wᵀ
    let gss = select_cols(&gs, kept)?.to_vec2::<f32>()?; // [k, k]
    let h = b.first().map_or(0, |r| r.len());
    let mean_diag = (0..k).map(|i| gss[i][i] as f64).sum::<f64>() / k.max(1) as f64;
    let lambda = ratio * mean_diag.max(1e-12);
    // Cholesky A = L Lᵀ (f64), A = G[S,S] + λI.
    let mut l = vec![0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let mut s = gss[i][j] as f64 + if i == j { lambda } else { 0.0 };
            let (ri, rj) = (&l[i * k..i * k + j], &l[j * k..j * k + j]);
            s -= ri.iter().zip(rj).map(|(a, b)| a * b).sum::<f64>();
            if i == j {
                if s <= 0.0 {
                    bail!(Input, "recovery: the calibration Gram matrix is not positive definite; try a larger ridge");
                }
                l[i * k + i] = s.sqrt();
            } else {
                l[i * k + j] = s / l[j * k + j];
            }
        }
    }
    // Solve L Y = B, then Lᵀ Z = Y, all H right-hand sides at once (rows of length h).
    let mut z: Vec<f64> = b.iter().flatten().map(|&x| x as f64).collect();
    for i in 0..k {
        for j in 0..i {
            let c = l[i * k + j];
            if c != 0.0 {
                let (head, tail) = z.split_at_mut(i * h);
                tail[..h]
                    .iter_mut()
                    .zip(&head[j * h..j * h + h])
                    .for_each(|(a, b)| *a -= c * b);
            }
        }
        let d = l[i * k + i];
        z[i * h..i * h + h].iter_mut().for_each(|a| *a /= d);
    }
    for i in (0..k).rev() {
        for j in i + 1..k {
            let c = l[j * k + i];
            if c != 0.0 {
                let (head, tail) = z.split_at_mut(j * h);
                head[i * h..i * h + h]
                    .iter_mut()
                    .zip(&tail[..h])
                    .for_each(|(a, b)| *a -= c * b);
            }
        }
        let d = l[i * k + i];
        z[i * h..i * h + h].iter_mut().for_each(|a| *a /= d);
    }
    // Z is [k, H]; the new down projection is Zᵀ, [H, k].
    let zt = Tensor::from_vec(
        z.iter().map(|&x| x as f32).collect::<Vec<_>>(),
        (k, h),
        &Device::Cpu,
    )?;
    Ok(zt.t()?.contiguous()?)
}

/// Result of a prune: the smaller model and what was kept.
pub struct Pruned {
    pub model: Model,
    /// Kept MLP neuron indices per layer.
    pub kept: Vec<Vec<usize>>,
    pub calib_tokens: usize,
}

/// Prunes MLP width uniformly. `calib_ids` (already cut into `calib_samples × calib_len`) enables
/// data-driven scores and recovery. `progress(stage, done, total)`.
pub fn prune_mlp(
    model: &Model,
    calib_ids: Option<&[u32]>,
    o: &PruneOptions,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<Pruned> {
    let cfg = &model.cfg;
    let keep = mlp_target(cfg.intermediate_size, o)?;
    let n = cfg.num_hidden_layers;
    if o.score.needs_data() && calib_ids.is_none() {
        bail!(
            Input,
            "score `{:?}` needs calibration text (--calib)",
            o.score
        );
    }
    let mut kept: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut downs: Vec<Option<Tensor>> = vec![None; n];
    let mut calib_tokens = 0;
    match calib_ids {
        Some(ids) => {
            let recover = o.recover && keep < cfg.intermediate_size;
            let mut on_layer = |l: usize, st: &LayerStats| -> Result<()> {
                let s = score_layer(model, l, o.score, Some(st))?;
                kept[l] = top_k(&s, keep);
                if let (true, Some(g)) = (recover, &st.gram) {
                    downs[l] = Some(refit_down(
                        &model.layers[l].down_proj.weight,
                        g,
                        &kept[l],
                        o.ridge,
                    )?);
                }
                Ok(())
            };
            let stats = calib::collect(
                model,
                ids,
                o.calib_samples,
                o.calib_len,
                recover,
                &mut on_layer,
                &mut |d, t| progress("calibrate", d, t),
            )?;
            calib_tokens = stats.tokens;
        }
        None => {
            let done = Mutex::new(0usize);
            let results: Vec<Mutex<Option<Result<Vec<usize>>>>> =
                (0..n).map(|_| Mutex::new(None)).collect();
            par_for(n, &|l| {
                let r = score_layer(model, l, o.score, None).map(|s| top_k(&s, keep));
                if let Ok(mut slot) = results[l].lock() {
                    *slot = Some(r);
                }
                if let Ok(mut d) = done.lock() {
                    *d += 1;
                }
            });
            for (l, r) in results.into_iter().enumerate() {
                kept[l] = r
                    .into_inner()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| Ok(vec![]))?;
                progress("score", l + 1, n);
            }
        }
    }
    let mut out = model.clone();
    out.cfg.intermediate_size = keep;
    for (l, layer) in out.layers.iter_mut().enumerate() {
        if keep == cfg.intermediate_size {
            continue; // nothing removed: keep the tensors untouched (byte-identical export)
        }
        let idx = &kept[l];
        layer.gate_proj = Linear {
            weight: select_rows(&layer.gate_proj.weight, idx)?,
            bias: None,
        };
        layer.up_proj = Linear {
            weight: select_rows(&layer.up_proj.weight, idx)?,
            bias: None,
        };
        let down = match downs[l].take() {
            Some(d) => d,
            None => select_cols(&layer.down_proj.weight, idx)?,
        };
        layer.down_proj = Linear {
            weight: down,
            bias: None,
        };
    }
    Ok(Pruned {
        model: out,
        kept,
        calib_tokens,
    })
}
