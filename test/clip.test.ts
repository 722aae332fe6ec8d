// CLIP parity on the cpu backend (the shared suite of clip-parity.ts), plus loader errors.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UserError } from '../src/cli/errors.ts';
import { FormatError, type HostTensor } from '../src/formats/host-tensor.ts';
import { inferClipConfig, loadClip, resolveClipFile } from '../src/models/clip-load.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { WeightMap } from '../src/models/weights.ts';
import { clipParitySuite } from './clip-parity.ts';

clipParitySuite('cpu');

test('missing CLIP weights: a clear error naming the file and where to get it', async () => {
  await assert.rejects(loadClip(tfOps, 'weights/does-not-exist/ViT-B-32.pt'), (err: unknown) => {
    assert.ok(err instanceof UserError);
    assert.match(err.message, /CLIP weights not found: weights\/does-not-exist\/ViT-B-32\.pt/);
    assert.match(err.hint ?? '', /openaipublic\.azureedge\.net\/clip\/models\/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af\/ViT-B-32\.pt/);
    return true;
  });
  assert.throws(() => resolveClipFile('/nonexistent/other.pt'), /CLIP weights not found/);
});

test('ResNet CLIP checkpoints are refused with the reason', () => {
  const t: HostTensor = { dtype: 'float32', shape: [1], data: new Float32Array(1) };
  const wm = new WeightMap('RN50.pt', new Map([['visual.layer1.0.conv1.weight', t]]));
  assert.throws(() => inferClipConfig(wm), (err: unknown) => err instanceof FormatError && /ResNet CLIP/.test(err.problem));
  assert.throws(() => inferClipConfig(new WeightMap('x.pt', new Map())), (err: unknown) => err instanceof FormatError && /no CLIP vision transformer/.test(err.problem));
});

/** A state dict holding only shapes (inferClipConfig never reads values), as build_model sees the released models. */
function releasedShapes(o: { width: number; layers: number; patch: number; grid: number; embed: number; tWidth: number; tLayers: number }): WeightMap {
  const m = new Map<string, HostTensor>();
  const put = (k: string, shape: number[]) => m.set(k, { dtype: 'float32', shape, data: new Float32Array(0) });
  put('visual.conv1.weight', [o.width, 3, o.patch, o.patch]);
  put('visual.positional_embedding', [o.grid * o.grid + 1, o.width]);
  put('visual.proj', [o.width, o.embed]);
  for (let i = 0; i < o.layers; i++) put(`visual.transformer.resblocks.${i}.attn.in_proj_weight`, [3 * o.width, o.width]);
  for (let i = 0; i < o.tLayers; i++) put(`transformer.resblocks.${i}.attn.in_proj_weight`, [3 * o.tWidth, o.tWidth]);
  put('text_projection', [o.tWidth, o.embed]);
  put('positional_embedding', [77, o.tWidth]);
  put('token_embedding.weight', [49408, o.tWidth]);
  put('ln_final.weight', [o.tWidth]);
  for (const k of ['input_resolution', 'context_length', 'vocab_size']) put(k, []); // TorchScript extras, ignored
  return new WeightMap('released.pt', m);
}

test('shape inference of ViT-B/32, ViT-B/16 and ViT-L/14 (build_model rules)', () => {
  const b32 = inferClipConfig(releasedShapes({ width: 768, layers: 12, patch: 32, grid: 7, embed: 512, tWidth: 512, tLayers: 12 }));
  assert.deepEqual(b32.vision, { width: 768, layers: 12, heads: 12, patchSize: 32, gridSize: 7 });
  assert.deepEqual(b32.text, { width: 512, layers: 12, heads: 8, contextLength: 77, vocabSize: 49408 });
  assert.equal(b32.embedDim, 512);
  const b16 = inferClipConfig(releasedShapes({ width: 768, layers: 12, patch: 16, grid: 14, embed: 512, tWidth: 512, tLayers: 12 }));
  assert.deepEqual([b16.vision.patchSize, b16.vision.gridSize, b16.vision.gridSize * b16.vision.patchSize], [16, 14, 224]);
  const l14 = inferClipConfig(releasedShapes({ width: 1024, layers: 24, patch: 14, grid: 16, embed: 768, tWidth: 768, tLayers: 12 }));
  assert.deepEqual(l14.vision, { width: 1024, layers: 24, heads: 16, patchSize: 14, gridSize: 16 });
  assert.deepEqual([l14.text.width, l14.text.heads, l14.embedDim], [768, 12, 768]);
});
