//! WebGPU in the page, both halves:
//! - `GpuKernels`: the GPU worker's handle on [`crate::gpu::Gpu`] (asynchronous, like WebGPU).
//! - `GpuBridge` + [`BridgeOffload`]: the compute worker's side. The core's kernels call
//!   [`crate::kernels::Offload`] synchronously; the bridge (`www/gpu-bridge.js`) posts the product
//!   to the GPU worker and waits on a shared flag (`Atomics.wait`) for the answer.

use crate::kernels::Offload;
use candle_core::{Tensor, TensorId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    /// The compute worker's synchronous view of the GPU worker (`www/gpu-bridge.js`).
    pub type GpuBridge;
    /// Sends weight `key` (`[n, k]`) to the GPU worker; false if it could not be sent.
    #[wasm_bindgen(method)]
    fn upload(this: &GpuBridge, key: u32, w: &[f32], n: u32, k: u32) -> bool;
    /// `x · Wᵀ` into `out`: 0 done, 1 the weight is not on the GPU (evicted), 2 failed.
    #[wasm_bindgen(method)]
    fn linear(this: &GpuBridge, key: u32, x: &[f32], rows: u32, k: u32, n: u32, out: &mut [f32]) -> u32;
    /// `xᵀx` into `out`: 0 done, 2 failed.
    #[wasm_bindgen(method)]
    fn gram(this: &GpuBridge, x: &[f32], t: u32, n: u32, out: &mut [f32]) -> u32;
    /// Drops every weight on the GPU.
    #[wasm_bindgen(method)]
    fn forget(this: &GpuBridge);
}

/// [`Offload`] through the bridge. Each weight tensor gets a key the first time it is used and is
/// uploaded then; after a failure the GPU is no longer asked (the CPU kernels take over).
pub struct BridgeOffload {
    bridge: GpuBridge,
    keys: RefCell<HashMap<TensorId, u32>>,
    next: Cell<u32>,
    failed: Cell<bool>,
    /// Products the GPU computed (for the page's report).
    pub calls: Cell<u64>,
}

impl BridgeOffload {
    pub fn new(bridge: GpuBridge) -> Self {
        bridge.forget();
        BridgeOffload {
            bridge,
            keys: RefCell::new(HashMap::new()),
            next: Cell::new(1),
            failed: Cell::new(false),
            calls: Cell::new(0),
        }
    }

    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    /// Drops the uploaded weights (a new model was loaded, or the original pruned away).
    pub fn forget(&self) {
        self.keys.borrow_mut().clear();
        self.bridge.forget();
    }

    fn upload(&self, w: &Tensor, n: usize, k: usize) -> Option<u32> {
        let key = self.next.get();
        self.next.set(key + 1);
        let sent = crate::kernels::with_slice(w, |ws| self.bridge.upload(key, ws, n as u32, k as u32)).ok()?;
        if !sent {
            return None;
        }
        self.keys.borrow_mut().insert(w.id(), key);
        Some(key)
    }
}

