// safetensors: u64 little-endian header length, JSON header {key: {dtype, shape, data_offsets}, __metadata__},
// then raw little-endian tensor bytes. Tensors are read lazily, one positioned read each. The header is validated
// the way the reference implementation does it (known dtypes, offsets that match the shapes, tensors packed without
// holes or overlaps, data ending exactly at the end of the file) before anything else is allocated.
import fs from 'node:fs';
import { FormatError, numel, type HostDType, type HostTensor } from './host-tensor.ts';
import { RAW_DTYPES, contiguousStrides, decodeElements, type RawDType } from './raw.ts';
import { BufferSource, type ByteSource, toSource } from './source.ts';
import { LazyTensor, type StorageRef } from './torch.ts';

const ST_DTYPES: Record<string, RawDType> = {
  F32: RAW_DTYPES.float32,
  F64: RAW_DTYPES.float64,
  F16: RAW_DTYPES.float16,
  BF16: RAW_DTYPES.bfloat16,
  I64: RAW_DTYPES.int64,
  I32: RAW_DTYPES.int32,
  I16: RAW_DTYPES.int16,
  I8: RAW_DTYPES.int8,
  U8: RAW_DTYPES.uint8,
  BOOL: RAW_DTYPES.bool,
};

/** safetensors dtype name of each stored (raw) dtype. */
const RAW_TO_ST: Record<string, string> = Object.fromEntries(Object.entries(ST_DTYPES).map(([st, raw]) => [raw.name, st]));

const HOST_TO_ST: Record<HostDType, string> = {
  float32: 'F32',
  int64: 'I64',
  int32: 'I32',
  int16: 'I16',
  int8: 'I8',
  uint8: 'U8',
  bool: 'BOOL',
};

/** Largest JSON header we accept: real files have headers of a few hundred KB. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface SafetensorsEntry {
  dtype: string;
  shape: number[];
  begin: number; // absolute file offset
  end: number;
}

export class SafetensorsFile {
  readonly metadata: Record<string, string>;
  private readonly entries = new Map<string, SafetensorsEntry>();

  private constructor(
    private readonly src: ByteSource,
    private readonly ownsSource: boolean,
    header: Record<string, unknown>,
    dataStart: number,
  ) {
    const path = src.name;
    const meta = header.__metadata__;
    if (meta !== undefined && (meta === null || typeof meta !== 'object' || Array.isArray(meta) || Object.values(meta).some((v) => typeof v !== 'string'))) {
      throw new FormatError(path, '__metadata__ must map names to strings', 'corrupt or not a safetensors file');
    }
    this.metadata = (meta as Record<string, string>) ?? {};
    const spans: [number, number, string][] = [];
    for (const [key, raw] of Object.entries(header)) {
      if (key === '__metadata__') continue;
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const fail = (why: string) => new FormatError(path, `tensor "${key.slice(0, 200)}": ${why}`, 'the file is corrupt or not safetensors');
      if (!e || typeof e !== 'object') throw fail('header entry is not an object');
      const dt = typeof e.dtype === 'string' ? ST_DTYPES[e.dtype] : undefined;
      if (!dt) throw fail(`unsupported dtype ${JSON.stringify(e.dtype)?.slice(0, 40)}`);
      if (!Array.isArray(e.shape) || e.shape.length > 64 || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw fail('bad shape');
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) throw fail('bad data_offsets');
      const [b, en] = offs as number[];
      const shape = [...(e.shape as number[])];
      const n = numel(shape);
      if (!Number.isSafeInteger(n * dt.bytes) || en < b || en - b !== n * dt.bytes) throw fail(`data_offsets [${b}, ${en}] do not hold shape [${shape}] of ${e.dtype}`);
      if (dataStart + en > src.size) throw fail(`data ends at byte ${dataStart + en} but the file has ${src.size} (truncated?)`);
      this.entries.set(key, { dtype: e.dtype as string, shape, begin: dataStart + b, end: dataStart + en });
      spans.push([b, en, key]);
    }
    // Packed without holes or overlaps, in any key order, and ending exactly at the end of the file.
    spans.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    let at = 0;
    for (const [b, en, key] of spans) {
      if (b !== at) throw new FormatError(path, `tensor "${key.slice(0, 200)}" starts at data byte ${b}, expected ${at} (${b < at ? 'overlap' : 'hole'})`, 'the file is corrupt');
      at = en;
    }
    if (dataStart + at !== src.size) throw new FormatError(path, `the tensors end at byte ${dataStart + at} but the file has ${src.size} bytes`, 'the file is truncated or corrupt');
  }

  /** Opens a file path or byte source; only the header is read. */
  static open(input: string | ByteSource): SafetensorsFile {
    const src = toSource(input);
    const owns = typeof input === 'string';
    try {
      const path = src.name;
      if (src.size < 8) throw new FormatError(path, `only ${src.size} bytes: too short for a safetensors header`);
      const len = src.read(0, 8).readBigUInt64LE(0);
      if (len > BigInt(MAX_HEADER_BYTES) || Number(len) > src.size - 8) {
        throw new FormatError(path, `header claims ${len} bytes but the file has ${src.size}`, 'corrupt or truncated safetensors');
      }
      const hb = src.read(8, Number(len));
      let header: unknown;
      try {
        header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(hb));
      } catch {
        throw new FormatError(path, 'header is not valid UTF-8 JSON', 'corrupt or not a safetensors file');
      }
      if (!header || typeof header !== 'object' || Array.isArray(header)) throw new FormatError(path, 'header is not a JSON object');
      return new SafetensorsFile(src, owns, header as Record<string, unknown>, 8 + Number(len));
    } catch (err) {
      if (owns) src.close();
      throw err;
    }
  }

  static fromBuffer(bytes: Uint8Array, name: string): SafetensorsFile {
    return SafetensorsFile.open(new BufferSource(bytes, name));
  }

  get path(): string {
    return this.src.name;
  }

  /** Bytes in the file. */
  get size(): number {
    return this.src.size;
  }

  keys(): string[] {
    return [...this.entries.keys()];
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  entry(key: string): SafetensorsEntry {
    const e = this.entries.get(key);
    if (!e) throw new FormatError(this.path, `no tensor named "${key}"`);
    return e;
  }

  read(key: string): HostTensor {
    const e = this.entry(key);
    const dt = ST_DTYPES[e.dtype];
    const buf = this.src.read(e.begin, e.end - e.begin);
    return { dtype: dt.host, shape: [...e.shape], data: decodeElements(buf, dt, numel(e.shape)) };
  }

  readAll(): Map<string, HostTensor> {
    return new Map(this.keys().map((k) => [k, this.read(k)]));
  }

  /**
   * Every tensor as a LazyTensor reading from this file (the file must stay open while they are used), so a
   * safetensors file plugs into the same WeightMap as a torch checkpoint.
   */
  lazyTensors(): Map<string, LazyTensor> {
    const out = new Map<string, LazyTensor>();
    for (const [key, e] of this.entries) {
      const dtype = ST_DTYPES[e.dtype];
      const storage: StorageRef = {
        key,
        dtype,
        numel: numel(e.shape),
        file: this.path,
        readElements: (start, count) => {
          if (start < 0 || start + count > storage.numel) throw new FormatError(this.path, `read outside tensor "${key}"`);
          return this.src.read(e.begin + start * dtype.bytes, count * dtype.bytes);
        },
      };
      out.set(key, new LazyTensor(storage, dtype, e.shape, contiguousStrides(e.shape), 0));
    }
    return out;
  }

  close(): void {
    if (this.ownsSource) this.src.close();
  }
}

