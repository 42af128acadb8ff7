// The page: draws, and talks to the engine's worker (pkg/worker.js, from js/), where all of podar runs.
import { noSharedMemory } from './pkg/gpu-bridge.js';
import { isolate } from './pkg/index.js';
import { drawLayers, drawPpl, drawRatio } from './results.js';

const $ = (id) => document.getElementById(id);
// Beside the page: `podar serve` maps /pkg/ and /models/ to those folders, and `make site` copies them.
const EXAMPLE = './models/SmolLM2-135M-Instruct.Q4_1.gguf';
const PRESETS = ['code-python.txt', 'english-vimtutor.txt', 'german-vimtutor.txt'];
const DTYPES = { hf: ['f32', 'f16', 'bf16'], gguf: ['f32', 'f16', 'q8_0'] };
const EVAL_CTX = 256;

// ---- worker and its protocol ---------------------------------------------------------------
const flagBuf = typeof SharedArrayBuffer === 'function' && self.crossOriginIsolated ? new SharedArrayBuffer(4) : null;
const flag = flagBuf ? new Int32Array(flagBuf) : null;
let worker = null;
let nextId = 1;
const pending = new Map();
let lastModel = null; // how the current model was loaded, to reload after a worker restart

function startWorker() {
  worker = new Worker(new URL('./pkg/worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = (e) => {
    const m = e.data;
    const p = pending.get(m.id);
    if (!p) return;
    if (m.memory) {
      state.peakMemory = Math.max(state.peakMemory, m.memory);
      // The engine's wasm memory as last reported, readable by tests and the curious.
      document.body.dataset.engineMemory = String(m.memory);
    }
    if (m.gpu) showGpu(m.gpu);
    if (m.progress) return p.onProgress && p.onProgress(m.progress);
    if (m.text !== undefined) return p.onText && p.onText(m.text);
    pending.delete(m.id);
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve(m.ok);
    // A trap in the engine (out of memory, or a bug) leaves it unusable: start a fresh one.
    if (m.fatal) workerDied(`it failed: ${m.error}; perhaps out of memory`);
  };
  worker.onerror = (e) => {
    e.preventDefault();
    // A module worker whose script cannot load fires a plain Event: restarting cannot help.
    if (!(e instanceof ErrorEvent)) {
      return workerDied('its script did not load: this browser may not run module workers, or files are missing', false);
    }
    workerDied(e.message || 'the engine stopped');
  };
  // The page's engine switches pass on to the worker: ?threads=0, ?simd=plain, ?gpu=0 or ?gpu=any.
  const q = new URLSearchParams(location.search);
  return call('init', {
    flag: flagBuf, threads: q.get('threads') !== '0', simd: q.get('simd') === 'plain' ? 'plain' : 'auto',
    gpu: q.get('gpu') === '0' ? false : q.get('gpu') === 'any' ? 'any' : 'auto', useGpu: !$('force-cpu').checked,
  });
}

function call(cmd, args = {}, hooks = {}) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, ...hooks });
    worker.postMessage({ id, cmd, ...args });
  });
}

let restarts = 0;
// The engine failed or was stopped: pending calls fail with `why`, and a fresh engine starts,
// unless `retry` is false (a restart cannot help) or engines failed one after another too often.
function workerDied(why, retry = true) {
  const said = why === 'cancelled' ? 'cancelled' : retry ? `the engine stopped (${why}); it was restarted` : `the engine could not start (${why})`;
  for (const p of pending.values()) p.reject(new Error(said));
  pending.clear();
  worker.terminate();
  state.loaded = false;
  state.pruned = false;
  state.download = null;
  if (!retry) {
    $('engine').textContent = `The engine could not start: ${why}.`;
    setStatus(`The engine could not start: ${why}.`);
    refresh();
    return;
  }
  // An engine that cannot start at all (module workers unsupported, files missing) is not retried forever.
  // (Counted from the last engine that started.)
  if (++restarts > 3) {
    $('engine').textContent = `The engine stopped (${why}) too often and was not restarted; reload the page.`;
    refresh();
    return;
  }
  startWorker().then(async (r) => {
    showEngine(r);
    const again = lastModel;
    if (again) {
      // The model the engine held is read again, so the page stays as it was.
      setStatus(`The engine was restarted (${why}); loading the model again…`);
      await loadModel(again.kind, again.payload, `The engine was restarted (${why}). The model is loaded again.`, true);
    } else {
      setStatus(`The engine was restarted (${why}).`);
    }
    refresh();
  }).catch((e) => {
    $('engine').textContent = `The engine did not start again: ${e.message}`;
  });
}

