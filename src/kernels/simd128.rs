//! The page's matrix products on WebAssembly SIMD128, f32 (calibration) and f64 (recovery's
//! factorisations and solves): B packed into panels of `NV` vectors, `MR × NV` tiles of C kept in 9
//! vector accumulators (3 × 12 for f32, 3 × 6 for f64). V8 has 16 SIMD registers on x86-64; 4 × 12
//! or 6 × 8 tiles spill. In Chromium 156 with relaxed SIMD's fused multiply-add, on a 2-core
//! AVX-512 Xeon, one thread reaches 38–42 GFLOP/s in f32 on calibration's shapes against 32–38 for
//! the 4 × 8 tile used before (gemm's SIMD128 kernels: ≈ 30).

use core::arch::wasm32::*;

const MR: usize = 3;
const NV: usize = 3;
/// Columns of an f32 tile.
pub(super) const NR: usize = 4 * NV;

/// An element type the kernel multiplies: its lanes per vector and its vector operations.
pub(super) trait Lane: Copy + Default + core::ops::Add<Output = Self> + core::ops::Mul<Output = Self> {
    const LANES: usize;
    /// Columns of a tile (and of a packed panel).
    const NR: usize = Self::LANES * NV;
    fn splat(self) -> v128;
    /// `a·b + c`: one fused multiply-add where the build has relaxed SIMD (the page loads that
    /// build only where the browser validates it), else a multiply and an add.
    fn madd(a: v128, b: v128, c: v128) -> v128;
}

impl Lane for f32 {
    const LANES: usize = 4;
    #[inline(always)]
    fn splat(self) -> v128 {
        f32x4_splat(self)
    }
    #[inline(always)]
    fn madd(a: v128, b: v128, c: v128) -> v128 {
        #[cfg(target_feature = "relaxed-simd")]
        {
            f32x4_relaxed_madd(a, b, c)
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            f32x4_add(c, f32x4_mul(a, b))
        }
    }
}

impl Lane for f64 {
    const LANES: usize = 2;
    #[inline(always)]
    fn splat(self) -> v128 {
        f64x2_splat(self)
    }
    #[inline(always)]
    fn madd(a: v128, b: v128, c: v128) -> v128 {
        #[cfg(target_feature = "relaxed-simd")]
        {
            f64x2_relaxed_madd(a, b, c)
        }
        #[cfg(not(target_feature = "relaxed-simd"))]
        {
            f64x2_add(c, f64x2_mul(a, b))
        }
    }
}

/// `c[m×n] = (c if acc) + scale · a[m×k] · b[k×n]`, as [`super::scaled_gemm`] with non-negative
/// strides.
///
/// # Safety
/// As [`super::strided_gemm`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm<E: Lane>(
    (m, n, k): (usize, usize, usize),
    c: *mut E,
    ldc: usize,
    acc: bool,
    a: *const E,
    (a_rs, a_cs): (usize, usize),
    b: *const E,
    (b_rs, b_cs): (usize, usize),
    scale: E,
) {
    if a_cs != 1 && m > MR {
        // SAFETY: as this function's.
        unsafe { gemm_packed((m, n, k), c, ldc, acc, a, (a_rs, a_cs), b, (b_rs, b_cs), scale) };
        return;
    }
    let mut panel = vec![E::default(); k * E::NR];
    for j0 in (0..n).step_by(E::NR) {
        let nr = E::NR.min(n - j0);
        // SAFETY: rows 0..k and columns j0..j0+nr lie inside B.
        unsafe { pack_panel(&mut panel, b.add(j0 * b_cs), (b_rs, b_cs), k, nr) };
        for i0 in (0..m).step_by(MR) {
            // SAFETY: rows i0.. of A and the tile (i0, j0) of C lie inside them.
            unsafe {
                tile(
                    MR.min(m - i0),
                    nr,
                    k,
                    a.add(i0 * a_rs),
                    (a_rs, a_cs),
                    &panel,
                    c.add(i0 * ldc + j0),
                    ldc,
                    acc,
                    scale,
                )
            };
        }
    }
}

/// Rows of A per packed block.
const MC: usize = 64 * MR;
/// The inner dimension per packed block, at most.
const KC: usize = 256;

