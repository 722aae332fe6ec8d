// The compiled engine's precision 'f16' (weights stored as halves, f32 arithmetic: compiled.ts's header) on the fixture
// models, against float32 and the PyTorch references (software WebGPU). Each check bounds the error from above (f16
// weights must stay accurate) and, where the rounding changes the result, from below: f16 must be measurably off the
// float32 result, by more than the float32 tolerance of MANIFEST.md, which proves the packed weights were read.
// Figures (max abs error vs the reference, measured here): VQGAN decode 2.0e-3 (max |ref| 3.4), GPT logits 1.8e-3
// (4.4), e2e step losses 1.4e-5 (0.97); CLIP's released weights are fp16 values, so CLIP is exact.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test, type TestContext } from 'node:test';
import type { BackendReport } from '../src/engine/backend.ts';
import { UserError } from '../src/cli/errors.ts';
import { CompiledEngine, type Precision } from '../src/engine/compiled.ts';
import { chooseEngine } from '../src/engine/engines.ts';
import type { Ops } from '../src/engine/ops.ts';
import type { Sym } from '../src/engine/graph/trace.ts';
import { asFloat32, asNumbers, type HostTensor } from '../src/formats/host-tensor.ts';
import { loadClip } from '../src/models/clip-load.ts';
import * as C from '../src/models/clip.ts';
import { gptForward, loadPrior } from '../src/models/gpt.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import * as V from '../src/models/vqgan.ts';
import { E2E_FIXTURES, e2eGeneration } from './generate-parity.ts';
import { fixture, maxAbsDiff, missingFixtures, nchwToNhwc, nhwcToNchw, reference, suiteDevice } from './helpers.ts';

function absMax(x: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < x.length; i++) m = Math.max(m, Math.abs(x[i]));
  return m;
}

/** A fixture tensor (NCHW) as an NHWC constant. */
function nhwc(o: Ops<Sym>, r: HostTensor): Sym {
  const [n, c, h, w] = r.shape;
  return o.constant(nchwToNhwc(asFloat32(r), r.shape), [n, h, w, c]);
}

