// The heavy WGSL lowerings (matmul, conv2d, conv2dGradInput, groupNorm/layerNorm and their gradients) run one node at a
// time on a raw Dawn device (the software adapter here: Dawn OpenGL ES on llvmpipe) and compared with the tfjs cpu
// backend: tf.matMul, tf.conv2d, tf.grad of conv2d w.r.t. x, and tfOps.groupNorm/layerNorm (src/engine/tfjs-ops.ts)
// with their tf.grad. Shapes are small and odd (not multiples of the 64x64x16 tiles), and chosen so that each kernel
// variant (tiled / skinny / simple GEMM, 1x1, patch and phase-split conv gradients, fused / two-pass norms) runs at least
// once; the dispatch labels are checked to prove it.
import assert from 'node:assert/strict';
import { before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { DEFAULT_LIMITS, runLowered, type KernelNode, type Lowered, type Lowerings } from '../src/engine/wgsl/kernel.ts';
import type { OpName } from '../src/engine/graph/ir.ts';
import { lowerings as matmulLowerings } from '../src/engine/wgsl/kernels/matmul.ts';
import { lowerings as convLowerings } from '../src/engine/wgsl/kernels/conv.ts';
import { lowerings as normLowerings } from '../src/engine/wgsl/kernels/norm.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { maxAbsDiff, suiteDevice } from './helpers.ts';

const lowerings: Lowerings = { ...matmulLowerings, ...convLowerings, ...normLowerings };

const gpu = suiteDevice();
before(() => tf.setBackend('cpu'));

/** Deterministic normal-ish values (tf.randomNormal with a seed). */
let seed = 1;
const rand = (shape: number[], mean = 0): tf.Tensor => tf.randomNormal(shape, mean, 1, 'float32', seed++);

/**
 * Lowers `op` for these input tensors and expected output, runs it, and checks max|got - want| <= rel * max(1, max|want|).
 * Returns the lowering (for label checks) and the max abs diff.
 */
async function check<K extends OpName>(
  t: TestContext,
  op: K,
  attrs: KernelNode<K>['attrs'],
  inputs: tf.Tensor[],
  want: tf.Tensor,
  rel = 1e-5,
): Promise<{ lowered: Lowered; diff: number } | undefined> {
  if (!gpu.device) {
    t.skip(gpu.unavailable);
    return undefined;
  }
  const node = {
    op,
    attrs,
    inputs: inputs.map((x) => ({ shape: x.shape, dtype: 'f32' as const })),
    output: { shape: want.shape, dtype: 'f32' as const },
  } as KernelNode<K>;
  const lowered = (lowerings[op] as (n: KernelNode<K>, l: typeof DEFAULT_LIMITS) => Lowered)(node, DEFAULT_LIMITS);
  const got = await runLowered(
    gpu.device!,
    lowered,
    inputs.map((x) => ({ data: x.dataSync() as Float32Array, shape: x.shape })),
    node.output,
  );
  const ref = want.dataSync();
  const scale = Math.max(1, tf.max(tf.abs(want)).dataSync()[0]);
  const diff = maxAbsDiff(got, ref);
  const label = lowered.dispatches.map((d) => d.label).join(' + ');
  t.diagnostic(`${label}: max abs diff ${diff.toExponential(2)} (max |ref| ${scale.toFixed(2)})`);
  assert.ok(diff <= rel * scale, `${label}: max abs diff ${diff} > ${rel} * ${scale}`);
  return { lowered, diff };
}

const labels = (r: { lowered: Lowered } | undefined) => r?.lowered.dispatches.map((d) => d.label ?? '').join(' + ') ?? '';
/** Asserts the lowering used a kernel variant (skipped runs pass). */
const used = (r: { lowered: Lowered } | undefined, what: RegExp) => r && assert.match(labels(r), what);

describe('matmul', () => {
  const cases: Array<[number[], number[], boolean, boolean, RegExp]> = [
    [[70, 33], [33, 67], false, false, /tiled/],
    [[130, 50], [50, 129], false, false, /tiled/],
    [[2, 33, 70], [2, 80, 33], true, true, /tiled/],
    [[2, 33, 70], [2, 33, 80], true, false, /tiled/],
    [[2, 70, 33], [80, 33], false, true, /tiled/],
    [[3, 9, 17], [17, 5], false, false, /simple/],
    [[1, 100], [100, 130], false, false, /simple/],
    [[3, 300], [300, 130], false, false, /skinny/],
    [[2, 2, 200], [2, 150, 200], false, true, /skinny 2x2x150x200/],
    [[2, 70, 1], [2, 70, 600], true, false, /skinny/],
    [[300, 40], [40, 3], false, false, /simple 1x300x3x40/],
    [[65, 3], [65, 7], true, false, /simple/],
  ];
  for (const [as, bs, ta, tb, variant] of cases) {
    test(`[${as}]${ta ? 'ᵀ' : ''} x [${bs}]${tb ? 'ᵀ' : ''}`, async (t) => {
      const a = rand(as);
      const b = rand(bs);
      used(await check(t, 'matmul', { transposeA: ta, transposeB: tb }, [a, b], tf.matMul(a, b, ta, tb)), variant);
    });
  }
  test('batch broadcasting [1,3,..] x [2,1,..] (numpy semantics)', async (t) => {
    // tfjs 4.22's cpu matMul gets this case wrong (it indexes batches modulo each operand's batch count), so the
    // reference broadcasts explicitly.
    const a = rand([1, 3, 70, 40]);
    const b = rand([2, 1, 40, 80]);
    const want = tf.matMul(tf.broadcastTo(a, [2, 3, 70, 40]), tf.broadcastTo(b, [2, 3, 40, 80]));
    used(await check(t, 'matmul', { transposeA: false, transposeB: false }, [a, b], want), /tiled 6x70x80x40/);
  });
});

type Pad4 = [number, number, number, number];
const explicit = (p: Pad4): [[0, 0], [number, number], [number, number], [0, 0]] => [
  [0, 0],
  [p[0], p[1]],
  [p[2], p[3]],
  [0, 0],
];
const conv = (x: tf.Tensor, w: tf.Tensor, stride: number, pad: Pad4) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, stride, explicit(pad));

