// Cutouts: the batch of crops of the synthesised image that CLIP scores each step (nerdyrodent generate.py's
// MakeCutouts* classes), written against the op vocabulary (NHWC images in [0, 1]).
//
//   const cuts = makeCutouts(o, image, { method: 'latest', cutSize: 224, cutn: 32, cutPow: 1 }, rng.fork('cutouts').fork(step));
//
// Methods (generate.py --cut_method):
//   original        MakeCutoutsOrig: cutn random square crops (size = rand^cut_pow between cut_size and the short side),
//                   each resampled to cut_size with generate.py's `resample` (Lanczos-2 anti-aliasing when shrinking,
//                   reflect padding, then bicubic a=-0.75 align_corners=True), then clamp_with_grad(0, 1).
//   latest          MakeCutouts (the default): the WHOLE image pooled to cut_size ((adaptive avg + adaptive max) / 2),
//                   repeated cutn times, then the --augments list (default Af Pe Ji Er), then noise:
//                   cut + U(0, 0.1) * N(0, 1) per cutout.
//   updatedpooling  MakeCutoutsPoolingUpdate: the same pooling with its fixed kornia set (affine with border padding,
//                   perspective 0.7, hue/saturation jitter, erasing), then noise.
//   nrupdated       MakeCutoutsNRUpdate: original's random crops + resample, then the --augments list with that class's
//                   settings (perspective 0.5, affine 30 degrees), then noise.
//   fast            not in generate.py: original's random crops resized bilinearly (align_corners=False, no
//                   anti-aliasing) plus noise; no warps, so no gather. Measured here (wasm, 2 shared cores, 32 cutouts
//                   of 224 from 256x256, forward + backward): latest ~2.7 s (mostly the warps: their positions and
//                   taps are ops on [32, 224 * 224] tensors, then four gathers), original ~0.6 s. The crops'
//                   per-cutout matmul along H and the jitter's per-sample colour matrices are batched matmuls, which
//                   stock tfjs-wasm runs without XNNPACK (original ~4.9 s, latest ~6.1 s with it);
//                   engine/wasm-kernels.ts runs them as 2-D XNNPACK matmuls per batch.
// Every random choice comes from the rng handed in (forks 'boxes', 'augment', 'noise'), so a seed fixes the cutouts.
// Two halves: `drawCutouts` makes the random choices on the host as named step data (crop indices, warp matrices,
// colour matrices, noise seeds: small arrays), `applyCutouts` is the ops, which depend only on the settings (method,
// cutn, cutSize, image size, augments, noise factor) and the data's names and shapes. A compiled step is traced once
// and each step uploads only the new data (test/cutouts-structure.test.ts); `makeCutouts` is both in one call.
//
// Resampling and pooling are written as matrices applied along H and W with matmul: resample = Bicubic (dh x h) @
// Lanczos-with-reflect-padding (h x h), computed in float64 and rounded once; average pooling = window-averaging
// matrices; max pooling = elementwise maximum over one-hot row/column selections. Matmul's gradient is exact on every
// backend (tfjs's own resize/maxPool gradients are not, see ENGINE.md). A crop is not sliced out: its resampling
// matrices are widened to the whole image (zero outside the crop), so all crops are two fixed-shape matmuls; those
// matrices are gathered from a constant table of every crop size's matrix columns by per-step int32 indices.
import { UserError } from '../cli/errors.ts';
import { dataTensors, type Ops } from '../engine/ops.ts';
import type { Rng } from '../util/rng.ts';
import { addCutoutNoise, applyAugment, augmentSpecs, drawAugment, drawCutoutNoise, UPDATED_POOLING_AUGMENTS, type AugmentSpec } from './augment.ts';
import { need, prefixed, putPrefixed, type StepData } from './step-data.ts';

