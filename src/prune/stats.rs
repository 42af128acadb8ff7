//! What calibration measures on a layer: per-neuron sums, Gram matrices, the error's cross-product
//! and the re-fit's parts ([`LayerStats`]), and the sums, cosines and distances they are made of.

use crate::error::{bail, Result};
use crate::kernels::{with_slice, Accum};
use crate::model::transformer::LayerTrace;
use crate::prune::ridge::KeptGram;
use candle_core::Tensor;

/// Per-layer statistics of the MLP over all calibration tokens.
#[derive(Debug, Clone)]
pub struct LayerStats {
    /// Σ x_j² of each MLP input feature (after the norm), `[hidden]`.
    pub input_sq: Vec<f64>,
    /// Σ a_i and Σ a_i² of each intermediate neuron (input of the down projection), `[intermediate]`.
    pub act_sum: Vec<f64>,
    pub act_sq: Vec<f64>,
    /// Gram matrix Σ a aᵀ of intermediate activations, `[intermediate, intermediate]`, when requested.
    pub gram: Option<Tensor>,
    /// Σ z_j² of each input feature of the attention output projection, `[heads·head_dim]`.
    pub attn_sq: Vec<f64>,
    /// Gram matrix of the attention output projection's input, when requested.
    pub attn_gram: Option<Tensor>,
    /// `Σ a eᵀ`, `[intermediate, hidden]`, when the error is tracked: the activations against the
    /// error `e` the pruned stream carries into this layer's output (the unpruned model's output on
    /// the unpruned stream minus this layer's output on the pruned one). `None` while the streams agree.
    pub err_cross: Option<ErrorCross>,
    /// What the down projection's re-fit over the kept neurons needs, where calibration hands it over
    /// instead of the full Gram matrix ([`Want::kept_gram`](super::calib::Want::kept_gram)).
    pub refit: Option<RefitParts>,
    /// Σ ‖r‖² of the residual stream the MLP adds to (after attention), over the tokens.
    pub residual_sq: f64,
    /// Mean cosine similarity between the layer's input and output residual streams.
    pub io_cosine: f64,
    /// Calibration tokens the sums run over.
    pub tokens: usize,
}

/// The error's cross-product `C = Σ a eᵀ` of [`LayerStats::err_cross`].
#[derive(Debug, Clone)]
pub enum ErrorCross {
    /// `C` over every neuron, `[intermediate, hidden]`.
    Full(Tensor),
    /// `C` not yet multiplied: per chunk the activations `a`, a target `y` and, for a target
    /// measured on the unpruned stream, the pruned stream's residual after attention `r`.
    /// A prune needs only the rows of the neurons it keeps, and [`ErrorCross::steer`] multiplies
    /// only those (and reuses the re-fit's own `G[S,:] Wᵀ`). With no bias and no norm after the MLP,
    /// the unpruned layer's output on the pruned stream is `r + a Wᵀ`, so:
    /// - error on the unpruned stream: `y` is the unpruned model's output, and
    ///   `C = Σ a (y − r)ᵀ − G Wᵀ`;
    /// - error estimated from residuals (`r` absent): `y = a Wᵀ + E`, and again `C = Σ a yᵀ − G Wᵀ`.
    Split(Vec<(Tensor, Tensor, Option<Tensor>)>),
}

impl ErrorCross {
    /// `b + α·C[S,:]` for the kept neurons `S`, given `b = G[S,:] Wᵀ` (`[|S|, hidden]`), the
    /// re-fit's right-hand side before steering.
    pub fn steer(&self, kept: &[usize], b: Tensor, alpha: f64) -> Result<Tensor> {
        match self {
            ErrorCross::Full(c) => Ok((b + (crate::kernels::select_rows(c, kept)? * alpha)?)?),
            ErrorCross::Split(parts) => {
                // C[S,:] = Σ a_S (y − r)ᵀ − b, so b + α·C[S,:] = (1 − α)·b + α·Σ a_S (y − r)ᵀ.
                let (k, h) = b.dims2()?;
                let mut at = Accum::default();
                for (a, y, r) in parts {
                    let a = crate::kernels::select_cols(a, kept)?;
                    match r {
                        Some(r) => at.add_cross(&a, &crate::kernels::sub(y, r)?)?,
                        None => at.add_cross(&a, y)?,
                    }
                }
                if at.is_empty() {
                    bail!(Input, "the error of a layer was tracked over no calibration chunk");
                }
                Ok(((b * (1.0 - alpha))? + (at.into_tensor((k, h))? * alpha)?)?)
            }
        }
    }

