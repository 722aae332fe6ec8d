// `vqclip reconstruct IMAGE`: encode -> quantize -> decode with a VQGAN, write the result as PNG and report how
// faithful it is (PSNR) and how many codebook entries the image used.
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { CommandModule } from 'yargs';
import { tfOps } from '../../engine/tfjs-ops.ts';
import { initBackend, shutdownBackend } from '../../engine/backend.ts';
import { checkWritable } from '../../io/atomic-write.ts';
import { cropImage, checkExtension, downsamplingFactor, fitImage, resolveModelFiles, withModelOptions, type Fit, type ModelArgs } from '../vqgan-model.ts';
import { readImage, writePng } from '../../io/image.ts';
import { loadVqgan } from '../../models/vqgan-load.ts';
import { reconstruct, weightTensors } from '../../models/vqgan.ts';

export interface ReconstructArgs extends ModelArgs {
  image: string;
  output?: string;
  fit?: Fit;
  force?: boolean;
}

export interface ReconstructResult {
  output: string;
  width: number;
  height: number;
  psnr: number;
  codesUsed: number;
  nEmbed: number;
  grid: [number, number];
  embLoss: number;
}

function psnr(a: Float32Array, b: Float32Array): number {
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i] - b[i]) ** 2;
  const mse = se / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10(1 / mse);
}

/** The command without argument parsing or backend start-up (tests call this). Uses the active tfjs backend. */
export async function runReconstruct(args: ReconstructArgs, log: (line: string) => void = () => {}): Promise<ReconstructResult> {
  const output = args.output ?? `${path.basename(args.image).replace(/\.[^.]+$/, '')}.reconstruction.png`;
  checkExtension(output, ['.png'], 'the output');
  const files = resolveModelFiles(args);
  checkWritable(output, args.force);
  const factor = downsamplingFactor(files.config);
  const fitted = fitImage(await readImage(args.image), factor, args.fit, args.image);
  const { width: W, height: H } = fitted.image;
  const model = await loadVqgan(tfOps, files.ckpt, files.configFile);
  try {
    const r = tf.tidy(() => {
      const x = tf.sub(tf.mul(tf.tensor(fitted.image.data, [1, H, W, 3]), 2), 1);
      const out = reconstruct(tfOps, model.weights, x);
      return { image: tf.clipByValue(tf.div(tf.add(out.image, 1), 2), 0, 1), indices: out.indices, loss: out.loss };
    });
    const [img, idx, loss] = await Promise.all([r.image.data(), r.indices.data(), r.loss.data()]);
    tf.dispose([r.image, r.indices, r.loss]);
    // --fit pad: cut the padding off again; the picture is the top-left width x height region.
    const result = cropImage({ data: img as Float32Array, width: W, height: H }, 0, 0, fitted.width, fitted.height);
    const source = cropImage(fitted.image, 0, 0, fitted.width, fitted.height);
    const res: ReconstructResult = {
      output,
      width: result.width,
      height: result.height,
      psnr: psnr(result.data, source.data),
      codesUsed: new Set(idx).size,
      nEmbed: files.config.nEmbed,
      grid: [H / factor, W / factor],
      embLoss: loss[0],
    };
    await writePng(output, result.data, result.width, result.height, {
      Software: 'vqclip',
      'vqclip:reconstruct': JSON.stringify({ source: path.basename(args.image), checkpoint: path.basename(files.ckpt), fit: args.fit ?? null }),
    }, { force: args.force });
    log(`wrote ${output} (${res.width}x${res.height})`);
    log(`codes: ${res.codesUsed} distinct of ${res.nEmbed} on a ${res.grid[0]}x${res.grid[1]} grid; PSNR ${res.psnr.toFixed(2)} dB`);
    return res;
  } finally {
    tf.dispose(weightTensors(model.weights));
  }
}

const command: CommandModule<object, ReconstructArgs & { backend: string }> = {
  command: 'reconstruct <image>',
  describe: 'encode, quantize and decode an image with a VQGAN; prints PSNR and codes used',
  builder: (y) =>
    withModelOptions(y)
      .positional('image', { type: 'string', demandOption: true, describe: 'input image (PNG, JPEG, WebP, ...)' })
      .option('output', { alias: 'o', type: 'string', describe: 'output PNG (default IMAGE.reconstruction.png)' })
      .option('fit', { type: 'string', choices: ['pad', 'crop'] as const, describe: 'make sides multiples of the downsampling factor' })
      .option('force', { type: 'boolean', default: false, describe: 'overwrite an existing output file' }) as never,
  handler: async (argv) => {
    await initBackend(argv.backend);
    try {
      await runReconstruct(argv, (l) => process.stdout.write(`${l}\n`));
    } finally {
      await shutdownBackend();
    }
  },
};
export default command;
