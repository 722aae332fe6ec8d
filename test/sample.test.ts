// Sampling from the GPT prior: logit filters against the fixtures (taming's top_k_logits and the transformers
// top_k_top_p_filtering shim), their semantics at the edges, permuters against permuter.py, seeded and batched
// sampling, the sliding window against a literal port of taming's sample_conditional.py loop, and bad input.
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { FormatError, asFloat32, asNumbers } from '../src/formats/host-tensor.ts';
import { UserError } from '../src/cli/errors.ts';
import { condToken, gptForward, gptWeightTensors, loadPrior, makePermuter, type Prior } from '../src/models/gpt.ts';
import { weightTensors } from '../src/models/vqgan.ts';
import {
  argmax,
  drawToken,
  filterLogits,
  gridForSize,
  sampleCodes,
  sampleImages,
  softmax,
  topKLogits,
  topPLogits,
  windowStart,
} from '../src/pipelines/sample.ts';
import { Rng } from '../src/util/rng.ts';
import { assertClose, fixture, reference } from './helpers.ts';
import { assertFiltered, VARIANTS } from './gpt-parity.ts';

const o = tfOps;

describe('logit filters', () => {
  for (const v of VARIANTS) {
    test(`${v}: taming top_k_logits and the transformers top-k/top-p shim match the fixtures`, (t) => {
      const ref = reference(t, 'transformer_reference.safetensors');
      if (!ref) return;
      const g = (k: string) => ref.get(`${v}.${k}`)!;
      const K = asNumbers(g('topk_K'))[0];
      const last = asFloat32(g('last_logits_over_T'));
      const topk = topKLogits(last, K);
      assertFiltered(topk, asFloat32(g('mingpt_top_k_logits')), 1e-6, `${v}.mingpt_top_k_logits`);
      assertClose(softmax(topk), g('mingpt_top_k_probs'), 1e-6, `${v}.mingpt_top_k_probs`);
      const hf = topPLogits(topk, 0.92);
      assertFiltered(hf, asFloat32(g('hf_shim_topk10_topp092_logits')), 1e-6, `${v}.hf_shim logits`);
      assertClose(softmax(hf), g('hf_shim_topk10_topp092_probs'), 2e-6, `${v}.hf_shim probs`);
      // The same through filterLogits from the raw logits and the temperature.
      const T = asFloat32(g('topk_T'))[0];
      const l = asFloat32(g('gpt_logits'));
      const raw = l.subarray(l.length - last.length);
      assertFiltered(filterLogits(raw, { temperature: T, topK: K, topP: 0.92 }), asFloat32(g('hf_shim_topk10_topp092_logits')), 1e-6, `${v}: filterLogits`);
    });
  }

  test('top-k keeps ties with the k-th value and clamps k to the vocabulary', () => {
    const l = Float32Array.from([1, 3, 2, 3, 2, 0]);
    assert.deepEqual(Array.from(topKLogits(l, 1)), [-Infinity, 3, -Infinity, 3, -Infinity, -Infinity]);
    assert.deepEqual(Array.from(topKLogits(l, 3)), [-Infinity, 3, 2, 3, 2, -Infinity], 'k=3 keeps both 2s');
    assert.deepEqual(Array.from(topKLogits(l, 100)), Array.from(l));
    assert.deepEqual(Array.from(topKLogits(l, 0)), Array.from(topKLogits(l, 1)), 'k clamped to >= 1');
  });

  test('top-p keeps the token that crosses the threshold and always keeps the top token', () => {
    const l = Float32Array.from([Math.log(0.2), Math.log(0.5), Math.log(0.3)]);
    const kept = (p: number) => Array.from(topPLogits(l, p)).map((x) => x !== -Infinity);
    assert.deepEqual(kept(0.6), [false, true, true], 'cumulative 0.5, 0.8: the crossing token stays');
    assert.deepEqual(kept(0.5), [false, true, true], 'cumulative exactly at top_p is not removed');
    assert.deepEqual(kept(0.49), [false, true, false]);
    assert.deepEqual(kept(0), [false, true, false], 'the top token is never removed');
    assert.deepEqual(kept(1), [true, true, true]);
    assert.throws(() => topPLogits(l, 1.5), UserError);
    assert.throws(() => filterLogits(l, { temperature: 0 }), UserError);
  });

  test('temperature divides before filtering; draws follow the probabilities', () => {
    const l = Float32Array.from([0, 1, 2]);
    const t = filterLogits(l, { temperature: 2, topK: 2 });
    assert.deepEqual(Array.from(t), [-Infinity, 0.5, 1]);
    const p = softmax(t);
    assert.equal(drawToken(p, 0), 1);
    assert.equal(drawToken(p, 0.999999), 2);
    assert.equal(drawToken(p, p[1] - 1e-9), 1);
    assert.equal(drawToken(p, p[1] + 1e-9), 2);
    assert.equal(argmax(p), 2);
  });
});

