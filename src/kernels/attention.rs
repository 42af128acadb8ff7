//! Causal grouped-query attention on the CPU: scores by the matrix kernel, softmax in f32.

use super::{exp, gemm_bt, gemm_nn, par_for, wide, with_slice, SharedMut};
use crate::error::Result;
use candle_core::{Device, Tensor};

/// Folds `xs` with `f` in 8 interleaved lanes, then the lanes in order: a reduction the compiler
/// can vectorize (a single running value cannot be, as float operations do not reassociate).
fn lanes_fold(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = f(*a, x);
        }
    }
    let head = acc.into_iter().fold(init, &f);
    rest.iter().fold(head, |a, &x| f(a, x))
}

/// Attention geometry for [`attention`].
pub struct AttnShape {
    pub batch: usize,
    pub kv_heads: usize,
    /// Query heads per KV head.
    pub group: usize,
    /// New query positions.
    pub t: usize,
    /// Key positions (cache + new).
    pub s: usize,
    pub head_dim: usize,
    /// Absolute position of the first query.
    pub start: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Sliding window (a query sees itself and window−1 earlier keys).
    pub window: Option<usize>,
}

/// Causal grouped-query attention. `q` is `[b, kv, g·t, hd]`, `k`/`v` `[b, kv, s, hd]`; returns
/// `[b·t, kv·g·hd]`, rows by position and query head `kv_index·g + group_index` in columns, which
/// is what the output projection takes.
/// Scores are scaled, soft-capped, masked and soft-maxed in f32, as transformers' eager attention does.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, sh: &AttnShape) -> Result<Tensor> {
    let AttnShape { batch, kv_heads, group, t, s, head_dim: hd, start, scale, softcap, window } = *sh;
    let rows = group * t;
    // Not zeroed: the tasks write all of it (below).
    let len = batch * kv_heads * rows * hd;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let optr = SharedMut(out.as_mut_ptr());
    const R: usize = 64;
    let row_chunks = t.div_ceil(R);
    let tasks = batch * kv_heads * group * row_chunks;
    with_slice(q, |qs| {
        with_slice(k, |ks| {
            with_slice(v, |vs| {
                par_for(tasks, &|task| {
                    let (bh, rest) = (task / (group * row_chunks), task % (group * row_chunks));
                    let (gi, rc) = (rest / row_chunks, rest % row_chunks);
                    let t0 = rc * R;
                    let nr = R.min(t - t0);
                    // Visible keys for query i (absolute p = start+i): lo(p)..=p, within 0..s.
                    let lo = |p: usize| window.map_or(0, |w| (p + 1).saturating_sub(w));
                    let (c0, c1) = (lo(start + t0), (start + t0 + nr).min(s));
                    let cols = c1 - c0;
                    let row0 = gi * t + t0;
                    let qp = &qs[(bh * rows + row0) * hd..];
                    let kp = &ks[(bh * s + c0) * hd..];
                    let vp = &vs[(bh * s + c0) * hd..];
                    let mut sc = vec![0f32; nr * cols];
                    // SAFETY: sc is nr×cols; q rows row0..row0+nr and k rows c0..c1 lie inside their slices.
                    unsafe { gemm_bt(nr, cols, hd, sc.as_mut_ptr(), cols, qp.as_ptr(), hd, kp.as_ptr(), hd, false) };
                    wide(
                        #[inline(always)]
                        || {
                            for (i, row) in sc.chunks_exact_mut(cols).enumerate() {
                                let p = start + t0 + i;
                                let (a, b) = (lo(p).max(c0) - c0, (p + 1).min(s) - c0);
                                // Each step a plain loop over the visible scores, which the compiler vectorizes.
                                let r = &mut row[a..b];
                                r.iter_mut().for_each(|x| *x *= scale);
                                if let Some(cap) = softcap {
                                    r.iter_mut().for_each(|x| *x = (*x / cap).tanh() * cap);
                                }
                                let m = lanes_fold(r, f32::NEG_INFINITY, f32::max);
                                r.iter_mut().for_each(|x| *x = exp(*x - m));
                                let inv = 1.0 / lanes_fold(r, 0.0, |acc, x| acc + x);
                                r.iter_mut().for_each(|x| *x *= inv);
                                row[..a].iter_mut().for_each(|x| *x = 0.0);
                                row[b..].iter_mut().for_each(|x| *x = 0.0);
                            }
                        },
                    );
                    let o = optr;
                    let (bi, h) = (bh / kv_heads, (bh % kv_heads) * group + gi);
                    let nh = kv_heads * group;
                    // SAFETY: this task alone writes query head h's columns of positions t0..t0+nr.
                    unsafe {
                        gemm_nn(
                            nr,
                            hd,
                            cols,
                            o.0.add(((bi * t + t0) * nh + h) * hd),
                            nh * hd,
                            sc.as_ptr(),
                            cols,
                            vp.as_ptr(),
                            hd,
                        )
                    };
                })
            })
        })
    })???;
    // SAFETY: the tasks wrote every query head's columns of every position (each a product with
    // acc = false over at least the query's own key).
    unsafe { out.set_len(len) };
    Ok(Tensor::from_vec(out, (batch * t, kv_heads * group * hd), &Device::Cpu)?)
}
