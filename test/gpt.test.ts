// GPT prior (taming minGPT from Net2NetTransformer checkpoints) on the cpu backend: fixture parity (shared suite)
// and the checkpoint/config checks of the loader.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { FormatError } from '../src/formats/host-tensor.ts';
import { parseTamingConfig, type TransformerConfig } from '../src/formats/taming-config.ts';
import { openStateDict } from '../src/models/vqgan-load.ts';
import { gptParameterCount, gptWeights, gptWeightTensors } from '../src/models/gpt.ts';
import { WeightMap } from '../src/models/weights.ts';
import { fixture } from './helpers.ts';
import { gptParitySuite } from './gpt-parity.ts';

gptParitySuite('cpu');

before(async () => void (await initBackend('cpu')));
after(async () => void (await shutdownBackend()));

test('GPT weights: every transformer.* key is used, configs that do not match are named', async (t) => {
  const ckpt = fixture(t, 'tiny_transformer_cin.ckpt');
  const yaml = fixture(t, 'tiny_transformer_cin.yaml');
  if (!ckpt || !yaml) return;
  const text = fs.readFileSync(yaml, 'utf8');
  const cfg = (parseTamingConfig(text, yaml).model as TransformerConfig).gpt;
  const sd = await openStateDict(ckpt);
  try {
    const wm = new WeightMap(ckpt, sd.tensors).sub('transformer.');
    const w = gptWeights(tfOps, wm, cfg);
    const params = gptWeightTensors(w).reduce((n, x) => n + x.size, 0);
    assert.equal(params, gptParameterCount(cfg), 'parameter count formula');
    tf.dispose(gptWeightTensors(w));
    const bad = (c: typeof cfg, re: RegExp) =>
      assert.throws(() => gptWeights(tfOps, wm, c), (e: unknown) => e instanceof FormatError && re.test(e.message) && e.file === ckpt);
    bad({ ...cfg, nLayer: 1 }, /"transformer.blocks.1.ln1.weight" .* is not part of the GPT the config describes \(n_layer 1\)/);
    bad({ ...cfg, nLayer: 3 }, /weight "transformer.blocks.2.ln1.weight" is missing/);
    bad({ ...cfg, nEmbd: 64 }, /weight "transformer.tok_emb.weight" has shape \[64,32\] but the config implies \[64,64\]/);
    bad({ ...cfg, blockSize: 64 }, /pos_emb/);
  } finally {
    sd.close();
  }
});
