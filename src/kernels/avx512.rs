//! The native f32 matrix product on AVX-512 (x86-64, chosen at run time): B packed as `NR`-column
//! panels that stay in L1, A read in place when row-major (else packed as `MR`-row tiles), and
//! `MR × NR` tiles of C held in 24 of the 32 zmm registers. On a 2-core AVX-512 Xeon one thread
//! reaches 120–155 GFLOP/s on the shapes calibration multiplies, where gemm's kernels reach ≈ 80.
//! Also its f64 twin (recovery's products) and, in [`bf16`], the bf16 products of calibration.

use std::arch::x86_64::*;

mod bf16;
pub(super) use bf16::{bf16_available, gemm_bf16_bt, gemm_bf16_pairs, to_bf16_pairs, to_bf16_token_pairs};

/// Rows of a C tile.
const MR: usize = 12;
/// Columns of a C tile: two 16-lane vectors.
const NR: usize = 32;
/// The inner dimension in blocks of at most this many: a packed B panel (≤ 32 KiB) stays in L1.
const KC: usize = 256;
/// Rows of A taken at a time: an `MC × KC` block of A (480 KiB) stays in L2.
const MC: usize = 40 * MR;

/// Whether this CPU runs [`gemm`], and the kernels are not held to AVX2 ([`super::avx2_only`]).
pub(super) fn available() -> bool {
    !super::avx2_only() && std::arch::is_x86_feature_detected!("avx512f")
}

/// As [`super::strided_gemm`], on a CPU where [`available`] holds, with the product scaled by
/// `scale` before it is stored or added.
///
/// # Safety
/// As [`super::strided_gemm`], and [`available`] must hold.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    acc: bool,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    scale: f32,
) {
    // SAFETY: C is the caller's promise.
    if unsafe { nothing_to_multiply((m, n, k), c, ldc, acc) } {
        return;
    }
    // Row-major A is read in place (its rows are the tiles' broadcast streams); any other layout
    // is packed once per block into `ap`. The last, partial tile of row-major A goes through a
    // zero-padded copy, in `ap` too.
    let packed = a_cs != 1;
    let kb = super::k_block(k, KC, 8);
    let mut ap = vec![0f32; if packed { MC.min(m.next_multiple_of(MR)) } else { MR } * kb.min(k)];
    let mut bp = vec![0f32; kb.min(k) * NR];
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        let (tiles, full) = (mc.div_ceil(MR), mc / MR);
        for k0 in (0..k).step_by(kb) {
            let kc = kb.min(k - k0);
            // SAFETY: rows i0..i0+mc and columns k0..k0+kc lie inside A.
            let a0 = unsafe { a.add(i0 * a_rs + k0 * a_cs) };
            if packed {
                // SAFETY: as above.
                unsafe { pack_a(&mut ap, a0, (a_rs, a_cs), mc, kc) };
            }
            // Later blocks of the inner dimension add to what the first wrote.
            let add = acc || k0 > 0;
            for j0 in (0..n).step_by(NR) {
                let nr = NR.min(n - j0);
                // SAFETY: rows k0..k0+kc and columns j0..j0+nr lie inside B.
                unsafe { pack_b(&mut bp, b.add(k0 * b_rs + j0 * b_cs), (b_rs, b_cs), kc, nr) };
                for t in 0..tiles {
                    let rows = MR.min(mc - t * MR);
                    let ct = c.wrapping_add((i0 + t * MR) * ldc + j0);
                    // SAFETY: the tile's rows × nr columns of C lie inside C; the packed blocks
                    // hold kc steps of each tile; row-major A holds the full tiles' rows.
                    unsafe {
                        if packed {
                            tile::<false>(
                                kc,
                                ap.as_ptr().add(t * kc * MR),
                                MR,
                                bp.as_ptr(),
                                ct,
                                ldc,
                                (rows, nr),
                                add,
                                scale,
                            );
                        } else if t < full {
                            tile::<true>(kc, a0.add(t * MR * a_rs), a_rs, bp.as_ptr(), ct, ldc, (rows, nr), add, scale);
                        } else {
                            if j0 == 0 {
                                pack_a(&mut ap, a0.add(t * MR * a_rs), (a_rs, a_cs), rows, kc);
                            }
                            tile::<false>(kc, ap.as_ptr(), MR, bp.as_ptr(), ct, ldc, (rows, nr), add, scale);
                        }
                    }
                }
            }
        }
    }
}

