// The graph front end (src/engine/graph): tracing a model function on Ops<Sym> (shape inference and checks), autodiff
// on the traced graph, the interpreter, and replay. On the tfjs cpu backend: interpret(tfOps, trace(f)) must equal f
// on tfOps and the interpreted backward must equal tf.valueAndGrad of f. The tiny VQGAN decoder and the generate loss
// against the fixtures are in graph-vqgan.test.ts and graph-generate.test.ts.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { gradient } from '../src/engine/graph/autodiff.ts';
import { interpret } from '../src/engine/graph/interpret.ts';
import { GraphBuilder, type Sym } from '../src/engine/graph/trace.ts';
import type { Ops } from '../src/engine/ops.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { encodeImagePixels, inputResolution } from '../src/models/clip.ts';
import { clipWeightTensors, loadClip } from '../src/models/clip-load.ts';
import { checkTraced, normal } from './graph-check.ts';
import { assertClose, fixture } from './helpers.ts';

before(async () => void (await initBackend('cpu')));
after(async () => void (await shutdownBackend()));

// ---------------------------------------------------------------------------------------------------------------
// A function using every method of Ops.

const E = {
  k3: normal(1, 3 * 3 * 4 * 4, 0.3),
  k1: normal(2, 1 * 1 * 4 * 6, 0.4),
  b4: normal(3, 4, 0.1),
  gamma: Float32Array.from(normal(4, 4, 0.2), (v) => 1 + v),
  beta: normal(5, 4, 0.1),
  lin: normal(6, 4 * 12, 0.4),
  linB: normal(7, 12, 0.1),
  codebook: normal(8, 8 * 4),
  m35: normal(9, 3 * 5),
  stop: Float32Array.of(0.2),
};

