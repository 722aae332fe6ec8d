// `vqclip score`: the numbers (against the parity-checked model functions on the same pixels), the table and JSON
// outputs, batching order, and the errors for missing images, weights and vocabulary - plus one spawned run of the
// real CLI. Uses the tiny CLIP fixture, its vocabulary read in place next to it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { runScore } from '../src/cli/commands/score.ts';
import { UserError } from '../src/cli/errors.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { FormatError, asFloat32 } from '../src/formats/host-tensor.ts';
import { encodePng } from '../src/io/image.ts';
import { cosineSimilarity, encodeImagePixels, encodeText } from '../src/models/clip.ts';
import { clipWeightTensors, loadClip } from '../src/models/clip-load.ts';
import { clipPixels } from '../src/models/clip-preprocess.ts';
import { ClipTokenizer } from '../src/models/clip-tokenizer.ts';
import { FIXTURES, nchwToNhwc } from './helpers.ts';

const CLIP = path.join(FIXTURES, 'tiny_clip_state.pt');
const VOCAB = path.join(FIXTURES, 'bpe_simple_vocab_16e6.txt.gz');
const REF = path.join(FIXTURES, 'clip_reference.safetensors');
const have = [CLIP, VOCAB, REF].every((f) => fs.existsSync(f));
const skip = have ? false : `fixtures missing in ${FIXTURES}`;

let dir = '';
const images: string[] = [];
/** The 8-bit pixels written to each image file (what the score must have been computed from). */
const written: { data: Uint8Array; width: number; height: number }[] = [];

before(async () => {
  await tf.setBackend('cpu');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-score-'));
  if (!have) return;
  const { readSafetensors } = await import('../src/formats/safetensors.ts');
  const img = readSafetensors(REF).get('image01')!;
  const square = nchwToNhwc(asFloat32(img), img.shape); // 32x32, the tiny model's input size
  const wide = Float32Array.from({ length: 48 * 40 * 3 }, (_, i) => ((i * 7919) % 256) / 255); // 48x40: resized + cropped
  for (const [name, data, w, h] of [['square.png', square, 32, 32], ['wide.png', wide, 48, 40]] as const) {
    const f = path.join(dir, name);
    fs.writeFileSync(f, await encodePng(data, w, h));
    images.push(f);
    written.push({ data: Uint8Array.from(data, (v) => Math.round(v * 255)), width: w, height: h });
  }
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('scores: cosine x 100, logits, softmax; table and JSON', { skip }, async () => {
  const prompts = ['a photo of a cat', 'a red apple', 'blurry'];
  const lines: string[] = [];
  const r = await runScore({ images: [...images, images[0]], prompt: prompts, clip: CLIP }, (l) => lines.push(l));

  // the same numbers straight from the model functions on the same 8-bit pixels
  const m = await loadClip(tfOps, CLIP);
  const tok = ClipTokenizer.fromBpeFile(VOCAB);
  const expected = tf.tidy(() => {
    const px = [...written, written[0]].map((w) => clipPixels(w, 32));
    const data = new Float32Array(px.length * px[0].length);
    px.forEach((p, i) => data.set(p, i * p.length));
    const img = encodeImagePixels(tfOps, m.weights, m.config, tf.tensor(data, [px.length, 32, 32, 3]));
    return cosineSimilarity(tfOps, img, encodeText(tfOps, m.weights, m.config, tok.tokenize(prompts)));
  });
  const cos = (await expected.data()) as Float32Array;
  expected.dispose();
  const logitScale = Math.exp((await m.weights.logitScale.data())[0]);
  tf.dispose(clipWeightTensors(m.weights));

  assert.equal(r.score.length, 3);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      assert.ok(Math.abs(r.score[i][j] - 100 * cos[i * 3 + j]) < 1e-4, `score[${i}][${j}]`);
      assert.ok(Math.abs(r.logits[i][j] - logitScale * cos[i * 3 + j]) < 1e-4, `logits[${i}][${j}]`);
    }
    assert.ok(Math.abs(r.probs[i].reduce((a, b) => a + b, 0) - 1) < 1e-9);
  }
  assert.deepEqual(r.score[2], r.score[0], 'the same image scores the same');
  assert.ok(Math.abs(r.logitScale - 1 / 0.07) < 1e-3, 'logit_scale = ln(1/0.07) in the fixture');
  assert.match(lines[0], /^CLIP ViT-w128\/8 \(2 layers, 32 px\) from .*tiny_clip_state\.pt$/);
  assert.match(lines[2], /^image\s+\[1\]\s+\[2\]\s+\[3\]$/);
  assert.match(lines[3], new RegExp(`^square\\.png\\s+${r.score[0][0].toFixed(2).replace('.', '\\.')} \\(\\d+%\\)`));
  assert.equal(lines[lines.length - 3], '[1] a photo of a cat');

  const json: string[] = [];
  await runScore({ images: [images[0]], prompt: ['a photo of a cat'], clip: CLIP, json: true }, (l) => json.push(l));
  const parsed = JSON.parse(json.join('\n'));
  assert.deepEqual(Object.keys(parsed).sort(), ['clip', 'images', 'logitScale', 'logits', 'model', 'probs', 'prompts', 'score']);
  assert.ok(Math.abs(parsed.score[0][0] - r.score[0][0]) < 1e-9);
});

