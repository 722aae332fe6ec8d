// Tracing: running a model function on `Ops<Sym>` records its graph (ir.ts). Every op infers its output shape and
// checks its inputs (a shape error surfaces here, at trace time, with the op and the shapes, instead of deep in a
// WGSL dispatch). ops.ts's convenience ops are lowered to the few ir kinds: linear = reshape + matmul + add,
// scale/addScalar/neg/.../clamp = unary, mean = sum + scale, attention = matmul/scale(/+mask)/softmax/matmul,
// zeros = const. Lowerings follow tfjs-ops.ts op for op, so the traced graph rounds like the tfjs reference.
//
// The gradient-routing ops have no ir kind: their forward is a plain `unary` node (copy, or clamp) and their
// backward semantics sit in a side table, `gradRules` (node id -> rule), that autodiff.ts reads. The rules only
// matter between tracing and autodiff; the planner sees ordinary copy/clamp nodes.
//
// Replay: a compiled plan is re-used every step, but the model function that made it must still run each step,
// because that is where the per-step data comes from (cutout crops and their resampling matrices, noise, scalars
// made with o.constant). `GraphBuilder.replay` runs the function again on a ReplayOps that, instead of appending,
// checks each node it would make against the recorded one (kind, inputs, shape, attrs) and collects the data of
// the const nodes; any difference means the structure changed and the caller must trace and plan again.
import type { AttentionOptions, Conv2dOptions, Ops, Padding, ResizeOptions } from '../ops.ts';
import { describeNode, sizeOf, type Attrs, type BinaryFn, type DType, type Graph, type OpName, type UnaryFn } from './ir.ts';

/** A traced tensor: the id of the node that makes it, with its static shape. */
export interface Sym {
  readonly id: number;
  readonly shape: number[];
  readonly dtype: DType;
}

/** Backward semantics of the gradient-routing ops (ops.ts), keyed by the id of their forward node. */
export type GradRule =
  /** unary copy of the value; the gradient goes to `target` (summed over axes it was broadcast along). */
  | { kind: 'straightThrough'; target: number }
  /** unary copy; no gradient. */
  | { kind: 'stop' }
  /** unary clamp; gradient binary clampWithGradGrad (ClampWithGrad). */
  | { kind: 'clampWithGrad' };

type ConstData = Float32Array | Int32Array;

/** numpy broadcasting of two shapes (aligned at the end), or undefined when they do not broadcast. */
export function broadcastShapes(a: readonly number[], b: readonly number[]): number[] | undefined {
  const rank = Math.max(a.length, b.length);
  const out = new Array<number>(rank);
  for (let i = 1; i <= rank; i++) {
    const da = i <= a.length ? a[a.length - i] : 1;
    const db = i <= b.length ? b[b.length - i] : 1;
    if (da !== db && da !== 1 && db !== 1) return undefined;
    out[rank - i] = da === 1 ? db : da;
  }
  return out;
}

/** TensorFlow's padding for 'same'/'valid' (more at the end when odd), as [before, after] along one axis. */
function padFor(mode: 'same' | 'valid', size: number, k: number, stride: number): [number, number] {
  if (mode === 'valid') return [0, 0];
  const total = Math.max((Math.ceil(size / stride) - 1) * stride + k - size, 0);
  return [Math.floor(total / 2), total - Math.floor(total / 2)];
}

const sameNumbers = (a: ArrayLike<number>, b: ArrayLike<number>): boolean => {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
};

const str = (s: readonly number[]) => `[${s.join(',')}]`;

// Causal masks per (queries, keys), shared by every trace: one array each, so a trace dedupes it and a replay sees
// the very array it recorded (unchanged data, nothing to upload).
const causalMasks = new Map<string, Float32Array>();

function causalMask(tq: number, tk: number): Float32Array {
  const key = `${tq}x${tk}`;
  let m = causalMasks.get(key);
  if (!m) {
    m = new Float32Array(tq * tk);
    const offset = tk - tq;
    for (let i = 0; i < tq; i++) for (let j = 0; j < tk; j++) if (j > i + offset) m[i * tk + j] = -1e30;
    causalMasks.set(key, m);
  }
  return m;
}

/**
 * Ops<Sym> with shape inference, checks and lowering; what happens to each node (append, or compare with a
 * recording) is the subclass's `emit`.
 */
abstract class SymOps implements Ops<Sym> {
  readonly name: string = 'graph';
  /** Const nodes by the identity of their data: one node per array. */
  private readonly constNodes = new Map<ConstData, Sym>();

  /** The node already holding `data`, if any. */
  protected knownConst(data: ConstData): Sym | undefined {
    return this.constNodes.get(data);
  }

  protected abstract emit<K extends OpName>(op: K, inputs: Sym[], attrs: Attrs[K], shape: number[], dtype: DType, rule?: GradRule): Sym;
  /** One zero-filled array per shape (so zeros() of a shape is one node, and replays see the same array). */
  protected abstract zeroData(shape: number[]): Float32Array;

