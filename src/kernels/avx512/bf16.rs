//! The bf16 matrix products on AVX-512 BF16 (`vdpbf16ps`): the same blocking and `MR × NR` tiles of
//! C as the f32 kernel, over pairs of bf16 values packed in 32-bit lanes, with f32 sums.

use super::*;

/// Whether this CPU has AVX-512 BF16 dot products ([`gemm_bf16_bt`], [`to_bf16_pairs`]).
pub(in crate::kernels) fn bf16_available() -> bool {
    available() && std::arch::is_x86_feature_detected!("avx512bf16")
}

// The pairs kernel packs a tile step of A with one masked 16-lane load.
const _: () = assert!(MR <= 16);

/// Inner-dimension pairs of a bf16 block: a packed B panel (`KCP × NR` pairs, ≤ 32 KiB) stays in L1.
const KCP: usize = 256;

/// [`gemm_bf16_bt`]'s blocks: at most `MC_BT` rows of A (split evenly) by `KCP_BT` pairs, which
/// (≤ 792 KiB) stay in L2 while every panel of w passes over them.
const MC_BT: usize = 86 * MR;
const KCP_BT: usize = 192;

/// Row `x` (`k` f32) rounded to bf16 (to nearest even) as `k.div_ceil(2)` pairs at `out`, the
/// lower half of each pair the even element; a missing last odd element is zero.
///
/// # Safety
/// [`bf16_available`] must hold; `out` must be valid to write `k.div_ceil(2)` values.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(in crate::kernels) unsafe fn to_bf16_pairs(x: &[f32], out: *mut u32) {
    let k = x.len();
    for (i, k0) in (0..k).step_by(32).enumerate() {
        let left = k - k0;
        // SAFETY: the masks keep the loads inside x and the store inside out (pairs i·16.. of
        // k.div_ceil(2)).
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(left), x.as_ptr().add(k0));
            let hi = _mm512_maskz_loadu_ps(lanes(left.saturating_sub(16)), x.as_ptr().add(k0 + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(out.add(i * 16).cast(), lanes(left.div_ceil(2)), v);
        }
    }
}

/// `c[m×n] = a · wᵀ` in bf16 products with f32 sums: `a` as bf16 pairs ([`to_bf16_pairs`], `m`
/// rows of `kp` pairs, row stride `lda`), `w` f32 `[n, k]` (row stride `ldw`, `k ≤ 2·kp`), rounded
/// to bf16 as it is packed; `c` row stride `ldc`.
///
/// # Safety
/// [`bf16_available`] must hold; the pointers must cover the regions the sizes and strides describe.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(in crate::kernels) unsafe fn gemm_bf16_bt(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    a: *const u32,
    lda: usize,
    w: *const f32,
    ldw: usize,
) {
    let kp = k.div_ceil(2);
    // SAFETY: C is the caller's promise.
    if unsafe { nothing_to_multiply((m, n, kp), c, ldc, false) } {
        return;
    }
    // Blocks of A as tall as L2 allows (ideally all of a calibration chunk's rows), so that each
    // panel of w is rounded and packed once per block: w is the operand read from memory.
    let kb = crate::kernels::k_block(kp, KCP_BT, 16);
    let mb = crate::kernels::k_block(m, MC_BT, MR);
    let mut bp = vec![0u32; kb.min(kp).next_multiple_of(16) * NR];
    // The last, partial tile of rows goes through a zero-padded copy.
    let mut ap = vec![0u32; MR * kb.min(kp)];
    for i0 in (0..m).step_by(mb) {
        let mc = mb.min(m - i0);
        let (tiles, full) = (mc.div_ceil(MR), mc / MR);
        for p0 in (0..kp).step_by(kb) {
            let kc = kb.min(kp - p0);
            // SAFETY: rows i0..i0+mc and pairs p0..p0+kc lie inside A.
            let a0 = unsafe { a.add(i0 * lda + p0) };
            for j0 in (0..n).step_by(NR) {
                let nr = NR.min(n - j0);
                // SAFETY: rows j0..j0+nr of w, elements 2·p0..k, lie inside it.
                unsafe { pack_w_bf16(&mut bp, w.add(j0 * ldw), ldw, nr, 2 * p0, (k - 2 * p0).min(2 * kc)) };
                for t in 0..tiles {
                    let rows = MR.min(mc - t * MR);
                    let ct = c.wrapping_add((i0 + t * MR) * ldc + j0);
                    // SAFETY: the tile's rows × nr columns lie inside C; A holds the full tiles' rows,
                    // the padded copy the last one's; the panel holds kc steps.
                    unsafe {
                        if t < full {
                            tile_bf16::<true>(kc, a0.add(t * MR * lda), lda, bp.as_ptr(), ct, ldc, rows, nr, p0 > 0);
                        } else {
                            if j0 == 0 {
                                for r in 0..MR {
                                    let dst = &mut ap[r * kc..(r + 1) * kc];
                                    match r < rows {
                                        true => std::ptr::copy_nonoverlapping(
                                            a0.add((t * MR + r) * lda),
                                            dst.as_mut_ptr(),
                                            kc,
                                        ),
                                        false => dst.fill(0),
                                    }
                                }
                            }
                            tile_bf16::<true>(kc, ap.as_ptr(), kc, bp.as_ptr(), ct, ldc, rows, nr, p0 > 0);
                        }
                    }
                }
            }
        }
    }
}

