// The WGSL planner and executor: memory placement properties (no device), plans of hand-built graphs run on the
// software WebGPU adapter against a JavaScript evaluation of the same graph (chains, diamonds, reshape aliases, long
// lifetimes, scratch, re-runs with new inputs, constant updates, carried state), and random graphs end to end.
//
// The lowerings here are test-only and deliberately tiny (same-shape elementwise, a scratch-using sum), so that the
// planner is tested on its own; the real kernels have their own tests.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Attrs, Graph, Node, OpName } from '../src/engine/graph/ir.ts';
import { sizeOf } from '../src/engine/graph/ir.ts';
import { DEFAULT_LIMITS, f32Literal, type KernelNode, type Lowered, type Lowerings } from '../src/engine/wgsl/kernel.ts';
import { placeBlocks, planGraph, type Block, type Plan, type PlanOptions } from '../src/engine/wgsl/plan.ts';
import { compilePlan } from '../src/engine/wgsl/executor.ts';
import { lowerings } from '../src/engine/wgsl/lowerings.ts';
import * as tf from '@tensorflow/tfjs';
import { GraphBuilder } from '../src/engine/graph/trace.ts';
import { gradient } from '../src/engine/graph/autodiff.ts';
import { interpret } from '../src/engine/graph/interpret.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import type { Ops } from '../src/engine/ops.ts';
import { maxAbsDiff, suiteDevice } from './helpers.ts';

// ---- a tiny graph builder and a JS evaluator for the test op set ----

class G {
  readonly nodes: Node[] = [];
  readonly outputs: Record<string, number> = {};
  private add<K extends OpName>(op: K, inputs: number[], attrs: Attrs[K], shape: number[]): number {
    const id = this.nodes.length;
    this.nodes.push({ id, op, inputs, attrs, shape, dtype: 'f32' } as Node);
    return id;
  }
  shape = (x: number): number[] => this.nodes[x].shape;
  input = (name: string, shape: number[]) => this.add('input', [], { name }, shape);
  const = (data: number[], shape: number[]) => this.add('const', [], { data: new Float32Array(data) }, shape);
  unary = (fn: 'neg' | 'exp' | 'scale' | 'addScalar', x: number, s?: number) => this.add('unary', [x], { fn, s }, this.shape(x));
  binary = (fn: 'add' | 'sub' | 'mul', a: number, b: number) => this.add('binary', [a, b], { fn }, this.shape(a));
  reshape = (x: number, shape: number[]) => this.add('reshape', [x], {}, shape);
  sumAll = (x: number) => this.add('sum', [x], { axes: this.shape(x).map((_, i) => i), keepDims: false }, []);
  graph = (): Graph => ({ nodes: this.nodes, outputs: this.outputs });
}

function evaluate(g: Graph, inputs: Record<string, Float32Array>, consts = new Map<number, Float32Array>()): Map<number, Float32Array> {
  const v = new Map<number, Float32Array>();
  for (const n of g.nodes) {
    const x = n.inputs.map((i) => v.get(i)!);
    const map = (f: (i: number) => number) => Float32Array.from({ length: sizeOf(n.shape) }, (_, i) => f(i));
    const a = n.attrs as { name: string; data: Float32Array; fn: string; s: number };
    let r: Float32Array;
    if (n.op === 'input') r = inputs[a.name];
    else if (n.op === 'const') r = consts.get(n.id) ?? a.data;
    else if (n.op === 'reshape') r = x[0];
    else if (n.op === 'sum') r = Float32Array.of(x[0].reduce((p, q) => p + q, 0));
    else if (n.op === 'unary') {
      const f = { neg: (t: number) => -t, exp: Math.exp, scale: (t: number) => t * a.s, addScalar: (t: number) => t + a.s }[a.fn]!;
      r = map((i) => f(x[0][i]));
    } else {
      const f = { add: (p: number, q: number) => p + q, sub: (p: number, q: number) => p - q, mul: (p: number, q: number) => p * q }[a.fn]!;
      r = map((i) => f(x[0][i], x[1][i]));
    }
    v.set(n.id, r);
  }
  return v;
}

// ---- test-only lowerings ----

const header = (names: string[], out: string[]) =>
  [...names.map((nm, i) => `@group(0) @binding(${i}) var<storage, read> ${nm}: array<f32>;`),
   ...out.map((nm, i) => `@group(0) @binding(${names.length + i}) var<storage, read_write> ${nm}: array<f32>;`)].join('\n');

