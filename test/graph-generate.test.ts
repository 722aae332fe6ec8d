// The CLIP-guided generate loss traced (src/engine/graph): generate.ts's synth + losses with the tiny VQGAN and CLIP
// and the e2e fixture's cutout boxes; the interpreted autodiff gradient w.r.t. z must equal generate.py's step-0
// grad_z (MANIFEST.md tolerances). Replay of the same loss on later steps (new noise) and its host cost per node.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { gradient } from '../src/engine/graph/autodiff.ts';
import { interpret } from '../src/engine/graph/interpret.ts';
import { GraphBuilder, type ReplayResult, type Sym } from '../src/engine/graph/trace.ts';
import { dataTensors, type Executor, type Ops } from '../src/engine/ops.ts';
import { tfOps } from '../src/engine/tfjs-ops.ts';
import { asFloat32, asNumbers } from '../src/formats/host-tensor.ts';
import { encodeImagePixels, encodeText, inputResolution, type ClipConfig, type ClipWeights } from '../src/models/clip.ts';
import { clipWeightTensors, loadClip } from '../src/models/clip-load.ts';
import { ClipTokenizer } from '../src/models/clip-tokenizer.ts';
import { loadVqgan } from '../src/models/vqgan-load.ts';
import { decode, vectorQuantizeST, type VqganWeights } from '../src/models/vqgan.ts';
import { addCutoutNoise, drawCutoutNoise } from '../src/pipelines/augment.ts';
import { makeCutouts, makeCutoutsOrig, type CutBox } from '../src/pipelines/cutouts.ts';
import { promptLoss } from '../src/pipelines/generate.ts';
import { parseStory, type PromptSpec } from '../src/pipelines/prompts.ts';
import { Rng } from '../src/util/rng.ts';
import { maxAbs } from './graph-check.ts';
import { FIXTURES, assertClose, fixture, nchwToNhwc, nhwcToNchw, reference } from './helpers.ts';

before(async () => void (await initBackend('cpu')));
after(async () => void (await shutdownBackend()));

// ---------------------------------------------------------------------------------------------------------------
// The CLIP-guided generate loss (generate.ts synth + losses, 'original' cutouts with the fixture's boxes).

interface Target {
  spec: PromptSpec;
  embeds: Float32Array;
  shape: number[];
}

/** The cutouts [cutn, R, R, 3] of the image (R = CLIP's resolution). */
type Cutter = <T>(o: Ops<T>, image: T, size: number) => T;

/** 'original' cutouts with fixed boxes (the fixture's), plus generate.py's cutout noise when given an rng. */
const originalCuts =
  (boxes: CutBox[], noise?: Rng): Cutter =>
  (o, image, size) => {
    const cuts = makeCutoutsOrig(o, image, size, boxes);
    return noise ? addCutoutNoise(o, cuts, dataTensors(o, drawCutoutNoise(0.1, boxes.length, noise))) : cuts;
  };

/** generate.ts's per-prompt loss vector for one CLIP model of weight 1: Generation.synth, .losses (initWeight 0). */
function generateLosses<T>(o: Ops<T>, vq: VqganWeights<T>, clip: { weights: ClipWeights<T>; config: ClipConfig }, targets: Target[], z: T, cut: Cutter): T {
  const zq = vectorQuantizeST(o, z, vq.codebook);
  const image = o.clampWithGrad(o.scale(o.addScalar(decode(o, vq, zq), 1), 0.5), 0, 1);
  const cuts = cut(o, image, inputResolution(clip.config));
  const embeds = encodeImagePixels(o, clip.weights, clip.config, cuts);
  const ex = { ops: o } as Executor<T>; // promptLoss only uses the ops
  const losses = targets.map((t) => o.reshape(o.scale(promptLoss(ex, embeds, o.constant(t.embeds, t.shape), t.spec.weight, t.spec.stop), 1), [1]));
  return o.concat(losses, 0);
}

const E2E_FILES = ['e2e_reference.safetensors', 'tiny_vqgan.ckpt', 'tiny_vqgan.yaml', 'tiny_clip_state.pt', 'bpe_simple_vocab_16e6.txt.gz'];

