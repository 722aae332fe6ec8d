// `vqclip generate "prompt"`: CLIP-guided VQGAN latent optimisation (nerdyrodent/VQGAN-CLIP generate.py), with
// every setting recorded in the PNG (`--from OUT.png` replays it), Ctrl-C saving a resumable state (`--resume`),
// and output names that never overwrite earlier results.
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { initBackend, shutdownBackend, type BackendChoice } from '../../engine/backend.ts';
import { chooseEngine, parseEngine, parsePrecision, type ChosenEngine } from '../../engine/engines.ts';
import { tfExecutor } from '../../engine/tfjs-ops.ts';
import { CUT_METHODS, parseCutMethod } from '../../pipelines/cutouts.ts';
import { DEFAULT_SETTINGS, type GenerateSettings } from '../../pipelines/generate.ts';
import { choiceFromRecords, parseClipArg, type ModelChoice } from '../../pipelines/generate-models.ts';
import { readRunRecord, runGenerate, type RunSummary } from '../../pipelines/generate-run.ts';
import { INIT_KINDS, type InitKind } from '../../pipelines/init.ts';
import { OPTIMIZERS, parseOptimizerName } from '../../pipelines/optimizers.ts';
import { parseStory, PROMPT_SYNTAX } from '../../pipelines/prompts.ts';
import { checkSampleOptions } from '../../pipelines/sample.ts';
import { outputStem } from '../../util/names.ts';
import { parseSeed, randomSeed } from '../../util/rng.ts';
import { UserError } from '../errors.ts';
import { interruptible } from '../interrupt.ts';
import { textReporter } from '../progress.ts';

export interface GenerateArgs {
  engine?: string;
  /** f32 | f16 (compiled engine only: engines.ts). */
  precision?: string;
  /** Recompute the checkpointed blocks (VQGAN decoder, CLIP) in the backward (compiled engine only). */
  recompute?: boolean;
  prompt?: string;
  prompts?: string;
  imagePrompts?: string;
  noisePrompts?: string;
  size?: (string | number)[];
  iterations?: number;
  saveEvery?: number;
  lr?: number;
  optimizer?: string;
  cutn?: number;
  cutPow?: number;
  cutMethod?: string;
  augments?: string[];
  noiseFac?: number;
  seed?: string | number;
  init?: string;
  initImage?: string;
  initWeight?: number;
  changePromptEvery?: number;
  vqgan?: string;
  vqganConfig?: string;
  prior?: string;
  priorConfig?: string;
  class?: number;
  topK?: number;
  topP?: number;
  temperature?: number;
  clip?: string[];
  output?: string;
  frames?: string | boolean;
  from?: string;
  resume?: string;
  json?: boolean;
  quiet?: boolean;
  builtin?: boolean;
  backend: string;
}

export function parseSize(size: (string | number)[] | undefined): [number, number] | undefined {
  if (!size || size.length === 0) return undefined;
  const nums = size.flatMap((s) => String(s).toLowerCase().split(/[x,]/)).filter(Boolean).map(Number);
  if (nums.length === 1) nums.push(nums[0]);
  if (nums.length !== 2 || !nums.every((n) => Number.isInteger(n) && n > 0)) {
    throw new UserError(`--size ${size.join(' ')} is not a size`, 'write --size 256 (square), --size 512 256 or --size 512x256 (width x height)');
  }
  return [nums[0], nums[1]];
}

/** Settings from (in order of precedence) the flags given, the record of --from, and the defaults. */
export function settingsFromArgs(a: GenerateArgs, base: GenerateSettings | undefined): GenerateSettings {
  const d: GenerateSettings = base ?? { ...DEFAULT_SETTINGS, prompts: '', seed: NaN };
  const prompts = a.prompt ?? a.prompts ?? d.prompts;
  const size = parseSize(a.size) ?? [d.width, d.height];
  const split = (s: string | undefined) => (s === undefined ? undefined : s.split('|').map((x) => x.trim()).filter(Boolean));
  const seed = a.seed !== undefined ? parseSeed(a.seed) : Number.isFinite(d.seed) ? d.seed : randomSeed();
  const init = (a.init ?? (a.prior && !a.initImage ? 'prior' : d.init)) as GenerateSettings['init'];
  if (!INIT_KINDS.includes(init as InitKind) && init !== 'prior') throw new UserError(`--init ${init} is not known`, `choose one of ${[...INIT_KINDS, 'prior'].join(', ')}`);
  const s: GenerateSettings = {
    prompts,
    imagePrompts: split(a.imagePrompts) ?? d.imagePrompts,
    noisePrompts: split(a.noisePrompts) ?? d.noisePrompts,
    width: size[0],
    height: size[1],
    iterations: a.iterations ?? d.iterations,
    saveEvery: a.saveEvery ?? d.saveEvery,
    optimizer: a.optimizer ? parseOptimizerName(a.optimizer) : d.optimizer,
    lr: a.lr ?? d.lr,
    cutn: a.cutn ?? d.cutn,
    cutPow: a.cutPow ?? d.cutPow,
    cutMethod: a.cutMethod ? parseCutMethod(a.cutMethod) : d.cutMethod,
    augments: a.augments ?? d.augments,
    noiseFac: a.noiseFac ?? d.noiseFac,
    seed,
    init: a.initImage && a.init === undefined ? 'image' : init,
    initImage: a.initImage ?? d.initImage,
    initWeight: a.initWeight ?? d.initWeight,
    changePromptEvery: a.changePromptEvery ?? d.changePromptEvery,
  };
  if (s.init === 'prior') {
    const p = d.prior ?? { temperature: 1, topK: 250, topP: 1 };
    s.prior = { classLabel: a.class ?? p.classLabel, topK: a.topK ?? p.topK, topP: a.topP ?? p.topP, temperature: a.temperature ?? p.temperature };
    checkSampleOptions({ ...s.prior, n: 1 });
  }
  if (s.prompts.trim()) parseStory(s.prompts); // malformed prompts fail here, with the prompt named
  return s;
}

