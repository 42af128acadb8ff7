//! The linear algebra of recovery: ridge re-fits of projections on calibration Gram matrices, and
//! optimal-brain-surgeon neuron selection, in f64 with Cholesky factorisations.

use super::{select_cols, select_rows};
use crate::error::{bail, Result};
use crate::kernels::{linear, par_for};
use candle_core::{Device, Tensor};
use std::sync::Mutex;

/// Cholesky factor `L` (row-major, lower) of the `n×n` matrix `a`.
fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    const ROWS: usize = 64;
    for j in 0..n {
        let s = a[j * n + j] - dot(&l[j * n..j * n + j], &l[j * n..j * n + j]);
        if s <= 0.0 || !s.is_finite() {
            bail!(Input, "recovery: the calibration Gram matrix is not positive definite; raise --ridge");
        }
        let d = s.sqrt();
        l[j * n + j] = d;
        // Column j below the diagonal: independent rows, split over threads.
        let rest = n - j - 1;
        let lp = SharedF64(l.as_mut_ptr());
        par_for(rest.div_ceil(ROWS), &|c| {
            let p = lp;
            let (r0, r1) = (j + 1 + c * ROWS, (j + 1 + (c + 1) * ROWS).min(n));
            // SAFETY: rows j and below-j rows < i are only read; each task writes l[i][j] of its own rows.
            let lj = unsafe { std::slice::from_raw_parts(p.0.add(j * n), j) };
            for i in r0..r1 {
                let li = unsafe { std::slice::from_raw_parts_mut(p.0.add(i * n), j + 1) };
                li[j] = (a[i * n + j] - dot(&li[..j], lj)) / d;
            }
        });
    }
    Ok(l)
}

/// Dot product with independent accumulators, so it vectorizes.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc[0] + acc[1] + acc[2] + acc[3] + tail
}

/// Inverse of a small symmetric positive-definite matrix (Gauss–Jordan, f64).
fn small_inverse(m: &[f64], b: usize) -> Result<Vec<f64>> {
    let mut a = m.to_vec();
    let mut inv = vec![0f64; b * b];
    (0..b).for_each(|i| inv[i * b + i] = 1.0);
    for c in 0..b {
        let p = a[c * b + c];
        if p.abs() < 1e-300 || !p.is_finite() {
            bail!(Input, "recovery: singular block in the inverse Gram matrix; raise --ridge");
        }
        for k in 0..b {
            a[c * b + k] /= p;
            inv[c * b + k] /= p;
        }
        for r in 0..b {
            if r != c {
                let f = a[r * b + c];
                for k in 0..b {
                    a[r * b + k] -= f * a[c * b + k];
                    inv[r * b + k] -= f * inv[c * b + k];
                }
            }
        }
    }
    Ok(inv)
}

/// Solves `L Lᵀ Z = B` in place for `B` `[n, h]` row-major (h right-hand sides), split over threads.
fn chol_solve(l: &[f64], n: usize, b: &mut [f64], h: usize) {
    let chunk = h.div_ceil(crate::kernels::threads()).max(1);
    let parts: Vec<Mutex<Vec<f64>>> = (0..h.div_ceil(chunk))
        .map(|c| {
            let (c0, c1) = (c * chunk, ((c + 1) * chunk).min(h));
            Mutex::new(b.chunks_exact(h).flat_map(|r| r[c0..c1].iter().copied()).collect())
        })
        .collect();
    par_for(parts.len(), &|c| {
        let Ok(mut z) = parts[c].lock() else { return };
        let w = (chunk).min(h - c * chunk);
        for i in 0..n {
            for j in 0..i {
                let f = l[i * n + j];
                if f != 0.0 {
                    let (head, tail) = z.split_at_mut(i * w);
                    tail[..w].iter_mut().zip(&head[j * w..j * w + w]).for_each(|(a, b)| *a -= f * b);
                }
            }
            let d = l[i * n + i];
            z[i * w..i * w + w].iter_mut().for_each(|a| *a /= d);
        }
        for i in (0..n).rev() {
            for j in i + 1..n {
                let f = l[j * n + i];
                if f != 0.0 {
                    let (head, tail) = z.split_at_mut(j * w);
                    head[i * w..i * w + w].iter_mut().zip(&tail[..w]).for_each(|(a, b)| *a -= f * b);
                }
            }
            let d = l[i * n + i];
            z[i * w..i * w + w].iter_mut().for_each(|a| *a /= d);
        }
    });
    for (c, part) in parts.into_iter().enumerate() {
        let z = part.into_inner().unwrap_or_default();
        let (c0, w) = (c * chunk, chunk.min(h - c * chunk));
        for (r, row) in b.chunks_exact_mut(h).enumerate() {
            row[c0..c0 + w].copy_from_slice(&z[r * w..r * w + w]);
        }
    }
}

