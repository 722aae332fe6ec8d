// floor, toInt and randomNormal on every layer: tfOps (the reference; randomNormal against an independent BigInt
// recomputation of random.ts's formula, and its statistics), tracing + interpret + autodiff on tfjs cpu, the WGSL
// lowerings on the software WebGPU adapter (one node each, and a small graph through the compiled engine: planner,
// fusion, i32 buffers) against tfjs cpu.
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { CompiledEngine } from '../src/engine/compiled.ts';
import { gradient } from '../src/engine/graph/autodiff.ts';
import { interpret } from '../src/engine/graph/interpret.ts';
import { GraphBuilder } from '../src/engine/graph/trace.ts';
import type { Ops } from '../src/engine/ops.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { DEFAULT_LIMITS, runLowered, type KernelLimits } from '../src/engine/wgsl/kernel.ts';
import { lowerings } from '../src/engine/wgsl/lowerings.ts';
import { maxAbsDiff, suiteDevice } from './helpers.ts';

const gpu = suiteDevice();
before(() => tf.setBackend('cpu'));

const seedOf = (a: number, b: number) => tf.tensor1d([a, b], 'int32');

// Values around the integers, halves, negatives, zeros, and integers at the edge of float32's exact range.
const FLOOR_IN = Float32Array.of(-3.5, -2.5, -2, -1.0001, -1, -0.5, -1e-7, -0, 0, 1e-7, 0.5, 0.9999999, 1, 1.5, 2.5, 3.999, 8388607.5, -8388607.5, 16777216, -123456.75);
// Integer values (exact) and fractions that truncate toward zero, up to the int32 range's float32 edges.
const INT_IN = Float32Array.of(0, -0, 1, -1, 7, -7, 0.99, -0.99, 2.5, -2.5, 1e6 + 0.5, -1e6 - 0.5, 16777216, -16777216, 2147483520, -2147483648);

/** The generator written again without Math.imul: u32 products in BigInt, floats in float64. */
function referenceNormal(seed0: number, seed1: number, i: number): number {
  const M = 0xffffffffn;
  const u32 = (x: number | bigint) => BigInt.asUintN(32, BigInt(x));
  const hash = (v: bigint) => {
    let x = v & M;
    x ^= x >> 16n;
    x = (x * 0x7feb352dn) & M;
    x ^= x >> 15n;
    x = (x * 0x846ca68bn) & M;
    x ^= x >> 16n;
    return x;
  };
  const key = hash(u32(seed0) ^ hash(u32(seed1) ^ 0x9e3779b9n));
  const bits1 = hash(key ^ hash(u32(2 * i)));
  const bits2 = hash(key ^ hash(u32(2 * i + 1)));
  const u1 = (Number(bits1 >> 8n) + 1) / 16777216;
  const u2 = Number(bits2 >> 8n) / 16777216;
  return Math.fround(Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2));
}

describe('tfOps', () => {
  test('floor and toInt: exact; floor has a zero gradient (tf.grad)', async () => {
    const x = tf.tensor1d(FLOOR_IN);
    assert.deepEqual(Array.from(await tfOps.floor(x).data()), Array.from(FLOOR_IN, (v) => Math.fround(Math.floor(v))));
    const ints = tfOps.toInt(tf.tensor1d(INT_IN));
    assert.equal(ints.dtype, 'int32');
    assert.deepEqual(Array.from(await ints.data()), Array.from(INT_IN, (v) => Math.trunc(v) | 0));
    const g = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tfOps.floor(t), tf.scalar(3))))(x);
    assert.deepEqual(Array.from(await g.data()), new Array(FLOOR_IN.length).fill(0));
  });

  test('randomNormal: deterministic per seed, the shape asked, the formula, standard normal statistics', async () => {
    const a = await tfOps.randomNormal(seedOf(7, -3), [3, 5, 2]).data();
    const b = tfOps.randomNormal(seedOf(7, -3), [3, 5, 2]);
    assert.deepEqual(b.shape, [3, 5, 2]);
    assert.equal(b.dtype, 'float32');
    assert.deepEqual(Array.from(await b.data()), Array.from(a), 'same seed, same numbers');
    // Element i does not depend on the shape (a prefix of a longer draw).
    assert.deepEqual(Array.from(await tfOps.randomNormal(seedOf(7, -3), [7]).data()), Array.from(a.slice(0, 7)));
    for (const [s0, s1] of [[8, -3], [7, -2], [-3, 7]]) {
      const other = await tfOps.randomNormal(seedOf(s0, s1), [30]).data();
      const same = other.filter((v, i) => v === a[i]).length;
      assert.ok(same === 0, `seed [${s0}, ${s1}] shares ${same} of 30 values with [7, -3]`);
    }
    // The first values and a few far ones against the independent recomputation (bit for bit: both round the float64
    // result once).
    for (const [s0, s1] of [[0, 0], [7, -3], [-2147483648, 2147483647]]) {
      const n = 70000;
      const got = await tfOps.randomNormal(seedOf(s0, s1), [n]).data();
      for (const i of [0, 1, 2, 65535, 65536, n - 1]) assert.equal(got[i], referenceNormal(s0, s1, i), `seed [${s0}, ${s1}] element ${i}`);
    }
    console.log(`# randomNormal seed [0, 0] first values: ${Array.from(await tfOps.randomNormal(seedOf(0, 0), [4]).data(), (v) => v.toFixed(6)).join(', ')}`);
    // 200k samples: mean and standard deviation (standard errors 0.0022 and 0.0016).
    const z = await tfOps.randomNormal(seedOf(20240601, 1), [400, 500]).data();
    let s = 0;
    let s2 = 0;
    let above2 = 0;
    for (const v of z) {
      s += v;
      s2 += v * v;
      if (Math.abs(v) > 2) above2++;
    }
    const mean = s / z.length;
    const std = Math.sqrt(s2 / z.length - mean * mean);
    const tail = above2 / z.length; // P(|z| > 2) = 0.0455
    console.log(`# randomNormal 200k samples: mean ${mean.toExponential(2)}, std ${std.toFixed(5)}, P(|z| > 2) ${tail.toFixed(4)}`);
    assert.ok(Math.abs(mean) < 0.01, `mean ${mean}`);
    assert.ok(Math.abs(std - 1) < 0.01, `std ${std}`);
    assert.ok(Math.abs(tail - 0.0455) < 0.003, `P(|z| > 2) ${tail}`);
    assert.throws(() => tfOps.randomNormal(tf.tensor1d([1, 2]), [3]), /seed must be int32 \[2\]/);
  });
});

