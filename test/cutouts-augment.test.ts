// Augmentations and the pooling cutters: warp sampling against a direct bilinear reference, matrices, colour ops,
// erasing, determinism by seed, and autodiff against finite differences through the whole 'latest' cutter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { maxAbsDiff } from './helpers.ts';
import { affineMatrix, augment, augmentSpecs, hueMatrix, invert3, perspectiveMatrix, warpBatch, type Mat3 } from '../src/pipelines/augment.ts';
import { CUT_METHODS, makeCutouts, parseCutMethod } from '../src/pipelines/cutouts.ts';
import { Rng } from '../src/util/rng.ts';
import { UserError } from '../src/cli/errors.ts';

const o = tfOps;
await tf.setBackend(process.env.VQCLIP_TEST_BACKEND ?? 'cpu');

const apply = (m: Mat3, x: number, y: number) => {
  const z = m[6] * x + m[7] * y + m[8];
  return [(m[0] * x + m[1] * y + m[2]) / z, (m[3] * x + m[4] * y + m[5]) / z];
};

/** grid_sample(bilinear, zeros, align_corners=True) of one HWC image at pixel position (x, y), in float64. */
function bilinear(img: Float32Array, h: number, w: number, c: number, x: number, y: number, ch: number): number {
  const x0 = Math.floor(x);
  const y0 = Math.floor(y);
  let v = 0;
  for (const [xx, yy, wt] of [[x0, y0, (1 - (x - x0)) * (1 - (y - y0))], [x0 + 1, y0, (x - x0) * (1 - (y - y0))], [x0, y0 + 1, (1 - (x - x0)) * (y - y0)], [x0 + 1, y0 + 1, (x - x0) * (y - y0)]]) {
    if (xx >= 0 && xx < w && yy >= 0 && yy < h) v += wt * img[(yy * w + xx) * c + ch];
  }
  return v;
}

test('geometry: kornia affine/perspective matrices', () => {
  const near = (a: number[], b: number[], tol = 1e-9) => assert.ok(maxAbsDiff(a, b) < tol, `${a} vs ${b}`);
  near(affineMatrix(0, 0, 0, 0, 5, 7), [1, 0, 0, 0, 1, 0, 0, 0, 1]);
  // The centre is fixed by rotation and shear; translation moves it by (tx, ty).
  near(apply(affineMatrix(33, 0, 0, 4, 5, 7), 5, 7), [5, 7]);
  near(apply(affineMatrix(-12, 2, -3, 0, 5, 7), 5, 7), [7, 4]);
  // kornia rotates by -angle: +90 degrees takes (cx+1, cy) to (cx, cy+1) in image coordinates (y down).
  near(apply(affineMatrix(90, 0, 0, 0, 5, 7), 6, 7), [5, 8]);
  // x-shear keeps rows: points on the centre row do not move; x changes with y.
  near(apply(affineMatrix(0, 0, 0, 45, 5, 7), 9, 7), [9, 7]);
  near(apply(affineMatrix(0, 0, 0, 45, 5, 7), 5, 8), [4, 8]);
  const src: [number, number][] = [[0, 0], [9, 0], [9, 9], [0, 9]];
  const dst: [number, number][] = [[1, 2], [8, 0.5], [7, 9], [0.2, 7]];
  const hm = perspectiveMatrix(src, dst);
  src.forEach((p, k) => near(apply(hm, p[0], p[1]), dst[k], 1e-9));
  const inv = invert3(hm);
  near(apply(inv, ...(apply(hm, 3, 4) as [number, number])), [3, 4], 1e-9);
});

test('warpBatch samples like grid_sample (bilinear, zeros) for one stage; border padding clamps', async () => {
  const rng = new Rng(21).fork('warp');
  const [h, w, c] = [9, 12, 3];
  const img = rng.fillUniform(new Float32Array(h * w * c));
  const mats = [affineMatrix(17, 1.5, -2, 4, (w - 1) / 2, (h - 1) / 2), perspectiveMatrix([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], [[2, 1], [w - 2, 0.5], [w - 1, h - 3], [1.5, h - 1]])];
  const x = o.constant(img, [1, h, w, c]);
  const out = await o.read(warpBatch(o, x, [[{ inv: invert3(mats[0]), padding: 'zeros' }], [{ inv: invert3(mats[1]), padding: 'zeros' }], [], [{ inv: invert3(mats[0]), padding: 'border' }]]));
  for (let b = 0; b < 4; b++) {
    const ref = new Float64Array(h * w * c);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < w; xx++) {
        let [sx, sy] = b === 2 ? [xx, y] : apply(invert3(mats[b === 3 ? 0 : b]), xx, y);
        if (b === 3) [sx, sy] = [Math.min(Math.max(sx, 0), w - 1), Math.min(Math.max(sy, 0), h - 1)];
        for (let ch = 0; ch < c; ch++) ref[(y * w + xx) * c + ch] = bilinear(img, h, w, c, sx, sy, ch);
      }
    }
    const got = out.subarray(b * h * w * c, (b + 1) * h * w * c);
    // Positions are computed by float32 ops (about 1e-6 px off the float64 reference here).
    assert.ok(maxAbsDiff(got, ref) < 1e-5, `sample ${b}: ${maxAbsDiff(got, ref)}`);
  }
  // No applied stage anywhere: the same ops as any warp (the structure never depends on the draws), copying the input.
  assert.deepEqual(await o.read(warpBatch(o, x, [[], []])), Float32Array.from([...img, ...img]));
});