/// The ridge strength `λ = ratio · mean diag G` of a Gram matrix.
fn ridge_lambda(gram: &Tensor, ratio: f64) -> Result<f64> {
    let n = gram.dim(0)?;
    let diag: f64 = crate::kernels::with_slice(gram, |g| (0..n).map(|i| g[i * n + i] as f64).sum())?;
    Ok(ratio * (diag / n.max(1) as f64).max(1e-12))
}

/// `G + λI` in f64.
fn damped(g: &[Vec<f32>], lambda: f64) -> Vec<f64> {
    let n = g.len();
    let mut a: Vec<f64> = g.iter().flatten().map(|&x| x as f64).collect();
    (0..n).for_each(|i| a[i * n + i] += lambda);
    a
}

/// Ridge re-fit of a down projection on the kept neurons `S`, shrunk towards the original weights:
/// `W_S = argmin ‖W X − W_S X_S‖² + λ‖W_S − W[:,S]‖²`, i.e.
/// `W_S = (W G[:,S] + λ W[:,S]) (G[S,S] + λI)⁻¹` with `λ = ratio · mean diag G`.
pub fn refit_down(down: &Tensor, gram: &Tensor, kept: &[usize], ratio: f64) -> Result<Tensor> {
    let k = kept.len();
    let lambda = ridge_lambda(gram, ratio)?;
    let gs = select_rows(gram, kept)?; // [k, I]
    let b = linear(&gs, down, None)?.to_vec2::<f32>()?; // [k, H] = G[S,:] Wᵀ
    let ws = select_cols(down, kept)?.t()?.contiguous()?.to_vec2::<f32>()?; // [k, H] = W[:,S]ᵀ
    let h = b.first().map_or(0, |r| r.len());
    let a = damped(&select_cols(&gs, kept)?.to_vec2::<f32>()?, lambda);
    let l = cholesky(&a, k)?;
    let mut z: Vec<f64> =
        b.iter().flatten().zip(ws.iter().flatten()).map(|(&x, &w)| x as f64 + lambda * w as f64).collect();
    chol_solve(&l, k, &mut z, h);
    // Z is [k, H]; the new down projection is Zᵀ, [H, k].
    let zt = Tensor::from_vec(z.iter().map(|&x| x as f32).collect::<Vec<_>>(), (k, h), &Device::Cpu)?;
    Ok(zt.t()?.contiguous()?)
}

/// `(L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹`: the triangular inverse row by row in f64, the product with our f32 matmul.
fn inverse_from_cholesky(l: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut m = vec![0f64; n * n]; // L⁻¹, lower triangular
    for i in 0..n {
        let (done, row) = m.split_at_mut(i * n);
        let row = &mut row[..n];
        row[i] = 1.0;
        for k in 0..i {
            let f = l[i * n + k];
            if f != 0.0 {
                row[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]).for_each(|(r, x)| *r -= f * x);
            }
        }
        let d = l[i * n + i];
        row[..=i].iter_mut().for_each(|r| *r /= d);
    }
    // (L⁻¹)ᵀ L⁻¹ = Mᵀ M: with Mt = Mᵀ, that is Mt · Mtᵀ, which `linear` computes.
    let mut mt = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            mt[j * n + i] = m[i * n + j] as f32;
        }
    }
    let mt = Tensor::from_vec(mt, (n, n), &Device::Cpu)?;
    let h = linear(&mt, &mt, None)?;
    crate::kernels::with_slice(&h, |s| s.iter().map(|&x| x as f64).collect())
}

