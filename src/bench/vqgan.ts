// VQGAN decoder speed at the released vqgan_imagenet_f16_16384 shape (ch 128, ch_mult [1,1,2,2,4], 2 res blocks,
// attention at nominal resolution 16, z_channels 256, embed_dim 256, 16384 codes), random weights (deterministic,
// seeded), on the active backend: decode forward, and forward + input gradient (what each VQGAN+CLIP step needs),
// at 256x256 and 512x512 output, next to the PyTorch anchors (../shared/anchors): CPU (2 threads) decode forward
// 256 px 1.762 s, 128 px 0.288 s; H200 decode forward 11.5 ms at 256 px, 22.6 ms at 512 px.
// Peak memory: tfjs's own count of live tensor bytes (tf.profile peakBytes, taken on the untimed warm-up run) and the
// process RSS high-water mark.
//
// On the plain-JS cpu backend (~0.6 GFLOP/s) a 256 px decode would take minutes: there the output sizes are 32 and
// 64 px and the figures are scaled by FLOPs to 256/512 (marked "scaled").
//
//   node --import tsx src/bench/vqgan.ts [--quick] [--backend wasm]     (or: npm run bench -- --only vqgan)
//
// Measured 2026-11-28 (best of the runs; this 2-core machine was shared, so wasm/cpu figures are upper bounds):
//   wasm, 2 threads:  256 px forward 17.7 s (14 GFLOP/s; PyTorch 1.76 s), forward+gradient 58.4 s (3.3x), peak live
//                     tensors 0.99 / 2.66 GiB; 512 px forward 74.5 s, peak 3.44 GiB; 512 px gradient does not fit
//                     the 4 GiB wasm heap (~10 GiB extrapolated).
//   cpu (plain JS):   ~0.4 GFLOP/s: 256 px forward ~630 s, forward+gradient ~2170 s (scaled from 32 px).
//   H200, tfjs-webgpu (Dawn/Vulkan; run before blocks were checkpointed): forward 78.8 ms at 256 px (PyTorch
//                     11.5 ms), 122.8 ms at 512 px (PyTorch 22.6 ms); forward+gradient 1.03 s / 3.57 s (13x / 29x
//                     the forward: tfjs-webgpu's backward kernels, not the model, are the bottleneck there).
import * as tf from '@tensorflow/tfjs';
import { tfOps } from '../engine/tfjs-ops.ts';
import type { HostTensor } from '../formats/host-tensor.ts';
import type { FirstStageConfig } from '../formats/taming-config.ts';
import { decode, vqganWeights, weightTensors, type VqganWeights } from '../models/vqgan.ts';
import { WeightMap } from '../models/weights.ts';
import { Rng } from '../util/rng.ts';
import { runStandalone } from './entry.ts';

export interface VqganBenchOptions {
  quick?: boolean;
  backend?: string;
}

/** vqgan_imagenet_f16_16384's model.yaml. */
export const F16_16384: FirstStageConfig = {
  target: 'taming.models.vqgan.VQModel',
  kind: 'vq',
  embedDim: 256,
  nEmbed: 16384,
  ddconfig: {
    doubleZ: false,
    zChannels: 256,
    resolution: 256,
    inChannels: 3,
    outCh: 3,
    ch: 128,
    chMult: [1, 1, 2, 2, 4],
    numResBlocks: 2,
    attnResolutions: [16],
    dropout: 0,
  },
  remap: null,
  saneIndexShape: false,
};

/**
 * A state dict of the decoder side (post_quant_conv, decoder, codebook) with the real shapes: conv/linear weights
 * uniform with variance 1/fan_in (activations stay O(1) through the depth), biases small, GroupNorm affine 1 / 0.
 */
export function randomDecoderStateForProfile(cfg: FirstStageConfig, seed: number): Map<string, HostTensor> {
  return randomDecoderState(cfg, seed);
}

