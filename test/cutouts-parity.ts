// The generate-pipeline parity suite (cutouts, Adam trajectory, nearest codes, cutter gradients) for one backend,
// run by cutouts-wasm.test.ts / cutouts-webgpu.test.ts (the cpu runs are in cutouts.test.ts, optim*.test.ts).
// Tolerances: fixtures/MANIFEST.md "Float32 vs float64 parity".
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { shutdownBackend, type BackendName } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import { makeCutouts, makeCutoutsOrig, type CutBox } from '../src/pipelines/cutouts.ts';
import { clampToRange, nearestCodes } from '../src/pipelines/init.ts';
import { initialOptimizerState, optimizerHyper, optimizerStep, stateTensors, type OptimizerState } from '../src/pipelines/optimizers.ts';
import { Rng } from '../src/util/rng.ts';
import { assertClose, maxAbsDiff, nchwToNhwc, reference, startBackend } from './helpers.ts';

const o = tfOps;

/** Autodiff of f at x along random directions vs central differences; returns the worst relative gap. */
export async function directionalCheck(f: (x: tf.Tensor) => tf.Tensor, x0: Float32Array, shape: number[], rng: Rng, dirs: number, eps: number): Promise<number> {
  const x = o.constant(x0, shape);
  const g = await o.read(tf.grad(f)(x));
  let worst = 0;
  for (let k = 0; k < dirs; k++) {
    const v = rng.fillNormal(new Float32Array(x0.length));
    const at = async (s: number) => (await o.read(tf.tidy(() => f(o.constant(x0.map((a, i) => a + s * v[i]), shape)))))[0];
    const fd = ((await at(eps)) - (await at(-eps))) / (2 * eps);
    let dot = 0;
    for (let i = 0; i < v.length; i++) dot += g[i] * v[i];
    worst = Math.max(worst, Math.abs(fd - dot) / (1 + Math.abs(fd)));
  }
  x.dispose();
  return worst;
}