test('composed stages equal one warp by the product matrix where the intermediate image is fully covered', async () => {
  const [h, w, c] = [16, 16, 1];
  const img = new Rng(3).fillUniform(new Float32Array(h * w));
  const a = affineMatrix(10, 0.7, -0.4, 2, 7.5, 7.5);
  const b = affineMatrix(-6, -0.3, 0.5, 0, 7.5, 7.5);
  const x = o.constant(img, [1, h, w, c]);
  const two = await o.read(warpBatch(o, x, [[{ inv: invert3(a), padding: 'zeros' }, { inv: invert3(b), padding: 'zeros' }]]));
  const ba = [0, 1, 2].flatMap((r) => [0, 1, 2].map((k) => b[r * 3] * a[k] + b[r * 3 + 1] * a[3 + k] + b[r * 3 + 2] * a[6 + k]));
  const one = await o.read(warpBatch(o, x, [[{ inv: invert3(ba), padding: 'zeros' }]]));
  let checked = 0;
  for (let y = 4; y < 12; y++) for (let xx = 4; xx < 12; xx++) {
    assert.ok(Math.abs(two[y * w + xx] - one[y * w + xx]) < 1e-5, `${y},${xx}`);
    checked++;
  }
  assert.ok(checked === 64);
  // Far outside, the intermediate image's zero padding blanks the output.
  const far = await o.read(warpBatch(o, x, [[{ inv: invert3(affineMatrix(0, 40, 0, 0, 7.5, 7.5)), padding: 'zeros' }, { inv: invert3(affineMatrix(0, -40, 0, 0, 7.5, 7.5)), padding: 'zeros' }]]));
  assert.ok(far.every((v) => v === 0), 'content shifted out by stage 1 does not come back in stage 2');
});

test('colour: hue rotation keeps greys and inverts; jitter with p = 0 is the identity; erasing blanks one shared rectangle', async () => {
  const eye = [1, 0, 0, 0, 1, 0, 0, 0, 1];
  assert.ok(maxAbsDiff(hueMatrix(0), eye) < 1e-12);
  const h = hueMatrix(0.1);
  for (let r = 0; r < 3; r++) assert.ok(Math.abs(h[r * 3] + h[r * 3 + 1] + h[r * 3 + 2] - 1) < 1e-12, 'grey (1,1,1) maps to itself');
  const hh = hueMatrix(-0.1);
  const prod = [0, 1, 2].flatMap((r) => [0, 1, 2].map((k) => h[r * 3] * hh[k] + h[r * 3 + 1] * hh[3 + k] + h[r * 3 + 2] * hh[6 + k]));
  assert.ok(maxAbsDiff(prod, eye) < 1e-12);
  assert.ok(maxAbsDiff(hueMatrix(1), eye) < 1e-12, 'a full turn');

  const [s, n] = [10, 3];
  const img = new Rng(8).fillUniform(new Float32Array(s * s * 3));
  const x = o.constant(img, [1, s, s, 3]);
  const off = augmentSpecs(['Ji']).map((sp) => ({ ...sp, p: 0 }));
  const same = await o.read(augment(o, x, n, off, new Rng(1)));
  for (let b = 0; b < n; b++) assert.deepEqual(same.subarray(b * s * s * 3, (b + 1) * s * s * 3), img);
  const on = await o.read(augment(o, x, n, augmentSpecs(['Ji']).map((sp) => ({ ...sp, p: 1 })), new Rng(1)));
  assert.ok(on.every((v) => v >= 0 && v <= 1));
  assert.ok(maxAbsDiff(on.subarray(0, s * s * 3), img) > 1e-3, 'jitter changes the image');

  const erase = augmentSpecs(['Er']).map((sp) => ({ ...sp, p: 1 }));
  const er = await o.read(augment(o, x, n, erase, new Rng(2)));
  const zeros = Array.from({ length: n }, (_, b) => {
    const z: number[] = [];
    for (let i = 0; i < s * s; i++) if (er[(b * s * s + i) * 3] === 0 && er[(b * s * s + i) * 3 + 1] === 0) z.push(i);
    return z;
  });
  assert.ok(zeros[0].length >= 0.05 * s * s && zeros[0].length <= 0.6 * s * s, `erased area ${zeros[0].length}`);
  assert.deepEqual(zeros[1], zeros[0], 'same_on_batch');
});