  // -------------------------------------------------------------------------------------------------------------
  // Creating and reading tensors.

  constant(data: Float32Array, shape: number[]): Sym {
    if (!(data instanceof Float32Array)) throw new Error('constant: data must be a Float32Array');
    return this.makeConst(data, shape, 'f32');
  }

  constantInt(data: Int32Array, shape: number[]): Sym {
    if (!(data instanceof Int32Array)) throw new Error('constantInt: data must be an Int32Array');
    return this.makeConst(data, shape, 'i32');
  }

  private makeConst(data: ConstData, shape: number[], dtype: DType): Sym {
    checkShape('constant', shape);
    if (data.length !== sizeOf(shape)) throw new Error(`constant: ${data.length} values for shape ${str(shape)}`);
    const seen = this.knownConst(data);
    if (seen) return this.reshape(seen, shape);
    const s = this.emit('const', [], { data }, shape.slice(), dtype);
    this.constNodes.set(data, s);
    return s;
  }

  zeros(shape: number[]): Sym {
    checkShape('zeros', shape);
    return this.constant(this.zeroData(shape), shape);
  }

  shape(x: Sym): number[] {
    return x.shape.slice();
  }

  read(x: Sym): Promise<Float32Array> {
    throw new Error(`read: %${x.id} is traced, it has no values (run the graph: interpret.ts or the compiled executor)`);
  }