async function e2eSetup(t: TestContext) {
  for (const f of E2E_FILES) if (!fixture(t, f)) return undefined;
  const ref = reference(t, 'e2e_reference.safetensors')!;
  const clipFile = path.join(FIXTURES, 'tiny_clip_state.pt');
  const clipTf = await loadClip(tfOps, clipFile);
  const tokenizer = ClipTokenizer.fromBpeFile(path.join(FIXTURES, 'bpe_simple_vocab_16e6.txt.gz'));
  const targets: Target[] = [];
  for (const spec of parseStory('a red apple:1|blurry:-0.5|a watercolor painting:0.8:1.212')[0]) {
    const e = tf.tidy(() => encodeText(tfOps, clipTf.weights, clipTf.config, tokenizer.tokenize([spec.text], { truncate: true })));
    targets.push({ spec, embeds: (await e.data()) as Float32Array, shape: e.shape });
    e.dispose();
  }
  tf.dispose(clipWeightTensors(clipTf.weights));
  const b = new GraphBuilder();
  const vq = await loadVqgan(b, path.join(FIXTURES, 'tiny_vqgan.ckpt'), path.join(FIXTURES, 'tiny_vqgan.yaml'), { encoder: false });
  const clip = await loadClip(b, clipFile);
  const zInit = ref.get('z_init')!;
  const [n, c, h, w] = zInit.shape;
  const nb = asNumbers(ref.get('cut_boxes_size_offx_offy')!);
  const boxes = Array.from({ length: nb.length / 3 }, (_, i) => ({ size: nb[3 * i], offsetX: nb[3 * i + 1], offsetY: nb[3 * i + 2] }));
  const z = b.input('z', [n, h, w, c]);
  return { ref, b, vq, clip, targets, z, boxes, zData: nchwToNhwc(asFloat32(zInit), zInit.shape), zShape: [n, h, w, c] };
}

describe('the generate loss, traced', () => {
  test('its gradient w.r.t. z equals the e2e fixture (step0.grad_z, losses, loss_total)', async (t) => {
    const s = await e2eSetup(t);
    if (!s) return;
    const { b, z } = s;
    const start = b.graph.nodes.length;
    const losses = generateLosses(b, s.vq.weights, s.clip, s.targets, z, originalCuts(s.boxes));
    const total = b.sum(losses);
    const fwd = b.graph.nodes.length - start;
    const grad = gradient(b, total, z);
    b.output('losses', losses);
    b.output('total', total);
    b.output('grad', grad);
    const zT = tf.tensor(s.zData, s.zShape);
    const got = tf.tidy(() => interpret(tfOps, b.graph, { z: zT }));
    const [gl, gt, gg] = await Promise.all([got.losses, got.total, got.grad].map((x) => x.data() as Promise<Float32Array>));
    const dl = assertClose(gl, s.ref.get('step0.losses')!, 2e-6, 'step0.losses');
    const dt = assertClose(gt, s.ref.get('step0.loss_total')!, 2e-6, 'step0.loss_total');
    const dg = assertClose(nhwcToNchw(gg, s.zShape), s.ref.get('step0.grad_z')!, 1e-6, 'step0.grad_z');
    console.log(`# generate loss: ${fwd} forward nodes, ${b.graph.nodes.length - start - fwd} backward; vs fixture: losses ${dl.toExponential(2)}, total ${dt.toExponential(2)}, grad_z ${dg.toExponential(2)} (max |grad_z| ${maxAbs(gg).toExponential(2)}, atol 1e-6)`);
    tf.dispose([zT, got.losses, got.total, got.grad]);
  });
});


