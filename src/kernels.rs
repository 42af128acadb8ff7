//! CPU kernels on plain f32 slices: the matmuls and the attention that evaluation and calibration
//! spend their time in. gemm's single-threaded microkernels, split over our own worker threads
//! (candle's thread pools fight each other on two cores).

use crate::error::Result;
use candle_core::{Device, Storage, Tensor};
use gemm::{gemm, Parallelism};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Another engine that may take over the largest matrix products: the page's WebGPU worker. It
/// answers `None` when it cannot (no device, a failure), and the CPU kernels run instead.
pub trait Offload {
    /// `x · wᵀ` with `x` `[rows, k]` and `w` `[n, k]`, as `[rows, n]`.
    fn linear(&self, x: &[f32], rows: usize, k: usize, w: &Tensor, n: usize) -> Option<Vec<f32>>;
    /// The Gram matrix `xᵀx` (`[n, n]`) of `x` `[t, n]`.
    fn gram(&self, x: &[f32], t: usize, n: usize) -> Option<Vec<f32>>;
}

thread_local! {
    static OFFLOAD: std::cell::RefCell<Option<std::rc::Rc<dyn Offload>>> = const { std::cell::RefCell::new(None) };
}

/// Installs (or with `None` removes) the engine that takes over large products on this thread.
pub fn set_offload(o: Option<std::rc::Rc<dyn Offload>>) {
    OFFLOAD.with(|slot| *slot.borrow_mut() = o);
}

/// Products smaller than this many multiply-adds stay on the CPU (a GPU round trip costs more).
const OFFLOAD_MIN_MACS: usize = 1 << 22;

fn offload() -> Option<std::rc::Rc<dyn Offload>> {
    OFFLOAD.with(|slot| slot.borrow().clone())
}

/// Worker threads for kernels: `PODAR_THREADS`, else the machine's parallelism (1 on wasm32).
pub fn threads() -> usize {
    #[cfg(all(target_arch = "wasm32", feature = "threads"))]
    {
        rayon::current_num_threads()
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        1
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var("PODAR_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

/// Runs `f(i)` for `i in 0..n`, spread over `threads()` workers.
pub fn par_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let t = threads().min(n);
    if t <= 1 {
        (0..n).for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    };
    // Natively: rayon's pool of `threads()` workers, started once. In the page: the rayon pool
    // of Web Workers that wasm-bindgen-rayon starts (the calling worker waits, which a worker,
    // unlike the page's main thread, may do).
    #[cfg(not(target_arch = "wasm32"))]
    {
        static POOL: std::sync::Once = std::sync::Once::new();
        // An error means a pool exists already (another library built it), which serves as well.
        POOL.call_once(|| drop(rayon::ThreadPoolBuilder::new().num_threads(threads()).build_global()));
    }
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    rayon::scope(|s| {
        for _ in 1..t {
            s.spawn(|_| work());
        }
        work();
    });
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    work();
}

/// A raw pointer that tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint region (distinct columns or rows), and the scope joins all
// tasks before the buffer is read or freed.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Single-threaded `c[m×n] (+)= a[m×k] · b[k×n]` with explicit strides: `c` row-major with row
/// stride `ldc`; `a` and `b` given as (row stride, column stride) pairs.
///
/// # Safety
/// The pointers must cover the regions the sizes and strides describe.
#[allow(clippy::too_many_arguments)]
unsafe fn strided_gemm(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    acc: bool,
    a: *const f32,
    a_strides: (usize, usize),
    b: *const f32,
    b_strides: (usize, usize),
) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd128::gemm((m, n, k), c, ldc, acc, a, a_strides, b, b_strides);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let (a_rs, a_cs) = (a_strides.0 as isize, a_strides.1 as isize);
        let (b_rs, b_cs) = (b_strides.0 as isize, b_strides.1 as isize);
        scaled_gemm((m, n, k), c, ldc as isize, acc, a, (a_rs, a_cs), b, (b_rs, b_cs), 1.0);
    }
}