  readInt(x: Sym): Promise<Int32Array> {
    throw new Error(`readInt: %${x.id} is traced, it has no values (run the graph: interpret.ts or the compiled executor)`);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Layout.

  reshape(x: Sym, shape: number[]): Sym {
    const n = sizeOf(x.shape);
    const free = shape.indexOf(-1);
    if (free >= 0 && shape.indexOf(-1, free + 1) >= 0) throw new Error(`reshape: more than one -1 in ${str(shape)}`);
    const out = shape.slice();
    if (free >= 0) {
      const known = sizeOf(shape.filter((_, i) => i !== free));
      if (known === 0 || n % known !== 0) throw new Error(`reshape: cannot reshape ${str(x.shape)} to ${str(shape)}`);
      out[free] = n / known;
    }
    checkShape('reshape', out);
    if (sizeOf(out) !== n) throw new Error(`reshape: cannot reshape ${str(x.shape)} (${n} values) to ${str(shape)}`);
    if (sameNumbers(out, x.shape)) return x;
    return this.emit('reshape', [x], {}, out, x.dtype);
  }

  transpose(x: Sym, perm: number[]): Sym {
    const r = x.shape.length;
    if (perm.length !== r || !perm.every((p) => Number.isInteger(p) && p >= 0 && p < r) || new Set(perm).size !== r) {
      throw new Error(`transpose: ${str(perm)} is not a permutation of the axes of ${str(x.shape)}`);
    }
    if (perm.every((p, i) => p === i)) return x;
    return this.emit('transpose', [x], { perm: perm.slice() }, perm.map((p) => x.shape[p]), x.dtype);
  }

  concat(xs: Sym[], axis: number): Sym {
    if (xs.length === 0) throw new Error('concat: no tensors');
    const first = xs[0];
    const r = first.shape.length;
    const a = normAxis('concat', axis, r);
    const out = first.shape.slice();
    out[a] = 0;
    for (const x of xs) {
      const ok = x.dtype === first.dtype && x.shape.length === r && x.shape.every((d, i) => i === a || d === first.shape[i]);
      if (!ok) throw new Error(`concat: shapes ${xs.map((s) => str(s.shape)).join(' ')} (${xs.map((s) => s.dtype).join(' ')}) differ off axis ${a}`);
      out[a] += x.shape[a];
    }
    if (xs.length === 1) return first;
    return this.emit('concat', xs, { axis: a }, out, first.dtype);
  }

  slice(x: Sym, begin: number[], size: number[]): Sym {
    const r = x.shape.length;
    if (begin.length !== r || size.length !== r) throw new Error(`slice: begin ${str(begin)} / size ${str(size)} for rank ${r}`);
    const out = size.map((s, i) => (s === -1 ? x.shape[i] - begin[i] : s));
    for (let i = 0; i < r; i++) {
      if (!Number.isInteger(begin[i]) || !Number.isInteger(out[i]) || begin[i] < 0 || out[i] < 0 || begin[i] + out[i] > x.shape[i]) {
        throw new Error(`slice: begin ${str(begin)} size ${str(size)} outside ${str(x.shape)}`);
      }
    }
    if (sameNumbers(out, x.shape)) return x;
    return this.emit('slice', [x], { begin: begin.slice() }, out, x.dtype);
  }

  pad(x: Sym, paddings: [number, number][], value = 0): Sym {
    const r = x.shape.length;
    if (paddings.length !== r || !paddings.every((p) => p.length === 2 && p.every((v) => Number.isInteger(v) && v >= 0))) {
      throw new Error(`pad: paddings ${JSON.stringify(paddings)} for ${str(x.shape)} (one non-negative [before, after] per axis)`);
    }
    if (paddings.every(([a, b]) => a === 0 && b === 0)) return x;
    const out = x.shape.map((d, i) => d + paddings[i][0] + paddings[i][1]);
    return this.emit('pad', [x], { paddings: paddings.map(([a, b]) => [a, b] as [number, number]), value }, out, x.dtype);
  }

  upsampleNearest2x(x: Sym): Sym {
    const [b, h, w, c] = rank4('upsampleNearest2x', x);
    return this.emit('upsample2x', [x], {}, [b, 2 * h, 2 * w, c], x.dtype);
  }

  resize(x: Sym, height: number, width: number, opts: ResizeOptions): Sym {
    const [b, h, w, c] = rank4('resize', x);
    if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0)) throw new Error(`resize: bad size ${height}x${width}`);
    if (opts.mode !== 'bilinear' && opts.mode !== 'bicubic') throw new Error(`resize: unknown mode ${String(opts.mode)}`);
    // Equal sizes: both interpolation formulas are the identity (gradients.ts resize returns a clone).
    if (h === height && w === width) return x;
    return this.emit('resize', [x], { mode: opts.mode, alignCorners: opts.alignCorners }, [b, height, width, c], 'f32');
  }

  // -------------------------------------------------------------------------------------------------------------
  // Elementwise.

  private unary(op: string, x: Sym, fn: UnaryFn, extra?: { s?: number; lo?: number; hi?: number }, rule?: GradRule): Sym {
    if (x.dtype !== 'f32') throw new Error(`${op}: needs a float32 tensor, got ${x.dtype}${str(x.shape)}`);
    return this.emit('unary', [x], extra ? { fn, ...extra } : { fn }, x.shape, 'f32', rule);
  }

  /** A binary node with numpy broadcasting (also used by autodiff for the *Grad functions). */
  binary(fn: BinaryFn, a: Sym, b: Sym, bounds?: { lo: number; hi: number }): Sym {
    if (a.dtype !== 'f32' || b.dtype !== 'f32') throw new Error(`${fn}: needs float32 tensors, got ${a.dtype}${str(a.shape)} and ${b.dtype}${str(b.shape)}`);
    const out = broadcastShapes(a.shape, b.shape);
    if (!out) throw new Error(`${fn}: shapes ${str(a.shape)} and ${str(b.shape)} do not broadcast`);
    return this.emit('binary', [a, b], bounds ? { fn, lo: bounds.lo, hi: bounds.hi } : { fn }, out, 'f32');
  }

  add(a: Sym, b: Sym): Sym {
    return this.binary('add', a, b);
  }
  sub(a: Sym, b: Sym): Sym {
    return this.binary('sub', a, b);
  }
  mul(a: Sym, b: Sym): Sym {
    return this.binary('mul', a, b);
  }
  div(a: Sym, b: Sym): Sym {
    return this.binary('div', a, b);
  }
  maximum(a: Sym, b: Sym): Sym {
    return this.binary('maximum', a, b);
  }
  minimum(a: Sym, b: Sym): Sym {
    return this.binary('minimum', a, b);
  }
  scale(x: Sym, s: number): Sym {
    return this.unary('scale', x, 'scale', { s });
  }
  addScalar(x: Sym, s: number): Sym {
    return this.unary('addScalar', x, 'addScalar', { s });
  }
  neg(x: Sym): Sym {
    return this.unary('neg', x, 'neg');
  }
  exp(x: Sym): Sym {
    return this.unary('exp', x, 'exp');
  }
  log(x: Sym): Sym {
    return this.unary('log', x, 'log');
  }
  sqrt(x: Sym): Sym {
    return this.unary('sqrt', x, 'sqrt');
  }
  square(x: Sym): Sym {
    return this.unary('square', x, 'square');
  }
  abs(x: Sym): Sym {
    return this.unary('abs', x, 'abs');
  }
  sign(x: Sym): Sym {
    return this.unary('sign', x, 'sign');
  }
  asin(x: Sym): Sym {
    return this.unary('asin', x, 'asin');
  }
  sigmoid(x: Sym): Sym {
    return this.unary('sigmoid', x, 'sigmoid');
  }
  clamp(x: Sym, lo: number, hi: number): Sym {
    if (!(lo <= hi)) throw new Error(`clamp: lo ${lo} > hi ${hi}`);
    return this.unary('clamp', x, 'clamp', { lo, hi });
  }
  floor(x: Sym): Sym {
    return this.unary('floor', x, 'floor');
  }
  toInt(x: Sym): Sym {
    if (x.dtype !== 'f32') throw new Error(`toInt: needs a float32 tensor, got ${x.dtype}${str(x.shape)}`);
    return this.emit('cast', [x], { to: 'i32' }, x.shape, 'i32');
  }
  randomNormal(seed: Sym, shape: number[]): Sym {
    if (seed.dtype !== 'i32' || !sameNumbers(seed.shape, [2])) throw new Error(`randomNormal: the seed must be int32 [2], got ${seed.dtype}${str(seed.shape)}`);
    checkShape('randomNormal', shape);
    return this.emit('randomNormal', [seed], {}, shape.slice(), 'f32');
  }
  swish(x: Sym): Sym {
    return this.unary('swish', x, 'swish');
  }
  gelu(x: Sym): Sym {
    return this.unary('gelu', x, 'gelu');
  }
  quickGelu(x: Sym): Sym {
    return this.unary('quickGelu', x, 'quickGelu');
  }

  // -------------------------------------------------------------------------------------------------------------
  // Reductions.

  sum(x: Sym, axes?: number[], keepDims = false): Sym {
    return this.reduce('sum', x, axes, keepDims);
  }

  /** Maximum over axes (an ir kind with no Ops method: for autodiff and planner rewrites). */
  max(x: Sym, axes?: number[], keepDims = false): Sym {
    return this.reduce('max', x, axes, keepDims);
  }

  private reduce(op: 'sum' | 'max', x: Sym, axes: number[] | undefined, keepDims: boolean): Sym {
    if (x.dtype !== 'f32') throw new Error(`${op}: needs a float32 tensor, got ${x.dtype}`);
    const r = x.shape.length;
    const ax = [...new Set((axes ?? x.shape.map((_, i) => i)).map((a) => normAxis(op, a, r)))].sort((a, b) => a - b);
    if (ax.length === 0) return x;
    const out = keepDims ? x.shape.map((d, i) => (ax.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !ax.includes(i));
    return this.emit(op, [x], { axes: ax, keepDims }, out, 'f32');
  }

  mean(x: Sym, axes?: number[], keepDims = false): Sym {
    const r = x.shape.length;
    const ax = new Set((axes ?? x.shape.map((_, i) => i)).map((a) => normAxis('mean', a, r)));
    let n = 1;
    for (const a of ax) n *= x.shape[a];
    if (n === 0) throw new Error(`mean: over an empty axis of ${str(x.shape)}`);
    return this.scale(this.sum(x, axes, keepDims), 1 / n);
  }

  argmin(x: Sym, axis: number): Sym {
    return this.arg('argmin', x, axis);
  }

  argmax(x: Sym, axis: number): Sym {
    return this.arg('argmax', x, axis);
  }

  private arg(op: 'argmin' | 'argmax', x: Sym, axis: number): Sym {
    const a = normAxis(op, axis, x.shape.length);
    if (x.shape[a] === 0) throw new Error(`${op}: empty axis ${a} of ${str(x.shape)}`);
    return this.emit(op, [x], { axis: a }, x.shape.filter((_, i) => i !== a), 'i32');
  }

  softmax(x: Sym): Sym {
    if (x.shape.length === 0 || x.dtype !== 'f32') throw new Error(`softmax: needs a float32 tensor of rank >= 1, got ${x.dtype}${str(x.shape)}`);
    return this.emit('softmax', [x], {}, x.shape, 'f32');
  }

  // -------------------------------------------------------------------------------------------------------------
  // Layers.

  matmul(a: Sym, b: Sym, transposeA = false, transposeB = false): Sym {
    const ra = a.shape.length;
    const rb = b.shape.length;
    if (ra < 2 || rb < 2) throw matmulError(a, b, transposeA, transposeB, 'both need rank >= 2');
    if (a.dtype !== 'f32' || b.dtype !== 'f32') throw matmulError(a, b, transposeA, transposeB, 'needs float32 tensors');
    const [m, ka] = transposeA ? [a.shape[ra - 1], a.shape[ra - 2]] : [a.shape[ra - 2], a.shape[ra - 1]];
    const [kb, n] = transposeB ? [b.shape[rb - 1], b.shape[rb - 2]] : [b.shape[rb - 2], b.shape[rb - 1]];
    if (ka !== kb) throw matmulError(a, b, transposeA, transposeB, `inner sizes ${ka} and ${kb} differ`);
    const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
    if (!batch) throw matmulError(a, b, transposeA, transposeB, 'batch axes do not broadcast');
    return this.emit('matmul', [a, b], { transposeA, transposeB }, [...batch, m, n], 'f32');
  }

  linear(x: Sym, weight: Sym, bias?: Sym): Sym {
    const inDim = x.shape[x.shape.length - 1];
    if (weight.shape.length !== 2 || weight.shape[0] !== inDim) throw new Error(`linear: weight ${str(weight.shape)} for input ${str(x.shape)} (expected [${inDim}, out])`);
    const outDim = weight.shape[1];
    if (bias && !sameNumbers(bias.shape, [outDim])) throw new Error(`linear: bias ${str(bias.shape)}, expected [${outDim}]`);
    // As tfjs-ops.ts: rows of a 2-D matmul, bias added there, then the leading axes back.
    let y = this.matmul(this.reshape(x, [-1, inDim]), weight);
    if (bias) y = this.add(y, bias);
    return this.reshape(y, [...x.shape.slice(0, -1), outDim]);
  }

  conv2d(x: Sym, weight: Sym, bias: Sym | undefined, opts: Conv2dOptions = {}): Sym {
    const [b, h, w, cin] = rank4('conv2d', x);
    if (weight.shape.length !== 4 || weight.shape[2] !== cin) throw new Error(`conv2d: filter ${str(weight.shape)} for input ${str(x.shape)} (HWIO, I = ${cin})`);
    const [kh, kw, , cout] = weight.shape;
    if (bias && !sameNumbers(bias.shape, [cout])) throw new Error(`conv2d: bias ${str(bias.shape)}, expected [${cout}]`);
    const stride = opts.stride ?? 1;
    if (!Number.isInteger(stride) || stride < 1) throw new Error(`conv2d: bad stride ${stride}`);
    const pad = explicitPad(opts.pad ?? 'same', h, w, kh, kw, stride);
    const ho = Math.floor((h + pad[0] + pad[1] - kh) / stride) + 1;
    const wo = Math.floor((w + pad[2] + pad[3] - kw) / stride) + 1;
    if (ho < 1 || wo < 1) throw new Error(`conv2d: ${kh}x${kw} filter larger than the padded input ${str(x.shape)}`);
    return this.emit('conv2d', bias ? [x, weight, bias] : [x, weight], { stride, pad }, [b, ho, wo, cout], 'f32');
  }

  groupNorm(x: Sym, groups: number, gamma: Sym, beta: Sym, eps: number): Sym {
    const c = rank4('groupNorm', x)[3];
    if (!Number.isInteger(groups) || groups < 1 || c % groups !== 0) throw new Error(`groupNorm: ${c} channels do not split into ${groups} groups`);
    checkAffine('groupNorm', c, gamma, beta);
    return this.emit('groupNorm', [x, gamma, beta], { groups, eps }, x.shape, 'f32');
  }

  layerNorm(x: Sym, gamma: Sym, beta: Sym, eps: number): Sym {
    if (x.shape.length === 0) throw new Error('layerNorm: needs rank >= 1');
    checkAffine('layerNorm', x.shape[x.shape.length - 1], gamma, beta);
    return this.emit('layerNorm', [x, gamma, beta], { eps }, x.shape, 'f32');
  }

  attention(q: Sym, k: Sym, v: Sym, opts: AttentionOptions = {}): Sym {
    const r = q.shape.length;
    const ok = r >= 2 && k.shape.length === r && v.shape.length === r && k.shape[r - 1] === q.shape[r - 1] && v.shape[r - 2] === k.shape[r - 2];
    if (!ok) throw new Error(`attention: q ${str(q.shape)}, k ${str(k.shape)}, v ${str(v.shape)} (expected [..., Tq, D], [..., Tk, D], [..., Tk, Dv])`);
    const d = q.shape[r - 1];
    let scores = this.scale(this.matmul(q, k, false, true), opts.scale ?? 1 / Math.sqrt(d));
    if (opts.causal) {
      const tq = q.shape[r - 2];
      const tk = k.shape[r - 2];
      scores = this.add(scores, this.constant(causalMask(tq, tk), [tq, tk]));
    }
    return this.matmul(this.softmax(scores), v);
  }

  gatherRows(table: Sym, indices: Sym): Sym {
    if (table.shape.length !== 2 || table.dtype !== 'f32') throw new Error(`gatherRows: table must be float32 [N, D], got ${table.dtype}${str(table.shape)}`);
    if (indices.shape.length !== 1 || indices.dtype !== 'i32') throw new Error(`gatherRows: indices must be int32 [M], got ${indices.dtype}${str(indices.shape)}`);
    return this.emit('gatherRows', [table, indices], {}, [indices.shape[0], table.shape[1]], 'f32');
  }

  oneHot(indices: Sym, depth: number): Sym {
    if (indices.shape.length !== 1 || indices.dtype !== 'i32') throw new Error(`oneHot: indices must be int32 [M], got ${indices.dtype}${str(indices.shape)}`);
    if (!Number.isInteger(depth) || depth < 1) throw new Error(`oneHot: bad depth ${depth}`);
    return this.emit('oneHot', [indices], { depth }, [indices.shape[0], depth], 'f32');
  }

  // -------------------------------------------------------------------------------------------------------------
  // Gradient routing: forward nodes + gradRules.

  straightThrough(value: Sym, gradTarget: Sym): Sym {
    const b = broadcastShapes(gradTarget.shape, value.shape);
    if (!b || !sameNumbers(b, value.shape)) throw new Error(`straightThrough: gradient target ${str(gradTarget.shape)} does not broadcast to the value ${str(value.shape)}`);
    return this.unary('straightThrough', value, 'copy', undefined, { kind: 'straightThrough', target: gradTarget.id });
  }

  stopGradient(x: Sym): Sym {
    return this.unary('stopGradient', x, 'copy', undefined, { kind: 'stop' });
  }

  clampWithGrad(x: Sym, lo: number, hi: number): Sym {
    if (!(lo <= hi)) throw new Error(`clampWithGrad: lo ${lo} > hi ${hi}`);
    return this.unary('clampWithGrad', x, 'clamp', { lo, hi }, { kind: 'clampWithGrad' });
  }

  // -------------------------------------------------------------------------------------------------------------
  // Backward kinds (for autodiff.ts): inputs checked, output shape given by the forward.

  softmaxGrad(y: Sym, dy: Sym): Sym {
    sameShapes('softmaxGrad', y, dy);
    return this.emit('softmaxGrad', [y, dy], {}, y.shape, 'f32');
  }

  resizeGrad(dy: Sym, xShape: number[], attrs: Attrs['resizeGrad']): Sym {
    rank4('resizeGrad', dy);
    if (xShape.length !== 4 || xShape[0] !== dy.shape[0] || xShape[3] !== dy.shape[3]) throw new Error(`resizeGrad: dy ${str(dy.shape)} for input ${str(xShape)}`);
    return this.emit('resizeGrad', [dy], { mode: attrs.mode, alignCorners: attrs.alignCorners }, xShape.slice(), 'f32');
  }

  conv2dGradInput(dy: Sym, weight: Sym, xShape: number[], attrs: Attrs['conv2dGradInput']): Sym {
    rank4('conv2dGradInput', dy);
    const [kh, kw, cin, cout] = weight.shape;
    const [b, h, w, c] = xShape;
    const ho = Math.floor((h + attrs.pad[0] + attrs.pad[1] - kh) / attrs.stride) + 1;
    const wo = Math.floor((w + attrs.pad[2] + attrs.pad[3] - kw) / attrs.stride) + 1;
    if (c !== cin || !sameNumbers(dy.shape, [b, ho, wo, cout])) throw new Error(`conv2dGradInput: dy ${str(dy.shape)}, filter ${str(weight.shape)}, input ${str(xShape)}`);
    return this.emit('conv2dGradInput', [dy, weight], { stride: attrs.stride, pad: attrs.pad }, xShape.slice(), 'f32');
  }

  groupNormGrad(x: Sym, gamma: Sym, dy: Sym, groups: number, eps: number): Sym {
    sameShapes('groupNormGrad', x, dy);
    return this.emit('groupNormGrad', [x, gamma, dy], { groups, eps }, x.shape, 'f32');
  }

  layerNormGrad(x: Sym, gamma: Sym, dy: Sym, eps: number): Sym {
    sameShapes('layerNormGrad', x, dy);
    return this.emit('layerNormGrad', [x, gamma, dy], { eps }, x.shape, 'f32');
  }

  gatherRowsGrad(dy: Sym, indices: Sym, tableShape: number[]): Sym {
    if (dy.shape.length !== 2 || tableShape.length !== 2 || dy.shape[1] !== tableShape[1] || !sameNumbers(indices.shape, [dy.shape[0]])) {
      throw new Error(`gatherRowsGrad: dy ${str(dy.shape)}, indices ${str(indices.shape)}, table ${str(tableShape)}`);
    }
    return this.emit('gatherRowsGrad', [dy, indices], {}, tableShape.slice(), 'f32');
  }

  checkpoint(fn: (x: Sym) => Sym, x: Sym): Sym {
    // Memory is the plan's business (liveness); the traced graph is the plain composition.
    return fn(x);
  }
}