function everyOp<T>(o: Ops<T>, x: T): T {
  const c = (d: Float32Array, s: number[]) => o.constant(d, s);
  const [n, h, w, ch] = o.shape(x); // [1, 4, 4, 4]
  const parts: T[] = [];
  const out = (t: T) => parts.push(o.reshape(t, [-1]));

  // Convolutions: 'same', stride-2 'same', stride-2 'valid' after a pad, explicit padding, 1x1 without bias.
  const k3 = c(E.k3, [3, 3, 4, 4]);
  const c1 = o.conv2d(x, k3, c(E.b4, [4]));
  const c2 = o.conv2d(x, k3, undefined, { stride: 2, pad: 'same' });
  out(o.conv2d(o.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]], 0.5), k3, c(E.b4, [4]), { stride: 2, pad: 'valid' }));
  out(o.conv2d(x, k3, c(E.b4, [4]), { pad: [1, 0, 2, 1] }));
  // Stride leftovers (input rows no output reads) and a padding wider than the filter reach.
  out(o.conv2d(x, k3, undefined, { stride: 2, pad: 'valid' }));
  out(o.conv2d(x, k3, undefined, { stride: 2, pad: [3, 0, 0, 2] }));
  out(o.conv2d(c1, c(E.k1, [1, 1, 4, 6]), undefined, { pad: 'valid' }));
  const gn = o.checkpoint!((t) => o.swish(o.groupNorm(t, 2, c(E.gamma, [4]), c(E.beta, [4]), 1e-5)), c1);
  const hsum = o.add(gn, o.upsampleNearest2x(c2));
  out(o.resize(hsum, 6, 3, { mode: 'bicubic', alignCorners: false }));
  out(o.resize(hsum, 3, 5, { mode: 'bilinear', alignCorners: true }));
  out(o.resize(hsum, 4, 4, { mode: 'bilinear', alignCorners: false }));

  // Sequences: layerNorm, linear, attention (causal and not), gelu / quickGelu.
  const seq = o.layerNorm(o.reshape(hsum, [n, h * w, ch]), c(E.gamma, [4]), c(E.beta, [4]), 1e-5);
  const qkv = o.linear(seq, c(E.lin, [4, 12]), c(E.linB, [12]));
  const head = (i: number) => o.transpose(o.reshape(o.slice(qkv, [0, 0, 4 * i], [n, h * w, 4]), [n, h * w, 2, 2]), [0, 2, 1, 3]);
  out(o.gelu(o.attention(head(0), head(1), head(2), { causal: true })));
  out(o.quickGelu(o.attention(head(0), o.slice(head(1), [0, 0, 0, 0], [n, 2, 9, 2]), o.slice(head(2), [0, 0, 0, 0], [n, 2, 9, 2]), { scale: 0.3, causal: true })));
  out(o.attention(head(2), head(0), head(1)));
  out(o.linear(seq, c(E.lin, [4, 12])));

  // A vector quantizer: argmin on stopGradient, oneHot, straight-through; gatherRows of a table that depends on x.
  const flat = o.reshape(x, [-1, ch]); // [16, 4]
  const cb = c(E.codebook, [8, 4]);
  const dist = o.sub(o.add(o.sum(o.square(o.stopGradient(flat)), [1], true), o.sum(o.square(cb), [1])), o.scale(o.matmul(o.stopGradient(flat), cb, false, true), 2));
  const idx = o.argmin(dist, 1);
  out(o.straightThrough(o.matmul(o.oneHot(idx, 8), cb), flat));
  out(o.straightThrough(o.scale(o.zeros([16, 4]), 2), o.sum(flat, [0], true)));
  out(o.gatherRows(o.scale(flat, 2), o.constantInt(Int32Array.of(3, 0, 3, 15, 7), [5])));
  out(o.oneHot(o.argmax(flat, 1), 4));
  // Index arithmetic (floor, toInt) and noise: neither passes gradient; x * floor(x) does, as floor(x).
  out(o.gatherRows(flat, o.toInt(o.floor(o.scale(o.sigmoid(o.reshape(o.slice(flat, [0, 1], [16, 1]), [16])), 15.99)))));
  out(o.add(o.mul(flat, o.floor(o.scale(flat, 2))), o.randomNormal(o.constantInt(Int32Array.of(17, -4), [2]), [16, 4])));

  // Elementwise, reductions, layout.
  const s = o.sigmoid(flat);
  out(o.exp(o.scale(flat, 0.5)));
  out(o.log(o.addScalar(o.square(flat), 1)));
  out(o.sqrt(o.addScalar(o.abs(flat), 0.1)));
  out(o.asin(o.addScalar(o.scale(s, 1.8), -0.9)));
  out(o.mul(o.sign(flat), o.neg(flat)));
  out(o.div(flat, o.addScalar(s, 0.5)));
  out(o.div(o.constant(Float32Array.of(1, 2, 3, 4), [4]), o.addScalar(o.square(flat), 1)));
  out(o.maximum(flat, c(E.stop, [])));
  out(o.minimum(o.transpose(flat, [1, 0]), o.constant(Float32Array.of(-0.3, 0.1, 0.4, 0), [4, 1])));
  out(o.minimum(o.maximum(flat, o.scale(s, 0.5)), o.addScalar(o.neg(s), 1)));
  out(o.add(o.maximum(flat, o.scale(flat, 1)), o.minimum(o.scale(flat, 2), o.scale(flat, 2)))); // ties: a gets it all
  out(o.clamp(flat, -0.5, 0.7));
  out(o.clampWithGrad(flat, -0.5, 0.7));
  out(o.softmax(o.reshape(flat, [2, 8, 4])));
  out(o.mean(o.reshape(flat, [2, 8, 4]), [0, 2], true));
  out(o.mean(flat));
  out(o.sum(o.reshape(flat, [2, 8, 4]), [-1]));
  out(o.concat([o.slice(flat, [2, 1], [3, 2]), o.slice(flat, [0, 0], [3, 1])], 1));
  // matmul: every transpose combination, with broadcasting batch axes.
  const a3 = o.reshape(o.slice(flat, [0, 0], [6, 4]), [2, 3, 4]);
  const m35 = c(E.m35, [3, 5]);
  out(o.matmul(a3, o.reshape(m35, [1, 3, 5]), true, false)); // [2,4,5]
  out(o.matmul(o.transpose(m35, [1, 0]), a3)); // [5,3] x [2,3,4]
  out(o.matmul(a3, a3, false, true));
  out(o.matmul(a3, o.reshape(m35, [5, 3]), true, true)); // [2,4,3]
  out(o.mul(o.reshape(o.sum(flat, [1]), [16, 1]), o.reshape(o.mean(flat, [0]), [1, 4])));
  return o.concat(parts, 0);
}

