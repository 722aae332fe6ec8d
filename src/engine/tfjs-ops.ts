// The op vocabulary on TensorFlow.js: the reference executor, running on whichever tfjs backend is active
// (tensorflow, webgpu, wasm, cpu). Gradients come from tfjs autodiff, with the gaps closed in gradients.ts.
import * as tf from '@tensorflow/tfjs';
import { clampWithGrad, gatherRows, resize, stopGradient, straightThrough } from './gradients.ts';
import type { Conv2dOptions, Executor, Ops } from './ops.ts';
import { randomNormalData } from './random.ts';

type T = tf.Tensor;

// Additive causal masks, one per (queries, keys) shape, kept outside any tidy() scope.
const causalMasks = new Map<string, tf.Tensor>();

function causalMask(tq: number, tk: number): tf.Tensor {
  const key = `${tf.getBackend()}:${tq}x${tk}`;
  let m = causalMasks.get(key);
  if (!m) {
    const data = new Float32Array(tq * tk);
    const offset = tk - tq;
    for (let i = 0; i < tq; i++) for (let j = 0; j < tk; j++) if (j > i + offset) data[i * tk + j] = -1e30;
    m = tf.keep(tf.tensor(data, [tq, tk]));
    causalMasks.set(key, m);
  }
  return m;
}

/** Frees cached constants (call when switching backends). */
export function clearOpCaches(): void {
  for (const m of causalMasks.values()) m.dispose();
  causalMasks.clear();
}

const SQRT1_2 = Math.SQRT1_2;

