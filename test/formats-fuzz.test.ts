// Corrupt checkpoints never crash or hang the readers. Each fixture checkpoint is mutated in memory (seeded, so
// every run tests the same variants): truncated at many offsets (inside the pickle, the tensor data, the central
// directory), bytes flipped in the pickle and in the zip headers, zip header fields set to huge values, pickle length
// fields set to 0xFFFFFFFF, legacy element counts set huge. Every variant must, within a second, either
//   - fail with a FormatError naming the file, or
//   - open, and then every tensor either reads back bit-identical to the original or fails with a FormatError.
// Zip files carry CRC-32s, so a flipped byte in a pickle or in tensor data is caught. For mutations that leave a
// file valid but different (pickle bytes flipped with the CRC recomputed, and legacy files, which have no
// checksums) "different" is also allowed, as long as what reads back is self-consistent (values match the shape).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { FormatError, numel } from '../src/formats/host-tensor.ts';
import { SafetensorsFile } from '../src/formats/safetensors.ts';
import type { ByteSource } from '../src/formats/source.ts';
import { openTorchFile, stateDict } from '../src/formats/torch.ts';
import { fixture } from './helpers.ts';

/** A read-only view of `base`, truncated to `size` bytes, with some bytes replaced: no copy of the whole file. */
class PatchedSource implements ByteSource {
  constructor(
    private readonly base: Buffer,
    readonly name: string,
    readonly size: number,
    private readonly patches: Map<number, number>,
  ) {}
  readInto(target: Uint8Array, offset: number, length: number, position: number): number {
    const n = Math.max(0, Math.min(length, this.size - position));
    target.set(this.base.subarray(position, position + n), offset);
    for (const [at, v] of this.patches) if (at >= position && at < position + n) target[offset + at - position] = v;
    return n;
  }
  read(position: number, length: number): Buffer {
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0 || position + length > this.size) {
      throw new FormatError(this.name, `read of ${length} bytes at ${position} is past the end (${this.size})`);
    }
    const b = Buffer.allocUnsafeSlow(length);
    this.readInto(b, 0, length, position);
    return b;
  }
  close(): void {}
}

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------- structure of the fixtures (independent of the readers)

interface ZipRecord {
  name: string;
  cd: number; // offset of the central directory record
  local: number; // offset of the local header
  dataStart: number;
  size: number;
}

