// The models a generation uses — a VQGAN and one or more CLIP models with their tokenizers — loaded from files (or
// the built-in demo models), with the record of names and hashes that goes into every image's metadata.
import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../cli/errors.ts';
import type { Executor } from '../engine/ops.ts';
import { findTamingConfig, resolveCheckpointPath } from '../formats/convert.ts';
import { defaultClipPath, loadClip, clipWeightTensors } from '../models/clip-load.ts';
import { loadClipTokenizer } from '../models/clip-tokenizer.ts';
import { ByteTokenizer, DEMO_CLIP, DEMO_NAME, DEMO_VQGAN, demoClip, demoVqgan } from '../models/demo.ts';
import { loadVqgan } from '../models/vqgan-load.ts';
import { weightTensors } from '../models/vqgan.ts';
import { modelSha256 } from '../weights/hash.ts';
import { locateWeight } from '../weights/registry.ts';
import type { GuideModel, ImageModel } from './generate.ts';

export const DEFAULT_VQGAN_ID = 'vqgan_imagenet_f16_16384';

/** Which models to use, as the user names them (the recorded form is ModelRecord). */
export interface ModelChoice {
  /** The built-in demo models instead of files. */
  builtin?: boolean;
  vqgan?: { ckpt?: string; config?: string };
  /** CLIP files or Hugging Face folders with their guidance weights (default: weights/ViT-B-32.pt, weight 1). */
  clips?: { path: string; weight: number }[];
  /** A taming transformer checkpoint whose GPT prior draws the initial codes (init 'prior'). */
  prior?: { ckpt: string; config?: string };
}

export interface ModelRecord {
  role: 'vqgan' | 'clip' | 'prior';
  /** File name (or built-in name): what --from looks for when the path has moved. */
  name: string;
  path?: string;
  config?: string;
  sha256?: string;
  weight?: number;
}

export interface LoadedModels<T> {
  vqgan: ImageModel<T>;
  guides: GuideModel<T>[];
  records: ModelRecord[];
  dispose(): void;
}

/** Parses '--clip FILE[:weight]' (the weight is a trailing number; Windows drive colons stay in the path). */
export function parseClipArg(arg: string): { path: string; weight: number } {
  const m = /^(.*):(-?\d+(?:\.\d+)?(?:e-?\d+)?)$/i.exec(arg);
  if (m && !/^[a-zA-Z]$/.test(m[1])) {
    const weight = Number(m[2]);
    if (!(weight > 0)) throw new UserError(`--clip ${arg}: the weight must be positive`, 'e.g. --clip weights/ViT-B-16.pt:0.5');
    return { path: m[1], weight };
  }
  return { path: arg, weight: 1 };
}

