//! Calibration's products in bf16: the switch ([`bf16_products`]), which CPUs run them natively
//! and faster, and the operands' conversion for podar's AVX-512 BF16 kernels (or the same rounding
//! before f32 products elsewhere).

use super::with_slice;
#[cfg(target_arch = "x86_64")]
use super::{avx512, finish_linear, outputs, par_for, threads, with_slices, written_by, SharedMut};
use crate::error::Result;
use candle_core::{Device, Tensor};

thread_local! {
    static BF16: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this CPU multiplies in bf16 natively (x86-64 with AVX-512 BF16), so that
/// [`bf16_products`] makes [`super::linear`] faster; elsewhere the products round the same way in f32.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::bf16_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What [`bf16_faster`] measured: calibration's most common product, SmolLM2's MLP up projection
/// on 8 windows of 128 tokens (`[1024, 576] · [1536, 576]ᵀ`, over the worker threads), in f32 and
/// in bf16 products, each the best of three runs taken alternately.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Bf16Trial {
    pub f32_gflops: f64,
    pub bf16_gflops: f64,
}

/// bf16 products are chosen where they ran at least this much faster: a near tie keeps f32, so
/// that noise does not flip the choice (and the result) from one run to the next.
const BF16_MARGIN: f64 = 1.15;

static TRIAL: std::sync::OnceLock<Option<Bf16Trial>> = std::sync::OnceLock::new();

/// Whether bf16 products are faster than f32 ones on this CPU, as measured once per process (in
/// about 0.05 s) where the CPU has them natively: AMD's Zen 4 ran them at twice its f32 rate, the
/// Intel Xeons measured at half. The CLI's `auto` calibration precision.
pub fn bf16_faster() -> bool {
    let trial = TRIAL.get_or_init(|| if bf16_available() { measure_bf16().ok() } else { None });
    trial.is_some_and(|t| t.bf16_gflops >= BF16_MARGIN * t.f32_gflops)
}

/// The trial behind [`bf16_faster`], if it ran in this process.
pub fn bf16_trial() -> Option<Bf16Trial> {
    TRIAL.get().copied().flatten()
}

fn measure_bf16() -> Result<Bf16Trial> {
    let (m, k, n) = (1024, 576, 1536);
    // Values spread over [-0.5, 0.5), as activations and weights are.
    let values = |len: usize, seed: usize| (0..len).map(|i| ((i * 7919 + seed) % 1000) as f32 / 1000.0 - 0.5).collect();
    let x = Tensor::from_vec::<_, f32>(values(m * k, 1), (m, k), &Device::Cpu)?;
    let w = Tensor::from_vec::<_, f32>(values(n * k, 2), (n, k), &Device::Cpu)?;
    let run = |bf16: bool| -> Result<f64> {
        let _products = bf16_products(bf16);
        let t0 = crate::clock::seconds();
        super::linear(&x, &w, None)?;
        Ok(crate::clock::seconds() - t0)
    };
    // A first run of each warms the caches and the worker threads.
    run(false)?;
    run(true)?;
    let (mut f32_best, mut bf16_best) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        f32_best = f32_best.min(run(false)?);
        bf16_best = bf16_best.min(run(true)?);
    }
    let gflop = 2.0 * (m * k * n) as f64 / 1e9;
    Ok(Bf16Trial { f32_gflops: gflop / f32_best.max(1e-9), bf16_gflops: gflop / bf16_best.max(1e-9) })
}

/// While the returned guard lives, [`super::linear`] called on this thread rounds both operands to bf16
/// (to nearest even) and sums their products in f32: natively where [`bf16_available`], else by
/// rounding copies before its f32 product. Dropping the guard restores what was set before.
pub fn bf16_products(on: bool) -> Bf16Products {
    Bf16Products { before: BF16.with(|b| b.replace(on)) }
}

/// The scope of [`bf16_products`].
pub struct Bf16Products {
    before: bool,
}

impl Drop for Bf16Products {
    fn drop(&mut self) {
        BF16.with(|b| b.set(self.before));
    }
}

