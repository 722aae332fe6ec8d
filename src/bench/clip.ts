// CLIP image encoder speed at the full ViT-B/32 shape (width 768, 12 layers, 12 heads, patch 32 at 224 px, embed 512;
// random weights - speed does not depend on them): encode_image forward, and forward + the input gradient through
// normalize -> encode_image -> spherical-distance loss (the optimizer's path), for 32 and 64 crops, next to the
// PyTorch anchors in ../shared/anchors: CPU (2 threads, OpenBLAS) encode_image batch 32 forward 7.168 s
// (batch 8 1.834 s, batch 1 0.308 s); H200 batch 32 10.2 ms, batch 64 17.9 ms.
//
// Measured 2026-11-28, one H200 (Dawn/Vulkan, tfjs-backend-webgpu 4.22; .gpu/ bundle of this file, median of 5):
// batch 32 forward 66.7 ms (PyTorch 10.2 ms), forward + input gradient 488 ms; batch 64 forward 58.6 ms
// (PyTorch 17.9 ms), forward + input gradient 1.01 s. Wall time with one readback per call: the forward is bound by
// tfjs's per-op host cost, the backward by its gradient kernels.
//
// Smaller batches: --batches 8,16 (or VQCLIP_BENCH_CLIP_BATCHES=8,16 under `npm run bench`); --quick runs batch 8
// once. On the plain cpu backend (~0.6 GFLOP/s) the default is batch 2; the output says when it is not 32/64.
//
//   node --import tsx src/bench/clip.ts [--backend wasm] [--batches 32,64] [--repeats 3] [--quick]
//   (or: npm run bench -- --only clip)
import * as tf from '@tensorflow/tfjs';
import { tfOps } from '../engine/tfjs-ops.ts';
import { encodeImagePixels, sphericalDistance, type ClipConfig, type ClipVisionW, type ClipWeights } from '../models/clip.ts';
import { runStandalone } from './entry.ts';

export interface ClipBenchOptions {
  quick?: boolean;
  backend?: string;
  /** Crops per call (default 32 and 64). */
  batches?: number[];
  /** Timed calls per figure after one warm-up (default 3; 1 with quick). */
  repeats?: number;
}

/** ViT-B/32 as clip.load builds it (the text tower is not run here). */
export const VIT_B_32: ClipConfig = {
  embedDim: 512,
  vision: { width: 768, layers: 12, heads: 12, patchSize: 32, gridSize: 7 },
  text: { width: 512, layers: 12, heads: 8, contextLength: 77, vocabSize: 49408 },
  activation: 'quickGelu',
  layerNormEps: 1e-5,
};

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

/** Random vision weights of the config's shape (each block its own tensors, as in the real model). */
export function randomVisionWeights(cfg: ClipConfig): { w: ClipWeights<tf.Tensor>; tensors: tf.Tensor[] } {
  const { width: d, layers, patchSize: p, gridSize: g } = cfg.vision;
  let seed = 7;
  const tensors: tf.Tensor[] = [];
  const t = (x: tf.Tensor) => (tensors.push(x), x);
  const lin = (i: number, o: number) => ({ w: t(uniform([i, o], 2 / Math.sqrt(i), seed++)), b: t(uniform([o], 0.02, seed++)) });
  const ln = () => ({ gamma: t(tf.ones([d])), beta: t(tf.zeros([d])) });
  const visual: ClipVisionW<tf.Tensor> = {
    patchEmbed: t(uniform([p * p * 3, d], 2 / Math.sqrt(p * p * 3), seed++)),
    classEmbedding: t(uniform([d], 0.1, seed++)),
    positionalEmbedding: t(uniform([g * g + 1, d], 0.02, seed++)),
    lnPre: ln(),
    blocks: Array.from({ length: layers }, () => ({ ln1: ln(), inProj: lin(d, 3 * d), outProj: lin(d, d), ln2: ln(), fc: lin(d, 4 * d), proj: lin(4 * d, d) })),
    lnPost: ln(),
    proj: t(uniform([d, cfg.embedDim], 2 / Math.sqrt(d), seed++)),
  };
  const w = { visual, text: undefined as never, logitScale: t(tf.scalar(Math.log(100))) };
  return { w, tensors };
}

/** encode_image FLOPs per crop (multiply-adds x 2): patch matmul, attention projections and scores, MLP. */
export function encodeImageFlops(cfg: ClipConfig): number {
  const { width: d, layers, patchSize: p, gridSize: g } = cfg.vision;
  const l = g * g + 1;
  const perBlock = 2 * l * d * 3 * d + 2 * 2 * l * l * d + 2 * l * d * d + 2 * 2 * l * d * 4 * d;
  return 2 * g * g * p * p * 3 * d + layers * perBlock + 2 * d * cfg.embedDim;
}