const each = (count: number, body: string) =>
  `@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { let i = g.x; if (i >= ${count}u) { return; } ${body} }`;

const wg = (count: number): [number, number, number] => [Math.ceil(count / 64), 1, 1];

const testLowerings: Lowerings = {
  unary: (n) => {
    const { fn, s } = n.attrs;
    const e = { neg: '-x[i]', exp: 'exp(x[i])', scale: `x[i] * ${f32Literal(s ?? 0)}`, addScalar: `x[i] + ${f32Literal(s ?? 0)}` }[fn as string];
    if (!e) throw new Error(`test lowering: unary ${fn}`);
    const count = sizeOf(n.output.shape);
    return { dispatches: [{ code: `${header(['x'], ['y'])}\n${each(count, `y[i] = ${e};`)}`, bindings: [{ input: 0 }, { output: true }], workgroups: wg(count) }] };
  },
  binary: (n) => {
    const op = { add: '+', sub: '-', mul: '*' }[n.attrs.fn as string];
    if (!op || n.inputs.some((t) => sizeOf(t.shape) !== sizeOf(n.output.shape))) throw new Error(`test lowering: binary ${n.attrs.fn}`);
    const count = sizeOf(n.output.shape);
    const code = `${header(['a', 'b'], ['y'])}\n${each(count, `y[i] = a[i] ${op} b[i];`)}`;
    return { dispatches: [{ code, bindings: [{ input: 0 }, { input: 1 }, { output: true }], workgroups: wg(count) }] };
  },
  reshape: () => ({ dispatches: [], alias: 0 }),
  // Sum of all elements through a scratch copy (two dispatches), to exercise scratch buffers.
  sum: (n: KernelNode<'sum'>): Lowered => {
    const count = sizeOf(n.inputs[0].shape);
    const copy = `${header(['x'], ['s'])}\n${each(count, 's[i] = x[i];')}`;
    const total = `${header([], ['s', 'y'])}\n@compute @workgroup_size(1) fn main() { var t = 0.0; for (var i = 0u; i < ${count}u; i++) { t += s[i]; } y[0] = t; }`;
    return {
      scratch: [count * 4],
      dispatches: [
        { code: copy, bindings: [{ input: 0 }, { scratch: 0 }], workgroups: wg(count) },
        { code: total, bindings: [{ scratch: 0 }, { output: true }], workgroups: [1, 1, 1] },
      ],
    };
  },
};

const OPTS: PlanOptions = { alignment: 16, maxBindingSize: 1 << 27, maxBufferSize: 2 ** 31 };

// ---- random graphs ----

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

const SHAPES = [[16], [4, 4], [2, 8], [8], [2, 4], [3], [1, 3], [1], [1, 1]];

function randomGraph(seed: number, size: number): { g: Graph; inputs: Record<string, Float32Array> } {
  const r = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const b = new G();
  const inputs: Record<string, Float32Array> = {};
  const ids: number[] = [];
  for (let k = 0; k < 2; k++) {
    const shape = pick(SHAPES);
    const name = `in${k}`;
    inputs[name] = Float32Array.from({ length: sizeOf(shape) }, () => r() - 0.5);
    ids.push(b.input(name, shape));
  }
  const cshape = pick(SHAPES);
  ids.push(b.const(Array.from({ length: sizeOf(cshape) }, () => r() - 0.5), cshape));
  for (let k = 0; k < size; k++) {
    // Mostly recent operands (short lifetimes, like real graphs), sometimes an old one (a long gap).
    const x = r() < 0.8 ? ids[Math.max(0, ids.length - 1 - Math.floor(r() * 4))] : pick(ids);
    const count = sizeOf(b.shape(x));
    const c = r();
    if (c < 0.15) ids.push(b.reshape(x, pick(SHAPES.filter((s) => sizeOf(s) === count))));
    else if (c < 0.2) ids.push(b.sumAll(x));
    else if (c < 0.5) ids.push(b.unary(pick(['neg', 'scale', 'addScalar'] as const), x, 0.5 + r()));
    else {
      const same = ids.filter((i) => sizeOf(b.shape(i)) === count && b.shape(i).join() === b.shape(x).join());
      ids.push(b.binary(pick(['add', 'sub', 'mul'] as const), x, pick(same)));
    }
  }
  b.outputs.last = ids[ids.length - 1];
  b.outputs.mid = ids[3 + Math.floor(r() * size * 0.5)];
  return { g: b.graph(), inputs };
}

