// The page: draws, and runs podar through its public JavaScript API (pkg/index.js, from js/), as any
// page that embeds the package does.
import { Podar, isolate } from './pkg/index.js';
import { drawLayers, drawPpl, drawRatio } from './results.js';

const $ = (id) => document.getElementById(id);
// Beside the page: `podar serve` maps /pkg/ and /models/ to those folders, and `make site` copies them.
const EXAMPLE = './models/SmolLM2-135M-Instruct.Q4_1.gguf';
const PRESETS = ['code-python.txt', 'english-vimtutor.txt', 'german-vimtutor.txt'];
const DTYPES = { hf: ['f32', 'f16', 'bf16'], gguf: ['f32', 'f16', 'q8_0'] };
const EVAL_CTX = 256;

// ---- the engine, through podar's public API ------------------------------------------------
let podar = null; // the Podar instance: its worker runs all of podar
let model = null; // the loaded Model
let pruned = null; // the last prune's Pruned
let job = null; // the running job's AbortController: Cancel aborts it

// The page's engine switches: ?threads=0, ?simd=plain, ?gpu=0 or ?gpu=any.
function engineOptions() {
  const q = new URLSearchParams(location.search);
  return {
    threads: q.get('threads') === '0' ? false : 'auto', simd: q.get('simd') === 'plain' ? 'plain' : 'auto',
    gpu: q.get('gpu') === '0' ? false : q.get('gpu') === 'any' ? 'any' : 'auto', useGpu: !$('force-cpu').checked,
  };
}

// The engine stopped (it crashed, ran out of memory, or was stopped by a Cancel where the page has no
// shared memory): a fresh one starts and reads the model again, so the page stays as it was. After
// three fresh engines failed one after another, the page asks for a reload instead. (Called from
// busy(), which shows the new engine's line when the job ends.)
let restarts = 0;
async function revive(why) {
  state.pruned = false;
  pruned = null;
  if (++restarts > 3) {
    // Nothing may start it again behind the reader's back (the token count, the plan).
    state.loaded = false;
    model = null;
    $('engine').textContent = `The engine stopped (${why}) too often and was not restarted; reload the page.`;
    return;
  }
  const what = state.loaded ? `The engine was restarted (${why}); loading the model again` : null;
  // Cancel stops the reading too.
  job = new AbortController();
  try {
    if (what) setStatus(`${what}…`);
    const clock = { stage: null };
    const reread = await podar.restart({ onProgress: what ? (p) => progressText(p, clock, what) : undefined, signal: job.signal });
    restarts = 0;
    setStatus(reread ? `The engine was restarted (${why}). The model is loaded again.` : `The engine was restarted (${why}).`);
  } catch (e) {
    state.loaded = false;
    setStatus(e.code === 'aborted' ? `The engine was restarted (${why}); reading the model again was cancelled: load it again.`
      : `The engine was restarted (${why}), but it failed again: ${pageWords(e.message)}`);
  }
}

// ---- state and drawing ---------------------------------------------------------------------
const state = {
  loaded: false, summary: null, pruned: false, busy: false, peakMemory: 0,
  download: null, runs: [], beforeCache: new Map(), textTokens: 0,
};

function setStatus(msg) { $('status').textContent = msg; }
// The API's messages name its options (`mlp`, `calibLen`…); the page shows its own controls' labels.
const OPTION_LABELS = {
  calibSamples: 'Calibration windows', calibLen: 'Window length', mlpSize: 'MLP pruning (%)', mlp: 'MLP pruning (%)',
  heads: 'Heads to remove (%)', dropLayersAt: 'Layers to drop', dropLayers: 'Layers to drop', dropBlock: 'Layers to drop',
  divisor: 'Divisor', correct: 'Error correction', 'recover: false': 'Recovery off', ctx: 'the evaluation window',
};
function pageWords(msg) {
  // The API speaks of `heads` as a fraction; the page's field is in percent.
  const pct = (f) => `${+(Number(f) * 100).toFixed(1)}%`;
  msg = msg.replace(/`heads` ([\d.]+)/g, (_, f) => `\`heads\` of ${pct(f)}`)
    .replace(/give at least ([\d.]+), or leave `heads` out/, (_, f) => `give at least ${Math.ceil(Number(f) * 100)}%, or 0`)
    .replace(/; raise `ridge`/, '; the text may be too short or too repetitive for recovery: add text, or turn Recovery off');
  return msg.replace(/`([^`]+)`/g, (all, name) => (OPTION_LABELS[name] ? `“${OPTION_LABELS[name]}”` : all));
}
function fmtParams(n) { return n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : `${(n / 1e6).toFixed(2)}M`; }
function fmtBytes(n) { return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`; }

