// podar's JavaScript API: load a small language model in the browser, prune it for a domain (a text
// of the user's), measure what the pruning cost, and export the smaller model. Every computation runs
// in a Web Worker this module starts and owns (worker.js, with the WebAssembly engine); nothing leaves
// the machine. Types: index.d.ts; guide: docs/js-api.md in podar's repository.
//
//   const podar = await Podar.create();
//   const model = await podar.load(new URL('SmolLM2-135M-Instruct.Q4_1.gguf', location.href));
//   const pruned = await model.prune(myText, { mlp: 0.2 }, { onProgress: (p) => console.log(p) });
//   const file = await pruned.export({ format: 'gguf', dtype: 'q8_0' });

/**
 * Makes the page cross-origin isolated, for wasm threads, where its host sends no COOP/COEP headers
 * (GitHub Pages, most static hosts): registers podar's service worker (`coi-sw.js`, copied into the
 * page's folder; a service worker serves only its own folder and below) and reloads the page once
 * under it. Resolves to whether the page is isolated; it does not resolve when it reloads the page.
 * Call it before `Podar.create`.
 */
export async function isolate(serviceWorker = './coi-sw.js') {
  const key = 'podar-isolate-reloaded';
  if (self.crossOriginIsolated) {
    sessionStorage.removeItem(key);
    return true;
  }
  if (!('serviceWorker' in navigator) || !self.isSecureContext) return false;
  await navigator.serviceWorker.register(serviceWorker);
  // Reloaded once under the service worker and still not isolated: the browser will not have it.
  if (sessionStorage.getItem(key)) return false;
  await navigator.serviceWorker.ready;
  sessionStorage.setItem(key, '1');
  location.reload();
  return new Promise(() => {});
}

/** An error from podar: `code` names its kind for programs, `message` says it for people. */
export class PodarError extends Error {
  constructor(message, code = 'failed') {
    super(message);
    // An abort is an AbortError, as fetch's is.
    this.name = code === 'aborted' ? 'AbortError' : 'PodarError';
    this.code = code;
  }
}

// The core's messages name the command line's flags; the API names its options.
const OPTION_NAMES = {
  '--calib-samples': 'calibSamples', '--calib-len': 'calibLen', '--mlp-size': 'mlpSize', '--mlp': 'mlp',
  '--heads': 'heads', '--drop-layers-at': 'dropLayersAt', '--drop-layers': 'dropLayers', '--drop-block': 'dropBlock',
  '--divisor': 'divisor', '--correct': 'correct', '--error-estimate': 'correct', '--no-recover': 'recover: false',
  '--ridge': 'ridge', '--ctx': 'ctx', '--score': 'score',
};
const apiWords = (msg) => String(msg).replace(/--[a-z][a-z-]*/g, (f) => (OPTION_NAMES[f] ? `\`${OPTION_NAMES[f]}\`` : f));

const aborted = () => new PodarError('aborted', 'aborted');

/** Out of memory: `failed` bytes could not be had with `live` in use (under `limit`, if set). */
const outOfMemory = ({ failed, live }, limit) => {
  const size = (b) => (b >= 1e6 ? `${(b / 1e6).toFixed(0)} MB` : `${Math.ceil(b / 1e3)} KB`);
  return new PodarError(`out of memory: the engine could not get ${size(failed)} more with ${size(live)} in use ` +
    (limit ? `(its memoryLimit is ${size(limit)})` : '(a browser gives WebAssembly at most 4 GiB)'), 'out-of-memory');
};