export const CUT_METHODS = ['latest', 'original', 'updatedpooling', 'nrupdated', 'fast'] as const;
/** generate.py's default --augments. */
export const DEFAULT_AUGMENTS: readonly string[] = ['Af', 'Pe', 'Ji', 'Er'];
export type CutMethod = (typeof CUT_METHODS)[number];

export interface CutoutConfig {
  method: CutMethod;
  /** Side of each cutout (CLIP's input resolution). */
  cutSize: number;
  /** Number of cutouts. */
  cutn: number;
  /** Crop size distribution exponent (original, nrupdated, fast); 1 = uniform between cut_size and the short side. */
  cutPow: number;
  /** generate.py --augments for 'latest' / 'nrupdated' (default ['Af', 'Pe', 'Ji', 'Er']). */
  augments?: readonly string[];
  /** Noise factor (generate.py: 0.1); 0 disables it. */
  noiseFac?: number;
}

export function parseCutMethod(text: string): CutMethod {
  const found = CUT_METHODS.find((m) => m === text.trim().toLowerCase());
  if (found) return found;
  throw new UserError(`unknown cut method '${text}'`, `choose one of ${CUT_METHODS.join(', ')}`);
}

/** The batch of cutouts [cutn, cutSize, cutSize, C] of `image` [1, H, W, C], with fresh draws from `rng`. */
export function makeCutouts<T>(o: Ops<T>, image: T, cfg: CutoutConfig, rng: Rng): T {
  const [, h, w, c] = o.shape(image);
  return applyCutouts(o, image, cfg, dataTensors(o, drawCutouts(cfg, { h, w, c }, rng)));
}

/** The augmentations of a method that has them. */
function methodAugments(cfg: CutoutConfig): AugmentSpec[] | undefined {
  switch (cfg.method) {
    case 'latest':
      return augmentSpecs(cfg.augments ?? DEFAULT_AUGMENTS);
    case 'updatedpooling':
      return [...UPDATED_POOLING_AUGMENTS];
    case 'nrupdated':
      return augmentSpecs(cfg.augments ?? DEFAULT_AUGMENTS, 'nrupdated');
    default:
      return undefined;
  }
}

const cropKind = (m: CutMethod): CropKind => (m === 'fast' ? 'bilinear' : 'resample');
const hasNoise = (m: CutMethod) => m !== 'original';

/**
 * Every random choice of the cutouts of an [1, h, w, c] image as step data for applyCutouts: crop boxes (drawn, or
 * `boxes` when given) as crop indices, the augmentations' draws, the noise's seed and factors.
 */
export function drawCutouts(cfg: CutoutConfig, image: { h: number; w: number; c: number }, rng: Rng, boxes?: readonly CutBox[]): StepData {
  const { h, w, c } = image;
  const { cutSize, cutn } = cfg;
  const out: StepData = {};
  if (cfg.method !== 'latest' && cfg.method !== 'updatedpooling') {
    const b = boxes ?? drawOrigBoxes(rng.fork('boxes'), cutn, cfg.cutPow, h, w, cutSize);
    if (b.length !== cutn) throw new RangeError(`${b.length} crop boxes for ${cutn} cutouts`);
    putPrefixed(out, cropData(b, cutSize, h, w, cropKind(cfg.method)), 'crop.');
  }
  const specs = methodAugments(cfg);
  if (specs) putPrefixed(out, drawAugment(specs, cutn, { n0: cfg.method === 'nrupdated' ? cutn : 1, h: cutSize, w: cutSize, c }, rng.fork('augment')), 'aug.');
  if (hasNoise(cfg.method)) putPrefixed(out, drawCutoutNoise(cfg.noiseFac ?? 0.1, cutn, rng.fork('noise')), 'noise.');
  return out;
}