/// [`gemm`] for A that is not row-major (the transposed activations of Gram matrices and cross
/// products): read in place, each step of the inner dimension would touch a new cache line (and
/// often a new page) for three values. Blocks of A are packed as `[tile][k][MR]` first, so the
/// tiles read them as one contiguous stream.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_packed<E: Lane>(
    (m, n, k): (usize, usize, usize),
    c: *mut E,
    ldc: usize,
    acc: bool,
    a: *const E,
    (a_rs, a_cs): (usize, usize),
    b: *const E,
    (b_rs, b_cs): (usize, usize),
    scale: E,
) {
    let kb = super::k_block(k, KC, 1);
    let mut ap = vec![E::default(); MC.min(m.next_multiple_of(MR)) * kb];
    let mut panel = vec![E::default(); kb * E::NR];
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        for k0 in (0..k.max(1)).step_by(kb) {
            let kc = kb.min(k - k0);
            for (t, dst) in ap.chunks_exact_mut(kc.max(1) * MR).take(mc.div_ceil(MR)).enumerate() {
                let rows = MR.min(mc - t * MR);
                for (kk, step) in dst.chunks_exact_mut(MR).enumerate().take(kc) {
                    for (r, x) in step.iter_mut().enumerate() {
                        // SAFETY: (i0 + t·MR + r, k0 + kk) lies inside A for r < rows.
                        *x = if r < rows {
                            unsafe { *a.add((i0 + t * MR + r) * a_rs + (k0 + kk) * a_cs) }
                        } else {
                            E::default()
                        };
                    }
                }
            }
            // Later blocks of the inner dimension add to what the first wrote.
            let add = acc || k0 > 0;
            for j0 in (0..n).step_by(E::NR) {
                let nr = E::NR.min(n - j0);
                // SAFETY: rows k0..k0+kc and columns j0..j0+nr lie inside B.
                unsafe { pack_panel(&mut panel, b.add(k0 * b_rs + j0 * b_cs), (b_rs, b_cs), kc, nr) };
                for t in 0..mc.div_ceil(MR) {
                    let i = i0 + t * MR;
                    // SAFETY: the packed tile holds kc steps of MR rows; the tile (i, j0) lies inside C.
                    unsafe {
                        tile(
                            MR.min(mc - t * MR),
                            nr,
                            kc,
                            ap.as_ptr().add(t * kc * MR),
                            (1, MR),
                            &panel,
                            c.add(i * ldc + j0),
                            ldc,
                            add,
                            scale,
                        )
                    };
                }
            }
        }
    }
}

/// Packs `kc` rows × `nr` columns of B as `[kc][E::NR]`, columns past `nr` zero.
///
/// # Safety
/// `b` must cover the block the sizes and strides describe.
unsafe fn pack_panel<E: Lane>(panel: &mut [E], b: *const E, (b_rs, b_cs): (usize, usize), kc: usize, nr: usize) {
    if b_cs == 1 && nr == E::NR {
        // Rows of B contiguous (Gram matrices and cross products): NV vector copies per step.
        for (kk, row) in panel.chunks_exact_mut(E::NR).take(kc).enumerate() {
            for v in 0..NV {
                // SAFETY: columns 0..NR of row kk lie inside the block; the panel row holds NR values.
                unsafe {
                    let x = v128_load(b.add(kk * b_rs + E::LANES * v) as *const v128);
                    v128_store(row.as_mut_ptr().add(E::LANES * v) as *mut v128, x);
                }
            }
        }
        return;
    }
    for (kk, row) in panel.chunks_exact_mut(E::NR).take(kc).enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            // SAFETY: (kk, j) lies inside the block for j < nr.
            *x = if j < nr { unsafe { *b.add(kk * b_rs + j * b_cs) } } else { E::default() };
        }
    }
}

/// One `mr × nr` tile (`mr ≤ MR`, `nr ≤ E::NR`) of C over the whole inner dimension, scaled by
/// `scale` and added to C when `acc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<E: Lane>(
    mr: usize,
    nr: usize,
    k: usize,
    a: *const E,
    (a_rs, a_cs): (usize, usize),
    panel: &[E],
    c: *mut E,
    ldc: usize,
    acc: bool,
    scale: E,
) {
    let z = E::default().splat();
    let mut t = [[z; NV]; MR];
    let p = panel.as_ptr();
    // The full tile as its own loop, so that the row count is a constant the compiler unrolls.
    macro_rules! sweep {
        ($rows:expr) => {
            for kk in 0..k {
                let mut bv = [z; NV];
                for (v, b) in bv.iter_mut().enumerate() {
                    // SAFETY: the panel holds k·E::NR values.
                    *b = unsafe { v128_load(p.add(kk * E::NR + E::LANES * v) as *const v128) };
                }
                for r in 0..$rows {
                    // SAFETY: (r, kk) lies inside A.
                    let x = E::splat(unsafe { *a.add(r * a_rs + kk * a_cs) });
                    for v in 0..NV {
                        t[r][v] = E::madd(x, bv[v], t[r][v]);
                    }
                }
            }
        };
    }
    if mr == MR {
        sweep!(MR);
    } else {
        sweep!(mr);
    }
    for (r, tr) in t.iter().enumerate().take(mr) {
        // NR, the f32 tile's width, holds a row of any element type's tile.
        let mut out = [E::default(); NR];
        for (v, x) in tr.iter().enumerate() {
            // SAFETY: `out` holds at least E::NR = E::LANES·NV values.
            unsafe { v128_store(out.as_mut_ptr().add(E::LANES * v) as *mut v128, *x) };
        }
        for (j, &x) in out.iter().enumerate().take(nr) {
            // SAFETY: (r, j) lies inside the tile of C.
            unsafe {
                let o = c.add(r * ldc + j);
                *o = if acc { *o + scale * x } else { scale * x };
            }
        }
    }
}