/** The pruning options of the API, in the core's names (only those given: the core has defaults). */
function coreOptions(o = {}) {
  const known = ['mlp', 'mlpSize', 'divisor', 'score', 'recover', 'ridge', 'calibSamples', 'calibLen', 'heads',
    'dropLayers', 'dropLayersAt', 'dropBlock', 'sequential', 'correct', 'calibPrecision', 'mlpWidths'];
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw new PodarError(`unknown pruning option \`${k}\` (known: ${known.join(', ')})`, 'bad-input');
  }
  const out = {};
  const set = (core, v) => { if (v !== undefined && v !== null) out[core] = v; };
  set('mlp_fraction', o.mlp || undefined);
  set('mlp_size', o.mlpSize);
  set('divisor', o.divisor);
  set('score', o.score);
  set('recover', o.recover);
  set('ridge', o.ridge);
  set('calib_samples', o.calibSamples);
  set('calib_len', o.calibLen);
  set('heads', o.heads || undefined);
  set('drop_layers', o.dropLayers || undefined);
  set('drop_layers_at', o.dropLayersAt);
  set('drop_block', o.dropBlock || undefined);
  set('sequential', o.sequential);
  set('calib_precision', o.calibPrecision);
  set('mlp_widths', o.mlpWidths);
  // Error correction: a strength (0 = off), or how its error is estimated.
  if (o.correct === 'off' || o.correct === false) out.correct = 0;
  else if (o.correct === 'stream') out.error_estimate = 'stream';
  else if (typeof o.correct === 'number') out.correct = o.correct;
  else if (o.correct !== undefined && o.correct !== 'residuals' && o.correct !== true) {
    throw new PodarError('`correct` is a number from 0 to 1, "residuals", "stream" or "off"', 'bad-input');
  }
  return out;
}

const DEFAULTS = { calibSamples: 64, calibLen: 128 };

/** Files from what `load` accepts: File[], a FileList, one File or Blob, an ArrayBuffer or typed
 * array (a .gguf), or a directory handle (a Hugging Face folder). */
async function filesOf(source) {
  if (typeof FileSystemDirectoryHandle === 'function' && source instanceof FileSystemDirectoryHandle) {
    const files = [];
    for await (const entry of source.values()) {
      if (entry.kind === 'file' && !entry.name.startsWith('.')) files.push(await entry.getFile());
    }
    return files;
  }
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) return [new File([source], 'model.gguf')];
  if (source instanceof File) return [source];
  if (source instanceof Blob) return [new File([source], 'model.gguf')];
  if (Array.isArray(source) || (typeof FileList === 'function' && source instanceof FileList)) {
    const files = [...source];
    if (files.length && files.every((f) => f instanceof File)) return files;
  }
  throw new PodarError('load takes a URL, File[] (a .gguf, or a Hugging Face folder\'s files), a FileList, a ' +
    'FileSystemDirectoryHandle, a Blob or an ArrayBuffer', 'bad-input');
}

const textOf = async (t) => (typeof t === 'string' ? t : t instanceof Blob ? t.text() : Promise.reject(
  new PodarError('a text is a string, a File or a Blob', 'bad-input')));

/** Progress with the time left: each stage (download, load, calibrate…) counts from 0 again. */
function progressWithEta(onProgress) {
  if (!onProgress) return null;
  let stage = null;
  let t0 = 0;
  return (p) => {
    const now = performance.now();
    if (p.stage !== stage) { stage = p.stage; t0 = now; }
    const secs = (now - t0) / 1e3;
    const frac = p.total > 0 ? p.done / p.total : 0;
    const eta = frac > 0.02 && frac < 1 && secs >= 1 ? secs / frac - secs : null;
    onProgress({ stage: p.stage, done: p.done, total: p.total, eta });
  };
}

// Starts of the threaded engine whose pool does not start within POOL_START_MS before one without
// threads (Engine.start).
const POOL_TRIES = 2;
const POOL_START_MS = 10_000;

/** One worker and the calls it runs, one at a time. */
class Engine {
  constructor(options) {
    this.options = options;
    this.queue = Promise.resolve();
    this.pending = new Map();
    this.nextId = 1;
    // Cross-origin isolated: a shared flag stops the running call between two steps. Otherwise an
    // abort ends the worker, and a fresh one reads the model again.
    // (Its second slot counts an export's chunks on their way to a sink: see Pruned.export.)
    this.flagBuf = typeof SharedArrayBuffer === 'function' && self.crossOriginIsolated ? new SharedArrayBuffer(8) : null;
    this.flag = this.flagBuf ? new Int32Array(this.flagBuf) : null;
    this.generation = 0; // counts workers: a Model or Pruned of an earlier worker is gone
    this.reload = null; // how to read the model again in a new worker
    this.modelIn = 0; // the worker (generation) that holds the model
    this.memory = 0;
    // An allocation that fails on one of the engine's threads is said on this channel, with the
    // token of the engine's worker: a thread of the pool that stops leaves the engine silent.
    this.channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel('podar-engine') : null;
    if (this.channel) {
      this.channel.onmessage = (e) => {
        if (this.worker && e.data?.token === this.token) this.died(outOfMemory(e.data, this.options.memoryLimit));
      };
    }
  }

