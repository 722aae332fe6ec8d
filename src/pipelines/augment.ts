// The kornia augmentations of generate.py's cutters, as differentiable op-vocabulary functions with every random
// parameter drawn from our rng (kornia's draws come from torch's generator and cannot be reproduced).
//
// Parameter ranges and matrices follow kornia 0.6 (RandomAffine: angle U(-deg, deg), translation U(-t W, t W) x
// U(-t H, t H), x-shear U(-shear, shear) degrees, about the centre ((W-1)/2, (H-1)/2), rotation(-angle) @ shear;
// RandomPerspective: each corner moved inwards by U(0, 1) * distortion * (W/2, H/2); RandomErasing: area U(scale) *
// H W, aspect from `ratio`, one rectangle and one coin for the whole batch (same_on_batch); RandomResizedCrop;
// each sample is augmented with probability p). Deliberate differences, all documented:
//   - consecutive geometric augmentations are composed and sampled ONCE (bilinear, align_corners=True coordinates):
//     for a pixel, its position is mapped back through every stage; a stage with zeros padding multiplies the result
//     by the bilinear coverage of that position (what an all-ones image would give), one with border padding clamps
//     the position. Kornia resamples after every stage (slightly blurrier);
//   - ColorJitter follows torchvision's ColorJitter (brightness multiplies, contrast/saturation blend with the
//     grey mean / grey image, each followed by a clamp to [0, 1], in a random order per call), with the hue shift
//     done as a rotation of the chroma plane in YIQ space (a linear map, instead of an HSV round trip);
//   - 'Cr' (RandomCrop to the cut size, which the pooled cutouts already have) is the identity it is there;
//   - 'Sh' (sharpness), 'Et' (elastic) and 'Ts' (thin-plate spline) are not implemented: a UserError says so.
// The warp gathers four taps per output pixel with gatherRows, so its gradient is a scatter-add into the input.
//
// Two halves, so that a compiled step uploads only a few small arrays per step: `drawAugment` makes every random
// choice on the host as named step data (per-sample 3x3 matrices and flags, colour matrices, an erase mask, noise
// seeds), and `applyAugment` is the ops, which depend only on the settings, the batch size and the data's shapes,
// never on the draws. The warp's sampling positions, taps and weights are computed by ops from the matrices (on the
// GPU for a compiled step), the noise by o.randomNormal from a seed. A sample that its coin skips gets identity
// parameters (identity matrix, colour matrix I, noise 0), a skipped erase an all-ones mask, and ColorJitter's random
// order is data too: each enabled transform is one slot clamp(M y + k mean(grey(y))), and the drawn order decides
// which transform's parameters (M, k) each slot gets. One consequence: a jitter that skips every sample of the batch
// still clamps to [0, 1] (as skipped samples of a batch with jittered ones always were).
import { UserError } from '../cli/errors.ts';
import { dataTensors, type HostData, type Ops } from '../engine/ops.ts';
import { need, prefixed, putPrefixed, type StepData } from './step-data.ts';
import type { Rng } from '../util/rng.ts';

export const AUGMENT_NAMES = ['Ji', 'Gn', 'Pe', 'Ro', 'Af', 'Cr', 'Er', 'Re'] as const;
const UNSUPPORTED: Record<string, string> = { Sh: 'RandomSharpness', Et: 'RandomElasticTransform', Ts: 'RandomThinPlateSpline' };

export type Padding = 'zeros' | 'border';
export type AugmentSpec =
  | { kind: 'affine'; name: string; p: number; degrees: number; translate: number; shear: number; padding: Padding }
  | { kind: 'perspective'; name: string; p: number; distortion: number }
  | { kind: 'resizedCrop'; name: string; p: number; scale: [number, number]; ratio: [number, number] }
  | { kind: 'jitter'; name: string; p: number; brightness: number; contrast: number; saturation: number; hue: number }
  | { kind: 'erase'; name: string; p: number; scale: [number, number]; ratio: [number, number] }
  | { kind: 'gaussianNoise'; name: string; p: number; std: number }
  | { kind: 'identity'; name: string };

const ERASE = { scale: [0.1, 0.4] as [number, number], ratio: [0.3, 1 / 0.3] as [number, number] };

