// The VQGAN parity suite against the PyTorch fixtures, run once per backend by vqgan*.test.ts
// (tolerances: fixtures/MANIFEST.md "Float32 vs float64 parity").
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { shutdownBackend, type BackendName } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32, asNumbers, type HostTensor } from '../src/formats/host-tensor.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import * as V from '../src/models/vqgan.ts';
import { assertClose, fixture, nchwToNhwc, nhwcToNchw, reference, startBackend } from './helpers.ts';

const o = tfOps;

/** A fixture tensor (NCHW) as an NHWC tfjs tensor. */
export function nhwc(r: HostTensor): tf.Tensor4D {
  const [n, c, h, w] = r.shape;
  return tf.tensor4d(nchwToNhwc(asFloat32(r), r.shape), [n, h, w, c]);
}

/** Reads an NHWC tensor back in the fixture's NCHW layout. */
export async function nchw(t: tf.Tensor): Promise<Float32Array> {
  const d = (await t.data()) as Float32Array;
  return t.rank === 4 ? nhwcToNchw(d, t.shape) : d;
}

export interface SuiteOptions {
  /** Multiplies every float tolerance (GPU summation orders differ). */
  tolScale?: number;
  /** Skip the (slow on software rasterisers) input-gradient check. */
  skipGradient?: string;
}

