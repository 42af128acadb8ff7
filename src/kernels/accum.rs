//! Gram matrices and cross products of activations, summed in place over chunks of tokens.

use super::{bf16, offload, par_for, strided_gemm, with_slice, SharedMut, OFFLOAD_MIN_MACS};
use crate::error::Result;
use candle_core::{Device, Tensor};

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
    /// With [`Accum::wide`]: the sum's f32 values at the start of a buffer of as many f64s, so that
    /// [`Square::widen`] makes them f64 without a second buffer.
    wide: Option<Vec<f64>>,
    gram: bool,
}

impl Accum {
    /// A sum held where it can later be widened to f64 in place ([`Accum::into_square`]). Natively
    /// the buffer's second half is never touched unless it is widened, so it takes no memory.
    pub fn wide() -> Self {
        Accum { wide: Some(Vec::new()), ..Default::default() }
    }

    fn buffer(&mut self, len: usize) -> Result<*mut f32> {
        if let Some(w) = self.wide.as_mut() {
            if w.is_empty() {
                *w = vec![0f64; len];
            } else if w.len() != len {
                return Err(candle_core::Error::Msg(format!("accumulating {len} values into {}", w.len())).into());
            }
            return Ok(w.as_mut_ptr().cast());
        }
        if self.data.is_empty() {
            self.data = vec![0f32; len];
        } else if self.data.len() != len {
            return Err(candle_core::Error::Msg(format!("accumulating {len} values into {}", self.data.len())).into());
        }
        Ok(self.data.as_mut_ptr())
    }

    /// The sum's values (none before anything was added).
    fn values(&mut self) -> &mut [f32] {
        match self.wide.as_mut() {
            // SAFETY: a buffer of len f64s holds len f32s at its start (f32's alignment is less).
            Some(w) => unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), w.len()) },
            None => &mut self.data,
        }
    }

    /// Adds `xᵀx` of `x` (`[tokens, n]`).
    pub fn add_gram(&mut self, x: &Tensor) -> Result<()> {
        let (t, n) = x.dims2()?;
        self.gram = true;
        if let Some(o) = offload().filter(|_| t * n * n >= OFFLOAD_MIN_MACS) {
            if let Some(v) = with_slice(x, |xs| o.gram(xs, t, n))?.filter(|v| v.len() == n * n) {
                self.buffer(n * n)?;
                self.values().iter_mut().zip(&v).for_each(|(a, b)| *a += b);
                return Ok(());
            }
        }
        let x = Operand::of(x)?;
        self.gram_of(&x)
    }

    /// Adds `aᵀa` to `gram` and `aᵀb` to `cross`, preparing `a` for the products once.
    pub fn add_gram_cross(gram: &mut Accum, cross: &mut Accum, a: &Tensor, b: &Tensor) -> Result<()> {
        let (t, n) = a.dims2()?;
        if offload().is_some() && t * n * n >= OFFLOAD_MIN_MACS {
            gram.add_gram(a)?;
            return cross.add_cross(a, b);
        }
        let a = Operand::of(a)?;
        gram.gram_of(&a)?;
        cross.cross_of(&a, &Operand::of(b)?)
    }

    fn gram_of(&mut self, x: &Operand) -> Result<()> {
        self.gram = true;
        let (t, n) = x.x.dims2()?;
        let (pairs, x) = (&x.pairs, x.x());
        let optr = SharedMut(self.buffer(n * n)?);
        // Strips of S rows, each from its diagonal to the last column: only the strips' own
        // diagonal squares are multiplied in full, so little beyond the upper triangle is
        // computed. The widest strips come first, so that the threads finish together.
        const S: usize = 96;
        if let Some(xp) = pairs.as_deref() {
            let tp = t.div_ceil(2);
            par_for(n.div_ceil(S), &|b| {
                let (i0, o) = (b * S, optr);
                // SAFETY: as below, on the pairs of rows (tp × n) instead of the rows.
                unsafe {
                    bf16::tokens_product(
                        (S.min(n - i0), n - i0, tp),
                        o.0.add(i0 * n + i0),
                        n,
                        &xp[i0..],
                        n,
                        &xp[i0..],
                        n,
                    )
                };
            });
            return Ok(());
        }
        with_slice(x, |xs| {
            par_for(n.div_ceil(S), &|b| {
                let i0 = b * S;
                let o = optr;
                // SAFETY: rows i0..i0+S of the buffer, columns i0.., are written by this task alone;
                // xs holds t×n values. xᵀ element (i, τ) at x[τ·n + i]; x element (τ, j) at x[τ·n + j].
                unsafe {
                    strided_gemm(
                        (S.min(n - i0), n - i0, t),
                        o.0.add(i0 * n + i0),
                        n,
                        true,
                        xs.as_ptr().add(i0),
                        (1, n),
                        xs.as_ptr().add(i0),
                        (n, 1),
                    )
                };
            })
        })
    }

    /// Adds `aᵀb` of `a` (`[tokens, n]`) and `b` (`[tokens, m]`), row blocks of the result over threads.
    pub fn add_cross(&mut self, a: &Tensor, b: &Tensor) -> Result<()> {
        self.cross_of(&Operand::of(a)?, &Operand::of(b)?)
    }

    fn cross_of(&mut self, a: &Operand, b: &Operand) -> Result<()> {
        let (t, n) = a.x.dims2()?;
        let (t2, m) = b.x.dims2()?;
        if t != t2 {
            return Err(candle_core::Error::Msg(format!("cross: {t} rows against {t2}")).into());
        }
        let pairs = (&a.pairs, &b.pairs);
        let (a, b) = (a.x(), b.x());
        let optr = SharedMut(self.buffer(n * m)?);
        // Tall blocks, so that packing b costs little against the products that use it.
        const B: usize = 256;
        if let (Some(ap), Some(bp)) = (pairs.0.as_deref(), pairs.1.as_deref()) {
            let tp = t.div_ceil(2);
            par_for(n.div_ceil(B), &|bi| {
                let (i0, o) = (bi * B, optr);
                // SAFETY: as below, on the pairs of rows instead of the rows.
                unsafe { bf16::tokens_product((B.min(n - i0), m, tp), o.0.add(i0 * m), m, &ap[i0..], n, bp, m) };
            });
            return Ok(());
        }
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
        self.data.is_empty() && self.wide.as_ref().is_none_or(|w| w.is_empty())
    }

    /// The sum as a `shape` tensor (a Gram sum mirrored into its lower triangle first).
    pub fn into_tensor(mut self, shape: (usize, usize)) -> Result<Tensor> {
        self.mirror(shape.0);
        let data = match self.wide.take() {
            // SAFETY: as in `values`.
            Some(w) => unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), w.len()) }.to_vec(),
            None => self.data,
        };
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }

    /// A Gram sum of [`Accum::wide`] as an `n × n` [`Square`], mirrored.
    pub fn into_square(mut self, n: usize) -> Result<Square> {
        self.mirror(n);
        match self.wide.take() {
            Some(buf) if buf.len() == n * n => Ok(Square { buf, n }),
            _ => Err(candle_core::Error::Msg(format!("no wide {n}×{n} sum to take")).into()),
        }
    }

    /// A Gram sum's lower triangle from its upper one (only the upper is summed).
    fn mirror(&mut self, n: usize) {
        if self.gram && !self.is_empty() {
            // The lower triangle from the upper one, row blocks over threads.
            let optr = SharedMut(self.values().as_mut_ptr());
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
    }
}

