// f16 weight storage (CompiledEngine precision 'f16', kernel.ts's header): the host rounding and packing exactly,
// the planner's choice of which constants to store as f16, and the kernels reading packed weights. A kernel reading
// packed halves of w must give bit for bit what the same kernel gives from f32 storage of w rounded to f16 (same
// arithmetic, only the load differs), and must differ from the unrounded result (the packed path really ran).
import assert from 'node:assert/strict';
import { describe, test, type TestContext } from 'node:test';
import { CompiledEngine, HALF_MIN_ELEMENTS } from '../src/engine/compiled.ts';
import { GraphBuilder, type Sym } from '../src/engine/graph/trace.ts';
import type { OpName } from '../src/engine/graph/ir.ts';
import type { Executor } from '../src/engine/ops.ts';
import { float16ToFloat32, float32ToFloat16 } from '../src/formats/host-tensor.ts';
import { packHalves, roundToHalf } from '../src/engine/wgsl/half.ts';
import { DEFAULT_LIMITS, runLowered, type KernelNode, type Lowered, type TensorInfo } from '../src/engine/wgsl/kernel.ts';
import { halfInputs, lowerings } from '../src/engine/wgsl/lowerings.ts';
import { planGraph } from '../src/engine/wgsl/plan.ts';
import { maxAbsDiff, suiteDevice } from './helpers.ts';

const hex = (xs: ArrayLike<number>) => Array.from(xs, (h) => h.toString(16));
const half = (...xs: number[]) => hex(float32ToFloat16(Float32Array.from(xs)));

describe('float32 -> f16 rounding and packing (host)', () => {
  test('round to nearest, ties to even, in normals and subnormals', () => {
    // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: to even (1); 1 + 3*2^-11 halfway to the even 1 + 2^-9.
    assert.deepEqual(half(1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -11 + 2 ** -20, -(1 + 2 ** -11)), ['3c00', '3c02', '3c01', 'bc00']);
    // Subnormals (2^-24 steps): 2.5 and 3.5 steps tie to 2 and 4; 2^-25 (half a step) ties to 0, a hair more is 1 step.
    assert.deepEqual(half(2.5 * 2 ** -24, 3.5 * 2 ** -24, 2 ** -25, 2 ** -25 * (1 + 2 ** -20), 1023 * 2 ** -24), ['2', '4', '0', '1', '3ff']);
    // Largest subnormal + half a step rounds up into the smallest normal 2^-14.
    assert.deepEqual(half(1023.5 * 2 ** -24, 2 ** -14), ['400', '400']);
    // Float32 subnormals and tiny values flush to a signed zero.
    assert.deepEqual(half(1e-40, -1e-40, 2 ** -26), ['0', '8000', '0']);
  });

  test('overflow, infinities, NaN, signed zero', () => {
    // 65504 is the largest half; 65519.99 rounds down to it, 65520 (the tie with 2^16) to infinity.
    assert.deepEqual(half(65504, 65519.99, 65520, -65520, 1e6), ['7bff', '7bff', '7c00', 'fc00', '7c00']);
    assert.deepEqual(half(Infinity, -Infinity, 0, -0), ['7c00', 'fc00', '0', '8000']);
    const nan = float32ToFloat16(Float32Array.from([NaN]))[0];
    assert.ok((nan & 0x7c00) === 0x7c00 && (nan & 0x3ff) !== 0, `NaN -> ${nan.toString(16)}`);
  });

  test('every result is a nearest half (random float32 values across the range)', () => {
    let s = 12345;
    const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const xs = Float32Array.from({ length: 20000 }, () => (rnd() - 0.5) * 2 ** (Math.floor(rnd() * 44) - 28));
    const h = float32ToFloat16(xs);
    const back = float16ToFloat32(h);
    for (let i = 0; i < xs.length; i++) {
      const x = xs[i];
      const mag = h[i] & 0x7fff;
      // Neighbours of the chosen half on the same side of zero (one step down and up in magnitude).
      const lo = float16ToFloat32(Uint16Array.of((h[i] & 0x8000) | Math.max(0, mag - 1)))[0];
      const hi = float16ToFloat32(Uint16Array.of((h[i] & 0x8000) | Math.min(0x7bff, mag + 1)))[0];
      const err = Math.abs(x - back[i]);
      assert.ok(err <= Math.abs(x - lo) && err <= Math.abs(x - hi), `${x} -> ${back[i]} (neighbours ${lo}, ${hi})`);
      if (err === Math.abs(x - lo) && lo !== back[i]) assert.equal(mag & 1, 0, `tie ${x} not to even`);
    }
  });

  test('packing: element 2j in the low half of word j, an odd last element padded with 0', () => {
    const words = packHalves(Float32Array.from([1, -2, 0.5, 65504, 3]));
    assert.deepEqual(hex(words), ['c0003c00', '7bff3800', '4200']);
    assert.deepEqual(hex(packHalves(new Float32Array(0))), ['0']);
    assert.deepEqual(Array.from(roundToHalf(Float32Array.from([1 + 2 ** -12, 0.1]))), [1, 0.0999755859375]);
  });
});

