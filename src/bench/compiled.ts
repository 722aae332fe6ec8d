// The compiled engine (src/engine/compiled.ts) on one CLIP-guided iteration at the real shapes (f16_16384 decoder +
// ViT-B/32, random weights): plan size (nodes, dispatches, pipelines, arena and constant bytes vs the sum of all
// values), the time to trace and plan, and per later step the HOST time: making the step's data on the host (crop
// indices, warp matrices, seeds, step scalars: Generation.stepData), uploading it, and encoding the dispatches. On a hardware adapter it also runs the steps and reports the wall time per iteration
// (one readback per step: the losses). On the software adapter the work is encoded but not submitted (llvmpipe would
// take hours at these sizes), so only host figures are printed.
//
// Figures are medians over the replayed steps after the first WARMUP_REPLAYS of them: a run makes hundreds of steps,
// and the first few run the step-data code before V8 has optimized it (2-3 ms instead of ~0.6 ms). Host figures are
// wall time: on a shared machine other jobs inflate them (2x at a load of 5 on 2 cores), so compare quiet runs.
//
//   node --import tsx src/bench/compiled.ts [--size 256] [--cutn 32] [--cut-method latest] [--steps 30] [--precision f16] [--recompute] [--backend webgpu]
//   (or: npm run bench -- --only compiled)
import { CompiledEngine, type Precision } from '../engine/compiled.ts';
import type { WebGPUSetup } from '../engine/webgpu.ts';
import { clipWeights } from '../models/clip-load.ts';
import { ByteTokenizer } from '../models/demo.ts';
import { SyntheticWeights } from '../models/synthetic.ts';
import { vqganWeights } from '../models/vqgan.ts';
import type { CutMethod } from '../pipelines/cutouts.ts';
import { DEFAULT_SETTINGS, Generation } from '../pipelines/generate.ts';
import { VIT_B_32 } from './clip.ts';
import { runStandalone, withWebGPU } from './entry.ts';
import { F16_16384 } from './vqgan.ts';

const ANCHOR_MS: Record<number, number> = { 256: 75.7, 512: 193 };
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const WARMUP_REPLAYS = 8;

export interface CompiledBenchOptions {
  quick?: boolean;
  size?: number;
  cutn?: number;
  cutMethod?: CutMethod;
  steps?: number;
  /** The compiled engine's weight storage (default f32). */
  precision?: Precision;
  /** Recompute the checkpointed blocks in the backward (CompiledEngine's recompute). */
  recompute?: boolean;
}

/** Each cut method given (default: 'latest', the app's default, and 'original', the fewest dispatches). */
export async function benchCompiled(log: (line: string) => void, opts: CompiledBenchOptions = {}): Promise<void> {
  await withWebGPU(log, 'compiled engine', async (setup) => {
    for (const cutMethod of opts.cutMethod ? [opts.cutMethod] : (['latest', 'original'] as const)) await benchCompiledStep(log, setup, { ...opts, cutMethod });
  });
}

async function benchCompiledStep(log: (line: string) => void, setup: WebGPUSetup, opts: CompiledBenchOptions): Promise<void> {
  const hardware = !setup.info.software;
  const size = opts.size ?? (opts.quick ? 128 : 256);
  const cutn = opts.cutn ?? (opts.quick ? 8 : 32);
  const method = opts.cutMethod ?? 'latest';
  const steps = opts.steps ?? (opts.quick ? 4 : 30);
  const engine = new CompiledEngine(setup.device, { submit: hardware, precision: opts.precision, recompute: opts.recompute });
  const o = engine.ops;
  let gen: Generation<unknown> | undefined;
  try {
    const tModels = performance.now();
    const vw = vqganWeights(o, new SyntheticWeights(16384), F16_16384, { encoder: false });
    const cw = clipWeights(o, new SyntheticWeights(32), VIT_B_32);
    log(`compiled engine on ${setup.info.device || setup.info.description} (${hardware ? 'hardware: runs submitted' : 'software: encoded, not submitted'}; weights ${opts.precision ?? 'f32'}${opts.recompute ? '; checkpointed blocks recomputed' : ''}); random weights in ${((performance.now() - tModels) / 1000).toFixed(1)} s`);
    const settings = { ...DEFAULT_SETTINGS, prompts: 'a watercolor lighthouse at dawn', width: size, height: size, cutn, cutMethod: method, seed: 1, iterations: steps };
    gen = (await Generation.create(engine.executor, { name: 'f16_16384', config: F16_16384, weights: vw }, [{ name: 'ViT-B/32', config: VIT_B_32, weights: cw, tokenizer: new ByteTokenizer(77), weight: 1 }], settings)) as Generation<unknown>;
    const rows: { wall: number; host: number; replay: number; encode: number; compiles: number }[] = [];
    for (let i = 0; i < steps; i++) {
      const before = engine.stats.compiles;
      const t = performance.now();
      await gen.step();
      const wall = performance.now() - t;
      const s = engine.stats;
      rows.push({ wall, host: s.lastStepReplayMs + s.lastStepEncodeMs, replay: s.lastStepReplayMs, encode: s.lastStepEncodeMs, compiles: s.compiles - before });
      log(`  step ${i + 1}: ${rows[i].compiles ? `planned + compiled (${(wall / 1000).toFixed(1)} s)` : 'replayed'}; host ${rows[i].host.toFixed(2)} ms (step data ${rows[i].replay.toFixed(2)}, upload + encode ${rows[i].encode.toFixed(2)})${hardware ? `; wall ${wall.toFixed(1)} ms` : ''}`);
    }
    const s = engine.stats;
    log(`  plan: ${engine.builder.graph.nodes.length} graph nodes traced in all; step plan ${s.dispatches} dispatches (${s.pipelineSwitches} pipeline switches), arena ${mib(s.arenaBytes)}, constants ${mib(s.constBytes)}`);
    const all = rows.filter((r) => r.compiles === 0);
    const replayed = all.length >= 2 * WARMUP_REPLAYS ? all.slice(WARMUP_REPLAYS) : all;
    if (!replayed.length) {
      log(`iteration ${size}x${size}/${cutn} (${method}): no step replayed (the step's structure changed every step: see CompiledLoop)`);
      return;
    }
    const host = median(replayed.map((r) => r.host));
    const data = median(replayed.map((r) => r.replay));
    const warm = replayed.length < all.length ? ` after ${all.length - replayed.length} warm-up replays` : '';
    const line = `iteration ${size}x${size}/${cutn} (${method}), compiled: host ${host.toFixed(2)} ms per step (step data ${data.toFixed(2)}; median of ${replayed.length} replays${warm}; goal <= 5 ms)`;
    if (hardware) {
      const wall = median(replayed.map((r) => r.wall));
      const a = ANCHOR_MS[size];
      log(`${line}; wall ${wall.toFixed(1)} ms = ${(1000 / wall).toFixed(1)} it/s${a ? ` vs PyTorch H200 ${a} ms (${(wall / a).toFixed(2)}x)` : ''}`);
    } else log(line);
  } finally {
    gen?.dispose();
    engine.destroy();
  }
}

await runStandalone('compiled', (log, a) =>
  benchCompiled(log, {
    quick: a.has('--quick'),
    size: a.arg('--size') ? Number(a.arg('--size')) : undefined,
    cutn: a.arg('--cutn') ? Number(a.arg('--cutn')) : undefined,
    cutMethod: a.arg('--cut-method') as CutMethod | undefined,
    steps: a.arg('--steps') ? Number(a.arg('--steps')) : undefined,
    precision: a.arg('--precision') as Precision | undefined,
    recompute: a.has('--recompute'),
  }), 'wasm');
