// The compiled engine: the models, traced into one graph (graph/trace.ts), run as planned WGSL dispatches
// (wgsl/plan.ts, wgsl/executor.ts) instead of op-by-op through tfjs.
//
// Two ways in:
// - `executor` is an Executor<Sym>, so every pipeline written against Executor/Ops runs unchanged: ops record
//   nodes, and reading a tensor (ops.read, settle) evaluates the part of the graph it needs as a plan of its own
//   (cached by structure: a second read of the same computation re-uses the compiled plan and uploads only the
//   constants whose data changed);
// - `loop(spec, state)` compiles a whole training step (forward, its gradient w.r.t. one state tensor, the update)
//   once and runs it every step: the state stays on the GPU (carried from the outputs to the inputs inside the same
//   submission) and a step uploads only the spec's step data (LoopSpec.data: crop indices, warp parameters, seeds,
//   step scalars, all small), encodes the recorded dispatches and submits once. A spec without step data is instead
//   replayed: each step re-runs its functions on a ReplayOps, which checks that the structure is the recorded one
//   and collects the constants that changed. A structure change (the optimiser's buffers appearing after its first
//   step, step data of other names or shapes, a replay that differs) is handled by compiling again;
// - `stepper(spec, state)` runs a stateful step without gradient (StepSpec: GPT sampling with its key/value cache):
//   the state lives in GPU buffers of its own, allocated once and shared by every plan of the step (one per shape
//   of the step data: a one-token decode step, a prefill of several), each run uploads only the data (a few
//   hundred bytes for a decode step), and reads back only the spec's reads.
//
// Precision: 'f32' (default) keeps every value in float32. 'f16' stores the large weights (constants read as the
// weight of conv2d, conv2dGradInput and matmul, from HALF_MIN_ELEMENTS elements) as IEEE halves, packed two per u32
// and unpacked in the kernels' loads with WGSL's core unpack2x16float: half the constant memory and weight bandwidth,
// arithmetic and accumulation still f32, activations f32 (measured against f32: test/compiled-f16.test.ts, README).
// NOT built: native f16 arithmetic (shader-f16) and tensor-core (cooperative/subgroup matrix) kernels, which need a
// device with those features (e.g. an H200 with Dawn's allow_unsafe_apis and vulkan_enable_f16_on_nvidia toggles).
import { gradient } from './graph/autodiff.ts';
import { fuseElementwise } from './graph/fuse.ts';
import type { Graph, Node } from './graph/ir.ts';
import { GraphBuilder, type Recording, type Sym } from './graph/trace.ts';
import type { Executor, HostData, HostValue, LoopSpec as LoopSpecOf, Ops, StepSpec, TrainingLoop } from './ops.ts';
import { compilePlan, type CompiledGraph } from './wgsl/executor.ts';
import { DEFAULT_LIMITS, type KernelLimits } from './wgsl/kernel.ts';
import { halfInputs, lowerings } from './wgsl/lowerings.ts';
import { planGraph, type Plan } from './wgsl/plan.ts';

type Data = Float32Array | Int32Array;

export const PRECISIONS = ['f32', 'f16'] as const;
export type Precision = (typeof PRECISIONS)[number];

/**
 * Smallest constant stored as f16 under precision 'f16' (4 KiB as f32): below it the bytes saved are negligible, and
 * small operands are as often settled values (prompt embeddings) as weights.
 */
export const HALF_MIN_ELEMENTS = 1024;

/** The ancestors of `outputs` as a graph of their own (ids renumbered, order kept); newId[old] = new id or -1. */
export function extractGraph(g: Graph, outputs: Record<string, number>): { graph: Graph; newId: Int32Array } {
  const nodes = g.nodes;
  let top = -1;
  for (const id of Object.values(outputs)) top = Math.max(top, id);
  const needed = new Uint8Array(top + 1);
  for (const id of Object.values(outputs)) needed[id] = 1;
  for (let i = top; i >= 0; i--) if (needed[i]) for (const j of nodes[i].inputs) needed[j] = 1;
  const newId = new Int32Array(top + 1).fill(-1);
  const out: Node[] = [];
  for (let i = 0; i <= top; i++) {
    if (!needed[i]) continue;
    const n = nodes[i];
    newId[i] = out.length;
    out.push({ ...n, id: out.length, inputs: n.inputs.map((j) => newId[j]) });
  }
  const outs: Record<string, number> = {};
  for (const [k, id] of Object.entries(outputs)) outs[k] = newId[id];
  return { graph: { nodes: out, outputs: outs }, newId };
}