/** MakeCutoutsPoolingUpdate's fixed kornia list (cut method 'updatedpooling'). */
export const UPDATED_POOLING_AUGMENTS: readonly AugmentSpec[] = [
  { kind: 'affine', name: 'Af', p: 0.7, degrees: 15, translate: 0.1, shear: 0, padding: 'border' },
  { kind: 'perspective', name: 'Pe', p: 0.7, distortion: 0.7 },
  { kind: 'jitter', name: 'Ji', p: 0.7, brightness: 0, contrast: 0, saturation: 0.1, hue: 0.1 },
  { kind: 'erase', name: 'Er', p: 0.7, ...ERASE },
];

/**
 * The kornia modules generate.py builds from --augments names for 'latest' (MakeCutouts) and 'nrupdated'
 * (MakeCutoutsNRUpdate, which uses perspective 0.5 and affine 30 degrees). 'Cr' crops to the cut size, which every
 * cutter here already produces, so it is the identity.
 */
export function augmentSpecs(names: readonly string[], variant: 'latest' | 'nrupdated' = 'latest'): AugmentSpec[] {
  const nr = variant === 'nrupdated';
  return names.map((name): AugmentSpec => {
    switch (name) {
      case 'Ji':
        return { kind: 'jitter', name, p: 0.7, brightness: 0.1, contrast: 0.1, saturation: 0.1, hue: 0.1 };
      case 'Gn':
        return { kind: 'gaussianNoise', name, p: 0.5, std: 1 };
      case 'Pe':
        return { kind: 'perspective', name, p: 0.7, distortion: nr ? 0.5 : 0.7 };
      case 'Ro':
        return { kind: 'affine', name, p: 0.7, degrees: 15, translate: 0, shear: 0, padding: 'zeros' };
      case 'Af':
        return { kind: 'affine', name, p: 0.7, degrees: nr ? 30 : 15, translate: 0.1, shear: 5, padding: 'zeros' };
      case 'Cr':
        return { kind: 'identity', name };
      case 'Er':
        return { kind: 'erase', name, p: 0.7, ...ERASE };
      case 'Re':
        return { kind: 'resizedCrop', name, p: 0.5, scale: [0.1, 1], ratio: [0.75, 1.333] };
      default:
        if (name in UNSUPPORTED) {
          throw new UserError(`augment '${name}' (kornia ${UNSUPPORTED[name]}) is not supported by vqclip`, `leave it out; supported: ${AUGMENT_NAMES.join(' ')}`);
        }
        throw new UserError(`unknown augment '${name}'`, `choose from ${AUGMENT_NAMES.join(' ')}`);
    }
  });
}

const isGeometric = (s: AugmentSpec) => s.kind === 'affine' || s.kind === 'perspective' || s.kind === 'resizedCrop';

/**
 * The augmentations' plan over `specs`: runs of consecutive geometric specs (one warp each) and single photometric
 * specs, with the batch size of the tensor each one receives (1 = the image shared by all n samples).
 */
function augmentPlan(specs: readonly AugmentSpec[], n: number, n0: number): Array<{ at: number; run: AugmentSpec[]; batchIn: number }> {
  const out: Array<{ at: number; run: AugmentSpec[]; batchIn: number }> = [];
  let batch = n0;
  for (let i = 0; i < specs.length; ) {
    const at = i;
    const run: AugmentSpec[] = [];
    if (isGeometric(specs[i])) while (i < specs.length && isGeometric(specs[i])) run.push(specs[i++]);
    else run.push(specs[i++]);
    out.push({ at, run, batchIn: batch });
    const kind = run[0].kind;
    if (isGeometric(run[0]) || kind === 'jitter' || kind === 'gaussianNoise') batch = n;
  }
  return out;
}

/** One rng per spec: forked by name (a repeated name gets '#2', '#3'...), so one augmentation never changes another's draws. */
function specForks(specs: readonly AugmentSpec[], rng: Rng): Rng[] {
  const seen = new Map<string, number>();
  return specs.map((s) => {
    const k = (seen.get(s.name) ?? 0) + 1;
    seen.set(s.name, k);
    return rng.fork(k === 1 ? s.name : `${s.name}#${k}`);
  });
}

/**
 * Every random choice of `specs` applied to n samples of an [n0, H, W, C] batch (n0 = 1: one image shared by all),
 * as step data for applyAugment. Each spec draws from its own fork of `rng`.
 */