// ---- state and drawing ---------------------------------------------------------------------
const state = {
  loaded: false, summary: null, pruned: false, busy: false, peakMemory: 0,
  download: null, runs: [], beforeCache: new Map(), textTokens: 0,
};

function setStatus(msg) { $('status').textContent = msg; }
// The core's messages name the command line's flags; the page shows its own controls' labels.
const FLAG_LABELS = {
  '--calib-samples': 'Calibration windows', '--calib-len': 'Window length', '--mlp-size': 'MLP pruning (%)',
  '--mlp': 'MLP pruning (%)', '--heads': 'Heads to remove (%)', '--drop-layers-at': 'Layers to drop',
  '--drop-layers': 'Layers to drop', '--drop-block': 'Layers to drop', '--divisor': 'Divisor',
  '--correct': 'Error correction', '--error-estimate': 'Error correction', '--no-recover': 'Recovery off', '--ctx': 'the evaluation window',
};
function pageWords(msg) {
  // The core speaks of --heads as a fraction; the page's field is in percent.
  const pct = (f) => `${+(Number(f) * 100).toFixed(1)}%`;
  msg = msg.replace(/--heads ([\d.]+)/g, (_, f) => `--heads of ${pct(f)}`)
    .replace(/give at least ([\d.]+), or leave --heads out/, (_, f) => `give at least ${Math.ceil(Number(f) * 100)}%, or 0`);
  return msg.replace(/--[a-z][a-z-]*/g, (f) => (FLAG_LABELS[f] ? `“${FLAG_LABELS[f]}”` : f))
    .replace(/; raise “?--ridge”?/, '; the text may be too short or too repetitive for recovery: add text, or turn Recovery off');
}
function fmtParams(n) { return n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : `${(n / 1e6).toFixed(2)}M`; }
function fmtBytes(n) { return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`; }

function refresh() {
  const idle = !state.busy;
  for (const id of ['load-example', 'load-url', 'model-files', 'model-folder']) $(id).disabled = !idle;
  // A plan the core refuses cannot be pruned; the plan line says why.
  // Nor can a text the page already says is too short for the calibration.
  $('prune').disabled = !idle || !state.loaded || state.planError === true || state.textShort === true;
  $('cancel').disabled = idle;
  $('download').disabled = !idle || !state.download;
  $('generate').disabled = !idle || !state.pruned;
  $('force-cpu').disabled = !idle || !(state.gpu && state.gpu.available);
}

// `clock` holds the start of the current stage: each stage (download, load, calibrate…) counts
// its own fraction from 0, so the time estimate starts again with it.
function progressText(p, clock, what) {
  const frac = p.total > 0 ? p.done / p.total : 0;
  $('bar').value = frac;
  if (clock.stage !== p.stage) { clock.stage = p.stage; clock.t0 = performance.now(); }
  const secs = (performance.now() - clock.t0) / 1e3;
  const eta = frac > 0.02 && frac < 1 && secs >= 2 ? `, about ${Math.ceil(secs / frac - secs)} s left` : '';
  const big = p.total > 1e5 || p.stage.startsWith('download') || p.stage === 'write';
  const unit = p.stage === 'load' || p.stage === 'calibrate' || p.stage === 'score' ? 'layer ' : '';
  const count = big ? `${fmtBytes(p.done)}${p.total ? ' of ' + fmtBytes(p.total) : ''}`
    : p.stage === 'hash' ? `${p.done} of ${p.total} MB` : `${unit}${p.done} of ${p.total}`;
  setStatus(`${what}: ${p.stage} ${count}${eta}`);
}

// Runs a worker call with progress, Cancel and error reporting; resolves to null when it failed.
async function task(what, cmd, args, extra = {}) {
  const clock = { stage: null, t0: performance.now() };
  try {
    return await call(cmd, args, { onProgress: (p) => progressText(p, clock, what), ...extra });
  } catch (e) {
    throw new Error(e.message === 'cancelled' ? `${what}: cancelled` : `${what} failed: ${pageWords(e.message)}`);
  }
}

async function busy(fn) {
  if (state.busy) return;
  state.busy = true;
  if (flag) Atomics.store(flag, 0, 0);
  setStatus('Working…');
  // The control that started the job is disabled while it runs: keyboard focus goes to Cancel,
  // and comes back afterwards.
  const from = document.activeElement;
  refresh();
  if (from && from.disabled) $('cancel').focus();
  try {
    await fn();
  } catch (e) {
    setStatus(e.message);
    $('bar').value = 0;
  } finally {
    // A Cancel ends with the job: the calls below must not read its flag.
    if (flag) Atomics.store(flag, 0, 0);
    state.busy = false;
    refresh();
    if (document.activeElement === $('cancel') || document.activeElement === document.body) {
      if (from && !from.disabled && from !== document.body) from.focus();
    }
  }
  // Controls changed while the job ran: the plan and the token count catch up.
  if (state.loaded) {
    await updateText().catch((e) => setStatus(e.message));
    await updatePlan();
  }
}

// The results of an earlier model or run, cleared when they no longer describe the loaded model.
function clearResults() {
  $('sizes').textContent = 'No results yet.';
  drawPpl($('ppl'), []);
  $('chart-layers').innerHTML = '';
  $('gen-source').textContent = ''; $('gen-pruned').textContent = '';
}

// ---- model -----------------------------------------------------------------------------------
function showSummary(s, names) {
  state.summary = s;
  const el = $('summary');
  el.hidden = false;
  el.textContent = `${names.join(', ')}: ${s.architecture} (${s.format}, ${s.dtype}) — ${s.num_hidden_layers} layers, ` +
    `hidden ${s.hidden_size}, MLP ${s.intermediate_size}, heads ${s.num_attention_heads} / ${s.num_key_value_heads} KV, ` +
    `vocabulary ${s.vocab_size}, ${fmtParams(s.parameters)} parameters.`;
}

async function loadModel(kind, payload, doneMessage, reload = false) {
  await busy(async () => {
    state.loaded = false; state.pruned = false; state.download = null;
    if (!reload) {
      // The engine drops the model it holds when another load starts, so whatever happens to this
      // one, the earlier model's summary, plan and results are gone. (A reload after an engine
      // restart reads the same model again, and the page stays as it was.)
      state.beforeCache.clear(); state.runs = [];
      $('summary').hidden = true; $('summary').textContent = '';
      state.plan = null;
      $('plan').textContent = 'Load a model to see the plan.';
      clearResults();
      drawRatio($('chart-ratio'), state.runs);
    }
    refresh();
    let r;
    if (kind === 'files') {
      const files = payload;
      const s = await task('Reading headers', 'inspect', { files });
      showSummary(s, files.map((f) => f.name));
      r = await task('Loading', 'load', { files });
    } else {
      r = await task('Loading', 'loadUrl', { url: payload });
    }
    showSummary(r.summary, r.names);
    lastModel = { kind, payload };
    state.loaded = true;
    setStatus(doneMessage || `Model loaded: ${fmtParams(r.summary.parameters)} parameters. Choose a domain text and press Prune.`);
    $('bar').value = 0;
  });
}

$('load-example').onclick = () => loadModel('url', new URL(EXAMPLE, location.href).href);
$('load-url').onclick = () => {
  const u = $('model-url').value.trim();
  if (!u) return setStatus('Type a model URL first.');
  let url;
  try { url = new URL(u, location.href); } catch { url = null; }
  if (!url || !['http:', 'https:'].includes(url.protocol)) {
    return setStatus(`“${u}” is not a web address: give an http:// or https:// link to a .gguf file or a Hugging Face model.`);
  }
  loadModel('url', url.href);
};
// Each input is cleared once read, so that choosing the same files again (after a cancel or an
// error) starts a new load.
const takeFiles = (e) => {
  const files = [...e.target.files];
  e.target.value = '';
  if (files.length) loadModel('files', files);
};
$('model-files').onchange = takeFiles;
$('model-folder').onchange = takeFiles;
const drop = $('drop');
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
// Every file under a dropped folder (a Hugging Face folder is usually dropped whole).
async function entryFiles(entry, out) {
  if (entry.isFile) {
    out.push(await new Promise((ok, fail) => entry.file(ok, fail)));
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const e of batch) await entryFiles(e, out);
    }
  }
  return out;
}
drop.ondrop = async (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  if (state.busy) return;
  const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  let files = [...e.dataTransfer.files];
  if (entries.some((x) => x.isDirectory)) {
    try {
      files = [];
      for (const x of entries) await entryFiles(x, files);
    } catch (err) {
      return setStatus(`Could not read the dropped folder: ${err.message}`);
    }
  }
  // Hidden files (macOS ._ resource forks, .git…) are never model files.
  files = files.filter((f) => !f.name.startsWith('.'));
  if (files.length) loadModel('files', files);
};
// Without folder picking (iOS Safari before 18.4) the folder input would pick one file: hidden.
if (!('webkitdirectory' in HTMLInputElement.prototype)) {
  for (const e of [$('model-folder'), document.querySelector('label[for="model-folder"]')]) e.hidden = true;
}
// A file dropped beside the drop zone must not make the browser open it (and leave the page).
for (const ev of ['dragover', 'drop']) document.addEventListener(ev, (e) => e.preventDefault());

