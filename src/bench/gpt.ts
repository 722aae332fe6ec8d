// GPT prior sampling speed at the released cin_transformer shape (48 layers, 1536 wide, 24 heads, vocab 16384,
// block 512), random weights, through the real sampling loop (sampleCodes: kv-cached step, logits read back,
// top-k 600 / top-p 0.92 / temperature 1 and the draw on the host), at batch 1 and batch 25, next to the PyTorch
// anchors (../shared/anchors): CPU (2 threads) 0.72-0.80 s/token cached at batch 1; H200 44 tokens/s at batch 1
// and 1000 tokens/s at batch 25.
//
// Memory: the 48 blocks share ONE block's weights (same shapes, same FLOPs and bytes read per token; each block's
// 113 MB still streams from memory, far beyond any cache), so the full depth fits the wasm heap (4 GiB) and this
// machine; the full model would need 5.6 GB. On the cpu backend (and with --quick) fewer blocks are run and the
// figure is scaled: t(48) = t(0) + 48/L * (t(L) - t(0)), with t(0) measured on the same model without blocks
// (embedding + head + host sampling) - the output says so.
//
//   node --import tsx src/bench/gpt.ts [--quick] [--backend wasm] [--layers 48]   (or: npm run bench -- --only gpt)
//   node --import tsx src/bench/gpt.ts --engine compiled [--width 192] [--tokens 16] [--batch 1]   (compiled only)
//
// The compiled engine (last part of the section, or alone with --engine compiled): the real sampling loop
// (sampleCodes with opts.engine: gptCachedStep planned once, the key/value cache on the GPU) at the cin depth, 48
// blocks, reporting dispatches per token and the HOST time per token (uploading the step data + encoding the
// dispatches, + submitting on hardware). On the software adapter nothing is submitted (llvmpipe is far too slow)
// and the width is cut to 192 (8 per head; vocab and block size kept) so the constants are made quickly: host time
// depends on the number of dispatches and bindings, not on the width. On hardware it runs the full width, submitted,
// and also reports the wall time per token.
//
// Measured 2026-11-28 (48 blocks, positions 1-6; each a single run):
// - NVIDIA H200, tfjs-backend-webgpu 4.22 via Dawn/Vulkan (this file bundled with esbuild, run with the carried node
//   as ../shared/gpu/README.md describes: `$NODE gpt-bench.mjs --backend webgpu`): batch 1 0.31 s/step = 3.2
//   tokens/s (PyTorch 44: 14x slower); batch 25 0.23 s/step = 107 tokens/s (PyTorch 1000: 9.3x slower); position
//   255 costs the same as position 1. Host-bound: ~50 tfjs ops per block, each dispatched from JavaScript (a batch
//   25 step takes no longer than a batch 1 step); fusing q|k|v into one matmul and keeping one cache chunk on GPUs
//   took it from 2.6 / 69 tokens/s.
// - this 2-core machine, wasm (2 threads), shared with other jobs (load 3-10; figures vary 2x between runs):
//   batch 1 1.3-2.5 s/step (PyTorch CPU 0.72 s/token: 1.8-3.5x slower); batch 25 7.5-28 s/step (0.9-3.3 tokens/s);
//   whole-cache concat at position 255, batch 25: 4.6-5.9 s per step (why the cache is chunked on wasm/cpu).
//   cpu backend (plain JS, 2 of 48 blocks scaled): batch 1 38 s/step (53x PyTorch), batch 25 194 s/step.
import * as tf from '@tensorflow/tfjs';
import { CompiledEngine, type Precision } from '../engine/compiled.ts';
import type { Ops } from '../engine/ops.ts';
import { tfOps } from '../engine/tfjs-ops.ts';
import type { WebGPUSetup } from '../engine/webgpu.ts';
import type { TransformerConfig } from '../formats/taming-config.ts';
import { KV_CHUNK, gptParameterCount, gptStep, kvTensors, makePermuter, type GptBlock, type GptConfig, type GptWeights, type KvCache, type Prior } from '../models/gpt.ts';
import { defaultKvChunk, sampleCodes } from '../pipelines/sample.ts';
import { runStandalone, withWebGPU } from './entry.ts';