/// Packs `mc` rows × `kc` columns of A as tiles of `[kc][MR]`, rows past `mc` zero.
///
/// # Safety
/// `a` must cover the block the sizes and strides describe.
#[target_feature(enable = "avx512f")]
unsafe fn pack_a(ap: &mut [f32], a: *const f32, (a_rs, a_cs): (usize, usize), mc: usize, kc: usize) {
    for (t, dst) in ap.chunks_exact_mut(kc * MR).take(mc.div_ceil(MR)).enumerate() {
        let rows = MR.min(mc - t * MR);
        if a_rs == 1 {
            // Columns of A contiguous (a transposed activation matrix): each step's rows are one
            // masked vector load; lanes past `rows` load as zero and are stored so.
            let (m, all) = (lanes(rows), lanes(MR));
            for kk in 0..kc {
                // SAFETY: rows t·MR..t·MR+rows of column kk lie inside the block (masked lanes are
                // not read); step kk of the tile holds MR values.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(m, a.add(t * MR + kk * a_cs));
                    _mm512_mask_storeu_ps(dst.as_mut_ptr().add(kk * MR), all, v);
                }
            }
            continue;
        }
        for (kk, step) in dst.chunks_exact_mut(MR).enumerate() {
            for (r, x) in step.iter_mut().enumerate() {
                // SAFETY: (t·MR + r, kk) lies inside the block for r < rows.
                *x = if r < rows { unsafe { *a.add((t * MR + r) * a_rs + kk * a_cs) } } else { 0.0 };
            }
        }
    }
}

/// Packs `kc` rows × `nr` columns of B as `[kc][NR]`, columns past `nr` zero.
///
/// # Safety
/// `b` must cover the block the sizes and strides describe.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b(bp: &mut [f32], b: *const f32, (b_rs, b_cs): (usize, usize), kc: usize, nr: usize) {
    if b_rs == 1 {
        // Columns of B contiguous (a transposed weight): 16 × 16 blocks transposed in registers,
        // the rest one by one.
        for j0 in (0..NR).step_by(16) {
            let mut kk0 = 0;
            if j0 + 16 <= nr {
                while kk0 + 16 <= kc {
                    // SAFETY: columns j0..j0+16 and rows kk0..kk0+16 lie inside the block, and
                    // steps kk0..kk0+16 of the panel inside it.
                    unsafe { transpose16(b.add(j0 * b_cs + kk0), b_cs, bp.as_mut_ptr().add(kk0 * NR + j0), NR) };
                    kk0 += 16;
                }
            }
            for kk in kk0..kc {
                for j in j0..j0 + 16 {
                    // SAFETY: (kk, j) lies inside the block for j < nr.
                    bp[kk * NR + j] = if j < nr { unsafe { *b.add(j * b_cs + kk) } } else { 0.0 };
                }
            }
        }
    } else if b_cs == 1 {
        // Rows of B contiguous: two masked vector loads per step, lanes past `nr` zero.
        let (m0, m1) = (lanes(nr), lanes(nr.saturating_sub(16)));
        for kk in 0..kc {
            // SAFETY: columns 0..nr of row kk lie inside the block (masked lanes are not read);
            // step kk of the panel holds NR values.
            unsafe {
                let src = b.add(kk * b_rs);
                let dst = bp.as_mut_ptr().add(kk * NR);
                _mm512_storeu_ps(dst, _mm512_maskz_loadu_ps(m0, src));
                _mm512_storeu_ps(dst.add(16), _mm512_maskz_loadu_ps(m1, src.add(16)));
            }
        }
    } else {
        for (kk, row) in bp.chunks_exact_mut(NR).take(kc).enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                // SAFETY: (kk, j) lies inside the block for j < nr.
                *x = if j < nr { unsafe { *b.add(kk * b_rs + j * b_cs) } } else { 0.0 };
            }
        }
    }
}

