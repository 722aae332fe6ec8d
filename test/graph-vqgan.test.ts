// The tiny VQGAN decoder traced (src/engine/graph): interpret(tfOps, trace(decode)) equals decode on tfOps, and the
// autodiff gradient equals tf.valueAndGrad and the PyTorch fixture's grad_dL_dz (MANIFEST.md tolerances), on cpu.
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { GraphBuilder } from '../src/engine/graph/trace.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import { decode, weightTensors } from '../src/models/vqgan.ts';
import { checkTraced } from './graph-check.ts';
import { FIXTURES, assertClose, fixture, nchwToNhwc, nhwcToNchw, reference } from './helpers.ts';

before(async () => void (await initBackend('cpu')));
after(async () => void (await shutdownBackend()));

describe('tiny VQGAN decoder: trace + autodiff + interpret on tfjs cpu', () => {
  test('tiny VQGAN decode: forward and gradient equal tfjs and the fixture (grad_decode_out, grad_dL_dz)', async (t) => {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    const ref = reference(t, 'vqgan_reference.safetensors');
    if (!ckpt || !ref) return;
    const yaml = path.join(FIXTURES, 'tiny_vqgan.yaml');
    const vqTf = await loadVqgan(tfOps, ckpt, yaml, { encoder: false });
    const b = new GraphBuilder();
    const vqG = await loadVqgan(b, ckpt, yaml, { encoder: false });
    const z = ref.get('grad_z')!;
    const W = ref.get('grad_W')!;
    const [n, c, h, w] = z.shape;
    const r = await checkTraced(
      'VQGAN decode',
      b,
      { tf: (x) => decode(tfOps, vqTf.weights, x), graph: (bb, x) => decode(bb, vqG.weights, x) },
      nchwToNhwc(asFloat32(z), z.shape),
      [n, h, w, c],
      { y: 1e-6, grad: 1e-5 },
      nchwToNhwc(asFloat32(W), W.shape),
    );
    assertClose(nhwcToNchw(r.y, [1, 32, 32, 3]), ref.get('grad_decode_out')!, 5e-5, 'grad_decode_out');
    const d = assertClose(nhwcToNchw(r.grad, [n, h, w, c]), ref.get('grad_dL_dz')!, 5e-4, 'grad_dL_dz');
    console.log(`# VQGAN decode vs fixture grad_dL_dz: max abs diff ${d.toExponential(2)} (atol 5e-4)`);
    tf.dispose(weightTensors(vqTf.weights));
  });

});