/** A string that equals another graph's exactly when the two plan to the same dispatches (const data aside). */
function signature(g: Graph): string {
  const parts: string[] = [];
  for (const n of g.nodes) {
    const attrs = n.op === 'const' ? '' : JSON.stringify(n.attrs);
    parts.push(`${n.op}(${n.inputs.join(',')})${attrs}:${n.dtype}[${n.shape.join(',')}]`);
  }
  parts.push(JSON.stringify(g.outputs));
  return parts.join(';');
}

interface CachedPlan {
  compiled: CompiledGraph;
  /** Const node ids of the extracted graph and the arrays last uploaded for them. */
  consts: Array<{ id: number; data: Data }>;
  plan: Plan;
}

type LoopSpec = LoopSpecOf<Sym>;
type HostTensor = HostValue;

export interface EngineStats {
  /** Plans compiled (graph evaluations and loop structures). */
  compiles: number;
  /** Host milliseconds of the last loop step: making its data (or replaying), uploading, encoding and submitting (not GPU time, not the readback). */
  lastStepHostMs: number;
  /** Of which: uploading the step's inputs and encoding the dispatches. */
  lastStepEncodeMs: number;
  /** Of which: making the step's data (LoopSpec.data), or replaying the functions for a spec without it. */
  lastStepReplayMs: number;
  dispatches: number;
  /** setPipeline calls per run of the last compiled loop plan. */
  pipelineSwitches: number;
  arenaBytes: number;
  constBytes: number;
}

export class CompiledEngine {
  readonly builder = new GraphBuilder();
  readonly stats: EngineStats = { compiles: 0, lastStepHostMs: 0, lastStepEncodeMs: 0, lastStepReplayMs: 0, dispatches: 0, pipelineSwitches: 0, arenaBytes: 0, constBytes: 0 };
  private current: Ops<Sym> = this.builder;
  private readonly cache = new Map<string, CachedPlan>();
  private readonly limits: KernelLimits;
  readonly ops: Ops<Sym>;
  readonly executor: Executor<Sym> & Required<Pick<Executor<Sym>, 'settle' | 'loop'>>;