/** The cutouts [cutn, cutSize, cutSize, C] of `image` [1, H, W, C] with drawCutouts' data (as tensors). */
export function applyCutouts<T>(o: Ops<T>, image: T, cfg: CutoutConfig, d: Record<string, T>): T {
  const { cutSize, cutn } = cfg;
  const specs = methodAugments(cfg);
  let cuts: T;
  if (cfg.method === 'latest' || cfg.method === 'updatedpooling') cuts = poolToSize(o, image, cutSize);
  else cuts = applyCrops(o, image, cutSize, cutn, cropKind(cfg.method), prefixed(d, 'crop.'));
  if (cfg.method === 'original') return o.clampWithGrad(cuts, 0, 1);
  if (specs) cuts = applyAugment(o, cuts, cutn, specs, prefixed(d, 'aug.'));
  return addCutoutNoise(o, cuts, prefixed(d, 'noise.'));
}

// ---------------------------------------------------------------------------------------------------------------
// Random crops (MakeCutoutsOrig)

/** A square crop: rows offsetY..offsetY+size-1, columns offsetX..offsetX+size-1. */
export interface CutBox {
  size: number;
  offsetX: number;
  offsetY: number;
}

/**
 * generate.py's crop draws: size = int(rand()^cut_pow * (max_size - min_size) + min_size) with
 * max_size = min(H, W), min_size = min(H, W, cut_size); offsets = randint(0, side - size + 1).
 */
export function drawOrigBoxes(rng: Rng, cutn: number, cutPow: number, h: number, w: number, cutSize: number): CutBox[] {
  const maxSize = Math.min(h, w);
  const minSize = Math.min(h, w, cutSize);
  return Array.from({ length: cutn }, () => {
    const size = Math.floor(rng.uniform() ** cutPow * (maxSize - minSize) + minSize);
    const offsetX = rng.intRange(0, w - size + 1);
    const offsetY = rng.intRange(0, h - size + 1);
    return { size, offsetX, offsetY };
  });
}

/** MakeCutoutsOrig.forward with given boxes: crop, resample to cutSize, concatenate, clamp_with_grad(0, 1). */
export function makeCutoutsOrig<T>(o: Ops<T>, image: T, cutSize: number, boxes: readonly CutBox[]): T {
  const [, h, w] = o.shape(image);
  return o.clampWithGrad(applyCrops(o, image, cutSize, boxes.length, 'resample', dataTensors(o, cropData(boxes, cutSize, h, w, 'resample'))), 0, 1);
}

/**
 * The crops of `image` [1, H, W, C] resampled to cutSize: [cutn, cutSize, cutSize, C], with cropData's data. Cutout b
 * is Ry_b . image . Rx_b^T per channel, where Ry_b = Resample(cutSize x size) . RowSelect(size x H, offsetY) (and
 * Rx_b likewise along W) is a [cutSize, H] matrix that is zero outside the crop's rows. The ops depend only on cutn,
 * cutSize, the image size and the data's form; the boxes are data (a compiled step runs with new crops).
 * Cost: the crop's matmuls widened to the whole image (about 1-2x their FLOPs for crops of half to all of it).
 */
function applyCrops<T>(o: Ops<T>, image: T, cutSize: number, cutn: number, kind: CropKind, d: Record<string, T>): T {
  const [n, h, w, c] = o.shape(image);
  if (n !== 1) throw new RangeError(`cutouts of a batch of ${n} images (one image expected)`);
  const { ry, rx } = cropMatrices(o, d, cutSize, cutn, h, w, kind);
  // Along W first, for every cutout in one matmul (the image is shared): [cutn * cut, W] @ [W, H * C].
  const cols = o.reshape(o.transpose(o.reshape(image, [h, w, c]), [1, 0, 2]), [w, h * c]);
  const a = o.reshape(o.matmul(rx, cols), [cutn, cutSize, h, c]);
  // Then along H per cutout: [cutn, cut, H] @ [cutn, H, cut * C], which is already NHWC.
  const at = o.reshape(o.transpose(a, [0, 2, 1, 3]), [cutn, h, cutSize * c]);
  return o.reshape(o.matmul(ry, at), [cutn, cutSize, cutSize, c]);
}