export const tfOps: Ops<T> = {
  name: 'tfjs',

  constant: (data, shape) => tf.tensor(data, shape, 'float32'),
  constantInt: (data, shape) => tf.tensor(data, shape, 'int32'),
  zeros: (shape) => tf.zeros(shape),
  shape: (x) => x.shape,
  read: async (x) => (await x.data()) as Float32Array,
  readInt: async (x) => {
    const d = await x.data();
    return d instanceof Int32Array ? d : Int32Array.from(d as ArrayLike<number>);
  },

  reshape: (x, shape) => tf.reshape(x, shape),
  transpose: (x, perm) => tf.transpose(x, perm),
  concat: (xs, axis) => tf.concat(xs, axis),
  slice: (x, begin, size) => tf.slice(x, begin, size),
  pad: (x, paddings, value = 0) => tf.pad(x, paddings, value),
  upsampleNearest2x: (x) => {
    // Repeat along W then H by concatenation + reshape: exact, and its gradient exists on every backend.
    const [b, h, w, c] = x.shape;
    const cols = tf.reshape(tf.concat([x, x], 3), [b, h, 2 * w, c]);
    return tf.reshape(tf.concat([cols, cols], 2), [b, 2 * h, 2 * w, c]);
  },
  resize: (x, height, width, opts) => resize(x as tf.Tensor4D, height, width, opts),

  add: (a, b) => tf.add(a, b),
  sub: (a, b) => tf.sub(a, b),
  mul: (a, b) => tf.mul(a, b),
  div: (a, b) => tf.div(a, b),
  scale: (x, s) => tf.mul(x, tf.scalar(s)),
  addScalar: (x, s) => tf.add(x, tf.scalar(s)),
  neg: (x) => tf.neg(x),
  exp: (x) => tf.exp(x),
  log: (x) => tf.log(x),
  sqrt: (x) => tf.sqrt(x),
  square: (x) => tf.square(x),
  abs: (x) => tf.abs(x),
  sign: (x) => tf.sign(x),
  asin: (x) => tf.asin(x),
  sigmoid: (x) => tf.sigmoid(x),
  maximum: (a, b) => tf.maximum(a, b),
  minimum: (a, b) => tf.minimum(a, b),
  clamp: (x, lo, hi) => tf.clipByValue(x, lo, hi),
  floor: (x) => tf.floor(x), // tfjs's Floor gradient is zerosLike(dy) (tfjs-core, every backend)
  toInt: (x) => tf.cast(x, 'int32'),
  randomNormal: (seed, shape) => {
    // The seed is two small words: read it back and fill on the host (the generator is defined in random.ts).
    if (seed.dtype !== 'int32' || seed.size !== 2 || seed.rank !== 1) throw new Error(`randomNormal: the seed must be int32 [2], got ${seed.dtype} [${seed.shape}]`);
    return tf.tensor(randomNormalData(seed.dataSync() as Int32Array, shape.reduce((a, b) => a * b, 1)), shape, 'float32');
  },

  swish: (x) => tf.mul(x, tf.sigmoid(x)),
  gelu: (x) => tf.mul(tf.mul(x, tf.scalar(0.5)), tf.add(tf.scalar(1), tf.erf(tf.mul(x, tf.scalar(SQRT1_2))))),
  quickGelu: (x) => tf.mul(x, tf.sigmoid(tf.mul(x, tf.scalar(1.702)))),

  sum: (x, axes, keepDims = false) => tf.sum(x, axes, keepDims),
  mean: (x, axes, keepDims = false) => tf.mean(x, axes, keepDims),
  argmin: (x, axis) => tf.argMin(x, axis),
  argmax: (x, axis) => tf.argMax(x, axis),
  softmax: (x) => tf.softmax(x),

  matmul: (a, b, transposeA = false, transposeB = false) => tf.matMul(a, b, transposeA, transposeB),
  linear: (x, weight, bias) => {
    const inDim = x.shape[x.shape.length - 1];
    const outDim = weight.shape[1] as number;
    let y: T = tf.matMul(tf.reshape(x, [-1, inDim]), weight);
    if (bias) y = tf.add(y, bias);
    return tf.reshape(y, [...x.shape.slice(0, -1), outDim]);
  },
  conv2d: (x, weight, bias, opts: Conv2dOptions = {}) => {
    const stride = opts.stride ?? 1;
    const pad = opts.pad ?? 'same';
    const p: 'same' | 'valid' | [[number, number], [number, number], [number, number], [number, number]] =
      typeof pad === 'string' ? pad : [[0, 0], [pad[0], pad[1]], [pad[2], pad[3]], [0, 0]];
    const y = tf.conv2d(x as tf.Tensor4D, weight as tf.Tensor4D, stride, p);
    return bias ? tf.add(y, bias) : y;
  },
  groupNorm: (x, groups, gamma, beta, eps) => {
    const [b, h, w, c] = x.shape;
    const g = tf.reshape(x, [b, h * w, groups, c / groups]);
    const { mean, variance } = tf.moments(g, [1, 3], true);
    const normed = tf.reshape(tf.div(tf.sub(g, mean), tf.sqrt(tf.add(variance, tf.scalar(eps)))), [b, h, w, c]);
    return tf.add(tf.mul(normed, gamma), beta);
  },
  layerNorm: (x, gamma, beta, eps) => {
    const { mean, variance } = tf.moments(x, [x.rank - 1], true);
    const normed = tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, tf.scalar(eps))));
    return tf.add(tf.mul(normed, gamma), beta);
  },
  attention: (q, k, v, opts = {}) => {
    const d = q.shape[q.shape.length - 1];
    const scale = opts.scale ?? 1 / Math.sqrt(d);
    let scores = tf.mul(tf.matMul(q, k, false, true), tf.scalar(scale));
    if (opts.causal) scores = tf.add(scores, causalMask(q.shape[q.shape.length - 2], k.shape[k.shape.length - 2]));
    return tf.matMul(tf.softmax(scores), v);
  },
  gatherRows: (table, indices) => gatherRows(table as tf.Tensor2D, indices as tf.Tensor1D),
  oneHot: (indices, depth) => tf.cast(tf.oneHot(indices as tf.Tensor1D, depth), 'float32'),

  straightThrough: (value, gradTarget) => straightThrough(value, gradTarget),
  stopGradient: (x) => stopGradient(x),
  clampWithGrad: (x, lo, hi) => clampWithGrad(x, lo, hi),

  // Inside a customGrad forward nothing is taped and tfjs tidies the intermediates; the backward pass re-runs fn
  // under its own tape (a nested tf.grad) to get the gradient w.r.t. x. tfjs 4.22's engine.gradients() replaces
  // the engine's active tape when called from inside another backward pass (it starts a new tape at gradient depth
  // 0 and sets it to null when done), so the outer pass's tape is saved and put back around the nested call.
  checkpoint: (fn, x) => {
    const f = tf.customGrad(((input: tf.Tensor, save: tf.GradSaveFunc) => {
      save([input]);
      const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const state = (tf.engine() as unknown as { state: { activeTape: unknown } }).state;
        const outerTape = state.activeTape;
        try {
          return tf.grad(fn)(saved[0], dy);
        } finally {
          state.activeTape = outerTape;
        }
      };
      return { value: fn(input), gradFunc };
    }) as unknown as Parameters<typeof tf.customGrad>[0]);
    return f(x);
  },
};

export const tfExecutor: Executor<T> = {
  ops: tfOps,
  valueAndGrad: (f, x) => tf.valueAndGrad(f)(x),
  scope: (f) => tf.tidy(f as () => tf.TensorContainer) as never,
  keep: (x) => tf.keep(x),
  dispose: (xs) => tf.dispose(xs as tf.Tensor | tf.Tensor[]),
};