  async start() {
    // A thread pool that has not started in time is a frozen worker: another one is started, and
    // after POOL_TRIES such starts, one without threads.
    for (let attempt = 1; ; attempt++) {
      const threads = this.options.threads !== false && attempt <= POOL_TRIES;
      try {
        this.info = await this.startWorker(threads, attempt <= (this.options.freezePool || 0));
      } catch (e) {
        if (e.code !== 'pool-frozen') throw e;
        console.warn(`podar: ${e.message}; starting the engine again${attempt < POOL_TRIES ? '' : ' without threads'}`);
        continue;
      }
      if (attempt > POOL_TRIES) this.info.threadsFailed = `threads unavailable: the thread pool did not start in ${POOL_TRIES} tries`;
      this.gpu = this.info.gpu;
      return this.info;
    }
  }

  // One worker, started with or without threads. Firefox has now and then frozen the engine's
  // worker while it created its pool's workers (about one start in 30 on a busy 2-core machine,
  // found by a test that only started the engine): no timer in a frozen worker fires, so the
  // time limit on that step is kept here, from the moment the worker says it began it.
  async startWorker(threads, freezePool) {
    // Written out in this one form, which bundlers recognise: they bundle the worker and copy its files.
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.generation++;
    let poolTimer = null;
    // (The test knob freezePool makes the wait short.)
    const limit = this.options.freezePool ? 2_000 : POOL_START_MS;
    this.worker.onmessage = (e) => {
      if (e.data?.starting === 'threads') {
        poolTimer = setTimeout(() => {
          this.died(new PodarError(`the thread pool did not start within ${limit / 1e3} s`, 'pool-frozen'));
        }, limit);
        return;
      }
      this.receive(e.data);
    };
    this.worker.onerror = (e) => {
      e.preventDefault();
      // A module worker whose script cannot load fires a plain Event.
      const why = e instanceof ErrorEvent ? e.message : 'its script did not load (module workers unsupported, or files missing)';
      this.died(new PodarError(`the engine stopped: ${why}`, 'engine-crashed'));
    };
    const { simd, gpu, useGpu, memoryLimit } = this.options;
    this.token = (Math.random() * 2 ** 32) >>> 0;
    try {
      return await this.send('init', { flag: this.flagBuf, threads, simd, gpu, useGpu, memoryLimit, freezePool,
        token: this.token, gpuChoice: this.gpuChoice ?? null });
    } finally {
      clearTimeout(poolTimer);
    }
  }

