// Layout kernels: reshape (an alias), transpose, slice, upsample2x (strided copies), pad, concat. Any dtype. A
// contiguous slice at an aligned offset is a view (an alias at that offset), no copy.
//
// transpose, slice and upsample2x are the same kernel: out[i] = in[base + sum_k c_k * stride_k] over a view of the
// output (upsample2x views [B, 2H, 2W, C] as [B, H, 2, W, 2, C] with stride 0 on the repeat axes). Output dimensions
// that are contiguous in the input are merged first, so e.g. a slice of whole rows is one flat offset copy.
import type { DType } from '../../graph/ir.ts';
import { f32Literal, type KernelLimits, type KernelNode, type Lowered, type Lowerings, type Dispatch } from '../kernel.ts';
import { buffer, kernel1d, prod, stridedOffsets, strides, u32Literal, wgslType } from './common.ts';

/** Drops size-1 dimensions and merges neighbours that are contiguous in the input (stride_k = stride_k+1 * size_k+1). */
export function mergeDims(shape: readonly number[], stride: readonly number[]): { shape: number[]; stride: number[] } {
  const out: { shape: number[]; stride: number[] } = { shape: [], stride: [] };
  shape.forEach((n, k) => {
    if (n === 1) return;
    const last = out.shape.length - 1;
    if (last >= 0 && out.stride[last] === stride[k] * n) {
      out.shape[last] *= n;
      out.stride[last] = stride[k];
    } else {
      out.shape.push(n);
      out.stride.push(stride[k]);
    }
  });
  return out;
}

/** out[i] = in[base + offset(view coordinates of i)] over `view` (whose row-major size is the output's). */
function stridedCopy(view: readonly number[], stride: readonly number[], base: number, dtype: DType, label: string, limits: KernelLimits): Dispatch {
  const m = mergeDims(view, stride);
  const type = wgslType(dtype);
  const decls = `${buffer(0, 'x', type)}\n${buffer(1, 'y', type, true)}`;
  const src = m.shape.length === 1 && m.stride[0] === 1 ? 'i' : 'o';
  const prologue = src === 'i' ? '' : stridedOffsets('i', m.shape, [{ name: 'o', strides: m.stride }]) + '\n';
  const at = base === 0 ? src : `${u32Literal(base)} + ${src}`;
  const k = kernel1d(decls, prod(view), `${prologue}  y[i] = x[${at}];`, limits);
  return { ...k, bindings: [{ input: 0 }, { output: true }], label };
}

function lowerTranspose(node: KernelNode<'transpose'>, limits: KernelLimits): Lowered {
  const { perm } = node.attrs;
  const shape = node.inputs[0].shape;
  const s = strides(shape);
  const m = mergeDims(perm.map((p) => shape[p]), perm.map((p) => s[p]));
  if (m.shape.length <= 1) return { dispatches: [], alias: 0 }; // only size-1 axes move: same bytes
  const label = `transpose [${shape}] perm [${perm}]`;
  return { dispatches: [stridedCopy(node.output.shape, perm.map((p) => s[p]), 0, node.output.dtype, label, limits)] };
}

function lowerSlice(node: KernelNode<'slice'>, limits: KernelLimits): Lowered {
  const { begin } = node.attrs;
  const shape = node.inputs[0].shape;
  const s = strides(shape);
  const base = begin.reduce((acc, b, k) => acc + b * s[k], 0);
  // A contiguous part (e.g. along the first axis) at an aligned offset is a view: no copy.
  const m = mergeDims(node.output.shape, s);
  const contiguous = m.shape.length === 0 || (m.shape.length === 1 && m.stride[0] === 1);
  if (contiguous && (base * 4) % limits.minOffsetAlignment === 0 && !node.inputs[0].storage) return { dispatches: [], alias: 0, aliasOffset: base * 4 };
  const label = `slice [${shape}] begin [${begin}] size [${node.output.shape}]`;
  return { dispatches: [stridedCopy(node.output.shape, s, base, node.output.dtype, label, limits)] };
}

function lowerUpsample2x(node: KernelNode<'upsample2x'>, limits: KernelLimits): Lowered {
  const [b, h, w, c] = node.inputs[0].shape;
  const label = `upsample2x [${b},${h},${w},${c}]`;
  return { dispatches: [stridedCopy([b, h, 2, w, 2, c], [h * w * c, w * c, 0, c, 0, 1], 0, node.output.dtype, label, limits)] };
}