/// Packs rows `0..nr` of `w` (row stride `ldw`), elements `k0..k0+kn`, rounded to bf16, as a panel
/// of `[kn/2 pairs][NR]`; columns past `nr` and the pairs' missing halves zero.
///
/// # Safety
/// Rows `0..nr`, elements `k0..k0+kn` of `w` must be valid to read; `bp` must hold
/// `kn.div_ceil(2).next_multiple_of(16) · NR` values.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_w_bf16(bp: &mut [u32], w: *const f32, ldw: usize, nr: usize, k0: usize, kn: usize) {
    let mut block = [0u32; 256];
    for j0 in (0..NR).step_by(16) {
        for q0 in (0..kn.div_ceil(2)).step_by(16) {
            let left = kn - 2 * q0;
            for j in 0..16 {
                let row = &mut block[j * 16..(j + 1) * 16];
                if j0 + j >= nr {
                    row.fill(0);
                    continue;
                }
                // SAFETY: the masks keep the loads inside row j0 + j's elements k0..k0+kn.
                unsafe {
                    let src = w.add((j0 + j) * ldw + k0 + 2 * q0);
                    let lo = _mm512_maskz_loadu_ps(lanes(left), src);
                    let hi = _mm512_maskz_loadu_ps(lanes(left.saturating_sub(16)), src.add(16));
                    let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    _mm512_storeu_si512(row.as_mut_ptr().cast(), v);
                }
            }
            // Rows of `block` are columns, its 16 lanes pairs: the transpose puts pair q0 + s of
            // the 16 columns at step q0 + s of the panel (moves only, so the bits pass unchanged).
            // SAFETY: block is 16 × 16; the panel holds steps q0..q0+16 (its length is rounded up).
            unsafe { transpose16(block.as_ptr().cast(), 16, bp.as_mut_ptr().add(q0 * NR + j0).cast(), NR) };
        }
    }
}

/// As [`tile`] for bf16 pairs: `a` element (r, p) at `a[r·s + p]` (`ROW`) or `a[p·s + r]`, the
/// panel `[kc][NR]` pairs.
///
/// # Safety
/// As [`tile`]'s.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16<const ROW: bool>(
    kc: usize,
    a: *const u32,
    s: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    nr: usize,
    add: bool,
) {
    let mut t0 = [_mm512_setzero_ps(); MR];
    let mut t1 = [_mm512_setzero_ps(); MR];
    for p in 0..kc {
        // SAFETY: step p of the packed panel lies inside it; A holds MR rows of kc pairs.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            for r in 0..MR {
                let at = if ROW { r * s + p } else { p * s + r };
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(at) as i32));
                t0[r] = _mm512_dpbf16_ps(t0[r], x, b0);
                t1[r] = _mm512_dpbf16_ps(t1[r], x, b1);
            }
        }
    }
    // SAFETY: the tile lies inside C (the caller's promise).
    unsafe { store_tile(&t0, &t1, c, ldc, rows, nr, add) };
}

