// The JavaScript API (pkg/index.js, from js/) in headless Chromium, as a page that embeds it would
// use it: examples/minimal/ prunes the example model for a text and its GGUF download is checked
// with podar's own loader; then, through the API itself, an abort at every stage (load, text, prune,
// perplexity, generate, export) leaves the instance usable, errors carry their codes, a replaced
// model or prune says so, and two instances work side by side.
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { root, serve, launch, cli } from './harness.mjs';

const log = (...a) => console.log('[api]', ...a);
const text = fs.readFileSync(path.join(root, 'www/presets/code-python.txt'), 'utf8');
const out = path.join(root, 'target/e2e-api');
fs.mkdirSync(out, { recursive: true });

// The package as `npm pack` would write it: the API, its types, the engine and the three builds.
const packed = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: path.join(root, 'pkg'), encoding: 'utf8' }))[0];
const files = packed.files.map((f) => f.path);
for (const f of ['index.js', 'index.d.ts', 'worker.js', 'gpu-bridge.js', 'gpu-worker.js', 'coi-sw.js', 'podar.js', 'podar_bg.wasm',
  'threads/podar.js', 'threads/podar_bg.wasm', 'threads-relaxed/podar.js', 'threads-relaxed/podar_bg.wasm', 'README.md', 'LICENSE']) {
  assert.ok(files.includes(f), `npm pack leaves out ${f}`);
}
// The JavaScript of each build's own snippets (named by a hash): whatever each build imports.
for (const build of ['', 'threads/', 'threads-relaxed/']) {
  const js = fs.readFileSync(path.join(root, 'pkg', build, 'podar.js'), 'utf8');
  for (const [, f] of js.matchAll(/from '\.\/(snippets\/[^']+)'/g)) assert.ok(files.includes(build + f), `npm pack leaves out ${build + f}`);
}
const manifest = JSON.parse(fs.readFileSync(path.join(root, 'pkg/package.json'), 'utf8'));
assert.deepEqual(manifest.dependencies || {}, {}, 'the package has runtime dependencies');
log(`npm pack: ${packed.filename}, ${files.length} files, ${(packed.size / 1e6).toFixed(1)} MB packed`);

