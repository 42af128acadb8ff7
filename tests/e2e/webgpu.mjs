// End to end on WebGPU: Chromium with --enable-unsafe-webgpu (SwiftShader in headless mode, a CPU
// implementation of WebGPU: this checks correctness, not speed). The page must find the adapter,
// run the matrix products of calibration and evaluation in its GPU worker, and produce the same
// pruned model as the CPU: identical kept neurons in every layer, and the download's perplexity
// equal to the CLI's run of the same job. Then "Force CPU" switches the engine back.
//
// SwiftShader reaches about 1.3 GFLOP/s, so the job is small: 2 calibration windows of 128 tokens
// and no in-page evaluation (the GPU products themselves are checked against the CPU's in tests/web.rs).
//
// Usage: node tests/e2e/webgpu.mjs   (after `make build`; env PODAR_E2E_SAMPLES, default 2 windows,
// and PODAR_E2E_EVAL, evaluation tokens per text, default 0)
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { root, cli, serve, launch, statusWaiter, openPage, unzipFolder, pickIntoPrivateFiles, pickedFile } from './harness.mjs';

const out = path.join(root, 'target/e2e-webgpu');
const samples = Number(process.env.PODAR_E2E_SAMPLES || 2);
const domainFile = path.join(root, 'www/presets/code-python.txt');
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
const log = (...a) => console.log('[e2e webgpu]', ...a);

const app = await serve(root);
const browser = await launch(['--enable-unsafe-webgpu']);
let failed = false;
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1800 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => log('page error:', e.message));
  page.on('crash', () => log('the page crashed'));
  page.on('console', (m) => { if (m.type() === 'error') log('console:', m.text()); });
  const waitStatus = statusWaiter(page);
  await pickIntoPrivateFiles(page);
  // SwiftShader is a software adapter, slower than the CPU: the page skips it unless told (?gpu=any).
  const auto = await openPage(page, app.url);
  log(auto);
  assert.match(auto, /no GPU \(the only WebGPU adapter is a software one/);
  const engine = await openPage(page, `${app.url}?gpu=any`);
  log(engine);
  assert.match(engine, /matrix products on WebGPU/);
  assert.equal(await page.getByLabel('Force CPU').isChecked(), false);

  await page.getByRole('button', { name: 'Load example model' }).click();
  let msg = await waitStatus(/Model loaded|failed/, 300_000);
  assert.match(msg, /Model loaded/);
  await page.getByLabel('Domain text file').setInputFiles(domainFile);
  await page.getByLabel('Calibration windows').fill(String(samples));
  await page.getByLabel('Evaluation tokens per text').fill(process.env.PODAR_E2E_EVAL || '0');
  await page.getByLabel('MLP pruning (%)').fill('20');
  await page.waitForFunction(() => /tokens: enough/.test(document.getElementById('text-info').textContent), null, { timeout: 60_000 });
  const t0 = Date.now();
  await page.getByRole('button', { name: 'Prune' }).click();
  msg = await waitStatus(/Done$|failed/, 1_800_000);
  log(`job in ${((Date.now() - t0) / 1e3).toFixed(1)} s:`, msg);
  assert.match(msg, /Done$/);
  const job = await page.evaluate(() => window.podar.state.lastJob);
  // The product the engine timed on both when it started (gpu "any" takes the GPU whatever it says).
  const trial = await page.evaluate(() => window.podar.state.gpu.trial);
  log(`one product ([512, 1024] · [1024, 1024]ᵀ): CPU ${trial.cpuMs} ms, WebGPU ${trial.gpuMs} ms`);
  assert.ok(trial.cpuMs > 0 && trial.gpuMs > 0, JSON.stringify(trial));
  const shown = await page.locator('#engine').textContent();
  log(`engine ${job.engine}, ${job.gpuProducts} products on the GPU; ${shown}`);
  assert.equal(job.engine, 'webgpu', shown);
  assert.ok(job.gpuProducts > 100, `only ${job.gpuProducts} products ran on the GPU`);
  log('perplexity:', (await page.locator('#ppl tbody').innerText()).replace(/\s+/g, ' '));

  // Saved into the file the (replaced) picker picks, then handed over: see pickIntoPrivateFiles.
  await page.getByRole('button', { name: 'Download' }).click();
  assert.match(await waitStatus(/^Saved|failed/, 300_000), /^Saved/);
  const { download } = await pickedFile(page);
  const zip = path.join(out, 'model.zip');
  await download.saveAs(zip);
  const dir = path.join(out, 'page');
  unzipFolder(zip, download.suggestedFilename(), dir);
  const cliDir = path.join(out, 'cli');
  cli('prune', 'models/SmolLM2-135M-Instruct.Q4_1.gguf', '--calib', domainFile, '--mlp', '0.2', '--calib-samples', String(samples), '--calib-precision', 'f32', '--out', cliDir);
  const kept = (d) => JSON.parse(fs.readFileSync(path.join(d, 'podar-report.json'))).kept_mlp_neurons;
  const [kg, kc] = [kept(dir), kept(cliDir)];
  const differ = kc.map((l, i) => (JSON.stringify(l) === JSON.stringify(kg[i]) ? -1 : i)).filter((i) => i >= 0);
  log(`layers whose kept neurons differ from the CPU's: ${differ.length} of ${kc.length}`);
  assert.deepEqual(differ, [], 'kept neurons differ between WebGPU and CPU');
  const heldOut = path.join(root, 'www/presets/english-vimtutor.txt');
  const ppl = (d) => JSON.parse(cli('eval', d, '--text', heldOut, '--ctx', '256', '--max-tokens', '1024', '--json')).perplexity;
  const [pGpu, pCli] = [ppl(dir), ppl(cliDir)];
  log(`perplexity of the WebGPU download ${pGpu.toFixed(4)}, of the CLI's export ${pCli.toFixed(4)}`);
  assert.ok(Math.abs(pGpu - pCli) <= 1e-3 * pCli, `WebGPU ${pGpu} vs CLI ${pCli}`);

  await page.getByLabel('Force CPU').check();
  msg = await waitStatus(/CPU runs everything|failed/, 60_000);
  assert.match(msg, /Done$/);
  assert.match(await page.locator('#engine').textContent(), /CPU forced/);
  log('all checks passed');
} catch (e) {
  failed = true;
  console.error('[e2e webgpu] FAILED:', e.message);
} finally {
  await browser.close();
  app.proc.kill();
}
process.exit(failed ? 1 : 0);