export function drawAugment(specs: readonly AugmentSpec[], n: number, shape: { n0: number; h: number; w: number; c: number }, rng: Rng): StepData {
  const forks = specForks(specs, rng);
  const out: StepData = {};
  for (const { at, run, batchIn } of augmentPlan(specs, n, shape.n0)) {
    if (isGeometric(run[0])) {
      const perSample = Array.from({ length: n }, () => [] as Array<WarpStage | null>);
      run.forEach((spec, j) => {
        for (let b = 0; b < n; b++) {
          const st = drawStage(spec, forks[at + j], shape.h, shape.w);
          perSample[b].push(st ? { inv: invert3(st.m), padding: st.padding } : null);
        }
      });
      putPrefixed(out, warpData(perSample, run.length), `warp${at}.`);
    } else putPrefixed(out, drawPhotometric(run[0], n, batchIn, shape.h, shape.w, shape.c, forks[at]), `photo${at}.`);
  }
  return out;
}

/** Applies `specs` in order to `x` ([1, S, S, C], shared by all n cutouts, or [n, S, S, C]) with drawAugment's data; returns [n, S, S, C]. */
export function applyAugment<T>(o: Ops<T>, x: T, n: number, specs: readonly AugmentSpec[], d: Record<string, T>): T {
  let out = x;
  for (const { at, run } of augmentPlan(specs, n, o.shape(x)[0])) {
    if (isGeometric(run[0])) out = applyWarp(o, out, n, run.length, prefixed(d, `warp${at}.`));
    else out = applyPhotometric(o, out, n, run[0], prefixed(d, `photo${at}.`));
  }
  return o.shape(out)[0] === n ? out : o.concat(Array.from({ length: n }, () => out), 0);
}

/** Applies `specs` in order to `x` with fresh draws from `rng` (drawAugment + applyAugment). */
export function augment<T>(o: Ops<T>, x: T, n: number, specs: readonly AugmentSpec[], rng: Rng): T {
  const [n0, h, w, c] = o.shape(x);
  return applyAugment(o, x, n, specs, dataTensors(o, drawAugment(specs, n, { n0, h, w, c }, rng)));
}

/** generate.py's final noise: x + U(0, noiseFac) * N(0, 1), one factor per cutout; the data of addCutoutNoise. */
export function drawCutoutNoise(noiseFac: number, n: number, rng: Rng): StepData {
  if (!noiseFac) return {};
  const fac = Float32Array.from({ length: n }, () => rng.uniformRange(0, noiseFac));
  return { seed: { data: drawSeed(rng), shape: [2] }, fac: { data: fac, shape: [n, 1, 1, 1] } };
}

/** x + fac * N(0, 1) with drawCutoutNoise's data (no data: x). */
export function addCutoutNoise<T>(o: Ops<T>, x: T, d: Record<string, T>): T {
  if (!('seed' in d)) return x;
  return o.add(x, o.mul(o.randomNormal(need(d, 'seed'), o.shape(x)), need(d, 'fac')));
}

/** A seed for o.randomNormal. */
function drawSeed(rng: Rng): Int32Array {
  return Int32Array.of(rng.uint32() | 0, rng.uint32() | 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Geometry: 3x3 matrices mapping input pixel coordinates (x, y, 1) to output pixel coordinates

export type Mat3 = number[]; // row-major 3x3

function mul3(a: Mat3, b: Mat3): Mat3 {
  const out = new Array<number>(9);
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 3; c++) out[r * 3 + c] = a[r * 3] * b[c] + a[r * 3 + 1] * b[3 + c] + a[r * 3 + 2] * b[6 + c];
  }
  return out;
}

export function invert3(m: Mat3): Mat3 {
  const [a, b, c, d, e, f, g, h, i] = m;
  const A = e * i - f * h;
  const B = -(d * i - f * g);
  const C = d * h - e * g;
  const det = a * A + b * B + c * C;
  if (Math.abs(det) < 1e-300) throw new RangeError('singular transform');
  return [A / det, -(b * i - c * h) / det, (b * f - c * e) / det, B / det, (a * i - c * g) / det, -(a * f - c * d) / det, C / det, -(a * h - b * g) / det, (a * e - b * d) / det];
}

