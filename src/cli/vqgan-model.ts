// What the VQGAN commands (reconstruct, encode, decode) share: the --ckpt/--config options with the default model
// location, the image-size rule (a multiple of the downsampling factor, or --fit pad|crop), and image <-> [-1,1].
import path from 'node:path';
import type { Argv } from 'yargs';
import { findTamingConfig, resolveCheckpointPath } from '../formats/convert.ts';
import { readTamingConfig } from '../formats/taming-config.ts';
import { locateWeight } from '../weights/registry.ts';
import { downsamplingFactor, type VqganConfig } from '../models/vqgan.ts';
import type { RgbImage } from '../io/image.ts';
import { UserError } from './errors.ts';

/** The model used when --ckpt is not given (weights registry id; files weights/<id>.ckpt + weights/<id>.yaml). */
export const DEFAULT_VQGAN = 'vqgan_imagenet_f16_16384';

export interface ModelArgs {
  ckpt?: string;
  config?: string;
}

export function withModelOptions<T>(y: Argv<T>) {
  return y
    .option('ckpt', { type: 'string', describe: `VQGAN or transformer checkpoint (.ckpt/.safetensors, or a folder); default weights/${DEFAULT_VQGAN}.ckpt` })
    .option('config', { type: 'string', describe: 'taming YAML config; default: the .yaml next to the checkpoint' });
}

export interface ModelFiles {
  ckpt: string;
  configFile: string;
  config: VqganConfig;
}

/** Resolves checkpoint and config (defaults, conventions) and reads the config, without touching the weights. */
export function resolveModelFiles(args: ModelArgs): ModelFiles {
  let ckpt = args.ckpt;
  let config = args.config;
  if (!ckpt) {
    // The default model from the weights folder; its error names each missing file, where it goes and its URL.
    try {
      [ckpt, config = config] = locateWeight(DEFAULT_VQGAN);
    } catch (err) {
      if (err instanceof UserError) throw new UserError(`no --ckpt given, and the default model is not installed (${err.message})`, `${err.hint}; or pass --ckpt FILE [--config FILE]`);
      throw err;
    }
  }
  const resolved = resolveCheckpointPath(ckpt);
  const configFile = config ?? findTamingConfig(resolved);
  if (!configFile) {
    throw new UserError(
      `no config found for ${resolved}`,
      `pass --config FILE, or save the model's .yaml next to it as ${resolved.replace(/\.[^./]+$/, '')}.yaml`,
    );
  }
  const cfg = readTamingConfig(configFile);
  return { ckpt: resolved, configFile, config: cfg.kind === 'transformer' ? cfg.model.firstStage : cfg.model };
}

export type Fit = 'pad' | 'crop';

export interface Fitted {
  image: RgbImage;
  /** The region of `image` that holds the original picture (for cropping the result back). */
  width: number;
  height: number;
}

/**
 * Makes the image sides multiples of `factor`: unchanged when they are, else padded (edge pixels repeated to the
 * right and bottom) or centre-cropped when `fit` says so, else a UserError.
 */
export function fitImage(img: RgbImage, factor: number, fit: Fit | undefined, file: string): Fitted {
  const { width, height } = img;
  if (width % factor === 0 && height % factor === 0) return { image: img, width, height };
  if (!fit) {
    throw new UserError(
      `${file}: image is ${width}x${height}; both sides must be multiples of ${factor} (the model's downsampling factor)`,
      `resize it, or pass --fit pad (pad to ${Math.ceil(width / factor) * factor}x${Math.ceil(height / factor) * factor}) or --fit crop (crop to ${Math.floor(width / factor) * factor}x${Math.floor(height / factor) * factor})`,
    );
  }
  if (fit === 'pad') {
    const w = Math.ceil(width / factor) * factor;
    const h = Math.ceil(height / factor) * factor;
    const out = new Float32Array(w * h * 3);
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        const s = (Math.min(y, height - 1) * width + Math.min(x, width - 1)) * 3;
        out.set(img.data.subarray(s, s + 3), (y * w + x) * 3);
      }
    return { image: { data: out, width: w, height: h }, width, height };
  }
  const w = Math.floor(width / factor) * factor;
  const h = Math.floor(height / factor) * factor;
  if (w === 0 || h === 0) throw new UserError(`${file}: image is ${width}x${height}, smaller than the model's downsampling factor ${factor}`, 'use a larger image or --fit pad');
  const image = cropImage(img, Math.floor((width - w) / 2), Math.floor((height - h) / 2), w, h);
  return { image, width: w, height: h };
}

export function cropImage(img: RgbImage, x0: number, y0: number, w: number, h: number): RgbImage {
  if (x0 === 0 && y0 === 0 && w === img.width && h === img.height) return img;
  const out = new Float32Array(w * h * 3);
  for (let y = 0; y < h; y++) out.set(img.data.subarray(((y0 + y) * img.width + x0) * 3, ((y0 + y) * img.width + x0 + w) * 3), y * w * 3);
  return { data: out, width: w, height: h };
}

export { downsamplingFactor };

/** Refuses an output path with an unexpected extension early (before the model runs). */
export function checkExtension(file: string, exts: string[], what: string): void {
  const ext = path.extname(file).toLowerCase();
  if (!exts.includes(ext)) throw new UserError(`${file}: ${what} must end in ${exts.join(' or ')}`, `choose an output name like out${exts[0]}`);
}
