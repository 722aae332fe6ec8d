// Engine micro-benchmarks on the wasm backend (and on the current backend, when it is a GPU or libtensorflow):
//   - 3x3 conv 128->128 at 64x64 (batch 1, 'same'): forward, and forward + input gradient;
//   - matMul 1024x1024x1024: forward, and forward + gradient w.r.t. the left operand (and both operands);
// with the stock wasm backward kernels vs ours (wasm-kernels.ts), on 1 thread vs all threads (wasm-threads.ts).
// Prints GFLOP/s (best of a few runs) and "fwd+bwd / (2 x fwd)": an input gradient costs one more conv/matmul of the
// forward's size, so a healthy backward makes that ratio ~1 (target: within 1.5; stock wasm is 5-17x).
//
//   node --import tsx src/bench/engine.ts [--quick]     (or: npm run bench -- --only engine)
//   VQCLIP_BACKEND=auto node --import tsx src/bench/engine.ts   (also measures a GPU / libtensorflow backend)

import * as tf from '@tensorflow/tfjs';
import { backendReport, initBackend, shutdownBackend, type BackendReport } from '../engine/backend.ts';
import { registerFastWasmKernels, unregisterFastWasmKernels } from '../engine/wasm-kernels.ts';
import { coreCount } from '../engine/wasm-threads.ts';
import { runStandalone } from './entry.ts';

/** tf.grad for a function of a specific tensor rank (tf.grad's parameter type is the plain Tensor). */
const grad = <T extends tf.Tensor>(f: (x: T) => tf.Tensor) => tf.grad(f as unknown as (x: tf.Tensor) => tf.Tensor);

export interface EngineBenchOptions {
  quick?: boolean;
  backend?: string;
}

export interface EngineBenchRow {
  label: string;
  fwdMs: number;
  fwdBwdMs: number;
  fwdGflops: number;
  fwdBwdGflops: number;
  /** fwdBwdMs / (2 * fwdMs). */
  ratio: number;
}

/**
 * Best (minimum) wall time of `f` in ms after one warm-up call; `f` must wait for its results. The minimum, not the
 * median: on a shared machine other processes only ever add time.
 */
async function time(f: () => Promise<void>, opts: { reps: number; budgetMs: number }): Promise<number> {
  await f(); // warm-up: kernel setup, XNNPACK operator creation, shader compilation
  let best = Infinity;
  const t0 = performance.now();
  for (let i = 0; i < 3 * opts.reps; i++) {
    const t = performance.now();
    await f();
    best = Math.min(best, performance.now() - t);
    if (i + 1 >= opts.reps && performance.now() - t0 > opts.budgetMs) break;
  }
  return best;
}

function seeded(shape: number[], seed: number): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const d = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = s / 2 ** 32 - 0.5;
  }
  return tf.tensor(d, shape);
}

const fmt = (x: number, digits = 1): string => x.toFixed(digits);