test('clear errors: missing image, weights, vocabulary; over-long prompt', { skip }, async () => {
  await assert.rejects(runScore({ images: [path.join(dir, 'nope.png')], prompt: ['x'], clip: CLIP }), (e: unknown) => e instanceof FormatError && e.file.endsWith('nope.png') && /image not found/.test(e.problem));
  await assert.rejects(runScore({ images, prompt: ['x'], clip: path.join(dir, 'ViT-B-32.pt') }), (e: unknown) => e instanceof UserError && /CLIP weights not found/.test(e.message) && /openaipublic/.test(e.hint ?? ''));
  await assert.rejects(runScore({ images, prompt: [], clip: CLIP }), /no prompts/);
  const long = Array(80).fill('word').join(' ');
  await assert.rejects(runScore({ images, prompt: [long], clip: CLIP }), (e: unknown) => e instanceof UserError && /CLIP reads at most 77/.test(e.message));
  const r = await runScore({ images: [images[0]], prompt: [long], clip: CLIP, truncate: true });
  assert.equal(r.score[0].length, 1);

  // a model with no vocabulary beside it (a link to the fixture, run from a folder without weights/)
  const lonely = path.join(dir, 'lonely');
  fs.mkdirSync(lonely);
  fs.symlinkSync(CLIP, path.join(lonely, 'model.pt'));
  const projectVocab = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../weights/bpe_simple_vocab_16e6.txt.gz');
  if (!fs.existsSync(projectVocab) && !process.env.VQCLIP_WEIGHTS) {
    const cwd = process.cwd();
    process.chdir(lonely);
    try {
      await assert.rejects(runScore({ images, prompt: ['x'], clip: path.join(lonely, 'model.pt') }), (e: unknown) => e instanceof UserError && /bpe_simple_vocab_16e6\.txt\.gz was not found/.test(e.message) && /github\.com\/openai\/CLIP/.test(e.hint ?? ''));
    } finally {
      process.chdir(cwd);
    }
  }
});

test('the CLI: `vqclip score` prints the table; a missing model exits 2 with the fix', { skip }, () => {
  const bin = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../src/bin.mjs');
  const ok = spawnSync(process.execPath, [bin, '--backend', 'cpu', 'score', images[0], '--prompt', 'a cat', '--prompt', 'a dog', '--clip', CLIP], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /square\.png\s+-?\d+\.\d\d \(\d+%\)\s+-?\d+\.\d\d \(\d+%\)/);
  const bad = spawnSync(process.execPath, [bin, '--backend', 'cpu', 'score', images[0], '--prompt', 'a cat', '--clip', path.join(dir, 'ViT-B-32.pt')], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /vqclip: CLIP weights not found: .*ViT-B-32\.pt\n  fix: download https:\/\/openaipublic/);
  assert.doesNotMatch(bad.stderr, /at .*\.ts:\d+/, 'no stack trace');
});