  constructor(
    readonly device: GPUDevice,
    opts: {
      maxCachedPlans?: number;
      submit?: boolean;
      precision?: Precision;
      /**
       * Recompute the models' checkpointed blocks (the VQGAN decoder's and CLIP's residual blocks) in the backward
       * instead of keeping their intermediates until then: less than half the generate step's arena, for one more
       * forward of those blocks.
       */
      recompute?: boolean;
    } = {},
  ) {
    this.maxCached = opts.maxCachedPlans ?? 8;
    const recompute = opts.recompute ?? false;
    this.precision = opts.precision ?? 'f32';
    this.submit = opts.submit ?? true;
    const l = device.limits;
    this.limits = {
      ...DEFAULT_LIMITS,
      maxWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxInvocationsPerWorkgroup: Math.min(256, l.maxComputeInvocationsPerWorkgroup),
      maxWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      minOffsetAlignment: l.minStorageBufferOffsetAlignment,
    };
    // Every call goes to the current target: the builder, or a replay while a loop step re-runs its functions.
    const engine = this;
    // Methods bound once per target: a replay makes thousands of op calls per step.
    const boundByTarget = new WeakMap<object, Map<PropertyKey, unknown>>();
    this.ops = new Proxy({} as Ops<Sym>, {
      get(_, key: keyof Ops<Sym>) {
        if (key === 'read') return (x: Sym) => engine.evaluate([x]).then(([d]) => (d instanceof Float32Array ? d : Float32Array.from(d)));
        if (key === 'readInt') return (x: Sym) => engine.evaluate([x]).then(([d]) => (d instanceof Int32Array ? d : Int32Array.from(d)));
        // Without recompute the plan decides memory alone (liveness); with it, regions autodiff runs again.
        if (key === 'checkpoint') return recompute ? (fn: (x: Sym) => Sym, x: Sym) => (engine.current.checkpoint ? engine.current.checkpoint(fn, x) : fn(x)) : undefined;
        const target = engine.current as unknown as Record<PropertyKey, unknown>;
        let bound = boundByTarget.get(target);
        if (!bound) boundByTarget.set(target, (bound = new Map()));
        if (bound.has(key)) return bound.get(key);
        const v = target[key];
        const out = typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        if (typeof v === 'function') bound.set(key, out);
        return out;
      },
    });
    this.executor = {
      ops: this.ops,
      valueAndGrad: (f, x) => {
        const value = f(x);
        return { value, grad: gradient(this.builder, value, x) };
      },
      // Graph nodes are host objects; GPU memory belongs to the plans.
      scope: (f) => f(),
      keep: (x) => x,
      dispose: () => {},
      settle: (xs) => this.settle(xs),
      loop: (spec, state) => this.loop(spec, state),
    };
  }

  private readonly maxCached: number;
  /** How weights are stored (see the header). */
  readonly precision: Precision;
  /** false: plans are encoded but never submitted (host-time benchmarks, see CompileOptions.submit). */
  private readonly submit: boolean;

  /** Runs fn with the engine's ops going to `o` (a replay) instead of the builder. */
  withOps<R>(o: Ops<Sym>, fn: () => R): R {
    const prev = this.current;
    this.current = o;
    try {
      return fn();
    } finally {
      this.current = prev;
    }
  }

  /**
   * Elementwise groups fused (graph/fuse.ts keeps node ids, so const ids stay valid for updateConst and the names of
   * inputs and outputs are untouched), then lowered and placed.
   */
  private planFor(graph: Graph): Plan {
    const l = this.device.limits;
    const fused = fuseElementwise(graph, { maxInputs: Math.min(8, l.maxStorageBuffersPerShaderStage) - 1, epilogues: true });
    return planGraph(fused, lowerings, this.limits, {
      alignment: Math.max(16, l.minStorageBufferOffsetAlignment),
      maxBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      f16Weights: this.precision === 'f16' ? { inputs: halfInputs, minElements: HALF_MIN_ELEMENTS } : undefined,
    });
  }

  /** Computes xs now (one plan for all of them) and returns their data. */
  async evaluate(xs: Sym[]): Promise<Data[]> {
    const outputs: Record<string, number> = {};
    xs.forEach((x, i) => {
      this.builder.own(x, 'read');
      outputs[`r${i}`] = x.id;
    });
    // A constant needs no GPU.
    if (xs.every((x) => this.builder.graph.nodes[x.id].op === 'const')) {
      return xs.map((x) => (this.builder.graph.nodes[x.id].attrs as { data: Data }).data);
    }
    const { graph } = extractGraph(this.builder.graph, outputs);
    const key = signature(graph);
    let cached = this.cache.get(key);
    if (cached) {
      for (const c of cached.consts) {
        const data = (graph.nodes[c.id].attrs as { data: Data }).data;
        if (data !== c.data) {
          cached.compiled.updateConst(c.id, data);
          c.data = data;
        }
      }
      // Most recently used last.
      this.cache.delete(key);
      this.cache.set(key, cached);
    } else {
      const plan = this.planFor(graph);
      const compiled = await compilePlan(this.device, plan, { submit: this.submit });
      this.stats.compiles++;
      const consts = graph.nodes.filter((n) => n.op === 'const').map((n) => ({ id: n.id, data: (n.attrs as { data: Data }).data }));
      cached = { compiled, consts, plan };
      this.cache.set(key, cached);
      while (this.cache.size > this.maxCached) {
        const [oldest, v] = this.cache.entries().next().value as [string, CachedPlan];
        v.compiled.destroy();
        this.cache.delete(oldest);
      }
    }
    cached.compiled.run();
    return Promise.all(xs.map((_, i) => cached!.compiled.read(`r${i}`)));
  }

