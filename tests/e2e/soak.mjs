// The page under interruption, in headless Chromium: jobs cancelled at random moments (during the
// model's load, calibration, recovery, evaluation and export), then one more prune that must give
// what an uninterrupted one gave, with the engine's wasm memory bounded: a wasm memory never shrinks,
// and the allocator may grow it a little when freed blocks are fragmented, but over all the cancels
// and the job after them it may grow by at most an eighth of what one job used (the model alone is
// more than half of that, so a job that kept anything of the size of a model would fail this).
// An engine killed in the middle of a job is restarted, and the page says so.
// PODAR_SOAK_CANCELS (default 50) sets the number of cancels; PODAR_SOAK_SEED the random moments;
// PODAR_SOAK_BLOBS=1 logs the browser's blobs (chrome://blob-internals) after each cancel.
import path from 'node:path';
import assert from 'node:assert/strict';
import { root, serve, launch, openPage, pickIntoPrivateFiles, pickedSize } from './harness.mjs';

const CANCELS = Number(process.env.PODAR_SOAK_CANCELS || 50);
let seed = Number(process.env.PODAR_SOAK_SEED || 12345);
const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const log = (...a) => console.log('[soak]', ...a);

const app = await serve(root);
const browser = await launch();
let failed = false;
let shown = null;
let blobs = async () => {};
try {
  const page = await (await browser.newContext({ acceptDownloads: true })).newPage();
  shown = () => page.evaluate(() => ({
    status: document.getElementById('status').textContent, prune: document.getElementById('prune').disabled,
    cancel: document.getElementById('cancel').disabled, text: document.getElementById('text-info').textContent,
    plan: document.getElementById('plan').textContent, engine: document.getElementById('engine').textContent }));
  page.on('pageerror', (e) => log('page error:', e.message));
  // Download writes into a file of the origin's private file system (Chromium's save picker,
  // replaced): cancels during it abort that file's stream.
  await pickIntoPrivateFiles(page);
  log(await openPage(page, app.url));
  // PODAR_SOAK_BLOBS=1: the browser's blobs (chrome://blob-internals) after each job, to see what holds them.
  const blobPage = process.env.PODAR_SOAK_BLOBS ? await page.context().newPage() : null;
  blobs = async (when) => {
    if (!blobPage) return;
    await blobPage.goto('chrome://blob-internals');
    const t = await blobPage.textContent('body');
    const sizes = [...t.matchAll(/Length: ([\d,]+)/g)].map((m) => Number(m[1].replace(/,/g, '')));
    log(`blobs ${when}: ${sizes.length} items, ${(sizes.reduce((a, b) => a + b, 0) / 2 ** 20).toFixed(0)} MiB`);
  };
  const status = () => page.locator('#status').textContent();
  const memory = () => page.evaluate(() => Number(document.body.dataset.engineMemory || 0));
  // The engine's heap in use after the last call: what a leak would grow.
  const heap = () => page.evaluate(() => Number(document.body.dataset.engineHeap || 0));
  // Clears the status line, runs `act`, and waits for the status to match `re`.
  const until = async (re, ms, act = async () => {}) => {
    await page.evaluate(() => { document.getElementById('status').textContent = ''; });
    await act();
    await page.waitForFunction((src) => new RegExp(src).test(document.getElementById('status').textContent),
      re.source, { timeout: ms });
    return status();
  };
  // A job has ended when Cancel is disabled again (Prune stays disabled after a cancelled load).
  const idle = () => page.waitForFunction(() => document.getElementById('cancel').disabled, null, { timeout: 300_000 });
  const load = () => until(/Model loaded|failed|cancelled/, 300_000,
    () => page.getByRole('button', { name: 'Load example model' }).click());

  let t = Date.now();
  assert.match(await load(), /Model loaded/);
  const loadMs = Date.now() - t;
  await page.getByLabel('Domain text file').setInputFiles(path.join(root, 'www/presets/code-python.txt'));
  await page.getByLabel('Calibration windows').fill('2');
  await page.getByLabel('Evaluation tokens per text').fill('256');
  await page.getByLabel('MLP pruning (%)').fill('20');
  // Downloads in f16 (227 MB): those the write cancels let finish stay in the browser's Blob storage
  // until the page's garbage is collected, and a profile without disk holds about 2 GB in all.
  await page.getByLabel('Dtype').selectOption('f16');
  await page.waitForFunction(() => /tokens: enough/.test(document.getElementById('text-info').textContent), null, { timeout: 60_000 });
  const prune = () => until(/Done$|failed|cancelled/, 600_000, () => page.getByRole('button', { name: 'Prune' }).click());
  const result = async () => (await page.locator('#ppl tbody').textContent()).replace(/\s+/g, ' ');

  // An uninterrupted job: what every later one must give. (The first also scores the original,
  // which later jobs take from the page's cache: the second one's length is what cancels span.)
  assert.match(await prune(), /Done$/);
  const want = await result();
  t = Date.now();
  assert.match(await prune(), /Done$/);
  const jobMs = Date.now() - t;
  assert.equal(await result(), want, 'two uninterrupted jobs differ');
  // The download, written when asked for: its time is what cancels during it span.
  t = Date.now();
  await until(/^Saved |failed/, 300_000, () => page.getByRole('button', { name: 'Download' }).click());
  const writeMs = Date.now() - t;
  // The saved file's size: a cancelled save leaves the file as it was (its stream is aborted, and
  // nothing it wrote reaches the file), never cut short.
  let saved = await pickedSize(page);
  assert.ok(saved > 1e8, `the saved file holds ${saved} bytes`);
  const m0 = await memory();
  const h0 = await heap();
  log(`load ${(loadMs / 1e3).toFixed(1)} s, job ${(jobMs / 1e3).toFixed(1)} s, download ${(writeMs / 1e3).toFixed(1)} s, wasm memory ${(m0 / 2 ** 20).toFixed(0)} MiB, ` +
    `heap in use ${(h0 / 2 ** 20).toFixed(0)} MiB; perplexity ${want}`);

  // Cancels at random moments: every tenth during the load, every tenth while the download is
  // written (where the last job left a pruned model), the rest during the job.
  const stages = {};
  const bound = m0 + m0 / 8;
  let last = m0;
  let grew = 0;
  for (let i = 0; i < CANCELS; i++) {
    const duringLoad = i % 10 === 5;
    const duringWrite = i % 10 === 8 && !(await page.locator('#download').isDisabled());
    const button = duringLoad ? 'Load example model' : duringWrite ? 'Download' : 'Prune';
    const wait = Math.floor(random() * (duringLoad ? loadMs : duringWrite ? writeMs : jobMs));
    await page.evaluate(() => { document.getElementById('status').textContent = ''; });
    await page.getByRole('button', { name: button }).click();
    await page.waitForTimeout(wait);
    const stage = (await status()).replace(/\s*[\d.,%]+.*$/, '').trim() || 'starting';
    if (process.env.PODAR_SOAK_VERBOSE) log(`cancel ${i}: ${button} + ${wait} ms: ${stage}`);
    // Clicked in the page itself: the job may end at any moment, and a click on a Cancel that was
    // disabled meanwhile does nothing (a click from outside would wait for it to be enabled again).
    await page.evaluate(() => document.getElementById('cancel').click());
    // The job has ended when Cancel is disabled again; then its last word is on the status line.
    await idle();
    const said = await status();
    assert.match(said, /cancelled|Done$|Model loaded|^Saved /, `cancel ${i} (${stage}) ended the job with: ${said}`);
    // A save the cancel came too late for wrote a whole new file: that of the job last finished,
    // whose report (its timings) may differ in length from the first save's.
    if (duringWrite && /^Saved /.test(said)) saved = await pickedSize(page);
    else if (duringWrite) assert.equal(await pickedSize(page), saved, `cancel ${i} (${stage}) left the saved file cut short`);
    const key = /cancelled/.test(said) ? stage : `${stage} (ended before the cancel)`;
    stages[key] = (stages[key] || 0) + 1;
    if (duringLoad && !/Model loaded/.test(said)) assert.match(await load(), /Model loaded/);
    const m = await memory();
    await blobs(`after cancel ${i}`);
    if (process.env.PODAR_SOAK_VERBOSE) log(`cancel ${i}: ${key}, wasm memory ${(m / 2 ** 20).toFixed(1)} MiB`);
    if (m > last) grew++;
    assert.ok(m <= bound, `wasm memory grew from ${m0} to ${m} bytes by cancel ${i} (${stage}), more than an eighth`);
    last = m;
  }
  log(`${CANCELS} cancels:`, JSON.stringify(stages));
  log(`wasm memory after them ${(last / 2 ** 20).toFixed(0)} MiB (after the second job ${(m0 / 2 ** 20).toFixed(0)} MiB; grew at ${grew} of ${CANCELS} cancels)`);

  // The same job again: the same result, in no more memory.
  assert.match(await prune(), /Done$/);
  assert.equal(await result(), want, 'a prune after the cancels differs from the uninterrupted one');
  const after = await memory();
  assert.ok(after <= bound, `the job after the cancels grew the wasm memory to ${after} bytes, more than an eighth over ${m0}`);
  // After the same job the engine holds the same things: its heap in use may differ by little.
  const h1 = await heap();
  log(`heap in use after the job after the cancels ${(h1 / 2 ** 20).toFixed(1)} MiB (after the second job ${(h0 / 2 ** 20).toFixed(1)} MiB)`);
  assert.ok(h0 > 0 && Math.abs(h1 - h0) <= 8 * 2 ** 20, `the heap in use went from ${h0} to ${h1} bytes over the cancels`);
  log('the job after the cancels gives the same perplexities');

  // An engine killed in the middle of a job: restarted, the model loaded again, and said so.
  await page.evaluate(() => { document.getElementById('status').textContent = ''; });
  await page.getByRole('button', { name: 'Prune' }).click();
  await page.waitForFunction(() => /calibrate/.test(document.getElementById('status').textContent), null, { timeout: 300_000 });
  const engine = page.workers().find((w) => /\/worker\.js/.test(w.url()));
  assert.ok(engine, 'the engine worker is not found');
  await engine.evaluate(() => { setTimeout(() => { throw new Error('killed by the soak test'); }); });
  const said = await page.waitForFunction(
    () => /The engine was restarted .*The model is loaded again/.test(document.getElementById('status').textContent),
    null, { timeout: 300_000 }).then(() => status());
  log('engine killed mid-job:', said);
  assert.match(said, /killed by the soak test/);
  assert.match(await prune(), /Done$/);
  assert.equal(await result(), want, 'a prune after the restart differs from the first');
  log('all checks passed');
} catch (e) {
  failed = true;
  console.error('[soak] FAILED:', e.message);
  // What the page showed when it failed: a wait that timed out says nothing else.
  if (shown) console.error('[soak] the page then:', JSON.stringify(await shown().catch((x) => x.message)));
} finally {
  await browser.close();
  app.proc.kill();
}
process.exit(failed ? 1 : 0);