export interface GptBenchOptions {
  quick?: boolean;
  backend?: string;
  /** Blocks actually run (default 48; 2 on the cpu backend or with quick). */
  layers?: number;
}

const CIN: GptConfig = { vocabSize: 16384, blockSize: 512, nLayer: 48, nHead: 24, nEmbd: 1536 };

function uniform(shape: number[], scale: number, seed: number): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const d = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = (s / 2 ** 32 - 0.5) * scale;
  }
  return tf.tensor(d, shape);
}

/** Random weights of the cin shape with `layers` blocks that all share one block's tensors. */
function randomWeights(cfg: GptConfig, layers: number): { w: GptWeights<tf.Tensor>; tensors: tf.Tensor[] } {
  const C = cfg.nEmbd;
  let seed = 1;
  const lin = (i: number, o: number) => ({ w: uniform([i, o], 2 / Math.sqrt(i), seed++), b: uniform([o], 0.02, seed++) });
  const ln = () => ({ gamma: tf.ones([C]), beta: tf.zeros([C]) });
  const shared: GptBlock<tf.Tensor> = {
    ln1: ln(),
    qkv: lin(C, 3 * C),
    proj: lin(C, C),
    ln2: ln(),
    fc: lin(C, 4 * C),
    fcOut: lin(4 * C, C),
  };
  const w: GptWeights<tf.Tensor> = {
    tokEmb: uniform([cfg.vocabSize, C], 2, seed++),
    posEmb: uniform([cfg.blockSize, C], 0.5, seed++),
    blocks: Array.from({ length: layers }, () => shared),
    lnF: ln(),
    head: uniform([C, cfg.vocabSize], 2 / Math.sqrt(C), seed++),
  };
  const tensors = [w.tokEmb, w.posEmb, w.head, w.lnF.gamma, w.lnF.beta, shared.ln1.gamma, shared.ln1.beta, shared.ln2.gamma, shared.ln2.beta];
  for (const l of [shared.qkv, shared.proj, shared.fc, shared.fcOut]) tensors.push(l.w, l.b!);
  return { w, tensors };
}

/** A class-conditional prior over a 1 x steps "grid" (sequence mode, Identity), no first stage: sampleCodes only. */
function benchPrior<T>(cfg: GptConfig, w: GptWeights<T>, steps: number): Prior<T> {
  const config = {
    target: 'taming.models.cond_transformer.Net2NetTransformer',
    gpt: cfg,
    firstStage: { nEmbed: cfg.vocabSize },
    cond: { kind: 'class', nClasses: 1000 },
    permuter: 'Identity',
    firstStageKey: 'image',
    condStageKey: 'class_label',
  } as unknown as TransformerConfig;
  return {
    checkpoint: '<random cin_transformer-shaped weights>',
    configFile: '<bench>',
    config,
    gpt: w,
    firstStage: undefined as never,
    factor: 16,
    grid: [1, steps],
    permuter: makePermuter('Identity', 1, steps),
  };
}

/** Median seconds per sampling step (all samples of the batch) after `warm` steps. */
async function stepTime(prior: Prior<tf.Tensor>, batch: number, warm: number): Promise<number> {
  const stamps: number[] = [];
  await sampleCodes(tfOps, prior, {
    n: batch,
    batchSize: batch,
    classLabel: 1,
    topK: 600,
    topP: 0.92,
    temperature: 1,
    seed: 0,
    onProgress: () => stamps.push(performance.now()),
  });
  const d = stamps.slice(warm).map((t, i) => (t - stamps[warm + i - 1]) / 1000);
  d.sort((a, b) => a - b);
  return d[Math.floor(d.length / 2)];
}

/**
 * Seconds to append one token to the key/value cache of every block when `rows` cached tokens are copied: the
 * whole cache for a single-tensor cache (rows = position), the last chunk for gpt.ts's chunked one.
 */
async function cacheAppendTime(cfg: GptConfig, batch: number, rows: number, layers: number): Promise<number> {
  const hs = cfg.nEmbd / cfg.nHead;
  const past = tf.zeros([batch, cfg.nHead, rows, hs]);
  const one = tf.zeros([batch, cfg.nHead, 1, hs]);
  const run = async () => {
    const a = tf.concat([past, one], 2);
    const b = tf.concat([past, one], 2);
    await tf.slice(b, [0, 0, 0, 0], [1, 1, 1, 1]).data(); // wait for the backend without reading the copies back
    tf.dispose([a, b]);
  };
  await run();
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    await run();
    best = Math.min(best, performance.now() - t);
  }
  tf.dispose([past, one]);
  return (best / 1000) * layers; // k and v of one block, times the blocks (one block's worth of memory at a time)
}

