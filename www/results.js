// The results' table and charts: drawn from plain data into the page's own elements, so they can be
// read (and reused) apart from the page's state and its worker.

export function drawPpl(table, rows) {
  const body = table.querySelector('tbody');
  body.innerHTML = '';
  for (const r of rows) {
    const tr = document.createElement('tr');
    // A broken model can give NaN or infinite perplexity: said in words, never drawn.
    const fmt = (x) => (Number.isFinite(x) ? x.toFixed(3) : 'not finite');
    const ch = r.after !== undefined && Number.isFinite(r.after / r.before)
      ? `${r.after >= r.before ? '+' : ''}${(100 * (r.after / r.before - 1)).toFixed(1)}%` : '';
    for (const c of [r.name, fmt(r.before), r.after !== undefined ? fmt(r.after) : '…', ch]) {
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

export function drawLayers(svg, r) {
  svg.innerHTML = '';
  const inf = r.layer_influence;
  if (!inf.length) { svg.appendChild(el('text', { x: 10, y: 20 }, 'Static scores: no calibration, no influence measured.')); return; }
  const W = 640, H = 180, pad = 30, max = Math.max(...inf) || 1;
  const bw = (W - pad) / inf.length;
  inf.forEach((v, i) => {
    const h = (H - 40) * v / max;
    const kept = r.kept_layers.includes(i);
    const rect = el('rect', { x: pad + i * bw + 1, y: H - 20 - h, width: Math.max(1, bw - 2), height: h,
      class: kept ? 'bar' : 'bar dropped' });
    rect.appendChild(el('title', {}, `layer ${i}: ${v.toFixed(4)}${kept ? '' : ' (dropped)'}`));
    svg.appendChild(rect);
    if (inf.length <= 40 || i % 5 === 0) svg.appendChild(el('text', { x: pad + i * bw + bw / 2, y: H - 6, 'text-anchor': 'middle', class: 'tick' }, i));
  });
  svg.appendChild(el('text', { x: 2, y: 12, class: 'tick' }, max.toFixed(3)));
}

export function drawRatio(svg, runs) {
  svg.innerHTML = '';
  const pts = runs.filter((r) => Number.isFinite(r.ppl) && Number.isFinite(r.base));
  if (!pts.length) { svg.appendChild(el('text', { x: 10, y: 20 }, 'Prune with a held-out part of your text to add points.')); return; }
  const W = 640, H = 200, L = 50, B = 30;
  const xs = (x) => L + (W - L - 10) * x / 100;
  const maxY = Math.max(...pts.map((p) => Math.max(p.ppl, p.base))) * 1.1;
  const ys = (y) => H - B - (H - B - 10) * y / maxY;
  svg.appendChild(el('line', { x1: L, y1: H - B, x2: W - 10, y2: H - B, class: 'axis' }));
  svg.appendChild(el('line', { x1: L, y1: 10, x2: L, y2: H - B, class: 'axis' }));
  for (const x of [0, 20, 40, 60, 80, 100]) svg.appendChild(el('text', { x: xs(x), y: H - 10, 'text-anchor': 'middle', class: 'tick' }, `${x}%`));
  svg.appendChild(el('text', { x: 4, y: ys(maxY / 1.1) + 4, class: 'tick' }, (maxY / 1.1).toFixed(1)));
  svg.appendChild(el('line', { x1: L, y1: ys(pts[0].base), x2: W - 10, y2: ys(pts[0].base), class: 'base' }));
  for (const p of pts) {
    const c = el('circle', { cx: xs(p.mlp), cy: ys(p.ppl), r: 5, class: p.recover ? 'dot rec' : 'dot' });
    c.appendChild(el('title', {}, `${p.mlp}% ${p.score}${p.recover ? ' + recovery' : ''}: ${p.ppl.toFixed(3)}`));
    svg.appendChild(c);
  }
}