export function pipelineParitySuite(backend: BackendName, opts: { tolScale?: number } = {}): void {
  const k = opts.tolScale ?? 1;
  describe(`generate pipeline pieces on ${backend}`, () => {
    let unavailable: string | undefined;
    before(async () => {
      unavailable = await startBackend(backend);
    });
    after(async () => {
      await shutdownBackend();
    });
    const ready = (t: TestContext) => {
      if (unavailable) t.skip(unavailable);
      return !unavailable;
    };

    test('MakeCutoutsOrig reproduces e2e step0.cutouts', async (t) => {
      if (!ready(t)) return;
      const ref = reference(t, 'e2e_reference.safetensors');
      if (!ref) return;
      const img = ref.get('step0.synth_image')!;
      const raw = Array.from(ref.get('cut_boxes_size_offx_offy')!.data as BigInt64Array, (v) => Number(v));
      const boxes: CutBox[] = [0, 1, 2, 3, 4].map((i) => ({ size: raw[i * 3], offsetX: raw[i * 3 + 1], offsetY: raw[i * 3 + 2] }));
      const expected = ref.get('step0.cutouts')!;
      const [n, c, h, w] = img.shape;
      const cuts = tf.tidy(() => makeCutoutsOrig(o, o.constant(nchwToNhwc(asFloat32(img), img.shape), [n, h, w, c]), expected.shape[2], boxes));
      const d = assertClose(await o.read(cuts), nchwToNhwc(asFloat32(expected), expected.shape), 5e-5 * k, 'step0.cutouts');
      t.diagnostic(`${backend}: step0.cutouts max abs diff ${d.toExponential(2)} (atol ${5e-5 * k})`);
      cuts.dispose();
    });

    test('Adam lr 0.1 + clamp reproduces e2e z_after (5 chained steps); nearest codes match code_indices', async (t) => {
      if (!ready(t)) return;
      const ref = reference(t, 'e2e_reference.safetensors');
      const vq = reference(t, 'vqgan_reference.safetensors');
      if (!ref || !vq) return;
      const zs = ref.get('step0.z_before')!.shape;
      const shape = [zs[0], zs[2], zs[3], zs[1]];
      const nhwc = (key: string) => nchwToNhwc(asFloat32(ref.get(key)!), ref.get(key)!.shape);
      const zMin = o.constant(asFloat32(ref.get('z_min')!), [1, 1, 1, zs[1]]);
      const zMax = o.constant(asFloat32(ref.get('z_max')!), [1, 1, 1, zs[1]]);
      const cb = vq.get('codebook')!;
      const codebook = o.constant(asFloat32(cb), cb.shape);
      const hp = optimizerHyper('Adam', { lr: 0.1 });
      let z = o.constant(nhwc('step0.z_before'), shape);
      let state: OptimizerState<tf.Tensor> = initialOptimizerState();
      const diffs: string[] = [];
      for (let s = 0; s < 5; s++) {
        const idx = tf.tidy(() => nearestCodes(o, z, codebook));
        assert.deepEqual(Array.from(await o.readInt(idx)), Array.from(ref.get(`step${s}.code_indices`)!.data as BigInt64Array, (v) => Number(v)), `step${s}.code_indices`);
        idx.dispose();
        const next = tf.tidy(() => {
          const r = optimizerStep(o, hp, state, z, o.constant(nhwc(`step${s}.grad_z`), shape));
          return { z: clampToRange(o, r.param, zMin, zMax), buffers: r.state.buffers, step: r.state.step };
        });
        tf.dispose([z, ...stateTensors(state)]);
        z = next.z;
        state = { step: next.step, buffers: next.buffers };
        const tol = (s === 0 ? 2e-4 : 5e-4) * k;
        diffs.push(`step${s} ${assertClose(await o.read(z), nhwc(`step${s}.z_after`), tol, `step${s}.z_after`).toExponential(2)}`);
      }
      t.diagnostic(`${backend}: z_after max abs diff ${diffs.join(', ')} (atol 2e-4 / 5e-4)`);
      tf.dispose([z, zMin, zMax, codebook, ...stateTensors(state)]);
    });

    test('cutter gradients match finite differences (original; latest with warps, jitter, erasing)', async (t) => {
      if (!ready(t)) return;
      const rng = new Rng(31).fork(backend);
      // Original: a mid-range image keeps every cutout inside [0, 1], where the map is linear.
      const img = rng.fillUniform(new Float32Array(11 * 9 * 2), 0.3, 0.7);
      const boxes: CutBox[] = [{ size: 9, offsetX: 0, offsetY: 1 }, { size: 5, offsetX: 3, offsetY: 4 }, { size: 7, offsetX: 2, offsetY: 0 }];
      const W1 = o.constant(rng.fillNormal(new Float32Array(3 * 4 * 4 * 2)), [3, 4, 4, 2]);
      const orig = await directionalCheck((x) => tf.sum(tf.mul(makeCutoutsOrig(o, x, 4, boxes), W1)), img, [1, 11, 9, 2], rng, 4, 0.05);
      assert.ok(orig < 2e-4 * k, `original: ${orig}`);
      // Latest: every 2x2 pooling window has a clear maximum, so no difference step switches the max.
      const [h, s, n] = [12, 6, 4];
      const img2 = rng.fillUniform(new Float32Array(h * h * 3), 0.3, 0.5);
      for (let y = 0; y < h; y += 2) for (let x = 0; x < h; x += 2) for (let ch = 0; ch < 3; ch++) img2[(y * h + x) * 3 + ch] += 0.3;
      const W2 = o.constant(rng.fillNormal(new Float32Array(n * s * s * 3)), [n, s, s, 3]);
      const cfg = { method: 'latest' as const, cutSize: s, cutn: n, cutPow: 1, augments: ['Af', 'Pe', 'Ji', 'Er'] };
      const latest = await directionalCheck((x) => tf.sum(tf.mul(makeCutouts(o, x, cfg, new Rng(5).fork('cutouts')), W2)), img2, [1, h, h, 3], rng, 4, 1e-2);
      assert.ok(latest < 1e-3 * k, `latest: ${latest}`);
      // Same seed, same cutouts on this backend as well.
      const a = await o.read(makeCutouts(o, o.constant(img2, [1, h, h, 3]), cfg, new Rng(9)));
      const b = await o.read(makeCutouts(o, o.constant(img2, [1, h, h, 3]), cfg, new Rng(9)));
      assert.equal(maxAbsDiff(a, b), 0);
      t.diagnostic(`${backend}: worst relative gap original ${orig.toExponential(2)}, latest ${latest.toExponential(2)}`);
      tf.dispose([W1, W2]);
    });
  });
}
