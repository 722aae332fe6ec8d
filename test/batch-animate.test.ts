// vqclip batch and vqclip animate on the built-in demo models: one image per prompt line (checked up front),
// numbered animation frames that follow the story, and the camera move itself.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import sharp from 'sharp';
import { animateSettingsFromArgs } from '../src/cli/commands/animate.ts';
import { runBatch } from '../src/cli/commands/batch.ts';
import { UserError } from '../src/cli/errors.ts';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { tfExecutor } from '../src/engine/tfjs-ops.ts';
import { readPngText } from '../src/io/image.ts';
import { moveCamera, runAnimation } from '../src/pipelines/animate.ts';
import { loadGenerateModels } from '../src/pipelines/generate-models.ts';
import { readRunRecord } from '../src/pipelines/generate-run.ts';

let dir: string;
let backend: string;

describe('batch and animate', () => {
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-batch-'));
    backend = (await initBackend('wasm')).backend;
  });
  after(async () => {
    await shutdownBackend();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('batch: one image per prompt line, models loaded once, every line checked before the first image', async () => {
    const file = path.join(dir, 'prompts.txt');
    fs.writeFileSync(file, '# two images\na red apple\n\na blue pear:1|blurry:-0.5\n');
    const results = await runBatch({ file, builtin: true, size: [32], iterations: 2, cutn: 2, seed: '3', output: path.join(dir, 'out'), backend: 'wasm' }, { backend });
    assert.equal(results.length, 2);
    assert.deepEqual(results.map((r) => path.basename(r.output)), ['a-red-apple.png', 'a-blue-pear.png']);
    assert.equal(readRunRecord(results[1].output).settings.prompts, 'a blue pear:1|blurry:-0.5');
    assert.equal(readRunRecord(results[0].output).settings.seed, 3);
    const bad = path.join(dir, 'bad.txt');
    fs.writeFileSync(bad, 'fine\nbroken:0\n');
    await assert.rejects(runBatch({ file: bad, builtin: true, size: [32], iterations: 1, cutn: 2, output: path.join(dir, 'bad-out'), backend: 'wasm' }, { backend }), (e: unknown) => e instanceof UserError && /bad\.txt:2/.test((e as Error).message));
    assert.ok(!fs.existsSync(path.join(dir, 'bad-out')), 'nothing was generated for a file with a bad line');
  });

  test('moveCamera: identity keeps the picture; a zoom magnifies about the centre', () => {
    const w = 8;
    const data = new Float32Array(w * w * 3).map((_, i) => (Math.floor(i / 3) % w) / (w - 1)); // a horizontal ramp
    const same = moveCamera({ data, width: w, height: w }, { zoom: 1, rotate: 0, translateX: 0, translateY: 0 });
    assert.ok(same.data.every((v, i) => Math.abs(v - data[i]) < 1e-6));
    const zoomed = moveCamera({ data, width: w, height: w }, { zoom: 2, rotate: 0, translateX: 0, translateY: 0 });
    const row = Array.from({ length: w }, (_, x) => zoomed.data[(3 * w + x) * 3]);
    assert.ok(Math.abs(row[w - 1] - row[0] - 0.5) < 1e-6, `a 2x zoom halves the ramp's span: ${row}`);
  });

  test('animate: numbered frames in a new folder, story phrases take turns, settings in every frame', async () => {
    const s = animateSettingsFromArgs({ prompt: 'a seed^a tree', builtin: true, size: [32], iterations: 2, cutn: 2, seed: '5', frameCount: 3, iterationsPerFrame: 1, changePromptEveryFrames: 2, backend: 'wasm' });
    const models = await loadGenerateModels(tfExecutor, { builtin: true }, { encoder: true });
    try {
      const frames: string[] = [];
      const r = await runAnimation(tfExecutor, models, s, { outDir: path.join(dir, 'anim'), backend, onEvent: (e) => frames.push(e.path) });
      assert.equal(r.frames, 3);
      assert.deepEqual(fs.readdirSync(r.dir).sort(), ['00000.png', '00001.png', '00002.png']);
      assert.deepEqual(frames.map((f) => readPngText(f).Description), ['a seed', 'a seed', 'a tree']);
      const meta = JSON.parse(readPngText(frames[1]).vqclip);
      assert.equal(meta.kind, 'animate');
      assert.equal(meta.frame, 1);
      const a = await sharp(frames[0]).raw().toBuffer();
      const b = await sharp(frames[1]).raw().toBuffer();
      assert.notDeepEqual(a, b, 'frames evolve');
      const again = await runAnimation(tfExecutor, models, s, { outDir: path.join(dir, 'anim'), backend });
      assert.equal(path.basename(again.dir), 'anim-2', 'a second run never reuses the folder');
      assert.deepEqual(await sharp(path.join(again.dir, '00002.png')).raw().toBuffer(), await sharp(frames[2]).raw().toBuffer(), 'same seed, same frames');
    } finally {
      models.dispose();
    }
    assert.throws(() => animateSettingsFromArgs({ prompt: 'x', zoom: 5, backend: 'wasm' }), /--zoom/);
  });
});