type CropKind = 'resample' | 'bilinear';

/** Crop tables larger than this (bytes) are not made; see cropData. */
const MAX_CROP_TABLE_BYTES = 64 * 2 ** 20;

/**
 * The crops' step data. Their matrices Ry [cutn, cutSize, H] and Rx [cutn * cutSize, W] have as nonzero parts the
 * [cut, size] matrices of the crop sizes, so they are GATHERED from a constant table (cropTable) by int32 indices:
 * the data is the indices (`y` [cutn * H], `x` [cutn * W]: cutn * (H + W) ints), and a compiled plan uploads the
 * table once. Where the table would be too big (short sides over 446 px at cut 224: 7.1 MB at 256 px, 95 MB at
 * 512 px), or for boxes of a size outside it (only hand-made ones: drawOrigBoxes stays inside), the data is the
 * matrices themselves (`ry`, `rx`; 2 x 7.3 MB at 256 px, 32 cutouts; 2 x 14.7 MB at 512 px): the same floats.
 */
function cropData(boxes: readonly CutBox[], cutSize: number, h: number, w: number, kind: CropKind): StepData {
  for (const b of boxes) {
    if (b.offsetY < 0 || b.offsetX < 0 || b.offsetY + b.size > h || b.offsetX + b.size > w) {
      throw new RangeError(`crop ${JSON.stringify(b)} outside a ${h}x${w} image`);
    }
  }
  const cutn = boxes.length;
  const { lo, hi, rows } = tableRange(cutSize, h, w);
  if (rows * cutSize * 4 <= MAX_CROP_TABLE_BYTES && boxes.every((b) => b.size >= lo && b.size <= hi)) {
    // Rows j of the image: the table row of the crop's column j - offset, or the zero row (the table's last).
    const indices = (side: number, offset: (b: CutBox) => number): Int32Array => {
      const idx = new Int32Array(cutn * side).fill(rows - 1);
      boxes.forEach((b, k) => {
        const first = cropTableRows(lo, b.size - 1) - 1; // rows of the sizes below b.size
        for (let j = 0; j < b.size; j++) idx[k * side + offset(b) + j] = first + j;
      });
      return idx;
    };
    return { y: { data: indices(h, (b) => b.offsetY), shape: [cutn * h] }, x: { data: indices(w, (b) => b.offsetX), shape: [cutn * w] } };
  }
  const ry = new Float32Array(cutn * cutSize * h);
  const rx = new Float32Array(cutn * cutSize * w);
  boxes.forEach((b, k) => {
    const m = cachedMatrix(kind, b.size, cutSize);
    for (let i = 0; i < cutSize; i++) {
      const row = m.subarray(i * b.size, (i + 1) * b.size);
      ry.set(row, (k * cutSize + i) * h + b.offsetY);
      rx.set(row, (k * cutSize + i) * w + b.offsetX);
    }
  });
  return { ry: { data: ry, shape: [cutn, cutSize, h] }, rx: { data: rx, shape: [cutn * cutSize, w] } };
}

/** Crop sizes the table holds (lo..hi) and its rows. */
function tableRange(cutSize: number, h: number, w: number): { lo: number; hi: number; rows: number } {
  const hi = Math.min(h, w);
  const lo = Math.min(h, w, cutSize);
  return { lo, hi, rows: cropTableRows(lo, hi) };
}

