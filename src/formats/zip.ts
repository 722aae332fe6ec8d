// Read-only access to zip archives (PyTorch checkpoints and TorchScript archives) through yauzl, which handles
// the central directory, zip64 and corruption checks. PyTorch stores tensor entries uncompressed, so a stored entry
// is exposed as a byte range of the file that callers read lazily with one fs.read.
import fs from 'node:fs';
import zlib from 'node:zlib';
import yauzl from 'yauzl';

export interface ZipEntryInfo {
  name: string;
  compressed: boolean;
  compressedSize: number;
  size: number;
  /** Absolute offset of the entry's data in the file (after its local header). */
  dataStart: number;
}

export class ZipArchive {
  private constructor(
    readonly path: string,
    readonly entries: Map<string, ZipEntryInfo>,
    private fd: number,
    readonly fileSize: number,
  ) {}

  static async open(path: string, maxEntries = 1_000_000): Promise<ZipArchive> {
    const zip = await new Promise<yauzl.ZipFile>((resolve, reject) =>
      yauzl.open(path, { lazyEntries: true, autoClose: false, decodeStrings: true, validateEntrySizes: true, strictFileNames: false }, (err, z) =>
        err ? reject(err) : resolve(z!),
      ),
    );
    try {
      const raw: yauzl.Entry[] = [];
      await new Promise<void>((resolve, reject) => {
        zip.on('entry', (e: yauzl.Entry) => {
          raw.push(e);
          if (raw.length > maxEntries) reject(new Error(`more than ${maxEntries} entries`));
          else zip.readEntry();
        });
        zip.on('end', () => resolve());
        zip.on('error', reject);
        zip.readEntry();
      });
      const entries = new Map<string, ZipEntryInfo>();
      for (const e of raw) {
        const header = await new Promise<{ fileDataStart: number }>((resolve, reject) =>
          // readLocalFileHeader(minimal) gives where the data begins; it checks the signature and the file size.
          (zip as unknown as { readLocalFileHeader: (e: yauzl.Entry, o: object, cb: (err: Error | null, h: { fileDataStart: number }) => void) => void }).readLocalFileHeader(
            e,
            { minimal: true },
            (err, h) => (err ? reject(err) : resolve(h)),
          ),
        );
        if (e.compressionMethod !== 0 && e.compressionMethod !== 8) throw new Error(`entry ${e.fileName} uses unsupported compression method ${e.compressionMethod}`);
        entries.set(e.fileName, {
          name: e.fileName,
          compressed: e.compressionMethod !== 0,
          compressedSize: e.compressedSize,
          size: e.uncompressedSize,
          dataStart: header.fileDataStart,
        });
      }
      const size = fs.statSync(path).size;
      for (const e of entries.values()) {
        if (e.dataStart + e.compressedSize > size) throw new Error(`entry ${e.name} extends past the end of the file`);
      }
      return new ZipArchive(path, entries, fs.openSync(path, 'r'), size);
    } finally {
      zip.close();
    }
  }

  /** Reads `length` bytes of a stored entry starting at `offset` within it. */
  readRange(entry: ZipEntryInfo, offset: number, length: number): Buffer {
    if (entry.compressed) throw new Error(`entry ${entry.name} is compressed; tensor data must be stored`);
    if (offset < 0 || length < 0 || offset + length > entry.size) {
      throw new Error(`read of ${length} bytes at ${offset} is outside entry ${entry.name} (${entry.size} bytes)`);
    }
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, buf, done, length - done, entry.dataStart + offset + done);
      if (n <= 0) throw new Error(`unexpected end of file reading ${entry.name}`);
      done += n;
    }
    return buf;
  }

  /** Reads a whole entry, inflating it if needed (TorchScript code entries are deflated). */
  readEntry(entry: ZipEntryInfo, maxBytes = 1 << 30): Buffer {
    if (entry.size > maxBytes) throw new Error(`entry ${entry.name} is ${entry.size} bytes, more than ${maxBytes}`);
    if (!entry.compressed) return this.readRange(entry, 0, entry.size);
    const buf = Buffer.alloc(entry.compressedSize);
    fs.readSync(this.fd, buf, 0, buf.length, entry.dataStart);
    const out = zlib.inflateRawSync(buf, { maxOutputLength: Math.max(entry.size, 1) });
    if (out.length !== entry.size) throw new Error(`entry ${entry.name} inflates to ${out.length} bytes, expected ${entry.size}`);
    return out;
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

declare module 'yauzl' {
  interface Entry {
    compressionMethod: number;
  }
}

export function isZip(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04;
}