  receive(m) {
    if (m.memory) this.memory = m.memory;
    if (m.heap) this.heap = m.heap;
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.gpu) this.gpu = m.gpu;
    if (m.progress) return p.onProgress && p.onProgress(m.progress);
    if (m.text !== undefined) return p.onText && p.onText(m.text);
    if (m.chunk) return p.onChunk && p.onChunk(m.chunk);
    this.pending.delete(m.id);
    if (m.error === undefined) return p.resolve(m.ok);
    p.reject(m.failed ? outOfMemory(m.failed, this.options.memoryLimit) : new PodarError(apiWords(m.error), m.code || 'failed'));
    // A trap (out of memory, or a bug) leaves the engine unusable: the next call starts a new one.
    if (m.fatal) this.restart();
  }

  // Posts one message; the promise settles with the worker's answer.
  send(cmd, args = {}, hooks = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...hooks });
      this.worker.postMessage({ id, cmd, ...args });
    });
  }

  died(err) {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.restart();
  }

  // Ends this worker; the next call starts a fresh one and reads the model into it again.
  restart() {
    this.worker?.terminate();
    this.worker = null;
  }

  /** Whether the engine stopped (a crash, or an abort without cross-origin isolation): the next
   * call starts a fresh one, and reads the model into it again. */
  get stopped() {
    return !this.worker && !this.disposed;
  }

  /**
   * Runs `cmd` after the calls before it; `signal` aborts it (or drops it, if it has not begun). A
   * stopped engine is started first, and a call that needs the model reads it again (with its
   * progress, and under its signal).
   */
  run(cmd, args, { signal, onProgress, onText, onChunk, needsModel = true } = {}) {
    const go = async () => {
      if (this.disposed) throw new PodarError('this podar instance was disposed', 'disposed');
      if (signal?.aborted) throw aborted();
      const onAbort = () => {
        if (this.flag && this.worker) {
          Atomics.store(this.flag, 0, 1);
          this.worker.postMessage({ cmd: 'cancel' });
        } else {
          this.died(aborted());
        }
      };
      signal?.addEventListener('abort', onAbort);
      const hooks = { onProgress: progressWithEta(onProgress), onText, onChunk };
      try {
        if (this.flag) this.flag.fill(0);
        if (!this.worker) await this.start();
        if (needsModel && this.reload && this.modelIn !== this.generation) {
          try {
            await this.send(this.reload.cmd, this.reload.args, hooks);
            this.modelIn = this.generation;
          } catch (e) {
            // A worker without the model is of no use to the calls after this one: they start again.
            this.restart();
            throw e;
          }
        }
        return await this.send(cmd, args, hooks);
      } catch (e) {
        throw signal?.aborted ? aborted() : e;
      } finally {
        signal?.removeEventListener('abort', onAbort);
        if (this.flag) Atomics.store(this.flag, 0, 0);
      }
    };
    const result = this.queue.then(go, go);
    this.queue = result.catch(() => {});
    return result;
  }

  dispose() {
    this.died(new PodarError('this podar instance was disposed', 'disposed'));
    this.disposed = true;
    this.channel?.close();
  }
}

/** The engine: a worker with the WebAssembly build this browser runs best. */
export class Podar {
  /**
   * Starts the engine. `threads`: "auto" (wasm threads where the page is cross-origin isolated) or
   * false; `gpu`: "auto" (WebGPU's matrix products on a hardware adapter), "any" (a software
   * adapter too: for tests, it is slower than the CPU) or false; `simd`:
   * "auto" (relaxed SIMD where the browser validates it) or "plain"; `useGpu: false` starts on the
   * CPU with the adapter at hand (`setGpu` switches). `memoryLimit` (bytes) caps the engine's heap:
   * a test knob, to see out-of-memory handled on a small model.
   */
  static async create({ threads = 'auto', gpu = 'auto', simd = 'auto', useGpu = true, memoryLimit, freezePool } = {}) {
    const engine = new Engine({ threads, gpu, simd, useGpu, memoryLimit, freezePool });
    try {
      await engine.start();
    } catch (e) {
      // (Its worker and channel go with it.)
      engine.dispose();
      throw e;
    }
    return new Podar(engine);
  }

  constructor(engine) {
    this.engine = engine;
    this.model = null;
  }

  /** What this browser gives the engine. */
  get capabilities() {
    const i = this.engine.info;
    const g = this.engine.gpu || i.gpu;
    return {
      simd: true,
      relaxedSimd: i.simd === 'relaxed SIMD',
      threads: i.threads,
      threadsUnavailable: i.threadsFailed || (this.engine.flag ? null : 'the page is not cross-origin isolated'),
      crossOriginIsolated: !!self.crossOriginIsolated,
      webgpu: g && g.available
        ? { adapter: g.info, inUse: g.on && !g.failed, failed: g.failed, error: g.error, products: g.products, trial: g.trial }
        : null,
      webgpuUnavailable: g && !g.available ? g.info : null,
      maxMemoryBytes: 4 * 2 ** 30,
    };
  }