/** The crops' matrices Ry [cutn, cutSize, H] and Rx [cutn * cutSize, W] from cropData's data. */
function cropMatrices<T>(o: Ops<T>, d: Record<string, T>, cutSize: number, cutn: number, h: number, w: number, kind: CropKind): { ry: T; rx: T } {
  if (!('y' in d)) return { ry: need(d, 'ry'), rx: need(d, 'rx') };
  const { lo, hi, rows } = tableRange(cutSize, h, w);
  const table = o.constant(cropTable(kind, cutSize, lo, hi), [rows, cutSize]);
  const gathered = (side: number, idx: T): T => {
    const t = o.gatherRows(table, idx); // [cutn * side, cut]: the matrices' columns
    return o.transpose(o.reshape(t, [cutn, side, cutSize]), [0, 2, 1]);
  };
  return { ry: gathered(h, need(d, 'y')), rx: o.reshape(gathered(w, need(d, 'x')), [cutn * cutSize, w]) };
}

/** Rows of the crop table for sizes lo..hi: one per column of each size's matrix, plus the zero row. */
function cropTableRows(lo: number, hi: number): number {
  return ((lo + hi) * (hi - lo + 1)) / 2 + 1;
}

// One table per (kind, cut, size range): the same array every step, so a compiled plan's replay sees no change.
const tableCache = new Map<string, Float32Array>();
const TABLE_CACHE_ENTRIES = 4;

/**
 * Row (s, c) = column c of the [cut, s] matrix of crop size s (Float32, as cachedMatrix), sizes lo..hi in order;
 * the last row is zero.
 */
function cropTable(kind: CropKind, cut: number, lo: number, hi: number): Float32Array {
  const key = `${kind}:${cut}:${lo}:${hi}`;
  let t = tableCache.get(key);
  if (!t) {
    t = new Float32Array(cropTableRows(lo, hi) * cut);
    let row = 0;
    for (let s = lo; s <= hi; s++) {
      const m = kind === 'resample' ? resampleMatrix(s, cut) : bilinearMatrix(s, cut);
      for (let c = 0; c < s; c++) for (let i = 0; i < cut; i++) t[(row + c) * cut + i] = m[i * s + c];
      row += s;
    }
    if (tableCache.size >= TABLE_CACHE_ENTRIES) tableCache.delete(tableCache.keys().next().value!);
    tableCache.set(key, t);
  }
  return t;
}

// Crop sizes repeat from step to step (at most short side - cut size + 1 of them): keep their [cut, size] matrices.
const matrixCache = new Map<string, Float32Array>();
const MATRIX_CACHE_ENTRIES = 128;

function cachedMatrix(kind: CropKind, inSize: number, outSize: number): Float32Array {
  const key = `${kind}:${inSize}:${outSize}`;
  let m = matrixCache.get(key);
  if (m) {
    matrixCache.delete(key); // most recently used last
  } else {
    m = Float32Array.from(kind === 'resample' ? resampleMatrix(inSize, outSize) : bilinearMatrix(inSize, outSize));
    if (matrixCache.size >= MATRIX_CACHE_ENTRIES) matrixCache.delete(matrixCache.keys().next().value!);
  }
  matrixCache.set(key, m);
  return m;
}

// ---------------------------------------------------------------------------------------------------------------
// generate.py's resample() as a matrix

/** sinc(x) = sin(pi x) / (pi x), 1 at 0. */
function sinc(x: number): number {
  return x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
}

/**
 * generate.py's anti-aliasing kernel lanczos(ramp(ratio, 2), 2), in float32 like torch: ramp values are stored in a
 * float32 tensor, the kernel is computed and normalised in float32.
 */
export function lanczosKernel(ratio: number): Float32Array {
  const width = 2;
  const n = Math.ceil(width / ratio + 1);
  const out = new Float32Array(n);
  let cur = 0;
  for (let i = 0; i < n; i++) {
    out[i] = cur;
    cur += ratio;
  }
  // cat([-out[1:].flip(0), out])[1:-1]
  const full = [...Array.from(out.slice(1)).reverse().map((v) => -v), ...out].slice(1, -1);
  const k = full.map((x) => (-width < x && x < width ? Math.fround(Math.fround(sinc(x)) * Math.fround(sinc(Math.fround(x / width)))) : 0));
  let sum = 0;
  for (const v of k) sum = Math.fround(sum + v);
  return Float32Array.from(k, (v) => v / sum);
}

