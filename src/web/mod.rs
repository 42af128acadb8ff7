//! The browser's view of the core: a `Session` that lives in a Web Worker and converts between
//! JavaScript values and the core's types. No computation happens here; every method calls the same
//! core functions the CLI calls.
//!
//! Files arrive as `Blob`s and are read in slices with `FileReaderSync` (workers only), so a model is
//! never copied whole into wasm memory. Long calls take a `progress(stage, done, total)` function;
//! when it returns `false` the call stops with "cancelled" and the session stays usable.

use crate::error::{Error, Result};
use crate::export::job::{self, EvalPair, OutputFormat, Record, Seconds};
use crate::formats::zip::{FileSink, InFolder, ZipWriter};
use crate::model::eval::perplexity;
use crate::model::load::{self, Bundle, Picked};
use crate::model::LayerStore;
use crate::prune::{self, PruneOptions, Pruned};
use js_sys::Function;
use serde::Serialize;
use std::io::{Read, Write};
use wasm_bindgen::prelude::*;
use web_sys::File;

mod blob;
mod files;
mod gpu;
mod spill;
pub use blob::BlobReader;
use blob::{ChunkWriter, SLICE};
use files::{files_of, name_of, named, open_streamed, page_can_use, read_model};
pub use gpu::GpuBridge;
#[cfg(feature = "gpu")]
pub use gpu::GpuKernels;

/// `initThreadPool(n)` in JavaScript: starts `n` Web Workers for the kernels (threaded build only).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[wasm_bindgen(inline_js = "let channel = null;
export function podar_failed_allocation(token, failed, live) {
  try {
    channel ??= new BroadcastChannel('podar-engine');
    channel.postMessage({ token, failed, live });
  } catch (e) {}
}")]
extern "C" {
    /// Posts `{token, failed, live}` on the BroadcastChannel "podar-engine" (see
    /// [`Session::tell_failed_allocations`]). Passes only numbers: nothing is allocated in wasm.
    fn podar_failed_allocation(token: u32, failed: f64, live: f64);
}

static ENGINE_TOKEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn tell_failed_allocation(size: usize) {
    let token = ENGINE_TOKEN.load(std::sync::atomic::Ordering::Relaxed);
    podar_failed_allocation(token, size as f64, crate::memory::live() as f64);
}

/// A JavaScript `Error` with the message, and the kind of error as its `code` ([`Error::code`]).
fn js_err(e: Error) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    let _ = js_sys::Reflect::set(&err, &"code".into(), &e.code().into());
    err.into()
}

/// A request that does not fit, as a JavaScript error (`code: "bad-input"`).
fn input_err(msg: &str) -> JsValue {
    js_err(Error::Input(msg.into()))
}

/// Calls `progress(stage, done, total)`; a `false` answer (or a throw) asks to stop.
fn ask(progress: &Function, stage: &str, done: usize, total: usize) -> bool {
    progress
        .call3(&JsValue::NULL, &JsValue::from_str(stage), &JsValue::from(done as f64), &JsValue::from(total as f64))
        .map(|v| v.as_bool().unwrap_or(true))
        .unwrap_or(false)
}

fn to_js<T: Serialize>(v: &T) -> std::result::Result<JsValue, JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| input_err(&e.to_string()))
}

/// The output of the last prune, kept for evaluation, generation and export.
struct Done {
    pruned: Pruned,
    options: PruneOptions,
    calib_ids: Vec<u32>,
    prune_seconds: f64,
    /// The original's configuration (the original itself may have been consumed by the prune).
    source_cfg: crate::model::config::ModelConfig,
}

#[derive(Serialize)]
struct PruneSummary<'a> {
    parameters_before: u64,
    parameters_after: u64,
    intermediate_before: usize,
    intermediate_after: usize,
    /// Each layer's MLP width after, where the layers differ.
    intermediate_sizes_after: Option<Vec<usize>>,
    layers_before: usize,
    kept_layers: &'a [usize],
    kv_heads_before: usize,
    kept_kv_heads: &'a [Vec<usize>],
    layer_influence: &'a [f64],
    block_distances: &'a [f64],
    calib_tokens: usize,
    seconds: f64,
}