function randomDecoderState(cfg: FirstStageConfig, seed: number): Map<string, HostTensor> {
  const dd = cfg.ddconfig;
  const rng = new Rng(seed, 'bench-vqgan');
  const sd = new Map<string, HostTensor>();
  const put = (key: string, shape: number[], fill: (a: Float32Array) => void) => {
    const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
    fill(a);
    sd.set(key, { dtype: 'float32', shape, data: a });
  };
  const conv = (p: string, cin: number, cout: number, k: number) => {
    const bound = Math.sqrt(3 / (cin * k * k));
    put(`${p}.weight`, [cout, cin, k, k], (a) => rng.fillUniform(a, -bound, bound));
    put(`${p}.bias`, [cout], (a) => rng.fillUniform(a, -0.05, 0.05));
  };
  const norm = (p: string, c: number) => {
    put(`${p}.weight`, [c], (a) => a.fill(1));
    put(`${p}.bias`, [c], (a) => a.fill(0));
  };
  const res = (p: string, cin: number, cout: number) => {
    norm(`${p}.norm1`, cin);
    conv(`${p}.conv1`, cin, cout, 3);
    norm(`${p}.norm2`, cout);
    conv(`${p}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${p}.nin_shortcut`, cin, cout, 1);
  };
  const attn = (p: string, c: number) => {
    norm(`${p}.norm`, c);
    for (const n of ['q', 'k', 'v', 'proj_out']) conv(`${p}.${n}`, c, c, 1);
  };
  put('quantize.embedding.weight', [cfg.nEmbed, cfg.embedDim], (a) => rng.fillUniform(a, -1, 1));
  conv('post_quant_conv', cfg.embedDim, dd.zChannels, 1);
  const levels = dd.chMult.length;
  let c = dd.ch * dd.chMult[levels - 1];
  conv('decoder.conv_in', dd.zChannels, c, 3);
  res('decoder.mid.block_1', c, c);
  attn('decoder.mid.attn_1', c);
  res('decoder.mid.block_2', c, c);
  for (let i = levels - 1; i >= 0; i--) {
    const cout = dd.ch * dd.chMult[i];
    for (let j = 0; j <= dd.numResBlocks; j++) {
      res(`decoder.up.${i}.block.${j}`, c, cout);
      c = cout;
      if (dd.attnResolutions.includes(dd.resolution >> i)) attn(`decoder.up.${i}.attn.${j}`, c);
    }
    if (i !== 0) conv(`decoder.up.${i}.upsample.conv`, c, c, 3);
  }
  norm('decoder.norm_out', c);
  conv('decoder.conv_out', c, dd.outCh, 3);
  return sd;
}

/** Multiply-adds x 2 of post_quant_conv + decoder for a latent of h x w (convs and attention matmuls; norms ignored). */
export function decodeFlops(cfg: FirstStageConfig, h: number, w: number): number {
  const dd = cfg.ddconfig;
  const levels = dd.chMult.length;
  let f = 0;
  const conv = (cin: number, cout: number, k: number, n: number) => (f += 2 * k * k * cin * cout * n);
  const attn = (c: number, n: number) => (f += 4 * 2 * c * c * n + 2 * 2 * n * n * c);
  const res = (cin: number, cout: number, n: number) => {
    conv(cin, cout, 3, n);
    conv(cout, cout, 3, n);
    if (cin !== cout) conv(cin, cout, 1, n);
  };
  let n = h * w;
  let c = dd.ch * dd.chMult[levels - 1];
  conv(cfg.embedDim, dd.zChannels, 1, n);
  conv(dd.zChannels, c, 3, n);
  res(c, c, n);
  attn(c, n);
  res(c, c, n);
  for (let i = levels - 1; i >= 0; i--) {
    const cout = dd.ch * dd.chMult[i];
    for (let j = 0; j <= dd.numResBlocks; j++) {
      res(c, cout, n);
      c = cout;
      if (dd.attnResolutions.includes(dd.resolution >> i)) attn(c, n);
    }
    if (i !== 0) {
      n *= 4;
      conv(c, c, 3, n);
    }
  }
  conv(c, dd.outCh, 3, n);
  return f;
}

interface Timing {
  /** Best wall time in seconds over the timed runs. */
  best: number;
  runs: number;
  /** tf.profile peakBytes (live tensor bytes, weights included) of the first run. */
  peakBytes?: number;
}