  /** Bytes of wasm memory the engine holds (wasm memory never shrinks: also its peak). */
  get memoryBytes() {
    return this.engine.memory;
  }

  /** The engine's heap after the last call: `{live, peak}`, the bytes in use and the most in use at
   * once since the engine started. They live inside `memoryBytes`, which only grows: a `live` that
   * stays flat from job to job while `memoryBytes` grows is fragmentation, not a leak. */
  get heap() {
    return this.engine.heap || { live: 0, peak: 0 };
  }

  /** Whether the engine stopped (a crash, or an abort where the page is not cross-origin
   * isolated). The next call starts a fresh engine and reads the model into it again; `restart`
   * does so now. */
  get stopped() {
    return this.engine.stopped;
  }

  /**
   * Starts a fresh engine now and reads the loaded model into it again (with progress, under
   * `signal`); calls in flight reject with code "aborted". The model stays usable; a pruned model
   * does not (prune again). Resolves to whether a model was read again.
   */
  async restart({ onProgress, signal } = {}) {
    this.engine.died(new PodarError('the engine was restarted', 'aborted'));
    await this.engine.run('ping', {}, { onProgress, signal });
    return this.engine.reload !== null;
  }

  /**
   * Runs the large matrix products on WebGPU (`on`), or on the CPU; kept across restarts. Rejects
   * with code "gpu" where no adapter is at hand. Resolves to `capabilities.webgpu`.
   */
  async setGpu(on) {
    // (A stopped engine starts again without reading the model for this: the next call that needs it does.)
    await this.engine.run('setGpu', { on: !!on }, { needsModel: false });
    this.engine.gpuChoice = !!on;
    return this.capabilities.webgpu;
  }

  /** A model's summary from its headers alone, before any weight is read: local files only (see
   * `load`), of any size (`load` refuses one too large for the engine). */
  async inspect(source, { signal } = {}) {
    const r = await this.engine.run('inspect', { files: await filesOf(source) }, { signal, needsModel: false });
    return summaryOf(r, []);
  }

  /**
   * Loads a model: a URL (of a .gguf, or of a Hugging Face folder holding config.json,
   * tokenizer.json and *.safetensors), or files (see `filesOf`). Reads the headers first, so a model
   * too large for the page is refused before its weights are read. Replaces the model loaded before.
   */
  async load(source, { onProgress, signal, cache = false, stream = 'auto' } = {}) {
    let cmd, args;
    // (undefined: the engine streams a model only when it is too large to hold.)
    const streamArg = stream === true || stream === false ? stream : undefined;
    if (source instanceof URL || typeof source === 'string') {
      const url = new URL(String(source), self.location.href).href;
      cmd = 'loadUrl';
      args = { url, cache, stream: streamArg };
    } else {
      cmd = 'load';
      args = { files: await filesOf(source), stream: streamArg };
    }
    this.engine.reload = null;
    if (this.model) this.model.gone = true;
    const r = await this.engine.run(cmd, args, { signal, onProgress, needsModel: false });
    this.engine.reload = { cmd, args };
    this.engine.modelIn = this.engine.generation;
    this.model = new Model(this.engine, r.summary, r.names, r.streamed, r.exportNames);
    if (r.cache) this.model.cache = r.cache;
    return this.model;
  }

  /** The models kept by `load(url, {cache: true})`, in the Cache API of this site. */
  get cache() {
    return modelCache;
  }

  /** Ends the engine's workers; every later call fails with code "disposed". */
  dispose() {
    this.engine.dispose();
  }
}

const CACHE = 'podar-models';
const modelCache = {
  /** `[{url, bytes, stored}]`: every file kept (a Hugging Face folder keeps each of its files). */
  async list() {
    if (typeof caches !== 'object') return [];
    const store = await caches.open(CACHE);
    const out = [];
    for (const req of await store.keys()) {
      const res = await store.match(req);
      out.push({ url: req.url, bytes: Number(res?.headers.get('x-podar-bytes')) || 0, stored: res?.headers.get('x-podar-stored') || null });
    }
    return out;
  },
  /** Deletes the file kept for `url`, or every kept file; resolves to whether anything was deleted. */
  async delete(url) {
    if (typeof caches !== 'object') return false;
    if (url === undefined) return caches.delete(CACHE);
    return (await caches.open(CACHE)).delete(new URL(String(url), self.location.href).href);
  },
};

