// The GPT prior parity suite against the PyTorch fixtures (transformer_reference.safetensors), run once per
// backend by gpt*.test.ts. Tolerances: fixtures/MANIFEST.md "Float32 vs float64 parity" (GPT logits 2e-5,
// softmax probabilities 5e-6, tokens and greedy samples exact, decoded images 1e-4).
import assert from 'node:assert/strict';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { shutdownBackend, type BackendName } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32, asNumbers, type HostTensor } from '../src/formats/host-tensor.ts';
import { gptForward, gptStep, gptWeightTensors, kvTensors, loadPrior, type KvCache, type Prior } from '../src/models/gpt.ts';
import { decodeIndices, weightTensors } from '../src/models/vqgan.ts';
import { sampleCodes, softmax, topKLogits } from '../src/pipelines/sample.ts';
import { assertClose, fixture, nhwcToNchw, reference, startBackend } from './helpers.ts';

const o = tfOps;
export const VARIANTS = ['uncond', 'cin'] as const;
export type Variant = (typeof VARIANTS)[number];

export interface SuiteOptions {
  /** Multiplies every float tolerance (GPU summation orders differ). */
  tolScale?: number;
  /** Only these variants (software WebGPU is slow). */
  variants?: readonly Variant[];
}

/** The class label the fixtures were made with (cin: 3; uncond: none, SOS 0). */
export function classOf(v: Variant, ref: Map<string, HostTensor>): number | undefined {
  return v === 'cin' ? asNumbers(ref.get('cin.c_indices')!)[0] : undefined;
}

/** Asserts two filtered logit rows agree: -Infinity at the same places, finite values within atol. */
export function assertFiltered(actual: ArrayLike<number>, expected: ArrayLike<number>, atol: number, label: string): number {
  assert.equal(actual.length, expected.length, `${label}: length`);
  let m = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (e === -Infinity || a === -Infinity) {
      assert.equal(a, e, `${label}: element ${i} is ${a}, expected ${e}`);
      continue;
    }
    m = Math.max(m, Math.abs(a - e));
  }
  assert.ok(m <= atol, `${label}: max abs diff ${m.toExponential(3)} > atol ${atol}`);
  return m;
}

/** Chunk lengths of a cache grown one token at a time with chunks of `size`. */
function chunkLengths(n: number, size: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i += size) out.push(Math.min(size, n - i));
  return out;
}

/** A kv-cache chunk size small enough that the 64-token fixtures close chunks (the default is larger). */
const CHUNK = 24;

function rows(data: Float32Array, n: number): Float32Array[] {
  const w = data.length / n;
  return Array.from({ length: n }, (_, i) => data.subarray(i * w, (i + 1) * w));
}