/** kornia get_affine_matrix2d(translations, center, scale, angle, sx, sy) with sy = 0 and scale 1. */
export function affineMatrix(angleDeg: number, tx: number, ty: number, shearXDeg: number, cx: number, cy: number): Mat3 {
  const a = (-angleDeg * Math.PI) / 180; // kornia rotates by -angle
  const alpha = Math.cos(a);
  const beta = Math.sin(a);
  const rot: Mat3 = [alpha, beta, (1 - alpha) * cx - beta * cy + tx, -beta, alpha, beta * cx + (1 - alpha) * cy + ty, 0, 0, 1];
  const sx = Math.tan((shearXDeg * Math.PI) / 180);
  const shear: Mat3 = [1, -sx, sx * cy, 0, 1, 0, 0, 0, 1];
  return mul3(rot, shear);
}

/** The homography taking the four `src` points to the four `dst` points (kornia get_perspective_transform). */
export function perspectiveMatrix(src: [number, number][], dst: [number, number][]): Mat3 {
  // Unknowns h0..h7 with h8 = 1; two equations per correspondence; Gauss-Jordan elimination with partial pivoting
  // on the 8 x 9 augmented matrix (row r at r * 9; rows are swapped through `row`, not moved).
  const A = new Float64Array(72);
  for (let k = 0; k < 4; k++) {
    const [x, y] = src[k];
    const [u, v] = dst[k];
    A.set([x, y, 1, 0, 0, 0, -x * u, -y * u, u], 18 * k);
    A.set([0, 0, 0, x, y, 1, -x * v, -y * v, v], 18 * k + 9);
  }
  const row = [0, 9, 18, 27, 36, 45, 54, 63];
  for (let col = 0; col < 8; col++) {
    let piv = col;
    for (let r = col + 1; r < 8; r++) if (Math.abs(A[row[r] + col]) > Math.abs(A[row[piv] + col])) piv = r;
    const p = row[piv];
    row[piv] = row[col];
    row[col] = p;
    if (Math.abs(A[p + col]) < 1e-12) throw new RangeError('degenerate perspective points');
    for (let r = 0; r < 8; r++) {
      if (r === col) continue;
      const q = row[r];
      const f = A[q + col] / A[p + col];
      for (let c = col; c < 9; c++) A[q + c] -= f * A[p + c];
    }
  }
  const m: Mat3 = new Array<number>(9);
  for (let r = 0; r < 8; r++) m[r] = A[row[r] + 8] / A[row[r] + r];
  m[8] = 1;
  return m;
}

/** One geometric stage for one sample: its forward matrix and padding, or null when not applied. */
function drawStage(spec: AugmentSpec, rng: Rng, h: number, w: number): { m: Mat3; padding: Padding } | null {
  const apply = spec.kind !== 'identity' && 'p' in spec ? rng.bernoulli(spec.p) : false;
  switch (spec.kind) {
    case 'affine': {
      const angle = rng.uniformRange(-spec.degrees, spec.degrees);
      const tx = rng.uniformRange(-spec.translate * w, spec.translate * w);
      const ty = rng.uniformRange(-spec.translate * h, spec.translate * h);
      const shear = rng.uniformRange(-spec.shear, spec.shear);
      return apply ? { m: affineMatrix(angle, tx, ty, shear, (w - 1) / 2, (h - 1) / 2), padding: spec.padding } : null;
    }
    case 'perspective': {
      const start: [number, number][] = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]];
      const signs = [[1, 1], [-1, 1], [-1, -1], [1, -1]];
      const fx = (spec.distortion * w) / 2;
      const fy = (spec.distortion * h) / 2;
      const end = start.map(([x, y], k): [number, number] => [x + fx * rng.uniform() * signs[k][0], y + fy * rng.uniform() * signs[k][1]]);
      return apply ? { m: perspectiveMatrix(start, end), padding: 'zeros' } : null;
    }
    case 'resizedCrop': {
      const [cw, ch] = drawCropSize(rng, h, w, spec.scale, spec.ratio);
      const x0 = rng.intRange(0, w - cw + 1);
      const y0 = rng.intRange(0, h - ch + 1);
      const sx = cw > 1 ? (w - 1) / (cw - 1) : 1;
      const sy = ch > 1 ? (h - 1) / (ch - 1) : 1;
      return apply ? { m: [sx, 0, -x0 * sx, 0, sy, -y0 * sy, 0, 0, 1], padding: 'zeros' } : null;
    }
    default:
      return null;
  }
}

