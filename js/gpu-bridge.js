// The compute worker's side of WebGPU: podar's Rust core calls these methods synchronously from
// its kernels (Session.set_gpu); each product is posted to the GPU worker, and this worker blocks
// in Atomics.wait until the answer is in the shared buffer. Needs cross-origin isolation
// (SharedArrayBuffer) and a worker (Atomics.wait is not allowed on the page's main thread).
const WAIT_MS = 300000;

/** Why there is no shared memory here: the page is not cross-origin isolated (the server sends no
 * COOP/COEP headers), or the browser gives it no SharedArrayBuffer even so (WebKitGTK 2.50). */
export function noSharedMemory() {
  return self.crossOriginIsolated ? 'this browser gives the page no SharedArrayBuffer' : 'the page is not cross-origin isolated';
}

export class GpuBridge {
  /** Starts the GPU worker; resolves to a bridge, or rejects with the reason WebGPU is not usable. */
  static async start({ anyAdapter = false } = {}) {
    if (typeof SharedArrayBuffer !== 'function' || !self.crossOriginIsolated) throw new Error(noSharedMemory());
    if (!navigator.gpu) throw new Error('this browser has no WebGPU');
    const worker = new Worker(new URL('./gpu-worker.js', import.meta.url), { type: 'module' });
    const info = await new Promise((resolve, reject) => {
      worker.onmessage = (e) => (e.data.ok ? resolve(e.data.info) : reject(new Error(e.data.error)));
      worker.onerror = (e) => reject(new Error(e.message || 'the GPU worker failed to start'));
      worker.postMessage({ op: 'open', anyAdapter });
    }).catch((e) => {
      worker.terminate();
      throw e;
    });
    worker.onmessage = null;
    return new GpuBridge(worker, info);
  }

  constructor(worker, info) {
    this.worker = worker;
    this.info = info;
    this.ctl = new Int32Array(new SharedArrayBuffer(8));
    this.buf = new SharedArrayBuffer(1 << 20);
    this.lastError = null;
  }

  room(bytes) {
    if (this.buf.byteLength < bytes) this.buf = new SharedArrayBuffer(Math.max(bytes, 2 * this.buf.byteLength));
  }

  // Posts `msg` with the shared buffers and waits for the GPU worker's code (1 done, 3 missing, 2 failed).
  call(msg) {
    Atomics.store(this.ctl, 0, 0);
    this.worker.postMessage({ ...msg, buf: this.buf, ctl: this.ctl.buffer });
    const t0 = performance.now();
    while (Atomics.load(this.ctl, 0) === 0) {
      if (Atomics.wait(this.ctl, 0, 0, WAIT_MS) === 'timed-out' && performance.now() - t0 >= WAIT_MS) {
        this.lastError = 'the GPU did not answer in time';
        return 2;
      }
    }
    const code = Atomics.load(this.ctl, 0);
    if (code === 2) {
      const n = Atomics.load(this.ctl, 1);
      this.lastError = new TextDecoder().decode(new Uint8Array(this.buf, 0, n).slice());
    }
    return code;
  }

  upload(key, w, n, k) {
    const copy = w.slice();
    this.worker.postMessage({ op: 'upload', key, w: copy, n, k }, [copy.buffer]);
    return true;
  }

  // 0 done, 1 weight not on the GPU, 2 failed: the codes the Rust side expects.
  linear(key, x, rows, k, n, out) {
    this.room(Math.max(x.length, rows * n) * 4);
    new Float32Array(this.buf, 0, x.length).set(x);
    const code = this.call({ op: 'linear', key, rows, k, n });
    if (code === 1) out.set(new Float32Array(this.buf, 0, rows * n));
    return code === 1 ? 0 : code === 3 ? 1 : 2;
  }

  gram(x, t, n, out) {
    this.room(Math.max(x.length, n * n) * 4);
    new Float32Array(this.buf, 0, x.length).set(x);
    const code = this.call({ op: 'gram', t, n });
    if (code === 1) out.set(new Float32Array(this.buf, 0, n * n));
    return code === 1 ? 0 : 2;
  }

  forget() {
    this.worker.postMessage({ op: 'forget' });
  }
}