describe('planner: which constants are stored as f16', () => {
  test('conv and matmul weights of at least minElements, read only as weights; not outputs', () => {
    const b = new GraphBuilder();
    const big = (shape: number[]) => b.constant(new Float32Array(shape.reduce((p, q) => p * q, 1)).fill(0.5), shape);
    const x = b.input('x', [1, 8, 8, 16]);
    const wConv = big([3, 3, 16, 16]); // conv weight: f16
    const wShared = big([3, 3, 16, 16]); // also added to something: stays f32
    const wSmall = big([1, 1, 16, 16]); // 256 elements: under the threshold
    const wLin = big([16, 64]); // linear weight (matmul transposeB): f16
    let h = b.conv2d(x, wConv, undefined, { pad: 'same' });
    h = b.conv2d(h, wShared, undefined, { pad: 'same' });
    h = b.conv2d(h, wSmall, undefined);
    const y = b.linear(b.reshape(h, [64, 16]), wLin);
    const other = b.mul(wShared, wShared);
    const g = { nodes: b.graph.nodes, outputs: { y: y.id, other: other.id, wLin2: wLin.id } };
    const opts = { alignment: 16, maxBindingSize: 2 ** 27, maxBufferSize: 2 ** 30 };
    const plan = planGraph(g, lowerings, DEFAULT_LIMITS, { ...opts, f16Weights: { inputs: halfInputs, minElements: 1024 } });
    const storage = (s: { id: number }) => plan.consts.find((c) => c.node === s.id)?.storage ?? 'f32';
    // wLin is also a graph output here (read back as f32 data): f32.
    assert.deepEqual([wConv, wShared, wSmall, wLin].map(storage), ['f16', 'f32', 'f32', 'f32']);
    const g2 = { nodes: b.graph.nodes, outputs: { y: y.id } };
    const plan2 = planGraph(g2, lowerings, DEFAULT_LIMITS, { ...opts, f16Weights: { inputs: halfInputs, minElements: 1024 } });
    const storage2 = (s: { id: number }) => plan2.consts.find((c) => c.node === s.id)?.storage ?? 'f32';
    // Without those outputs, wShared's other reader is dead and wLin no output: both f16.
    assert.deepEqual([wConv, wShared, wSmall, wLin].map(storage2), ['f16', 'f16', 'f32', 'f16']);
    const f32 = planGraph(g2, lowerings, DEFAULT_LIMITS, opts);
    assert.equal(f32.memory.constBytes - plan2.memory.constBytes, (2304 + 2304 + 1024) * 2);
  });
});