/** Best seconds of one gptStep (+ logits read-back) after a chunked cache of `pos` tokens (random contents). */
async function forwardTime(cfg: GptConfig, w: GptWeights<tf.Tensor>, batch: number, pos: number): Promise<number> {
  const hs = cfg.nEmbd / cfg.nHead;
  // What sampling leaves after `pos` single tokens: closed chunks (keys transposed) + an open rest.
  const size = defaultKvChunk(cfg);
  const closed = Math.floor(pos / size);
  const rest = pos - closed * size;
  const kT = Array.from({ length: closed }, (_, i) => uniform([batch, cfg.nHead, hs, size], 1, 100 + i));
  const v = Array.from({ length: closed }, (_, i) => uniform([batch, cfg.nHead, size, hs], 1, 200 + i));
  const open = rest ? uniform([batch, cfg.nHead, rest, hs], 1, 300) : undefined;
  if (open) v.push(uniform([batch, cfg.nHead, rest, hs], 1, 301));
  const layer = { kT, v, open };
  const cache: KvCache<tf.Tensor> = { length: pos, layers: w.blocks.map(() => layer) };
  const idx = tf.zeros([batch, 1], 'int32');
  const held = new Set(kvTensors(cache));
  let best = Infinity;
  try {
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      const r = tf.tidy(() => gptStep(tfOps, cfg, w, idx, cache, { lastOnly: true, kvChunk: size }));
      await r.logits.data();
      if (i > 0) best = Math.min(best, (performance.now() - t) / 1000);
      tf.dispose([r.logits, ...kvTensors(r.cache).filter((x) => !held.has(x))]);
    }
  } finally {
    tf.dispose([idx, ...held]);
  }
  return best;
}

const f2 = (x: number): string => {
  const a = Math.abs(x);
  return a >= 10 ? x.toFixed(0) : a >= 1 ? x.toFixed(1) : a >= 0.01 ? x.toFixed(2) : x.toPrecision(2);
};
const signed = (x: number): string => (x >= 0 ? `+${f2(x)}` : f2(x));