const app = await serve(root);
const browser = await launch();
let failed = false;
try {
  const page = await (await browser.newContext({ acceptDownloads: true })).newPage();
  page.on('pageerror', (e) => log('page error:', e.message));
  const status = () => page.locator('#status').textContent();
  const until = (re, ms) => page.waitForFunction((src) => new RegExp(src).test(document.getElementById('status').textContent),
    re.source, { timeout: ms });

  // The minimal example, as a user would use it.
  await page.goto(`${app.url}examples/minimal/`);
  await until(/Loaded|Failed/, 120_000);
  log('minimal:', await status());
  assert.match(await status(), /Loaded: 134\.5M parameters/);
  await page.locator('#text').fill(text);
  await page.getByRole('button', { name: /Prune/ }).click();
  await until(/Done|Failed|Cancelled/, 600_000);
  const said = await status();
  log('minimal:', said);
  assert.match(said, /^Done: perplexity [\d.]+ → [\d.]+, [\d.]+M parameters\.$/);
  const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#download').click()]);
  const gguf = path.join(out, 'minimal.gguf');
  await download.saveAs(gguf);
  const info = cli('inspect', gguf);
  log('the download, by podar inspect:', info.split('\n').slice(0, 2).join(' | '));
  assert.match(info, /MLP 1229\n/, 'the GGUF does not have 80% of the 1536 MLP neurons');
  const after = Number(/→ ([\d.]+)/.exec(said)[1]);
  assert.ok(after > 1 && after < 100, `perplexity after ${after}`);

  // The teaching example: layer influence and neuron scores for the reader's text, and a slider that
  // prunes and shows the perplexity.
  const explain = await (await page.context()).newPage();
  explain.on('pageerror', (e) => log('explain page error:', e.message));
  await explain.goto(`${app.url}examples/explain/`);
  await explain.waitForFunction(() => /Ready|Failed/.test(document.getElementById('status').textContent), null, { timeout: 120_000 });
  await explain.getByRole('button', { name: 'Measure' }).click();
  await explain.waitForFunction(() => /Measured|Failed/.test(document.getElementById('status').textContent), null, { timeout: 300_000 });
  assert.match(await explain.locator('#status').textContent(), /^Measured on 512 tokens\.$/);
  assert.equal(await explain.locator('#layers rect').count(), 30);
  assert.equal(await explain.locator('#neurons rect').count(), 1536);
  assert.equal(await explain.locator('#neurons rect.cut').count(), 1536 - 1229);
  await explain.waitForFunction(() => /with 20%|Failed/.test(document.getElementById('cost').textContent), null, { timeout: 300_000 });
  const at20 = await explain.locator('#cost').textContent();
  // Two moves in a row: the first prune is aborted, the second one's number shows.
  const slide = (v) => explain.locator('#prune').evaluate((e, v) => {
    e.value = v;
    e.dispatchEvent(new Event('input'));
    e.dispatchEvent(new Event('change'));
  }, v);
  await slide('30');
  await slide('40');
  await explain.waitForFunction(() => /with 40%|Failed/.test(document.getElementById('cost').textContent), null, { timeout: 300_000 });
  const at40 = await explain.locator('#cost').textContent();
  log('explain:', at20, '|', at40);
  const ppl = (t) => Number(/([\d.]+) with/.exec(t)[1]);
  assert.ok(ppl(at40) > ppl(at20), 'pruning 40% costs less than 20%');
  await explain.close();

  // The API itself, in the same page (its import map names the package).
  const r = await page.evaluate(async ({ text }) => {
    const { Podar, PodarError } = await import('podar');
    const url = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href);
    const res = {};
    const outcome = (p) => p.then(() => 'resolved', (e) => `${e instanceof PodarError ? 'PodarError' : 'other'} ${e.name} ${e.code}`);
    // Aborts when the progress first reports `stage`.
    const abortAt = (stage) => {
      const c = new AbortController();
      return { signal: c.signal, onProgress: (p) => { if (p.stage.startsWith(stage)) c.abort(); } };
    };
    const t0 = performance.now();
    const podar = await Podar.create();
    res.capabilities = podar.capabilities;
    res.abortLoad = await outcome(podar.load(url, abortAt('load')));
    const stages = new Set();
    const model = await podar.load(url, { onProgress: (p) => stages.add(p.stage) });
    res.loadStages = [...stages];
    res.summary = model.summary;
    const gone = new AbortController();
    gone.abort();
    res.abortText = await outcome(model.text(text, { signal: gone.signal }));
    res.domain = await model.text(text, { calibSamples: 2 });
    res.short = await outcome(model.prune('def f(): pass', { mlp: 0.2, calibSamples: 2 }));
    res.nothing = await outcome(model.prune(text, { calibSamples: 2 }));
    res.unknown = await outcome(model.prune(text, { mlp: 0.2, mpl: 0.3 }));
    res.badPlan = await outcome(model.plan({ mlp: 1.5 }));
    res.plan = await model.plan({ mlp: 0.2 }, { format: 'gguf', dtype: 'q8_0' });
    res.abortPrune = await outcome(model.prune(text, { mlp: 0.2, calibSamples: 2 }, abortAt('calibrate')));
    const etas = [];
    const pruned = await model.prune(text, { mlp: 0.2, calibSamples: 2 }, { onProgress: (p) => etas.push(p.eta) });
    res.etas = etas.filter((e) => e !== null).length;
    res.report = pruned.report;
    res.influence = pruned.layerInfluence.length;
    const held = { skip: pruned.calibTokens, maxTokens: 512 };
    res.abortEval = await outcome(pruned.perplexity(text, { ...held, ...abortAt('eval') }));
    res.before = (await model.perplexity(text, held)).perplexity;
    res.after = (await pruned.perplexity(text, held)).perplexity;
    // Generation aborted after its first piece, then in full.
    const c = new AbortController();
    const pieces = [];
    res.abortGenerate = await outcome((async () => {
      for await (const piece of pruned.generate('def fibonacci(n):', { maxTokens: 40, signal: c.signal })) {
        pieces.push(piece);
        c.abort();
      }
    })());
    res.piecesBeforeAbort = pieces.length;
    let generated = '';
    for await (const piece of pruned.generate('def fibonacci(n):', { maxTokens: 16 })) generated += piece;
    res.generated = generated;
    // Leaving the loop early stops the engine's generation: the next call runs at once.
    for await (const piece of pruned.generate('def fibonacci(n):', { maxTokens: 400 })) if (piece) break;
    const t = performance.now();
    await model.plan({ mlp: 0.3 });
    res.afterBreakMs = performance.now() - t;
    res.abortExport = await outcome(pruned.export({ format: 'gguf', dtype: 'q8_0', ...abortAt('write') }));
    const file = await pruned.export({ format: 'gguf', dtype: 'q8_0' });
    res.file = { name: file.name, size: file.size, magic: new TextDecoder().decode(await file.slice(0, 4).arrayBuffer()) };
    // A second prune replaces the first; a second model replaces both.
    const again = await model.prune(text, { mlp: 0.1, calibSamples: 2 });
    res.replacedPrune = await outcome(pruned.perplexity(text, held));
    res.again = again.report.mlpAfter;
    // A count that goes past the calibration's need, to know a held-out part is left.
    res.limited = await model.text(text, { calibSamples: 2, limit: 3000 });
    // Headers alone, from a Blob; the GPU switch without an adapter (no WebGPU here) says why.
    res.inspected = await podar.inspect(await (await fetch(url)).blob());
    res.noGpu = await outcome(podar.setGpu(true));
    // A fresh engine: the model is read again and measures the same; the pruned model is gone.
    res.restarted = await podar.restart();
    res.stoppedAfter = podar.stopped;
    res.afterRestart = (await model.perplexity(text, held)).perplexity;
    res.prunedAfterRestart = await outcome(again.perplexity(text, held));
    // Two instances side by side; disposing one leaves the other.
    const other = await Podar.create({ threads: false });
    res.otherThreads = other.capabilities.threads;
    const otherModel = await other.load(url);
    res.otherPpl = (await otherModel.perplexity(text, held)).perplexity;
    other.dispose();
    res.disposed = await outcome(otherModel.perplexity(text, held));
    res.stillBefore = (await model.perplexity(text, held)).perplexity;
    await podar.load(url);
    res.replacedModel = await outcome(model.perplexity(text, held));
    res.seconds = (performance.now() - t0) / 1e3;
    return res;
  }, { text });
  // The model cache: stored, read back without the network, listed, deleted; and with the site's
  // quota full, the load still works, nothing is left half-stored, and the model says why.
  const c = await page.evaluate(async () => {
    const { Podar } = await import('podar');
    const url = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href).href;
    const podar = await Podar.create();
    await podar.cache.delete();
    const res = {};
    res.first = (await podar.load(url, { cache: true })).cache;
    const stages = new Set();
    res.second = (await podar.load(url, { cache: true, onProgress: (p) => stages.add(p.stage) })).cache;
    res.secondStages = [...stages];
    res.list = await podar.cache.list();
    res.deleted = await podar.cache.delete(url);
    res.after = await podar.cache.list();
    podar.dispose();
    return res;
  });
  log('cache:', JSON.stringify(c.first), JSON.stringify(c.second), c.secondStages.join(', '));
  assert.deepEqual(c.first, { hits: 0, stored: 1, error: null });
  assert.deepEqual(c.second, { hits: 1, stored: 0, error: null });
  assert.ok(!c.secondStages.some((s) => s.startsWith('download')), 'a cached model was downloaded again');
  assert.equal(c.list.length, 1);
  assert.equal(c.list[0].bytes, fs.statSync(path.join(root, 'models/SmolLM2-135M-Instruct.Q4_1.gguf')).size);
  assert.ok(c.deleted && c.after.length === 0, 'the cached model was not deleted');
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(app.url).origin, quotaSize: 10_000_000 });
  const q = await page.evaluate(async () => {
    const { Podar } = await import('podar');
    const podar = await Podar.create();
    const model = await podar.load(new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href), { cache: true });
    const res = { cache: model.cache, list: await podar.cache.list(), parameters: model.summary.parameters };
    podar.dispose();
    return res;
  });
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(app.url).origin });
  log('cache with a 10 MB quota:', JSON.stringify(q.cache));
  assert.equal(q.cache.stored, 0);
  assert.match(q.cache.error || '', /quota/);
  assert.equal(q.list.length, 0, 'a half-stored entry is left');
  assert.equal(q.parameters, 134515008);

  // An export written to a WritableStream as it is made (what the page does with a file the user
  // picks in Chromium): the same bytes as the File, into a file of the origin's private file
  // system; a slow stream holds the engine back (at most four 8 MiB chunks on their way); an abort
  // or a refused write leaves the file as it was, and the engine usable.
  const sink = await page.evaluate(async ({ text }) => {
    const { Podar, PodarError } = await import('podar');
    const podar = await Podar.create({ gpu: false });
    const model = await podar.load(new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href));
    const pruned = await model.prune(text, { mlp: 0.2, calibSamples: 2 });
    const res = { isolated: self.crossOriginIsolated, name: pruned.fileName('gguf') };
    const sha = async (blob) => [...new Uint8Array(await crypto.subtle.digest('SHA-256', await blob.arrayBuffer()))]
      .map((b) => b.toString(16).padStart(2, '0')).join('');
    const outcome = (p) => p.then(() => 'resolved', (e) => `${e instanceof PodarError ? 'PodarError' : 'other'} ${e.code}`);
    const file = await pruned.export({ format: 'gguf', dtype: 'q8_0' });
    res.fileSha = await sha(file);
    const dir = await navigator.storage.getDirectory();
    const handle = await dir.getFileHandle(res.name, { create: true });
    res.written = await pruned.export({ format: 'gguf', dtype: 'q8_0', to: await handle.createWritable() });
    res.savedSha = await sha(await handle.getFile());
    // Aborted halfway: the file keeps its earlier bytes.
    const c = new AbortController();
    res.aborted = await outcome(pruned.export({ format: 'gguf', dtype: 'q8_0', to: await handle.createWritable(), signal: c.signal,
      onProgress: (p) => { if (p.done > p.total / 2) c.abort(); } }));
    res.afterAbortSha = await sha(await handle.getFile());
    // A stream slower than the export: how far the export runs ahead of what is written.
    let produced = 0, written = 0, ahead = 0, chunks = 0;
    const slow = new WritableStream({
      async write(chunk) {
        ahead = Math.max(ahead, produced - written);
        await new Promise((r) => setTimeout(r, 60));
        written += chunk.length;
        chunks++;
      },
    });
    res.slow = await pruned.export({ format: 'hf', dtype: 'f32', to: slow, onProgress: (p) => { produced = p.done; } });
    Object.assign(res, { slowWritten: written, ahead, chunks });
    // A stream that refuses its third chunk (a full disk, say).
    let n = 0;
    const full = new WritableStream({ write() { if (++n === 3) throw new Error('no space left'); } });
    res.refused = await pruned.export({ format: 'hf', dtype: 'f32', to: full }).then(() => 'resolved', (e) => `${e.code}: ${e.message}`);
    res.afterRefusal = (await model.plan({ mlp: 0.2 })).parametersAfter > 0;
    res.notAStream = await outcome(pruned.export({ to: 'model.zip' }));
    await dir.removeEntry(res.name);
    podar.dispose();
    return res;
  }, { text });
  log('export to a stream:', JSON.stringify(sink));
  assert.equal(sink.name, 'SmolLM2-135M-Instruct.Q4_1-podar.gguf');
  assert.equal(sink.written.name, sink.name);
  assert.equal(sink.savedSha, sink.fileSha, 'the file written through the stream differs from the File');
  assert.equal(sink.aborted, 'PodarError aborted');
  assert.equal(sink.afterAbortSha, sink.fileSha, 'an aborted export changed the file');
  assert.equal(sink.slowWritten, sink.slow.size);
  assert.ok(sink.chunks > 40, `${sink.chunks} chunks`);
  // Cross-origin isolated, the engine waits: four chunks on their way, one more being counted.
  if (sink.isolated) assert.ok(sink.ahead <= 5 * 8 * 2 ** 20, `the export ran ${sink.ahead} bytes ahead of a slow stream`);
  assert.match(sink.refused, /^write-failed: writing the file failed: no space left/);
  assert.ok(sink.afterRefusal, 'the engine did not answer after a refused write');
  assert.equal(sink.notAStream, 'PodarError bad-input');

  // A start that freezes in the thread pool's start (Firefox's did, about once in 30 on this
  // machine) is replaced: after one such start the engine runs with threads, after two without.
  const frozen = await page.evaluate(async () => {
    const { Podar } = await import('podar');
    const res = [];
    for (const freezePool of [1, 2]) {
      const t0 = performance.now();
      const podar = await Podar.create({ freezePool, gpu: false });
      const c = podar.capabilities;
      res.push({ freezePool, threads: c.threads, why: c.threadsUnavailable, seconds: (performance.now() - t0) / 1e3 });
      podar.dispose();
    }
    return res;
  });
  log('frozen pool starts:', JSON.stringify(frozen));
  assert.ok(frozen[0].threads > 1 && frozen[0].why === null, JSON.stringify(frozen[0]));
  assert.ok(frozen[1].threads === 1 && /did not start in 2 tries/.test(frozen[1].why), JSON.stringify(frozen[1]));

  // The example model read from its file a layer at a time (stream: true), as a model too large to
  // hold is: the same perplexities (within rounding: the LM head is applied by blocks of the
  // vocabulary), the same GGUF byte for byte and the same generated text, in a fraction of the memory.
  const streaming = await page.evaluate(async ({ text }) => {
    const { Podar } = await import('podar');
    const url = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href);
    const res = {};
    for (const stream of [false, true]) {
      const podar = await Podar.create({ gpu: false });
      const model = await podar.load(url, { stream });
      const before = (await model.perplexity(text, { maxTokens: 512 })).perplexity;
      const pruned = await model.prune(text, { mlp: 0.2, calibSamples: 16 });
      const after = (await pruned.perplexity(text, { maxTokens: 512 })).perplexity;
      const file = await pruned.export({ format: 'gguf', dtype: 'q8_0' });
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', await file.arrayBuffer()));
      const generate = [];
      for (const of of [model, pruned]) {
        let out = '';
        for await (const piece of of.generate('def fibonacci(n):', { maxTokens: 12 })) out += piece;
        generate.push(out);
      }
      res[stream] = { streamed: model.streamed, before, after, sha256: [...digest].map((b) => b.toString(16).padStart(2, '0')).join(''),
        heapPeakMiB: podar.heap.peak / 2 ** 20, memoryMiB: podar.memoryBytes / 2 ** 20, generate };
      podar.dispose();
    }
    return res;
  }, { text });
  log('held in memory:', JSON.stringify(streaming.false));
  log('streamed:', JSON.stringify(streaming.true));
  assert.equal(streaming.false.streamed, false);
  assert.equal(streaming.true.streamed, true);
  for (const k of ['before', 'after']) {
    const [a, b] = [streaming.false[k], streaming.true[k]];
    assert.ok(Math.abs(a - b) <= 1e-6 * a, `perplexity ${k}: ${a} held, ${b} streamed`);
  }
  assert.equal(streaming.true.sha256, streaming.false.sha256, 'the streamed prune exported another GGUF');
  assert.ok(streaming.true.heapPeakMiB < streaming.false.heapPeakMiB / 2, 'streaming did not halve the heap\'s peak');
  assert.ok(streaming.true.generate[1].length > 0, 'the streamed model generated nothing');
  assert.deepEqual(streaming.true.generate, streaming.false.generate, 'streamed generation gave other text');

  // Per-layer MLP widths: the prune keeps the uniform job's parameter count with widths of its
  // own per layer, refuses the Hugging Face download, and its GGUF (llama.cpp's deci) loads back
  // in the page with those widths and the pruned model's perplexity.
  const perLayer = await page.evaluate(async ({ text }) => {
    const { Podar } = await import('podar');
    const url = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href);
    const podar = await Podar.create({ gpu: false });
    const model = await podar.load(url);
    const opts = { mlp: 0.2, calibSamples: 4, mlpWidths: 'per-layer' };
    const pruned = await model.prune(text, opts);
    const held = { skip: 512, maxTokens: 512 };
    const after = (await pruned.perplexity(text, held)).perplexity;
    const hf = await pruned.export({ format: 'hf', dtype: 'f16' }).then(() => 'exported', (e) => `${e.code}: ${e.message}`);
    const file = await pruned.export({ format: 'gguf', dtype: 'f16' });
    const back = await podar.load(file);
    const res = { widths: pruned.report.mlpPerLayer,
      backWidths: back.summary.mlpPerLayer ?? null,
      after, backAfter: (await back.perplexity(text, held)).perplexity, hf };
    podar.dispose();
    return res;
  }, { text });
  log('per-layer widths:', JSON.stringify(perLayer));
  assert.ok(new Set(perLayer.widths).size > 1, `per-layer widths all equal: ${perLayer.widths}`);
  assert.equal(perLayer.widths.reduce((a, b) => a + b, 0), 30 * 1229, 'per-layer widths changed the total');
  assert.deepEqual(perLayer.backWidths, perLayer.widths, 'the GGUF came back with other widths');
  assert.ok(Math.abs(perLayer.backAfter - perLayer.after) <= 0.01 * perLayer.after,
    `the per-layer GGUF scores ${perLayer.backAfter}, the pruned model ${perLayer.after}`);
  assert.match(perLayer.hf, /bad-input: .*GGUF/);

  // Out of memory, on a small model: with the engine's heap capped at what loading the model took
  // (the wasm memory after a load, which holds the heap's peak) and so below what pruning it takes,
  // the prune fails with its code and says why, on two threads (where a thread of the pool runs out)
  // as on one; the engine is restarted with the model read again, and the instance measures as before.
  const oom = (threads) => page.evaluate(async ({ text, threads }) => {
    const { Podar } = await import('podar');
    const url = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href);
    const free = await Podar.create({ threads });
    await free.load(url);
    const limit = free.memoryBytes;
    free.dispose();
    const podar = await Podar.create({ memoryLimit: limit, threads });
    const model = await podar.load(url);
    const res = { before: (await model.perplexity(text, { maxTokens: 512 })).perplexity };
    res.prune = await model.prune(text, { mlp: 0.2, calibSamples: 8 }).then(() => 'resolved', (e) => `${e.code}: ${e.message}`);
    res.stopped = podar.stopped;
    res.after = (await model.perplexity(text, { maxTokens: 512 })).perplexity;
    res.stoppedAfter = podar.stopped;
    podar.dispose();
    return res;
  }, { text, threads });
  for (const threads of ['auto', false]) {
    const o = await oom(threads);
    log(`out of memory (threads ${threads}):`, JSON.stringify(o));
    assert.match(o.prune, /^out-of-memory: out of memory: the engine could not get \d+ [KM]B more with \d+ MB in use \(its memoryLimit is \d+ MB\)$/);
    assert.equal(o.stopped, true);
    assert.equal(o.after, o.before, 'the model read again after running out of memory measures otherwise');
    assert.equal(o.stoppedAfter, false);
  }

  log('capabilities:', JSON.stringify(r.capabilities));
  log(`load stages ${r.loadStages.join(', ')}; domain ${r.domain.tokens} tokens (need ${r.domain.need}); ` +
    `plan ${r.plan.parametersAfter} parameters, ${r.plan.fileBytes} bytes`);
  log(`perplexity ${r.before.toFixed(3)} → ${r.after.toFixed(3)}; generated ${JSON.stringify(r.generated)}; ` +
    `export ${r.file.name} ${r.file.size} bytes; ${r.seconds.toFixed(1)} s in all`);
  const abortError = 'PodarError AbortError aborted';
  for (const k of ['abortLoad', 'abortText', 'abortPrune', 'abortEval', 'abortGenerate', 'abortExport']) {
    log(`${k}: ${r[k]}`);
    assert.equal(r[k], abortError, k);
  }
  assert.deepEqual(r.loadStages.filter((s) => !s.startsWith('download')), ['hash', 'load']);
  assert.equal(r.summary.architecture, 'llama');
  assert.equal(r.summary.mlp, 1536);
  assert.ok(r.domain.enough && r.domain.need === 256, JSON.stringify(r.domain));
  assert.equal(r.short, 'PodarError PodarError text-too-short');
  assert.equal(r.nothing, 'PodarError PodarError bad-input');
  assert.equal(r.unknown, 'PodarError PodarError bad-input');
  assert.equal(r.badPlan, 'PodarError PodarError bad-input');
  assert.equal(r.plan.mlpAfter, 1229);
  assert.ok(r.etas > 0, 'no progress event carried an estimate of the time left');
  assert.equal(r.report.mlpAfter, 1229);
  assert.equal(r.influence, 30);
  assert.ok(r.before > 1 && r.after > r.before * 0.9 && r.after < r.before * 3, `${r.before} → ${r.after}`);
  assert.equal(r.piecesBeforeAbort, 1);
  assert.ok(r.generated.length > 0);
  assert.ok(r.afterBreakMs < 5000, `a call after leaving a generation early waited ${r.afterBreakMs} ms`);
  assert.equal(r.file.magic, 'GGUF');
  assert.equal(r.file.name, 'SmolLM2-135M-Instruct.Q4_1-podar.gguf');
  assert.equal(r.replacedPrune, 'PodarError PodarError superseded');
  assert.equal(r.again, 1383);
  assert.ok(r.limited.tokens >= 3000 && r.limited.need === 256 && r.limited.windows === Math.floor(r.limited.tokens / 128),
    JSON.stringify({ ...r.limited, text: undefined }));
  assert.equal(r.inspected.parameters, 134515008);
  assert.equal(r.inspected.mlp, 1536);
  assert.equal(r.noGpu, 'PodarError PodarError gpu');
  assert.equal(r.restarted, true);
  assert.equal(r.stoppedAfter, false);
  assert.equal(r.afterRestart, r.before, 'the model read again after a restart measures otherwise');
  assert.equal(r.prunedAfterRestart, 'PodarError PodarError superseded');
  assert.equal(r.otherThreads, 1);
  assert.equal(r.otherPpl.toFixed(4), r.before.toFixed(4), 'the second, single-threaded instance measures otherwise');
  assert.equal(r.disposed, 'PodarError PodarError disposed');
  assert.equal(r.stillBefore, r.before, 'the original measured after the prunes differs');
  assert.equal(r.replacedModel, 'PodarError PodarError superseded');
  log('all checks passed');
} catch (e) {
  failed = true;
  console.error('[api] FAILED:', e.message);
} finally {
  await browser.close();
  app.proc.kill();
}
process.exit(failed ? 1 : 0);
