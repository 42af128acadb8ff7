// Load the example model, prune 20% of its MLP for the text in the box, compare perplexities on the
// text's held-out part, and offer the pruned model as a GGUF.
import { Podar } from 'podar';

/** @type {(id: string) => any} */
const $ = (id) => document.getElementById(id);
/** @type {(what: string) => (p: import('podar').Progress) => void} */
const say = (what) => (p) => {
  const eta = p.eta ? `, about ${Math.ceil(p.eta)} s left` : '';
  $('status').textContent = `${what}: ${p.stage} ${p.done} of ${p.total}${eta}`;
};

const podar = await Podar.create();
const url = new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href);
const model = await podar.load(url, { onProgress: say('Loading') });
$('status').textContent = `Loaded: ${(model.summary.parameters / 1e6).toFixed(1)}M parameters.`;
$('prune').disabled = false;

/** @type {AbortController | null} */
let job = null;
$('cancel').onclick = () => job?.abort();
$('prune').onclick = async () => {
  job = new AbortController();
  const signal = job.signal;
  $('prune').disabled = true;
  $('cancel').disabled = false;
  try {
    const text = $('text').value;
    const pruned = await model.prune(text, { mlp: 0.2, calibSamples: 8 }, { onProgress: say('Pruning'), signal });
    const heldOut = { skip: pruned.calibTokens, maxTokens: 512, signal };
    const before = await model.perplexity(text, heldOut);
    const after = await pruned.perplexity(text, heldOut);
    const file = await pruned.export({ format: 'gguf', dtype: 'q8_0', onProgress: say('Writing'), signal });
    $('download').href = URL.createObjectURL(file);
    $('download').download = file.name;
    $('download').hidden = false;
    $('status').textContent = `Done: perplexity ${before.perplexity.toFixed(2)} → ${after.perplexity.toFixed(2)}, ` +
      `${(pruned.report.parametersAfter / 1e6).toFixed(1)}M parameters.`;
  } catch (e) {
    $('status').textContent = e.code === 'aborted' ? 'Cancelled.' : `Failed (${e.code}): ${e.message}`;
  } finally {
    $('prune').disabled = false;
    $('cancel').disabled = true;
  }
};
