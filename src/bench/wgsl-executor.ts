// Host cost of the compiled WebGPU executor per run: a graph of N tiny elementwise dispatches (a chain of unary ops
// on 64 floats, planned and compiled once), run repeatedly; lastRunHostMs = input write + encoding + submit.
//
//   node --import tsx src/bench/wgsl-executor.ts [--n 8000] [--runs 20] [--pipelines 4]
//
// On the software adapter (OpenGL ES on llvmpipe), Dawn's GL backend replays the commands as GL calls inside
// queue.submit and llvmpipe runs them there, so lastRunHostMs includes the execution of every dispatch; lastEncodeMs
// (input writes + encoding, no submit) is the host cost the <= 5 ms per iteration goal is about. (Dawn's null backend
// would isolate it too, but in the `webgpu` 0.6.2 package it aborts in a background thread when the event loop is
// blocked for a while, e.g. while compiling a plan.)
// `--pipelines k` cycles k different kernels along the chain (k = 1: one pipeline, set once per run; k > 1: a
// setPipeline before every dispatch, as in real graphs).
//
// Measured (2 shared cores, noisy; best of the runs, N = 8000): see the report printed by the run.
import type { Graph, Node, UnaryFn } from '../engine/graph/ir.ts';
import { createWebGPUDevice } from '../engine/webgpu.ts';
import { compilePlan } from '../engine/wgsl/executor.ts';
import { DEFAULT_LIMITS } from '../engine/wgsl/kernel.ts';
import { lowerings } from '../engine/wgsl/lowerings.ts';
import { planGraph } from '../engine/wgsl/plan.ts';
import { isEntry } from './entry.ts';

const FNS: UnaryFn[] = ['neg', 'abs', 'square', 'sigmoid', 'exp', 'sqrt', 'sign', 'recip'];

function chain(n: number, pipelines: number): Graph {
  const nodes: Node[] = [{ id: 0, op: 'input', inputs: [], attrs: { name: 'x' }, shape: [64], dtype: 'f32' }];
  for (let i = 1; i <= n; i++) nodes.push({ id: i, op: 'unary', inputs: [i - 1], attrs: { fn: FNS[i % pipelines] }, shape: [64], dtype: 'f32' });
  return { nodes, outputs: { y: n } };
}

export async function benchWgslExecutor(log: (line: string) => void, opts: { n: number; runs: number; pipelines: number }): Promise<void> {
  const g = chain(opts.n, opts.pipelines);
  const { device } = await createWebGPUDevice('allow');
  try {
    {
      const t0 = performance.now();
      const plan = planGraph(g, lowerings, DEFAULT_LIMITS, {
        alignment: device.limits.minStorageBufferOffsetAlignment,
        maxBindingSize: device.limits.maxStorageBufferBindingSize,
        maxBufferSize: device.limits.maxBufferSize,
      });
      const t1 = performance.now();
      const compiled = await compilePlan(device, plan);
      const t2 = performance.now();
      const x = new Float32Array(64).fill(0.5);
      const encode: number[] = [];
      const host: number[] = [];
      for (let r = 0; r < opts.runs; r++) {
        compiled.run({ x });
        encode.push(compiled.lastEncodeMs);
        host.push(compiled.lastRunHostMs);
        await device.queue.onSubmittedWorkDone();
      }
      await compiled.read('y');
      const n = plan.dispatches.length;
      const stat = (xs: number[]) => {
        const s = [...xs].sort((a, b) => a - b);
        return `best ${s[0].toFixed(1)} ms (${((1000 * s[0]) / n).toFixed(2)} us/dispatch), median ${s[s.length >> 1].toFixed(1)} ms`;
      };
      log(`software adapter: ${n} dispatches, ${compiled.stats.pipelines} pipelines, ${compiled.stats.bindGroups} bind groups; plan ${(t1 - t0).toFixed(0)} ms, compile ${(t2 - t1).toFixed(0)} ms`);
      log(`  encode per run (input write + encode, no submit): ${stat(encode)}`);
      log(`  host per run incl. submit (= llvmpipe execution on the GL backend): ${stat(host)}`);
      compiled.destroy();
    }
  } finally {
    device.destroy();
  }
}

if (isEntry('wgsl-executor')) {
  const argv = process.argv.slice(2);
  const arg = (name: string, fallback: number) => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : fallback;
  };
  await benchWgslExecutor((l) => process.stdout.write(`${l}\n`), { n: arg('--n', 8000), runs: arg('--runs', 20), pipelines: arg('--pipelines', 4) });
}
