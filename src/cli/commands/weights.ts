// `vqclip weights list | inspect FILE | convert FILE`: which known weights are installed (and where to get the
// missing ones), what a weights file holds, and converting a checkpoint to safetensors for fast loading.
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { convertCheckpoint, type ConvertResult } from '../../formats/convert.ts';
import { inspectWeights, type InspectReport, type TensorInfo } from '../../weights/inspect.ts';
import { weightStatus, weightsDir, whereToGet, type WeightStatus } from '../../weights/registry.ts';

export type Out = (line: string) => void;
const stdout: Out = (line) => process.stdout.write(`${line}\n`);

function mb(bytes: number): string {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`;
}

function count(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
}

/** `weights list`: every known weight, present or missing (with the file name to use and where to get it). */
export function runList(opts: { dir?: string } = {}, out: Out = stdout): WeightStatus[] {
  const dir = path.resolve(opts.dir ?? weightsDir());
  const status = weightStatus(dir);
  out(`weights folder: ${dir}`);
  for (const s of status) {
    out('');
    out(`${s.present ? '[x]' : '[ ]'} ${s.weight.id}: ${s.weight.title}${s.weight.size ? ` (${s.weight.size})` : ''}`);
    if (s.present) {
      for (const f of s.files) {
        const conv = f.converted === undefined ? '' : f.converted ? ', converted (fast load)' : ', not converted: `vqclip weights convert` speeds up loading';
        out(`      ${path.relative(dir, f.found!)} (${mb(f.bytes!)}${conv})`);
      }
    } else {
      const have = s.files.filter((f) => f.found);
      if (have.length) out(`      found: ${have.map((f) => path.relative(dir, f.found!)).join(', ')}`);
      for (const line of whereToGet(s.weight, dir).filter((l, i) => i >= s.files.length || !s.files[i].found)) out(`      get: ${line}`);
    }
  }
  const n = status.filter((s) => s.present).length;
  out('');
  out(`${n} of ${status.length} present. Downloads go in ${dir} (git-ignored); see weights/README.md.`);
  return status;
}

function shapeStr(t: TensorInfo): string {
  return `${t.key}  ${t.dtype} [${t.shape.join(', ')}]`;
}

/** `weights inspect FILE`: format, inert globals, tensor count, dtypes, params, a few (or all) keys, model kind. */
export async function runInspect(file: string, opts: { all?: boolean } = {}, out: Out = stdout): Promise<InspectReport> {
  const r = await inspectWeights(file);
  out(`file: ${r.file} (${mb(r.bytes)})`);
  out(`format: ${r.format}`);
  out(`model: ${r.kind.label}`);
  if (Object.keys(r.info).length) out(`checkpoint: ${Object.entries(r.info).map(([k, v]) => `${k}=${v}`).join(', ')}`);
  if (r.moduleClasses) out(`module classes: ${r.moduleClasses} TorchScript classes (kept as inert records; no code is run)`);
  out(r.unknownGlobals.length ? `unknown globals (kept inert, never executed): ${r.unknownGlobals.join(', ')}` : 'unknown globals: none');
  const dt = Object.entries(r.dtypes).map(([d, n]) => `${d} x${n}`).join(', ');
  out(`state dict: ${r.tensors.length} tensors, ${count(r.params)} parameters (${r.params}), dtypes ${dt || 'none'}`);
  const show = opts.all || r.tensors.length <= 12 ? r.tensors : [...r.tensors.slice(0, 8), undefined, ...r.tensors.slice(-3)];
  for (const t of show) out(t ? `  ${shapeStr(t)}` : `  ... ${r.tensors.length - 11} more (--all lists every key)`);
  if (r.otherTensors.length) {
    out(`outside the state dict: ${r.otherTensors.length} tensors (optimizer state etc.; not used)`);
    const others = opts.all ? r.otherTensors : r.otherTensors.slice(0, 3);
    for (const t of others) out(`  ${shapeStr(t)}`);
    if (others.length < r.otherTensors.length) out(`  ... ${r.otherTensors.length - others.length} more`);
  }
  if (r.config) out(`config: ${r.config.file}${r.config.ok ? '' : ` (unusable: ${r.config.problem})`}`);
  if (r.converted) out(`converted: ${r.converted.fresh ? `${r.converted.file} (up to date)` : r.converted.reason}`);
  for (const [k, v] of Object.entries(r.metadata)) out(`metadata: ${k}=${v}`);
  return r;
}

/** `weights convert FILE`: safetensors + config beside the original, used automatically by later loads. */
export async function runConvert(file: string, opts: { config?: string } = {}, out: Out = stdout): Promise<ConvertResult> {
  const r = await convertCheckpoint(file, opts);
  out(`${r.kind.label}: ${r.tensors} tensors -> ${r.safetensors} (${mb(r.bytes)}) in ${r.seconds.toFixed(1)} s`);
  if (r.config) out(`config: ${r.config}`);
  if (r.configMissing) out(`warning: ${r.configMissing}`);
  out('later loads of the checkpoint read the .safetensors file while it is up to date.');
  return r;
}

const list: CommandModule = {
  command: 'list',
  describe: 'show which known weights are in the weights folder, and where to get the missing ones',
  builder: (y: Argv) => y.option('dir', { type: 'string', describe: 'weights folder (default: $VQCLIP_WEIGHTS or ./weights)' }),
  handler: (a) => {
    runList({ dir: a.dir as string | undefined });
  },
};

const inspect: CommandModule = {
  command: 'inspect <file>',
  describe: 'summarise a checkpoint or safetensors file: format, globals, tensors, dtypes, parameters, model kind',
  builder: (y: Argv) =>
    y.positional('file', { type: 'string', describe: 'a .ckpt/.pt/.pth/.bin/.safetensors file or a folder holding one' }).option('all', { type: 'boolean', default: false, describe: 'list every tensor' }),
  handler: async (a) => {
    await runInspect(a.file as string, { all: a.all as boolean });
  },
};

const convert: CommandModule = {
  command: 'convert <file>',
  describe: 'write the checkpoint as <name>.safetensors (+ <name>.yaml or <name>.config.json) beside it, for fast loading',
  builder: (y: Argv) =>
    y.positional('file', { type: 'string', describe: 'the checkpoint to convert' }).option('config', { type: 'string', describe: 'taming .yaml to copy beside it (default: found beside the checkpoint)' }),
  handler: async (a) => {
    await runConvert(a.file as string, { config: a.config as string | undefined });
  },
};

const command: CommandModule = {
  command: 'weights <action>',
  describe: 'list, inspect and convert model weights',
  builder: (y: Argv) => y.command(list).command(inspect).command(convert).demandCommand(1, 'name an action: list, inspect or convert'),
  handler: () => {},
};

export default command;
