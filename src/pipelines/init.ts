// The initial latent of `vqclip generate` (generate.py's z before the first step) and the latent-side helpers of
// its loop: codebook range clamp, nearest codes, the fading init-weight pull. Latents are NHWC: [1, toksY, toksX, C].
//
//   random codes (default)  z = one_hot(randint(n_codes, [toksY * toksX])) @ codebook   (every position a code row)
//   image                   z = encode(image * 2 - 1) for an image already resized to sideX x sideY
//   pixels / gradient       generate.py's random_noise_image / random_gradient_image, then encoded like an image
// Random draws come from the rng handed in (use rng.fork('init')). `encode` must be what generate.py calls:
// VQModel.encode's first output (the QUANTIZED latent z_q), NHWC.
import type { HostValue, Ops } from '../engine/ops.ts';
import type { Rng } from '../util/rng.ts';

export const INIT_KINDS = ['random-codes', 'image', 'pixels', 'gradient'] as const;
export type InitKind = (typeof INIT_KINDS)[number];

/** generate.py's grid: toks = size // f, and the image side actually produced = toks * f. */
export function latentGrid(width: number, height: number, f: number): { toksX: number; toksY: number; sideX: number; sideY: number } {
  const toksX = Math.floor(width / f);
  const toksY = Math.floor(height / f);
  return { toksX, toksY, sideX: toksX * f, sideY: toksY * f };
}

/** generate.py's default init: a random code at every position, z = one_hot(codes) @ codebook. */
export function randomCodesLatent<T>(o: Ops<T>, codebook: T, toksY: number, toksX: number, rng: Rng): T {
  const [nCodes, dim] = o.shape(codebook);
  const codes = Int32Array.from({ length: toksY * toksX }, () => rng.int(nCodes));
  const z = o.matmul(o.oneHot(o.constantInt(codes, [codes.length]), nCodes), codebook);
  return o.reshape(z, [1, toksY, toksX, dim]);
}

/**
 * generate.py's random_noise_image: uniform integers 0..254 per channel (np.random.randint(0, 255)), as an HWC image
 * in [0, 1]. Drawn directly at sideY x sideX (generate.py draws a (w, h) array and Lanczos-resizes it to the grid
 * size, which for square sizes that are multiples of f changes nothing).
 */
export function randomNoiseImage(rng: Rng, sideY: number, sideX: number): Float32Array {
  return Float32Array.from({ length: sideY * sideX * 3 }, () => rng.int(255) / 255);
}

/** numpy linspace(start, stop, num)[i]. */
function linspace(start: number, stop: number, num: number, i: number): number {
  if (num === 1) return start;
  return i === num - 1 ? stop : start + i * ((stop - start) / (num - 1));
}

/**
 * generate.py's random_gradient_image: red ramps left to right from 0 to r1, green top to bottom from 0 to r2, blue
 * top to bottom from r0 to r3 (r0 ~ randint(0,255), r1 ~ randint(1,255), r2 ~ randint(2,255), r3 ~ randint(3,128),
 * drawn in that order), truncated to uint8; HWC in [0, 1].
 */
export function randomGradientImage(rng: Rng, sideY: number, sideX: number): Float32Array {
  const r0 = rng.intRange(0, 255);
  const r1 = rng.intRange(1, 255);
  const r2 = rng.intRange(2, 255);
  const r3 = rng.intRange(3, 128);
  const out = new Float32Array(sideY * sideX * 3);
  for (let y = 0; y < sideY; y++) {
    for (let x = 0; x < sideX; x++) {
      const p = (y * sideX + x) * 3;
      out[p] = Math.trunc(linspace(0, r1, sideX, x)) / 255;
      out[p + 1] = Math.trunc(linspace(0, r2, sideY, y)) / 255;
      out[p + 2] = Math.trunc(linspace(r0, r3, sideY, y)) / 255;
    }
  }
  return out;
}

