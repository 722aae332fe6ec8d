// The `fused` kind (graph/fuse.ts): a group of elementwise steps as one kernel. Per output element i, each distinct
// (input, frame) pair is read once at its broadcast index into the frame (see fuse.ts's header), each step is one
// `let` of the expressions the single-node kernels use (unaryExpr / binaryExpr), reshapes are free.
// Without a lead step it is a 1-D launch over the output. With one (a matmul, conv2d or conv2dGradInput), it is that
// node's GEMM (kernels/matmul.ts, kernels/conv.ts) whose store computes the group at the element it stores: the lead
// step's value is the stored `v`. conv2dGradInput's pixels that no tap reaches are stored by its fill with v = 0.
import type { Attrs, FusedArg, FusedStep } from '../../graph/ir.ts';
import { fusedFrames } from '../../graph/fuse.ts';
import type { KernelLimits, KernelNode, Lowered, Lowerings, TensorInfo } from '../kernel.ts';
import { broadcastIndex, broadcastStrides, binaryExpr, ELEMENTWISE_HELPERS, unaryExpr } from './elementwise.ts';
import { buffer, kernel1d, prod, stridedOffsets } from './common.ts';
import { conv2dDispatch, conv2dGradInputDispatches } from './conv.ts';
import { matmulDispatch } from './matmul.ts';

/** Steps whose value comes from a GEMM's store (at most one per group, its operands inputs of the group). */
const isLead = (s: FusedStep): s is Extract<FusedStep, { op: 'matmul' | 'conv2d' | 'conv2dGradInput' }> =>
  s.op === 'matmul' || s.op === 'conv2d' || s.op === 'conv2dGradInput';

/** WGSL statements computing the group at flat index `i` into `s<last>` (the lead step, if any, is `v`). */
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
    if (isLead(s)) {
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
  const fns = steps.flatMap((s) => (s.op === 'unary' || s.op === 'binary' ? [s.attrs.fn] : []));
  const decls = [...node.inputs.map((_, k) => buffer(k, `fIn${k}`, 'f32')), buffer(node.inputs.length, 'fOut', 'f32', true), ELEMENTWISE_HELPERS].join('\n');
  const bindings = [...node.inputs.map((_, i) => ({ input: i })), { output: true as const }];
  const store = `${groupStatements(steps, node.inputs, out)}\n  fOut[i] = s${steps.length - 1};`;

  const leads = steps.filter(isLead);
  if (leads.length > 1) throw new Error('fused: more than one lead step');
  if (leads.length === 0) {
    const k = kernel1d(decls, prod(out), store, limits);
    return { dispatches: [{ ...k, bindings, label: `fused ${fns.join(',')} -> [${out}]` }] };
  }
  const s = leads[0];
  if (prod(s.shape) !== prod(out)) throw new Error(`fused: ${s.op} [${s.shape}] in a group of [${out}]`);
  const operand = (x: FusedArg) => {
    if (!('input' in x)) throw new Error(`fused: a ${s.op} operand must be an input of the group`);
    return x.input;
  };
  const ks = s.args.map(operand);
  const names = ks.map((k) => `fIn${k}`);
  const lead = { inputs: ks.map((k) => node.inputs[k]), output: { shape: s.shape, dtype: 'f32' as const } };
  const label = `${s.op}+fused ${fns.join(',')} ${lead.inputs.map((t) => `[${t.shape}]`).join('x')} -> [${out}]`;
  if (s.op === 'matmul') {
    const io = { decls, a: names[0], b: names[1], store, bindings };
    return { dispatches: [matmulDispatch({ op: s.op, attrs: s.attrs, ...lead }, io, limits, label)] };
  }
  const io = { decls, inputs: names, store, bindings };
  if (s.op === 'conv2d') return { dispatches: [conv2dDispatch({ op: s.op, attrs: s.attrs, ...lead }, io, limits, label)] };
  return { dispatches: conv2dGradInputDispatches({ op: s.op, attrs: s.attrs, ...lead }, io, limits, label) };
}

export const lowerings: Lowerings = { fused: lowerFused };