/// The page's f32 matrix product on WebAssembly SIMD128: B packed into panels of `NR` columns,
/// `MR × NR` tiles of C kept in 8 vector accumulators (V8 spills beyond that). In this machine's
/// Chromium a single thread reaches ≈ 37 GFLOP/s (gemm's SIMD128 kernels: ≈ 30), and ≈ 46 with
/// relaxed SIMD's fused multiply-add.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use core::arch::wasm32::*;

    const MR: usize = 4;
    const NV: usize = 2;
    const NR: usize = 4 * NV;

    /// As [`super::strided_gemm`].
    ///
    /// # Safety
    /// As [`super::strided_gemm`].
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
    ) {
        let mut panel = vec![0f32; k * NR];
        for j0 in (0..n).step_by(NR) {
            let nr = NR.min(n - j0);
            // Panel [k][NR] of B's columns j0..j0+nr, zero beyond them.
            for kk in 0..k {
                let row = &mut panel[kk * NR..(kk + 1) * NR];
                for (j, x) in row.iter_mut().enumerate() {
                    // SAFETY: (kk, j0 + j) lies inside B for j < nr.
                    *x = if j < nr { unsafe { *b.add(kk * b_rs + (j0 + j) * b_cs) } } else { 0.0 };
                }
            }
            for i0 in (0..m).step_by(MR) {
                // SAFETY: rows i0.. of A and the tile (i0, j0) of C lie inside them.
                unsafe {
                    tile(MR.min(m - i0), nr, k, a.add(i0 * a_rs), (a_rs, a_cs), &panel, c.add(i0 * ldc + j0), ldc, acc)
                };
            }
        }
    }

    /// `a·b + c`: one fused multiply-add where the build has relaxed SIMD (the page loads that
    /// build only where the browser validates it), else a multiply and an add.
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

    /// One `mr × nr` tile (`mr ≤ MR`, `nr ≤ NR`) of C over the whole inner dimension.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        mr: usize,
        nr: usize,
        k: usize,
        a: *const f32,
        (a_rs, a_cs): (usize, usize),
        panel: &[f32],
        c: *mut f32,
        ldc: usize,
        acc: bool,
    ) {
        let z = f32x4_splat(0.0);
        let mut t = [[z; NV]; MR];
        let p = panel.as_ptr();
        // The full tile as its own loop, so that the row count is a constant the compiler unrolls.
        macro_rules! sweep {
            ($rows:expr) => {
                for kk in 0..k {
                    let mut bv = [z; NV];
                    for (v, b) in bv.iter_mut().enumerate() {
                        // SAFETY: the panel holds k·NR values.
                        *b = unsafe { v128_load(p.add(kk * NR + 4 * v) as *const v128) };
                    }
                    for r in 0..$rows {
                        // SAFETY: (r, kk) lies inside A.
                        let x = f32x4_splat(unsafe { *a.add(r * a_rs + kk * a_cs) });
                        for v in 0..NV {
                            t[r][v] = madd(x, bv[v], t[r][v]);
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
            let mut out = [0f32; NR];
            for (v, x) in tr.iter().enumerate() {
                // SAFETY: `out` holds NR = 4·NV values.
                unsafe { v128_store(out.as_mut_ptr().add(4 * v) as *mut v128, *x) };
            }
            for (j, &x) in out.iter().enumerate().take(nr) {
                // SAFETY: (r, j) lies inside the tile of C.
                unsafe {
                    let o = c.add(r * ldc + j);
                    *o = if acc { *o + x } else { x };
                }
            }
        }
    }
}

/// Single-threaded `c[m×n] = (c if acc) + scale · a[m×k] · b[k×n]` for f32 or f64, all strides
/// in elements: `c` row-major with row stride `ldc`, `a` and `b` as (row stride, column stride).
///
/// # Safety
/// The pointers must cover the regions the sizes and strides describe, and `c` must not overlap
/// `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn scaled_gemm<T: 'static + Copy + From<f32>>(
    (m, n, k): (usize, usize, usize),
    c: *mut T,
    ldc: isize,
    acc: bool,
    a: *const T,
    (a_rs, a_cs): (isize, isize),
    b: *const T,
    (b_rs, b_cs): (isize, isize),
    scale: T,
) {
    gemm(
        m,
        n,
        k,
        c,
        1,
        ldc,
        acc,
        a,
        a_cs,
        a_rs,
        b,
        b_cs,
        b_rs,
        T::from(1.0),
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// `c[m×n] (row stride ldc) (+)= a[m×k] (row stride lda) · bᵀ` with `b` n×k (row stride ldb).
///
/// # Safety
/// As for [`strided_gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_bt(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    acc: bool,
) {
    strided_gemm((m, n, k), c, ldc, acc, a, (lda, 1), b, (1, ldb));
}

/// `c[m×n] = a[m×k] · b[k×n]`, all row-major with the given row strides.
///
/// # Safety
/// As for [`strided_gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_nn(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
) {
    strided_gemm((m, n, k), c, ldc, false, a, (lda, 1), b, (ldb, 1));
}

/// A buffer of `len` values for a product to write, left uninitialised: zeroing it first would cost
/// a pass over memory that the product overwrites anyway.
///
/// # Safety
/// When `fill` returns `Ok`, it must have written every one of the `len` elements, through the raw
/// pointer only.
unsafe fn written_by(len: usize, fill: impl FnOnce(*mut f32) -> Result<()>) -> Result<Vec<f32>> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    fill(v.as_mut_ptr())?;
    // SAFETY: `fill` initialised all `len` elements (the caller's promise).
    unsafe { v.set_len(len) };
    Ok(v)
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
pub fn with_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("podar kernels run on the CPU".into()).into());
    };
    let data = cpu.as_slice::<f32>()?;
    let n = t.elem_count();
    Ok(f(&data[layout.start_offset()..layout.start_offset() + n]))
}

