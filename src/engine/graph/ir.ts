// The graph a compiled executor plans: nodes in topological (creation) order, each with a static shape.
// A tracer (trace.ts) records it by running a model function on `Ops<Sym>`; autodiff (autodiff.ts) appends the
// backward as more nodes of the same kinds; an interpreter (interpret.ts) runs it on any Ops<T> (the tfjs reference);
// the WebGPU planner lowers each node to WGSL dispatches (src/engine/wgsl).
//
// Layout conventions are those of ops.ts: NHWC, HWIO conv weights, attention on [B, heads, T, D]. Shapes are fully
// static; scalars have shape []. Node kinds are few on purpose: ops.ts's convenience ops become these when traced
// (linear = reshape + matmul + add, scale/addScalar/neg/exp/... = unary, attention = matmul/softmax/matmul), and the
// backward needs only a handful of dedicated kinds (*Grad) that no forward composition expresses cheaply.

export type DType = 'f32' | 'i32';

/** Elementwise functions of one tensor. `s` = scale/addScalar/pow parameter; `lo`/`hi` = clamp bounds. */
export type UnaryFn =
  | 'copy' // identity (also what straightThrough/stopGradient lower to in the forward)
  | 'neg'
  | 'exp'
  | 'log'
  | 'sqrt'
  | 'rsqrt'
  | 'square'
  | 'abs'
  | 'sign'
  | 'asin'
  | 'sigmoid'
  | 'swish'
  | 'gelu' // exact erf GELU
  | 'quickGelu' // x * sigmoid(1.702 x)
  | 'scale' // x * s
  | 'addScalar' // x + s
  | 'clamp' // min(max(x, lo), hi)
  | 'recip' // 1 / x
  | 'floor'; // largest integer <= x (gradient zero)

/**
 * Elementwise functions of two tensors with numpy broadcasting (shapes aligned at the end).
 * The *Grad functions take (x, dy) and give dL/dx for the forward function of the same name:
 *   swishGrad(x, dy)      = dy * (s + x s (1 - s)), s = sigmoid(x)
 *   geluGrad(x, dy)       = dy * (Phi(x) + x phi(x))
 *   quickGeluGrad(x, dy)  = dy * (s + 1.702 x s (1 - s)), s = sigmoid(1.702 x)
 *   clampGrad(x, dy)      = dy where lo <= x <= hi, else 0                           (attrs lo, hi)
 *   clampWithGradGrad(x, dy) = dy where lo <= x <= hi, or x < lo and dy < 0, or x > hi and dy > 0 (descent points
 *                           back inside; ops.ts / generate.py ClampWithGrad), else 0  (attrs lo, hi)
 *   asinGrad(x, dy)       = dy / sqrt(1 - x^2)
 * Comparisons give 1 or 0: greaterEqual(a, b) = a >= b ? 1 : 0 (used for maximum/minimum gradients; ties go to a).
 */
export type BinaryFn =
  | 'add'
  | 'sub'
  | 'mul'
  | 'div'
  | 'maximum'
  | 'minimum'
  | 'greaterEqual'
  | 'greater'
  | 'swishGrad'
  | 'geluGrad'
  | 'quickGeluGrad'
  | 'clampGrad'
  | 'clampWithGradGrad'
  | 'asinGrad';

/** An operand of a fused step: input k of the fused node, or the value of an earlier step j. */
export type FusedArg = { input: number } | { step: number };

/**
 * One node of a fused group, as it was in the graph: its kind, attrs, operands and its own shape. A group has at most
 * one lead (a matmul, conv2d, conv2dGradInput or NormKind), whose operands are inputs of the fused node (the rest of the group
 * is its epilogue) or, for a matmul, transposes of inputs. A transpose is either such an operand (a view: the matmul
 * reads the input at permuted indices; its shape may be a reshape of the permuted shape, as the matmul's loads index
 * it flat) or the group's last step (the group's value stored at permuted indices).
 */
export type FusedStep =
  | { op: 'unary'; attrs: Attrs['unary']; args: [FusedArg]; shape: number[] }
  | { op: 'binary'; attrs: Attrs['binary']; args: [FusedArg, FusedArg]; shape: number[] }
  | { op: 'reshape'; args: [FusedArg]; shape: number[] }
  | { op: 'matmul'; attrs: Attrs['matmul']; args: [FusedArg, FusedArg]; shape: number[] }
  | { op: 'conv2d'; attrs: Attrs['conv2d']; args: FusedArg[]; shape: number[] } // x, w and the bias if any
  | { op: 'conv2dGradInput'; attrs: Attrs['conv2dGradInput']; args: [FusedArg, FusedArg]; shape: number[] }
  | { op: 'transpose'; attrs: Attrs['transpose']; args: [FusedArg]; shape: number[] }
  | { [K in NormKind]: { op: K; attrs: Attrs[K]; args: [FusedArg, FusedArg, FusedArg]; shape: number[] } }[NormKind];

/** The normalizations (and their gradients), which may also lead a fused group: inputs x, gamma, then beta or dy. */
export type NormKind = 'groupNorm' | 'layerNorm' | 'groupNormGrad' | 'layerNormGrad';