/** The core's summary of a model, in the API's names. */
const summaryOf = (s, files) => ({
  architecture: s.architecture, format: s.format, dtype: s.dtype,
  layers: s.num_hidden_layers, hidden: s.hidden_size, mlp: s.intermediate_size,
  ...(s.intermediate_sizes ? { mlpPerLayer: s.intermediate_sizes } : {}),
  heads: s.num_attention_heads, kvHeads: s.num_key_value_heads, headDim: s.head_dim,
  vocabulary: s.vocab_size, parameters: s.parameters, tiedEmbeddings: s.tie_word_embeddings,
  files,
});

/** A loaded model. Only the most recently loaded model of a Podar is usable. */
export class Model {
  constructor(engine, summary, files, streamed = false, exportNames = {}) {
    this.engine = engine;
    this.exportNames = exportNames;
    /** Architecture, sizes and parameters, from the headers. */
    this.summary = summaryOf(summary, files);
    /** Whether its layers are read from its files as they are used (too large to hold, or asked
     * for with `load(…, {stream: true})`): pruning, perplexity, generation
     * (every layer read once per new token) and export work; `importance` does not. */
    this.streamed = streamed;
    this.pruned = null;
    /** For a URL loaded with {cache: true}: files read from the cache, files stored, and why a file
     * could not be stored (a full quota, say), or null. */
    this.cache = null;
  }

  check() {
    if (this.gone) throw new PodarError('another model was loaded since: this one is gone', 'superseded');
  }

  /**
   * A domain text, counted in this model's tokens: `tokens`, and `enough` for calibration with
   * `calibSamples` windows of `calibLen` tokens (the pruning options' defaults unless given);
   * `windows` of calibLen it holds. A long text is counted up to `limit` tokens (default: what the
   * calibration needs); `complete` says whether the count reached its end.
   */
  async text(text, { calibSamples = DEFAULTS.calibSamples, calibLen = DEFAULTS.calibLen, limit, signal } = {}) {
    this.check();
    const s = await textOf(text);
    const need = calibSamples * calibLen;
    const r = await this.engine.run('textInfo', { text: s, calibLen, limit: Math.max(need, limit || 0) }, { signal });
    return { text: s, tokens: r.tokens, complete: r.complete, windows: r.windows, need, enough: r.tokens >= need };
  }

  /**
   * What the model does with `text`, without pruning it: per layer, how much it changes the
   * residual stream (1 − cos(in, out)), and per layer and MLP neuron, its score (`score`, as in
   * the pruning options; higher is kept first). Reads the first calibSamples × calibLen tokens.
   */
  async importance(text, { score = 'energy', calibSamples = DEFAULTS.calibSamples, calibLen = DEFAULTS.calibLen,
    onProgress, signal } = {}) {
    this.check();
    const s = await textOf(text);
    const r = await this.engine.run('importance', { text: s, score, samples: calibSamples, len: calibLen },
      { signal, onProgress });
    return { score: r.score, tokens: r.tokens, layerInfluence: r.layer_influence, neurons: r.mlp };
  }

  /** Sizes after pruning with `options`, and in the export's format, before any work. */
  async plan(options = {}, { format = 'hf', dtype = 'f32' } = {}) {
    this.check();
    const p = await this.engine.run('plan', { options: coreOptions(options), format, dtype });
    return {
      parametersBefore: p.parameters_before, parametersAfter: p.parameters_after,
      layersBefore: p.layers_before, layersAfter: p.layers_after, mlpBefore: p.intermediate_before,
      mlpAfter: p.intermediate_after, kvHeadsBefore: p.kv_heads_before, kvHeadsAfter: p.kv_heads_after,
      fileBytes: p.bytes_after, calibrationTokens: p.calib_tokens, warnings: p.warnings,
    };
  }

