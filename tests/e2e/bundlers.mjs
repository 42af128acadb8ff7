// The package as a web developer installs it: `npm pack` of pkg/, installed into an empty project,
// a page that imports 'podar' built for production by Vite and by webpack, each served with the
// isolation headers by a plain static server; in Chromium each prunes the example model through the
// API on two threads, and its GGUF export is read back by podar's own loader.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { build } from 'vite';
import webpack from 'webpack';
import { root, launch, cli } from './harness.mjs';

const log = (...a) => console.log('[bundlers]', ...a);
const work = path.join(root, 'target/e2e-bundlers');
const app = path.join(work, 'app');
fs.rmSync(work, { recursive: true, force: true });
fs.mkdirSync(app, { recursive: true });

// npm pack, then npm install of the tarball (no dependencies: nothing is fetched).
const tgz = execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: path.join(root, 'pkg'), encoding: 'utf8' }).trim();
fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', path.join(work, tgz)], { cwd: app, stdio: 'ignore' });
log(`installed ${tgz}`);

fs.writeFileSync(path.join(app, 'index.html'), `<!doctype html><meta charset="utf-8"><title>scratch</title>
<p id="status">starting</p><script type="module" src="./main.js"></script>`);
fs.writeFileSync(path.join(app, 'main.js'), `import { Podar } from 'podar';
const status = document.getElementById('status');
try {
  const podar = await Podar.create();
  const model = await podar.load(new URL('/model.gguf', location.href));
  const text = await (await fetch('/domain.txt')).text();
  const pruned = await model.prune(text, { mlp: 0.2, calibSamples: 4 });
  const after = await pruned.perplexity(text, { skip: pruned.calibTokens, maxTokens: 512 });
  const file = await pruned.export({ format: 'gguf', dtype: 'q8_0' });
  window.result = { capabilities: podar.capabilities, perplexity: after.perplexity, name: file.name, size: file.size };
  const a = Object.assign(document.createElement('a'), { id: 'dl', href: URL.createObjectURL(file), download: file.name });
  a.textContent = 'download';
  document.body.append(a);
  status.textContent = 'done';
} catch (e) {
  status.textContent = 'failed: ' + e.code + ': ' + e.message;
}
`);
// Each bundler's production build of the same page, into its own folder.
const builds = {
  async vite(dist) {
    await build({ root: app, logLevel: 'warn', worker: { format: 'es' }, build: { outDir: dist, emptyOutDir: true } });
  },
  async webpack(dist) {
    const compiler = webpack({ mode: 'production', context: app, entry: './main.js', devtool: false,
      output: { path: dist, publicPath: 'auto', clean: true }, performance: { hints: false } });
    const stats = await new Promise((ok, fail) => compiler.run((err, st) => (err ? fail(err) : ok(st))));
    await new Promise((ok) => compiler.close(ok));
    if (stats.hasErrors()) throw new Error(stats.toString({ all: false, errors: true }));
    for (const w of stats.toJson({ all: false, warnings: true }).warnings) log('webpack warning:', w.message.split('\n')[0]);
    // webpack writes no page: the same one, loading its bundle.
    fs.writeFileSync(path.join(dist, 'index.html'), fs.readFileSync(path.join(app, 'index.html'), 'utf8')
      .replace('<script type="module" src="./main.js">', '<script src="./main.js">'));
  },
};

// A static server that sends the isolation headers and nothing else special.
const extra = { '/model.gguf': path.join(root, 'models/SmolLM2-135M-Instruct.Q4_1.gguf'), '/domain.txt': path.join(root, 'www/presets/code-python.txt') };
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm' };
function serveDist(dist) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x').pathname;
    const file = extra[url] || path.join(dist, url === '/' ? 'index.html' : url);
    if (!file.startsWith(dist) && !extra[url]) { res.writeHead(403); return res.end(); }
    fs.readFile(file, (err, body) => {
      if (err) { res.writeHead(404); return res.end(); }
      res.writeHead(200, { 'Content-Type': types[path.extname(file)] || 'application/octet-stream',
        'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' });
      res.end(body);
    });
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok(server)));
}

const browser = await launch();
let failed = false;
try {
  for (const [name, make] of Object.entries(builds)) {
    const dist = path.join(app, `dist-${name}`);
    await make(dist);
    const files = fs.readdirSync(dist, { recursive: true }).map(String);
    log(`${name} build: ${files.length} files, ${files.filter((f) => f.endsWith('.wasm')).length} of them .wasm`);
    const server = await serveDist(dist);
    try {
      const page = await (await browser.newContext({ acceptDownloads: true })).newPage();
      page.on('pageerror', (e) => log(`${name} page error:`, e.message));
      await page.goto(`http://127.0.0.1:${server.address().port}/`);
      await page.waitForFunction(() => /done|failed/.test(document.getElementById('status').textContent), null, { timeout: 600_000 });
      const said = await page.locator('#status').textContent();
      assert.equal(said, 'done', `${name}: ${said}`);
      const r = await page.evaluate(() => window.result);
      log(`${name}: threads ${r.capabilities.threads}, relaxed SIMD ${r.capabilities.relaxedSimd}; perplexity after ${r.perplexity.toFixed(3)}; ${r.name}, ${r.size} bytes`);
      assert.ok(r.capabilities.threads > 1, `the ${name} build runs on one thread (${r.capabilities.threadsUnavailable})`);
      const gguf = path.join(work, `${name}.gguf`);
      const [download] = await Promise.all([page.waitForEvent('download'), page.locator('#dl').click()]);
      await download.saveAs(gguf);
      assert.equal(fs.statSync(gguf).size, r.size);
      assert.match(cli('inspect', gguf), /MLP 1229\n/);
      await page.context().close();
    } finally {
      server.close();
    }
  }
  log('all checks passed');
} catch (e) {
  failed = true;
  console.error('[bundlers] FAILED:', e.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