export interface InitOptions<T> {
  kind: InitKind;
  /** [n_codes, C] (random codes). */
  codebook: T;
  toksY: number;
  toksX: number;
  /** Downsampling factor of the VQGAN (image side = toks * f). */
  f: number;
  /** Stream for the random draws (pass rng.fork('init')). */
  rng: Rng;
  /** VQModel.encode's quantized latent for an NHWC image in [-1, 1]; needed by every kind but random codes. */
  encode?: (image: T) => T | Promise<T>;
  /** kind 'image': NHWC [1, sideY, sideX, 3] in [0, 1], already resized (generate.py: PIL Lanczos). */
  image?: T;
}

/** The latent z before the first step. */
export async function initialLatent<T>(o: Ops<T>, opts: InitOptions<T>): Promise<T> {
  const { kind, toksY, toksX, f, rng } = opts;
  if (kind === 'random-codes') return randomCodesLatent(o, opts.codebook, toksY, toksX, rng);
  const [sideY, sideX] = [toksY * f, toksX * f];
  let image: T;
  if (kind === 'image') {
    if (!opts.image) throw new Error("initialLatent: kind 'image' needs opts.image");
    const [, ih, iw] = o.shape(opts.image);
    if (ih !== sideY || iw !== sideX) throw new Error(`initialLatent: init image is ${iw}x${ih}, expected ${sideX}x${sideY}`);
    image = opts.image;
  } else {
    const data = kind === 'pixels' ? randomNoiseImage(rng, sideY, sideX) : randomGradientImage(rng, sideY, sideX);
    image = o.constant(data, [1, sideY, sideX, 3]);
  }
  if (!opts.encode) throw new Error(`initialLatent: kind '${kind}' needs opts.encode`);
  return opts.encode(o.addScalar(o.scale(image, 2), -1));
}

/**
 * generate.py's --init_weight term at iteration i: mse(z, 0) * (1 / (2 i + 1)) * init_weight / 2, with the factor
 * (1 / (2 i + 1)) * init_weight / 2 given as a tensor (initWeightFactor). It pulls z towards ZERO (not towards the
 * initial latent: the script's mse against z_orig is commented out) and fades.
 */
export function initWeightLoss<T>(o: Ops<T>, z: T, factor: T): T {
  return o.mul(o.mean(o.square(z)), factor);
}

/**
 * The init-weight loss's factor at `iteration` as step data: a tensor (not an op parameter) so that a compiled
 * step's structure does not change with the iteration.
 */
export function initWeightFactor(iteration: number, initWeight: number): HostValue {
  return { data: Float32Array.of(((1 / (iteration * 2 + 1)) * initWeight) / 2), shape: [] };
}

/** Per-channel min and max over the codebook rows, shaped [1, 1, 1, C] (generate.py's z_min / z_max). */
export async function codebookRange<T>(o: Ops<T>, codebook: T): Promise<{ zMin: T; zMax: T }> {
  const [n, c] = o.shape(codebook);
  const data = await o.read(codebook);
  const lo = new Float32Array(c).fill(Infinity);
  const hi = new Float32Array(c).fill(-Infinity);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < c; j++) {
      lo[j] = Math.min(lo[j], data[i * c + j]);
      hi[j] = Math.max(hi[j], data[i * c + j]);
    }
  }
  return { zMin: o.constant(lo, [1, 1, 1, c]), zMax: o.constant(hi, [1, 1, 1, c]) };
}

/** z.maximum(z_min).minimum(z_max): applied after every optimiser step. */
export function clampToRange<T>(o: Ops<T>, z: T, zMin: T, zMax: T): T {
  return o.minimum(o.maximum(z, zMin), zMax);
}

/**
 * Index of the nearest code for every position of z (NHWC), flat in (b, h, w) order, by generate.py's
 * vector_quantize distance d = |z|^2 + |E|^2 - 2 z E^T (argmin, first on ties).
 */
export function nearestCodes<T>(o: Ops<T>, z: T, codebook: T): T {
  const dim = o.shape(codebook)[1];
  const flat = o.reshape(z, [-1, dim]);
  const d = o.sub(o.add(o.sum(o.square(flat), [1], true), o.reshape(o.sum(o.square(codebook), [1]), [1, -1])), o.scale(o.matmul(flat, codebook, false, true), 2));
  return o.argmin(d, 1);
}
