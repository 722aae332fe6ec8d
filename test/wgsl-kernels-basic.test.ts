// The non-GEMM WGSL lowerings (elementwise, reductions, layout, gather, resize) on the software WebGPU adapter,
// against the tfjs cpu backend: random inputs of small (odd, broadcast, rank 1-5) shapes, and a few 1-D sizes large
// enough to need a y grid. *Grad kinds are checked against tf.grad of their forward.
import * as tf from '@tensorflow/tfjs';
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { suiteDevice } from './helpers.ts';
import { clampWithGrad as tfClampWithGrad, gatherRows as tfGatherRows, resize as tfResize } from '../src/engine/gradients.ts';
import type { DType, OpName, Attrs } from '../src/engine/graph/ir.ts';
import { DEFAULT_LIMITS, runLowered, type KernelLimits, type KernelNode, type Lowerings } from '../src/engine/wgsl/kernel.ts';
import { lowerings as elementwise } from '../src/engine/wgsl/kernels/elementwise.ts';
import { DIRECT_MAX, lowerings as gather } from '../src/engine/wgsl/kernels/gather.ts';
import { lowerings as layout } from '../src/engine/wgsl/kernels/layout.ts';
import { lowerings as reduce } from '../src/engine/wgsl/kernels/reduce.ts';
import { lowerings as resize } from '../src/engine/wgsl/kernels/resize.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';

const all: Lowerings = { ...elementwise, ...gather, ...layout, ...reduce, ...resize };

const gpu = suiteDevice();
/** Largest |gpu - tfjs| per node kind (and fn), printed at the end. */
const worst = new Map<string, { abs: number; cases: number }>();

before(() => tf.setBackend('cpu'));

after(() => {
  const rows = [...worst].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `  ${k.padEnd(40)} ${String(v.cases).padStart(3)} cases  max abs diff ${v.abs.toExponential(2)}`);
  console.log(`wgsl kernels vs tfjs cpu:\n${rows.join('\n')}`);
});

// Seeded uniform numbers (mulberry32), so failures reproduce.
let seed = 12345;
function rand(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
function uniform(shape: number[], lo = -2, hi = 2): Float32Array {
  return Float32Array.from({ length: size(shape) }, () => lo + (hi - lo) * rand());
}
function ints(n: number, hi: number): Int32Array {
  return Int32Array.from({ length: n }, () => Math.floor(rand() * hi));
}

interface In {
  data: Float32Array | Int32Array;
  shape: number[];
}

async function runNode<K extends OpName>(
  op: K,
  attrs: Attrs[K],
  inputs: In[],
  outShape: number[],
  outDtype: DType = 'f32',
  limits: KernelLimits = DEFAULT_LIMITS,
): Promise<Float32Array | Int32Array> {
  const lower = all[op];
  assert.ok(lower, `no lowering for ${op}`);
  const node: KernelNode<K> = {
    op,
    attrs,
    inputs: inputs.map((t) => ({ shape: t.shape, dtype: t.data instanceof Int32Array ? 'i32' : 'f32' })),
    output: { shape: outShape, dtype: outDtype },
  };
  const lowered = (lower as (n: KernelNode<K>, l: KernelLimits) => ReturnType<NonNullable<Lowerings[K]>>)(node, limits);
  return runLowered(gpu.device!, lowered, inputs, node.output);
}

/** Runs a node and compares with the tfjs tensor `expected`: |d| <= rtol * max(1, |expected|) elementwise. */
async function check<K extends OpName>(
  key: string,
  op: K,
  attrs: Attrs[K],
  inputs: In[],
  expected: tf.Tensor,
  { rtol = 1e-5, limits = DEFAULT_LIMITS }: { rtol?: number; limits?: KernelLimits } = {},
): Promise<void> {
  const want = await expected.data();
  const got = await runNode(op, attrs, inputs, expected.shape, expected.dtype === 'int32' ? 'i32' : 'f32', limits);
  expected.dispose();
  assert.equal(got.length, want.length, `${key}: length`);
  let maxAbs = 0;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    const ok = d <= rtol * Math.max(1, Math.abs(want[i])) || (Number.isNaN(got[i]) && Number.isNaN(want[i]));
    assert.ok(ok, `${key} [${inputs.map((t) => `[${t.shape}]`).join(' ')}]: element ${i}: ${got[i]} vs ${want[i]}`);
    if (d > maxAbs) maxAbs = d;
  }
  const w = worst.get(key) ?? { abs: 0, cases: 0 };
  worst.set(key, { abs: Math.max(w.abs, maxAbs), cases: w.cases + 1 });
}

