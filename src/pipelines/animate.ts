// Animation frames, the VQGAN+CLIP "zoom video" way: the first frame is a normal generation; every next frame takes
// the previous picture, moves the camera (zoom about the centre, rotation, translation), encodes that with the VQGAN
// and optimises it for a few iterations more, so the picture keeps evolving under the prompts. The story phrases
// ('^') take turns every --change-prompt-every frames. Frame k's randomness is the seed's stream 'frame'/k.
import path from 'node:path';
import { UserError } from '../cli/errors.ts';
import type { Executor } from '../engine/ops.ts';
import { writePng } from '../io/image.ts';
import { encode, quantize } from '../models/vqgan.ts';
import { claimOutputDir } from '../util/names.ts';
import { Rng } from '../util/rng.ts';
import { Generation, checkSettings, type GenerateSettings, type Picture } from './generate.ts';
import type { LoadedModels } from './generate-models.ts';
import { VERSION } from './generate-run.ts';
import { storyPhraseAt, storyPhrases } from './prompts.ts';
import { downsamplingFactor } from '../models/vqgan.ts';

export interface Camera {
  /** Scale per frame (1.02 = 2% closer). */
  zoom: number;
  /** Degrees per frame, counter-clockwise. */
  rotate: number;
  /** Pixels per frame (positive x moves the view right, positive y down). */
  translateX: number;
  translateY: number;
}

export interface AnimateSettings {
  /** The generation settings; `iterations` is the first frame's count. */
  base: GenerateSettings;
  frames: number;
  iterationsPerFrame: number;
  camera: Camera;
  /** Story phrase changes every N frames (0 = the first phrase throughout). */
  changePromptEvery: number;
}

export type AnimateEvent = { type: 'frame'; frame: number; frames: number; path: string; losses: number[]; lossNames: string[] };

/**
 * The picture seen by a camera moved by `c`: output pixel p samples the input at centre + R(-angle) (p - centre -
 * t) / zoom, bilinearly, with edges clamped (the border smears in, which the next optimisation paints over).
 */
export function moveCamera(pic: Picture, c: Camera): Picture {
  const { width: w, height: h, data } = pic;
  const out = new Float32Array(data.length);
  const cx = (w - 1) / 2;
  const cy = (h - 1) / 2;
  const a = (-c.rotate * Math.PI) / 180;
  const cos = Math.cos(a) / c.zoom;
  const sin = Math.sin(a) / c.zoom;
  const clampX = (x: number) => Math.min(w - 1, Math.max(0, x));
  const clampY = (y: number) => Math.min(h - 1, Math.max(0, y));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const dx = x - cx + c.translateX;
      const dy = y - cy + c.translateY;
      const sx = clampX(cx + cos * dx - sin * dy);
      const sy = clampY(cy + sin * dx + cos * dy);
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const x1 = Math.min(w - 1, x0 + 1);
      const y1 = Math.min(h - 1, y0 + 1);
      const fx = sx - x0;
      const fy = sy - y0;
      for (let ch = 0; ch < 3; ch++) {
        const p = (yy: number, xx: number) => data[(yy * w + xx) * 3 + ch];
        const top = p(y0, x0) * (1 - fx) + p(y0, x1) * fx;
        const bot = p(y1, x0) * (1 - fx) + p(y1, x1) * fx;
        out[(y * w + x) * 3 + ch] = top * (1 - fy) + bot * fy;
      }
    }
  }
  return { data: out, width: w, height: h };
}

export function checkAnimateSettings(s: AnimateSettings): void {
  const int = (v: number, name: string, min: number) => {
    if (!Number.isInteger(v) || v < min) throw new UserError(`${name} must be an integer >= ${min} (got ${v})`);
  };
  int(s.frames, '--frames', 1);
  int(s.iterationsPerFrame, '--iterations-per-frame', 1);
  int(s.changePromptEvery, '--change-prompt-every', 0);
  const c = s.camera;
  if (!(c.zoom > 0.5 && c.zoom < 2)) throw new UserError(`--zoom ${c.zoom} is out of range`, 'use a zoom per frame between 0.5 and 2 (e.g. 1.02)');
  for (const [v, n] of [
    [c.rotate, '--rotate'],
    [c.translateX, '--translate x'],
    [c.translateY, '--translate y'],
  ] as const) {
    if (!Number.isFinite(v)) throw new UserError(`${n} must be a number (got ${v})`);
  }
  if (!s.base.prompts.trim()) throw new UserError('an animation needs text prompts', 'e.g. vqclip animate "a seed^a sprout^a tree" --frames 60');
}

/**
 * Renders the frames into a new folder (never an existing one), one PNG per frame with its settings embedded.
 * Stops after the current frame when `signal` aborts; frames written are kept.
 */
export async function runAnimation<T>(
  ex: Executor<T>,
  models: LoadedModels<T>,
  s: AnimateSettings,
  opts: { outDir: string; backend: string; signal?: AbortSignal; onEvent?: (e: AnimateEvent) => void; onStep?: (frame: number, iteration: number, total: number) => void },
): Promise<{ dir: string; frames: number; interrupted: boolean }> {
  checkAnimateSettings(s);
  checkSettings(s.base, downsamplingFactor(models.vqgan.config));
  if (!models.vqgan.weights.encoder) throw new UserError('animation needs the VQGAN encoder (to re-encode each moved frame)', 'load the model with its encoder');
  const dir = claimOutputDir(opts.outDir);
  const phrases = storyPhrases(s.base.prompts);
  const o = ex.ops;
  let prev: Picture | undefined;
  for (let k = 0; k < s.frames; k++) {
    if (opts.signal?.aborted) return { dir, frames: k, interrupted: true };
    const phrase = phrases[storyPhraseAt(k, s.changePromptEvery, phrases.length)];
    const seed = new Rng(s.base.seed).fork('frame').fork(k).int(2 ** 31);
    const settings: GenerateSettings = { ...s.base, prompts: phrase, seed, iterations: k === 0 ? s.base.iterations : s.iterationsPerFrame, changePromptEvery: 0, saveEvery: 0 };
    let initialZ: T | undefined;
    if (prev) {
      const moved = moveCamera(prev, s.camera);
      initialZ = ex.scope(() => {
        const x = o.addScalar(o.scale(o.constant(moved.data, [1, moved.height, moved.width, 3]), 2), -1);
        return quantize(o, models.vqgan.weights, encode(o, models.vqgan.weights, x)).zq;
      });
    }
    const gen = await Generation.create(ex, models.vqgan, models.guides, settings, { initialZ });
    let losses: number[] = [];
    try {
      while (gen.iteration < settings.iterations) {
        await new Promise<void>((resolve) => setImmediate(resolve)); // let a Ctrl-C be delivered (see generate-run)
        losses = (await gen.step()).losses;
        opts.onStep?.(k, gen.iteration, settings.iterations);
      }
      prev = await gen.picture();
      const file = path.join(dir, `${String(k).padStart(5, '0')}.png`);
      const record = { vqclip: VERSION, kind: 'animate', frame: k, animation: { ...s, base: { ...s.base } }, frameSettings: settings, models: models.records, backend: opts.backend, created: new Date().toISOString() };
      await writePng(file, prev.data, prev.width, prev.height, { Software: `vqclip ${VERSION}`, Description: phrase, vqclip: JSON.stringify(record) });
      opts.onEvent?.({ type: 'frame', frame: k, frames: s.frames, path: file, losses, lossNames: gen.lossNames });
    } finally {
      gen.dispose();
    }
  }
  return { dir, frames: s.frames, interrupted: false };
}
