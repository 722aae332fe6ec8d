// Real pthreads for @tensorflow/tfjs-backend-wasm in Node (tfjs issue #3830).
//
// Stock tfjs-backend-wasm never uses threads in Node: its WASM_HAS_MULTITHREAD_SUPPORT flag returns false whenever
// IS_NODE, and even with the flag forced on it hands Emscripten a blob: URL for the pthread worker script, and a Blob
// of the (transpiled, browser-shaped) factory as the script each worker imports; Node's worker_threads can load
// neither. The package also ships the raw Emscripten output in wasm-out/ (CommonJS, Node-aware), built from the same
// sources as the bundled copy (the .wasm files are byte-identical). So instead of patching tfjs's init we register our
// own factory for the 'wasm' backend that:
//   - loads wasm-out/tfjs-backend-wasm-threaded-simd.js as CommonJS (one thread: the stock factory, SIMD binary),
//   - writes the pthread worker script (exported by wasm-out/*.worker.js as a string) to a temp .cjs file and points
//     Emscripten's locateFile at it,
//   - gives workers the factory's real file path as mainScriptUrlOrBlob, so they importScripts() a file, not a Blob,
//   - builds the same `module.tfjs` cwrap table tfjs's init() builds and constructs the stock BackendWasm with it,
//     so every stock wasm kernel (and our wasm-kernels.ts) works unchanged.
// Emscripten pre-spawns a fixed pool of 8 workers (`pthreadPoolSize=8`); XNNPACK's pthreadpool waits synchronously
// for its threads to check in at creation, so the pool must already hold threads-1 loaded workers (a worker created
// on demand can never load while the main thread spins). We rewrite the pool size to threads-1: no idle workers
// (each is a V8 isolate with its own instance) on small machines. backend.cc caps XNNPACK at 8 threads.
// Emscripten keeps running pthread workers ref()ed, so a process with a pool would never exit by itself; we unref them
// once the pool is up (they only work inside synchronous calls from the main thread). terminateWasmThreads() (called
// from shutdownBackend()) still ends them explicitly and frees the wasm heap.

