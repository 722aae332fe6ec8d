// The `fused` kind (graph/fuse.ts): a group of elementwise steps as one kernel. One invocation per output element i;
// each distinct (input, frame) pair is read once at its broadcast index into the frame (see fuse.ts's header), each
// step is one `let` of the expressions the single-node kernels use (unaryExpr / binaryExpr), reshapes are free.
import type { Attrs } from '../../graph/ir.ts';
import { fusedFrames } from '../../graph/fuse.ts';
import type { KernelLimits, KernelNode, Lowered, Lowerings } from '../kernel.ts';
import { broadcastIndex, broadcastStrides, binaryExpr, ELEMENTWISE_HELPERS, unaryExpr } from './elementwise.ts';
import { buffer, kernel1d, prod, stridedOffsets } from './common.ts';

function lowerFused(node: KernelNode<'fused'>, limits: KernelLimits): Lowered {
  const { steps } = node.attrs as Attrs['fused'];
  if (node.output.dtype !== 'f32' || node.inputs.some((t) => t.dtype !== 'f32')) throw new Error('fused: f32 tensors only');
  const out = node.output.shape;
  const last = steps[steps.length - 1];
  if (!last || prod(last.shape) !== prod(out)) throw new Error(`fused: the last step's shape [${last?.shape}] is not the output's [${out}]`);
  const frames = fusedFrames(steps, out);

  // Reads: one `let` per (input, frame); operands whose broadcast is not one contiguous block use per-dimension
  // strides, computed once per frame shape.
  const lines: string[] = [];
  const reads = new Map<string, string>();
  const strided = new Map<string, { tag: string; frame: number[]; operands: { name: string; strides: number[] }[] }>();
  const read = (k: number, frame: number[]): string => {
    const key = `${k}:${frame}`;
    let name = reads.get(key);
    if (name) return name;
    name = `x${reads.size}`;
    reads.set(key, name);
    let idx = broadcastIndex(node.inputs[k].shape, frame);
    if (idx === undefined) {
      let s = strided.get(`${frame}`);
      if (!s) strided.set(`${frame}`, (s = { tag: `f${strided.size}`, frame, operands: [] }));
      idx = `o${name}`;
      s.operands.push({ name: idx, strides: broadcastStrides(node.inputs[k].shape, frame) });
    }
    lines.push(`  let ${name} = in${k}[${idx}];`);
    return name;
  };
  steps.forEach((s, j) => {
    const arg = (n: number) => {
      const a = s.args[n];
      // A reshape's operand is read in its own shape's frame (the same flat element).
      const frame = s.op === 'reshape' ? ('input' in a ? node.inputs[a.input].shape : steps[a.step].shape) : frames[j];
      return 'input' in a ? read(a.input, frame) : `s${a.step}`;
    };
    const expr =
      s.op === 'unary' ? unaryExpr(s.attrs.fn, arg(0), s.attrs) : s.op === 'binary' ? binaryExpr(s.attrs.fn, arg(0), arg(1), s.attrs) : arg(0);
    lines.push(`  let s${j} = ${expr};`);
  });
  const prologue = [...strided.values()].map((s) => stridedOffsets('i', s.frame, s.operands, s.tag));
  const decls = [...node.inputs.map((_, k) => buffer(k, `in${k}`, 'f32')), buffer(node.inputs.length, 'y', 'f32', true), ELEMENTWISE_HELPERS].join('\n');
  const body = [...prologue, ...lines, `  y[i] = s${steps.length - 1};`].join('\n');
  const k = kernel1d(decls, prod(out), body, limits);
  const fns = steps.flatMap((s) => (s.op === 'reshape' ? [] : [s.attrs.fn]));
  return {
    dispatches: [{ ...k, bindings: [...node.inputs.map((_, i) => ({ input: i })), { output: true as const }], label: `fused ${fns.join(',')} -> [${out}]` }],
  };
}

export const lowerings: Lowerings = { fused: lowerFused };
