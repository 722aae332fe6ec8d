// safetensors: reading the fixtures, writing (host and lazy tensors, stored dtypes kept), and refusing malformed
// headers (absurd lengths, holes, overlaps, truncation, bad dtypes) with errors that name the file.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { FormatError, float16ToFloat32, float32ToFloat16, type HostTensor } from '../src/formats/host-tensor.ts';
import { SafetensorsFile, readSafetensors, writeSafetensors } from '../src/formats/safetensors.ts';
import { openTorchFile, stateDict } from '../src/formats/torch.ts';
import { OrderedDictSpec, TensorSpec, storageOf, writeTorchZip } from '../src/formats/torch-writer.ts';
import { fixture } from './helpers.ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-safetensors-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** A safetensors file from a header object and raw data bytes. */
function craft(header: unknown, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
  return Buffer.concat([len, json, data]);
}

function refused(bytes: Uint8Array, pattern: RegExp): void {
  assert.throws(
    () => SafetensorsFile.fromBuffer(bytes, 'crafted.safetensors'),
    (e: unknown) => e instanceof FormatError && e.file === 'crafted.safetensors' && pattern.test(e.problem),
  );
}

test('fixture references read; every tensor matches its shape', (t) => {
  const p = fixture(t, 'vqgan_reference.safetensors');
  if (!p) return;
  const m = readSafetensors(p);
  assert.equal(m.size, 15);
  assert.deepEqual(m.get('codebook')!.shape, [64, 8]);
  assert.equal(m.get('indices')!.dtype, 'int64');
  const f = SafetensorsFile.open(p);
  try {
    assert.equal(typeof f.metadata.source, 'string');
    const lazy = f.lazyTensors();
    for (const [k, h] of m) {
      const l = lazy.get(k)!.read();
      assert.deepEqual(l.shape, h.shape);
      assert.ok(Buffer.from(l.data.buffer, l.data.byteOffset, l.data.byteLength).equals(Buffer.from(h.data.buffer, h.data.byteOffset, h.data.byteLength)), k);
    }
  } finally {
    f.close();
  }
});

