// Elementwise fusion (src/engine/graph/fuse.ts) and its kernel (src/engine/wgsl/kernels/fused.ts): the rewrite's
// structure (what may and may not join a group), its semantics on the interpreter (no device), and random
// elementwise DAGs with broadcasting and reshapes planned fused and unfused on the software adapter, which must agree.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { fuseElementwise } from '../src/engine/graph/fuse.ts';
import { interpret } from '../src/engine/graph/interpret.ts';
import { sizeOf, type Attrs, type BinaryFn, type Graph } from '../src/engine/graph/ir.ts';
import { broadcastShapes, GraphBuilder, type Sym } from '../src/engine/graph/trace.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { compilePlan } from '../src/engine/wgsl/executor.ts';
import { DEFAULT_LIMITS } from '../src/engine/wgsl/kernel.ts';
import { lowerings } from '../src/engine/wgsl/lowerings.ts';
import { planGraph, type PlanOptions } from '../src/engine/wgsl/plan.ts';
import { maxAbsDiff, suiteDevice } from './helpers.ts';

const MAX_INPUTS = 7;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

const fusedNodes = (g: Graph) => g.nodes.filter((n, i) => n.op === 'fused' && isLive(g)[i]) as Array<{ id: number; inputs: number[]; attrs: Attrs['fused'] }>;

function isLive(g: Graph): Uint8Array {
  const live = new Uint8Array(g.nodes.length);
  for (const id of Object.values(g.outputs)) live[id] = 1;
  for (let i = g.nodes.length - 1; i >= 0; i--) if (live[i]) for (const j of g.nodes[i].inputs) live[j] = 1;
  return live;
}

/** Shapes of the random graphs: all broadcast to [2,3,4]; the reshapes move between the 24-element ones. */
const SHAPES = [[2, 3, 4], [3, 4], [4], [1], [], [2, 1, 4], [2, 3, 1], [1, 3, 1], [3, 1]];
const FULL = [[2, 3, 4], [6, 4], [24], [2, 12], [4, 6]];
const UNARY = ['neg', 'sigmoid', 'swish', 'gelu', 'quickGelu', 'abs', 'scale', 'addScalar', 'clamp', 'copy', 'square', 'sqrtAbs'] as const;
const BINARY: BinaryFn[] = ['add', 'sub', 'mul', 'maximum', 'minimum', 'greaterEqual', 'swishGrad', 'geluGrad', 'quickGeluGrad', 'clampGrad', 'clampWithGradGrad', 'div'];

/**
 * A random graph of mostly elementwise nodes over operands that broadcast, with full-size reshapes, a few
 * non-elementwise readers (sum, transpose) of intermediates, and intermediates that are graph outputs.
 */
function randomGraph(seed: number, size: number): { g: Graph; inputs: Record<string, { data: Float32Array; shape: number[] }> } {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  const b = new GraphBuilder();
  const inputs: Record<string, { data: Float32Array; shape: number[] }> = {};
  const vals: Sym[] = [];
  const data = (shape: number[]) => Float32Array.from({ length: sizeOf(shape) }, () => Math.round((r() - 0.5) * 64) / 16);
  for (let k = 0; k < 4; k++) {
    const shape = k === 0 ? [2, 3, 4] : pick(SHAPES);
    inputs[`in${k}`] = { data: data(shape), shape };
    vals.push(b.input(`in${k}`, shape));
  }
  for (let k = 0; k < 3; k++) {
    const shape = pick(SHAPES);
    vals.push(b.constant(data(shape), shape));
  }
  const recent = () => vals[Math.max(0, vals.length - 1 - Math.floor(r() * 5))];
  for (let k = 0; k < size; k++) {
    const x = r() < 0.8 ? recent() : pick(vals);
    const c = r();
    if (c < 0.16 && sizeOf(x.shape) === 24) vals.push(b.reshape(x, pick(FULL)));
    else if (c < 0.26 && sizeOf(x.shape) === 24) vals.push(b.matmul(b.reshape(x, [6, 4]), b.constant(data([4, 4]), [4, 4]), false, r() < 0.5));
    else if (c < 0.3 && x.shape.length === 3) vals.push(b.sum(x, [1], true));
    else if (c < 0.33 && x.shape.length === 3) vals.push(b.reshape(b.transpose(x, [0, 2, 1]), x.shape));
    // a transposed operand and a transposed product: views in the matmul's loads, a transposed store
    else if (c < 0.36 && sizeOf(x.shape) === 24) vals.push(b.transpose(b.matmul(b.transpose(b.reshape(x, [2, 3, 4]), [0, 2, 1]), b.constant(data([3, 3]), [3, 3])), [0, 2, 1]));
    else if (c < 0.62) {
      const fn = pick(UNARY);
      if (fn === 'scale') vals.push(b.scale(x, 0.75));
      else if (fn === 'addScalar') vals.push(b.addScalar(x, -0.25));
      else if (fn === 'clamp') vals.push(b.clamp(x, -1, 1.5));
      else if (fn === 'copy') vals.push(b.stopGradient(x));
      else if (fn === 'sqrtAbs') vals.push(b.sqrt(b.abs(x)));
      else vals.push(b[fn](x));
    } else {
      const others = vals.filter((v) => broadcastShapes(v.shape, x.shape));
      const y = pick(others);
      const fn = pick(BINARY);
      const [p, q] = r() < 0.5 ? [x, y] : [y, x];
      if (fn === 'div') vals.push(b.div(p, b.addScalar(b.abs(q), 1)));
      else if (fn === 'clampGrad' || fn === 'clampWithGradGrad') vals.push(b.binary(fn, p, q, { lo: -0.5, hi: 0.5 }));
      else vals.push(b.binary(fn, p, q));
    }
  }
  // Every value nothing reads is an output (so that the whole graph is live), and one intermediate too.
  const read = new Set(b.graph.nodes.flatMap((n) => n.inputs));
  for (const n of b.graph.nodes) if (!read.has(n.id) && n.op !== 'input' && n.op !== 'const') b.output(`leaf${n.id}`, b.syms[n.id]);
  b.output('mid', vals[7 + Math.floor(r() * size * 0.6)]);
  return { g: b.graph, inputs };
}