/// One `rows × nr` tile (`rows ≤ MR`, `nr ≤ NR`) of C over a block of the inner dimension, from
/// A's `MR` rows (`ROW`: element (r, kk) at `a[r·s + kk]`, else at `a[kk·s + r]`) and packed B
/// (`[kc][NR]`), scaled by `scale`; adds to C when `add`.
///
/// # Safety
/// A must hold the `MR × kc` elements so addressed and packed B `kc` steps; C's `rows × nr` tile
/// (row stride `ldc`) must be valid to read and write.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const ROW: bool>(
    kc: usize,
    a: *const f32,
    s: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    (rows, nr): (usize, usize),
    add: bool,
    scale: f32,
) {
    let mut t0 = [_mm512_setzero_ps(); MR];
    let mut t1 = [_mm512_setzero_ps(); MR];
    for kk in 0..kc {
        // SAFETY: step kk of the packed panels lies inside them.
        let (b0, b1) = unsafe { (_mm512_loadu_ps(b.add(kk * NR)), _mm512_loadu_ps(b.add(kk * NR + 16))) };
        for r in 0..MR {
            let x = _mm512_set1_ps(unsafe {
                if ROW {
                    *a.add(r * s + kk)
                } else {
                    *a.add(kk * s + r)
                }
            });
            t0[r] = _mm512_fmadd_ps(x, b0, t0[r]);
            t1[r] = _mm512_fmadd_ps(x, b1, t1[r]);
        }
    }
    if scale != 1.0 {
        let s = _mm512_set1_ps(scale);
        for r in 0..MR {
            t0[r] = _mm512_mul_ps(t0[r], s);
            t1[r] = _mm512_mul_ps(t1[r], s);
        }
    }
    // SAFETY: the tile lies inside C (the caller's promise).
    unsafe { store_tile(&t0, &t1, c, ldc, rows, nr, add) };
}

/// Writes the first `rows` of an f32 tile's accumulators (`t0`: columns 0..16, `t1`: 16..32) to
/// its `nr` columns of C (row stride `ldc`), adding to what C holds when `add`.
///
/// # Safety
/// C's `rows × nr` tile must be valid to read and write.
#[target_feature(enable = "avx512f")]
unsafe fn store_tile(t0: &[__m512; MR], t1: &[__m512; MR], c: *mut f32, ldc: usize, rows: usize, nr: usize, add: bool) {
    let (m0, m1) = (lanes(nr), lanes(nr.saturating_sub(16)));
    for r in 0..rows {
        // Masked lanes are neither read nor written (nor fault), so the masks confine the
        // accesses to the tile's nr columns of row r.
        let (o0, o1) = (c.wrapping_add(r * ldc), c.wrapping_add(r * ldc + 16));
        // SAFETY: as above; the tile lies inside C.
        unsafe {
            let (mut v0, mut v1) = (t0[r], t1[r]);
            if add {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, o0));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, o1));
            }
            _mm512_mask_storeu_ps(o0, m0, v0);
            _mm512_mask_storeu_ps(o1, m1, v1);
        }
    }
}

/// Whether a product of `(m, n, k)` has nothing to multiply; then, unless it accumulates (`acc`),
/// C's `m × n` values (row stride `ldc`) are zeroed.
///
/// # Safety
/// C's `m × n` values must be valid to write.
unsafe fn nothing_to_multiply<T>((m, n, k): (usize, usize, usize), c: *mut T, ldc: usize, acc: bool) -> bool {
    if m > 0 && n > 0 && k > 0 {
        return false;
    }
    if k == 0 && !acc {
        for i in 0..m {
            // SAFETY: row i of C holds n values.
            unsafe { std::ptr::write_bytes(c.add(i * ldc), 0, n) };
        }
    }
    true
}