function refresh() {
  // Nothing runs before the engine has started.
  const idle = !state.busy && podar !== null;
  for (const id of ['load-example', 'load-url', 'model-files', 'model-folder']) $(id).disabled = !idle;
  // A plan the core refuses cannot be pruned; the plan line says why.
  // Nor can a text the page already says is too short for the calibration.
  $('prune').disabled = !idle || !state.loaded || state.planError === true || state.textShort === true;
  $('cancel').disabled = idle;
  $('download').disabled = !idle || !state.pruned;
  // A model read from its files a layer at a time cannot generate (each token would read it all).
  $('generate').disabled = !idle || !state.pruned;
  $('force-cpu').disabled = !idle || !state.gpu;
}

// Each stage (download, load, calibrate…) counts its own fraction from 0, and the API estimates its
// time left; `clock` holds when the current stage began, so that an estimate shows after 2 s.
function progressText(p, clock, what) {
  const frac = p.total > 0 ? p.done / p.total : 0;
  $('bar').value = frac;
  if (clock.stage !== p.stage) { clock.stage = p.stage; clock.t0 = performance.now(); }
  const secs = (performance.now() - clock.t0) / 1e3;
  const eta = p.eta !== null && secs >= 2 ? `, about ${Math.ceil(p.eta)} s left` : '';
  const big = p.total > 1e5 || p.stage.startsWith('download') || p.stage === 'write';
  const unit = p.stage === 'load' || p.stage === 'calibrate' || p.stage === 'score' ? 'layer ' : '';
  const count = big ? `${fmtBytes(p.done)}${p.total ? ' of ' + fmtBytes(p.total) : ''}`
    : p.stage === 'hash' ? `${p.done} of ${p.total} MB` : `${unit}${p.done} of ${p.total}`;
  setStatus(`${what}: ${p.stage} ${count}${eta}`);
}

// Runs one call of the API as part of the running job: `fn({onProgress, signal})`, with the job's
// progress and Cancel, its error said in the page's words (with the API's code kept), and the
// engine's memory noted.
async function task(what, fn) {
  const clock = { stage: null, t0: performance.now() };
  try {
    return await fn({ onProgress: (p) => progressText(p, clock, what), signal: job.signal });
  } catch (e) {
    const said = e.code === 'aborted' ? `${what}: cancelled` : `${what} failed: ${pageWords(e.message)}`;
    throw Object.assign(new Error(said), { code: e.code });
  } finally {
    noteMemory();
  }
}

// The engine's wasm memory as last reported (readable by tests and the curious), and its peak.
function noteMemory() {
  if (!podar) return;
  state.peakMemory = Math.max(state.peakMemory, podar.memoryBytes);
  document.body.dataset.engineMemory = String(podar.memoryBytes);
  document.body.dataset.engineHeap = String(podar.heap.live);
}

