// Fast (and missing) backward kernels for tfjs-backend-wasm.
//
// The stock wasm backend runs forward convolutions and plain matmuls through XNNPACK, but its backward kernels are
// naive C++ loops, 5-17x slower than the forward pass (ENGINE.md):
//   - Conv2DBackpropInput (the input gradient of every conv) is re-expressed as a forward Conv2D of the
//     (stride-)dilated, padded dy with the spatially flipped, in/out-transposed filter. When stride == kernel and
//     nothing is padded (ViT/CLIP patch embedding, 32x32 stride 32) the patches do not overlap and it is one matmul;
//   - BatchMatMul with transposeA/transposeB (every matmul gradient, and attention's q·kᵀ forward) does the transpose
//     explicitly, then a plain BatchMatMul; a batch > 1 (which the stock kernel runs on a naive loop) runs as 2-D
//     XNNPACK matmuls per batch where the loop is estimated slower;
//   - _FusedMatMul with transposes: same (and batched/rank>1 bias, which the stock kernel gets wrong, decomposed);
// and one forward kernel is slow for no reason:
//   - GatherV2 (~0.1-0.2 us per element, index arithmetic per element): slices copied in JS on the wasm heap;
// and two copy where every other backend shares the buffer:
//   - Identity, and Cast to the same dtype: tfjs saves every input a taped kernel's gradient needs as a clone
//     (Identity), so under a gradient the stock copies duplicated each saved activation AND each weight a matmul
//     read (CLIP's 0.35 GB visual tower, once per step): ~1 GB of a 64 px step's 1.05 GB peak above the weights.
//     They now return the input's buffer with its refcount raised, as Reshape does (no wasm kernel writes in place);
// and two kernels are missing entirely:
//   - Conv2DBackpropFilter (conv weight gradients): a forward Conv2D of x (channels as batch) with dy as a dilated
//     filter; stride == kernel: one matmul;
//   - UnsortedSegmentSum (tf.gather's gradient w.r.t. the table): a scatter-add in JS on the wasm heap.
// Every replacement only composes stock wasm kernels (called through their kernel functions, so nothing is taped and
// nothing recurses into our own registrations) and must equal the cpu backend within float rounding; see
// test/engine-wasm-kernels.test.ts. The stock kernels are kept, so unregisterFastWasmKernels() restores them (the
// bench compares both).

import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

type TensorInfo = tf.TensorInfo;
type Attrs = Record<string, unknown>;
type KernelArgs = { inputs: Record<string, TensorInfo>; attrs?: Attrs; backend: unknown };

const BACKEND = 'wasm';
/** Stock configs of the kernels we replaced (undefined where the stock backend has none). */
const stock = new Map<string, tf.KernelConfig | undefined>();
let registered = false;

/**
 * Temporaries of one kernel invocation. Stock kernel functions return TensorInfos whose data the backend owns
 * (Reshape returns the same dataId with its refcount raised); everything not returned must be disposed.
 */
class Scratch {
  private temps: TensorInfo[] = [];
  constructor(readonly backend: BackendWasm) {}

  /** Run a kernel: our stock copy for the ones we replaced, else the registered one. */
  run(name: string, inputs: Record<string, TensorInfo>, attrs: Attrs = {}): TensorInfo {
    const config = stock.has(name) ? stock.get(name) : tf.getKernel(name, BACKEND);
    if (!config) throw new Error(`wasm kernel ${name} not registered`);
    const out = config.kernelFunc({ inputs, attrs, backend: this.backend } as never) as TensorInfo;
    this.temps.push(out);
    return out;
  }

  /** Adopt a tensor made outside run() as a temporary. */
  track(t: TensorInfo): TensorInfo {
    this.temps.push(t);
    return t;
  }
  reshape(x: TensorInfo, shape: number[]): TensorInfo {
    return this.run('Reshape', { x }, { shape });
  }
  transpose(x: TensorInfo, perm: number[]): TensorInfo {
    return this.run('Transpose', { x }, { perm });
  }
  /** Keep `result`, free every other temporary. */
  finish(result: TensorInfo): TensorInfo {
    for (const t of this.temps) if (t !== result) this.backend.disposeData(t.dataId);
    this.temps = [];
    return result;
  }
  /** Free all temporaries (on error). */
  abort(): void {
    for (const t of this.temps) this.backend.disposeData(t.dataId);
    this.temps = [];
  }
}