/** Reads every tensor of a safetensors file (small files: fixtures, converted weights of tiny models). */
export function readSafetensors(path: string): Map<string, HostTensor> {
  const f = SafetensorsFile.open(path);
  try {
    return f.readAll();
  } finally {
    f.close();
  }
}

/** A tensor to write: in host memory, or lazy (read when its turn comes, kept in its stored dtype, e.g. F16). */
export type WritableTensor = HostTensor | LazyTensor;

function plan(t: WritableTensor): { dtype: string; shape: number[]; bytes: number } {
  if (t instanceof LazyTensor) return { dtype: RAW_TO_ST[t.dtype.name], shape: t.shape, bytes: t.numel * t.dtype.bytes };
  const dtype = HOST_TO_ST[t.dtype];
  if (!dtype) throw new Error(`cannot write dtype ${t.dtype}`);
  if (t.data.length !== numel(t.shape)) throw new Error(`tensor of shape [${t.shape}] has ${t.data.length} values`);
  return { dtype, shape: t.shape, bytes: t.data.byteLength };
}

/**
 * Writes tensors (sorted by key, contiguous, header padded with spaces to a multiple of 8) to `path`
 * atomically: a temporary file, flushed to disk, renamed into place, so an interrupted write never leaves a
 * half file. Lazy tensors are read one at a time, so converting a multi-GB checkpoint needs little memory.
 */
export function writeSafetensors(path: string, tensors: Map<string, WritableTensor>, metadata: Record<string, string> = {}): void {
  const keys = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const k of keys) {
    const p = plan(tensors.get(k)!);
    header[k] = { dtype: p.dtype, shape: p.shape, data_offsets: [offset, offset + p.bytes] };
    offset += p.bytes;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const tmp = `${path}.partial-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    writeAll(fd, len);
    writeAll(fd, json);
    for (const k of keys) {
      const t = tensors.get(k)!;
      const bytes = t instanceof LazyTensor ? t.readRaw() : new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
      writeAll(fd, bytes);
    }
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, path);
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, 1 << 30));
}