// ---- domain text -----------------------------------------------------------------------------
async function presetText(name) {
  const r = await fetch(`presets/${name}`);
  if (!r.ok) throw new Error(`preset ${name}: HTTP ${r.status}`);
  return r.text();
}

let textTimer = null;
// The domain text as given: a file's or preset's own text while the box still shows it unedited
// (a textarea turns CR LF into LF, and the command line calibrates on the file as it is), else
// what the box holds.
let givenText = null;
function domainText() { return givenText ?? $('domain-text').value; }
function showText(text) { givenText = text; $('domain-text').value = text; }

async function updateText() {
  const text = domainText();
  if (!text) { $('text-info').textContent = 'No text yet.'; state.textTokens = 0; state.textShort = false; refresh(); return; }
  let len, samples;
  try {
    samples = field('calib-samples', { integer: true });
    len = field('calib-len', { integer: true });
  } catch (e) {
    $('text-info').textContent = `${text.length} characters; ${e.message}.`;
    return;
  }
  if (!state.loaded || state.busy) {
    $('text-info').textContent = `${text.length} characters (load a model to count tokens).`;
    return;
  }
  const need = samples * len;
  // A long text is counted only as far as a job reads it: calibration, then the held-out score.
  const evalMax = Math.max(0, Number($('eval-tokens').value) || 0);
  const info = await call('textInfo', { text, calibLen: len, limit: need + evalMax });
  state.textTokens = info.tokens;
  // Static scores without recovery, heads or dropped layers read no text.
  const readsText = !STATIC_SCORES.includes($('score').value) || $('recover').checked ||
    Number($('heads').value) > 0 || Number($('drop-layers').value) > 0;
  state.textShort = readsText && info.tokens < need;
  refresh();
  const held = Math.max(0, info.tokens - need);
  const count = info.complete ? `${info.tokens} tokens` : `More than ${info.tokens} tokens (counted as far as a job reads)`;
  $('text-info').textContent = info.tokens >= need
    ? `${count}: enough for ${samples} calibration windows of ${len} (${need} tokens); ${info.complete ? '' : 'at least '}${held} tokens left for a held-out score.`
    : info.windows >= 1
      ? `${info.tokens} tokens: not enough for ${samples} windows of ${len} (needs ${need}). Add text, or use ${info.windows} windows.`
      : `${info.tokens} tokens: not enough for one window of ${len}. Add text (${samples} windows need ${need} tokens), or shorten the windows.`;
}
function textChanged() { clearTimeout(textTimer); textTimer = setTimeout(() => updateText().catch((e) => setStatus(e.message)), 300); }
$('domain-text').oninput = () => { givenText = null; $('preset').value = ''; textChanged(); };
$('domain-file').onchange = async (e) => {
  const f = e.target.files[0];
  e.target.value = '';
  if (!f) return;
  let text;
  try {
    // As the command line reads it: UTF-8 (a leading byte-order mark dropped), or a clear refusal
    // rather than text with replacement characters in it.
    text = new TextDecoder('utf-8', { fatal: true }).decode(await f.arrayBuffer());
  } catch (err) {
    return setStatus(`${f.name}: ${err instanceof TypeError ? 'not UTF-8 text; save the file as UTF-8' : err.message}`);
  }
  if (!text.trim()) return setStatus(`${f.name} holds no text.`);
  setStatus(`${f.name}: ${text.length} characters read.`);
  showText(text);
  $('preset').value = '';
  textChanged();
};
$('preset').onchange = async () => {
  const p = $('preset').value;
  if (!p) return;
  showText(await presetText(p));
  textChanged();
};