/**
 * Limits with a tiny grid dimension: launches spread over y (and per-group kernels over many rows) already at small
 * sizes. (The real 65535 limit needs 2^24 invocations: half a minute on the software adapter.)
 */
const TINY_GRID: KernelLimits = { ...DEFAULT_LIMITS, maxWorkgroupsPerDimension: 16 };

const t = (x: In) => (x.data instanceof Int32Array ? tf.tensor(x.data, x.shape, 'int32') : tf.tensor(x.data, x.shape));
const f = (shape: number[], lo?: number, hi?: number): In => ({ data: uniform(shape, lo, hi), shape });

test('unary: every UnaryFn, ranks 0-5, a launch spread over y', async (ctx) => {
  if (!gpu.device) return ctx.skip(gpu.unavailable);
  const fns: Array<[Attrs['unary'], (x: tf.Tensor) => tf.Tensor, number?, number?]> = [
    [{ fn: 'copy' }, (x) => x.clone()],
    [{ fn: 'neg' }, tf.neg],
    [{ fn: 'exp' }, tf.exp],
    [{ fn: 'log' }, tf.log, 0.01, 3],
    [{ fn: 'sqrt' }, tf.sqrt, 0, 3],
    [{ fn: 'rsqrt' }, tf.rsqrt, 0.05, 3],
    [{ fn: 'square' }, tf.square],
    [{ fn: 'abs' }, tf.abs],
    [{ fn: 'sign' }, tf.sign],
    [{ fn: 'asin' }, tf.asin, -0.999, 0.999],
    [{ fn: 'sigmoid' }, tf.sigmoid, -20, 20],
    [{ fn: 'swish' }, tfOps.swish, -10, 10],
    [{ fn: 'gelu' }, tfOps.gelu, -6, 6],
    [{ fn: 'quickGelu' }, tfOps.quickGelu, -6, 6],
    [{ fn: 'scale', s: -0.37 }, (x) => tfOps.scale(x, -0.37)],
    [{ fn: 'addScalar', s: 1.25 }, (x) => tfOps.addScalar(x, 1.25)],
    [{ fn: 'clamp', lo: -0.5, hi: 0.75 }, (x) => tf.clipByValue(x, -0.5, 0.75)],
    [{ fn: 'recip' }, tf.reciprocal, 0.1, 3],
    [{ fn: 'floor' }, tf.floor, -4, 4],
  ];
  const shapes = [[], [7], [3, 5], [2, 3, 4], [2, 1, 3, 5], [1, 2, 3, 2, 3]];
  for (const [i, [attrs, ref, lo, hi]] of fns.entries()) {
    for (const shape of [shapes[i % shapes.length], shapes[(i + 3) % shapes.length]]) {
      const x = f(shape, lo, hi);
      await check(`unary ${attrs.fn}`, 'unary', attrs, [x], ref(t(x)));
    }
  }
  const big = f([5001]); // 20 workgroups of 256 with at most 16 per dimension: a 16 x 2 grid, partly idle
  await check('unary (y grid)', 'unary', { fn: 'exp' }, [big], tf.exp(t(big)), { limits: TINY_GRID });
});

