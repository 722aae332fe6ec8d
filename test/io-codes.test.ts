// Code grids on disk: JSON and .npy round trips, layouts numpy writes, and clear errors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { FormatError } from '../src/formats/host-tensor.ts';
import { encodeNpy, readCodes, writeCodes, type Codes } from '../src/io/codes.ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-codes-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const codes: Codes = { indices: Int32Array.from({ length: 12 }, (_, i) => (i * 4099) % 16384), shape: [1, 3, 4], nEmbed: 16384 };

test('JSON and .npy round trips', () => {
  for (const name of ['c.json', 'c.npy']) {
    const file = path.join(tmp, name);
    writeCodes(file, codes);
    const back = readCodes(file);
    assert.deepEqual(back.indices, codes.indices, name);
    assert.deepEqual(back.shape, codes.shape, name);
  }
  assert.equal(readCodes(path.join(tmp, 'c.json')).nEmbed, 16384);
});

test('.npy bytes follow the format numpy writes (v1.0, 64-byte aligned header, <i8, C order)', () => {
  const b = encodeNpy(codes);
  assert.equal(b.subarray(0, 8).toString('latin1'), '\x93NUMPY\x01\x00');
  const hlen = b.readUInt16LE(8);
  assert.equal((10 + hlen) % 64, 0);
  const header = b.toString('latin1', 10, 10 + hlen);
  assert.equal(header.trimEnd(), "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 3, 4), }");
  assert.ok(header.endsWith('\n'));
  assert.equal(b.length, 10 + hlen + 12 * 8);
  assert.equal(b.readBigInt64LE(10 + hlen + 8), BigInt(codes.indices[1]));
});

function npy(descr: string, shape: number[], body: Buffer, fortran = false): Buffer {
  let dict = `{'descr': '${descr}', 'fortran_order': ${fortran ? 'True' : 'False'}, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  dict = dict.padEnd(Math.ceil((dict.length + 11) / 64) * 64 - 11) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY\x01\x00', 0, 'latin1');
  head.writeUInt16LE(dict.length, 8);
  return Buffer.concat([head, Buffer.from(dict, 'latin1'), body]);
}

test('.npy variants: int32, uint16, big-endian, (H, W), flat square, Fortran order', () => {
  const w = (name: string, b: Buffer) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, b);
    return readCodes(f);
  };
  assert.deepEqual(w('i4.npy', npy('<i4', [2, 2], Buffer.from(Int32Array.from([1, 2, 3, 4]).buffer))), { indices: Int32Array.from([1, 2, 3, 4]), shape: [1, 2, 2] });
  assert.deepEqual(w('u2.npy', npy('<u2', [4], Buffer.from(Uint16Array.from([9, 8, 7, 60000]).buffer))).indices, Int32Array.from([9, 8, 7, 60000]));
  const be = Buffer.alloc(16);
  [5, 6].forEach((v, i) => be.writeBigInt64BE(BigInt(v), i * 8));
  assert.deepEqual(w('be.npy', npy('>i8', [1, 1, 2], be)).indices, Int32Array.from([5, 6]));
  // Fortran order (2, 3): memory holds column-major [[0,1,2],[3,4,5]] as 0,3,1,4,2,5.
  const f = w('f.npy', npy('<i8', [2, 3], Buffer.from(BigInt64Array.from([0n, 3n, 1n, 4n, 2n, 5n]).buffer), true));
  assert.deepEqual(f.indices, Int32Array.from([0, 1, 2, 3, 4, 5]));
  assert.deepEqual(f.shape, [1, 2, 3]);
  assert.throws(() => w('f4.npy', npy('<f4', [2], Buffer.alloc(8))), /holds <f4 data; code indices must be integers/);
  assert.throws(() => w('neg.npy', npy('<i8', [1], Buffer.from(BigInt64Array.from([-1n]).buffer))), /holds the value -1/);
  assert.throws(() => w('short.npy', npy('<i8', [4], Buffer.alloc(8))), /fewer than the 4 values/);
});

test('JSON variants: nested lists, flat square list, shape [H, W]', () => {
  const j = (name: string, doc: unknown) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, JSON.stringify(doc));
    return readCodes(f);
  };
  assert.deepEqual(j('n2.json', [[1, 2], [3, 4]]), { indices: Int32Array.from([1, 2, 3, 4]), shape: [1, 2, 2] });
  assert.deepEqual(j('n3.json', [[[1, 2, 3]], [[4, 5, 6]]]).shape, [2, 1, 3]);
  assert.deepEqual(j('flat.json', [0, 1, 2, 3, 4, 5, 6, 7, 8]).shape, [1, 3, 3]);
  assert.deepEqual(j('hw.json', { shape: [2, 3], indices: [0, 1, 2, 3, 4, 5] }).shape, [1, 2, 3]);
  assert.throws(() => j('ns.json', [0, 1, 2]), /3 codes do not form a square grid/);
  assert.throws(() => j('bad.json', { shape: [1, 2, 2], indices: [0, 1, 2] }), /3 codes do not fill the shape \[1,2,2\]/);
  assert.throws(() => j('neg.json', { indices: [0, -1, 2, 3] }), /non-negative integers/);
  assert.throws(() => j('frac.json', [[0.5]]), /non-negative integers/);
});

test('missing and garbage files are FormatErrors; no overwrite without force', () => {
  assert.throws(() => readCodes(path.join(tmp, 'nope.json')), (e: unknown) => e instanceof FormatError && /nope\.json: codes file not found/.test(e.message));
  const g = path.join(tmp, 'garbage.json');
  fs.writeFileSync(g, '{oops');
  assert.throws(() => readCodes(g), /is not valid JSON/);
  assert.throws(() => writeCodes(path.join(tmp, 'c.json'), codes), /already exists/);
  writeCodes(path.join(tmp, 'c.json'), codes, true);
});