export async function benchGpt(log: (line: string) => void, opts: GptBenchOptions = {}): Promise<void> {
  const backend = tf.getBackend();
  const quick = opts.quick ?? false;
  const L = opts.layers ?? (quick || backend === 'cpu' ? 2 : CIN.nLayer);
  const scaled = L < CIN.nLayer;
  log(
    `GPT prior, cin_transformer shape: ${CIN.nLayer} layers x ${CIN.nEmbd} wide, ${CIN.nHead} heads, vocab ${CIN.vocabSize}, block ${CIN.blockSize} ` +
      `(${(gptParameterCount(CIN) / 1e9).toFixed(2)} B params); random weights, one block's weights shared by all blocks; ` +
      `sampling top-k 600, top-p 0.92 (host), kv cache, backend ${backend}`,
  );
  if (scaled) log(`NOTE: only ${L} of ${CIN.nLayer} blocks run on ${backend}${quick ? ' (--quick)' : ''}; figures marked "scaled" = t(0) + ${CIN.nLayer}/${L} x (t(${L}) - t(0))`);

  const cases: { batch: number; steps: number; warm: number }[] = [
    { batch: 1, steps: quick ? 4 : 6, warm: 2 },
    { batch: 25, steps: quick ? 3 : 4, warm: 1 },
  ];
  const results: Record<number, number> = {};
  for (const c of cases) {
    const measure = async (layers: number) => {
      const { w, tensors } = randomWeights(CIN, layers);
      try {
        return await stepTime(benchPrior(CIN, w, c.steps), c.batch, c.warm);
      } finally {
        tf.dispose(tensors);
      }
    };
    const tL = await measure(L);
    let t48 = tL;
    let note = `${L} layers measured`;
    if (scaled) {
      const t0 = await measure(0);
      t48 = t0 + (CIN.nLayer / L) * (tL - t0);
      note = `scaled from ${L} layers (${f2(tL)} s/step) and 0 layers (${f2(t0)} s/step)`;
    }
    results[c.batch] = t48;
    log(
      `batch ${c.batch}: ${f2(t48)} s per step, ${f2(c.batch / t48)} tokens/s${scaled ? ' (scaled)' : ''} ` +
        `[${note}; median of ${c.steps - c.warm} steps after ${c.warm} warm-up, positions 1-${c.steps}]`,
    );
  }
  // Late in an image: one step with 255 cached tokens (chunked as sampling leaves them) against one at position 1,
  // model forward and logits read-back only; the difference is the attention over the cache plus the append.
  for (const b of [1, 25]) {
    const { w, tensors } = randomWeights(CIN, L);
    try {
      const early = await forwardTime(CIN, w, b, 1);
      const late = await forwardTime(CIN, w, b, 255);
      const extra = ((late - early) * CIN.nLayer) / Math.max(L, 1);
      log(`batch ${b}, position 255 vs 1: ${signed(extra)} s per step${scaled ? ' (scaled)' : ''} (${f2((100 * extra) / results[b])}% of the step above)`);
    } finally {
      tf.dispose(tensors);
    }
  }
  const b1 = results[1];
  const b25 = results[25];
  log(`  vs PyTorch CPU (2 threads, OpenBLAS): 0.72 s/token (first 16), 0.80 s/token at position 255, batch 1 -> ours ${f2(b1 / 0.72)}x its time`);
  log(`  vs PyTorch H200: 44 tokens/s batch 1 (ours ${f2(1 / b1)}: ${f2(44 * b1)}x slower), 1000 tokens/s batch 25 (ours ${f2(25 / b25)}: ${f2((1000 * b25) / 25)}x slower)`);

  // What appending a token to the kv cache copies late in a 16x16 image (position 255): a single-tensor cache
  // copies all 255 rows per block; a chunked one the last chunk (KV_CHUNK/2 rows on average).
  const used = defaultKvChunk(CIN) >= CIN.blockSize ? 'one chunk (whole-cache concat)' : `chunks of ${KV_CHUNK}`;
  for (const b of [1, 25]) {
    const whole = await cacheAppendTime(CIN, b, 255, CIN.nLayer);
    const chunk = await cacheAppendTime(CIN, b, KV_CHUNK / 2, CIN.nLayer);
    const step = results[b];
    log(
      `kv-cache append at position 255, batch ${b}, all ${CIN.nLayer} blocks: whole-cache concat ${(whole * 1000).toFixed(0)} ms ` +
        `(${((100 * whole) / step).toFixed(0)}% of a step), chunks of ${KV_CHUNK} (${KV_CHUNK / 2} rows on average) ${(chunk * 1000).toFixed(0)} ms ` +
        `(${((100 * chunk) / step).toFixed(1)}%); sampling on ${backend} uses ${used}`,
    );
  }
  await benchGptCompiled(log, { tokens: quick ? 12 : 16 });
}

export interface GptCompiledBenchOptions {
  /** Model width (default: 1536 on hardware, 192 on the software adapter). */
  width?: number;
  /** Tokens sampled (the first compiles; the median is over the others). */
  tokens?: number;
  batch?: number;
  /** The compiled engine's weight storage (default f32). */
  precision?: Precision;
}

/** Random weights of `cfg` as constants of `o`, every block sharing one block's (as randomWeights). */
function randomConstWeights<T>(o: Ops<T>, cfg: GptConfig): GptWeights<T> {
  const C = cfg.nEmbd;
  let seed = 1;
  const u = (shape: number[], scale: number): T => {
    const d = new Float32Array(shape.reduce((a, b) => a * b, 1));
    let s = seed++ >>> 0;
    for (let i = 0; i < d.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      d[i] = (s / 2 ** 32 - 0.5) * scale;
    }
    return o.constant(d, shape);
  };
  const lin = (i: number, n: number) => ({ w: u([i, n], 2 / Math.sqrt(i)), b: u([n], 0.02) });
  const ln = () => ({ gamma: o.constant(new Float32Array(C).fill(1), [C]), beta: o.zeros([C]) });
  const shared: GptBlock<T> = { ln1: ln(), qkv: lin(C, 3 * C), proj: lin(C, C), ln2: ln(), fc: lin(C, 4 * C), fcOut: lin(4 * C, C) };
  return { tokEmb: u([cfg.vocabSize, C], 2), posEmb: u([cfg.blockSize, C], 0.5), blocks: Array.from({ length: cfg.nLayer }, () => shared), lnF: ln(), head: u([C, cfg.vocabSize], 2 / Math.sqrt(C)) };
}

