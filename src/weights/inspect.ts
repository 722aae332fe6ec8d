// A structured summary of a weights file (what `vqclip weights inspect` prints): container format, globals that
// were kept inert, the state dict's tensors, dtypes and parameter count, tensors outside the state dict (optimizer
// state, callbacks), checkpoint metadata, and the detected model kind.
import fs from 'node:fs';
import { convertedSibling, findTamingConfig, resolveCheckpointPath } from '../formats/convert.ts';
import { FormatError } from '../formats/host-tensor.ts';
import { PyGlobal } from '../formats/pickle.ts';
import { SafetensorsFile } from '../formats/safetensors.ts';
import { parseTamingConfig } from '../formats/taming-config.ts';
import { LazyTensor, allTensors, openTorchFile, stateDict, type TorchFile } from '../formats/torch.ts';
import { detectModelKind, type ModelKind } from './detect.ts';

export interface TensorInfo {
  key: string;
  dtype: string;
  shape: number[];
}

export interface InspectReport {
  file: string;
  bytes: number;
  format: string;
  /** Non-allow-listed globals other than TorchScript module classes (kept inert, never executed). */
  unknownGlobals: string[];
  /** TorchScript module classes (`__torch__.*`), expected in those archives. */
  moduleClasses: number;
  tensors: TensorInfo[];
  dtypes: Record<string, number>;
  params: number;
  /** Tensors reachable outside the state dict (optimizer state, callback scores...). */
  otherTensors: TensorInfo[];
  /** Scalar entries at the top of a checkpoint (epoch, global_step, versions). */
  info: Record<string, string>;
  kind: ModelKind;
  /** Taming config found beside the checkpoint, and whether it parses. */
  config?: { file: string; ok: boolean; problem?: string };
  /** Converted .safetensors sibling status. */
  converted?: { file: string; fresh: boolean; reason: string };
  metadata: Record<string, string>;
}

function scalar(v: unknown): string | undefined {
  if (typeof v === 'string') return v.length > 80 ? `${v.slice(0, 77)}...` : v;
  if (typeof v === 'number' || typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  return undefined;
}

function summarize(tensors: Map<string, LazyTensor>): { tensors: TensorInfo[]; dtypes: Record<string, number>; params: number } {
  const out: TensorInfo[] = [];
  const dtypes: Record<string, number> = {};
  let params = 0;
  for (const [key, t] of tensors) {
    out.push({ key, dtype: t.dtype.name, shape: [...t.shape] });
    dtypes[t.dtype.name] = (dtypes[t.dtype.name] ?? 0) + 1;
    params += t.numel;
  }
  return { tensors: out, dtypes, params };
}

function torchInfo(tf: TorchFile): Record<string, string> {
  const info: Record<string, string> = {};
  if (!(tf.root instanceof Map)) return info;
  for (const [k, v] of tf.root) {
    if (typeof k !== 'string') continue;
    const s = scalar(v);
    if (s !== undefined) info[k] = s;
    else if (v instanceof Map && k === 'callbacks') info[k] = [...v.keys()].map((c) => (c instanceof PyGlobal ? c.qualified : String(c))).join(', ');
  }
  return info;
}

export async function inspectWeights(p: string): Promise<InspectReport> {
  const file = resolveCheckpointPath(p);
  const bytes = fs.statSync(file).size;
  if (file.endsWith('.safetensors')) {
    const st = SafetensorsFile.open(file);
    try {
      const lazy = st.lazyTensors();
      const s = summarize(lazy);
      const kind = detectModelKind(new Map(s.tensors.map((t) => [t.key, t.shape])));
      return { file, bytes, format: 'safetensors', unknownGlobals: [], moduleClasses: 0, ...s, otherTensors: [], info: {}, kind, metadata: st.metadata, config: configStatus(file, kind) };
    } finally {
      st.close();
    }
  }
  const tf = await openTorchFile(file);
  try {
    const sd = stateDict(tf);
    const s = summarize(sd);
    const inSd = new Set(sd.values());
    const otherTensors: TensorInfo[] = [];
    for (const [key, t] of allTensors(tf.root)) if (!inSd.has(t)) otherTensors.push({ key, dtype: t.dtype.name, shape: [...t.shape] });
    const kind = detectModelKind(new Map(s.tensors.map((t) => [t.key, t.shape])));
    const moduleClasses = tf.format === 'torchscript' ? tf.unknownGlobals.filter((g) => g.startsWith('__torch__.')).length : 0;
    const unknownGlobals = tf.format === 'torchscript' ? tf.unknownGlobals.filter((g) => !g.startsWith('__torch__.')) : tf.unknownGlobals;
    return {
      file,
      bytes,
      format: { zip: 'PyTorch zip checkpoint', legacy: 'PyTorch legacy (pre-1.6) pickle stream', torchscript: 'TorchScript archive' }[tf.format],
      unknownGlobals,
      moduleClasses,
      ...s,
      otherTensors,
      info: torchInfo(tf),
      kind,
      metadata: {},
      config: configStatus(file, kind),
      converted: convertedSibling(file),
    };
  } finally {
    tf.close();
  }
}

/** The taming config beside a checkpoint, and (for transformers) the conditioning it declares, added to the kind. */
function configStatus(file: string, kind: ModelKind): InspectReport['config'] {
  if (kind.family !== 'vqgan' && kind.family !== 'gumbel' && kind.family !== 'transformer') return undefined;
  const cfg = findTamingConfig(file);
  if (!cfg) return undefined;
  try {
    const parsed = parseTamingConfig(fs.readFileSync(cfg, 'utf8'), cfg);
    if (parsed.kind === 'transformer' && kind.family === 'transformer') {
      const c = parsed.model.cond;
      const cond = c.kind === 'class' ? `class-conditional, ${c.nClasses} classes` : c.kind === 'unconditional' ? `unconditional (SOS token ${c.sosToken})` : `conditioned by ${c.target}`;
      kind.label = kind.label.replace(' (SOS or class-label conditioning: see its config)', '') + `; ${cond} (config)`;
      kind.details.conditioning = c.kind;
    }
    return { file: cfg, ok: true };
  } catch (err) {
    return { file: cfg, ok: false, problem: err instanceof FormatError ? err.problem : String(err) };
  }
}