test('augment names: supported list, unsupported ones and unknown ones are UserErrors; cut methods parse', () => {
  assert.deepEqual(augmentSpecs(['Af', 'Pe', 'Ji', 'Er', 'Ro', 'Gn', 'Re', 'Cr']).map((s) => s.kind), ['affine', 'perspective', 'jitter', 'erase', 'affine', 'gaussianNoise', 'resizedCrop', 'identity']);
  assert.throws(() => augmentSpecs(['Af', 'Sh']), (e: unknown) => e instanceof UserError && /'Sh'.*not supported/.test(e.message));
  assert.throws(() => augmentSpecs(['Xx']), (e: unknown) => e instanceof UserError && /unknown augment 'Xx'/.test(e.message));
  assert.equal(parseCutMethod('Latest'), 'latest');
  assert.throws(() => parseCutMethod('random'), UserError);
});

test('every cut method: shape, determinism by seed, different seeds differ', async () => {
  const [h, w, s, n] = [20, 24, 8, 4];
  const img = o.constant(new Rng(4).fillUniform(new Float32Array(h * w * 3)), [1, h, w, 3]);
  for (const method of CUT_METHODS) {
    const cfg = { method, cutSize: s, cutn: n, cutPow: 1 };
    const a = makeCutouts(o, img, cfg, new Rng(10).fork('cutouts').fork(0));
    const b = makeCutouts(o, img, cfg, new Rng(10).fork('cutouts').fork(0));
    const c = makeCutouts(o, img, cfg, new Rng(10).fork('cutouts').fork(1));
    assert.deepEqual(o.shape(a), [n, s, s, 3], method);
    const [da, db, dc] = await Promise.all([o.read(a), o.read(b), o.read(c)]);
    assert.deepEqual(da, db, `${method}: same seed, same cutouts`);
    assert.ok(maxAbsDiff(da, dc) > 1e-3, `${method}: another step draws other cutouts`);
    assert.ok(da.every(Number.isFinite), method);
  }
  // Without noise, pooled + augmented cutouts stay in [0, 1].
  const quiet = await o.read(makeCutouts(o, img, { method: 'latest', cutSize: s, cutn: n, cutPow: 1, noiseFac: 0 }, new Rng(3)));
  assert.ok(quiet.every((v) => v >= 0 && v <= 1 + 1e-6));
});

test("the 'latest' cutter's gradient matches finite differences (warps, jitter, erasing, noise)", async () => {
  const rng = new Rng(77).fork('fd');
  const [h, w, s, n] = [12, 12, 6, 5];
  // Mid-range image: warps and noise are linear, jitter's clamps stay inactive, and the pixel (even, even) of every
  // 2x2 pooling window is the clear maximum, so no step below switches which pixel max pooling picks.
  const img = rng.fillUniform(new Float32Array(h * w * 3), 0.3, 0.5);
  for (let y = 0; y < h; y += 2) for (let x = 0; x < w; x += 2) for (let ch = 0; ch < 3; ch++) img[(y * w + x) * 3 + ch] += 0.3;
  const cfg = { method: 'latest' as const, cutSize: s, cutn: n, cutPow: 1, augments: ['Af', 'Pe', 'Re', 'Ji', 'Er'] };
  const W = o.constant(rng.fillNormal(new Float32Array(n * s * s * 3)), [n, s, s, 3]);
  // A fixed cutout rng: every evaluation draws the same augmentations.
  const f = (x: tf.Tensor) => tf.sum(tf.mul(makeCutouts(o, x, cfg, new Rng(5).fork('cutouts')), W));
  const g = await o.read(tf.grad(f)(o.constant(img, [1, h, w, 3])));
  assert.ok(g.some((v) => v !== 0));
  const eps = 1e-2;
  for (let k = 0; k < 8; k++) {
    const v = rng.fillNormal(new Float32Array(img.length));
    const fp = (await o.read(f(o.constant(img.map((a, i) => a + eps * v[i]), [1, h, w, 3]))))[0];
    const fm = (await o.read(f(o.constant(img.map((a, i) => a - eps * v[i]), [1, h, w, 3]))))[0];
    const fd = (fp - fm) / (2 * eps);
    let dot = 0;
    for (let i = 0; i < v.length; i++) dot += g[i] * v[i];
    assert.ok(Math.abs(fd - dot) <= 1e-3 * (1 + Math.abs(fd)), `direction ${k}: autodiff ${dot} vs finite differences ${fd}`);
  }
});