/** torchvision/kornia RandomResizedCrop size: 10 tries of area U(scale) H W and log-uniform aspect, else a fallback. */
function drawCropSize(rng: Rng, h: number, w: number, scale: [number, number], ratio: [number, number]): [number, number] {
  for (let t = 0; t < 10; t++) {
    const area = rng.uniformRange(scale[0], scale[1]) * h * w;
    const aspect = Math.exp(rng.uniformRange(Math.log(ratio[0]), Math.log(ratio[1])));
    const cw = Math.round(Math.sqrt(area * aspect));
    const ch = Math.round(Math.sqrt(area / aspect));
    if (cw > 0 && cw <= w && ch > 0 && ch <= h) return [cw, ch];
  }
  const inRatio = w / h;
  if (inRatio < ratio[0]) return [w, Math.round(w / ratio[0])];
  if (inRatio > ratio[1]) return [Math.round(h * ratio[1]), h];
  return [w, h];
}

/** One applied geometric stage: the inverse of its matrix (output -> input coordinates) and its padding. */
export interface WarpStage {
  inv: Mat3;
  padding: Padding;
}

/**
 * The warp's step data for n samples with `slots` stage slots each (perSample[b][s]: the stage in slot s, null or
 * absent = not applied): per slot, the inverse matrix's entries m0..m8 as [n, 1] columns, and per-sample flags:
 * `cover` = 1 where an applied zero-padding stage has an applied stage before it (its intermediate image's zero
 * padding then scales the result by the bilinear coverage of the position), `border` = 1 where an applied stage
 * clamps positions to the image. A slot not applied has the identity matrix and both flags 0.
 */
export function warpData(perSample: Array<Array<WarpStage | null>>, slots: number): StepData {
  const n = perSample.length;
  const out: StepData = {};
  for (let s = 0; s < slots; s++) {
    const m = Array.from({ length: 9 }, () => new Float32Array(n));
    const cover = new Float32Array(n);
    const border = new Float32Array(n);
    for (let b = 0; b < n; b++) {
      const st = perSample[b][s] ?? null;
      const inv = st ? st.inv : IDENTITY3;
      for (let k = 0; k < 9; k++) m[k][b] = inv[k];
      if (st?.padding === 'border') border[b] = 1;
      else if (st && perSample[b].slice(0, s).some((p) => p)) cover[b] = 1;
    }
    m.forEach((col, k) => (out[`s${s}.m${k}`] = { data: col, shape: [n, 1] }));
    out[`s${s}.cover`] = { data: cover, shape: [n, 1] };
    out[`s${s}.border`] = { data: border, shape: [n, 1] };
  }
  return out;
}

// Pixel coordinate grids [1, H * W] (x = column, y = row), one array per size: a replay sees the same constant.
const grids = new Map<string, { x: Float32Array; y: Float32Array }>();

function pixelGrid(h: number, w: number): { x: Float32Array; y: Float32Array } {
  const key = `${h}x${w}`;
  let g = grids.get(key);
  if (!g) {
    g = { x: new Float32Array(h * w), y: new Float32Array(h * w) };
    for (let i = 0; i < h * w; i++) {
      g.x[i] = i % w;
      g.y[i] = Math.floor(i / w);
    }
    if (grids.size >= 8) grids.delete(grids.keys().next().value!);
    grids.set(key, g);
  }
  return g;
}

/**
 * Resamples each sample b of `x` ([1 or n, H, W, C]; 1 = shared) through its stage slots with warpData's data:
 * output pixel p comes from position inv_0(inv_1(... inv_{S-1}(p))) with bilinear taps (grid_sample bilinear,
 * align_corners=True pixel coordinates, zero padding), scaled by the coverage of zero-padded intermediate stages
 * (and 0 where a homography sends the point behind the camera, w <= 1e-12); returns [n, H, W, C]. Positions,
 * taps, indices and weights are ops on [n, H * W] tensors (float32; a compiled step computes them on the GPU).
 */