#[derive(Serialize)]
struct TextInfo {
    /// Tokens counted: all of the text's, or at least the limit asked for.
    tokens: usize,
    /// Calibration windows of `calib_len` the text holds.
    windows: usize,
    /// Whether the whole text was counted (else it holds more than `tokens`).
    complete: bool,
}

/// What a streamed model cannot do in the page.
fn needs_memory(what: &str) -> JsValue {
    input_err(&format!(
        "{what} needs the model's layers in memory, and this model is read from its files a layer at a time (it is too \
         large for the page to hold whole); pruning, perplexity, generation and the download work"
    ))
}

/// One model loaded in the page, and the last prune of it.
///
/// Pruning consumes the loaded model layer by layer (`prune::prune_owned`), so the page never holds
/// the original and the pruned model at once during a job. The original is read again from the
/// files it came from (kept as `File` handles, outside wasm memory) when it is needed afterwards:
/// for another prune, or to generate with it.
#[wasm_bindgen]
pub struct Session {
    files: Vec<File>,
    /// The model is read from its files as it is used ([`load::stream_named`]): too large to hold
    /// in the page, or asked for. Its layers are in `source_layers` and, after a prune, the pruned
    /// model's in `pruned_layers`; held in memory, both are `None`.
    streamed: bool,
    source_layers: Option<Box<dyn LayerStore>>,
    pruned_layers: Option<Box<dyn LayerStore>>,
    /// Tokenizer and side files; its `model` is the original while `source_alive`, else the pruned one.
    bundle: Option<Bundle>,
    source_alive: bool,
    source_name: String,
    source_sha256: Option<String>,
    done: Option<Done>,
    /// The WebGPU offload the kernels use, when the page gave a bridge.
    gpu: Option<std::rc::Rc<gpu::BridgeOffload>>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl Session {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Session {
        Session {
            files: Vec::new(),
            streamed: false,
            source_layers: None,
            pruned_layers: None,
            bundle: None,
            source_alive: false,
            source_name: String::new(),
            source_sha256: None,
            done: None,
            gpu: None,
        }
    }

    /// Runs the large matrix products on the GPU worker behind `bridge` (`www/gpu-bridge.js`), or,
    /// with `undefined`, on the CPU again.
    pub fn set_gpu(&mut self, bridge: Option<GpuBridge>) {
        if let Some(old) = self.gpu.take() {
            old.forget();
        }
        self.gpu = bridge.map(|b| std::rc::Rc::new(gpu::BridgeOffload::new(b)));
        crate::kernels::set_offload(self.gpu.clone().map(|g| g as std::rc::Rc<dyn crate::kernels::Offload>));
    }

    /// `{on, failed, products}`: whether the GPU is in use, whether it failed (the CPU took over),
    /// and how many products it has computed.
    pub fn gpu_state(&self) -> JsValue {
        let (on, failed, calls) = match &self.gpu {
            Some(g) => (true, g.failed(), g.calls.get()),
            None => (false, false, 0),
        };
        let o = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&o, &"on".into(), &on.into());
        let _ = js_sys::Reflect::set(&o, &"failed".into(), &failed.into());
        let _ = js_sys::Reflect::set(&o, &"products".into(), &(calls as f64).into());
        o.into()
    }

    /// One matrix product timed on the CPU and on the GPU behind `bridge` (see
    /// [`gpu::time_product`]): `{cpu_ms, gpu_ms}`, `gpu_ms` null where the GPU failed. Run before
    /// a session takes the bridge: it leaves the kernels on the CPU.
    pub fn time_gpu(bridge: GpuBridge) -> std::result::Result<JsValue, JsValue> {
        #[derive(Serialize)]
        struct Trial {
            cpu_ms: f64,
            gpu_ms: Option<f64>,
        }
        let (cpu_ms, gpu_ms) = gpu::time_product(bridge).map_err(js_err)?;
        to_js(&Trial { cpu_ms, gpu_ms })
    }

