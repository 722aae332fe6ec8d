// The CLIP parity suite against the PyTorch fixtures (openai/CLIP clip/model.py with the tiny ViT of MANIFEST.md
// section 3), run once per backend by clip*.test.ts. Tolerances: MANIFEST.md "Float32 vs float64 parity".
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { shutdownBackend, type BackendName } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32, asNumbers, type HostTensor } from '../src/formats/host-tensor.ts';
import { writeSafetensors } from '../src/formats/safetensors.ts';
import { openTorchFile, stateDict } from '../src/formats/torch.ts';
import * as C from '../src/models/clip.ts';
import { clipWeightTensors, loadClip, type LoadedClip } from '../src/models/clip-load.ts';
import { assertClose, fixture, maxAbsDiff, nchwToNhwc, nhwcToNchw, reference, startBackend } from './helpers.ts';

const o = tfOps;

function nhwc(r: HostTensor): tf.Tensor4D {
  const [n, c, h, w] = r.shape;
  return tf.tensor4d(nchwToNhwc(asFloat32(r), r.shape), [n, h, w, c]);
}

function tokens(ref: Map<string, HostTensor>): { ids: Int32Array; shape: [number, number] } {
  const t = ref.get('prompt_token_ids')!;
  return { ids: Int32Array.from(asNumbers(t)), shape: t.shape as [number, number] };
}

/** A tap's value in the reference layout: resblocks are LND there, conv1 NCHW. */
async function referenceLayout(name: string, v: tf.Tensor): Promise<{ data: Float32Array; shape: number[] }> {
  if (name.includes('.resblocks.')) {
    const t = tf.transpose(v, [1, 0, 2]);
    const out = { data: (await t.data()) as Float32Array, shape: t.shape };
    t.dispose();
    return out;
  }
  if (v.rank === 4) {
    const [n, h, w, c] = v.shape;
    return { data: nhwcToNchw((await v.data()) as Float32Array, v.shape), shape: [n, c, h, w] };
  }
  return { data: (await v.data()) as Float32Array, shape: v.shape };
}

/** The Hugging Face CLIPModel names of an OpenAI state dict (q/k/v split, projections transposed). */
function toHuggingFace(sd: Map<string, HostTensor>): Map<string, HostTensor> {
  const out = new Map<string, HostTensor>();
  const t2 = (t: HostTensor): HostTensor => {
    const [a, b] = t.shape;
    const src = asFloat32(t);
    const data = new Float32Array(a * b);
    for (let i = 0; i < a; i++) for (let j = 0; j < b; j++) data[j * a + i] = src[i * b + j];
    return { dtype: 'float32', shape: [b, a], data };
  };
  const blocks = (oa: string, hf: string) => {
    for (const [k, v] of sd) {
      const m = new RegExp(`^${oa.replaceAll('.', '\\.')}\\.(\\d+)\\.(.*)$`).exec(k);
      if (!m) continue;
      const p = `${hf}.${m[1]}`;
      const rest = m[2];
      const simple: Record<string, string> = {
        'attn.out_proj.weight': 'self_attn.out_proj.weight',
        'attn.out_proj.bias': 'self_attn.out_proj.bias',
        'ln_1.weight': 'layer_norm1.weight',
        'ln_1.bias': 'layer_norm1.bias',
        'ln_2.weight': 'layer_norm2.weight',
        'ln_2.bias': 'layer_norm2.bias',
        'mlp.c_fc.weight': 'mlp.fc1.weight',
        'mlp.c_fc.bias': 'mlp.fc1.bias',
        'mlp.c_proj.weight': 'mlp.fc2.weight',
        'mlp.c_proj.bias': 'mlp.fc2.bias',
      };
      if (simple[rest]) out.set(`${p}.${simple[rest]}`, v);
      else if (rest === 'attn.in_proj_weight' || rest === 'attn.in_proj_bias') {
        const kind = rest.endsWith('weight') ? 'weight' : 'bias';
        const d = v.shape[0] / 3;
        const per = asFloat32(v).length / 3;
        ['q_proj', 'k_proj', 'v_proj'].forEach((name, i) =>
          out.set(`${p}.self_attn.${name}.${kind}`, { dtype: 'float32', shape: [d, ...v.shape.slice(1)], data: asFloat32(v).slice(i * per, (i + 1) * per) }),
        );
      } else throw new Error(`unmapped ${k}`);
    }
  };
  blocks('visual.transformer.resblocks', 'vision_model.encoder.layers');
  blocks('transformer.resblocks', 'text_model.encoder.layers');
  const g = (k: string) => sd.get(k)!;
  out.set('vision_model.embeddings.patch_embedding.weight', g('visual.conv1.weight'));
  out.set('vision_model.embeddings.class_embedding', g('visual.class_embedding'));
  out.set('vision_model.embeddings.position_embedding.weight', g('visual.positional_embedding'));
  for (const kind of ['weight', 'bias']) {
    out.set(`vision_model.pre_layrnorm.${kind}`, g(`visual.ln_pre.${kind}`));
    out.set(`vision_model.post_layernorm.${kind}`, g(`visual.ln_post.${kind}`));
    out.set(`text_model.final_layer_norm.${kind}`, g(`ln_final.${kind}`));
  }
  out.set('visual_projection.weight', t2(g('visual.proj')));
  out.set('text_model.embeddings.token_embedding.weight', g('token_embedding.weight'));
  out.set('text_model.embeddings.position_embedding.weight', g('positional_embedding'));
  out.set('text_projection.weight', t2(g('text_projection')));
  out.set('logit_scale', g('logit_scale'));
  // HF buffers a loader must ignore
  out.set('text_model.embeddings.position_ids', { dtype: 'int32', shape: [1, 77], data: Int32Array.from({ length: 77 }, (_, i) => i) });
  return out;
}

