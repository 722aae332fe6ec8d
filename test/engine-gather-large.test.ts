// gatherRows' gradient with more rows than one WebGPU dispatch can cover (the 'latest' cutter gathers 1.6 M rows
// for 32 cutouts of 224x224; tfjs-webgpu's single segment-sum dispatch exceeded the 65535-workgroup limit on the
// H200). The gradient is summed over row blocks: it must equal the count of each row's uses times dy.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend, type BackendName } from '../src/engine/backend.ts';
import { gatherRows } from '../src/engine/gradients.ts';
import { Rng } from '../src/util/rng.ts';

for (const backend of ['cpu', 'wasm', 'webgpu'] as BackendName[]) {
  describe(`gatherRows gradient over ${backend}`, () => {
    after(async () => {
      await shutdownBackend();
    });
    test('400k gathered rows (two blocks): table gradient = uses x dy', async (t) => {
      try {
        const r = await initBackend(backend);
        if (r.backend !== backend) return t.skip(`got ${r.backend} instead of ${backend}`);
      } catch (err) {
        return t.skip(`${backend} unavailable: ${(err as Error).message}`);
      }
      const rows = 16; // few segments: tfjs-cpu's segment sum costs rows x segments
      const m = 400_000; // two blocks of at most 2^20 values
      const rng = new Rng(3);
      const idx = Int32Array.from({ length: m }, () => rng.int(rows));
      const uses = new Float64Array(rows);
      for (const i of idx) uses[i]++;
      const table = tf.zeros([rows, 3]);
      const ids = tf.tensor1d(idx, 'int32');
      // dy = 1 for channel 0, 2 for channel 1, -1 for channel 2.
      const w = tf.tensor2d([[1, 2, -1]]);
      const g = tf.grad((x: tf.Tensor) => tf.sum(tf.mul(gatherRows(x as tf.Tensor2D, ids), w)))(table);
      const got = (await g.data()) as Float32Array;
      for (let i = 0; i < rows; i++) {
        assert.equal(got[i * 3], uses[i], `row ${i} channel 0`);
        assert.equal(got[i * 3 + 1], 2 * uses[i], `row ${i} channel 1`);
        assert.equal(got[i * 3 + 2], -uses[i], `row ${i} channel 2`);
      }
      tf.dispose([table, ids, w, g]);
    });
  });
}
