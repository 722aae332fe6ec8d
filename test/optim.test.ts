// Optimisers: the e2e Adam trajectory of generate.py (z after Adam + codebook clamp, 5 steps) and every optimiser
// against torch 1.13's update formulas written out in float64 here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { assertClose, maxAbsDiff, nchwToNhwc, reference } from './helpers.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import {
  initialOptimizerState,
  optimizerHyper,
  optimizerStep,
  parseOptimizerName,
  stateTensors,
  type OptimizerHyper,
  type OptimizerName,
  type OptimizerState,
} from '../src/pipelines/optimizers.ts';
import { Rng } from '../src/util/rng.ts';
import { UserError } from '../src/cli/errors.ts';

const o = tfOps;
await tf.setBackend(process.env.VQCLIP_TEST_BACKEND ?? 'cpu');

test('Adam lr 0.1 + codebook clamp reproduces e2e z_after for steps 0..4 (chained from z_before of step 0)', async (t) => {
  const ref = reference(t, 'e2e_reference.safetensors');
  if (!ref) return;
  const get = (k: string) => ref.get(k)!;
  const zShape = get('step0.z_before').shape; // [1, 8, 16, 16]
  const nhwc = (k: string) => nchwToNhwc(asFloat32(get(k)), get(k).shape);
  const zMin = o.constant(asFloat32(get('z_min')), [1, 1, 1, zShape[1]]);
  const zMax = o.constant(asFloat32(get('z_max')), [1, 1, 1, zShape[1]]);
  const shape = [zShape[0], zShape[2], zShape[3], zShape[1]];
  const hp = optimizerHyper('Adam', { lr: 0.1 });
  let z = o.constant(nhwc('step0.z_before'), shape);
  let state: OptimizerState<tf.Tensor> = initialOptimizerState();
  const diffs: string[] = [];
  for (let k = 0; k < 5; k++) {
    // Our chained z must also agree with the script's z at the start of this step.
    const dBefore = maxAbsDiff(await o.read(z), nhwc(`step${k}.z_before`));
    const grad = o.constant(nhwc(`step${k}.grad_z`), shape);
    const next = tf.tidy(() => {
      const r = optimizerStep(o, hp, state, z, grad);
      return { z: o.minimum(o.maximum(r.param, zMin), zMax), buffers: r.state.buffers, step: r.state.step };
    });
    for (const b of stateTensors(state)) b.dispose();
    z.dispose();
    grad.dispose();
    z = next.z;
    state = { step: next.step, buffers: next.buffers };
    const tol = k === 0 ? 2e-4 : 5e-4;
    const d = assertClose(await o.read(z), nhwc(`step${k}.z_after`), tol, `step${k}.z_after`);
    diffs.push(`step${k}: before ${dBefore.toExponential(2)} after ${d.toExponential(2)} (tol ${tol})`);
  }
  assert.equal(state.step, 5);
  t.diagnostic(`${tf.getBackend()}: ${diffs.join('; ')}`);
  z.dispose();
  zMin.dispose();
  zMax.dispose();
  for (const b of stateTensors(state)) b.dispose();
});

// ---- float64 reference: torch 1.13 torch/optim/*.py single-tensor formulas, written independently ----

interface Ref {
  step: number;
  buf: Record<string, Float64Array>;
}

