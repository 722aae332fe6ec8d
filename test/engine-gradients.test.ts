// gradients.ts on every backend reachable here: cpu, wasm (threads + fast kernels), and webgpu (a GPU adapter, else the
// software path: Dawn OpenGL ES on Mesa llvmpipe; skipped, saying why, when no adapter can be created).
// Forward values are checked against numbers worked out by hand from PyTorch's formulas and against an independent
// float64 reference written here; gradients against float64 finite differences of that reference.
import assert from 'node:assert/strict';
import { after, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend, type BackendName } from '../src/engine/backend.ts';
import {
  clampWithGrad,
  gatherRows,
  interpolationMatrix,
  resize,
  stopGradient,
  straightThrough,
} from '../src/engine/gradients.ts';
import { registerFastWasmKernels, unregisterFastWasmKernels } from '../src/engine/wasm-kernels.ts';

/** tf.grad for a function of a specific tensor rank (tf.grad's parameter type is the plain Tensor). */
const grad = <T extends tf.Tensor>(f: (x: T) => tf.Tensor) => tf.grad(f as unknown as (x: tf.Tensor) => tf.Tensor);

after(() => shutdownBackend());

// ------------------------------------------------------------------------------------------------------------
// An independent float64 reference of PyTorch's upsample_bilinear2d / upsample_bicubic2d (per output pixel, as the
// ATen CPU kernels loop), used for the 2D forward checks and the finite differences.

type Mode = 'bilinear' | 'bicubic';

function taps(inSize: number, outSize: number, o: number, mode: Mode, align: boolean, a = -0.75): [number, number][] {
  const scale = align ? (outSize > 1 ? (inSize - 1) / (outSize - 1) : 0) : inSize / outSize;
  let src = align ? scale * o : scale * (o + 0.5) - 0.5;
  const clamp = (i: number) => Math.min(Math.max(i, 0), inSize - 1);
  if (mode === 'bilinear') {
    if (src < 0) src = 0;
    const i0 = Math.floor(src);
    const i1 = i0 < inSize - 1 ? i0 + 1 : i0;
    const l = src - i0;
    return [
      [i0, 1 - l],
      [i1, l],
    ];
  }
  const i0 = Math.floor(src);
  const t = src - i0;
  const c1 = (x: number) => ((a + 2) * x - (a + 3)) * x * x + 1;
  const c2 = (x: number) => ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  const w = [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)];
  return w.map((wk, k) => [clamp(i0 - 1 + k), wk]);
}

/** NHWC float64 reference resize. */
function refResize(x: Float64Array, [b, h, w, c]: number[], oh: number, ow: number, mode: Mode, align: boolean): Float64Array {
  const out = new Float64Array(b * oh * ow * c);
  for (let n = 0; n < b; n++)
    for (let y = 0; y < oh; y++) {
      const ty = taps(h, oh, y, mode, align);
      for (let xo = 0; xo < ow; xo++) {
        const tx = taps(w, ow, xo, mode, align);
        for (let ch = 0; ch < c; ch++) {
          let s = 0;
          for (const [iy, wy] of ty) for (const [ix, wx] of tx) s += wy * wx * x[((n * h + iy) * w + ix) * c + ch];
          out[((n * oh + y) * ow + xo) * c + ch] = s;
        }
      }
    }
  return out;
}

function seeded(n: number, seed: number): Float64Array {
  const d = new Float64Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = s / 2 ** 32 - 0.5;
  }
  return d;
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length');
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

async function read(t: tf.Tensor): Promise<Float32Array> {
  return (await t.data()) as Float32Array; // not dataSync: webgpu cannot read synchronously in Node
}

async function resize1d(v: number[], out: number, mode: Mode, align: boolean): Promise<number[]> {
  const x = tf.tensor4d(v, [1, 1, v.length, 1]);
  const y = resize(x, 1, out, { mode, alignCorners: align });
  const r = Array.from(await read(y));
  tf.dispose([x, y]);
  return r;
}

function close(actual: number[], expected: number[], tol: number, label: string): void {
  const d = maxAbs(actual, expected);
  assert.ok(d <= tol, `${label}: got [${actual.map((v) => v.toFixed(6))}], want [${expected}] (diff ${d})`);
}

// ------------------------------------------------------------------------------------------------------------

