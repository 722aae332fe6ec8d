// The cutters' op structure depends only on their settings, never on their random draws: a compiled plan traces a
// generate step once and replays it every step (src/engine/graph/trace.ts, GraphBuilder.replay), with crops, warps,
// coins, jitter order and noise entering as constant data. For every cut method and augmentation: trace with one
// step's rng, replay with ten others (each must keep the structure), and run the replayed graph (interpret.ts on
// tfjs cpu) against makeCutouts on tfjs with the same rng, so the new data is the right data.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { interpret } from '../src/engine/graph/interpret.ts';
import { GraphBuilder } from '../src/engine/graph/trace.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { AUGMENT_NAMES, augment, augmentSpecs, type AugmentSpec } from '../src/pipelines/augment.ts';
import { CUT_METHODS, makeCutouts, type CutoutConfig } from '../src/pipelines/cutouts.ts';
import { Rng } from '../src/util/rng.ts';
import { maxAbsDiff } from './helpers.ts';

await tf.setBackend('cpu');

const [H, W, S, N] = [20, 24, 8, 4];
const STEPS = 10;
const pixels = new Rng(3).fillUniform(new Float32Array(H * W * 3));
const stepRng = (k: number) => new Rng(7).fork('cutouts').fork(k);

const configs: { label: string; cfg: CutoutConfig }[] = [
  ...CUT_METHODS.map((method) => ({ label: `${method} (default augments)`, cfg: { method, cutSize: S, cutn: N, cutPow: 1 } })),
  ...AUGMENT_NAMES.map((a) => ({ label: `latest [${a}]`, cfg: { method: 'latest' as const, cutSize: S, cutn: N, cutPow: 1, augments: [a] } })),
  { label: 'latest, every augment', cfg: { method: 'latest', cutSize: S, cutn: N, cutPow: 1, augments: ['Re', 'Ji', 'Gn', 'Ro', 'Af', 'Pe', 'Cr', 'Er'] } },
  { label: 'nrupdated, cut_pow 2', cfg: { method: 'nrupdated', cutSize: S, cutn: N, cutPow: 2, augments: ['Af', 'Ji', 'Gn', 'Er'] } },
];

for (const { label, cfg } of configs) {
  test(`${label}: ${STEPS} steps replay the traced structure, with each step's data`, async (t) => {
    const b = new GraphBuilder();
    const image = b.input('image', [1, H, W, 3]);
    const rec = b.record((o) => makeCutouts(o, image, cfg, stepRng(0)));
    b.output('cuts', rec.value);
    const x = tfOps.constant(pixels, [1, H, W, 3]);
    const first = await tfOps.read(makeCutouts(tfOps, x, cfg, stepRng(0)));
    let worst = 0;
    for (let k = 1; k <= STEPS; k++) {
      const r = b.replay(rec, (o) => makeCutouts(o, image, cfg, stepRng(k)));
      assert.ok(r.ok, `step ${k}: ${r.ok ? '' : r.reason}`);
      assert.ok(r.consts.size > 0, `step ${k}: no constant changed`);
      const want = await tfOps.read(makeCutouts(tfOps, x, cfg, stepRng(k)));
      const got = await tfOps.read(interpret(tfOps, b.graph, { image: x }).cuts);
      worst = Math.max(worst, maxAbsDiff(got, want));
      assert.ok(maxAbsDiff(got, want) <= 1e-5, `step ${k}: replayed graph vs tfjs ${maxAbsDiff(got, want)}`);
      assert.ok(maxAbsDiff(want, first) > 1e-3, `step ${k}: the same cutouts as step 0`);
    }
    t.diagnostic(`${b.graph.nodes.length} nodes; replayed graph vs tfjs: max abs diff ${worst.toExponential(2)}`);
    tf.dispose(x);
  });
}

test('original: per step only int32 crop indices change (the crop table is the same array, uploaded once)', () => {
  const cfg: CutoutConfig = { method: 'original', cutSize: S, cutn: N, cutPow: 1 };
  const b = new GraphBuilder();
  const image = b.input('image', [1, H, W, 3]);
  const rec = b.record((o) => makeCutouts(o, image, cfg, stepRng(0)));
  for (let k = 1; k <= 3; k++) {
    const r = b.replay(rec, (o) => makeCutouts(o, image, cfg, stepRng(k)));
    assert.ok(r.ok, `step ${k}: ${r.ok ? '' : r.reason}`);
    const changed = [...r.consts.values()];
    assert.ok(changed.length > 0 && changed.every((d) => d instanceof Int32Array), `step ${k}: ${changed.map((d) => `${d.constructor.name}(${d.length})`)}`);
    assert.ok(changed.reduce((n, d) => n + d.length, 0) <= N * (H + W), `step ${k}: more than the crop indices`);
  }
});

test('every augmentation: applied to every sample (p = 1) or to none (p = 0) makes the same ops', () => {
  const cases: AugmentSpec[][] = [...AUGMENT_NAMES.map((a) => augmentSpecs([a])), augmentSpecs(['Af', 'Pe', 'Ji', 'Er']), augmentSpecs(['Re', 'Gn'], 'nrupdated')];
  for (const specs of cases) {
    const withP = (p: number) => specs.map((s) => ('p' in s ? { ...s, p } : s));
    for (const shared of [true, false]) {
      const b = new GraphBuilder();
      const x = b.input('x', [shared ? 1 : N, S, S, 3]);
      const rec = b.record((o) => augment(o, x, N, withP(1), new Rng(1)));
      const name = `${specs.map((s) => s.name).join(' ')} (${shared ? 'one shared image' : 'a batch'})`;
      for (const p of [0, 0.5]) {
        const r = b.replay(rec, (o) => augment(o, x, N, withP(p), new Rng(2)));
        assert.ok(r.ok, `${name}, p = ${p}: ${r.ok ? '' : r.reason}`);
      }
    }
  }
});
