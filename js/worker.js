// All of podar's Rust runs here, in a module Web Worker: the engine behind the JavaScript API
// (index.js starts it and is the only one to speak its protocol; the page in www/ uses the API).
// Protocol: {id, cmd, ...args} in; {id, progress: {stage, done, total}}, {id, text}, {id, chunk}
// (an export's bytes, for a sink), and finally {id, ok, memory} or {id, error, code, fatal} out
// (code: see PodarError in index.js). A shared Int32Array flag (set on abort) makes every progress
// callback answer "stop", and the running call ends with "cancelled"; its second slot counts an
// export's chunks on their way to the sink.
// The threaded build (wasm threads over a pool of workers) when the page is cross-origin isolated
// and the build exists, else the single-threaded one (podar.js beside this file). Threaded:
// threads-relaxed/ (relaxed SIMD: fused multiply-adds) where the browser validates relaxed SIMD,
// else threads/.
// `init`'s options: {threads: false} forces the single-threaded build, {simd: 'plain'} plain SIMD.
// WebGPU: when the page is cross-origin isolated and an adapter exists, a GPU worker
// (gpu-worker.js, started through gpu-bridge.js) runs the large matrix products; {gpu: false} skips
// it, and {gpu: 'any'} accepts a software adapter too (for tests: it is slower than the CPU). With
// {gpu: 'auto'} one matrix product is timed on both, and the GPU is used only where it was faster
// ({useGpu: false} starts on the CPU in any case; setGpu switches later).
import { GpuBridge } from './gpu-bridge.js';

// An Error with a code (see PodarError in index.js).
const coded = (msg, code) => Object.assign(new Error(msg), { code });

let podar = null;
let bridge = null;
let gpuReason = '';
// A module whose one function uses f32x4.relaxed_madd: valid only where relaxed SIMD is.
const RELAXED_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 61, 1, 59, 0,
  ...[0, 1, 2].flatMap(() => [253, 12, ...new Array(16).fill(0)]), 253, 133, 2, 11]);
// A module whose one function returns a v128 constant: valid wherever fixed-width SIMD is.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 22, 1, 20, 0,
  253, 12, ...new Array(16).fill(0), 11]);
let simd = 'SIMD';
let threadsFailed = '';
// `promise`, or a rejection with `why` after `ms` milliseconds if it has not settled by then.
function withTimeout(promise, ms, why) {
  let timer;
  return Promise.race([promise, new Promise((_, no) => { timer = setTimeout(() => no(new Error(why)), ms); })])
    .finally(() => clearTimeout(timer));
}
// The three builds, each imported by a fixed path so that bundlers (Vite, webpack) find and copy them.
const BUILDS = {
  single: () => import('./podar.js'),
  threads: () => import('./threads/podar.js'),
  'threads-relaxed': () => import('./threads-relaxed/podar.js'),
};
// Starts the engine with the options of the first message, `init`: {threads: false} for one
// thread, {simd: 'plain'} for no relaxed SIMD, {gpu: false} for no WebGPU at all.
let ready = null;
const start = async (options) => {
  if (!WebAssembly.validate(SIMD_PROBE)) {
    throw coded('this browser does not run WebAssembly SIMD (fixed-width SIMD is needed: Chrome 91+, Firefox 89+, Safari 16.4+)',
      'unsupported-browser');
  }
  let order = ['single'];
  if (options.threads !== false && self.crossOriginIsolated && typeof SharedArrayBuffer === 'function') {
    const relaxed = options.simd !== 'plain' && WebAssembly.validate(RELAXED_PROBE);
    order = relaxed ? ['threads-relaxed', 'threads', 'single'] : ['threads', 'single'];
  }
  for (const name of order) {
    // A build that is not there (made without the nightly toolchain) is skipped without a word.
    const build = name === 'single' ? await BUILDS[name]() : await BUILDS[name]().catch(() => null);
    if (!build) continue;
    try {
      await build.default();
      // A pool worker that fails to start leaves initThreadPool waiting for ever (it listens for
      // their "ready" only): a time limit lets the single-threaded build take over.
      if (name !== 'single') {
        // index.js restarts an engine whose pool has not started within its time: Firefox has frozen
        // this worker inside the pool's start (in creating a pool worker), where no timer here fires.
        postMessage({ starting: 'threads' });
        // A test knob: this start freezes here, as Firefox's did.
        if (options.freezePool) for (;;);
        await withTimeout(build.initThreadPool(navigator.hardwareConcurrency || 2), 60_000, 'the thread pool did not start within 60 s');
      }
      podar = build;
      simd = name === 'threads-relaxed' ? 'relaxed SIMD' : 'SIMD';
      break;
    } catch (e) {
      if (name === 'single') throw e;
      // The threaded build asks for shared memory that can grow to 4 GiB; some browsers (notably
      // on phones) refuse it. The single-threaded build still works there.
      console.warn(`podar: the ${name} build did not start (${e.message || e}); using one thread`);
      threadsFailed = `threads unavailable: ${e.message || e}`;
      podar = await BUILDS.single();
      await podar.default();
      simd = 'SIMD';
      break;
    }
  }
  if (options.gpu === false) {
    gpuReason = 'WebGPU switched off';
  } else {
    // A WebGPU adapter or device request that never settles must not keep the CPU engine from starting.
    const start = GpuBridge.start({ anyAdapter: options.gpu === 'any' });
    bridge = await withTimeout(start, 30_000, 'WebGPU did not start within 30 s').catch((e) => {
      gpuReason = e.message;
      start.then((late) => late?.worker.terminate(), () => {});
      return null;
    });
  }
};