function matmulError(a: Sym, b: Sym, ta: boolean, tb: boolean, why: string): Error {
  return new Error(`matmul: ${str(a.shape)}${ta ? 'ᵀ' : ''} x ${str(b.shape)}${tb ? 'ᵀ' : ''}: ${why}`);
}

function checkShape(op: string, shape: readonly number[]): void {
  if (!shape.every((d) => Number.isInteger(d) && d >= 0)) throw new Error(`${op}: bad shape ${str(shape)}`);
}

function normAxis(op: string, axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) throw new Error(`${op}: axis ${axis} out of range for rank ${rank}`);
  return a;
}

function rank4(op: string, x: Sym): number[] {
  if (x.shape.length !== 4 || x.dtype !== 'f32') throw new Error(`${op}: needs a float32 NHWC tensor, got ${x.dtype}${str(x.shape)}`);
  return x.shape;
}

function sameShapes(op: string, a: Sym, b: Sym): void {
  if (!sameNumbers(a.shape, b.shape)) throw new Error(`${op}: shapes ${str(a.shape)} and ${str(b.shape)} differ`);
}

function checkAffine(op: string, c: number, gamma: Sym, beta: Sym): void {
  if (!sameNumbers(gamma.shape, [c]) || !sameNumbers(beta.shape, [c])) throw new Error(`${op}: gamma ${str(gamma.shape)} / beta ${str(beta.shape)}, expected [${c}]`);
}

