// The command line: one yargs command module per file in ./commands. Only the module of the command being run is
// imported (loading every command pulls in tfjs, ink and React: seconds of start-up); --help, typos and a missing
// command load them all so yargs can list and suggest.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { reportError } from './errors.ts';

/** Command name (and aliases) -> module; each module exports a yargs CommandModule as `default`. */
const COMMANDS: [names: string[], load: () => Promise<{ default: unknown }>][] = [
  [['demo'], () => import('./commands/demo.ts')],
  [['generate'], () => import('./commands/generate.ts')],
  [['batch'], () => import('./commands/batch.ts')],
  [['animate'], () => import('./commands/animate.ts')],
  [['interactive', 'ui'], () => import('./commands/interactive.ts')],
  [['sample'], () => import('./commands/sample.ts')],
  [['score'], () => import('./commands/score.ts')],
  [['reconstruct'], () => import('./commands/reconstruct.ts')],
  [['encode'], () => import('./commands/encode.ts')],
  [['decode'], () => import('./commands/decode.ts')],
  [['weights'], () => import('./commands/weights.ts')],
  [['doctor'], () => import('./commands/doctor.ts')],
];

try {
  const argv = hideBin(process.argv);
  const first = argv.find((a) => !a.startsWith('-'));
  const named = COMMANDS.find(([names]) => first !== undefined && names.includes(first));
  const wantsHelp = argv.some((a) => a === '--help' || a === '-h');
  const modules = await Promise.all((named && !(wantsHelp && first === undefined) ? [named] : COMMANDS).map(([, load]) => load()));
  let cli = yargs(argv)
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
  for (const m of modules) cli = cli.command(m.default as never);
  await cli.parseAsync();
} catch (err) {
  process.exitCode = reportError(err);
}