/**
 * Simulates a plan's execution over the bytes of its buffers: each dispatch must find every value it reads where the
 * node that made it left it, never overwritten in between; outputs must still be there at the end.
 */
function checkNoClobber(g: Graph, plan: Plan): void {
  const owner = plan.buffers.map((b) => new Int32Array(b.size / 4).fill(-1));
  const root = g.nodes.map((n) => n.id);
  for (const n of g.nodes) if (n.op === 'reshape') root[n.id] = root[n.inputs[0]];
  const mark = (s: { buffer: number; offset: number; size: number }, who: number) => owner[s.buffer].fill(who, s.offset / 4, (s.offset + s.size) / 4);
  const holds = (s: { buffer: number; offset: number; size: number }, who: number) => owner[s.buffer].subarray(s.offset / 4, (s.offset + s.size) / 4).every((o) => o === who);
  for (const t of Object.values(plan.inputs)) mark(t.slot, t.node);
  for (const c of plan.consts) mark(c.slot, c.node);
  // Scratch is marked with a fresh negative owner per dispatch group of a node (it is only valid within the node).
  let prevNode = -1;
  for (const d of plan.dispatches) {
    const n = g.nodes[d.node];
    const lo = testLowerings[n.op] as (k: KernelNode, l: typeof DEFAULT_LIMITS) => Lowered;
    const lowered = lo({ op: n.op, attrs: n.attrs, inputs: n.inputs.map((i) => g.nodes[i]), output: n }, DEFAULT_LIMITS);
    const di = plan.dispatches.filter((e) => e.node === d.node).indexOf(d);
    const bindings = lowered.dispatches[di].bindings;
    // WebGPU's per-buffer usage rule: no buffer both read-only and read-write within one dispatch.
    const read = new Set(d.slots.filter((_, k) => !d.writable[k]).map((sl) => sl.buffer));
    assert.ok(d.slots.every((sl, k) => !d.writable[k] || !read.has(sl.buffer)), `node ${n.id} reads and writes one buffer`);
    bindings.forEach((bnd, k) => {
      if ('input' in bnd) assert.ok(holds(d.slots[k], root[n.inputs[bnd.input]]), `node ${n.id} input ${bnd.input} was clobbered`);
      if ('scratch' in bnd && prevNode === d.node) assert.ok(holds(d.slots[k], -2 - n.id), `node ${n.id} scratch was clobbered`);
    });
    bindings.forEach((bnd, k) => {
      if ('output' in bnd) mark(d.slots[k], n.id);
      if ('scratch' in bnd) mark(d.slots[k], -2 - n.id);
    });
    prevNode = d.node;
  }
  for (const [name, t] of Object.entries(plan.outputs)) assert.ok(holds(t.slot, root[t.node]), `output ${name} was clobbered`);
}