test('write + read round trip: host tensors of every dtype, lazy torch tensors keep float16/bfloat16/int64 bytes', async () => {
  const host = new Map<string, HostTensor>([
    ['f32', { dtype: 'float32', shape: [2, 2], data: Float32Array.from([1, -2, 3.5, 1e-20]) }],
    ['i64', { dtype: 'int64', shape: [2], data: BigInt64Array.from([-1n, 2n ** 50n]) }],
    ['i32', { dtype: 'int32', shape: [1], data: Int32Array.from([-7]) }],
    ['u8', { dtype: 'uint8', shape: [3], data: Uint8Array.from([0, 128, 255]) }],
    ['bool', { dtype: 'bool', shape: [2], data: Uint8Array.from([1, 0]) }],
    ['scalar', { dtype: 'float32', shape: [], data: Float32Array.from([42]) }],
    ['empty', { dtype: 'float32', shape: [0, 3], data: new Float32Array(0) }],
  ]);
  const a = path.join(tmp, 'host.safetensors');
  writeSafetensors(a, host, { note: 'x' });
  const back = SafetensorsFile.open(a);
  try {
    assert.deepEqual(back.metadata, { note: 'x' });
    assert.deepEqual(back.keys(), [...host.keys()].sort());
    for (const [k, h] of host) {
      const r = back.read(k);
      assert.equal(r.dtype, h.dtype, k);
      assert.deepEqual(r.shape, h.shape, k);
      assert.deepEqual(Array.from(r.data as ArrayLike<number | bigint>), Array.from(h.data as ArrayLike<number | bigint>), k);
    }
    // Header padded to 8 bytes, data packed from there.
    assert.equal(Number(fs.readFileSync(a).readBigUInt64LE(0)) % 8, 0);
  } finally {
    back.close();
  }
  // Lazy tensors (a transposed view among them) are written in their stored dtype, contiguous.
  const ck = path.join(tmp, 'lazy.pt');
  const half = storageOf('h', 'float16', Uint16Array.from([0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600])); // 1..6
  writeTorchZip(ck, new OrderedDictSpec(new Map<unknown, unknown>([
    ['h', new TensorSpec(half, [2, 3])],
    ['ht', new TensorSpec(half, [3, 2], [1, 3])],
    ['bf', new TensorSpec(storageOf('b', 'bfloat16', Uint16Array.from([0x3f80, 0xc000])), [2])],
    ['l', new TensorSpec(storageOf('l', 'int64', BigInt64Array.from([5n])), [])],
  ])));
  const tf = await openTorchFile(ck);
  const b = path.join(tmp, 'lazy.safetensors');
  writeSafetensors(b, stateDict(tf));
  tf.close();
  const header = JSON.parse(fs.readFileSync(b).subarray(8, 8 + Number(fs.readFileSync(b).readBigUInt64LE(0))).toString());
  assert.deepEqual(Object.fromEntries(Object.entries(header).map(([k, v]) => [k, (v as { dtype: string }).dtype])), { bf: 'BF16', h: 'F16', ht: 'F16', l: 'I64' });
  const m = readSafetensors(b);
  assert.deepEqual(Array.from(m.get('h')!.data as Float32Array), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(Array.from(m.get('ht')!.data as Float32Array), [1, 4, 2, 5, 3, 6]);
  assert.deepEqual(Array.from(m.get('bf')!.data as Float32Array), [1, -2]);
  assert.deepEqual(Array.from(m.get('l')!.data as BigInt64Array), [5n]);
  // No temporary files left behind.
  assert.deepEqual(fs.readdirSync(tmp).filter((n) => n.includes('.partial-')), []);
});

test('malformed headers are refused before allocation, naming the file and the problem', () => {
  const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const data = new Uint8Array(8);
  assert.equal(SafetensorsFile.fromBuffer(craft(ok, data), 'crafted.safetensors').keys().length, 1);
  refused(craft(ok, data, 2n ** 60n), /header claims 1152921504606846976 bytes/);
  refused(craft(ok, data, 2n ** 64n - 1n), /header claims/);
  refused(Buffer.alloc(5), /too short/);
  refused(craft(ok, data).subarray(0, 20), /header claims/);
  refused(craft(ok, data.subarray(0, 4)), /data ends at byte|truncated/);
  refused(craft(ok, new Uint8Array(12)), /the tensors end at byte .* but the file has/);
  refused(craft({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 12] } }, new Uint8Array(12)), /do not hold shape/);
  refused(craft({ a: { dtype: 'Q4', shape: [2], data_offsets: [0, 8] } }, data), /unsupported dtype "Q4"/);
  refused(craft({ a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, data), /bad shape/);
  refused(craft({ a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, data), /do not hold shape/);
  refused(craft({ a: { dtype: 'F32', shape: [2], data_offsets: [0] } }, data), /bad data_offsets/);
  refused(craft({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, new Uint8Array(12)), /hole/);
  refused(craft({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, data), /overlap/);
  refused(craft({ __metadata__: { a: 1 }, ...ok }, data), /__metadata__/);
  refused(craft([1, 2]), /not a JSON object/);
  refused(Buffer.concat([Buffer.from([3, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{x}')]), /not valid UTF-8 JSON/);
});

test('float16 conversions: exact half -> float32, round-to-nearest-even float32 -> half, specials', () => {
  const values = Float32Array.from([0, -0, 1, -2, 65504, 65520, 1e-8, 2 ** -24, 2 ** -25, 3 * 2 ** -25, Infinity, -Infinity, NaN, 1 + 2 ** -11, 1 + 3 * 2 ** -11]);
  const half = float32ToFloat16(values);
  assert.deepEqual(Array.from(half, (h) => h.toString(16)), ['0', '8000', '3c00', 'c000', '7bff', '7c00', '0', '1', '0', '2', '7c00', 'fc00', '7e00', '3c00', '3c02']);
  const back = float16ToFloat32(half);
  assert.deepEqual(Array.from(back).slice(0, 6), [0, -0, 1, -2, 65504, Infinity]);
  assert.ok(Number.isNaN(back[12]));
  // Every one of the 63488 finite halves survives half -> float32 -> half.
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i).filter((h) => (h & 0x7c00) !== 0x7c00);
  assert.deepEqual(Array.from(float32ToFloat16(float16ToFloat32(all))), Array.from(all));
});