// ---- plan ------------------------------------------------------------------------------------
// A number field's value within [min, max] (its own attributes), or an error naming its label.
function field(id, { integer = false } = {}) {
  const e = $(id);
  const label = document.querySelector(`label[for="${id}"]`)?.textContent || id;
  const raw = e.value.trim();
  const v = raw === '' ? 0 : Number(raw);
  const min = e.min === '' ? -Infinity : Number(e.min), max = e.max === '' ? Infinity : Number(e.max);
  if (!Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new Error(`${label}: give ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}`);
  }
  return v;
}

function options() {
  const mlp = field('mlp') / 100;
  const drop = field('drop-layers', { integer: true });
  const heads = field('heads') / 100;
  const calibSamples = field('calib-samples', { integer: true });
  const calibLen = field('calib-len', { integer: true });
  field('eval-tokens', { integer: true }); // read by the job itself; checked here with the rest
  const divisor = $('divisor').value ? Number($('divisor').value) : null;
  const block = $('drop-mode').value === 'block';
  const score = $('score').value;
  return {
    mlp_fraction: mlp > 0 ? mlp : null,
    divisor,
    score,
    recover: $('recover').checked,
    calib_samples: calibSamples,
    calib_len: calibLen,
    drop_layers: drop > 0 && !block ? drop : null,
    drop_block: drop > 0 && block ? drop : null,
    heads: heads > 0 ? heads : null,
    sequential: true,
    // On: the core's default strength, with the error estimated (the default) or measured; or off.
    ...({ residuals: {}, stream: { error_estimate: 'stream' }, off: { correct: 0 } })[$('correct').value],
  };
}
const STATIC_SCORES = ['maw', 'l2', 'vow', 'pon'];

