//! CPU kernels on plain f32 slices: the matmuls and the attention that evaluation and calibration
//! spend their time in. gemm's single-threaded microkernels, split over our own worker threads
//! (candle's thread pools fight each other on two cores).

use crate::error::Result;
use candle_core::{Device, Storage, Tensor};
use gemm::{gemm, Parallelism};
use std::sync::atomic::{AtomicUsize, Ordering};

mod accum;
mod attention;
mod bf16;
mod elementwise;
pub use accum::{cross, gram, Accum, Square};
pub use attention::{attention, AttnShape};
pub use bf16::{bf16_available, bf16_faster, bf16_products, bf16_round, bf16_trial, Bf16Products, Bf16Trial};

pub(crate) use elementwise::par_fill;
pub use elementwise::{
    add, add_scaled, add_scaled_sub, exp, rms_norm, select_cols, select_rows, silu_mul, sub, to_heads, Rope,
};

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

/// Whether the x86-64 kernels are held to AVX2 (and FMA), the path of a CPU without AVX-512, on
/// one that has it: `set_avx2_only` (the CLI's `--kernels avx2`), else `PODAR_KERNELS=avx2`.
pub fn avx2_only() -> bool {
    match AVX2_ONLY.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        _ => {
            let on = std::env::var("PODAR_KERNELS").is_ok_and(|v| v == "avx2");
            AVX2_ONLY.store(on as usize, Ordering::Relaxed);
            on
        }
    }
}

/// Holds the kernels to AVX2 (`true`) or lets them use the widest vectors the CPU has; set before
/// any work (a choice made mid-job would mix paths).
pub fn set_avx2_only(on: bool) {
    AVX2_ONLY.store(on as usize, Ordering::Relaxed);
}

/// 0 or 1 once known; 2: not read yet.
static AVX2_ONLY: AtomicUsize = AtomicUsize::new(2);

/// Which kernels ran, and the timing behind an `auto` calibration precision: what a report says.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct InUse {
    pub isa: &'static str,
    pub bf16_trial: Option<Bf16Trial>,
}

/// The kernels in use here ([`isa`], [`bf16_trial`]).
pub fn in_use() -> InUse {
    InUse { isa: isa(), bf16_trial: bf16_trial() }
}

/// The instruction set the matrix kernels run here: "avx512", "avx2", "simd128" or "scalar".
pub fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        return "simd128";
    }
    #[allow(unreachable_code)]
    "scalar"
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
        // Read once: every kernel call asks.
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *THREADS.get_or_init(|| {
            std::env::var("PODAR_THREADS")
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|&n: &usize| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        })
    }
}

/// Runs `f` compiled for the widest vectors this CPU has: natively on x86-64 AVX-512, else AVX2,
/// chosen at run time (the binary itself targets baseline x86-64, whose SSE2 leaves loops with
/// `min`/`max` or conversions unvectorized). For the elementwise kernels' loops, which `f` inlines:
/// they compute the same values at any width, as nothing in them is reassociated.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if !avx2_only()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
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
    simd128::gemm((m, n, k), c, ldc, acc, a, a_strides, b, b_strides, 1.0);
    #[cfg(target_arch = "x86_64")]
    if m >= 8 && n >= 16 && avx512::available() {
        // SAFETY: the CPU has AVX-512F; the rest is the caller's promise.
        unsafe { avx512::gemm((m, n, k), c, ldc, acc, a, a_strides, b, b_strides, 1.0) };
        return;
    }
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let (a_rs, a_cs) = (a_strides.0 as isize, a_strides.1 as isize);
        let (b_rs, b_cs) = (b_strides.0 as isize, b_strides.1 as isize);
        scaled_gemm((m, n, k), c, ldc as isize, acc, a, (a_rs, a_cs), b, (b_rs, b_cs), 1.0);
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

/// The length of each of the equal blocks (a multiple of `align`, at most `max`) that the inner
/// dimension `k` is cut into: 576 as 3 × 192 rather than 256 + 256 + 64, as a short last block
/// costs nearly as much as a full one in C traffic and packing.
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "wasm32", target_feature = "simd128"))), allow(dead_code))]
fn k_block(k: usize, max: usize, align: usize) -> usize {
    k.div_ceil(k.div_ceil(max).max(1)).next_multiple_of(align).clamp(1, max)
}