function refStep(hp: OptimizerHyper, s: Ref, p: Float64Array, gIn: Float64Array): Float64Array {
  const n = p.length;
  const t = ++s.step;
  const zeros = () => new Float64Array(n);
  const b = s.buf;
  const out = Float64Array.from(p);
  const g = Float64Array.from(gIn, (x) => (hp.maximize ? -x : x));
  const decayIntoGrad = hp.name !== 'AdamW' && hp.weightDecay !== 0;
  for (let i = 0; i < n; i++) if (decayIntoGrad) g[i] += hp.weightDecay * p[i];
  const [b1, b2] = hp.betas;
  switch (hp.name) {
    case 'Adam':
    case 'AdamW':
      b.m ??= zeros();
      b.v ??= zeros();
      b.vmax ??= zeros();
      for (let i = 0; i < n; i++) {
        if (hp.name === 'AdamW') out[i] *= 1 - hp.lr * hp.weightDecay;
        b.m[i] = b1 * b.m[i] + (1 - b1) * g[i];
        b.v[i] = b2 * b.v[i] + (1 - b2) * g[i] * g[i];
        b.vmax[i] = Math.max(b.vmax[i], b.v[i]);
        const vhat = (hp.amsgrad ? b.vmax[i] : b.v[i]) / (1 - b2 ** t);
        out[i] -= (hp.lr / (1 - b1 ** t)) * b.m[i] / (Math.sqrt(vhat) + hp.eps);
      }
      return out;
    case 'Adagrad':
      b.sum ??= new Float64Array(n).fill(hp.initialAccumulatorValue);
      for (let i = 0; i < n; i++) {
        b.sum[i] += g[i] * g[i];
        out[i] -= (hp.lr / (1 + (t - 1) * hp.lrDecay)) * g[i] / (Math.sqrt(b.sum[i]) + hp.eps);
      }
      return out;
    case 'Adamax':
      b.m ??= zeros();
      b.u ??= zeros();
      for (let i = 0; i < n; i++) {
        b.m[i] = b1 * b.m[i] + (1 - b1) * g[i];
        b.u[i] = Math.max(b2 * b.u[i], Math.abs(g[i]) + hp.eps);
        out[i] -= (hp.lr / (1 - b1 ** t)) * b.m[i] / b.u[i];
      }
      return out;
    case 'RMSprop':
      b.v ??= zeros();
      b.ga ??= zeros();
      b.buf ??= zeros();
      for (let i = 0; i < n; i++) {
        b.v[i] = hp.alpha * b.v[i] + (1 - hp.alpha) * g[i] * g[i];
        let vt = b.v[i];
        if (hp.centered) {
          b.ga[i] = hp.alpha * b.ga[i] + (1 - hp.alpha) * g[i];
          vt -= b.ga[i] * b.ga[i];
        }
        const avg = Math.sqrt(vt) + hp.eps;
        if (hp.momentum > 0) {
          b.buf[i] = hp.momentum * b.buf[i] + g[i] / avg;
          out[i] -= hp.lr * b.buf[i];
        } else out[i] -= hp.lr * g[i] / avg;
      }
      return out;
    case 'SGD': {
      const first = !b.buf;
      b.buf ??= zeros();
      for (let i = 0; i < n; i++) {
        let d = g[i];
        if (hp.momentum !== 0) {
          b.buf[i] = first ? d : hp.momentum * b.buf[i] + (1 - hp.dampening) * d;
          d = hp.nesterov ? d + hp.momentum * b.buf[i] : b.buf[i];
        }
        out[i] -= hp.lr * d;
      }
      return out;
    }
  }
}

const CASES: [OptimizerName, Partial<Omit<OptimizerHyper, 'name'>>][] = [
  ['Adam', { lr: 0.1 }],
  ['Adam', { lr: 0.05, weightDecay: 0.1, amsgrad: true, betas: [0.8, 0.99] }],
  ['Adam', { lr: 0.1, maximize: true }],
  ['AdamW', { lr: 0.2 }],
  ['AdamW', { lr: 0.1, weightDecay: 0.3, amsgrad: true }],
  ['Adagrad', { lr: 0.5 }],
  ['Adagrad', { lr: 0.3, lrDecay: 0.1, weightDecay: 0.05, initialAccumulatorValue: 0.2 }],
  ['Adamax', { lr: 0.1 }],
  ['Adamax', { lr: 0.1, weightDecay: 0.2, betas: [0.5, 0.9] }],
  ['RMSprop', { lr: 0.02 }],
  ['RMSprop', { lr: 0.01, centered: true, momentum: 0.9, weightDecay: 0.01 }],
  ['RMSprop', { lr: 0.01, momentum: 0.5 }],
  ['SGD', { lr: 0.1 }],
  ['SGD', { lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 }],
  ['SGD', { lr: 0.1, momentum: 0.9, nesterov: true }],
];

