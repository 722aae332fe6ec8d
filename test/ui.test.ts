// The terminal UI: line parsing, the half-block preview, and the App driven by a scripted run (ink-testing-library).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import React from 'react';
import { render } from 'ink-testing-library';
import { App, parseLine } from '../src/cli/ui/app.tsx';
import { downscale, pictureLines } from '../src/cli/ui/preview.ts';
import type { GenerateArgs } from '../src/cli/commands/generate.ts';
import type { GenerateEvent, RunSummary } from '../src/pipelines/generate-run.ts';
import { DEFAULT_SETTINGS } from '../src/pipelines/generate.ts';

const tick = (ms = 30) => new Promise((r) => setTimeout(r, ms));

/** Waits (up to 5 s: ink throttles renders, and a loaded machine is slow) until the last frame matches. */
async function frameMatching(ui: { lastFrame(): string | undefined }, re: RegExp): Promise<string> {
  for (let waited = 0; waited < 5000; waited += 20) {
    const f = ui.lastFrame() ?? '';
    if (re.test(f)) return f;
    await tick(20);
  }
  assert.fail(`no frame matched ${re}; last frame:\n${ui.lastFrame()}`);
}

test('a typed line becomes generate arguments: words are the prompt, flags as on the command line', () => {
  const a = parseLine('a red apple:1|blurry:-0.5 -i 20 --seed 5 -s 128 64 --cut-method original', { builtin: true, backend: 'wasm' });
  assert.equal(a.prompt, 'a red apple:1|blurry:-0.5');
  assert.equal(a.iterations, 20);
  assert.equal(a.seed, '5');
  assert.deepEqual(a.size, [128, 64]);
  assert.equal(a.cutMethod, 'original');
  assert.equal(a.builtin, true);
  assert.equal(parseLine('just words', {}).iterations, undefined);
});

test('the preview keeps the aspect ratio and draws two pixels per cell with 24-bit colours', () => {
  const w = 4;
  const h = 2;
  const data = new Float32Array(w * h * 3);
  for (let x = 0; x < w; x++) data[(0 * w + x) * 3] = 1; // top row red, bottom row black
  const lines = pictureLines({ data, width: w, height: h }, 80, 40);
  assert.equal(lines.length, 1);
  assert.equal((lines[0].match(/▀/g) ?? []).length, 4);
  assert.match(lines[0], /\x1b\[38;2;255;0;0m\x1b\[48;2;0;0;0m▀/);
  const big = pictureLines({ data: new Float32Array(64 * 32 * 3), width: 64, height: 32 }, 16, 16);
  assert.equal(big.length, 4, '64x32 in 16 columns: 16x8 pixels, 4 rows');
  const avg = downscale({ data: Float32Array.from([0, 0, 0, 1, 1, 1]), width: 2, height: 1 }, 1, 1);
  assert.deepEqual(Array.from(avg), [0.5, 0.5, 0.5]);
});

test('the App runs a prompt, shows progress and losses, and Esc stops the run', async () => {
  const calls: GenerateArgs[] = [];
  let aborted = false;
  const run = async (args: GenerateArgs, signal: AbortSignal, emit: (e: GenerateEvent) => void): Promise<RunSummary> => {
    calls.push(args);
    const settings = { ...DEFAULT_SETTINGS, prompts: args.prompt!, seed: 9, iterations: 100 };
    emit({ type: 'start', output: 'outputs/x.png', settings, models: [], backend: 'wasm', engine: 'tfjs', lossNames: ['a red apple'], fromIteration: 0, sideX: 64, sideY: 64 });
    emit({ type: 'step', iteration: 10, iterations: 100, losses: [0.8123], lossNames: ['a red apple'], total: 0.8123, itPerSec: 2.5, etaSeconds: 36 });
    while (!signal.aborted) await tick(10);
    aborted = true;
    emit({ type: 'interrupted', output: 'outputs/x.png', resumeFile: 'outputs/x.resume.safetensors', iteration: 10 });
    return { output: 'outputs/x.png', interrupted: true, iteration: 10, losses: [0.8123], lossNames: ['a red apple'], total: 0.8123, seconds: 1, seed: 9 };
  };
  const ui = render(React.createElement(App, { run, readPicture: async () => ({ data: new Float32Array(12), width: 2, height: 2 }), defaults: { builtin: true, backend: 'wasm' }, banner: 'test banner' }));
  await frameMatching(ui, /prompt›/);
  ui.stdin.write('a red apple -i 100');
  await frameMatching(ui, /a red apple -i 100/);
  ui.stdin.write('\r');
  const frame = await frameMatching(ui, /0\.8123 total/);
  assert.match(frame, /a red apple/);
  assert.match(frame, /10\/100/);
  assert.match(frame, /2\.50 it\/s/);
  assert.match(frame, /0\.8123/);
  assert.equal(calls[0].iterations, 100);
  ui.stdin.write('\x1b');
  const after = await frameMatching(ui, /prompt›/);
  assert.ok(aborted, 'Esc aborts the run');
  assert.match(after, /--resume outputs\/x\.resume\.safetensors/);
  ui.unmount();
});
