// Types of podar's JavaScript API (index.js). Guide: docs/js-api.md in podar's repository.

/** The kinds of error, as `PodarError.code`. */
export type ErrorCode =
  | 'aborted' // the call's AbortSignal fired (the error's name is then "AbortError")
  | 'model-too-large' // the model cannot be pruned within the browser's 4 GiB of wasm memory
  | 'text-too-short' // the domain text has fewer tokens than the calibration asks for
  | 'unsupported-arch' // an architecture podar does not run
  | 'corrupt-file' // a malformed, truncated or unreadable model file
  | 'bad-config' // config.json (or the GGUF metadata) disagrees with itself or the weights
  | 'tokenizer' // the tokenizer could not be built, or could not encode the text
  | 'bad-input' // an option or argument that does not fit
  | 'network' // a URL could not be fetched
  | 'io' // a file could not be read
  | 'out-of-memory' // the engine ran out of memory (it is restarted, and the model read again)
  | 'engine-crashed' // the engine stopped (it is restarted, and the model read again)
  | 'superseded' // a Model or Pruned used after another load or prune replaced it
  | 'unsupported-browser' // no WebAssembly SIMD
  | 'disposed' // the Podar instance was disposed
  | 'gpu' // WebGPU failed
  | 'write-failed' // an export's WritableStream refused a chunk (a full disk, say)
  | 'internal' // a bug in podar
  | 'failed'; // anything else

/**
 * Makes the page cross-origin isolated (for wasm threads) where its host sends no COOP/COEP headers:
 * registers podar's service worker (coi-sw.js, copied into the page's folder) and reloads the page
 * once. Resolves to whether the page is isolated. Call it before `Podar.create`.
 */
export function isolate(serviceWorker?: string): Promise<boolean>;

export class PodarError extends Error {
  readonly code: ErrorCode;
}

export interface Progress {
  /** What runs now: "download NAME", "hash", "load", "calibrate", "score", "eval", "write"… */
  stage: string;
  /** Steps of this stage done, of `total` (bytes, megabytes or layers, by stage). */
  done: number;
  total: number;
  /** Seconds left in this stage, once it can be estimated; otherwise null. */
  eta: number | null;
}

export interface CallOptions {
  onProgress?: (p: Progress) => void;
  /** Aborts the call at any stage: it rejects with a PodarError of code "aborted"; the instance stays usable. */
  signal?: AbortSignal;
}

export interface CreateOptions {
  /** "auto": wasm threads where the page is cross-origin isolated; false: one thread. */
  threads?: 'auto' | false;
  /** "auto": WebGPU for the large matrix products on a hardware adapter; "any": a software adapter
   * too (Chromium's SwiftShader: for tests, it is slower than the CPU); false: the CPU only. */
  gpu?: 'auto' | 'any' | false;
  /** "auto": relaxed SIMD (fused multiply-add) where the browser validates it; "plain": never. */
  simd?: 'auto' | 'plain';
  /** false: start on the CPU even where a GPU is at hand (`setGpu` switches later). Default true. */
  useGpu?: boolean;
  /** A cap on the engine's heap, in bytes: a test knob, to see "out-of-memory" handled on a small model. */
  memoryLimit?: number;
  /** How many starts of the threaded engine freeze in the thread pool's start, as Firefox's now and
   * then did: a test knob, to see such a start replaced (after 2 s here; 10 s otherwise), and after
   * two, the engine started without threads. */
  freezePool?: number;
}

/** The WebGPU adapter at hand. */
export interface WebGpuState {
  /** The adapter's name (vendor, architecture, description). */
  adapter: string;
  /** Whether the large matrix products run on it now. */
  inUse: boolean;
  /** Whether it failed during a call (the CPU then took over, and keeps the work). */
  failed: boolean;
  /** Its last error, if any. */
  error: string | null;
  /** Matrix products it has computed. */
  products: number;
  /** One product ([512, 1024] · [1024, 1024]ᵀ) timed on the CPU and on the GPU when the engine
   * started: with gpu "auto", the GPU is used only where it was faster. Null where not timed
   * (useGpu false, or a restart after setGpu). */
  trial: { cpuMs: number | null; gpuMs: number | null; error?: string } | null;
}

export interface Capabilities {
  simd: boolean;
  relaxedSimd: boolean;
  /** Threads the engine computes on. */
  threads: number;
  /** Why the engine runs on one thread, when it does. */
  threadsUnavailable: string | null;
  crossOriginIsolated: boolean;
  /** The WebGPU adapter in use or available, or null. */
  webgpu: WebGpuState | null;
  /** Why there is no WebGPU, when there is none. */
  webgpuUnavailable: string | null;
  /** The most memory the engine can use (WebAssembly's 4 GiB). */
  maxMemoryBytes: number;
}

/** A model: a URL of a .gguf or of a Hugging Face folder, or its files. */
export type ModelSource = string | URL | File | File[] | FileList | FileSystemDirectoryHandle | Blob | ArrayBuffer | ArrayBufferView;

