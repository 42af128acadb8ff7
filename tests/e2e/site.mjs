// The static site (make site → dist/) served as GitHub Pages would serve it: by a plain server that
// sends no COOP/COEP headers (Python's http.server). In Chromium the page must register podar's
// service worker, reload once under it, become cross-origin isolated, start on more than one
// thread, and prune the example model there.
import path from 'node:path';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { root, launch } from './harness.mjs';

const log = (...a) => console.log('[site]', ...a);
const dist = path.join(root, 'dist');

// python3 -m http.server on a free port; resolves to its URL once it answers.
async function pythonServer() {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const proc = spawn('python3', ['-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', dist],
    { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}/`;
  for (let i = 0; i < 100; i++) {
    const res = await fetch(url).catch(() => null);
    if (res?.ok) {
      assert.equal(res.headers.get('cross-origin-embedder-policy'), null, 'the server sends COEP itself');
      return { proc, url };
    }
    await new Promise((ok) => setTimeout(ok, 100));
  }
  proc.kill();
  throw new Error('python3 -m http.server did not start');
}

const server = await pythonServer();
const browser = await launch();
let failed = false;
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => log('page error:', e.message));
  await page.goto(server.url);
  await page.waitForFunction(() => /Engine ready|did not start|could not start/.test(document.getElementById('engine').textContent),
    null, { timeout: 120_000 });
  const engine = await page.locator('#engine').textContent();
  log(engine);
  assert.equal(await page.evaluate(() => self.crossOriginIsolated), true, 'the page is not cross-origin isolated');
  assert.equal(await page.evaluate(() => !!navigator.serviceWorker.controller), true, 'no service worker controls the page');
  assert.match(engine, /Engine ready: CPU, WebAssembly [^,]+, [2-9] threads/);

  await page.getByRole('button', { name: 'Load example model' }).click();
  await page.waitForFunction(() => /Model loaded|failed/.test(document.getElementById('status').textContent), null, { timeout: 300_000 });
  log(await page.locator('#status').textContent());
  await page.getByLabel('Domain text file').setInputFiles(path.join(root, 'www/presets/code-python.txt'));
  await page.getByLabel('Calibration windows').fill('2');
  await page.getByLabel('Evaluation tokens per text').fill('256');
  await page.getByLabel('MLP pruning (%)').fill('20');
  await page.waitForFunction(() => /tokens: enough/.test(document.getElementById('text-info').textContent), null, { timeout: 60_000 });
  await page.getByRole('button', { name: 'Prune' }).click();
  await page.waitForFunction(() => /Done$|failed|cancelled/.test(document.getElementById('status').textContent), null, { timeout: 600_000 });
  const said = await page.locator('#status').textContent();
  log(said);
  assert.match(said, /Done$/);
  log('all checks passed');
} catch (e) {
  failed = true;
  console.error('[site] FAILED:', e.message);
} finally {
  await browser.close();
  server.proc.kill();
}
process.exit(failed ? 1 : 0);
