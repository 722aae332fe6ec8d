// Reductions: sum and max over any axes, argmin/argmax along one axis (first index on ties), softmax over the last
// axis and its gradient.
//
// Axes are first normalised: size-1 dimensions dropped, neighbours of the same kind (reduced or kept) merged. The
// common results of that are the fast paths:
//   [rows, R]         (the last axes reduced): one workgroup per row, strided loads then a tree in workgroup memory
//                     (rows shorter than 64: one invocation per row; a few very long rows, e.g. a loss summed over
//                     a whole tensor: chunks of 4096 per workgroup, then the partials);
//   [outer, R, inner] (leading or middle axes): one invocation per output, reading coalesced along inner; when there
//                     are few outputs for a long R, R is first cut into chunks of 256 (partials in a scratch buffer);
//   anything else:    one invocation per output looping over every reduced element.
// Summation order therefore differs from a sequential loop: results agree to float32 rounding, not bitwise.
import type { KernelLimits, KernelNode, Lowered, Lowerings, Dispatch } from '../kernel.ts';
import { buffer, kernel1d, kernelPerGroup, prod, stridedOffsets, strides, u32Literal } from './common.ts';

type Reducer = 'sum' | 'max' | 'argmin' | 'argmax';

/** Rows at least this long get a workgroup each. */
const TREE_MIN = 64;
/** A long reduction with fewer outputs than this is cut into chunks first, so that enough invocations share it. */
const SPLIT_OUTPUTS = 8192;
const CHUNK = 256;

/** Size-1 axes dropped, neighbours of the same kind merged: sizes and which are reduced. */
export function groupAxes(shape: readonly number[], axes: readonly number[]): { sizes: number[]; reduced: boolean[] } {
  const sizes: number[] = [];
  const reduced: boolean[] = [];
  shape.forEach((n, k) => {
    if (n === 1) return;
    const r = axes.includes(k);
    if (reduced.length > 0 && reduced[reduced.length - 1] === r) sizes[sizes.length - 1] *= n;
    else {
      sizes.push(n);
      reduced.push(r);
    }
  });
  return { sizes, reduced };
}

const isArg = (op: Reducer): boolean => op === 'argmin' || op === 'argmax';

/** WGSL statements folding value `v` (at reduction index `r`) into `acc` (and `ai` for arg reductions). */
function fold(op: Reducer, v: string, r: string): string {
  switch (op) {
    case 'sum': return `acc = acc + ${v};`;
    case 'max': return `acc = max(acc, ${v});`;
    // Strict comparisons: a later equal value never replaces an earlier one (first index on ties).
    case 'argmin': return `let v_ = ${v}; if (v_ < acc) { acc = v_; ai = ${r}; }`;
    case 'argmax': return `let v_ = ${v}; if (v_ > acc) { acc = v_; ai = ${r}; }`;
  }
}

/** Workgroup-memory tree over `size` partials (acc, ai) of invocation t; leaves the result in sv[0] (si[0]). */
function tree(op: Reducer, size: number): string {
  let merge: string;
  if (op === 'sum') merge = 'sv[t] = sv[t] + sv[t + s];';
  else if (op === 'max') merge = 'sv[t] = max(sv[t], sv[t + s]);';
  else {
    // Partials of lower invocations hold lower indices only within a stride: compare indices explicitly on ties.
    const better = op === 'argmin' ? '<' : '>';
    merge = `let bv = sv[t + s]; let bi = si[t + s];
      if (bv ${better} sv[t] || (bv == sv[t] && bi < si[t])) { sv[t] = bv; si[t] = bi; }`;
  }
  return `  sv[t] = acc;${isArg(op) ? '\n  si[t] = ai;' : ''}
  workgroupBarrier();
  for (var s = ${size / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) {
      ${merge}
    }
    workgroupBarrier();
  }`;
}

const treeSize = (r: number): number => (r >= 256 ? 256 : 64);