export function modelChoiceFromArgs(a: GenerateArgs): ModelChoice | undefined {
  if (a.builtin) return { builtin: true };
  if (!a.vqgan && !a.vqganConfig && !a.clip?.length && !a.prior) return undefined;
  return {
    vqgan: a.vqgan ? { ckpt: a.vqgan, config: a.vqganConfig } : undefined,
    clips: (a.clip ?? []).map(parseClipArg),
    prior: a.prior ? { ckpt: a.prior, config: a.priorConfig } : undefined,
  };
}

/** The output path for a run: --output (a .png or a folder) or outputs/<prompt>.png. */
export function defaultOutput(settings: GenerateSettings, output: string | undefined): string {
  const stem = outputStem(settings.prompts.trim() ? parseStory(settings.prompts)[0] : []);
  if (!output) return path.join('outputs', `${stem}.png`);
  if (output.endsWith('/') || output.endsWith(path.sep) || !/\.png$/i.test(output)) {
    if (/\.\w{2,4}$/.test(output)) throw new UserError(`--output ${output} must be a .png file or a folder`);
    return path.join(output, `${stem}.png`);
  }
  return output;
}

/** The whole command on an already initialised backend (tests call this). */
export async function runGenerateCommand(a: GenerateArgs, opts: { signal?: AbortSignal; backend: string; engine?: ChosenEngine; log?: (e: Parameters<ReturnType<typeof textReporter>>[0]) => void }): Promise<RunSummary> {
  const ex = opts.engine?.ex ?? tfExecutor;
  const engine = opts.engine?.name ?? 'tfjs';
  if (a.from && a.resume) throw new UserError('--from and --resume cannot be combined', '--resume continues an interrupted run; --from starts a new run with recorded settings');
  let base: GenerateSettings | undefined;
  let models = modelChoiceFromArgs(a);
  if (a.from) {
    const rec = readRunRecord(a.from);
    base = rec.settings;
    models ??= await choiceFromRecords(rec.models, path.resolve('weights'), (l) => process.stderr.write(`${l}\n`));
  }
  if (a.resume) {
    return runGenerate(ex, { settings: DEFAULT_SETTINGS as GenerateSettings, models: {}, output: '', resumeFile: a.resume, backend: opts.backend, engine, signal: opts.signal, onEvent: opts.log });
  }
  const settings = settingsFromArgs(a, base);
  const frames = a.frames === true ? defaultOutput(settings, a.output).replace(/\.png$/i, '-frames') : a.frames || undefined;
  return runGenerate(ex, { settings, models: models ?? {}, output: defaultOutput(settings, a.output), frames, backend: opts.backend, engine, signal: opts.signal, onEvent: opts.log });
}

