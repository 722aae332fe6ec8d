// Taming-transformers YAML configs (model.target + model.params, as instantiate_from_config reads them):
// VQModel / GumbelVQ first stages and Net2NetTransformer with transformer_config, first_stage_config and
// cond_stage_config. Parsed with the `yaml` package; every field a model needs is checked here so a bad config
// fails with the file name and the field, not deep inside a model.
import fs from 'node:fs';
import YAML from 'yaml';
import { FormatError } from './host-tensor.ts';

export interface DDConfig {
  doubleZ: boolean;
  zChannels: number;
  resolution: number;
  inChannels: number;
  outCh: number;
  ch: number;
  chMult: number[];
  numResBlocks: number;
  attnResolutions: number[];
  dropout: number;
}

export interface FirstStageConfig {
  target: string;
  kind: 'vq' | 'gumbel';
  embedDim: number;
  nEmbed: number;
  ddconfig: DDConfig;
  /** GumbelVQ only. */
  klWeight?: number;
  temperatureInit?: number;
  remap?: string | null;
  saneIndexShape: boolean;
}

export interface GptConfig {
  vocabSize: number;
  blockSize: number;
  nLayer: number;
  nHead: number;
  nEmbd: number;
}

export type CondStage =
  | { kind: 'unconditional'; sosToken: number }
  | { kind: 'class'; nClasses: number }
  | { kind: 'other'; target: string };

export interface TransformerConfig {
  target: string;
  gpt: GptConfig;
  firstStage: FirstStageConfig;
  cond: CondStage;
  permuter: string;
  firstStageKey: string;
  condStageKey: string;
}

export type TamingConfig = { kind: 'first-stage'; model: FirstStageConfig } | { kind: 'transformer'; model: TransformerConfig };

class Reader {
  constructor(readonly file: string) {}
  fail(field: string, problem: string): never {
    throw new FormatError(this.file, `config field ${field} ${problem}`, 'use the .yaml published with the checkpoint');
  }
  obj(v: unknown, field: string): Record<string, unknown> {
    if (!v || typeof v !== 'object' || Array.isArray(v)) this.fail(field, 'is missing or not a mapping');
    return v as Record<string, unknown>;
  }
  int(o: Record<string, unknown>, key: string, field: string, dflt?: number): number {
    const v = o[key] ?? dflt;
    if (!Number.isSafeInteger(v) || (v as number) < 0) this.fail(`${field}.${key}`, `must be a non-negative integer (got ${JSON.stringify(v)})`);
    return v as number;
  }
  num(o: Record<string, unknown>, key: string, field: string, dflt?: number): number {
    const v = o[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(`${field}.${key}`, `must be a number (got ${JSON.stringify(v)})`);
    return v as number;
  }
  ints(o: Record<string, unknown>, key: string, field: string, dflt?: number[]): number[] {
    const v = o[key] ?? dflt;
    if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x) && x >= 0)) this.fail(`${field}.${key}`, 'must be a list of integers');
    return v as number[];
  }
  str(o: Record<string, unknown>, key: string, field: string): string {
    const v = o[key];
    if (typeof v !== 'string') this.fail(`${field}.${key}`, 'must be a string');
    return v as string;
  }
}