function explicitPad(pad: Padding, h: number, w: number, kh: number, kw: number, stride: number): [number, number, number, number] {
  if (typeof pad === 'string') {
    if (pad !== 'same' && pad !== 'valid') throw new Error(`conv2d: unknown padding ${String(pad)}`);
    return [...padFor(pad, h, kh, stride), ...padFor(pad, w, kw, stride)];
  }
  if (pad.length !== 4 || !pad.every((p) => Number.isInteger(p) && p >= 0)) throw new Error(`conv2d: bad padding ${JSON.stringify(pad)}`);
  return [pad[0], pad[1], pad[2], pad[3]];
}

/** A recorded call of a model function: its result and the node range [start, end) it made. */
export interface Recording<R> {
  value: R;
  start: number;
  end: number;
}

/** What a replay gives: the call's result (recorded Syms) and the const data that differs from the recording. */
export type ReplayResult<R> =
  | { ok: true; value: R; consts: Map<number, ConstData> }
  | { ok: false; reason: string };

/** A checkpoint region: its function and input (GraphBuilder.checkpoint). */
export interface Region {
  fn: (x: Sym) => Sym;
  x: Sym;
}

/** Records a graph: Ops<Sym> that appends one node per op (and a few per convenience op). */
export class GraphBuilder extends SymOps {
  readonly graph: Graph = { nodes: [], outputs: {} };
  /** Backward semantics of straightThrough / stopGradient / clampWithGrad nodes. */
  readonly gradRules = new Map<number, GradRule>();
  /** syms[id] is the Sym of node id (replays hand out the recorded ones). */
  readonly syms: Sym[] = [];
  /** checkpoint regions, by their output's node id: autodiff recomputes them in the backward (see checkpoint). */
  readonly recomputable = new Map<number, Region>();
  private recomputing = false;
  private readonly zeroArrays = new Map<string, Float32Array>();