describe('elementwise fusion: the rewrite (no device)', () => {
  test('a chain with a broadcast bias, a reshape and a diamond becomes one node; ids and outputs are kept', () => {
    const b = new GraphBuilder();
    const x = b.input('x', [6, 4]);
    const bias = b.constant(Float32Array.from([1, 2, 3, 4]), [4]);
    const y = b.reshape(b.add(x, bias), [2, 3, 4]);
    const s = b.sigmoid(y);
    const out = b.mul(b.add(s, y), s); // s read twice inside the group
    b.output('out', out);
    const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS });
    assert.equal(f.nodes.length, b.graph.nodes.length);
    assert.deepEqual(f.outputs, b.graph.outputs);
    const [node, ...rest] = fusedNodes(f);
    assert.equal(rest.length, 0);
    assert.equal(node.id, out.id);
    assert.deepEqual(node.inputs, [x.id, bias.id]);
    assert.deepEqual(node.attrs.steps.map((st) => st.op), ['binary', 'reshape', 'unary', 'binary', 'binary']);
    assert.ok(f.nodes[bias.id] === b.graph.nodes[bias.id], 'constants stay as they are');
  });

  test('an intermediate read outside the group, or a graph output, stays a value of its own', () => {
    const b = new GraphBuilder();
    const x = b.input('x', [8]);
    const y = b.input('y', [8]);
    const a = b.exp(x); // also read by the sum: not fusible into the mul/add group
    const m = b.mul(a, y);
    const o = b.neg(m); // a graph output itself
    const z = b.addScalar(o, 1);
    const t = b.sum(a);
    b.output('z', b.add(z, t));
    b.output('o', o);
    const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS });
    const groups = fusedNodes(f);
    // {m, o} (o is an output: its own sink) and {z, final add}; a stays a plain unary node.
    assert.deepEqual(groups.map((g) => g.id).sort((p, q) => p - q), [o.id, f.outputs.z]);
    assert.equal(f.nodes[a.id].op, 'unary');
    assert.deepEqual(groups.find((g) => g.id === o.id)!.inputs, [a.id, y.id]);
    assert.deepEqual(groups.find((g) => g.id === f.outputs.z)!.inputs, [o.id, t.id]);
  });

  test(`no fused node has more than ${MAX_INPUTS} inputs`, () => {
    const b = new GraphBuilder();
    let v = b.input('x0', [4]);
    for (let k = 1; k < 20; k++) v = b.add(b.sigmoid(v), b.input(`x${k}`, [4]));
    b.output('v', v);
    const groups = fusedNodes(fuseElementwise(b.graph, { maxInputs: MAX_INPUTS }));
    assert.ok(groups.length >= 3, `${groups.length} groups`);
    for (const g of groups) assert.ok(g.inputs.length <= MAX_INPUTS, `${g.inputs.length} inputs`);
  });

  test('a member read in two frames (through a reshape and directly) is not fused across them', () => {
    const b = new GraphBuilder();
    const x = b.input('x', [6, 4]);
    const e = b.exp(b.neg(x));
    const back = b.reshape(b.reshape(e, [24]), [4, 6]); // e read as [6,4] below the reshape...
    const out = b.add(back, b.reshape(e, [4, 6])); // ...twice, fine; and directly in a [4,6] frame: not fine
    b.output('out', b.add(out, b.reshape(b.sigmoid(e), [4, 6])));
    const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS });
    const rerun = (g: Graph) => tf.tidy(() => interpret(tfOps, g, { x: tf.tensor(Float32Array.from({ length: 24 }, (_, i) => i / 8 - 1.5), [6, 4]) }).out.dataSync());
    assert.ok(maxAbsDiff(rerun(f), rerun(b.graph)) <= 1e-6);
  });

  test('random DAGs: the fused graph interprets to the same values', async () => {
    await tf.setBackend('cpu');
    for (let seed = 1; seed <= 30; seed++) {
      const { g, inputs } = randomGraph(seed, 40);
      const f = fuseElementwise(g, { maxInputs: MAX_INPUTS, epilogues: true });
      const feed = () => Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
      const run = (h: Graph) => tf.tidy(() => Object.fromEntries(Object.entries(interpret(tfOps, h, feed())).map(([k, v]) => [k, v.dataSync()])));
      const want = run(g);
      const got = run(f);
      for (const k of Object.keys(want)) assert.ok(maxAbsDiff(got[k], want[k]) <= 1e-5, `seed ${seed} ${k}: ${maxAbsDiff(got[k], want[k])}`);
    }
  });
});

