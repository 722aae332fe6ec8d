// Read-only access to zip archives (PyTorch checkpoints and TorchScript archives). yauzl parses the central
// directory (zip64 records and extra fields, name decoding and validation); the local headers and entry data are
// then read here directly from the byte source. PyTorch stores tensor entries uncompressed, so a stored entry is a
// byte range of the file that callers read lazily. Whole-entry reads are checked against the entry's CRC-32, so
// corrupt pickles and storages are reported instead of being silently decoded.
import zlib from 'node:zlib';
import yauzl from 'yauzl';
import { FormatError } from './host-tensor.ts';
import { type ByteSource, toSource } from './source.ts';

export interface ZipEntryInfo {
  name: string;
  compressed: boolean;
  /** Zip compression method (0 stored, 8 deflate). */
  method: number;
  compressedSize: number;
  size: number;
  /** CRC-32 from the central directory; 0 means "not recorded" (torch can skip it) and is not checked. */
  crc32: number;
  /** Offset of the entry's local header in the file. */
  headerOffset: number;
}

/** yauzl reads the directory through this adapter, so archives can live in a file or in memory. (Entry data is
 *  read by ZipArchive itself, so yauzl's stream interface, _readStreamForRange, is never needed.) */
class SourceReader extends yauzl.RandomAccessReader {
  constructor(private readonly src: ByteSource) {
    super();
  }
  override read(buffer: Buffer, offset: number, length: number, position: number, callback: (err: Error | null, bytesRead?: number) => void): void {
    let n: number;
    try {
      n = position >= 0 && position <= this.src.size ? this.src.readInto(buffer, offset, length, position) : 0;
    } catch (err) {
      queueMicrotask(() => callback(err as Error));
      return;
    }
    // Asynchronous completion keeps yauzl's entry loop from recursing once per entry.
    queueMicrotask(() => callback(null, n));
  }
}

function centralDirectory(src: ByteSource, maxEntries: number): Promise<yauzl.Entry[]> {
  return new Promise((resolve, reject) => {
    const opts = { lazyEntries: true, autoClose: false, decodeStrings: true, validateEntrySizes: true, strictFileNames: false };
    const reader = new SourceReader(src);
    yauzl.fromRandomAccessReader(reader, src.size, opts, (err, zip) => {
      if (err || !zip) return reject(err ?? new Error('cannot read the zip directory'));
      const entries: yauzl.Entry[] = [];
      let settled = false;
      const finish = (e?: Error) => {
        if (settled) return;
        settled = true;
        zip.close();
        if (e) reject(e);
        else resolve(entries);
      };
      // The directory needs at least 46 bytes per entry: a count beyond that is a corrupt header, not a big archive.
      if (zip.entryCount > maxEntries || zip.entryCount * 46 > src.size) {
        return finish(new Error(`the zip directory claims ${zip.entryCount} entries, impossible for a ${src.size}-byte file`));
      }
      zip.on('entry', (e: yauzl.Entry) => {
        entries.push(e);
        zip.readEntry();
      });
      zip.on('end', () => finish());
      zip.on('error', (e: Error) => finish(e));
      zip.readEntry();
    });
  });
}

export class ZipArchive {
  private readonly dataStarts = new Map<string, number>();
  /** When false, whole-entry reads skip the CRC-32 check (the caller verified the file another way). */
  verifyChecksums = true;

  private constructor(
    private readonly src: ByteSource,
    readonly entries: Map<string, ZipEntryInfo>,
    private readonly ownsSource: boolean,
  ) {}

  get path(): string {
    return this.src.name;
  }

  get fileSize(): number {
    return this.src.size;
  }

