//! Elementwise and row-wise kernels of the layer forward pass, threaded over blocks of rows.

use super::{par_for, threads, wide, with_slice, SharedMut};
use crate::error::Result;
use candle_core::{Device, Tensor};
use std::mem::MaybeUninit;

/// Work (elements) below which an elementwise kernel stays on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// A new buffer of `len` values, filled by `f(first_row, block)` over blocks of its rows (each `n`
/// long; split over threads when the work is large enough to pay for them). The buffer is never
/// zeroed first: `f` must write every value of its block. Allocated here, but first touched by the
/// tasks, so its page faults are taken on every thread, not all on the caller's.
pub(crate) fn par_fill(len: usize, n: usize, f: &(dyn Fn(usize, &mut [MaybeUninit<f32>]) + Sync)) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let n = n.max(1);
    let spare = &mut out.spare_capacity_mut()[..len];
    if len < PAR_MIN || threads() <= 1 {
        f(0, spare);
    } else {
        // The last row may be short (elementwise kernels use rows as plain blocks).
        let rows = len.div_ceil(n);
        let per = rows.div_ceil(threads() * 4).max(1);
        let optr = SharedMut(spare.as_mut_ptr().cast());
        par_for(rows.div_ceil(per), &|i| {
            let p = optr;
            let (e0, e1) = (i * per * n, ((i + 1) * per * n).min(len));
            // SAFETY: task i alone writes elements e0..e1, which lie inside the buffer's capacity.
            f(i * per, unsafe { std::slice::from_raw_parts_mut(p.0.add(e0).cast(), e1 - e0) });
        });
    }
    // SAFETY: the blocks cover all `len` values, and `f` wrote every value of each (its contract).
    unsafe { out.set_len(len) };
    out
}

/// Each row of `x` (last dimension `n`) scaled to unit root-mean-square and by `w` (`[n]`), as
/// transformers' RMSNorm computes it in f32 (Gemma passes `1 + w`).
pub fn rms_norm(x: &Tensor, w: &[f32], eps: f32) -> Result<Tensor> {
    let n = w.len();
    if n == 0 || x.dims().last() != Some(&n) {
        let msg = format!("rms_norm: input of shape {:?} against a weight of {n}", x.dims());
        return Err(candle_core::Error::Msg(msg).into());
    }
    let out = with_slice(x, |xs| {
        par_fill(xs.len(), n, &|r0, o| {
            wide(
                #[inline(always)]
                || {
                    for (i, row) in o.chunks_exact_mut(n).enumerate() {
                        let xr = &xs[(r0 + i) * n..(r0 + i + 1) * n];
                        let var = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
                        let d = (var + eps).sqrt();
                        row.iter_mut().zip(xr).zip(w).for_each(|((o, &v), &g)| _ = o.write(v / d * g));
                    }
                },
            )
        })
    })?;
    Ok(Tensor::from_vec(out, x.shape(), &Device::Cpu)?)
}

/// Rotary tables for [`to_heads`]: `cos`, `sin` `[t, head_dim]`, positions in rows.
pub struct Rope<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// A projection's output `y` `[b·t, n·hd]` as heads `[b, n, t, hd]`, each head's row optionally
/// RMS-normed (`norm`: weight `[hd]` and eps, as Qwen3's and Gemma 3's q/k norms) and then rotated
/// (`x·cos + rotate_half(x)·sin`, as transformers applies RoPE).
pub fn to_heads(
    y: &Tensor,
    (b, t, n, hd): (usize, usize, usize, usize),
    norm: Option<(&[f32], f32)>,
    rope: Option<&Rope>,
) -> Result<Tensor> {
    let bad = |what: String| -> Result<Tensor> { Err(candle_core::Error::Msg(format!("to_heads: {what}")).into()) };
    if hd == 0 || y.elem_count() != b * t * n * hd {
        return bad(format!("{} values are not {b}×{t}×{n} heads of {hd}", y.elem_count()));
    }
    if let Some((w, _)) = norm.filter(|(w, _)| w.len() != hd) {
        return bad(format!("a norm weight of {} for heads of {hd}", w.len()));
    }
    if let Some(r) = rope.filter(|r| hd % 2 != 0 || r.cos.len() < t * hd || r.sin.len() < t * hd) {
        return bad(format!("rotary tables of {}/{} values for {t} positions of {hd}", r.cos.len(), r.sin.len()));
    }
    let half = hd / 2;
    let out = with_slice(y, |ys| {
        // One task per block of `[t, hd]` rows of a head: output row r = ((bi·n + h)·t + p).
        par_fill(b * t * n * hd, hd, &|r0, o| {
            wide(
                #[inline(always)]
                || {
                    let mut tmp = vec![0f32; hd];
                    for (i, row) in o.chunks_exact_mut(hd).enumerate() {
                        let r = r0 + i;
                        let (bh, p) = (r / t, r % t);
                        let (bi, h) = (bh / n, bh % n);
                        let src = &ys[((bi * t + p) * n + h) * hd..][..hd];
                        tmp.copy_from_slice(src);
                        if let Some((w, eps)) = norm {
                            let var = tmp.iter().map(|v| v * v).sum::<f32>() / hd as f32;
                            let d = (var + eps).sqrt();
                            tmp.iter_mut().zip(w).for_each(|(v, &g)| *v = *v / d * g);
                        }
                        match rope {
                            Some(Rope { cos, sin }) => {
                                let (c, s) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
                                for j in 0..half {
                                    row[j].write(tmp[j] * c[j] + -tmp[j + half] * s[j]);
                                    row[j + half].write(tmp[j + half] * c[j + half] + tmp[j] * s[j + half]);
                                }
                            }
                            None => row.iter_mut().zip(&tmp).for_each(|(o, &v)| _ = o.write(v)),
                        }
                    }
                },
            )
        })
    })?;
    Ok(Tensor::from_vec(out, (b, n, t, hd), &Device::Cpu)?)
}