describe('elementwise fusion on the software adapter', () => {
  const gpu = suiteDevice();

  const opts = (): PlanOptions => ({
    alignment: gpu.device!.limits.minStorageBufferOffsetAlignment,
    maxBindingSize: gpu.device!.limits.maxStorageBufferBindingSize,
    maxBufferSize: gpu.device!.limits.maxBufferSize,
  });

  /** Fused kernels that read an operand through per-dimension strides (not one contiguous broadcast block). */
  let stridedKernels = 0;

  async function runPlan(g: Graph, inputs: Record<string, { data: Float32Array }>): Promise<{ values: Record<string, Float32Array>; dispatches: number }> {
    const plan = planGraph(g, lowerings, DEFAULT_LIMITS, opts());
    stridedKernels += plan.dispatches.filter((d) => d.label.startsWith('fused') && d.code.includes('var rf')).length;
    const c = await compilePlan(gpu.device!, plan);
    try {
      c.run(Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.data])));
      const values: Record<string, Float32Array> = {};
      for (const k of Object.keys(g.outputs)) values[k] = (await c.read(k)) as Float32Array;
      return { values, dispatches: plan.dispatches.length };
    } finally {
      c.destroy();
    }
  }

  test('a bias add below a reshape and a strided operand above it: one dispatch, same values', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const b = new GraphBuilder();
    const x = b.input('x', [6, 4]);
    const bias = b.constant(Float32Array.from([0.5, -1, 2, 0.25]), [4]);
    const gate = b.input('gate', [2, 1, 4]); // [2,1,4] in [2,3,4]: not one contiguous block, read through strides
    const y = b.reshape(b.add(x, bias), [2, 3, 4]);
    b.output('out', b.binary('swishGrad', b.mul(y, gate), b.sigmoid(y)));
    const inputs = { x: { data: Float32Array.from({ length: 24 }, (_, i) => i / 6 - 2) }, gate: { data: Float32Array.from({ length: 8 }, (_, i) => 1 - i / 4) } };
    const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS });
    const plain = await runPlan(b.graph, inputs);
    const fused = await runPlan(f, inputs);
    assert.equal(plain.dispatches, 4);
    assert.equal(fused.dispatches, 1);
    const d = maxAbsDiff(fused.values.out, plain.values.out);
    t.diagnostic(`max abs diff ${d}`);
    assert.ok(d <= 1e-6);
  });

  test('matmul epilogues on the three GEMM kernels (tiled, skinny, simple) and a batched product', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const r = rng(7);
    const data = (shape: number[]) => Float32Array.from({ length: sizeOf(shape) }, () => r() - 0.5);
    const cases: Array<{ name: string; a: number[]; w: number[]; tB: boolean; then: (b: GraphBuilder, y: Sym, extra: Sym) => Sym; extra: number[] }> = [
      // linear + bias + activation through the reshape back to the leading axes (tiled: M, N > 4, many MACs)
      { name: 'tiled', a: [70, 48], w: [48, 40], tB: false, extra: [40], then: (b, y, bias) => b.quickGelu(b.reshape(b.add(y, bias), [7, 10, 40])) },
      // matrix-vector rows (skinny: M <= 4), transposed weight, a residual of the output's shape
      { name: 'skinny', a: [3, 512], w: [64, 512], tB: true, extra: [3, 64], then: (b, y, res) => b.add(res, b.scale(y, 0.5)) },
      // attention-like scores: batched, scaled, masked by a broadcast operand (simple kernel: few MACs)
      { name: 'batched', a: [2, 4, 8, 16], w: [2, 4, 8, 16], tB: true, extra: [8, 8], then: (b, y, mask) => b.add(b.scale(y, 0.25), mask) },
    ];
    for (const c of cases) {
      const b = new GraphBuilder();
      const x = b.input('x', c.a);
      const w = b.constant(data(c.w), c.w);
      const extra = b.input('extra', c.extra);
      b.output('out', c.then(b, b.matmul(x, w, false, c.tB), extra));
      const inputs = { x: { data: data(c.a) }, extra: { data: data(c.extra) } };
      const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS, epilogues: true });
      const plain = await runPlan(b.graph, inputs);
      const fused = await runPlan(f, inputs);
      const d = maxAbsDiff(fused.values.out, plain.values.out);
      t.diagnostic(`${c.name}: ${plain.dispatches} -> ${fused.dispatches} dispatches, max abs diff ${d}`);
      assert.equal(fused.dispatches, 1);
      assert.ok(d <= 1e-6, `${c.name}: ${d}`);
    }
  });

  test('conv2d / conv2dGradInput epilogues: every GEMM form, the zero-filled pixels included', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const r = rng(11);
    const data = (shape: number[]) => Float32Array.from({ length: sizeOf(shape) }, () => r() - 0.5);
    type Pad4 = [number, number, number, number];
    // A conv2d, or a conv2dGradInput of a conv of x by w, then `then` on its result (`extra` has the result's shape or
    // broadcasts to it). `form` must be among the fused plan's dispatch labels: proves which kernel ran.
    const cases: Array<{ name: string; x: number[]; w: number[]; stride: number; pad: Pad4; grad: boolean; bias?: boolean; extra: number[]; form: RegExp; then: (b: GraphBuilder, y: Sym, extra: Sym) => Sym }> = [
      // residual block tail: conv + bias, then the residual add and an activation (tiled GEMM)
      { name: 'conv 3x3 + bias, residual, swish', x: [1, 12, 12, 8], w: [3, 3, 8, 16], stride: 1, pad: [1, 1, 1, 1], grad: false, bias: true, extra: [1, 12, 12, 16], form: /conv2d\+fused.*tiled/, then: (b, y, res) => b.swish(b.add(res, y)) },
      // 1x1 without bias read in place (simple GEMM), through a reshape, with a broadcast per-channel scale
      { name: 'conv 1x1, reshape, scale', x: [2, 5, 5, 6], w: [1, 1, 6, 7], stride: 1, pad: [0, 0, 0, 0], grad: false, extra: [7], form: /conv2d\+fused.*simple/, then: (b, y, g) => b.mul(b.reshape(y, [50, 7]), g) },
      // patch embedding (kernel = stride): the ViT's first layer
      { name: 'conv 4x4 s4 patches', x: [2, 16, 16, 3], w: [4, 4, 3, 20], stride: 4, pad: [0, 0, 0, 0], grad: false, bias: true, extra: [16, 20], form: /conv2d\+fused/, then: (b, y, pos) => b.add(b.reshape(y, [2, 16, 20]), pos) },
      // activation gradient after a conv's input gradient, stride 1 (one phase, tiled); `extra` stands for x
      { name: 'grad 3x3 s1, swishGrad', x: [1, 12, 10, 20], w: [3, 3, 20, 9], stride: 1, pad: [1, 1, 1, 1], grad: true, extra: [1, 12, 10, 20], form: /conv2dGradInput\+fused.*tiled/, then: (b, dx, x) => b.binary('swishGrad', x, dx) },
      // taming's Downsample: four phases, each storing its pixels through the epilogue
      { name: 'grad 3x3 s2 phases, add, swishGrad', x: [1, 10, 9, 6], w: [3, 3, 6, 5], stride: 2, pad: [0, 1, 0, 1], grad: true, extra: [1, 10, 9, 6], form: /conv2dGradInput\+fused.*phase 1,1/, then: (b, dx, x) => b.binary('swishGrad', x, b.add(dx, x)) },
      // 1x1 stride 2: 3/4 of dx is no tap's, zero-filled: the epilogue must see 0 there (add: the residual shows)
      { name: 'grad 1x1 s2 gaps, residual add', x: [2, 7, 8, 5], w: [1, 1, 5, 6], stride: 2, pad: [0, 0, 0, 0], grad: true, extra: [2, 7, 8, 5], form: /conv2dGradInput\+fused.*zero/, then: (b, dx, res) => b.sigmoid(b.add(dx, res)) },
      // patches with a border no patch reaches
      { name: 'grad 4x4 s4 ragged border', x: [1, 18, 17, 3], w: [4, 4, 3, 5], stride: 4, pad: [0, 0, 0, 0], grad: true, extra: [3], form: /conv2dGradInput\+fused.*zero/, then: (b, dx, c) => b.addScalar(b.mul(dx, c), 0.5) },
    ];
    for (const c of cases) {
      const b = new GraphBuilder();
      const x = b.input('x', c.x);
      const w = b.constant(data(c.w), c.w);
      const extra = b.input('extra', c.extra);
      let y: Sym;
      const inputs: Record<string, { data: Float32Array; shape: number[] }> = { x: { data: data(c.x), shape: c.x }, extra: { data: data(c.extra), shape: c.extra } };
      if (c.grad) {
        const yShape = b.conv2d(x, w, undefined, { stride: c.stride, pad: c.pad }).shape;
        const dy = b.input('dy', yShape);
        inputs.dy = { data: data(yShape), shape: yShape };
        y = b.conv2dGradInput(dy, w, c.x, { stride: c.stride, pad: c.pad });
      } else {
        y = b.conv2d(x, w, c.bias ? b.constant(data([c.w[3]]), [c.w[3]]) : undefined, { stride: c.stride, pad: c.pad });
      }
      b.output('out', c.then(b, y, extra));
      const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS, epilogues: true });
      const fusedLabels = planGraph(f, lowerings, DEFAULT_LIMITS, opts()).dispatches.map((d) => d.label);
      assert.ok(fusedLabels.some((l) => c.form.test(l)), `${c.name}: ${fusedLabels.join('; ')}`);
      // The group costs nothing: the fused plan has just the conv's own dispatches.
      const convAlone = planGraph(b.graph, lowerings, DEFAULT_LIMITS, opts()).dispatches.filter((d) => d.node === y.id).length;
      assert.equal(fusedLabels.length, convAlone, `${c.name}: ${fusedLabels.join('; ')}`);
      const plain = await runPlan(b.graph, inputs);
      const fused = await runPlan(f, inputs);
      const d = maxAbsDiff(fused.values.out, plain.values.out);
      // Both plans share the conv kernels: the tfjs cpu backend checks those too (summation order differs there).
      const feed = () => Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
      const ref = tf.tidy(() => interpret(tfOps, b.graph, feed()).out.dataSync());
      const dRef = maxAbsDiff(fused.values.out, ref);
      t.diagnostic(`${c.name}: ${plain.dispatches} -> ${fused.dispatches} dispatches, max abs diff ${d} (vs tfjs cpu ${dRef.toExponential(1)})`);
      assert.ok(d <= 1e-6, `${c.name}: ${d}`);
      assert.ok(dRef <= 1e-5, `${c.name}: vs tfjs ${dRef}`);
    }
  });

  test('norm epilogues: groupNorm / layerNorm and their gradients, one-pass and chunked', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const r = rng(13);
    const data = (shape: number[]) => Float32Array.from({ length: sizeOf(shape) }, () => r() - 0.5);
    // The norm of x (gradient: with dy = `extra`'s partner input), then `then`; `form` must be among the labels.
    const cases: Array<{ name: string; x: number[]; kind: 'groupNorm' | 'layerNorm'; grad: boolean; extra: number[]; form: RegExp; then: (b: GraphBuilder, y: Sym, extra: Sym) => Sym }> = [
      { name: 'groupNorm one pass, swish', x: [2, 5, 7, 12], kind: 'groupNorm', grad: false, extra: [12], form: /groupNorm\+fused.*fused$/, then: (b, y, s) => b.swish(b.mul(y, s)) },
      { name: 'layerNorm chunked, scale, residual', x: [2, 4100], kind: 'layerNorm', grad: false, extra: [2, 4100], form: /layerNorm\+fused.*apply/, then: (b, y, res) => b.add(res, b.scale(y, 0.5)) },
      { name: 'layerNormGrad one pass, gradient sum', x: [3, 7, 33], kind: 'layerNorm', grad: true, extra: [3, 7, 33], form: /layerNormGrad\+fused.*fused$/, then: (b, dx, acc) => b.reshape(b.add(acc, dx), [21, 33]) },
      { name: 'groupNormGrad chunked, gradient sum', x: [1, 24, 24, 16], kind: 'groupNorm', grad: true, extra: [1, 24, 24, 16], form: /groupNormGrad\+fused.*apply/, then: (b, dx, acc) => b.add(dx, acc) },
    ];
    for (const c of cases) {
      const C = c.x[c.x.length - 1];
      const b = new GraphBuilder();
      const x = b.input('x', c.x);
      const extra = b.input('extra', c.extra);
      const gamma = b.constant(Float32Array.from(data([C]), (v) => v + 1), [C]);
      const beta = b.constant(data([C]), [C]);
      const inputs: Record<string, { data: Float32Array; shape: number[] }> = { x: { data: data(c.x), shape: c.x }, extra: { data: data(c.extra), shape: c.extra } };
      let y: Sym;
      if (c.grad) {
        const dy = b.input('dy', c.x);
        inputs.dy = { data: data(c.x), shape: c.x };
        y = c.kind === 'groupNorm' ? b.groupNormGrad(x, gamma, dy, 2, 1e-6) : b.layerNormGrad(x, gamma, dy, 1e-5);
      } else {
        y = c.kind === 'groupNorm' ? b.groupNorm(x, 3, gamma, beta, 1e-6) : b.layerNorm(x, gamma, beta, 1e-5);
      }
      b.output('out', c.then(b, y, extra));
      const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS, epilogues: true });
      const fusedLabels = planGraph(f, lowerings, DEFAULT_LIMITS, opts()).dispatches.map((d) => d.label);
      assert.ok(fusedLabels.some((l) => c.form.test(l)), `${c.name}: ${fusedLabels.join('; ')}`);
      const normAlone = planGraph(b.graph, lowerings, DEFAULT_LIMITS, opts()).dispatches.filter((d) => d.node === y.id).length;
      assert.equal(fusedLabels.length, normAlone, `${c.name}: ${fusedLabels.join('; ')}`);
      const plain = await runPlan(b.graph, inputs);
      const fused = await runPlan(f, inputs);
      const d = maxAbsDiff(fused.values.out, plain.values.out);
      const feed = () => Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
      const dRef = maxAbsDiff(fused.values.out, tf.tidy(() => interpret(tfOps, b.graph, feed()).out.dataSync()));
      t.diagnostic(`${c.name}: ${plain.dispatches} -> ${fused.dispatches} dispatches, max abs diff ${d} (vs tfjs cpu ${dRef.toExponential(1)})`);
      assert.ok(d <= 1e-6, `${c.name}: ${d}`);
      assert.ok(dRef <= 1e-5, `${c.name}: vs tfjs ${dRef}`);
    }
  });

  test('transposes: attention head layouts as views in the matmuls\' loads and transposed stores; no transpose pass', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const r = rng(5);
    const data = (shape: number[]) => Float32Array.from({ length: sizeOf(shape) }, () => r() - 0.5);
    // Multi-head attention as the models trace it: q, k, v linears split into heads ([B,T,H,D] -> [B,H,T,D]), scores
    // read k transposed, the heads' output back to [B,T,H,D]; v is also read by a second product (a backward-like
    // dv = p^T dy), so its transpose has two matmul readers, both reading through it. Then a transpose of an
    // elementwise group alone (a 1-D kernel with a permuted store).
    const [B, T, H, D] = [2, 5, 3, 8];
    const b = new GraphBuilder();
    const x = b.input('x', [B * T, H * D]);
    const dy = b.input('dy', [B, H, T, D]);
    const heads = (w: Sym) => b.transpose(b.reshape(b.matmul(x, w), [B, T, H, D]), [0, 2, 1, 3]);
    const q = heads(b.constant(data([H * D, H * D]), [H * D, H * D]));
    const k = heads(b.constant(data([H * D, H * D]), [H * D, H * D]));
    const v = heads(b.constant(data([H * D, H * D]), [H * D, H * D]));
    const p = b.softmax(b.scale(b.matmul(q, k, false, true), 0.25));
    const o = b.reshape(b.transpose(b.matmul(p, v), [0, 2, 1, 3]), [B * T, H * D]);
    b.output('out', b.matmul(o, b.constant(data([H * D, 6]), [H * D, 6])));
    b.output('dv', b.matmul(b.transpose(b.matmul(dy, v, false, true), [0, 1, 3, 2]), p, false, false));
    b.output('t', b.transpose(b.sigmoid(b.add(dy, b.constant(data([D]), [D]))), [3, 1, 0, 2]));
    const inputs = { x: { data: data([B * T, H * D]), shape: [B * T, H * D] }, dy: { data: data([B, H, T, D]), shape: [B, H, T, D] } };
    const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS, epilogues: true });
    const labels = planGraph(f, lowerings, DEFAULT_LIMITS, opts()).dispatches.map((d) => d.label);
    assert.ok(!labels.some((l) => l.startsWith('transpose')), labels.join('; '));
    assert.ok(labels.filter((l) => l.includes('(transposed)')).length >= 4, labels.join('; '));
    const plain = await runPlan(b.graph, inputs);
    const fused = await runPlan(f, inputs);
    const ref = tf.tidy(() => Object.fromEntries(Object.entries(interpret(tfOps, b.graph, { x: tf.tensor(inputs.x.data, inputs.x.shape), dy: tf.tensor(inputs.dy.data, inputs.dy.shape) })).map(([n, val]) => [n, val.dataSync()])));
    for (const name of Object.keys(plain.values)) {
      const d = maxAbsDiff(fused.values[name], plain.values[name]);
      const dRef = maxAbsDiff(fused.values[name], ref[name]);
      t.diagnostic(`${name}: max abs diff ${d} (vs tfjs cpu ${dRef.toExponential(1)})`);
      assert.ok(d <= 1e-6, `${name}: ${d}`);
      assert.ok(dRef <= 1e-5, `${name}: vs tfjs ${dRef}`);
    }
    t.diagnostic(`dispatches ${plain.dispatches} -> ${fused.dispatches}`);
  });

  test('packed q/k/v: one transposed store, the heads as in-place slices; the backward concat read through reshaped views', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const r = rng(9);
    const data = (shape: number[]) => Float32Array.from({ length: sizeOf(shape) }, () => r() - 0.5);
    // As clip.ts traces attention: qkv [B*T, 3C] -> [B, T, 3, H, D] -> [3, B, H, T, D]; q, k, v are slices along the
    // first axis (B*H*T*D = 128 floats: 512-byte parts, aligned, so views). The backward-like output concatenates
    // three [B, H, T, D] gradients along that axis, transposes back to [B, T, 3C] and multiplies by w^T, reading
    // the concat through the transpose and two reshapes. A slice at a misaligned offset is still a copy.
    const [B, T, H, D] = [2, 4, 2, 8];
    const C = H * D;
    const b = new GraphBuilder();
    const x = b.input('x', [B * T, C]);
    const dy = b.input('dy', [B, H, T, D]);
    const w = b.constant(data([C, 3 * C]), [C, 3 * C]);
    const heads3 = b.transpose(b.reshape(b.matmul(x, w), [B, T, 3, H, D]), [2, 0, 3, 1, 4]);
    const [q, k, v] = [0, 1, 2].map((i) => b.reshape(b.slice(heads3, [i, 0, 0, 0, 0], [1, B, H, T, D]), [B, H, T, D]));
    const p = b.softmax(b.scale(b.matmul(q, k, false, true), 0.25));
    b.output('out', b.matmul(p, v));
    const grads = [b.matmul(p, k), b.matmul(p, q, true, false), b.mul(dy, v)].map((g) => b.reshape(g, [1, B, H, T, D]));
    const back = b.reshape(b.reshape(b.transpose(b.concat(grads, 0), [1, 3, 0, 2, 4]), [B, T, 3 * C]), [B * T, 3 * C]);
    b.output('dx', b.matmul(back, w, false, true));
    b.output('odd', b.sigmoid(b.slice(b.reshape(x, [B * T * C]), [3], [64])));
    b.output('q', q); // a view at offset 0, read back: its own elements only
    const inputs = { x: { data: data([B * T, C]), shape: [B * T, C] }, dy: { data: data([B, H, T, D]), shape: [B, H, T, D] } };
    const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS, epilogues: true });
    const labels = planGraph(f, lowerings, DEFAULT_LIMITS, opts()).dispatches.map((d) => d.label);
    assert.equal(labels.filter((l) => l.startsWith('slice')).length, 1, labels.join('; ')); // the misaligned one
    assert.ok(!labels.some((l) => l.startsWith('transpose')), labels.join('; '));
    const plain = await runPlan(b.graph, inputs);
    const fused = await runPlan(f, inputs);
    const feed = { x: tf.tensor(inputs.x.data, inputs.x.shape), dy: tf.tensor(inputs.dy.data, inputs.dy.shape) };
    const ref = tf.tidy(() => Object.fromEntries(Object.entries(interpret(tfOps, b.graph, feed)).map(([n, val]) => [n, val.dataSync()])));
    const refFused = tf.tidy(() => Object.fromEntries(Object.entries(interpret(tfOps, f, feed)).map(([n, val]) => [n, val.dataSync()])));
    for (const name of Object.keys(ref)) {
      assert.equal(fused.values[name].length, ref[name].length, name);
      const d = maxAbsDiff(fused.values[name], plain.values[name]);
      const dRef = maxAbsDiff(fused.values[name], ref[name]);
      t.diagnostic(`${name}: max abs diff ${d} (vs tfjs cpu ${dRef.toExponential(1)})`);
      assert.ok(d <= 1e-6, `${name}: ${d}`);
      assert.ok(dRef <= 1e-5, `${name}: vs tfjs ${dRef}`);
      assert.ok(maxAbsDiff(refFused[name], ref[name]) <= 1e-6, `${name}: the fused graph interprets to the same values`);
    }
    t.diagnostic(`dispatches ${plain.dispatches} -> ${fused.dispatches}`);
  });

  test('an input in a caller-owned buffer (CompileOptions.bind) is read through a view of it too', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    // Row 1 of a [2, 64] state: 256 bytes in, an aligned view of the input's bytes, which bind moves with it.
    const b = new GraphBuilder();
    const state = b.input('state', [2, 64]);
    b.output('out', b.sigmoid(b.slice(state, [1, 0], [1, 64])));
    const plan = planGraph(b.graph, lowerings, DEFAULT_LIMITS, opts());
    assert.ok(!plan.dispatches.some((d) => d.label.startsWith('slice')), 'the slice is a view');
    const data = Float32Array.from({ length: 128 }, (_, i) => i / 32 - 2);
    const own = gpu.device!.createBuffer({ size: data.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
    gpu.device!.queue.writeBuffer(own, 0, data);
    const c = await compilePlan(gpu.device!, plan, { bind: { state: own } });
    try {
      c.run();
      const got = (await c.read('out')) as Float32Array;
      const want = Float32Array.from(data.subarray(64), (v) => 1 / (1 + Math.exp(-v)));
      assert.ok(maxAbsDiff(got, want) <= 1e-6, `max abs diff ${maxAbsDiff(got, want)}`);
    } finally {
      c.destroy();
      own.destroy();
    }
  });

  test('separate outputs: a norm or bias value that the backward also reads is stored by the kernel of its activation', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const r = rng(17);
    const data = (shape: number[]) => Float32Array.from({ length: sizeOf(shape) }, () => r() - 0.5);
    // Forward + backward shapes of VQGAN's GroupNorm + swish (chunked and one-pass) and CLIP's linear + QuickGELU: the
    // norm's (the biased product's, through a reshape) value is read by the activation and by its gradient. Then a
    // group whose later member reads an input made after the shared value: no separate output, as before.
    const cases: Array<{ name: string; groups: number; build: (b: GraphBuilder, x: Sym, dy: Sym) => { act: Sym; shared: Sym; grad: Sym }; x: number[]; dispatches: number }> = [
      ...[[1, 48, 48, 16], [1, 6, 6, 16]].map((x) => ({
        name: `groupNorm [${x}] + swish`,
        groups: 4,
        x,
        dispatches: x[1] === 48 ? 3 + 1 : 1 + 1,
        build: (b: GraphBuilder, xs: Sym, dy: Sym) => {
          const y = b.groupNorm(xs, 4, b.constant(Float32Array.from(data([16]), (v) => v + 1), [16]), b.constant(data([16]), [16]), 1e-6);
          return { act: b.swish(y), shared: y, grad: b.binary('swishGrad', y, dy) };
        },
      })),
      {
        name: 'linear + bias + quickGelu',
        groups: 0,
        x: [2, 5, 24],
        dispatches: 2,
        build: (b: GraphBuilder, xs: Sym, dy: Sym) => {
          const h = b.reshape(b.add(b.matmul(b.reshape(xs, [10, 24]), b.constant(data([24, 24]), [24, 24])), b.constant(data([24]), [24])), [2, 5, 24]);
          return { act: b.quickGelu(h), shared: h, grad: b.binary('quickGeluGrad', h, dy) };
        },
      },
      {
        name: 'linear + bias + QuickGELU stored transposed',
        groups: 0,
        x: [2, 5, 24],
        dispatches: 3, // the harness's scale after the transpose is a pass of its own
        build: (b: GraphBuilder, xs: Sym, dy: Sym) => {
          const h = b.add(b.matmul(b.reshape(xs, [10, 24]), b.constant(data([24, 24]), [24, 24])), b.constant(data([24]), [24]));
          const act = b.reshape(b.transpose(b.reshape(b.quickGelu(h), [2, 5, 3, 8]), [0, 2, 1, 3]), [2, 5, 24]);
          return { act, shared: h, grad: b.binary('quickGeluGrad', b.reshape(h, [2, 5, 24]), dy) };
        },
      },
    ];
    for (const c of cases) {
      const b = new GraphBuilder();
      const x = b.input('x', c.x);
      const dy = b.input('dy', c.x);
      const { act, grad } = c.build(b, x, dy);
      b.output('act', b.scale(act, 2));
      b.output('grad', grad);
      const inputs = { x: { data: data(c.x), shape: c.x }, dy: { data: data(c.x), shape: c.x } };
      const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS, epilogues: true });
      assert.equal(f.nodes.filter((n) => n.op === 'fusedOutput').length, 1, c.name);
      const plain = await runPlan(b.graph, inputs);
      const fused = await runPlan(f, inputs);
      assert.equal(fused.dispatches, c.dispatches, c.name);
      const feed = () => Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
      const ref = tf.tidy(() => Object.fromEntries(Object.entries(interpret(tfOps, b.graph, feed())).map(([n, val]) => [n, val.dataSync()])));
      const refFused = tf.tidy(() => Object.fromEntries(Object.entries(interpret(tfOps, f, feed())).map(([n, val]) => [n, val.dataSync()])));
      for (const name of ['act', 'grad']) {
        const d = maxAbsDiff(fused.values[name], plain.values[name]);
        const dRef = maxAbsDiff(fused.values[name], ref[name]);
        t.diagnostic(`${c.name} ${name}: ${plain.dispatches} -> ${fused.dispatches} dispatches, max abs diff ${d} (vs tfjs cpu ${dRef.toExponential(1)})`);
        assert.ok(d <= 1e-6, `${c.name} ${name}: ${d}`);
        assert.ok(dRef <= 1e-5, `${c.name} ${name}: vs tfjs ${dRef}`);
        assert.ok(maxAbsDiff(refFused[name], ref[name]) <= 1e-6, `${c.name} ${name}: the fused graph interprets to the same values`);
      }
    }
    // a = x * 2 is also read outside y's group (by neg), and y's group reads `late`, made after a: a cannot be y's
    // separate output (y's kernel would run before late exists), so y's group stops above a; a is then neg's.
    const b = new GraphBuilder();
    const x = b.input('x', [4, 8]);
    const a = b.scale(x, 2);
    const na = b.neg(a);
    const late = b.input('late', [4, 8]);
    const y = b.mul(b.exp(a), late);
    b.output('y', y);
    b.output('a', na);
    const f = fuseElementwise(b.graph, { maxInputs: MAX_INPUTS, epilogues: true });
    assert.equal(f.nodes[y.id].op, 'fused');
    assert.deepEqual(f.nodes[y.id].inputs.sort(), [a.id, late.id].sort());
    assert.equal(f.nodes[a.id].op, 'fused');
    assert.equal(f.nodes[na.id].op, 'fusedOutput');
    const inputs = { x: { data: data([4, 8]) }, late: { data: data([4, 8]) } };
    const plain = await runPlan(b.graph, inputs);
    const fused = await runPlan(f, inputs);
    for (const name of ['y', 'a']) assert.ok(maxAbsDiff(fused.values[name], plain.values[name]) <= 1e-6, name);
  });

  test('random DAGs with broadcasting and reshapes: fused and unfused plans agree, with fewer dispatches', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    let worst = 0;
    let before = 0;
    let after = 0;
    let withReshape = 0;
    let withMatmul = 0;
    let withTranspose = 0;
    for (let seed = 1; seed <= 12; seed++) {
      const { g, inputs } = randomGraph(100 + seed, 40);
      const f = fuseElementwise(g, { maxInputs: MAX_INPUTS, epilogues: true });
      withMatmul += fusedNodes(f).filter((n) => n.attrs.steps.some((st) => st.op === 'matmul')).length;
      withReshape += fusedNodes(f).filter((n) => n.attrs.steps.some((st) => st.op === 'reshape')).length;
      withTranspose += fusedNodes(f).filter((n) => n.attrs.steps.some((st) => st.op === 'transpose')).length;
      const plain = await runPlan(g, inputs);
      const fused = await runPlan(f, inputs);
      for (const k of Object.keys(plain.values)) {
        const want = plain.values[k];
        const got = fused.values[k];
        const d = Math.max(...want.map((w, i) => Math.abs(got[i] - w) / (1 + Math.abs(w))));
        worst = Math.max(worst, d);
        assert.ok(d <= 1e-6, `seed ${seed} ${k}: relative diff ${d}`);
      }
      assert.ok(fused.dispatches <= plain.dispatches, `seed ${seed}: ${fused.dispatches} vs ${plain.dispatches} dispatches`);
      before += plain.dispatches;
      after += fused.dispatches;
    }
    t.diagnostic(`dispatches ${before} -> ${after}; fused nodes with reshapes ${withReshape}, with a matmul ${withMatmul}, with a transpose ${withTranspose}, kernels with strided reads ${stridedKernels}; worst relative diff ${worst}`);
    assert.ok(withReshape > 0 && withMatmul > 0 && withTranspose > 0 && stridedKernels > 0, 'reshapes, matmuls, transposes and strided broadcasting inside groups');
    assert.ok(after < before * 0.7, `dispatches ${before} -> ${after}`);
  });
});
