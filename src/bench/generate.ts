// One CLIP-guided iteration (the generate pipeline's step: vector_quantize -> decode -> clamp -> 32 cutouts ->
// normalize -> ViT-B/32 encode_image -> spherical-distance prompt loss -> backward -> Adam -> clamp z) at the real
// shapes (vqgan_imagenet_f16_16384 + CLIP ViT-B/32, random weights), on the active backend, per phase, next to the
// PyTorch anchors in ../shared/anchors: CPU 2 threads 18.4 s at 256x256/32 cutouts (MakeCutoutsOrig); H200 71-76 ms
// at 256x256 and 161-193 ms at 512x512 (32 cutouts).
// Phases are timed as forward-only passes, each ended by one scalar readback; backward = whole step - forwards -
// optimiser step. Peak memory: tfjs's live tensor bytes during one step (tf.profile, CPU-side backends) and RSS.
//
//   node --import tsx src/bench/generate.ts [--quick] [--backend wasm]     (or: npm run bench -- --only generate)
import * as tf from '@tensorflow/tfjs';
import { tfExecutor, tfOps } from '../engine/tfjs-ops.ts';
import { clipWeights, clipWeightTensors } from '../models/clip-load.ts';
import { encodeImagePixels } from '../models/clip.ts';
import { ByteTokenizer } from '../models/demo.ts';
import { SyntheticWeights } from '../models/synthetic.ts';
import { decode, vectorQuantizeST, vqganWeights, weightTensors } from '../models/vqgan.ts';
import { makeCutouts, type CutMethod } from '../pipelines/cutouts.ts';
import { DEFAULT_SETTINGS, Generation } from '../pipelines/generate.ts';
import { initialOptimizerState, optimizerHyper, optimizerStep } from '../pipelines/optimizers.ts';
import { Rng } from '../util/rng.ts';
import { VIT_B_32 } from './clip.ts';
import { F16_16384 } from './vqgan.ts';
import { runStandalone } from './entry.ts';


const ANCHORS: Partial<Record<number, { cpu?: number; h200: number; h200Note: string }>> = {
  256: { cpu: 18.368, h200: 0.0757, h200Note: '75.7 ms, 3.2 GiB peak' },
  512: { h200: 0.193, h200Note: '193 ms, 7.4 GiB peak' },
};

const fmt = (s: number) => (s >= 10 ? `${s.toFixed(1)} s` : s >= 1 ? `${s.toFixed(2)} s` : `${(s * 1000).toFixed(1)} ms`);
const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

/** The wasm backend's heap size: wasm memory only grows, so this is the peak of everything it held. */
function wasmHeapBytes(): number | undefined {
  if (tf.getBackend() !== 'wasm') return undefined;
  const b = tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } };
  return b.wasm?.HEAPU8?.length;
}

async function timeScalar(f: () => tf.Tensor): Promise<number> {
  const t = performance.now();
  const y = tf.tidy(() => tf.sum(f()));
  await y.data();
  y.dispose();
  return (performance.now() - t) / 1000;
}

