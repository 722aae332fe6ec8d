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
