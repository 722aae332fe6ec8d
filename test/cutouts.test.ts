// Cutouts: MakeCutoutsOrig against the e2e fixture (forward) and finite differences (gradient); resample matrices;
// adaptive pooling against a direct float64 computation; the random-box draws.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { assertClose, maxAbsDiff, nchwToNhwc, reference } from './helpers.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import {
  adaptiveWindows,
  bicubicMatrix,
  bilinearMatrix,
  drawOrigBoxes,
  lanczosKernel,
  makeCutouts,
  makeCutoutsOrig,
  poolToSize,
  resampleMatrix,
  type CutBox,
} from '../src/pipelines/cutouts.ts';
import { Rng } from '../src/util/rng.ts';
import { interpolationMatrix } from '../src/engine/gradients.ts';

const o = tfOps;
await tf.setBackend(process.env.VQCLIP_TEST_BACKEND ?? 'cpu');

test('MakeCutoutsOrig with the fixture boxes reproduces e2e step0.cutouts (atol 5e-5)', async (t) => {
  const ref = reference(t, 'e2e_reference.safetensors');
  if (!ref) return;
  const img = ref.get('step0.synth_image')!;
  const boxes = ref.get('cut_boxes_size_offx_offy')!;
  const b = Array.from(boxes.data as BigInt64Array, Number);
  const cutBoxes: CutBox[] = [];
  for (let i = 0; i < boxes.shape[0]; i++) cutBoxes.push({ size: b[i * 3], offsetX: b[i * 3 + 1], offsetY: b[i * 3 + 2] });
  const expected = ref.get('step0.cutouts')!;
  const cutSize = expected.shape[2];
  const [n, c, h, w] = img.shape;
  const x = o.constant(nchwToNhwc(asFloat32(img), img.shape), [n, h, w, c]);
  const cuts = makeCutoutsOrig(o, x, cutSize, cutBoxes);
  assert.deepEqual(o.shape(cuts), [cutBoxes.length, cutSize, cutSize, c]);
  const d = assertClose(await o.read(cuts), nchwToNhwc(asFloat32(expected), expected.shape), 5e-5, 'step0.cutouts');
  t.diagnostic(`${tf.getBackend()}: step0.cutouts max abs diff ${d.toExponential(2)} (atol 5e-5); boxes ${JSON.stringify(cutBoxes)}`);
  tf.dispose([x, cuts]);
});

test('MakeCutoutsOrig gradient matches central finite differences (tiny case)', async () => {
  const rng = new Rng(5).fork('grad');
  const [h, w, c, cut] = [11, 9, 2, 4];
  // Mid-range values so no cutout pixel reaches the clamp (the map is then linear and differences are exact).
  const img = rng.fillUniform(new Float32Array(h * w * c), 0.3, 0.7);
  const boxes: CutBox[] = [
    { size: 9, offsetX: 0, offsetY: 1 },
    { size: 5, offsetX: 3, offsetY: 4 },
    { size: 4, offsetX: 5, offsetY: 7 },
    { size: 7, offsetX: 2, offsetY: 0 },
  ];
  const wts = rng.fillNormal(new Float32Array(boxes.length * cut * cut * c));
  const W = o.constant(wts, [boxes.length, cut, cut, c]);
  const f = (x: tf.Tensor) => tf.sum(tf.mul(makeCutoutsOrig(o, x, cut, boxes), W));
  const x = o.constant(img, [1, h, w, c]);
  const g = await o.read(tf.grad(f)(x));
  // Directional derivatives along random directions, and a few single pixels.
  const eps = 0.05;
  let worst = 0;
  for (let k = 0; k < 12; k++) {
    const v = new Float32Array(img.length);
    if (k < 6) rng.fillNormal(v);
    else v[rng.int(img.length)] = 1;
    const plus = (await o.read(f(o.constant(img.map((a, i) => a + eps * v[i]), [1, h, w, c]))))[0];
    const minus = (await o.read(f(o.constant(img.map((a, i) => a - eps * v[i]), [1, h, w, c]))))[0];
    const fd = (plus - minus) / (2 * eps);
    let dot = 0;
    for (let i = 0; i < v.length; i++) dot += g[i] * v[i];
    worst = Math.max(worst, Math.abs(fd - dot));
    assert.ok(Math.abs(fd - dot) <= 2e-4 * (1 + Math.abs(fd)), `direction ${k}: autodiff ${dot} vs finite differences ${fd}`);
  }
  // Every input pixel inside some box gets gradient; pixels outside every box get exactly zero.
  for (let y = 0; y < h; y++) {
    for (let xx = 0; xx < w; xx++) {
      const covered = boxes.some((b) => y >= b.offsetY && y < b.offsetY + b.size && xx >= b.offsetX && xx < b.offsetX + b.size);
      if (!covered) for (let ch = 0; ch < c; ch++) assert.equal(g[(y * w + xx) * c + ch], 0, `pixel ${y},${xx} outside all boxes`);
    }
  }
});