/// `x[rows×in] · wᵀ (+ b)` with `w` `[out, in]`: the linear layer, split over output columns.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let (n, k2) = w.dims2()?;
    if k != k2 {
        return Err(candle_core::Error::Msg(format!("linear: input has {k} features, weight expects {k2}")).into());
    }
    let big = rows >= 16 && rows * n * k >= OFFLOAD_MIN_MACS;
    if let Some(o) = offload().filter(|_| big) {
        if let Some(v) = with_slice(x, |xs| o.linear(xs, rows, k, w, n))?.filter(|v| v.len() == rows * n) {
            return finish_linear(v, rows, n, bias);
        }
    }
    // SAFETY: the tasks together write every column of every row (acc = false: nothing is read).
    let out = unsafe {
        written_by(rows * n, |optr| {
            let optr = SharedMut(optr);
            with_slice(x, |xs| {
                with_slice(w, |ws| {
                    // Chunks of output columns, a few per thread so uneven cores still balance.
                    let chunk = n.div_ceil(threads() * 4).max(32).next_multiple_of(16).min(n.max(1));
                    let tasks = n.div_ceil(chunk);
                    par_for(tasks, &|i| {
                        let j0 = i * chunk;
                        let cols = chunk.min(n - j0);
                        let o = optr;
                        // Task i writes only columns j0..j0+cols of `out`; slices cover rows×k and n×k.
                        gemm_bt(rows, cols, k, o.0.add(j0), n, xs.as_ptr(), k, ws.as_ptr().add(j0 * k), k, false);
                    });
                })
            })?
        })?
    };
    finish_linear(out, rows, n, bias)
}

fn finish_linear(mut out: Vec<f32>, rows: usize, n: usize, bias: Option<&Tensor>) -> Result<Tensor> {
    if let Some(b) = bias {
        let bv = b.to_vec1::<f32>()?;
        for row in out.chunks_exact_mut(n) {
            row.iter_mut().zip(&bv).for_each(|(o, b)| *o += b);
        }
    }
    Ok(Tensor::from_vec(out, (rows, n), &Device::Cpu)?)
}

/// Work (elements) below which an elementwise kernel stays on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// Runs `f(first_row, rows)` over blocks of the rows (each `n` long) of `out`, split over threads
/// when the work is large enough to pay for them.
fn par_rows(out: &mut [f32], n: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let (len, n) = (out.len(), n.max(1));
    if len < PAR_MIN || threads() <= 1 {
        f(0, out);
        return;
    }
    // The last row may be short (elementwise kernels use rows as plain blocks).
    let rows = len.div_ceil(n);
    let per = rows.div_ceil(threads() * 4).max(1);
    let optr = SharedMut(out.as_mut_ptr());
    par_for(rows.div_ceil(per), &|i| {
        let p = optr;
        let (e0, e1) = (i * per * n, ((i + 1) * per * n).min(len));
        // SAFETY: task i alone writes elements e0..e1, which lie inside `out`.
        f(i * per, unsafe { std::slice::from_raw_parts_mut(p.0.add(e0), e1 - e0) });
    });
}