  /**
   * fn(x), noted as a region whose backward recomputes it (gradient checkpointing): autodiff runs fn again where the
   * region's gradient is needed and differentiates that copy, so the forward's intermediates are read only by the
   * forward and the plan's liveness frees them there. CompiledEngine passes checkpoint to the models only when asked
   * to trade that recomputation for memory.
   */
  override checkpoint(fn: (x: Sym) => Sym, x: Sym): Sym {
    const y = fn(x);
    if (!this.recomputing && y.id > x.id) this.recomputable.set(y.id, { fn, x });
    return y;
  }

  /** A region's function run again on its input (new nodes; checkpoints inside it are not noted again). */
  recompute(region: Region): Sym {
    this.recomputing = true;
    try {
      return region.fn(region.x);
    } finally {
      this.recomputing = false;
    }
  }

  /** A graph input (fed every run), e.g. the latent z. */
  input(name: string, shape: number[], dtype: DType = 'f32'): Sym {
    checkShape('input', shape);
    if (this.graph.nodes.some((n) => n.op === 'input' && (n.attrs as Attrs['input']).name === name)) throw new Error(`input: '${name}' exists`);
    return this.emit('input', [], { name }, shape.slice(), dtype);
  }

  output(name: string, x: Sym): void {
    this.own(x, 'output');
    this.graph.outputs[name] = x.id;
  }