describe('trace + autodiff + interpret on tfjs cpu', () => {
  test('a function using every Ops method', async () => {
    const b = new GraphBuilder();
    const xData = normal(42, 64);
    await checkTraced('every op', b, { tf: (x) => everyOp(tfOps, x), graph: (bb, x) => everyOp(bb, x) }, xData, [1, 4, 4, 4], { y: 1e-6, grad: 1e-6 });
    // Every ir kind the tracer and autodiff make appears (argmin/argmax/oneHot in the forward; *Grad in the backward).
    const kinds = new Set(b.graph.nodes.map((n) => n.op));
    for (const k of ['conv2d', 'conv2dGradInput', 'groupNorm', 'groupNormGrad', 'layerNorm', 'layerNormGrad', 'resize', 'resizeGrad', 'upsample2x', 'softmax', 'softmaxGrad', 'gatherRows', 'gatherRowsGrad', 'oneHot', 'cast', 'randomNormal', 'argmin', 'argmax', 'pad', 'slice', 'concat', 'transpose', 'matmul']) {
      assert.ok(kinds.has(k as never), `no ${k} node`);
    }
    const fns = new Set(b.graph.nodes.filter((n) => n.op === 'binary').map((n) => (n.attrs as { fn: string }).fn));
    for (const f of ['swishGrad', 'geluGrad', 'quickGeluGrad', 'clampGrad', 'clampWithGradGrad', 'asinGrad', 'greaterEqual', 'greater']) assert.ok(fns.has(f), `no binary ${f}`);
  });
});

describe('slice gradients', () => {
  test('slices that tile their input along one axis (q, k, v) get one concat back; others pads; both equal tfjs', async () => {
    // q/k/v-like: three slices tiling the last axis (in a scrambled use order), plus one that covers part of it.
    const qkv = <T>(o: Ops<T>, x: T): T => {
      const k = o.slice(x, [0, 0, 4], [2, 3, 4]);
      const q = o.slice(x, [0, 0, 0], [2, 3, 4]);
      const v = o.slice(x, [0, 0, 8], [2, 3, 4]);
      return o.add(o.mul(q, o.exp(k)), o.square(v));
    };
    const b = new GraphBuilder();
    await checkTraced('q/k/v slices', b, { tf: (x) => qkv(tfOps, x), graph: (bb, x) => qkv(bb, x) }, normal(7, 72), [2, 3, 12], { y: 1e-6, grad: 1e-6 });
    assert.ok(b.graph.nodes.some((n) => n.op === 'concat'), 'the gradient is a concat');
    assert.ok(!b.graph.nodes.some((n) => n.op === 'pad'), 'no zero-padded slice gradients');
    const partial = <T>(o: Ops<T>, x: T): T => o.add(o.slice(x, [0, 0, 0], [2, 3, 5]), o.slice(x, [0, 0, 3], [2, 3, 5]));
    const b2 = new GraphBuilder();
    await checkTraced('overlapping slices', b2, { tf: (x) => partial(tfOps, x), graph: (bb, x) => partial(bb, x) }, normal(8, 72), [2, 3, 12], { y: 1e-6, grad: 1e-6 });
    assert.ok(b2.graph.nodes.some((n) => n.op === 'pad'), 'overlapping slices: padded gradients');
  });
});