/** Measure the conv and matmul cases on the current backend; `bothGrads` adds matMul with both gradients. */
async function measure(
  label: string,
  quick: boolean,
  bothGrads: boolean,
  log: (l: string) => void,
): Promise<EngineBenchRow[]> {
  const rows: EngineBenchRow[] = [];
  const t = { reps: quick ? 2 : 3, budgetMs: quick ? 1000 : 3000 };
  const report = (r: EngineBenchRow): void => {
    rows.push(r);
    log(
      `${r.label}: fwd ${fmt(r.fwdMs)} ms ${fmt(r.fwdGflops)} GFLOP/s | fwd+bwd ${fmt(r.fwdBwdMs)} ms ` +
        `${fmt(r.fwdBwdGflops)} GFLOP/s | fwd+bwd / (2 x fwd) = ${fmt(r.ratio, 2)}`,
    );
  };

  const x = seeded([1, 64, 64, 128], 1) as tf.Tensor4D;
  const w = tf.mul(seeded([3, 3, 128, 128], 2), 0.1) as tf.Tensor4D;
  const dy = seeded([1, 64, 64, 128], 3);
  const convFlop = 2 * 64 * 64 * 128 * 128 * 9;
  const convFwd = await time(async () => {
    const y = tf.conv2d(x, w, 1, 'same');
    await y.data();
    y.dispose();
  }, t);
  const convBwd = await time(async () => {
    const g = grad((xx: tf.Tensor4D) => tf.conv2d(xx, w, 1, 'same'))(x, dy);
    await g.data();
    g.dispose();
  }, t);
  report(row(`${label} conv3x3 128->128 64x64`, convFwd, convBwd, convFlop, 2 * convFlop));

  const n = 1024;
  const a = seeded([n, n], 4);
  const b = seeded([n, n], 5);
  const dm = seeded([n, n], 6);
  const mmFlop = 2 * n ** 3;
  const mmFwd = await time(async () => {
    const y = tf.matMul(a, b);
    await y.data();
    y.dispose();
  }, t);
  const mmBwd = await time(async () => {
    const g = tf.grad((aa: tf.Tensor) => tf.matMul(aa, b))(a, dm);
    await g.data();
    g.dispose();
  }, t);
  report(row(`${label} matMul 1024 (grad A)`, mmFwd, mmBwd, mmFlop, 2 * mmFlop));
  if (bothGrads) {
    const mmBoth = await time(async () => {
      const gs = tf.grads((aa: tf.Tensor, bb: tf.Tensor) => tf.matMul(aa, bb))([a, b], dm);
      await Promise.all(gs.map((g) => g.data()));
      tf.dispose(gs);
    }, t);
    log(
      `${label} matMul 1024 (grads A, B): fwd+bwd ${fmt(mmBoth)} ms ${fmt((3 * mmFlop) / mmBoth / 1e6)} GFLOP/s | ` +
        `fwd+bwd / (3 x fwd) = ${fmt(mmBoth / (3 * mmFwd), 2)}`,
    );
  }
  tf.dispose([x, w, dy, a, b, dm]);
  return rows;
}

function row(label: string, fwdMs: number, fwdBwdMs: number, fwdFlop: number, fwdBwdFlop: number): EngineBenchRow {
  return {
    label,
    fwdMs,
    fwdBwdMs,
    fwdGflops: fwdFlop / fwdMs / 1e6,
    fwdBwdGflops: fwdBwdFlop / fwdBwdMs / 1e6,
    ratio: fwdBwdMs / (2 * fwdMs),
  };
}

/**
 * Run the engine benchmarks (the `npm run bench` section). Re-initialises the wasm backend for each thread count
 * (tensors on it are lost), then restores the backend that was current when called (if any).
 */
export async function benchEngine(
  log: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
  opts: EngineBenchOptions = {},
): Promise<void> {
  await runEngineBench(log, opts);
}

/** benchEngine, returning the measured rows. */
export async function runEngineBench(
  log: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
  opts: EngineBenchOptions = {},
): Promise<EngineBenchRow[]> {
  const quick = opts.quick ?? false;
  const before: BackendReport | undefined = backendReport();
  const rows: EngineBenchRow[] = [];

  if (before && (before.backend === 'webgpu' || before.backend === 'tensorflow')) {
    log(`-- ${before.backend}${before.gpu ? ` (${before.gpu.device || before.gpu.description})` : ''}`);
    rows.push(...(await measure(before.backend, quick, true, log)));
  }

  const all = coreCount();
  const threadCounts = all > 1 ? [1, all] : [1];
  for (const threads of threadCounts) {
    const r = await initBackend('wasm', { threads });
    const note = r.wasm?.fallbackReason ? ` (${r.wasm.fallbackReason})` : '';
    for (const kernels of ['stock', 'fast'] as const) {
      if (kernels === 'stock') unregisterFastWasmKernels();
      else registerFastWasmKernels();
      log(`-- wasm, ${r.threads} thread(s)${note}, ${kernels} backward kernels`);
      // Stock matMul with both gradients takes ~13 s a call: measured with our kernels only.
      rows.push(...(await measure(`wasm ${r.threads}t ${kernels}`, quick, kernels === 'fast', log)));
    }
  }
  registerFastWasmKernels();

  if (before) await initBackend(before.requested === 'auto' ? 'auto' : before.backend, { threads: before.threads });
  else await shutdownBackend();
  return rows;
}

// Run directly: [VQCLIP_BACKEND=auto] node --import tsx src/bench/engine.ts [--quick]
// (with a GPU or libtensorflow backend chosen, that backend is measured first, then wasm)
await runStandalone('engine', (log, a) => benchEngine(log, { quick: a.has('--quick') }), 'wasm');
