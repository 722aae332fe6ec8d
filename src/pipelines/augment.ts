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
// The ops an augmentation makes depend only on its settings and the batch size, never on its random draws (a
// compiled plan traced once replays every step with new data): a sample that its coin skips gets identity
// parameters (identity taps, colour matrix I, noise 0), a skipped erase an all-ones mask, and ColorJitter's random
// order is data too: each enabled transform is one slot clamp(M y + k mean(grey(y))), and the drawn order decides
// which transform's parameters (M, k) each slot gets. One consequence: a jitter that skips every sample of the batch
// still clamps to [0, 1] (as skipped samples of a batch with jittered ones always were).
import { UserError } from '../cli/errors.ts';
import type { Ops } from '../engine/ops.ts';
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
 * Applies `specs` in order to `x` ([1, S, S, C], shared by all n cutouts, or [n, S, S, C]); returns [n, S, S, C].
 * Each spec draws from its own fork of `rng`, so changing one augmentation never changes another's draws.
 */
export function augment<T>(o: Ops<T>, x: T, n: number, specs: readonly AugmentSpec[], rng: Rng): T {
  const seen = new Map<string, number>();
  const forks = specs.map((s) => {
    const k = (seen.get(s.name) ?? 0) + 1;
    seen.set(s.name, k);
    return rng.fork(k === 1 ? s.name : `${s.name}#${k}`);
  });
  let out = x;
  for (let i = 0; i < specs.length; ) {
    if (isGeometric(specs[i])) {
      const run: { spec: AugmentSpec; rng: Rng }[] = [];
      for (; i < specs.length && isGeometric(specs[i]); i++) run.push({ spec: specs[i], rng: forks[i] });
      out = warp(o, out, n, run);
    } else {
      out = photometric(o, out, n, specs[i], forks[i]);
      i++;
    }
  }
  return o.shape(out)[0] === n ? out : o.concat(Array.from({ length: n }, () => out), 0);
}

/** generate.py's final noise: x + U(0, noiseFac) * N(0, 1), one factor per cutout. */
export function addCutoutNoise<T>(o: Ops<T>, x: T, noiseFac: number, rng: Rng): T {
  if (!noiseFac) return x;
  const [n, h, w, c] = o.shape(x);
  const per = h * w * c;
  const noise = new Float32Array(n * per);
  for (let b = 0; b < n; b++) {
    const fac = rng.uniformRange(0, noiseFac);
    for (let i = 0; i < per; i++) noise[b * per + i] = fac * rng.normal();
  }
  return o.add(x, o.constant(noise, [n, h, w, c]));
}

// ---------------------------------------------------------------------------------------------------------------
// Geometry: 3x3 matrices mapping input pixel coordinates (x, y, 1) to output pixel coordinates

export type Mat3 = number[]; // row-major 3x3

const mul3 = (a: Mat3, b: Mat3): Mat3 =>
  Array.from({ length: 9 }, (_, k) => {
    const r = Math.floor(k / 3);
    const c = k % 3;
    return a[r * 3] * b[c] + a[r * 3 + 1] * b[3 + c] + a[r * 3 + 2] * b[6 + c];
  });