/** The compiled engine's sampling step at the cin depth: dispatches and host milliseconds per token (see the header). */
export async function benchGptCompiled(log: (line: string) => void, opts: GptCompiledBenchOptions = {}): Promise<void> {
  await withWebGPU(log, 'compiled GPT step', (setup) => benchGptCompiledOn(log, setup, opts));
}

async function benchGptCompiledOn(log: (line: string) => void, setup: WebGPUSetup, opts: GptCompiledBenchOptions): Promise<void> {
  const hardware = !setup.info.software;
  const cfg: GptConfig = { ...CIN, nEmbd: opts.width ?? (hardware ? CIN.nEmbd : 192) };
  const tokens = Math.max(2, opts.tokens ?? 16);
  const batch = opts.batch ?? 1;
  const engine = new CompiledEngine(setup.device, { submit: hardware, precision: opts.precision });
  try {
    const prior = benchPrior(cfg, randomConstWeights(engine.ops, cfg), tokens);
    const rows: Array<{ at: number; host: number; encode: number }> = [];
    const t0 = performance.now();
    await sampleCodes(engine.ops, prior, {
      n: batch,
      batchSize: batch,
      classLabel: 1,
      topK: 600,
      topP: 0.92,
      seed: 0,
      engine,
      onProgress: () => rows.push({ at: performance.now(), host: engine.stats.lastStepHostMs, encode: engine.stats.lastStepEncodeMs }),
    });
    const later = rows.slice(1);
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const host = med(later.map((r) => r.host));
    const encode = med(later.map((r) => r.encode));
    const range = `${Math.min(...later.map((r) => r.host)).toFixed(2)}-${Math.max(...later.map((r) => r.host)).toFixed(2)}`;
    log(
      `compiled GPT step on ${setup.info.device || setup.info.description} (${hardware ? 'hardware: submitted' : 'software: encoded, not submitted'}; weights ${opts.precision ?? 'f32'}): ` +
        `${cfg.nLayer} blocks x ${cfg.nEmbd} wide${cfg.nEmbd !== CIN.nEmbd ? ` (cin: ${CIN.nEmbd}; host time does not depend on the width)` : ''}, ${cfg.nHead} heads, vocab ${cfg.vocabSize}, block ${cfg.blockSize}, batch ${batch}; ` +
        `first token (trace + plan + compile) ${((rows[0].at - t0) / 1000).toFixed(1)} s`,
    );
    log(
      `  ${engine.stats.dispatches} dispatches per token (${(engine.stats.dispatches / cfg.nLayer).toFixed(1)} per block), ${engine.stats.pipelineSwitches} pipeline switches; ` +
        `host ${host.toFixed(2)} ms per token (upload + encode ${encode.toFixed(2)}${hardware ? ' + submit' : ''}; median of ${later.length}, range ${range})`,
    );
    if (hardware) {
      const wall = med(later.map((r, i) => r.at - rows[i].at));
      log(`  wall ${wall.toFixed(2)} ms per step = ${((1000 * batch) / wall).toFixed(1)} tokens/s (PyTorch H200: 44 tokens/s at batch 1; tfjs-webgpu 3.2)`);
    }
  } finally {
    engine.destroy();
  }
}

await runStandalone('gpt', (log, a) => {
  const num = (f: string) => (a.arg(f) ? Number(a.arg(f)) : undefined);
  const compiled = { width: num('--width'), tokens: num('--tokens'), batch: num('--batch'), precision: a.arg('--precision') as Precision | undefined };
  if (a.arg('--engine') === 'compiled') return benchGptCompiled(log, compiled);
  return benchGpt(log, { quick: a.has('--quick'), layers: num('--layers') });
});
