// Perplexity of a GGUF under llama.cpp, to check podar's GGUF exports against llama.cpp itself.
// Needs node-llama-cpp, installed by hand where this runs (not by make):
//   npm i -E node-llama-cpp@3.21.1
// Usage: node scripts/llama-cpp-ppl.mjs MODEL.gguf TEXT [--ctx 256] [--max-tokens 4096] [--ids-out ids.json]
// The text is tokenized by llama.cpp (no BOS), cut into windows of --ctx tokens scored each on its
// own, as `podar eval MODEL.gguf --ids ids.json --ctx 256` scores the same ids: run both and compare.
import fs from 'node:fs';

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const ctx = Number(opt('--ctx', '256'));
const maxTokens = Number(opt('--max-tokens', '4096'));
const idsOut = opt('--ids-out', null);
const [modelPath, textPath] = args;
if (!modelPath || !textPath) {
  console.error('usage: node scripts/llama-cpp-ppl.mjs MODEL.gguf TEXT [--ctx 256] [--max-tokens N] [--ids-out F]');
  process.exit(2);
}

const { getLlama } = await import('node-llama-cpp');
const llama = await getLlama({ gpu: false, logLevel: 'error' });
const model = await llama.loadModel({ modelPath });
const ids = [...model.tokenize(fs.readFileSync(textPath, 'utf8'))].slice(0, maxTokens);
if (idsOut) fs.writeFileSync(idsOut, JSON.stringify(ids));
const context = await model.createContext({ contextSize: ctx, batchSize: ctx });
const seq = context.getSequence();
let nll = 0;
let n = 0;
const t0 = Date.now();
for (let w = 0; w + ctx <= ids.length; w += ctx) {
  const win = ids.slice(w, w + ctx);
  await seq.clearHistory();
  const input = win.map((t, i) => (i + 1 < win.length ? [t, { generateNext: { probabilities: true, options: { topK: 0 } } }] : t));
  const out = await seq.controlledEvaluate(input);
  for (let i = 0; i + 1 < win.length; i++) {
    const p = out[i]?.next?.probabilities?.get(win[i + 1]) ?? 0;
    nll -= Math.log(Math.max(p, 1e-30));
    n++;
  }
}
const secs = (Date.now() - t0) / 1e3;
console.log(JSON.stringify({ model: modelPath.split('/').pop(), architecture: model.fileInfo.metadata.general.architecture,
  perplexity: Math.exp(nll / n), predictions: n, tokens: ids.length, ctx, seconds: secs }));
await context.dispose();
await model.dispose();
