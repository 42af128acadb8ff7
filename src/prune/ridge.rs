//! The linear algebra of recovery: ridge re-fits of projections on calibration Gram matrices, and
//! optimal-brain-surgeon neuron selection, with Cholesky factorisations (the re-fit in f32 where its
//! conditioning allows, else f64; selection in f64).

use crate::error::{bail, Result};
use crate::kernels::{linear, par_for, scaled_gemm, wide};
use crate::kernels::{select_cols, select_rows, Square};
use candle_core::{Device, Tensor};

/// Block size of the blocked Cholesky factorisation and triangular solves.
const NB: usize = 64;

/// The float types the factorisation and solves run in.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + From<f32>
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::DivAssign
{
    const ZERO: Self;
    fn sqrt(self) -> Self;
    fn finite(self) -> bool;
    fn of_f64(x: f64) -> Self;
    fn to_f32(self) -> f32;
}

macro_rules! real {
    ($($t:ty),*) => {$(
        impl Real for $t {
            const ZERO: Self = 0.0;
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn finite(self) -> bool {
                self.is_finite()
            }
            fn of_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f32(self) -> f32 {
                self as f32
            }
        }
    )*};
}
real!(f32, f64);

/// Cholesky factor `L` (row-major, lower) of the `n×n` matrix `a`, in `a`'s buffer: blocked, right-looking, with the
/// trailing updates (almost all of the n³/3 work) as matrix products split over threads.
fn cholesky<T: Real>(a: Vec<T>, n: usize) -> Result<Vec<T>> {
    // Factored in place: the matrix's own buffer becomes `L`.
    let mut l = a;
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        // The diagonal block (earlier columns' contributions are already subtracted).
        for j in k0..k1 {
            let s = l[j * n + j] - dot(&l[j * n + k0..j * n + j], &l[j * n + k0..j * n + j]);
            if s <= T::ZERO || !s.finite() {
                bail!(Input, "recovery: the calibration Gram matrix is not positive definite; raise --ridge");
            }
            let d = s.sqrt();
            l[j * n + j] = d;
            for i in j + 1..k1 {
                l[i * n + j] = (l[i * n + j] - dot(&l[i * n + k0..i * n + j], &l[j * n + k0..j * n + j])) / d;
            }
        }
        let lp = Shared(l.as_mut_ptr());
        let row_tasks = (n - k1).div_ceil(NB);
        // The panel below it: each row solves x · L11ᵀ = a_row, independently of the others.
        par_for(row_tasks, &|t| {
            let p = lp;
            wide(
                #[inline(always)]
                || {
                    for i in k1 + t * NB..(k1 + (t + 1) * NB).min(n) {
                        // SAFETY: this task alone writes rows i of its range, columns k0..k1; L11 is only read.
                        let row = unsafe { std::slice::from_raw_parts_mut(p.0.add(i * n + k0), k1 - k0) };
                        for j in k0..k1 {
                            let lj = unsafe { std::slice::from_raw_parts(p.0.add(j * n + k0), j - k0) };
                            row[j - k0] = (row[j - k0] - dot(&row[..j - k0], lj)) / unsafe { *p.0.add(j * n + j) };
                        }
                    }
                },
            );
        });
        // The trailing matrix, lower part: A22 −= L21 · L21ᵀ, row blocks in parallel.
        par_for(row_tasks, &|t| {
            let p = lp;
            let (r0, r1) = (k1 + t * NB, (k1 + (t + 1) * NB).min(n));
            // SAFETY: the task writes rows r0..r1, columns k1..r1 (disjoint from other tasks and from
            // the panel columns k0..k1 that both factors read).
            unsafe {
                scaled_gemm(
                    (r1 - r0, r1 - k1, k1 - k0),
                    p.0.add(r0 * n + k1),
                    n as isize,
                    true,
                    p.0.add(r0 * n + k0),
                    (n as isize, 1),
                    p.0.add(k1 * n + k0),
                    (1, n as isize),
                    T::from(-1.0),
                )
            };
        });
    }
    for i in 0..n {
        l[i * n + i + 1..(i + 1) * n].iter_mut().for_each(|x| *x = T::ZERO);
    }
    Ok(l)
}