export interface SuiteOptions {
  /** Multiplies every float tolerance (GPU summation orders differ). */
  tolScale?: number;
  /** Only the forward parity and the gradient (software WebGPU is slow). */
  quick?: boolean;
}

/** Registers the CLIP parity tests for one backend. */
export function clipParitySuite(backend: BackendName, opts: SuiteOptions = {}): void {
  const k = opts.tolScale ?? 1;
  describe(`CLIP parity on ${backend}`, () => {
    let unavailable: string | undefined;
    const models = new Map<string, LoadedClip<tf.Tensor>>();

    before(async () => {
      unavailable = await startBackend(backend);
    });
    after(async () => {
      for (const m of models.values()) tf.dispose(clipWeightTensors(m.weights));
      await shutdownBackend();
    });

    async function model(t: TestContext, file = 'tiny_clip_state.pt') {
      if (unavailable) {
        t.skip(unavailable);
        return undefined;
      }
      const p = fixture(t, file);
      const ref = reference(t, 'clip_reference.safetensors');
      if (!p || !ref) return undefined;
      if (!models.has(p)) models.set(p, await loadClip(o, p));
      return { m: models.get(p)!, ref };
    }

    /** encode_text, encode_image and logits of a loaded model. */
    async function outputs(m: LoadedClip<tf.Tensor>, ref: Map<string, HostTensor>) {
      const r = tf.tidy(() => {
        const text = C.encodeText(o, m.weights, m.config, tokens(ref));
        const image = C.encodeImage(o, m.weights, m.config, nhwc(ref.get('image_normalized')!));
        return { text, image, logits: C.clipLogits(o, m.weights, image, text) };
      });
      const out = { text: (await r.text.data()) as Float32Array, image: (await r.image.data()) as Float32Array, logits: (await r.logits.data()) as Float32Array };
      tf.dispose([r.text, r.image, r.logits]);
      return out;
    }

    test('encode_text, encode_image, logits_per_image (OpenAI state dict)', async (t) => {
      const s = await model(t);
      if (!s) return;
      assert.deepEqual(s.m.config, {
        embedDim: 32,
        vision: { width: 128, layers: 2, heads: 2, patchSize: 8, gridSize: 4 },
        text: { width: 64, layers: 2, heads: 1, contextLength: 77, vocabSize: 49408 },
        activation: 'quickGelu',
        layerNormEps: 1e-5,
      });
      await outputs(s.m, s.ref); // the first call caches the causal mask (tfjs-ops keeps it on purpose)
      const before = tf.memory().numTensors;
      const r = await outputs(s.m, s.ref);
      assert.equal(tf.memory().numTensors, before, 'no tensors leak');
      const d = {
        encode_text: assertClose(r.text, s.ref.get('encode_text')!, 2e-5 * k, 'encode_text'),
        encode_image: assertClose(r.image, s.ref.get('encode_image')!, 1e-5 * k, 'encode_image'),
        logits_per_image: assertClose(r.logits, s.ref.get('logits_per_image')!, 5e-5 * k, 'logits_per_image'),
      };
      // logits_per_text is the transpose: [3, 1] holds the same numbers as [1, 3]
      assertClose(r.logits, s.ref.get('logits_per_text')!, 5e-5 * k, 'logits_per_text');
      t.diagnostic(`${backend} max abs diffs: ${Object.entries(d).map(([n, v]) => `${n} ${v.toExponential(2)}`).join(', ')}`);
    });

    test('spherical-distance loss and its image gradients (through normalize, and w.r.t. the normalized image)', async (t) => {
      const s = await model(t);
      if (!s) return;
      const { m, ref } = s;
      const textEmbed = tf.tensor(asFloat32(ref.get('sph.text_embed')!), [1, 32]);
      // Prompt(embed, weight 1, stop -inf): loss = mean of the distances, gradient through all of them
      const lossOf01 = (x: tf.Tensor) => tf.mean(C.sphericalDistance(o, C.encodeImagePixels(o, m.weights, m.config, x), textEmbed)) as tf.Scalar;
      const lossOfNorm = (x: tf.Tensor) => tf.mean(C.sphericalDistance(o, C.encodeImage(o, m.weights, m.config, x), textEmbed)) as tf.Scalar;
      const x01 = nhwc(ref.get('sph.img01')!);
      const xn = nhwc(ref.get('sph.img_normalized')!);
      const loss = tf.tidy(() => lossOf01(x01));
      const g01 = tf.tidy(() => tf.grad(lossOf01)(x01));
      const gn = tf.tidy(() => tf.grad(lossOfNorm)(xn));
      const emb = tf.tidy(() => C.encodeImagePixels(o, m.weights, m.config, x01));
      const d = {
        'sph.image_embed': assertClose(await emb.data(), ref.get('sph.image_embed')!, 1e-5 * k, 'sph.image_embed'),
        'sph.loss': assertClose(await loss.data(), ref.get('sph.loss')!, 1e-6 * k, 'sph.loss'),
        'sph.grad_img01': assertClose(nhwcToNchw(await g01.data(), g01.shape), ref.get('sph.grad_img01')!, 1e-6 * k, 'sph.grad_img01'),
        'sph.grad_img_normalized': assertClose(nhwcToNchw(await gn.data(), gn.shape), ref.get('sph.grad_img_normalized')!, 1e-6 * k, 'sph.grad_img_normalized'),
      };
      // the gradients are ~1e-2: make sure the comparison is not trivially small
      assert.ok(maxAbsDiff(await g01.data(), new Float32Array(g01.size)) > 1e-3, 'gradient is not ~0');
      tf.dispose([textEmbed, x01, xn, loss, g01, gn, emb]);
      t.diagnostic(`${backend} max abs diffs: ${Object.entries(d).map(([n, v]) => `${n} ${v.toExponential(2)}`).join(', ')}`);
    });

    if (opts.quick) return;

    test('every entry of clip_intermediates.safetensors', async (t) => {
      const s = await model(t);
      const inter = s && reference(t, 'clip_intermediates.safetensors');
      if (!s || !inter) return;
      const taps = new Map<string, tf.Tensor>();
      tf.tidy(() => {
        const tap = (name: string, v: tf.Tensor) => void taps.set(name, tf.keep(v));
        C.encodeText(o, s.m.weights, s.m.config, tokens(s.ref), tap);
        C.encodeImage(o, s.m.weights, s.m.config, nhwc(s.ref.get('image_normalized')!), tap);
      });
      let worst = 0;
      for (const [name, r] of inter) {
        const v = taps.get(name);
        assert.ok(v, `no tap named ${name}`);
        const got = await referenceLayout(name, v);
        // activations up to a few units: the CLIP-embedding tolerance (2e-5)
        worst = Math.max(worst, assertClose(got.data, r, 2e-5 * k, name, got.shape));
      }
      assert.equal(taps.size, inter.size, `taps ${[...taps.keys()].filter((n) => !inter.has(n))} have no reference`);
      tf.dispose([...taps.values()]);
      t.diagnostic(`${backend}: ${inter.size} intermediates, worst max abs diff ${worst.toExponential(2)}`);
    });

    test('TorchScript archive (fp16 weights) gives the same results as the state dict', async (t) => {
      const a = await model(t, 'tiny_clip_state.pt');
      const b = await model(t, 'tiny_clip_jit.pt');
      if (!a || !b) return;
      assert.deepEqual(b.m.config, a.m.config);
      const ra = await outputs(a.m, a.ref);
      const rb = await outputs(b.m, b.ref);
      assert.deepEqual(rb, ra, 'bit-identical outputs');
      assertClose(rb.image, b.ref.get('encode_image')!, 1e-5 * k, 'jit encode_image');
    });

    test('Hugging Face CLIPModel layout (config.json + model.safetensors) gives the same results', async (t) => {
      const a = await model(t);
      const p = fixture(t, 'tiny_clip_state.pt');
      if (!a || !p) return;
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-hf-clip-'));
      try {
        const tf0 = await openTorchFile(p);
        const sd = new Map([...stateDict(tf0)].map(([key, v]) => [key, v.read()]));
        tf0.close();
        writeSafetensors(path.join(dir, 'model.safetensors'), toHuggingFace(sd));
        fs.writeFileSync(
          path.join(dir, 'config.json'),
          JSON.stringify({
            architectures: ['CLIPModel'],
            projection_dim: 32,
            text_config: { hidden_size: 64, num_attention_heads: 1, num_hidden_layers: 2, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5 },
            vision_config: { hidden_size: 128, num_attention_heads: 2, num_hidden_layers: 2, patch_size: 8, image_size: 32, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5 },
          }),
        );
        const hf = await loadClip(o, dir);
        try {
          assert.equal(hf.format, 'huggingface');
          assert.deepEqual(hf.config, a.m.config);
          assert.deepEqual(await outputs(hf, a.ref), await outputs(a.m, a.ref), 'bit-identical outputs');
        } finally {
          tf.dispose(clipWeightTensors(hf.weights));
        }
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