describe('permuters (taming/modules/transformer/permuter.py)', () => {
  // forward_shuffle_idx of each class for a 4x4 grid (AlternateParsing: 3x4), printed by permuter.py's own code.
  const expected: Record<string, [number, number, number[]]> = {
    Subsample: [4, 4, [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]],
    ZCurve: [4, 4, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]],
    SpiralOut: [4, 4, [9, 5, 6, 10, 14, 13, 12, 8, 4, 0, 1, 2, 3, 7, 11, 15]],
    SpiralIn: [4, 4, [15, 11, 7, 3, 2, 1, 0, 4, 8, 12, 13, 14, 10, 6, 5, 9]],
    AlternateParsing: [3, 4, [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]],
  };
  for (const [name, [h, w, fwd]] of Object.entries(expected)) {
    test(name, () => {
      const p = makePermuter(`taming.modules.transformer.permuter.${name}`, h, w);
      assert.deepEqual(Array.from(p.forward), fwd);
      // x[:, forward] then the reverse gives x back.
      const x = Int32Array.from({ length: h * w }, (_, i) => 100 + i);
      const seq = Int32Array.from(p.forward, (r) => x[r]);
      assert.deepEqual(p.toRaster(seq), x);
    });
  }
  test('Identity, and unsupported permuters fail clearly', () => {
    assert.deepEqual(Array.from(makePermuter('taming.modules.transformer.permuter.Identity', 2, 3).forward), [0, 1, 2, 3, 4, 5]);
    assert.throws(() => makePermuter('taming.modules.transformer.permuter.Random', 4, 4, 'm.yaml'), (e: unknown) => e instanceof FormatError && /Random is not supported/.test(e.message));
    assert.throws(() => makePermuter('taming.modules.transformer.permuter.SpiralOut', 4, 6, 'm.yaml'), FormatError);
  });
});

test('sliding window placement matches sample_conditional.py (16-wide window over 32)', () => {
  // local_i = i if i <= 8; 16 - (32 - i) if 32 - i < 8; else 8; window start = i - local_i.
  for (let i = 0; i < 32; i++) {
    const local = i <= 8 ? i : 32 - i < 8 ? 16 - (32 - i) : 8;
    assert.equal(windowStart(i, 32, 16), i - local, `i=${i}`);
  }
});

