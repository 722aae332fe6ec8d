// The reconstruct / encode / decode commands, called as functions (run...) and once as a real process.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { UserError } from '../src/cli/errors.ts';
import { FormatError } from '../src/formats/host-tensor.ts';
import { runReconstruct } from '../src/cli/commands/reconstruct.ts';
import { runEncode } from '../src/cli/commands/encode.ts';
import { runDecode } from '../src/cli/commands/decode.ts';
import { readCodes } from '../src/io/codes.ts';
import { readImage, readPngText, toUint8, writePng } from '../src/io/image.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import { reconstruct, weightTensors } from '../src/models/vqgan.ts';
import { FIXTURES } from './helpers.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-cli-'));
const ckpt = path.join(FIXTURES, 'tiny_vqgan.ckpt');
const yaml = path.join(FIXTURES, 'tiny_vqgan.yaml');
const have = fs.existsSync(ckpt) && fs.existsSync(yaml) && fs.existsSync(path.join(FIXTURES, 'vqgan_reference.safetensors'));
const skip = have ? false : `fixtures not found in ${FIXTURES}`;
const out = (name: string) => path.join(tmp, name);

/** A size x size test picture (smooth colours, so the tiny model uses a handful of codes). */
async function picture(name: string, w: number, h: number): Promise<string> {
  const d = new Float32Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) d[(y * w + x) * 3 + c] = 0.5 + 0.4 * Math.sin(x / 5 + y / 7 + c * 2);
  const file = out(name);
  await writePng(file, d, w, h);
  return file;
}