function treeDecls(op: Reducer, size: number): string {
  return `var<workgroup> sv: array<f32, ${size}>;${isArg(op) ? `\nvar<workgroup> si: array<i32, ${size}>;` : ''}`;
}

/**
 * [rows, R] -> [rows, ceil(R / chunk)]: one workgroup per chunk of a row (chunk = R: per row). Invocations past the
 * end of a short chunk start from its last element: harmless for max and arg (ties keep the lower index), and sum
 * starts from 0 instead.
 */
function rowTree(op: Reducer, rows: number, r: number, chunk: number, bindings: Dispatch['bindings'], limits: KernelLimits, label: string): Dispatch {
  const size = treeSize(Math.min(r, chunk));
  const chunks = Math.ceil(r / chunk);
  const outType = isArg(op) ? 'i32' : 'f32';
  const decls = `${buffer(0, 'x', 'f32')}\n${buffer(1, 'y', outType, true)}\n${treeDecls(op, size)}`;
  const body = `  let c = g % ${u32Literal(chunks)};
  let k0 = c * ${u32Literal(chunk)};
  let base = (g / ${u32Literal(chunks)}) * ${u32Literal(r)};
  let k1 = min(k0 + ${u32Literal(chunk)}, ${u32Literal(r)});
  let first = min(k0 + t, k1 - 1u);
  var acc = ${op === 'sum' ? '0.0' : 'x[base + first]'};
  var ai = i32(first);
  for (var k = k0 + t${op === 'sum' ? '' : ` + ${size}u`}; k < k1; k = k + ${size}u) {
    ${fold(op, 'x[base + k]', 'i32(k)')}
  }
${tree(op, size)}
  if (t == 0u) { y[g] = ${isArg(op) ? 'si[0]' : 'sv[0]'}; }`;
  const k = kernelPerGroup(decls, rows * chunks, size, body, limits);
  return { ...k, bindings, label };
}

/**
 * [outer, R, inner] -> [outer, ceil(R / chunk), inner]: invocation (o, c, j) reduces r in [c * chunk, (c + 1) * chunk)
 * sequentially (chunk = R: a plain reduction). `src`/`dst` say where the data lives.
 */
function columns(
  op: Reducer,
  [outer, r, inner]: [number, number, number],
  chunk: number,
  bindings: Dispatch['bindings'],
  limits: KernelLimits,
  label: string,
): Dispatch {
  const chunks = Math.ceil(r / chunk);
  const outType = isArg(op) ? 'i32' : 'f32';
  const decls = `${buffer(0, 'x', 'f32')}\n${buffer(1, 'y', outType, true)}`;
  const body = `  let j = i % ${u32Literal(inner)};
  let q = i / ${u32Literal(inner)};
  let c = q % ${u32Literal(chunks)};
  let o = q / ${u32Literal(chunks)};
  let base = o * ${u32Literal(r * inner)} + j;
  let r0 = c * ${u32Literal(chunk)};
  let r1 = min(r0 + ${u32Literal(chunk)}, ${u32Literal(r)});
  var acc = x[base + r0 * ${u32Literal(inner)}];
  var ai = i32(r0);
  for (var k = r0 + 1u; k < r1; k = k + 1u) {
    ${fold(op, `x[base + k * ${u32Literal(inner)}]`, 'i32(k)')}
  }
  y[i] = ${isArg(op) ? 'ai' : 'acc'};`;
  return { ...kernel1d(decls, outer * chunks * inner, body, limits), bindings, label };
}