export interface ModelSummary {
  architecture: string;
  format: string;
  dtype: string;
  layers: number;
  hidden: number;
  /** The MLP width (the widest layer's where the layers differ). */
  mlp: number;
  /** Each layer's MLP width, where the layers differ (a GGUF of llama.cpp's `deci` architecture). */
  mlpPerLayer?: number[];
  heads: number;
  kvHeads: number;
  headDim: number;
  vocabulary: number;
  parameters: number;
  tiedEmbeddings: boolean;
  /** The names of the files read. */
  files: string[];
}

export interface Domain {
  text: string;
  /** Tokens counted (at least up to `need`, not beyond what a job reads). */
  tokens: number;
  /** Whether `tokens` counts the whole text. */
  complete: boolean;
  /** Calibration windows of calibLen the counted tokens fill. */
  windows: number;
  /** Tokens the calibration needs: calibSamples × calibLen. */
  need: number;
  enough: boolean;
}

export type Score = 'energy' | 'optipfair' | 'wanda' | 'flap' | 'obs' | 'maw' | 'vow' | 'pon' | 'l2';

export interface PruneOptions {
  /** Fraction of MLP neurons to remove, 0 to 1 (e.g. 0.2). */
  mlp?: number;
  /** Or the MLP width to keep. */
  mlpSize?: number;
  /** Round the kept width down to a multiple of this. */
  divisor?: number;
  /** How neurons are scored (default "energy"). */
  score?: Score;
  /** Re-fit the down projections on the calibration text (default true). */
  recover?: boolean;
  /** Ridge strength of the re-fit (default 0.3). */
  ridge?: number;
  /** Calibration windows (default 64) of calibLen tokens (default 128). */
  calibSamples?: number;
  calibLen?: number;
  /** Fraction of KV head groups to remove from every layer. */
  heads?: number;
  /** Layers to remove: the ones that change the residual stream least. */
  dropLayers?: number;
  /** Exactly these layers. */
  dropLayersAt?: number[];
  /** The contiguous block of this many layers whose input and output are closest. */
  dropBlock?: number;
  /** Calibrate each layer on the already-pruned layers' outputs (default true). */
  sequential?: boolean;
  /** Error correction in recovery: a strength 0–1, "residuals" (default), "stream", or "off". */
  correct?: number | 'residuals' | 'stream' | 'off';
  /** Number format of calibration's matrix products (default "f32"). */
  calibPrecision?: 'f32' | 'bf16';
  /** "uniform" (default): every layer keeps the same MLP width. "per-layer": each layer keeps as
   * many neurons as their measured output energy earns, the same total (one more calibration
   * pass); Llama models only, exported as GGUF (llama.cpp's `deci` architecture). */
  mlpWidths?: 'uniform' | 'per-layer';
}

export interface Plan {
  parametersBefore: number;
  parametersAfter: number;
  layersBefore: number;
  layersAfter: number;
  mlpBefore: number;
  mlpAfter: number;
  kvHeadsBefore: number;
  kvHeadsAfter: number;
  /** Bytes of the exported weights in the format asked. */
  fileBytes: number;
  calibrationTokens: number;
  /** What the output will not keep as asked. */
  warnings: string[];
}

export interface PerplexityOptions extends CallOptions {
  /** Tokens to skip first (a domain text's calibration part). Default 0. */
  skip?: number;
  /** At most this many tokens (default 1024). */
  maxTokens?: number;
  /** Window length (default 256). */
  ctx?: number;
}

export interface Perplexity {
  perplexity: number;
  /** Tokens predicted. */
  predictions: number;
  tokens: number;
  /** Mean negative log-likelihood (natural log). */
  nll: number;
}

export interface GenerateOptions {
  /** Tokens to generate at most (default 48). */
  maxTokens?: number;
  /** Through the model's chat template (default false). */
  chat?: boolean;
  signal?: AbortSignal;
}

export interface ExportOptions extends CallOptions {
  /** "hf": a zip of a Hugging Face folder; "gguf": one .gguf. Default "hf". */
  format?: 'hf' | 'gguf';
  /** hf: f32, f16 or bf16; gguf: f32, f16 or q8_0. Default f32. */
  dtype?: 'f32' | 'f16' | 'bf16' | 'q8_0';
  /** Perplexities before and after, for the report inside the zip. */
  evals?: { name: string; before: number; after: number }[];
}

export interface Importance {
  score: Score;
  /** Tokens read. */
  tokens: number;
  /** Per layer: 1 − cos(input, output) of its residual stream on the text. */
  layerInfluence: number[];
  /** Per layer, per MLP neuron: its score (higher is kept first). */
  neurons: number[][];
}

export interface PruneReport {
  parametersBefore: number;
  parametersAfter: number;
  mlpBefore: number;
  /** The MLP width after (the widest layer's where the layers differ). */
  mlpAfter: number;
  /** Each layer's MLP width after, with `mlpWidths: "per-layer"`. */
  mlpPerLayer?: number[];
  layersBefore: number;
  keptLayers: number[];
  kvHeadsBefore: number;
  keptKvHeads: number[][];
  calibrationTokens: number;
  seconds: number;
}