export async function benchGenerate(log: (line: string) => void, opts: { quick?: boolean } = {}): Promise<void> {
  const backend = tf.getBackend();
  const t0 = performance.now();
  const vw = vqganWeights(tfOps, new SyntheticWeights(16384), F16_16384, { encoder: false });
  const cw = clipWeights(tfOps, new SyntheticWeights(32), VIT_B_32);
  log(`models: vqgan_imagenet_f16_16384 decoder + CLIP ViT-B/32, random weights built in ${((performance.now() - t0) / 1000).toFixed(1)} s; backend ${backend}`);
  const gpu = backend === 'webgpu';
  let cases: [number, number, CutMethod][] = opts.quick ? [[256, 32, 'original']] : [[256, 32, 'original'], [512, 32, 'original'], [256, 32, 'latest']];
  if (backend === 'wasm' || backend === 'cpu') {
    // Measured: the pair takes 2.25 GiB of the 4 GiB wasm heap at 128x128 with 8 cutouts (~18 s a step); at
    // 256x256 with 32 the heap runs out during the backward. Run what fits and say so.
    log(`  256x256 and 512x512 with 32 cutouts do not fit the ${backend === 'wasm' ? 'wasm heap (4 GiB)' : 'time a plain-JS backend allows'} with these models: timing 128x128 with 8 cutouts instead`);
    cases = [[128, 8, 'original']];
  }
  let rssPeak = process.memoryUsage().rss;
  try {
    for (const [px, cutn, method] of cases) {
      const settings = { ...DEFAULT_SETTINGS, prompts: 'a watercolor lighthouse at dawn', width: px, height: px, cutn, cutMethod: method, seed: 1, iterations: 100 };
      let gen: Generation<tf.Tensor> | undefined;
      try {
        gen = await Generation.create(tfExecutor, { name: 'f16_16384', config: F16_16384, weights: vw }, [{ name: 'ViT-B/32', config: VIT_B_32, weights: cw, tokenizer: new ByteTokenizer(77), weight: 1 }], settings);
        const z = gen.latent();
        const rng = new Rng(1);
        const cutCfg = { method, cutSize: 224, cutn, cutPow: 1, augments: settings.augments, noiseFac: settings.noiseFac };
        // Warm-up step (kernel set-up, shader compilation). tf.profile is not used: it reads back every kernel's
        // output, which costs more than the step itself.
        const tWarm = performance.now();
        await gen.step();
        log(`  (${px}x${px}/${cutn}/${method}: warm-up step ${fmt((performance.now() - tWarm) / 1000)})`);
        rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
        const peak = wasmHeapBytes();
        const reps = gpu ? 3 : 1;
        const best = async (f: () => Promise<number>) => {
          let b = Infinity;
          for (let i = 0; i < reps; i++) b = Math.min(b, await f());
          return b;
        };
        const synthF = () => tf.clipByValue(tf.div(tf.add(decode(tfOps, vw, vectorQuantizeST(tfOps, z, vw.codebook)), 1), 2), 0, 1);
        const tSynth = await best(() => timeScalar(synthF));
        const img = tf.keep(tf.tidy(synthF));
        const tCut = await best(() => timeScalar(() => makeCutouts(tfOps, img, cutCfg, rng.fork('c'))));
        const cuts = tf.keep(tf.tidy(() => makeCutouts(tfOps, img, cutCfg, rng.fork('c'))));
        const tClip = await best(() => timeScalar(() => encodeImagePixels(tfOps, cw, VIT_B_32, cuts)));
        tf.dispose([img, cuts]);
        const g = tf.keep(tf.randomNormal(z.shape));
        const tStep = await best(() => timeScalar(() => optimizerStep(tfOps, optimizerHyper('Adam', { lr: 0.1 }), initialOptimizerState(), z, g).param));
        g.dispose();
        const tIter = await best(async () => {
          const t = performance.now();
          await gen!.step();
          return (performance.now() - t) / 1000;
        });
        rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
        const backward = Math.max(0, tIter - tSynth - tCut - tClip - tStep);
        const a = ANCHORS[px];
        const vs = a ? [a.cpu !== undefined && method === 'original' ? `PyTorch CPU 2 threads ${fmt(a.cpu)} (ours ${(tIter / a.cpu).toFixed(2)}x its time)` : '', `PyTorch H200 ${a.h200Note} (ours ${(tIter / a.h200).toFixed(1)}x)`].filter(Boolean) : ['no PyTorch anchor at this size'];
        log(`iteration ${px}x${px}, ${cutn} cutouts (${method}): ${fmt(tIter)} = ${(1 / tIter).toFixed(2)} it/s [${gpu ? `best of ${reps}` : '1 run'} after a warm-up]; vs ${vs.join(', ')}`);
        log(`  phases: decode ${fmt(tSynth)}, cutouts ${fmt(tCut)}, CLIP ${fmt(tClip)}, backward ${fmt(backward)}, step ${fmt(tStep)}`);
        if (peak !== undefined) log(`  wasm heap (its high-water mark: the heap only grows): ${gib(peak)}`);
        else log(`  live tensors after the step: ${gib(tf.memory().numBytes)}`);
      } catch (err) {
        log(`iteration ${px}x${px}, ${cutn} cutouts (${method}): FAILED on ${backend}: ${(err as Error).message.split('\n')[0]}`);
      } finally {
        gen?.dispose();
      }
    }
  } finally {
    tf.dispose([...weightTensors(vw), ...clipWeightTensors(cw)]);
  }
  log(`process RSS peak seen: ${gib(rssPeak)}`);
}

await runStandalone('generate', (log, a) => benchGenerate(log, { quick: a.has('--quick') }));