/// `len` bf16 pairs made from `x`'s values by `fill(values, block, out)` for blocks `0..blocks`,
/// spread over the worker threads, into a buffer left unzeroed.
///
/// # Safety
/// The blocks together must write all `len` values at `out`, each block values no other writes.
#[cfg(target_arch = "x86_64")]
unsafe fn bf16_pairs_of(
    x: &Tensor,
    len: usize,
    blocks: usize,
    fill: &(dyn Fn(&[f32], usize, *mut u32) + Sync),
) -> Result<Vec<u32>> {
    // SAFETY: the caller's promise.
    unsafe {
        written_by(len, |ptr: *mut u32| {
            let dst = SharedMut(ptr.cast());
            with_slice(x, |xs| {
                par_for(blocks, &|i| {
                    let d = dst;
                    fill(xs, i, d.0.cast());
                })
            })
        })
    }
}

/// [`super::linear`]'s product in bf16: `x` rounded once into pairs, `w` as each task packs it.
#[cfg(target_arch = "x86_64")]
fn linear_bf16(x: &Tensor, w: &Tensor, (rows, _, k): (usize, usize, usize)) -> Result<Vec<f32>> {
    Ok(products_bf16(x, std::slice::from_ref(w), rows, k)?.pop().unwrap_or_default())
}

/// `x · wᵢᵀ` in bf16 for each `wᵢ` (`[nᵢ, k]`): `x` (`[rows, k]`) rounded once into pairs, and the
/// column blocks of every product one set of tasks, each packing its block of `wᵢ`.
#[cfg(target_arch = "x86_64")]
fn products_bf16(x: &Tensor, ws: &[Tensor], rows: usize, k: usize) -> Result<Vec<Vec<f32>>> {
    let kp = k.div_ceil(2);
    const PER: usize = 64;
    // SAFETY: the blocks of rows together write all kp pairs of every row, each block its own rows;
    // bf16 products are chosen only where the CPU has them.
    let xb = unsafe {
        bf16_pairs_of(x, rows * kp, rows.div_ceil(PER), &|xs, i, out| {
            for r in i * PER..((i + 1) * PER).min(rows) {
                avx512::to_bf16_pairs(&xs[r * k..(r + 1) * k], out.add(r * kp));
            }
        })?
    };
    let ns: Vec<usize> = ws.iter().map(|w| w.dim(0)).collect::<candle_core::Result<_>>()?;
    // Column blocks of each product, a few per thread so uneven cores still balance.
    let mut tasks = Vec::new();
    for (i, &n) in ns.iter().enumerate() {
        let chunk = n.div_ceil(threads() * 4).max(32).next_multiple_of(32).min(n.max(1));
        tasks.extend((0..n).step_by(chunk.max(1)).map(|j0| (i, j0, chunk.min(n - j0))));
    }
    let mut outs: Vec<Vec<f32>> = ns.iter().map(|&n| Vec::with_capacity(rows * n)).collect();
    let ptrs: Vec<SharedMut> = outs.iter_mut().map(|o| SharedMut(o.as_mut_ptr())).collect();
    with_slices(ws, |wss| {
        par_for(tasks.len(), &|t| {
            let (i, j0, cols) = tasks[t];
            let (n, o) = (ns[i], ptrs[i]);
            // SAFETY: task t alone writes columns j0..j0+cols of product i (its `rows × n` buffer's
            // capacity); xb holds rows × kp pairs, wss[i] n × k values.
            unsafe {
                avx512::gemm_bf16_bt((rows, cols, k), o.0.add(j0), n, xb.as_ptr(), kp, wss[i].as_ptr().add(j0 * k), k)
            };
        })
    })?;
    for (o, &n) in outs.iter_mut().zip(&ns) {
        // SAFETY: the tasks wrote every column of every row of each product.
        unsafe { o.set_len(rows * n) };
    }
    Ok(outs)
}

