// `npm run bench [-- --only engine,vqgan,clip,gpt,load,generate,compiled] [--backend wasm] [--quick]`
// Runs every benchmark in one process on one backend, so the ratios it prints compare figures of one run.
// Each section prints its own lines next to the PyTorch anchors in ../shared/anchors.
import os from 'node:os';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { initBackend, shutdownBackend } from '../engine/backend.ts';

export interface BenchOptions {
  quick: boolean;
  backend: string;
}

type BenchFn = (log: (line: string) => void, opts: BenchOptions) => Promise<void>;

const sections: Record<string, () => Promise<BenchFn>> = {
  engine: async () => (await import('./engine.ts')).benchEngine as BenchFn,
  load: async () => (await import('./load.ts')).benchLoad as BenchFn,
  vqgan: async () => (await import('./vqgan.ts')).benchVqgan as BenchFn,
  clip: async () => (await import('./clip.ts')).benchClip as BenchFn,
  gpt: async () => (await import('./gpt.ts')).benchGpt as BenchFn,
  generate: async () => (await import('./generate.ts')).benchGenerate as BenchFn,
  compiled: async () => (await import('./compiled.ts')).benchCompiled as BenchFn,
};

const argv = await yargs(hideBin(process.argv))
  .option('only', { type: 'string', describe: `comma-separated sections: ${Object.keys(sections).join(',')}` })
  .option('backend', { type: 'string', default: process.env.VQCLIP_BACKEND ?? 'auto' })
  .option('quick', { type: 'boolean', default: false, describe: 'fewer repeats and smaller sizes' })
  .strict()
  .parseAsync();

const wanted = argv.only ? argv.only.split(',').map((s) => s.trim()) : Object.keys(sections);
for (const name of wanted) if (!sections[name]) throw new Error(`unknown bench section ${name}`);

const report = await initBackend(argv.backend as never);
const log = (line: string) => process.stdout.write(`${line}\n`);
log(`# vqclip bench ${new Date().toISOString()}`);
log(`backend: ${report.backend} (${report.reason})`);
log(`machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`);
for (const name of wanted) {
  log(`\n## ${name}`);
  const t0 = performance.now();
  try {
    const fn = await sections[name]();
    await fn(log, { quick: argv.quick, backend: report.backend });
  } catch (err) {
    log(`${name}: FAILED: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
  log(`(${name}: ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}
await shutdownBackend();