// The GPU as the API reports it: in use, its adapter, the last failure if any, and the timed
// product that chose between it and the CPU.
let trial = null;
function gpuState() {
  const s = session ? session.gpu_state() : { on: false, failed: false, products: 0 };
  return { ...s, available: bridge !== null, info: bridge ? bridge.info : gpuReason, error: bridge?.lastError || null, trial };
}
let session = null;
let flag = null;
let fetchAbort = null;

const cancelled = () => flag !== null && Atomics.load(flag, 0) === 1;
// An export to a sink: the chunks (8 MiB each) that may be on their way to it at once; their
// count is flag[1], which index.js lowers as each is written.
const SINK_AHEAD = 4;
// A loaded model as index.js takes it: its summary, its files' names, whether it is streamed, and
// the names its exports will have.
const loaded = (summary, files) => ({
  summary, names: files.map((f) => f.name), streamed: session.streamed,
  exportNames: { hf: session.export_name('hf'), gguf: session.export_name('gguf') },
});

// Models loaded by URL with {cache: true} are kept with the Cache API, keyed by URL (index.js lists
// and deletes them). An entry holds the whole file or nothing (Cache.put stores a response whole or
// fails); its size is kept beside it, and an entry whose body is not that size is dropped.
const CACHE = 'podar-models';
let cache = null; // {on, hits, stored, error} of the loadUrl that runs

// Reads a response body into a File, reporting bytes as they arrive.
let lastProgress = 0;
async function download(url, name, id, required = true) {
  const store = cache?.on ? await caches.open(CACHE) : null;
  if (store) {
    const hit = await store.match(url);
    if (hit) {
      const body = await hit.blob();
      if (String(body.size) === hit.headers.get('x-podar-bytes')) {
        cache.hits++;
        return new File([body], name);
      }
      await store.delete(url);
    }
  }
  const file = await fetchFile(url, name, id, required);
  if (file && store) {
    try {
      const headers = { 'content-type': 'application/octet-stream', 'x-podar-bytes': String(file.size), 'x-podar-stored': new Date().toISOString() };
      await store.put(url, new Response(file, { headers }));
      cache.stored++;
    } catch (e) {
      cache.error = e && e.name === 'QuotaExceededError'
        ? `${name} was not kept: the browser's storage quota for this site is full (delete cached models, or allow more storage)`
        : `${name} was not kept: ${e.message || e}`;
    }
  }
  return file;
}

async function fetchFile(url, name, id, required) {
  let res;
  try {
    res = await fetch(url, { signal: fetchAbort.signal });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    // fetch rejects with a TypeError (its text differs by browser) on network and CORS failures.
    throw coded(`${url}: could not be fetched (${e.message || e}). Check the address and your connection; ` +
      'a server other than this page\'s must allow cross-origin requests (CORS), as huggingface.co does', 'network');
  }
  if (!res.ok) {
    if (!required) return null;
    const hint = res.status === 401 || res.status === 403
      ? ' (a gated or private model: download its files and choose them with Model files instead)'
      : res.status === 404 ? ' (no such file at this address)' : '';
    throw coded(`${url}: HTTP ${res.status} ${res.statusText}${hint}`, 'network');
  }
  if ((res.headers.get('content-type') || '').startsWith('text/html')) {
    if (!required) return null;
    throw coded(`${url} returned a web page, not a model file; on Hugging Face use the file's …/resolve/main/… link`, 'bad-input');
  }
  // A compressed response's length is not the file's: then the total is unknown.
  let total = res.headers.get('content-encoding') ? 0 : Number(res.headers.get('content-length')) || 0;
  const reader = res.body.getReader();
  const parts = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    got += value.length;
    if (got > total) total = 0;
    // At most ten progress messages a second (a network read can be a few KB).
    const now = performance.now();
    if (now - lastProgress > 100) {
      lastProgress = now;
      postMessage({ id, progress: { stage: `download ${name}`, done: got, total } });
    }
    if (cancelled()) throw new Error('cancelled');
  }
  // The engine reads the model from these bytes, not from the File's slices: Chromium copies every
  // slice of a Blob built in memory into a new Blob, kept until garbage collection, and a few
  // reads of a model filled its Blob storage (blob.rs).
  return Object.assign(new File(parts, name), { podarBytes: parts });
}