function applyWarp<T>(o: Ops<T>, x: T, n: number, slots: number, d: Record<string, T>): T {
  const [n0, h, w, c] = o.shape(x);
  const hw = h * w;
  const grid = pixelGrid(h, w);
  let qx = o.constant(grid.x, [1, hw]);
  let qy = o.constant(grid.y, [1, hw]);
  let cover: T | undefined;
  const times = (a: T | undefined, b: T) => (a ? o.mul(a, b) : b);
  // The fraction of the bilinear support of positions v (along an axis of length len) inside the image; for integer
  // positions, whether they are inside.
  const coverage = (v: T, len: number) => o.mul(o.clamp(o.addScalar(v, 1), 0, 1), o.clamp(o.addScalar(o.neg(v), len), 0, 1));
  for (let s = slots - 1; s >= 0; s--) {
    const m = Array.from({ length: 9 }, (_, k) => need(d, `s${s}.m${k}`));
    const affine = (a: T, b: T, k: T) => o.add(o.add(o.mul(a, qx), o.mul(b, qy)), k);
    const z = affine(m[6], m[7], m[8]);
    // z <= 1e-12 (behind the camera): no contribution; dividing by at least 1e-12 and bounding the positions keeps
    // the arithmetic finite so that the zero weight stays zero.
    cover = times(cover, o.clamp(o.floor(o.scale(z, 1e12)), 0, 1));
    const zz = o.maximum(z, o.constant(Float32Array.of(1e-12), []));
    let nx = o.clamp(o.div(affine(m[0], m[1], m[2]), zz), -1e6, 1e6);
    let ny = o.clamp(o.div(affine(m[3], m[4], m[5]), zz), -1e6, 1e6);
    const border = need(d, `s${s}.border`);
    nx = o.add(nx, o.mul(border, o.sub(o.clamp(nx, 0, w - 1), nx)));
    ny = o.add(ny, o.mul(border, o.sub(o.clamp(ny, 0, h - 1), ny)));
    const flag = need(d, `s${s}.cover`);
    cover = times(cover, o.addScalar(o.mul(flag, o.addScalar(o.mul(coverage(nx, w), coverage(ny, h)), -1)), 1));
    qx = nx;
    qy = ny;
  }
  // Bilinear taps at (qx, qy); taps off the image get weight 0 (and any valid index).
  const x0 = o.floor(qx);
  const y0 = o.floor(qy);
  const fx = o.sub(qx, x0);
  const fy = o.sub(qy, y0);
  const axis = (v0: T, f: T, len: number) =>
    [0, 1].map((dv) => {
      const v = dv ? o.addScalar(v0, 1) : v0;
      const wt = o.mul(dv ? f : o.addScalar(o.neg(f), 1), coverage(v, len)); // for an integer v: 1 inside, 0 outside
      return { wt, at: o.clamp(v, 0, len - 1) };
    });
  const xs = axis(x0, fx, w);
  const ys = axis(y0, fy, h);
  const base = new Float32Array(n);
  if (n0 !== 1) for (let b = 0; b < n; b++) base[b] = b * hw;
  const baseT = o.constant(base, [n, 1]);
  // The four taps of every pixel in one gather (its gradient is then one scatter-add, not four).
  const taps = [0, 1, 2, 3].map((k) => ({ tx: xs[k & 1], ty: ys[k >> 1] }));
  const index = o.toInt(o.concat(taps.map(({ tx, ty }) => o.reshape(o.add(baseT, o.add(o.scale(ty.at, w), tx.at)), [1, n * hw])), 0));
  const weight = o.concat(taps.map(({ tx, ty }) => o.reshape(times(cover, o.mul(tx.wt, ty.wt)), [1, n * hw, 1])), 0);
  const rows = o.reshape(o.gatherRows(o.reshape(x, [n0 * hw, c]), o.reshape(index, [4 * n * hw])), [4, n * hw, c]);
  return o.reshape(o.sum(o.mul(rows, weight), [0]), [n, h, w, c]);
}

/**
 * Resamples each sample b of `x` ([1 or n, H, W, C]; 1 = shared) through its stages (applied first to last; the
 * output pixel p comes from position inv_1(... inv_k(p))) with bilinear taps; returns [n, H, W, C]. A sample without
 * stages is copied: the ops are the same whatever the stages (for a given largest number of stages).
 */
