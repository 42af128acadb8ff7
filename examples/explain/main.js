// A teaching page on podar's API: per-layer influence and per-neuron scores for a text the reader
// types (model.importance), and a slider that prunes the model and shows the perplexity on the
// reader's text as it moves (each move aborts the prune before it).
import { Podar } from 'podar';

/** @type {(id: string) => any} */
const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
/** @type {(svg: SVGElement, tag: string, attrs: Record<string, string | number>, text?: string) => void} */
const add = (svg, tag, attrs, text) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  svg.appendChild(e);
};
/**
 * Bars of `values` from the left, those at index ≥ `cut` drawn red; with `log`, heights on a log
 * scale over four decades below the largest (neuron scores span several).
 * @type {(svg: SVGElement, values: number[], cut?: number, log?: boolean) => void}
 */
function bars(svg, values, cut = values.length, log = false) {
  svg.innerHTML = '';
  const max = Math.max(...values) || 1, w = 620 / values.length;
  const frac = log ? (/** @type {number} */ v) => Math.max(0, 1 + Math.log10(Math.max(v, 1e-30) / max) / 4)
    : (/** @type {number} */ v) => v / max;
  values.forEach((v, i) => add(svg, 'rect', { x: 14 + i * w, y: 150 - 140 * frac(v), width: Math.max(w - 1, 0.5),
    height: 140 * frac(v), class: i >= cut ? 'cut' : 'bar' }));
  add(svg, 'text', { x: 16, y: 12, class: 'tick' }, max.toPrecision(3) + (log ? ' (log scale: the bottom is 10⁻⁴ of it)' : ''));
}

const podar = await Podar.create();
const model = await podar.load(new URL('../../models/SmolLM2-135M-Instruct.Q4_1.gguf', location.href));
$('text').value = await (await fetch(new URL('../../presets/code-python.txt', location.href))).text();
$('status').textContent = 'Ready: type or paste your text, then Measure.';
$('measure').disabled = false;

/** @type {import('podar').Importance | null} */
let importance = null;
const CALIB = { calibSamples: 4, calibLen: 128 };
const showNeurons = () => {
  if (!importance) return;
  const scores = [...importance.neurons[Number($('layer').value)]].sort((a, b) => b - a);
  const keep = Math.round(scores.length * (1 - Number($('prune').value) / 100));
  $('cut-pct').textContent = $('prune').value;
  bars($('neurons'), scores, keep, true);
};
$('layer').oninput = showNeurons;

$('measure').onclick = async () => {
  $('measure').disabled = true;
  try {
    importance = await model.importance($('text').value, { ...CALIB, onProgress: (p) => {
      $('status').textContent = `Reading your text: layer ${p.done} of ${p.total}`;
    } });
    bars($('layers'), importance.layerInfluence);
    $('layer').innerHTML = importance.neurons.map((_, l) => `<option>${l}</option>`).join('');
    $('layer').value = '15';
    showNeurons();
    $('status').textContent = `Measured on ${importance.tokens} tokens.`;
    $('prune').disabled = false;
    await cost();
  } catch (e) {
    $('status').textContent = `Failed (${e.code}): ${e.message}`;
  } finally {
    $('measure').disabled = false;
  }
};

// The slider: each move aborts the prune of the move before.
/** @type {AbortController | null} */
let job = null;
/** @type {Map<string, number>} */
const seen = new Map();
async function cost() {
  job?.abort();
  const mine = (job = new AbortController());
  const pct = Number($('prune').value);
  const text = $('text').value;
  const held = { skip: CALIB.calibSamples * CALIB.calibLen, maxTokens: 512, signal: mine.signal };
  try {
    if (!seen.has('0')) seen.set('0', (await model.perplexity(text, held)).perplexity);
    if (pct > 0 && !seen.has(String(pct))) {
      $('cost').textContent = `Pruning ${pct}%…`;
      const pruned = await model.prune(text, { mlp: pct / 100, ...CALIB }, { signal: mine.signal });
      seen.set(String(pct), (await pruned.perplexity(text, held)).perplexity);
    }
    const before = seen.get('0') ?? NaN, after = seen.get(String(pct)) ?? NaN;
    $('cost').textContent = `Perplexity on the rest of your text: ${before.toFixed(2)} unpruned, ` +
      `${after.toFixed(2)} with ${pct}% of the MLP removed (${(100 * (after / before - 1)).toFixed(0)}% worse).`;
  } catch (e) {
    if (e.code !== 'aborted') $('cost').textContent = `Failed (${e.code}): ${e.message}`;
  }
}
$('prune').oninput = () => { $('pct').textContent = $('prune').value; showNeurons(); };
$('prune').onchange = cost;
$('text').oninput = () => { seen.clear(); };