function fillDtypes() {
  const cur = $('dtype').value;
  $('dtype').innerHTML = DTYPES[$('format').value].map((d) => `<option>${d}</option>`).join('');
  if (DTYPES[$('format').value].includes(cur)) $('dtype').value = cur;
}
fillDtypes();

async function updatePlan() {
  if (!state.loaded || state.busy) return;
  try {
    const p = await call('plan', { options: options(), format: $('format').value, dtype: $('dtype').value });
    state.planError = false;
    state.plan = p;
    $('plan').textContent = `Parameters ${fmtParams(p.parameters_before)} → ${fmtParams(p.parameters_after)} ` +
      `(−${(100 * (1 - p.parameters_after / p.parameters_before)).toFixed(1)}%); layers ${p.layers_before} → ${p.layers_after}, ` +
      `MLP ${p.intermediate_before} → ${p.intermediate_after}, KV heads ${p.kv_heads_before} → ${p.kv_heads_after}; ` +
      `download about ${fmtBytes(p.bytes_after)}; calibration needs ${p.calib_tokens} tokens.` +
      p.warnings.map((w) => ` Note: ${w}.`).join('');
  } catch (e) {
    state.plan = null;
    state.planError = true;
    $('plan').textContent = `This plan does not work: ${pageWords(e.message)}`;
  }
  refresh();
}
$('mlp-range').oninput = () => { $('mlp').value = $('mlp-range').value; updatePlan(); };
$('mlp').oninput = () => { $('mlp-range').value = $('mlp').value || 0; updatePlan(); };
for (const id of ['score', 'recover', 'correct', 'drop-layers', 'drop-mode', 'heads', 'divisor', 'dtype']) $(id).addEventListener('input', updatePlan);
// Whether the job reads the text at all depends on these.
for (const id of ['score', 'recover', 'drop-layers', 'heads']) $(id).addEventListener('input', textChanged);
for (const id of ['calib-samples', 'calib-len']) $(id).addEventListener('input', () => { updatePlan(); textChanged(); });
$('eval-tokens').addEventListener('input', textChanged);
$('format').oninput = () => { fillDtypes(); updatePlan(); };

