//! WebGPU kernels: the matrix products of calibration and evaluation (`x · Wᵀ` of every linear
//! layer, and the Gram matrices of recovery) in one WGSL kernel run through wgpu.
//!
//! WebGPU is asynchronous and podar's core is not, so these kernels live in their own worker in the
//! page (`www/gpu-worker.js`): the compute worker hands each product over and waits for the answer
//! (see [`crate::kernels::Offload`]). Weights are uploaded once per tensor and kept on the GPU,
//! least recently used first out when the budget is reached. Buffers respect the adapter's
//! binding-size limit: weights are split into row blocks, inputs into row blocks too. Only f32 is
//! used (no `shader-f16`).

use crate::error::{Error, Result};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use wasm_bindgen::JsCast;
use wgpu::util::DeviceExt;

/// The WGSL matrix products (`nt` and `tn`; 4×4 blocks per invocation, 8×8 invocations).
const MATMUL_WGSL: &str = include_str!("matmul.wgsl");
/// Output rows and columns per workgroup.
const TILE: usize = 32;

fn gpu_err(e: impl std::fmt::Display) -> Error {
    Error::Gpu(e.to_string())
}

/// A weight matrix `[n, k]` on the GPU, in row blocks that each fit one binding.
struct Weight {
    blocks: Vec<(wgpu::Buffer, usize, usize)>, // (buffer, first row, rows)
    n: usize,
    k: usize,
    bytes: u64,
    last_use: u64,
}

/// The device, the compiled kernel and the weights uploaded so far.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    nt: wgpu::ComputePipeline,
    tn: wgpu::ComputePipeline,
    /// Largest storage binding, bytes.
    max_binding: u64,
    weights: RefCell<HashMap<u32, Weight>>,
    /// Bytes of weights kept on the GPU before the least recently used are dropped.
    budget: u64,
    clock: Cell<u64>,
    /// Adapter name and limits, for the page.
    pub info: String,
}

/// Uniform block of the kernels (see matmul.wgsl).
#[derive(Clone, Copy)]
struct Params {
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    c_off: usize,
    acc: bool,
}

impl Params {
    fn bytes(&self) -> Vec<u8> {
        let v = [self.m, self.n, self.k, self.lda, self.ldb, self.ldc, self.c_off, self.acc as usize];
        v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()
    }
}