describe('kernels reading packed f16 weights (software WebGPU)', () => {
  const gpu = suiteDevice();
  let seed = 7;
  const rand = (shape: number[]) =>
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1);

  /** Runs `op` with input `weight` stored as f16 and as f32 holding the rounded values; returns both and the unrounded run. */
  async function runBoth(t: TestContext, op: OpName, attrs: unknown, shapes: number[][], out: number[], weight: number, variant: RegExp) {
    if (!gpu.device) return t.skip(gpu.unavailable);
    const data = shapes.map(rand);
    const lower = (inputs: TensorInfo[]) => (lowerings[op] as (n: KernelNode, l: typeof DEFAULT_LIMITS) => Lowered)({ op, attrs, inputs, output: { shape: out, dtype: 'f32' } } as KernelNode, DEFAULT_LIMITS);
    const infos = shapes.map((shape): TensorInfo => ({ shape, dtype: 'f32' }));
    const halfInfos = infos.map((x, i) => (i === weight ? { ...x, storage: 'f16' as const } : x));
    assert.ok((halfInputs[op] as (n: KernelNode) => number[])({ op, attrs, inputs: infos, output: { shape: out, dtype: 'f32' } } as KernelNode).includes(weight));
    const lowered = lower(halfInfos);
    assert.match(lowered.dispatches.map((d) => d.label).join(' + '), variant);
    const run = (l: Lowered, ds: Float32Array[], f16: boolean) =>
      runLowered(gpu.device!, l, ds.map((d, i) => ({ data: d, shape: shapes[i], storage: f16 && i === weight ? ('f16' as const) : undefined })), { shape: out, dtype: 'f32' });
    const got = await run(lowered, data, true);
    const rounded = await run(lower(infos), data.map((d, i) => (i === weight ? roundToHalf(d) : d)), false);
    const exact = await run(lower(infos), data, false);
    const dRounded = maxAbsDiff(got, rounded);
    const dExact = maxAbsDiff(got, exact);
    t.diagnostic(`${lowered.dispatches.map((d) => d.label).join(' + ')}: vs f32 of rounded w ${dRounded}, vs f32 w ${dExact.toExponential(2)}`);
    assert.equal(dRounded, 0, 'the packed weights must read as exactly the rounded values');
    assert.ok(dExact > 0 && dExact < 2e-2, `f16 vs f32 weights: ${dExact}`);
  }

  const mm = (tA: boolean, tB: boolean) => ({ transposeA: tA, transposeB: tB });
  test('matmul, weight B transposed (a linear layer), tiled', (t) => runBoth(t, 'matmul', mm(false, true), [[70, 33], [67, 33]], [70, 67], 1, /tiled/));
  test('matmul, weight A transposed, odd element count, tiled', (t) => runBoth(t, 'matmul', mm(true, false), [[33, 71], [33, 65]], [71, 65], 0, /tiled/));
  test('matmul, skinny (2 rows: decoding)', (t) => runBoth(t, 'matmul', mm(false, true), [[2, 300], [131, 300]], [2, 131], 1, /skinny/));
  test('matmul, simple (3 columns)', (t) => runBoth(t, 'matmul', mm(false, false), [[40, 37], [37, 3]], [40, 3], 1, /simple/));
  test('conv2d 3x3 + bias, tiled', (t) =>
    runBoth(t, 'conv2d', { stride: 1, pad: [1, 1, 1, 1] }, [[2, 12, 12, 9], [3, 3, 9, 19], [19]], [2, 12, 12, 19], 1, /tiled/));
  test('conv2dGradInput 3x3 stride 2 (phases)', (t) =>
    runBoth(t, 'conv2dGradInput', { stride: 2, pad: [0, 1, 0, 1] }, [[2, 5, 5, 5], [3, 3, 7, 5]], [2, 10, 9, 7], 1, /phase 1,1/));
  test('conv2dGradInput 4x4 stride 4 (patches)', (t) =>
    runBoth(t, 'conv2dGradInput', { stride: 4, pad: [0, 0, 0, 0] }, [[1, 4, 4, 70], [4, 4, 3, 70]], [1, 16, 16, 3], 1, /patches/));

  test("CompiledEngine precision 'f16': fused GEMM groups and transposed views read the packed weights", async (t) => {
    if (!gpu.device) return t.skip(gpu.unavailable);
    // conv + bias + swish (a fused conv group), its input gradient, a linear layer and a matmul by a transposed weight.
    const shapes = { x: [1, 8, 8, 16], w: [3, 3, 16, 32], b: [32], lin: [32, 48], m: [32, 40] };
    const data = Object.fromEntries(Object.entries(shapes).map(([k, s]) => [k, rand(s)])) as Record<keyof typeof shapes, Float32Array>;
    const model = (ex: Executor<unknown>, d: typeof data) => {
      const o = ex.ops;
      const c = <K extends keyof typeof shapes>(k: K) => o.constant(d[k], shapes[k]);
      const x = c('x');
      const { value, grad } = ex.valueAndGrad((xx) => o.sum(o.square(o.swish(o.conv2d(xx, c('w'), c('b'), { pad: 'same' })))), x);
      const flat = o.reshape(o.swish(o.conv2d(x, c('w'), c('b'), { pad: 'same' })), [64, 32]);
      return [value, grad, o.linear(flat, c('lin')), o.matmul(c('m'), flat, true, true)];
    };
    const results = async (precision: 'f32' | 'f16', d: typeof data) => {
      const engine = new CompiledEngine(gpu.device!, { precision });
      try {
        const outs = model(engine.executor as Executor<unknown>, d);
        const read: Float32Array[] = [];
        for (const y of outs) read.push(await engine.ops.read(y as Sym));
        return read;
      } finally {
        engine.destroy();
      }
    };
    for (const k of ['w', 'lin', 'm'] as const) assert.ok(data[k].length >= HALF_MIN_ELEMENTS, `${k} is under the f16 threshold`);
    const rounded = { ...data, w: roundToHalf(data.w), lin: roundToHalf(data.lin), m: roundToHalf(data.m) };
    const f16 = await results('f16', data);
    const ref = await results('f32', rounded);
    const f32 = await results('f32', data);
    for (let i = 0; i < f16.length; i++) {
      const d = maxAbsDiff(f16[i], ref[i]);
      const e = maxAbsDiff(f16[i], f32[i]);
      t.diagnostic(`output ${i}: vs f32 of rounded weights ${d}, vs f32 weights ${e.toExponential(2)}`);
      assert.equal(d, 0, `output ${i}`);
      assert.ok(e > 0, `output ${i} does not depend on the rounding`);
    }
  });
});
