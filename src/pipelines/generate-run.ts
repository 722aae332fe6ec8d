// A whole `vqclip generate` run around the Generation stepper: models, prompt images, the output file (claimed so
// no earlier result is ever overwritten), progress images and frames, the settings embedded in every PNG,
// interruption (the current image plus a resumable state file) and resuming. Progress is reported as events, which
// the plain-text reporter prints and a terminal UI can draw.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { UserError } from '../cli/errors.ts';
import type { Executor } from '../engine/ops.ts';
import { tfOps } from '../engine/tfjs-ops.ts';
import { FormatError, type HostTensor } from '../formats/host-tensor.ts';
import { SafetensorsFile, writeSafetensors } from '../formats/safetensors.ts';
import { readPngText, writePng } from '../io/image.ts';
import { claimOutputDir, claimOutputPath } from '../util/names.ts';
import { downsamplingFactor, weightTensors } from '../models/vqgan.ts';
import { checkSettings, DEFAULT_SETTINGS, Generation, type GenerateSettings, type GenerationState } from './generate.ts';
import { latentGrid } from './init.ts';
import { choiceFromRecords, loadGenerateModels, type LoadedModels, type ModelChoice, type ModelRecord } from './generate-models.ts';
import { parsePromptList } from './prompts.ts';