/// [`super::linears`] in bf16 on a CPU that multiplies bf16 (`None` elsewhere, or for inputs too
/// small for the kernel).
#[cfg(target_arch = "x86_64")]
pub(super) fn linears(x: &Tensor, maps: &[(&Tensor, Option<&Tensor>)]) -> Result<Option<Vec<Tensor>>> {
    let (rows, k) = x.dims2()?;
    if rows < 16 || !avx512::bf16_available() {
        return Ok(None);
    }
    let ns: Vec<usize> = maps.iter().map(|(w, _)| outputs(w, k)).collect::<Result<_>>()?;
    let ws: Vec<Tensor> = maps.iter().map(|(w, _)| (*w).clone()).collect();
    let outs = products_bf16(x, &ws, rows, k)?;
    outs.into_iter()
        .zip(maps)
        .zip(ns)
        .map(|((o, (_, b)), n)| finish_linear(o, rows, n, *b))
        .collect::<Result<_>>()
        .map(Some)
}

/// Whether products on this thread are to be in bf16 ([`bf16_products`]).
pub(super) fn on() -> bool {
    BF16.with(|b| b.get())
}

/// What the calibration products over tokens (Gram matrices, cross products) multiply when
/// [`bf16_products`] is on: `Some(pairs)` of `x`'s rows ([`avx512::to_bf16_token_pairs`]) where the
/// CPU multiplies bf16, else `None` with `x` rounded in `rounded` for the f32 kernels.
pub(super) fn tokens(x: &Tensor, rounded: &mut Option<Tensor>) -> Result<Option<Vec<u32>>> {
    if !on() {
        return Ok(None);
    }
    #[cfg(target_arch = "x86_64")]
    if avx512::bf16_available() {
        let (t, n) = x.dims2()?;
        let tp = t.div_ceil(2);
        const PER: usize = 32;
        // SAFETY: the blocks together write every pair row, all n values of each, each block its own
        // rows; the CPU multiplies bf16.
        let out = unsafe {
            bf16_pairs_of(x, tp * n, tp.div_ceil(PER), &|xs, i, out| {
                avx512::to_bf16_token_pairs(xs, n, i * PER..((i + 1) * PER).min(tp), out)
            })?
        };
        return Ok(Some(out));
    }
    *rounded = Some(round_bf16(x)?);
    Ok(None)
}

/// `t` with every value rounded to the nearest bf16 (ties to even), kept as f32.
fn round_bf16(t: &Tensor) -> Result<Tensor> {
    let v = with_slice(t, |s| s.iter().map(|&x| bf16_round(x)).collect::<Vec<f32>>())?;
    Ok(Tensor::from_vec(v, t.dims(), &Device::Cpu)?)
}

/// `x` rounded to the nearest bf16, ties to even, as the CPUs' conversion does (NaN stays NaN).
pub fn bf16_round(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
}

/// [`super::linear`] (`dims`: rows, outputs, inputs) under [`bf16_products`]: podar's bf16 kernel where the CPU multiplies bf16,
/// elsewhere the same rounding, then f32 products (the same results up to the order of sums).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(super) fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, dims: (usize, usize, usize)) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if dims.0 >= 16 && avx512::bf16_available() {
        return finish_linear(linear_bf16(x, w, dims)?, dims.0, dims.1, bias);
    }
    let _f32 = bf16_products(false);
    super::linear(&round_bf16(x)?, &round_bf16(w)?, bias)
}