/// Dot product with independent accumulators, so it vectorizes.
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail = ra.iter().zip(rb).fold(T::ZERO, |s, (&x, &y)| s + x * y);
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

/// Solves `L Lᵀ Z = B` in place for `B` `[n, h]` row-major (h right-hand sides): blocked forward
/// and back substitution, the off-diagonal blocks as matrix products, columns split over threads.
fn chol_solve<T: Real>(l: &[T], n: usize, b: &mut [T], h: usize) {
    let chunk = h.div_ceil(crate::kernels::threads()).max(1);
    let bp = Shared(b.as_mut_ptr());
    let (ni, hi) = (n as isize, h as isize);
    par_for(h.div_ceil(chunk), &|c| {
        wide(
            #[inline(always)]
            || {
                let p = bp;
                let (c0, w) = (c * chunk, chunk.min(h - c * chunk));
                // SAFETY: this task alone touches columns c0..c0+w of every row of b.
                // Rows i ≠ j never overlap, so `row(i)` and `row_ref(j)` may be alive together.
                let row = |i: usize| unsafe { std::slice::from_raw_parts_mut(p.0.add(i * h + c0), w) };
                let row_ref = |i: usize| unsafe { std::slice::from_raw_parts(p.0.add(i * h + c0), w) };
                let blocks: Vec<(usize, usize)> = (0..n).step_by(NB).map(|i0| (i0, (i0 + NB).min(n))).collect();
                // L Y = B.
                for &(i0, i1) in &blocks {
                    if i0 > 0 {
                        // SAFETY: rows i0..i1 are written, rows 0..i0 read; all inside b's [n, h].
                        unsafe {
                            scaled_gemm(
                                (i1 - i0, w, i0),
                                p.0.add(i0 * h + c0),
                                hi,
                                true,
                                l.as_ptr().add(i0 * n),
                                (ni, 1),
                                p.0.add(c0),
                                (hi, 1),
                                T::from(-1.0),
                            )
                        };
                    }
                    for i in i0..i1 {
                        for j in i0..i {
                            let (f, src) = (l[i * n + j], row_ref(j));
                            row(i).iter_mut().zip(src).for_each(|(a, &b)| *a -= f * b);
                        }
                        let d = l[i * n + i];
                        row(i).iter_mut().for_each(|a| *a /= d);
                    }
                }
                // Lᵀ Z = Y.
                for &(i0, i1) in blocks.iter().rev() {
                    if i1 < n {
                        // (Lᵀ)[i0..i1, i1..n]: element (r, c) is L[i1 + c, i0 + r].
                        // SAFETY: rows i0..i1 are written, rows i1..n read.
                        unsafe {
                            scaled_gemm(
                                (i1 - i0, w, n - i1),
                                p.0.add(i0 * h + c0),
                                hi,
                                true,
                                l.as_ptr().add(i1 * n + i0),
                                (1, ni),
                                p.0.add(i1 * h + c0),
                                (hi, 1),
                                T::from(-1.0),
                            )
                        };
                    }
                    for i in (i0..i1).rev() {
                        for j in i + 1..i1 {
                            let (f, src) = (l[j * n + i], row_ref(j));
                            row(i).iter_mut().zip(src).for_each(|(a, &b)| *a -= f * b);
                        }
                        let d = l[i * n + i];
                        row(i).iter_mut().for_each(|a| *a /= d);
                    }
                }
            },
        )
    });
}

/// The ridge strength `λ = ratio · mean diag G` of a Gram matrix.
fn ridge_lambda(gram: &Tensor, ratio: f64) -> Result<f64> {
    let n = gram.dim(0)?;
    let diag: Vec<f64> = crate::kernels::with_slice(gram, |g| (0..n).map(|i| g[i * n + i] as f64).collect())?;
    Ok(lambda_of(&diag, ratio))
}

/// The ridge strength `λ = ratio · mean diag G` from the diagonal `Σ a_i²` of the Gram matrix.
pub fn lambda_of(act_sq: &[f64], ratio: f64) -> f64 {
    ratio * (act_sq.iter().sum::<f64>() / act_sq.len().max(1) as f64).max(1e-12)
}