/// Rows `2p` and `2p + 1` of `x` (`[t, n]`) rounded to bf16 (to nearest even) and interleaved as
/// pairs: row `p` of `out` (`[t.div_ceil(2), n]`) for `p` in `pairs`; a missing last odd row is zero.
/// What Gram matrices and cross products over tokens take ([`gemm_bf16_pairs`]).
///
/// # Safety
/// [`bf16_available`] must hold; `x` must hold `t·n` values and `out` the rows `pairs`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(in crate::kernels) unsafe fn to_bf16_token_pairs(
    x: &[f32],
    n: usize,
    pairs: std::ops::Range<usize>,
    out: *mut u32,
) {
    let t = x.len() / n.max(1);
    // Round to nearest even on the bit patterns, as the conversion instructions do (finite values).
    let rne = |v: __m512| {
        let b = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb))
    };
    for p in pairs {
        let (lo, hi) = (&x[2 * p * n..(2 * p + 1) * n], (2 * p + 1 < t).then(|| &x[(2 * p + 1) * n..(2 * p + 2) * n]));
        for j0 in (0..n).step_by(16) {
            let m = lanes(n - j0);
            // SAFETY: the mask keeps the loads inside the rows and the store inside row p of out.
            unsafe {
                let l = _mm512_srli_epi32::<16>(rne(_mm512_maskz_loadu_ps(m, lo.as_ptr().add(j0))));
                let h = match hi {
                    Some(hi) => _mm512_and_si512(
                        rne(_mm512_maskz_loadu_ps(m, hi.as_ptr().add(j0))),
                        _mm512_set1_epi32(0xffff_0000u32 as i32),
                    ),
                    None => _mm512_setzero_si512(),
                };
                _mm512_mask_storeu_epi32(out.add(p * n + j0).cast(), m, _mm512_or_si512(l, h));
            }
        }
    }
}

/// `c[m×n] = (c if acc) + aᵀ·b` over `kp` pairs of tokens, in bf16 products with f32 sums: `a`
/// element (r, p) at `a[p·lda + r]` and `b` element (p, j) at `b[p·ldb + j]`, both as
/// [`to_bf16_token_pairs`] writes them; `c` row stride `ldc`.
///
/// # Safety
/// [`bf16_available`] must hold; the pointers must cover the regions the sizes and strides describe.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(in crate::kernels) unsafe fn gemm_bf16_pairs(
    (m, n, kp): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    acc: bool,
    a: *const u32,
    lda: usize,
    b: *const u32,
    ldb: usize,
) {
    // SAFETY: C is the caller's promise.
    if unsafe { nothing_to_multiply((m, n, kp), c, ldc, acc) } {
        return;
    }
    let kb = crate::kernels::k_block(kp, KCP, 16);
    let mut bp = vec![0u32; kb.min(kp) * NR];
    let mut ap = vec![0u32; MC.min(m.next_multiple_of(MR)) * kb.min(kp)];
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        let tiles = mc.div_ceil(MR);
        for p0 in (0..kp).step_by(kb) {
            let kc = kb.min(kp - p0);
            let add = acc || p0 > 0;
            // A's block packed as tiles of `[kc][MR]` (rows past mc zero): each step of a tile is
            // then one cache line, where A's own rows lie a whole row of pairs apart.
            for (t, dst) in ap.chunks_exact_mut(kc * MR).take(tiles).enumerate() {
                let rows = MR.min(mc - t * MR);
                for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                    // SAFETY: pair row p0 + p, columns i0 + t·MR.. (rows of them) lie inside A; the
                    // masks confine the load to them and the store to the step's MR values (MR ≤ 16).
                    unsafe {
                        let v = _mm512_maskz_loadu_epi32(lanes(rows), a.add((p0 + p) * lda + i0 + t * MR).cast());
                        _mm512_mask_storeu_epi32(step.as_mut_ptr().cast(), lanes(MR), v);
                    }
                }
            }
            for j0 in (0..n).step_by(NR) {
                let nr = NR.min(n - j0);
                let (m0, m1) = (lanes(nr), lanes(nr.saturating_sub(16)));
                for p in 0..kc {
                    // SAFETY: columns j0..j0+nr of pair row p0 + p lie inside B (masked lanes are
                    // not read); step p of the panel holds NR values.
                    unsafe {
                        let src = b.add((p0 + p) * ldb + j0);
                        let dst = bp.as_mut_ptr().add(p * NR);
                        _mm512_storeu_si512(dst.cast(), _mm512_maskz_loadu_epi32(m0, src.cast()));
                        _mm512_storeu_si512(dst.add(16).cast(), _mm512_maskz_loadu_epi32(m1, src.add(16).cast()));
                    }
                }
                for t in 0..tiles {
                    let rows = MR.min(mc - t * MR);
                    let ct = c.wrapping_add((i0 + t * MR) * ldc + j0);
                    // SAFETY: the tile lies inside C; the packed blocks hold kc steps.
                    unsafe {
                        let at = ap.as_ptr().add(t * kc * MR);
                        tile_bf16::<false>(kc, at, MR, bp.as_ptr(), ct, ldc, rows, nr, add);
                    }
                }
            }
        }
    }
}
