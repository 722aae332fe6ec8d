// safetensors: u64 little-endian header length, JSON header {key: {dtype, shape, data_offsets}, __metadata__},
// then raw little-endian tensor bytes. Tensors are read lazily, one fs.read each.
import fs from 'node:fs';
import { FormatError, numel, type HostTensor } from './host-tensor.ts';
import { RAW_DTYPES, decodeElements, type RawDType } from './raw.ts';

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

const HOST_TO_ST: Record<string, string> = {
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
    readonly path: string,
    private fd: number,
    header: Record<string, unknown>,
    dataStart: number,
    fileSize: number,
  ) {
    const meta = header.__metadata__;
    this.metadata = meta && typeof meta === 'object' ? (meta as Record<string, string>) : {};
    for (const [key, raw] of Object.entries(header)) {
      if (key === '__metadata__') continue;
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const fail = (why: string) => new FormatError(path, `tensor "${key}": ${why}`, 'the file is corrupt or not safetensors');
      if (!e || typeof e !== 'object') throw fail('header entry is not an object');
      const dt = typeof e.dtype === 'string' ? ST_DTYPES[e.dtype] : undefined;
      if (!dt) throw fail(`unsupported dtype ${JSON.stringify(e.dtype)}`);
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw fail('bad shape');
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
        throw fail('bad data_offsets');
      }
      const [b, en] = offs as number[];
      const shape = e.shape as number[];
      if (en < b || en - b !== numel(shape) * dt.bytes) throw fail(`data_offsets [${b}, ${en}] do not hold shape [${shape}] of ${e.dtype}`);
      if (dataStart + en > fileSize) throw fail(`data ends at byte ${dataStart + en} but the file has ${fileSize} (truncated?)`);
      this.entries.set(key, { dtype: e.dtype as string, shape, begin: dataStart + b, end: dataStart + en });
    }
  }

  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (err) {
      throw new FormatError(path, `cannot open (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < 8) throw new FormatError(path, `only ${size} bytes: too short for a safetensors header`);
      const lenBuf = Buffer.alloc(8);
      fs.readSync(fd, lenBuf, 0, 8, 0);
      const len = lenBuf.readBigUInt64LE(0);
      if (len > BigInt(MAX_HEADER_BYTES) || Number(len) > size - 8) {
        throw new FormatError(path, `header claims ${len} bytes but the file has ${size}`, 'corrupt or truncated safetensors');
      }
      const hb = Buffer.alloc(Number(len));
      fs.readSync(fd, hb, 0, hb.length, 8);
      let header: unknown;
      try {
        header = JSON.parse(hb.toString('utf8'));
      } catch {
        throw new FormatError(path, 'header is not valid JSON', 'corrupt or not a safetensors file');
      }
      if (!header || typeof header !== 'object' || Array.isArray(header)) throw new FormatError(path, 'header is not a JSON object');
      return new SafetensorsFile(path, fd, header as Record<string, unknown>, 8 + Number(len), size);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
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
    const buf = Buffer.alloc(e.end - e.begin);
    if (buf.length) fs.readSync(this.fd, buf, 0, buf.length, e.begin);
    return { dtype: dt.host, shape: [...e.shape], data: decodeElements(buf, dt, numel(e.shape)) };
  }

  readAll(): Map<string, HostTensor> {
    return new Map(this.keys().map((k) => [k, this.read(k)]));
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
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

/**
 * Writes tensors (sorted by key, contiguous, header padded with spaces to a multiple of 8) to `path`
 * atomically: a temporary file renamed into place, so an interrupted write never leaves a half file.
 */
export function writeSafetensors(path: string, tensors: Map<string, HostTensor>, metadata: Record<string, string> = {}): void {
  const keys = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const k of keys) {
    const t = tensors.get(k)!;
    const bytes = t.data.byteLength;
    header[k] = { dtype: HOST_TO_ST[t.dtype], shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const tmp = `${path}.partial-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, len);
    fs.writeSync(fd, json);
    for (const k of keys) {
      const d = tensors.get(k)!.data;
      fs.writeSync(fd, new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path);
}
