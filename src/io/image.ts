// Images in and out: decoding any format sharp (libvips) reads into float RGB, and writing PNGs with text chunks.
// Generated images carry their settings as PNG text; sharp cannot write arbitrary text chunks, so iTXt chunks are
// spliced into sharp's PNG bytes here (PNG spec: length, type, data, CRC-32 over type+data).
import fs from 'node:fs';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { FormatError } from '../formats/host-tensor.ts';
import { writeFileAtomic } from './atomic-write.ts';

export interface RgbImage {
  /** NHWC [1, height, width, 3], values in [0, 1]. */
  data: Float32Array;
  width: number;
  height: number;
}

/**
 * Reads an image file as RGB in [0,1]. EXIF orientation is applied; alpha is dropped without compositing and
 * grayscale/palette images are expanded to RGB, as PIL's Image.convert('RGB') in the original scripts does.
 */
export async function readImage(file: string): Promise<RgbImage> {
  if (!fs.existsSync(file)) throw new FormatError(file, 'image not found', 'check the path');
  let out: { data: Buffer; info: { width: number; height: number; channels: number } };
  try {
    out = await sharp(file).autoOrient().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new FormatError(file, `cannot decode image (${(err as Error).message})`, 'use a PNG, JPEG, WebP, TIFF or GIF file');
  }
  const { width, height, channels } = out.info;
  if (channels !== 3) throw new FormatError(file, `decoded to ${channels} channels, expected 3`);
  const bytes = out.data;
  const data = new Float32Array(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = bytes[i] / 255;
  return { data, width, height };
}

/** Float RGB in [0,1] (NHWC, batch 1) -> 8-bit, rounded to nearest; values outside [0,1] are clamped. */
export function toUint8(data: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    out[i] = v > 0 ? (v < 1 ? Math.round(v * 255) : 255) : 0;
  }
  return out;
}

const crc32: (data: Uint8Array, initial?: number) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function' ? (zlib as unknown as { crc32: (d: Uint8Array, v?: number) => number }).crc32 : crc32Table;

function crc32Table(data: Uint8Array, initial = 0): number {
  let c = ~initial >>> 0;
  for (let i = 0; i < data.length; i++) {
    c ^= data[i];
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function chunk(type: string, data: Uint8Array): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  out.set(data, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** An uncompressed iTXt chunk: keyword (1-79 Latin-1 chars), no language tag, UTF-8 text. */
function itxtChunk(keyword: string, text: string): Buffer {
  // eslint-disable-next-line no-control-regex
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword) || /^ | $| {2}/.test(keyword)) {
    throw new Error(`PNG text keyword ${JSON.stringify(keyword)} must be 1-79 printable Latin-1 characters without leading, trailing or double spaces`);
  }
  const data = Buffer.concat([Buffer.from(keyword, 'latin1'), Buffer.from([0, 0, 0, 0, 0]), Buffer.from(text, 'utf8')]);
  return chunk('iTXt', data);
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

interface PngChunk {
  type: string;
  start: number; // offset of the length field
  data: Buffer;
}

function pngChunks(bytes: Buffer, file: string): PngChunk[] {
  if (bytes.length < 8 || !bytes.subarray(0, 8).equals(PNG_SIGNATURE)) throw new FormatError(file, 'not a PNG file');
  const out: PngChunk[] = [];
  let p = 8;
  while (p + 12 <= bytes.length) {
    const len = bytes.readUInt32BE(p);
    const type = bytes.toString('latin1', p + 4, p + 8);
    if (p + 12 + len > bytes.length) throw new FormatError(file, `PNG chunk ${type} runs past the end of the file`, 'the file is truncated');
    out.push({ type, start: p, data: bytes.subarray(p + 8, p + 8 + len) });
    p += 12 + len;
    if (type === 'IEND') break;
  }
  return out;
}

/** Inserts iTXt chunks just before IEND of a PNG byte stream. */
export function addPngText(png: Buffer, text: Record<string, string>): Buffer {
  const entries = Object.entries(text);
  if (!entries.length) return png;
  const iend = pngChunks(png, '<png>').find((c) => c.type === 'IEND');
  if (!iend) throw new Error('PNG without IEND');
  return Buffer.concat([png.subarray(0, iend.start), ...entries.map(([k, v]) => itxtChunk(k, v)), png.subarray(iend.start)]);
}

/** Encodes float RGB in [0,1] (NHWC, batch 1, 3 channels) as PNG bytes, with optional text chunks. */
export async function encodePng(data: ArrayLike<number>, width: number, height: number, text: Record<string, string> = {}): Promise<Buffer> {
  if (data.length !== width * height * 3) throw new Error(`image data has ${data.length} values, expected ${width}x${height}x3`);
  const png = await sharp(toUint8(data), { raw: { width, height, channels: 3 } }).png().toBuffer();
  return addPngText(png, text);
}

/** Writes a PNG atomically (temp file + rename); an existing file is only replaced with `force`. */
export async function writePng(
  file: string,
  data: ArrayLike<number>,
  width: number,
  height: number,
  text: Record<string, string> = {},
  opts: { force?: boolean } = {},
): Promise<void> {
  writeFileAtomic(file, await encodePng(data, width, height, text), opts.force);
}

/** The text chunks (tEXt, zTXt, iTXt) of a PNG file, keyword -> text (later chunks win on repeated keywords). */
export function readPngText(file: string): Record<string, string> {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new FormatError(file, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : `cannot read (${(err as Error).message})`);
  }
  const out: Record<string, string> = {};
  for (const c of pngChunks(bytes, file)) {
    const d = c.data;
    const nul = d.indexOf(0);
    if (nul < 0) continue;
    const key = d.toString('latin1', 0, nul);
    try {
      if (c.type === 'tEXt') out[key] = d.toString('latin1', nul + 1);
      else if (c.type === 'zTXt') out[key] = zlib.inflateSync(d.subarray(nul + 2)).toString('latin1');
      else if (c.type === 'iTXt') {
        const compressed = d[nul + 1] === 1;
        const lang = d.indexOf(0, nul + 3);
        const translated = d.indexOf(0, lang + 1);
        if (lang < 0 || translated < 0) continue;
        const body = d.subarray(translated + 1);
        out[key] = (compressed ? zlib.inflateSync(body) : body).toString('utf8');
      }
    } catch (err) {
      throw new FormatError(file, `PNG text chunk "${key}" is corrupt (${(err as Error).message})`);
    }
  }
  return out;
}
