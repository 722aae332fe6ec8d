// Loading a VQGAN first stage from files: a taming checkpoint (.ckpt, zip or legacy torch format; VQModel, GumbelVQ,
// or the first_stage_model inside a Net2NetTransformer checkpoint) or a converted .safetensors with the same keys,
// plus the taming YAML config that describes it (found next to the checkpoint when not given). Files are opened
// through formats/convert.ts, so an up-to-date converted X.safetensors beside X.ckpt is used when present.
import path from 'node:path';
import { findTamingConfig, resolveCheckpointPath, resolveWeights } from '../formats/convert.ts';
import { FormatError } from '../formats/host-tensor.ts';
import { readTamingConfig, type TamingConfig } from '../formats/taming-config.ts';
import type { LazyTensor } from '../formats/torch.ts';
import type { Ops } from '../engine/ops.ts';
import { WeightMap } from './weights.ts';
import { vqganWeights, type VqganConfig, type VqganWeightOptions, type VqganWeights } from './vqgan.ts';

export interface LoadedVqgan<T> {
  config: VqganConfig;
  weights: VqganWeights<T>;
  checkpoint: string;
  configFile: string;
  /** The file the weights were read from (a converted .safetensors sibling on the fast path). */
  weightsFile: string;
  /** Whether the first stage came out of a Net2NetTransformer checkpoint/config. */
  fromTransformer: boolean;
}

/** The state dict of a checkpoint, .safetensors file or folder (convert.ts resolveWeights: converted sibling preferred). */
export async function openStateDict(file: string): Promise<{ tensors: Map<string, LazyTensor>; file: string; close(): void }> {
  const w = await resolveWeights(file);
  return { tensors: w.tensors, file: w.file, close: () => w.close() };
}

/** A checkpoint path, or a folder holding one (convert.ts resolveCheckpointPath). */
export const resolveCheckpoint = resolveCheckpointPath;

/** The taming config beside a checkpoint (convert.ts findTamingConfig). */
export const findConfig = findTamingConfig;

function firstStageOf(cfg: TamingConfig): { config: VqganConfig; fromTransformer: boolean } {
  return cfg.kind === 'transformer' ? { config: cfg.model.firstStage, fromTransformer: true } : { config: cfg.model, fromTransformer: false };
}

/**
 * Loads a VQGAN first stage. `configPath` defaults to the config found next to the checkpoint (findTamingConfig).
 * A transformer checkpoint/config gives its first_stage_model. Weights become tensors of `ops` (the record is
 * built once; dispose it with weightTensors when done).
 */
export async function loadVqgan<T>(ops: Ops<T>, ckptPath: string, configPath?: string, opts: VqganWeightOptions = {}): Promise<LoadedVqgan<T>> {
  const checkpoint = resolveCheckpointPath(ckptPath);
  const configFile = configPath ?? findTamingConfig(checkpoint);
  if (!configFile) {
    throw new FormatError(checkpoint, 'no config found next to the checkpoint', `pass --config, or put the model's .yaml beside it as ${path.basename(checkpoint).replace(/\.[^.]+$/, '')}.yaml`);
  }
  const { config, fromTransformer } = firstStageOf(readTamingConfig(configFile));
  const sd = await resolveWeights(checkpoint);
  try {
    let wm = new WeightMap(sd.file, sd.tensors);
    // A transformer checkpoint holds the first stage under first_stage_model.; accept it with either config.
    if (!wm.has('decoder.conv_in.weight') && wm.has('first_stage_model.decoder.conv_in.weight')) wm = wm.sub('first_stage_model.');
    const weights = vqganWeights(ops, wm, config, opts);
    return { config, weights, checkpoint, configFile, weightsFile: sd.file, fromTransformer };
  } finally {
    sd.close();
  }
}