  /** xs computed now and made constants: later graphs start from their values instead of recomputing them. */
  async settle(xs: Sym[]): Promise<Sym[]> {
    const data = await this.evaluate(xs);
    return xs.map((x, i) => {
      const d = data[i];
      return d instanceof Int32Array ? this.builder.constantInt(d, x.shape) : this.builder.constant(d as Float32Array, x.shape);
    });
  }

  /** A compiled training loop starting from `state` (host data). */
  loop(spec: LoopSpec, state: Record<string, HostTensor>): CompiledLoop {
    return new CompiledLoop(this, spec, state);
  }

  /** A stateful step (see StepSpec) starting from `state` (host data), its state kept on the GPU. */
  stepper(spec: StepSpec<Sym>, state: Record<string, HostTensor>): CompiledStepper {
    return new CompiledStepper(this, spec, state);
  }

  /** @internal */
  compileGraph(graph: Graph, carry?: Record<string, string>, bind?: Record<string, GPUBuffer>): Promise<{ compiled: CompiledGraph; plan: Plan }> {
    const plan = this.planFor(graph);
    this.stats.compiles++;
    this.stats.dispatches = plan.dispatches.length;
    this.stats.arenaBytes = plan.memory.arenaBytes;
    this.stats.constBytes = plan.memory.constBytes;
    return compilePlan(this.device, plan, { carry, bind, submit: this.submit }).then((compiled) => {
      this.stats.pipelineSwitches = compiled.stats.pipelineSwitches;
      return { compiled, plan };
    });
  }

  destroy(): void {
    for (const v of this.cache.values()) v.compiled.destroy();
    this.cache.clear();
  }
}

interface LoopStructure {
  keys: string[];
  inputs: Record<string, Sym>;
  forward: Recording<{ loss: Sym; reads: Record<string, Sym> }>;
  grad: Sym;
  update: Recording<Record<string, Sym>>;
  /** The step data's input nodes, and the signature (names, dtypes, shapes) they were traced for. */
  data: Record<string, Sym>;
  dataSignature: string;
  /** Step data names the plan reads (an input no node uses is dropped from the plan). */
  dataInputs: Array<{ key: string; input: string }>;
  compiled: CompiledGraph;
  /** Builder node id -> extracted graph node id, for the constants a replay changes. */
  newId: Int32Array;
  /** The update returns the same keys: the state is carried on the GPU from run to run. */
  steady: boolean;
}

let loopIds = 0;

export class CompiledLoop implements TrainingLoop {
  private structure?: LoopStructure;
  /** The state on the host: the initial one, and after a structure change (read back from the last run). */
  private hostState?: Record<string, HostTensor>;
  private readonly id = ++loopIds;
  private compiles = 0;

  constructor(
    private readonly engine: CompiledEngine,
    private readonly spec: LoopSpec,
    state: Record<string, HostTensor>,
  ) {
    this.hostState = state;
  }

