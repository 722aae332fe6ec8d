// Writes PyTorch checkpoints the way torch.save does, for tests and benchmarks: a protocol-2 pickle written by hand
// (OrderedDict, torch._utils._rebuild_tensor_v2, persistent ids naming storages) inside a zip archive whose entries
// are stored uncompressed and 64-byte aligned (zip64 records when sizes or offsets pass 4 GiB), or the legacy
// pickle stream. Storage bytes are streamed in chunks and may contain holes (left sparse on disk), so multi-GB
// files cost little memory or disk.
import fs from 'node:fs';
import zlib from 'node:zlib';
import { RAW_DTYPES } from './raw.ts';
import { PyGlobal, PyTuple } from './pickle.ts';

// ---------------------------------------------------------------- pickle writer (protocol 2)

/** A storage to write: its data as chunks of raw little-endian bytes, or `{ hole: n }` for n zero bytes. */
export interface StorageSpec {
  key: string;
  dtype: keyof typeof RAW_DTYPES;
  numel: number;
  chunks: () => Iterable<Uint8Array | { hole: number }>;
}

/** A tensor view of a storage, as torch pickles it. */
export class TensorSpec {
  constructor(
    readonly storage: StorageSpec,
    readonly shape: number[],
    readonly strides: number[] = contiguous(shape),
    readonly offset = 0,
  ) {}
}

/** An OrderedDict in the pickle (a plain Map pickles as a dict). */
export class OrderedDictSpec {
  constructor(readonly entries: Map<unknown, unknown>) {}
}

function contiguous(shape: number[]): number[] {
  const s: number[] = [];
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

const STORAGE_CLASS: Record<string, string> = {
  float32: 'FloatStorage',
  float64: 'DoubleStorage',
  float16: 'HalfStorage',
  bfloat16: 'BFloat16Storage',
  int64: 'LongStorage',
  int32: 'IntStorage',
  int16: 'ShortStorage',
  int8: 'CharStorage',
  uint8: 'ByteStorage',
  bool: 'BoolStorage',
};

class Pickler {
  private parts: number[] = [];
  /** `legacy` persistent ids carry a sixth element (view metadata, None). */
  constructor(private readonly legacy: boolean) {}

  bytes(): Buffer {
    return Buffer.from(this.parts);
  }
  private op(...b: number[]) {
    for (const x of b) this.parts.push(x);
  }
  private u32(n: number) {
    this.op(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  }
  private raw(b: Uint8Array) {
    for (const x of b) this.parts.push(x);
  }
  global(module: string, name: string) {
    this.op(0x63);
    this.raw(Buffer.from(`${module}\n${name}\n`, 'latin1'));
  }
  int(v: number | bigint) {
    if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < 256) this.op(0x4b, v);
    else if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < 65536) this.op(0x4d, v & 0xff, v >> 8);
    else if (typeof v === 'number' && Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31) {
      this.op(0x4a);
      this.u32(v >>> 0);
    } else {
      // LONG1: little-endian two's complement, minimal length.
      let x = BigInt(v);
      const out: number[] = [];
      for (;;) {
        const byte = Number(x & 0xffn);
        out.push(byte);
        x >>= 8n;
        if ((x === 0n && !(byte & 0x80)) || (x === -1n && byte & 0x80)) break;
      }
      this.op(0x8a, out.length, ...out);
    }
  }
  value(v: unknown): void {
    if (v === null || v === undefined) this.op(0x4e);
    else if (v === true) this.op(0x88);
    else if (v === false) this.op(0x89);
    else if (typeof v === 'bigint') this.int(v);
    else if (typeof v === 'number') {
      if (Number.isInteger(v) && !Object.is(v, -0)) this.int(v);
      else {
        const b = Buffer.alloc(8);
        b.writeDoubleBE(v);
        this.op(0x47);
        this.raw(b);
      }
    } else if (typeof v === 'string') {
      const b = Buffer.from(v, 'utf8');
      this.op(0x58);
      this.u32(b.length);
      this.raw(b);
    } else if (v instanceof PyGlobal) this.global(v.module, v.name);
    else if (v instanceof TensorSpec) this.tensor(v);
    else if (v instanceof OrderedDictSpec) {
      this.global('collections', 'OrderedDict');
      this.op(0x29, 0x52); // EMPTY_TUPLE REDUCE
      this.items(v.entries);
    } else if (v instanceof PyTuple) {
      this.op(0x28);
      for (const x of v) this.value(x);
      this.op(0x74);
    } else if (Array.isArray(v)) {
      this.op(0x5d);
      if (v.length) {
        this.op(0x28);
        for (const x of v) this.value(x);
        this.op(0x65);
      }
    } else if (v instanceof Map) {
      this.op(0x7d);
      this.items(v);
    } else throw new Error(`cannot pickle ${Object.prototype.toString.call(v)}`);
  }
  private items(m: Map<unknown, unknown>) {
    if (!m.size) return;
    this.op(0x28);
    for (const [k, x] of m) {
      this.value(k);
      this.value(x);
    }
    this.op(0x75);
  }
  private tensor(t: TensorSpec) {
    this.global('torch._utils', '_rebuild_tensor_v2');
    this.op(0x28); // MARK: the argument tuple
    // Persistent id ('storage', StorageClass, key, 'cpu', numel[, None]) then BINPERSID.
    this.op(0x28);
    this.value('storage');
    this.global('torch', STORAGE_CLASS[t.storage.dtype]);
    this.value(t.storage.key);
    this.value('cpu');
    this.int(t.storage.numel);
    if (this.legacy) this.op(0x4e);
    this.op(0x74, 0x51);
    this.int(t.offset);
    this.value(PyTuple.fromItems(t.shape));
    this.value(PyTuple.fromItems(t.strides));
    this.op(0x89); // requires_grad False
    this.value(new OrderedDictSpec(new Map()));
    this.op(0x74, 0x52); // TUPLE REDUCE
  }
  stop() {
    this.op(0x2e);
  }
}