function lowerPad(node: KernelNode<'pad'>, limits: KernelLimits): Lowered {
  const { paddings, value } = node.attrs;
  const inShape = node.inputs[0].shape;
  const out = node.output.shape;
  const type = wgslType(node.output.dtype);
  const fill = type === 'i32' ? `${Math.trunc(value)}i` : f32Literal(value);
  const s = strides(inShape);
  // Per output axis: its coordinate, the bounds check where there is padding, the input offset.
  const lines = ['  var r_ = i;', '  var inside = true;', '  var o = 0u;'];
  for (let k = out.length - 1; k >= 0; k--) {
    if (out[k] === 1 && inShape[k] === 1) continue;
    lines.push(`  let c${k}_ = r_ % ${u32Literal(out[k])}; r_ = r_ / ${u32Literal(out[k])};`);
    const [before] = paddings[k];
    if (before === 0 && inShape[k] === out[k]) {
      lines.push(`  o += c${k}_ * ${u32Literal(s[k])};`);
    } else {
      lines.push(`  inside = inside && c${k}_ >= ${u32Literal(before)} && c${k}_ < ${u32Literal(before + inShape[k])};`);
      lines.push(`  o += (c${k}_ - ${u32Literal(before)}) * ${u32Literal(s[k])};`); // wraps when outside: not read then
    }
  }
  const decls = `${buffer(0, 'x', type)}\n${buffer(1, 'y', type, true)}`;
  const body = `${lines.join('\n')}\n  if (inside) { y[i] = x[o]; } else { y[i] = ${fill}; }`;
  const k = kernel1d(decls, prod(out), body, limits);
  return { dispatches: [{ ...k, bindings: [{ input: 0 }, { output: true }], label: `pad [${inShape}] ${JSON.stringify(paddings)}` }] };
}

/** Inputs per concat dispatch: with the output, 8 storage buffers, the WebGPU default per stage. */
const CONCAT_INPUTS_PER_DISPATCH = 7;

function lowerConcat(node: KernelNode<'concat'>, limits: KernelLimits): Lowered {
  const out = node.output.shape;
  const axis = node.attrs.axis < 0 ? node.attrs.axis + out.length : node.attrs.axis;
  const outer = prod(out, 0, axis);
  const inner = prod(out, axis + 1);
  const total = out[axis];
  const type = wgslType(node.output.dtype);
  // Inputs with an empty slab contribute nothing; the rest, with their axis offsets in the output.
  const parts: { input: number; size: number; offset: number }[] = [];
  let offset = 0;
  node.inputs.forEach((t, input) => {
    const size = t.shape[axis];
    if (size > 0 && prod(t.shape) > 0) parts.push({ input, size, offset });
    offset += size;
  });
  const dispatches: Dispatch[] = [];
  for (let g = 0; g < parts.length; g += CONCAT_INPUTS_PER_DISPATCH) {
    const group = parts.slice(g, g + CONCAT_INPUTS_PER_DISPATCH);
    const span = group.reduce((acc, p) => acc + p.size, 0);
    const a0 = group[0].offset;
    const decls = [...group.map((_, n) => buffer(n, `x${n}`, type)), buffer(group.length, 'y', type, true)].join('\n');
    // The group writes a contiguous axis range [a0, a0 + span) of the output; each element picks its input.
    let start = 0;
    const branches = group.map((p, n) => {
      const read = `x${n}[(o * ${u32Literal(p.size)} + a - ${u32Literal(start)}) * ${u32Literal(inner)} + j]`;
      const cond = n === group.length - 1 ? '' : `if (a < ${u32Literal(start + p.size)}) `;
      start += p.size;
      return `${n === 0 ? '  ' : ' else '}${cond}{ v = ${read}; }`;
    });
    const body = `  let j = i % ${u32Literal(inner)};
  let r = i / ${u32Literal(inner)};
  let a = r % ${u32Literal(span)};
  let o = r / ${u32Literal(span)};
  var v: ${type};
${branches.join('')}
  y[(o * ${u32Literal(total)} + ${u32Literal(a0)} + a) * ${u32Literal(inner)} + j] = v;`;
    const k = kernel1d(decls, outer * span * inner, body, limits);
    dispatches.push({
      ...k,
      bindings: [...group.map((p) => ({ input: p.input })), { output: true }],
      label: `concat axis ${axis} inputs ${group[0].input}..${group[group.length - 1].input} -> [${out}]`,
    });
  }
  return { dispatches };
}

export const lowerings: Lowerings = {
  reshape: () => ({ dispatches: [], alias: 0 }),
  transpose: lowerTranspose,
  slice: lowerSlice,
  upsample2x: lowerUpsample2x,
  pad: lowerPad,
  concat: lowerConcat,
};