test('crops gathered from the crop table equal crops by host-built matrices, bit for bit (and out-of-table boxes)', async () => {
  // The reference builds each crop's [cut, H] and [cut, W] matrices on the host from resampleMatrix/bilinearMatrix
  // (Float32) and runs the same two matmuls: the table path only selects those floats, so nothing may differ.
  const [h, w, c, cut, cutn] = [40, 36, 3, 16, 6];
  const img = new Rng(11).fillUniform(new Float32Array(h * w * c));
  const x = o.constant(img, [1, h, w, c]);
  const reference = (boxes: CutBox[], matrix: (inSize: number, outSize: number) => Float64Array) => {
    const ry = new Float32Array(boxes.length * cut * h);
    const rx = new Float32Array(boxes.length * cut * w);
    boxes.forEach((b, k) => {
      const m = Float32Array.from(matrix(b.size, cut));
      for (let i = 0; i < cut; i++) {
        for (let j = 0; j < b.size; j++) {
          ry[(k * cut + i) * h + b.offsetY + j] = m[i * b.size + j];
          rx[(k * cut + i) * w + b.offsetX + j] = m[i * b.size + j];
        }
      }
    });
    const cols = tf.reshape(tf.transpose(tf.reshape(x, [h, w, c]), [1, 0, 2]), [w, h * c]);
    const a = tf.reshape(tf.matMul(tf.tensor(rx, [boxes.length * cut, w]), cols), [boxes.length, cut, h, c]);
    const at = tf.reshape(tf.transpose(a, [0, 2, 1, 3]), [boxes.length, h, cut * c]);
    return tf.reshape(tf.matMul(tf.tensor(ry, [boxes.length, cut, h]), at), [boxes.length, cut, cut, c]);
  };
  const drawn = drawOrigBoxes(new Rng(12).fork('boxes'), cutn, 1, h, w, cut);
  // Sizes below the cut are outside the table (drawOrigBoxes never makes them): host-built matrices.
  const handMade: CutBox[] = [{ size: 5, offsetX: 3, offsetY: 30 }, ...drawn.slice(1)];
  for (const [label, boxes] of [['drawn boxes (table)', drawn], ['a box below the cut size (host matrices)', handMade]] as const) {
    const got = await o.read(makeCutoutsOrig(o, x, cut, boxes));
    const want = await o.read(tf.clipByValue(reference([...boxes], resampleMatrix), 0, 1));
    assert.equal(maxAbsDiff(got, want), 0, `original, ${label}`);
  }
  const fast = await o.read(makeCutouts(o, x, { method: 'fast', cutSize: cut, cutn, cutPow: 1, noiseFac: 0 }, new Rng(12)));
  assert.equal(maxAbsDiff(fast, await o.read(reference(drawn, bilinearMatrix))), 0, 'fast (bilinear), drawn boxes');
  tf.dispose(x);
});