/// `G + λI` in f64.
fn damped(g: &Tensor, lambda: f64) -> Result<Vec<f64>> {
    let n = g.dim(0)?;
    let mut a: Vec<f64> = crate::kernels::with_slice(g, |g| g.iter().map(|&x| x as f64).collect())?;
    (0..n).for_each(|i| a[i * n + i] += lambda);
    Ok(a)
}

/// Ridge re-fit of a down projection on the kept neurons `S`, shrunk towards the original weights:
/// `W_S = argmin ‖W X + αE − W_S X_S‖² + λ‖W_S − W[:,S]‖²`, i.e.
/// `W_S = (W G[:,S] + α Cᵀ[:,S] + λ W[:,S]) (G[S,S] + λI)⁻¹` with `λ = ratio · mean diag G`.
/// `correct = Some((C, α))` with `C = X Eᵀ` (`[I, H]`) also steers the output by `α` times the
/// error `E` the pruned stream carries (see [`crate::prune::stats::LayerStats::err_cross`]).
pub fn refit_down(
    down: &Tensor,
    gram: &Tensor,
    kept: &[usize],
    ratio: f64,
    correct: Option<(&crate::prune::stats::ErrorCross, f64)>,
) -> Result<Tensor> {
    let lambda = ridge_lambda(gram, ratio)?;
    // Each temporary is freed as soon as it is used: this is where calibration's memory peaks.
    let (gss, mut b) = {
        let gs = select_rows(gram, kept)?; // [k, I]
        (select_cols(&gs, kept)?, linear(&gs, down, None)?) // G[S,S], and G[S,:] Wᵀ [k, H]
    };
    if let Some((c, alpha)) = correct.filter(|&(_, a)| a != 0.0) {
        b = c.steer(kept, b, alpha)?;
    }
    refit_system(down, kept, KeptGram::Tensor(gss), b, lambda)
}

/// The ridge re-fit of [`refit_down`] from its system: the kept neurons' Gram matrix `G[S,S]` and
/// the right-hand side `B` (`[|S|, H]`), solving `W_Sᵀ = (G[S,S] + λI)⁻¹ (B + λ W[:,S]ᵀ)`.
///
/// It is solved in f32 where that is accurate enough, else in f64: the system's condition number
/// is at most `κ = 1 + trace G[S,S] / λ`, and f32 is taken when `κ · ε_f32 ≤` [`F32_SOLVE_ERROR`]
/// (the default ridge on SmolLM2-135M gives κ in the thousands; a small `--ridge` may not).
pub fn refit_system(down: &Tensor, kept: &[usize], gss: KeptGram, b: Tensor, lambda: f64) -> Result<Tensor> {
    let k = kept.len();
    let h = b.dim(1)?;
    // (The tensor is moved into the block and freed at its end, not kept to the end of the call.)
    let b = {
        let t = b;
        t.flatten_all()?.to_vec1::<f32>()?
    };
    let ws = select_cols(down, kept)?.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?; // [k, H] = W[:,S]ᵀ
    let in_f64 = (1.0 + gss.trace(k)? / lambda) * f32::EPSILON as f64 > F32_SOLVE_ERROR;
    // The f64 solve of a large model's system is where recovery's memory peaks: the right-hand
    // side is made first (B and W freed), then G[S,S] in f64 (a Square widened in its own buffer).
    let z = if in_f64 {
        let z = rhs::<f64>(b, ws, lambda);
        ridge_solve(gss.into_f64()?, k, lambda, z)?
    } else {
        let z = rhs::<f32>(b, ws, lambda);
        ridge_solve(gss.into_f32()?, k, lambda, z)?
    };
    // Z is [k, H]; the new down projection is Zᵀ, [H, k].
    Ok(Tensor::from_vec(z, (k, h), &Device::Cpu)?.t()?.contiguous()?)
}

/// The largest relative error bound (condition number × rounding) for which the re-fit's system
/// is solved in f32 rather than f64.
pub const F32_SOLVE_ERROR: f64 = 1e-3;

/// The kept neurons' Gram matrix `G[S,S]` as a re-fit takes it: a tensor, or a [`Square`] summed
/// where it can be widened to f64 in place.
pub enum KeptGram {
    Tensor(Tensor),
    Square(Square),
}