  /** Runs fn on this builder and notes which nodes it made (for replay). */
  record<R>(fn: (o: Ops<Sym>) => R): Recording<R> {
    const start = this.graph.nodes.length;
    const value = fn(this);
    return { value, start, end: this.graph.nodes.length };
  }

  /**
   * Runs fn again against a recording: every node it makes must equal the recorded one, in order. On success the
   * graph's const nodes take the new data (consts lists those whose data changed); on a mismatch nothing changes.
   */
  replay<R>(rec: Recording<unknown>, fn: (o: Ops<Sym>) => R): ReplayResult<R> {
    const r = new ReplayOps(this, rec.start, rec.end);
    let value: R;
    try {
      value = fn(r);
      r.finish();
    } catch (err) {
      if (err instanceof StructureChanged) return { ok: false, reason: err.message };
      throw err;
    }
    for (const [id, data] of r.consts) (this.graph.nodes[id].attrs as Attrs['const']).data = data;
    return { ok: true, value, consts: r.consts };
  }

  /** Throws unless x is a node of this graph (Syms of another builder would silently alias ids). */
  own(x: Sym, op: string): void {
    if (this.syms[x.id] !== x) throw new Error(`${op}: tensor %${x.id} does not belong to this graph`);
  }

  protected zeroData(shape: number[]): Float32Array {
    const key = shape.join(',');
    let z = this.zeroArrays.get(key);
    if (!z) this.zeroArrays.set(key, (z = new Float32Array(sizeOf(shape))));
    return z;
  }