// ---- prune, evaluate, export -----------------------------------------------------------------
async function evalTexts(domainText, skip) {
  const max = Number($('eval-tokens').value) || 0;
  const texts = [];
  if (max >= EVAL_CTX && state.textTokens - skip >= EVAL_CTX) texts.push({ name: 'your text (held out)', text: domainText, skip });
  for (const p of PRESETS) {
    if (max < EVAL_CTX) continue;
    const text = await presetText(p);
    // The domain's own preset is already scored on its held-out part above.
    if (text !== domainText) texts.push({ name: p, text, skip: 0 });
  }
  return texts.map((t) => ({ ...t, max }));
}

// FNV-1a over the text's UTF-16 code units: tells edited texts apart for the cache of scores.
function textHash(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h.toString(16);
}

async function perplexityOf(which, t, what) {
  return (await task(what, 'eval', { which, text: t.text, skip: t.skip, maxTokens: t.max, ctx: EVAL_CTX })).perplexity;
}

async function prune() {
  const text = domainText();
  if (!state.loaded) return setStatus('Load a model first.');
  if (!text.trim()) return setStatus('Give a domain text first (a preset, a file, or paste it).');
  await busy(async () => {
    const t0 = performance.now();
    state.pruned = false; state.download = null;
    clearResults();
    refresh();
    // Everything the job uses is read now: changing a control while it runs changes the next job only.
    const opts = options();
    const format = $('format').value, dtype = $('dtype').value, mlpPercent = field('mlp');
    if (STATIC_SCORES.includes(opts.score) && !opts.recover && !opts.heads && !opts.drop_layers && !opts.drop_block) {
      setStatus('Static weight scores damage small models badly; prefer a data-driven method.');
    }
    const skip = opts.calib_samples * opts.calib_len;
    const texts = await evalTexts(text, skip);
    const rows = [];
    for (const t of texts) {
      const key = `${t.name}|${t.skip}|${t.max}|${t.text.length}|${textHash(t.text)}`;
      if (!state.beforeCache.has(key)) state.beforeCache.set(key, await perplexityOf('source', t, `Scoring the original on ${t.name}`));
      rows.push({ name: t.name, before: state.beforeCache.get(key) });
    }
    drawPpl($('ppl'), rows);
    let r, out;
    try {
      r = await task('Pruning', 'prune', { text, options: opts });
      state.pruned = true;
      drawLayers($('chart-layers'), r);
      for (const [i, t] of texts.entries()) {
        rows[i].after = await perplexityOf('pruned', t, `Scoring the pruned model on ${t.name}`);
        drawPpl($('ppl'), rows);
      }
      const held = rows.find((x) => x.name.startsWith('your text'));
      const more = [r.kept_layers.length < r.layers_before ? `${r.layers_before - r.kept_layers.length} layers dropped` : '',
        r.kept_kv_heads.some((k) => k.length < r.kv_heads_before) ? 'heads removed' : ''].filter(Boolean).join(', ');
      state.runs.push({ mlp: mlpPercent, score: opts.score, recover: opts.recover, more,
        ppl: held && held.after, base: held && held.before });
      drawRatio($('chart-ratio'), state.runs);
      out = await task('Writing the download', 'export', {
        format, dtype, evals: rows.map((x) => ({ name: x.name, before: x.before, after: x.after })),
        expectBytes: state.plan ? state.plan.bytes_after : 0,
      });
    } catch (e) {
      // Cancelled or failed: what was not measured says so, instead of "…".
      for (const row of rows) if (row.after === undefined) row.after = null;
      drawPpl($('ppl'), rows);
      throw e;
    }
    state.download = out;
    const secs = (performance.now() - t0) / 1e3;
    $('sizes').textContent = `Parameters ${fmtParams(r.parameters_before)} → ${fmtParams(r.parameters_after)}; ` +
      `layers ${r.layers_before} → ${r.kept_layers.length}; MLP ${r.intermediate_before} → ${r.intermediate_after}; ` +
      `calibrated on ${r.calib_tokens} tokens; prune ${r.seconds.toFixed(1)} s, whole job ${secs.toFixed(1)} s; ` +
      `download ${out.name}, ${fmtBytes(out.blob.size)}; peak engine memory ${fmtBytes(state.peakMemory)}.`;
    $('bar').value = 1;
    state.lastJob = { seconds: secs, pruneSeconds: r.seconds, peakMemory: state.peakMemory, bytes: out.blob.size,
      engine: state.gpu && state.gpu.on && !state.gpu.failed ? 'webgpu' : 'cpu', gpuProducts: state.gpu ? state.gpu.products : 0 };
    setStatus(`Pruned to ${fmtParams(r.parameters_after)} parameters in ${secs.toFixed(1)} s. Done`);
  });
}
$('prune').onclick = prune;