describe('conv2d', () => {
  const cases: Array<{ x: number[]; w: number[]; stride: number; pad: Pad4; bias: boolean; variant: RegExp }> = [
    { x: [2, 9, 11, 5], w: [3, 3, 5, 7], stride: 1, pad: [1, 1, 1, 1], bias: true, variant: /simple/ },
    { x: [2, 12, 12, 9], w: [3, 3, 9, 19], stride: 1, pad: [1, 1, 1, 1], bias: false, variant: /tiled/ },
    { x: [2, 10, 9, 6], w: [3, 3, 6, 5], stride: 2, pad: [0, 1, 0, 1], bias: true, variant: /simple/ },
    { x: [2, 6, 7, 13], w: [1, 1, 13, 17], stride: 1, pad: [0, 0, 0, 0], bias: true, variant: /simple/ },
    { x: [2, 16, 16, 13], w: [1, 1, 13, 70], stride: 1, pad: [0, 0, 0, 0], bias: false, variant: /tiled/ },
    { x: [2, 32, 32, 3], w: [4, 4, 3, 70], stride: 4, pad: [0, 0, 0, 0], bias: true, variant: /tiled/ },
  ];
  for (const c of cases) {
    test(`${c.w[0]}x${c.w[1]} s${c.stride} pad [${c.pad}] [${c.x}] -> ${c.w[3]}${c.bias ? ' + bias' : ''}`, async (t) => {
      const x = rand(c.x);
      const w = rand(c.w);
      const b = rand([c.w[3]]);
      const want = c.bias ? tf.add(conv(x, w, c.stride, c.pad), b) : conv(x, w, c.stride, c.pad);
      used(await check(t, 'conv2d', { stride: c.stride, pad: c.pad }, c.bias ? [x, w, b] : [x, w], want), c.variant);
    });
  }
});

