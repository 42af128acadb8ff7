// The GPU worker: owns the WebGPU device and runs podar's WGSL matrix products (GpuKernels, from
// the single-threaded pkg/). WebGPU is asynchronous; the compute worker, whose Rust core is not,
// posts each product here and waits on a shared flag (see gpu-bridge.js).
// Messages, handled strictly in order:
//   {op: 'open'}                                  → posts {ok: true, info} or {ok: false, error}
//   {op: 'upload', key, w, n, k}                  weight [n, k] kept on the GPU under key
//   {op: 'linear', key, rows, k, n, buf, ctl}     x·Wᵀ, x and the result in the shared buf
//   {op: 'gram', t, n, buf, ctl}                  xᵀx
//   {op: 'forget'}                                drops every weight
// A product sets ctl[0] to 1 (done), 3 (weight not on the GPU) or 2 (failed; ctl[1] bytes of
// UTF-8 message in buf), then wakes the waiting worker.
import init, { GpuKernels } from './podar.js';

let kernels = null;
const failedUploads = new Map();

function answer(m, code, message) {
  const ctl = new Int32Array(m.ctl);
  if (code === 2) {
    const bytes = new TextEncoder().encode(String(message)).slice(0, Math.min(4096, m.buf.byteLength));
    new Uint8Array(m.buf).set(bytes);
    Atomics.store(ctl, 1, bytes.length);
  }
  Atomics.store(ctl, 0, code);
  Atomics.notify(ctl, 0);
}

async function handle(m) {
  switch (m.op) {
    case 'open':
      try {
        // A software adapter (Chromium's SwiftShader, ≈ 1 GFLOP/s) is far slower than the CPU: it is
        // used only when asked for (m.anyAdapter), e.g. to test the kernels without a GPU.
        const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
        if (!adapter) throw new Error('no WebGPU adapter');
        // The adapter by name, as far as the browser tells it.
        const what = [adapter.info?.vendor, adapter.info?.architecture, adapter.info?.description].filter(Boolean).join(' ');
        if ((adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter) && !m.anyAdapter) {
          throw new Error(`the only WebGPU adapter is a software one${what ? ` (${what})` : ''}, slower than the CPU`);
        }
        await init();
        kernels = await GpuKernels.open();
        postMessage({ ok: true, info: what ? `${what}, ${kernels.info()}` : kernels.info() });
      } catch (e) {
        postMessage({ ok: false, error: String((e && e.message) || e) });
      }
      return;
    case 'upload':
      try {
        kernels.upload(m.key, m.w, m.n, m.k);
        failedUploads.delete(m.key);
      } catch (e) {
        failedUploads.set(m.key, String((e && e.message) || e));
      }
      return;
    case 'forget':
      kernels?.forget();
      failedUploads.clear();
      return;
    case 'linear': {
      if (failedUploads.has(m.key)) return answer(m, 2, failedUploads.get(m.key));
      if (!kernels.has(m.key)) return answer(m, 3);
      try {
        const x = new Float32Array(m.buf, 0, m.rows * m.k).slice();
        const y = await kernels.linear(m.key, x, m.rows, m.k);
        new Float32Array(m.buf, 0, y.length).set(y);
        answer(m, 1);
      } catch (e) {
        answer(m, 2, (e && e.message) || e);
      }
      return;
    }
    case 'gram':
      try {
        const x = new Float32Array(m.buf, 0, m.t * m.n).slice();
        const y = await kernels.gram(x, m.t, m.n);
        new Float32Array(m.buf, 0, y.length).set(y);
        answer(m, 1);
      } catch (e) {
        answer(m, 2, (e && e.message) || e);
      }
      return;
    default:
      if (m.ctl) answer(m, 2, `unknown op ${m.op}`);
  }
}

let queue = Promise.resolve();
self.onmessage = (e) => {
  queue = queue.then(() => handle(e.data));
};
