// vqclip generate end to end on the built-in demo models (no fixtures needed): seed repeatability, the settings
// recorded in the PNG and replayed by --from, Ctrl-C + --resume continuing exactly, never overwriting or deleting
// finished images, and clear errors for bad prompts and sizes.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { UserError } from '../src/cli/errors.ts';
import { runGenerateCommand, type GenerateArgs } from '../src/cli/commands/generate.ts';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { readRunRecord, type GenerateEvent } from '../src/pipelines/generate-run.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let dir: string;
let backend: string;

async function pixels(file: string): Promise<Buffer> {
  return sharp(file).raw().toBuffer();
}

function args(extra: Partial<GenerateArgs>): GenerateArgs {
  return { builtin: true, prompt: 'a red apple|blurry:-0.5', size: [32], iterations: 4, saveEvery: 2, cutn: 3, seed: '7', backend: 'wasm', ...extra };
}

describe('vqclip generate (built-in models)', () => {
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-gen-'));
    backend = (await initBackend('wasm')).backend;
  });
  after(async () => {
    await shutdownBackend();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('same seed and settings give the same image; a second run never overwrites the first', async () => {
    const a = await runGenerateCommand(args({ output: path.join(dir, 'same.png') }), { backend });
    const b = await runGenerateCommand(args({ output: path.join(dir, 'same.png') }), { backend });
    assert.equal(a.output, path.join(dir, 'same.png'));
    assert.equal(b.output, path.join(dir, 'same-2.png'));
    assert.deepEqual(await pixels(a.output), await pixels(b.output));
    assert.equal(a.iteration, 4);
    assert.equal(a.losses.length, 2);
    const c = await runGenerateCommand(args({ output: path.join(dir, 'other.png'), seed: '8' }), { backend });
    assert.notDeepEqual(await pixels(a.output), await pixels(c.output), 'a different seed gives a different image');
  });

  test('the PNG records every setting; --from reproduces the image exactly, and flags given override it', async () => {
    const a = await runGenerateCommand(args({ output: path.join(dir, 'rec.png'), prompt: 'a lighthouse:1.5|fog:-0.3:0.9', noisePrompts: '3:0.2', lr: 0.2, cutMethod: 'original' }), { backend });
    const rec = readRunRecord(a.output);
    assert.equal(rec.settings.prompts, 'a lighthouse:1.5|fog:-0.3:0.9');
    assert.deepEqual(rec.settings.noisePrompts, ['3:0.2']);
    assert.equal(rec.settings.seed, 7);
    assert.equal(rec.settings.lr, 0.2);
    assert.equal(rec.settings.cutMethod, 'original');
    assert.equal(rec.iteration, 4);
    assert.equal(rec.backend, backend);
    assert.ok(rec.models.some((m) => m.role === 'vqgan') && rec.models.some((m) => m.role === 'clip'));
    const again = await runGenerateCommand({ from: a.output, output: path.join(dir, 'rec-again.png'), backend: 'wasm' }, { backend });
    assert.deepEqual(await pixels(again.output), await pixels(a.output));
    const longer = await runGenerateCommand({ from: a.output, iterations: 5, output: path.join(dir, 'rec-longer.png'), backend: 'wasm' }, { backend });
    assert.equal(readRunRecord(longer.output).settings.iterations, 5);
    assert.equal(readRunRecord(longer.output).settings.lr, 0.2);
  });

  test('an interrupted run saves its image and state; --resume continues exactly as an uninterrupted run', async () => {
    const whole = await runGenerateCommand(args({ output: path.join(dir, 'whole.png'), iterations: 5 }), { backend });
    const ac = new AbortController();
    const log = (e: GenerateEvent) => {
      if (e.type === 'step' && e.iteration === 2) ac.abort();
    };
    const part = await runGenerateCommand(args({ output: path.join(dir, 'part.png'), iterations: 5 }), { backend, signal: ac.signal, log });
    assert.equal(part.interrupted, true);
    assert.equal(part.iteration, 2);
    assert.ok(fs.existsSync(part.output) && fs.existsSync(part.resumeFile!));
    assert.equal(readRunRecord(part.output).iteration, 2);
    const done = await runGenerateCommand({ resume: part.resumeFile, backend: 'wasm' }, { backend });
    assert.equal(done.output, part.output);
    assert.equal(done.iteration, 5);
    assert.ok(!fs.existsSync(part.resumeFile!), 'the resume file is removed once the run is finished');
    assert.deepEqual(await pixels(done.output), await pixels(whole.output));
  });

  test('a failing run leaves earlier images untouched and no empty file behind', async () => {
    const first = path.join(dir, 'keep.png');
    fs.writeFileSync(first, 'finished work');
    await assert.rejects(
      runGenerateCommand(args({ output: first }), {
        backend,
        log: (e) => {
          if (e.type === 'start') throw new Error('disk full (simulated)');
        },
      }),
      /disk full/,
    );
    assert.equal(fs.readFileSync(first, 'utf8'), 'finished work');
    assert.ok(!fs.existsSync(path.join(dir, 'keep-2.png')), 'the claimed name is released');
  });

  test('bad prompts, sizes and options are clear UserErrors', async () => {
    const bad: [Partial<GenerateArgs>, RegExp][] = [
      [{ prompt: 'a cat:1:2:3' }, /cat/],
      [{ prompt: 'a cat:0' }, /weight/],
      [{ prompt: '' }, /no prompts/],
      [{ size: [30] }, /multiple of .* 4/],
      [{ size: ['big'] }, /--size/],
      [{ lr: -1 }, /--lr/],
      [{ optimizer: 'Adum' }, /Adum/],
      [{ cutMethod: 'magic' }, /magic/],
      [{ seed: 'x1' }, /seed/],
      [{ initImage: path.join(dir, 'missing.png') }, /missing\.png/],
    ];
    for (const [extra, re] of bad) {
      await assert.rejects(runGenerateCommand(args({ output: path.join(dir, 'bad.png'), ...extra }), { backend }), (err: unknown) => {
        assert.ok(err instanceof UserError || (err as Error).name === 'FormatError', `${JSON.stringify(extra)}: ${String(err)}`);
        assert.match((err as Error).message, re);
        return true;
      });
    }
    assert.ok(!fs.readdirSync(dir).some((f) => f.startsWith('bad')), 'no output file is made by a run that fails its checks');
  });

  test('Ctrl-C (SIGINT) stops a real run cleanly: exit 130, the image and a resume state are written', async () => {
    const out = path.join(dir, 'sigint.png');
    const child = spawn(process.execPath, ['src/bin.mjs', 'generate', '--builtin', 'a stormy sea', '-s', '32', '-i', '500', '--cutn', '2', '--save-every', '0', '-o', out, '--backend', 'wasm'], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no iteration within 60 s:\n${stderr}`)), 60_000);
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (/it \d+\/500/.test(stderr)) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    child.kill('SIGINT');
    assert.equal(await exited, 130, stderr);
    assert.match(stderr, /interrupted at iteration \d+/);
    const resume = out.replace(/\.png$/, '.resume.safetensors');
    assert.ok(fs.existsSync(out) && fs.existsSync(resume), stderr);
    assert.ok(readRunRecord(out).iteration > 0);
  });

  test('the CLI prints one line and exits 2 on a bad prompt; the demo command writes a PNG', () => {
    const bad = spawnSync(process.execPath, ['src/bin.mjs', 'generate', '--builtin', 'a cat:1:2:3', '-o', path.join(dir, 'cli.png')], { cwd: root, encoding: 'utf8' });
    assert.equal(bad.status, 2, bad.stderr);
    assert.match(bad.stderr, /^vqclip: .*cat/m);
    assert.doesNotMatch(bad.stderr, /\n\s+at /, 'no stack trace');
    const demo = spawnSync(process.execPath, ['src/bin.mjs', 'demo', '--size', '32', '-i', '2', '--cutn', '2', '-o', path.join(dir, 'demo'), '--json', '--backend', 'wasm'], { cwd: root, encoding: 'utf8' });
    assert.equal(demo.status, 0, demo.stderr);
    const summary = JSON.parse(demo.stdout.trim().split('\n').pop()!);
    assert.ok(fs.existsSync(summary.output) && summary.output.startsWith(path.join(dir, 'demo')));
    assert.equal(summary.iteration, 2);
    assert.match(demo.stderr, /UNTRAINED/);
  });
});