describe("compiled engine precision 'f16' vs float32 and the references (software WebGPU)", () => {
  const gpu = suiteDevice();
  const engines = {} as Record<Precision, CompiledEngine>;
  before(() => {
    if (gpu.device) for (const p of ['f32', 'f16'] as const) engines[p] = new CompiledEngine(gpu.device, { precision: p });
  });
  after(() => Object.values(engines).forEach((e) => e.destroy()));

  /** `f` on both engines: the f16 result, its max abs error vs f32 and vs `ref`. */
  async function both(f: (o: Ops<Sym>) => Promise<Float32Array>, ref: HostTensor) {
    const f32 = await f(engines.f32.ops);
    const f16 = await f(engines.f16.ops);
    const want = asFloat32(ref);
    return { f16, vsF32: maxAbsDiff(f16, f32), vsRef: maxAbsDiff(f16, want), f32VsRef: maxAbsDiff(f32, want), refMax: absMax(want) };
  }

  /**
   * f32 within its MANIFEST tolerance of the reference; f16 within 1e-2 of it, and at least 2e-4 from f32 (equal
   * values would mean the weights were not stored as halves).
   */
  const judge = (t: TestContext, what: string, r: { vsF32: number; vsRef: number; f32VsRef: number; refMax: number }, f32Tolerance: number) => {
    t.diagnostic(`${what}: f16 vs f32 ${r.vsF32.toExponential(2)}, f16 vs ref ${r.vsRef.toExponential(2)} (f32 vs ref ${r.f32VsRef.toExponential(2)}, max |ref| ${r.refMax.toFixed(2)})`);
    assert.ok(r.f32VsRef <= f32Tolerance, `f32 ${what} ${r.f32VsRef}`);
    assert.ok(r.vsRef <= 1e-2, `f16 ${what} vs reference ${r.vsRef}`);
    assert.ok(r.vsF32 >= 2e-4, `f16 ${what} equals f32 (${r.vsF32}): were the weights stored as f16?`);
  };

  // Per model: its checkpoint and reference files, the output computed on an engine, the reference tensor's name and
  // float32's MANIFEST tolerance (f16 measured: decode 2.0e-3, GPT logits 1.8e-3 from the reference).
  const cases: Array<{ name: string; ckpt: string; ref: string; want: string; f32Tolerance: number; run: (o: Ops<Sym>, ckpt: string, ref: Map<string, HostTensor>) => Promise<Float32Array> }> = [
    {
      name: 'VQGAN decode of z_q',
      ckpt: 'tiny_vqgan.ckpt',
      ref: 'vqgan_reference.safetensors',
      want: 'decode_zq',
      f32Tolerance: 5e-5,
      run: async (o, ckpt, ref) => {
        const vq = await loadVqgan(o, ckpt, undefined, { encoder: false });
        return nhwcToNchw(await o.read(V.decode(o, vq.weights, nhwc(o, ref.get('z_q')!))), [1, 32, 32, 3]);
      },
    },
    {
      name: 'GPT prior logits (unconditional)',
      ckpt: 'tiny_transformer_uncond.ckpt',
      ref: 'transformer_reference.safetensors',
      want: 'uncond.gpt_logits',
      f32Tolerance: 2e-5,
      run: async (o, ckpt, ref) => {
        const input = Int32Array.from(asNumbers(ref.get('uncond.gpt_input')!));
        const prior = await loadPrior(o, ckpt);
        return o.read(gptForward(o, prior.config.gpt, prior.gpt, o.constantInt(input, [1, input.length])));
      },
    },
  ];
  for (const c of cases) {
    test(c.name, async (t) => {
      if (!gpu.device) return t.skip(gpu.unavailable);
      const ckpt = fixture(t, c.ckpt);
      const ref = reference(t, c.ref);
      if (!ckpt || !ref) return;
      judge(t, c.want, await both((o) => c.run(o, ckpt, ref), ref.get(c.want)!), c.f32Tolerance);
    });
  }

  test('CLIP image embedding: exact, the weights are fp16 values as OpenAI released them', async (t) => {
    if (!gpu.device) return t.skip(gpu.unavailable);
    const p = fixture(t, 'tiny_clip_state.pt');
    const ref = reference(t, 'clip_reference.safetensors');
    if (!p || !ref) return;
    const o = engines.f16.ops;
    const clip = await loadClip(o, p);
    const got = await o.read(C.encodeImage(o, clip.weights, clip.config, nhwc(o, ref.get('image_normalized')!)));
    const d = maxAbsDiff(got, asFloat32(ref.get('encode_image')!));
    t.diagnostic(`encode_image: f16 vs ref ${d.toExponential(2)} (max |ref| ${absMax(asFloat32(ref.get('encode_image')!)).toFixed(2)}); f16 vs f32 measured 0`);
    // The float32 tolerance: rounding a half to a half changes nothing (the biases and norms are not f16-stored).
    assert.ok(d <= 1e-5, `f16 encode_image vs reference ${d}`);
  });

  test('one generate step (tiny VQGAN + CLIP, Adam): losses, gradient and z', async (t) => {
    if (!gpu.device) return t.skip(gpu.unavailable);
    const missing = missingFixtures(E2E_FIXTURES);
    if (missing) return t.skip(missing);
    // Only f16 here: the f32 compiled step against the same reference is test/compiled-generate.test.ts (losses
    // 2e-6, grad_z 1e-6), so the reference stands in for float32.
    const engine = new CompiledEngine(gpu.device, { precision: 'f16' });
    const o = engine.ops;
    const { gen, r, n, c, h, w } = await e2eGeneration(engine.executor, (data, shape) => o.constant(data, shape), 1);
    try {
      const res = await gen.step(true);
      const dLoss = maxAbsDiff(res.losses, asFloat32(r('step0.losses')));
      const grad = nhwcToNchw(await o.read(res.debug!.grad), [n, h, w, c]);
      const gradRef = asFloat32(r('step0.grad_z'));
      const dGrad = maxAbsDiff(grad, gradRef) / absMax(gradRef);
      await gen.syncState();
      const z = nhwcToNchw(await o.read(gen.latent()), [n, h, w, c]);
      const zRef = asFloat32(r('step0.z_after'));
      // Adam's first step moves every element by about lr * sign(g): where g is near zero, any error flips the move
      // (0.2 apart). Count the elements that moved differently.
      let flipped = 0;
      for (let i = 0; i < z.length; i++) if (Math.abs(z[i] - zRef[i]) > 1e-3) flipped++;
      t.diagnostic(`losses ${dLoss.toExponential(2)}; grad_z max abs / max |ref| ${dGrad.toExponential(2)}; z: ${flipped} of ${z.length} elements moved the other way; constants ${engine.stats.constBytes} bytes`);
      assert.ok(dLoss <= 1e-4 && dLoss > 2e-6, `f16 losses vs reference ${dLoss} (float32: 2e-6)`);
      // Measured 9.7e-3 and 3 of 2048.
      assert.ok(dGrad <= 5e-2, `f16 grad_z relative error ${dGrad}`);
      assert.ok(flipped <= z.length / 100, `${flipped} z elements moved the other way`);
    } finally {
      gen.dispose();
      engine.destroy();
    }
  });
});

describe('--precision and --recompute on the command line', () => {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const run = (...a: string[]) => spawnSync(process.execPath, [path.join(root, 'src/bin.mjs'), ...a], { encoding: 'utf8' });

  test('f16 with the tfjs engine (chosen, or auto without webgpu) and unknown precisions are clear errors', () => {
    const g = run('generate', 'a red apple', '--backend', 'cpu', '--engine', 'tfjs', '--precision', 'f16');
    assert.equal(g.status, 2, g.stderr);
    assert.match(g.stderr, /--precision f16 applies only to the compiled engine \(this run uses --engine tfjs\)\n  fix: drop --precision, or use --engine compiled with --backend webgpu/);
    const u = run('sample', '--ckpt', 'none.ckpt', '--backend', 'cpu', '--precision', 'f64');
    assert.equal(u.status, 2, u.stderr);
    assert.match(u.stderr, /unknown precision 'f64'\n  fix: choose one of f32, f16/);
    const cpu = { backend: 'cpu' } as Pick<BackendReport, 'backend'> as BackendReport; // all chooseEngine reads
    assert.throws(() => chooseEngine('auto', cpu, 'f16'), (e: Error) => e instanceof UserError && /this run uses the tfjs engine on cpu/.test(e.message));
    assert.equal(chooseEngine('auto', cpu).name, 'tfjs');
  });

  test('--recompute with the tfjs engine is a clear error too', () => {
    const g = run('generate', 'a red apple', '--backend', 'cpu', '--engine', 'tfjs', '--recompute');
    assert.equal(g.status, 2, g.stderr);
    assert.match(g.stderr, /--recompute applies only to the compiled engine \(the tfjs engine always recomputes the decoder blocks\)\n  fix: drop --recompute/);
  });
});