describe('memory placement (no device)', () => {
  test('placeBlocks: time-overlapping blocks never share bytes; offsets aligned; arenas within the cap', () => {
    for (let seed = 1; seed <= 60; seed++) {
      const r = rng(seed);
      const blocks: Block[] = Array.from({ length: 5 + Math.floor(r() * 60) }, () => {
        const start = Math.floor(r() * 40);
        return { size: 4 * (1 + Math.floor(r() * 100)), start, end: start + Math.floor(r() * r() * 20), group: Math.floor(r() * 3) };
      });
      const cap = 1024;
      const { at, arenaSizes } = placeBlocks(blocks, 16, cap);
      for (let i = 0; i < blocks.length; i++) {
        assert.equal(at[i].offset % 16, 0);
        assert.ok(at[i].offset + blocks[i].size <= arenaSizes[at[i].arena] && arenaSizes[at[i].arena] <= cap);
        if (i > 0 && at[i].arena === at[i - 1].arena) assert.equal(blocks[i].group, blocks[i - 1].group);
        for (let j = 0; j < i; j++) {
          const a = blocks[i], b = blocks[j];
          if (at[i].arena !== at[j].arena || a.end < b.start || b.end < a.start) continue;
          const disjoint = at[i].offset + a.size <= at[j].offset || at[j].offset + b.size <= at[i].offset;
          assert.ok(disjoint, `seed ${seed}: blocks ${i} and ${j} overlap`);
        }
      }
    }
  });

  test('random graphs: no value is overwritten before its last read; peak < sum of value sizes', (t) => {
    const ratios: number[] = [];
    const overLive: number[] = [];
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    for (let seed = 1; seed <= 40; seed++) {
      const { g } = randomGraph(seed, 30);
      const plan = planGraph(g, testLowerings, DEFAULT_LIMITS, OPTS);
      checkNoClobber(g, plan);
      const m = plan.memory;
      assert.ok(m.peakLiveBytes <= m.arenaBytes && m.arenaBytes < m.valueBytes, `seed ${seed}: ${JSON.stringify(m)}`);
      ratios.push(m.arenaBytes / m.valueBytes);
      overLive.push(m.arenaBytes / m.peakLiveBytes);
    }
    t.diagnostic(`arena / sum of values: mean ${mean(ratios).toFixed(2)}; arena / peak live: mean ${mean(overLive).toFixed(2)}, max ${Math.max(...overLive).toFixed(2)}`);
  });

  test('a long chain reuses memory: peak is a few values, not the chain', () => {
    const b = new G();
    let x = b.input('x', [256]);
    for (let k = 0; k < 100; k++) x = b.unary('neg', x);
    b.outputs.y = x;
    const plan = planGraph(b.graph(), testLowerings, DEFAULT_LIMITS, OPTS);
    // input (pinned) + two alternating intermediates + output; no-reuse would be 101 values.
    assert.ok(plan.memory.arenaBytes <= 4 * 1024, `peak ${plan.memory.arenaBytes}`);
    assert.equal(plan.memory.valueBytes, 101 * 1024);
    assert.equal(plan.dispatches.length, 100);
  });

  test('dead nodes are not lowered; a missing lowering names the node', () => {
    const b = new G();
    const x = b.input('x', [4]);
    b.unary('exp', x); // dead
    b.outputs.y = b.unary('neg', x);
    assert.equal(planGraph(b.graph(), testLowerings, DEFAULT_LIMITS, OPTS).dispatches.length, 1);
    const d = new G();
    d.outputs.t = d.sumAll(d.input('x', [3]));
    assert.throws(() => planGraph(d.graph(), { unary: testLowerings.unary }, DEFAULT_LIMITS, OPTS), /no WGSL lowering for sum: %1 = sum\(%0\[3\]\)/);
  });

  test('constants get their own buffer; reshape of a value shares its bytes', () => {
    const b = new G();
    const x = b.input('x', [2, 4]);
    const w = b.const([1, 2, 3, 4, 5, 6, 7, 8], [8]);
    const r = b.reshape(x, [8]);
    b.outputs.y = b.binary('add', r, w);
    b.outputs.r = r;
    const plan = planGraph(b.graph(), testLowerings, DEFAULT_LIMITS, OPTS);
    assert.deepEqual(plan.outputs.r.slot, plan.inputs.x.slot);
    assert.equal(plan.buffers[plan.consts[0].slot.buffer].kind, 'const');
    assert.equal(plan.buffers[plan.inputs.x.slot.buffer].kind, 'arena');
  });
});