  /** Opens an archive from a path or a byte source; every problem is a FormatError naming the file. */
  static async open(input: string | ByteSource, maxEntries = 1_000_000): Promise<ZipArchive> {
    const src = toSource(input);
    const owns = typeof input === 'string';
    try {
      let raw: yauzl.Entry[];
      try {
        raw = await centralDirectory(src, maxEntries);
      } catch (err) {
        if (err instanceof FormatError) throw err;
        throw new FormatError(src.name, `not a readable zip archive: ${(err as Error).message}`, 'the file is truncated or corrupt; download it again');
      }
      const entries = new Map<string, ZipEntryInfo>();
      for (const e of raw) {
        if (entries.has(e.fileName)) throw new FormatError(src.name, `zip entry ${e.fileName} appears twice`, 'the file is corrupt');
        entries.set(e.fileName, {
          name: e.fileName,
          method: e.compressionMethod,
          compressed: e.compressionMethod !== 0,
          compressedSize: e.compressedSize,
          size: e.uncompressedSize,
          crc32: e.crc32 >>> 0,
          headerOffset: e.relativeOffsetOfLocalHeader,
        });
      }
      return new ZipArchive(src, entries, owns);
    } catch (err) {
      if (owns) src.close();
      throw err;
    }
  }

  private fail(problem: string): never {
    throw new FormatError(this.src.name, problem, 'the file is truncated or corrupt; download it again');
  }

  /** Absolute offset of an entry's data: after its local header, whose name and extra field lengths may differ
   *  from the central directory's (PyTorch pads the local extra field so tensor data is 64-byte aligned). */
  dataStart(entry: ZipEntryInfo): number {
    const known = this.dataStarts.get(entry.name);
    if (known !== undefined) return known;
    if (entry.headerOffset + 30 > this.src.size) this.fail(`local header of ${entry.name} lies past the end of the file`);
    const h = this.src.read(entry.headerOffset, 30);
    if (h.readUInt32LE(0) !== 0x04034b50) this.fail(`entry ${entry.name} has no local header at byte ${entry.headerOffset}`);
    const start = entry.headerOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
    if (start + entry.compressedSize > this.src.size) {
      this.fail(`entry ${entry.name} needs bytes up to ${start + entry.compressedSize} but the file has ${this.src.size}`);
    }
    this.dataStarts.set(entry.name, start);
    return start;
  }

  /** Reads `length` bytes of a stored entry starting at `offset` within it (CRC-checked when it is the whole entry). */
  readRange(entry: ZipEntryInfo, offset: number, length: number): Buffer {
    if (entry.compressed) this.fail(`entry ${entry.name} is compressed (method ${entry.method}); tensor data must be stored`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > entry.size) {
      this.fail(`read of ${length} bytes at ${offset} is outside entry ${entry.name} (${entry.size} bytes)`);
    }
    const buf = this.src.read(this.dataStart(entry) + offset, length);
    if (offset === 0 && length === entry.size) this.checkCrc(entry, buf);
    return buf;
  }

  private checkCrc(entry: ZipEntryInfo, data: Uint8Array): void {
    if (!this.verifyChecksums || entry.crc32 === 0) return;
    const crc = zlib.crc32(data) >>> 0;
    if (crc !== entry.crc32) this.fail(`entry ${entry.name} is corrupt (CRC-32 ${hex(crc)}, the directory says ${hex(entry.crc32)})`);
  }

  /** Reads a whole entry, inflating it if needed (TorchScript code entries are deflated). */
  readEntry(entry: ZipEntryInfo, maxBytes = 1 << 30): Buffer {
    if (entry.size > maxBytes) this.fail(`entry ${entry.name} claims ${entry.size} bytes, more than the ${maxBytes} allowed`);
    if (entry.method === 0) return this.readRange(entry, 0, entry.size);
    if (entry.method !== 8) this.fail(`entry ${entry.name} uses unsupported compression method ${entry.method}`);
    const packed = this.src.read(this.dataStart(entry), entry.compressedSize);
    let out: Buffer;
    try {
      out = zlib.inflateRawSync(packed, { maxOutputLength: Math.max(entry.size, 1) });
    } catch (err) {
      this.fail(`entry ${entry.name} does not inflate (${(err as Error).message})`);
    }
    if (out.length !== entry.size) this.fail(`entry ${entry.name} inflates to ${out.length} bytes, the directory says ${entry.size}`);
    this.checkCrc(entry, out);
    return out;
  }

  close(): void {
    if (this.ownsSource) this.src.close();
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

declare module 'yauzl' {
  interface Entry {
    compressionMethod: number;
  }
}

export function isZip(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04;
}