// A URL names either one .gguf, or a Hugging Face repository (…/resolve/main/ or the repo page).
async function fetchModel(url, id) {
  const u = new URL(url, self.location.href);
  // A Hugging Face page of one file (…/blob/REV/file) names the file itself at …/resolve/REV/file.
  if (u.hostname.endsWith('huggingface.co')) u.pathname = u.pathname.replace(/\/blob\//, '/resolve/');
  const path = u.pathname;
  if (path.toLowerCase().endsWith('.gguf')) {
    return [await download(u.href, decodeURIComponent(path.split('/').pop()), id)];
  }
  const what = 'give the address of a .gguf file, or of a Hugging Face model folder (…/resolve/main/) that ' +
    'holds config.json and *.safetensors';
  const last = decodeURIComponent(path.split('/').pop());
  // (A repository's name may end in a version, as Qwen3-0.6B does: only known non-model files are refused.)
  if (/\.(html?|txt|md|py|js|css|xml|csv|pdf|png|jpe?g|gif|svg|zip|tar|gz|bin|pt|pth|ckpt|onnx|h5|msgpack)$/i.test(last)) {
    throw coded(`${u.href} names the file ${last}, not a model: ${what}`, 'bad-input');
  }
  let base = u.href.replace(/[?#].*$/, '');
  if (/\.(json|safetensors)$/.test(base)) base = base.slice(0, base.lastIndexOf('/') + 1);
  if (u.hostname.endsWith('huggingface.co') && !base.includes('/resolve/')) {
    base = base.replace(/\/(tree|blob)\/[^/]+.*$/, '').replace(/\/$/, '') + '/resolve/main/';
  }
  if (!base.endsWith('/')) base += '/';
  const config = await download(base + 'config.json', 'config.json', id).catch((e) => {
    // No config.json there (or a web page instead): the address is not a model's.
    if (!/HTTP 404|web page/.test(e.message)) throw e;
    throw coded(`${base} holds no config.json: ${what}`, 'bad-input');
  });
  const files = [config];
  for (const n of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
    const f = await download(base + n, n, id, false);
    if (f) files.push(f);
  }
  const index = await download(base + 'model.safetensors.index.json', 'model.safetensors.index.json', id, false);
  const shards = index ? [...new Set(Object.values(JSON.parse(await index.text()).weight_map || {}))] : ['model.safetensors'];
  for (const s of shards) files.push(await download(base + s, s, id));
  return files;
}

async function run(m) {
  const progress = (stage, done, total) => {
    postMessage({ id: m.id, progress: { stage, done, total } });
    return !cancelled();
  };
  switch (m.cmd) {
    case 'inspect':
      return session.inspect(m.files);
    case 'load':
      return loaded(session.load(m.files, progress, m.stream), m.files);
    case 'loadUrl': {
      fetchAbort = new AbortController();
      cache = { on: m.cache === true && typeof caches === 'object', hits: 0, stored: 0, error: null };
      if (m.cache === true && !cache.on) cache.error = 'this browser gives the page no Cache API (it needs https or localhost)';
      const files = await fetchModel(m.url, m.id);
      const { hits, stored, error } = cache;
      cache = null;
      return { ...loaded(session.load(files, progress, m.stream), files), cache: { hits, stored, error } };
    }
    case 'ping':
      return null;
    case 'setGpu':
      if (m.on && !bridge) throw coded(`WebGPU is not available: ${gpuReason}`, 'gpu');
      session.set_gpu(m.on ? bridge : undefined);
      return gpuState();
    case 'importance':
      return session.importance(m.text, m.score, m.samples, m.len, progress);
    case 'textInfo':
      return session.text_info(m.text, m.calibLen, m.limit);
    case 'plan':
      return session.plan(m.options, m.format, m.dtype);
    case 'prune':
      return session.prune(m.text, m.options, progress);
    case 'eval':
      return session.perplexity(m.which, m.text, m.skip, m.maxTokens, m.ctx, progress);
    case 'generate':
      return session.generate(m.which, m.prompt, m.maxTokens, m.chat, (piece) => {
        postMessage({ id: m.id, text: piece });
        return !cancelled();
      });
    case 'export': {
      // The file as a Blob, or (m.sink) chunk by chunk to index.js, which writes each where the
      // caller said (a file the user picked, say). Cross-origin isolated, this worker waits while
      // SINK_AHEAD chunks are on their way, so the export never runs ahead of a slow disk.
      const parts = [];
      let bytes = 0;
      const name = session.export(m.format, m.dtype, m.evals, (chunk) => {
        bytes += chunk.length;
        if (m.sink) {
          postMessage({ id: m.id, chunk }, [chunk.buffer]);
          if (flag) {
            Atomics.add(flag, 1, 1);
            for (let n; (n = Atomics.load(flag, 1)) >= SINK_AHEAD && !cancelled();) Atomics.wait(flag, 1, n, 250);
          }
        } else {
          parts.push(chunk);
        }
        postMessage({ id: m.id, progress: { stage: 'write', done: bytes, total: m.expectBytes || 0 } });
        return !cancelled();
      });
      if (m.sink) return { name, size: bytes };
      const type = name.endsWith('.zip') ? 'application/zip' : 'application/octet-stream';
      return { name, blob: new Blob(parts, { type }) };
    }
    default:
      throw new Error(`unknown command ${m.cmd}`);
  }
}

self.onmessage = async (e) => {
  const m = e.data;
  try {
    if (m.cmd === 'init') ready = start(m);
    if (!ready) throw new Error('the engine was not started: its first message must be init');
    await ready;
    if (m.cmd === 'init') {
      flag = m.flag ? new Int32Array(m.flag) : null;
      // A cap on the engine's heap: a test knob, for running out of memory on a small model.
      if (m.memoryLimit) podar.Session.set_memory_limit(m.memoryLimit);
      // An allocation that fails on a thread of the pool stops the engine without an answer: it
      // says so on a BroadcastChannel, under this engine's token, for index.js.
      podar.Session.tell_failed_allocations(m.token >>> 0);
      session = new podar.Session();
      // useGpu: false starts on the CPU with WebGPU at hand (setGpu switches later). "auto" takes the
      // GPU only where one product ran faster there than on the CPU; "any" (for tests) takes it in
      // any case, but times it all the same.
      // (gpuChoice: the last setGpu, kept across restarts: true uses the GPU without a new trial.)
      let useGpu = bridge !== null && m.useGpu !== false && m.gpuChoice !== false;
      if (useGpu && m.gpuChoice !== true) {
        try {
          const t = podar.Session.time_gpu(bridge);
          trial = { cpuMs: t.cpu_ms, gpuMs: t.gpu_ms };
        } catch (e) {
          // A trap leaves the engine's state undefined: the engine does not start.
          if (e instanceof WebAssembly.RuntimeError) throw e;
          trial = { cpuMs: null, gpuMs: null, error: String(e.message || e) };
        }
        if (m.gpu !== 'any') useGpu = trial.gpuMs !== null && trial.cpuMs !== null && trial.gpuMs < trial.cpuMs;
      }
      if (useGpu) session.set_gpu(bridge);
      postMessage({ id: m.id, ok: { threads: podar.Session.threads(), simd, threadsFailed, gpu: gpuState() }, memory: podar.Session.memory_bytes(),
        heap: podar.Session.heap() });
      return;
    }
    if (m.cmd === 'cancel') {
      if (fetchAbort) fetchAbort.abort();
      return;
    }
    podar.Session.take_failed_allocation();
    const ok = await run(m);
    // A call that stopped early because of Cancel (generation, an export) did not finish its work.
    if (cancelled()) throw new Error('cancelled');
    postMessage({ id: m.id, ok, memory: podar.Session.memory_bytes(), heap: podar.Session.heap(), gpu: gpuState() });
  } catch (err) {
    const stopped = cancelled() || (err && err.name === 'AbortError');
    const msg = stopped ? 'cancelled' : String((err && err.message) || err);
    // A trap (out of memory, or a bug) leaves the engine's state undefined: the page restarts it.
    // Rust aborts with a bare trap when an allocation fails; the engine's allocator noted it.
    // (index.js words it: `failed` bytes could not be had with `live` in use.)
    let failed = null;
    try {
      if (podar && err instanceof WebAssembly.RuntimeError) failed = podar.Session.take_failed_allocation();
    } catch {
      // The engine did not start far enough to say: a trap it stays.
    }
    const oom = (err instanceof RangeError && /memory/i.test(err.message)) || failed !== null;
    const fatal = err instanceof WebAssembly.RuntimeError || oom;
    const code = stopped ? 'aborted' : oom ? 'out-of-memory' : fatal ? 'engine-crashed' : (err && err.code) || 'failed';
    let memory = 0;
    let heap = null;
    try {
      memory = podar ? podar.Session.memory_bytes() : 0;
      heap = podar && !fatal ? podar.Session.heap() : null;
    } catch {
      // (As above: an answer goes out in any case.)
    }
    postMessage({ id: m.id, error: msg, code, fatal, failed, memory, heap });
  }
};