describe('executor on the software WebGPU adapter', () => {
  const gpu = suiteDevice();

  const opts = (): PlanOptions => ({
    alignment: gpu.device!.limits.minStorageBufferOffsetAlignment,
    maxBindingSize: gpu.device!.limits.maxStorageBufferBindingSize,
    maxBufferSize: gpu.device!.limits.maxBufferSize,
  });

  async function check(g: Graph, inputs: Record<string, Float32Array>, label: string): Promise<number> {
    const plan = planGraph(g, testLowerings, DEFAULT_LIMITS, opts());
    const c = await compilePlan(gpu.device!, plan);
    try {
      c.run(inputs);
      const want = evaluate(g, inputs);
      let worst = 0;
      for (const [name, id] of Object.entries(g.outputs)) {
        const got = await c.read(name);
        const d = maxAbsDiff(got, want.get(id)!);
        assert.ok(d <= 1e-5 * (1 + Math.max(...want.get(id)!.map(Math.abs))), `${label} ${name}: max abs diff ${d}`);
        worst = Math.max(worst, d);
      }
      return worst;
    } finally {
      c.destroy();
    }
  }

  test('chain, diamond, reshape alias, value used after a long gap, scratch', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const b = new G();
    const x = b.input('x', [2, 8]);
    const early = b.unary('scale', x, 3);
    let y = b.unary('exp', b.unary('neg', early));
    const left = b.unary('addScalar', y, 1);
    const right = b.unary('scale', y, -2);
    y = b.binary('mul', left, right); // diamond
    const flat = b.reshape(y, [16]);
    for (let k = 0; k < 6; k++) y = b.unary('addScalar', b.reshape(y, k % 2 ? [2, 8] : [4, 4]), 0.25);
    b.outputs.gap = b.binary('sub', b.reshape(y, [2, 8]), early); // `early` read again after many nodes
    b.outputs.flat = flat;
    b.outputs.total = b.sumAll(flat);
    const inputs = { x: Float32Array.from({ length: 16 }, (_, i) => Math.sin(i) * 0.5) };
    const d = await check(b.graph(), inputs, 'hand-built');
    t.diagnostic(`max abs diff ${d.toExponential(2)}`);
  });

  test('re-running with new inputs gives new results; updateConst; carried state; host time measured', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const b = new G();
    const x = b.input('x', [4]);
    const s = b.input('state', [4]);
    const w = b.const([1, 2, 3, 4], [4]);
    const y = b.binary('mul', x, w);
    b.outputs.y = y;
    b.outputs.next = b.binary('add', s, y); // state += x * w
    b.outputs.total = b.sumAll(y);
    const plan = planGraph(b.graph(), testLowerings, DEFAULT_LIMITS, opts());
    const c = await compilePlan(gpu.device!, plan, { carry: { state: 'next' } });
    try {
      c.run({ x: Float32Array.of(1, 1, 1, 1), state: new Float32Array(4) });
      assert.deepEqual([...(await c.read('y'))], [1, 2, 3, 4]);
      assert.equal(await c.readScalar('total'), 10);
      c.run({ x: Float32Array.of(2, 0, -1, 0.5) });
      assert.deepEqual([...(await c.read('y'))], [2, 0, -3, 2]);
      assert.deepEqual([...(await c.read('next'))], [3, 2, 0, 6]);
      c.updateConst(w, Float32Array.of(10, 10, 10, 10));
      c.run(); // inputs kept from the previous run
      assert.deepEqual([...(await c.read('y'))], [20, 0, -10, 5]);
      assert.deepEqual([...(await c.read('next'))], [23, 2, -10, 11]);
      assert.ok(c.lastRunHostMs > 0);
      assert.throws(() => c.run({ x: new Float32Array(3) }), /3 elements given/);
      assert.throws(() => c.updateConst(x, new Float32Array(4)), /not a constant/);
      t.diagnostic(`host ms per run (software adapter, includes llvmpipe execution in submit): ${c.lastRunHostMs.toFixed(2)}`);
    } finally {
      c.destroy();
    }
  });

  test('the first run needs every input', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    const b = new G();
    b.outputs.y = b.binary('add', b.input('a', [4]), b.input('b', [4]));
    const c = await compilePlan(gpu.device!, planGraph(b.graph(), testLowerings, DEFAULT_LIMITS, opts()));
    try {
      assert.throws(() => c.run({ a: new Float32Array(4) }), /inputs never written: b/);
    } finally {
      c.destroy();
    }
  });

  test('random graphs equal their JavaScript evaluation', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    let worst = 0;
    for (let seed = 100; seed < 106; seed++) {
      const { g, inputs } = randomGraph(seed, 25);
      worst = Math.max(worst, await check(g, inputs, `seed ${seed}`));
    }
    t.diagnostic(`max abs diff over 6 random graphs: ${worst.toExponential(2)}`);
  });

  test('the real lowerings: conv2d + bias, reshape, matmul, broadcast add, swish, transpose vs tfjs cpu', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    await tf.setBackend('cpu');
    const r = rng(7);
    const data = (n: number) => Float32Array.from({ length: n }, () => r() - 0.5);
    const [xd, wd, bd, md, cd] = [data(48), data(216), data(8), data(40), data(5)];
    const nodes: Node[] = [];
    const add = (op: OpName, inputs: number[], attrs: unknown, shape: number[]) => nodes.push({ id: nodes.length, op, inputs, attrs, shape, dtype: 'f32' } as Node) - 1;
    const x = add('input', [], { name: 'x' }, [1, 4, 4, 3]);
    const w = add('const', [], { data: wd }, [3, 3, 3, 8]);
    const bias = add('const', [], { data: bd }, [8]);
    const conv = add('conv2d', [x, w, bias], { stride: 1, pad: [1, 1, 1, 1] }, [1, 4, 4, 8]);
    const flat = add('reshape', [conv], {}, [16, 8]);
    const m = add('const', [], { data: md }, [8, 5]);
    const c = add('const', [], { data: cd }, [5]);
    const mm = add('matmul', [flat, m], { transposeA: false, transposeB: false }, [16, 5]);
    const act = add('unary', [add('binary', [mm, c], { fn: 'add' }, [16, 5])], { fn: 'swish' }, [16, 5]);
    const out = add('transpose', [act], { perm: [1, 0] }, [5, 16]);
    const plan = planGraph({ nodes, outputs: { y: out } }, lowerings, DEFAULT_LIMITS, opts());
    const compiled = await compilePlan(gpu.device!, plan);
    try {
      compiled.run({ x: xd });
      const got = await compiled.read('y');
      const want = tf.tidy(() => {
        const y = tf.conv2d(tf.tensor4d(xd, [1, 4, 4, 3]), tf.tensor4d(wd, [3, 3, 3, 8]), 1, 'same').add(tf.tensor1d(bd));
        const z = tf.matMul(y.reshape([16, 8]), tf.tensor2d(md, [8, 5])).add(tf.tensor1d(cd));
        return z.mul(tf.sigmoid(z)).transpose([1, 0]).dataSync() as Float32Array;
      });
      const d = maxAbsDiff(got, want);
      assert.ok(d < 1e-5, `max abs diff ${d}`);
      t.diagnostic(`max abs diff ${d.toExponential(2)}; ${plan.dispatches.length} dispatches`);
    } finally {
      compiled.destroy();
    }
  });

  test('a traced function and its gradient (tracer + autodiff) vs the graph interpreted on tfjs cpu; a replayed const', async (t) => {
    if (gpu.unavailable) return t.skip(gpu.unavailable);
    await tf.setBackend('cpu');
    const r = rng(11);
    const data = (n: number) => Float32Array.from({ length: n }, () => r() - 0.5);
    const [w1, b1, w2, target] = [data(6 * 8), data(8), data(8 * 4), data(3 * 4)];
    // A small MLP-with-attention-like block: linear, gelu, layerNorm, softmax, linear, squared error.
    const model = <T>(o: Ops<T>, x: T, tgt: Float32Array): T => {
      const h = o.gelu(o.linear(x, o.constant(w1, [6, 8]), o.constant(b1, [8])));
      const n = o.layerNorm(h, o.constant(new Float32Array(8).fill(1.5), [8]), o.constant(new Float32Array(8).fill(0.1), [8]), 1e-5);
      const y = o.matmul(o.softmax(n), o.constant(w2, [8, 4]));
      return o.mean(o.square(o.sub(y, o.constant(tgt, [3, 4]))));
    };
    const b = new GraphBuilder();
    const x = b.input('x', [3, 6]);
    const rec = b.record((o) => model(o, x, target));
    b.output('loss', rec.value);
    b.output('grad', gradient(b, rec.value, x));
    const plan = planGraph(b.graph, lowerings, DEFAULT_LIMITS, opts());
    const compiled = await compilePlan(gpu.device!, plan);
    const xd = data(18);
    const compare = async (label: string) => {
      const want = tf.tidy(() => {
        const out = interpret(tfOps, b.graph, { x: tf.tensor2d(xd, [3, 6]) }) as Record<string, tf.Tensor>;
        return { loss: out.loss.dataSync()[0], grad: out.grad.dataSync() as Float32Array };
      });
      compiled.run({ x: xd });
      const dl = Math.abs((await compiled.readScalar('loss')) - want.loss);
      const dg = maxAbsDiff(await compiled.read('grad'), want.grad);
      assert.ok(dl < 1e-5 && dg < 1e-5, `${label}: loss diff ${dl}, grad diff ${dg}`);
      t.diagnostic(`${label}: loss diff ${dl.toExponential(2)}, grad max abs diff ${dg.toExponential(2)}`);
    };
    try {
      await compare('traced');
      // The next step's target differs: replay the model, upload only the changed consts.
      const replay = b.replay(rec, (o) => model(o, x, data(12)));
      assert.ok(replay.ok);
      assert.ok(replay.consts.size >= 1);
      for (const [id, d] of replay.consts) compiled.updateConst(id, d);
      await compare('replayed');
      t.diagnostic(`${plan.dispatches.length} dispatches; arena ${plan.memory.arenaBytes} B (peak live ${plan.memory.peakLiveBytes} B) vs ${plan.memory.valueBytes} B without reuse`);
    } finally {
      compiled.destroy();
    }
  });
});