export interface Attrs {
  input: { name: string };
  /** Host data baked into the plan (weights, masks, fixed matrices); `data.length` = product of the shape. */
  const: { data: Float32Array | Int32Array };
  reshape: Record<string, never>; // target shape = node.shape
  transpose: { perm: number[] };
  concat: { axis: number };
  slice: { begin: number[] }; // size = node.shape
  pad: { paddings: [number, number][]; value: number };
  /** Repeats each pixel 2x2, NHWC. */
  upsample2x: Record<string, never>;
  /** NHWC resize to node.shape[1..2]. */
  resize: { mode: 'bilinear' | 'bicubic'; alignCorners: boolean };
  /** Gradient of resize: dy [B, h, w, C] -> dx [B, H, W, C] (node.shape), same attrs as the forward. */
  resizeGrad: { mode: 'bilinear' | 'bicubic'; alignCorners: boolean };
  unary: { fn: UnaryFn; s?: number; lo?: number; hi?: number };
  binary: { fn: BinaryFn; lo?: number; hi?: number };
  /** Sum over `axes` (sorted, non-empty). keepDims is reflected in node.shape. */
  sum: { axes: number[]; keepDims: boolean };
  /** Maximum over `axes` (for stable softmax / pooling). */
  max: { axes: number[]; keepDims: boolean };
  /** Index (i32) of the smallest value along `axis` (first one on ties, as torch.argmin / tf.argMin). */
  argmin: { axis: number };
  argmax: { axis: number };
  /** Softmax over the last axis. */
  softmax: Record<string, never>;
  /** Inputs (y = softmax output, dy): dx = y * (dy - sum(dy * y, last axis)). */
  softmaxGrad: Record<string, never>;
  /**
   * Batched matmul over the last two axes with broadcasting of the leading (batch) axes, as tf.matMul:
   * a [..., M, K] (or [..., K, M] if transposeA) x b [..., K, N] (or [..., N, K] if transposeB).
   */
  matmul: { transposeA: boolean; transposeB: boolean };
  /** Inputs x [B, H, W, Cin], w [kh, kw, Cin, Cout], optional bias [Cout]. pad = [top, bottom, left, right]. */
  conv2d: { stride: number; pad: [number, number, number, number] };
  /** Inputs dy [B, Ho, Wo, Cout], w [kh, kw, Cin, Cout] -> dx [B, H, W, Cin] = node.shape (the forward's x shape). */
  conv2dGradInput: { stride: number; pad: [number, number, number, number] };
  /** Inputs x [B, H, W, C], gamma [C], beta [C]; statistics over (H, W, C/groups), biased variance. */
  groupNorm: { groups: number; eps: number };
  /** Inputs x, gamma, dy -> dx (the input gradient only: weights never need gradients here). */
  groupNormGrad: { groups: number; eps: number };
  /** Inputs x [..., C], gamma [C], beta [C]; over the last axis. */
  layerNorm: { eps: number };
  /** Inputs x, gamma, dy -> dx. */
  layerNormGrad: { eps: number };
  /** Inputs table [N, D], indices i32 [M] -> [M, D]. */
  gatherRows: Record<string, never>;
  /** Inputs dy [M, D], indices i32 [M] -> [N, D] (node.shape): row sums of dy per index (scatter-add). */
  gatherRowsGrad: Record<string, never>;
  /** Inputs indices i32 [M] -> f32 [M, depth]. */
  oneHot: { depth: number };
  /**
   * Elementwise dtype conversion to `to` (= node.dtype). Only f32 -> i32 (Ops.toInt): truncation toward zero, for
   * integer values in int32 range (index arithmetic); anything else is undefined. Not differentiable.
   */
  cast: { to: DType };
  /**
   * Input seed i32 [2] -> f32 node.shape: standard normal samples, each a pure function of the seed and its row-major
   * index (the generator of src/engine/random.ts, where it is specified). Not differentiable.
   */
  randomNormal: Record<string, never>;
  /**
   * A group of elementwise nodes (unary, binary with broadcasting, reshapes between them; optionally after the matmul,
   * conv2d, conv2dGradInput or normalization that makes one of their operands; optionally transposed at the end) run as
   * one kernel. Made
   * by graph/fuse.ts for the planner only (tracing never makes one): `steps` are the group's nodes in their order,
   * with the same semantics as the nodes themselves; the node's value is the last step's (shape node.shape), or
   * with `output` that step's: then the last step's value is the value of the one `fusedOutput` node reading this one
   * (a group whose inner value is also needed elsewhere, e.g. a norm's output that swish reads in the forward and
   * swishGrad in the backward: one kernel stores both).
   */
  fused: { steps: FusedStep[]; output?: number };
  /**
   * Input: a fused node with `output` set. The value of that node's last step, stored by its kernel (no work of its
   * own). Made by graph/fuse.ts only.
   */
  fusedOutput: Record<string, never>;
}

export type OpName = keyof Attrs;

export interface Node<K extends OpName = OpName> {
  id: number;
  op: K;
  inputs: number[];
  attrs: Attrs[K];
  shape: number[];
  dtype: DType;
}

export interface Graph {
  /** Topological order: every input id is smaller than the node's id; nodes[i].id === i. */
  nodes: Node[];
  /** Named results (e.g. 'loss', 'grad', 'z'). */
  outputs: Record<string, number>;
}

export const sizeOf = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

export function nodeOf<K extends OpName>(g: Graph, id: number, op: K): Node<K> {
  const n = g.nodes[id];
  if (n.op !== op) throw new Error(`node ${id} is ${n.op}, not ${op}`);
  return n as Node<K>;
}

/** A one-line description of a node, for errors and dumps. */
export function describeNode(g: Graph, n: Node): string {
  const attrs = n.op === 'const' ? `${n.dtype}[${sizeOf(n.shape)}]` : JSON.stringify(n.attrs);
  const ins = n.inputs.map((i) => `%${i}[${g.nodes[i].shape.join(',')}]`).join(', ');
  return `%${n.id} = ${n.op}(${ins}) ${attrs} -> ${n.dtype}[${n.shape.join(',')}]`;
}