/** Thread per output over arbitrary kept/reduced groups (strides of the merged input shape). */
function general(op: 'sum' | 'max', sizes: number[], reduced: boolean[], limits: KernelLimits, label: string): Dispatch {
  const s = strides(sizes);
  const kept = sizes.map((_, k) => k).filter((k) => !reduced[k]);
  const red = sizes.map((_, k) => k).filter((k) => reduced[k]);
  const decls = `${buffer(0, 'x', 'f32')}\n${buffer(1, 'y', 'f32', true)}`;
  const total = prod(red.map((k) => sizes[k]));
  const body = `${stridedOffsets('i', kept.map((k) => sizes[k]), [{ name: 'base', strides: kept.map((k) => s[k]) }], 'o')}
  var acc = x[base];
  for (var q = 1u; q < ${u32Literal(total)}; q = q + 1u) {
  ${stridedOffsets('q', red.map((k) => sizes[k]), [{ name: 'off', strides: red.map((k) => s[k]) }], 'r')}
    ${fold(op, 'x[base + off]', '')}
  }
  y[i] = acc;`;
  return { ...kernel1d(decls, prod(kept.map((k) => sizes[k])), body, limits), bindings: [{ input: 0 }, { output: true }], label };
}

/** Rows longer than this, when there are few of them, are cut into chunks of ROW_CHUNK for more workgroups. */
const ROW_SPLIT = 8192;
const ROW_CHUNK = 4096;

/** The dispatches of a reduction of `x` [outer, R, inner] (already normalised). */
function threeAxis(op: Reducer, outer: number, r: number, inner: number, limits: KernelLimits, label: string): Lowered {
  const io: Dispatch['bindings'] = [{ input: 0 }, { output: true }];
  if (inner === 1 && r >= TREE_MIN) {
    if (isArg(op) || r <= ROW_SPLIT || outer >= SPLIT_OUTPUTS / 8) return { dispatches: [rowTree(op, outer, r, r, io, limits, label)] };
    // Partials per chunk [outer, chunks], then a reduction of those (a tree when there are many).
    const chunks = Math.ceil(r / ROW_CHUNK);
    const second: Dispatch =
      chunks >= TREE_MIN
        ? rowTree(op, outer, chunks, chunks, [{ scratch: 0 }, { output: true }], limits, `${label} (partials)`)
        : columns(op, [outer, chunks, 1], chunks, [{ scratch: 0 }, { output: true }], limits, `${label} (partials)`);
    return {
      dispatches: [rowTree(op, outer, r, ROW_CHUNK, [{ input: 0 }, { scratch: 0 }], limits, `${label} (chunks of ${ROW_CHUNK})`), second],
      scratch: [outer * chunks * 4],
    };
  }
  if (isArg(op) || outer * inner >= SPLIT_OUTPUTS || r <= 2 * CHUNK) {
    return { dispatches: [columns(op, [outer, r, inner], r, io, limits, label)] };
  }
  const chunks = Math.ceil(r / CHUNK);
  return {
    dispatches: [
      columns(op, [outer, r, inner], CHUNK, [{ input: 0 }, { scratch: 0 }], limits, `${label} (chunks of ${CHUNK})`),
      columns(op, [outer, chunks, inner], chunks, [{ scratch: 0 }, { output: true }], limits, `${label} (partials)`),
    ],
    scratch: [outer * chunks * inner * 4],
  };
}

function lowerSumMax(op: 'sum' | 'max') {
  return (node: KernelNode<'sum' | 'max'>, limits: KernelLimits): Lowered => {
    const shape = node.inputs[0].shape;
    const { sizes, reduced } = groupAxes(shape, node.attrs.axes);
    const label = `${op} [${shape}] axes [${node.attrs.axes}]`;
    if (!reduced.includes(true)) return { dispatches: [], alias: 0 }; // only size-1 axes: the same values
    const runs = reduced.filter((v) => v).length;
    if (runs === 1) {
      const at = reduced.indexOf(true);
      return threeAxis(op, prod(sizes, 0, at), sizes[at], prod(sizes, at + 1), limits, label);
    }
    return { dispatches: [general(op, sizes, reduced, limits, label)] };
  };
}

