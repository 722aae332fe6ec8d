// Picks and starts the TensorFlow.js backend, and shuts it down so the process can exit.
//
//   const report = await initBackend();            // 'auto', or VQCLIP_BACKEND / an explicit choice
//   ... tf work ...
//   await shutdownBackend();                        // ends wasm pthreads, destroys the Dawn device, back to cpu
// (Idle wasm pthreads no longer keep a process alive, so forgetting shutdownBackend() does not hang; still call it.)
//
// auto tries, in order:
//   1. tensorflow: @tensorflow/tfjs-node-gpu, then @tensorflow/tfjs-node (libtensorflow; optional, loaded by dynamic
//      import only when installed; they cannot be installed offline);
//   2. webgpu: Dawn (the `webgpu` package) with a HARDWARE adapter; software adapters (llvmpipe, SwiftShader,
//      lavapipe) are rejected in auto mode because they are slower than wasm;
//   3. wasm: SIMD, one pthread per core (wasm-threads.ts), with the fast backward kernels (wasm-kernels.ts);
//   4. cpu: tfjs's plain JS backend.
// An explicit 'webgpu' may fall back to the software path (Dawn OpenGL ES on Mesa llvmpipe); opts.software forces
// (true) or forbids (false) it.
// Environment: VQCLIP_BACKEND (choice), VQCLIP_THREADS (wasm threads; default all cores).

import * as tf from '@tensorflow/tfjs';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { registerFastWasmKernels, fastWasmKernelNames } from './wasm-kernels.ts';
import {
  coreCount,
  registerWasmBackend,
  terminateWasmThreads,
  wasmThreadsInfo,
  type WasmThreadsInfo,
} from './wasm-threads.ts';
import { createWebGPUDevice, destroyWebGPU, noGpuReason, useWebGPUBackend, type GpuInfo } from './webgpu.ts';

export type BackendChoice = 'auto' | 'tensorflow' | 'webgpu' | 'wasm' | 'cpu';
export type BackendName = Exclude<BackendChoice, 'auto'>;
export const BACKEND_CHOICES: readonly BackendChoice[] = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'];

export interface BackendOptions {
  /** wasm threads (default VQCLIP_THREADS, else all cores; tfjs-backend-wasm caps it at 8). */
  threads?: number;
  /** webgpu: true = software adapter only, false = never; default: auto mode never, explicit webgpu may. */
  software?: boolean;
}

export interface Attempt {
  backend: BackendName;
  ok: boolean;
  /** Why it was rejected (or a note when accepted). */
  reason?: string;
  ms: number;
}

export interface BackendReport {
  /** The backend in use (tf.getBackend()). */
  backend: BackendName;
  requested: BackendChoice;
  /** One line: why this backend (the rejected candidates and their reasons). */
  reason: string;
  attempts: Attempt[];
  /** webgpu only. */
  gpu?: GpuInfo;
  /** webgpu on a CPU rasteriser. */
  software: boolean;
  /** Threads doing the math: wasm pthreads; 1 for cpu; undefined where not ours to count (tensorflow, webgpu). */
  threads?: number;
  wasm?: WasmThreadsInfo;
  /** wasm kernels replaced by wasm-kernels.ts. */
  fastKernels?: string[];
  /** tensorflow only: which package. */
  tensorflowPackage?: string;
  versions: Record<string, string>;
  initMs: number;
}

let report: BackendReport | undefined;
let inFlight: Promise<BackendReport> | undefined;

/** The report of the last initBackend(), or undefined. */
export function backendReport(): BackendReport | undefined {
  return report;
}

const require = createRequire(import.meta.url);

function pkgVersion(name: string): string | undefined {
  try {
    return (JSON.parse(fs.readFileSync(require.resolve(`${name}/package.json`), 'utf8')) as { version: string }).version;
  } catch {
    try {
      // A package whose "exports" hides package.json: walk up from its entry point.
      let dir = path.dirname(require.resolve(name));
      for (let i = 0; i < 5; i++, dir = path.dirname(dir)) {
        const p = path.join(dir, 'package.json');
        if (fs.existsSync(p)) {
          const j = JSON.parse(fs.readFileSync(p, 'utf8')) as { name?: string; version: string };
          if (j.name === name) return j.version;
        }
      }
    } catch {
      /* not installed */
    }
    return undefined;
  }
}

function versions(extra: string[] = []): Record<string, string> {
  const out: Record<string, string> = { node: process.versions.node };
  for (const name of [
    '@tensorflow/tfjs',
    '@tensorflow/tfjs-core',
    '@tensorflow/tfjs-backend-cpu',
    '@tensorflow/tfjs-backend-wasm',
    '@tensorflow/tfjs-backend-webgpu',
    'webgpu',
    ...extra,
  ]) {
    const v = pkgVersion(name);
    if (v) out[name] = v;
  }
  return out;
}

/**
 * tfjs's cpu backend prints an "install tfjs-node" banner on its first tensor write when IS_NODE. It is advice we
 * cannot follow offline; clear the instance's one-shot flag instead of muting all tfjs warnings (PROD/IS_TEST would).
 */
function silenceCpuBanner(): void {
  const cpu = tf.findBackend('cpu') as unknown as { firstUse?: boolean } | null;
  if (cpu && 'firstUse' in cpu) cpu.firstUse = false;
}

function parseChoice(choice: string): BackendChoice {
  const c = choice.trim().toLowerCase();
  if (!(BACKEND_CHOICES as readonly string[]).includes(c)) {
    throw new Error(`unknown backend "${choice}" (choose one of ${BACKEND_CHOICES.join(', ')})`);
  }
  return c as BackendChoice;
}

