// `make bench-web`: the whole in-page job for SmolLM2-135M in headless Chromium — load the GGUF,
// calibrate 64×128 on code, prune 20% MLP, recover, then Download (the zip is written then) — with its seconds and the peak
// wasm memory; then the same prune again (BENCH_JOBS in all, default 3) in the same page, with the
// wasm memory and the engine's heap in use after each, to see whether memory grows from job to job.
// Prints numbers; asserts nothing.
// Calibration text: ../shared/corpora/code_calib.txt when present, else the page's code preset.
// BENCH_MODEL=DIR loads a Hugging Face folder instead of the example model (e.g. one made by
// scripts/random-model.py); BENCH_SAMPLES sets the calibration windows (default 64);
// BENCH_CORRECT sets the page's "Error correction" (residuals, the default; stream; off);
// BENCH_EVAL the page's "Evaluation tokens per text" (default 0: no perplexities);
// BENCH_FORMAT and BENCH_DTYPE the download's (default hf, f32: a zip of the folder). The page saves
// it through the save picker (replaced: see pickIntoPrivateFiles) into the origin's private file
// system, on disk in a temporary profile: a file of several GB never sits in memory.
// A model too large to hold (BENCH_MODEL of 1B parameters and more) is read a layer at a time: the
// line says "streamed" then.
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { root, serve, launchOnDisk, statusWaiter, openPage, pickIntoPrivateFiles, pickedSize } from '../tests/e2e/harness.mjs';

const shared = path.join(root, '../shared/corpora/code_calib.txt');
const calib = fs.existsSync(shared) ? shared : path.join(root, 'www/presets/code-python.txt');
const samples = Number(process.env.BENCH_SAMPLES || 64);
const modelDir = process.env.BENCH_MODEL;
const jobs = Math.max(1, Number(process.env.BENCH_JOBS || 3));

const app = await serve(root);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'podar-bench-web-'));
const browser = await launchOnDisk(profile, { acceptDownloads: true });
try {
  const page = await browser.newPage();
  const waitStatus = statusWaiter(page);
  // Download saves into a file the picker picks (Chromium's showSaveFilePicker, replaced by one that
  // picks a file of the origin's private file system): written as it is made, never held whole.
  await pickIntoPrivateFiles(page);
  const engine = await openPage(page, app.url);
  let t0 = Date.now();
  if (modelDir) {
    const files = fs.readdirSync(modelDir).filter((f) => /\.(json|safetensors)$/.test(f)).map((f) => path.join(modelDir, f));
    await page.getByLabel('Model files').setInputFiles(files);
  } else {
    await page.getByRole('button', { name: 'Load example model' }).click();
  }
  await waitStatus(/Model loaded|failed/, 600_000);
  const load = (Date.now() - t0) / 1e3;
  const f32Bytes = (await page.evaluate(() => window.podar.state.summary.parameters)) * 4;
  await page.getByLabel('Domain text file').setInputFiles(calib);
  await page.getByLabel('Calibration windows').fill(String(samples));
  await page.getByLabel('Evaluation tokens per text').fill(process.env.BENCH_EVAL || '0');
  await page.getByLabel('MLP pruning (%)').fill('20');
  await page.getByLabel('Error correction').selectOption(process.env.BENCH_CORRECT || 'residuals');
  const [format, dtype] = [process.env.BENCH_FORMAT || 'hf', process.env.BENCH_DTYPE || 'f32'];
  await page.locator('#format').selectOption(format);
  await page.locator('#dtype').selectOption(dtype);
  const streamed = await page.evaluate(() => window.podar.state.streamed === true);
  await page.waitForFunction(() => /tokens: enough/.test(document.getElementById('text-info').textContent), null, { timeout: 60_000 });
  t0 = Date.now();
  await page.getByRole('button', { name: 'Prune' }).click();
  const msg = await waitStatus(/Done$|failed/, 3_600_000);
  if (!/Done$/.test(msg)) throw new Error(msg);
  // The download is written when asked for.
  const download = async () => {
    await page.getByRole('button', { name: 'Download' }).click();
    const said = await waitStatus(/^Saved|failed/, 3_600_000);
    if (!/^Saved/.test(said)) throw new Error(said);
    const size = await pickedSize(page, { remove: true });
    const job = await page.evaluate(() => window.podar.state.lastJob);
    if (size !== job.bytes) throw new Error(`the saved file holds ${size} bytes, the export said ${job.bytes}`);
    return job;
  };
  const r = await download();
  const job = (Date.now() - t0) / 1e3;
  const correct = { residuals: ' with error correction (estimated)', stream: ' with error correction (measured)', off: '' }[
    await page.locator('#correct').inputValue()];
  const score = await page.locator('#score').inputValue();
  console.log(`bench-web: ${engine}`);
  console.log(`bench-web: calibration text ${path.relative(root, calib)}, ${samples}×128 tokens, 20% MLP, ${score} + recovery${correct}, ${format} ${dtype}${streamed ? '; the model streamed (read a layer at a time)' : ''}`);
  console.log(`bench-web: load ${load.toFixed(1)} s, prune ${r.pruneSeconds.toFixed(1)} s, download ${r.writeSeconds.toFixed(1)} s, prune+download ${job.toFixed(1)} s, whole job ${(load + job).toFixed(1)} s`);
  console.log(`bench-web: peak wasm memory ${(r.peakMemory / 2 ** 20).toFixed(0)} MiB = ${(r.peakMemory / f32Bytes).toFixed(2)}× the f32 model (${(f32Bytes / 2 ** 20).toFixed(0)} MiB); download ${(r.bytes / 1e6).toFixed(1)} MB, saved into a picked file`);
  const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const line = (i, j) => console.log(`bench-web: job ${i}: ${j.seconds.toFixed(1)} s + download ${j.writeSeconds.toFixed(1)} s; after it wasm memory ${mib(j.memory)}, ` +
    `heap in use ${mib(j.heapLive)}, heap peak so far ${mib(j.heapPeak)}`);
  line(1, r);
  for (let i = 2; i <= jobs; i++) {
    await page.evaluate(() => { document.getElementById('status').textContent = ''; });
    await page.getByRole('button', { name: 'Prune' }).click();
    await page.waitForFunction(() => /Done$|failed/.test(document.getElementById('status').textContent), null, { timeout: 3_600_000 });
    const again = await page.locator('#status').textContent();
    if (!/Done$/.test(again)) throw new Error(again);
    line(i, await download());
  }
} finally {
  await browser.close();
  app.proc.kill();
  fs.rmSync(profile, { recursive: true, force: true });
}
