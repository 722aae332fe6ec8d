// Opening model weights, with a fast path: `convertCheckpoint` writes a checkpoint's state dict as safetensors
// BESIDE the original (X.ckpt -> X.safetensors, plus X.yaml for taming models or X.config.json for CLIP), and
// `resolveWeights` later prefers that sibling when it is up to date: its metadata records the source file's size
// and modification time, so a replaced or edited checkpoint is never shadowed by a stale conversion.
import fs from 'node:fs';
import path from 'node:path';
import { FormatError } from './host-tensor.ts';
import { SafetensorsFile, writeSafetensors } from './safetensors.ts';
import { parseTamingConfig } from './taming-config.ts';
import { LazyTensor, openTorchFile, stateDict, type TorchFormat } from './torch.ts';
import { clipConfigFromShapes, detectModelKind, type ModelKind } from '../weights/detect.ts';

/** Metadata keys written into converted files. */
export const META = {
  source: 'vqclip.source',
  sourceSize: 'vqclip.source_size',
  sourceMtime: 'vqclip.source_mtime_ms',
  sourceFormat: 'vqclip.source_format',
  tensors: 'vqclip.tensors',
  kind: 'vqclip.kind',
} as const;

/** An open set of model weights: the state dict as lazy tensors (pass `tensors` to a WeightMap), plus provenance. */
export interface WeightSource {
  /** The path the caller named. */
  path: string;
  /** The file actually read (the converted sibling on the fast path). */
  file: string;
  format: 'safetensors' | TorchFormat;
  /** True when a converted .safetensors sibling was used instead of the checkpoint. */
  converted: boolean;
  tensors: Map<string, LazyTensor>;
  /** Globals in the checkpoint's pickle that are not on the allow-list (kept inert). */
  unknownGlobals: string[];
  metadata: Record<string, string>;
  /** Why a converted sibling that exists was not used (stale or damaged), for a hint to convert again. */
  note?: string;
  close(): void;
}

const CHECKPOINT_EXT = /\.(ckpt|pt|pth|bin)$/i;

/** X.ckpt -> X.safetensors (same folder). */
export function convertedPath(checkpoint: string): string {
  return checkpoint.replace(CHECKPOINT_EXT, '') + '.safetensors';
}

function mtimeMs(st: fs.Stats): string {
  return String(Math.floor(st.mtimeMs));
}

/** Whether `checkpoint` has an up-to-date converted sibling, and why not when it has none. */
export function convertedSibling(checkpoint: string): { file: string; fresh: boolean; reason: string } {
  const file = convertedPath(checkpoint);
  if (file === checkpoint || !fs.existsSync(file)) return { file, fresh: false, reason: 'not converted' };
  let src: fs.Stats;
  let dst: fs.Stats;
  try {
    src = fs.statSync(checkpoint);
    dst = fs.statSync(file);
  } catch {
    return { file, fresh: false, reason: 'cannot stat' };
  }
  if (dst.mtimeMs < src.mtimeMs) return { file, fresh: false, reason: 'older than the checkpoint' };
  let st: SafetensorsFile;
  try {
    st = SafetensorsFile.open(file); // validates that every tensor is present and the file is complete
  } catch (err) {
    return { file, fresh: false, reason: `unreadable (${err instanceof FormatError ? err.problem : String(err)})` };
  }
  try {
    const m = st.metadata;
    if (m[META.sourceSize] !== String(src.size) || m[META.sourceMtime] !== mtimeMs(src)) return { file, fresh: false, reason: 'converted from a different version of the checkpoint' };
    if (m[META.tensors] !== String(st.keys().length)) return { file, fresh: false, reason: 'incomplete' };
    return { file, fresh: true, reason: 'up to date' };
  } finally {
    st.close();
  }
}

/** A checkpoint path, or a folder holding one (model.safetensors, pytorch_model.bin, model.ckpt, last.ckpt, checkpoints/last.ckpt). */
export function resolveCheckpointPath(p: string): string {
  if (!fs.existsSync(p)) throw new FormatError(p, 'not found', 'check the path, or run `vqclip weights list` to see where the known weights go');
  if (!fs.statSync(p).isDirectory()) return p;
  for (const name of ['model.safetensors', 'pytorch_model.bin', 'model.ckpt', 'last.ckpt', 'checkpoints/last.ckpt']) {
    if (fs.existsSync(path.join(p, name))) return path.join(p, name);
  }
  const found = fs.readdirSync(p).filter((n) => /\.(ckpt|pt|pth|safetensors)$/.test(n));
  if (found.length === 1) return path.join(p, found[0]);
  throw new FormatError(p, found.length ? `folder holds several weight files (${found.join(', ')})` : 'folder holds no weight file', 'name the file');
}

/**
 * Opens the weights at `p` (a checkpoint, a .safetensors file, or a folder holding one), preferring an up-to-date
 * converted sibling. Nothing is read beyond headers and the object pickle until a tensor's `read()`.
 */
export async function resolveWeights(p: string, opts: { preferConverted?: boolean } = {}): Promise<WeightSource> {
  const file = resolveCheckpointPath(p);
  if (file.endsWith('.safetensors')) return openSafetensorsSource(p, file, false);
  let note: string | undefined;
  if (opts.preferConverted !== false) {
    const sib = convertedSibling(file);
    if (sib.fresh) return openSafetensorsSource(p, sib.file, true);
    if (sib.reason !== 'not converted') note = `${sib.file} not used: ${sib.reason}; run \`vqclip weights convert ${file}\` again`;
  }
  const tf = await openTorchFile(file);
  let tensors: Map<string, LazyTensor>;
  try {
    tensors = stateDict(tf);
  } catch (err) {
    tf.close();
    throw err;
  }
  return { path: p, file, format: tf.format, converted: false, tensors, unknownGlobals: tf.unknownGlobals, metadata: {}, note, close: () => tf.close() };
}