export function invert3(m: Mat3): Mat3 {
  const [a, b, c, d, e, f, g, h, i] = m;
  const A = e * i - f * h;
  const B = -(d * i - f * g);
  const C = d * h - e * g;
  const det = a * A + b * B + c * C;
  if (Math.abs(det) < 1e-300) throw new RangeError('singular transform');
  const inv = [A, -(b * i - c * h), b * f - c * e, B, a * i - c * g, -(a * f - c * d), C, -(a * h - b * g), a * e - b * d];
  return inv.map((v) => v / det);
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
  // Unknowns h0..h7 with h8 = 1; two equations per correspondence; Gaussian elimination with partial pivoting.
  const A: number[][] = [];
  for (let k = 0; k < 4; k++) {
    const [x, y] = src[k];
    const [u, v] = dst[k];
    A.push([x, y, 1, 0, 0, 0, -x * u, -y * u, u]);
    A.push([0, 0, 0, x, y, 1, -x * v, -y * v, v]);
  }
  for (let col = 0; col < 8; col++) {
    let piv = col;
    for (let r = col + 1; r < 8; r++) if (Math.abs(A[r][col]) > Math.abs(A[piv][col])) piv = r;
    [A[col], A[piv]] = [A[piv], A[col]];
    if (Math.abs(A[col][col]) < 1e-12) throw new RangeError('degenerate perspective points');
    for (let r = 0; r < 8; r++) {
      if (r === col) continue;
      const f = A[r][col] / A[col][col];
      for (let c = col; c < 9; c++) A[r][c] -= f * A[col][c];
    }
  }
  return [...Array.from({ length: 8 }, (_, r) => A[r][8] / A[r][r]), 1];
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

/** Bilinear tap weights at (x, y) with zero padding: [index, weight] x 4 (index -1 for taps off the image). */
function taps(x: number, y: number, h: number, w: number, out: Float64Array, idx: Int32Array): void {
  const x0 = Math.floor(x);
  const y0 = Math.floor(y);
  const fx = x - x0;
  const fy = y - y0;
  const cand = [
    [x0, y0, (1 - fx) * (1 - fy)],
    [x0 + 1, y0, fx * (1 - fy)],
    [x0, y0 + 1, (1 - fx) * fy],
    [x0 + 1, y0 + 1, fx * fy],
  ];
  for (let k = 0; k < 4; k++) {
    const [cx, cy, wt] = cand[k];
    const inside = cx >= 0 && cx < w && cy >= 0 && cy < h;
    idx[k] = inside ? cy * w + cx : -1;
    out[k] = inside ? wt : 0;
  }
}

/** One applied geometric stage: the inverse of its matrix (output -> input coordinates) and its padding. */
export interface WarpStage {
  inv: Mat3;
  padding: Padding;
}

/** Draws a run of geometric augmentations for n samples and applies it as one resampling. */
function warp<T>(o: Ops<T>, x: T, n: number, run: { spec: AugmentSpec; rng: Rng }[]): T {
  const [, h, w] = o.shape(x);
  const stages = Array.from({ length: n }, () => [] as WarpStage[]);
  for (const { spec, rng } of run) {
    for (let b = 0; b < n; b++) {
      const st = drawStage(spec, rng, h, w);
      if (st) stages[b].push({ inv: invert3(st.m), padding: st.padding });
    }
  }
  return warpBatch(o, x, stages);
}

/**
 * Resamples each sample b of `x` ([1 or n, H, W, C]; 1 = shared) through its stages (applied first to last; the
 * output pixel p comes from position inv_1(... inv_k(p))) with bilinear taps; returns [n, H, W, C]. A sample without
 * stages is copied (one tap of weight 1): the ops are the same whatever the stages.
 */
export function warpBatch<T>(o: Ops<T>, x: T, stages: WarpStage[][]): T {
  const [n0, h, w, c] = o.shape(x);
  const n = stages.length;

  const hw = h * w;
  const index = Array.from({ length: 4 }, () => new Int32Array(n * hw));
  // Weights repeated per channel: an elementwise product of equal shapes (broadcasting is slow on wasm).
  const weight = Array.from({ length: 4 }, () => new Float32Array(n * hw * c));
  const tw = new Float64Array(4);
  const ti = new Int32Array(4);
  for (let b = 0; b < n; b++) {
    const base = (n0 === 1 ? 0 : b) * hw;
    const st = stages[b];
    for (let py = 0; py < h; py++) {
      for (let px = 0; px < w; px++) {
        let qx = px;
        let qy = py;
        let cover = 1;
        for (let s = st.length - 1; s >= 0; s--) {
          const m = st[s].inv;
          const z = m[6] * qx + m[7] * qy + m[8];
          if (!(z > 1e-12)) {
            cover = 0;
            break;
          }
          const nx = (m[0] * qx + m[1] * qy + m[2]) / z;
          const ny = (m[3] * qx + m[4] * qy + m[5]) / z;
          qx = nx;
          qy = ny;
          if (st[s].padding === 'border') {
            qx = Math.min(Math.max(qx, 0), w - 1);
            qy = Math.min(Math.max(qy, 0), h - 1);
          } else if (s > 0) {
            // Zero padding of an intermediate image: the fraction of this position's bilinear support inside it.
            taps(qx, qy, h, w, tw, ti);
            cover *= tw[0] + tw[1] + tw[2] + tw[3];
          }
        }
        const p = b * hw + py * w + px;
        if (cover === 0) {
          for (let k = 0; k < 4; k++) index[k][p] = base;
          continue;
        }
        taps(qx, qy, h, w, tw, ti);
        for (let k = 0; k < 4; k++) {
          index[k][p] = base + Math.max(ti[k], 0);
          weight[k].fill(tw[k] * cover, p * c, (p + 1) * c);
        }
      }
    }
  }
  const table = o.reshape(x, [n0 * hw, c]);
  let sum: T | undefined;
  for (let k = 0; k < 4; k++) {
    const g = o.mul(o.gatherRows(table, o.constantInt(index[k], [n * hw])), o.constant(weight[k], [n * hw, c]));
    sum = sum ? o.add(sum, g) : g;
  }
  return o.reshape(sum!, [n, h, w, c]);
}

// ---------------------------------------------------------------------------------------------------------------
// Photometric augmentations

const GREY = [0.2989, 0.587, 0.114]; // torchvision rgb_to_grayscale

/**
 * Per-sample 3x3 colour matrices [n * 9] (out_c = sum_k m[c][k] x_k) applied to an NHWC batch ([1 or n, h, w, 3]),
 * as matmuls (a concat along the channel axis is very slow on wasm).
 */
function colorMatrix<T>(o: Ops<T>, x: T, mats: Float32Array, n: number): T {
  const [n0, h, w] = o.shape(x);
  const t = new Float32Array(n * 9); // per sample the transposed matrix: [k][c]
  for (let b = 0; b < n; b++) for (let c = 0; c < 3; c++) for (let k = 0; k < 3; k++) t[b * 9 + k * 3 + c] = mats[b * 9 + c * 3 + k];
  if (n0 === 1) {
    // One image, n matrices side by side: [hw, 3] @ [3, n * 3].
    const side = new Float32Array(3 * n * 3);
    for (let b = 0; b < n; b++) for (let k = 0; k < 3; k++) for (let c = 0; c < 3; c++) side[k * n * 3 + b * 3 + c] = t[b * 9 + k * 3 + c];
    const y = o.matmul(o.reshape(x, [h * w, 3]), o.constant(side, [3, n * 3]));
    return o.reshape(o.transpose(o.reshape(y, [h * w, n, 3]), [1, 0, 2]), [n, h, w, 3]);
  }
  return o.reshape(o.matmul(o.reshape(x, [n, h * w, 3]), o.constant(t, [n, 3, 3])), [n, h, w, 3]);
}

const IDENTITY3: Mat3 = [1, 0, 0, 0, 1, 0, 0, 0, 1];

/** The mean of each sample's grey image, [n, 1, 1, 1], as the grey value of its mean colour (one pass over x). */
function meanGrey<T>(o: Ops<T>, x: T, grey: Float32Array): T {
  return o.sum(o.mul(o.mean(x, [1, 2], true), o.constant(grey, [1, 1, 1, 3])), [3], true);
}

/** Hue rotation by `turns` of a full circle as a 3x3 RGB matrix (rotation of I/Q in YIQ space). */
export function hueMatrix(turns: number): Mat3 {
  const T: Mat3 = [0.299, 0.587, 0.114, 0.596, -0.274, -0.322, 0.211, -0.523, 0.312];
  const a = turns * 2 * Math.PI;
  const R: Mat3 = [1, 0, 0, 0, Math.cos(a), -Math.sin(a), 0, Math.sin(a), Math.cos(a)];
  return mul3(invert3(T), mul3(R, T));
}

function photometric<T>(o: Ops<T>, x: T, n: number, spec: AugmentSpec, rng: Rng): T {
  const [, h, w, c] = o.shape(x);
  switch (spec.kind) {
    case 'identity':
      return x;
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
      const enabled = [spec.brightness, spec.contrast, spec.saturation, spec.hue];
      const grey = Float32Array.from(GREY);
      let y = x;
      for (const op of order.filter((t) => enabled[t] > 0)) {
        const mats = new Float32Array(n * 9);
        const k = new Float32Array(n);
        for (let b = 0; b < n; b++) {
          const m = mats.subarray(b * 9, (b + 1) * 9);
          if (op === 3) m.set(hues[b] === 0 ? IDENTITY3 : hueMatrix(hues[b]));
          else {
            const f = [fb, fc, fs][op][b];
            for (let r = 0; r < 3; r++) for (let q = 0; q < 3; q++) m[r * 3 + q] = (r === q ? f : 0) + (op === 2 ? (1 - f) * grey[q] : 0);
            if (op === 1) k[b] = 1 - f;
          }
        }
        let z = colorMatrix(o, y, mats, n);
        if (spec.contrast > 0) z = o.add(z, o.mul(meanGrey(o, y, grey), o.constant(k, [n, 1, 1, 1])));
        y = o.clamp(z, 0, 1);
      }
      return y;
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
      return o.mul(x, o.constant(mask, [1, h, w, 1]));
    }
    case 'gaussianNoise': {
      const per = h * w * c;
      const noise = new Float32Array(n * per);
      for (let b = 0; b < n; b++) if (rng.bernoulli(spec.p)) rng.fork(b).fillNormal(noise.subarray(b * per, (b + 1) * per), 0, spec.std);
      return o.add(x, o.constant(noise, [n, h, w, c]));
    }
    default:
      throw new Error(`not a photometric augmentation: ${spec.kind}`);
  }
}
