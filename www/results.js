// The results' table and charts: drawn from plain data into the page's own elements, so they can be
// read (and reused) apart from the page's state and its worker.

export function drawPpl(table, rows) {
  const body = table.querySelector('tbody');
  body.innerHTML = '';
  for (const r of rows) {
    const tr = document.createElement('tr');
    // A broken model can give NaN or infinite perplexity: said in words, never drawn.
    const fmt = (x) => (Number.isFinite(x) ? x.toFixed(3) : 'not finite');
    // after: undefined while it is being measured, null when the job ended without it.
    const ch = r.after != null && Number.isFinite(r.after / r.before)
      ? `${r.after >= r.before ? '+' : ''}${(100 * (r.after / r.before - 1)).toFixed(1)}%` : '';
    for (const c of [r.name, fmt(r.before), r.after === undefined ? '…' : r.after === null ? '—' : fmt(r.after), ch]) {
      const td = document.createElement('td');
      td.textContent = c;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  table.hidden = rows.length === 0;
}

const SVG = 'http://www.w3.org/2000/svg';
function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Drawn in the chart's own coordinates (a viewBox): the chart scales to the page's width.
function frame(svg, W, H) {
  svg.innerHTML = '';
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.removeAttribute('width');
  svg.removeAttribute('height');
}

// Stripes for what was removed, as the captions say.
function hatch(svg) {
  const defs = el('defs', {});
  const p = el('pattern', { id: `${svg.id}-hatch`, width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' });
  p.appendChild(el('rect', { width: 6, height: 6, fill: '#fff' }));
  p.appendChild(el('line', { x1: 0, y1: 0, x2: 0, y2: 6, class: 'stripe' }));
  defs.appendChild(p);
  svg.appendChild(defs);
  return `url(#${svg.id}-hatch)`;
}

// `inf`: each layer's influence on the domain text; `keptLayers`: the layers the prune kept.
export function drawLayers(svg, inf, keptLayers) {
  const W = 640, H = 190, L = 44, B = 34;
  frame(svg, W, H);
  if (!inf.length) { svg.appendChild(el('text', { x: 10, y: 20 }, 'Static scores: no calibration, no influence measured.')); return; }
  const dropped = hatch(svg);
  const max = Math.max(...inf) || 1;
  const bw = (W - L - 6) / inf.length;
  const ys = (v) => H - B - (H - B - 14) * v / max;
  svg.appendChild(el('line', { x1: L, y1: H - B, x2: W - 6, y2: H - B, class: 'axis' }));
  svg.appendChild(el('line', { x1: L, y1: 8, x2: L, y2: H - B, class: 'axis' }));
  for (const v of [0, max / 2, max]) {
    svg.appendChild(el('text', { x: L - 4, y: ys(v) + 3, 'text-anchor': 'end', class: 'tick' }, v.toFixed(3)));
  }
  inf.forEach((v, i) => {
    const kept = keptLayers.includes(i);
    const rect = el('rect', { x: L + i * bw + 1, y: ys(v), width: Math.max(1, bw - 2), height: H - B - ys(v),
      class: kept ? 'bar' : 'bar dropped', ...(kept ? {} : { fill: dropped }) });
    rect.appendChild(el('title', {}, `layer ${i}: ${v.toFixed(4)}${kept ? '' : ' (dropped)'}`));
    svg.appendChild(rect);
    if (inf.length <= 40 || i % 5 === 0) svg.appendChild(el('text', { x: L + i * bw + bw / 2, y: H - B + 13, 'text-anchor': 'middle', class: 'tick' }, i));
  });
  svg.appendChild(el('text', { x: (L + W) / 2, y: H - 4, 'text-anchor': 'middle', class: 'tick' }, 'layer'));
  if (keptLayers.length < inf.length) {
    svg.appendChild(el('rect', { x: W - 120, y: 6, width: 12, height: 10, fill: dropped, class: 'bar dropped' }));
    svg.appendChild(el('text', { x: W - 104, y: 15, class: 'tick' }, 'dropped layer'));
  }
}

// Perplexity on the held-out text against the share of MLP neurons removed, one point per run:
// filled with recovery, open without; a square where the run also dropped layers or heads (then
// the x axis alone does not say how much was removed).
export function drawRatio(svg, runs) {
  const W = 640, H = 220, L = 50, B = 34, T = 24;
  frame(svg, W, H);
  const pts = runs.filter((r) => Number.isFinite(r.ppl) && Number.isFinite(r.base));
  if (!pts.length) { svg.appendChild(el('text', { x: 10, y: 20 }, 'Prune with a held-out part of your text to add points.')); return; }
  // (Room on the right for the "100%" label.)
  const xs = (x) => L + (W - L - 24) * x / 100;
  const maxY = Math.max(...pts.map((p) => Math.max(p.ppl, p.base))) * 1.1;
  const ys = (y) => H - B - (H - B - T) * y / maxY;
  svg.appendChild(el('line', { x1: L, y1: H - B, x2: xs(100), y2: H - B, class: 'axis' }));
  svg.appendChild(el('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' }));
  for (const x of [0, 20, 40, 60, 80, 100]) svg.appendChild(el('text', { x: xs(x), y: H - B + 14, 'text-anchor': 'middle', class: 'tick' }, `${x}%`));
  svg.appendChild(el('text', { x: (L + W) / 2, y: H - 4, 'text-anchor': 'middle', class: 'tick' }, 'MLP neurons removed'));
  for (const y of [0, maxY / 1.1 / 2, maxY / 1.1]) {
    svg.appendChild(el('text', { x: L - 4, y: ys(y) + 3, 'text-anchor': 'end', class: 'tick' }, y.toFixed(1)));
  }
  svg.appendChild(el('text', { x: 4, y: 12, class: 'tick' }, 'perplexity (held out)'));
  svg.appendChild(el('line', { x1: L, y1: ys(pts[0].base), x2: xs(100), y2: ys(pts[0].base), class: 'base' }));
  for (const p of pts) {
    const x = xs(p.mlp), y = ys(p.ppl);
    const cls = p.recover ? 'dot rec' : 'dot';
    const mark = p.more ? el('rect', { x: x - 5, y: y - 5, width: 10, height: 10, class: cls }) : el('circle', { cx: x, cy: y, r: 5, class: cls });
    mark.appendChild(el('title', {}, `${p.mlp}% ${p.score}${p.recover ? ' + recovery' : ''}${p.more ? `, ${p.more}` : ''}: ${p.ppl.toFixed(3)}`));
    svg.appendChild(mark);
  }
  // Legend.
  const items = [['circle', 'dot rec', 'with recovery'], ['circle', 'dot', 'without'], ['rect', 'dot rec', 'also layers or heads removed'],
    ['line', 'base', 'original']];
  let lx = L + 160;
  for (const [shape, cls, text] of items) {
    if (shape === 'circle') svg.appendChild(el('circle', { cx: lx, cy: 10, r: 4, class: cls }));
    else if (shape === 'rect') svg.appendChild(el('rect', { x: lx - 4, y: 6, width: 8, height: 8, class: cls }));
    else svg.appendChild(el('line', { x1: lx - 8, y1: 10, x2: lx + 6, y2: 10, class: cls }));
    svg.appendChild(el('text', { x: lx + 9, y: 14, class: 'tick' }, text));
    lx += 30 + text.length * 5.2;
  }
}