/// Each row of `x` (last dimension `n`) scaled to unit root-mean-square and by `w` (`[n]`), as
/// transformers' RMSNorm computes it in f32 (Gemma passes `1 + w`).
pub fn rms_norm(x: &Tensor, w: &[f32], eps: f32) -> Result<Tensor> {
    let n = w.len();
    let mut out = vec![0f32; x.elem_count()];
    with_slice(x, |xs| {
        par_rows(&mut out, n, &|r0, o| {
            for (i, row) in o.chunks_exact_mut(n).enumerate() {
                let xr = &xs[(r0 + i) * n..(r0 + i + 1) * n];
                let var = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
                let d = (var + eps).sqrt();
                row.iter_mut().zip(xr).zip(w).for_each(|((o, &v), &g)| *o = v / d * g);
            }
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
    let mut out = vec![0f32; b * t * n * hd];
    let half = hd / 2;
    with_slice(y, |ys| {
        // One task per block of `[t, hd]` rows of a head: output row r = ((bi·n + h)·t + p).
        par_rows(&mut out, hd, &|r0, o| {
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
                            row[j] = tmp[j] * c[j] + -tmp[j + half] * s[j];
                            row[j + half] = tmp[j + half] * c[j + half] + tmp[j] * s[j + half];
                        }
                    }
                    None => row.copy_from_slice(&tmp),
                }
            }
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

/// `f(a, b)` elementwise; generic, so that `f` is inlined into the (vectorized) loop.
fn zip_map(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(candle_core::Error::Msg(format!("elementwise: shapes {:?} and {:?}", a.shape(), b.shape())).into());
    }
    let mut out = vec![0f32; a.elem_count()];
    const N: usize = 4096;
    with_slice(a, |xs| {
        with_slice(b, |ys| {
            par_rows(&mut out, N.min(xs.len()).max(1), &|r0, o| {
                let (x, y) = (&xs[r0 * N..], &ys[r0 * N..]);
                o.iter_mut().zip(x).zip(y).for_each(|((o, &p), &q)| *o = f(p, q));
            })
        })
    })??;
    Ok(Tensor::from_vec(out, a.shape(), &Device::Cpu)?)
}

/// Columns `idx` of the f32 matrix `t` (`[rows, n]`), as `[rows, idx.len()]`; rows over threads.
pub fn select_cols(t: &Tensor, idx: &[usize]) -> Result<Tensor> {
    let (rows, n) = t.dims2()?;
    if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
        return Err(candle_core::Error::Msg(format!("select_cols: column {bad} of {n}")).into());
    }
    let k = idx.len();
    let mut out = vec![0f32; rows * k];
    if k > 0 {
        with_slice(t, |xs| {
            par_rows(&mut out, k, &|r0, o| {
                for (i, row) in o.chunks_exact_mut(k).enumerate() {
                    let src = &xs[(r0 + i) * n..(r0 + i + 1) * n];
                    row.iter_mut().zip(idx).for_each(|(o, &j)| *o = src[j]);
                }
            })
        })?;
    }
    Ok(Tensor::from_vec(out, (rows, k), &Device::Cpu)?)
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
    let mut out = vec![0f32; batch * kv_heads * rows * hd];
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
                    for (i, row) in sc.chunks_exact_mut(cols).enumerate() {
                        let p = start + t0 + i;
                        let (a, b) = (lo(p).max(c0) - c0, (p + 1).min(s) - c0);
                        let mut m = f32::NEG_INFINITY;
                        for x in &mut row[a..b] {
                            *x *= scale;
                            if let Some(cap) = softcap {
                                *x = (*x / cap).tanh() * cap;
                            }
                            m = m.max(*x);
                        }
                        let mut sum = 0f32;
                        for x in &mut row[a..b] {
                            *x = exp(*x - m);
                            sum += *x;
                        }
                        let inv = 1.0 / sum;
                        row[a..b].iter_mut().for_each(|x| *x *= inv);
                        row[..a].iter_mut().for_each(|x| *x = 0.0);
                        row[b..].iter_mut().for_each(|x| *x = 0.0);
                    }
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
    Ok(Tensor::from_vec(out, (batch * t, kv_heads * group * hd), &Device::Cpu)?)
}

/// Gram matrix `xᵀx` (`[n, n]`) of `x` (`[tokens, n]`): only the blocks on and above the diagonal
/// are multiplied, then mirrored, halving the work of a plain matmul.
pub fn gram(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(1)?;
    let mut acc = Accum::default();
    acc.add_gram(x)?;
    acc.into_tensor((n, n))
}

/// `aᵀb` (`[n, m]`) of `a` (`[tokens, n]`) and `b` (`[tokens, m]`).
pub fn cross(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, m) = (a.dim(1)?, b.dim(1)?);
    let mut acc = Accum::default();
    acc.add_cross(a, b)?;
    acc.into_tensor((n, m))
}

/// A sum of Gram matrices or of cross products over chunks of tokens, accumulated in place (one
/// buffer however many chunks). A Gram sum holds only its upper triangle until [`Accum::into_tensor`]
/// mirrors it.
#[derive(Debug, Default)]
pub struct Accum {
    data: Vec<f32>,
    gram: bool,
}

impl Accum {
    fn buffer(&mut self, len: usize) -> Result<*mut f32> {
        if self.data.is_empty() {
            self.data = vec![0f32; len];
        } else if self.data.len() != len {
            return Err(candle_core::Error::Msg(format!("accumulating {len} values into {}", self.data.len())).into());
        }
        Ok(self.data.as_mut_ptr())
    }

    /// Adds `xᵀx` of `x` (`[tokens, n]`).
    pub fn add_gram(&mut self, x: &Tensor) -> Result<()> {
        let (t, n) = x.dims2()?;
        self.gram = true;
        if let Some(o) = offload().filter(|_| t * n * n >= OFFLOAD_MIN_MACS) {
            if let Some(v) = with_slice(x, |xs| o.gram(xs, t, n))?.filter(|v| v.len() == n * n) {
                self.buffer(n * n)?;
                self.data.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
                return Ok(());
            }
        }
        let optr = SharedMut(self.buffer(n * n)?);
        const B: usize = 256;
        let nb = n.div_ceil(B);
        let pairs: Vec<(usize, usize)> = (0..nb).flat_map(|i| (i..nb).map(move |j| (i, j))).collect();
        with_slice(x, |xs| {
            par_for(pairs.len(), &|p| {
                let (bi, bj) = pairs[p];
                let (i0, j0) = (bi * B, bj * B);
                let (ni, nj) = (B.min(n - i0), B.min(n - j0));
                let o = optr;
                // SAFETY: block (bi, bj) of the buffer is written by this task alone; xs holds t×n
                // values. xᵀ block: element (i, τ) at x[τ·n + i]; x block: element (τ, j) at x[τ·n + j].
                unsafe {
                    strided_gemm(
                        (ni, nj, t),
                        o.0.add(i0 * n + j0),
                        n,
                        true,
                        xs.as_ptr().add(i0),
                        (1, n),
                        xs.as_ptr().add(j0),
                        (n, 1),
                    )
                };
            })
        })
    }

    /// Adds `aᵀb` of `a` (`[tokens, n]`) and `b` (`[tokens, m]`), row blocks of the result over threads.
    pub fn add_cross(&mut self, a: &Tensor, b: &Tensor) -> Result<()> {
        let (t, n) = a.dims2()?;
        let (t2, m) = b.dims2()?;
        if t != t2 {
            return Err(candle_core::Error::Msg(format!("cross: {t} rows against {t2}")).into());
        }
        let optr = SharedMut(self.buffer(n * m)?);
        const B: usize = 64;
        with_slice(a, |xs| {
            with_slice(b, |ys| {
                par_for(n.div_ceil(B), &|bi| {
                    let i0 = bi * B;
                    let o = optr;
                    // SAFETY: rows i0..i0+B of the buffer belong to this task; aᵀ element (i, τ) is at a[τ·n + i].
                    unsafe {
                        strided_gemm(
                            (B.min(n - i0), m, t),
                            o.0.add(i0 * m),
                            m,
                            true,
                            xs.as_ptr().add(i0),
                            (1, n),
                            ys.as_ptr(),
                            (m, 1),
                        )
                    };
                })
            })
        })?
    }

    /// Whether anything was added.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The sum as a `shape` tensor (a Gram sum mirrored into its lower triangle first).
    pub fn into_tensor(mut self, shape: (usize, usize)) -> Result<Tensor> {
        let n = shape.0;
        if self.gram {
            // The lower triangle from the upper one, row blocks over threads.
            let optr = SharedMut(self.data.as_mut_ptr());
            const B: usize = 256;
            par_for(n.div_ceil(B), &|bi| {
                let o = optr;
                for i in bi * B..(bi * B + B).min(n) {
                    for j in 0..i {
                        // SAFETY: (i, j) with j < i is written by the task of row i only; (j, i)
                        // lies in the upper triangle, which no task writes.
                        unsafe { *o.0.add(i * n + j) = *o.0.add(j * n + i) };
                    }
                }
            });
        }
        Ok(Tensor::from_vec(self.data, shape, &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gram_equals_matmul() {
        let v: Vec<f32> = (0..300 * 270).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let x = Tensor::from_vec(v, (300, 270), &Device::Cpu).unwrap();
        let g = gram(&x).unwrap().to_vec2::<f32>().unwrap();
        let r = x.t().unwrap().matmul(&x).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in g.iter().flatten().zip(r.iter().flatten()) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    fn wavy(n: usize, m: usize, s: usize) -> Tensor {
        let v: Vec<f32> = (0..n * m).map(|i| ((i * s) % 1000) as f32 / 1000.0 - 0.5).collect();
        Tensor::from_vec(v, (n, m), &Device::Cpu).unwrap()
    }

    #[test]
    fn elementwise_kernels_cover_every_element() {
        // Large enough to split over threads, and not a whole number of the kernels' blocks.
        for (n, m) in [(7, 5), (131, 257), (1000, 61)] {
            let (a, b) = (wavy(n, m, 7919), wavy(n, m, 104729));
            let want = (&a + &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(add(&a, &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
            let want = (&a - &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(sub(&a, &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
            let want = (a.silu().unwrap() * &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = silu_mul(&a, &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() <= 1e-6), "silu_mul");
            let idx: Vec<usize> = (0..m).filter(|j| j % 3 != 1).rev().collect();
            let ids =
                Tensor::from_vec(idx.iter().map(|&j| j as u32).collect::<Vec<_>>(), idx.len(), &Device::Cpu).unwrap();
            let want = a.index_select(&ids, 1).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(select_cols(&a, &idx).unwrap().to_vec2::<f32>().unwrap(), want);
            let w: Vec<f32> = (0..m).map(|j| 0.5 + j as f32 / m as f32).collect();
            let got = rms_norm(&a, &w, 1e-5).unwrap().to_vec2::<f32>().unwrap();
            for (row, src) in got.iter().zip(a.to_vec2::<f32>().unwrap()) {
                let rms = (src.iter().map(|x| (x * x) as f64).sum::<f64>() / m as f64 + 1e-5).sqrt();
                for j in 0..m {
                    assert!((row[j] as f64 - src[j] as f64 / rms * w[j] as f64).abs() < 1e-5);
                }
            }
        }
        assert!(select_cols(&wavy(3, 4, 1), &[4]).is_err());
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f32;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1.3e-4;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert!(exp(-1e4) >= 0.0 && exp(-1e4) < 1e-37 && exp(1e4).is_finite() && exp(f32::NAN).is_nan());
    }

    #[test]
    fn cross_equals_matmul() {
        let f = |n: usize, m: usize, s: usize| {
            let v: Vec<f32> = (0..n * m).map(|i| ((i * s) % 1000) as f32 / 1000.0 - 0.5).collect();
            Tensor::from_vec(v, (n, m), &Device::Cpu).unwrap()
        };
        let (a, b) = (f(300, 130, 7919), f(300, 70, 104729));
        let c = cross(&a, &b).unwrap().to_vec2::<f32>().unwrap();
        let r = a.t().unwrap().matmul(&b).unwrap().to_vec2::<f32>().unwrap();
        for (x, y) in c.iter().flatten().zip(r.iter().flatten()) {
            assert!((x - y).abs() < 1e-3, "{x} vs {y}");
        }
    }
}