describe('vqclip reconstruct / encode / decode', { skip }, () => {
  let img32: string;
  let img30: string;
  before(async () => {
    await initBackend('cpu');
    img32 = await picture('p32.png', 32, 32);
    img30 = await picture('p30.png', 30, 30);
  });
  after(async () => {
    await shutdownBackend();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('reconstruct writes what the model computes, with PSNR and codes used', async () => {
    const lines: string[] = [];
    const r = await runReconstruct({ image: img32, ckpt, output: out('r32.png') }, (l) => lines.push(l));
    assert.equal(r.width, 32);
    assert.equal(r.height, 32);
    assert.deepEqual(r.grid, [8, 8]);
    assert.equal(r.nEmbed, 64);
    assert.ok(r.codesUsed >= 1 && r.codesUsed <= 64);
    assert.ok(Number.isFinite(r.psnr));
    assert.match(lines.join('\n'), /codes: \d+ distinct of 64 on a 8x8 grid; PSNR -?\d+\.\d\d dB/);
    assert.equal(readPngText(r.output).Software, 'vqclip');
    // Independently: the model on the decoded input, mapped [-1,1] -> [0,1] -> 8 bits, must equal the file.
    const m = await loadVqgan(tfOps, ckpt);
    const src = await readImage(img32);
    const y = tf.tidy(() => tf.clipByValue(tf.div(tf.add(reconstruct(tfOps, m.weights, tf.sub(tf.mul(tf.tensor(src.data, [1, 32, 32, 3]), 2), 1)).image, 1), 2), 0, 1));
    const expected = toUint8(await y.data());
    tf.dispose([y, ...weightTensors(m.weights)]);
    assert.deepEqual(toUint8((await readImage(r.output)).data), expected);
    // PSNR is against the input.
    let se = 0;
    const got = (await readImage(r.output)).data;
    for (let i = 0; i < got.length; i++) se += (got[i] - src.data[i]) ** 2;
    assert.ok(Math.abs(10 * Math.log10(got.length / se) - r.psnr) < 0.05, 'PSNR matches the written image');
  });

  test('encode -> decode (JSON and .npy) equals reconstruct', async () => {
    const j = await runEncode({ image: img32, ckpt, output: out('c.json') });
    const n = await runEncode({ image: img32, ckpt, output: out('c.npy') });
    assert.deepEqual(readCodes(j.output).indices, readCodes(n.output).indices);
    assert.deepEqual(readCodes(n.output).shape, [1, 8, 8]);
    const dj = await runDecode({ codes: j.output, ckpt, output: out('dj.png') });
    const dn = await runDecode({ codes: n.output, ckpt, output: out('dn.png') });
    assert.deepEqual([dj.width, dj.height], [32, 32]);
    const rec = fs.existsSync(out('r32.png')) ? out('r32.png') : (await runReconstruct({ image: img32, ckpt, output: out('r32b.png') })).output;
    const a = (await readImage(dj.output)).data;
    assert.deepEqual(a, (await readImage(dn.output)).data);
    assert.deepEqual(a, (await readImage(rec)).data, 'decode(encode(x)) == reconstruct(x)');
  });

  test('image sides must be multiples of the factor unless --fit pad|crop', async () => {
    await assert.rejects(runReconstruct({ image: img30, ckpt, output: out('r30.png') }), (err: unknown) => {
      assert.ok(err instanceof UserError);
      assert.match(err.message, /p30\.png: image is 30x30; both sides must be multiples of 4/);
      assert.match(err.hint ?? '', /--fit pad \(pad to 32x32\) or --fit crop \(crop to 28x28\)/);
      return true;
    });
    assert.equal(fs.existsSync(out('r30.png')), false);
    const pad = await runReconstruct({ image: img30, ckpt, output: out('r30pad.png'), fit: 'pad' });
    assert.deepEqual([pad.width, pad.height, (await readImage(pad.output)).width], [30, 30, 30]);
    const crop = await runReconstruct({ image: img30, ckpt, output: out('r30crop.png'), fit: 'crop' });
    assert.deepEqual([crop.width, crop.height, (await readImage(crop.output)).height], [28, 28, 28]);
    const codes = await runEncode({ image: img30, ckpt, output: out('c30.json'), fit: 'crop' });
    assert.deepEqual(codes.shape, [1, 7, 7]);
  });

  test('existing outputs are kept unless --force', async () => {
    const file = out('taken.png');
    fs.writeFileSync(file, 'mine');
    await assert.rejects(runReconstruct({ image: img32, ckpt, output: file }), (e: unknown) => e instanceof UserError && /taken\.png already exists/.test(e.message));
    assert.equal(fs.readFileSync(file, 'utf8'), 'mine');
    await runReconstruct({ image: img32, ckpt, output: file, force: true });
    assert.equal((await readImage(file)).width, 32);
  });

  test('missing files, bad config, bad codes are clear errors', async () => {
    await assert.rejects(runReconstruct({ image: out('none.png'), ckpt, output: out('x1.png') }), (e: unknown) => e instanceof FormatError && /none\.png: image not found/.test(e.message));
    await assert.rejects(runReconstruct({ image: img32, ckpt: out('none.ckpt'), output: out('x2.png') }), (e: unknown) => e instanceof FormatError && /none\.ckpt: not found/.test(e.message));
    await assert.rejects(runDecode({ codes: out('none.json'), ckpt, output: out('x3.png') }), (e: unknown) => e instanceof FormatError && /codes file not found/.test(e.message));
    const bad = out('bad.yaml');
    fs.writeFileSync(bad, fs.readFileSync(yaml, 'utf8').replace('embed_dim: 8', 'embed_dim: 4'));
    await assert.rejects(runReconstruct({ image: img32, ckpt, config: bad, output: out('x4.png') }), (e: unknown) => {
      assert.ok(e instanceof FormatError);
      assert.match(e.message, /weight "quant_conv\.weight" has shape \[8,8,1,1\] but the config implies \[4,8,1,1\]/);
      return true;
    });
    fs.writeFileSync(out('big.json'), JSON.stringify({ shape: [1, 2, 2], indices: [0, 1, 64, 3] }));
    await assert.rejects(runDecode({ codes: out('big.json'), ckpt, output: out('x5.png') }), /code 64 \(at position 2\) is outside this model's codebook of 64 entries/);
    fs.writeFileSync(out('other.json'), JSON.stringify({ shape: [1, 2, 2], indices: [0, 1, 2, 3], n_embed: 16384 }));
    await assert.rejects(runDecode({ codes: out('other.json'), ckpt, output: out('x6.png') }), /made for a codebook of 16384 entries, but this model has 64/);
    await assert.rejects(runEncode({ image: img32, ckpt, output: out('codes.txt') }), /must end in \.json or \.npy/);
    for (const f of ['x1', 'x2', 'x3', 'x4', 'x5', 'x6']) assert.equal(fs.existsSync(out(`${f}.png`)), false);
  });

  test('without --ckpt: the default model from the weights folder, or an error saying what to download and where', async () => {
    const saved = process.env.VQCLIP_WEIGHTS;
    const empty = out('empty-weights');
    fs.mkdirSync(empty);
    process.env.VQCLIP_WEIGHTS = empty;
    try {
      await assert.rejects(runReconstruct({ image: img32, output: out('x7.png') }), (e: unknown) => {
        assert.ok(e instanceof UserError);
        assert.match(e.message, /no --ckpt given, and the default model is not installed .*missing vqgan_imagenet_f16_16384\.ckpt and vqgan_imagenet_f16_16384\.yaml in .*empty-weights/);
        assert.match(e.hint ?? '', /empty-weights\/vqgan_imagenet_f16_16384\.ckpt {2}<- {2}https:\/\/heibox\.uni-heidelberg\.de\//);
        return true;
      });
      // Installed (here: the tiny model under the default names), it is used.
      fs.copyFileSync(ckpt, path.join(empty, 'vqgan_imagenet_f16_16384.ckpt'));
      fs.copyFileSync(yaml, path.join(empty, 'vqgan_imagenet_f16_16384.yaml'));
      const r = await runReconstruct({ image: img32, output: out('x8.png') });
      assert.equal(r.nEmbed, 64);
    } finally {
      if (saved === undefined) delete process.env.VQCLIP_WEIGHTS;
      else process.env.VQCLIP_WEIGHTS = saved;
    }
  });

  test('the real command: exit code 2 and a short message, no stack trace', () => {
    const run = (...args: string[]) => spawnSync(process.execPath, [path.join(root, 'src/bin.mjs'), ...args, '--backend', 'cpu'], { encoding: 'utf8', cwd: tmp, timeout: 60_000 });
    const size = run('reconstruct', img30, '--ckpt', ckpt, '-o', out('s.png'));
    assert.equal(size.status, 2, size.stderr);
    const lines = size.stderr.trim().split('\n');
    assert.match(lines[0], /^vqclip: .*p30\.png: image is 30x30; both sides must be multiples of 4 \(the model's downsampling factor\)$/);
    assert.match(lines[1] ?? '', /^ {2}fix: .*--fit pad/);
    assert.equal(lines.length, 2, size.stderr);
    const missing = run('reconstruct', out('nothing.png'), '--ckpt', ckpt);
    assert.equal(missing.status, 2, missing.stderr);
    assert.match(missing.stderr, /^vqclip: .*nothing\.png: image not found/);
    assert.doesNotMatch(missing.stderr + size.stderr, /\n\s+at /, 'no stack trace');
    const ok = run('decode', out('c.json'), '--ckpt', ckpt, '-o', out('spawned.png'));
    if (fs.existsSync(out('c.json'))) {
      assert.equal(ok.status, 0, ok.stderr);
      assert.match(ok.stdout, /wrote .*spawned\.png \(32x32/);
    }
  });
});