test('binary: every BinaryFn; same shape, scalar, trailing and leading vectors, general broadcasting', async (ctx) => {
  if (!gpu.device) return ctx.skip(gpu.unavailable);
  const fwd: Array<[Attrs['binary']['fn'], (a: tf.Tensor, b: tf.Tensor) => tf.Tensor]> = [
    ['add', tf.add],
    ['sub', tf.sub],
    ['mul', tf.mul],
    ['div', tf.div],
    ['maximum', tf.maximum],
    ['minimum', tf.minimum],
    ['greaterEqual', (a, b) => tf.cast(tf.greaterEqual(a, b), 'float32')],
    ['greater', (a, b) => tf.cast(tf.greater(a, b), 'float32')],
  ];
  const pairs: Array<[number[], number[]]> = [
    [[3, 5], [3, 5]], // same shape
    [[2, 3, 4], []], // scalar
    [[1], [4, 3]], // size-1 operand
    [[2, 3, 5], [5]], // trailing vector
    [[2, 3, 5], [3, 5]], // trailing block
    [[4, 1], [4, 6]], // per-row scalar (leading block)
    [[2, 1, 1, 3], [2, 4, 5, 3]], // [B,1,1,C]: general strides
    [[3, 1, 5], [1, 4, 1]], // both broadcast
    [[2, 1, 3, 1, 2], [1, 3, 1, 4, 2]], // rank 5
    [[7], [7]],
  ];
  let n = 0;
  for (const [fn, ref] of fwd) {
    for (const [sa, sb] of pairs) {
      if (n++ % 2 === 1 && fn !== 'add' && fn !== 'mul') continue; // every pair for add/mul, half of them for the rest
      const a = f(sa);
      // Ties for the comparisons: b copies a where shapes allow.
      const b = fn.startsWith('greater') && size(sa) === size(sb) ? { data: Float32Array.from(a.data as Float32Array, (v, i) => (i % 2 ? v : v + 1)), shape: sb } : f(sb, fn === 'div' ? 0.5 : -2, 2);
      await check(`binary ${fn}`, 'binary', { fn }, [a, b], ref(t(a), t(b)));
    }
  }
  // Gradient fns: a = x, b = dy, against tf.grad of the forward.
  const grads: Array<[Attrs['binary'], (x: tf.Tensor) => tf.Tensor, number, number]> = [
    [{ fn: 'swishGrad' }, tfOps.swish, -8, 8],
    [{ fn: 'geluGrad' }, tfOps.gelu, -5, 5],
    [{ fn: 'quickGeluGrad' }, tfOps.quickGelu, -5, 5],
    [{ fn: 'clampGrad', lo: -0.5, hi: 0.75 }, (x) => tf.clipByValue(x, -0.5, 0.75), -2, 2],
    [{ fn: 'clampWithGradGrad', lo: -0.5, hi: 0.75 }, (x) => tfClampWithGrad(x, -0.5, 0.75), -2, 2],
    [{ fn: 'asinGrad' }, tf.asin, -0.99, 0.99],
  ];
  for (const [attrs, fwdFn, lo, hi] of grads) {
    for (const [sx, sdy] of [[[3, 7], [3, 7]], [[2, 3, 4], [2, 3, 4]], [[5], [2, 5]]] as Array<[number[], number[]]>) {
      const x = f(sx, lo, hi);
      const dy = f(sdy);
      const expected = tf.tidy(() => tf.grad((v: tf.Tensor) => tf.sum(tf.mul(fwdFn(v), t(dy))))(t(x)));
      if (size(sx) !== size(sdy)) {
        // The binary fn broadcasts x to dy's shape: compare with the per-element gradient, not the summed one.
        const xs = { data: Float32Array.from({ length: size(sdy) }, (_, i) => (x.data as Float32Array)[i % size(sx)]), shape: sdy };
        const per = tf.tidy(() => tf.grad((v: tf.Tensor) => tf.sum(tf.mul(fwdFn(v), t(dy))))(t(xs)));
        expected.dispose();
        await check(`binary ${attrs.fn}`, 'binary', attrs, [x, dy], per);
      } else {
        await check(`binary ${attrs.fn}`, 'binary', attrs, [x, dy], expected);
      }
    }
  }
});