/// Columns of B the matrix kernel packs at a time.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
const PANEL: usize = simd128::NR;
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
const PANEL: usize = 32;

#[cfg(target_arch = "x86_64")]
mod avx512;

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
    #[cfg(target_arch = "x86_64")]
    if [ldc, a_rs, a_cs, b_rs, b_cs].iter().all(|&s| s >= 0) && avx512::available() {
        use std::any::TypeId;
        let u = |s: isize| s as usize;
        let (ldc, a_st, b_st) = (u(ldc), (u(a_rs), u(a_cs)), (u(b_rs), u(b_cs)));
        // SAFETY: T is the type each branch casts to (so the casts are identities); the CPU has
        // AVX-512F; the strides are non-negative; the rest is the caller's promise.
        unsafe {
            if TypeId::of::<T>() == TypeId::of::<f32>() && m >= 8 && n >= 16 {
                let s = *(&scale as *const T).cast::<f32>();
                return avx512::gemm((m, n, k), c.cast(), ldc, acc, a.cast(), a_st, b.cast(), b_st, s);
            }
            if TypeId::of::<T>() == TypeId::of::<f64>() && m >= 4 && n >= 8 {
                let s = *(&scale as *const T).cast::<f64>();
                return avx512::gemm_f64((m, n, k), c.cast(), ldc, acc, a.cast(), a_st, b.cast(), b_st, s);
            }
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if [ldc, a_rs, a_cs, b_rs, b_cs].iter().all(|&s| s >= 0) {
        use std::any::TypeId;
        let u = |s: isize| s as usize;
        let (ldc, a_st, b_st) = (u(ldc), (u(a_rs), u(a_cs)), (u(b_rs), u(b_cs)));
        // SAFETY: T is the type each branch casts to (so the casts are identities); the strides
        // are non-negative; the rest is the caller's promise.
        unsafe {
            if TypeId::of::<T>() == TypeId::of::<f64>() {
                let s = *(&scale as *const T).cast::<f64>();
                return simd128::gemm((m, n, k), c.cast::<f64>(), ldc, acc, a.cast(), a_st, b.cast(), b_st, s);
            }
            if TypeId::of::<T>() == TypeId::of::<f32>() {
                let s = *(&scale as *const T).cast::<f32>();
                return simd128::gemm((m, n, k), c.cast::<f32>(), ldc, acc, a.cast(), a_st, b.cast(), b_st, s);
            }
        }
    }
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
unsafe fn written_by<T>(len: usize, fill: impl FnOnce(*mut T) -> Result<()>) -> Result<Vec<T>> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    fill(v.as_mut_ptr())?;
    // SAFETY: `fill` initialised all `len` elements (the caller's promise).
    unsafe { v.set_len(len) };
    Ok(v)
}

/// Runs `f` on the contiguous f32 data of a CPU tensor.
pub fn with_slice<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    with_slices(std::slice::from_ref(t), |s| f(s[0]))
}

/// Runs `f` on the contiguous f32 data of several CPU tensors at once.
pub fn with_slices<T>(ts: &[Tensor], f: impl FnOnce(&[&[f32]]) -> T) -> Result<T> {
    let ts: Vec<Tensor> = ts.iter().map(|t| t.contiguous()).collect::<candle_core::Result<_>>()?;
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ts.len());
    for ((storage, layout), t) in guards.iter().zip(&ts) {
        let Storage::Cpu(cpu) = &**storage else {
            return Err(candle_core::Error::Msg("podar kernels run on the CPU".into()).into());
        };
        let data = cpu.as_slice::<f32>()?;
        slices.push(&data[layout.start_offset()..layout.start_offset() + t.elem_count()]);
    }
    Ok(f(&slices))
}