/// Optimal-brain-surgeon structured selection on one down projection `W` `[H, I]` with the
/// activations' Gram matrix `G`: repeatedly removes the neuron `i` with the least
/// `Σ_o W[o,i]² / H⁻¹[i,i]` (H = G + λI) and updates `W` and `H⁻¹` for its removal.
/// Returns the kept indices and, when `update`, the re-fitted kept columns `[H, keep]`.
pub fn obs_select(
    down: &Tensor,
    gram: &Tensor,
    keep: usize,
    ratio: f64,
    update: bool,
) -> Result<(Vec<usize>, Option<Tensor>)> {
    let g = gram.to_vec2::<f32>()?;
    let n = g.len();
    let a = damped(&g, ridge_lambda(gram, ratio)?);
    let l = cholesky(&a, n)?;
    let mut hinv = inverse_from_cholesky(&l, n)?;
    let wv = down.to_vec2::<f32>()?;
    let rows = wv.len();
    let mut w: Vec<f64> = wv.iter().flatten().map(|&x| x as f64).collect();
    let mut alive = vec![true; n];
    let mut col_sq = vec![0f64; n];
    // Neurons leave in small blocks: the OBS_BLOCK cheapest by their current individual cost, removed
    // jointly with the exact block update of W and H⁻¹ (one pass over H⁻¹ per block, not per neuron).
    const OBS_BLOCK: usize = 8;
    let mut remaining = n - keep.min(n);
    while remaining > 0 {
        col_sq.iter_mut().for_each(|c| *c = 0.0);
        for r in w.chunks_exact(n) {
            col_sq.iter_mut().zip(r).for_each(|(c, x)| *c += x * x);
        }
        let mut cand: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
        let cost = |i: usize| col_sq[i] / hinv[i * n + i];
        cand.sort_by(|&a, &b| cost(a).partial_cmp(&cost(b)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        let q: Vec<usize> = cand.into_iter().take(OBS_BLOCK.min(remaining)).collect();
        let bq = q.len();
        let hqq: Vec<f64> =
            q.iter().flat_map(|&a| q.iter().map(move |&b| (a, b))).map(|(a, b)| hinv[a * n + b]).collect();
        let hqq_inv = small_inverse(&hqq, bq)?;
        // Rows H⁻¹[Q,:], copied before H⁻¹ changes.
        let hq: Vec<f64> = q.iter().flat_map(|&a| hinv[a * n..a * n + n].iter().copied()).collect();
        let wshared = SharedF64(w.as_mut_ptr());
        par_for(rows, &|o| {
            let p = wshared;
            // SAFETY: task o touches only row o of w.
            let r = unsafe { std::slice::from_raw_parts_mut(p.0.add(o * n), n) };
            // t = W[o,Q] · (H⁻¹[Q,Q])⁻¹, then W[o,:] −= t · H⁻¹[Q,:].
            let t: Vec<f64> = (0..bq).map(|c| (0..bq).map(|k| r[q[k]] * hqq_inv[k * bq + c]).sum()).collect();
            for (c, tc) in t.iter().enumerate() {
                r.iter_mut().zip(&hq[c * n..c * n + n]).for_each(|(x, h)| *x -= tc * h);
            }
        });
        let hshared = SharedF64(hinv.as_mut_ptr());
        par_for(n, &|a| {
            let p = hshared;
            // SAFETY: task a touches only row a of hinv; rows Q were copied into `hq` beforehand.
            let r = unsafe { std::slice::from_raw_parts_mut(p.0.add(a * n), n) };
            let u: Vec<f64> = (0..bq).map(|c| (0..bq).map(|k| hq[k * n + a] * hqq_inv[k * bq + c]).sum()).collect();
            for (c, uc) in u.iter().enumerate() {
                if *uc != 0.0 {
                    r.iter_mut().zip(&hq[c * n..c * n + n]).for_each(|(x, h)| *x -= uc * h);
                }
            }
        });
        for &i in &q {
            alive[i] = false;
        }
        remaining -= bq;
    }
    let kept: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
    let new = if update {
        let mut out = Vec::with_capacity(rows * kept.len());
        for r in w.chunks_exact(n) {
            out.extend(kept.iter().map(|&j| r[j] as f32));
        }
        Some(Tensor::from_vec(out, (rows, kept.len()), &Device::Cpu)?)
    } else {
        None
    };
    Ok((kept, new))
}

#[derive(Clone, Copy)]
struct SharedF64(*mut f64);

// SAFETY: tasks write disjoint rows; par_for joins before the buffer is used again.
unsafe impl Send for SharedF64 {}
unsafe impl Sync for SharedF64 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obs_updates_equal_the_ridge_refit_of_the_kept_set() {
        // A random activation matrix with correlated columns, and a random down projection.
        let (n, tokens, h) = (12, 64, 5);
        let mut x = 7u64;
        let mut rnd = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut acts: Vec<f32> = (0..tokens * n).map(|_| rnd()).collect();
        for t in 0..tokens {
            acts[t * n + 1] += 0.8 * acts[t * n]; // neuron 1 mostly repeats neuron 0
        }
        let a = Tensor::from_vec(acts, (tokens, n), &Device::Cpu).unwrap();
        let at = a.t().unwrap().contiguous().unwrap();
        let gram = linear(&at, &at, None).unwrap();
        let down = Tensor::from_vec((0..h * n).map(|_| rnd()).collect::<Vec<_>>(), (h, n), &Device::Cpu).unwrap();
        let (kept, w_obs) = obs_select(&down, &gram, 7, 1e-2, true).unwrap();
        assert_eq!(kept.len(), 7);
        let w_ref = refit_down(&down, &gram, &kept, 1e-2).unwrap();
        let (p, q): (Vec<f32>, Vec<f32>) =
            (w_obs.unwrap().flatten_all().unwrap().to_vec1().unwrap(), w_ref.flatten_all().unwrap().to_vec1().unwrap());
        for (x, y) in p.iter().zip(&q) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}