function threadsFromEnv(): number | undefined {
  const v = process.env.VQCLIP_THREADS;
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`VQCLIP_THREADS must be a positive integer, got "${v}"`);
  return n;
}

function short(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const first = msg.split('\n')[0];
  if ((e as { code?: string }).code === 'ERR_MODULE_NOT_FOUND' || /Cannot find (module|package)/.test(first)) {
    return 'not installed';
  }
  return first.length > 300 ? `${first.slice(0, 300)}...` : first;
}

type Starter = () => Promise<Partial<BackendReport>>;

async function startTensorflow(): Promise<Partial<BackendReport>> {
  const reasons: string[] = [];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      // A variable specifier keeps TypeScript and bundlers from requiring the optional package.
      await import(pkg);
    } catch (e) {
      reasons.push(`${pkg}: ${short(e)}`);
      continue;
    }
    if (await tf.setBackend('tensorflow')) return { tensorflowPackage: pkg, versions: versions([pkg]) };
    reasons.push(`${pkg}: loaded but tf.setBackend('tensorflow') failed`);
  }
  throw new Error(reasons.join('; '));
}

function startWebGPU(software: 'never' | 'allow' | 'only'): Starter {
  return async () => {
    if (software === 'never') {
      const skip = noGpuReason();
      if (skip) throw new Error(skip);
    }
    const setup = await createWebGPUDevice(software);
    try {
      await useWebGPUBackend(setup);
    } catch (e) {
      destroyWebGPU();
      throw e;
    }
    return { gpu: setup.info, software: setup.info.software };
  };
}

function startWasm(threads: number): Starter {
  return async () => {
    registerWasmBackend(threads);
    registerFastWasmKernels();
    if (!(await tf.setBackend('wasm'))) {
      terminateWasmThreads();
      throw new Error("tf.setBackend('wasm') failed");
    }
    const info = wasmThreadsInfo();
    return { threads: info?.threads, wasm: info, fastKernels: fastWasmKernelNames() };
  };
}

async function startCpu(): Promise<Partial<BackendReport>> {
  if (!(await tf.setBackend('cpu'))) throw new Error("tf.setBackend('cpu') failed");
  return { threads: 1 };
}

/**
 * Start a backend and make it tfjs's current one. Calling it again first shuts the previous one down (its tensors
 * are lost). Throws only when an explicit choice fails (auto always ends on cpu at worst).
 */
export function initBackend(
  choice: BackendChoice | string = process.env.VQCLIP_BACKEND || 'auto',
  opts: BackendOptions = {},
): Promise<BackendReport> {
  // Serialise concurrent calls: tfjs's backend state is process-global.
  const run = async (): Promise<BackendReport> => {
    const requested = parseChoice(choice);
    if (report) await shutdownBackend();
    silenceCpuBanner();
    const threads = Math.max(1, Math.floor(opts.threads ?? threadsFromEnv() ?? coreCount()));
    // Software WebGPU: only if asked (software: true), never in auto mode or if forbidden, else as a fallback.
    const webgpuSoftware =
      opts.software === true ? 'only' : opts.software === false || requested === 'auto' ? 'never' : 'allow';
    const starters: Record<BackendName, Starter> = {
      tensorflow: startTensorflow,
      webgpu: startWebGPU(webgpuSoftware),
      wasm: startWasm(threads),
      cpu: startCpu,
    };
    const order: BackendName[] = requested === 'auto' ? ['tensorflow', 'webgpu', 'wasm', 'cpu'] : [requested];
    const attempts: Attempt[] = [];
    const t0 = performance.now();
    for (const backend of order) {
      const t = performance.now();
      try {
        const extra = await starters[backend]();
        attempts.push({ backend, ok: true, ms: performance.now() - t });
        if (extra.wasm?.fallbackReason) attempts[attempts.length - 1].reason = extra.wasm.fallbackReason;
        const rejected = attempts.filter((a) => !a.ok).map((a) => `${a.backend}: ${a.reason}`);
        report = {
          backend,
          requested,
          reason:
            (requested === 'auto' ? 'auto' : 'requested') +
            (rejected.length ? `; rejected ${rejected.join('; ')}` : '') +
            (extra.wasm?.fallbackReason ? `; wasm threads: ${extra.wasm.fallbackReason}` : '') +
            (extra.software ? '; software adapter (slow)' : ''),
          attempts,
          software: false,
          versions: versions(),
          ...extra,
          initMs: performance.now() - t0,
        };
        return report;
      } catch (e) {
        attempts.push({ backend, ok: false, reason: short(e), ms: performance.now() - t });
      }
    }
    throw new Error(`backend ${requested} unavailable: ${attempts.map((a) => `${a.backend}: ${a.reason}`).join('; ')}`);
  };
  const p = (inFlight ?? Promise.resolve()).catch(() => undefined).then(run);
  inFlight = p;
  return p;
}

/**
 * Release what initBackend() started so the process can exit: wasm pthreads are terminated, the Dawn device is
 * destroyed, and tfjs is left on the cpu backend (a later op would otherwise re-initialise the highest-priority
 * backend and start threads again). Tensors on the released backend are gone. Safe to call more than once.
 */
export async function shutdownBackend(): Promise<void> {
  terminateWasmThreads();
  destroyWebGPU();
  report = undefined;
  silenceCpuBanner();
  await tf.setBackend('cpu');
}
