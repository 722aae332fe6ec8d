// `vqclip sample --ckpt MODEL [--class N] -n 8 [--top-k K] [--top-p P] [--temperature T] [--size S] [--seed S]
//  [-o DIR] [--rerank "prompt" --keep K]`: images from the GPT prior of a taming Net2NetTransformer checkpoint
// (cin_transformer: class-conditional ImageNet; ffhq / celebahq: unconditional faces), decoded by the
// checkpoint's own VQGAN. Sizes above the trained one use the sliding window. Every PNG carries its settings as
// text chunks; names never overwrite earlier results. With --rerank, CLIP scores the samples against the prompt
// and only the best --keep are written (best first). With `--engine compiled` (auto on webgpu) the GPT step runs as a
// compiled plan with its key/value cache on the GPU, and the first stage decodes through the same engine.
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { CommandModule } from 'yargs';
import { initBackend, shutdownBackend } from '../../engine/backend.ts';
import { chooseEngine, parseEngine, parsePrecision, type ChosenEngine } from '../../engine/engines.ts';
import type { Ops } from '../../engine/ops.ts';
import { tfOps } from '../../engine/tfjs-ops.ts';
import { writePng, type RgbImage } from '../../io/image.ts';
import { gptParameterCount, gptWeightTensors, loadPrior, condToken, readPriorFiles, type PriorFiles } from '../../models/gpt.ts';
import { weightTensors } from '../../models/vqgan.ts';
import { DEFAULT_CLIP_FILE, clipWeightTensors, defaultClipPath, loadClip, weightFolders } from '../../models/clip-load.ts';
import { loadClipTokenizer } from '../../models/clip-tokenizer.ts';
import { checkSampleOptions, gridForSize, sampleImages } from '../../pipelines/sample.ts';
import { rerank, type Ranked } from '../../pipelines/rerank.ts';
import { claimOutputPath } from '../../util/names.ts';
import { parseSeed, randomSeed } from '../../util/rng.ts';
import { UserError } from '../errors.ts';

export interface SampleArgs {
  ckpt?: string;
  config?: string;
  class?: number;
  n?: number;
  batchSize?: number;
  topK?: number;
  topP?: number;
  temperature?: number;
  /** "256" or "WIDTHxHEIGHT"; default the trained size. */
  size?: string | number;
  seed?: string | number;
  greedy?: boolean;
  output?: string;
  rerank?: string;
  keep?: number;
  clip?: string;
  /** auto | tfjs | compiled (see engines.ts); the handler chooses, runSample takes the choice. */
  engine?: string;
  /** f32 | f16 (compiled engine only: engines.ts). */
  precision?: string;
}

export interface SampleResult {
  outputs: string[];
  seed: number;
  /** CLIP scores of the written images (with --rerank), in the order written. */
  scores?: number[];
}

/** "256" -> 256x256, "512x384" -> width 512, height 384. */
export function parseSize(size: string | number): { width: number; height: number } {
  const s = String(size).trim();
  const m = /^(\d+)(?:\s*[x×,]\s*(\d+))?$/i.exec(s);
  if (!m) throw new UserError(`--size '${s}' is not a size`, 'pass one number for a square (--size 256) or WIDTHxHEIGHT (--size 512x384)');
  const width = Number(m[1]);
  return { width, height: m[2] ? Number(m[2]) : width };
}

function positiveInt(v: number | undefined, name: string, dflt: number): number {
  const x = v ?? dflt;
  if (!Number.isSafeInteger(x) || x < 1) throw new UserError(`${name} must be a whole number >= 1 (got ${x})`, `pass ${name} ${dflt}`);
  return x;
}

/** The wasm heap is wasm32 (4 GiB for every live tensor): the released 1.4 B-parameter prior (5.6 GB) cannot fit. */
const WASM_WEIGHT_LIMIT = 3.5 * 2 ** 30;

function checkFitsBackend(files: PriorFiles): void {
  const bytes = 4 * gptParameterCount(files.config.gpt);
  if (tf.getBackend() === 'wasm' && bytes > WASM_WEIGHT_LIMIT) {
    throw new UserError(
      `${files.checkpoint}: the prior's ${(bytes / 2 ** 30).toFixed(1)} GiB of float32 weights do not fit the wasm backend's 4 GiB heap`,
      'use --backend webgpu (a GPU) or --backend cpu (slow: minutes per image), or a smaller transformer',
    );
  }
}