$('download').onclick = () => {
  const d = state.download;
  if (!d) return;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(d.blob);
  a.download = d.name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
};

$('cancel').onclick = () => {
  if (!state.busy) return;
  if (flag) {
    Atomics.store(flag, 0, 1);
    worker.postMessage({ cmd: 'cancel' });
    setStatus('Cancelling…');
  } else {
    // Without cross-origin isolation there is no shared flag: stop the engine and start a new one.
    workerDied('cancelled');
  }
};

$('generate').onclick = () => busy(async () => {
  const prompt = $('prompt').value;
  const chat = $('chat').checked;
  for (const which of ['source', 'pruned']) {
    const out = $(which === 'source' ? 'gen-source' : 'gen-pruned');
    out.textContent = '';
    await task(`Generating (${which === 'source' ? 'original' : 'pruned'})`, 'generate',
      { which, prompt, maxTokens: 48, chat }, { onText: (piece) => { out.textContent += piece; } });
  }
  setStatus('Generated with both models. Done');
});

// ---- start -----------------------------------------------------------------------------------
// The engine line: CPU threads, and whether the matrix products run on WebGPU.
function engineText() {
  const t = state.threads || 1;
  const cpu = `CPU, WebAssembly ${state.simd || 'SIMD'}, ${t} thread${t > 1 ? 's' : ''}`;
  const g = state.gpu;
  let gpu;
  if (!g || !g.available) gpu = `no GPU (${g ? g.info : 'not checked'})`;
  else if (g.failed) gpu = `WebGPU failed (${g.error || 'unknown error'}); the CPU took over`;
  else if (g.on) gpu = `matrix products on WebGPU: ${g.info}`;
  else gpu = `WebGPU available (${g.info}), CPU forced`;
  return `Engine ready: ${cpu}; ${gpu}.` + (state.threadsFailed ? ` (One thread: ${state.threadsFailed}.)` : '') +
    (flag ? '' : ` (Cancel restarts the engine: ${noSharedMemory()}.)`);
}

function showGpu(g) {
  state.gpu = g;
  if (!g.available) $('force-cpu').checked = true;
  $('engine').textContent = engineText();
  refresh();
}

$('force-cpu').onchange = () => busy(async () => {
  await task('Switching engine', 'setGpu', { on: !$('force-cpu').checked });
  setStatus($('force-cpu').checked ? 'The CPU runs everything. Done' : 'Matrix products run on WebGPU. Done');
});

function showEngine(r) {
  restarts = 0; // this engine started: only engines that fail one after another stop the restarts
  state.threads = r.threads;
  state.simd = r.simd;
  state.threadsFailed = r.threadsFailed;
  showGpu(r.gpu);
  refresh();
}

(async () => {
  try {
    // On a host that sends no COOP/COEP headers (the static site, `make site`), podar's service
    // worker makes the page cross-origin isolated, for threads: this reloads the page once.
    await isolate('./coi-sw.js').catch((e) => console.warn(`podar: no cross-origin isolation (${e.message})`));
    showEngine(await startWorker());
  } catch (e) {
    $('engine').textContent = `The engine did not start: ${e.message}`;
  }
})();

// For tests and benchmarks: the last job's numbers.
window.podar = { state };