    /// Names this engine `token` in what it says when an allocation fails: on any of its threads,
    /// before that thread aborts, `{token, failed, live}` (bytes) goes out on the BroadcastChannel
    /// "podar-engine". A worker of the thread pool that aborts leaves the engine waiting for it
    /// for ever; this message is how the page learns why, and ends the engine.
    pub fn tell_failed_allocations(token: u32) {
        ENGINE_TOKEN.store(token, std::sync::atomic::Ordering::Relaxed);
        crate::memory::on_failed_allocation(tell_failed_allocation);
    }

    /// The engine's heap: `{live, peak}`, the bytes in use now and the most in use at once since
    /// the engine started (inside wasm memory, which only grows: the difference is free space).
    pub fn heap() -> JsValue {
        #[derive(Serialize)]
        struct Heap {
            live: usize,
            peak: usize,
        }
        to_js(&Heap { live: crate::memory::live(), peak: crate::memory::peak() }).unwrap_or(JsValue::NULL)
    }

    /// Caps the engine's heap at `bytes` (a test knob: out of memory on a small model), or lifts
    /// the cap (`undefined`).
    pub fn set_memory_limit(bytes: Option<f64>) {
        crate::memory::set_cap(bytes.map(|b| b.max(0.0) as usize));
    }

    /// After a trap: `{failed, live}` in bytes when an allocation failed since the last
    /// call of this (the engine ran out of memory), else null (the trap was a bug). Read before
    /// each call, to start it with nothing noted.
    pub fn take_failed_allocation() -> JsValue {
        #[derive(Serialize)]
        struct Failed {
            failed: usize,
            live: usize,
        }
        let failed = crate::memory::failed_allocation();
        crate::memory::clear_failed_allocation();
        if failed == 0 {
            return JsValue::NULL;
        }
        to_js(&Failed { failed, live: crate::memory::live() }).unwrap_or(JsValue::NULL)
    }

    /// Threads the CPU kernels use (1 unless the page runs wasm threads).
    pub fn threads() -> usize {
        crate::kernels::threads()
    }

    /// Bytes of wasm memory now; wasm memory never shrinks, so this is also the peak so far.
    pub fn memory_bytes() -> f64 {
        // `buffer` is an ArrayBuffer, or a SharedArrayBuffer in the threaded build: read its length by name.
        wasm_bindgen::memory()
            .dyn_into::<js_sys::WebAssembly::Memory>()
            .ok()
            .and_then(|m| js_sys::Reflect::get(&m.buffer(), &JsValue::from_str("byteLength")).ok())
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    }

    /// Reads only the headers of the chosen files: architecture, sizes and parameters.
    pub fn inspect(&self, files: js_sys::Array) -> std::result::Result<JsValue, JsValue> {
        let files = files_of(&files)?;
        page_can_use(&load::pick_files(&files.iter().map(name_of).collect::<Vec<_>>()).map_err(js_err)?)?;
        let summary = load::inspect_named(named(&files).map_err(js_err)?).map_err(js_err)?;
        to_js(&summary)
    }

