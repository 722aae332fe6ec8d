// A torch zip checkpoint larger than 4 GiB: a 4.5 GiB storage entry (zip64 sizes) with a tensor view at its end (byte
// offsets past 4 GiB), then an entry whose local header lies past 4 GiB (zip64 offset), and a zip64 end record. The
// file is sparse (the storage is one hole plus 16 bytes), so it costs a few KB of disk; where the filesystem cannot
// make sparse files the test is skipped rather than writing 4.5 GB.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { openTorchFile, stateDict } from '../src/formats/torch.ts';
import { OrderedDictSpec, TensorSpec, storageOf, writeTorchZip, type StorageSpec } from '../src/formats/torch-writer.ts';

function sparseSupported(dir: string): boolean {
  const probe = path.join(dir, 'sparse-probe');
  const fd = fs.openSync(probe, 'w');
  try {
    fs.writeSync(fd, Buffer.from([1]), 0, 1, 2 ** 30);
  } finally {
    fs.closeSync(fd);
  }
  const used = fs.statSync(probe).blocks * 512;
  fs.rmSync(probe);
  return used < 2 ** 20;
}

test('zip64: tensor data past 4 GiB (sizes, offsets and end records in zip64 form) reads correctly', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-zip64-'));
  try {
    if (!sparseSupported(dir)) return t.skip(`${dir} cannot hold sparse files; not writing a 4.5 GB test file`);
    const bytes = 4.5 * 2 ** 30;
    const numel = bytes / 4;
    const tail = Float32Array.from([1.5, -2.5, 3.25, 1e-30]);
    const big: StorageSpec = { key: '0', dtype: 'float32', numel, chunks: () => [{ hole: bytes - 16 }, new Uint8Array(tail.buffer)] };
    const after = storageOf('1', 'int64', BigInt64Array.from([7n, -8n, 2n ** 60n]));
    const file = path.join(dir, 'big.ckpt');
    const offsets = writeTorchZip(
      file,
      new Map<unknown, unknown>([
        ['state_dict', new OrderedDictSpec(new Map<unknown, unknown>([
          ['tail', new TensorSpec(big, [2, 2], [2, 1], numel - 4)],
          ['zeros_past_4gib', new TensorSpec(big, [3], [1], 2 ** 30 + 7)],
          ['after', new TensorSpec(after, [3])],
        ]))],
      ]),
      'big',
    );
    const st = fs.statSync(file);
    assert.ok(st.size > 4.5 * 2 ** 30, `file is ${st.size} bytes`);
    assert.ok(offsets.get('1')! > 2 ** 32, 'the second storage should start past 4 GiB');
    const f = await openTorchFile(file);
    try {
      const sd = stateDict(f);
      assert.deepEqual([...sd.keys()], ['tail', 'zeros_past_4gib', 'after']);
      const tailT = sd.get('tail')!.read();
      assert.deepEqual(tailT.shape, [2, 2]);
      assert.deepEqual(Array.from(tailT.data as Float32Array), Array.from(tail));
      assert.deepEqual(Array.from(sd.get('zeros_past_4gib')!.read().data as Float32Array), [0, 0, 0]);
      assert.deepEqual(Array.from(sd.get('after')!.read().data as BigInt64Array), [7n, -8n, 2n ** 60n]);
      assert.deepEqual(f.storages.map((s) => [s.key, s.bytes]), [['0', bytes], ['1', 24]]);
    } finally {
      f.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