/**
 * The command without argument parsing or backend start-up (tests call this). Uses the active tfjs backend, or the
 * compiled engine given (the prior's weights then live on it; CLIP reranking stays on tfjs).
 */
export async function runSample(args: SampleArgs, log: (line: string) => void = () => {}, engine?: ChosenEngine): Promise<SampleResult> {
  if (!args.ckpt) {
    throw new UserError(
      'sample needs a taming transformer checkpoint: --ckpt FILE_OR_FOLDER',
      "e.g. taming-transformers' cin_transformer (checkpoints/last.ckpt + configs/*-project.yaml) for ImageNet classes, or the ffhq / celebahq transformers",
    );
  }
  const n = positiveInt(args.n, '-n', 8);
  const batchSize = positiveInt(args.batchSize, '--batch-size', Math.min(n, 8));
  const seed = args.seed === undefined ? randomSeed() : parseSeed(args.seed, '--seed');
  const greedy = args.greedy ?? false;
  if (args.keep !== undefined && args.rerank === undefined) throw new UserError('--keep only applies with --rerank', 'add --rerank "a prompt", or drop --keep');
  const keep = args.rerank === undefined ? n : positiveInt(args.keep, '--keep', 1);
  if (keep > n) throw new UserError(`--keep ${keep} is more than the ${n} samples drawn (-n)`, `pass -n ${keep} or more`);
  checkSampleOptions({ n, topK: args.topK, topP: args.topP, temperature: args.temperature });
  const outDir = args.output ?? 'samples';

  const files = readPriorFiles(args.ckpt, args.config);
  const compiled = engine?.compiled;
  if (!compiled) checkFitsBackend(files);
  // The pipelines are generic in the tensor type: the prior's tensors are the chosen engine's.
  const o = (compiled?.ops ?? tfOps) as Ops<tf.Tensor>;
  const prior = await loadPrior(o, files);
  let clip: Awaited<ReturnType<typeof loadClip<tf.Tensor>>> | undefined;
  try {
    // Validate everything cheap before minutes of sampling.
    condToken(prior, args.class);
    const f = prior.factor;
    const size = args.size === undefined ? { width: prior.grid[1] * f, height: prior.grid[0] * f } : parseSize(args.size);
    const grid = gridForSize(prior, size.width, size.height);
    const clipPath = args.clip ?? defaultClipPath();
    const tokenizer = args.rerank !== undefined ? loadClipTokenizer(clipPath, weightFolders()) : undefined;
    if (args.rerank !== undefined) clip = await loadClip(tfOps, clipPath);

    const kind = prior.config.cond.kind === 'class' ? `class ${args.class}` : 'unconditional';
    const windowNote = grid[0] !== prior.grid[0] || grid[1] !== prior.grid[1] ? `, sliding ${prior.grid[0]}x${prior.grid[1]} window` : '';
    log(`sampling ${n} x ${size.width}x${size.height} (${grid[0]}x${grid[1]} codes${windowNote}) from ${path.basename(prior.checkpoint)}, ${kind}, seed ${seed}${compiled ? ', compiled engine' : ''}`);
    let lastPct = -1;
    const t0 = performance.now();
    const { images } = await sampleImages(o, prior, {
      engine: compiled,
      n,
      batchSize,
      classLabel: args.class,
      grid,
      topK: args.topK,
      topP: args.topP,
      temperature: args.temperature,
      greedy,
      seed,
      onProgress: (done, total) => {
        const pct = Math.floor((100 * done) / total / 10) * 10;
        if (pct !== lastPct) {
          lastPct = pct;
          const s = (performance.now() - t0) / 1000;
          log(`  ${pct}% (${done}/${total} codes, ${s.toFixed(0)} s, ${(done / Math.max(s, 1e-9)).toFixed(1)} codes/s)`);
        }
      },
    });

    let order: Ranked[] = images.map((_, index) => ({ index, score: NaN }));
    if (clip && tokenizer && args.rerank !== undefined) {
      order = (await rerank(tfOps, images, args.rerank, { config: clip.config, weights: clip.weights, tokenizer })).slice(0, keep);
      log(`CLIP scores for "${args.rerank}" (best ${keep} of ${n} kept): ${order.map((r) => `#${r.index} ${r.score.toFixed(2)}`).join(', ')}`);
    }

    const stem = `${prior.config.cond.kind === 'class' ? `class${args.class}` : 'uncond'}-seed${seed}`;
    const outputs: string[] = [];
    for (let rank = 0; rank < order.length; rank++) {
      const { index, score } = order[rank];
      const img: RgbImage = images[index];
      const file = claimOutputPath(path.join(outDir, args.rerank !== undefined ? `${stem}-rank${rank + 1}.png` : `${stem}-${index}.png`));
      const settings = {
        command: 'sample',
        checkpoint: path.basename(prior.checkpoint),
        config: path.basename(prior.configFile),
        class: args.class ?? null,
        seed,
        index,
        n,
        size: [size.width, size.height],
        grid,
        topK: args.topK ?? null,
        topP: args.topP ?? null,
        temperature: args.temperature ?? 1,
        greedy,
        ...(args.rerank !== undefined ? { rerank: { prompt: args.rerank, score: Number(score.toFixed(4)), rank: rank + 1, clip: path.basename(clip!.file) } } : {}),
      };
      await writePng(file, img.data, img.width, img.height, { Software: 'vqclip', 'vqclip:sample': JSON.stringify(settings) }, { force: true });
      outputs.push(file);
    }
    log(`wrote ${outputs.length} image${outputs.length === 1 ? '' : 's'} to ${outDir}/ in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return { outputs, seed, scores: args.rerank !== undefined ? order.map((r) => r.score) : undefined };
  } finally {
    if (!compiled) tf.dispose([...gptWeightTensors(prior.gpt), ...weightTensors(prior.firstStage)]);
    if (clip) tf.dispose(clipWeightTensors(clip.weights));
  }
}

const command: CommandModule<object, SampleArgs & { backend: string }> = {
  command: 'sample',
  describe: 'draw images from the GPT prior of a taming transformer checkpoint (class-conditional or unconditional)',
  builder: (y) =>
    y
      .option('ckpt', { type: 'string', describe: 'Net2NetTransformer checkpoint (.ckpt, or its folder), e.g. cin_transformer' })
      .option('config', { type: 'string', describe: 'its YAML config; default: found next to the checkpoint (or ../configs/*-project.yaml)' })
      .option('class', { type: 'number', describe: 'class label for class-conditional models (ImageNet: 0-999)' })
      .option('n', { alias: 'num', type: 'number', default: 8, describe: 'number of samples' })
      .option('batch-size', { type: 'number', describe: 'samples drawn together (default min(n, 8))' })
      .option('top-k', { type: 'number', default: 250, describe: 'keep the k most likely codes per step (ties kept)' })
      .option('top-p', { type: 'number', default: 1.0, describe: 'nucleus filtering after top-k (1 = keep all, as sample_fast.py)' })
      .option('temperature', { type: 'number', default: 1.0, describe: 'divides the logits before filtering' })
      .option('size', { type: 'string', describe: 'image size: 256 or WIDTHxHEIGHT, a multiple of the downsampling factor (default: trained size; larger uses a sliding window)' })
      .option('seed', { type: 'string', describe: 'random seed (default: a random one, printed and stored in the PNGs)' })
      .option('greedy', { type: 'boolean', default: false, describe: 'take the most likely code at every step (deterministic)' })
      .option('output', { alias: 'o', type: 'string', default: 'samples', describe: 'output folder (files are never overwritten)' })
      .option('rerank', { type: 'string', describe: 'score the samples with CLIP against this text and keep the best' })
      .option('keep', { type: 'number', describe: 'with --rerank: how many of the best to write (default 1)' })
      .option('clip', { type: 'string', describe: `CLIP weights for --rerank (default weights/${DEFAULT_CLIP_FILE})` })
      .option('engine', { type: 'string', describe: 'auto, tfjs or compiled (WebGPU: the GPT step planned once, its key/value cache on the GPU); auto = compiled on webgpu (or VQCLIP_ENGINE)' })
      .option('precision', { type: 'string', describe: 'f32 (default) or f16: the compiled engine stores the large weights (conv, linear) as halves, half their memory; math stays float32' }) as never,
  handler: async (argv) => {
    const choice = parseEngine(argv.engine);
    const precision = parsePrecision(argv.precision);
    const report = await initBackend(argv.backend);
    let engine: ChosenEngine | undefined;
    try {
      engine = chooseEngine(choice, report, precision);
      await runSample(argv, (l) => process.stdout.write(`${l}\n`), engine);
    } finally {
      engine?.destroy();
      await shutdownBackend();
    }
  },
};
export default command;