/** PyTorch's bicubic convolution weights for fraction t (A = -0.75), taps at floor-1 .. floor+2. */
function cubicWeights(t: number): [number, number, number, number] {
  const A = -0.75;
  const c1 = (x: number) => ((A + 2) * x - (A + 3)) * x * x + 1;
  const c2 = (x: number) => ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
  return [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)];
}

/** F.interpolate(mode='bicubic', align_corners=True) along one axis: [out, in] (taps clamped at the borders). */
export function bicubicMatrix(inSize: number, outSize: number): Float64Array {
  const m = new Float64Array(outSize * inSize);
  const scale = outSize > 1 ? (inSize - 1) / (outSize - 1) : 0;
  for (let i = 0; i < outSize; i++) {
    const real = i * scale;
    const idx = Math.min(Math.max(Math.floor(real), 0), inSize - 1);
    const t = Math.min(Math.max(real - idx, 0), 1);
    const wts = cubicWeights(t);
    for (let k = 0; k < 4; k++) {
      const src = Math.min(Math.max(idx - 1 + k, 0), inSize - 1);
      m[i * inSize + src] += wts[k];
    }
  }
  return m;
}

/** F.interpolate(mode='bilinear', align_corners=False) along one axis, no anti-aliasing: [out, in]. */
export function bilinearMatrix(inSize: number, outSize: number): Float64Array {
  const m = new Float64Array(outSize * inSize);
  const scale = inSize / outSize;
  for (let i = 0; i < outSize; i++) {
    const real = Math.max((i + 0.5) * scale - 0.5, 0);
    const i0 = Math.min(Math.floor(real), inSize - 1);
    const i1 = Math.min(i0 + 1, inSize - 1);
    const t = real - i0;
    m[i * inSize + i0] += 1 - t;
    m[i * inSize + i1] += t;
  }
  return m;
}

/** Index of `j` in a reflect-padded axis of length n (PyTorch 'reflect': the edge sample is not repeated). */
function reflectIndex(j: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  let r = ((j % period) + period) % period;
  if (r >= n) r = period - r;
  return r;
}

/**
 * generate.py's resample(x, (out, out)) along one axis as an [out, in] matrix: when shrinking, the Lanczos kernel
 * convolved over the reflect-padded axis (pad = (K-1)/2); then bicubic align_corners=True.
 */
export function resampleMatrix(inSize: number, outSize: number): Float64Array {
  const bic = bicubicMatrix(inSize, outSize);
  if (outSize >= inSize) return bic;
  const kernel = lanczosKernel(outSize / inSize);
  const pad = (kernel.length - 1) / 2;
  // lanczos[i, src]: output sample i of the 'valid' convolution over the padded axis.
  const lan = new Float64Array(inSize * inSize);
  for (let i = 0; i < inSize; i++) {
    for (let k = 0; k < kernel.length; k++) lan[i * inSize + reflectIndex(i + k - pad, inSize)] += kernel[k];
  }
  // m = bic @ lan; bic has at most 4 nonzeros per row.
  const m = new Float64Array(outSize * inSize);
  for (let i = 0; i < outSize; i++) {
    for (let j = 0; j < inSize; j++) {
      const b = bic[i * inSize + j];
      if (b !== 0) for (let s = 0; s < inSize; s++) m[i * inSize + s] += b * lan[j * inSize + s];
    }
  }
  return m;
}

/** generate.py's resample(x, (dh, dw)) of an NHWC batch. */
export function resample<T>(o: Ops<T>, x: T, dh: number, dw: number): T {
  const [, h, w] = o.shape(x);
  const mh = o.constant(Float32Array.from(resampleMatrix(h, dh)), [dh, h]);
  const mw = h === w && dh === dw ? mh : o.constant(Float32Array.from(resampleMatrix(w, dw)), [dw, w]);
  return applySeparable(o, x, mh, mw);
}