/**
 * Runs `f` (which must wait for its result) `runs` times and keeps the best time. The first run is wrapped in
 * tf.profile for the peak live bytes (cheap on CPU-side backends: a clock read per kernel); with `warm` it is an
 * extra, untimed warm-up (shader compilation, XNNPACK operator set-up), else it counts.
 */
async function measure(f: () => Promise<void>, runs: number, opts: { profile: boolean; warm: boolean }): Promise<Timing> {
  let peakBytes: number | undefined;
  let best = Infinity;
  const timed = async (g: () => Promise<void>) => {
    const t = performance.now();
    await g();
    best = Math.min(best, (performance.now() - t) / 1000);
  };
  const first = opts.profile
    ? async () => {
        peakBytes = (
          await tf.profile(async () => {
            await f();
            return [] as tf.Tensor[];
          })
        ).peakBytes;
      }
    : f;
  if (opts.warm) await first();
  else await timed(first);
  for (let i = opts.warm ? 0 : 1; i < runs; i++) await timed(f);
  return { best, runs, peakBytes };
}

const fmtS = (s: number) => (s >= 10 ? `${s.toFixed(1)} s` : s >= 1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(1)} ms`);
/** A time ratio with two significant digits (0.045x, 1.8x, 12x). */
const ratio = (x: number) => `${x >= 10 ? x.toFixed(0) : x.toPrecision(2)}x`;
const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

export async function benchVqgan(log: (line: string) => void, opts: VqganBenchOptions = {}): Promise<void> {
  const backend = tf.getBackend();
  const quick = opts.quick ?? false;
  const cfg = F16_16384;
  const slowBackend = backend === 'cpu';
  const t0 = performance.now();
  const sd = randomDecoderState(cfg, 16384);
  const w: VqganWeights<tf.Tensor> = vqganWeights(tfOps, new WeightMap('<random f16_16384 weights>', sd), cfg, { encoder: false });
  sd.clear();
  const params = weightTensors(w).reduce((a, t) => a + t.size, 0);
  log(
    `VQGAN f16-16384 decoder (ch 128, ch_mult [1,1,2,2,4], 2 res blocks, attention at nominal 16, z 256, 16384 codes): ` +
      `${(params / 1e6).toFixed(1)} M decoder-side params, random seeded weights built in ${((performance.now() - t0) / 1000).toFixed(1)} s; backend ${backend}`,
  );
  // The on-device scratch of tf.profile on WebGPU reads every kernel's output back; skip it there.
  const profile = backend !== 'webgpu';
  const sizes = quick ? [256] : [256, 512];
  const rssStart = process.memoryUsage().rss;
  let rssPeak = rssStart;
  const anchors: Record<number, { cpu?: number; h200: number }> = { 256: { cpu: 1.762, h200: 0.0115 }, 512: { h200: 0.0226 } };
  // The wasm heap is wasm32: 4 GiB for every live tensor. Sizes whose peak (extrapolated from the previous size's
  // measured peak: weights + 4x the rest per doubling) would not fit are reported, not run.
  const heapLimit = backend === 'wasm' ? 3.75 * 2 ** 30 : Infinity;
  const weightBytes = params * 4;
  let lastPeak: { px: number; fwd?: number; grad?: number } | undefined;
  const extrapolate = (peak: number | undefined, fromPx: number, toPx: number) =>
    peak === undefined ? undefined : weightBytes + (peak - weightBytes) * (toPx / fromPx) ** 2;
  try {
    for (const px of sizes) {
      // cpu backend: run a smaller image and scale by FLOPs (attention is a few % of the total at these sizes).
      const runPx = slowBackend ? px / 8 : px;
      const estFwd = lastPeak && extrapolate(lastPeak.fwd, lastPeak.px, runPx);
      const estGrad = lastPeak && extrapolate(lastPeak.grad, lastPeak.px, runPx);
      if (estFwd !== undefined && estFwd > heapLimit) {
        log(`decode ${px}x${px}: not run on ${backend}: its forward would need ~${gib(estFwd)} of live tensors (the wasm heap holds 4 GiB)`);
        continue;
      }
      const lat = runPx / 16;
      const scale = decodeFlops(cfg, px / 16, px / 16) / decodeFlops(cfg, lat, lat);
      const gflop = decodeFlops(cfg, px / 16, px / 16) / 1e9;
      const rng = new Rng(px, 'bench-vqgan-inputs');
      const z = tf.tensor4d(rng.fillUniform(new Float32Array(lat * lat * cfg.embedDim), -1, 1), [1, lat, lat, cfg.embedDim]);
      const G = tf.tensor4d(rng.fillUniform(new Float32Array(runPx * runPx * 3), -1, 1), [1, runPx, runPx, 3]);
      const fwd = async () => {
        const y = tf.tidy(() => tf.sum(decode(tfOps, w, z)));
        await y.data(); // one scalar back: the whole decode has run
        y.dispose();
        rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
      };
      const grad = async () => {
        const g = tf.tidy(() => tf.sum(tf.grad((zz: tf.Tensor) => tf.sum(tf.mul(decode(tfOps, w, zz), G)))(z)));
        await g.data();
        g.dispose();
        rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
      };
      // GPUs: a warm-up (shader compilation) and 3 timed runs. CPU-side backends (seconds per run, kernels already
      // set up by the forward): 2 runs at 256 px, 1 at 512 px and on the plain-JS cpu backend.
      const gpu = backend === 'webgpu' || backend === 'webgl';
      const runs = gpu ? 3 : px >= 512 || slowBackend || quick ? 1 : 2;
      const tf1 = await measure(fwd, runs, { profile, warm: gpu || px === sizes[0] });
      const skipGrad = estGrad !== undefined && estGrad > heapLimit;
      const tg = skipGrad ? undefined : await measure(grad, runs, { profile, warm: gpu });
      lastPeak = { px: runPx, fwd: tf1.peakBytes, grad: tg?.peakBytes };
      tf.dispose([z, G]);
      const sf = tf1.best * scale;
      const tag = slowBackend ? ` (scaled from ${runPx} px x${scale.toFixed(1)})` : '';
      const a = anchors[px];
      const vs = [a.cpu !== undefined ? `PyTorch CPU 2 threads ${fmtS(a.cpu)} (ours ${ratio(sf / a.cpu)} its time)` : 'no PyTorch CPU anchor', `PyTorch H200 ${fmtS(a.h200)} (ours ${ratio(sf / a.h200)} its time)`];
      log(`decode ${px}x${px} forward: ${fmtS(sf)}${tag}, ${(gflop / sf).toFixed(1)} GFLOP/s (${gflop.toFixed(0)} GFLOP) [best of ${runs}${gpu || px === sizes[0] ? ' after a warm-up' : ''}]; vs ${vs.join(', ')}`);
      if (tg) {
        const sg = tg.best * scale;
        log(`decode ${px}x${px} forward + input gradient: ${fmtS(sg)}${tag}, ${ratio(sg / sf)} the forward (checkpointed blocks: one extra forward; PyTorch ~3x) [best of ${runs}${gpu ? ' after a warm-up' : ''}]`);
      } else log(`decode ${px}x${px} forward + input gradient: not run on ${backend}: it would need ~${gib(estGrad ?? 0)} of live tensors (the wasm heap holds 4 GiB)`);
      if (profile) log(`  peak live tensors incl. weights (tf.profile, ${runPx} px): forward ${gib(tf1.peakBytes ?? 0)}${tg ? `, forward + gradient ${gib(tg.peakBytes ?? 0)}` : ''}`);
    }
  } finally {
    tf.dispose(weightTensors(w));
  }
  log(`process RSS: ${gib(rssStart)} after building the weights, peak seen ${gib(rssPeak)}; tf.memory() now ${gib(tf.memory().numBytes)} in ${tf.memory().numTensors} tensors`);
}

// Run as a script (not when imported, nor when bundled into another program).
await runStandalone('vqgan', (log, a) => benchVqgan(log, { quick: a.has('--quick') }));