function zipLayout(b: Buffer): { eocd: number; cdStart: number; records: ZipRecord[] } {
  let eocd = -1;
  for (let i = b.length - 22; i >= Math.max(0, b.length - 22 - 65535); i--) {
    if (b.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  assert.ok(eocd >= 0, 'fixture has no EOCD');
  const n = b.readUInt16LE(eocd + 10);
  const cdStart = b.readUInt32LE(eocd + 16);
  const records: ZipRecord[] = [];
  let p = cdStart;
  for (let i = 0; i < n; i++) {
    assert.equal(b.readUInt32LE(p), 0x02014b50);
    const nameLen = b.readUInt16LE(p + 28);
    const extraLen = b.readUInt16LE(p + 30);
    const commentLen = b.readUInt16LE(p + 32);
    const local = b.readUInt32LE(p + 42);
    const name = b.subarray(p + 46, p + 46 + nameLen).toString('utf8');
    const dataStart = local + 30 + b.readUInt16LE(local + 26) + b.readUInt16LE(local + 28);
    records.push({ name, cd: p, local, dataStart, size: b.readUInt32LE(p + 20) });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return { eocd, cdStart, records };
}

/** Offsets of the 4-byte length/index arguments of pickle opcodes in [start, end) (a small disassembler). */
function pickleU32Args(b: Buffer, start: number, end: number): number[] {
  const out: number[] = [];
  let p = start;
  const lineOps = new Set([0x49, 0x4c, 0x46, 0x53, 0x56, 0x50, 0x67, 0x70]); // one text line
  while (p < end) {
    const op = b[p++];
    if (op === 0x2e) {
      // STOP: legacy files hold several pickles back to back.
      continue;
    }
    if (op === 0x63 || op === 0x69) {
      p = b.indexOf(0x0a, b.indexOf(0x0a, p) + 1) + 1;
    } else if (lineOps.has(op)) p = b.indexOf(0x0a, p) + 1;
    else if ([0x4b, 0x68, 0x71, 0x80].includes(op)) p += 1;
    else if ([0x55, 0x8c, 0x43, 0x8a].includes(op)) p += 1 + b[p];
    else if (op === 0x4d) p += 2;
    else if ([0x4a, 0x6a, 0x72].includes(op)) {
      out.push(p);
      p += 4;
    } else if ([0x58, 0x54, 0x42, 0x8b].includes(op)) {
      out.push(p);
      p += 4 + b.readUInt32LE(p);
    } else if ([0x47, 0x95].includes(op)) p += 8;
    else if ([0x8d, 0x8e, 0x96].includes(op)) p += 8 + Number(b.readBigUInt64LE(p));
    // every other opcode has no argument
    if (p <= 0) break;
  }
  return out;
}

// ---------------------------------------------------------------- variants

interface Variant {
  what: string;
  size: number;
  patches: Map<number, number>;
  /** The file may legitimately read back different (but self-consistent) tensors. */
  mayDiffer: boolean;
}

function patchU32(patches: Map<number, number>, at: number, v: number): void {
  for (let i = 0; i < 4; i++) patches.set(at + i, (v >>> (8 * i)) & 0xff);
}

function zipVariants(b: Buffer, rand: () => number, count: { trunc: number; flips: number }): Variant[] {
  const { eocd, cdStart, records } = zipLayout(b);
  const pkl = records.find((r) => r.name.endsWith('/data.pkl'))!;
  const data = records.filter((r) => /\/data\/\d+$/.test(r.name));
  const out: Variant[] = [];
  const v = (what: string, patches: Map<number, number> = new Map(), size = b.length, mayDiffer = false) => out.push({ what, size, patches, mayDiffer });
  // Truncations: fixed landmarks, then spread over the pickle, the data, the directory and the end records.
  const cuts = new Set([0, 1, 2, 3, 4, 29, 30, pkl.dataStart, pkl.dataStart + 1, pkl.dataStart + pkl.size - 1, cdStart, cdStart + 1, cdStart + 46, eocd, eocd + 21, b.length - 1]);
  for (const r of data.slice(0, 3)) [r.local, r.dataStart, r.dataStart + r.size - 1].forEach((c) => cuts.add(c));
  while (cuts.size < count.trunc) {
    const region = rand();
    const [lo, hi] = region < 0.25 ? [pkl.dataStart, pkl.dataStart + pkl.size] : region < 0.5 ? [cdStart, b.length] : [0, b.length];
    cuts.add(lo + Math.floor(rand() * (hi - lo)));
  }
  for (const c of cuts) v(`truncated at ${c}`, new Map(), c);
  // Byte flips in the headers: local headers, central directory, end record.
  const headerBytes: number[] = [];
  for (const r of records) {
    for (let i = 0; i < 30 + r.name.length; i++) headerBytes.push(r.local + i);
    for (let i = 0; i < 46 + r.name.length; i++) headerBytes.push(r.cd + i);
  }
  for (let i = 0; i < 22; i++) headerBytes.push(eocd + i);
  for (let i = 0; i < count.flips; i++) {
    const at = headerBytes[Math.floor(rand() * headerBytes.length)];
    v(`header byte ${at} ^= bit`, new Map([[at, b[at] ^ (1 << Math.floor(rand() * 8))]]));
  }
  // Byte flips in the pickle, without (CRC catches them) and with the CRC recomputed (the unpickler sees them).
  const pickleBytes = b.subarray(pkl.dataStart, pkl.dataStart + pkl.size);
  for (let i = 0; i < count.flips; i++) {
    const at = pkl.dataStart + Math.floor(rand() * pkl.size);
    const val = rand() < 0.5 ? b[at] ^ (1 << Math.floor(rand() * 8)) : Math.floor(rand() * 256);
    const patches = new Map([[at, val]]);
    if (i % 2 === 0) v(`pickle byte ${at} = ${val}`, patches);
    else {
      const mutated = Buffer.from(pickleBytes);
      mutated[at - pkl.dataStart] = val;
      const crc = zlib.crc32(mutated) >>> 0;
      patchU32(patches, pkl.cd + 16, crc);
      patchU32(patches, pkl.local + 14, crc);
      v(`pickle byte ${at} = ${val}, CRC fixed`, patches, b.length, true);
    }
  }
  // Pickle length/index fields set to 0xFFFFFFFF (CRC fixed, so the unpickler must refuse them itself).
  const u32s = pickleU32Args(b, pkl.dataStart, pkl.dataStart + pkl.size);
  for (const at of u32s.filter((_, i) => i % Math.max(1, Math.floor(u32s.length / 24)) === 0)) {
    const patches = new Map<number, number>();
    patchU32(patches, at, 0xffffffff);
    const mutated = Buffer.from(pickleBytes);
    mutated.writeUInt32LE(0xffffffff, at - pkl.dataStart);
    const crc = zlib.crc32(mutated) >>> 0;
    patchU32(patches, pkl.cd + 16, crc);
    patchU32(patches, pkl.local + 14, crc);
    v(`pickle u32 at ${at} = 0xFFFFFFFF, CRC fixed`, patches, b.length, true);
  }
  // Zip header fields set to huge values.
  const huge = (what: string, at: number, bytes: 2 | 4, value = bytes === 2 ? 0xffff : 0xffffffff) => {
    const patches = new Map<number, number>();
    for (let i = 0; i < bytes; i++) patches.set(at + i, (value >>> (8 * i)) & 0xff);
    v(what, patches);
  };
  for (const r of [pkl, ...data.slice(0, 4), records[records.length - 1]]) {
    huge(`${r.name} CD compressed size`, r.cd + 20, 4);
    huge(`${r.name} CD uncompressed size`, r.cd + 24, 4);
    huge(`${r.name} CD both sizes`, r.cd + 20, 4);
    out[out.length - 1].patches.set(r.cd + 24, 0xff).set(r.cd + 25, 0xff).set(r.cd + 26, 0xff).set(r.cd + 27, 0xff);
    huge(`${r.name} CD both sizes 0x7FFFFFFF`, r.cd + 20, 4, 0x7fffffff);
    out[out.length - 1].patches.set(r.cd + 24, 0xff).set(r.cd + 25, 0xff).set(r.cd + 26, 0xff).set(r.cd + 27, 0x7f);
    huge(`${r.name} CD local header offset`, r.cd + 42, 4);
    huge(`${r.name} CD name length`, r.cd + 28, 2);
    huge(`${r.name} CD extra length`, r.cd + 30, 2);
    huge(`${r.name} CD comment length`, r.cd + 32, 2);
    huge(`${r.name} local name length`, r.local + 26, 2);
    huge(`${r.name} local extra length`, r.local + 28, 2);
    huge(`${r.name} local sizes`, r.local + 18, 4);
  }
  huge('EOCD entries on disk', eocd + 8, 2);
  huge('EOCD total entries', eocd + 10, 2);
  huge('EOCD directory size', eocd + 12, 4);
  huge('EOCD directory offset', eocd + 16, 4);
  huge('EOCD comment length', eocd + 20, 2);
  huge('EOCD disk number', eocd + 4, 2);
  return out;
}

function legacyVariants(b: Buffer, countOffsets: number[], rand: () => number, count: { trunc: number; flips: number }): Variant[] {
  const out: Variant[] = [];
  const pickleEnd = countOffsets[0];
  const v = (what: string, patches: Map<number, number> = new Map(), size = b.length, mayDiffer = false) => out.push({ what, size, patches, mayDiffer });
  const cuts = new Set([0, 1, 2, 10, 12, pickleEnd - 1, pickleEnd, pickleEnd + 7, pickleEnd + 8, b.length - 1]);
  for (const c of countOffsets.slice(0, 4)) [c, c + 4, c + 9].forEach((x) => cuts.add(x));
  while (cuts.size < count.trunc) cuts.add(rand() < 0.4 ? Math.floor(rand() * pickleEnd) : Math.floor(rand() * b.length));
  for (const c of cuts) v(`truncated at ${c}`, new Map(), c);
  // No checksums in this format: a flipped pickle byte can make a different valid file.
  for (let i = 0; i < count.flips; i++) {
    const at = Math.floor(rand() * pickleEnd);
    const val = rand() < 0.5 ? b[at] ^ (1 << Math.floor(rand() * 8)) : Math.floor(rand() * 256);
    v(`pickle byte ${at} = ${val}`, new Map([[at, val]]), b.length, true);
  }
  const u32s = pickleU32Args(b, 0, pickleEnd);
  for (const at of u32s.filter((_, i) => i % Math.max(1, Math.floor(u32s.length / 40)) === 0)) {
    const patches = new Map<number, number>();
    patchU32(patches, at, 0xffffffff);
    v(`pickle u32 at ${at} = 0xFFFFFFFF`, patches, b.length, true);
  }
  // Element counts before each storage's data set huge (or off by one, or negative).
  const step = Math.max(1, Math.floor(countOffsets.length / 40));
  for (const [i, c] of countOffsets.entries()) {
    if (i % step !== 0) continue;
    const value = [2n ** 62n, 2n ** 63n - 1n, -1n, 2n ** 40n][i % 4];
    const nb = Buffer.alloc(8);
    nb.writeBigInt64LE(value);
    v(`count at ${c} = ${value}`, new Map([...nb].map((x, k) => [c + k, x] as [number, number])));
    if (i % (8 * step) === 0) {
      const plus = Buffer.alloc(8);
      plus.writeBigInt64LE(b.readBigInt64LE(c) + 1n);
      v(`count at ${c} + 1`, new Map([...plus].map((x, k) => [c + k, x] as [number, number])));
    }
  }
  return out;
}

// ---------------------------------------------------------------- the check

interface Outcome {
  openFailed: number;
  readFailed: number;
  identical: number;
  differed: number;
  slowest: number;
}

async function check(name: string, base: Buffer, original: Map<string, Buffer>, variant: Variant, o: Outcome): Promise<void> {
  const label = `${name}: ${variant.what}`;
  const src = new PatchedSource(base, name, variant.size, variant.patches);
  const t0 = performance.now();
  const fail = (err: unknown, stage: string) => {
    if (!(err instanceof FormatError)) assert.fail(`${label}: ${stage} threw ${err instanceof Error ? `${err.name}: ${err.message}\n${err.stack}` : String(err)}`);
    assert.equal(err.file, name, `${label}: the error names another file`);
    assert.ok(err.problem.length > 5, `${label}: empty problem`);
  };
  let file;
  try {
    file = await openTorchFile(src);
  } catch (err) {
    fail(err, 'open');
    o.openFailed++;
  }
  if (file) {
    let sd;
    try {
      sd = stateDict(file);
    } catch (err) {
      fail(err, 'stateDict');
      o.openFailed++;
    }
    if (sd) {
      if (!variant.mayDiffer) assert.deepEqual([...sd.keys()], [...original.keys()], `${label}: opened with other keys`);
      let differs = false;
      for (const [k, t] of sd) {
        try {
          const h = t.read();
          assert.equal(h.data.length, numel(h.shape), `${label}: ${k} has ${h.data.length} values for shape [${h.shape}]`);
          const got = Buffer.from(h.data.buffer, h.data.byteOffset, h.data.byteLength);
          const want = original.get(k);
          if (!want || !got.equals(want)) {
            assert.ok(variant.mayDiffer, `${label}: ${k} read back different values without an error`);
            differs = true;
          }
        } catch (err) {
          if (err instanceof assert.AssertionError) throw err;
          fail(err, `read ${k}`);
          o.readFailed++;
          differs = true;
        }
      }
      if (differs) o.differed++;
      else o.identical++;
    }
    file.close();
  }
  const ms = performance.now() - t0;
  o.slowest = Math.max(o.slowest, ms);
  assert.ok(ms < 1000, `${label}: took ${ms.toFixed(0)} ms`);
}

const CHECKPOINTS: [string, { trunc: number; flips: number }][] = [
  ['tiny_vqgan.ckpt', { trunc: 60, flips: 70 }],
  ['tiny_vqgan_legacy.ckpt', { trunc: 60, flips: 120 }],
  ['tiny_transformer_uncond.ckpt', { trunc: 40, flips: 40 }],
  ['tiny_transformer_cin.ckpt', { trunc: 40, flips: 40 }],
  ['tiny_clip_state.pt', { trunc: 30, flips: 25 }],
  ['tiny_clip_jit.pt', { trunc: 30, flips: 25 }],
];

let total = 0;

for (const [name, count] of CHECKPOINTS) {
  test(`fuzz ${name}`, async (t) => {
    const p = fixture(t, name);
    if (!p) return;
    const base = fs.readFileSync(p);
    const f = await openTorchFile(p);
    const original = new Map<string, Buffer>();
    for (const [k, lt] of stateDict(f)) {
      const h = lt.read();
      original.set(k, Buffer.from(h.data.buffer, h.data.byteOffset, h.data.byteLength));
    }
    const countOffsets = f.storages.map((s) => (s.dataOffset ?? 0) - 8).sort((a, b) => a - b);
    f.close();
    const rand = rng([...name].reduce((a, c) => a * 31 + c.charCodeAt(0), 7));
    const variants = f.format === 'legacy' ? legacyVariants(base, countOffsets, rand, count) : zipVariants(base, rand, count);
    const o: Outcome = { openFailed: 0, readFailed: 0, identical: 0, differed: 0, slowest: 0 };
    for (const variant of variants) await check(name, base, original, variant, o);
    total += variants.length;
    t.diagnostic(`${variants.length} variants: ${o.openFailed} refused at open, ${o.identical} read back identical, ${o.differed} differed or failed on read (${o.readFailed} reads refused), slowest ${o.slowest.toFixed(0)} ms`);
    assert.ok(o.openFailed > 0 && o.identical > 0, 'the mutations should produce both refused and harmless variants');
  });
}

test('fuzz safetensors reference files: truncations and header flips never crash', async (t) => {
  const p = fixture(t, 'vqgan_reference.safetensors');
  if (!p) return;
  const base = fs.readFileSync(p);
  const headerEnd = 8 + Number(base.readBigUInt64LE(0));
  const rand = rng(1234);
  let refused = 0;
  for (let i = 0; i < 150; i++) {
    const size = i < 50 ? Math.floor(rand() * base.length) : base.length;
    const patches = new Map<number, number>();
    if (i >= 50) patches.set(Math.floor(rand() * headerEnd), Math.floor(rand() * 256));
    if (i >= 140) patchU32(patches, 0, 0xffffffff); // header length 0xFFFFFFFF...
    const src = new PatchedSource(base, 'ref.safetensors', size, patches);
    try {
      const st = SafetensorsFile.open(src);
      for (const k of st.keys()) {
        const h = st.read(k);
        assert.equal(h.data.length, numel(h.shape));
      }
    } catch (err) {
      assert.ok(err instanceof FormatError, `variant ${i}: ${err instanceof Error ? err.stack : String(err)}`);
      assert.equal(err.file, 'ref.safetensors');
      refused++;
    }
  }
  t.diagnostic(`150 safetensors variants, ${refused} refused`);
  assert.ok(refused >= 60);
});

test('at least 1000 checkpoint variants were checked', (t) => {
  if (total === 0) return t.skip('no fixtures');
  assert.ok(total >= 1000, `only ${total} variants`);
  t.diagnostic(`${total} checkpoint variants`);
});