function lowerArg(op: 'argmin' | 'argmax') {
  return (node: KernelNode<'argmin' | 'argmax'>, limits: KernelLimits): Lowered => {
    const shape = node.inputs[0].shape;
    const axis = node.attrs.axis < 0 ? node.attrs.axis + shape.length : node.attrs.axis;
    const label = `${op} [${shape}] axis ${axis}`;
    return threeAxis(op, prod(shape, 0, axis), shape[axis], prod(shape, axis + 1), limits, label);
  };
}

/**
 * Softmax (inputs x) or its gradient (inputs y, dy) over rows of length R: a workgroup per row with tree reductions,
 * or one invocation per row for short rows. Softmax subtracts the row max before exp (no overflow).
 */
function lowerSoftmaxLike(grad: boolean) {
  return (node: KernelNode<'softmax' | 'softmaxGrad'>, limits: KernelLimits): Lowered => {
    const shape = node.inputs[0].shape;
    const r = shape[shape.length - 1];
    const rows = prod(shape, 0, shape.length - 1);
    const label = `${grad ? 'softmaxGrad' : 'softmax'} [${shape}]`;
    const ins = grad ? `${buffer(0, 'y', 'f32')}\n${buffer(1, 'dy', 'f32')}\n${buffer(2, 'dx', 'f32', true)}` : `${buffer(0, 'x', 'f32')}\n${buffer(1, 'y', 'f32', true)}`;
    const bindings: Dispatch['bindings'] = grad ? [{ input: 0 }, { input: 1 }, { output: true }] : [{ input: 0 }, { output: true }];
    const R = u32Literal(r);
    if (r < TREE_MIN) {
      // One invocation per row.
      const body = grad
        ? `  let base = i * ${R};
  var acc = 0.0;
  for (var k = 0u; k < ${R}; k = k + 1u) { acc = acc + dy[base + k] * y[base + k]; }
  for (var k = 0u; k < ${R}; k = k + 1u) { dx[base + k] = y[base + k] * (dy[base + k] - acc); }`
        : `  let base = i * ${R};
  var m = x[base];
  for (var k = 1u; k < ${R}; k = k + 1u) { m = max(m, x[base + k]); }
  var acc = 0.0;
  for (var k = 0u; k < ${R}; k = k + 1u) { acc = acc + exp(x[base + k] - m); }
  for (var k = 0u; k < ${R}; k = k + 1u) { y[base + k] = exp(x[base + k] - m) / acc; }`;
      return { dispatches: [{ ...kernel1d(ins, rows, body, limits), bindings, label }] };
    }
    const size = treeSize(r);
    const strided = (stmt: string) => `  for (var k = t; k < ${R}; k = k + ${size}u) { ${stmt} }`;
    const body = grad
      ? `  let base = g * ${R};
  var acc = 0.0;
${strided('acc = acc + dy[base + k] * y[base + k];')}
${tree('sum', size)}
  let dot = sv[0];
${strided('dx[base + k] = y[base + k] * (dy[base + k] - dot);')}`
      : `  let base = g * ${R};
  var acc = x[base + t];
${strided('acc = max(acc, x[base + k]);')}
${tree('max', size)}
  let m = sv[0];
  workgroupBarrier(); // everyone has read sv[0] before the next tree overwrites it
  acc = 0.0;
${strided('acc = acc + exp(x[base + k] - m);')}
${tree('sum', size)}
  let total = sv[0];
${strided('y[base + k] = exp(x[base + k] - m) / total;')}`;
    const k = kernelPerGroup(`${ins}\n${treeDecls('sum', size)}`, rows, size, body, limits);
    return { dispatches: [{ ...k, bindings, label }] };
  };
}

export const lowerings: Lowerings = {
  sum: lowerSumMax('sum'),
  max: lowerSumMax('max'),
  argmin: lowerArg('argmin'),
  argmax: lowerArg('argmax'),
  softmax: lowerSoftmaxLike(false),
  softmaxGrad: lowerSoftmaxLike(true),
};