  private async build(state: Record<string, HostTensor>, stepData: Record<string, HostData>): Promise<LoopStructure> {
    const b = this.engine.builder;
    const keys = Object.keys(state).sort();
    const tag = `loop${this.id}.${++this.compiles}`;
    const inputs: Record<string, Sym> = {};
    for (const k of keys) inputs[k] = b.input(`${tag}:${k}`, state[k].shape);
    const data = dataNodes(b, tag, stepData);
    const forward = b.record((o) => this.engine.withOps(o, () => this.spec.forward(o, inputs, data)));
    const grad = gradient(b, forward.value.loss, inputs[this.spec.wrt]);
    const update = b.record((o) => this.engine.withOps(o, () => this.spec.update(o, inputs, grad, data)));
    const next = update.value;
    const nextKeys = Object.keys(next).sort();
    const steady = nextKeys.length === keys.length && nextKeys.every((k, i) => k === keys[i] && sameShape(next[k].shape, inputs[k].shape));
    const outputs: Record<string, number> = { loss: forward.value.loss.id };
    if (this.spec.readGrad) outputs.grad = grad.id;
    for (const [k, s] of Object.entries(forward.value.reads)) outputs[`read:${k}`] = s.id;
    for (const k of nextKeys) outputs[`next:${k}`] = next[k].id;
    const { graph, newId } = extractGraph(b.graph, outputs);
    // Inputs the step does not read were dropped by the extraction; the planner wants every input it has.
    const carry: Record<string, string> = {};
    if (steady) for (const k of keys) if (newId[inputs[k].id] >= 0) carry[`${tag}:${k}`] = `next:${k}`;
    const { compiled } = await this.engine.compileGraph(graph, carry);
    const dataInputs = plannedData(data, newId, tag);
    const first: Record<string, Data> = {};
    for (const k of keys) if (newId[inputs[k].id] >= 0) first[`${tag}:${k}`] = state[k].data;
    for (const { key, input } of dataInputs) first[input] = stepData[key].data;
    compiled.run(first);
    return { keys, inputs, forward, grad, update, data, dataSignature: dataSignature(stepData), dataInputs, compiled, newId, steady };
  }

  /** Runs a built structure with this step's data (no tracing, no replay). */
  private runWithData(s: LoopStructure, stepData: Record<string, HostData>): void {
    const inputs: Record<string, Data> = {};
    for (const { key, input } of s.dataInputs) inputs[input] = stepData[key].data;
    s.compiled.run(inputs);
  }

  /**
   * One step: returns the loss and the forward's reads (one readback). The first step (and any after a structure
   * change) compiles; the others replay.
   */
  async step(): Promise<{ loss: number; reads: Record<string, Float32Array>; grad?: Float32Array }> {
    const t0 = performance.now();
    const stepData = this.spec.data?.() ?? {};
    let s = this.structure;
    let ran = false;
    if (s && s.steady && this.spec.data) {
      if (s.dataSignature === dataSignature(stepData)) {
        const tData = performance.now();
        this.runWithData(s, stepData);
        ran = true;
        this.stats(t0, tData, s.compiled);
      } else {
        // Step data of other names or shapes: the traced functions would make other ops.
        s = await this.dropStructure();
      }
    } else if (s && s.steady) {
      const b = this.engine.builder;
      const f = b.replay(s.forward, (o) => this.engine.withOps(o, () => this.spec.forward(o, s!.inputs, s!.data)));
      const u = f.ok ? b.replay(s.update, (o) => this.engine.withOps(o, () => this.spec.update(o, s!.inputs, s!.grad, s!.data))) : f;
      const tReplay = performance.now();
      if (f.ok && u.ok) {
        for (const consts of [f.consts, u.consts]) {
          for (const [id, data] of consts) {
            const nid = s.newId[id];
            if (nid >= 0) s.compiled.updateConst(nid, data);
          }
        }
        s.compiled.run();
        ran = true;
        this.stats(t0, tReplay, s.compiled);
      } else {
        s = await this.dropStructure();
      }
    }
    if (!ran) {
      const state = this.hostState!;
      s = this.structure = await this.build(state, stepData);
      this.hostState = undefined;
      this.stats(t0, t0, s.compiled);
      if (!s.steady) {
        // A transitional step (new state keys): take its outputs as the next step's host state.
        const next: Record<string, HostTensor> = {};
        for (const k of Object.keys(s.update.value)) next[k] = { data: (await s.compiled.read(`next:${k}`)) as Float32Array, shape: s.update.value[k].shape };
        this.hostState = next;
      }
    }
    const done = s!;
    const reads: Record<string, Float32Array> = {};
    for (const k of Object.keys(done.forward.value.reads)) reads[k] = (await done.compiled.read(`read:${k}`)) as Float32Array;
    const loss = (await done.compiled.read('loss'))[0];
    const grad = this.spec.readGrad ? ((await done.compiled.read('grad')) as Float32Array) : undefined;
    if (!done.steady) {
      done.compiled.destroy();
      this.structure = undefined;
    }
    return { loss, reads, grad };
  }

