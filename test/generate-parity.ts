// The generate pipeline against e2e_reference.safetensors: 5 steps of nerdyrodent generate.py train() with the tiny
// VQGAN + tiny CLIP (fixed cutout boxes, random-codes z_init, Adam lr 0.1), step by step: losses, grad_z, z after
// Adam + clamp, cutouts, CLIP embeddings, images. Run once per backend by generate*.test.ts.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { shutdownBackend, type BackendName } from '../src/engine/backend.ts';
import type { Executor } from '../src/engine/ops.ts';
import { tfExecutor, tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32, asNumbers } from '../src/formats/host-tensor.ts';
import { readSafetensors } from '../src/formats/safetensors.ts';
import { clipWeightTensors, loadClip } from '../src/models/clip-load.ts';
import { ClipTokenizer } from '../src/models/clip-tokenizer.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import { weightTensors } from '../src/models/vqgan.ts';
import { DEFAULT_SETTINGS, Generation, type GenerateSettings } from '../src/pipelines/generate.ts';
import { assertClose, FIXTURES, missingFixtures, nchwToNhwc, nhwcToNchw, startBackend } from './helpers.ts';
import path from 'node:path';

export const E2E_FIXTURES = ['e2e_reference.safetensors', 'tiny_vqgan.ckpt', 'tiny_vqgan.yaml', 'tiny_clip_state.pt', 'bpe_simple_vocab_16e6.txt.gz'];

/**
 * The e2e reference run's models, settings and starting latent, on any engine: a Generation ready for step 0 and the
 * reference tensors. Shared by the tfjs suites here and the compiled engine's test.
 */
export async function e2eGeneration<T>(
  ex: Executor<T>,
  constant: (data: Float32Array, shape: number[]) => T,
  steps = 5,
  /** Other settings than the reference run's (e.g. another cut method); the fixture's boxes are then not used. */
  overrides?: Partial<GenerateSettings>,
) {
  const ref = readSafetensors(path.join(FIXTURES, 'e2e_reference.safetensors'));
  const r = (k: string) => ref.get(k)!;
  const o = ex.ops;
  const vq = await loadVqgan(o, path.join(FIXTURES, 'tiny_vqgan.ckpt'), path.join(FIXTURES, 'tiny_vqgan.yaml'), { encoder: false });
  const clip = await loadClip(o, path.join(FIXTURES, 'tiny_clip_state.pt'));
  const tokenizer = ClipTokenizer.fromBpeFile(path.join(FIXTURES, 'bpe_simple_vocab_16e6.txt.gz'));
  const boxes = asNumbers(r('cut_boxes_size_offx_offy'));
  const fixedBoxes = () => Array.from({ length: boxes.length / 3 }, (_, i) => ({ size: boxes[3 * i], offsetX: boxes[3 * i + 1], offsetY: boxes[3 * i + 2] }));
  const settings: GenerateSettings = {
    ...DEFAULT_SETTINGS,
    prompts: 'a red apple:1|blurry:-0.5|a watercolor painting:0.8:1.212',
    width: 64,
    height: 64,
    iterations: steps,
    cutMethod: 'original',
    cutn: 5,
    seed: 1,
    ...overrides,
  };
  const zInit = r('z_init');
  const [n, c, h, w] = zInit.shape;
  const gen = await Generation.create(
    ex,
    { name: 'tiny_vqgan', config: vq.config, weights: vq.weights },
    [{ name: 'tiny_clip', config: clip.config, weights: clip.weights, tokenizer, weight: 1 }],
    settings,
    { initialZ: constant(nchwToNhwc(asFloat32(zInit), zInit.shape), [n, h, w, c]), fixedBoxes: overrides ? undefined : fixedBoxes },
  );
  return { gen, r, n, c, h, w };
}

export function generateParitySuite(backend: BackendName, opts: { tolScale?: number; steps?: number } = {}): void {
  const tolScale = opts.tolScale ?? 1;
  const steps = opts.steps ?? 5;
  describe(`generate pipeline vs generate.py on ${backend}`, () => {
    let unavailable: string | undefined;
    before(async () => {
      unavailable = missingFixtures(E2E_FIXTURES) ?? (await startBackend(backend));
    });
    after(async () => {
      await shutdownBackend();
    });

    test(`${steps} steps reproduce the reference losses, gradients, latents, cutouts, embeddings and images`, async (t) => {
      if (unavailable) return t.skip(unavailable);
      const k = tolScale;
      const { gen, r, n, c, h, w } = await e2eGeneration(tfExecutor, (data, shape) => tf.tensor(data, shape));
      try {
        const img0 = await gen.picture();
        assertClose(nhwcToNchw(img0.data, [1, 64, 64, 3]), r('step0.synth_image'), 5e-5 * k, 'step0.synth_image');
        for (let s = 0; s < steps; s++) {
          const zb = nhwcToNchw(await tfOps.read(gen.latent()), [n, h, w, c]);
          assertClose(zb, r(`step${s}.z_before`), (s === 0 ? 1e-6 : 5e-4) * k, `step${s}.z_before`);
          const res = await gen.step(true);
          const d = res.debug!;
          assertClose(res.losses, r(`step${s}.losses`), 2e-6 * k, `step${s}.losses`);
          assert.ok(Math.abs(res.total - asFloat32(r(`step${s}.loss_total`))[0]) <= 2e-6 * k, `step${s}.loss_total`);
          assertClose(nhwcToNchw(await tfOps.read(d.grad), [n, h, w, c]), r(`step${s}.grad_z`), 1e-6 * k, `step${s}.grad_z`);
          if (s === 0) {
            assertClose(nhwcToNchw(await tfOps.read(d.cutouts[0]), [5, 32, 32, 3]), r('step0.cutouts'), 5e-5 * k, 'step0.cutouts');
            assertClose(await tfOps.read(d.imageEmbeds[0]), r('step0.clip_image_embeds'), 2e-5 * k, 'step0.clip_image_embeds');
          }
          tf.dispose([d.grad, ...d.cutouts, ...d.imageEmbeds]);
          const za = nhwcToNchw(await tfOps.read(gen.latent()), [n, h, w, c]);
          assertClose(za, r(`step${s}.z_after`), 5e-4 * k, `step${s}.z_after`);
        }
        if (steps === 5) {
          const fin = await gen.picture();
          assertClose(nhwcToNchw(fin.data, [1, 64, 64, 3]), r('final_synth_image'), 5e-5 * k, 'final_synth_image');
        }
      } finally {
        gen.dispose();
        tf.dispose([...weightTensors(gen.vqgan.weights), ...clipWeightTensors(gen.guides[0].weights)]);
      }
    });
  });
}