describe('the generate loss, replayed', () => {
  test('later steps (new cutout noise, other crop boxes) replay with only the per-step constants changed; host cost per node', async (t) => {
    const s = await e2eSetup(t);
    if (!s) return;
    const { b, z } = s;
    const loss = (o: Ops<Sym>, cut: Cutter): Sym => o.sum(generateLosses(o, s.vq.weights, s.clip, s.targets, z, cut));
    const noiseAt = (step: number) => new Rng(1).fork('noise').fork(step);
    const rec = b.record((o) => loss(o, originalCuts(s.boxes, noiseAt(0))));
    const nodes = rec.end - rec.start;
    gradient(b, rec.value, z);
    // The per-step constants: the noise's seed (int32 [2]) and factors ([n, 1, 1, 1]: the noise itself is made by
    // o.randomNormal), and the crop indices (int32 [cutn * H] and [cutn * W]) that gather the crop matrices from the
    // constant crop table (the same array every call, so it never counts as changed). Indices of unchanged boxes may
    // compare equal (small arrays are compared by value), the seed is new every step.
    const [n, h, w] = [s.boxes.length, 64, 64];
    const recConsts = b.graph.nodes.filter((nd) => nd.id >= rec.start && nd.id < rec.end && nd.op === 'const');
    const seed = recConsts.filter((nd) => nd.dtype === 'i32' && nd.shape.join() === '2').map((nd) => nd.id);
    const fac = recConsts.filter((nd) => nd.shape.join() === [n, 1, 1, 1].join()).map((nd) => nd.id);
    const indices = recConsts.filter((nd) => nd.dtype === 'i32' && [[n * h].join(), [n * w].join()].includes(nd.shape.join())).map((nd) => nd.id);
    assert.equal(seed.length, 1);
    assert.equal(fac.length, 1);
    assert.equal(indices.length, 2);
    const noise = [...seed, ...fac];
    const onlyPerStep = (changed: number[], what: string) =>
      assert.ok(changed.every((id) => noise.includes(id) || indices.includes(id)), `${what}: changed consts ${changed} (noise ${noise}, crop indices ${indices})`);
    for (let step = 1; step <= 3; step++) {
      const r: ReplayResult<Sym> = b.replay(rec, (o): Sym => loss(o, originalCuts(s.boxes, noiseAt(step))));
      assert.ok(r.ok, r.ok ? '' : r.reason);
      assert.equal(r.value, rec.value);
      assert.ok(r.consts.has(seed[0]), 'new noise seed');
      onlyPerStep([...r.consts.keys()], `step ${step}`);
    }
    // Another crop position: the boxes are data, so the same graph replays with other crop indices.
    const i = s.boxes.findIndex((bx) => bx.size < 64);
    const moved = s.boxes.map((bx, j) => (j === i ? { ...bx, offsetX: bx.offsetX > 0 ? bx.offsetX - 1 : bx.offsetX + 1 } : bx));
    const r = b.replay(rec, (o) => loss(o, originalCuts(moved, noiseAt(4))));
    assert.ok(r.ok, r.ok ? '' : r.reason);
    assert.ok(indices.some((id) => r.consts.has(id)), 'moved crop boxes change the crop indices');
    onlyPerStep([...r.consts.keys()], 'moved boxes');

    // Host cost: replays of the same call (fixed noise array: what is left is the builder and the model code).
    const fixed = originalCuts(s.boxes);
    const t0 = performance.now();
    const rec2 = b.record((o) => loss(o, fixed));
    const traceMs = performance.now() - t0;
    // After a warm-up: a compiled run replays every step, so the JIT-compiled cost is the one that counts.
    const time = (fn: () => void, reps: number) => {
      for (let i = 0; i < 50; i++) fn();
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) fn();
      return (performance.now() - t0) / reps;
    };
    const replayMs = time(() => assert.ok(b.replay(rec2, (o) => loss(o, fixed)).ok), 200);
    const noisyMs = time(() => assert.ok(b.replay(rec, (o) => loss(o, originalCuts(s.boxes, noiseAt(9)))).ok), 20);
    console.log(
      `# generate loss replay: ${nodes} nodes, ${replayMs.toFixed(2)} ms per replay = ${((replayMs / nodes) * 1000).toFixed(2)} us/node ` +
        `(trace: ${traceMs.toFixed(2)} ms; with fresh cutout noise: ${noisyMs.toFixed(2)} ms)`,
    );
  });

  test("the 'latest' cutter (random augmentations) keeps its structure from step to step", async (t) => {
    const s = await e2eSetup(t);
    if (!s) return;
    const { b, z } = s;
    const cfg = { method: 'latest' as const, cutSize: 32, cutn: 5, cutPow: 1, noiseFac: 0.1 };
    const latest = (step: number): Cutter => (o, image) => makeCutouts(o, image, cfg, new Rng(1).fork('cutouts').fork(step));
    const loss = (o: Ops<Sym>, step: number): Sym => o.sum(generateLosses(o, s.vq.weights, s.clip, s.targets, z, latest(step)));
    const rec = b.record((o) => loss(o, 0));
    const steps = 10;
    const reasons: string[] = [];
    for (let step = 1; step <= steps; step++) {
      const r = b.replay(rec, (o) => loss(o, step));
      if (!r.ok) reasons.push(r.reason.slice(0, 300));
    }
    // Random augmentations (skipped by their coins, reordered) are data, never structure: every step replays.
    console.log(`# 'latest' cutouts: ${steps - reasons.length}/${steps} steps replay; first change: ${reasons[0] ?? 'none'}`);
    assert.deepEqual(reasons, []);
  });
});