describe('conv2dGradInput', () => {
  const cases: Array<{ x: number[]; w: number[]; stride: number; pad: Pad4; variant: RegExp }> = [
    { x: [2, 9, 11, 5], w: [3, 3, 5, 7], stride: 1, pad: [1, 1, 1, 1], variant: /^[^+]*$/ },
    { x: [2, 12, 10, 70], w: [3, 3, 70, 9], stride: 1, pad: [1, 1, 1, 1], variant: /tiled/ },
    // taming's Downsample: four phases with 2x2, 2x1, 1x2 and 1x1 taps.
    { x: [2, 10, 9, 6], w: [3, 3, 6, 5], stride: 2, pad: [0, 1, 0, 1], variant: /phase 1,1/ },
    { x: [2, 17, 16, 67], w: [3, 3, 67, 11], stride: 2, pad: [0, 1, 0, 1], variant: /phase 0,0 \[tiled/ },
    { x: [2, 6, 7, 13], w: [1, 1, 13, 17], stride: 1, pad: [0, 0, 0, 0], variant: /^[^+]*$/ },
    // ViT patches (every dx pixel covered: one GEMM), and with a border no patch reaches (zeroed first).
    { x: [2, 32, 32, 3], w: [4, 4, 3, 70], stride: 4, pad: [0, 0, 0, 0], variant: /^[^+]*patches \[tiled/ },
    { x: [1, 18, 17, 3], w: [4, 4, 3, 5], stride: 4, pad: [0, 0, 0, 0], variant: /zero \+ .*patches/ },
    // kernel < stride: phases without taps.
    { x: [2, 7, 8, 5], w: [1, 1, 5, 6], stride: 2, pad: [0, 0, 0, 0], variant: /zero \+ .*patches/ },
    { x: [1, 9, 9, 4], w: [4, 4, 4, 3], stride: 2, pad: [1, 2, 2, 1], variant: /phase 1,1/ },
  ];
  for (const c of cases) {
    test(`${c.w[0]}x${c.w[1]} s${c.stride} pad [${c.pad}] dx [${c.x}] (Cout ${c.w[3]})`, async (t) => {
      const x = rand(c.x);
      const w = rand(c.w);
      const y = conv(x, w, c.stride, c.pad);
      const dy = rand(y.shape);
      const want = tf.grad((xx: tf.Tensor) => tf.sum(tf.mul(conv(xx, w, c.stride, c.pad), dy)))(x);
      used(await check(t, 'conv2dGradInput', { stride: c.stride, pad: c.pad }, [dy, w], want), c.variant);
    });
  }
});

describe('groupNorm / layerNorm', () => {
  const eps = 1e-6;
  const groupNorm = (x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, groups: number) => tfOps.groupNorm(x, groups, gamma, beta, eps);
  for (const [shape, groups, variant] of [
    [[2, 5, 7, 12], 3, /fused/],
    [[2, 24, 24, 16], 2, /stats 2 chunks \+ .*combine \+ .*apply/],
    [[1, 60, 61, 8], 2, /stats 4 chunks/],
  ] as Array<[number[], number, RegExp]>) {
    const C = shape[3];
    test(`groupNorm [${shape}] ${groups} groups`, async (t) => {
      const x = rand(shape, 0.5);
      const gamma = rand([C], 1);
      const beta = rand([C]);
      used(await check(t, 'groupNorm', { groups, eps }, [x, gamma, beta], groupNorm(x, gamma, beta, groups)), variant);
    });
    test(`groupNormGrad [${shape}] ${groups} groups`, async (t) => {
      const x = rand(shape, 0.5);
      const gamma = rand([C], 1);
      const beta = rand([C]);
      const dy = rand(shape);
      const want = tf.grad((xx: tf.Tensor) => tf.sum(tf.mul(groupNorm(xx, gamma, beta, groups), dy)))(x);
      used(await check(t, 'groupNormGrad', { groups, eps }, [x, gamma, dy], want), variant);
    });
  }
  for (const [shape, variant] of [
    [[3, 7, 33], /fused/],
    [[2, 4100], /stats 2 chunks \+ .*combine \+ .*apply/],
  ] as Array<[number[], RegExp]>) {
    const C = shape[shape.length - 1];
    test(`layerNorm [${shape}]`, async (t) => {
      const x = rand(shape, 0.5);
      const gamma = rand([C], 1);
      const beta = rand([C]);
      used(await check(t, 'layerNorm', { eps: 1e-5 }, [x, gamma, beta], tfOps.layerNorm(x, gamma, beta, 1e-5)), variant);
    });
    test(`layerNormGrad [${shape}]`, async (t) => {
      const x = rand(shape, 0.5);
      const gamma = rand([C], 1);
      const beta = rand([C]);
      const dy = rand(shape);
      const want = tf.grad((xx: tf.Tensor) => tf.sum(tf.mul(tfOps.layerNorm(xx, gamma, beta, 1e-5), dy)))(x);
      used(await check(t, 'layerNormGrad', { eps: 1e-5 }, [x, gamma, dy], want), variant);
    });
  }
});