impl KeptGram {
    /// Its trace (it is `k × k`).
    fn trace(&self, k: usize) -> Result<f64> {
        let of = |g: &[f32]| -> f64 { (0..k).map(|i| g[i * k + i] as f64).sum() };
        match self {
            KeptGram::Tensor(t) => crate::kernels::with_slice(t, of),
            KeptGram::Square(s) => Ok(of(s.values())),
        }
    }

    /// Its values in f64: a Square's widened in its own buffer.
    fn into_f64(self) -> Result<Vec<f64>> {
        match self {
            KeptGram::Tensor(t) => crate::kernels::with_slice(&t, |g| g.iter().map(|&x| x as f64).collect()),
            KeptGram::Square(s) => Ok(s.widen()),
        }
    }

    /// Its values in f32.
    fn into_f32(self) -> Result<Vec<f32>> {
        match self {
            KeptGram::Tensor(t) => Ok(t.flatten_all()?.to_vec1::<f32>()?),
            KeptGram::Square(s) => Ok(s.values().to_vec()),
        }
    }

    /// A copy as a `[k, k]` tensor.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(match self {
            KeptGram::Tensor(t) => t.clone(),
            KeptGram::Square(s) => Tensor::from_vec(s.values().to_vec(), (s.n(), s.n()), &Device::Cpu)?,
        })
    }
}

/// The ridge system's right-hand side `B + λ W` in `T`, for `B`, `W` `[k, h]` (consumed).
fn rhs<T: Real>(b: Vec<f32>, w: Vec<f32>, lambda: f64) -> Vec<T> {
    let lam = T::of_f64(lambda);
    b.iter().zip(&w).map(|(&x, &w)| T::from(x) + lam * T::from(w)).collect()
}

/// `Z = (G + λI)⁻¹ z` in `T`, for `G` `[k, k]` and `z = B + λ W` `[k, h]` ([`rhs`]), returned in f32.
fn ridge_solve<T: Real>(mut a: Vec<T>, k: usize, lambda: f64, mut z: Vec<T>) -> Result<Vec<f32>> {
    let h = z.len() / k.max(1);
    let lam = T::of_f64(lambda);
    (0..k).for_each(|i| a[i * k + i] += lam);
    let l = cholesky(a, k)?;
    chol_solve(&l, k, &mut z, h);
    Ok(z.into_iter().map(T::to_f32).collect())
}

/// `(L Lᵀ)⁻¹`, by solving against the identity.
fn inverse_from_cholesky(l: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut m = vec![0f64; n * n];
    (0..n).for_each(|i| m[i * n + i] = 1.0);
    chol_solve(l, n, &mut m, n);
    Ok(m)
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
    let n = gram.dim(0)?;
    let a = damped(gram, ridge_lambda(gram, ratio)?)?;
    let l = cholesky(a, n)?;
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
        cand.sort_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(a.cmp(&b)));
        let q: Vec<usize> = cand.into_iter().take(OBS_BLOCK.min(remaining)).collect();
        let bq = q.len();
        let hqq: Vec<f64> =
            q.iter().flat_map(|&a| q.iter().map(move |&b| (a, b))).map(|(a, b)| hinv[a * n + b]).collect();
        let hqq_inv = small_inverse(&hqq, bq)?;
        // Rows H⁻¹[Q,:], copied before H⁻¹ changes.
        let hq: Vec<f64> = q.iter().flat_map(|&a| hinv[a * n..a * n + n].iter().copied()).collect();
        let wshared = Shared(w.as_mut_ptr());
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
        let hshared = Shared(hinv.as_mut_ptr());
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

struct Shared<T>(*mut T);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}

