// The tiny VQGAN decoder traced (src/engine/graph): interpret(tfOps, trace(decode)) equals decode on tfOps, and the
// autodiff gradient equals tf.valueAndGrad and the PyTorch fixture's grad_dL_dz (MANIFEST.md tolerances), on cpu.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { fuseElementwise } from '../src/engine/graph/fuse.ts';
import { GraphBuilder } from '../src/engine/graph/trace.ts';
import { DEFAULT_LIMITS } from '../src/engine/wgsl/kernel.ts';
import { lowerings } from '../src/engine/wgsl/lowerings.ts';
import { planGraph } from '../src/engine/wgsl/plan.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import { decode, weightTensors } from '../src/models/vqgan.ts';
import { checkTraced, maxAbs } from './graph-check.ts';
import { FIXTURES, assertClose, fixture, maxAbsDiff, nchwToNhwc, nhwcToNchw, reference } from './helpers.ts';

before(async () => void (await initBackend('cpu')));
after(async () => void (await shutdownBackend()));

describe('tiny VQGAN decoder: trace + autodiff + interpret on tfjs cpu', () => {
  /** The tiny VQGAN's files and its decoder on tfOps, or undefined when a fixture is missing (the test skips, saying so). */
  async function tiny(t: TestContext) {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    const ref = reference(t, 'vqgan_reference.safetensors');
    if (!ckpt || !ref) return undefined;
    const yaml = path.join(FIXTURES, 'tiny_vqgan.yaml');
    return { ckpt, ref, yaml, vqTf: await loadVqgan(tfOps, ckpt, yaml, { encoder: false }) };
  }

  test('tiny VQGAN decode: forward and gradient equal tfjs and the fixture (grad_decode_out, grad_dL_dz)', async (t) => {
    const f = await tiny(t);
    if (!f) return;
    const { ckpt, ref, yaml, vqTf } = f;
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

  test('checkpointed blocks recomputed in the backward: the same gradient, and the forward\'s intermediates die early', async (t) => {
    const f = await tiny(t);
    if (!f) return;
    const { ckpt, ref, yaml, vqTf } = f;
    const z = ref.get('grad_z')!;
    const [n, c, h, w] = z.shape;
    // The same decoder traced with checkpoint (GraphBuilder's: regions autodiff recomputes) and without it (every
    // block's intermediates kept for the backward).
    const traced = async (recompute: boolean) => {
      const b = new GraphBuilder();
      const o = recompute ? b : (new Proxy(b, { get: (tgt, k) => (k === 'checkpoint' ? undefined : Reflect.get(tgt, k, tgt)) }) as GraphBuilder);
      const vqG = await loadVqgan(o, ckpt, yaml, { encoder: false });
      const r = await checkTraced(
        `VQGAN decode, ${recompute ? 'recomputed blocks' : 'kept intermediates'}`,
        b,
        { tf: (x) => decode(tfOps, vqTf.weights, x), graph: (_, x) => decode(o, vqG.weights, x) },
        nchwToNhwc(asFloat32(z), z.shape),
        [n, h, w, c],
        { y: 1e-6, grad: 1e-5 },
      );
      const f = fuseElementwise(b.graph, { maxInputs: 7, epilogues: true });
      const plan = planGraph(f, lowerings, DEFAULT_LIMITS, { alignment: 256, maxBindingSize: 2 ** 27, maxBufferSize: 2 ** 31 });
      return { r, regions: b.recomputable.size, peak: plan.memory.peakLiveBytes, dispatches: plan.dispatches.length };
    };
    const kept = await traced(false);
    const recomputed = await traced(true);
    t.diagnostic(`regions ${recomputed.regions}; backward nodes ${kept.r.nodes.backward} -> ${recomputed.r.nodes.backward}; dispatches ${kept.dispatches} -> ${recomputed.dispatches}; peak live ${kept.peak} -> ${recomputed.peak} bytes`);
    assert.equal(kept.regions, 0);
    assert.ok(recomputed.regions > 0);
    assert.ok(recomputed.r.nodes.backward > kept.r.nodes.backward, 'the backward recomputes the blocks');
    assert.ok(recomputed.peak < kept.peak, 'less memory live at once');
    assert.ok(maxAbsDiff(recomputed.r.grad, kept.r.grad) <= 1e-5 * maxAbs(kept.r.grad), 'the same gradient');
    tf.dispose(weightTensors(vqTf.weights));
  });
});
