// End to end, as a person uses the page: Debian's Chromium driven through playwright-core, controls
// found by their labels. Loads the example model, prunes it for a domain text file, downloads the
// zip, and checks the download with podar's own CLI against the CLI's own run of the same job.
// Also: a corrupted model file and a too-short text give readable messages and the page keeps
// working; a model too big to hold is read a layer at a time, and one too big even so is refused; Cancel stops a prune; URL loading works against a
// second local server; and no request leaves the page's origin. A screenshot of the results is
// saved in target/e2e/.
//
// Usage: node tests/e2e/page.mjs   (after `make build`; env PODAR_E2E_SAMPLES, default 8 windows)
import fs from 'node:fs';
import path from 'node:path';
import assert from 'node:assert/strict';
import { root, cli, serve, launch, statusWaiter, openPage, unzipFolder, pickIntoPrivateFiles, pickedFile } from './harness.mjs';

const out = path.join(root, 'target/e2e');
const samples = Number(process.env.PODAR_E2E_SAMPLES || 8);
fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
// The domain text as a Windows editor saves it (a byte-order mark, CR LF line ends): the page
// must calibrate on the file as the CLI reads it, not on the text box's LF-only copy of it.
const domainFile = path.join(out, 'domain-crlf.txt');
const preset = fs.readFileSync(path.join(root, 'www/presets/code-python.txt'), 'utf8');
fs.writeFileSync(domainFile, '\ufeff' + preset.replace(/\r?\n/g, '\r\n'));
const log = (...a) => console.log('[e2e]', ...a);


/** A Hugging Face folder of bf16 weights that are a hole (a sparse file), Llama-shaped: by default
 * Llama-3.2-1B's layers (1.07B parameters with a smaller vocabulary). */
function bigModel(dir, [H, I, L, V, nkv, hd] = [2048, 8192, 16, 49152, 8, 64]) {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: H, intermediate_size: I, num_hidden_layers: L,
    num_attention_heads: H / hd, num_key_value_heads: nkv, head_dim: hd, vocab_size: V, rms_norm_eps: 1e-5,
    max_position_embeddings: 8192, rope_theta: 500000, tie_word_embeddings: true, torch_dtype: 'bfloat16',
  }));
  const shapes = { 'model.embed_tokens.weight': [V, H], 'model.norm.weight': [H] };
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    Object.assign(shapes, {
      [`${p}self_attn.q_proj.weight`]: [H, H], [`${p}self_attn.k_proj.weight`]: [nkv * hd, H],
      [`${p}self_attn.v_proj.weight`]: [nkv * hd, H], [`${p}self_attn.o_proj.weight`]: [H, H],
      [`${p}mlp.gate_proj.weight`]: [I, H], [`${p}mlp.up_proj.weight`]: [I, H], [`${p}mlp.down_proj.weight`]: [H, I],
      [`${p}input_layernorm.weight`]: [H], [`${p}post_attention_layernorm.weight`]: [H],
    });
  }
  const header = {};
  let off = 0;
  for (const [k, shape] of Object.entries(shapes)) {
    const n = 2 * shape.reduce((a, b) => a * b, 1);
    header[k] = { dtype: 'BF16', shape, data_offsets: [off, off + n] };
    off += n;
  }
  const json = Buffer.from(JSON.stringify(header).padEnd(Math.ceil(JSON.stringify(header).length / 8) * 8));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const st = path.join(dir, 'model.safetensors');
  fs.writeFileSync(st, Buffer.concat([len, json]));
  fs.truncateSync(st, 8 + json.length + off);
  fs.copyFileSync(path.join(root, 'tests/fixtures/tiny/llama/tokenizer.json'), path.join(dir, 'tokenizer.json'));
  return ['config.json', 'model.safetensors', 'tokenizer.json'].map((f) => path.join(dir, f));
}

const app = await serve(root);
// A second origin holding a tiny Hugging Face folder, for URL loading.
const remoteDir = path.join(out, 'remote');
fs.mkdirSync(path.join(remoteDir, 'www/tiny'), { recursive: true });
for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) {
  fs.copyFileSync(path.join(root, 'tests/fixtures/tiny/llama', f), path.join(remoteDir, 'www/tiny', f));
}
// The second server lets only the app's origin read it (no wildcard CORS).
const remote = await serve(remoteDir, ['--allow-origin', new URL(app.url).origin]);