  /**
   * Prunes this model for `domain` (a string, File, or what `text()` returned): its first
   * calibSamples × calibLen tokens calibrate. Resolves to the pruned model; the original stays
   * loaded (it is read again from its source when needed).
   */
  async prune(domain, options = {}, { onProgress, signal } = {}) {
    this.check();
    const text = typeof domain === 'object' && domain !== null && 'text' in domain && !(domain instanceof Blob)
      ? domain.text : await textOf(domain);
    const core = coreOptions(options);
    if (!['mlp_fraction', 'mlp_size', 'heads', 'drop_layers', 'drop_layers_at', 'drop_block'].some((k) => k in core)) {
      throw new PodarError('nothing to prune: give mlp (e.g. 0.2), mlpSize, heads, dropLayers, dropLayersAt or dropBlock',
        'bad-input');
    }
    if (this.pruned) this.pruned.gone = true;
    const r = await this.engine.run('prune', { text, options: core }, { signal, onProgress });
    this.pruned = new Pruned(this, r, core, this.engine.generation);
    return this.pruned;
  }

  /**
   * Perplexity of this model on `text` (lower is better): `skip` tokens first (a domain text's
   * calibration part), then at most `maxTokens`, in windows of `ctx` tokens.
   */
  async perplexity(text, options = {}) {
    this.check();
    return perplexity(this.engine, 'source', text, options);
  }

  /** Greedy continuation of `prompt`, piece by piece (through the chat template with `chat`). */
  async* generate(prompt, options = {}) {
    this.check();
    yield* generate(this.engine, 'source', prompt, options);
  }
}

async function perplexity(engine, which, text, { skip = 0, maxTokens = 1024, ctx = 256, signal, onProgress } = {}) {
  const s = await textOf(text);
  const r = await engine.run('eval', { which, text: s, skip, maxTokens, ctx }, { signal, onProgress });
  return { perplexity: r.perplexity, predictions: r.predictions, tokens: r.tokens, nll: r.nll };
}

