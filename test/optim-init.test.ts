// Initial latents and the latent helpers of the generate loop: random codes, noise/gradient images, init image
// through an encoder, codebook range (z_min/z_max), nearest codes (e2e step*.code_indices), init-weight pull.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { assertClose, nchwToNhwc, reference } from './helpers.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import {
  clampToRange,
  codebookRange,
  initialLatent,
  initWeightFactor,
  initWeightLoss,
  latentGrid,
  nearestCodes,
  randomCodesLatent,
  randomGradientImage,
  randomNoiseImage,
} from '../src/pipelines/init.ts';
import { Rng } from '../src/util/rng.ts';

const o = tfOps;
await tf.setBackend(process.env.VQCLIP_TEST_BACKEND ?? 'cpu');

test('nearest codes of z_before match e2e step*.code_indices exactly; codebook range matches z_min/z_max', async (t) => {
  const e2e = reference(t, 'e2e_reference.safetensors');
  const vq = reference(t, 'vqgan_reference.safetensors');
  if (!e2e || !vq) return;
  const cb = vq.get('codebook')!;
  const codebook = o.constant(asFloat32(cb), cb.shape);
  const { zMin, zMax } = await codebookRange(o, codebook);
  assert.deepEqual(await o.read(zMin), asFloat32(e2e.get('z_min')!));
  assert.deepEqual(await o.read(zMax), asFloat32(e2e.get('z_max')!));
  for (let k = 0; k < 5; k++) {
    const z = e2e.get(`step${k}.z_before`)!;
    const [b, c, h, w] = z.shape;
    const idx = await o.readInt(nearestCodes(o, o.constant(nchwToNhwc(asFloat32(z), z.shape), [b, h, w, c]), codebook));
    const want: number[] = Array.from(e2e.get(`step${k}.code_indices`)!.data as BigInt64Array, (v) => Number(v));
    assert.deepEqual(Array.from(idx), want, `step${k}.code_indices`);
  }
  // clampToRange is z.maximum(z_min).minimum(z_max).
  const zs = o.constant(Float32Array.from({ length: 2 * 8 }, (_, i) => (i % 2 ? 10 : -10)), [1, 1, 2, 8]);
  const cl = await o.read(clampToRange(o, zs, zMin, zMax));
  const lo = await o.read(zMin);
  const hi = await o.read(zMax);
  for (let i = 0; i < 16; i++) assert.equal(cl[i], i % 2 ? hi[i % 8] : lo[i % 8]);
});

test('random-codes init: shape, every position is a codebook row, inside the codebook range, seeded', async (t) => {
  const vq = reference(t, 'vqgan_reference.safetensors');
  if (!vq) return;
  const cb = vq.get('codebook')!;
  const [nCodes, dim] = cb.shape;
  const codebook = o.constant(asFloat32(cb), cb.shape);
  const rows = asFloat32(cb);
  const { toksX, toksY, sideX, sideY } = latentGrid(70, 64, 4);
  assert.deepEqual([toksX, toksY, sideX, sideY], [17, 16, 68, 64]);
  const z = randomCodesLatent(o, codebook, toksY, toksX, new Rng(4242).fork('init'));
  assert.deepEqual(o.shape(z), [1, toksY, toksX, dim]);
  const data = await o.read(z);
  const used = new Set<number>();
  for (let p = 0; p < toksY * toksX; p++) {
    const v = data.subarray(p * dim, (p + 1) * dim);
    const code = [...Array(nCodes).keys()].find((k) => v.every((x, j) => x === rows[k * dim + j]));
    assert.ok(code !== undefined, `position ${p} is not a codebook row`);
    used.add(code);
  }
  assert.ok(used.size > nCodes / 2, `codes spread over the codebook (${used.size} of ${nCodes})`);
  const { zMin, zMax } = await codebookRange(o, codebook);
  assert.deepEqual(await o.read(clampToRange(o, z, zMin, zMax)), data, 'already inside [z_min, z_max]');
  const again = await o.read(await initialLatent(o, { kind: 'random-codes', codebook, toksY, toksX, f: 4, rng: new Rng(4242).fork('init') }));
  assert.deepEqual(again, data, 'same seed, same latent');
  const other = await o.read(randomCodesLatent(o, codebook, toksY, toksX, new Rng(4243).fork('init')));
  assert.notDeepEqual(other, data);
});

