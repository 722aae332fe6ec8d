// `vqclip demo`: the whole generate pipeline on the built-in models (made in code, no downloads), so a fresh
// install shows it working in about a minute. The models are untrained; the note says so.
import type { Argv, CommandModule } from 'yargs';
import { generateHandler, generateOptions, type GenerateArgs } from './generate.ts';

export const DEMO_DEFAULTS = {
  prompt: 'a watercolor lighthouse at dawn',
  size: [96],
  iterations: 40,
  saveEvery: 10,
  cutn: 16,
  seed: '2021',
};

const command: CommandModule<object, GenerateArgs> = {
  command: 'demo [prompt]',
  describe: 'run the whole pipeline on small built-in models (untrained, no downloads)',
  builder: (y) => generateOptions(y) as unknown as Argv<GenerateArgs>,
  handler: async (a) => {
    process.stderr.write(
      'vqclip demo: these built-in VQGAN and CLIP models have random, UNTRAINED weights made in code. The run is the\n' +
        'real pipeline (the CLIP loss goes down), but the picture cannot look like the prompt. For real images put\n' +
        'vqgan_imagenet_f16_16384.{ckpt,yaml} and ViT-B-32.pt in weights/ (`vqclip weights list`) and use `vqclip generate`.\n',
    );
    await generateHandler({
      ...a,
      builtin: true,
      prompt: a.prompt ?? a.prompts ?? DEMO_DEFAULTS.prompt,
      size: a.size ?? DEMO_DEFAULTS.size,
      iterations: a.iterations ?? DEMO_DEFAULTS.iterations,
      saveEvery: a.saveEvery ?? DEMO_DEFAULTS.saveEvery,
      cutn: a.cutn ?? DEMO_DEFAULTS.cutn,
      seed: a.seed ?? DEMO_DEFAULTS.seed,
    });
  },
};

export default command;