/// `silu(gate) · up`, elementwise: the GLU of Llama-family MLPs in one pass.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    zip_map(gate, up, |g, u| g / (1.0 + exp(-g)) * u)
}

/// `eˣ` in f32 without a library call, so that loops over it vectorize (natively and on wasm
/// SIMD128): `2ⁿ · p(r)` with `n = round(x·log₂e)`, `r = x − n·ln 2` (split in two parts) and
/// Cephes' degree-7 polynomial; within 2 ulp of `f32::exp` on `[−87, 88]`, clamped outside it.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Adding 1.5·2²³ rounds to an integer in the low mantissa bits (no float→int conversion,
    // which baseline x86-64 cannot vectorize).
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let p = p * r * r + r + 1.0;
    p * f32::from_bits(t.to_bits().wrapping_sub(0x4b40_0000 - 127) << 23)
}

/// `a + b`, elementwise (residual connections).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    zip_map(a, b, |x, y| x + y)
}

/// `a − b`, elementwise.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    zip_map(a, b, |x, y| x - y)
}

/// `a + s·b`, elementwise.
pub fn add_scaled(a: &Tensor, b: &Tensor, s: f32) -> Result<Tensor> {
    zip_map(a, b, |x, y| x + s * y)
}

/// `a + s·b − c`, elementwise, in one pass.
pub fn add_scaled_sub(a: &Tensor, b: &Tensor, s: f32, c: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() || a.shape() != c.shape() {
        let (a, b, c) = (a.shape(), b.shape(), c.shape());
        return Err(candle_core::Error::Msg(format!("elementwise: shapes {a:?}, {b:?} and {c:?}")).into());
    }
    const N: usize = 4096;
    let out = with_slice(a, |xs| {
        with_slice(b, |ys| {
            with_slice(c, |zs| {
                par_fill(xs.len(), N, &|r0, o| {
                    let (x, y, z) = (&xs[r0 * N..], &ys[r0 * N..], &zs[r0 * N..]);
                    wide(
                        #[inline(always)]
                        || o.iter_mut().zip(x).zip(y).zip(z).for_each(|(((o, &p), &q), &r)| _ = o.write(p + s * q - r)),
                    )
                })
            })
        })
    })???;
    Ok(Tensor::from_vec(out, a.shape(), &Device::Cpu)?)
}

/// `f(a, b)` elementwise; generic, so that `f` is inlined into the (vectorized) loop.
fn zip_map(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(candle_core::Error::Msg(format!("elementwise: shapes {:?} and {:?}", a.shape(), b.shape())).into());
    }
    const N: usize = 4096;
    let out = with_slice(a, |xs| {
        with_slice(b, |ys| {
            par_fill(xs.len(), N, &|r0, o| {
                let (x, y) = (&xs[r0 * N..], &ys[r0 * N..]);
                wide(
                    #[inline(always)]
                    || o.iter_mut().zip(x).zip(y).for_each(|((o, &p), &q)| _ = o.write(f(p, q))),
                );
            })
        })
    })??;
    Ok(Tensor::from_vec(out, a.shape(), &Device::Cpu)?)
}

/// Rows `idx` of `t` (any rank, any dtype): slicing a layer's gate/up rows or a head's q/k/v rows.
pub fn select_rows(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let i: Vec<u32> = idx.iter().map(|&x| x as u32).collect();
    Ok(t.index_select(&Tensor::from_vec(i, idx.len(), &Device::Cpu)?, 0)?)
}

/// Columns `idx` of the matrix `t` (`[rows, n]`), as `[rows, idx.len()]`, contiguous. f32 runs in
/// podar's kernel (rows over threads), other dtypes through candle.
pub fn select_cols(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    if t.dtype() != candle_core::DType::F32 || t.rank() != 2 {
        let i: Vec<u32> = idx.iter().map(|&x| x as u32).collect();
        return Ok(t.index_select(&Tensor::from_vec(i, idx.len(), &Device::Cpu)?, 1)?.contiguous()?);
    }
    let (rows, n) = t.dims2()?;
    if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
        return Err(candle_core::Error::Msg(format!("select_cols: column {bad} of {n}")).into());
    }
    let k = idx.len();
    let out = with_slice(t, |xs| {
        par_fill(rows * k, k, &|r0, o| {
            wide(
                #[inline(always)]
                || {
                    for (i, row) in o.chunks_exact_mut(k.max(1)).enumerate() {
                        let src = &xs[(r0 + i) * n..(r0 + i + 1) * n];
                        row.iter_mut().zip(idx).for_each(|(o, &j)| _ = o.write(src[j]));
                    }
                },
            )
        })
    })?;
    Ok(Tensor::from_vec(out, (rows, k), &Device::Cpu)?)
}