    /// Loads a model (one `.gguf`, or a Hugging Face folder's files): hashes the weights for the
    /// report, then reads every tensor; `progress("hash" | "load", done, total)`. `stream`: `true`
    /// leaves the layers and tables in the files, read as they are used; `false` reads them into
    /// memory; `undefined` streams only a model too large to hold.
    pub fn load(
        &mut self,
        files: js_sys::Array,
        progress: &Function,
        stream: Option<bool>,
    ) -> std::result::Result<JsValue, JsValue> {
        self.bundle = None;
        self.done = None;
        self.source_alive = false;
        self.source_layers = None;
        self.pruned_layers = None;
        if let Some(g) = &self.gpu {
            g.forget();
        }
        let files = files_of(&files)?;
        let names: Vec<String> = files.iter().map(name_of).collect();
        let picked = load::pick_files(&names).map_err(js_err)?;
        page_can_use(&picked)?;
        let weights: Vec<&File> = match &picked {
            Picked::Gguf(i) => vec![&files[*i]],
            Picked::Hf { shards, .. } => shards.iter().map(|&i| &files[i]).collect(),
        };
        // Headers only, before the weights are hashed or read: a model too big for the page is
        // refused with its numbers instead of running out of memory partway through.
        let summary = load::inspect_named(named(&files).map_err(js_err)?).map_err(js_err)?;
        let held = load::fits_in_page(summary.parameters);
        let streamed = stream.unwrap_or(held.is_err());
        if streamed { load::fits_streamed_in_page(&summary) } else { held }.map_err(js_err)?;
        let total: f64 = weights.iter().map(|f| f.size()).sum();
        let mut hashed = 0f64;
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        for f in &weights {
            let mut r = BlobReader::new((*f).clone().into())?;
            let mut buf = vec![0u8; SLICE as usize];
            loop {
                let n = r.read(&mut buf).map_err(|e| js_err(e.into()))?;
                if n == 0 {
                    break;
                }
                sha2::Digest::update(&mut h, &buf[..n]);
                hashed += n as f64;
                if !ask(progress, "hash", (hashed / 1e6) as usize, (total / 1e6) as usize) {
                    return Err(js_err(Error::Cancelled));
                }
            }
        }
        let sha = format!("{:x}", sha2::Digest::finalize(h));
        // A GGUF is named by its file; a folder by its directory (when dropped or picked as one).
        let name = match &picked {
            Picked::Gguf(i) => files[*i].name(),
            Picked::Hf { config, .. } => {
                names[*config].rsplit_once('/').and_then(|(d, _)| d.rsplit('/').next()).unwrap_or("model").to_string()
            }
        };
        let bundle = if streamed {
            let (bundle, layers) = open_streamed(&files).map_err(js_err)?;
            self.source_layers = Some(layers);
            bundle
        } else {
            read_model(&files, &mut |d, t| ask(progress, "load", d, t)).map_err(js_err)?
        };
        let summary = to_js(&bundle.summary)?;
        self.streamed = streamed;
        self.files = files;
        self.source_name = name;
        self.source_sha256 = Some(sha);
        self.bundle = Some(bundle);
        self.source_alive = true;
        Ok(summary)
    }

    /// Whether the loaded model is read from its files as it is used (see `load`).
    #[wasm_bindgen(getter)]
    pub fn streamed(&self) -> bool {
        self.streamed
    }

    fn bundle(&self) -> std::result::Result<&Bundle, JsValue> {
        self.bundle.as_ref().ok_or_else(|| input_err("load a model first"))
    }

    /// The original's configuration, whether or not the original is still in memory.
    fn source_cfg(&self) -> std::result::Result<&crate::model::config::ModelConfig, JsValue> {
        match (self.source_alive, &self.done) {
            (false, Some(d)) => Ok(&d.source_cfg),
            _ => Ok(&self.bundle()?.model.cfg),
        }
    }

    /// The bundle (its tokenizer), and the original (`which == "source"`) or the pruned model with
    /// the store of its layers where they are streamed.
    #[allow(clippy::type_complexity)]
    fn model_for(
        &mut self,
        which: &str,
    ) -> std::result::Result<(&Bundle, &crate::Model, Option<&mut Box<dyn LayerStore>>), JsValue> {
        let Session { bundle, done, source_layers, pruned_layers, .. } = self;
        let b = bundle.as_ref().ok_or_else(|| input_err("load a model first"))?;
        Ok(match which {
            "source" => (b, &b.model, source_layers.as_mut()),
            _ => {
                let d = done.as_ref().ok_or_else(|| input_err("prune the model first"))?;
                (b, &d.pruned.model, pruned_layers.as_mut())
            }
        })
    }