/// The rows of `x` (`[rows, k]`) widened to `kp ≥ k` columns with zeros (the kernels read four
/// values at a time, so the inner dimension must be a multiple of 4; zeros add nothing to a product).
fn pad_cols(x: &[f32], k: usize, kp: usize) -> std::borrow::Cow<'_, [f32]> {
    if kp == k {
        return x.into();
    }
    let mut out = Vec::with_capacity(x.len() / k.max(1) * kp);
    for row in x.chunks_exact(k) {
        out.extend_from_slice(row);
        out.resize(out.len() + kp - k, 0.0);
    }
    out.into()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Gpu {
    /// Opens the default adapter (high performance preferred) with its own limits on buffer sizes.
    pub async fn open() -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::BROWSER_WEBGPU,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            // wgpu's own text lists the native backends it did not try ("noop not requested, vulkan
            // not requested…"), which says nothing in a browser.
            .map_err(|_| Error::Gpu("no WebGPU adapter".into()))?;
        let al = adapter.limits();
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: al.max_storage_buffer_binding_size,
            max_buffer_size: al.max_buffer_size,
            ..wgpu::Limits::defaults()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("podar"),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(gpu_err)?;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("matmul"),
            source: wgpu::ShaderSource::Wgsl(MATMUL_WGSL.into()),
        });
        let pipeline = |entry: &str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let (nt, tn) = (pipeline("nt"), pipeline("tn"));
        let max_binding = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size).min(1 << 30);
        let info = adapter.get_info();
        Ok(Gpu {
            device,
            queue,
            nt,
            tn,
            max_binding,
            weights: RefCell::new(HashMap::new()),
            budget: 1536 << 20,
            clock: Cell::new(0),
            info: format!(
                "{} (largest buffer {} MiB)",
                [info.name.as_str(), info.driver.as_str(), info.driver_info.as_str()]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or("WebGPU adapter"),
                max_binding >> 20
            ),
        })
    }

    /// Uses bindings of at most `bytes` (at least one row), as on a device with smaller limits; tests
    /// use it to exercise the split of weights and inputs into row blocks.
    pub fn limit_binding(&mut self, bytes: u64) {
        self.max_binding = self.max_binding.min(bytes.max(4));
    }

    /// Rows of a `[rows, cols]` f32 matrix that fit one binding.
    fn rows_per_binding(&self, cols: usize) -> usize {
        ((self.max_binding / 4) as usize / cols.max(1)).max(1)
    }

    /// Keeps weight `w` (`[n, k]`, row-major) on the GPU under `key`.
    pub fn upload(&self, key: u32, w: &[f32], n: usize, k: usize) -> Result<()> {
        if w.len() != n * k {
            return Err(Error::Gpu(format!("weight {key}: {} values for [{n}, {k}]", w.len())));
        }
        let kp = k.next_multiple_of(4);
        let w = pad_cols(w, k, kp);
        let bytes = (w.len() * 4) as u64;
        if bytes > self.budget {
            return Err(Error::Gpu(format!("a weight of {} MiB exceeds the GPU budget", bytes >> 20)));
        }
        self.evict_for(bytes);
        let per = self.rows_per_binding(kp);
        let blocks = (0..n)
            .step_by(per)
            .map(|r0| {
                let rows = per.min(n - r0);
                let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("weight"),
                    contents: &f32_bytes(&w[r0 * kp..(r0 + rows) * kp]),
                    usage: wgpu::BufferUsages::STORAGE,
                });
                (buf, r0, rows)
            })
            .collect();
        let t = self.tick();
        self.weights.borrow_mut().insert(key, Weight { blocks, n, k, bytes, last_use: t });
        Ok(())
    }

    /// Whether weight `key` is on the GPU.
    pub fn has(&self, key: u32) -> bool {
        self.weights.borrow().contains_key(&key)
    }

    /// Drops every uploaded weight.
    pub fn forget_all(&self) {
        self.weights.borrow_mut().clear();
    }

    fn tick(&self) -> u64 {
        self.clock.set(self.clock.get() + 1);
        self.clock.get()
    }

    fn evict_for(&self, bytes: u64) {
        let mut w = self.weights.borrow_mut();
        while w.values().map(|x| x.bytes).sum::<u64>() + bytes > self.budget {
            let Some(old) = w.iter().min_by_key(|(_, x)| x.last_use).map(|(&k, _)| k) else { break };
            w.remove(&old);
        }
    }

    fn storage(&self, data: &[f32]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("input"),
            contents: &f32_bytes(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    }

    fn output(&self, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("output"),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Records one dispatch of kernel `pipe` (`nt` or `tn`) into `enc`.
    fn dispatch(
        &self,
        enc: &mut wgpu::CommandEncoder,
        pipe: &wgpu::ComputePipeline,
        (a, b, c): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
        p: Params,
    ) {
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: &p.bytes(),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matmul"),
            layout: &pipe.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: a.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: b.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: c.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: uniform.as_entire_binding() },
            ],
        });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
        pass.set_pipeline(pipe);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(p.n.div_ceil(TILE) as u32, p.m.div_ceil(TILE) as u32, 1);
    }

    /// Submits `enc` after copying `out` (`len` values) to a mappable buffer, and reads it back.
    async fn finish(&self, mut enc: wgpu::CommandEncoder, out: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let size = (len.max(1) * 4) as u64;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        enc.copy_buffer_to_buffer(out, 0, &staging, 0, size);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.submit([enc.finish()]);
        if let Some(e) = scope.pop().await {
            return Err(gpu_err(e));
        }
        let (promise, done) = callback_promise();
        staging.map_async(wgpu::MapMode::Read, .., move |r| done(r.map_err(|e| e.to_string())));
        let status = wasm_bindgen_futures::JsFuture::from(promise).await.map_err(|e| Error::Gpu(format!("{e:?}")))?;
        if let Some(msg) = status.as_string() {
            return Err(Error::Gpu(format!("reading back: {msg}")));
        }
        let view = staging.get_mapped_range(..).map_err(gpu_err)?;
        let v = view[..len * 4].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        drop(view);
        staging.unmap();
        Ok(v)
    }

    /// `x · Wᵀ` for weight `key` (`[n, k]`) and `x` `[rows, k]`: `[rows, n]`. Any `k`: the inner
    /// dimension is padded with zeros to a multiple of 4, as the weight was on upload.
    pub async fn linear(&self, key: u32, x: &[f32], rows: usize, k: usize) -> Result<Vec<f32>> {
        let t = self.tick();
        let (n, blocks) = {
            let mut ws = self.weights.borrow_mut();
            let w = ws.get_mut(&key).ok_or_else(|| Error::Gpu(format!("weight {key} is not on the GPU")))?;
            if w.k != k || x.len() != rows * k {
                return Err(Error::Gpu(format!("linear: x is [{rows}, {k}], weight {key} is [{}, {}]", w.n, w.k)));
            }
            w.last_use = t;
            (w.n, w.blocks.iter().map(|(b, r0, r)| (b.clone(), *r0, *r)).collect::<Vec<_>>())
        };
        let kp = k.next_multiple_of(4);
        let x = pad_cols(x, k, kp);
        let mut out = Vec::with_capacity(rows * n);
        // Input and output row blocks that each fit one binding.
        let per = self.rows_per_binding(kp.max(n));
        for r0 in (0..rows).step_by(per) {
            let m = per.min(rows - r0);
            let xb = self.storage(&x[r0 * kp..(r0 + m) * kp]);
            let ob = self.output(m * n);
            let mut enc = self.device.create_command_encoder(&Default::default());
            for (wb, j0, nj) in &blocks {
                let p = Params { m, n: *nj, k: kp / 4, lda: kp / 4, ldb: kp / 4, ldc: n, c_off: *j0, acc: false };
                self.dispatch(&mut enc, &self.nt, (&xb, wb, &ob), p);
            }
            out.extend(self.finish(enc, &ob, m * n).await?);
        }
        Ok(out)
    }

    /// The Gram matrix `xᵀx` (`[n, n]`) of `x` (`[t, n]`), accumulated over row blocks of `x`.
    /// Any `n`: the features are padded with zeros to a multiple of 4 and the result cut back.
    pub async fn gram(&self, x: &[f32], t: usize, n: usize) -> Result<Vec<f32>> {
        let np = n.next_multiple_of(4);
        if x.len() != t * n || (np * np * 4) as u64 > self.max_binding {
            return Err(Error::Gpu(format!("gram: [{t}, {n}] does not fit")));
        }
        let x = pad_cols(x, n, np);
        let per = self.rows_per_binding(np);
        let ob = self.output(np * np);
        let mut enc = self.device.create_command_encoder(&Default::default());
        let mut inputs = Vec::new();
        for (i, r0) in (0..t).step_by(per).enumerate() {
            let m = per.min(t - r0);
            let xb = self.storage(&x[r0 * np..(r0 + m) * np]);
            let p = Params { m: np, n: np, k: m, lda: np / 4, ldb: np / 4, ldc: np, c_off: 0, acc: i > 0 };
            self.dispatch(&mut enc, &self.tn, (&xb, &xb, &ob), p);
            inputs.push(xb);
        }
        let g = self.finish(enc, &ob, np * np).await?;
        Ok(if np == n { g } else { g.chunks_exact(np).take(n).flat_map(|row| row[..n].iter().copied()).collect() })
    }
}

/// A promise and the function that settles it: `Ok` resolves to `undefined`, `Err(msg)` to `msg`.
fn callback_promise() -> (js_sys::Promise, impl FnOnce(std::result::Result<(), String>)) {
    let slot: std::rc::Rc<RefCell<Option<js_sys::Function>>> = Default::default();
    let s = slot.clone();
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        *s.borrow_mut() = Some(resolve);
    });
    let done = move |r: std::result::Result<(), String>| {
        if let Some(f) = slot.borrow_mut().take() {
            let v = match r {
                Ok(()) => wasm_bindgen::JsValue::UNDEFINED,
                Err(m) => wasm_bindgen::JsValue::from_str(&m),
            };
            let _ = f.unchecked_ref::<js_sys::Function>().call1(&wasm_bindgen::JsValue::NULL, &v);
        }
    };
    (promise, done)
}