test('layout: reshape, transpose (any perm), slice, pad, upsample2x, concat (any axis, > 7 inputs); f32 and i32', async (ctx) => {
  if (!gpu.device) return ctx.skip(gpu.unavailable);
  const r = f([2, 3, 4]);
  const lowered = all.reshape!({ op: 'reshape', attrs: {}, inputs: [{ shape: [2, 3, 4], dtype: 'f32' }], output: { shape: [6, 4], dtype: 'f32' } }, DEFAULT_LIMITS);
  assert.deepEqual(lowered, { dispatches: [], alias: 0 });
  await check('reshape', 'reshape', {}, [r], tf.reshape(t(r), [6, 4]));

  const perms: Array<[number[], number[]]> = [
    [[5], [0]],
    [[3, 5], [1, 0]],
    [[2, 3, 4], [2, 0, 1]],
    [[2, 3, 4], [0, 2, 1]],
    [[2, 1, 4], [1, 0, 2]], // only a size-1 axis moves: an alias
    [[2, 3, 4, 5], [0, 2, 1, 3]], // attention's head split
    [[2, 3, 4, 5], [3, 1, 2, 0]],
    [[2, 3, 1, 2, 3], [4, 2, 0, 3, 1]],
  ];
  for (const [shape, perm] of perms) {
    const x = f(shape);
    await check('transpose', 'transpose', { perm }, [x], tf.transpose(t(x), perm));
  }
  const xi = { data: ints(60, 1000), shape: [3, 4, 5] };
  await check('transpose i32', 'transpose', { perm: [2, 1, 0] }, [xi], tf.transpose(t(xi), [2, 1, 0]));
  const tb = f([17, 19, 23]);
  await check('transpose (y grid)', 'transpose', { perm: [1, 2, 0] }, [tb], tf.transpose(t(tb), [1, 2, 0]), { limits: TINY_GRID });

  const slices: Array<[number[], number[], number[]]> = [
    [[9], [2], [5]],
    [[4, 6], [1, 0], [2, 6]], // whole rows: one contiguous copy
    [[4, 6], [1, 2], [3, 3]],
    [[2, 5, 7, 3], [1, 1, 2, 0], [1, 3, 4, 3]],
    [[3, 2, 4, 3, 5], [0, 1, 1, 0, 2], [3, 1, 2, 3, 3]],
  ];
  for (const [shape, begin, sz] of slices) {
    const x = f(shape);
    await check('slice', 'slice', { begin }, [x], tf.slice(t(x), begin, sz));
  }
  await check('slice i32', 'slice', { begin: [1, 0, 2] }, [xi], tf.slice(t(xi), [1, 0, 2], [2, 4, 3]));

  const pads: Array<[number[], [number, number][], number]> = [
    [[5], [[2, 3]], 0],
    [[2, 3, 4, 2], [[0, 0], [1, 2], [3, 0], [0, 0]], -1.5],
    [[3, 4], [[1, 1], [0, 2]], 7],
    [[1, 2, 3, 1, 2], [[0, 1], [0, 0], [2, 1], [1, 0], [0, 0]], 0.25],
  ];
  for (const [shape, paddings, value] of pads) {
    const x = f(shape);
    await check('pad', 'pad', { paddings, value }, [x], tf.pad(t(x), paddings, value));
  }
  await check('pad i32', 'pad', { paddings: [[0, 1], [2, 0], [1, 1]], value: -3 }, [xi], tf.pad(t(xi), [[0, 1], [2, 0], [1, 1]], -3));

  for (const shape of [[1, 3, 5, 2], [2, 4, 3, 7]]) {
    const x = f(shape);
    await check('upsample2x', 'upsample2x', {}, [x], tfOps.upsampleNearest2x(t(x)));
  }

  const concats: Array<[number[][], number]> = [
    [[[3], [5], [1]], 0],
    [[[2, 3], [2, 1], [2, 4]], 1],
    [[[2, 3, 4], [1, 3, 4]], 0],
    [[[2, 3, 4], [2, 2, 4], [2, 5, 4]], 1],
    [[[2, 3, 4], [2, 3, 1], [2, 3, 2], [2, 3, 3]], -1],
    // 10 inputs: two dispatches (7 + 3 inputs, 8 storage buffers each at most).
    [Array.from({ length: 10 }, (_, k) => [2, 1 + (k % 3), 3]), 1],
  ];
  for (const [shapes, axis] of concats) {
    const xs = shapes.map((s) => f(s));
    const outAxis = axis < 0 ? axis + shapes[0].length : axis;
    const expected = tf.concat(xs.map(t), outAxis);
    const key = xs.length > 7 ? 'concat (several dispatches)' : 'concat';
    await check(key, 'concat', { axis }, xs, expected);
  }
  const ci = [{ data: ints(6, 50), shape: [2, 3] }, { data: ints(4, 50), shape: [2, 2] }];
  await check('concat i32', 'concat', { axis: 1 }, ci, tf.concat(ci.map(t), 1));
});