// SAFETY: tasks write disjoint rows; par_for joins before the buffer is used again.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Gram matrix summed wide and widened in place solves exactly as one summed as a tensor, in
    /// f64 (a small ridge) and in f32 (a large one).
    #[test]
    fn a_gram_widened_in_place_solves_as_a_tensor_does() {
        use crate::kernels::Accum;
        let (t, k, h) = (300, 70, 24);
        let x = Tensor::from_vec(
            (0..t * k).map(|i| ((i * 7919 % 997) as f32 / 997.0) - 0.5).collect::<Vec<_>>(),
            (t, k),
            &Device::Cpu,
        )
        .unwrap();
        let y = Tensor::from_vec(
            (0..t * h).map(|i| ((i * 31 % 101) as f32 / 101.0) - 0.5).collect::<Vec<_>>(),
            (t, h),
            &Device::Cpu,
        )
        .unwrap();
        let down = Tensor::from_vec(
            (0..h * k).map(|i| ((i * 13 % 53) as f32 / 53.0) - 0.5).collect::<Vec<_>>(),
            (h, k),
            &Device::Cpu,
        )
        .unwrap();
        let kept: Vec<usize> = (0..k).collect();
        let sums = |wide: bool| {
            let (mut g, mut b) = (if wide { Accum::wide() } else { Accum::default() }, Accum::default());
            Accum::add_gram_cross(&mut g, &mut b, &x, &y).unwrap();
            let gram = if wide {
                KeptGram::Square(g.into_square(k).unwrap())
            } else {
                KeptGram::Tensor(g.into_tensor((k, k)).unwrap())
            };
            (gram, b.into_tensor((k, h)).unwrap())
        };
        let trace: f64 = sums(false)
            .0
            .to_tensor()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, r)| r[i] as f64)
            .sum();
        for lambda in [trace * 1e-7, trace] {
            let solved = |wide: bool| {
                let (g, b) = sums(wide);
                refit_system(&down, &kept, g, b, lambda).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
            };
            assert_eq!(solved(true), solved(false), "lambda {lambda}");
        }
        // Widening keeps every value.
        let KeptGram::Square(s) = sums(true).0 else { unreachable!() };
        let narrow = s.values().to_vec();
        assert_eq!(s.widen(), narrow.iter().map(|&v| v as f64).collect::<Vec<_>>());
    }

    #[test]
    fn blocked_cholesky_and_solve_across_several_blocks() {
        // n spans three blocks with a ragged last one; A = MᵀM + I is positive definite.
        let (n, h) = (2 * NB + 23, 37);
        let m: Vec<f64> = (0..n * n).map(|i| ((i * 7919 % 997) as f64 / 997.0) - 0.5).collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    (0..n).map(|k| m[k * n + i] * m[k * n + j]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        let l = cholesky(a.clone(), n).unwrap();
        for i in 0..n {
            for j in 0..n {
                let llt: f64 = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum();
                assert!((llt - a[i * n + j]).abs() < 1e-9 * a[i * n + i].abs().max(1.0), "LLᵀ[{i},{j}]");
            }
        }
        let b: Vec<f64> = (0..n * h).map(|i| ((i * 31 % 101) as f64) / 101.0).collect();
        let mut z = b.clone();
        chol_solve(&l, n, &mut z, h);
        for i in 0..n {
            for c in 0..h {
                let az: f64 = (0..n).map(|k| a[i * n + k] * z[k * h + c]).sum();
                assert!((az - b[i * h + c]).abs() < 1e-8, "(AZ)[{i},{c}] = {az} vs {}", b[i * h + c]);
            }
        }
        // The same in f32 (this A's condition number is in the hundreds).
        let l32 = cholesky(a.iter().map(|&x| x as f32).collect(), n).unwrap();
        let mut z32: Vec<f32> = b.iter().map(|&x| x as f32).collect();
        chol_solve(&l32, n, &mut z32, h);
        let worst = z.iter().zip(&z32).map(|(&x, &y)| (x - y as f64).abs()).fold(0f64, f64::max);
        let scale = z.iter().fold(0f64, |s, x| s.max(x.abs()));
        assert!(worst < 1e-4 * scale, "f32 solve off by {worst} (scale {scale})");
    }

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
        let w_ref = refit_down(&down, &gram, &kept, 1e-2, None).unwrap();
        let (p, q): (Vec<f32>, Vec<f32>) =
            (w_obs.unwrap().flatten_all().unwrap().to_vec1().unwrap(), w_ref.flatten_all().unwrap().to_vec1().unwrap());
        for (x, y) in p.iter().zip(&q) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}
