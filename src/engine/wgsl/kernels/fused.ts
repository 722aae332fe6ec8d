// The `fused` kind (graph/fuse.ts): a group of elementwise steps as one kernel. Per output element i, each distinct
// (input, frame) pair is read once at its broadcast index into the frame (see fuse.ts's header), each step is one
// `let` of the expressions the single-node kernels use (unaryExpr / binaryExpr), reshapes are free.
// Without a lead step it is a 1-D launch over the output. With one (a matmul, conv2d or conv2dGradInput; a norm), it
// is that node's GEMM (kernels/matmul.ts, kernels/conv.ts) or its normalizing pass (kernels/norm.ts) whose store
// computes the group at the element it stores: the lead step's value is the stored `v`. conv2dGradInput's pixels that no tap reaches are stored by its fill with v = 0.
// Transposes cost no pass either: a matmul operand that is a transpose of an input (a view) is read at permuted
// indices by the GEMM's loads, and a group ending in a transpose runs over the transpose's input and stores each
// element at its permuted place.
import type { Attrs, FusedStep, NormKind } from '../../graph/ir.ts';
import { fusedFrames } from '../../graph/fuse.ts';
import type { Dispatch, HalfInputs, KernelLimits, KernelNode, Lowered, Lowerings, TensorInfo } from '../kernel.ts';
import { broadcastIndex, broadcastStrides, binaryExpr, ELEMENTWISE_HELPERS, unaryExpr } from './elementwise.ts';
import { buffer, inputBuffer, kernel1d, prod, stridedOffsets, strides } from './common.ts';
import { mergeDims } from './layout.ts';
import { conv2dDispatch, conv2dGradInputDispatches } from './conv.ts';
import { matmulDispatch } from './matmul.ts';
import { normLowered } from './norm.ts';

const NORMS = new Set<string>(['groupNorm', 'layerNorm', 'groupNormGrad', 'layerNormGrad']);

/** Steps whose value comes from a GEMM's or a norm's store (at most one per group, its operands inputs of the group). */
const isLead = (s: FusedStep): s is Extract<FusedStep, { op: 'matmul' | 'conv2d' | 'conv2dGradInput' | NormKind }> =>
  s.op === 'matmul' || s.op === 'conv2d' || s.op === 'conv2dGradInput' || NORMS.has(s.op);

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
    if (s.op === 'transpose' && j < steps.length - 1) return; // a view: read by the matmul's loads
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

/**
 * WGSL statements defining `name`, the offset in the row-major `shape` array viewed through `perm` (view axis k is
 * axis perm[k]) of the view's element at flat index `idx`; `undefined` when that is `idx` itself.
 */
function permutedOffset(idx: string, shape: number[], perm: number[], name: string, tag: string): string | undefined {
  const st = strides(shape);
  const m = mergeDims(perm.map((p) => shape[p]), perm.map((p) => st[p]));
  if (m.shape.length <= 1 && (m.stride[0] ?? 1) === 1) return undefined;
  return stridedOffsets(idx, m.shape, [{ name, strides: m.stride }], tag);
}

/** A WGSL function `fn name(t: u32) -> u32` from a view's (transpose step's) element index to its input's. */
function viewIndexFn(name: string, view: Extract<FusedStep, { op: 'transpose' }>, inputs: TensorInfo[]): string {
  const a = view.args[0];
  if (!('input' in a)) throw new Error('fused: a transposed matmul operand must be an input of the group');
  const body = permutedOffset('t', inputs[a.input].shape, view.attrs.perm, 'o', 'v');
  return `fn ${name}(t: u32) -> u32 {\n${body ?? '  let o = t;'}\n  return o;\n}`;
}

/**
 * WGSL for the final writes: `s<last>` to fOut[i], or at the permuted place when the last step is a transpose; with a
 * separate `output` step, that step to fOut[i] and `s<last>` to fOut2 (the fusedOutput node's buffer) instead.
 */
function finalStore(steps: FusedStep[], output: number | undefined): string {
  const j = steps.length - 1;
  const last = steps[j];
  const primary = output === undefined ? '' : `  fOut[i] = s${output};\n`;
  const dst = output === undefined ? 'fOut' : 'fOut2';
  if (last.op !== 'transpose') return `${primary}  ${dst}[i] = s${j};`;
  const a = last.args[0];
  if (!('step' in a)) throw new Error('fused: a final transpose of an input');
  // The group runs over the transpose's input (flat index i); its element at coordinates c goes to output
  // coordinates d with d[k] = c[perm[k]], i.e. input axis perm[k] has the output's stride k.
  const inShape = steps[a.step].shape;
  const outStrides = strides(last.shape);
  const st = new Array<number>(inShape.length);
  last.attrs.perm.forEach((p, k) => (st[p] = outStrides[k]));
  const m = mergeDims(inShape, st);
  if (m.shape.length <= 1 && (m.stride[0] ?? 1) === 1) return `${primary}  ${dst}[i] = s${j};`;
  return `${primary}${stridedOffsets('i', m.shape, [{ name: 'oOut', strides: m.stride }], 't')}\n  ${dst}[oOut] = s${j};`;
}