function withScratch(backend: unknown, f: (s: Scratch) => TensorInfo): TensorInfo {
  const s = new Scratch(backend as BackendWasm);
  try {
    return s.finish(f(s));
  } catch (e) {
    s.abort();
    throw e;
  }
}

/** perm that swaps the last two axes of a rank-r tensor. */
function swapLast2(rank: number): number[] {
  const p = [...Array(rank).keys()];
  [p[rank - 2], p[rank - 1]] = [p[rank - 1], p[rank - 2]];
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
// BatchMatMul / _FusedMatMul.
//
// The stock C++ kernel uses XNNPACK only for ONE untransposed [1, M, K] @ [1, K, N]; transposes and any batch > 1
// run a naive blocked loop (32 x [224, 256] @ [256, 672], the cutouts' crop matmul: ~2-4 s vs ~0.2 s as 2-D
// matmuls). So: transposes are done explicitly (Transpose is a memory copy), a broadcast right operand folds the
// batch into the rows (one 2-D matmul), and otherwise every output batch is its own 2-D XNNPACK matmul on VIEWS of
// the operands and the output: tensor ids the C++ side knows, registered at offsets into their heap memory, so
// nothing is copied or concatenated. But each XNNPACK call also wakes its thread pool: ~0.1 ms on an idle machine,
// 1-2 ms with the cores contended (measured here: 384 x [50, 64] @ [64, 50], CLIP's attention, took 0.3-0.7 s as
// per-batch calls vs 0.1-0.17 s on the loop). So a batch goes to XNNPACK only where the loop is estimated to cost
// clearly more than that; smaller products keep the previous path (explicit transposes, then the stock loop).

/** Rough cost of the stock loop in ns (measured here: ~0.6 GMAC/s, plus ~20 ns per output element). */
function stockLoopNs(m: number, k: number, n: number): number {
  return 1.6 * m * k * n + 20 * m * n;
}
/** The loop time above which one XNNPACK call (thread pool wake-up included, contended) is the cheaper choice. */
const XNNPACK_CALL_NS = 2e6;

/** The C++ BatchMatMul entry point (the one the stock kernel wraps). */
type WasmBatchMatMul = (
  aId: number,
  aShape: Uint8Array,
  aRank: number,
  bId: number,
  bShape: Uint8Array,
  bRank: number,
  transposeA: boolean,
  transposeB: boolean,
  outId: number,
) => void;
const wasmBatchMatMuls = new WeakMap<BackendWasm, WasmBatchMatMul>();

/** Bound lazily per backend instance: kernels registered after the backend started get no setupFunc call. */
function wasmBatchMatMul(backend: BackendWasm): WasmBatchMatMul {
  let f = wasmBatchMatMuls.get(backend);
  if (!f) {
    const module = backend.wasm as unknown as { cwrap: (name: string, ret: null, args: string[]) => WasmBatchMatMul };
    const args = ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number'];
    f = module.cwrap(tf.BatchMatMul, null, args);
    wasmBatchMatMuls.set(backend, f);
  }
  return f;
}

/**
 * Tensor ids aliasing a range of another tensor's heap memory (no copy). XNNPACK caches a packed-weights operator
 * per right-operand id and drops it when the id is disposed, which release() does; it frees no memory.
 */
class HeapViews {
  private views: TensorInfo[] = [];
  constructor(private readonly backend: BackendWasm) {}

  /** Id of `size` floats of `t` starting at element `offset`. */
  view(t: TensorInfo, offset: number, size: number): number {
    const base = this.backend.dataIdMap.get(t.dataId).memoryOffset;
    const v = this.backend.makeOutput([size], 'float32', base + 4 * offset);
    this.views.push(v);
    return this.backend.dataIdMap.get(v.dataId).id;
  }

  release(): void {
    for (const v of this.views) {
      const { id } = this.backend.dataIdMap.get(v.dataId);
      this.backend.dataIdMap.delete(v.dataId);
      this.backend.wasm.tfjs.disposeData(id);
    }
    this.views = [];
  }
}

/** For output batch i (row-major over outDims), the index into an operand's batch dims (numpy broadcasting). */
function broadcastIndex(dims: number[], outDims: number[]): (i: number) => number {
  const full = [...Array<number>(outDims.length - dims.length).fill(1), ...dims];
  return (i) => {
    let idx = 0;
    let stride = 1;
    for (let d = outDims.length - 1; d >= 0; d--) {
      const o = i % outDims[d];
      i = Math.floor(i / outDims[d]);
      if (full[d] !== 1) idx += o * stride;
      stride *= full[d];
    }
    return idx;
  };
}

/** a @ b (optionally transposed, batch dims broadcast) as 2-D XNNPACK matmuls where that is faster. */
function matMul(s: Scratch, a: TensorInfo, b: TensorInfo, transposeA: boolean, transposeB: boolean): TensorInfo {
  const ra = a.shape.length;
  const rb = b.shape.length;
  const [m, k] = transposeA ? [a.shape[ra - 1], a.shape[ra - 2]] : [a.shape[ra - 2], a.shape[ra - 1]];
  const n = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  const aDims = a.shape.slice(0, -2);
  const bDims = b.shape.slice(0, -2);
  const outDims = tf.backend_util.assertAndGetBroadcastShape(aDims, bDims);
  const batch = tf.util.sizeFromShape(outDims);
  // One right operand (no batch; or broadcast, a's batches folded into the rows, where XNNPACK beats the loop).
  const oneB = batch <= 1 || (!transposeA && tf.util.sizeFromShape(bDims) === 1 && stockLoopNs(batch * m, k, n) >= XNNPACK_CALL_NS);
  if (transposeB && oneB) {
    const swapped = swappedProduct(s, a, b, transposeA, batch * m, k, n);
    if (swapped) return s.reshape(swapped, [...outDims, m, n]);
  }
  const a2 = transposeA ? s.transpose(a, swapLast2(ra)) : a; // [..., m, k]
  const b2 = transposeB ? s.transpose(b, swapLast2(rb)) : b; // [..., k, n]
  const plain = () => s.run(tf.BatchMatMul, { a: a2, b: b2 }, { transposeA: false, transposeB: false });
  if (batch <= 1) return plain(); // the stock kernel's XNNPACK case
  if (tf.util.sizeFromShape(bDims) === 1) {
    // One right operand for every batch: stack the batches' rows, [batch * m, k] @ [k, n], one XNNPACK call.
    if (stockLoopNs(batch * m, k, n) < XNNPACK_CALL_NS) return plain();
    const y = s.run(
      tf.BatchMatMul,
      { a: s.reshape(a2, [1, batch * m, k]), b: s.reshape(b2, [1, k, n]) },
      { transposeA: false, transposeB: false },
    );
    return s.reshape(y, [...outDims, m, n]);
  }
  if (stockLoopNs(m, k, n) < XNNPACK_CALL_NS) return plain();
  const out = s.track(s.backend.makeOutput([...outDims, m, n], 'float32'));
  const shapeBytes = (rows: number, cols: number) => new Uint8Array(new Int32Array([1, rows, cols]).buffer);
  const aShape = shapeBytes(m, k);
  const bShape = shapeBytes(k, n);
  const indexA = broadcastIndex(aDims, outDims);
  const indexB = broadcastIndex(bDims, outDims);
  const run = wasmBatchMatMul(s.backend);
  const views = new HeapViews(s.backend);
  const aIds = new Map<number, number>();
  const bIds = new Map<number, number>(); // a reused right operand keeps its packed XNNPACK operator
  try {
    for (let i = 0; i < batch; i++) {
      const ia = indexA(i);
      const ib = indexB(i);
      if (!aIds.has(ia)) aIds.set(ia, views.view(a2, ia * m * k, m * k));
      if (!bIds.has(ib)) bIds.set(ib, views.view(b2, ib * k * n, k * n));
      const outId = views.view(out, i * m * n, m * n);
      run(aIds.get(ia)!, aShape, 3, bIds.get(ib)!, bShape, 3, false, false, outId);
    }
  } finally {
    views.release();
  }
  return out;
}

/**
 * a' @ bᵀ for one right operand b [n, k] and the `rows` rows of a' (a, or aᵀ for transposeA with no batch): as
 * (b @ a'ᵀ)ᵀ when b is the larger operand. Every linear layer's input gradient is dy @ Wᵀ, and transposing W costs a
 * copy of it plus XNNPACK's repacking of a new right operand on every call (CLIP's [3072, 768] at 100 rows: ~2x the
 * product itself); b as the left operand is read in place, and only a' and the output are transposed. Returns the
 * product as [1, rows, n], or undefined where transposing b is the cheaper way.
 */
function swappedProduct(s: Scratch, a: TensorInfo, b: TensorInfo, transposeA: boolean, rows: number, k: number, n: number): TensorInfo | undefined {
  if (n * k <= rows * (k + n)) return undefined;
  // a'ᵀ [k, rows]: transposeA (batch 1) means a is stored [k, rows] already.
  const aT = transposeA ? s.reshape(a, [1, k, rows]) : s.transpose(s.reshape(a, [1, rows, k]), [0, 2, 1]);
  const yT = s.run(tf.BatchMatMul, { a: s.reshape(b, [1, n, k]), b: aT }, { transposeA: false, transposeB: false });
  return s.transpose(yT, [0, 2, 1]);
}

function batchMatMul(args: KernelArgs): TensorInfo {
  const { a, b } = args.inputs;
  const { transposeA, transposeB } = (args.attrs ?? {}) as { transposeA: boolean; transposeB: boolean };
  return withScratch(args.backend, (s) => matMul(s, a, b, transposeA, transposeB));
}

/** Activations of _FusedMatMul as separate stock kernels. */
function activate(s: Scratch, y: TensorInfo, activation: string, alpha: number, prelu?: TensorInfo): TensorInfo {
  switch (activation) {
    case 'linear':
      return y;
    case 'relu':
      return s.run('Relu', { x: y });
    case 'relu6':
      return s.run('Relu6', { x: y });
    case 'elu':
      return s.run('Elu', { x: y });
    case 'sigmoid':
      return s.run('Sigmoid', { x: y });
    case 'leakyrelu':
      return s.run('LeakyRelu', { x: y }, { alpha });
    case 'prelu':
      return s.run('Prelu', { x: y, alpha: prelu! });
    default:
      throw new Error(`_FusedMatMul on wasm: unknown activation ${activation}`);
  }
}

/**
 * _FusedMatMul: transposes as for BatchMatMul. Also, the stock kernel adds the bias wrongly when the batch is > 1
 * (off by up to the bias for later batches; measured against cpu) and rejects a bias of rank > 1: those cases run as
 * plain BatchMatMul + Add + activation.
 */
function fusedMatMul(args: KernelArgs): TensorInfo {
  const { a, b, bias, preluActivationWeights } = args.inputs;
  const attrs = (args.attrs ?? {}) as {
    transposeA: boolean;
    transposeB: boolean;
    activation?: string;
    leakyreluAlpha?: number;
  };
  const batch = Math.max(tf.util.sizeFromShape(a.shape.slice(0, -2)), tf.util.sizeFromShape(b.shape.slice(0, -2)));
  const decompose = batch > 1 || (bias !== undefined && bias.shape.length !== 1);
  if (!decompose && !attrs.transposeA && !attrs.transposeB) {
    return stock.get(tf._FusedMatMul)!.kernelFunc(args as never) as TensorInfo;
  }
  return withScratch(args.backend, (s) => {
    if (decompose) {
      const y = matMul(s, a, b, attrs.transposeA, attrs.transposeB);
      const biased = bias ? s.run('Add', { a: y, b: bias }) : y;
      return activate(s, biased, attrs.activation ?? 'linear', attrs.leakyreluAlpha ?? 0.2, preluActivationWeights);
    }
    const a2 = attrs.transposeA ? s.transpose(a, swapLast2(a.shape.length)) : a;
    const b2 = attrs.transposeB ? s.transpose(b, swapLast2(b.shape.length)) : b;
    return s.run(tf._FusedMatMul, { ...args.inputs, a: a2, b: b2 }, { ...attrs, transposeA: false, transposeB: false });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Convolution gradients.

interface ConvGradAttrs {
  strides: number | [number, number];
  pad: 'same' | 'valid' | number | number[][];
  dataFormat?: 'NHWC' | 'NCHW';
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

function convInfo(xShape: number[], filterShape: number[], a: ConvGradAttrs) {
  return tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    a.strides,
    1,
    a.pad as never,
    a.dimRoundingMode,
    false,
    'channelsLast',
  );
}

/** Non-overlapping, unpadded patches (stride == kernel): the conv is a plain matmul over patches. */
function isPatchConv(ci: ReturnType<typeof convInfo>): boolean {
  const p = ci.padInfo;
  return (
    ci.strideHeight === ci.filterHeight &&
    ci.strideWidth === ci.filterWidth &&
    p.top === 0 &&
    p.bottom === 0 &&
    p.left === 0 &&
    p.right === 0
  );
}

/**
 * Crop (negative amounts) a [N, H, W, C] tensor so that the remaining padding amounts are all >= 0; returns the
 * tensor and the non-negative [top, bottom, left, right] padding still to apply.
 */
function cropNegative(s: Scratch, x: TensorInfo, pads: number[]): [TensorInfo, number[]] {
  const [t, b, l, r] = pads;
  if (t >= 0 && b >= 0 && l >= 0 && r >= 0) return [x, pads];
  const [n, h, w, c] = x.shape;
  const begin = [0, Math.max(0, -t), Math.max(0, -l), 0];
  const size = [n, h - begin[1] - Math.max(0, -b), w - begin[2] - Math.max(0, -r), c];
  const cropped = s.run('Slice', { x }, { begin, size });
  return [cropped, pads.map((p) => Math.max(0, p))];
}

/**
 * out[i, j, o, c] = w[kh-1-i, kw-1-j, c, o], in JS on the heap: filters are small (3x3x128x128 = 147k floats, well
 * under 1 ms here), and the stock wasm Reverse kernel takes ~10 ms for that.
 */
function flipTransposeFilter(backend: BackendWasm, filter: TensorInfo): TensorInfo {
  const [kh, kw, cin, cout] = filter.shape;
  const src = backend.readSync(filter.dataId) as Float32Array; // a copy: makeOutput below may grow (move) the heap
  const out = backend.makeOutput([kh, kw, cout, cin], 'float32');
  const dst = backend.typedArrayFromHeap(out) as Float32Array;
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const from = ((kh - 1 - i) * kw + (kw - 1 - j)) * cin * cout;
      const to = (i * kw + j) * cout * cin;
      for (let c = 0; c < cin; c++) for (let o = 0; o < cout; o++) dst[to + o * cin + c] = src[from + c * cout + o];
    }
  }
  return out;
}

function conv2DBackpropInput(args: KernelArgs): TensorInfo {
  const { dy, filter } = args.inputs;
  const attrs = args.attrs as unknown as ConvGradAttrs & { inputShape: number[] };
  if (attrs.dataFormat === 'NCHW') return stock.get(tf.Conv2DBackpropInput)!.kernelFunc(args as never) as TensorInfo;
  const ci = convInfo(attrs.inputShape, filter.shape, attrs);
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: cin, outHeight: oh, outWidth: ow } = ci;
  const { outChannels: cout, filterHeight: kh, filterWidth: kw, strideHeight: sh, strideWidth: sw } = ci;

  return withScratch(args.backend, (s) => {
    if (isPatchConv(ci)) {
      // dx patch (oy, ox) = dy[oy, ox, :] @ Wᵀ, W as [kh*kw*cin, cout]; then put the patches back in place.
      const wt = s.transpose(s.reshape(filter, [kh * kw * cin, cout]), [1, 0]); // [cout, kh*kw*cin]
      const patches = s.run(
        tf.BatchMatMul,
        { a: s.reshape(dy, [1, n * oh * ow, cout]), b: s.reshape(wt, [1, cout, kh * kw * cin]) },
        { transposeA: false, transposeB: false },
      ); // [1, n*oh*ow, kh*kw*cin]
      const rows = s.transpose(s.reshape(patches, [n * oh, ow, kh, kw * cin]), [0, 2, 1, 3]); // [n*oh, kh, ow, kw*cin]
      const img = s.reshape(rows, [n, oh * kh, ow * kw, cin]);
      if (oh * kh === h && ow * kw === w) return img;
      // 'valid' with a remainder: the last rows/columns never reached the output, their gradient is 0.
      const paddings = [[0, 0], [0, h - oh * kh], [0, w - ow * kw], [0, 0]];
      return s.run('PadV2', { x: img }, { paddings, constantValue: 0 });
    }

    // Zero-dilate dy by the stride: [n*oh, 1, ow, 1, c] padded to [n*oh, sh, ow, sw, c]. This leaves sh-1 (sw-1)
    // extra zero rows (columns) at the end, accounted for in the bottom (right) padding below.
    let d = dy;
    if (sh > 1 || sw > 1) {
      const d5 = s.reshape(dy, [n * oh, 1, ow, 1, cout]);
      const padded = s.run(
        'PadV2',
        { x: d5 },
        { paddings: [[0, 0], [0, sh - 1], [0, 0], [0, sw - 1], [0, 0]], constantValue: 0 },
      );
      d = s.reshape(padded, [n, oh * sh, ow * sw, cout]);
    }
    // A 'valid' conv with a kh x kw filter over (pad_top + dilated + pad_bottom) rows yields h rows when
    // pad_top = kh-1-top and pad_bottom = h + top - (oh-1)*sh - 1 (minus the sh-1 trailing zeros already there).
    const p = ci.padInfo;
    const pads = [
      kh - 1 - p.top,
      h + p.top - (oh - 1) * sh - 1 - (sh - 1),
      kw - 1 - p.left,
      w + p.left - (ow - 1) * sw - 1 - (sw - 1),
    ];
    const [dc, [pt, pb, pl, pr]] = cropNegative(s, d, pads);
    // Correlation with the flipped filter, in/out channels swapped: [kh, kw, cin, cout] -> [kh, kw, cout, cin].
    const wT = s.track(flipTransposeFilter(s.backend, filter));
    return s.run(
      tf.Conv2D,
      { x: dc, filter: wT },
      { strides: [1, 1], pad: [[0, 0], [pt, pb], [pl, pr], [0, 0]], dataFormat: 'NHWC', dilations: [1, 1] },
    );
  });
}

function conv2DBackpropFilter(args: KernelArgs): TensorInfo {
  const { x, dy } = args.inputs;
  const attrs = args.attrs as unknown as ConvGradAttrs & { filterShape: number[] };
  if (attrs.dataFormat === 'NCHW') throw new Error('Conv2DBackpropFilter on wasm: NCHW is not supported');
  const ci = convInfo(x.shape, attrs.filterShape, attrs);
  const { batchSize: n, inHeight: h, inWidth: w, inChannels: cin, outHeight: oh, outWidth: ow } = ci;
  const { outChannels: cout, filterHeight: kh, filterWidth: kw, strideHeight: sh, strideWidth: sw } = ci;

  return withScratch(args.backend, (s) => {
    if (isPatchConv(ci)) {
      // dW = patchesᵀ @ dy, patches [n*oh*ow, kh*kw*cin] taken from x without copying more than one transpose.
      let xc = x;
      if (oh * kh !== h || ow * kw !== w) {
        xc = s.run('Slice', { x }, { begin: [0, 0, 0, 0], size: [n, oh * kh, ow * kw, cin] });
      }
      const rows = s.transpose(s.reshape(xc, [n * oh, kh, ow, kw * cin]), [0, 2, 1, 3]); // [n*oh, ow, kh, kw*cin]
      const patchesT = s.transpose(s.reshape(rows, [n * oh * ow, kh * kw * cin]), [1, 0]); // [kh*kw*cin, n*oh*ow]
      const dw = s.run(
        tf.BatchMatMul,
        { a: s.reshape(patchesT, [1, kh * kw * cin, n * oh * ow]), b: s.reshape(dy, [1, n * oh * ow, cout]) },
        { transposeA: false, transposeB: false },
      );
      return s.reshape(dw, [kh, kw, cin, cout]);
    }
    // dW[i, j, c, o] = Σ_{b, y, x} xpad[b, y*sh + i, x*sw + j, c] · dy[b, y, x, o]: a 'valid' conv whose batch is the
    // input channels, whose channels are the batch, with dy as an (oh x ow, dilation = stride) filter.
    const xt = s.transpose(x, [3, 1, 2, 0]); // [cin, h, w, n]
    const f = s.transpose(dy, [1, 2, 0, 3]); // [oh, ow, n, cout]
    const p = ci.padInfo;
    const full = s.run(
      tf.Conv2D,
      { x: xt, filter: f },
      {
        strides: [1, 1],
        pad: [[0, 0], [p.top, p.bottom], [p.left, p.right], [0, 0]],
        dataFormat: 'NHWC',
        dilations: [sh, sw],
      },
    ); // [cin, >= kh, >= kw, cout]
    const cut =
      full.shape[1] === kh && full.shape[2] === kw
        ? full
        : s.run('Slice', { x: full }, { begin: [0, 0, 0, 0], size: [cin, kh, kw, cout] });
    return s.transpose(cut, [1, 2, 0, 3]);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// GatherV2: the stock C++ kernel computes a strided offset per element (~0.1 us per element here: the cutouts'
// warps gather 1.6M pixels of 3 channels, ~0.3 s a call). The gathered slices are contiguous, so they are copied
// in JS on the wasm heap: a memmove per slice (copyWithin) for long ones, an element loop for short ones. 32-bit
// types move as raw Int32 bits (float NaN payloads unchanged).

/** Slices shorter than this are copied element by element (a copyWithin call costs more). */
const MIN_COPYWITHIN = 16;

function gatherV2(args: KernelArgs): TensorInfo {
  const backend = args.backend as BackendWasm;
  const { x, indices } = args.inputs;
  const { axis, batchDims } = args.attrs as { axis: number; batchDims: number };
  if (x.dtype !== 'float32' && x.dtype !== 'int32') return stock.get(tf.GatherV2)!.kernelFunc(args as never) as TensorInfo;
  const ax = tf.util.parseAxisParam(axis, x.shape)[0];
  const info = tf.backend_util.segment_util.collectGatherOpShapeInfo(x, indices, ax, batchDims);
  const { batchSize, outerSize, dimSize, sliceSize } = info;
  const ids = backend.readSync(indices.dataId) as Int32Array;
  for (const i of ids) {
    if (!(i >= 0 && i < dimSize)) throw new Error(`GatherV2: the index value ${i} is not in [0, ${dimSize - 1}]`);
  }
  const perBatch = ids.length / batchSize;
  const out = backend.makeOutput(info.outputShape, x.dtype); // may grow (move) the heap: views after it
  const heap = new Int32Array(backend.typedArrayFromHeap(out).buffer);
  const src = backend.dataIdMap.get(x.dataId).memoryOffset / 4;
  const dst = backend.dataIdMap.get(out.dataId).memoryOffset / 4;
  let to = dst;
  for (let b = 0; b < batchSize; b++) {
    for (let o = 0; o < outerSize; o++) {
      const base = src + (b * outerSize + o) * dimSize * sliceSize;
      for (let j = b * perBatch; j < (b + 1) * perBatch; j++, to += sliceSize) {
        const from = base + ids[j] * sliceSize;
        if (sliceSize >= MIN_COPYWITHIN) heap.copyWithin(to, from, from + sliceSize);
        else for (let k = 0; k < sliceSize; k++) heap[to + k] = heap[from + k];
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Identity / Cast: the same buffer, one more reference (what the cpu and webgpu backends do).

function share(backend: BackendWasm, x: TensorInfo): TensorInfo {
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

function identity(args: KernelArgs): TensorInfo {
  const { x } = args.inputs;
  if (x.dtype === 'string') return stock.get(tf.Identity)!.kernelFunc(args as never) as TensorInfo;
  return share(args.backend as BackendWasm, x);
}

function cast(args: KernelArgs): TensorInfo {
  const { x } = args.inputs;
  const { dtype } = args.attrs as { dtype: tf.DataType };
  if (dtype !== x.dtype || x.dtype === 'string') return stock.get(tf.Cast)!.kernelFunc(args as never) as TensorInfo;
  return share(args.backend as BackendWasm, x);
}

// ---------------------------------------------------------------------------------------------------------------
// UnsortedSegmentSum (missing on wasm): out[ids[i], ...] += x[i, ...], in JS on the wasm heap. Used by tf.gather's
// gradient w.r.t. the table; the sizes there (codebook rows x channels) make a JS loop cheap next to the model.

function unsortedSegmentSum(args: KernelArgs): TensorInfo {
  const backend = args.backend as BackendWasm;
  const { x, segmentIds } = args.inputs;
  const { numSegments } = args.attrs as { numSegments: number };
  if (x.dtype !== 'float32' && x.dtype !== 'int32') throw new Error(`UnsortedSegmentSum on wasm: dtype ${x.dtype}`);
  const idRank = segmentIds.shape.length;
  const inner = tf.util.sizeFromShape(x.shape.slice(idRank));
  const outShape = [numSegments, ...x.shape.slice(idRank)];
  const xv = backend.readSync(x.dataId) as Float32Array | Int32Array;
  const ids = backend.readSync(segmentIds.dataId) as Int32Array;
  const out = backend.makeOutput(outShape, x.dtype);
  const ov = backend.typedArrayFromHeap(out) as Float32Array | Int32Array;
  ov.fill(0);
  for (let i = 0; i < ids.length; i++) {
    const seg = ids[i];
    if (seg < 0 || seg >= numSegments) continue; // TensorFlow drops out-of-range ids
    const src = i * inner;
    const dst = seg * inner;
    for (let k = 0; k < inner; k++) ov[dst + k] += xv[src + k];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------

const replacements: Array<{ name: string; kernelFunc: (args: KernelArgs) => TensorInfo }> = [
  { name: tf.Conv2DBackpropInput, kernelFunc: conv2DBackpropInput },
  { name: tf.Conv2DBackpropFilter, kernelFunc: conv2DBackpropFilter },
  { name: tf.BatchMatMul, kernelFunc: batchMatMul },
  { name: tf._FusedMatMul, kernelFunc: fusedMatMul },
  { name: tf.UnsortedSegmentSum, kernelFunc: unsortedSegmentSum },
  { name: tf.GatherV2, kernelFunc: gatherV2 },
  { name: tf.Identity, kernelFunc: identity },
  { name: tf.Cast, kernelFunc: cast },
];

/** Kernel names registered by registerFastWasmKernels(). */
export function fastWasmKernelNames(): string[] {
  return replacements.map((r) => r.name);
}

export function fastWasmKernelsRegistered(): boolean {
  return registered;
}

/**
 * Replace the stock wasm kernels with the fast ones (idempotent). Call before or after the wasm backend starts:
 * each replacement's setupFunc runs the stock setupFunc (the stock kernel functions need their cwraps, which the
 * engine sets up when a backend instance is created, for the kernels registered at that moment).
 */
export function registerFastWasmKernels(): void {
  if (registered) return;
  for (const { name, kernelFunc } of replacements) {
    const old = tf.getKernel(name, BACKEND);
    if (!stock.has(name)) stock.set(name, old ? { ...old } : undefined);
    if (old) tf.unregisterKernel(name, BACKEND);
    const setup = stock.get(name)?.setupFunc;
    tf.registerKernel({
      kernelName: name,
      backendName: BACKEND,
      kernelFunc: kernelFunc as unknown as tf.KernelFunc,
      ...(setup ? { setupFunc: setup } : {}),
    });
  }
  registered = true;
}

/** Put the stock kernels back (kernels the stock backend lacks are simply removed). */
export function unregisterFastWasmKernels(): void {
  if (!registered) return;
  for (const { name } of replacements) {
    tf.unregisterKernel(name, BACKEND);
    const old = stock.get(name);
    if (old) tf.registerKernel(old);
  }
  registered = false;
}