export async function loadGenerateModels<T>(ex: Executor<T>, choice: ModelChoice, opts: { encoder?: boolean } = {}): Promise<LoadedModels<T>> {
  const o = ex.ops;
  if (choice.builtin) {
    const vw = demoVqgan(o);
    const cw = demoClip(o);
    return {
      vqgan: { name: `${DEMO_NAME} VQGAN`, config: DEMO_VQGAN, weights: vw },
      guides: [{ name: `${DEMO_NAME} CLIP`, config: DEMO_CLIP, weights: cw, tokenizer: new ByteTokenizer(), weight: 1 }],
      records: [
        { role: 'vqgan', name: DEMO_NAME },
        { role: 'clip', name: DEMO_NAME, weight: 1 },
      ],
      dispose: () => ex.dispose([...weightTensors(vw), ...clipWeightTensors(cw)]),
    };
  }
  // VQGAN: --vqgan, else the prior's own first stage (its codes index that codebook), else the default model in
  // weights/ (the error says what to download and where).
  let ckpt = choice.vqgan?.ckpt ?? choice.prior?.ckpt;
  let config = choice.vqgan?.ckpt ? choice.vqgan?.config : choice.prior?.config;
  if (!ckpt) {
    try {
      [ckpt, config = config] = locateWeight(DEFAULT_VQGAN_ID);
    } catch (err) {
      if (err instanceof UserError) {
        throw new UserError(`no --vqgan given and the default VQGAN is not installed (${err.message})`, `${err.hint}; or run \`vqclip demo\`, which needs no downloads`);
      }
      throw err;
    }
  }
  const ckptPath = resolveCheckpointPath(ckpt);
  const configFile = config ?? findTamingConfig(ckptPath);
  const clips = choice.clips?.length ? choice.clips : [{ path: defaultClipPath(), weight: 1 }];
  for (const c of clips) {
    if (!fs.existsSync(c.path)) {
      throw new UserError(`CLIP model ${c.path} not found`, `download ViT-B-32.pt (see weights/README.md or \`vqclip weights list\`) into weights/, or pass --clip FILE`);
    }
  }
  const vq = await loadVqgan(o, ckptPath, configFile, { encoder: opts.encoder ?? false });
  const guides: GuideModel<T>[] = [];
  try {
    for (const c of clips) {
      const tokenizer = loadClipTokenizer(c.path);
      const m = await loadClip(o, c.path);
      guides.push({ name: path.basename(c.path), config: m.config, weights: m.weights, tokenizer, weight: c.weight });
    }
  } catch (err) {
    ex.dispose(weightTensors(vq.weights));
    for (const g of guides) ex.dispose(clipWeightTensors(g.weights));
    throw err;
  }
  const records: ModelRecord[] = [
    { role: 'vqgan', name: path.basename(vq.checkpoint), path: vq.checkpoint, config: vq.configFile, sha256: await modelSha256(vq.checkpoint) },
    ...(await Promise.all(clips.map(async (c) => ({ role: 'clip' as const, name: path.basename(c.path), path: c.path, sha256: await modelSha256(c.path), weight: c.weight })))),
  ];
  if (choice.prior) {
    const p = resolveCheckpointPath(choice.prior.ckpt);
    records.push({ role: 'prior', name: path.basename(p), path: p, config: choice.prior.config ?? findTamingConfig(p), sha256: await modelSha256(p) });
  }
  return {
    vqgan: { name: path.basename(vq.checkpoint), config: vq.config, weights: vq.weights },
    guides,
    records,
    dispose: () => ex.dispose([...weightTensors(vq.weights), ...guides.flatMap((g) => clipWeightTensors(g.weights))]),
  };
}

/**
 * The models of a recorded run (--from / --resume): the recorded paths when they still exist, else a file of the
 * same name in the weights folder. A different hash is reported, not fatal (the caller prints the warning).
 */
export async function choiceFromRecords(records: ModelRecord[], weightsDir: string, warn: (line: string) => void): Promise<ModelChoice> {
  if (records.some((r) => r.name === DEMO_NAME)) return { builtin: true };
  const find = async (r: ModelRecord): Promise<string> => {
    const candidates = [r.path, path.join(weightsDir, r.name)].filter((p): p is string => !!p);
    const found = candidates.find((p) => fs.existsSync(p));
    if (!found) throw new UserError(`the recorded ${r.role} model ${r.name} was not found (looked at ${candidates.join(', ')})`, `put ${r.name} in ${weightsDir}, or pass --vqgan/--clip to choose models`);
    if (r.sha256 && r.sha256 !== 'folder') {
      const now = await modelSha256(found);
      if (now !== r.sha256) warn(`warning: ${found} differs from the recorded ${r.name} (sha256 ${now.slice(0, 12)} vs ${r.sha256.slice(0, 12)}); the result will differ`);
    }
    return found;
  };
  const vq = records.find((r) => r.role === 'vqgan');
  if (!vq) throw new UserError('the recorded run names no VQGAN model');
  const vqPath = await find(vq);
  const configs = [vq.config, findTamingConfig(vqPath)].filter((p): p is string => !!p && fs.existsSync(p));
  const clips = [];
  for (const r of records.filter((x) => x.role === 'clip')) clips.push({ path: await find(r), weight: r.weight ?? 1 });
  const pr = records.find((r) => r.role === 'prior');
  const prior = pr ? { ckpt: await find(pr), config: pr.config && fs.existsSync(pr.config) ? pr.config : undefined } : undefined;
  return { vqgan: { ckpt: vqPath, config: configs[0] }, clips, prior };
}
