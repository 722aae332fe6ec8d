// `vqclip doctor`: what this machine offers and what vqclip will use — backends found, the one chosen and why,
// GPU adapter, threads, package versions, and which weights are present in weights/.
import type { Argv, CommandModule } from 'yargs';
import { initBackend, shutdownBackend, type BackendChoice, type BackendReport } from '../../engine/backend.ts';
import { weightStatus, weightsDir } from '../../weights/registry.ts';

type Out = (line: string) => void;

export async function runDoctor(opts: { backend: BackendChoice; json?: boolean }, out: Out = (l) => process.stdout.write(`${l}\n`)) {
  let report: BackendReport;
  try {
    report = await initBackend(opts.backend);
  } finally {
    await shutdownBackend();
  }
  const weights = weightStatus();
  if (opts.json) {
    out(
      JSON.stringify({
        backend: report.backend,
        reason: report.reason,
        attempts: report.attempts,
        gpu: report.gpu,
        software: report.software,
        threads: report.threads,
        versions: report.versions,
        node: process.version,
        weightsDir: weightsDir(),
        weights: weights.map((w) => ({ id: w.weight.id, present: w.present })),
      }),
    );
    return report;
  }
  out(`vqclip doctor (node ${process.version}, ${process.platform}-${process.arch})`);
  out('');
  out('backends (tried in order):');
  for (const a of report.attempts) out(`  ${a.ok ? 'ok  ' : 'no  '} ${a.backend.padEnd(10)} ${a.reason ?? ''}`);
  out('');
  out(`chosen: ${report.backend} — ${report.reason}`);
  if (report.gpu) {
    const g = report.gpu as unknown as Record<string, unknown>;
    const name = [g.vendor, g.architecture, g.device, g.description].filter((x) => typeof x === 'string' && x).join(' / ');
    out(`gpu adapter: ${name || 'unnamed'}${report.software ? ' (software rasteriser: correct but slow)' : ''}`);
  }
  if (report.threads !== undefined) out(`threads: ${report.threads}`);
  if (report.fastKernels?.length) out(`fast wasm backward kernels: ${report.fastKernels.join(', ')}`);
  out(`packages: ${Object.entries(report.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  out('');
  out(`weights in ${weightsDir()}:`);
  for (const w of weights) out(`  ${w.present ? '[x]' : '[ ]'} ${w.weight.id}`);
  const n = weights.filter((w) => w.present).length;
  out(n ? `${n} present.` : 'none present: `vqclip demo` runs without weights; `vqclip weights list` says where to get them.');
  return report;
}

const command: CommandModule<object, { backend: string; json: boolean }> = {
  command: 'doctor',
  describe: 'show backends, GPU, threads, package versions and installed weights',
  builder: (y: Argv) => y.option('json', { type: 'boolean', default: false, describe: 'one JSON object' }) as never,
  handler: async (args) => {
    await runDoctor({ backend: args.backend as BackendChoice, json: args.json });
  },
};

export default command;
