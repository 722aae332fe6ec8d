// `vqclip decode CODES -o out.png`: decode a grid of VQGAN code indices (.json or .npy) to an image, the way
// Net2NetTransformer.decode_to_img does (codebook rows -> post_quant_conv -> decoder).
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { CommandModule } from 'yargs';
import { tfOps } from '../../engine/tfjs-ops.ts';
import { initBackend, shutdownBackend } from '../../engine/backend.ts';
import { checkWritable } from '../../io/atomic-write.ts';
import { readCodes } from '../../io/codes.ts';
import { writePng } from '../../io/image.ts';
import { loadVqgan } from '../../models/vqgan-load.ts';
import { decodeIndices, downsamplingFactor, weightTensors } from '../../models/vqgan.ts';
import { UserError } from '../errors.ts';
import { checkExtension, resolveModelFiles, withModelOptions, type ModelArgs } from '../vqgan-model.ts';

export interface DecodeArgs extends ModelArgs {
  codes: string;
  output?: string;
  force?: boolean;
}

/** The command without argument parsing or backend start-up (tests call this). Uses the active tfjs backend. */
export async function runDecode(args: DecodeArgs, log: (line: string) => void = () => {}): Promise<{ output: string; width: number; height: number }> {
  const output = args.output ?? `${path.basename(args.codes).replace(/\.[^.]+$/, '')}.png`;
  checkExtension(output, ['.png'], 'the output');
  const codes = readCodes(args.codes);
  const files = resolveModelFiles(args);
  checkWritable(output, args.force);
  const n = files.config.nEmbed;
  if (codes.nEmbed !== undefined && codes.nEmbed !== n) {
    throw new UserError(`${args.codes}: codes were made for a codebook of ${codes.nEmbed} entries, but this model has ${n}`, 'decode with the model that encoded them (--ckpt/--config)');
  }
  const bad = codes.indices.findIndex((v) => v >= n);
  if (bad >= 0) throw new UserError(`${args.codes}: code ${codes.indices[bad]} (at position ${bad}) is outside this model's codebook of ${n} entries`, 'decode with the model that encoded them (--ckpt/--config)');
  const [b, h, w] = codes.shape;
  if (b !== 1) throw new UserError(`${args.codes}: holds a batch of ${b} code grids; decode writes one image`, 'save one grid per file');
  const model = await loadVqgan(tfOps, files.ckpt, files.configFile, { encoder: false });
  try {
    const img = tf.tidy(() => {
      const idx = tf.tensor(codes.indices, [codes.indices.length], 'int32');
      return tf.clipByValue(tf.div(tf.add(decodeIndices(tfOps, model.weights, idx, [b, h, w]), 1), 2), 0, 1);
    });
    const data = (await img.data()) as Float32Array;
    const [, height, width] = img.shape;
    img.dispose();
    await writePng(output, data, width, height, { Software: 'vqclip', 'vqclip:decode': JSON.stringify({ codes: path.basename(args.codes), checkpoint: path.basename(files.ckpt) }) }, { force: args.force });
    log(`wrote ${output} (${width}x${height}, from ${h}x${w} codes; factor ${downsamplingFactor(files.config)})`);
    return { output, width, height };
  } finally {
    tf.dispose(weightTensors(model.weights));
  }
}

const command: CommandModule<object, DecodeArgs & { backend: string }> = {
  command: 'decode <codes>',
  describe: 'decode VQGAN code indices (.json or .npy) to a PNG',
  builder: (y) =>
    withModelOptions(y)
      .positional('codes', { type: 'string', demandOption: true, describe: 'codes file from `vqclip encode` (.json or .npy)' })
      .option('output', { alias: 'o', type: 'string', describe: 'output PNG (default CODES.png)' })
      .option('force', { type: 'boolean', default: false, describe: 'overwrite an existing output file' }) as never,
  handler: async (argv) => {
    await initBackend(argv.backend);
    try {
      await runDecode(argv, (l) => process.stdout.write(`${l}\n`));
    } finally {
      await shutdownBackend();
    }
  },
};
export default command;
