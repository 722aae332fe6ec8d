// Shared by the graph-*.test.ts suites: checking a traced model function against the same function on tfOps.
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { gradient } from '../src/engine/graph/autodiff.ts';
import { interpret } from '../src/engine/graph/interpret.ts';
import type { GraphBuilder, Sym } from '../src/engine/graph/trace.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { Rng } from '../src/util/rng.ts';
import { maxAbsDiff } from './helpers.ts';

export function normal(seed: number, n: number, scale = 1): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => r.normal() * scale);
}

export const maxAbs = (a: ArrayLike<number>) => Array.from(a).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** A model function on both executors: `tf` and `graph` close over the weights loaded for each. */
export interface Pair {
  tf: (x: tf.Tensor) => tf.Tensor;
  graph: (b: GraphBuilder, x: Sym) => Sym;
}

export interface Checked {
  nodes: { forward: number; backward: number };
  diffs: { y: number; loss: number; grad: number };
  y: Float32Array;
  grad: Float32Array;
}

/**
 * Traces y = f(x) and loss = sum(y * W) (W fixed random), appends d loss / dx, interprets the graph on tfOps and
 * compares y, loss and the gradient with f on tfOps and tf.valueAndGrad. Tolerances are relative to the largest
 * reference magnitude (the two gradients are different formulas of the same float32 math).
 */
export async function checkTraced(
  name: string,
  b: GraphBuilder,
  pair: Pair,
  xData: Float32Array,
  xShape: number[],
  rtol: { y: number; grad: number },
  weights?: Float32Array,
): Promise<Checked> {
  const x = b.input('x', xShape);
  const start = b.graph.nodes.length;
  const y = pair.graph(b, x);
  const wData = weights ?? normal(12345, y.shape.reduce((p, q) => p * q, 1));
  const loss = b.sum(b.mul(y, b.constant(wData, y.shape)));
  const forwardEnd = b.graph.nodes.length;
  const grad = gradient(b, loss, x);
  b.output('y', y);
  b.output('loss', loss);
  b.output('grad', grad);
  const backward = b.graph.nodes.length - forwardEnd;

  const xT = tf.tensor(xData, xShape);
  const ref = tf.tidy(() => ({
    y: pair.tf(xT),
    ...tf.valueAndGrad((xx: tf.Tensor) => tf.sum(tf.mul(pair.tf(xx), tf.tensor(wData, y.shape))))(xT),
  }));
  const got = tf.tidy(() => interpret(tfOps, b.graph, { x: xT }));
  const [ry, rl, rg, gy, gl, gg] = await Promise.all([ref.y, ref.value, ref.grad, got.y, got.loss, got.grad].map((t) => t.data() as Promise<Float32Array>));
  assert.deepEqual(got.y.shape, ref.y.shape, `${name}: y shape`);
  assert.deepEqual(got.grad.shape, xShape, `${name}: grad shape`);
  const diffs = { y: maxAbsDiff(gy, ry), loss: Math.abs(gl[0] - rl[0]), grad: maxAbsDiff(gg, rg) };
  tf.dispose([xT, ref.y, ref.value, ref.grad, got.y, got.loss, got.grad]);
  assert.ok(diffs.y <= rtol.y * Math.max(1, maxAbs(ry)), `${name}: forward max abs diff ${diffs.y} (max |y| ${maxAbs(ry)})`);
  assert.ok(diffs.loss <= rtol.y * Math.max(1, Math.abs(rl[0])) * 10, `${name}: loss diff ${diffs.loss}`);
  assert.ok(diffs.grad <= rtol.grad * Math.max(1e-3, maxAbs(rg)), `${name}: gradient max abs diff ${diffs.grad} (max |grad| ${maxAbs(rg)})`);
  console.log(`# ${name}: ${forwardEnd - start} forward nodes (+${start} weights/inputs), ${backward} backward; max abs diff y ${diffs.y.toExponential(2)}, loss ${diffs.loss.toExponential(2)}, grad ${diffs.grad.toExponential(2)} (max |grad| ${maxAbs(rg).toExponential(2)})`);
  return { nodes: { forward: forwardEnd - start, backward }, diffs, y: gy, grad: gg };
}