const browser = await launch();
let failed = false;
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1100, height: 1800 } });
  const page = await context.newPage();
  const origin = new URL(app.url).origin;
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('blob:') && !r.url().startsWith('data:')) foreign.push(r.url()); });
  page.on('pageerror', (e) => log('page error:', e.message));
  const waitStatus = statusWaiter(page);
  await pickIntoPrivateFiles(page);

  log(await openPage(page, app.url));

  // A corrupted model file: a readable message, and the page still works.
  const broken = path.join(out, 'broken.gguf');
  fs.writeFileSync(broken, Buffer.concat([Buffer.from('GGUF'), Buffer.from([3, 0, 0, 0]), Buffer.alloc(64, 0xff)]));
  await page.getByLabel('Model files').setInputFiles(broken);
  let msg = await waitStatus(/failed/, 60_000);
  log('corrupted model:', msg);
  assert.match(msg, /GGUF|broken/);
  assert.equal(await page.getByRole('button', { name: 'Load example model' }).isEnabled(), true);

  // A model too big to hold in the page's memory (a sparse file with Llama-3.2-1B-like shapes): read
  // from its files a layer at a time instead, and the page says so (generation reads every layer again for each token).
  const big = bigModel(path.join(out, 'big'));
  await page.getByLabel('Model files').setInputFiles(big);
  msg = await waitStatus(/Model loaded|failed/, 300_000);
  log('model too big to hold:', msg);
  assert.match(msg, /^Model loaded: 1\.07B parameters, read from its files a layer at a time/);
  // One whose layers alone pass the browser's 4 GiB (Llama-3.1-70B's, two of them): refused from its
  // headers, with its numbers, before any weight is read.
  const huge = bigModel(path.join(out, 'huge'), [8192, 28672, 2, 32000, 8, 128]);
  await page.getByLabel('Model files').setInputFiles(huge);
  msg = await waitStatus(/failed/, 60_000);
  log('model too big even streamed:', msg);
  assert.match(msg, /even read from its files a layer at a time, pruning it in the page needs about [\d.]+ GB/);
  // The page runs on the public API: the refusal came with the API's error code.
  assert.equal(await page.evaluate(() => document.body.dataset.lastError), 'model-too-large');

  // The example model.
  let t0 = Date.now();
  await page.getByRole('button', { name: 'Load example model' }).click();
  msg = await waitStatus(/Model loaded/, 300_000);
  log(`loaded in ${((Date.now() - t0) / 1e3).toFixed(1)} s:`, msg);
  // The plan of the new model shows without touching a control.
  await page.waitForFunction(() => /^Parameters /.test(document.getElementById('plan').textContent), null, { timeout: 30_000 });

  // Heads to remove in the field's own unit: 20% of 3 KV groups removes none, and the plan says
  // how much would (34%), in percent.
  await page.getByLabel('Heads to remove (%)').fill('20');
  await page.waitForFunction(() => /does not work/.test(document.getElementById('plan').textContent), null, { timeout: 30_000 });
  const headsPlan = await page.locator('#plan').textContent();
  log('heads 20%:', headsPlan);
  assert.match(headsPlan, /“Heads to remove \(%\)” of 20% removes none of the model's 3 KV groups .* give at least 34%, or 0/);
  assert.equal(await page.getByRole('button', { name: 'Prune' }).isEnabled(), false);
  await page.getByLabel('Heads to remove (%)').fill('0');
  await page.waitForFunction(() => /^Parameters /.test(document.getElementById('plan').textContent), null, { timeout: 30_000 });

  // Too little text: the page says so, and Prune waits for more.
  await page.getByLabel('Domain text', { exact: true }).fill('def f(): pass');
  await page.getByLabel('MLP pruning (%)').fill('20');
  await page.waitForFunction(() => /not enough/.test(document.getElementById('text-info').textContent), null, { timeout: 30_000 });
  log('too-short text:', await page.locator('#text-info').textContent());
  assert.equal(await page.getByRole('button', { name: 'Prune' }).isEnabled(), false);

  // A text file that is not UTF-8: refused with a reason, not read as replacement characters.
  const latin1 = path.join(out, 'latin1.txt');
  fs.writeFileSync(latin1, Buffer.from('Gr\xfc\xdfe aus M\xfcnchen', 'latin1'));
  await page.getByLabel('Domain text file').setInputFiles(latin1);
  msg = await waitStatus(/not UTF-8/, 30_000);
  log('latin-1 text:', msg);

  // A long text (12 MB): counted only as far as a job would read it, in a moment.
  const long = path.join(out, 'long.txt');
  fs.writeFileSync(long, fs.readFileSync(domainFile, 'utf8').repeat(Math.ceil(12e6 / fs.statSync(domainFile).size)));
  let t = Date.now();
  await page.getByLabel('Domain text file').setInputFiles(long);
  await page.waitForFunction(() => /^More than \d+ tokens/.test(document.getElementById('text-info').textContent), null, { timeout: 60_000 });
  log(`long text, ${(Date.now() - t) / 1e3} s:`, await page.locator('#text-info').textContent());

  // The job: a domain text file, 20% MLP, calibration windows as in the CLI run below.
  await page.getByLabel('Domain text file').setInputFiles(domainFile);
  await page.getByLabel('Calibration windows').fill(String(samples));
  await page.getByLabel('Evaluation tokens per text').fill('256');
  await page.getByLabel('MLP pruning (%)').fill('20');
  await page.waitForFunction(() => /tokens: enough/.test(document.getElementById('text-info').textContent), null, { timeout: 60_000 });
  log(await page.locator('#text-info').textContent());
  log(await page.locator('#plan').textContent());
  t0 = Date.now();
  await page.getByRole('button', { name: 'Prune' }).click();
  msg = await waitStatus(/Done$|failed/, 1_800_000);
  log(`job in ${((Date.now() - t0) / 1e3).toFixed(1)} s:`, msg);
  assert.match(msg, /Done$/);
  log(await page.locator('#sizes').textContent());
  log('perplexity:', (await page.locator('#ppl tbody').innerText()).replace(/\s+/g, ' '));
  await page.locator('#results').screenshot({ path: path.join(out, 'results.png') });
  // On a phone's width (390 px) nothing is wider than the screen, the charts included.
  await page.setViewportSize({ width: 390, height: 844 });
  const wide = await page.evaluate(() => ({ page: document.documentElement.scrollWidth,
    charts: [...document.querySelectorAll('svg')].map((e) => Math.round(e.getBoundingClientRect().right)) }));
  log(`at 390 px: the page is ${wide.page} px wide, the charts end at ${wide.charts.join(', ')} px`);
  assert.ok(wide.page <= 390 && wide.charts.every((r) => r <= 390), JSON.stringify(wide));
  await page.setViewportSize({ width: 1100, height: 1800 });

  // The page writes into the file the (replaced) picker picks: see pickIntoPrivateFiles.
  await page.getByRole('button', { name: 'Download' }).click();
  msg = await waitStatus(/^Saved|failed/, 300_000);
  log(msg);
  assert.match(msg, /^Saved SmolLM2-135M-Instruct\.Q4_1-podar\.zip/);
  assert.equal(await page.evaluate(() => window.picked.types[0].accept['application/zip'][0]), '.zip');
  const { download } = await pickedFile(page);
  const zip = path.join(out, 'model.zip');
  await download.saveAs(zip);
  log('saved into the picked file', download.suggestedFilename(), fs.statSync(zip).size, 'bytes');

  // Unzip and check with podar's own loader against the CLI's run of the same job.
  const dir = path.join(out, 'page');
  unzipFolder(zip, download.suggestedFilename(), dir);
  const inspected = JSON.parse(cli('inspect', dir, '--json'));
  const cliDir = path.join(out, 'cli');
  cli('prune', 'models/SmolLM2-135M-Instruct.Q4_1.gguf', '--calib', domainFile, '--mlp', '0.2', '--calib-samples', String(samples), '--calib-precision', 'f32', '--out', cliDir);
  const cliCfg = JSON.parse(fs.readFileSync(path.join(cliDir, 'config.json')));
  assert.equal(inspected.intermediate_size, cliCfg.intermediate_size);
  assert.equal(inspected.num_hidden_layers, cliCfg.num_hidden_layers);
  const heldOut = path.join(root, 'www/presets/english-vimtutor.txt');
  const ppl = (d) => JSON.parse(cli('eval', d, '--text', heldOut, '--ctx', '256', '--max-tokens', '1024', '--json')).perplexity;
  const [pPage, pCli] = [ppl(dir), ppl(cliDir)];
  log(`perplexity of the download ${pPage.toFixed(4)}, of the CLI's export ${pCli.toFixed(4)}`);
  assert.ok(Math.abs(pPage - pCli) <= 1e-3 * pCli, `page ${pPage} vs CLI ${pCli}`);
  const kept = (d) => JSON.parse(fs.readFileSync(path.join(d, 'podar-report.json'))).kept_mlp_neurons;
  const [kp, kc] = [kept(dir), kept(cliDir)];
  const same = kp.reduce((n, l, i) => n + l.filter((x) => kc[i].includes(x)).length, 0);
  const total = kc.reduce((n, l) => n + l.length, 0);
  log(`kept neurons shared with the CLI: ${same} of ${total}`);

  // Side-by-side generation, streamed; the original is read again from its file for it.
  await page.getByLabel('Prompt').fill('def fibonacci(n):');
  await page.getByRole('button', { name: 'Generate' }).click();
  msg = await waitStatus(/Generated|failed/, 600_000);
  const [genSource, genPruned] = [await page.locator('#gen-source').textContent(), await page.locator('#gen-pruned').textContent()];
  log('generate:', msg, JSON.stringify(genSource.slice(0, 60)), '|', JSON.stringify(genPruned.slice(0, 60)));
  assert.match(msg, /Done$/);
  assert.ok(genSource.length > 0 && genPruned.length > 0);

  // Cancel in the middle of a prune; the page stays usable.
  await page.getByLabel('MLP pruning (%)').fill('30');
  await page.getByRole('button', { name: 'Prune' }).click();
  await waitStatus(/Pruning: calibrate/, 600_000);
  // A control changed while a job runs shows in the plan once the job has ended.
  await page.getByLabel('MLP pruning (%)').fill('40');
  await page.getByRole('button', { name: 'Cancel' }).click();
  msg = await waitStatus(/cancelled/, 300_000);
  log('cancel:', msg);
  assert.equal(await page.getByRole('button', { name: 'Prune' }).isEnabled(), true);
  // What the cancelled job did not measure reads "—", not "…" as if it were still running.
  const cancelledTable = await page.locator('#ppl tbody').innerText();
  assert.ok(!cancelledTable.includes('…') && cancelledTable.includes('—'), cancelledTable);
  // After the job the page refreshes its plan and token count: neither may read the Cancel.
  await page.waitForTimeout(1500);
  assert.equal(await page.getByRole('button', { name: 'Prune' }).isEnabled(), true);
  assert.match(await page.locator('#plan').textContent(), /^Parameters .* MLP 1536 → 92\d,/);
  assert.match(await page.locator('#status').textContent(), /cancelled/);

  assert.deepEqual(foreign, [], 'requests left the origin');
  log('requests that left the origin: 0');

  // URL loading, from the second origin (a deliberate cross-origin fetch, so after the count).
  await page.getByLabel('Model URL').fill(`${remote.url}tiny/`);
  await page.getByRole('button', { name: 'Load from URL' }).click();
  msg = await waitStatus(/Model loaded|failed/, 120_000);
  log('URL load:', msg);
  assert.match(msg, /Model loaded/);
  assert.match(await page.locator('#summary').textContent(), /llama/);
  log('all checks passed');
} catch (e) {
  failed = true;
  console.error('[e2e] FAILED:', e.message);
} finally {
  await browser.close();
  app.proc.kill();
  remote.proc.kill();
}
process.exit(failed ? 1 : 0);
