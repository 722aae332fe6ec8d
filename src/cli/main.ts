// The command line: one yargs command module per file in ./commands.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { reportError } from './errors.ts';

const commands: { default: unknown }[] = [
  // Each module exports a yargs CommandModule as `default`.
  await import('./commands/demo.ts'),
  await import('./commands/generate.ts'),
  await import('./commands/batch.ts'),
  await import('./commands/animate.ts'),
  await import('./commands/interactive.ts'),
  await import('./commands/doctor.ts'),
  await import('./commands/weights.ts'),
  await import('./commands/reconstruct.ts'),
  await import('./commands/encode.ts'),
  await import('./commands/decode.ts'),
  await import('./commands/score.ts'),
  await import('./commands/sample.ts'),
];

try {
  let cli = yargs(hideBin(process.argv))
    .scriptName('vqclip')
    .usage('$0 <command> [options]\n\nVQGAN+CLIP and taming-transformers in TypeScript.')
    .option('backend', {
      type: 'string',
      choices: ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'],
      default: process.env.VQCLIP_BACKEND ?? 'auto',
      describe: 'compute backend (env VQCLIP_BACKEND)',
      global: true,
    })
    .strict()
    .demandCommand(1, 'name a command (see --help)')
    .recommendCommands()
    .fail((msg, err) => {
      if (err) throw err;
      process.stderr.write(`vqclip: ${msg}\n  fix: see \`vqclip --help\`\n`);
      process.exit(2);
    })
    .help()
    .wrap(Math.min(110, process.stdout.columns ?? 100));
  for (const c of commands) cli = cli.command(c.default as never);
  await cli.parseAsync();
} catch (err) {
  process.exitCode = reportError(err);
}