/** A protocol-2 pickle of `value` (Maps, arrays, PyTuple, strings, numbers, PyGlobal, TensorSpec, OrderedDictSpec). */
export function picklePayload(value: unknown, legacy = false): Buffer {
  const p = new Pickler(legacy);
  p.value(value);
  return Buffer.concat([Buffer.from([0x80, 0x02]), p.bytes(), Buffer.from([0x2e])]);
}

/** The storages a value refers to, in first-use order. */
function collectStorages(value: unknown): StorageSpec[] {
  const out: StorageSpec[] = [];
  const seen = new Set<StorageSpec>();
  const todo: unknown[] = [value];
  while (todo.length) {
    const v = todo.pop();
    if (v instanceof TensorSpec) {
      if (!seen.has(v.storage)) out.push(v.storage);
      seen.add(v.storage);
    } else if (v instanceof OrderedDictSpec) todo.push(...[...v.entries].flat().reverse());
    else if (v instanceof Map) todo.push(...[...v].flat().reverse());
    else if (Array.isArray(v)) todo.push(...[...v].reverse());
  }
  return out;
}

// ---------------------------------------------------------------- CRC-32 of zero runs (zlib's crc32_combine)

const POLY = 0xedb88320;
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}
const X2N: number[] = (() => {
  const t: number[] = [];
  let p = 0x40000000; // x^1
  t.push(p);
  for (let n = 1; n < 32; n++) t.push((p = multModP(p, p)));
  return t;
})();
function x2nModP(n: number, k: number): number {
  let p = 0x80000000; // x^0
  while (n) {
    if (n % 2) p = multModP(X2N[k & 31], p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}
/** CRC-32 of A||B from crc(A), crc(B) and len(B). */
export function crc32Combine(crcA: number, crcB: number, lenB: number): number {
  return (multModP(x2nModP(lenB, 3), crcA) ^ crcB) >>> 0;
}
/** CRC-32 of `crc`'s data followed by n zero bytes, in O(log n). */
export function crc32ExtendZeros(crc: number, n: number): number {
  // crc(Z_n) by doubling: crc(Z_2k) = combine(crc(Z_k), crc(Z_k), k).
  let zeros = 0; // crc of the empty string
  let len = 0;
  let unit = zlib.crc32(Buffer.alloc(1)) >>> 0; // crc(Z_1)
  let unitLen = 1;
  let rest = n;
  while (rest > 0) {
    if (rest % 2) {
      zeros = crc32Combine(zeros, unit, unitLen);
      len += unitLen;
    }
    rest = Math.floor(rest / 2);
    if (rest) {
      unit = crc32Combine(unit, unit, unitLen);
      unitLen *= 2;
    }
  }
  return crc32Combine(crc, zeros, len);
}

// ---------------------------------------------------------------- zip writer

interface CentralRecord {
  name: Buffer;
  crc: number;
  size: number;
  offset: number;
}

const ALIGN = 64;

/** Streams stored (uncompressed) entries into a zip file, torch style; zip64 records only where needed. */
export class ZipWriter {
  private fd: number;
  private pos = 0;
  private readonly records: CentralRecord[] = [];

  constructor(readonly path: string) {
    this.fd = fs.openSync(path, 'w');
  }

  private write(b: Uint8Array, at = this.pos) {
    let done = 0;
    while (done < b.length) done += fs.writeSync(this.fd, b, done, b.length - done, at + done);
    if (at === this.pos) this.pos += b.length;
  }

  /** Adds an entry of `size` bytes given as chunks (holes stay sparse); returns the entry's data offset. */
  add(name: string, size: number, chunks: Iterable<Uint8Array | { hole: number }>): number {
    const nameBuf = Buffer.from(name, 'utf8');
    const offset = this.pos;
    const zip64 = size >= 0xffffffff || offset >= 0xffffffff;
    const z64 = zip64 ? 20 : 0;
    // Pad the local extra field (id 'FB', as torch does) so the data starts on a 64-byte boundary.
    const pad = (ALIGN - ((offset + 30 + nameBuf.length + z64 + 4) % ALIGN)) % ALIGN;
    const extra = Buffer.alloc(z64 + 4 + pad);
    let e = 0;
    if (zip64) {
      extra.writeUInt16LE(0x0001, 0);
      extra.writeUInt16LE(16, 2);
      extra.writeBigUInt64LE(BigInt(size), 4);
      extra.writeBigUInt64LE(BigInt(size), 12);
      e = 20;
    }
    extra.writeUInt16LE(0x4246, e);
    extra.writeUInt16LE(pad, e + 2);
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(zip64 ? 45 : 20, 4);
    h.writeUInt16LE(0x0800, 6); // UTF-8 names
    h.writeUInt16LE(0, 8); // stored
    h.writeUInt16LE(0, 10);
    h.writeUInt16LE(0x21, 12); // 1980-01-01
    h.writeUInt32LE(0, 14); // CRC patched below
    h.writeUInt32LE(zip64 ? 0xffffffff : size, 18);
    h.writeUInt32LE(zip64 ? 0xffffffff : size, 22);
    h.writeUInt16LE(nameBuf.length, 26);
    h.writeUInt16LE(extra.length, 28);
    this.write(h);
    this.write(nameBuf);
    this.write(extra);
    const dataStart = this.pos;
    let crc = 0;
    let written = 0;
    for (const c of chunks) {
      if (c instanceof Uint8Array) {
        this.write(c);
        crc = zlib.crc32(c, crc) >>> 0;
        written += c.length;
      } else {
        this.pos += c.hole; // left unwritten: a hole in a sparse file reads as zeros
        crc = crc32ExtendZeros(crc, c.hole);
        written += c.hole;
      }
    }
    if (written !== size) throw new Error(`entry ${name}: wrote ${written} bytes, declared ${size}`);
    const crcBuf = Buffer.alloc(4);
    crcBuf.writeUInt32LE(crc);
    this.write(crcBuf, offset + 14);
    this.records.push({ name: nameBuf, crc, size, offset });
    return dataStart;
  }

  /** Writes the central directory (zip64 end records when needed) and closes the file. */
  finish(): void {
    const cdStart = this.pos;
    for (const r of this.records) {
      const z: bigint[] = [];
      if (r.size >= 0xffffffff) z.push(BigInt(r.size), BigInt(r.size));
      if (r.offset >= 0xffffffff) z.push(BigInt(r.offset));
      const extra = Buffer.alloc(z.length ? 4 + 8 * z.length : 0);
      if (z.length) {
        extra.writeUInt16LE(0x0001, 0);
        extra.writeUInt16LE(8 * z.length, 2);
        z.forEach((v, i) => extra.writeBigUInt64LE(v, 4 + 8 * i));
      }
      const h = Buffer.alloc(46);
      h.writeUInt32LE(0x02014b50, 0);
      h.writeUInt16LE(45, 4);
      h.writeUInt16LE(z.length ? 45 : 20, 6);
      h.writeUInt16LE(0x0800, 8);
      h.writeUInt16LE(0, 10);
      h.writeUInt16LE(0, 12);
      h.writeUInt16LE(0x21, 14);
      h.writeUInt32LE(r.crc, 16);
      h.writeUInt32LE(r.size >= 0xffffffff ? 0xffffffff : r.size, 20);
      h.writeUInt32LE(r.size >= 0xffffffff ? 0xffffffff : r.size, 24);
      h.writeUInt16LE(r.name.length, 28);
      h.writeUInt16LE(extra.length, 30);
      h.writeUInt32LE(r.offset >= 0xffffffff ? 0xffffffff : r.offset, 42);
      this.write(h);
      this.write(r.name);
      this.write(extra);
    }
    const cdSize = this.pos - cdStart;
    const n = this.records.length;
    const zip64 = n >= 0xffff || cdStart >= 0xffffffff || cdSize >= 0xffffffff;
    if (zip64) {
      const recAt = this.pos;
      const rec = Buffer.alloc(56);
      rec.writeUInt32LE(0x06064b50, 0);
      rec.writeBigUInt64LE(44n, 4);
      rec.writeUInt16LE(45, 12);
      rec.writeUInt16LE(45, 14);
      rec.writeBigUInt64LE(BigInt(n), 24);
      rec.writeBigUInt64LE(BigInt(n), 32);
      rec.writeBigUInt64LE(BigInt(cdSize), 40);
      rec.writeBigUInt64LE(BigInt(cdStart), 48);
      this.write(rec);
      const loc = Buffer.alloc(20);
      loc.writeUInt32LE(0x07064b50, 0);
      loc.writeBigUInt64LE(BigInt(recAt), 8);
      loc.writeUInt32LE(1, 16);
      this.write(loc);
    }
    const eocd = Buffer.alloc(22);
    eocd.writeUInt32LE(0x06054b50, 0);
    eocd.writeUInt16LE(zip64 ? 0xffff : n, 8);
    eocd.writeUInt16LE(zip64 ? 0xffff : n, 10);
    eocd.writeUInt32LE(zip64 ? 0xffffffff : cdSize, 12);
    eocd.writeUInt32LE(zip64 ? 0xffffffff : cdStart, 16);
    this.write(eocd);
    fs.closeSync(this.fd);
    this.fd = -1;
  }

  /** Closes without finishing (after an error). */
  abort(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

function storageBytes(s: StorageSpec): number {
  return s.numel * RAW_DTYPES[s.dtype].bytes;
}

/**
 * Writes `value` (typically an OrderedDictSpec of TensorSpecs, or a Lightning-style Map holding one under
 * 'state_dict') as a torch zip checkpoint: `<archive>/data.pkl`, `<archive>/data/<key>`, `<archive>/version`.
 * Returns the absolute data offset of every storage.
 */
export function writeTorchZip(path: string, value: unknown, archive = 'archive'): Map<string, number> {
  const storages = collectStorages(value);
  const w = new ZipWriter(path);
  const offsets = new Map<string, number>();
  try {
    const pkl = picklePayload(value);
    w.add(`${archive}/data.pkl`, pkl.length, [pkl]);
    for (const s of storages) offsets.set(s.key, w.add(`${archive}/data/${s.key}`, storageBytes(s), s.chunks()));
    w.add(`${archive}/version`, 2, [Buffer.from('3\n')]);
    w.finish();
  } catch (err) {
    w.abort();
    throw err;
  }
  return offsets;
}

/** Writes `value` in torch's legacy (pre-1.6) pickle-stream format. */
export function writeTorchLegacy(path: string, value: unknown): void {
  const storages = collectStorages(value);
  const sysInfo = new Map<unknown, unknown>([
    ['protocol_version', 1001],
    ['little_endian', true],
    ['type_sizes', new Map<unknown, unknown>([['short', 2], ['int', 4], ['long', 4]])],
  ]);
  const head = Buffer.concat([
    picklePayload(0x1950a86a20f9469cfc6cn, true),
    picklePayload(1001, true),
    picklePayload(sysInfo, true),
    picklePayload(value, true),
    picklePayload(storages.map((s) => s.key), true),
  ]);
  const fd = fs.openSync(path, 'w');
  try {
    let pos = 0;
    const put = (b: Uint8Array) => {
      let done = 0;
      while (done < b.length) done += fs.writeSync(fd, b, done, b.length - done, pos + done);
      pos += b.length;
    };
    put(head);
    for (const s of storages) {
      const n = Buffer.alloc(8);
      n.writeBigInt64LE(BigInt(s.numel));
      put(n);
      for (const c of s.chunks()) {
        if (c instanceof Uint8Array) put(c);
        else put(Buffer.alloc(c.hole));
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** A storage holding the given typed array's bytes. */
export function storageOf(key: string, dtype: keyof typeof RAW_DTYPES, data: ArrayBufferView): StorageSpec {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { key, dtype, numel: bytes.length / RAW_DTYPES[dtype].bytes, chunks: () => [bytes] };
}