    /// `C` over every neuron, `[intermediate, hidden]`, from the layer's Gram matrix `G` and down
    /// projection `W` (`[hidden, intermediate]`), which the split form needs.
    pub fn full(&self, gram: &Tensor, down: &Tensor) -> Result<Tensor> {
        match self {
            ErrorCross::Full(c) => Ok(c.clone()),
            ErrorCross::Split(_) => {
                let all: Vec<usize> = (0..gram.dim(0)?).collect();
                let gw = crate::kernels::linear(gram, down, None)?;
                // steer with α = 1 gives G Wᵀ + C.
                Ok((self.steer(&all, gw.clone(), 1.0)? - gw)?)
            }
        }
    }
}

/// The parts of a down projection's ridge re-fit, per calibration chunk: the activations `a`
/// (`[tokens, intermediate]`), the unpruned MLP's output on them `u = a Wᵀ` and, when the error is
/// estimated from residuals, the error `e` the pruned stream carries into this layer's output
/// (`[tokens, hidden]` both), held as the error before it and `carry`, its share carried on
/// (`e = carry · E`). Only the kept neurons' rows of the system are ever multiplied.
#[derive(Debug, Clone)]
pub struct RefitParts {
    pub chunks: Vec<(Tensor, Tensor, Option<Tensor>)>,
    pub carry: f64,
}

impl RefitParts {
    /// For the kept neurons `S`: their Gram matrix `G[S,S] = Σ a_Sᵀ a_S` (`[|S|, |S|]`) and the
    /// re-fit's right-hand side `Σ a_Sᵀ (u + α e)` (`[|S|, hidden]`): the unpruned output, steered by
    /// `α` times the error.
    pub fn system(&self, kept: &[usize], alpha: f64) -> Result<(KeptGram, Tensor)> {
        let Some(h) = self.chunks.first().map(|(_, u, _)| u.dim(1)).transpose()? else {
            bail!(Input, "the re-fit of a layer has no calibration chunk");
        };
        // The Gram matrix summed where the solve can widen it to f64 in place.
        let (mut g, mut b) = (Accum::wide(), Accum::default());
        for (a, u, e) in &self.chunks {
            let a = crate::kernels::select_cols(a, kept)?;
            let t = match e {
                Some(e) if alpha != 0.0 => crate::kernels::add_scaled(u, e, (alpha * self.carry) as f32)?,
                _ => u.clone(),
            };
            Accum::add_gram_cross(&mut g, &mut b, &a, &t)?;
        }
        let k = kept.len();
        Ok((KeptGram::Square(g.into_square(k)?), b.into_tensor((k, h))?))
    }
}

/// Angular distance `arccos(cos(x_l, x_{l+n})) / π` between the residual stream before layer `l`
/// and after layer `l + n − 1`, averaged over the windows' last tokens, for every start `l`
/// (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers").
pub fn block_distances(boundary: &[Vec<f32>], n: usize, hidden: usize) -> Result<Vec<f64>> {
    let layers = boundary.len().saturating_sub(1);
    if n == 0 || n >= layers {
        bail!(Input, "a block of {n} layers must leave at least one of the model's {layers} layers");
    }
    Ok((0..=layers - n)
        .map(|l| {
            let (a, b) = (&boundary[l], &boundary[l + n]);
            let rows = a.len() / hidden.max(1);
            let total: f64 = a
                .chunks_exact(hidden)
                .zip(b.chunks_exact(hidden))
                .map(|(x, y)| cosine(x, y).clamp(-1.0, 1.0).acos() / std::f64::consts::PI)
                .sum();
            total / rows.max(1) as f64
        })
        .collect())
}

fn cosine(x: &[f32], y: &[f32]) -> f64 {
    cosine_of(x.iter().copied().zip(y.iter().copied()))
}

/// Cosine similarity of two vectors given as pairs of their elements, summed in f64.
fn cosine_of(pairs: impl Iterator<Item = (f32, f32)>) -> f64 {
    let (mut d, mut nx, mut ny) = (0f64, 0f64, 0f64);
    for (p, q) in pairs {
        d += (p * q) as f64;
        nx += (p * p) as f64;
        ny += (q * q) as f64;
    }
    d / (nx.sqrt() * ny.sqrt()).max(1e-12)
}

/// The last token's row of each window of `x` (`[samples·len, hidden]`).
pub(super) fn last_tokens(x: &Tensor, samples: usize, len: usize) -> Result<Vec<f32>> {
    let (_, h) = x.dims2()?;
    with_slice(x, |s| (0..samples).flat_map(|w| s[((w + 1) * len - 1) * h..(w + 1) * len * h].to_vec()).collect())
}

/// `f(rows)` on blocks of 128 rows of `0..rows`, in parallel; the results in block order, so that
/// sums of them do not depend on the threads.
fn row_blocks<T: Send>(rows: usize, f: &(dyn Fn(std::ops::Range<usize>) -> T + Sync)) -> Vec<T> {
    const PER: usize = 128;
    let blocks = rows.div_ceil(PER);
    let parts = std::sync::Mutex::new((0..blocks).map(|_| None).collect::<Vec<Option<T>>>());
    crate::kernels::par_for(blocks, &|i| {
        let part = f(i * PER..((i + 1) * PER).min(rows));
        parts.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(part);
    });
    parts.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten().collect()
}