/// An `n × n` matrix of f32 values held at the start of a buffer of `n²` f64s ([`Accum::wide`]):
/// read as f32, or widened to f64 in that same buffer. Recovery's f64 solve of a large Gram matrix
/// needs it only as f64, and a second buffer for the conversion was its memory's peak.
pub struct Square {
    buf: Vec<f64>,
    n: usize,
}

impl Square {
    pub fn n(&self) -> usize {
        self.n
    }

    /// The values, as f32.
    pub fn values(&self) -> &[f32] {
        // SAFETY: the buffer of n² f64s holds the n² f32 values at its start.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast(), self.n * self.n) }
    }

    /// The values widened to f64, in place: from the last to the first, so that each f64 (bytes
    /// 8i..8i+8) covers only f32 values already widened (2i and 2i+1 ≥ i) or the one it is made of.
    pub fn widen(mut self) -> Vec<f64> {
        let p = self.buf.as_mut_ptr();
        for i in (0..self.n * self.n).rev() {
            // SAFETY: i < n², within the buffer both as f32 and as f64; the read precedes the write.
            unsafe {
                let x = *p.cast::<f32>().add(i);
                *p.add(i) = x as f64;
            }
        }
        self.buf
    }
}

/// An operand of the products over tokens, prepared as the products take it: as bf16 pairs of
/// tokens where the CPU multiplies bf16, rounded to bf16 where bf16 products are emulated, else as is.
struct Operand<'a> {
    x: &'a Tensor,
    pairs: Option<Vec<u32>>,
    rounded: Option<Tensor>,
}

impl<'a> Operand<'a> {
    fn of(x: &'a Tensor) -> Result<Self> {
        let mut rounded = None;
        let pairs = bf16::tokens(x, &mut rounded)?;
        Ok(Operand { x, pairs, rounded })
    }

    fn x(&self) -> &Tensor {
        self.rounded.as_ref().unwrap_or(self.x)
    }
}