  /** The structure changed: the state comes to the host, and the next build compiles anew from it. */
  private async dropStructure(): Promise<undefined> {
    this.hostState = await this.readState();
    this.structure?.compiled.destroy();
    this.structure = undefined;
    return undefined;
  }

  private stats(t0: number, tReplay: number, c: CompiledGraph): void {
    const st = this.engine.stats;
    st.lastStepReplayMs = tReplay - t0;
    st.lastStepEncodeMs = c.lastEncodeMs;
    st.lastStepHostMs = performance.now() - t0;
  }

  /** The current state, read back from the GPU (or the host copy between structures). */
  async readState(): Promise<Record<string, HostTensor>> {
    if (this.hostState) return this.hostState;
    const s = this.structure!;
    const out: Record<string, HostTensor> = {};
    // After a run the carried state sits in the outputs too (the carry copies outputs to inputs).
    for (const k of s.keys) out[k] = { data: (await s.compiled.read(`next:${k}`)) as Float32Array, shape: s.inputs[k].shape };
    return out;
  }

  destroy(): void {
    this.structure?.compiled.destroy();
    this.structure = undefined;
  }
}

interface StepPlan {
  compiled: CompiledGraph;
  /** Step data names the plan reads, and their input names. */
  dataInputs: Array<{ key: string; input: string }>;
  reads: string[];
}

let stepperIds = 0;

/**
 * The runner of a StepSpec (CompiledEngine.stepper): one plan per signature of the step data, traced and compiled
 * when that signature first comes, all reading the state from the same GPU buffers (CompileOptions.bind) and writing
 * the next state back into them (carry) in the run's own submission.
 */
export class CompiledStepper {
  private readonly state: Record<string, { buffer: GPUBuffer; shape: number[] }> = {};
  private readonly plans = new Map<string, StepPlan>();
  private readonly id = ++stepperIds;
  /** Of the last run: its plan's dispatches, and the host milliseconds of uploading the data + encoding (+ submitting). */
  readonly last = { dispatches: 0, encodeMs: 0, hostMs: 0 };

  constructor(
    private readonly engine: CompiledEngine,
    private readonly spec: StepSpec<Sym>,
    state: Record<string, HostTensor>,
  ) {
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    for (const [k, v] of Object.entries(state)) {
      const buffer = engine.device.createBuffer({ size: Math.max(16, Math.ceil(v.data.byteLength / 16) * 16), usage, label: `state ${k}` });
      engine.device.queue.writeBuffer(buffer, 0, v.data.buffer, v.data.byteOffset, v.data.byteLength);
      this.state[k] = { buffer, shape: v.shape };
    }
  }

  /** Plans compiled so far (one per signature of the step data). */
  get planCount(): number {
    return this.plans.size;
  }

