// Elementwise kernels: `unary` (every UnaryFn), `binary` (every BinaryFn, numpy broadcasting) and `cast` (f32 -> i32).
//
// The WGSL of each function is an expression over named operands (unaryExpr / binaryExpr) plus a few helper
// functions (ELEMENTWISE_HELPERS), so that a fusion pass can compose chains into one kernel. Broadcasting indexes each
// operand as `(i / inner) % size` whenever its non-trivial dimensions form one contiguous block of the output's (same
// shape, scalar, trailing vector, per-row scalar...), and falls back to per-dimension strides otherwise.
import type { Attrs, BinaryFn, UnaryFn } from '../../graph/ir.ts';
import { f32Literal, type KernelNode, type Lowered, type KernelLimits, type Lowerings } from '../kernel.ts';
import { buffer, kernel1d, prod, stridedOffsets, strides, u32Literal } from './common.ts';

/**
 * Helper functions the expressions may call. erf is Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the formula the
 * tfjs cpu and webgpu backends use, so gelu matches the reference to float32 rounding. asin is Cephes' asinf: the
 * builtin is off by 2e-4 on the software adapter (GLSL's asin on llvmpipe); |x| > 1 gives NaN through the sqrt.
 */
export const ELEMENTWISE_HELPERS = `
fn sigmoid_(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
fn asin_(x: f32) -> f32 {
  let a = abs(x);
  let big = a > 0.5;
  let z = select(a * a, 0.5 * (1.0 - a), big);
  let s = select(a, sqrt(z), big);
  let r = ((((4.2163199048e-2 * z + 2.4181311049e-2) * z + 4.5470025998e-2) * z + 7.4953002686e-2) * z + 1.6666752422e-1) * z * s + s;
  let y = select(r, 1.5707963267948966 - 2.0 * r, big);
  return select(-y, y, x >= 0.0);
}
fn erf_(x: f32) -> f32 {
  let v = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * v);
  let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-v * v);
  return select(-y, y, x >= 0.0);
}
fn swish_grad_(x: f32, dy: f32) -> f32 { let s = sigmoid_(x); return dy * (s + x * s * (1.0 - s)); }
fn gelu_grad_(x: f32, dy: f32) -> f32 {
  let cdf = 0.5 * (1.0 + erf_(x * 0.70710678118654752));
  let pdf = 0.3989422804014327 * exp(-0.5 * x * x);
  return dy * (cdf + x * pdf);
}
fn quick_gelu_grad_(x: f32, dy: f32) -> f32 { let s = sigmoid_(1.702 * x); return dy * (s + 1.702 * x * s * (1.0 - s)); }
`;

const bound = (v: number | undefined, what: string): string => {
  if (v === undefined) throw new Error(`missing ${what}`);
  return f32Literal(v);
};

/** The WGSL f32 expression of `fn` applied to the expression `x` (parenthesised operands are the caller's job). */
export function unaryExpr(fn: UnaryFn, x: string, attrs: Pick<Attrs['unary'], 's' | 'lo' | 'hi'> = {}): string {
  switch (fn) {
    case 'copy': return x;
    case 'neg': return `(-${x})`;
    case 'exp': return `exp(${x})`;
    case 'log': return `log(${x})`;
    case 'sqrt': return `sqrt(${x})`;
    case 'rsqrt': return `inverseSqrt(${x})`;
    case 'square': return `(${x} * ${x})`;
    case 'abs': return `abs(${x})`;
    case 'sign': return `sign(${x})`;
    case 'asin': return `asin_(${x})`;
    case 'sigmoid': return `sigmoid_(${x})`;
    case 'swish': return `(${x} * sigmoid_(${x}))`;
    case 'gelu': return `(0.5 * ${x} * (1.0 + erf_(${x} * 0.70710678118654752)))`;
    case 'quickGelu': return `(${x} * sigmoid_(1.702 * ${x}))`;
    case 'scale': return `(${x} * ${bound(attrs.s, 'scale s')})`;
    case 'addScalar': return `(${x} + ${bound(attrs.s, 'addScalar s')})`;
    // min(max()) rather than clamp(): WGSL's clamp is undefined when lo > hi; this matches tf.clipByValue's order.
    case 'clamp': return `min(max(${x}, ${bound(attrs.lo, 'clamp lo')}), ${bound(attrs.hi, 'clamp hi')})`;
    case 'recip': return `(1.0 / ${x})`;
    case 'floor': return `floor(${x})`;
  }
}

/** The WGSL f32 expression of `fn` over the expressions `a` and `b` (for the *Grad fns: a = x, b = dy). */
export function binaryExpr(fn: BinaryFn, a: string, b: string, attrs: Pick<Attrs['binary'], 'lo' | 'hi'> = {}): string {
  switch (fn) {
    case 'add': return `(${a} + ${b})`;
    case 'sub': return `(${a} - ${b})`;
    case 'mul': return `(${a} * ${b})`;
    case 'div': return `(${a} / ${b})`;
    case 'maximum': return `max(${a}, ${b})`;
    case 'minimum': return `min(${a}, ${b})`;
    case 'greaterEqual': return `select(0.0, 1.0, ${a} >= ${b})`;
    case 'greater': return `select(0.0, 1.0, ${a} > ${b})`;
    case 'swishGrad': return `swish_grad_(${a}, ${b})`;
    case 'geluGrad': return `gelu_grad_(${a}, ${b})`;
    case 'quickGeluGrad': return `quick_gelu_grad_(${a}, ${b})`;
    case 'clampGrad': {
      const lo = bound(attrs.lo, 'clampGrad lo');
      const hi = bound(attrs.hi, 'clampGrad hi');
      return `select(0.0, ${b}, ${a} >= ${lo} && ${a} <= ${hi})`;
    }
    case 'clampWithGradGrad': {
      const lo = bound(attrs.lo, 'clampWithGradGrad lo');
      const hi = bound(attrs.hi, 'clampWithGradGrad hi');
      return `select(0.0, ${b}, (${a} >= ${lo} && ${a} <= ${hi}) || (${a} < ${lo} && ${b} < 0.0) || (${a} > ${hi} && ${b} > 0.0))`;
    }
    case 'asinGrad': return `(${b} / sqrt(1.0 - ${a} * ${a}))`;
  }
}

