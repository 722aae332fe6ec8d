// VQGAN on the cpu backend: fixture parity (shared suite), plus the loader: legacy/zip/safetensors/transformer
// layouts, GumbelVQ, and configs that do not match the checkpoint.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { FormatError, asFloat32, asNumbers, type HostTensor } from '../src/formats/host-tensor.ts';
import { writeSafetensors } from '../src/formats/safetensors.ts';
import { parseTamingConfig } from '../src/formats/taming-config.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import { resolveWeights } from '../src/formats/convert.ts';
import * as V from '../src/models/vqgan.ts';
import { WeightMap } from '../src/models/weights.ts';
import { assertClose, fixture, reference } from './helpers.ts';
import { nchw, nhwc, vqganParitySuite } from './vqgan-parity.ts';

vqganParitySuite('cpu');

const o = tfOps;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-vqgan-'));

/** Decodes the fixture's z_q and code indices with a loaded model (the comparison output for layout tests). */
async function decodeOutputs(w: V.VqganWeights<tf.Tensor>, ref: Map<string, HostTensor>): Promise<Float32Array> {
  const y = tf.tidy(() => V.reconstruct(o, w, nhwc(ref.get('x')!)).image);
  const d = (await y.data()) as Float32Array;
  y.dispose();
  return d;
}

async function allTensors(file: string): Promise<Map<string, HostTensor>> {
  const sd = await resolveWeights(file);
  try {
    return new Map([...sd.tensors].map(([k, v]) => [k, v.read()]));
  } finally {
    sd.close();
  }
}

describe('checkpointed blocks (o.checkpoint)', () => {
  before(async () => void (await initBackend('cpu')));
  after(async () => void (await shutdownBackend()));

  test('same value and gradient as the plain function, inside a larger graph, no leaked tensors', async () => {
    const x = tf.tensor2d([[0.3, -1.2, 2.0], [0.7, 0.1, -0.4]]);
    const W = tf.tensor2d([[1, 2], [0.5, -1], [-0.3, 0.8]]);
    const block = (t: tf.Tensor) => tf.sigmoid(tf.matMul(tf.square(t), W)); // W is captured, like the weights
    const outer = (useCk: boolean) => (t: tf.Tensor) => {
      const pre = tf.mul(t, 1.5);
      const mid = useCk ? o.checkpoint!(block, pre) : block(pre);
      const mid2 = useCk ? o.checkpoint!(block, tf.matMul(mid, W, false, true)) : block(tf.matMul(mid, W, false, true));
      return tf.sum(tf.mul(tf.exp(mid2), pre.sum()));
    };
    const live = tf.memory().numTensors;
    const a = tf.tidy(() => tf.valueAndGrad(outer(false))(x));
    const b = tf.tidy(() => tf.valueAndGrad(outer(true))(x));
    assertClose(await b.value.data(), await a.value.data(), 1e-6, 'value');
    const ga = await a.grad.data();
    assertClose(await b.grad.data(), ga, 1e-6, 'gradient');
    tf.dispose([a.value, a.grad, b.value, b.grad]);
    assert.equal(tf.memory().numTensors, live, 'no tensors leak');
    // A second gradient: the engine's tape state survived the nested backward pass.
    const c = tf.tidy(() => tf.grad(outer(true))(x));
    assertClose(await c.data(), ga, 1e-6, 'second gradient');
    c.dispose();
    tf.dispose([x, W]);
  });

  test('decode gradient leaks nothing and its peak memory is a fraction of the unchecked one', async (t) => {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    if (!ckpt) return;
    const m = await loadVqgan(o, ckpt);
    const z = tf.randomNormal([1, 16, 16, 8], 0, 1, 'float32', 3);
    const run = (ops: typeof o) => async () => {
      const g = tf.tidy(() => tf.grad((zz: tf.Tensor) => tf.sum(tf.square(V.decode(ops, m.weights, zz))))(z));
      const d = await g.data();
      g.dispose();
      return d;
    };
    const { checkpoint: _, ...plainOps } = o;
    const live = tf.memory().numTensors;
    let withCk!: Float32Array;
    let without!: Float32Array;
    const peakCk = (await tf.profile(async () => void (withCk = (await run(o)()) as Float32Array))).peakBytes;
    const peakPlain = (await tf.profile(async () => void (without = (await run(plainOps as typeof o)()) as Float32Array))).peakBytes;
    assert.equal(tf.memory().numTensors, live, 'no tensors leak');
    assertClose(withCk, without, 1e-5, 'same gradient');
    t.diagnostic(`64x64 decode gradient: peak ${(peakCk / 2 ** 20).toFixed(1)} MiB checkpointed vs ${(peakPlain / 2 ** 20).toFixed(1)} MiB`);
    assert.ok(peakCk < 0.6 * peakPlain, `checkpointing lowers the peak (${peakCk} vs ${peakPlain})`);
    tf.dispose([z, ...V.weightTensors(m.weights)]);
  });
});