test('reductions: sum and max over any axes (keepDims), argmin/argmax with ties, softmax and softmaxGrad', async (ctx) => {
  if (!gpu.device) return ctx.skip(gpu.unavailable);
  const cases: Array<[number[], number[], string]> = [
    [[7], [0], 'serial row'],
    [[3, 5], [1], 'serial row'],
    [[3, 5], [0], 'columns'],
    [[4, 100], [1], 'tree of 64'],
    [[5, 301], [1], 'tree of 256'],
    [[4, 5, 6], [0, 1, 2], 'tree of 64'],
    [[2, 3, 4], [1], 'columns'],
    [[2000, 3], [0], 'chunked columns'],
    [[2, 9001], [1], 'chunked rows'],
    [[300001], [0], 'chunked rows, tree of partials'],
    [[3, 1500, 2], [1], 'chunked columns'],
    [[2, 3, 4], [0, 2], 'general'],
    [[2, 3, 4, 5], [1, 2], 'columns'],
    [[2, 3, 1, 4, 5], [0, 3], 'general'],
    [[2, 1, 3], [1], 'alias'],
  ];
  for (const [shape, axes, path] of cases) {
    for (const keepDims of [false, true]) {
      const x = f(shape);
      await check(`sum (${path})`, 'sum', { axes, keepDims }, [x], tf.sum(t(x), axes, keepDims));
      await check(`max (${path})`, 'max', { axes, keepDims }, [x], tf.max(t(x), axes, keepDims));
    }
  }
  const rows = f([20, 70]); // 20 workgroups over a grid of at most 16 per dimension
  await check('sum (tree, y grid)', 'sum', { axes: [1], keepDims: false }, [rows], tf.sum(t(rows), 1), { limits: TINY_GRID });

  // Few distinct values: many ties, which must go to the first index.
  const tied = (shape: number[]): In => ({ data: Float32Array.from({ length: size(shape) }, () => Math.floor(rand() * 3)), shape });
  const argCases: Array<[number[], number, string]> = [
    [[9], 0, 'serial'],
    [[5, 7], 1, 'serial'],
    [[3, 300], 1, 'tree of 256'],
    [[4, 90], 1, 'tree of 64'],
    [[6, 4, 3], 1, 'columns'],
    [[100, 5], 0, 'columns'],
    [[2, 3, 4, 5, 2], 3, 'columns'],
  ];
  for (const [shape, axis, path] of argCases) {
    for (const x of [tied(shape), f(shape)]) {
      await check(`argmin (${path})`, 'argmin', { axis }, [x], tf.argMin(t(x), axis));
      await check(`argmax (${path})`, 'argmax', { axis }, [x], tf.argMax(t(x), axis));
    }
  }

  for (const [shape, path] of [[[7], 'serial'], [[3, 5], 'serial'], [[2, 3, 70], 'tree of 64'], [[4, 300], 'tree of 256']] as Array<[number[], string]>) {
    const x = f(shape, -40, 40); // large logits: only a max-subtracted softmax stays finite
    await check(`softmax (${path})`, 'softmax', {}, [x], tf.softmax(t(x)));
    const z = f(shape, -3, 3);
    const dy = f(shape);
    const y = tf.softmax(t(z));
    const yIn = { data: (await y.data()) as Float32Array, shape };
    const expected = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(tf.softmax(v), t(dy))))(t(z));
    await check(`softmaxGrad (${path})`, 'softmaxGrad', {}, [yIn, dy], expected);
    y.dispose();
  }
});

test('resize and resizeGrad: bilinear/bicubic, alignCorners, up/down/mixed, one axis, identity; gradient = tf.grad', async (ctx) => {
  if (!gpu.device) return ctx.skip(gpu.unavailable);
  const cases: Array<[number[], number, number]> = [
    [[1, 5, 7, 2], 9, 4], // H up, W down
    [[2, 8, 6, 3], 3, 13], // H down, W up
    [[1, 3, 4, 1], 20, 17], // strong upscale: many outputs clamp onto the border pixels
    [[1, 6, 5, 2], 6, 9], // W only
    [[1, 7, 3, 2], 2, 3], // H only
    [[1, 4, 5, 1], 1, 1], // a single output pixel
  ];
  for (const mode of ['bilinear', 'bicubic'] as const) {
    for (const alignCorners of [false, true]) {
      for (const [shape, oh, ow] of cases) {
        const attrs = { mode, alignCorners };
        const x = f(shape);
        const path = `${mode}${alignCorners ? ' align' : ''}`;
        await check(`resize ${path}`, 'resize', attrs, [x], tfResize(t(x) as tf.Tensor4D, oh, ow, attrs));
        const dy = f([shape[0], oh, ow, shape[3]]);
        const expected = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(tfResize(v as tf.Tensor4D, oh, ow, attrs), t(dy))))(t(x));
        await check(`resizeGrad ${path}`, 'resizeGrad', attrs, [dy], expected);
      }
    }
  }
  const same = all.resize!({ op: 'resize', attrs: { mode: 'bicubic', alignCorners: false }, inputs: [{ shape: [1, 4, 4, 2], dtype: 'f32' }], output: { shape: [1, 4, 4, 2], dtype: 'f32' } }, DEFAULT_LIMITS);
  assert.deepEqual(same, { dispatches: [], alias: 0 });
});