// ---------------------------------------------------------------------------------------------------------------
// Separable linear maps and adaptive pooling

/** Applies `mh` [dh, h] along H of an NHWC tensor. */
export function mapRows<T>(o: Ops<T>, x: T, mh: T): T {
  const [n, h, w, c] = o.shape(x);
  const dh = o.shape(mh)[0];
  const rows = n === 1 ? o.reshape(x, [h, w * c]) : o.reshape(o.transpose(x, [1, 0, 2, 3]), [h, n * w * c]);
  const y = o.matmul(mh, rows);
  return n === 1 ? o.reshape(y, [1, dh, w, c]) : o.transpose(o.reshape(y, [dh, n, w, c]), [1, 0, 2, 3]);
}

/** Applies `mw` [dw, w] along W of an NHWC tensor. */
export function mapCols<T>(o: Ops<T>, x: T, mw: T): T {
  const [n, h, w, c] = o.shape(x);
  const dw = o.shape(mw)[0];
  const cols = o.reshape(o.transpose(x, [2, 0, 1, 3]), [w, n * h * c]);
  return o.transpose(o.reshape(o.matmul(mw, cols), [dw, n, h, c]), [1, 2, 0, 3]);
}

/** mh along H, then mw along W: out[n, i, j, c] = sum mh[i, y] mw[j, x] x[n, y, x, c]. */
export function applySeparable<T>(o: Ops<T>, x: T, mh: T, mw: T): T {
  return mapCols(o, mapRows(o, x, mh), mw);
}

/** PyTorch adaptive pooling windows: start = floor(i in / out), end = ceil((i+1) in / out). */
export function adaptiveWindows(inSize: number, outSize: number): [start: number, end: number][] {
  return Array.from({ length: outSize }, (_, i) => [Math.floor((i * inSize) / outSize), Math.ceil(((i + 1) * inSize) / outSize)]);
}

/** nn.AdaptiveAvgPool1d as an [out, in] matrix. */
export function adaptiveAvgMatrix(inSize: number, outSize: number): Float32Array {
  const m = new Float32Array(outSize * inSize);
  adaptiveWindows(inSize, outSize).forEach(([s, e], i) => {
    for (let j = s; j < e; j++) m[i * inSize + j] = 1 / (e - s);
  });
  return m;
}

/** One-hot [out, in] matrices whose elementwise maximum over k is adaptive max pooling along one axis. */
export function adaptiveMaxSelections(inSize: number, outSize: number): Float32Array[] {
  const win = adaptiveWindows(inSize, outSize);
  const kmax = Math.max(...win.map(([s, e]) => e - s));
  return Array.from({ length: kmax }, (_, k) => {
    const m = new Float32Array(outSize * inSize);
    win.forEach(([s, e], i) => (m[i * inSize + Math.min(s + k, e - 1)] = 1));
    return m;
  });
}

/** (AdaptiveAvgPool2d(size) + AdaptiveMaxPool2d(size)) / 2 of an NHWC image, as generate.py's pooling cutters. */
export function poolToSize<T>(o: Ops<T>, x: T, size: number): T {
  const [, h, w] = o.shape(x);
  const avg = applySeparable(o, x, o.constant(adaptiveAvgMatrix(h, size), [size, h]), o.constant(adaptiveAvgMatrix(w, size), [size, w]));
  // Max over a rectangle = max over its rows of the max over its columns; ties go to the earliest row / column.
  const maxOf = (ts: T[]) => ts.reduce((a, b) => o.maximum(a, b));
  const rowMax = maxOf(adaptiveMaxSelections(h, size).map((m) => mapRows(o, x, o.constant(m, [size, h]))));
  const max = maxOf(adaptiveMaxSelections(w, size).map((m) => mapCols(o, rowMax, o.constant(m, [size, w]))));
  return o.scale(o.add(avg, max), 0.5);
}
