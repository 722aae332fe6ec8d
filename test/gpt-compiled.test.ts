// The GPT prior's sampling step on the compiled WebGPU engine (software adapter in CI): gptCachedStep over a
// fixed-size key/value cache kept on the GPU (CompiledEngine.stepper) against tfjs cpu's gptStep, one token at a
// time and after a moved sliding window's prefill, and sampleCodes giving the same codes on both engines.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { runSample } from '../src/cli/commands/sample.ts';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { CompiledEngine } from '../src/engine/compiled.ts';
import type { Sym } from '../src/engine/graph/trace.ts';
import type { HostData, HostValue, Ops } from '../src/engine/ops.ts';
import { dataTensors } from '../src/engine/ops.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import {
  cacheSlots,
  fixedKvShape,
  gptCachedStep,
  gptStep,
  gptWeightTensors,
  kvTensors,
  loadPrior,
  type CacheSlots,
  type FixedKvCache,
  type KvCache,
  type Prior,
} from '../src/models/gpt.ts';
import { readImage } from '../src/io/image.ts';
import { weightTensors } from '../src/models/vqgan.ts';
import { sampleCodes } from '../src/pipelines/sample.ts';
import { FIXTURES, maxAbsDiff, missingFixtures, suiteDevice } from './helpers.ts';

const CKPT = 'tiny_transformer_cin.ckpt';
/** MANIFEST.md's GPT logits tolerance. */
const TOL = 2e-5;

/** gptStep on tfjs cpu: logits [B, vocab] of the last of `tokens` [B, t] after `cache`. */
function tfjsStep(p: Prior<tf.Tensor>, tokens: Int32Array, batch: number, cache?: KvCache<tf.Tensor>) {
  return tf.tidy(() => gptStep(tfOps, p.config.gpt, p.gpt, tfOps.constantInt(tokens, [batch, tokens.length / batch]), cache, { lastOnly: true }));
}

/** The fixed-cache step as a stepper spec (state k0, v0, k1, ...; data idx + cacheSlots). */
function cachedSpec<T>(p: Prior<T>) {
  const L = p.gpt.blocks.length;
  return (o: Ops<T>, s: Record<string, T>, d: Record<string, T>) => {
    const cache: FixedKvCache<T> = Array.from({ length: L }, (_, i) => ({ k: s[`k${i}`], v: s[`v${i}`] }));
    const r = gptCachedStep(o, p.config.gpt, p.gpt, d.idx, d as unknown as CacheSlots<T>, cache);
    const next: Record<string, T> = {};
    r.cache.forEach((kv, i) => Object.assign(next, { [`k${i}`]: kv.k, [`v${i}`]: kv.v }));
    return { reads: { logits: r.logits }, next };
  };
}

const stepData = (p: Prior<unknown>, tokens: Int32Array, batch: number, start: number, rows?: number): Record<string, HostData> => {
  const t = tokens.length / batch;
  const r = rows ?? t;
  const idx = new Int32Array(batch * r);
  for (let b = 0; b < batch; b++) idx.set(tokens.subarray(b * t, (b + 1) * t), b * r);
  return { idx: { data: idx, shape: [batch, r] }, ...cacheSlots(p.config.gpt, batch, start, t, r) };
};