async function busy(fn) {
  if (state.busy) return;
  state.busy = true;
  job = new AbortController();
  setStatus('Working…');
  // The control that started the job is disabled while it runs: keyboard focus goes to Cancel,
  // and comes back afterwards.
  const from = document.activeElement;
  refresh();
  if (from && from.disabled) $('cancel').focus();
  try {
    await fn();
    document.body.dataset.lastError = '';
  } catch (e) {
    setStatus(e.message);
    // The API's code of the job's error, for tests: "model-too-large", "aborted"…
    document.body.dataset.lastError = e.code || 'failed';
    $('bar').value = 0;
    // An engine that crashed, or that a Cancel stopped: a fresh one, with the model read again.
    if (podar && podar.stopped) await revive(e.code === 'aborted' ? 'cancelled' : e.message.replace(/^.*?failed: /, ''));
  } finally {
    job = null;
    state.busy = false;
    showEngine();
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
  el.textContent = `${names.join(', ')}: ${s.architecture} (${s.format}, ${s.dtype}) — ${s.layers} layers, ` +
    `hidden ${s.hidden}, MLP ${s.mlp}, heads ${s.heads} / ${s.kvHeads} KV, ` +
    `vocabulary ${s.vocabulary}, ${fmtParams(s.parameters)} parameters.`;
}

// `source`: a URL, or the chosen or dropped files.
async function loadModel(source) {
  await busy(async () => {
    state.loaded = false; state.pruned = false; state.download = null;
    model = null; pruned = null;
    // The engine drops the model it holds when another load starts, so whatever happens to this
    // one, the earlier model's summary, plan and results are gone.
    state.beforeCache.clear(); state.runs = [];
    $('summary').hidden = true; $('summary').textContent = '';
    state.plan = null;
    $('plan').textContent = 'Load a model to see the plan.';
    clearResults();
    drawRatio($('chart-ratio'), state.runs);
    refresh();
    if (Array.isArray(source)) {
      // The headers first: what the model is shows while its weights are read, and a model too
      // large for the page is refused before.
      const s = await task('Reading headers', (o) => podar.inspect(source, o));
      showSummary(s, source.map((f) => f.name));
    }
    model = await task('Loading', (o) => podar.load(source, o));
    showSummary(model.summary, model.summary.files);
    state.loaded = true;
    setStatus(`Model loaded: ${fmtParams(model.summary.parameters)} parameters` +
      (model.streamed ? ', read from its files a layer at a time as it is used (too large to hold in the page; ' +
        'generation reads every layer again for each token, so it is slow)' : '') + '. Choose a domain text and press Prune.');
    $('bar').value = 0;
  });
}

$('load-example').onclick = () => loadModel(new URL(EXAMPLE, location.href).href);
$('load-url').onclick = () => {
  const u = $('model-url').value.trim();
  if (!u) return setStatus('Type a model URL first.');
  let url;
  try { url = new URL(u, location.href); } catch { url = null; }
  if (!url || !['http:', 'https:'].includes(url.protocol)) {
    return setStatus(`“${u}” is not a web address: give an http:// or https:// link to a .gguf file or a Hugging Face model.`);
  }
  loadModel(url.href);
};
// Each input is cleared once read, so that choosing the same files again (after a cancel or an
// error) starts a new load.
const takeFiles = (e) => {
  const files = [...e.target.files];
  e.target.value = '';
  if (files.length) loadModel(files);
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
  if (files.length) loadModel(files);
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
  const info = await model.text(text, { calibSamples: samples, calibLen: len, limit: need + evalMax });
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

// The controls as the API's pruning options.
function options() {
  const mlp = field('mlp') / 100;
  const drop = field('drop-layers', { integer: true });
  const heads = field('heads') / 100;
  const calibSamples = field('calib-samples', { integer: true });
  const calibLen = field('calib-len', { integer: true });
  field('eval-tokens', { integer: true }); // read by the job itself; checked here with the rest
  const block = $('drop-mode').value === 'block';
  return {
    mlp: mlp > 0 ? mlp : undefined,
    divisor: $('divisor').value ? Number($('divisor').value) : undefined,
    score: $('score').value,
    recover: $('recover').checked,
    calibSamples,
    calibLen,
    dropLayers: drop > 0 && !block ? drop : undefined,
    dropBlock: drop > 0 && block ? drop : undefined,
    heads: heads > 0 ? heads : undefined,
    sequential: true,
    // On: the default strength, with the error estimated from residuals (the default) or measured; or off.
    correct: $('correct').value,
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
    const p = await model.plan(options(), { format: $('format').value, dtype: $('dtype').value });
    state.planError = false;
    state.plan = p;
    $('plan').textContent = `Parameters ${fmtParams(p.parametersBefore)} → ${fmtParams(p.parametersAfter)} ` +
      `(−${(100 * (1 - p.parametersAfter / p.parametersBefore)).toFixed(1)}%); layers ${p.layersBefore} → ${p.layersAfter}, ` +
      `MLP ${p.mlpBefore} → ${p.mlpAfter}, KV heads ${p.kvHeadsBefore} → ${p.kvHeadsAfter}; ` +
      `download about ${fmtBytes(p.fileBytes)}; calibration needs ${p.calibrationTokens} tokens.` +
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

// `of`: the Model or the Pruned.
async function perplexityOf(of, t, what) {
  return (await task(what, (o) => of.perplexity(t.text, { skip: t.skip, maxTokens: t.max, ctx: EVAL_CTX, ...o }))).perplexity;
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
    if (STATIC_SCORES.includes(opts.score) && !opts.recover && !opts.heads && !opts.dropLayers && !opts.dropBlock) {
      setStatus('Static weight scores damage small models badly; prefer a data-driven method.');
    }
    const skip = opts.calibSamples * opts.calibLen;
    const texts = await evalTexts(text, skip);
    const rows = [];
    for (const t of texts) {
      const key = `${t.name}|${t.skip}|${t.max}|${t.text.length}|${textHash(t.text)}`;
      if (!state.beforeCache.has(key)) state.beforeCache.set(key, await perplexityOf(model, t, `Scoring the original on ${t.name}`));
      rows.push({ name: t.name, before: state.beforeCache.get(key) });
    }
    drawPpl($('ppl'), rows);
    let r;
    try {
      pruned = await task('Pruning', (o) => model.prune(text, opts, o));
      r = pruned.report;
      state.pruned = true;
      drawLayers($('chart-layers'), pruned.layerInfluence, r.keptLayers);
      for (const [i, t] of texts.entries()) {
        rows[i].after = await perplexityOf(pruned, t, `Scoring the pruned model on ${t.name}`);
        drawPpl($('ppl'), rows);
      }
      const held = rows.find((x) => x.name.startsWith('your text'));
      const more = [r.keptLayers.length < r.layersBefore ? `${r.layersBefore - r.keptLayers.length} layers dropped` : '',
        r.keptKvHeads.some((k) => k.length < r.kvHeadsBefore) ? 'heads removed' : ''].filter(Boolean).join(', ');
      state.runs.push({ mlp: mlpPercent, score: opts.score, recover: opts.recover, more,
        ppl: held && held.after, base: held && held.before });
      drawRatio($('chart-ratio'), state.runs);
      state.evals = rows.map((x) => ({ name: x.name, before: x.before, after: x.after }));
    } catch (e) {
      // Cancelled or failed: what was not measured says so, instead of "…".
      for (const row of rows) if (row.after === undefined) row.after = null;
      drawPpl($('ppl'), rows);
      throw e;
    }
    const secs = (performance.now() - t0) / 1e3;
    $('sizes').textContent = `Parameters ${fmtParams(r.parametersBefore)} → ${fmtParams(r.parametersAfter)}; ` +
      `layers ${r.layersBefore} → ${r.keptLayers.length}; MLP ${r.mlpBefore} → ${r.mlpAfter}; ` +
      `calibrated on ${r.calibrationTokens} tokens; prune ${r.seconds.toFixed(1)} s, whole job ${secs.toFixed(1)} s; ` +
      `peak engine memory ${fmtBytes(state.peakMemory)}.`;
    $('bar').value = 1;
    const gpu = podar.capabilities.webgpu;
    state.lastJob = { seconds: secs, pruneSeconds: r.seconds, peakMemory: state.peakMemory,
      memory: podar.memoryBytes, heapLive: podar.heap.live, heapPeak: podar.heap.peak,
      engine: gpu && gpu.inUse ? 'webgpu' : 'cpu', gpuProducts: gpu ? gpu.products : 0 };
    setStatus(`Pruned to ${fmtParams(r.parametersAfter)} parameters in ${secs.toFixed(1)} s. Done`);
  });
}
$('prune').onclick = prune;

// The download is written when it is asked for, in the format and dtype chosen then. A prune keeps
// no copy of its output: a browser holds a written file until the page lets go of it and its
// garbage is collected, so a page that wrote one per prune could hold several models' worth.
// Where the browser lets the page write a file the user picks (Chromium's showSaveFilePicker), the
// export goes straight there, chunk by chunk, and is never held whole: a 1B model's bf16 zip
// (2.2 GB) passes what a browser holds in Blobs. Elsewhere it is a File, downloaded.
$('download').onclick = async () => {
  if (!state.pruned || state.busy) return;
  const format = $('format').value, dtype = $('dtype').value;
  if (typeof window.showSaveFilePicker === 'function') return saveToPickedFile(format, dtype);
  const key = `${format}|${dtype}`;
  if (state.download?.key !== key) {
    state.download = null;
    await busy(async () => {
      const t0 = performance.now();
      const out = await task('Writing the download', (o) => pruned.export({ format, dtype, evals: state.evals, ...o }));
      state.download = { key, file: out };
      const secs = (performance.now() - t0) / 1e3;
      if (state.lastJob) Object.assign(state.lastJob, { bytes: out.size, writeSeconds: secs, peakMemory: state.peakMemory });
      $('sizes').textContent += ` Download ${out.name}, ${fmtBytes(out.size)}, written in ${secs.toFixed(1)} s.`;
      setStatus(`Wrote ${out.name} (${fmtBytes(out.size)}); if the browser did not save it, press Download again.`);
    });
  }
  const d = state.download?.file;
  if (!d) return;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(d);
  a.download = d.name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
};

async function saveToPickedFile(format, dtype) {
  const types = format === 'gguf'
    ? [{ description: 'GGUF model', accept: { 'application/octet-stream': ['.gguf'] } }]
    : [{ description: 'Zip of a Hugging Face folder', accept: { 'application/zip': ['.zip'] } }];
  let handle;
  try {
    // Opened first, while the click's user activation lasts.
    handle = await window.showSaveFilePicker({ suggestedName: pruned.fileName(format), types });
  } catch (e) {
    setStatus(e.name === 'AbortError' ? 'Not saved: no file was chosen.' : `Saving failed: ${e.message}`);
    return;
  }
  await busy(async () => {
    const t0 = performance.now();
    const out = await task('Writing the download', async (o) =>
      pruned.export({ format, dtype, evals: state.evals, to: await handle.createWritable(), ...o }));
    const secs = (performance.now() - t0) / 1e3;
    if (state.lastJob) Object.assign(state.lastJob, { bytes: out.size, writeSeconds: secs, peakMemory: state.peakMemory });
    $('sizes').textContent += ` Saved ${handle.name}, ${fmtBytes(out.size)}, written in ${secs.toFixed(1)} s.`;
    setStatus(`Saved ${handle.name} (${fmtBytes(out.size)}).`);
  });
}

// Where the page has no shared memory, the API stops the engine, and the page starts a new one.
$('cancel').onclick = () => {
  if (!state.busy || !job) return;
  job.abort();
  setStatus('Cancelling…');
};

$('generate').onclick = () => busy(async () => {
  const prompt = $('prompt').value;
  const chat = $('chat').checked;
  for (const [of, id, name] of [[model, 'gen-source', 'original'], [pruned, 'gen-pruned', 'pruned']]) {
    const out = $(id);
    out.textContent = '';
    await task(`Generating (${name})`, async ({ signal }) => {
      for await (const piece of of.generate(prompt, { maxTokens: 48, chat, signal })) out.textContent += piece;
    });
  }
  setStatus('Generated with both models. Done');
});

// ---- start -----------------------------------------------------------------------------------
// The engine line, from the API's capabilities: CPU threads, and whether the matrix products run
// on WebGPU (and if not, why not).
function engineText() {
  const c = podar.capabilities;
  const cpu = `CPU, WebAssembly ${c.relaxedSimd ? 'relaxed SIMD' : 'SIMD'}, ${c.threads} thread${c.threads > 1 ? 's' : ''}`;
  const g = c.webgpu;
  const ms = (x) => (x === null ? 'failed' : `${x.toFixed(0)} ms`);
  let gpu;
  if (!g) gpu = `no GPU (${c.webgpuUnavailable || 'not checked'})`;
  else if (g.failed) gpu = `WebGPU failed (${g.error || 'unknown error'}); the CPU took over`;
  else if (g.inUse) gpu = `matrix products on WebGPU: ${g.adapter}`;
  else if (state.forcedCpu || !g.trial) gpu = `WebGPU available (${g.adapter}), CPU forced`;
  else gpu = `WebGPU available (${g.adapter}), the CPU is faster (one product: CPU ${ms(g.trial.cpuMs)}, GPU ${ms(g.trial.gpuMs)})`;
  // Without shared memory nothing can stop a running call but the end of its engine.
  const shared = c.crossOriginIsolated && typeof SharedArrayBuffer === 'function';
  const noShared = c.crossOriginIsolated ? 'this browser gives the page no SharedArrayBuffer' : 'the page is not cross-origin isolated';
  return `Engine ready: ${cpu}; ${gpu}.` + (shared && c.threadsUnavailable ? ` (One thread: ${c.threadsUnavailable}.)` : '') +
    (shared ? '' : ` (Cancel restarts the engine: ${noShared}.)`);
}

function showEngine() {
  if (!podar || podar.stopped) return;
  const g = podar.capabilities.webgpu;
  // Ticked whenever the CPU runs everything: no adapter, the engine found the CPU faster, the GPU
  // failed, or the reader ticked it.
  if (!g || !g.inUse) $('force-cpu').checked = true;
  state.gpu = g;
  $('engine').textContent = engineText();
  refresh();
}

$('force-cpu').onchange = () => busy(async () => {
  state.forcedCpu = $('force-cpu').checked;
  await task('Switching engine', () => podar.setGpu(!$('force-cpu').checked));
  setStatus($('force-cpu').checked ? 'The CPU runs everything. Done' : 'Matrix products run on WebGPU. Done');
});

(async () => {
  try {
    // On a host that sends no COOP/COEP headers (the static site, `make site`), podar's service
    // worker makes the page cross-origin isolated, for threads: this reloads the page once.
    refresh();
    await isolate('./coi-sw.js').catch((e) => console.warn(`podar: no cross-origin isolation (${e.message})`));
    podar = await Podar.create(engineOptions());
    noteMemory();
    showEngine();
  } catch (e) {
    $('engine').textContent = `The engine could not start: ${e.message}.`;
    setStatus(`The engine could not start: ${e.message}.`);
  }
})();

// For tests and benchmarks: the last job's numbers.
window.podar = { state };