function firstStage(r: Reader, node: Record<string, unknown>, field: string): FirstStageConfig {
  const target = r.str(node, 'target', field);
  const p = r.obj(node.params, `${field}.params`);
  const dd = r.obj(p.ddconfig, `${field}.params.ddconfig`);
  const f = `${field}.params.ddconfig`;
  const ddconfig: DDConfig = {
    doubleZ: Boolean(dd.double_z ?? false),
    zChannels: r.int(dd, 'z_channels', f),
    resolution: r.int(dd, 'resolution', f),
    inChannels: r.int(dd, 'in_channels', f, 3),
    outCh: r.int(dd, 'out_ch', f, 3),
    ch: r.int(dd, 'ch', f),
    chMult: r.ints(dd, 'ch_mult', f, [1, 2, 4, 8]),
    numResBlocks: r.int(dd, 'num_res_blocks', f),
    attnResolutions: r.ints(dd, 'attn_resolutions', f, []),
    dropout: r.num(dd, 'dropout', f, 0),
  };
  if (ddconfig.chMult.length === 0) r.fail(`${f}.ch_mult`, 'must not be empty');
  const kind = /Gumbel/.test(target) ? 'gumbel' : 'vq';
  if (!/VQModel|GumbelVQ|VQSegmentationModel|EMAVQ/.test(target)) r.fail(`${field}.target`, `names an unsupported first stage (${target})`);
  return {
    target,
    kind,
    embedDim: r.int(p, 'embed_dim', `${field}.params`),
    nEmbed: r.int(p, 'n_embed', `${field}.params`),
    ddconfig,
    klWeight: kind === 'gumbel' ? r.num(p, 'kl_weight', `${field}.params`, 1e-8) : undefined,
    temperatureInit: kind === 'gumbel' ? r.num(p, 'temperature_init', `${field}.params`, 1) : undefined,
    remap: typeof p.remap === 'string' ? p.remap : null,
    saneIndexShape: Boolean(p.sane_index_shape ?? false),
  };
}

export function parseTamingConfig(text: string, file = '<config>'): TamingConfig {
  const r = new Reader(file);
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (err) {
    throw new FormatError(file, `is not valid YAML (${(err as Error).message.split('\n')[0]})`);
  }
  const root = r.obj(doc, 'root');
  const model = r.obj(root.model, 'model');
  const target = r.str(model, 'target', 'model');
  if (/cond_transformer\.Net2NetTransformer|Net2NetTransformer/.test(target)) {
    const p = r.obj(model.params, 'model.params');
    const tc = r.obj(p.transformer_config, 'model.params.transformer_config');
    const tp = r.obj(tc.params, 'model.params.transformer_config.params');
    const tf = 'model.params.transformer_config.params';
    const gpt: GptConfig = {
      vocabSize: r.int(tp, 'vocab_size', tf),
      blockSize: r.int(tp, 'block_size', tf),
      nLayer: r.int(tp, 'n_layer', tf, 12),
      nHead: r.int(tp, 'n_head', tf, 8),
      nEmbd: r.int(tp, 'n_embd', tf, 256),
    };
    if (gpt.nHead === 0 || gpt.nEmbd % gpt.nHead !== 0) r.fail(`${tf}.n_embd`, `(${gpt.nEmbd}) must be divisible by n_head (${gpt.nHead})`);
    const fs1 = firstStage(r, r.obj(p.first_stage_config, 'model.params.first_stage_config'), 'model.params.first_stage_config');
    let cond: CondStage;
    const cs = p.cond_stage_config;
    if (cs === '__is_unconditional__') cond = { kind: 'unconditional', sosToken: r.int(p, 'sos_token', 'model.params', 0) };
    else {
      const c = r.obj(cs, 'model.params.cond_stage_config');
      const ct = r.str(c, 'target', 'model.params.cond_stage_config');
      if (/Labelator/.test(ct)) {
        const cp = r.obj(c.params, 'model.params.cond_stage_config.params');
        cond = { kind: 'class', nClasses: r.int(cp, 'n_classes', 'model.params.cond_stage_config.params') };
      } else cond = { kind: 'other', target: ct };
    }
    const perm = p.permuter_config;
    const permuter = perm && typeof perm === 'object' ? String((perm as Record<string, unknown>).target ?? 'identity') : 'taming.modules.transformer.permuter.Identity';
    return {
      kind: 'transformer',
      model: {
        target,
        gpt,
        firstStage: fs1,
        cond,
        permuter,
        firstStageKey: typeof p.first_stage_key === 'string' ? p.first_stage_key : 'image',
        condStageKey: typeof p.cond_stage_key === 'string' ? p.cond_stage_key : 'image',
      },
    };
  }
  return { kind: 'first-stage', model: firstStage(r, model, 'model') };
}

export function readTamingConfig(file: string): TamingConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FormatError(file, code === 'ENOENT' ? 'config not found' : `cannot read (${code})`, 'pass the .yaml that belongs to the checkpoint');
  }
  return parseTamingConfig(text, file);
}