async function* generate(engine, which, prompt, { maxTokens = 48, chat = false, signal } = {}) {
  const pieces = [];
  let wake = null;
  let finished = false;
  let failure = null;
  const poke = () => { if (wake) { wake(); wake = null; } };
  // The caller's signal, or leaving the loop early (break), stops the engine's generation.
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  signal?.addEventListener('abort', onAbort);
  if (signal?.aborted) stop.abort();
  engine.run('generate', { which, prompt, maxTokens, chat }, {
    signal: stop.signal, onText: (piece) => { pieces.push(piece); poke(); },
  }).then(() => { finished = true; poke(); }, (e) => { failure = e; poke(); });
  try {
    for (;;) {
      // Pieces that arrived after an abort are not given out.
      if (signal?.aborted) throw aborted();
      if (pieces.length) { yield pieces.shift(); continue; }
      if (failure) throw failure;
      if (finished) return;
      await new Promise((ok) => { wake = ok; });
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    if (!finished && !failure) stop.abort();
  }
}

/** A pruned model: the last prune of a Model, until it prunes again or another model is loaded. */
export class Pruned {
  constructor(model, r, options, generation) {
    this.model = model;
    this.options = options;
    this.engine = model.engine;
    this.generation = generation;
    /** The calibration tokens the prune read: skip them to measure on the held-out rest. */
    this.calibTokens = r.calib_tokens;
    /** What the prune did: sizes before and after, what was kept, and its seconds. */
    this.report = {
      parametersBefore: r.parameters_before, parametersAfter: r.parameters_after,
      mlpBefore: r.intermediate_before, mlpAfter: r.intermediate_after,
      ...(r.intermediate_sizes_after ? { mlpPerLayer: r.intermediate_sizes_after } : {}),
      layersBefore: r.layers_before, keptLayers: r.kept_layers,
      kvHeadsBefore: r.kv_heads_before, keptKvHeads: r.kept_kv_heads,
      calibrationTokens: r.calib_tokens, seconds: r.seconds,
    };
    /** Per layer, how much it changes the residual stream on the domain text (1 − cos(in, out)). */
    this.layerInfluence = r.layer_influence;
    /** For each run of layers, how close its input and output are (what dropping a block costs). */
    this.blockDistances = r.block_distances;
  }

  check() {
    this.model.check();
    if (this.gone) throw new PodarError('the model was pruned again since: this pruned model is gone', 'superseded');
    if (this.generation !== this.engine.generation) {
      throw new PodarError('the engine was restarted (an abort without cross-origin isolation, or a crash): prune again',
        'superseded');
    }
  }

  /** Perplexity of the pruned model, as `Model.perplexity`. */
  async perplexity(text, options = {}) {
    this.check();
    return perplexity(this.engine, 'pruned', text, options);
  }

  /** Greedy continuation with the pruned model, as `Model.generate`. */
  async* generate(prompt, options = {}) {
    this.check();
    yield* generate(this.engine, 'pruned', prompt, options);
  }

  /** The name `export` gives its file in `format`, known before it is written (a suggested name
   * for `showSaveFilePicker`, say). */
  fileName(format = 'hf') {
    return this.model.exportNames[format === 'gguf' ? 'gguf' : 'hf'];
  }

  /**
   * The pruned model as a File: `format: "hf"` a zip of a Hugging Face folder (safetensors,
   * config, tokenizer, report, model card) in `dtype` f32, f16 or bf16; `"gguf"` one .gguf in f32,
   * f16 or q8_0. `evals` (`[{name, before, after}]`) go into the report.
   *
   * With `to`, a WritableStream (a file the user picked: `(await showSaveFilePicker()).createWritable()`),
   * the file is written there as it is made and never held whole: what a model of several GB
   * needs. The stream is closed when the file is complete (a picked file then appears on disk) and
   * aborted on any failure or abort; it resolves to `{name, size}`. Cross-origin isolated, the
   * engine waits for a slow stream, so at most a few 8 MiB chunks are in memory at once.
   */
  async export({ format = 'hf', dtype = 'f32', evals = [], to, onProgress, signal } = {}) {
    this.check();
    if (to !== undefined && typeof to?.getWriter !== 'function') {
      throw new PodarError('`to` is a WritableStream (from FileSystemFileHandle.createWritable(), say)', 'bad-input');
    }
    // The plan's size of the file, for the progress's total.
    const plan = await this.engine.run('plan', { options: this.options, format, dtype }).catch(() => null);
    const args = { format, dtype, evals, expectBytes: plan?.bytes_after || 0, sink: to !== undefined };
    if (!to) {
      const r = await this.engine.run('export', args, { signal, onProgress });
      return new File([r.blob], r.name, { type: r.blob.type });
    }
    return toSink(this.engine, args, to, { signal, onProgress });
  }
}

// An export written chunk by chunk to the WritableStream `to`, in order. Each chunk written lowers
// the engine's count of chunks on their way (flag[1]), which lets the engine go on; a failed write
// stops the export (as an abort would) and is what the call throws.
async function toSink(engine, args, to, { signal, onProgress }) {
  const writer = to.getWriter();
  let writing = Promise.resolve();
  let failed = null;
  const onChunk = (chunk) => {
    writing = writing.then(() => failed || writer.write(chunk)).then(() => {
      if (engine.flag) {
        Atomics.sub(engine.flag, 1, 1);
        Atomics.notify(engine.flag, 1);
      }
    }, (e) => {
      failed ||= new PodarError(`writing the file failed: ${e?.message || e}`, 'write-failed');
      if (engine.flag) Atomics.store(engine.flag, 0, 1);
    });
  };
  try {
    const r = await engine.run('export', args, { signal, onProgress, onChunk });
    await writing;
    if (failed) throw failed;
    await writer.close();
    return { name: r.name, size: r.size };
  } catch (e) {
    await writing;
    await writer.abort(failed || e).catch(() => {});
    throw failed || e;
  } finally {
    writer.releaseLock();
  }
}