describe('compiled GPT sampling step (software WebGPU) vs tfjs cpu', () => {
  const gpu = suiteDevice();
  let unavailable: string | undefined;
  let ref: Prior<tf.Tensor>;
  before(async () => {
    unavailable = missingFixtures([CKPT]) ?? gpu.unavailable;
    await initBackend('cpu');
    if (!unavailable) ref = await loadPrior(tfOps, `${FIXTURES}/${CKPT}`);
  });
  after(async () => {
    if (ref) tf.dispose([...gptWeightTensors(ref.gpt), ...weightTensors(ref.firstStage)]);
    await shutdownBackend();
  });

  test('decode steps, a moved window (prefill padded to the window) and steps after it match gptStep', async (t) => {
    if (unavailable) return t.skip(unavailable);
    const B = 2;
    const cfg = ref.config.gpt;
    const engine = new CompiledEngine(gpu.device!);
    const p = await loadPrior(engine.ops, `${FIXTURES}/${CKPT}`);
    const shape = fixedKvShape(cfg, B);
    const zeros: HostValue = { data: new Float32Array(shape.reduce((a, b) => a * b, 1)), shape };
    const state: Record<string, HostValue> = {};
    p.gpt.blocks.forEach((_, i) => (state[`k${i}`] = state[`v${i}`] = zeros));
    const stepper = engine.stepper({ step: cachedSpec<Sym>(p) }, state);
    // The reference engine runs the same model function too (eager, its cache as tensors).
    const eager = cachedSpec<tf.Tensor>(ref);
    let eagerState: Record<string, tf.Tensor> = Object.fromEntries(Object.keys(state).map((k) => [k, tf.zeros(shape)]));
    let cache: KvCache<tf.Tensor> | undefined;
    const diffs: string[] = [];
    try {
      const check = async (label: string, tokens: Int32Array, start: number, rows?: number) => {
        const data = stepData(ref, tokens, B, start, rows);
        const got = (await stepper.run(data)).logits;
        const old = cache;
        const r = tfjsStep(ref, tokens, B, start === 0 ? undefined : old);
        const keep = new Set(kvTensors(r.cache));
        tf.dispose(kvTensors(old).filter((x) => !keep.has(x)));
        cache = r.cache;
        const want = await r.logits.data();
        r.logits.dispose();
        const e = tf.tidy(() => eager(tfOps, eagerState, dataTensors(tfOps, data)));
        tf.dispose(Object.values(eagerState));
        eagerState = e.next;
        const eagerLogits = await e.reads.logits.data();
        e.reads.logits.dispose();
        assert.equal(got.length, B * cfg.vocabSize, `${label}: logits [B, vocab]`);
        const d = maxAbsDiff(got, want);
        const de = maxAbsDiff(eagerLogits, want);
        diffs.push(`${label} ${d.toExponential(1)} (tfjs gptCachedStep ${de.toExponential(1)})`);
        assert.ok(d <= TOL, `${label}: compiled vs gptStep max abs diff ${d} > ${TOL}`);
        assert.ok(de <= TOL, `${label}: tfjs gptCachedStep vs gptStep max abs diff ${de} > ${TOL}`);
      };
      const tok = (...rows: number[][]) => Int32Array.from(rows.flat());
      // Sequence order: the conditioning tokens (classes 3 and 8) at position 0, then one code per step.
      await check('pos 0', tok([3], [8]), 0);
      for (let s = 1; s <= 4; s++) await check(`pos ${s}`, tok([(7 * s) % 64], [(13 * s + 5) % 64]), s);
      // A moved window: 6 tokens recomputed from position 0, padded to the 64-token window (one prefill plan for
      // every context length), then single tokens after it: the cache rows 6.. still hold the old window's keys.
      await check('prefill 6 of 64', tok([3, 11, 60, 2, 9, 33], [8, 1, 1, 40, 17, 5]), 0, 64);
      for (let s = 6; s <= 8; s++) await check(`pos ${s}`, tok([(5 * s) % 64], [(3 * s + 1) % 64]), s);
      // Another moved window of another length: the same prefill plan.
      await check('prefill 3 of 64', tok([3, 4, 5], [8, 9, 10]), 0, 64);
      await check('pos 3 again', tok([6], [7]), 3);
      t.diagnostic(`max abs diff vs tfjs gptStep: ${diffs.join('; ')}`);
      t.diagnostic(`decode plan: ${stepper.last.dispatches} dispatches; plans ${stepper.planCount}`);
      assert.equal(stepper.planCount, 2, 'one decode plan and one prefill plan');
    } finally {
      stepper.destroy();
      engine.destroy();
      tf.dispose([...Object.values(eagerState), ...kvTensors(cache)]);
    }
  });

  test('sampleCodes: the same codes on both engines for a seed (sequence order and sliding window); another seed differs', async (t) => {
    if (unavailable) return t.skip(unavailable);
    const engine = new CompiledEngine(gpu.device!);
    try {
      const p = await loadPrior(engine.ops, `${FIXTURES}/${CKPT}`);
      const opts = { n: 3, batchSize: 2, classLabel: 4, topK: 20, topP: 0.95, temperature: 1.1, seed: 5 };
      const want = await sampleCodes(tfOps, ref, opts);
      const got = await sampleCodes(engine.ops, p, { ...opts, engine });
      assert.deepEqual(got, want);
      const [other] = await sampleCodes(engine.ops, p, { ...opts, n: 1, seed: 6, engine });
      assert.notDeepEqual(other, got[0], 'another seed, other codes');
      // A 9x8 grid: the 8x8 window moves along the rows (prefill) and codes continue it (decode).
      const grid: [number, number] = [9, 8];
      const w2 = await sampleCodes(tfOps, ref, { ...opts, n: 1, grid });
      const g2 = await sampleCodes(engine.ops, p, { ...opts, n: 1, grid, engine });
      assert.deepEqual(g2, w2);
    } finally {
      engine.destroy();
    }
  });
});

describe('vqclip sample --engine', () => {
  const gpu = suiteDevice();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-sample-engine-'));
  before(async () => void (await initBackend('cpu')));
  after(async () => {
    await shutdownBackend();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  test('compiled writes the same images as tfjs (same codes; decoded on the compiled engine)', async (t) => {
    const unavailable = missingFixtures([CKPT]) ?? gpu.unavailable;
    if (unavailable) return t.skip(unavailable);
    const args = { ckpt: `${FIXTURES}/${CKPT}`, class: 2, n: 1, topK: 10, seed: 9 };
    const a = await runSample({ ...args, output: path.join(tmp, 'tfjs') });
    const compiled = new CompiledEngine(gpu.device!);
    const lines: string[] = [];
    try {
      const b = await runSample({ ...args, output: path.join(tmp, 'compiled') }, (l) => lines.push(l), { name: 'compiled', ex: compiled.executor as never, compiled, destroy: () => {} });
      assert.match(lines[0], /compiled engine/);
      for (let i = 0; i < args.n; i++) {
        const [x, y] = [await readImage(a.outputs[i]), await readImage(b.outputs[i])];
        // 8-bit PNGs of images within 1e-4: at most one level apart.
        assert.ok(maxAbsDiff(x.data, y.data) <= 1 / 255 + 1e-6, `image ${i}`);
      }
    } finally {
      compiled.destroy();
    }
  });

  test('--engine compiled without webgpu, or an unknown engine, is a clear error', () => {
    const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
    const run = (...a: string[]) => spawnSync(process.execPath, [path.join(root, 'src/bin.mjs'), 'sample', '--ckpt', 'none.ckpt', ...a], { encoding: 'utf8' });
    const r = run('--backend', 'cpu', '--engine', 'compiled');
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--engine compiled needs the webgpu backend \(this run uses cpu\)\n  fix: add --backend webgpu, or use --engine tfjs/);
    const u = run('--backend', 'cpu', '--engine', 'fast');
    assert.equal(u.status, 2, u.stderr);
    assert.match(u.stderr, /unknown engine 'fast'\n  fix: choose one of auto, tfjs, compiled/);
  });
});