/// Times one matrix product of the calibration's kind (`[512, 1024] · [1024, 1024]ᵀ`, f32) on the
/// CPU kernels and on the GPU behind `bridge`, each after one untimed run (which, on the GPU, uploads
/// the weight and builds the pipeline): milliseconds on each, the GPU's `None` where it failed. The
/// kernels' offload is left unset.
pub fn time_product(bridge: GpuBridge) -> crate::error::Result<(f64, Option<f64>)> {
    const ROWS: usize = 512;
    const K: usize = 1024;
    const N: usize = 1024;
    // Values of no particular pattern, all finite, so that no path can shortcut them.
    let fill = |len: usize, seed: u32| -> Vec<f32> {
        (0..len as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    };
    let x = Tensor::from_vec(fill(ROWS * K, 7), (ROWS, K), &candle_core::Device::Cpu)?;
    let w = Tensor::from_vec(fill(N * K, 11), (N, K), &candle_core::Device::Cpu)?;
    let timed = || -> crate::error::Result<f64> {
        crate::kernels::linear(&x, &w, None)?;
        let t0 = js_sys::Date::now();
        crate::kernels::linear(&x, &w, None)?;
        Ok(js_sys::Date::now() - t0)
    };
    crate::kernels::set_offload(None);
    let cpu = timed()?;
    let gpu = std::rc::Rc::new(BridgeOffload::new(bridge));
    crate::kernels::set_offload(Some(gpu.clone() as std::rc::Rc<dyn Offload>));
    let on_gpu = timed();
    crate::kernels::set_offload(None);
    gpu.forget();
    // Both runs must have gone to the GPU: after a failure the CPU kernels answer instead.
    let on_gpu = on_gpu?;
    Ok((cpu, (gpu.calls.get() == 2 && !gpu.failed()).then_some(on_gpu)))
}

impl Offload for BridgeOffload {
    fn linear(&self, x: &[f32], rows: usize, k: usize, w: &Tensor, n: usize) -> Option<Vec<f32>> {
        if self.failed.get() {
            return None;
        }
        let mut out = vec![0f32; rows * n];
        for _attempt in 0..2 {
            let known = self.keys.borrow().get(&w.id()).copied();
            let Some(key) = known.or_else(|| self.upload(w, n, k)) else {
                self.failed.set(true);
                return None;
            };
            match self.bridge.linear(key, x, rows as u32, k as u32, n as u32, &mut out) {
                0 => {
                    self.calls.set(self.calls.get() + 1);
                    return Some(out);
                }
                1 => {
                    // Evicted on the GPU side: upload again.
                    self.keys.borrow_mut().remove(&w.id());
                }
                _ => break,
            }
        }
        self.failed.set(true);
        None
    }

    fn gram(&self, x: &[f32], t: usize, n: usize) -> Option<Vec<f32>> {
        if self.failed.get() {
            return None;
        }
        let mut out = vec![0f32; n * n];
        if self.bridge.gram(x, t as u32, n as u32, &mut out) == 0 {
            self.calls.set(self.calls.get() + 1);
            Some(out)
        } else {
            self.failed.set(true);
            None
        }
    }
}

/// The GPU worker's kernels: a WebGPU device with podar's WGSL matrix product.
#[cfg(feature = "gpu")]
#[wasm_bindgen]
pub struct GpuKernels {
    gpu: std::rc::Rc<crate::gpu::Gpu>,
}

#[cfg(feature = "gpu")]
#[wasm_bindgen]
impl GpuKernels {
    /// Opens the adapter; fails with a readable reason when WebGPU or an adapter is missing.
    pub async fn open() -> Result<GpuKernels, JsValue> {
        let gpu = crate::gpu::Gpu::open().await.map_err(super::js_err)?;
        Ok(GpuKernels { gpu: std::rc::Rc::new(gpu) })
    }

    /// The adapter, for the page.
    pub fn info(&self) -> String {
        self.gpu.info.clone()
    }

    pub fn has(&self, key: u32) -> bool {
        self.gpu.has(key)
    }

    pub fn upload(&self, key: u32, w: &[f32], n: usize, k: usize) -> Result<(), JsValue> {
        self.gpu.upload(key, w, n, k).map_err(super::js_err)
    }

    pub fn forget(&self) {
        self.gpu.forget_all();
    }

    /// `x · Wᵀ` for weight `key`: a promise of a `Float32Array` `[rows, n]`.
    pub fn linear(&self, key: u32, x: Vec<f32>, rows: usize, k: usize) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let v = gpu.linear(key, &x, rows, k).await.map_err(|e| JsValue::from_str(&e.to_string()))?;
            Ok(js_sys::Float32Array::from(&v[..]).into())
        })
    }

    /// `xᵀx` of `x` `[t, n]`: a promise of a `Float32Array` `[n, n]`.
    pub fn gram(&self, x: Vec<f32>, t: usize, n: usize) -> js_sys::Promise {
        let gpu = self.gpu.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let v = gpu.gram(&x, t, n).await.map_err(|e| JsValue::from_str(&e.to_string()))?;
            Ok(js_sys::Float32Array::from(&v[..]).into())
        })
    }
}