test('noise and gradient init images follow generate.py; image inits go through encode(image * 2 - 1)', async () => {
  const noise = randomNoiseImage(new Rng(1), 16, 12);
  assert.equal(noise.length, 16 * 12 * 3);
  const levels = new Set(Array.from(noise, (v) => Math.round(v * 255)));
  assert.ok([...levels].every((k) => k >= 0 && k <= 254), 'randint(0, 255) excludes 255');
  assert.ok(levels.size > 200);

  const g = randomGradientImage(new Rng(2), 10, 7);
  const px = (y: number, x: number, c: number) => Math.round(g[(y * 7 + x) * 3 + c] * 255);
  assert.equal(px(0, 0, 0), 0);
  assert.equal(px(0, 0, 1), 0);
  const r1 = px(0, 6, 0);
  assert.ok(r1 >= 1 && r1 <= 254);
  for (let y = 0; y < 10; y++) for (let x = 0; x < 7; x++) assert.equal(px(y, x, 0), Math.trunc((x * r1) / 6), 'red ramps horizontally');
  const r2 = px(9, 0, 1);
  const r0 = px(0, 0, 2);
  const r3 = px(9, 0, 2);
  assert.ok(r2 >= 2 && r2 <= 254 && r0 >= 0 && r0 <= 254 && r3 >= 3 && r3 <= 127);
  for (let y = 0; y < 10; y++) {
    assert.equal(px(y, 3, 1), Math.trunc((y * r2) / 9), 'green ramps vertically');
    assert.equal(px(y, 5, 2), Math.trunc(r0 + (y * (r3 - r0)) / 9), 'blue ramps vertically');
  }

  // The encoder sees the image mapped to [-1, 1], at the grid size.
  const seen: number[][] = [];
  const encode = async (img: tf.Tensor) => {
    const d = await o.read(img);
    seen.push([Math.min(...d), Math.max(...d), ...o.shape(img)]);
    return o.zeros([1, 4, 3, 8]);
  };
  const codebook = o.zeros([4, 8]);
  for (const kind of ['pixels', 'gradient'] as const) {
    const z = await initialLatent(o, { kind, codebook, toksY: 4, toksX: 3, f: 4, rng: new Rng(3), encode });
    assert.deepEqual(o.shape(z), [1, 4, 3, 8]);
  }
  const image = o.constant(new Float32Array(16 * 12 * 3).fill(0.75), [1, 16, 12, 3]);
  await initialLatent(o, { kind: 'image', codebook, toksY: 4, toksX: 3, f: 4, rng: new Rng(3), encode, image });
  assert.ok(seen[0][0] >= -1 && seen[0][1] <= 1 && seen[0][0] < -0.9, `pixels in [-1, 1]: ${seen[0]}`);
  assert.deepEqual(seen[0].slice(2), [1, 16, 12, 3]);
  assert.deepEqual(seen[2], [0.5, 0.5, 1, 16, 12, 3]);
  await assert.rejects(initialLatent(o, { kind: 'image', codebook, toksY: 4, toksX: 3, f: 4, rng: new Rng(3), encode, image: o.zeros([1, 8, 8, 3]) }), /expected 12x16/);
});

test("init weight: mse(z, 0) * init_weight / (2 (2 i + 1)), and its gradient", async () => {
  const data = new Rng(6).fillNormal(new Float32Array(2 * 3 * 4));
  const z = o.constant(data, [1, 2, 3, 4]);
  const mse = data.reduce((s, v) => s + v * v, 0) / data.length;
  for (const [i, wgt] of [[0, 1], [3, 0.5], [10, 2]]) {
    const got = (await o.read(initWeightLoss(o, z, o.constant(initWeightFactor(i, wgt).data, []))))[0];
    const want = (mse * (1 / (2 * i + 1)) * wgt) / 2;
    assert.ok(Math.abs(got - want) < 1e-6 * Math.abs(want), `i=${i}: ${got} vs ${want}`);
  }
  const grad = await o.read(tf.grad((x: tf.Tensor) => initWeightLoss(o, x, o.constant(initWeightFactor(2, 0.5).data, [])))(z));
  assertClose(grad, Array.from(data, (v) => (2 * v * 0.5) / 5 / 2 / data.length), 1e-7, 'd init_loss / dz');
});