/// `c (+)= aᵀb` over pairs of tokens in bf16 (see [`super::avx512::gemm_bf16_pairs`]); reached only
/// where the CPU multiplies bf16.
///
/// # Safety
/// `c` must cover `m` rows of `n` values at row stride `ldc`; `a` and `b` must hold `kp` pair rows
/// at their strides.
#[allow(clippy::too_many_arguments, unused_variables)]
pub(super) unsafe fn tokens_product(
    (m, n, kp): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    a: &[u32],
    lda: usize,
    b: &[u32],
    ldb: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: pairs exist only where the CPU multiplies bf16; the rest is the caller's promise.
    unsafe {
        super::avx512::gemm_bf16_pairs((m, n, kp), c, ldc, true, a.as_ptr(), lda, b.as_ptr(), ldb)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::wavy;
    use crate::kernels::{cross, gram, linear};

    /// bf16 products: `linear` under [`bf16_products`] equals a plain f64 product of both operands
    /// rounded to bf16 (to nearest even), on sizes around the tiles' and blocks' edges and odd inner
    /// dimensions, with the CPU's bf16 dot products or without; once the guard is dropped, f32.
    #[test]
    fn bf16_products_round_both_operands() {
        let bf16 = |x: f32| bf16_round(x) as f64;
        for &(m, n, k) in &[(16, 1, 1), (16, 33, 3), (25, 65, 257), (500, 70, 300), (37, 96, 1229)] {
            let (x, w) = (wavy(m, k, 7919), wavy(n, k, 104729));
            let (xv, wv) = (x.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
            let got = {
                let _g = bf16_products(true);
                linear(&x, &w, None).unwrap().to_vec2::<f32>().unwrap()
            };
            let f32_out = linear(&x, &w, None).unwrap().to_vec2::<f32>().unwrap();
            let mut far = 0usize;
            for i in 0..m {
                for j in 0..n {
                    let (mut rounded, mut exact) = (0f64, 0f64);
                    for kk in 0..k {
                        rounded += bf16(xv[i][kk]) * bf16(wv[j][kk]);
                        exact += xv[i][kk] as f64 * wv[j][kk] as f64;
                    }
                    let tol = 1e-5 * (1.0 + k as f64).sqrt();
                    assert!((f32_out[i][j] as f64 - exact).abs() < tol, "f32 after the guard ({m},{n},{k})");
                    assert!(
                        (got[i][j] as f64 - rounded).abs() < tol,
                        "({m},{n},{k}) at ({i},{j}): {} vs {rounded}",
                        got[i][j]
                    );
                    far += usize::from((rounded - exact).abs() > tol);
                }
            }
            // The rounding is visible (so the test tells the two apart) wherever k is not tiny.
            assert!(k < 200 || far > 0, "({m},{n},{k}): bf16 rounding changed nothing");
        }
    }

    /// Several maps of one input: each result is [`linear`]'s for that map (bias included), with
    /// bf16 products and without.
    #[test]
    fn linears_equal_one_linear_per_map() {
        let x = wavy(70, 300, 7919);
        let ws = [wavy(96, 300, 104729), wavy(33, 300, 31), wavy(200, 300, 17)];
        let bias = wavy(1, 33, 5).flatten_all().unwrap();
        let maps = [(&ws[0], None), (&ws[1], Some(&bias)), (&ws[2], None)];
        for on in [true, false] {
            let _g = bf16_products(on);
            let got = crate::kernels::linears(&x, &maps).unwrap();
            assert_eq!(got.len(), 3);
            for (g, (w, b)) in got.iter().zip(&maps) {
                let want = linear(&x, w, *b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "bf16 {on}");
            }
        }
        let bad = wavy(8, 299, 3);
        assert!(crate::kernels::linears(&x, &[(&ws[0], None), (&bad, None)]).is_err());
    }

    /// Gram matrices and cross products over tokens under [`bf16_products`]: the products of the
    /// bf16-rounded activations, odd token counts and sizes around the tiles included.
    #[test]
    fn bf16_gram_and_cross_round_the_activations() {
        let bf16 = |x: f32| bf16_round(x) as f64;
        for &(t, n, m) in &[(1, 3, 2), (17, 13, 33), (301, 100, 70), (1024, 130, 17)] {
            let (a, b) = (wavy(t, n, 7919), wavy(t, m, 104729));
            let (av, bv) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
            let (g, c) = {
                let _g = bf16_products(true);
                (gram(&a).unwrap().to_vec2::<f32>().unwrap(), cross(&a, &b).unwrap().to_vec2::<f32>().unwrap())
            };
            let tol = 1e-5 * (1.0 + t as f64);
            for i in 0..n {
                for j in 0..n {
                    let want: f64 = (0..t).map(|r| bf16(av[r][i]) * bf16(av[r][j])).sum();
                    assert!((g[i][j] as f64 - want).abs() < tol, "gram ({t},{n}) at ({i},{j}): {} vs {want}", g[i][j]);
                }
                for j in 0..m {
                    let want: f64 = (0..t).map(|r| bf16(av[r][i]) * bf16(bv[r][j])).sum();
                    assert!(
                        (c[i][j] as f64 - want).abs() < tol,
                        "cross ({t},{n},{m}) at ({i},{j}): {} vs {want}",
                        c[i][j]
                    );
                }
            }
        }
    }
}
