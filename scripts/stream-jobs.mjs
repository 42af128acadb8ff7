// Memory from job to job with the example model streamed and held, through the API in headless
// Chromium: three prunes (20% MLP, 16 calibration windows), each scored and exported as GGUF Q8_0,
// in one engine; prints the seconds, the perplexity, the wasm memory and the heap after each.
// Prints numbers; asserts nothing. Usage: node scripts/stream-jobs.mjs (after `make build`).
import fs from 'node:fs';
import path from 'node:path';
import { root, serve, launch } from '../tests/e2e/harness.mjs';
const text = fs.readFileSync(path.join(root, 'www/presets/code-python.txt'), 'utf8');
const app = await serve(root);
const browser = await launch();
try {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${app.url}examples/minimal/`);
  const r = await page.evaluate(async ({ text }) => {
    const { Podar } = await import('podar');
    const url = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href);
    const out = [];
    for (const stream of [true, false]) {
      const podar = await Podar.create({ gpu: false });
      const model = await podar.load(url, { stream });
      for (let i = 1; i <= 3; i++) {
        const t0 = performance.now();
        const pruned = await model.prune(text, { mlp: 0.2, calibSamples: 16 });
        const ppl = (await pruned.perplexity(text, { maxTokens: 512 })).perplexity;
        await pruned.export({ format: 'gguf', dtype: 'q8_0' });
        out.push({ stream, job: i, s: ((performance.now() - t0) / 1e3).toFixed(1), ppl: ppl.toFixed(4),
          memoryMiB: (podar.memoryBytes / 2 ** 20).toFixed(0), liveMiB: (podar.heap.live / 2 ** 20).toFixed(0), peakMiB: (podar.heap.peak / 2 ** 20).toFixed(0) });
      }
      podar.dispose();
    }
    return out;
  }, { text });
  for (const x of r) console.log(JSON.stringify(x));
} finally {
  await browser.close();
  app.proc.kill();
}
