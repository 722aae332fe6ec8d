// The `fused` kind (graph/fuse.ts): a group of elementwise steps as one kernel. Per output element i, each distinct
// (input, frame) pair is read once at its broadcast index into the frame (see fuse.ts's header), each step is one
// `let` of the expressions the single-node kernels use (unaryExpr / binaryExpr), reshapes are free.
// Without a matmul step it is a 1-D launch over the output. With one, it is that matmul's GEMM (kernels/matmul.ts)
// whose store computes the group at the element it stores: the matmul step's value is the stored `v`.
import type { Attrs, FusedStep } from '../../graph/ir.ts';
import { fusedFrames } from '../../graph/fuse.ts';
import type { KernelLimits, KernelNode, Lowered, Lowerings, TensorInfo } from '../kernel.ts';
import { broadcastIndex, broadcastStrides, binaryExpr, ELEMENTWISE_HELPERS, unaryExpr } from './elementwise.ts';
import { buffer, kernel1d, prod, stridedOffsets } from './common.ts';
import { matmulDispatch } from './matmul.ts';

/** WGSL statements computing the group at flat index `i` into `s<last>` (the matmul step, if any, is `v`). */
function groupStatements(steps: FusedStep[], inputs: TensorInfo[], out: number[]): string {
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
    let idx = broadcastIndex(inputs[k].shape, frame);
    if (idx === undefined) {
      let s = strided.get(`${frame}`);
      if (!s) strided.set(`${frame}`, (s = { tag: `f${strided.size}`, frame, operands: [] }));
      idx = `o${name}`;
      s.operands.push({ name: idx, strides: broadcastStrides(inputs[k].shape, frame) });
    }
    lines.push(`  let ${name} = fIn${k}[${idx}];`);
    return name;
  };
  steps.forEach((s, j) => {
    if (s.op === 'matmul') {
      lines.push(`  let s${j} = v;`);
      return;
    }
    const arg = (n: number) => {
      const a = s.args[n];
      // A reshape's operand is read in its own shape's frame (the same flat element).
      const frame = s.op === 'reshape' ? ('input' in a ? inputs[a.input].shape : steps[a.step].shape) : frames[j];
      return 'input' in a ? read(a.input, frame) : `s${a.step}`;
    };
    const expr =
      s.op === 'unary' ? unaryExpr(s.attrs.fn, arg(0), s.attrs) : s.op === 'binary' ? binaryExpr(s.attrs.fn, arg(0), arg(1), s.attrs) : arg(0);
    lines.push(`  let s${j} = ${expr};`);
  });
  const prologue = [...strided.values()].map((s) => stridedOffsets('i', s.frame, s.operands, s.tag));
  return [...prologue, ...lines].join('\n');
}

function lowerFused(node: KernelNode<'fused'>, limits: KernelLimits): Lowered {
  const { steps } = node.attrs as Attrs['fused'];
  if (node.output.dtype !== 'f32' || node.inputs.some((t) => t.dtype !== 'f32')) throw new Error('fused: f32 tensors only');
  const out = node.output.shape;
  const last = steps[steps.length - 1];
  if (!last || prod(last.shape) !== prod(out)) throw new Error(`fused: the last step's shape [${last?.shape}] is not the output's [${out}]`);
  const fns = steps.flatMap((s) => (s.op === 'reshape' || s.op === 'matmul' ? [] : [s.attrs.fn]));
  const decls = [...node.inputs.map((_, k) => buffer(k, `fIn${k}`, 'f32')), buffer(node.inputs.length, 'fOut', 'f32', true), ELEMENTWISE_HELPERS].join('\n');
  const bindings = [...node.inputs.map((_, i) => ({ input: i })), { output: true as const }];
  const body = `${groupStatements(steps, node.inputs, out)}\n  fOut[i] = s${steps.length - 1};`;

  const mm = steps.filter((s) => s.op === 'matmul');
  if (mm.length > 1) throw new Error('fused: more than one matmul');
  if (mm.length === 1) {
    const s = mm[0];
    if (prod(s.shape) !== prod(out)) throw new Error(`fused: matmul [${s.shape}] in a group of [${out}]`);
    const [a, b] = s.args.map((x) => {
      if (!('input' in x)) throw new Error('fused: a matmul operand must be an input of the group');
      return x.input;
    });
    const mmNode: KernelNode<'matmul'> = { op: 'matmul', attrs: s.attrs, inputs: [node.inputs[a], node.inputs[b]], output: { shape: s.shape, dtype: 'f32' } };
    const io = { decls, a: `fIn${a}`, b: `fIn${b}`, store: body, bindings };
    return { dispatches: [matmulDispatch(mmNode, io, limits, `matmul+fused ${fns.join(',')} [${node.inputs[a].shape}]x[${node.inputs[b].shape}] -> [${out}]`)] };
  }
  const k = kernel1d(decls, prod(out), body, limits);
  return { dispatches: [{ ...k, bindings, label: `fused ${fns.join(',')} -> [${out}]` }] };
}

export const lowerings: Lowerings = { fused: lowerFused };
