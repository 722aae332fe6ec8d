// The size of the compiled generate step at the real shapes (f16_16384 decoder + ViT-B/32, random weights), without
// running it: the step's graph is traced as CompiledEngine traces it, then planned with and without elementwise
// fusion (graph/fuse.ts, with matmul epilogues, as CompiledEngine plans); printed: live nodes, dispatches before/after
// fusion, what the remaining dispatches are, the time to fuse and to plan (both must stay in seconds), and the
// constant bytes with precision f32 and f16 (weights stored as halves: CompiledEngine's header).
//
//   node --import tsx src/bench/compiled-plan.ts [--size 256] [--cutn 32] [--cut-method original]
//
// The engine's loop compiles its plans through CompiledEngine.compileGraph; here that is replaced by a stand-in that
// keeps the graph and returns a plan that is never compiled nor run (reads give zeros), so nothing but the prompt
// encoding touches the GPU and the software adapter suffices.
import { CompiledEngine, HALF_MIN_ELEMENTS } from '../engine/compiled.ts';
import { fuseElementwise } from '../engine/graph/fuse.ts';
import type { Graph } from '../engine/graph/ir.ts';
import type { CompiledGraph } from '../engine/wgsl/executor.ts';
import { DEFAULT_LIMITS } from '../engine/wgsl/kernel.ts';
import { halfInputs, lowerings } from '../engine/wgsl/lowerings.ts';
import { planGraph, type Plan, type PlanOptions } from '../engine/wgsl/plan.ts';
import { clipWeights } from '../models/clip-load.ts';
import { ByteTokenizer } from '../models/demo.ts';
import { SyntheticWeights } from '../models/synthetic.ts';
import { vqganWeights } from '../models/vqgan.ts';
import type { CutMethod } from '../pipelines/cutouts.ts';
import { DEFAULT_SETTINGS, Generation } from '../pipelines/generate.ts';
import { VIT_B_32 } from './clip.ts';
import { runStandalone, withWebGPU } from './entry.ts';
import { F16_16384 } from './vqgan.ts';