export function warpBatch<T>(o: Ops<T>, x: T, stages: WarpStage[][]): T {
  const slots = Math.max(1, ...stages.map((st) => st.length));
  return applyWarp(o, x, stages.length, slots, dataTensors(o, warpData(stages, slots)));
}

// ---------------------------------------------------------------------------------------------------------------
// Photometric augmentations

const GREY = [0.2989, 0.587, 0.114]; // torchvision rgb_to_grayscale
const GREY_DATA = Float32Array.from(GREY);

/**
 * Per-sample 3x3 colour matrices [n * 9] (out_c = sum_k m[c][k] x_k) as the step data of colorMatrix for a batch of
 * n0 samples: [3, n * 3] side by side when one image is shared (n0 = 1), else [n, 3, 3] (transposed per sample).
 */
function colorMatrixData(mats: Float32Array, n: number, n0: number): HostData {
  const t = new Float32Array(n * 9); // per sample the transposed matrix: [k][c]
  for (let b = 0; b < n; b++) for (let c = 0; c < 3; c++) for (let k = 0; k < 3; k++) t[b * 9 + k * 3 + c] = mats[b * 9 + c * 3 + k];
  if (n0 !== 1) return { data: t, shape: [n, 3, 3] };
  const side = new Float32Array(3 * n * 3);
  for (let b = 0; b < n; b++) for (let k = 0; k < 3; k++) for (let c = 0; c < 3; c++) side[k * n * 3 + b * 3 + c] = t[b * 9 + k * 3 + c];
  return { data: side, shape: [3, n * 3] };
}

/** Colour matrices (colorMatrixData) applied to an NHWC batch ([1 or n, h, w, 3]) as matmuls (a concat along the channel axis is very slow on wasm). */
function colorMatrix<T>(o: Ops<T>, x: T, mats: T, n: number): T {
  const [n0, h, w] = o.shape(x);
  if (n0 === 1) {
    // One image, n matrices side by side: [hw, 3] @ [3, n * 3].
    const y = o.matmul(o.reshape(x, [h * w, 3]), mats);
    return o.reshape(o.transpose(o.reshape(y, [h * w, n, 3]), [1, 0, 2]), [n, h, w, 3]);
  }
  return o.reshape(o.matmul(o.reshape(x, [n, h * w, 3]), mats), [n, h, w, 3]);
}

const IDENTITY3: Mat3 = [1, 0, 0, 0, 1, 0, 0, 0, 1];

/** The mean of each sample's grey image, [n, 1, 1, 1], as the grey value of its mean colour (one pass over x). */
function meanGrey<T>(o: Ops<T>, x: T): T {
  return o.sum(o.mul(o.mean(x, [1, 2], true), o.constant(GREY_DATA, [1, 1, 1, 3])), [3], true);
}

const YIQ: Mat3 = [0.299, 0.587, 0.114, 0.596, -0.274, -0.322, 0.211, -0.523, 0.312];
const YIQ_INVERSE = invert3(YIQ);

/** Hue rotation by `turns` of a full circle as a 3x3 RGB matrix (rotation of I/Q in YIQ space). */
export function hueMatrix(turns: number): Mat3 {
  const a = turns * 2 * Math.PI;
  const R: Mat3 = [1, 0, 0, 0, Math.cos(a), -Math.sin(a), 0, Math.sin(a), Math.cos(a)];
  return mul3(YIQ_INVERSE, mul3(R, YIQ));
}

/** The transforms of a jitter spec that are enabled (brightness, contrast, saturation, hue = 0..3), a static count. */
const jitterEnabled = (spec: Extract<AugmentSpec, { kind: 'jitter' }>) => [spec.brightness, spec.contrast, spec.saturation, spec.hue];

