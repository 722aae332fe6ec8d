// The one place for each TensorFlow.js 4.22 gradient gap the models run into (ENGINE.md, "gradient gaps"). Each is a
// function of tf.Tensors that gives PyTorch's forward value and a correct gradient on every backend (cpu, wasm,
// webgpu, tensorflow):
//   - resize():          tfjs resizeBilinear(halfPixelCenters) has a WRONG gradient and there is no bicubic at all;
//                        here: PyTorch F.interpolate semantics as two matMuls with interpolation matrices;
//   - straightThrough(): value of one tensor, gradient into another (VQ straight-through, nerdyrodent's ReplaceGrad);
//   - stopGradient():    tfjs has none;
//   - clampWithGrad():   nerdyrodent's ClampWithGrad;
//   - gatherRows():      gather's table gradient needs UnsortedSegmentSum, missing on stock wasm.
// Built on tf.customGrad. A customGrad node keeps only the tensors passed to it as tape inputs; anything captured by
// closure is cut off from backprop. That is how stopGradient/straightThrough keep the tape from ever reaching ops
// without gradients (argMin, int indices, comparisons) on the value's side. Caution for anyone writing a customGrad:
// tf.grad runs the forward function in a tidy, so a gradFunc must not use tensors captured from the forward pass
// (they are disposed by then); save() them.
// Also know: comparisons (greater, equal, ...) have no gradient in tfjs, so `tf.where(tf.greater(x, 0), ...)` with x
// on the tape throws "gradient function not found for Greater": compute such masks from stopGradient(x). tfjs has
// no gradient for cropAndResize, depthToSpace, einsum, stridedSlice either.

import * as tf from '@tensorflow/tfjs';

// ---------------------------------------------------------------------------------------------------------------
// resize

export interface ResizeOptions {
  mode: 'bilinear' | 'bicubic';
  /** PyTorch's align_corners. false: half-pixel centres (src = (dst + 0.5) * in/out - 0.5). */
  alignCorners: boolean;
  /** Bicubic kernel parameter A; default -0.75 (PyTorch). PIL uses -0.5 (and antialiases; we do not). */
  cubicA?: number;
}

/** PyTorch's area_pixel_compute_scale for an explicit output size (no scale_factor). */
function pixelScale(inSize: number, outSize: number, alignCorners: boolean): number {
  if (alignCorners) return outSize > 1 ? (inSize - 1) / (outSize - 1) : 0;
  return inSize / outSize;
}

/** PyTorch's area_pixel_compute_source_index: linear modes clamp negative sources to 0, cubic does not. */
function sourceIndex(scale: number, dst: number, alignCorners: boolean, cubic: boolean): number {
  if (alignCorners) return scale * dst;
  const src = scale * (dst + 0.5) - 0.5;
  return !cubic && src < 0 ? 0 : src;
}

/** PyTorch's cubic_convolution1 (|x| <= 1) and cubic_convolution2 (1 < |x| < 2). */
const cubic1 = (x: number, a: number): number => ((a + 2) * x - (a + 3)) * x * x + 1;
const cubic2 = (x: number, a: number): number => ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;

/**
 * The [outSize, inSize] matrix M with out = M @ in along one axis, exactly as PyTorch's upsample_bilinear2d /
 * upsample_bicubic2d kernels compute it (bicubic reads taps outside the input at the clamped border index, i.e.
 * replicate padding). Downscaling uses the same formula (PyTorch's default antialias=False). Float64, for tests.
 */
export function interpolationMatrix(
  inSize: number,
  outSize: number,
  mode: 'bilinear' | 'bicubic',
  alignCorners: boolean,
  cubicA = -0.75,
): Float64Array {
  const m = new Float64Array(outSize * inSize);
  const scale = pixelScale(inSize, outSize, alignCorners);
  const clampIdx = (i: number): number => Math.min(Math.max(i, 0), inSize - 1);
  for (let o = 0; o < outSize; o++) {
    const row = o * inSize;
    if (mode === 'bilinear') {
      const src = sourceIndex(scale, o, alignCorners, false);
      const i0 = Math.floor(src);
      const i1 = i0 < inSize - 1 ? i0 + 1 : i0;
      const l1 = src - i0;
      m[row + clampIdx(i0)] += 1 - l1;
      m[row + clampIdx(i1)] += l1;
    } else {
      const src = sourceIndex(scale, o, alignCorners, true);
      const i0 = Math.floor(src);
      const t = src - i0;
      const w = [cubic2(t + 1, cubicA), cubic1(t, cubicA), cubic1(1 - t, cubicA), cubic2(2 - t, cubicA)];
      for (let k = 0; k < 4; k++) m[row + clampIdx(i0 - 1 + k)] += w[k];
    }
  }
  return m;
}