/// Σ over rows of each column's square, and with `plain` also of the column itself, in f64, over
/// blocks of rows in parallel (one pass for both): `(Σ x², Σ x)` (the latter empty without `plain`).
fn col_sums(t: &Tensor, plain: bool) -> Result<(Vec<f64>, Vec<f64>)> {
    let (rows, n) = t.dims2()?;
    let m = if plain { n } else { 0 };
    let parts = with_slice(t, |s| {
        row_blocks(rows, &|r| {
            let (mut sq, mut sum) = (vec![0f64; n], vec![0f64; m]);
            crate::kernels::wide(
                #[inline(always)]
                || {
                    for row in s[r.start * n..r.end * n].chunks_exact(n) {
                        for (o, &x) in sq.iter_mut().zip(row) {
                            *o += (x * x) as f64;
                        }
                        for (o, &x) in sum.iter_mut().zip(row) {
                            *o += x as f64;
                        }
                    }
                },
            );
            (sq, sum)
        })
    })?;
    let (mut sq, mut sum) = (vec![0f64; n], vec![0f64; m]);
    for (p, q) in parts {
        sq.iter_mut().zip(&p).for_each(|(o, p)| *o += p);
        sum.iter_mut().zip(&q).for_each(|(o, p)| *o += p);
    }
    Ok((sq, sum))
}

/// Σ over rows of cos(a_row, b_row), over blocks of rows in parallel.
pub(super) fn sum_cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (rows, n) = a.dims2()?;
    if b.dims2()? != (rows, n) {
        bail!(Input, "cosine of {:?} against {:?}", a.dims(), b.dims());
    }
    let parts = with_slice(a, |av| {
        with_slice(b, |bv| {
            row_blocks(rows, &|r| {
                let (x, y) = (&av[r.start * n..r.end * n], &bv[r.start * n..r.end * n]);
                x.chunks_exact(n).zip(y.chunks_exact(n)).map(|(x, y)| cosine(x, y)).sum::<f64>()
            })
        })
    })??;
    Ok(parts.iter().sum())
}

/// Σ over rows of cos(x_row, r_row + u_row), without forming r + u.
pub(super) fn sum_cosine_of_sum(x: &Tensor, r: &Tensor, u: &Tensor) -> Result<f64> {
    let (rows, n) = x.dims2()?;
    if r.dims2()? != (rows, n) || u.dims2()? != (rows, n) {
        bail!(Input, "cosine of {:?} against {:?} + {:?}", x.dims(), r.dims(), u.dims());
    }
    let parts = with_slice(x, |xv| {
        with_slice(r, |rv| {
            with_slice(u, |uv| {
                row_blocks(rows, &|b| {
                    let span = b.start * n..b.end * n;
                    let (x, r, u) = (&xv[span.clone()], &rv[span.clone()], &uv[span]);
                    x.chunks_exact(n)
                        .zip(r.chunks_exact(n))
                        .zip(u.chunks_exact(n))
                        .map(|((x, r), u)| cosine_of(x.iter().zip(r.iter().zip(u)).map(|(&p, (&a, &b))| (p, a + b))))
                        .sum::<f64>()
                })
            })
        })
    })???;
    Ok(parts.iter().sum())
}

/// One chunk's per-neuron sums (the caller accumulates the matrices, `io_cosine` and `tokens`).
pub(super) fn stats_of(t: &LayerTrace) -> Result<LayerStats> {
    let (act_sq, act_sum) = col_sums(t.mlp_hidden, true)?;
    Ok(LayerStats {
        input_sq: col_sums(t.mlp_input, false)?.0,
        act_sum,
        act_sq,
        gram: None,
        attn_sq: col_sums(t.attn_hidden, false)?.0,
        attn_gram: None,
        err_cross: None,
        refit: None,
        residual_sq: col_sums(t.mlp_residual, false)?.0.iter().sum(),
        io_cosine: 0.0,
        tokens: 0,
    })
}

impl LayerStats {
    /// The statistics of two disjoint sets of tokens together.
    pub(super) fn add(mut self, o: LayerStats) -> LayerStats {
        let sum = |a: &mut Vec<f64>, b: &[f64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        sum(&mut self.input_sq, &o.input_sq);
        sum(&mut self.act_sum, &o.act_sum);
        sum(&mut self.act_sq, &o.act_sq);
        sum(&mut self.attn_sq, &o.attn_sq);
        self.residual_sq += o.residual_sq;
        self
    }
}