test('every optimiser follows torch 1.13 formulas (float64 reference) over 6 steps', async (t) => {
  const n = 257;
  const lines: string[] = [];
  for (const [name, over] of CASES) {
    const hp = optimizerHyper(name, over);
    const rng = new Rng(11).fork(`${name}-${JSON.stringify(over)}`);
    const p0 = rng.fillNormal(new Float32Array(n));
    let pRef: Float64Array = Float64Array.from(p0);
    const sRef: Ref = { step: 0, buf: {} };
    let p = o.constant(p0, [n]);
    let state: OptimizerState<tf.Tensor> = initialOptimizerState();
    let worst = 0;
    for (let k = 0; k < 6; k++) {
      // Gradients of mixed scale, some tiny, as in VQGAN-CLIP (|grad_z| ~ 1e-3..1e-8).
      const g = Float32Array.from(rng.fillNormal(new Float64Array(n)), (x, i) => x * 10 ** -(i % 4));
      const gT = o.constant(g, [n]);
      const pBefore = await o.read(p);
      const r = optimizerStep(o, hp, state, p, gT);
      assert.deepEqual(await o.read(p), pBefore, 'input parameter unchanged');
      for (const b of stateTensors(state)) b.dispose();
      p.dispose();
      gT.dispose();
      p = r.param;
      state = r.state;
      pRef = refStep(hp, sRef, pRef, Float64Array.from(g));
      // float32 arithmetic vs float64: a few float32 ulps of the parameter plus 2e-6 of lr per step; centered
      // RMSprop computes sqrt(E[g^2] - E[g]^2), whose float32 cancellation costs another factor 10.
      const got = await o.read(p);
      const stepTol = (hp.centered ? 2e-5 : 2e-6) * hp.lr * (k + 1);
      for (let i = 0; i < n; i++) {
        const tol = 4e-6 * Math.abs(pRef[i]) + stepTol;
        const d = Math.abs(got[i] - pRef[i]);
        worst = Math.max(worst, d);
        assert.ok(d <= tol, `${name} ${JSON.stringify(over)} step ${k + 1} [${i}]: ${got[i]} vs ${pRef[i]} (diff ${d}, tol ${tol})`);
      }
    }
    assert.equal(state.step, 6);
    lines.push(`${name}${JSON.stringify(over)} ${worst.toExponential(1)}`);
    p.dispose();
    for (const b of stateTensors(state)) b.dispose();
  }
  t.diagnostic(`max |f32 - f64| per case: ${lines.join('; ')}`);
});

test('optimiser names, torch defaults and hyper-parameter checks', () => {
  assert.equal(parseOptimizerName('adamw'), 'AdamW');
  assert.equal(parseOptimizerName(' RMSPROP '), 'RMSprop');
  assert.throws(() => parseOptimizerName('DiffGrad'), (e: unknown) => e instanceof UserError && /unknown optimiser 'DiffGrad'/.test(e.message) && /Adam, AdamW/.test(e.hint ?? ''));
  assert.equal(optimizerHyper('AdamW').weightDecay, 1e-2);
  assert.equal(optimizerHyper('Adagrad').eps, 1e-10);
  assert.equal(optimizerHyper('Adamax').lr, 2e-3);
  assert.equal(optimizerHyper('RMSprop').alpha, 0.99);
  assert.equal(optimizerHyper('Adam', { lr: 0.1, eps: undefined }).eps, 1e-8, 'undefined overrides keep the default');
  for (const bad of [{ lr: -1 }, { eps: -1 }, { betas: [1, 0.9] as [number, number] }, { weightDecay: -0.1 }, { momentum: -1 }]) {
    assert.throws(() => optimizerHyper('Adam', bad), UserError, JSON.stringify(bad));
  }
  assert.throws(() => optimizerHyper('SGD', { nesterov: true }), /Nesterov/);
});