export const VERSION: string = JSON.parse(fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../package.json'), 'utf8')).version;

/** What a generated PNG records (PNG iTXt chunk 'vqclip'); `vqclip generate --from` replays it. */
export interface RunRecord {
  vqclip: string;
  kind: 'generate';
  settings: GenerateSettings;
  models: ModelRecord[];
  backend: string;
  engine: string;
  iteration: number;
  losses?: number[];
  created: string;
}

export type GenerateEvent =
  | { type: 'start'; output: string; settings: GenerateSettings; models: ModelRecord[]; backend: string; engine: string; lossNames: string[]; fromIteration: number; sideX: number; sideY: number }
  | { type: 'step'; iteration: number; iterations: number; losses: number[]; lossNames: string[]; total: number; itPerSec: number; etaSeconds: number }
  | { type: 'saved'; path: string; iteration: number; kind: 'progress' | 'frame' | 'final' }
  | { type: 'interrupted'; output: string; resumeFile: string; iteration: number }
  | { type: 'done'; output: string; iteration: number; seconds: number };

export interface RunRequest {
  settings: GenerateSettings;
  models: ModelChoice;
  /** Desired output PNG; the first free name (name.png, name-2.png, ...) is used unless resuming. */
  output: string;
  /** Also write every saved step as a frame into this folder (created, never reused). */
  frames?: string;
  /** Continue the run saved in this state file. */
  resumeFile?: string;
  backend: string;
  /** The engine's name for the record ('tfjs' or 'compiled'; default tfjs). */
  engine?: string;
  signal?: AbortSignal;
  onEvent?: (e: GenerateEvent) => void;
  /** Start from this latent instead of settings.init (e.g. a prior sample), NHWC. */
  initialLatent?: () => Promise<unknown>;
  /** Models already loaded (batch and animation runs load them once); the caller disposes them. */
  loaded?: LoadedModels<unknown>;
}

export interface RunSummary {
  output: string;
  interrupted: boolean;
  resumeFile?: string;
  iteration: number;
  losses: number[];
  lossNames: string[];
  total: number;
  seconds: number;
  seed: number;
  frames?: string;
}

export function resumeFileFor(output: string): string {
  return output.replace(/\.png$/i, '') + '.resume.safetensors';
}

/** Reads an image file resized to w x h (PIL LANCZOS in generate.py; libvips lanczos3 here), NHWC in [0, 1]. */
async function readResized(file: string, w: number, h: number, what: string): Promise<Float32Array> {
  if (!fs.existsSync(file)) throw new UserError(`${what} ${file} not found`, 'check the path');
  let buf: Buffer;
  try {
    buf = await sharp(file).autoOrient().removeAlpha().toColourspace('srgb').resize(w, h, { fit: 'fill', kernel: 'lanczos3' }).raw().toBuffer();
  } catch (err) {
    throw new FormatError(file, `cannot decode image (${(err as Error).message})`, 'use a PNG, JPEG, WebP, TIFF or GIF file');
  }
  return Float32Array.from(buf, (v) => v / 255);
}

/** The record embedded in a PNG made by vqclip generate, or a clear error. */
export function readRunRecord(file: string): RunRecord {
  const text = readPngText(file);
  const raw = text.vqclip;
  if (!raw) throw new UserError(`${file} holds no vqclip settings`, 'pass a PNG written by `vqclip generate`');
  let rec: RunRecord;
  try {
    rec = JSON.parse(raw) as RunRecord;
  } catch {
    throw new UserError(`${file}: its vqclip settings are not valid JSON`, 'the file was edited or truncated');
  }
  if (rec.kind !== 'generate' || !rec.settings || !Array.isArray(rec.models)) throw new UserError(`${file}: not a vqclip generate record`);
  return { ...rec, settings: { ...DEFAULT_SETTINGS, ...rec.settings } };
}

interface ResumeData<T> {
  record: RunRecord;
  output: string;
  state: GenerationState<T>;
}

function writeResumeFile<T>(file: string, record: RunRecord, output: string, state: { z: HostTensor; step: number; buffers: Record<string, HostTensor> }): void {
  const tensors = new Map<string, HostTensor>([['z', state.z]]);
  for (const [k, v] of Object.entries(state.buffers)) tensors.set(`optimizer.${k}`, v);
  writeSafetensors(file, tensors, { vqclip: JSON.stringify(record), output, optimizerStep: String(state.step) });
}

function readResumeFile<T>(ex: Executor<T>, file: string): ResumeData<T> {
  let f: SafetensorsFile;
  try {
    f = SafetensorsFile.open(file);
  } catch (err) {
    if (err instanceof FormatError) throw new UserError(`cannot resume from ${file}: ${err.problem}`, 'pass the .resume.safetensors file an interrupted run wrote');
    throw err;
  }
  try {
    const meta = f.metadata;
    if (!meta.vqclip || !meta.output || !f.has('z')) throw new UserError(`${file} is not a vqclip resume file`, 'pass the .resume.safetensors file an interrupted run wrote');
    const record = JSON.parse(meta.vqclip) as RunRecord;
    const toTensor = (h: HostTensor) => ex.ops.constant(h.data as Float32Array, h.shape);
    const buffers: Record<string, T> = {};
    for (const k of f.keys()) if (k.startsWith('optimizer.')) buffers[k.slice('optimizer.'.length)] = toTensor(f.read(k));
    return {
      record: { ...record, settings: { ...DEFAULT_SETTINGS, ...record.settings } },
      output: meta.output,
      state: { iteration: record.iteration, z: toTensor(f.read('z')), optimizer: { step: Number(meta.optimizerStep), buffers } },
    };
  } finally {
    f.close();
  }
}

/**
 * A sample of a taming transformer's GPT prior as the initial latent: codes on the output's grid (the sliding window
 * covers grids larger than trained), drawn from the run's seed (stream 'prior'), looked up in the VQGAN's codebook.
 */
async function priorLatent<T>(ex: Executor<T>, files: { ckpt: string; config?: string }, settings: GenerateSettings, models: LoadedModels<T>, f: number, sideX: number, sideY: number): Promise<T> {
  const { loadPrior, gptWeightTensors } = await import('../models/gpt.ts');
  const { gridForSize, sampleCodes } = await import('./sample.ts');
  const { codebookEntries } = await import('../models/vqgan.ts');
  // The prior samples on tfjs whatever the engine: a token-by-token loop with a growing cache is not a fixed plan.
  const o = tfOps;
  const prior = await loadPrior(o, files.ckpt, files.config);
  try {
    if (prior.factor !== f || prior.config.firstStage.nEmbed !== models.vqgan.config.nEmbed) {
      throw new UserError(
        `the prior ${path.basename(files.ckpt)} draws codes of a ${prior.config.firstStage.nEmbed}-code f${prior.factor} VQGAN, but the VQGAN in use has ${models.vqgan.config.nEmbed} codes at f${f}`,
        'omit --vqgan (the prior checkpoint holds its own VQGAN), or pass the matching one',
      );
    }
    const grid = gridForSize(prior, sideX, sideY);
    const p = settings.prior ?? { temperature: 1 };
    const [codes] = await sampleCodes(o, prior, { n: 1, grid, classLabel: p.classLabel, topK: p.topK, topP: p.topP, temperature: p.temperature, seed: settings.seed });
    return ex.scope(() => codebookEntries(ex.ops, models.vqgan.weights, ex.ops.constantInt(codes, [codes.length]), [1, grid[0], grid[1]]));
  } finally {
    tf.dispose([...gptWeightTensors(prior.gpt), ...weightTensors(prior.firstStage)]);
  }
}

async function hostOf<T>(ex: Executor<T>, t: T): Promise<HostTensor> {
  return { dtype: 'float32', shape: ex.ops.shape(t), data: await ex.ops.read(t) };
}

/** Runs (or resumes) one generation to the end or until `signal` aborts. */
export async function runGenerate<T>(ex: Executor<T>, req: RunRequest, weightsDir = path.resolve('weights')): Promise<RunSummary> {
  const emit = req.onEvent ?? (() => {});
  const t0 = performance.now();
  let resume: ResumeData<T> | undefined;
  let settings = req.settings;
  let choice = req.models;
  if (req.resumeFile) {
    resume = readResumeFile(ex, req.resumeFile);
    settings = resume.record.settings;
    choice = await choiceFromRecords(resume.record.models, weightsDir, (l) => process.stderr.write(`${l}\n`));
  }
  const needsEncoder = !resume && ['image', 'pixels', 'gradient'].includes(settings.init) && !req.initialLatent;
  if (!resume && settings.init === 'prior' && !choice.prior) throw new UserError('--init prior needs --prior CKPT (a taming transformer checkpoint, e.g. weights/cin_transformer.ckpt)');
  const models: LoadedModels<T> = (req.loaded as LoadedModels<T> | undefined) ?? (await loadGenerateModels(ex, choice, { encoder: needsEncoder }));
  let output: string | undefined;
  let claimed = false;
  let wroteImage = false;
  let gen: Generation<T> | undefined;
  try {
    // Settings first: a bad size or option fails before any file is read or made.
    const o = ex.ops;
    const f = downsamplingFactor(models.vqgan.config);
    checkSettings(settings, f);
    const { sideX, sideY } = latentGrid(settings.width, settings.height, f);
    const imagePromptImages: T[] = [];
    for (const p of settings.imagePrompts) {
      const spec = parsePromptList(p, 'image')[0];
      imagePromptImages.push(o.constant(await readResized(spec.text, sideX, sideY, 'image prompt'), [1, sideY, sideX, 3]));
    }
    let initImage: T | undefined;
    if (!resume && settings.init === 'image') {
      if (!settings.initImage) throw new UserError('--init image needs --init-image FILE');
      initImage = o.constant(await readResized(settings.initImage, sideX, sideY, 'init image'), [1, sideY, sideX, 3]);
    }
    let initialZ = req.initialLatent && !resume ? ((await req.initialLatent()) as T) : undefined;
    if (!resume && !initialZ && settings.init === 'prior') initialZ = await priorLatent(ex, choice.prior!, settings, models, f, sideX, sideY);
    gen = await Generation.create(ex, models.vqgan, models.guides, settings, { imagePromptImages, initImage, resume: resume?.state, initialZ });
    ex.dispose([...imagePromptImages, ...(initImage ? [initImage] : [])]);

    output = resume ? resume.output : claimOutputPath(req.output);
    claimed = !resume;
    const frames = req.frames ? claimOutputDir(req.frames) : undefined;
    const record = (iteration: number, losses?: number[]): RunRecord => ({
      vqclip: VERSION,
      kind: 'generate',
      settings,
      models: models.records,
      backend: req.backend,
      engine: req.engine ?? 'tfjs',
      iteration,
      losses,
      created: new Date().toISOString(),
    });
    const save = async (kind: 'progress' | 'final' | 'frame', file: string, iteration: number, losses?: number[]) => {
      const pic = await gen!.picture();
      const rec = record(iteration, losses);
      const prompt = settings.prompts || [...settings.imagePrompts, ...settings.noisePrompts].join(' | ');
      await writePng(file, pic.data, pic.width, pic.height, { Software: `vqclip ${VERSION}`, Description: prompt, vqclip: JSON.stringify(rec) }, { force: kind !== 'frame' });
      if (kind !== 'frame') wroteImage = true;
      emit({ type: 'saved', path: file, iteration, kind });
    };

    emit({ type: 'start', output, settings, models: models.records, backend: req.backend, engine: req.engine ?? 'tfjs', lossNames: gen.lossNames, fromIteration: gen.iteration, sideX: gen.sideX, sideY: gen.sideY });
    let last = { losses: [] as number[], total: NaN };
    const startIter = gen.iteration;
    const tLoop = performance.now();
    let interrupted = false;
    while (gen.iteration < settings.iterations) {
      // A step on wasm/cpu resolves through microtasks only; without a turn of the event loop a Ctrl-C (a libuv
      // signal watcher) would never be delivered until the run ended.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (req.signal?.aborted) {
        interrupted = true;
        break;
      }
      const r = await gen.step();
      last = r;
      const done = gen.iteration - startIter;
      const itPerSec = done / ((performance.now() - tLoop) / 1000);
      emit({ type: 'step', iteration: gen.iteration, iterations: settings.iterations, losses: r.losses, lossNames: gen.lossNames, total: r.total, itPerSec, etaSeconds: (settings.iterations - gen.iteration) / itPerSec });
      if (settings.saveEvery && gen.iteration % settings.saveEvery === 0 && gen.iteration < settings.iterations) {
        await save('progress', output, gen.iteration, r.losses);
        if (frames) await save('frame', path.join(frames, `${String(gen.iteration).padStart(5, '0')}.png`), gen.iteration, r.losses);
      }
    }
    if (interrupted) {
      await save('progress', output, gen.iteration, last.losses);
      const resumeFile = resumeFileFor(output);
      await gen.syncState();
      const st = gen.state();
      const buffers: Record<string, HostTensor> = {};
      for (const [k, v] of Object.entries(st.optimizer.buffers)) if (v) buffers[k] = await hostOf(ex, v as T);
      writeResumeFile(resumeFile, record(gen.iteration, last.losses), output, { z: await hostOf(ex, st.z), step: st.optimizer.step, buffers });
      emit({ type: 'interrupted', output, resumeFile, iteration: gen.iteration });
      return { output, interrupted: true, resumeFile, iteration: gen.iteration, losses: last.losses, lossNames: gen.lossNames, total: last.total, seconds: (performance.now() - t0) / 1000, seed: settings.seed, frames };
    }
    await save('final', output, gen.iteration, last.losses);
    if (frames && !(settings.saveEvery && gen.iteration % settings.saveEvery === 0 && gen.iteration > startIter)) {
      await save('frame', path.join(frames, `${String(gen.iteration).padStart(5, '0')}.png`), gen.iteration, last.losses);
    }
    // The run is finished: its resume file (if it was resumed) has served.
    if (req.resumeFile && fs.existsSync(req.resumeFile)) fs.rmSync(req.resumeFile);
    const seconds = (performance.now() - t0) / 1000;
    emit({ type: 'done', output, iteration: gen.iteration, seconds });
    return { output, interrupted: false, iteration: gen.iteration, losses: last.losses, lossNames: gen.lossNames, total: last.total, seconds, seed: settings.seed, frames };
  } catch (err) {
    // A failed run leaves no empty placeholder behind (and never touches any other file).
    if (claimed && output && !wroteImage) {
      try {
        if (fs.statSync(output).size === 0) fs.rmSync(output);
      } catch {
        // already gone
      }
    }
    throw err;
  } finally {
    gen?.dispose();
    if (!req.loaded) models.dispose();
  }
}