/// The mask of the first `n` (at most 16) lanes.
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// Writes the transpose of the 16 × 16 block at `src` (row stride `ls`) to `dst` (row stride `ld`).
///
/// # Safety
/// Both blocks must be valid, `src` to read and `dst` to write.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, ls: usize, dst: *mut f32, ld: usize) {
    // SAFETY: row i of the source block holds 16 values.
    let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * ls)) });
    // Within each 128-bit lane L: pairs, then quads, so that u[4g + s] holds, in lane L, element
    // 4L + s of rows 4g..4g+4.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (lo_ab, hi_ab) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let (lo_cd, hi_cd) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        u[4 * g] = _mm512_shuffle_ps::<0x44>(lo_ab, lo_cd);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xee>(lo_ab, lo_cd);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(hi_ab, hi_cd);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xee>(hi_ab, hi_cd);
    }
    // Then the 128-bit lanes across rows: element e = 4L + s of all 16 rows in one vector.
    for s in 0..4 {
        let t0 = _mm512_shuffle_f32x4::<0x88>(u[s], u[4 + s]);
        let t1 = _mm512_shuffle_f32x4::<0xdd>(u[s], u[4 + s]);
        let t2 = _mm512_shuffle_f32x4::<0x88>(u[8 + s], u[12 + s]);
        let t3 = _mm512_shuffle_f32x4::<0xdd>(u[8 + s], u[12 + s]);
        for (e, v) in [
            (s, _mm512_shuffle_f32x4::<0x88>(t0, t2)),
            (8 + s, _mm512_shuffle_f32x4::<0xdd>(t0, t2)),
            (4 + s, _mm512_shuffle_f32x4::<0x88>(t1, t3)),
            (12 + s, _mm512_shuffle_f32x4::<0xdd>(t1, t3)),
        ] {
            // SAFETY: row e of the destination block holds 16 values.
            unsafe { _mm512_storeu_ps(dst.add(e * ld), v) };
        }
    }
}

/// Rows of an f64 C tile.
const MR64: usize = 12;
/// Columns of an f64 C tile: two 8-lane vectors.
const NR64: usize = 16;
/// Rows of A taken at a time in f64: an `MC64 × KC` block (960 KiB) stays in L2.
const MC64: usize = 40 * MR64;

/// `c[m×n] = (c if acc) + scale · a[m×k] · b[k×n]` in f64, strides in elements as
/// [`super::strided_gemm`]'s: the recovery's Cholesky updates and triangular solves. A is packed
/// in `MR64`-row tiles, B in `NR64`-column panels; `MR64 × NR64` tiles of C in 24 zmm registers.
///
/// # Safety
/// As [`super::strided_gemm`], and [`available`] must hold.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_f64(
    (m, n, k): (usize, usize, usize),
    c: *mut f64,
    ldc: usize,
    acc: bool,
    a: *const f64,
    (a_rs, a_cs): (usize, usize),
    b: *const f64,
    (b_rs, b_cs): (usize, usize),
    scale: f64,
) {
    // SAFETY: C is the caller's promise.
    if unsafe { nothing_to_multiply((m, n, k), c, ldc, acc) } {
        return;
    }
    let kb = super::k_block(k, KC, 8);
    let mut ap = vec![0f64; MC64.min(m.next_multiple_of(MR64)) * kb.min(k)];
    let mut bp = vec![0f64; kb.min(k) * NR64];
    for i0 in (0..m).step_by(MC64) {
        let mc = MC64.min(m - i0);
        for k0 in (0..k).step_by(kb) {
            let kc = kb.min(k - k0);
            // SAFETY: rows i0..i0+mc and columns k0..k0+kc lie inside A.
            unsafe { pack_a64(&mut ap, a.add(i0 * a_rs + k0 * a_cs), (a_rs, a_cs), mc, kc) };
            // Later blocks of the inner dimension add to what the first wrote.
            let add = acc || k0 > 0;
            for j0 in (0..n).step_by(NR64) {
                let nr = NR64.min(n - j0);
                // SAFETY: rows k0..k0+kc and columns j0..j0+nr lie inside B.
                unsafe { pack_b64(&mut bp, b.add(k0 * b_rs + j0 * b_cs), (b_rs, b_cs), kc, nr) };
                for t in 0..mc.div_ceil(MR64) {
                    let rows = MR64.min(mc - t * MR64);
                    let ct = c.wrapping_add((i0 + t * MR64) * ldc + j0);
                    // SAFETY: the tile's rows × nr columns lie inside C; the packed blocks hold kc steps.
                    unsafe { tile64(kc, ap.as_ptr().add(t * kc * MR64), bp.as_ptr(), ct, ldc, rows, nr, add, scale) };
                }
            }
        }
    }
}