/** Registers the parity tests for one backend. */
export function vqganParitySuite(backend: BackendName, opts: SuiteOptions = {}): void {
  const k = opts.tolScale ?? 1;
  describe(`VQGAN parity on ${backend}`, () => {
    let unavailable: string | undefined;
    let model: Awaited<ReturnType<typeof loadVqgan<tf.Tensor>>> | undefined;

    before(async () => {
      unavailable = await startBackend(backend);
    });
    after(async () => {
      if (model) tf.dispose(V.weightTensors(model.weights));
      await shutdownBackend();
    });

    /** The tiny model, loaded once per backend; undefined (test skipped) without the backend or fixtures. */
    async function setup(t: TestContext) {
      if (unavailable) {
        t.skip(unavailable);
        return undefined;
      }
      const ckpt = fixture(t, 'tiny_vqgan.ckpt');
      const ref = reference(t, 'vqgan_reference.safetensors');
      if (!ckpt || !ref) return undefined;
      model ??= await loadVqgan(o, ckpt);
      return { w: model.weights, ref };
    }

    test('encode, quantize, decode, forward, decode from indices', async (t) => {
      const s = await setup(t);
      if (!s) return;
      const { w, ref } = s;
      const before = tf.memory().numTensors;
      const r = tf.tidy(() => {
        const x = nhwc(ref.get('x')!);
        const h = V.encode(o, w, x);
        const q = V.quantize(o, w, h);
        const idx = tf.tensor1d(Int32Array.from(asNumbers(ref.get('indices')!)), 'int32');
        return {
          h,
          zq: q.zq,
          indices: q.indices,
          loss: q.loss,
          dec: V.decode(o, w, q.zq),
          fwd: V.reconstruct(o, w, x),
          codeDec: V.decodeIndices(o, w, idx, [1, 8, 8]),
        };
      });
      const diffs: Record<string, number> = {};
      diffs.h = assertClose(await nchw(r.h), ref.get('h')!, 5e-5 * k, 'h', [1, 8, 8, 8]);
      assert.deepEqual(Array.from(await r.indices.data()), asNumbers(ref.get('indices')!), 'indices');
      assert.equal(r.indices.dtype, 'int32');
      diffs.z_q = assertClose(await nchw(r.zq), ref.get('z_q')!, 1e-6 * k, 'z_q');
      diffs.emb_loss = assertClose(await r.loss.data(), ref.get('emb_loss')!, 1e-6 * k, 'emb_loss');
      diffs.decode_zq = assertClose(await nchw(r.dec), ref.get('decode_zq')!, 5e-5 * k, 'decode_zq', [1, 3, 32, 32]);
      diffs.forward_dec = assertClose(await nchw(r.fwd.image), ref.get('forward_dec')!, 5e-5 * k, 'forward_dec');
      diffs.forward_diff = assertClose(await r.fwd.loss.data(), ref.get('forward_diff')!, 1e-6 * k, 'forward_diff');
      diffs.decode_code_dec = assertClose(await nchw(r.codeDec), ref.get('decode_code_dec')!, 1e-4 * k, 'decode_code_dec');
      tf.dispose(r as unknown as tf.TensorContainer);
      assert.equal(tf.memory().numTensors, before, 'no tensors leak');
      t.diagnostic(`${backend} max abs diffs: ${Object.entries(diffs).map(([n, d]) => `${n} ${d.toExponential(2)}`).join(', ')}`);
    });

    test('every intermediate activation (state_dict-prefix taps)', async (t) => {
      const s = await setup(t);
      const inter = s && reference(t, 'vqgan_intermediates.safetensors');
      if (!s || !inter) return;
      const taps = new Map<string, tf.Tensor>();
      tf.tidy(() => {
        const tap = (name: string, v: tf.Tensor) => void taps.set(name, tf.keep(v));
        const h = V.encode(o, s.w, nhwc(s.ref.get('x')!), tap);
        V.decode(o, s.w, V.quantize(o, s.w, h).zq, tap);
      });
      let worst = 0;
      for (const [name, r] of inter) {
        const v = taps.get(name);
        assert.ok(v, `no tap named ${name}`);
        // MANIFEST rule of thumb for decoder activations (values up to a few units): 1e-4.
        worst = Math.max(worst, assertClose(await nchw(v), r, 1e-4 * k, name, r.shape));
      }
      assert.equal(taps.size, inter.size, `taps ${[...taps.keys()].filter((n) => !inter.has(n))} have no reference`);
      tf.dispose([...taps.values()]);
      t.diagnostic(`${backend}: ${inter.size} intermediates, worst max abs diff ${worst.toExponential(2)}`);
    });

    test('input gradient through the decoder (grad_dL_dz)', async (t) => {
      if (opts.skipGradient) return void t.skip(opts.skipGradient);
      const s = await setup(t);
      if (!s) return;
      const { w, ref } = s;
      const W = nhwc(ref.get('grad_W')!);
      const z = nhwc(ref.get('grad_z')!);
      const L = (zz: tf.Tensor) => tf.sum(tf.mul(V.decode(o, w, zz), W));
      const { value, grad } = tf.tidy(() => tf.valueAndGrad(L)(z));
      const out = tf.tidy(() => V.decode(o, w, z));
      const dOut = assertClose(await nchw(out), ref.get('grad_decode_out')!, 5e-5 * k, 'grad_decode_out');
      const dGrad = assertClose(await nchw(grad), ref.get('grad_dL_dz')!, 5e-4 * k, 'grad_dL_dz', [1, 8, 8, 8]);
      const Lref = asFloat32(ref.get('grad_L')!)[0];
      assertClose(await value.data(), [Lref], 1e-5 * Math.abs(Lref) * k, 'grad_L (relative 1e-5)');
      tf.dispose([W, z, value, grad, out]);
      t.diagnostic(`${backend}: grad_decode_out ${dOut.toExponential(2)}, grad_dL_dz ${dGrad.toExponential(2)}`);
    });

    test('vectorQuantizeST and synth (generate.py) on the e2e latents', async (t) => {
      const s = await setup(t);
      const e2e = s && reference(t, 'e2e_reference.safetensors');
      if (!s || !e2e) return;
      const z = nhwc(e2e.get('step0.z_before')!);
      const r = tf.tidy(() => {
        const zq = V.vectorQuantizeST(o, z, s.w.codebook);
        const synth = tf.clipByValue(tf.div(tf.add(V.decode(o, s.w, zq), 1), 2), 0, 1);
        // straight-through: d sum(vq(z) * G) / dz = G
        const G = tf.randomNormal(z.shape, 0, 1, 'float32', 5);
        const g = tf.grad((zz: tf.Tensor) => tf.sum(tf.mul(V.vectorQuantizeST(o, zz, s.w.codebook), G)))(z);
        const rows = tf.gather(s.w.codebook, tf.tensor1d(Int32Array.from(asNumbers(e2e.get('step0.code_indices')!)), 'int32'));
        return { zq, synth, g, G, rows, zMin: s.w.zMin, zMax: s.w.zMax };
      });
      assert.deepEqual(await r.zq.data(), await r.rows.data(), 'vector_quantize picks step0.code_indices');
      assert.deepEqual(await r.g.data(), await r.G.data(), 'gradient passes straight through');
      const d = assertClose(await nchw(r.synth), e2e.get('step0.synth_image')!, 5e-5 * k, 'step0.synth_image');
      assertClose(await r.zMin.data(), e2e.get('z_min')!, 0, 'z_min');
      assertClose(await r.zMax.data(), e2e.get('z_max')!, 0, 'z_max');
      tf.dispose([z, r.zq, r.synth, r.g, r.G, r.rows]);
      t.diagnostic(`${backend}: synth_image ${d.toExponential(2)}`);
    });
  });
}