describe('sampling from the tiny priors (cpu)', () => {
  const priors = new Map<string, Prior<tf.Tensor>>();
  before(async () => void (await initBackend('cpu')));
  after(async () => {
    for (const p of priors.values()) tf.dispose([...gptWeightTensors(p.gpt), ...weightTensors(p.firstStage)]);
    await shutdownBackend();
  });
  async function prior(t: TestContext, v: 'uncond' | 'cin'): Promise<Prior<tf.Tensor> | undefined> {
    const ckpt = fixture(t, `tiny_transformer_${v}.ckpt`);
    if (!ckpt) return undefined;
    if (!priors.has(v)) priors.set(v, await loadPrior(o, ckpt));
    return priors.get(v);
  }

  test('same seed, same samples, whatever the batch size; another seed differs', async (t) => {
    const p = await prior(t, 'cin');
    if (!p) return;
    const opts = { n: 3, classLabel: 7, topK: 20, topP: 0.95, temperature: 1.2, seed: 42 };
    const a = await sampleCodes(o, p, { ...opts, batchSize: 3 });
    const b = await sampleCodes(o, p, { ...opts, batchSize: 2 });
    assert.deepEqual(a, b);
    const c = await sampleCodes(o, p, { ...opts, seed: 43 });
    assert.notDeepEqual(a, c);
    assert.notDeepEqual(a[0], a[1], 'samples of one batch differ');
    for (const codes of a) {
      assert.equal(codes.length, 64);
      assert.ok(codes.every((x) => x >= 0 && x < p.config.firstStage.nEmbed));
    }
  });

  test('greedy codes do not depend on how the kv cache is chunked', async (t) => {
    const p = await prior(t, 'cin');
    if (!p) return;
    const runs = await Promise.all([1, 7, 32, 80].map((kvChunk) => sampleCodes(o, p, { n: 2, classLabel: 5, greedy: true, kvChunk })));
    for (const r of runs.slice(1)) assert.deepEqual(r, runs[0]);
  });

  test('sliding window on a 12x10 grid = a literal port of taming\'s window loop', async (t) => {
    const p = await prior(t, 'uncond');
    if (!p) return;
    const [H, W] = [12, 10];
    const win = p.grid[0]; // 8: the tiny prior's trained grid is 8x8
    const opts = { topK: 8, temperature: 0.9, seed: 3 };
    const [ours] = await sampleCodes(o, p, { n: 1, grid: [H, W], ...opts });

    // scripts/sample_conditional.py with a 1-token conditioning (SOS) instead of a conditioning grid.
    const rng = new Rng(3).fork('prior').fork(0);
    const idx = new Int32Array(H * W);
    const half = win / 2;
    for (let i = 0; i < H; i++) {
      const li = i <= half ? i : H - i < half ? win - (H - i) : half;
      for (let j = 0; j < W; j++) {
        const lj = j <= half ? j : W - j < half ? win - (W - j) : half;
        const patch = [condToken(p)];
        for (let y = i - li; y < i - li + win; y++) for (let x = j - lj; x < j - lj + win; x++) patch.push(idx[y * W + x]);
        const logits = tf.tidy(() => gptForward(o, p.config.gpt, p.gpt, tf.tensor2d(patch.slice(0, -1), [1, win * win], 'int32')));
        const all = (await logits.data()) as Float32Array;
        logits.dispose();
        const V = p.config.gpt.vocabSize;
        const row = all.subarray((li * win + lj) * V, (li * win + lj + 1) * V);
        idx[i * W + j] = drawToken(softmax(filterLogits(row, opts)), rng.uniform());
      }
    }
    assert.deepEqual(ours, idx);
  });

  test('images: sampleImages decodes to the requested size in [0,1]', async (t) => {
    const p = await prior(t, 'uncond');
    if (!p) return;
    const grid = gridForSize(p, 40, 36);
    assert.deepEqual(grid, [9, 10]);
    const { images } = await sampleImages(o, p, { n: 2, grid, seed: 1, topK: 5 });
    assert.equal(images.length, 2);
    for (const im of images) {
      assert.equal(im.width, 40);
      assert.equal(im.height, 36);
      assert.ok(im.data.every((x) => x >= 0 && x <= 1));
    }
  });

  test('bad input gets clear errors', async (t) => {
    const cin = await prior(t, 'cin');
    const uncond = await prior(t, 'uncond');
    const vq = fixture(t, 'tiny_vqgan.ckpt');
    const uncondYaml = fixture(t, 'tiny_transformer_uncond.yaml');
    if (!cin || !uncond || !vq || !uncondYaml) return;
    const err = (re: RegExp, type: new (...a: never[]) => Error = UserError) => (e: unknown) => e instanceof type && re.test(e.message);
    assert.throws(() => condToken(cin, 10), err(/class 10 is out of range: this model has 10 classes/));
    assert.throws(() => condToken(cin, -1), err(/out of range/));
    assert.throws(() => condToken(cin), err(/class-conditional: name a class/));
    assert.throws(() => condToken(uncond, 0), err(/unconditional model: a class label does not apply/));
    await assert.rejects(sampleCodes(o, cin, { n: 1, classLabel: 12 }), err(/out of range/));
    // A VQGAN checkpoint: with its own config, and forced together with a transformer config.
    await assert.rejects(loadPrior(o, vq), err(/describes a VQGAN first stage, not a Net2NetTransformer/, FormatError));
    await assert.rejects(loadPrior(o, vq, uncondYaml), err(/holds no transformer weights/, FormatError));
    // Sizes: not a multiple of the factor (4), smaller than the trained window (32x32), window + permuter.
    assert.throws(() => gridForSize(uncond, 34, 32), err(/not a multiple of the model's downsampling factor 4/));
    assert.throws(() => gridForSize(uncond, 64, 28), err(/smaller than the 32x32 window .* cannot cover it/));
    assert.deepEqual(gridForSize(uncond, 32, 32), [8, 8]);
    const zcurve: Prior<tf.Tensor> = { ...uncond, config: { ...uncond.config, permuter: 'taming.modules.transformer.permuter.ZCurve' }, permuter: makePermuter('ZCurve', 8, 8) };
    assert.throws(() => gridForSize(zcurve, 64, 64), err(/only works with the Identity permuter/));
    // A non-identity permuter on the trained grid: the sequence is put back in raster order.
    const [z] = await sampleCodes(o, zcurve, { n: 1, greedy: true });
    const [id] = await sampleCodes(o, uncond, { n: 1, greedy: true });
    assert.equal(z.length, 64);
    assert.deepEqual(Array.from(zcurve.permuter.toRaster(id)), Array.from(z), 'same greedy sequence, scattered by the permuter');
  });
});