test('gatherRows, oneHot, gatherRowsGrad (direct loop and radix-sorted row sums, 1-3 passes)', async (ctx) => {
  if (!gpu.device) return ctx.skip(gpu.unavailable);
  for (const [n, d, m] of [[10, 3, 17], [5, 1, 9], [40, 7, 300]]) {
    const table = f([n, d]);
    const idx = { data: ints(m, n), shape: [m] };
    await check('gatherRows', 'gatherRows', {}, [table, idx], tf.gather(t(table), t(idx)));
    await check('oneHot', 'oneHot', { depth: n }, [idx], tf.cast(tf.oneHot(t(idx) as tf.Tensor1D, n), 'float32'));
  }
  const gt = f([30, 4]);
  const gi = { data: ints(1500, 30), shape: [1500] };
  await check('gatherRows (y grid)', 'gatherRows', {}, [gt, gi], tf.gather(t(gt), t(gi)), { limits: TINY_GRID });

  // [M, N, D, share of the indices pointing at row 0 (one long run)]
  const grads: Array<[number, number, number, number, string]> = [
    [17, 10, 3, 0, 'direct'],
    [DIRECT_MAX, 300, 2, 0.5, 'direct'],
    [DIRECT_MAX + 1, 200, 3, 0, 'sorted, 1 pass'],
    [3000, 255, 3, 0, 'sorted, 1 pass'],
    [5000, 1000, 2, 0.3, 'sorted, 2 passes'],
    [600, 70000, 1, 0.1, 'sorted, 3 passes'],
  ];
  for (const [m, n, d, share, path] of grads) {
    const dy = f([m, d]);
    const idx = { data: Int32Array.from(ints(m, n), (v) => (rand() < share ? 0 : v)), shape: [m] };
    let expected: tf.Tensor;
    if (n <= 300) {
      const table = tf.zeros([n, d]);
      expected = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(tfGatherRows(v as tf.Tensor2D, t(idx) as tf.Tensor1D), t(dy))))(table);
      table.dispose();
    } else {
      expected = rowSums(dy, idx, n);
    }
    await check(`gatherRowsGrad (${path})`, 'gatherRowsGrad', {}, [dy, idx], expected);
  }
  // Blocks and the scan spread over y; the same result.
  const dy = f([5000, 2]);
  const idx = { data: ints(5000, 700), shape: [5000] };
  await check('gatherRowsGrad (sorted, y grid)', 'gatherRowsGrad', {}, [dy, idx], rowSums(dy, idx, 700), { limits: TINY_GRID });
  // Deterministic: no atomics on floats, a fixed summation order (increasing m per row).
  const once = await runNode('gatherRowsGrad', {}, [dy, idx], [700, 2]);
  const again = await runNode('gatherRowsGrad', {}, [dy, idx], [700, 2]);
  assert.deepEqual(new Uint32Array(again.buffer), new Uint32Array(once.buffer));
});

/**
 * The row sums in float64 on the host: tfjs cpu's segment sum makes a pass over all indices per row, too slow
 * for a thousand rows.
 */
function rowSums(dy: In, idx: In, n: number): tf.Tensor {
  const d = dy.shape[1];
  const sums = new Float64Array(n * d);
  idx.data.forEach((r, k) => {
    for (let c = 0; c < d; c++) sums[r * d + c] += dy.data[k * d + c];
  });
  return tf.tensor(Float32Array.from(sums), [n, d]);
}