export function generateOptions<T>(y: Argv<T>) {
  return y
    .positional('prompt', { type: 'string', describe: `text prompts: ${PROMPT_SYNTAX}` })
    .option('prompts', { alias: 'p', type: 'string', describe: 'text prompts (instead of the positional argument)' })
    .option('image-prompts', { alias: 'ip', type: 'string', describe: "image prompts 'file[:weight[:stop]]|...'" })
    .option('noise-prompts', { alias: 'np', type: 'string', describe: "noise prompts 'seed[:weight[:stop]]|...'" })
    .option('size', { alias: 's', type: 'array', describe: `output size: 256, 512 256 or 512x256 (default ${DEFAULT_SETTINGS.width}); a multiple of the VQGAN factor` })
    .option('iterations', { alias: 'i', type: 'number', describe: `optimisation steps (default ${DEFAULT_SETTINGS.iterations})` })
    .option('save-every', { alias: 'se', type: 'number', describe: `write the image every N iterations, 0 = only at the end (default ${DEFAULT_SETTINGS.saveEvery})` })
    .option('lr', { type: 'number', describe: `learning rate (default ${DEFAULT_SETTINGS.lr})` })
    .option('optimizer', { alias: 'opt', type: 'string', describe: `${OPTIMIZERS.join(', ')} (default ${DEFAULT_SETTINGS.optimizer})` })
    .option('cutn', { type: 'number', describe: `cutouts per step (default ${DEFAULT_SETTINGS.cutn})` })
    .option('cut-pow', { type: 'number', describe: `cutout size exponent (default ${DEFAULT_SETTINGS.cutPow})` })
    .option('cut-method', { type: 'string', describe: `${CUT_METHODS.join(', ')} (default ${DEFAULT_SETTINGS.cutMethod})` })
    .option('augments', { type: 'array', string: true, describe: `augmentations of 'latest'/'nrupdated' (default ${DEFAULT_SETTINGS.augments.join(' ')})` })
    .option('noise-fac', { type: 'number', describe: `cutout noise factor (default ${DEFAULT_SETTINGS.noiseFac})` })
    .option('seed', { type: 'string', describe: 'one seed for everything (default: random, printed and recorded)' })
    .option('init', { type: 'string', describe: `initial latent: ${INIT_KINDS.join(', ')} (default random-codes)` })
    .option('init-image', { alias: 'ii', type: 'string', describe: 'start from this image (implies --init image)' })
    .option('init-weight', { alias: 'iw', type: 'number', describe: 'pull towards the initial latent, fading (default 0)' })
    .option('change-prompt-every', { alias: 'cpe', type: 'number', describe: "switch to the next '^' phrase every N iterations" })
    .option('vqgan', { type: 'string', describe: 'VQGAN checkpoint (default weights/vqgan_imagenet_f16_16384.ckpt)' })
    .option('vqgan-config', { type: 'string', describe: 'its taming YAML (default: beside the checkpoint)' })
    .option('clip', { type: 'array', string: true, describe: 'CLIP model file or HF folder, FILE[:weight], repeatable (default weights/ViT-B-32.pt)' })
    .option('prior', { type: 'string', describe: 'taming transformer checkpoint: start from a sample of its GPT prior (implies --init prior)' })
    .option('prior-config', { type: 'string', describe: "the prior's YAML (default: beside the checkpoint)" })
    .option('class', { type: 'number', describe: 'class label for a class-conditional prior (ImageNet 0..999)' })
    .option('top-k', { type: 'number', describe: 'prior sampling: keep the k most likely codes (default 250)' })
    .option('top-p', { type: 'number', describe: 'prior sampling: nucleus probability (default 1.0)' })
    .option('temperature', { type: 'number', describe: 'prior sampling temperature (default 1.0)' })
    .option('builtin', { type: 'boolean', describe: 'use the built-in untrained demo models (no downloads)' })
    .option('output', { alias: 'o', type: 'string', describe: 'output PNG or folder (default outputs/<prompt>.png; never overwrites)' })
    .option('frames', { describe: 'also write each saved step as a frame (into DIR, default <output>-frames)' })
    .option('from', { type: 'string', describe: 'replay the settings and models recorded in a PNG made by vqclip (flags given override)' })
    .option('resume', { type: 'string', describe: 'continue an interrupted run from its .resume.safetensors file' })
    .option('engine', { type: 'string', describe: "auto, tfjs or compiled (WebGPU: the step planned once into WGSL dispatches and replayed); auto = compiled on webgpu (or VQCLIP_ENGINE)" })
    .option('precision', { type: 'string', describe: 'f32 (default) or f16: the compiled engine stores the large weights (conv, linear) as halves, half their memory; math stays float32' })
    .option('recompute', { type: 'boolean', describe: "compiled engine: recompute the VQGAN decoder's and CLIP's blocks in the backward instead of keeping their intermediates, about 60% less memory for one more forward of them per step" })
    .option('json', { type: 'boolean', describe: 'print a one-line JSON summary on stdout at the end' })
    .option('quiet', { alias: 'q', type: 'boolean', describe: 'no progress output' });
}

export async function generateHandler(a: GenerateArgs): Promise<void> {
  const engineChoice = parseEngine(a.engine);
  const precision = parsePrecision(a.precision);
  const report = await initBackend(a.backend as BackendChoice);
  const { signal, release } = interruptible();
  let engine: ChosenEngine | undefined;
  try {
    engine = chooseEngine(engineChoice, report, precision, a.recompute ?? false);
    const summary = await runGenerateCommand(a, { signal, backend: report.backend, engine, log: textReporter({ quiet: a.quiet }) });
    if (a.json) process.stdout.write(`${JSON.stringify({ ...summary, backend: report.backend, engine: engine.name })}\n`);
    if (summary.interrupted) process.exitCode = 130;
  } finally {
    engine?.destroy();
    release();
    await shutdownBackend();
  }
}

const command: CommandModule<object, GenerateArgs> = {
  command: 'generate [prompt]',
  describe: 'make an image from text prompts by CLIP-guided VQGAN latent optimisation',
  builder: (y) => generateOptions(y) as unknown as Argv<GenerateArgs>,
  handler: generateHandler,
};

export default command;