/**
 * How to read an operand of shape `shape` (broadcast to `out`) at the flat output index `i`: a WGSL u32 expression
 * when its non-trivial dimensions form one contiguous block of the output's, else undefined (use strides).
 */
export function broadcastIndex(shape: readonly number[], out: readonly number[], i = 'i'): string | undefined {
  const size = prod(shape);
  if (size === prod(out)) return i;
  if (size === 1) return '0u';
  const aligned = [...new Array<number>(out.length - shape.length).fill(1), ...shape];
  const kept = aligned.map((d, k) => d !== 1 || out[k] === 1);
  const first = kept.findIndex((v, k) => v && out[k] !== 1);
  let last = first;
  for (let k = first; k < out.length; k++) if (aligned[k] !== 1 && out[k] !== 1) last = k;
  for (let k = first; k <= last; k++) if (!kept[k]) return undefined;
  const inner = prod(out, last + 1);
  const idx = inner === 1 ? i : `(${i} / ${u32Literal(inner)})`;
  return prod(out, 0, first) === 1 ? idx : `${idx} % ${u32Literal(size)}`;
}

/** Strides of `shape` broadcast to `out`, per output dimension (0 where broadcast). */
export function broadcastStrides(shape: readonly number[], out: readonly number[]): number[] {
  const s = strides(shape);
  const lead = out.length - shape.length;
  return out.map((d, k) => (k < lead || shape[k - lead] === 1 ? 0 : s[k - lead]));
}

function checkF32(node: KernelNode): void {
  if (node.output.dtype !== 'f32' || node.inputs.some((t) => t.dtype !== 'f32')) {
    throw new Error(`${node.op}: f32 tensors only (got ${node.inputs.map((t) => t.dtype).join(', ')} -> ${node.output.dtype})`);
  }
}

function lowerUnary(node: KernelNode<'unary'>, limits: KernelLimits): Lowered {
  const { fn } = node.attrs;
  if (fn === 'copy') return { dispatches: [], alias: 0 };
  checkF32(node);
  const count = prod(node.output.shape);
  const decls = `${buffer(0, 'x', 'f32')}\n${buffer(1, 'y', 'f32', true)}\n${ELEMENTWISE_HELPERS}`;
  const k = kernel1d(decls, count, `  let v = x[i];\n  y[i] = ${unaryExpr(fn, 'v', node.attrs)};`, limits);
  return { dispatches: [{ ...k, bindings: [{ input: 0 }, { output: true }], label: `unary ${fn} [${node.output.shape}]` }] };
}

function lowerBinary(node: KernelNode<'binary'>, limits: KernelLimits): Lowered {
  checkF32(node);
  const out = node.output.shape;
  const [sa, sb] = node.inputs.map((t) => t.shape);
  const count = prod(out);
  let ia = broadcastIndex(sa, out);
  let ib = broadcastIndex(sb, out);
  let prologue = '';
  if (ia === undefined || ib === undefined) {
    const operands = [];
    if (ia === undefined) operands.push({ name: 'ia', strides: broadcastStrides(sa, out) });
    if (ib === undefined) operands.push({ name: 'ib', strides: broadcastStrides(sb, out) });
    prologue = stridedOffsets('i', out, operands) + '\n';
    ia ??= 'ia';
    ib ??= 'ib';
  }
  const decls = `${buffer(0, 'a', 'f32')}\n${buffer(1, 'b', 'f32')}\n${buffer(2, 'y', 'f32', true)}\n${ELEMENTWISE_HELPERS}`;
  const body = `${prologue}  let va = a[${ia}];\n  let vb = b[${ib}];\n  y[i] = ${binaryExpr(node.attrs.fn, 'va', 'vb', node.attrs)};`;
  const k = kernel1d(decls, count, body, limits);
  const label = `binary ${node.attrs.fn} [${sa}] [${sb}] -> [${out}]`;
  return { dispatches: [{ ...k, bindings: [{ input: 0 }, { input: 1 }, { output: true }], label }] };
}

/** f32 -> i32 by WGSL's conversion: truncation toward zero, as tf.cast (values outside int32 are the caller's error). */
function lowerCast(node: KernelNode<'cast'>, limits: KernelLimits): Lowered {
  const from = node.inputs[0].dtype;
  const { to } = node.attrs;
  if (from !== 'f32' || to !== 'i32' || node.output.dtype !== 'i32') throw new Error(`cast: only f32 -> i32 (got ${from} -> ${to})`);
  const decls = `${buffer(0, 'x', 'f32')}\n${buffer(1, 'y', 'i32', true)}`;
  const k = kernel1d(decls, prod(node.output.shape), '  y[i] = i32(x[i]);', limits);
  return { dispatches: [{ ...k, bindings: [{ input: 0 }, { output: true }], label: `cast f32->i32 [${node.output.shape}]` }] };
}

export const lowerings: Lowerings = { unary: lowerUnary, binary: lowerBinary, cast: lowerCast };