  protected emit<K extends OpName>(op: K, inputs: Sym[], attrs: Attrs[K], shape: number[], dtype: DType, rule?: GradRule): Sym {
    for (const i of inputs) this.own(i, op);
    const id = this.graph.nodes.length;
    this.graph.nodes.push({ id, op, inputs: inputs.map((i) => i.id), attrs, shape, dtype });
    const s: Sym = { id, shape, dtype };
    this.syms.push(s);
    if (rule) this.gradRules.set(id, rule);
    return s;
  }

  /** The node of a const array (for ReplayOps). */
  constOf(data: ConstData): Sym | undefined {
    return this.knownConst(data);
  }

  /** zeroData for ReplayOps: the arrays the recording used. */
  zerosOf(shape: number[]): Float32Array {
    return this.zeroData(shape);
  }
}

/** Thrown inside a replay when a node differs from the recording. */
export class StructureChanged extends Error {}

// Small constants (scalars, normalisation vectors) are made anew by each call of a model function; comparing their
// values is cheaper than re-uploading them every step. Larger arrays count as changed when they are new arrays.
const COMPARE_VALUES_UP_TO = 256;

class ReplayOps extends SymOps {
  private cursor: number;
  readonly consts = new Map<number, ConstData>();

  constructor(
    private readonly b: GraphBuilder,
    private readonly start: number,
    private readonly end: number,
  ) {
    super();
    this.cursor = start;
  }

  protected zeroData(shape: number[]): Float32Array {
    return this.b.zerosOf(shape);
  }

  // Arrays the recording had already made into nodes before the call (the recording deduped them) are those nodes.
  protected override knownConst(data: ConstData): Sym | undefined {
    const before = this.b.constOf(data);
    return super.knownConst(data) ?? (before && before.id < this.start ? before : undefined);
  }

  protected emit<K extends OpName>(op: K, inputs: Sym[], attrs: Attrs[K], shape: number[], dtype: DType, rule?: GradRule): Sym {
    const g = this.b.graph;
    const id = this.cursor;
    // Checked in order of cheapness; the message is only built on a mismatch.
    if (id >= this.end) throw this.mismatch(id, `an extra ${op} node`);
    const n = g.nodes[id];
    if (n.op !== op) throw this.mismatch(id, `${op} instead of ${n.op}`);
    if (n.dtype !== dtype || !sameNumbers(n.shape, shape)) throw this.mismatch(id, `${op} gives ${dtype}${str(shape)}`);
    if (n.inputs.length !== inputs.length) throw this.mismatch(id, `${inputs.length} inputs`);
    for (let i = 0; i < inputs.length; i++) {
      if (n.inputs[i] !== inputs[i].id || this.b.syms[inputs[i].id] !== inputs[i]) throw this.mismatch(id, `input ${i} is %${inputs[i].id}`);
    }
    if (!sameRule(this.b.gradRules.get(id), rule)) throw this.mismatch(id, `gradient rule ${JSON.stringify(rule)}`);
    if (op === 'const') {
      const data = (attrs as Attrs['const']).data;
      const old = (n.attrs as Attrs['const']).data;
      if (data.constructor !== old.constructor) throw this.mismatch(id, 'const of another type');
      if (data !== old && (data.length > COMPARE_VALUES_UP_TO || !sameNumbers(data, old))) this.consts.set(id, data);
    } else if (!sameValue(n.attrs, attrs)) {
      throw this.mismatch(id, `attrs ${JSON.stringify(attrs)}`);
    }
    this.cursor++;
    return this.b.syms[id];
  }

  private mismatch(id: number, why: string): StructureChanged {
    const g = this.b.graph;
    return new StructureChanged(`structure changed at node %${id}: ${why}; recorded ${id < this.end ? describeNode(g, g.nodes[id]) : '(end of the call)'}`);
  }

  finish(): void {
    if (this.cursor !== this.end) {
      const n = this.b.graph.nodes[this.cursor];
      throw new StructureChanged(`structure changed: the call ended before node %${this.cursor} (${describeNode(this.b.graph, n)})`);
    }
  }
}

function sameRule(a: GradRule | undefined, b: GradRule | undefined): boolean {
  if (!a || !b) return a === b;
  return a.kind === b.kind && (a.kind !== 'straightThrough' || a.target === (b as { target: number }).target);
}

/** Structural equality of attrs (numbers, strings, booleans, arrays and plain objects of them). */
function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameValue(a[i], b[i])) return false;
    return true;
  }
  const ra = a as Record<string, unknown>;
  const rb = b as Record<string, unknown>;
  for (const k in ra) if (!sameValue(ra[k], rb[k])) return false;
  for (const k in rb) if (!(k in ra) && rb[k] !== undefined) return false;
  return true;
}