test('resample matrices: Lanczos kernel as generate.py, rows sum to 1, identity at equal size', () => {
  // ramp(0.5, 2) = [-1.5,-1,-0.5,0,0.5,1,1.5]: lanczos-2 weights at those points, normalised.
  const k = lanczosKernel(0.5);
  const sinc = (x: number) => (x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x));
  const raw = [-1.5, -1, -0.5, 0, 0.5, 1, 1.5].map((x) => sinc(x) * sinc(x / 2));
  const s = raw.reduce((a, b) => a + b);
  assert.ok(maxAbsDiff(k, raw.map((v) => v / s)) < 1e-7, `kernel ${k}`);
  for (const [inS, outS] of [[64, 32], [57, 32], [40, 32], [32, 32], [20, 32], [300, 224], [7, 3]]) {
    const m = resampleMatrix(inS, outS);
    for (let i = 0; i < outS; i++) {
      let sum = 0;
      for (let j = 0; j < inS; j++) sum += m[i * inS + j];
      assert.ok(Math.abs(sum - 1) < 1e-6, `${inS}->${outS} row ${i} sums to ${sum}`);
    }
  }
  // The engine's F.interpolate matrices (written independently) agree exactly.
  for (const [i, j] of [[64, 32], [57, 32], [20, 32], [300, 224], [7, 3], [3, 7], [1, 5], [5, 1]]) {
    assert.equal(maxAbsDiff(bicubicMatrix(i, j), interpolationMatrix(i, j, 'bicubic', true)), 0, `bicubic ${i}->${j}`);
    assert.equal(maxAbsDiff(bilinearMatrix(i, j), interpolationMatrix(i, j, 'bilinear', false)), 0, `bilinear ${i}->${j}`);
  }
  const id = bicubicMatrix(32, 32);
  for (let i = 0; i < 32; i++) for (let j = 0; j < 32; j++) assert.equal(id[i * 32 + j], i === j ? 1 : 0);
});

test('adaptive (avg + max) / 2 pooling equals a direct float64 computation, down and up', async () => {
  const rng = new Rng(9).fork('pool');
  for (const [h, w, s] of [[13, 10, 6], [5, 7, 8], [16, 16, 16]]) {
    const c = 3;
    const img = rng.fillUniform(new Float32Array(h * w * c));
    // Plant ties so the max has to pick among equal values.
    img.fill(1, 0, 2 * c);
    const got = await o.read(poolToSize(o, o.constant(img, [1, h, w, c]), s));
    const ref = new Float64Array(s * s * c);
    const wy = adaptiveWindows(h, s);
    const wx = adaptiveWindows(w, s);
    for (let i = 0; i < s; i++) {
      for (let j = 0; j < s; j++) {
        for (let ch = 0; ch < c; ch++) {
          let sum = 0;
          let max = -Infinity;
          for (let y = wy[i][0]; y < wy[i][1]; y++) {
            for (let x = wx[j][0]; x < wx[j][1]; x++) {
              const v = img[(y * w + x) * c + ch];
              sum += v;
              max = Math.max(max, v);
            }
          }
          ref[(i * s + j) * c + ch] = (sum / ((wy[i][1] - wy[i][0]) * (wx[j][1] - wx[j][0])) + max) / 2;
        }
      }
    }
    assert.ok(maxAbsDiff(got, ref) < 2e-7, `${h}x${w}->${s}: ${maxAbsDiff(got, ref)}`);
  }
});

test('drawOrigBoxes: sizes and offsets in range, cut_pow shapes the sizes, same seed same boxes', () => {
  const a = drawOrigBoxes(new Rng(1).fork('boxes'), 500, 1, 64, 80, 32);
  assert.deepEqual(a, drawOrigBoxes(new Rng(1).fork('boxes'), 500, 1, 64, 80, 32));
  assert.notDeepEqual(a, drawOrigBoxes(new Rng(2).fork('boxes'), 500, 1, 64, 80, 32));
  for (const b of a) {
    assert.ok(Number.isInteger(b.size) && b.size >= 32 && b.size <= 64, `size ${b.size}`);
    assert.ok(b.offsetX >= 0 && b.offsetX + b.size <= 80 && b.offsetY >= 0 && b.offsetY + b.size <= 64, JSON.stringify(b));
  }
  const meanSize = (pow: number) => drawOrigBoxes(new Rng(3), 2000, pow, 64, 64, 32).reduce((s, b) => s + b.size, 0) / 2000;
  // E[floor(u^p * 32 + 32)] = 32 + 32/(p+1) - 1/2 roughly.
  assert.ok(Math.abs(meanSize(1) - 47.5) < 0.7, `${meanSize(1)}`);
  assert.ok(Math.abs(meanSize(3) - 39.5) < 0.7, `${meanSize(3)}`);
  // Small images: cut size above the short side gives full-size crops.
  assert.ok(drawOrigBoxes(new Rng(4), 20, 1, 16, 24, 224).every((b) => b.size === 16));
});
