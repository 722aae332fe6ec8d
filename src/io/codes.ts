// VQGAN code grids on disk: JSON ({"shape": [B,H,W], "indices": [...]}, or nested arrays) or NumPy .npy (int64,
// shape (B,H,W), as numpy.save(codes.cpu().numpy()) writes taming's indices reshaped to the latent grid).
import fs from 'node:fs';
import { FormatError } from '../formats/host-tensor.ts';
import { writeFileAtomic } from './atomic-write.ts';

export interface Codes {
  /** Row-major over (b, h, w). */
  indices: Int32Array;
  shape: [b: number, h: number, w: number];
  /** Codebook size recorded by the writer, when known. */
  nEmbed?: number;
}

function isInt(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

/** A shape for a flat list: square grids only (what every taming model produces). */
function squareShape(n: number, file: string): [number, number, number] {
  const s = Math.round(Math.sqrt(n));
  if (s * s !== n) throw new FormatError(file, `${n} codes do not form a square grid`, 'give the shape: {"shape": [1, H, W], "indices": [...]}');
  return [1, s, s];
}

function checkCodes(c: Codes, file: string): Codes {
  const [b, h, w] = c.shape;
  if (![b, h, w].every((d) => isInt(d) && d > 0)) throw new FormatError(file, `bad code grid shape [${c.shape}]`);
  if (c.indices.length !== b * h * w) throw new FormatError(file, `${c.indices.length} codes do not fill the shape [${c.shape}]`);
  return c;
}

function parseJsonCodes(text: string, file: string): Codes {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new FormatError(file, `is not valid JSON (${(err as Error).message})`);
  }
  const bad = (why: string) => new FormatError(file, why, 'expected {"shape": [B, H, W], "indices": [...]} or a nested list of code indices');
  if (Array.isArray(doc)) {
    // Nested lists: [H][W] or [B][H][W]; a flat list must be a square grid.
    const shape: number[] = [];
    for (let v: unknown = doc; Array.isArray(v); v = v[0]) shape.push(v.length);
    const flat = (doc as unknown[]).flat(shape.length - 1) as unknown[];
    if (!flat.every(isInt)) throw bad('holds something other than non-negative integers');
    const indices = Int32Array.from(flat as number[]);
    if (shape.length === 1) return checkCodes({ indices, shape: squareShape(indices.length, file) }, file);
    if (shape.length === 2) return checkCodes({ indices, shape: [1, shape[0], shape[1]] }, file);
    if (shape.length === 3) return checkCodes({ indices, shape: shape as [number, number, number] }, file);
    throw bad(`has ${shape.length} nesting levels`);
  }
  if (!doc || typeof doc !== 'object') throw bad('is not an object or a list');
  const o = doc as Record<string, unknown>;
  const raw = o.indices ?? o.codes;
  if (!Array.isArray(raw)) throw bad('has no "indices" list');
  const flat = raw.flat(4) as unknown[];
  if (!flat.every(isInt)) throw bad('"indices" holds something other than non-negative integers');
  const indices = Int32Array.from(flat as number[]);
  let shape: [number, number, number];
  if (o.shape === undefined) shape = squareShape(indices.length, file);
  else if (Array.isArray(o.shape) && o.shape.every(isInt) && (o.shape.length === 2 || o.shape.length === 3)) {
    shape = (o.shape.length === 2 ? [1, ...o.shape] : o.shape) as [number, number, number];
  } else throw bad(`"shape" must be [H, W] or [B, H, W] (got ${JSON.stringify(o.shape)})`);
  const nEmbed = isInt(o.n_embed) ? o.n_embed : undefined;
  return checkCodes({ indices, shape, nEmbed }, file);
}

// --- .npy (format versions 1.0-3.0, https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html) ---

const NPY_MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY

const NPY_INTS: Record<string, { bytes: number; read: (b: Buffer, off: number, le: boolean) => number }> = {
  i1: { bytes: 1, read: (b, o) => b.readInt8(o) },
  u1: { bytes: 1, read: (b, o) => b.readUInt8(o) },
  i2: { bytes: 2, read: (b, o, le) => (le ? b.readInt16LE(o) : b.readInt16BE(o)) },
  u2: { bytes: 2, read: (b, o, le) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o)) },
  i4: { bytes: 4, read: (b, o, le) => (le ? b.readInt32LE(o) : b.readInt32BE(o)) },
  u4: { bytes: 4, read: (b, o, le) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o)) },
  i8: { bytes: 8, read: (b, o, le) => Number(le ? b.readBigInt64LE(o) : b.readBigInt64BE(o)) },
  u8: { bytes: 8, read: (b, o, le) => Number(le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)) },
};

