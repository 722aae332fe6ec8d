// Random-access byte sources for the readers: a file (read lazily with positioned reads, so multi-GB checkpoints
// are never loaded whole) or an in-memory buffer (tests, fuzzing, data already downloaded). Every read is
// bounds-checked against the source's size and fails with a FormatError naming the source.
import fs from 'node:fs';
import { FormatError } from './host-tensor.ts';

export interface ByteSource {
  /** Shown in errors: the file path, or the name given to an in-memory buffer. */
  readonly name: string;
  readonly size: number;
  /** Copies up to `length` bytes from `position` into `target` at `offset`; fewer only at the end of the source. */
  readInto(target: Uint8Array, offset: number, length: number, position: number): number;
  /** Exactly `length` bytes from `position`, in a buffer the caller owns; a FormatError if the source ends first. */
  read(position: number, length: number): Buffer;
  close(): void;
}

/** Largest single read: one tensor of 2 GiB; bigger requests mean a corrupt header, not a real tensor. */
export const MAX_READ_BYTES = 2 ** 31;

function checkRange(src: ByteSource, position: number, length: number, what = 'data'): void {
  if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0) {
    throw new FormatError(src.name, `invalid read of ${length} bytes at ${position}`, 'the file is corrupt');
  }
  if (position + length > src.size) {
    throw new FormatError(src.name, `${what} ends at byte ${position + length} but the file has ${src.size} bytes`, 'the file is truncated or corrupt; download it again');
  }
  if (length > MAX_READ_BYTES) throw new FormatError(src.name, `refusing a single read of ${length} bytes`, 'the file is corrupt');
}

export class FileSource implements ByteSource {
  private fd: number;
  readonly size: number;

  constructor(readonly name: string) {
    try {
      this.fd = fs.openSync(name, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new FormatError(name, code === 'ENOENT' ? 'file not found' : `cannot open (${code ?? String(err)})`, code === 'ENOENT' ? 'check the path' : undefined);
    }
    const st = fs.fstatSync(this.fd);
    if (st.isDirectory()) {
      fs.closeSync(this.fd);
      throw new FormatError(name, 'is a directory, not a file');
    }
    this.size = st.size;
  }

  readInto(target: Uint8Array, offset: number, length: number, position: number): number {
    if (this.fd < 0) throw new FormatError(this.name, 'read after close');
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.fd, target, offset + done, Math.min(length - done, 1 << 30), position + done);
      if (n <= 0) break;
      done += n;
    }
    return done;
  }

  read(position: number, length: number): Buffer {
    checkRange(this, position, length);
    const buf = Buffer.allocUnsafeSlow(length);
    const got = this.readInto(buf, 0, length, position);
    if (got !== length) throw new FormatError(this.name, `file ended after ${position + got} bytes (expected ${position + length})`, 'the file changed while reading or is truncated');
    return buf;
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

export class BufferSource implements ByteSource {
  readonly size: number;
  constructor(
    private readonly bytes: Uint8Array,
    readonly name: string,
  ) {
    this.size = bytes.length;
  }

  readInto(target: Uint8Array, offset: number, length: number, position: number): number {
    const n = Math.max(0, Math.min(length, this.size - position));
    target.set(this.bytes.subarray(position, position + n), offset);
    return n;
  }

  read(position: number, length: number): Buffer {
    checkRange(this, position, length);
    // A copy: callers may keep (and views may alias) what they get back.
    const buf = Buffer.allocUnsafeSlow(length);
    buf.set(this.bytes.subarray(position, position + length));
    return buf;
  }

  close(): void {}
}

/** Opens a path, or wraps a buffer under `name`. */
export function toSource(input: string | ByteSource): ByteSource {
  return typeof input === 'string' ? new FileSource(input) : input;
}
