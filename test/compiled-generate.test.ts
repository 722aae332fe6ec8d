// The compiled WebGPU engine (src/engine/compiled.ts) running the generate pipeline against e2e_reference.safetensors:
// the whole step (forward, gradient to z, Adam, clamp) planned once and replayed, on the software adapter in CI.
// Same checks and tolerances as generate-parity.ts (MANIFEST.md): losses, grad_z and z after each step, the image.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CompiledEngine } from '../src/engine/compiled.ts';
import { createWebGPUDevice } from '../src/engine/webgpu.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import { E2E_FIXTURES, e2eGeneration } from './generate-parity.ts';
import { assertClose, FIXTURES, nhwcToNchw } from './helpers.ts';

// Step 1 compiles a plan without optimiser buffers, step 2 the steady plan, step 3 is the first replay.
const STEPS = 3;

describe('compiled engine: generate pipeline vs generate.py (software WebGPU)', () => {
  let unavailable: string | undefined;
  let device: GPUDevice | undefined;
  before(async () => {
    const missing = E2E_FIXTURES.filter((f) => !fs.existsSync(path.join(FIXTURES, f)));
    if (missing.length) {
      unavailable = `fixtures missing in ${FIXTURES}: ${missing.join(', ')}`;
      return;
    }
    try {
      device = (await createWebGPUDevice('allow')).device;
    } catch (e) {
      unavailable = `no WebGPU adapter: ${(e as Error).message}`;
    }
  });
  after(() => device?.destroy());

  test(`${STEPS} replayed steps reproduce the reference losses, gradients, latents and images`, async (t) => {
    if (unavailable) return t.skip(unavailable);
    const engine = new CompiledEngine(device!);
    const o = engine.ops;
    const { gen, r, n, c, h, w } = await e2eGeneration(engine.executor, (data, shape) => o.constant(data, shape), STEPS);
    try {
      const img0 = await gen.picture();
      assertClose(nhwcToNchw(img0.data, [1, 64, 64, 3]), r('step0.synth_image'), 5e-5, 'step0.synth_image');
      const hostMs: number[] = [];
      for (let s = 0; s < STEPS; s++) {
        const res = await gen.step(true);
        hostMs.push(engine.stats.lastStepReplayMs + engine.stats.lastStepEncodeMs);
        t.diagnostic(`step ${s}: compiles so far ${engine.stats.compiles}, replay ${engine.stats.lastStepReplayMs.toFixed(2)} ms, encode ${engine.stats.lastStepEncodeMs.toFixed(2)} ms, host incl. submit ${engine.stats.lastStepHostMs.toFixed(1)} ms`);
        assertClose(res.losses, r(`step${s}.losses`), 2e-6, `step${s}.losses`);
        assert.ok(Math.abs(res.total - asFloat32(r(`step${s}.loss_total`))[0]) <= 2e-6, `step${s}.loss_total`);
        assertClose(nhwcToNchw(await o.read(res.debug!.grad), [n, h, w, c]), r(`step${s}.grad_z`), 1e-6, `step${s}.grad_z`);
        await gen.syncState();
        assertClose(nhwcToNchw(await o.read(gen.latent()), [n, h, w, c]), r(`step${s}.z_after`), 5e-4, `step${s}.z_after`);
      }
      // Step 1 has no optimiser buffers yet (a plan of its own); from step 2 on the step is one plan, replayed.
      t.diagnostic(`plans compiled ${engine.stats.compiles}; step dispatches ${engine.stats.dispatches}; host ms per step ${hostMs.map((x) => x.toFixed(1)).join(', ')}`);
      assert.ok(engine.stats.compiles <= 2 + 3, `compiled ${engine.stats.compiles} plans`);
    } finally {
      gen.dispose();
      engine.destroy();
    }
  });
});