function parseNpyCodes(bytes: Buffer, file: string): Codes {
  const bad = (why: string) => new FormatError(file, why, 'save the codes with numpy.save(path, codes.astype("int64")) or as JSON');
  if (bytes.length < 10 || !bytes.subarray(0, 6).equals(NPY_MAGIC)) throw bad('is not a .npy file');
  const major = bytes[6];
  const headerLen = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  if (start + headerLen > bytes.length) throw bad('header runs past the end of the file');
  const header = bytes.toString('latin1', start, start + headerLen);
  const descr = /'descr'\s*:\s*'([<>|=])([iu][1248])'/.exec(header);
  if (!descr) throw bad(`holds ${/'descr'\s*:\s*'([^']*)'/.exec(header)?.[1] ?? 'an unknown dtype'} data; code indices must be integers`);
  const fortran = /'fortran_order'\s*:\s*True/.test(header);
  const shapeMatch = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!shapeMatch) throw bad('header has no shape');
  const dims = shapeMatch[1].split(',').map((s) => s.trim()).filter(Boolean).map(Number);
  const kind = NPY_INTS[descr[2]];
  const le = descr[1] !== '>';
  const n = dims.reduce((a, b) => a * b, 1);
  const dataStart = start + headerLen;
  if (dataStart + n * kind.bytes > bytes.length) throw bad(`holds fewer than the ${n} values its shape (${dims}) needs`);
  const indices = new Int32Array(n);
  // Fortran order: the first index varies fastest; gather into row-major order.
  const fstrides = dims.map((_, k) => dims.slice(0, k).reduce((a, b) => a * b, 1));
  const idx = new Array(dims.length).fill(0);
  for (let i = 0; i < n; i++) {
    let src = i;
    if (fortran) {
      src = 0;
      for (let k = 0; k < dims.length; k++) src += idx[k] * fstrides[k];
      for (let k = dims.length - 1; k >= 0; k--) {
        if (++idx[k] < dims[k]) break;
        idx[k] = 0;
      }
    }
    const v = kind.read(bytes, dataStart + src * kind.bytes, le);
    if (!(v >= 0 && v <= 0x7fffffff)) throw bad(`holds the value ${v}, not a code index`);
    indices[i] = v;
  }
  let shape: [number, number, number];
  if (dims.length === 3) shape = dims as [number, number, number];
  else if (dims.length === 2) shape = [1, dims[0], dims[1]];
  else if (dims.length === 1) shape = squareShape(n, file);
  else throw bad(`has shape (${dims}); expected (H, W) or (B, H, W)`);
  return checkCodes({ indices, shape }, file);
}

/** Reads codes from .json or .npy (decided by the file's first bytes). */
export function readCodes(file: string): Codes {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FormatError(file, code === 'ENOENT' ? 'codes file not found' : `cannot read (${code})`, 'check the path');
  }
  if (bytes.subarray(0, 6).equals(NPY_MAGIC)) return parseNpyCodes(bytes, file);
  return parseJsonCodes(bytes.toString('utf8'), file);
}

/** .npy bytes: int64 little-endian, C order, shape (B, H, W). */
export function encodeNpy(codes: Codes): Buffer {
  const dict = `{'descr': '<i8', 'fortran_order': False, 'shape': (${codes.shape.join(', ')}), }`;
  // Magic + version + u16 length + header (ending in \n) padded with spaces to a multiple of 64 bytes.
  const total = Math.ceil((10 + dict.length + 1) / 64) * 64;
  const header = Buffer.alloc(total, 0x20);
  NPY_MAGIC.copy(header, 0);
  header[6] = 1;
  header[7] = 0;
  header.writeUInt16LE(total - 10, 8);
  header.write(dict, 10, 'latin1');
  header[total - 1] = 0x0a;
  const data = Buffer.from(BigInt64Array.from(codes.indices, (v) => BigInt(v)).buffer);
  return Buffer.concat([header, data]);
}

export function encodeJson(codes: Codes): Buffer {
  const doc: Record<string, unknown> = { shape: codes.shape, indices: Array.from(codes.indices) };
  if (codes.nEmbed !== undefined) doc.n_embed = codes.nEmbed;
  return Buffer.from(`${JSON.stringify(doc)}\n`, 'utf8');
}

/** Writes codes as .npy when the name ends in .npy, else JSON; atomically, replacing a file only with `force`. */
export function writeCodes(file: string, codes: Codes, force = false): void {
  checkCodes(codes, file);
  writeFileAtomic(file, file.toLowerCase().endsWith('.npy') ? encodeNpy(codes) : encodeJson(codes), force);
}