describe('tiny CLIP image encoder', () => {
  test('tiny CLIP image encoder (normalize + encode_image): forward and gradient equal tfjs', async (t) => {
    const file = fixture(t, 'tiny_clip_state.pt');
    if (!file) return;
    const clipTf = await loadClip(tfOps, file);
    const b = new GraphBuilder();
    const clipG = await loadClip(b, file);
    const r = inputResolution(clipTf.config);
    const pixels = Float32Array.from(normal(77, 2 * r * r * 3), (v) => 0.5 + 0.2 * v);
    await checkTraced(
      'CLIP encodeImagePixels',
      b,
      { tf: (x) => encodeImagePixels(tfOps, clipTf.weights, clipTf.config, x), graph: (bb, x) => encodeImagePixels(bb, clipG.weights, clipG.config, x) },
      pixels,
      [2, r, r, 3],
      { y: 1e-6, grad: 1e-5 },
    );
    tf.dispose(clipWeightTensors(clipTf.weights));
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Replay.

describe('replay', () => {
  test('same structure with new constant data replays and yields the data; a structural change is detected', () => {
    const b = new GraphBuilder();
    const x = b.input('x', [2, 3]);
    const w = b.constant(Float32Array.from([1, 2, 3, 4, 5, 6]), [3, 2]); // a weight: made before the recorded call
    // sum((x @ w + noise) * scale, 1) + sum(big)
    const f = (o: Ops<Sym>, noise: Float32Array, scale: number, big: Float32Array) =>
      o.add(o.sum(o.mul(o.add(o.matmul(x, w), o.constant(noise, [2, 2])), o.constant(Float32Array.of(scale), [])), [1]), o.sum(o.constant(big, [300]), [0], true));
    const big = new Float32Array(300).fill(1);
    const rec = b.record((o) => f(o, Float32Array.of(1, 2, 3, 4), 0.5, big));
    const nodes = b.graph.nodes.length;
    // New noise (new array, new values), the same scalar in a new array, the same big array: only the noise changes.
    const noise2 = Float32Array.of(5, 6, 7, 8);
    const r = b.replay(rec, (o) => f(o, noise2, 0.5, big));
    assert.ok(r.ok, r.ok ? '' : r.reason);
    assert.equal(r.value.id, rec.value.id);
    assert.deepEqual([...r.consts.values()], [noise2]);
    const noiseNode = [...r.consts.keys()][0];
    assert.equal((b.graph.nodes[noiseNode].attrs as { data: Float32Array }).data, noise2, 'the graph holds the new data');
    // A changed scalar is reported, a new big array even with the same values is (values are not compared).
    const r2 = b.replay(rec, (o) => f(o, noise2, 0.25, new Float32Array(300).fill(1)));
    assert.ok(r2.ok);
    assert.equal(r2.consts.size, 2);
    // Structural changes: another shape, another attr, a missing op, an extra op.
    const bad = [
      b.replay(rec, (o) => o.add(o.sum(o.mul(o.add(o.matmul(x, w), o.constant(noise2, [2, 2])), o.constant(Float32Array.of(1), [])), [0]), o.sum(o.constant(big, [300]), [0], true))),
      b.replay(rec, (o) => o.add(o.sum(o.mul(o.add(o.matmul(x, w, false, false), o.constant(noise2, [2, 2])), o.constant(Float32Array.of(1), [])), [1]), o.sum(o.constant(big, [300]), [0], false))),
      b.replay(rec, (o) => o.sum(o.mul(o.add(o.matmul(x, w), o.constant(noise2, [2, 2])), o.constant(Float32Array.of(1), [])), [1])),
      b.replay(rec, (o) => o.neg(f(o, noise2, 0.5, big))),
      b.replay(rec, (o) => o.add(o.sum(o.mul(o.sub(o.matmul(x, w), o.constant(noise2, [2, 2])), o.constant(Float32Array.of(1), [])), [1]), o.sum(o.constant(big, [300]), [0], true))),
    ];
    for (const [i, res] of bad.entries()) {
      assert.ok(!res.ok, `case ${i} replayed`);
      assert.match(res.reason, /structure changed/, `case ${i}`);
    }
    assert.equal(b.graph.nodes.length, nodes, 'replays append nothing');
    assert.equal((b.graph.nodes[noiseNode].attrs as { data: Float32Array }).data, noise2, 'a failed replay changes nothing');
  });
});

describe('tracing checks and autodiff scope', () => {
  test('bad shapes, dtypes and foreign tensors are rejected with the op and the shapes', () => {
    const b = new GraphBuilder();
    const x = b.input('x', [2, 3]);
    const img = b.input('img', [1, 4, 4, 3]);
    const idx = b.constantInt(Int32Array.of(0, 1), [2]);
    const other = new GraphBuilder().input('x', [2, 3]);
    const cases: [() => unknown, RegExp][] = [
      [() => b.reshape(x, [4, 2]), /reshape: cannot reshape \[2,3\]/],
      [() => b.reshape(x, [-1, -1]), /more than one -1/],
      [() => b.matmul(x, x), /matmul: \[2,3\] x \[2,3\]: inner sizes 3 and 2 differ/],
      [() => b.add(x, b.zeros([3, 2])), /add: shapes \[2,3\] and \[3,2\] do not broadcast/],
      [() => b.conv2d(img, b.zeros([3, 3, 4, 8]), undefined), /conv2d: filter \[3,3,4,8\] for input \[1,4,4,3\]/],
      [() => b.conv2d(img, b.zeros([3, 3, 3, 8]), b.zeros([3])), /conv2d: bias \[3\], expected \[8\]/],
      [() => b.conv2d(img, b.zeros([7, 7, 3, 8]), undefined, { pad: 'valid' }), /larger than the padded input/],
      [() => b.concat([x, b.zeros([3, 3])], 1), /concat: shapes/],
      [() => b.slice(x, [1, 0], [2, 3]), /slice: begin \[1,0\] size \[2,3\] outside \[2,3\]/],
      [() => b.transpose(x, [0, 0]), /not a permutation/],
      [() => b.groupNorm(img, 2, b.zeros([3]), b.zeros([3]), 1e-5), /3 channels do not split into 2 groups/],
      [() => b.layerNorm(x, b.zeros([2]), b.zeros([3]), 1e-5), /layerNorm: gamma \[2\]/],
      [() => b.gatherRows(x, b.zeros([2])), /indices must be int32/],
      [() => b.exp(idx), /exp: needs a float32 tensor/],
      [() => b.sum(x, [2]), /axis 2 out of range/],
      [() => b.linear(x, b.zeros([2, 4])), /linear: weight \[2,4\]/],
      [() => b.attention(b.zeros([1, 4, 8]), b.zeros([1, 5, 7]), b.zeros([1, 5, 8])), /attention: q \[1,4,8\], k \[1,5,7\]/],
      [() => b.upsampleNearest2x(x), /upsampleNearest2x: needs a float32 NHWC tensor/],
      [() => b.straightThrough(x, b.zeros([3, 3])), /gradient target \[3,3\] does not broadcast/],
      [() => b.constant(new Float32Array(5), [2, 3]), /5 values for shape \[2,3\]/],
      [() => b.add(x, other), /tensor %0 does not belong to this graph/],
      [() => b.clamp(x, 1, 0), /clamp: lo 1 > hi 0/],
      [() => b.input('x', [1]), /input: 'x' exists/],
    ];
    for (const [f, re] of cases) assert.throws(f, re);
    assert.throws(() => b.read(x), /read: %0 is traced, it has no values/);
    assert.throws(() => b.readInt(idx), /no values/);
  });

  test('identity layout ops make no node; constants are one node per array', () => {
    const b = new GraphBuilder();
    const x = b.input('x', [2, 3]);
    assert.equal(b.reshape(x, [2, -1]), x);
    assert.equal(b.transpose(x, [0, 1]), x);
    assert.equal(b.slice(x, [0, 0], [-1, 3]), x);
    assert.equal(b.concat([x], 0), x);
    assert.equal(b.sum(x, []), x);
    const data = new Float32Array(6);
    const c1 = b.constant(data, [2, 3]);
    assert.equal(b.constant(data, [2, 3]), c1);
    assert.equal(b.graph.nodes[b.constant(data, [3, 2]).id].op, 'reshape');
    assert.equal(b.zeros([2, 3]), b.zeros([2, 3]));
    assert.equal(b.graph.nodes.length, 4); // input, const, reshape, zeros const
  });

  test('autodiff differentiates only paths from the input to the loss', () => {
    const b = new GraphBuilder();
    const x = b.input('x', [2, 3]);
    const w = b.constant(Float32Array.from([1, 2, 3, 4, 5, 6]), [3, 2]);
    const unused = b.exp(x); // depends on x, not on the loss
    const weightOnly = b.sigmoid(b.constant(Float32Array.of(0.1, 0.2), [1, 2])); // on the loss, not on x
    const loss = b.sum(b.mul(b.matmul(b.scale(x, 3), w), weightOnly));
    const start = b.graph.nodes.length;
    gradient(b, loss, x);
    const backward = b.graph.nodes.slice(start);
    const touched = new Set(backward.flatMap((n) => n.inputs));
    assert.ok(!touched.has(unused.id), 'no VJP of the unused branch');
    // d/dx: seed, sum's broadcast (reshape + zeros + add), mul by the other factor, matmul with w, scale.
    assert.deepEqual(backward.map((n) => n.op), ['const', 'reshape', 'const', 'binary', 'binary', 'matmul', 'unary']);
    // A loss that does not depend on x: its gradient is zeros, nothing else.
    const n0 = b.graph.nodes.length;
    const g0 = gradient(b, b.sum(weightOnly), x);
    assert.deepEqual(g0.shape, [2, 3]);
    assert.equal(b.graph.nodes.length, n0 + 2); // the sum and the zeros const
  });

  test('max over axes (an ir kind no Ops method makes): value and gradient equal tf.max', async () => {
    const b = new GraphBuilder();
    const x = b.input('x', [3, 4, 5]);
    const loss = b.sum(b.mul(b.max(x, [0, 2], true), b.constant(normal(3, 4), [1, 4, 1])));
    b.output('loss', loss);
    b.output('grad', gradient(b, loss, x));
    const xT = tf.tensor(normal(8, 60), [3, 4, 5]);
    const wT = tf.tensor(normal(3, 4), [1, 4, 1]);
    const ref = tf.valueAndGrad((t: tf.Tensor) => tf.sum(tf.mul(tf.max(t, [0, 2], true), wT)))(xT);
    const got = tf.tidy(() => interpret(tfOps, b.graph, { x: xT }));
    assertClose(await got.loss.data(), await ref.value.data(), 1e-6, 'max loss');
    assertClose(await got.grad.data(), await ref.grad.data(), 1e-6, 'max grad');
    tf.dispose([xT, wT, ref.value, ref.grad, got.loss, got.grad]);
  });
});