const BACKENDS: BackendName[] = ['cpu', 'wasm', 'webgpu'];

for (const backend of BACKENDS) {
  describe(`gradients on ${backend}`, () => {
    let unavailable: string | undefined;

    test('init', async (t) => {
      try {
        // webgpu: a hardware adapter when there is one, else the software path.
        const r = await initBackend(backend);
        t.diagnostic(`${r.backend}: ${r.reason}${r.gpu ? ` (${r.gpu.device || r.gpu.description})` : ''}`);
        assert.equal(tf.getBackend(), backend);
      } catch (e) {
        unavailable = (e as Error).message;
        console.log(`# SKIP ${backend}: ${unavailable}`);
        t.skip(`${backend} unavailable: ${unavailable}`);
      }
    });
    const it = (name: string, fn: (t: TestContext) => Promise<void>) =>
      test(name, async (t) => {
        if (unavailable) return t.skip(`${backend} unavailable: ${unavailable}`);
        await fn(t);
      });

    it('resize 1D matches PyTorch values worked out by hand', async () => {
      // bilinear, align_corners=False, 2 -> 4: src = (dst + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25.
      close(await resize1d([1, 3], 4, 'bilinear', false), [1, 1.5, 2.5, 3], 1e-6, 'bilinear F up');
      // bilinear, align_corners=True, 2 -> 4: src = dst / 3.
      close(await resize1d([1, 3], 4, 'bilinear', true), [1, 5 / 3, 7 / 3, 3], 1e-6, 'bilinear T up');
      // downscale 4 -> 2, align_corners=False (no antialias): src = 2 dst + 0.5 -> means of neighbours.
      close(await resize1d([1, 2, 3, 5], 2, 'bilinear', false), [1.5, 4], 1e-6, 'bilinear F down');
      // bicubic, A = -0.75: c1(x) = (1.25x - 2.25)x² + 1, c2(x) = ((-0.75x + 3.75)x - 6)x + 3;
      // c1(0.5) = 0.59375, c2(1.5) = -0.09375; c1(0.75) = 0.26171875, c1(0.25) = 0.83203125,
      // c2(1.25) = -0.10546875, c2(1.75) = -0.03515625.
      // align_corners=True, impulse [0,1,0,0], 4 -> 7: src = dst / 2; half-way taps weigh c2(1.5), c1(.5), c1(.5), c2(1.5).
      close(
        await resize1d([0, 1, 0, 0], 7, 'bicubic', true),
        [0, 0.59375, 1, 0.59375, 0, -0.09375, 0],
        1e-6,
        'bicubic T impulse',
      );
      // align_corners=False, [1, 2] -> 4: src = -0.25, 0.25, 0.75, 1.25; taps outside the input read the border
      // (replicate). dst 0: i0 = -1, t = .75 -> 1 + c2(1.25) = 0.89453125; dst 1: i0 = 0, t = .25 -> 1 + c1(.75) + c2(1.75).
      close(
        await resize1d([1, 2], 4, 'bicubic', false),
        [0.89453125, 1.2265625, 1.7734375, 2.10546875],
        1e-6,
        'bicubic F border',
      );
      // Same size: identity in both modes.
      close(await resize1d([4, -1, 2], 3, 'bicubic', false), [4, -1, 2], 0, 'identity');
    });

    it('interpolation matrices rows sum to 1 (bicubic at a = -0.75 too)', async () => {
      for (const [i, o] of [
        [5, 9],
        [9, 5],
        [7, 224],
        [224, 7],
      ]) {
        for (const mode of ['bilinear', 'bicubic'] as const) {
          for (const align of [false, true]) {
            const m = interpolationMatrix(i, o, mode, align);
            for (let r = 0; r < o; r++) {
              let s = 0;
              for (let k = 0; k < i; k++) s += m[r * i + k];
              assert.ok(Math.abs(s - 1) < 1e-12, `${mode} ${align} ${i}->${o} row ${r} sums to ${s}`);
            }
          }
        }
      }
    });

    it('resize 2D (batch, channels, up and down) equals the float64 reference', async () => {
      const shape = [2, 5, 6, 3];
      const x64 = seeded(2 * 5 * 6 * 3, 7);
      const x = tf.tensor4d(Float32Array.from(x64), shape as [number, number, number, number]);
      for (const [oh, ow] of [
        [9, 4],
        [3, 11],
        [5, 6],
      ]) {
        for (const mode of ['bilinear', 'bicubic'] as const) {
          for (const align of [false, true]) {
            const y = resize(x, oh, ow, { mode, alignCorners: align });
            assert.deepEqual(y.shape, [2, oh, ow, 3]);
            const d = maxAbs(await read(y), refResize(x64, shape, oh, ow, mode, align));
            assert.ok(d < 2e-6, `${mode} align=${align} ${oh}x${ow}: max diff ${d}`);
            y.dispose();
          }
        }
      }
      x.dispose();
    });

    it('resize gradient equals float64 finite differences', async () => {
      const shape = [1, 4, 5, 2];
      const n = 40;
      const x64 = seeded(n, 11);
      for (const [mode, align, oh, ow] of [
        ['bilinear', false, 7, 3],
        ['bicubic', true, 6, 9],
        ['bicubic', false, 3, 8],
      ] as const) {
        const r64 = seeded(oh * ow * 2, 13); // loss = Σ r · resize(x)
        const r = tf.tensor4d(Float32Array.from(r64), [1, oh, ow, 2]);
        const g = grad((v: tf.Tensor4D) => tf.sum(tf.mul(resize(v, oh, ow, { mode, alignCorners: align }), r)))(
          tf.tensor4d(Float32Array.from(x64), shape as [number, number, number, number]),
        );
        const got = await read(g);
        const loss = (v: Float64Array) => refResize(v, shape, oh, ow, mode, align).reduce((s, y, i) => s + y * r64[i], 0);
        const fd = new Float64Array(n);
        const eps = 1e-6;
        for (let i = 0; i < n; i++) {
          const p = Float64Array.from(x64);
          const m = Float64Array.from(x64);
          p[i] += eps;
          m[i] -= eps;
          fd[i] = (loss(p) - loss(m)) / (2 * eps);
        }
        const d = maxAbs(got, fd);
        assert.ok(d < 1e-5, `${mode} align=${align}: gradient vs finite differences ${d}`);
        tf.dispose([r, g]);
      }
    });

    it('straightThrough: value of the first, gradient to the second (through argMin and int indices)', async () => {
      const z = tf.tensor2d([0.1, 0.9, -0.4, 0.3, 0.7, -0.8], [3, 2]);
      const codebook = tf.tensor2d([0, 0, 1, 1, -1, 0, 0.5, -1], [4, 2]);
      const w = tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2]);
      // VQ: q = codebook[argmin |z - e|²]; loss = Σ w · st(q, z).
      const quantize = (zz: tf.Tensor2D) => {
        const d = tf.sum(tf.square(tf.sub(tf.expandDims(zz, 1), tf.expandDims(codebook, 0))), 2);
        return gatherRows(codebook, tf.argMin(d, 1) as tf.Tensor1D);
      };
      const q = quantize(z);
      const y = straightThrough(q, z);
      assert.deepEqual(Array.from(await read(y)), Array.from(await read(q)), 'value is the quantized one');
      const g = grad((zz: tf.Tensor2D) => tf.sum(tf.mul(straightThrough(quantize(zz), zz), w)))(z);
      assert.deepEqual(Array.from(await read(g)), [1, 2, 3, 4, 5, 6], 'gradient passes unchanged');
      // Broadcast target: gradient summed over the broadcast axis.
      const bias = tf.tensor1d([0, 0]);
      const gb = grad((bb: tf.Tensor1D) => tf.sum(tf.mul(straightThrough(tf.add(z, bb), bb), w)))(bias);
      assert.deepEqual(Array.from(await read(gb)), [9, 12]);
      tf.dispose([z, codebook, w, q, y, g, bias, gb]);
    });

    it('stopGradient: same value, no gradient', async () => {
      const x = tf.tensor1d([1.5, -2, 3]);
      const s = stopGradient(x);
      assert.deepEqual(Array.from(await read(s)), [1.5, -2, 3]);
      // d/dx [x · stop(x)] = stop(x) (not 2x).
      const g = grad((v: tf.Tensor1D) => tf.sum(tf.mul(v, stopGradient(v))))(x);
      assert.deepEqual(Array.from(await read(g)), [1.5, -2, 3]);
      // Nothing on the stopped side is differentiated: Greater has no gradient in tfjs, so reaching it throws.
      const withMask = (stop: boolean) => (v: tf.Tensor1D) => {
        const mask = tf.greater(v, 0);
        return tf.sum(tf.mul(v, tf.cast(stop ? stopGradient(mask) : mask, 'float32')));
      };
      assert.throws(() => grad(withMask(false))(x), /Greater/);
      const g2 = grad(withMask(true))(x);
      assert.deepEqual(Array.from(await read(g2)), [1, 0, 1]);
      tf.dispose([x, s, g, g2]);
    });

    it('clampWithGrad: clamp forward; outside the range the gradient passes only towards it', async () => {
      const x = tf.tensor1d([-2, -0.5, 0.5, 2, 1]);
      const y = clampWithGrad(x, -1, 1);
      assert.deepEqual(Array.from(await read(y)), [-1, -0.5, 0.5, 1, 1]);
      const gradFor = async (w: number[]) =>
        Array.from(await read(grad((v: tf.Tensor1D) => tf.sum(tf.mul(clampWithGrad(v, -1, 1), tf.tensor1d(w))))(x)));
      // dy = w. Below the range (x - clamp < 0) dy passes iff dy <= 0 (descent, -dy >= 0, raises x); above iff dy >= 0.
      const g1 = await gradFor([1, 1, 1, 1, 1]);
      assert.deepEqual(g1.map((v) => v + 0), [0, 1, 1, 1, 1]);
      const g2 = await gradFor([-1, -1, -1, -1, -1]);
      assert.deepEqual(g2.map((v) => v + 0), [-1, -1, -1, 0, -1]);
      tf.dispose([x, y]);
    });

    it('gatherRows: rows, and the scatter-add gradient w.r.t. the table (int and float indices)', async () => {
      const table = tf.tensor2d(Float32Array.from(seeded(12, 3)), [4, 3]);
      const tableVals = await read(table);
      const ids = [2, 0, 2, 3, 2];
      const dy = Float32Array.from(seeded(15, 5));
      const expected = new Float64Array(12);
      ids.forEach((r, i) => {
        for (let k = 0; k < 3; k++) expected[r * 3 + k] += dy[i * 3 + k];
      });
      const check = async (label: string) => {
        for (const dtype of ['int32', 'float32'] as const) {
          const idx = tf.tensor1d(ids, dtype);
          const rows = gatherRows(table, idx);
          const got = await read(rows);
          ids.forEach((r, i) => {
            for (let k = 0; k < 3; k++) assert.equal(got[i * 3 + k], tableVals[r * 3 + k]);
          });
          const g = grad((t: tf.Tensor2D) => gatherRows(t, idx))(table, tf.tensor2d(dy, [5, 3]));
          const d = maxAbs(await read(g), expected);
          assert.ok(d < 1e-6, `${label} ${dtype}: gradient off by ${d}`);
          tf.dispose([idx, rows, g]);
        }
      };
      await check('default');
      if (backend === 'wasm') {
        // Without wasm-kernels.ts there is no UnsortedSegmentSum on wasm: the oneHot x matMul path must work too.
        unregisterFastWasmKernels();
        try {
          assert.equal(tf.getKernel('UnsortedSegmentSum', 'wasm'), undefined);
          await check('oneHot fallback');
        } finally {
          registerFastWasmKernels();
        }
      }
      table.dispose();
    });

    it('matches the cpu backend on a small pipeline (resize -> clamp -> loss)', async () => {
      const x64 = seeded(1 * 6 * 5 * 3, 21);
      const run = async () => {
        const x = tf.tensor4d(Float32Array.from(x64), [1, 6, 5, 3]);
        const g = grad((v: tf.Tensor4D) =>
          tf.sum(tf.square(clampWithGrad(resize(v, 11, 7, { mode: 'bicubic', alignCorners: true }), -0.3, 0.3))),
        )(x);
        const out = Array.from(await read(g));
        tf.dispose([x, g]);
        return out;
      };
      const here = await run();
      const prev = tf.getBackend();
      await tf.setBackend('cpu');
      const onCpu = await run();
      await tf.setBackend(prev);
      const d = maxAbs(here, onCpu);
      assert.ok(d < 1e-5, `${backend} vs cpu: ${d}`);
    });
  });
}
