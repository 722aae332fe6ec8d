// `vqclip score IMAGE... --prompt TEXT... [--clip FILE] [--json]`: how well each image matches each prompt by CLIP:
// cosine similarity x 100 (the usual "CLIP score"), the model's logits (exp(logit_scale) x cosine, what CLIP.forward
// returns) and, per image, the softmax over the prompts (CLIP's zero-shot probabilities).
// Images are prepared as clip.load's preprocess does (Pillow bicubic resize of the short side, centre crop).
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { CommandModule } from 'yargs';
import { initBackend, shutdownBackend } from '../../engine/backend.ts';
import { tfOps } from '../../engine/tfjs-ops.ts';
import { FormatError } from '../../formats/host-tensor.ts';
import { cosineSimilarity, encodeImagePixels, encodeText, inputResolution } from '../../models/clip.ts';
import { clipWeightTensors, defaultClipPath, loadClip, resolveClipFile, weightFolders } from '../../models/clip-load.ts';
import { readClipImage } from '../../models/clip-preprocess.ts';
import { loadClipTokenizer } from '../../models/clip-tokenizer.ts';
import { UserError } from '../errors.ts';

export interface ScoreArgs {
  images: string[];
  prompt: string[];
  clip?: string;
  json?: boolean;
  truncate?: boolean;
}

export interface ScoreResult {
  clip: string;
  model: string;
  images: string[];
  prompts: string[];
  /** [image][prompt] cosine similarity x 100 */
  score: number[][];
  /** [image][prompt] exp(logit_scale) x cosine */
  logits: number[][];
  /** [image][prompt] softmax of the logits over the prompts */
  probs: number[][];
  logitScale: number;
}

/** Images encoded per forward pass (bounds memory on large image lists). */
const IMAGE_BATCH = 8;

function modelName(cfg: { vision: { width: number; layers: number; patchSize: number; gridSize: number } }): string {
  const size = { 768: 'B', 1024: 'L', 1280: 'H' }[cfg.vision.width] ?? `w${cfg.vision.width}`;
  return `ViT-${size}/${cfg.vision.patchSize} (${cfg.vision.layers} layers, ${cfg.vision.gridSize * cfg.vision.patchSize} px)`;
}

/** The command without argument parsing or backend start-up (tests call this). Uses the active tfjs backend. */
export async function runScore(args: ScoreArgs, out: (line: string) => void = () => {}): Promise<ScoreResult> {
  const prompts = args.prompt ?? [];
  if (!args.images?.length) throw new UserError('no images to score', 'name one or more image files');
  if (!prompts.length) throw new UserError('no prompts to score against', 'add --prompt "a photo of a cat" (repeatable)');
  for (const img of args.images) if (!fs.existsSync(img)) throw new FormatError(img, 'image not found', 'check the path');
  const clipPath = args.clip ?? defaultClipPath();
  resolveClipFile(clipPath); // a missing model fails here, before anything is read
  const tokenizer = loadClipTokenizer(clipPath, weightFolders());
  const tokens = tokenizer.tokenize(prompts, { truncate: args.truncate });

  const model = await loadClip(tfOps, clipPath);
  try {
    const { config, weights } = model;
    const size = inputResolution(config);
    const textEmb = tf.tidy(() => encodeText(tfOps, weights, config, tokens));
    const cos: number[][] = [];
    for (let i = 0; i < args.images.length; i += IMAGE_BATCH) {
      const batch = args.images.slice(i, i + IMAGE_BATCH);
      const pixels = await Promise.all(batch.map((f) => readClipImage(f, size)));
      const data = new Float32Array(batch.length * size * size * 3);
      pixels.forEach((p, j) => data.set(p, j * p.length));
      const sim = tf.tidy(() => {
        const img = encodeImagePixels(tfOps, weights, config, tf.tensor(data, [batch.length, size, size, 3]));
        return cosineSimilarity(tfOps, img, textEmb);
      });
      const v = (await sim.data()) as Float32Array;
      sim.dispose();
      for (let j = 0; j < batch.length; j++) cos.push(Array.from(v.subarray(j * prompts.length, (j + 1) * prompts.length)));
    }
    textEmb.dispose();
    const logitScale = Math.exp((await weights.logitScale.data())[0]);
    const logits = cos.map((row) => row.map((c) => c * logitScale));
    const probs = logits.map((row) => {
      const m = Math.max(...row);
      const e = row.map((l) => Math.exp(l - m));
      const s = e.reduce((a, b) => a + b, 0);
      return e.map((x) => x / s);
    });
    const result: ScoreResult = {
      clip: model.file,
      model: modelName(config),
      images: args.images,
      prompts,
      score: cos.map((row) => row.map((c) => c * 100)),
      logits,
      probs,
      logitScale,
    };
    if (args.json) out(JSON.stringify(result, null, 2));
    else printTable(result, out);
    return result;
  } finally {
    tf.dispose(clipWeightTensors(model.weights));
  }
}

function printTable(r: ScoreResult, out: (line: string) => void): void {
  out(`CLIP ${r.model} from ${r.clip}`);
  out(`cosine similarity x 100 (softmax over the prompts in brackets; logits = ${r.logitScale.toFixed(2)} x cosine)`);
  const names = r.images.map((f) => path.basename(f));
  const w0 = Math.max(5, ...names.map((n) => n.length));
  const heads = r.prompts.map((p, i) => `[${i + 1}]`);
  const cell = (s: number, p: number) => `${s.toFixed(2)} (${(100 * p).toFixed(0)}%)`;
  const widths = heads.map((h, j) => Math.max(h.length, ...r.score.map((row, i) => cell(row[j], r.probs[i][j]).length)));
  out(['image'.padEnd(w0), ...heads.map((h, j) => h.padStart(widths[j]))].join('  '));
  r.score.forEach((row, i) => out([names[i].padEnd(w0), ...row.map((s, j) => cell(s, r.probs[i][j]).padStart(widths[j]))].join('  ')));
  r.prompts.forEach((p, i) => out(`[${i + 1}] ${p}`));
}

const command: CommandModule<object, ScoreArgs & { backend: string }> = {
  command: 'score <images..>',
  describe: 'CLIP similarity of each image to each prompt (cosine x 100, logits, zero-shot probabilities)',
  builder: (y) =>
    y
      .positional('images', { type: 'string', array: true, demandOption: true, describe: 'image files (PNG, JPEG, WebP, ...)' })
      .option('prompt', { alias: 'p', type: 'string', array: true, demandOption: true, describe: 'text to compare with (repeat for several)' })
      .option('clip', { type: 'string', describe: `CLIP weights (OpenAI .pt, .safetensors, or a Hugging Face folder); default weights/ViT-B-32.pt` })
      .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
      .option('truncate', { type: 'boolean', default: false, describe: 'cut prompts longer than 77 tokens instead of failing' }) as never,
  handler: async (argv) => {
    await initBackend(argv.backend);
    try {
      await runScore(argv, (l) => process.stdout.write(`${l}\n`));
    } finally {
      await shutdownBackend();
    }
  },
};
export default command;