function openSafetensorsSource(p: string, file: string, converted: boolean): WeightSource {
  const st = SafetensorsFile.open(file);
  return { path: p, file, format: 'safetensors', converted, tensors: st.lazyTensors(), unknownGlobals: [], metadata: st.metadata, close: () => st.close() };
}

/**
 * The taming config belonging to a checkpoint, by the conventions of the released models: X.ckpt + X.yaml, a
 * folder with config.yaml or model.yaml, or taming's logs layout (NAME/checkpoints/last.ckpt + NAME/configs/*-project.yaml).
 */
export function findTamingConfig(checkpoint: string): string | undefined {
  const dir = path.dirname(checkpoint);
  const stem = path.basename(checkpoint).replace(/\.[^.]+$/, '');
  const found = [`${stem}.yaml`, `${stem}.yml`, 'config.yaml', 'model.yaml'].map((n) => path.join(dir, n)).find((f) => fs.existsSync(f));
  if (found) return found;
  const configs = path.join(dir, '..', 'configs');
  if (path.basename(dir) === 'checkpoints' && fs.existsSync(configs)) {
    const yamls = fs.readdirSync(configs).filter((n) => /\.ya?ml$/.test(n)).sort();
    const project = yamls.filter((n) => n.endsWith('-project.yaml'));
    const pick = project.length ? project[project.length - 1] : yamls.length === 1 ? yamls[0] : undefined;
    if (pick) return path.join(configs, pick);
  }
  return undefined;
}

export interface ConvertResult {
  checkpoint: string;
  safetensors: string;
  /** The config written or found beside the converted file (X.yaml or X.config.json). */
  config?: string;
  /** Set when a taming model has no config beside it (conversion still happened). */
  configMissing?: string;
  kind: ModelKind;
  tensors: number;
  bytes: number;
  seconds: number;
}

/** Writes a file atomically: a temporary sibling renamed into place. */
function writeFileAtomic(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.partial-${process.pid}`;
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * Converts a checkpoint's state dict to safetensors beside it, keeping each tensor's stored dtype (CLIP's float16
 * stays float16), plus the config a later load needs. `config` names the taming YAML when it is not found by
 * findTamingConfig. The config is written first and the safetensors file last, each atomically, so a present
 * X.safetensors always comes with its config.
 */
export async function convertCheckpoint(checkpoint: string, opts: { config?: string } = {}): Promise<ConvertResult> {
  const t0 = performance.now();
  const file = resolveCheckpointPath(checkpoint);
  if (file.endsWith('.safetensors')) throw new FormatError(file, 'is already safetensors', 'convert the original .ckpt/.pt file');
  const dest = convertedPath(file);
  const stem = dest.replace(/\.safetensors$/, '');
  const before = fs.statSync(file);
  const tf = await openTorchFile(file);
  try {
    const sd = stateDict(tf);
    if (!sd.size) throw new FormatError(file, 'holds no tensors to convert');
    const shapes = new Map([...sd].map(([k, t]) => [k, t.shape] as [string, number[]]));
    const kind = detectModelKind(shapes);
    const result: Omit<ConvertResult, 'seconds' | 'bytes'> = { checkpoint: file, safetensors: dest, kind, tensors: sd.size };
    if (kind.family === 'clip') {
      const cfg = clipConfigFromShapes(shapes)!;
      const out = `${stem}.config.json`;
      writeFileAtomic(out, JSON.stringify({ ...cfg, model: kind.label, source: path.basename(file) }, null, 2) + '\n');
      result.config = out;
    } else if (kind.family === 'vqgan' || kind.family === 'gumbel' || kind.family === 'transformer') {
      const cfg = opts.config ?? findTamingConfig(file);
      if (!cfg) result.configMissing = `no taming config (.yaml) found beside ${path.basename(file)}; put the model's config there as ${path.basename(stem)}.yaml`;
      else {
        const text = fs.readFileSync(cfg, 'utf8');
        parseTamingConfig(text, cfg); // refuse to copy a config the app cannot read
        const out = `${stem}.yaml`;
        if (path.resolve(cfg) !== path.resolve(out)) writeFileAtomic(out, text);
        result.config = out;
      }
    }
    const metadata: Record<string, string> = {
      format: 'pt',
      [META.source]: path.basename(file),
      [META.sourceSize]: String(before.size),
      [META.sourceMtime]: mtimeMs(before),
      [META.sourceFormat]: tf.format,
      [META.tensors]: String(sd.size),
      [META.kind]: kind.id,
    };
    writeSafetensors(dest, sd, metadata);
    const after = fs.statSync(file);
    if (after.size !== before.size || after.mtimeMs !== before.mtimeMs) {
      fs.rmSync(dest, { force: true });
      throw new FormatError(file, 'changed while it was being converted', 'wait for the download or copy to finish, then convert again');
    }
    return { ...result, bytes: fs.statSync(dest).size, seconds: (performance.now() - t0) / 1000 };
  } finally {
    tf.close();
  }
}
