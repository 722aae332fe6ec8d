// `vqclip encode IMAGE -o codes.json|codes.npy`: the VQGAN code indices of an image, shape (1, H/f, W/f).
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { CommandModule } from 'yargs';
import { tfOps } from '../../engine/tfjs-ops.ts';
import { initBackend, shutdownBackend } from '../../engine/backend.ts';
import { checkWritable } from '../../io/atomic-write.ts';
import { writeCodes, type Codes } from '../../io/codes.ts';
import { readImage } from '../../io/image.ts';
import { loadVqgan } from '../../models/vqgan-load.ts';
import { encode, quantize, weightTensors } from '../../models/vqgan.ts';
import { checkExtension, downsamplingFactor, fitImage, resolveModelFiles, withModelOptions, type Fit, type ModelArgs } from '../vqgan-model.ts';

export interface EncodeArgs extends ModelArgs {
  image: string;
  output?: string;
  fit?: Fit;
  force?: boolean;
}

/** The command without argument parsing or backend start-up (tests call this). Uses the active tfjs backend. */
export async function runEncode(args: EncodeArgs, log: (line: string) => void = () => {}): Promise<Codes & { output: string }> {
  const output = args.output ?? `${path.basename(args.image).replace(/\.[^.]+$/, '')}.codes.json`;
  checkExtension(output, ['.json', '.npy'], 'the codes file');
  const files = resolveModelFiles(args);
  checkWritable(output, args.force);
  const factor = downsamplingFactor(files.config);
  const { image } = fitImage(await readImage(args.image), factor, args.fit, args.image);
  const model = await loadVqgan(tfOps, files.ckpt, files.configFile);
  try {
    const idx = tf.tidy(() => {
      const x = tf.sub(tf.mul(tf.tensor(image.data, [1, image.height, image.width, 3]), 2), 1);
      return quantize(tfOps, model.weights, encode(tfOps, model.weights, x)).indices;
    });
    const indices = Int32Array.from(await idx.data());
    idx.dispose();
    const codes: Codes = { indices, shape: [1, image.height / factor, image.width / factor], nEmbed: files.config.nEmbed };
    writeCodes(output, codes, args.force);
    log(`wrote ${output}: ${codes.shape[1]}x${codes.shape[2]} codes, ${new Set(indices).size} distinct of ${files.config.nEmbed}`);
    return { ...codes, output };
  } finally {
    tf.dispose(weightTensors(model.weights));
  }
}

const command: CommandModule<object, EncodeArgs & { backend: string }> = {
  command: 'encode <image>',
  describe: 'write the VQGAN code indices of an image (.json or .npy)',
  builder: (y) =>
    withModelOptions(y)
      .positional('image', { type: 'string', demandOption: true, describe: 'input image' })
      .option('output', { alias: 'o', type: 'string', describe: 'codes file, .json or .npy (default IMAGE.codes.json)' })
      .option('fit', { type: 'string', choices: ['pad', 'crop'] as const, describe: 'make sides multiples of the downsampling factor' })
      .option('force', { type: 'boolean', default: false, describe: 'overwrite an existing output file' }) as never,
  handler: async (argv) => {
    await initBackend(argv.backend);
    try {
      await runEncode(argv, (l) => process.stdout.write(`${l}\n`));
    } finally {
      await shutdownBackend();
    }
  },
};
export default command;