/** The random choices of one photometric spec for n samples of an [n0, h, w, c] batch. */
function drawPhotometric(spec: AugmentSpec, n: number, n0: number, h: number, w: number, c: number, rng: Rng): StepData {
  switch (spec.kind) {
    case 'identity':
      return {};
    case 'jitter': {
      if (c !== 3) throw new RangeError('colour jitter needs RGB images');
      const order = rng.permutation(4);
      const apply = Array.from({ length: n }, () => rng.bernoulli(spec.p));
      const factor = (range: number) =>
        Float32Array.from(apply, (on) => {
          const f = rng.uniformRange(Math.max(0, 1 - range), 1 + range);
          return on ? f : 1;
        });
      const fb = factor(spec.brightness);
      const fc = factor(spec.contrast);
      const fs = factor(spec.saturation);
      const hues = apply.map((on) => {
        const t = rng.uniformRange(-spec.hue, spec.hue);
        return on ? t : 0;
      });
      // One slot per enabled transform, in the drawn order; every slot is clamp(M y + k meanGrey(y)) per sample:
      // brightness M = f I; contrast M = f I, k = 1 - f; saturation M = f I + (1 - f) [grey; grey; grey]; hue the
      // YIQ rotation. Skipped samples have factors 1 and hue 0, i.e. M = I, k = 0.
      const enabled = jitterEnabled(spec);
      const out: StepData = {};
      order
        .filter((t) => enabled[t] > 0)
        .forEach((op, slot) => {
          const mats = new Float32Array(n * 9);
          const k = new Float32Array(n);
          const factors = [fb, fc, fs][op];
          for (let b = 0; b < n; b++) {
            const m = mats.subarray(b * 9, (b + 1) * 9);
            if (op === 3) m.set(hues[b] === 0 ? IDENTITY3 : hueMatrix(hues[b]));
            else {
              const f = factors[b];
              for (let r = 0; r < 3; r++) for (let q = 0; q < 3; q++) m[r * 3 + q] = (r === q ? f : 0) + (op === 2 ? (1 - f) * GREY[q] : 0);
              if (op === 1) k[b] = 1 - f;
            }
          }
          // The first slot sees the input batch; later ones the jittered [n, ...] batch.
          out[`t${slot}.m`] = colorMatrixData(mats, n, slot === 0 ? n0 : n);
          if (spec.contrast > 0) out[`t${slot}.k`] = { data: k, shape: [n, 1, 1, 1] };
        });
      return out;
    }
    case 'erase': {
      // same_on_batch: one coin and one rectangle for every cutout.
      const apply = rng.bernoulli(spec.p);
      const area = rng.uniformRange(spec.scale[0], spec.scale[1]) * h * w;
      const [r0, r1] = spec.ratio;
      const low = rng.uniform() < 0.5;
      const aspect = low ? rng.uniformRange(r0, 1) : rng.uniformRange(1, r1);
      const eh = Math.min(Math.max(Math.round(Math.sqrt(area * aspect)), 1), h);
      const ew = Math.min(Math.max(Math.round(Math.sqrt(area / aspect)), 1), w);
      const x0 = Math.floor(rng.uniformRange(0, w - ew + 1));
      const y0 = Math.floor(rng.uniformRange(0, h - eh + 1));
      const mask = new Float32Array(h * w).fill(1);
      if (apply) for (let yy = y0; yy < y0 + eh; yy++) mask.fill(0, yy * w + x0, yy * w + x0 + ew);
      return { mask: { data: mask, shape: [1, h, w, 1] } };
    }
    case 'gaussianNoise': {
      const on = Float32Array.from({ length: n }, () => (rng.bernoulli(spec.p) ? spec.std : 0));
      return { seed: { data: drawSeed(rng), shape: [2] }, std: { data: on, shape: [n, 1, 1, 1] } };
    }
    default:
      throw new Error(`not a photometric augmentation: ${spec.kind}`);
  }
}

function applyPhotometric<T>(o: Ops<T>, x: T, n: number, spec: AugmentSpec, d: Record<string, T>): T {
  const [, h, w, c] = o.shape(x);
  switch (spec.kind) {
    case 'identity':
      return x;
    case 'jitter': {
      const slots = jitterEnabled(spec).filter((v) => v > 0).length;
      let y = x;
      for (let slot = 0; slot < slots; slot++) {
        let z = colorMatrix(o, y, need(d, `t${slot}.m`), n);
        if (spec.contrast > 0) z = o.add(z, o.mul(meanGrey(o, y), need(d, `t${slot}.k`)));
        y = o.clamp(z, 0, 1);
      }
      return y;
    }
    case 'erase':
      return o.mul(x, need(d, 'mask'));
    case 'gaussianNoise':
      return o.add(x, o.mul(o.randomNormal(need(d, 'seed'), [n, h, w, c]), need(d, 'std')));
    default:
      throw new Error(`not a photometric augmentation: ${spec.kind}`);
  }
}
