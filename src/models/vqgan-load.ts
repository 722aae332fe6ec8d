// Loading a VQGAN first stage from files: a taming checkpoint (.ckpt, zip or legacy torch format; VQModel, GumbelVQ,
// or the first_stage_model inside a Net2NetTransformer checkpoint) or a converted .safetensors with the same keys,
// plus the taming YAML config that describes it (found next to the checkpoint when not given).
import fs from 'node:fs';
import path from 'node:path';
import { FormatError } from '../formats/host-tensor.ts';
import { RAW_DTYPES, contiguousStrides } from '../formats/raw.ts';
import { SafetensorsFile } from '../formats/safetensors.ts';
import { readTamingConfig, type TamingConfig } from '../formats/taming-config.ts';
import { LazyTensor, openTorchFile, stateDict, type StorageRef } from '../formats/torch.ts';
import type { Ops } from '../engine/ops.ts';
import { WeightMap, type TensorSource } from './weights.ts';
import { vqganWeights, type VqganConfig, type VqganWeightOptions, type VqganWeights } from './vqgan.ts';

export interface LoadedVqgan<T> {
  config: VqganConfig;
  weights: VqganWeights<T>;
  checkpoint: string;
  configFile: string;
  /** Whether the first stage came out of a Net2NetTransformer checkpoint/config. */
  fromTransformer: boolean;
}

const ST_DTYPES: Record<string, keyof typeof RAW_DTYPES> = {
  F32: 'float32',
  F64: 'float64',
  F16: 'float16',
  BF16: 'bfloat16',
  I64: 'int64',
  I32: 'int32',
  I16: 'int16',
  I8: 'int8',
  U8: 'uint8',
  BOOL: 'bool',
};

/** A safetensors file as lazy tensors: each is read with one fs.read when a model asks for it. */
export function safetensorsSource(file: string): { tensors: TensorSource; close(): void } {
  const st = SafetensorsFile.open(file);
  st.close(); // the header is all we need from it; tensors are read through our own descriptor
  const fd = fs.openSync(file, 'r');
  const tensors: TensorSource = new Map();
  for (const key of st.keys()) {
    const e = st.entry(key);
    const dtype = RAW_DTYPES[ST_DTYPES[e.dtype]];
    const count = (e.end - e.begin) / dtype.bytes;
    const storage: StorageRef = {
      key,
      dtype,
      numel: count,
      readElements(start, n) {
        const buf = Buffer.alloc(n * dtype.bytes);
        fs.readSync(fd, buf, 0, buf.length, e.begin + start * dtype.bytes);
        return buf;
      },
    };
    tensors.set(key, new LazyTensor(storage, dtype, e.shape, contiguousStrides(e.shape), 0));
  }
  return { tensors, close: () => fs.closeSync(fd) };
}

/** The state dict of a checkpoint (.ckpt/.pt/.pth/.bin) or .safetensors file. */
export async function openStateDict(file: string): Promise<{ tensors: TensorSource; close(): void }> {
  if (file.endsWith('.safetensors')) return safetensorsSource(file);
  const tf = await openTorchFile(file);
  return { tensors: stateDict(tf), close: () => tf.close() };
}

function exists(p: string): boolean {
  return fs.existsSync(p);
}

/** A checkpoint path, or a folder holding one (model.ckpt, last.ckpt, checkpoints/last.ckpt, one *.ckpt). */
export function resolveCheckpoint(p: string): string {
  if (!exists(p)) throw new FormatError(p, 'checkpoint not found', 'check the path (a .ckpt or .safetensors file, or a folder holding model.ckpt)');
  if (!fs.statSync(p).isDirectory()) return p;
  for (const name of ['model.ckpt', 'last.ckpt', 'checkpoints/last.ckpt', 'model.safetensors']) if (exists(path.join(p, name))) return path.join(p, name);
  const ckpts = fs.readdirSync(p).filter((n) => /\.(ckpt|safetensors)$/.test(n));
  if (ckpts.length === 1) return path.join(p, ckpts[0]);
  throw new FormatError(p, ckpts.length ? `folder holds several checkpoints (${ckpts.join(', ')})` : 'folder holds no .ckpt or .safetensors file', 'name the checkpoint file');
}

/**
 * The config that belongs to a checkpoint, by the conventions of the released models: X.ckpt + X.yaml,
 * a folder with model.ckpt + model.yaml or last.ckpt + config.yaml, or taming's logs layout
 * (NAME/checkpoints/last.ckpt + NAME/configs/*-project.yaml).
 */
export function findConfig(ckpt: string): string | undefined {
  const dir = path.dirname(ckpt);
  const stem = path.basename(ckpt).replace(/\.[^.]+$/, '');
  const candidates = [`${stem}.yaml`, `${stem}.yml`, 'config.yaml', 'model.yaml', 'config.yml'].map((n) => path.join(dir, n));
  const found = candidates.find(exists);
  if (found) return found;
  const configs = path.join(dir, '..', 'configs');
  if (path.basename(dir) === 'checkpoints' && exists(configs)) {
    const projects = fs.readdirSync(configs).filter((n) => n.endsWith('-project.yaml')).sort();
    if (projects.length) return path.join(configs, projects[projects.length - 1]);
  }
  return undefined;
}

function firstStageOf(cfg: TamingConfig): { config: VqganConfig; fromTransformer: boolean } {
  return cfg.kind === 'transformer' ? { config: cfg.model.firstStage, fromTransformer: true } : { config: cfg.model, fromTransformer: false };
}

/**
 * Loads a VQGAN first stage. `configPath` defaults to the config found next to the checkpoint (findConfig).
 * A transformer checkpoint/config gives its first_stage_model. Weights become tensors of `ops` (the record is
 * built once; dispose it with weightTensors when done).
 */
export async function loadVqgan<T>(ops: Ops<T>, ckptPath: string, configPath?: string, opts: VqganWeightOptions = {}): Promise<LoadedVqgan<T>> {
  const checkpoint = resolveCheckpoint(ckptPath);
  const configFile = configPath ?? findConfig(checkpoint);
  if (!configFile) {
    throw new FormatError(checkpoint, 'no config found next to the checkpoint', `pass --config, or put the model's .yaml beside it as ${path.basename(checkpoint).replace(/\.[^.]+$/, '')}.yaml`);
  }
  const { config, fromTransformer } = firstStageOf(readTamingConfig(configFile));
  const sd = await openStateDict(checkpoint);
  try {
    let wm = new WeightMap(checkpoint, sd.tensors);
    // A transformer checkpoint holds the first stage under first_stage_model.; accept it with either config.
    if (!wm.has('decoder.conv_in.weight') && wm.has('first_stage_model.decoder.conv_in.weight')) wm = wm.sub('first_stage_model.');
    const weights = vqganWeights(ops, wm, config, opts);
    return { config, weights, checkpoint, configFile, fromTransformer };
  } finally {
    sd.close();
  }
}