/// [`linear`] for several maps of one input (a layer's q, k and v; gate and up): `x · wᵢᵀ (+ bᵢ)`
/// for each `(wᵢ, bᵢ)`. Under [`bf16_products`] on a CPU that multiplies bf16, `x` is rounded once
/// and all the products' column blocks are one set of tasks; otherwise each map is a [`linear`].
pub fn linears(x: &Tensor, maps: &[(&Tensor, Option<&Tensor>)]) -> Result<Vec<Tensor>> {
    #[cfg(target_arch = "x86_64")]
    if bf16::on() && offload().is_none() && maps.len() > 1 {
        if let Some(outs) = bf16::linears(x, maps)? {
            return Ok(outs);
        }
    }
    maps.iter().map(|(w, b)| linear(x, w, *b)).collect()
}

/// The outputs of a linear map's weight `w` (`[out, in]`) for an input of `k` features, or an error
/// when `in` is not `k`.
fn outputs(w: &Tensor, k: usize) -> Result<usize> {
    let (n, k2) = w.dims2()?;
    if k != k2 {
        return Err(candle_core::Error::Msg(format!("linear: input has {k} features, weight expects {k2}")).into());
    }
    Ok(n)
}

/// `x[rows×in] · wᵀ (+ b)` with `w` `[out, in]`: the linear layer, split over output columns.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (rows, k) = x.dims2()?;
    let n = outputs(w, k)?;
    let big = rows >= 16 && rows * n * k >= OFFLOAD_MIN_MACS;
    if let Some(o) = offload().filter(|_| big) {
        if let Some(v) = with_slice(x, |xs| o.linear(xs, rows, k, w, n))?.filter(|v| v.len() == rows * n) {
            return finish_linear(v, rows, n, bias);
        }
    }
    if bf16::on() {
        return bf16::linear(x, w, bias, (rows, n, k));
    }
    // SAFETY: the tasks together write every column of every row (acc = false: nothing is read).
    let out = unsafe {
        written_by(rows * n, |optr| {
            let optr = SharedMut(optr);
            with_slice(x, |xs| {
                with_slice(w, |ws| {
                    // Chunks of output columns, a few per thread so uneven cores still balance,
                    // in whole panels of the matrix kernel.
                    let chunk = n.div_ceil(threads() * 4).max(32).next_multiple_of(PANEL).min(n.max(1));
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every layout of A and B the kernels pass, on sizes around the products' tile and block
    /// edges, against a plain triple loop in f64.
    #[test]
    fn strided_gemm_matches_a_plain_product() {
        for &(m, n, k) in &[(1, 1, 1), (8, 16, 3), (13, 33, 257), (25, 65, 100), (40, 31, 513), (1100, 20, 9)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5).collect();
            for (a_t, b_t, acc) in
                [(false, false, false), (false, true, true), (true, false, true), (true, true, false)]
            {
                // A stored [m][k] or transposed [k][m]; B [k][n] or [n][k].
                let a_st = if a_t { (1, m) } else { (k, 1) };
                let b_st = if b_t { (1, k) } else { (n, 1) };
                let ldc = n + 3;
                let before: Vec<f32> = (0..m * ldc).map(|i| (i % 7) as f32).collect();
                // The kernel this CPU picks, and gemm's (the portable one) whatever the CPU.
                let (mut c, mut portable) = (before.clone(), before.clone());
                unsafe {
                    strided_gemm((m, n, k), c.as_mut_ptr(), ldc, acc, a.as_ptr(), a_st, b.as_ptr(), b_st);
                    let st = |(r, c): (usize, usize)| (r as isize, c as isize);
                    let (pa, pb) = (st(a_st), st(b_st));
                    scaled_gemm(
                        (m, n, k),
                        portable.as_mut_ptr(),
                        ldc as isize,
                        acc,
                        a.as_ptr(),
                        pa,
                        b.as_ptr(),
                        pb,
                        1.0,
                    );
                }
                for (c, name) in [(&c, "picked"), (&portable, "portable")] {
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if j >= n {
                                assert_eq!(
                                    got,
                                    before[i * ldc + j],
                                    "{name} ({m},{n},{k}) wrote past the tile at ({i},{j})"
                                );
                                continue;
                            }
                            let mut want: f64 = if acc { before[i * ldc + j] as f64 } else { 0.0 };
                            for kk in 0..k {
                                want += a[i * a_st.0 + kk * a_st.1] as f64 * b[kk * b_st.0 + j * b_st.1] as f64;
                            }
                            assert!(
                                (got as f64 - want).abs() < 1e-4 * (1.0 + k as f64).sqrt(),
                                "{name} ({m},{n},{k}) {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn f64_gemm_matches_a_plain_product() {
        // The recovery's f64 products (AVX-512 where the CPU has it, else gemm's), every layout of
        // A and B, with and without accumulation, a negative scale, sizes around the tiles' edges.
        for &(m, n, k) in &[(4, 8, 1), (12, 16, 64), (13, 17, 257), (25, 33, 100), (64, 1229, 64), (500, 9, 300)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 104729) % 997) as f64 / 997.0 - 0.5).collect();
            for (a_t, b_t, acc) in
                [(false, false, false), (false, true, true), (true, false, true), (true, true, false)]
            {
                let a_st: (isize, isize) = if a_t { (1, m as isize) } else { (k as isize, 1) };
                let b_st: (isize, isize) = if b_t { (1, k as isize) } else { (n as isize, 1) };
                let ldc = n + 3;
                let before: Vec<f64> = (0..m * ldc).map(|i| (i % 7) as f64).collect();
                let mut c = before.clone();
                unsafe {
                    scaled_gemm((m, n, k), c.as_mut_ptr(), ldc as isize, acc, a.as_ptr(), a_st, b.as_ptr(), b_st, -0.5)
                };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert_eq!(got, before[i * ldc + j], "({m},{n},{k}) wrote past the tile at ({i},{j})");
                            continue;
                        }
                        let mut dot = 0f64;
                        for kk in 0..k {
                            let (ia, ib) = (
                                i as isize * a_st.0 + kk as isize * a_st.1,
                                kk as isize * b_st.0 + j as isize * b_st.1,
                            );
                            dot += a[ia as usize] * b[ib as usize];
                        }
                        let want = if acc { before[i * ldc + j] } else { 0.0 } - 0.5 * dot;
                        assert!((got - want).abs() < 1e-12 * (1.0 + k as f64), "({m},{n},{k}) {got} vs {want}");
                    }
                }
            }
        }
    }

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

    pub(crate) fn wavy(n: usize, m: usize, s: usize) -> Tensor {
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

    /// Shapes that do not fit are errors, not out-of-range reads.
    #[test]
    fn norm_and_heads_refuse_mismatched_shapes() {
        let x = wavy(6, 8, 7919);
        assert!(rms_norm(&x, &[1.0; 8], 1e-5).is_ok());
        assert!(rms_norm(&x, &[1.0; 4], 1e-5).is_err());
        assert!(rms_norm(&x, &[], 1e-5).is_err());
        // 48 values: 1 batch × 6 positions × 2 heads of 4.
        let (cos, sin) = (vec![1.0f32; 6 * 4], vec![0.0f32; 6 * 4]);
        let rope = Rope { cos: &cos, sin: &sin };
        let ok = to_heads(&x, (1, 6, 2, 4), Some((&[1.0; 4], 1e-6)), Some(&rope)).unwrap();
        // cos 1, sin 0 and a unit norm weight: each head row is the input row, RMS-normed.
        let row = &x.to_vec2::<f32>().unwrap()[0][..4];
        let rms = (row.iter().map(|v| v * v).sum::<f32>() / 4.0 + 1e-6).sqrt();
        let got = ok.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(row.iter().zip(&got).all(|(a, b)| (a / rms - b).abs() < 1e-5));
        assert!(to_heads(&x, (1, 6, 2, 5), None, None).is_err());
        assert!(to_heads(&x, (1, 5, 2, 4), None, None).is_err());
        assert!(to_heads(&x, (1, 6, 2, 4), Some((&[1.0; 3], 1e-6)), None).is_err());
        let short = Rope { cos: &cos[..20], sin: &sin[..20] };
        assert!(to_heads(&x, (1, 6, 2, 4), None, Some(&short)).is_err());
        assert!(to_heads(&wavy(6, 6, 1), (1, 6, 2, 3), None, Some(&rope)).is_err());
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