export interface LoadOptions extends CallOptions {
  /** For a URL: keep the downloaded files with the Cache API and read them from there next time. */
  cache?: boolean;
  /** "auto" (the default): a model too large to hold in the page's memory is read from its files
   * a layer at a time as it is used; true: always so; false: never (a large model is refused). */
  stream?: 'auto' | boolean;
}

export interface CachedFile {
  url: string;
  bytes: number;
  /** When it was stored (ISO 8601). */
  stored: string | null;
}

export interface ModelCache {
  /** Every file kept (a Hugging Face folder keeps each of its files). */
  list(): Promise<CachedFile[]>;
  /** Deletes the file kept for `url`, or every kept file; whether anything was deleted. */
  delete(url?: string | URL): Promise<boolean>;
}

export class Podar {
  /** Starts the engine (a worker this instance owns). */
  static create(options?: CreateOptions): Promise<Podar>;
  readonly capabilities: Capabilities;
  /** Bytes of wasm memory the engine holds (also its peak: wasm memory never shrinks). */
  readonly memoryBytes: number;
  /** The engine's heap after the last call, in bytes: in use, and the most in use at once since it started. */
  readonly heap: { live: number; peak: number };
  /** Whether the engine stopped (a crash, or an abort where the page is not cross-origin isolated):
   * the next call starts a fresh one and reads the model again. */
  readonly stopped: boolean;
  /** Starts a fresh engine now and reads the loaded model into it again; whether a model was read. */
  restart(options?: CallOptions): Promise<boolean>;
  /** Large matrix products on WebGPU (true) or the CPU (false); rejects with code "gpu" without an adapter. */
  setGpu(on: boolean): Promise<WebGpuState | null>;
  /** A model's summary from its headers alone (local files only), for a model of any size. */
  inspect(source: Exclude<ModelSource, string | URL>, options?: { signal?: AbortSignal }): Promise<ModelSummary>;
  /** Loads a model, replacing the one loaded before. */
  load(source: ModelSource, options?: LoadOptions): Promise<Model>;
  /** The models kept by `load(url, {cache: true})`. */
  readonly cache: ModelCache;
  /** Ends the engine's workers. */
  dispose(): void;
}

export class Model {
  readonly summary: ModelSummary;
  /** Whether its layers and tables are read from its files as they are used (too large to hold,
   * or `load(…, {stream: true})`): prune, perplexity, generate and export work (generate reads every layer
   * from the files once per new token, so it is slow), importance does not. */
  readonly streamed: boolean;
  /** For a URL loaded with {cache: true}: files read from the cache, files stored, and why a file
   * could not be stored (e.g. a full storage quota), or null. */
  readonly cache: { hits: number; stored: number; error: string | null } | null;
  /** A domain text counted in this model's tokens. */
  text(text: string | Blob, options?: { calibSamples?: number; calibLen?: number; limit?: number; signal?: AbortSignal }): Promise<Domain>;
  /** Per-layer influence and per-neuron scores on the text, without pruning (not for score "obs"). */
  importance(text: string | Blob, options?: CallOptions & { score?: Score; calibSamples?: number; calibLen?: number }): Promise<Importance>;
  /** Sizes after pruning, before any work; rejects with the reason when the options cannot be done. */
  plan(options?: PruneOptions, output?: { format?: 'hf' | 'gguf'; dtype?: ExportOptions['dtype'] }): Promise<Plan>;
  /** Prunes for the domain text: its first calibSamples × calibLen tokens calibrate. */
  prune(domain: string | Blob | Domain, options?: PruneOptions, call?: CallOptions): Promise<Pruned>;
  perplexity(text: string | Blob, options?: PerplexityOptions): Promise<Perplexity>;
  generate(prompt: string, options?: GenerateOptions): AsyncGenerator<string, void, void>;
}

export class Pruned {
  readonly report: PruneReport;
  /** Per layer: how much it changes the residual stream on the domain text (1 − cos). */
  readonly layerInfluence: number[];
  /** For runs of layers: how far apart their input and output are. */
  readonly blockDistances: number[];
  /** Calibration tokens the prune read (skip them to measure on held-out text). */
  readonly calibTokens: number;
  perplexity(text: string | Blob, options?: PerplexityOptions): Promise<Perplexity>;
  generate(prompt: string, options?: GenerateOptions): AsyncGenerator<string, void, void>;
  /** The name `export` gives its file in `format` (default "hf"), known before it is written. */
  fileName(format?: 'hf' | 'gguf'): string;
  /** The pruned model as a File (a .zip or a .gguf). */
  export(options?: ExportOptions & { to?: undefined }): Promise<File>;
  /**
   * The pruned model written to `to` as it is made, never held whole (for a file of several GB):
   * the stream is closed when the file is complete, aborted on a failure or an abort.
   */
  export(options: ExportOptions & { to: WritableStream }): Promise<{ name: string; size: number }>;
}