// Matrices per backend instance (a removed backend takes its tensors with it), then per size/mode, least recently used
// last out: cutouts resize from many random crop sizes, and a 400 -> 224 matrix is 350 KB.
const matrixCache = new WeakMap<object, Map<string, tf.Tensor2D>>();
const MAX_CACHED_MATRICES = 128;

function cachedMatrix(
  inSize: number,
  outSize: number,
  mode: 'bilinear' | 'bicubic',
  align: boolean,
  a: number,
): tf.Tensor2D {
  const backend = tf.backend();
  let perBackend = matrixCache.get(backend);
  if (!perBackend) {
    perBackend = new Map();
    matrixCache.set(backend, perBackend);
  }
  const key = `${inSize}>${outSize}:${mode}:${align ? 1 : 0}:${a}`;
  let m = perBackend.get(key);
  if (m && !m.isDisposed) {
    perBackend.delete(key); // re-insert: most recently used last
    perBackend.set(key, m);
    return m;
  }
  // keep(): resize() is usually called inside a tidy(); the cached matrix must outlive it.
  m = tf.keep(tf.tensor2d(Float32Array.from(interpolationMatrix(inSize, outSize, mode, align, a)), [outSize, inSize]));
  perBackend.set(key, m);
  if (perBackend.size > MAX_CACHED_MATRICES) {
    // Safe even if a pending gradient still needs it: the tape holds its own reference to saved inputs.
    const [oldest, t] = perBackend.entries().next().value as [string, tf.Tensor2D];
    perBackend.delete(oldest);
    t.dispose();
  }
  return m;
}

/** Dispose the cached interpolation matrices of the current backend. */
export function clearResizeCache(): void {
  const perBackend = matrixCache.get(tf.backend());
  if (!perBackend) return;
  for (const m of perBackend.values()) m.dispose();
  perBackend.clear();
}

/**
 * Resize NHWC images like PyTorch's F.interpolate(x, size=(outH, outW), mode, align_corners) (antialias=False),
 * separably, as two matMuls with interpolation matrices, so autodiff gives the exact gradient. Up- or downscaling.
 * Note: CLIP's own preprocessing resizes with PIL (antialiased bicubic, a = -0.5): that is not this.
 */