/// Packs `mc` rows × `kc` columns of f64 A as tiles of `[kc][MR64]`, rows past `mc` zero.
///
/// # Safety
/// `a` must cover the block the sizes and strides describe.
unsafe fn pack_a64(ap: &mut [f64], a: *const f64, (a_rs, a_cs): (usize, usize), mc: usize, kc: usize) {
    for (t, dst) in ap.chunks_exact_mut(kc * MR64).take(mc.div_ceil(MR64)).enumerate() {
        let rows = MR64.min(mc - t * MR64);
        for r in 0..MR64 {
            if r >= rows {
                (0..kc).for_each(|kk| dst[kk * MR64 + r] = 0.0);
                continue;
            }
            // SAFETY: row t·MR64 + r < mc of the block; columns 0..kc.
            let row = unsafe { a.add((t * MR64 + r) * a_rs) };
            for kk in 0..kc {
                dst[kk * MR64 + r] = unsafe { *row.add(kk * a_cs) };
            }
        }
    }
}

/// Packs `kc` rows × `nr` columns of f64 B as `[kc][NR64]`, columns past `nr` zero.
///
/// # Safety
/// `b` must cover the block the sizes and strides describe.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b64(bp: &mut [f64], b: *const f64, (b_rs, b_cs): (usize, usize), kc: usize, nr: usize) {
    if b_cs == 1 {
        // Rows of B contiguous: two masked vector loads per step, lanes past `nr` zero.
        let (m0, m1) = (lanes8(nr), lanes8(nr.saturating_sub(8)));
        for kk in 0..kc {
            // SAFETY: columns 0..nr of row kk lie inside the block (masked lanes are not read);
            // step kk of the panel holds NR64 values.
            unsafe {
                let src = b.add(kk * b_rs);
                let dst = bp.as_mut_ptr().add(kk * NR64);
                _mm512_storeu_pd(dst, _mm512_maskz_loadu_pd(m0, src));
                _mm512_storeu_pd(dst.add(8), _mm512_maskz_loadu_pd(m1, src.add(8)));
            }
        }
        return;
    }
    for j in 0..NR64 {
        for kk in 0..kc {
            // SAFETY: (kk, j) lies inside the block for j < nr.
            bp[kk * NR64 + j] = if j < nr { unsafe { *b.add(kk * b_rs + j * b_cs) } } else { 0.0 };
        }
    }
}

/// One `rows × nr` tile of f64 C (`rows ≤ MR64`, `nr ≤ NR64`) over a block of the inner
/// dimension from packed A and B: `C = scale·A·B (+ C when add)`.
///
/// # Safety
/// The packed blocks must hold `kc` steps; C's `rows × nr` tile (row stride `ldc`) must be valid to
/// read and write.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile64(
    kc: usize,
    a: *const f64,
    b: *const f64,
    c: *mut f64,
    ldc: usize,
    rows: usize,
    nr: usize,
    add: bool,
    scale: f64,
) {
    let mut t0 = [_mm512_setzero_pd(); MR64];
    let mut t1 = [_mm512_setzero_pd(); MR64];
    for kk in 0..kc {
        // SAFETY: step kk of the packed blocks lies inside them.
        let (b0, b1) = unsafe { (_mm512_loadu_pd(b.add(kk * NR64)), _mm512_loadu_pd(b.add(kk * NR64 + 8))) };
        for r in 0..MR64 {
            let x = _mm512_set1_pd(unsafe { *a.add(kk * MR64 + r) });
            t0[r] = _mm512_fmadd_pd(x, b0, t0[r]);
            t1[r] = _mm512_fmadd_pd(x, b1, t1[r]);
        }
    }
    let (m0, m1) = (lanes8(nr), lanes8(nr.saturating_sub(8)));
    let s = _mm512_set1_pd(scale);
    for r in 0..rows {
        // Masked lanes are neither read nor written, so the masks confine the accesses to the
        // tile's nr columns of row r.
        let (o0, o1) = (c.wrapping_add(r * ldc), c.wrapping_add(r * ldc + 8));
        // SAFETY: as above; the tile lies inside C.
        unsafe {
            let (mut v0, mut v1) = (_mm512_mul_pd(t0[r], s), _mm512_mul_pd(t1[r], s));
            if add {
                v0 = _mm512_add_pd(v0, _mm512_maskz_loadu_pd(m0, o0));
                v1 = _mm512_add_pd(v1, _mm512_maskz_loadu_pd(m1, o1));
            }
            _mm512_mask_storeu_pd(o0, m0, v0);
            _mm512_mask_storeu_pd(o1, m1, v1);
        }
    }
}

/// The mask of the first `n` (at most 8) f64 lanes.
fn lanes8(n: usize) -> __mmask8 {
    ((1u32 << n.min(8)) - 1) as __mmask8
}