/** A CompiledGraph that does nothing: runs are no-ops, outputs read as zeros. */
function inert(plan: Plan): CompiledGraph {
  return {
    run() {},
    async read(name) {
      const t = plan.outputs[name];
      return t.dtype === 'i32' ? new Int32Array(t.slot.size / 4) : new Float32Array(t.slot.size / 4);
    },
    async readScalar() {
      return 0;
    },
    updateConst() {},
    destroy() {},
    lastRunHostMs: 0,
    lastEncodeMs: 0,
    stats: { dispatches: plan.dispatches.length, pipelines: 0, pipelineSwitches: 0, bindGroups: 0, buffers: 0, arenaBytes: plan.memory.arenaBytes, constBytes: plan.memory.constBytes },
  };
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;

const liveNodes = (g: Graph): number => {
  const live = new Uint8Array(g.nodes.length);
  for (const id of Object.values(g.outputs)) live[id] = 1;
  let n = 0;
  for (let i = g.nodes.length - 1; i >= 0; i--) if (live[i]) for (const j of g.nodes[i].inputs) live[j] = 1;
  for (let i = 0; i < g.nodes.length; i++) n += live[i];
  return n;
};

/** Dispatch counts by node kind (unary/binary by function), largest first. */
function histogram(g: Graph, plan: Plan, top: number): string {
  const h = new Map<string, number>();
  for (const d of plan.dispatches) {
    const n = g.nodes[d.node];
    const k = n.op === 'unary' || n.op === 'binary' ? `${n.op} ${(n.attrs as { fn: string }).fn}` : n.op;
    h.set(k, (h.get(k) ?? 0) + 1);
  }
  return [...h].sort((a, b) => b[1] - a[1]).slice(0, top).map(([k, v]) => `${k} ${v}`).join(', ');
}

export async function benchCompiledPlan(log: (line: string) => void, opts: { size: number; cutn: number; cutMethod: CutMethod; recompute?: boolean }): Promise<void> {
  await withWebGPU(log, 'compiled plan', (setup) => planOn(log, setup.device, opts));
}

async function planOn(log: (line: string) => void, device: GPUDevice, opts: { size: number; cutn: number; cutMethod: CutMethod; recompute?: boolean }): Promise<void> {
  const engine = new CompiledEngine(device, { submit: false, recompute: opts.recompute });
  const graphs: Graph[] = [];
  engine.compileGraph = async (graph) => {
    graphs.push(graph);
    const plan = planGraph(graph, lowerings, DEFAULT_LIMITS, planOptions(device));
    return { compiled: inert(plan), plan };
  };
  const o = engine.ops;
  let gen: Generation<unknown> | undefined;
  try {
    const vw = vqganWeights(o, new SyntheticWeights(16384), F16_16384, { encoder: false });
    const cw = clipWeights(o, new SyntheticWeights(32), VIT_B_32);
    const settings = { ...DEFAULT_SETTINGS, prompts: 'a watercolor lighthouse at dawn', width: opts.size, height: opts.size, cutn: opts.cutn, cutMethod: opts.cutMethod, seed: 1, iterations: 3 };
    gen = (await Generation.create(engine.executor, { name: 'f16_16384', config: F16_16384, weights: vw }, [{ name: 'ViT-B/32', config: VIT_B_32, weights: cw, tokenizer: new ByteTokenizer(77), weight: 1 }], settings)) as Generation<unknown>;
    // Step 1 plans the step without optimiser state; step 2 the steady one that every later step replays.
    await gen.step();
    await gen.step();
    const g = graphs[graphs.length - 1];
    const t0 = performance.now();
    const plain = planGraph(g, lowerings, DEFAULT_LIMITS, planOptions(device));
    const t1 = performance.now();
    const f = fuseElementwise(g, { maxInputs: 7, epilogues: true });
    const t2 = performance.now();
    const fused = planGraph(f, lowerings, DEFAULT_LIMITS, planOptions(device));
    const t3 = performance.now();
    log(`generate step ${opts.size}x${opts.size}/${opts.cutn} (${opts.cutMethod}): ${liveNodes(g)} live nodes (${g.nodes.length} in the step's graph)`);
    log(`  dispatches: ${plain.dispatches.length} unfused -> ${fused.dispatches.length} fused (${liveNodes(f)} live nodes after fusion)`);
    log(`  time: plan unfused ${(t1 - t0).toFixed(0)} ms; fuse ${(t2 - t1).toFixed(0)} ms + plan ${(t3 - t2).toFixed(0)} ms`);
    log(`  arena ${mib(fused.memory.arenaBytes)} fused vs ${mib(plain.memory.arenaBytes)} unfused; at most ${mib(fused.memory.peakLiveBytes)} live at once (arenas: ${fused.buffers.filter((b) => b.kind === "arena").map((b) => mib(b.size)).join(" + ")})`);
    log(`  remaining dispatches by kind: ${histogram(f, fused, 24)}`);
    const half = planGraph(f, lowerings, DEFAULT_LIMITS, { ...planOptions(device), f16Weights: { inputs: halfInputs, minElements: HALF_MIN_ELEMENTS } });
    const halves = half.consts.filter((c) => c.storage === 'f16').length;
    log(`  constants ${mib(fused.memory.constBytes)} with precision f32, ${mib(half.memory.constBytes)} with f16 (${halves} of ${half.consts.length} constants stored as f16)`);
  } finally {
    gen?.dispose();
    engine.destroy();
  }
}

function planOptions(device: GPUDevice): PlanOptions {
  const l = device.limits;
  return { alignment: Math.max(16, l.minStorageBufferOffsetAlignment), maxBindingSize: l.maxStorageBufferBindingSize, maxBufferSize: l.maxBufferSize };
}

await runStandalone('compiled-plan', (log, a) =>
  benchCompiledPlan(log, {
    size: Number(a.arg('--size') ?? 256),
    cutn: Number(a.arg('--cutn') ?? 32),
    cutMethod: (a.arg('--cut-method') ?? 'original') as CutMethod,
    recompute: a.has('--recompute'),
  }), 'wasm');