function lowerFused(node: KernelNode<'fused'>, limits: KernelLimits): Lowered {
  const { steps } = node.attrs as Attrs['fused'];
  if (node.output.dtype !== 'f32' || node.inputs.some((t) => t.dtype !== 'f32')) throw new Error('fused: f32 tensors only');
  const out = node.output.shape;
  const last = steps[steps.length - 1];
  if (!last || prod(last.shape) !== prod(out)) throw new Error(`fused: the last step's shape [${last?.shape}] is not the output's [${out}]`);
  const fns = steps.flatMap((s) => (s.op === 'unary' || s.op === 'binary' ? [s.attrs.fn] : []));
  const { output } = node.attrs as Attrs['fused'];
  const second = output === undefined ? [] : [buffer(node.inputs.length + 1, 'fOut2', 'f32', true)];
  const decls = [...node.inputs.map((t, k) => inputBuffer(k, `fIn${k}`, t)), buffer(node.inputs.length, 'fOut', 'f32', true), ...second, ELEMENTWISE_HELPERS].join('\n');
  const bindings: Dispatch['bindings'] = [...node.inputs.map((_, i) => ({ input: i })), { output: true as const }, ...(output === undefined ? [] : [{ fusedOutput: true as const }])];
  const store = `${groupStatements(steps, node.inputs, output === undefined ? out : last.shape)}\n${finalStore(steps, output)}`;

  const leads = steps.filter(isLead);
  if (leads.length > 1) throw new Error('fused: more than one lead step');
  steps.forEach((t, j) => {
    if (t.op !== 'transpose' || j === steps.length - 1) return;
    const readers = steps.filter((r) => r.args.some((a) => 'step' in a && a.step === j));
    if (readers.some((r) => r.op !== 'matmul')) throw new Error(`fused: transpose step ${j} is neither last nor a matmul operand`);
  });
  if (leads.length === 0) {
    const k = kernel1d(decls, prod(out), store, limits);
    const tr = last.op === 'transpose' ? ' (transposed)' : '';
    return { dispatches: [{ ...k, bindings, label: `fused${tr} ${fns.join(',')} -> [${out}]` }] };
  }
  const s = leads[0];
  if (prod(s.shape) !== prod(out)) throw new Error(`fused: ${s.op} [${s.shape}] in a group of [${out}]`);
  // The lead's operands: inputs, or (matmul only) views of inputs.
  const operands = s.args.map((x) => {
    const view = 'step' in x ? steps[x.step] : undefined;
    if (view?.op === 'transpose' && s.op === 'matmul') return { view, k: (view.args[0] as { input: number }).input };
    if (!('input' in x)) throw new Error(`fused: a ${s.op} operand must be an input of the group`);
    return { view: undefined, k: x.input };
  });
  const names = operands.map((o) => `fIn${o.k}`);
  const lead = {
    inputs: operands.map((o) => (o.view ? { shape: o.view.shape, dtype: 'f32' as const, storage: node.inputs[o.k].storage } : node.inputs[o.k])),
    output: { shape: s.shape, dtype: 'f32' as const },
  };
  const tr = steps.some((t) => t.op === 'transpose') ? ' (transposed)' : '';
  const label = `${s.op}+fused${tr} ${fns.join(',')} ${lead.inputs.map((t) => `[${t.shape}]`).join('x')} -> [${out}]`;
  if (s.op === 'matmul') {
    const views = operands.map((o, n) => (o.view ? viewIndexFn(`at${n}`, o.view, node.inputs) : ''));
    const at = (n: number) => (operands[n].view ? `at${n}` : undefined);
    const io = { decls: [decls, ...views].join('\n'), a: names[0], b: names[1], store, bindings, aAt: at(0), bAt: at(1) };
    return { dispatches: [matmulDispatch({ op: s.op, attrs: s.attrs, ...lead }, io, limits, label)] };
  }
  const io = { decls, inputs: names, store, bindings };
  if (s.op === 'conv2d') return { dispatches: [conv2dDispatch({ op: s.op, attrs: s.attrs, ...lead }, io, limits, label)] };
  if (s.op === 'conv2dGradInput') return { dispatches: conv2dGradInputDispatches({ op: s.op, attrs: s.attrs, ...lead }, io, limits, label) };
  return normLowered({ op: s.op, attrs: s.attrs, ...lead } as KernelNode<NormKind>, io, limits, label);
}

export const lowerings: Lowerings = { fused: lowerFused };

/**
 * A GEMM-led group reads its lead's weight operand (conv: w; matmul: either operand, directly or through a transposed
 * view) with the lead's loads, which can read packed f16 (conv.ts, matmul.ts); an input the group also reads
 * elsewhere (an epilogue step, a final transpose) stays f32.
 */
function fusedHalfInputs(node: KernelNode<'fused'>): number[] {
  const { steps } = node.attrs as Attrs['fused'];
  const lead = steps.find(isLead);
  if (!lead || !(lead.op === 'matmul' || lead.op === 'conv2d' || lead.op === 'conv2dGradInput')) return [];
  const leadIndex = steps.indexOf(lead);
  const out: number[] = [];
  for (const p of lead.op === 'matmul' ? [0, 1] : [1]) {
    const a = lead.args[p];
    let reader = leadIndex;
    if ('step' in a) {
      // A view: a transpose (not the last step) of an input that only the lead reads.
      const view = steps[a.step];
      if (view.op !== 'transpose' || a.step === steps.length - 1 || !('input' in view.args[0])) continue;
      if (steps.some((t, j) => j !== leadIndex && t.args.some((x) => 'step' in x && x.step === a.step))) continue;
      reader = a.step;
    }
    const k = 'input' in a ? a.input : (steps[a.step].args[0] as { input: number }).input;
    const readers = steps.flatMap((t, j) => t.args.filter((x) => 'input' in x && x.input === k).map(() => j));
    if (readers.every((j) => j === reader) && !out.includes(k)) out.push(k);
  }
  return out;
}

export const halfInputs: HalfInputs = { fused: fusedHalfInputs };
