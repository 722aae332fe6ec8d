// Image IO: decode/encode round trips through sharp, and PNG text chunks (iTXt written here, tEXt/zTXt/iTXt read).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, test } from 'node:test';
import sharp from 'sharp';
import { FormatError } from '../src/formats/host-tensor.ts';
import { UserError } from '../src/cli/errors.ts';
import { addPngText, encodePng, readImage, readPngText, toUint8, writePng } from '../src/io/image.ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-image-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function gradient(w: number, h: number): Float32Array {
  const d = new Float32Array(w * h * 3);
  for (let i = 0; i < d.length; i++) d[i] = ((i * 37) % 256) / 255;
  return d;
}

test('writePng -> readImage is exact for 8-bit values, NHWC order kept', async () => {
  const w = 5;
  const h = 3;
  const data = gradient(w, h);
  const file = path.join(tmp, 'rt.png');
  await writePng(file, data, w, h);
  const img = await readImage(file);
  assert.equal(img.width, w);
  assert.equal(img.height, h);
  assert.deepEqual(img.data, data);
  const meta = await sharp(file).metadata();
  assert.equal(meta.format, 'png');
  assert.equal(meta.width, w);
});

test('toUint8 rounds to nearest and clamps', () => {
  assert.deepEqual(Array.from(toUint8([-0.5, 0, 0.5 / 255, 0.49 / 255, 1, 7, 128.5 / 255])), [0, 0, 1, 0, 255, 255, 129]);
});

test('readImage: alpha dropped without compositing, grayscale expanded to RGB', async () => {
  const file = path.join(tmp, 'ga.png');
  // 2x1 gray+alpha: (gray 200, alpha 0), (gray 10, alpha 255)
  await sharp(Buffer.from([200, 0, 10, 255]), { raw: { width: 2, height: 1, channels: 2 } }).png().toFile(file);
  const img = await readImage(file);
  assert.deepEqual(Array.from(img.data, (v) => Math.round(v * 255)), [200, 200, 200, 10, 10, 10]);
});

test('text chunks: UTF-8 iTXt round trip, several keys, image unchanged', async () => {
  const text = { Software: 'vqclip', 'vqclip:settings': JSON.stringify({ prompt: 'a café — 猫 🐈', seed: 42, steps: [1, 2] }), Empty: '' };
  const data = gradient(4, 4);
  const file = path.join(tmp, 'text.png');
  await writePng(file, data, 4, 4, text);
  assert.deepEqual(readPngText(file), text);
  assert.deepEqual((await readImage(file)).data, data, 'pixels unchanged by the chunks');
  // libvips/libpng accept the file (CRCs right) and see the text too.
  const meta = await sharp(file).metadata();
  assert.equal(meta.width, 4);
});

test('CRC and chunk layout of an inserted iTXt chunk', async () => {
  const png = await encodePng(gradient(2, 2), 2, 2);
  const withText = addPngText(png, { k: 'v' });
  // Find the iTXt chunk and check length, type and CRC-32 over type+data independently.
  const at = withText.indexOf('iTXt', 0, 'latin1') - 4;
  const len = withText.readUInt32BE(at);
  const body = withText.subarray(at + 4, at + 8 + len);
  assert.equal(body.subarray(4).toString('latin1'), 'k\0\0\0\0\0v');
  assert.equal(withText.readUInt32BE(at + 8 + len), zlib.crc32(body));
  // IEND stays last.
  assert.equal(withText.subarray(-12).toString('latin1', 4, 8), 'IEND');
  assert.throws(() => addPngText(png, { '': 'x' }), /keyword/);
  assert.throws(() => addPngText(png, { ['k'.repeat(80)]: 'x' }), /keyword/);
});

test('readPngText reads tEXt, zTXt and compressed iTXt written by others', async () => {
  const png = await encodePng(gradient(2, 2), 2, 2);
  const crcChunk = (type: string, data: Buffer) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, 'latin1');
    data.copy(out, 8);
    out.writeUInt32BE(zlib.crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const iend = png.length - 12;
  const chunks = [
    crcChunk('tEXt', Buffer.from('Title\0caf\xe9', 'latin1')),
    crcChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0', 'latin1'), zlib.deflateSync(Buffer.from('zipped text', 'latin1'))])),
    crcChunk('iTXt', Buffer.concat([Buffer.from('Description\0\x01\0en\0Beschreibung\0', 'latin1'), zlib.deflateSync(Buffer.from('grüße', 'utf8'))])),
  ];
  const file = path.join(tmp, 'others.png');
  fs.writeFileSync(file, Buffer.concat([png.subarray(0, iend), ...chunks, png.subarray(iend)]));
  assert.deepEqual(readPngText(file), { Title: 'café', Comment: 'zipped text', Description: 'grüße' });
});

test('writePng never replaces a file without force; leaves no temp files', async () => {
  const file = path.join(tmp, 'keep.png');
  fs.writeFileSync(file, 'precious');
  await assert.rejects(writePng(file, gradient(1, 1), 1, 1), (err: unknown) => err instanceof UserError && /already exists/.test(err.message) && /--force/.test(err.hint ?? ''));
  assert.equal(fs.readFileSync(file, 'utf8'), 'precious');
  await writePng(file, gradient(1, 1), 1, 1, {}, { force: true });
  assert.equal((await readImage(file)).width, 1);
  assert.deepEqual(fs.readdirSync(tmp).filter((n) => n.includes('partial')), []);
});

test('bad files are FormatErrors naming the file', async () => {
  await assert.rejects(readImage(path.join(tmp, 'missing.png')), (err: unknown) => err instanceof FormatError && /missing\.png: image not found/.test(err.message));
  const junk = path.join(tmp, 'junk.png');
  fs.writeFileSync(junk, 'not an image');
  await assert.rejects(readImage(junk), (err: unknown) => err instanceof FormatError && /cannot decode image/.test(err.message));
  assert.throws(() => readPngText(junk), /not a PNG file/);
});