    /// Makes sure `bundle.model` is the original, reading it again from its files if a prune used it.
    fn ensure_source(&mut self, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<()> {
        if self.source_alive && self.bundle.is_some() {
            return Ok(());
        }
        if self.files.is_empty() {
            return Err(Error::Input("load a model first".into()));
        }
        if self.streamed {
            let (bundle, layers) = open_streamed(&self.files)?;
            self.bundle = Some(bundle);
            self.source_layers = Some(layers);
        } else {
            self.bundle = Some(read_model(&self.files, progress)?);
        }
        self.source_alive = true;
        Ok(())
    }

    /// Per-layer influence and per-neuron scores of the original model on `text` (its first
    /// `samples × len` tokens), without pruning; `score` as in the pruning options (not `obs`).
    /// `progress("load" | "calibrate", layer, layers)`.
    pub fn importance(
        &mut self,
        text: &str,
        score: &str,
        samples: usize,
        len: usize,
        progress: &Function,
    ) -> std::result::Result<JsValue, JsValue> {
        let score = prune::Score::parse(score).map_err(js_err)?;
        if self.streamed {
            return Err(needs_memory("Scoring neurons without pruning"));
        }
        self.ensure_source(&mut |d, t| ask(progress, "load", d, t)).map_err(js_err)?;
        let b = self.bundle()?;
        crate::prune::calib::check_len(&b.model.cfg, len).map_err(js_err)?;
        let ids = b.tokenizer().and_then(|t| t.encode_prefix(text, samples.saturating_mul(len))).map_err(js_err)?.0;
        let ids = crate::prune::calib::windows(&ids, samples, len).map_err(js_err)?;
        let imp = prune::importance(&b.model, &ids, samples, len, score, prune::Precision::F32, &mut |d, t| {
            ask(progress, "calibrate", d, t)
        })
        .map_err(js_err)?;
        to_js(&imp)
    }

    /// Tokens in `text` (counted up to `limit` at least: a long text is not tokenized beyond what
    /// a job can use), and how many calibration windows of `calib_len` they fill.
    pub fn text_info(&self, text: &str, calib_len: usize, limit: usize) -> std::result::Result<JsValue, JsValue> {
        let tok = self.bundle()?.tokenizer().map_err(js_err)?;
        let (ids, complete) = tok.encode_prefix(text, limit).map_err(js_err)?;
        let n = ids.len();
        to_js(&TextInfo { tokens: n, windows: n / calib_len.max(1), complete })
    }

    /// Sizes after pruning with `options` (PruneOptions as JSON) in `format`/`dtype`, before any work.
    pub fn plan(&self, options: JsValue, format: &str, dtype: &str) -> std::result::Result<JsValue, JsValue> {
        let o: PruneOptions = serde_wasm_bindgen::from_value(options)?;
        let fmt = OutputFormat::parse(format, dtype).map_err(js_err)?;
        to_js(&job::plan(self.source_cfg()?, &o, fmt).map_err(js_err)?)
    }

    /// Prunes the original model for `text` (its first `calib_samples × calib_len` tokens calibrate).
    /// `progress("load" | "calibrate" | "score", layer, layers)`; "load" only when the original has
    /// to be read again because an earlier prune used it.
    pub fn prune(
        &mut self,
        text: &str,
        options: JsValue,
        progress: &Function,
    ) -> std::result::Result<JsValue, JsValue> {
        let o: PruneOptions = serde_wasm_bindgen::from_value(options)?;
        let cfg = self.source_cfg()?.clone();
        let b = self.bundle()?;
        // Checked as the download will be asked for: per-layer widths go out as GGUF only.
        let fmt = match o.mlp_widths {
            prune::Widths::PerLayer => OutputFormat::Gguf(crate::export::gguf::GgufDtype::F32),
            prune::Widths::Uniform => OutputFormat::Hf(crate::StorageDtype::F32),
        };
        job::plan(&cfg, &o, fmt).map_err(js_err)?;
        let want = o.calib_samples.saturating_mul(o.calib_len);
        let ids = b.tokenizer().and_then(|t| t.encode_prefix(text, want)).map_err(js_err)?.0;
        let calib = crate::prune::calib::windows(&ids, o.calib_samples, o.calib_len).map_err(js_err)?;
        let calib_ids = if o.calibrates() { Some(calib.as_slice()) } else { None };
        // The last prune's model goes first (also from the bundle, where it stands as the model the
        // page holds, so that it and the original read again are never in memory together), then
        // the original is consumed layer by layer.
        self.done = None;
        self.pruned_layers = None;
        if let (false, Some(b)) = (self.source_alive, self.bundle.as_mut()) {
            b.model = crate::model::transformer::Model::empty(b.model.cfg.clone()).map_err(js_err)?;
        }
        self.ensure_source(&mut |d, t| ask(progress, "load", d, t)).map_err(js_err)?;
        let t0 = js_sys::Date::now();
        // The original leaves the bundle (which keeps the tokenizer and side files, with a model
        // without weights) and is consumed layer by layer. Whatever becomes of the prune, the next
        // call that needs the original reads it again from its files.
        let Some(b) = self.bundle.as_mut() else {
            return Err(input_err("load a model first"));
        };
        let source =
            std::mem::replace(&mut b.model, crate::model::transformer::Model::empty(cfg.clone()).map_err(js_err)?);
        self.source_alive = false;
        let parameters_before = source.parameter_count();
        let progress = &mut |s: &str, d, t| ask(progress, s, d, t);
        let pruned = match self.source_layers.take() {
            // Streamed: the store's layers are replaced by the pruned ones as they are made.
            Some(mut layers) => {
                let pruned = prune::prune_in(source, layers.as_mut(), calib_ids, &o, progress).map_err(js_err)?;
                self.pruned_layers = Some(layers);
                pruned
            }
            None => prune::prune_owned(source, calib_ids, &o, progress).map_err(js_err)?,
        };
        let seconds = (js_sys::Date::now() - t0) / 1e3;
        let summary = to_js(&PruneSummary {
            parameters_before,
            parameters_after: pruned.model.parameter_count(),
            intermediate_before: cfg.intermediate_size,
            intermediate_after: pruned.model.cfg.intermediate_size,
            intermediate_sizes_after: pruned.model.cfg.intermediate_sizes.clone(),
            layers_before: cfg.num_hidden_layers,
            kept_layers: &pruned.kept_layers,
            kv_heads_before: cfg.num_key_value_heads,
            kept_kv_heads: &pruned.kept_heads,
            layer_influence: &pruned.layer_influence,
            block_distances: &pruned.block_distances,
            calib_tokens: pruned.calib_tokens,
            seconds,
        })?;
        if let Some(b) = self.bundle.as_mut() {
            b.model = pruned.model.clone();
        }
        self.done = Some(Done { pruned, options: o, calib_ids: calib, prune_seconds: seconds, source_cfg: cfg });
        Ok(summary)
    }

    /// Perplexity of the source (`which = "source"`) or pruned model on `text`, skipping its first
    /// `skip` tokens (the calibration part) and reading at most `max_tokens`, in windows of `ctx`.
    pub fn perplexity(
        &mut self,
        which: &str,
        text: &str,
        skip: usize,
        max_tokens: usize,
        ctx: usize,
        progress: &Function,
    ) -> std::result::Result<JsValue, JsValue> {
        if which == "source" {
            self.ensure_source(&mut |d, t| ask(progress, "load", d, t)).map_err(js_err)?;
        }
        let (b, model, layers) = self.model_for(which)?;
        let want = skip.saturating_add(max_tokens);
        let ids = b.tokenizer().and_then(|t| t.encode_prefix(text, want)).map_err(js_err)?.0;
        let rest = ids.get(skip..).unwrap_or_default();
        let rest = &rest[..rest.len().min(max_tokens)];
        let progress = &mut |d, t| ask(progress, "eval", d, t);
        let r = match layers {
            Some(layers) => crate::model::eval::perplexity_layered(model, layers.as_mut(), rest, ctx, progress),
            None => perplexity(model, rest, ctx, progress),
        }
        .map_err(js_err)?;
        to_js(&r)
    }

    /// Greedy continuation of `prompt` (through the chat template when `chat`), streaming the new
    /// text to `on_text(piece)`; returns the whole continuation. `on_text` returning `false` stops.
    pub fn generate(
        &mut self,
        which: &str,
        prompt: &str,
        max_tokens: usize,
        chat: bool,
        on_text: &Function,
    ) -> std::result::Result<String, JsValue> {
        if which == "source" {
            self.ensure_source(&mut |_, _| true).map_err(js_err)?;
        }
        let (b, model, store) = self.model_for(which)?;
        // A streamed model's layers come from its store a step at a time; a held one's are its own.
        let mut held;
        let layers: &mut dyn LayerStore = match store {
            Some(l) => l.as_mut(),
            None => {
                held = model.layers.clone();
                &mut held
            }
        };
        let tok = b.tokenizer().map_err(js_err)?;
        let text = if chat && tok.chat_template().is_some() {
            tok.apply_chat_template(prompt).map_err(js_err)?
        } else {
            prompt.to_string()
        };
        let ids = tok.encode(&text, false).map_err(js_err)?;
        let (mut out, mut shown) = (Vec::new(), String::new());
        crate::model::generate::greedy_layered(model, layers, &ids, max_tokens, &b.stop_ids(), &mut |id| {
            out.push(id);
            match tok.decode(&out) {
                // Only whole characters are shown: a token may end inside a UTF-8 sequence.
                Ok(s) if s.len() >= shown.len() && s.starts_with(&shown) && !s.ends_with('\u{fffd}') => {
                    let piece = s[shown.len()..].to_string();
                    shown = s;
                    on_text
                        .call1(&JsValue::NULL, &JsValue::from_str(&piece))
                        .map(|v| v.as_bool() != Some(false))
                        .unwrap_or(false)
                }
                _ => true,
            }
        })
        .map_err(js_err)?;
        tok.decode(&out).map_err(js_err)
    }

    /// Writes the pruned model in chunks to `on_chunk(Uint8Array)`: for `format = "hf"` a zip of the
    /// folder (model, tokenizer files, report, model card), for `"gguf"` the `.gguf` itself.
    /// `evals` (a list of `{name, before, after}`) goes into the report. Returns the file name.
    pub fn export(
        &mut self,
        format: &str,
        dtype: &str,
        evals: JsValue,
        on_chunk: &Function,
    ) -> std::result::Result<String, JsValue> {
        let Session { bundle, done, pruned_layers, source_name, source_sha256, .. } = self;
        let b = bundle.as_ref().ok_or_else(|| input_err("load a model first"))?;
        let d = done.as_ref().ok_or_else(|| input_err("prune the model first"))?;
        // The pruned layers: streamed, in their store; held, the model's own (shared, not copied).
        let mut held = d.pruned.model.layers.clone();
        let layers: &mut dyn LayerStore = match pruned_layers {
            Some(l) => l.as_mut(),
            None => &mut held,
        };
        let fmt = OutputFormat::parse(format, dtype).map_err(js_err)?;
        let evals: Vec<EvalPair> =
            if evals.is_undefined() || evals.is_null() { Vec::new() } else { serde_wasm_bindgen::from_value(evals)? };
        let file_name = job::file_name(source_name, format);
        let mut w = ChunkWriter { sink: on_chunk, buf: Vec::with_capacity(8 << 20), cap: 8 << 20 };
        let record = Record {
            source_name,
            source_sha256: source_sha256.clone(),
            source: &d.source_cfg,
            pruned: &d.pruned,
            options: &d.options,
            calib_ids: Some(&d.calib_ids),
            evals: &evals,
            seconds: Seconds::of_prune(d.prune_seconds, d.pruned.recovery_seconds),
        };
        match fmt {
            OutputFormat::Hf(_) => {
                // One folder inside, named as the archive: unpacking it spills no loose files.
                let folder = file_name.trim_end_matches(".zip");
                let mut z = ZipWriter::new(&mut w);
                job::write_model(b, &d.pruned.model, layers, fmt, &mut InFolder(folder, &mut z)).map_err(js_err)?;
                job::write_record(&record, &mut InFolder(folder, &mut z)).map_err(js_err)?;
                z.finish().map_err(js_err)?;
            }
            OutputFormat::Gguf(_) => {
                struct One<'a, 'b>(&'a mut ChunkWriter<'b>);
                impl FileSink for One<'_, '_> {
                    fn file(&mut self, _: &str, body: &mut dyn FnMut(&mut dyn Write) -> Result<()>) -> Result<()> {
                        body(self.0)
                    }
                }
                job::write_model(b, &d.pruned.model, layers, fmt, &mut One(&mut w)).map_err(js_err)?;
            }
        }
        w.flush().map_err(|e| js_err(e.into()))?;
        Ok(file_name)
    }

    /// The name `export` gives its file in `format` ("hf": a zip, "gguf"), known before it is
    /// written: a page asks where to save it first.
    pub fn export_name(&self, format: &str) -> String {
        job::file_name(&self.source_name, format)
    }
}
