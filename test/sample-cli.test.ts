// `vqclip sample`: PNGs with their settings as text chunks, names that never overwrite, CLIP reranking, clear
// errors for bad input (in-process through runSample, plus one spawned run for the exit code and message).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { FormatError } from '../src/formats/host-tensor.ts';
import { UserError } from '../src/cli/errors.ts';
import { parseSize, runSample } from '../src/cli/commands/sample.ts';
import { readImage, readPngText } from '../src/io/image.ts';
import { clipWeightTensors, loadClip } from '../src/models/clip-load.ts';
import { loadClipTokenizer } from '../src/models/clip-tokenizer.ts';
import { rerank } from '../src/pipelines/rerank.ts';
import { fixture } from './helpers.ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-sample-'));
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

before(async () => void (await initBackend('cpu')));
after(async () => {
  await shutdownBackend();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('parseSize', () => {
  assert.deepEqual(parseSize('256'), { width: 256, height: 256 });
  assert.deepEqual(parseSize(64), { width: 64, height: 64 });
  assert.deepEqual(parseSize('512x384'), { width: 512, height: 384 });
  assert.throws(() => parseSize('big'), UserError);
});

test('writes PNGs with settings metadata, never overwriting; same seed, same pixels', async (t) => {
  const ckpt = fixture(t, 'tiny_transformer_cin.ckpt');
  if (!ckpt) return;
  const out = path.join(tmp, 'cin');
  const args = { ckpt, class: 3, n: 3, batchSize: 2, topK: 10, topP: 0.92, temperature: 1, seed: 5, output: out };
  const lines: string[] = [];
  const a = await runSample(args, (l) => lines.push(l));
  assert.equal(a.outputs.length, 3);
  assert.equal(a.seed, 5);
  assert.match(lines[0], /sampling 3 x 32x32 \(8x8 codes\) from tiny_transformer_cin.ckpt, class 3, seed 5/);
  const meta = JSON.parse(readPngText(a.outputs[1])['vqclip:sample']);
  assert.deepEqual(
    { ...meta },
    { command: 'sample', checkpoint: 'tiny_transformer_cin.ckpt', config: 'tiny_transformer_cin.yaml', class: 3, seed: 5, index: 1, n: 3, size: [32, 32], grid: [8, 8], topK: 10, topP: 0.92, temperature: 1, greedy: false },
  );
  const b = await runSample(args);
  assert.equal(new Set([...a.outputs, ...b.outputs]).size, 6, 'a second run writes new files');
  for (let i = 0; i < 3; i++) assert.deepEqual((await readImage(b.outputs[i])).data, (await readImage(a.outputs[i])).data, `sample ${i} reproduced`);
  // A larger size goes through the sliding window.
  const c = await runSample({ ...args, n: 1, size: '48x40', output: path.join(tmp, 'big') });
  const img = await readImage(c.outputs[0]);
  assert.deepEqual([img.width, img.height], [48, 40]);
});

test('--rerank keeps the best --keep samples by CLIP score, best first', async (t) => {
  const ckpt = fixture(t, 'tiny_transformer_uncond.ckpt');
  const clipFile = fixture(t, 'tiny_clip_state.pt');
  if (!ckpt || !clipFile) return;
  const out = path.join(tmp, 'rerank');
  const r = await runSample({ ckpt, n: 4, topK: 20, seed: 11, output: out, rerank: 'a photo of a cat', keep: 2, clip: clipFile });
  assert.equal(r.outputs.length, 2);
  assert.ok(r.scores![0] >= r.scores![1]);
  const metas = r.outputs.map((f) => JSON.parse(readPngText(f)['vqclip:sample']));
  assert.deepEqual(metas.map((m) => m.rerank.rank), [1, 2]);

  // The same scores from the pipeline function on all four samples (re-read from the PNGs written without rerank).
  const all = await runSample({ ckpt, n: 4, topK: 20, seed: 11, output: path.join(tmp, 'all') });
  const images = await Promise.all(all.outputs.map((f) => readImage(f)));
  const clip = await loadClip(tfOps, clipFile);
  try {
    const ranked = await rerank(tfOps, images, 'a photo of a cat', { config: clip.config, weights: clip.weights, tokenizer: loadClipTokenizer(clipFile) }, { batchSize: 3 });
    assert.deepEqual(ranked.slice(0, 2).map((x) => x.index), metas.map((m) => m.index));
    ranked.slice(0, 2).forEach((x, i) => assert.ok(Math.abs(x.score - r.scores![i]) < 1e-3, `score ${x.score} vs ${r.scores![i]}`));
    for (let i = 1; i < ranked.length; i++) assert.ok(ranked[i - 1].score >= ranked[i].score);
  } finally {
    tf.dispose(clipWeightTensors(clip.weights));
  }
});

test('bad input: clear errors before any sampling', async (t) => {
  const cin = fixture(t, 'tiny_transformer_cin.ckpt');
  const uncond = fixture(t, 'tiny_transformer_uncond.ckpt');
  const vq = fixture(t, 'tiny_vqgan.ckpt');
  const uncondYaml = fixture(t, 'tiny_transformer_uncond.yaml');
  if (!cin || !uncond || !vq || !uncondYaml) return;
  const out = path.join(tmp, 'bad');
  const err = (re: RegExp, type: new (...a: never[]) => Error = UserError) => (e: unknown) => e instanceof type && re.test(e.message);
  await assert.rejects(runSample({ ckpt: cin, class: 10, output: out }), err(/class 10 is out of range: this model has 10 classes/));
  await assert.rejects(runSample({ ckpt: cin, output: out }), err(/class-conditional: name a class/));
  await assert.rejects(runSample({ ckpt: uncond, class: 1, output: out }), err(/unconditional model: a class label does not apply/));
  await assert.rejects(runSample({ ckpt: uncond, size: 30, output: out }), err(/not a multiple of the model's downsampling factor 4/));
  await assert.rejects(runSample({ ckpt: uncond, size: '64x16', output: out }), err(/cannot cover it/));
  await assert.rejects(runSample({ ckpt: uncond, keep: 2, output: out }), err(/--keep only applies with --rerank/));
  await assert.rejects(runSample({ ckpt: uncond, rerank: 'x', keep: 9, n: 2, output: out }), err(/--keep 9 is more than the 2 samples/));
  await assert.rejects(runSample({ ckpt: uncond, topP: 2, n: 1, output: out }), err(/top-p must be in \[0, 1\]/));
  await assert.rejects(runSample({ ckpt: vq, output: out }), err(/describes a VQGAN first stage/, FormatError));
  await assert.rejects(runSample({ ckpt: vq, config: uncondYaml, output: out }), err(/holds no transformer weights/, FormatError));
  await assert.rejects(runSample({ output: out }), err(/needs a taming transformer checkpoint/));
  assert.ok(!fs.existsSync(out) || fs.readdirSync(out).length === 0, 'nothing written');
});

test('a prior too large for the wasm heap is refused before loading', async (t) => {
  const cin = fixture(t, 'tiny_transformer_cin.ckpt');
  const yaml = fixture(t, 'tiny_transformer_cin.yaml');
  if (!cin || !yaml) return;
  // The released cin_transformer's GPT shape with the tiny first stage: the check needs the config only.
  const big = path.join(tmp, 'big_cin.yaml');
  fs.writeFileSync(big, fs.readFileSync(yaml, 'utf8').replace('vocab_size: 64', 'vocab_size: 16384').replace('block_size: 80', 'block_size: 512').replace('n_layer: 2', 'n_layer: 48').replace('n_head: 2', 'n_head: 24').replace('n_embd: 32', 'n_embd: 1536'));
  await initBackend('wasm');
  try {
    await assert.rejects(runSample({ ckpt: cin, config: big, class: 1, output: path.join(tmp, 'wasm') }), (e: unknown) => e instanceof UserError && /5\.3 GiB of float32 weights do not fit the wasm backend's 4 GiB heap/.test(e.message));
  } finally {
    await initBackend('cpu');
  }
});

test('spawned: a bad class exits with code 2 and one line with the fix', (t) => {
  const cin = fixture(t, 'tiny_transformer_cin.ckpt');
  if (!cin) return;
  const r = spawnSync(process.execPath, [path.join(root, 'src/bin.mjs'), 'sample', '--backend', 'cpu', '--ckpt', cin, '--class', '12', '-o', path.join(tmp, 'spawn')], { encoding: 'utf8' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /^vqclip: class 12 is out of range: this model has 10 classes\n  fix: pass --class N with N in 0..9\n$/);
});