export function resize(x: tf.Tensor4D, outH: number, outW: number, opts: ResizeOptions): tf.Tensor4D {
  const [b, h, w, c] = x.shape;
  const a = opts.cubicA ?? -0.75;
  if (h === outH && w === outW) return x.clone(); // both formulas reduce to the identity at equal sizes
  return tf.tidy(() => {
    let y: tf.Tensor = x;
    if (h !== outH) {
      // [b, h, w*c]: out[b] = Mh @ x[b] (Mh broadcast over the batch).
      const mh = cachedMatrix(h, outH, opts.mode, opts.alignCorners, a);
      y = tf.matMul(mh, tf.reshape(y, [b, h, w * c]));
    }
    if (w !== outW) {
      // [b*outH, w, c]: out[r] = Mw @ y[r].
      const mw = cachedMatrix(w, outW, opts.mode, opts.alignCorners, a);
      y = tf.matMul(mw, tf.reshape(y, [b * outH, w, c]));
    }
    return tf.reshape(y, [b, outH, outW, c]);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// gradient routing

/** Sum `dy` over the axes along which `shape` was broadcast to dy's shape, and reshape to `shape`. */
function sumToShape(dy: tf.Tensor, shape: number[]): tf.Tensor {
  if (tf.util.arraysEqual(dy.shape, shape)) return dy;
  const axes = tf.backend_util.getReductionAxes(shape, dy.shape);
  const summed = axes.length > 0 ? tf.sum(dy, axes, true) : dy;
  return tf.reshape(summed, shape);
}

type GradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

/**
 * tf.customGrad with plain types: `f(inputs, save)` returns the value and a gradFunc giving one gradient per input.
 * (customGrad passes `save` after the inputs; with no inputs it is the only argument.)
 */
function custom(
  f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: GradFunc },
  ...inputs: tf.Tensor[]
): tf.Tensor {
  const wrapped = (...args: Array<tf.Tensor | tf.GradSaveFunc>) =>
    f(args.slice(0, -1) as tf.Tensor[], args[args.length - 1] as tf.GradSaveFunc);
  return tf.customGrad(wrapped as Parameters<typeof tf.customGrad>[0])(...inputs);
}

/**
 * The value of `forwardValue`, with the gradient routed unchanged to `gradTarget` (summed over broadcast axes when
 * shapes differ): straight-through estimator, `x + (q - x).detach()` without the detach. `forwardValue` gets no
 * gradient and the tape never reaches what produced it.
 */
export function straightThrough<T extends tf.Tensor>(forwardValue: T, gradTarget: tf.Tensor): T {
  const shape = gradTarget.shape;
  return custom(
    () => ({
      value: forwardValue.clone(), // a new tensor: the captured one has its own producer on the tape
      gradFunc: (dy) => sumToShape(dy, shape),
    }),
    gradTarget,
  ) as T;
}

/** The value of `x`, cut off from the tape (zero gradient to everything upstream). */
export function stopGradient<T extends tf.Tensor>(x: T): T {
  // A customGrad node with no inputs: backprop has nothing to pass the gradient to.
  return custom(() => ({ value: x.clone(), gradFunc: () => [] })) as T;
}

/**
 * clamp(x, min, max) whose gradient passes where x is inside the range, and outside it only where gradient descent
 * moves x back towards the range: grad * (grad * (x - clamp(x)) >= 0) (nerdyrodent's ClampWithGrad).
 */
export function clampWithGrad<T extends tf.Tensor>(x: T, min: number, max: number): T {
  return custom(
    ([input], save) => {
      save([input]);
      return {
        value: tf.clipByValue(input, min, max),
        gradFunc: (dy, [xs]) => {
          const outside = tf.sub(xs, tf.clipByValue(xs, min, max));
          const keep = tf.cast(tf.greaterEqual(tf.mul(dy, outside), 0), 'float32');
          return tf.mul(dy, keep);
        },
      };
    },
    x,
  ) as T;
}

/**
 * Rows of `table` [N, D] at `indices` [M] -> [M, D] (int32 indices; float ones are cast), differentiable w.r.t. the
 * table on every backend. Backward: UnsortedSegmentSum where the backend has it (wasm only with wasm-kernels.ts),
 * else oneHotᵀ @ dy. Indices never see a gradient.
 */
/**
 * unsortedSegmentSum over row blocks: tfjs-webgpu lays a big segment sum out as one dispatch and exceeds WebGPU's
 * 65535 workgroups per dimension (e.g. the four-tap warp of 32 cutouts of 224x224 gathers 1.6 M rows); blocks of
 * at most 2^20 values stay inside the limit on every backend.
 */
function segmentSumChunked(dy: tf.Tensor2D, ids: tf.Tensor1D, n: number): tf.Tensor {
  const [rows, cols] = dy.shape;
  const block = Math.max(1, Math.floor(2 ** 20 / Math.max(1, cols)));
  if (rows <= block) return tf.unsortedSegmentSum(dy, ids, n);
  let sum: tf.Tensor | undefined;
  for (let r = 0; r < rows; r += block) {
    const m = Math.min(block, rows - r);
    const part = tf.unsortedSegmentSum(tf.slice(dy, [r, 0], [m, cols]), tf.slice(ids, [r], [m]), n);
    sum = sum ? tf.add(sum, part) : part;
  }
  return sum!;
}

export function gatherRows(table: tf.Tensor2D, indices: tf.Tensor1D): tf.Tensor2D {
  const idx = indices.dtype === 'int32' ? indices : tf.cast(indices, 'int32');
  const n = table.shape[0];
  return custom(
    ([t], save) => {
      // save(): tensors made inside tf.grad's forward function are disposed before the backward pass runs, so the
      // indices must be saved (kept) rather than captured.
      save([idx]);
      return {
        value: tf.gather(t, idx),
        gradFunc: (dy, [ids]) => {
          if (tf.getKernel('UnsortedSegmentSum', tf.getBackend())) return segmentSumChunked(dy as tf.Tensor2D, ids as tf.Tensor1D, n);
          return tf.matMul(tf.cast(tf.oneHot(ids as tf.Tensor1D, n), 'float32'), dy, true, false);
        },
      };
    },
    table,
  ) as tf.Tensor2D;
}