// Floor on a gradient path (x * floor(x): the gradient is floor(x)), floor alone (a zero gradient), index arithmetic
// (toInt of floor(x * 3 + 8) picking rows) and noise added off the gradient path.
function mixed<T>(o: Ops<T>, x: T): T {
  const fl = o.floor(x);
  const table = o.constant(Float32Array.from({ length: 17 * 2 }, (_, i) => i * 0.25 - 3), [17, 2]);
  const rows = o.gatherRows(table, o.toInt(o.reshape(o.floor(o.addScalar(o.scale(x, 3), 8)), [-1])));
  const noise = o.randomNormal(o.constantInt(Int32Array.of(5, 9), [2]), [6, 1]);
  return o.concat([o.mul(x, fl), o.scale(o.floor(o.exp(x)), 2), o.reshape(rows, [6, 2]), o.add(fl, noise)], 1);
}

const X = Float32Array.of(-2.2, -1, -0.5, 0, 0.3, 2.7);

describe('graph: trace, interpret, autodiff on tfjs cpu', () => {
  test('interpret(tfOps, trace(f)) equals f on tfOps; the gradient of sum(x * floor(x)) is floor(x)', async () => {
    const b = new GraphBuilder();
    const x = b.input('x', [6, 1]);
    const y = mixed(b, x);
    const kinds = new Set(b.graph.nodes.map((n) => (n.op === 'unary' ? `unary ${(n.attrs as { fn: string }).fn}` : n.op)));
    for (const k of ['unary floor', 'cast', 'randomNormal']) assert.ok(kinds.has(k), `no ${k} node`);
    const xT = tf.tensor(X, [6, 1]);
    const floorLoss = b.sum(b.mul(x, b.floor(x)));
    b.output('y', y);
    b.output('grad', gradient(b, floorLoss, x));
    b.output('zeroGrad', gradient(b, b.sum(b.floor(x)), x)); // floor only: zeros, not an error
    b.output('mixedGrad', gradient(b, b.sum(y), x));
    const got = interpret(tfOps, b.graph, { x: xT });
    assert.deepEqual(Array.from(await got.y.data()), Array.from(await mixed(tfOps, xT).data()));
    const floorX = Array.from(X, Math.floor);
    assert.deepEqual(Array.from(await got.grad.data()), floorX);
    assert.deepEqual(Array.from(await got.zeroGrad.data()), new Array(6).fill(0));
    // The whole function: only x * floor(x) passes gradient (the rows, exp's floor and the noise do not).
    const ref = tf.grad((t: tf.Tensor) => tf.sum(mixed(tfOps, t)))(xT);
    assert.deepEqual(Array.from(await got.mixedGrad.data()), Array.from(await ref.data()));
    assert.deepEqual(Array.from(await ref.data()), floorX);
  });

  test('tracing checks: randomNormal wants an int32 [2] seed, toInt and floor a float32 tensor', () => {
    const b = new GraphBuilder();
    const f = b.input('f', [2]);
    const i = b.constantInt(Int32Array.of(1, 2, 3), [3]);
    assert.throws(() => b.randomNormal(f, [4]), /randomNormal: the seed must be int32 \[2\], got f32\[2\]/);
    assert.throws(() => b.randomNormal(i, [4]), /randomNormal: the seed must be int32 \[2\], got i32\[3\]/);
    assert.throws(() => b.randomNormal(b.toInt(f), [4, -1]), /randomNormal: bad shape/);
    assert.throws(() => b.toInt(i), /toInt: needs a float32 tensor, got i32/);
    assert.throws(() => b.floor(i), /floor: needs a float32 tensor/);
    assert.deepEqual(b.randomNormal(b.toInt(f), [2, 3]).shape, [2, 3]);
  });
});