  private async build(stepData: Record<string, HostData>): Promise<StepPlan> {
    const b = this.engine.builder;
    const tag = `step${this.id}.${this.plans.size + 1}`;
    const keys = Object.keys(this.state).sort();
    const inputs: Record<string, Sym> = {};
    for (const k of keys) inputs[k] = b.input(`${tag}:${k}`, this.state[k].shape);
    const data = dataNodes(b, tag, stepData);
    const { reads, next } = this.engine.withOps(b, () => this.spec.step(b, inputs, data));
    const nextKeys = Object.keys(next).sort();
    if (nextKeys.join() !== keys.join() || !keys.every((k) => sameShape(next[k].shape, inputs[k].shape))) {
      const list = (r: Record<string, Sym>, ks: string[]) => ks.map((k) => `${k}[${r[k].shape}]`).join(', ');
      throw new Error(`stepper: the next state (${list(next, nextKeys)}) must have the state's keys and shapes (${list(inputs, keys)})`);
    }
    const outputs: Record<string, number> = {};
    for (const [k, x] of Object.entries(reads)) outputs[`read:${k}`] = x.id;
    for (const k of keys) outputs[`next:${k}`] = next[k].id;
    const { graph, newId } = extractGraph(b.graph, outputs);
    const carry: Record<string, string> = {};
    const bind: Record<string, GPUBuffer> = {};
    for (const k of keys) {
      // A next state made without reading the state would need a carry into an input the plan does not have.
      if (newId[inputs[k].id] < 0) throw new Error(`stepper: the step does not read state ${k}`);
      carry[`${tag}:${k}`] = `next:${k}`;
      bind[`${tag}:${k}`] = this.state[k].buffer;
    }
    const { compiled } = await this.engine.compileGraph(graph, carry, bind);
    const dataInputs = plannedData(data, newId, tag);
    return { compiled, dataInputs, reads: Object.keys(reads) };
  }

  /** One step with this data (compiling a plan for its signature the first time): the state advances on the GPU; returns the reads. */
  async run(stepData: Record<string, HostData>): Promise<Record<string, Float32Array | Int32Array>> {
    const sig = dataSignature(stepData);
    let p = this.plans.get(sig);
    if (!p) this.plans.set(sig, (p = await this.build(stepData)));
    const t0 = performance.now();
    const inputs: Record<string, Data> = {};
    for (const { key, input } of p.dataInputs) inputs[input] = stepData[key].data;
    p.compiled.run(inputs);
    Object.assign(this.last, { dispatches: p.compiled.stats.dispatches, encodeMs: p.compiled.lastEncodeMs, hostMs: performance.now() - t0 });
    const st = this.engine.stats;
    st.lastStepReplayMs = 0;
    st.lastStepEncodeMs = p.compiled.lastEncodeMs;
    st.lastStepHostMs = this.last.hostMs;
    const out: Record<string, Float32Array | Int32Array> = {};
    for (const k of p.reads) out[k] = await p.compiled.read(`read:${k}`);
    return out;
  }

  /** The current state on the host (one copy per key). */
  async readState(): Promise<Record<string, HostTensor>> {
    const device = this.engine.device;
    const out: Record<string, HostTensor> = {};
    for (const [k, { buffer, shape }] of Object.entries(this.state)) {
      const staging = device.createBuffer({ size: buffer.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(buffer, 0, staging, 0, buffer.size);
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      const data = new Float32Array(staging.getMappedRange().slice(0, 4 * shape.reduce((a, n) => a * n, 1)));
      staging.destroy();
      out[k] = { data, shape };
    }
    return out;
  }

  destroy(): void {
    for (const p of this.plans.values()) p.compiled.destroy();
    this.plans.clear();
    for (const { buffer } of Object.values(this.state)) buffer.destroy();
  }
}

/** One graph input per entry of a step's data (named `${tag}:data:${key}`). */
function dataNodes(b: GraphBuilder, tag: string, stepData: Record<string, HostData>): Record<string, Sym> {
  const data: Record<string, Sym> = {};
  for (const [k, v] of Object.entries(stepData)) data[k] = b.input(`${tag}:data:${k}`, v.shape, v.data instanceof Int32Array ? 'i32' : 'f32');
  return data;
}

/** The step data a plan reads (an input no node uses is dropped from the extracted graph), with its input names. */
function plannedData(data: Record<string, Sym>, newId: Int32Array, tag: string): Array<{ key: string; input: string }> {
  return Object.keys(data)
    .filter((k) => newId[data[k].id] >= 0)
    .map((key) => ({ key, input: `${tag}:data:${key}` }));
}

/** Names, dtypes and shapes of a step's data: equal signatures trace to the same ops. */
function dataSignature(d: Record<string, HostData>): string {
  return Object.keys(d)
    .sort()
    .map((k) => `${k}:${d[k].data instanceof Int32Array ? 'i32' : 'f32'}[${d[k].shape.join(',')}]`)
    .join(';');
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);