/** Registers the parity tests for one backend. */
export function gptParitySuite(backend: BackendName, opts: SuiteOptions = {}): void {
  const k = opts.tolScale ?? 1;
  const variants = opts.variants ?? VARIANTS;
  describe(`GPT prior parity on ${backend}`, () => {
    let unavailable: string | undefined;
    const priors = new Map<Variant, Prior<tf.Tensor>>();

    before(async () => {
      unavailable = await startBackend(backend);
    });
    after(async () => {
      for (const p of priors.values()) tf.dispose([...gptWeightTensors(p.gpt), ...weightTensors(p.firstStage)]);
      await shutdownBackend();
    });

    async function setup(t: TestContext, v: Variant) {
      if (unavailable) {
        t.skip(unavailable);
        return undefined;
      }
      const ckpt = fixture(t, `tiny_transformer_${v}.ckpt`);
      const ref = reference(t, 'transformer_reference.safetensors');
      if (!ckpt || !ref) return undefined;
      let prior = priors.get(v);
      if (!prior) {
        prior = await loadPrior(o, ckpt);
        priors.set(v, prior);
      }
      return { prior, ref, g: (key: string) => ref.get(`${v}.${key}`)! };
    }

    for (const v of variants) {
      test(`${v}: full forward (logits, block outputs) and top-k over all positions`, async (t) => {
        const s = await setup(t, v);
        if (!s) return;
        const { prior, g } = s;
        const input = Int32Array.from(asNumbers(g('gpt_input')));
        const taps = new Map<string, tf.Tensor>();
        const logits = tf.tidy(() => {
          const out = gptForward(o, prior.config.gpt, prior.gpt, tf.tensor2d(input, [1, input.length], 'int32'), (name, x) => {
            if (name.startsWith('blocks.')) taps.set(name, tf.keep(x));
          });
          return out;
        });
        const l = (await logits.data()) as Float32Array;
        const figures = [`gpt_logits ${assertClose(l, g('gpt_logits'), 2e-5 * k, `${v}.gpt_logits`, logits.shape).toExponential(2)}`];
        assertClose(l, g('forward_logits'), 2e-5 * k, `${v}.forward_logits`);
        for (let i = 0; i < prior.config.gpt.nLayer; i++) {
          const b = taps.get(`blocks.${i}`)!;
          const d = assertClose((await b.data()) as Float32Array, g(`block${i}_out`), 2e-5 * k, `${v}.block${i}_out`, b.shape);
          figures.push(`block${i}_out ${d.toExponential(2)}`);
        }
        tf.dispose([logits, ...taps.values()]);

        // Net2NetTransformer.top_k_logits on every position of our logits / T, then softmax.
        const T = asFloat32(g('topk_T'))[0];
        const K = asNumbers(g('topk_K'))[0];
        const refLogits = rows(asFloat32(g('n2n_top_k_logits_all_positions')), input.length);
        const refProbs = rows(asFloat32(g('n2n_top_k_probs_all_positions')), input.length);
        let dl = 0;
        let dp = 0;
        rows(l, input.length).forEach((row, i) => {
          const filtered = topKLogits(Float32Array.from(row, (x) => x / T), K);
          dl = Math.max(dl, assertFiltered(filtered, refLogits[i], 2e-5 * k / T, `${v}.n2n_top_k_logits_all_positions[${i}]`));
          dp = Math.max(dp, assertClose(softmax(filtered), refProbs[i], 5e-6 * k, `${v}.n2n_top_k_probs_all_positions[${i}]`));
        });
        figures.push(`n2n_top_k_logits ${dl.toExponential(2)}`, `n2n_top_k_probs ${dp.toExponential(2)}`);
        t.diagnostic(`${backend} ${v} max abs diff: ${figures.join(', ')}`);
      });

      test(`${v}: incremental forward with the key/value cache`, async (t) => {
        const s = await setup(t, v);
        if (!s) return;
        const { prior, g } = s;
        const input = Int32Array.from(asNumbers(g('gpt_input')));
        const before = tf.memory().numTensors;
        const V = prior.config.gpt.vocabSize;
        const inc = new Float32Array(input.length * V);
        let cache: KvCache<tf.Tensor> | undefined;
        for (let i = 0; i < input.length; i++) {
          const old = cache;
          const r = tf.tidy(() => gptStep(o, prior.config.gpt, prior.gpt, tf.tensor2d([input[i]], [1, 1], 'int32'), old, { kvChunk: CHUNK }));
          const keep = new Set(kvTensors(r.cache));
          tf.dispose(kvTensors(old).filter((x) => !keep.has(x)));
          cache = r.cache;
          assert.deepEqual(r.logits.shape, [1, 1, V]);
          inc.set((await r.logits.data()) as Float32Array, i * V);
          r.logits.dispose();
        }
        // 64 tokens in chunks of 24: full chunks are kept (keys transposed), only the last (open) one grows.
        assert.deepEqual(cache!.layers[0].v.map((x) => x.shape[2]), chunkLengths(input.length, CHUNK));
        assert.equal(cache!.layers[0].kT.length, Math.floor(input.length / CHUNK));
        tf.dispose(kvTensors(cache));
        assert.equal(tf.memory().numTensors, before, 'no tensors leaked');
        const d1 = assertClose(inc, g('incremental_logits'), 2e-5 * k, `${v}.incremental_logits`);
        const d2 = assertClose(inc, g('gpt_logits'), 2e-5 * k, `${v}.incremental vs full gpt_logits`);

        // Several new tokens after a cache (causal among themselves) agree with the full forward too.
        const full = tf.tidy(() => {
          const a = gptStep(o, prior.config.gpt, prior.gpt, tf.tensor2d(input.subarray(0, 5), [1, 5], 'int32'));
          return gptStep(o, prior.config.gpt, prior.gpt, tf.tensor2d(input.subarray(5, 12), [1, 7], 'int32'), a.cache).logits;
        });
        const d3 = assertClose((await full.data()) as Float32Array, asFloat32(g('gpt_logits')).subarray(5 * V, 12 * V), 2e-5 * k, `${v}: 7 tokens after a cache of 5`);
        full.dispose();
        // A prefix of 40 (one chunk longer than the chunk size, as sliding-window recomputes make), then single tokens.
        let c = tf.tidy(() => gptStep(o, prior.config.gpt, prior.gpt, tf.tensor2d(input.subarray(0, 40), [1, 40], 'int32'), undefined, { kvChunk: CHUNK }).cache);
        const tail = new Float32Array(24 * V);
        for (let i = 40; i < 64; i++) {
          const old = c;
          const r = tf.tidy(() => gptStep(o, prior.config.gpt, prior.gpt, tf.tensor2d([input[i]], [1, 1], 'int32'), old, { kvChunk: CHUNK }));
          const keep = new Set(kvTensors(r.cache));
          tf.dispose(kvTensors(old).filter((x) => !keep.has(x)));
          c = r.cache;
          tail.set((await r.logits.data()) as Float32Array, (i - 40) * V);
          r.logits.dispose();
        }
        assert.deepEqual(c.layers[1].v.map((x) => x.shape[2]), [40, 24]);
        assert.equal(c.layers[1].kT.length, 2, 'the second chunk closed at 24');
        tf.dispose(kvTensors(c));
        assertClose(tail, asFloat32(g('gpt_logits')).subarray(40 * V), 2e-5 * k, `${v}: single tokens after a prefix of 40`);
        t.diagnostic(`${backend} ${v} max abs diff: incremental_logits ${d1.toExponential(2)}, vs gpt_logits ${d2.toExponential(2)}, 7 after 5 ${d3.toExponential(2)}`);
      });

      test(`${v}: greedy sampling and decoding of the greedy tokens`, async (t) => {
        const s = await setup(t, v);
        if (!s) return;
        const { prior, g, ref } = s;
        const before = tf.memory().numTensors;
        const [codes] = await sampleCodes(o, prior, { n: 1, greedy: true, classLabel: classOf(v, ref) });
        assert.equal(tf.memory().numTensors, before, 'sampling leaks no tensors');
        assert.deepEqual(Array.from(codes), asNumbers(g('greedy_tokens')), `${v}.greedy_tokens`);

        const [gh, gw] = prior.grid;
        const img = tf.tidy(() => decodeIndices(o, prior.firstStage, tf.tensor1d(codes, 'int32'), [1, gh, gw]));
        const expected = g('greedy_decoded_image');
        const d = assertClose(nhwcToNchw((await img.data()) as Float32Array, img.shape), expected, 1e-4 * k, `${v}.greedy_decoded_image`);
        t.diagnostic(`${backend} ${v}: greedy_tokens 64/64 equal; greedy_decoded_image max abs diff ${d.toExponential(2)}`);
        img.dispose();
      });
    }
  });
}