import * as tf from '@tensorflow/tfjs';
import { BackendWasm, setThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import * as vm from 'node:vm';

const require = createRequire(import.meta.url);
const WASM_PKG_DIR = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json'));
const WASM_OUT_DIR = path.join(WASM_PKG_DIR, 'wasm-out');
const THREADED = 'tfjs-backend-wasm-threaded-simd';
/**
 * Below cpu's 1: stock tfjs-backend-wasm registers at 2, which makes any tf op before an explicit setBackend throw
 * "highest priority backend 'wasm' has not yet been initialized" (its init is async). Our backends are only ever
 * chosen explicitly (initBackend), so importing the engine leaves tfjs's default (cpu) alone.
 */
export const WASM_PRIORITY = 0;
/** backend.cc's compile-time cap on XNNPACK threads (it pre-creates 8 workers in the browser build). */
export const MAX_WASM_THREADS = 8;
/** Generous: loading a pthread worker takes ~50-150 ms; a stuck load must not hang the process forever. */
const INIT_TIMEOUT_MS = 60_000;

export interface WasmThreadsInfo {
  /** Threads XNNPACK actually uses (from the module, after init). */
  threads: number;
  /** Threads asked for. */
  requested: number;
  /** Which binary was loaded. */
  binary: 'threaded-simd' | 'simd';
  /** Why fewer threads than requested, if so. */
  fallbackReason?: string;
  initMs: number;
}

// Minimal view of the Emscripten module object we touch.
interface EmModule {
  cwrap: (name: string, ret: string | null, args: string[]) => (...a: number[]) => unknown;
  PThread?: { terminateAllThreads(): void; unusedWorkers: unknown[]; runningWorkers: unknown[] };
  tfjs?: unknown;
  [k: string]: unknown;
}
type Factory = (config: Record<string, unknown>) => Promise<EmModule>;

let info: WasmThreadsInfo | undefined;
let requestedThreads = 1;
let workerFile: string | undefined;
let threadedFactory: Factory | undefined;

/** Number of logical cores (what "all cores" means). */
export function coreCount(): number {
  return typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
}

/** What the last wasm backend initialisation did (undefined before it ran). */
export function wasmThreadsInfo(): WasmThreadsInfo | undefined {
  return info;
}

/**
 * Source patches applied to the threaded factory. Each reads a property of the Emscripten Module config we pass, so
 * one compiled factory serves every thread count; a pattern that is missing (a different tfjs build) fails loudly.
 */
const PATCHES: Array<[string, string]> = [
  // Pre-spawned worker pool (see the file comment).
  ['var pthreadPoolSize=8;', 'var pthreadPoolSize=Module["vqclipPoolSize"]??8;'],
  // Workers inherit process.execArgv by default; the parent's flags (--input-type, --eval, loaders, ...) can make the
  // plain CommonJS bootstrap fail to start. It needs none of them.
  ['worker=new Worker(pthreadMainJs);', 'worker=new Worker(pthreadMainJs,Module["vqclipWorkerOptions"]);'],
  // A worker error is thrown from an event handler (an uncaught exception, with the whole one-line factory source as
  // context). Let us turn it into a failed init (-> fall back to one thread) instead.
  [
    'worker.onerror=e=>{var message="worker sent an error!";',
    'worker.onerror=e=>{if(Module["vqclipOnWorkerError"])return Module["vqclipOnWorkerError"](e);' +
      'var message="worker sent an error!";',
  ],
  // backend.cc caps XNNPACK's pool at emscripten_num_logical_cores()/2 ("hyperthreads"), which is 1 on a 2-core
  // machine; report twice the thread count we want so the cap is exactly our request.
  [
    '_emscripten_num_logical_cores(){if(ENVIRONMENT_IS_NODE)return require("os").cpus().length;',
    '_emscripten_num_logical_cores(){if(Module["vqclipLogicalCores"])return Module["vqclipLogicalCores"];' +
      'if(ENVIRONMENT_IS_NODE)return require("os").cpus().length;',
  ],
];

/** Load wasm-out's threaded Emscripten factory as CommonJS, with PATCHES applied. */
function loadThreadedFactory(): Factory {
  if (threadedFactory) return threadedFactory;
  const file = path.join(WASM_OUT_DIR, `${THREADED}.js`);
  let src = fs.readFileSync(file, 'utf8');
  for (const [from, to] of PATCHES) {
    if (!src.includes(from)) throw new Error(`unexpected ${THREADED}.js (tfjs version?): "${from}" not found`);
    src = src.replace(from, to);
  }
  const wrapper = vm.runInThisContext(`(function (exports, require, module, __filename, __dirname) {${src}\n})`, {
    filename: file,
  }) as (e: object, r: NodeRequire, m: { exports: unknown }, f: string, d: string) => void;
  const mod: { exports: unknown } = { exports: {} };
  wrapper(mod.exports as object, createRequire(file), mod, file, WASM_OUT_DIR);
  if (typeof mod.exports !== 'function') throw new Error(`${THREADED}.js did not export a factory`);
  threadedFactory = mod.exports as Factory;
  return threadedFactory;
}

/**
 * The pthread worker bootstrap tfjs would put in a blob: URL, written to a temp file named by its content hash (so
 * concurrent processes agree on it and a stale one is never reused). `.cjs`: it uses require().
 */
function ensureWorkerFile(): string {
  if (workerFile && fs.existsSync(workerFile)) return workerFile;
  const { wasmWorkerContents } = require(path.join(WASM_OUT_DIR, `${THREADED}.worker.js`)) as {
    wasmWorkerContents: string;
  };
  if (typeof wasmWorkerContents !== 'string') throw new Error('wasm-out worker.js exports no wasmWorkerContents');
  // The script is stored in a template literal, so its "\n" escapes arrived as real newlines, all of them inside
  // string literals; re-escape them (tfjs does the same before making its Blob).
  const script = wasmWorkerContents.replace(/\n/g, '\\n');
  const hash = createHash('sha256').update(script).digest('hex').slice(0, 16);
  const file = path.join(os.tmpdir(), `vqclip-tfjs-wasm-pthread-${hash}.cjs`);
  let ok = false;
  try {
    ok = fs.readFileSync(file, 'utf8') === script;
  } catch {
    /* not there yet */
  }
  if (!ok) {
    // Write-then-rename so a concurrent reader never sees a half-written script.
    const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
    fs.writeFileSync(tmp, script);
    fs.renameSync(tmp, file);
  }
  workerFile = file;
  return file;
}

/** Same cwrap table as tfjs-backend-wasm's init(); BackendWasm and every kernel call through it. */
function attachTfjsApi(module: EmModule): void {
  module.tfjs = {
    init: module.cwrap('init', null, []),
    initWithThreadsCount: module.cwrap('init_with_threads_count', null, ['number']),
    getThreadsCount: module.cwrap('get_threads_count', 'number', []),
    registerTensor: module.cwrap('register_tensor', null, ['number', 'number', 'number']),
    disposeData: module.cwrap('dispose_data', null, ['number']),
    dispose: module.cwrap('dispose', null, []),
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

async function createThreaded(threads: number): Promise<BackendWasm> {
  if (typeof SharedArrayBuffer === 'undefined') throw new Error('SharedArrayBuffer is not available');
  const factory = loadThreadedFactory();
  const worker = ensureWorkerFile();
  const mainScript = path.join(WASM_OUT_DIR, `${THREADED}.js`);
  let failed: (e: Error) => void = () => undefined;
  const failure = new Promise<never>((_, reject) => (failed = reject));
  let initialised = false;
  // Emscripten uses the config object as its Module: PThread appears on it once the factory has run.
  const config: Record<string, unknown> = {
    locateFile: (p: string) => (p.endsWith('.worker.js') ? worker : path.join(WASM_OUT_DIR, p)),
    // Workers importScripts() this path (fs.readFileSync + eval); the unpatched file is fine there, workers never
    // spawn workers.
    mainScriptUrlOrBlob: mainScript,
    vqclipPoolSize: threads - 1, // XNNPACK's pool uses the calling thread plus threads-1 workers
    vqclipLogicalCores: 2 * threads,
    vqclipWorkerOptions: { execArgv: [] },
    vqclipOnWorkerError: (e: Error) => {
      const err = new Error(`pthread worker failed: ${e?.message ?? e}`);
      if (!initialised) return failed(err);
      throw err; // after init a dead pthread would hang the next parallel op: fail loudly instead
    },
    onAbort: (what: unknown) => failed(new Error(`aborted: ${String(what)}`)),
  };
  let module: EmModule;
  try {
    module = await withTimeout(Promise.race([factory(config), failure]), INIT_TIMEOUT_MS, 'threaded wasm init');
  } catch (e) {
    (config.PThread as EmModule['PThread'])?.terminateAllThreads();
    throw new Error(`threaded wasm init failed: ${(e as Error).message}`);
  }
  initialised = true;
  attachTfjsApi(module);
  setThreadsCount(threads); // read by the BackendWasm constructor (init_with_threads_count)
  const backend = new BackendWasm(module as never); // creates XNNPACK's pool: threads-1 pthreads start here
  // Emscripten ref()s a worker while it runs a pthread, so a process with a live pool never exits by itself. XNNPACK's
  // pthreads only ever work inside a synchronous call from the main thread (which waits for them), so when the
  // event loop is empty they are idle and may die with the process: unref them.
  for (const w of module.PThread?.runningWorkers ?? []) (w as { unref?: () => void }).unref?.();
  return backend;
}

/**
 * One thread: the stock factory tfjs-backend-wasm registered at import (plain SIMD binary, no workers). Captured
 * before we replace it. (wasm-out's -simd.js cannot be reused like the threaded one: its post.js looks for a global
 * named WasmBackendModule that only the bundled copy defines.)
 */
const stockFactory = tf.engine().registryFactory['wasm']?.factory as (() => Promise<BackendWasm>) | undefined;

async function createSingle(): Promise<BackendWasm> {
  if (!stockFactory) throw new Error('tfjs-backend-wasm did not register a wasm backend');
  setThreadsCount(1);
  return withTimeout(stockFactory(), INIT_TIMEOUT_MS, 'wasm init');
}

function threadsOf(backend: BackendWasm): number {
  return (backend.wasm as unknown as { tfjs: { getThreadsCount(): number } }).tfjs.getThreadsCount();
}

/**
 * (Re)register the 'wasm' backend so that its next initialisation uses `threads` pthreads (1 = the plain SIMD
 * binary, no workers). Disposes a wasm backend that is already initialised (its tensors are lost), so call this
 * before creating tensors on wasm. Falls back to one thread, recording why, if the threaded build cannot start.
 */
export function registerWasmBackend(threads: number = coreCount(), priority = WASM_PRIORITY): void {
  requestedThreads = Math.max(1, Math.floor(threads));
  if (tf.engine().registryFactory['wasm']) tf.removeBackend('wasm'); // disposes an initialised one: ends its threads
  tf.registerBackend(
    'wasm',
    async () => {
      const t0 = performance.now();
      const want = Math.min(requestedThreads, MAX_WASM_THREADS);
      let note = want < requestedThreads ? `tfjs-backend-wasm caps threads at ${MAX_WASM_THREADS}` : undefined;
      let backend: BackendWasm | undefined;
      if (want > 1) {
        try {
          backend = await createThreaded(want);
        } catch (e) {
          note = `${(e as Error).message}; using 1 thread`;
        }
      }
      const binary = backend ? 'threaded-simd' : 'simd';
      backend ??= await createSingle();
      const threads = threadsOf(backend);
      if (threads < want && !note) note = `XNNPACK started ${threads} of ${want} threads`;
      info = { threads, requested: requestedThreads, binary, fallbackReason: note, initMs: performance.now() - t0 };
      if (info.fallbackReason === undefined) delete info.fallbackReason;
      return backend;
    },
    priority,
  );
}

/**
 * End the wasm backend's pthreads and free its heap: dispose the backend (BackendWasm.dispose terminates all
 * workers) and register a fresh factory with the same settings, so a later setBackend('wasm') works again.
 */
export function terminateWasmThreads(): void {
  const engine = tf.engine();
  if (!engine.registryFactory['wasm']) return;
  if (engine.registry['wasm']) {
    tf.removeBackend('wasm');
    registerWasmBackend(requestedThreads);
  }
}

// Replace tfjs-backend-wasm's import-time registration right away (see WASM_PRIORITY), unless a stock wasm backend
// is already running (then initBackend replaces it).
if (!tf.engine().registry['wasm']) registerWasmBackend(coreCount());