/** Median seconds of `repeats` calls after one warm-up; each call ends with one small readback. */
async function time(fn: () => tf.Tensor, repeats: number): Promise<number> {
  const once = async () => {
    const t0 = performance.now();
    const r = fn();
    await r.data();
    r.dispose();
    return (performance.now() - t0) / 1000;
  };
  await once();
  const ts: number[] = [];
  for (let i = 0; i < repeats; i++) ts.push(await once());
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)];
}

const ratio = (ours: number, theirs: number) => (ours >= theirs ? `ours ${(ours / theirs).toFixed(1)}x slower` : `ours ${(theirs / ours).toFixed(1)}x faster`);
const fmt = (s: number) => (s >= 10 ? `${s.toFixed(1)} s` : s >= 1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(1)} ms`);

export async function benchClip(log: (line: string) => void, opts: ClipBenchOptions = {}): Promise<void> {
  const backend = tf.getBackend();
  const quick = opts.quick ?? false;
  const fromEnv = process.env.VQCLIP_BENCH_CLIP_BATCHES?.split(',').map(Number).filter((n) => n > 0);
  const batches = opts.batches ?? (fromEnv?.length ? fromEnv : quick ? [8] : backend === 'cpu' ? [2] : [32, 64]);
  const repeats = opts.repeats ?? (quick ? 1 : 3);
  const cfg = VIT_B_32;
  const size = cfg.vision.gridSize * cfg.vision.patchSize;
  const gflop = encodeImageFlops(cfg) / 1e9;
  log(
    `CLIP ViT-B/32 encode_image at ${size} px (width ${cfg.vision.width}, ${cfg.vision.layers} layers, patch ${cfg.vision.patchSize}, embed ${cfg.embedDim}; ` +
      `random weights; ${gflop.toFixed(2)} GFLOP per crop forward), backend ${backend}; median of ${repeats} after 1 warm-up`,
  );
  if (batches.join() !== '32,64') log(`NOTE: batches ${batches.join(', ')} instead of 32 and 64${quick ? ' (--quick)' : fromEnv ? ' (VQCLIP_BENCH_CLIP_BATCHES)' : opts.batches ? ' (--batches)' : ` (${backend} backend is slow)`}; compare per-crop figures`);

  const { w, tensors } = randomVisionWeights(cfg);
  const text = uniform([1, cfg.embedDim], 1, 99);
  try {
    for (const b of batches) {
      const x = uniform([b, size, size, 3], 1, 1000 + b);
      const pixels = tf.tidy(() => tf.add(x, 0.5)); // [0, 1]
      x.dispose();
      const loss = (px: tf.Tensor) => tf.mean(sphericalDistance(tfOps, encodeImagePixels(tfOps, w, cfg, px), text)) as tf.Scalar;
      const fwd = await time(() => tf.tidy(() => encodeImagePixels(tfOps, w, cfg, pixels)), repeats);
      const grad = await time(() => tf.tidy(() => tf.grad(loss)(pixels)), repeats);
      pixels.dispose();
      log(
        `batch ${b}: forward ${fmt(fwd)} (${fmt(fwd / b)}/crop, ${((gflop * b) / fwd).toFixed(1)} GFLOP/s); ` +
          `forward + input gradient ${fmt(grad)} (${fmt(grad / b)}/crop, ${(grad / fwd).toFixed(1)}x forward)`,
      );
      const cpuAnchor = b === 32 ? 7.168 : b === 8 ? 1.834 : b === 1 ? 0.308 : (7.168 / 32) * b;
      const gpuAnchor = b === 32 ? 0.0102 : b === 64 ? 0.0179 : undefined;
      log(
        `  forward vs PyTorch CPU 2 threads${[1, 8, 32].includes(b) ? '' : ' (its batch 32 figure scaled per crop)'} ${fmt(cpuAnchor)}: ${ratio(fwd, cpuAnchor)}` +
          (gpuAnchor ? `; vs PyTorch H200 ${fmt(gpuAnchor)}: ${ratio(fwd, gpuAnchor)}` : ''),
      );
    }
  } finally {
    tf.dispose([...tensors, text]);
  }
}

await runStandalone('clip', (log, a) =>
  benchClip(log, { quick: a.has('--quick'), batches: a.arg('--batches')?.split(',').map(Number), repeats: a.arg('--repeats') ? Number(a.arg('--repeats')) : undefined }),
);