describe('VQGAN loading', () => {
  before(async () => void (await initBackend('cpu')));
  after(async () => {
    await shutdownBackend();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('legacy, zip, safetensors and transformer layouts give identical results', async (t) => {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    const legacy = fixture(t, 'tiny_vqgan_legacy.ckpt');
    const yaml = fixture(t, 'tiny_vqgan.yaml');
    const trans = fixture(t, 'tiny_transformer_uncond.ckpt');
    const ref = reference(t, 'vqgan_reference.safetensors');
    if (!ckpt || !legacy || !yaml || !trans || !ref) return;

    const base = await loadVqgan(o, ckpt);
    assert.equal(base.configFile, yaml, 'config found next to the checkpoint');
    const expected = await decodeOutputs(base.weights, ref);
    tf.dispose(V.weightTensors(base.weights));

    // A converted safetensors with the same keys (plus a training-only loss.* key, which must be ignored).
    const st = path.join(tmp, 'tiny_vqgan.safetensors');
    const tensors = await allTensors(ckpt);
    tensors.set('loss.discriminator.main.0.weight', { dtype: 'float32', shape: [2, 3, 4, 4], data: new Float32Array(96) });
    writeSafetensors(st, tensors);
    fs.copyFileSync(yaml, path.join(tmp, 'tiny_vqgan.yaml'));

    const variants: [string, string, string | undefined][] = [
      ['legacy', legacy, yaml],
      ['safetensors', st, undefined],
      ['transformer ckpt + its yaml', trans, fixture(t, 'tiny_transformer_uncond.yaml')],
      ['transformer ckpt + vqgan yaml', trans, yaml],
    ];
    for (const [name, file, cfg] of variants) {
      const m = await loadVqgan(o, file, cfg);
      const got = await decodeOutputs(m.weights, ref);
      assert.deepEqual(got, expected, `${name}: identical reconstruction`);
      if (name.startsWith('transformer ckpt + its')) assert.equal(m.fromTransformer, true);
      tf.dispose(V.weightTensors(m.weights));
    }
  });

  test('decoder-only loading skips the encoder', async (t) => {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    if (!ckpt) return;
    const m = await loadVqgan(o, ckpt, undefined, { encoder: false });
    assert.equal(m.weights.encoder, undefined);
    assert.throws(() => V.encode(o, m.weights, tf.zeros([1, 32, 32, 3])), /without its encoder/);
    tf.dispose(V.weightTensors(m.weights));
  });

  test('a config that does not match the checkpoint names the key and both shapes', async (t) => {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    const yaml = fixture(t, 'tiny_vqgan.yaml');
    if (!ckpt || !yaml) return;
    const text = fs.readFileSync(yaml, 'utf8');
    const cases: [string, string, RegExp][] = [
      ['z_channels', text.replace('z_channels: 8', 'z_channels: 16'), /weight "encoder\.conv_out\.weight" has shape \[8,64,3,3\] but the config implies \[16,64,3,3\]/],
      ['n_embed', text.replace('n_embed: 64', 'n_embed: 128'), /"quantize\.embedding\.weight" has shape \[64,8\] but the config implies \[128,8\]/],
      ['ch_mult', text.replace(/ch_mult:\n(\s+)- 1\n\s+- 2\n\s+- 2/, 'ch_mult:\n$1- 1\n$1- 2\n$1- 4'), /"encoder\.down\.2\.block\.0\.conv1\.weight" has shape \[64,64,3,3\] but the config implies \[128,64,3,3\]/],
      ['num_res_blocks', text.replace('num_res_blocks: 1', 'num_res_blocks: 2'), /weight "encoder\.down\.0\.block\.1\.norm1\.weight" is missing/],
      ['attn_resolutions', text.replace(/attn_resolutions:\n\s+- 8/, 'attn_resolutions: []'), /weight "encoder\.down\.2\.attn\.0\.\S+" \(shape \[\d+(,\d+)*\]\) is not part of the model the config describes/],
    ];
    for (const [name, cfg, re] of cases) {
      assert.notEqual(cfg, text, `${name}: the edit applied`);
      const file = path.join(tmp, `bad-${name}.yaml`);
      fs.writeFileSync(file, cfg);
      const live = tf.memory().numTensors;
      await assert.rejects(loadVqgan(o, ckpt, file), (err: unknown) => {
        assert.ok(err instanceof FormatError, `${name}: FormatError`);
        assert.match(err.message, re, name);
        assert.equal(err.file, ckpt);
        return true;
      });
      assert.equal(tf.memory().numTensors, live, `${name}: no tensors made before the error`);
    }
  });

  test('GumbelVQ layout: proj logits, argmax codes, codebook entries, KL term', async (t) => {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    const yaml = fixture(t, 'tiny_vqgan.yaml');
    const g = reference(t, 'gumbel_reference.safetensors');
    if (!ckpt || !yaml || !g) return;
    // The tiny VQGAN with its quantizer swapped for the GumbelQuantize fixture (z_channels = embed_dim = 8, 64 codes).
    const tensors = await allTensors(ckpt);
    tensors.delete('quantize.embedding.weight');
    tensors.set('quantize.embed.weight', g.get('embed_weight')!);
    tensors.set('quantize.proj.weight', g.get('proj_weight')!);
    tensors.set('quantize.proj.bias', g.get('proj_bias')!);
    const text = fs.readFileSync(yaml, 'utf8').replace('taming.models.vqgan.VQModel', 'taming.models.vqgan.GumbelVQ').replace('n_embed: 64', 'n_embed: 64\n    kl_weight: 1.0e-08');
    const cfg = parseTamingConfig(text, 'gumbel.yaml');
    assert.equal(cfg.kind, 'first-stage');
    if (cfg.kind !== 'first-stage') return;
    assert.equal(cfg.model.kind, 'gumbel');
    const w = V.vqganWeights(o, new WeightMap('gumbel', tensors), cfg.model);
    assert.equal(w.quantize.kind, 'gumbel');
    if (w.quantize.kind !== 'gumbel') return;
    const taps = new Map<string, tf.Tensor>();
    const gq = w.quantize;
    const q = tf.tidy(() => V.gumbelQuantizer(o, gq, nhwc(g.get('h')!), (n, v) => void taps.set(n, tf.keep(v))));
    const dLogits = assertClose(await nchw(taps.get('quantize.proj')!), g.get('proj_logits')!, 5e-6, 'proj_logits');
    assert.deepEqual(Array.from(await q.indices.data()), asNumbers(g.get('argmax_indices')!), 'argmax_indices');
    assertClose(await nchw(q.zq), g.get('codebook_entry_of_argmax')!, 1e-6, 'codebook_entry_of_argmax');
    const kl = asFloat32(g.get('kl_diff')!)[0];
    assertClose(await q.loss.data(), [kl], Math.abs(kl) * 1e-5, 'kl_diff (relative 1e-5)');
    // quantize() dispatches on the config, and the codebook export is embed.weight.
    const viaModel = tf.tidy(() => V.quantize(o, w, nhwc(g.get('h')!)).indices);
    assert.deepEqual(await viaModel.data(), await q.indices.data());
    assertClose(await w.codebook.data(), g.get('embed_weight')!, 0, 'codebook = quantize.embed.weight');
    tf.dispose([q.indices, q.zq, q.loss, viaModel, ...taps.values(), ...V.weightTensors(w)]);
    t.diagnostic(`gumbel proj_logits max abs diff ${dLogits.toExponential(2)}`);
  });

  test('missing files are clear errors', async (t) => {
    const ckpt = fixture(t, 'tiny_vqgan.ckpt');
    if (!ckpt) return;
    await assert.rejects(loadVqgan(o, path.join(tmp, 'nope.ckpt')), /nope\.ckpt: not found/);
    await assert.rejects(loadVqgan(o, ckpt, path.join(tmp, 'nope.yaml')), /nope\.yaml: config not found/);
    const lonely = path.join(tmp, 'lonely.ckpt');
    fs.copyFileSync(ckpt, lonely);
    await assert.rejects(loadVqgan(o, lonely), /lonely\.ckpt: no config found next to the checkpoint/);
  });
});