/** Limits with a tiny grid dimension: a launch spread over x and y at a testable size (as wgsl-kernels-basic). */
const TINY_GRID: KernelLimits = { ...DEFAULT_LIMITS, maxWorkgroupsPerDimension: 16 };

describe('WGSL on the software adapter vs tfjs cpu', () => {
  async function runNode(op: 'unary' | 'cast' | 'randomNormal', attrs: object, input: Float32Array | Int32Array, inShape: number[], outShape: number[], limits = DEFAULT_LIMITS) {
    const inputs = [{ data: input, shape: inShape }];
    const output = { shape: outShape, dtype: op === 'cast' ? ('i32' as const) : ('f32' as const) };
    const node = { op, attrs, inputs: [{ shape: inShape, dtype: input instanceof Int32Array ? ('i32' as const) : ('f32' as const) }], output };
    const lowered = (lowerings[op] as (n: typeof node, l: KernelLimits) => Parameters<typeof runLowered>[1])(node, limits);
    return { got: await runLowered(gpu.device!, lowered, inputs, output), dispatch: lowered.dispatches[0] };
  }

  test('floor and cast: exact', async (ctx) => {
    if (!gpu.device) return ctx.skip(gpu.unavailable);
    const { got: fl } = await runNode('unary', { fn: 'floor' }, FLOOR_IN, [4, 5], [4, 5]);
    assert.deepEqual(Array.from(fl), Array.from(await tf.floor(tf.tensor1d(FLOOR_IN)).data()));
    const { got: ints } = await runNode('cast', { to: 'i32' }, INT_IN, [INT_IN.length], [INT_IN.length]);
    assert.ok(ints instanceof Int32Array);
    assert.deepEqual(Array.from(ints), Array.from(await tf.cast(tf.tensor1d(INT_IN), 'int32').data()));
    // A launch over a y grid: 5001 values -> 20 workgroups, at most 16 per dimension.
    const many = Float32Array.from({ length: 5001 }, (_, i) => (i - 2500) * 0.37);
    const { got: big, dispatch } = await runNode('cast', { to: 'i32' }, many, [5001], [5001], TINY_GRID);
    assert.deepEqual(dispatch.workgroups, [16, 2, 1]);
    assert.deepEqual(Array.from(big), Array.from(await tf.cast(tf.tensor1d(many), 'int32').data()));
  });

  test('randomNormal: equals tfOps within 2e-5 (100k elements; a y grid)', async (ctx) => {
    if (!gpu.device) return ctx.skip(gpu.unavailable);
    const cases: Array<[seed: [number, number], shape: number[], limits: KernelLimits]> = [
      [[12345, -678], [4, 160, 160, 1], DEFAULT_LIMITS], // 102400 elements: a 400-workgroup x grid
      [[-1, 2147483647], [5001], TINY_GRID], // 20 workgroups on a 16 x 2 grid
    ];
    for (const [seed, shape, limits] of cases) {
      const { got, dispatch } = await runNode('randomNormal', {}, Int32Array.from(seed), [2], shape, limits);
      const want = await tfOps.randomNormal(seedOf(...seed), shape).data();
      const d = maxAbsDiff(got, want);
      let where = 0;
      for (let i = 0; i < got.length; i++) if (Math.abs(got[i] - want[i]) === d) where = i;
      console.log(`# randomNormal WGSL vs tfOps, seed [${seed}], [${shape}] (grid ${dispatch.workgroups}): max abs diff ${d.toExponential(2)} (at z = ${want[where].toFixed(4)})`);
      assert.ok(d < 2e-5, `max abs diff ${d} at element ${where}: ${got[where]} vs ${want[where]}`);
    }
  });

  test('the compiled engine: a graph with floor (fused), toInt, randomNormal and its gradient', async (ctx) => {
    if (!gpu.device) return ctx.skip(gpu.unavailable);
    const e = new CompiledEngine(gpu.device);
    const o = e.ops;
    const xS = o.constant(X, [6, 1]);
    const y = mixed(o, xS);
    const grad = e.executor.valueAndGrad((t) => o.sum(mixed(o, t)), xS).grad;
    const ints = o.toInt(o.floor(o.scale(xS, 10)));
    const [gy, gg, gi] = await e.evaluate([y, grad, ints]);
    assert.ok(gi instanceof Int32Array);
    const xT = tf.tensor(X, [6, 1]);
    const dy = maxAbsDiff(gy, await mixed(tfOps, xT).data());
    console.log(`# compiled mixed graph vs tfOps: max abs diff ${dy.toExponential(2)} (noise inside)`);
    assert.ok(dy < 2e-5, `y max abs diff ${dy}`);
    assert.deepEqual(Array.from(gg), Array.from(X, Math.floor));
    assert.deepEqual(Array.from(gi), Array.from(await tf.cast(tf.floor(tf.mul(xT, 10)), 'int32').data()));
    e.destroy();
  });
});
