// Loading CLIP weights: OpenAI's released TorchScript archives (ViT-B-32.pt etc.: fp16 weights, read as float32;
// the extra input_resolution / context_length / vocab_size entries are ignored), plain state-dict .pt files, and the
// Hugging Face `CLIPModel` layout (a folder with config.json + model.safetensors or pytorch_model.bin, whose keys are
// mapped onto OpenAI's names). Shapes are inferred from the weights as clip/model.py build_model does.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../cli/errors.ts';
import { resolveWeights } from '../formats/convert.ts';
import { FormatError, asFloat32, type HostTensor } from '../formats/host-tensor.ts';
import { LazyTensor } from '../formats/torch.ts';
import type { Ops } from '../engine/ops.ts';
import type { ClipConfig, ClipWeights, LayerNormW, LinearW, ResBlockW } from './clip.ts';
import { WeightMap, convToHWIO, linearToInOut, type TensorSource } from './weights.ts';

/** The CLIP used when none is named: ViT-B-32.pt in the weights folder. */
export const DEFAULT_CLIP_FILE = 'ViT-B-32.pt';

/**
 * The weights folders, in search order: $VQCLIP_WEIGHTS, ./weights, and the weights/ folder of this installation.
 */
export function weightFolders(): string[] {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const dirs = [process.env.VQCLIP_WEIGHTS, path.resolve('weights'), path.resolve(here, '../../weights')].filter((d): d is string => !!d);
  return [...new Set(dirs.map((d) => path.resolve(d)))];
}

/** weights/ViT-B-32.pt in the first weights folder that has it; else the path the error will name. */
export function defaultClipPath(): string {
  const dirs = weightFolders();
  const found = dirs.map((d) => path.join(d, DEFAULT_CLIP_FILE)).find((f) => fs.existsSync(f));
  return found ?? path.join(process.env.VQCLIP_WEIGHTS ? path.resolve(process.env.VQCLIP_WEIGHTS) : 'weights', DEFAULT_CLIP_FILE);
}

/** Where OpenAI publishes its ViT models (clip/clip.py _MODELS). */
export const CLIP_URLS: Record<string, string> = {
  'ViT-B-32.pt': 'https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt',
  'ViT-B-16.pt': 'https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt',
  'ViT-L-14.pt': 'https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt',
};

export interface LoadedClip<T> {
  config: ClipConfig;
  weights: ClipWeights<T>;
  /** the weights file that was read */
  file: string;
  format: 'openai' | 'huggingface';
}

/** The subset of a Hugging Face CLIPConfig (config.json) that shapes the model. */
interface HfClipConfig {
  text_config?: { hidden_act?: string; num_attention_heads?: number; layer_norm_eps?: number };
  vision_config?: { hidden_act?: string; num_attention_heads?: number; layer_norm_eps?: number };
}

function count(keys: string[], re: RegExp): number {
  const ids = new Set<string>();
  for (const k of keys) {
    const m = re.exec(k);
    if (m) ids.add(m[1]);
  }
  return ids.size;
}

/** build_model's shape inference (ViT models only), from weights keyed as OpenAI's state_dict names them. */
export function inferClipConfig(wm: WeightMap, overrides: Partial<Pick<ClipConfig, 'activation' | 'layerNormEps'>> & { visionHeads?: number; textHeads?: number } = {}): ClipConfig {
  const keys = wm.keys();
  if (!wm.has('visual.proj')) {
    if (wm.has('visual.attnpool.c_proj.weight') || wm.has('visual.layer1.0.conv1.weight')) {
      throw new FormatError(wm.file, 'is a ResNet CLIP (RN50/RN101/...), which is not supported', 'use a ViT model such as ViT-B-32.pt');
    }
    throw new FormatError(wm.file, 'holds no CLIP vision transformer (no "visual.proj" weight)', `use OpenAI's ViT-B-32.pt (${CLIP_URLS['ViT-B-32.pt']})`);
  }
  const [vWidth, , patch] = wm.shapeOf('visual.conv1.weight');
  const grid = Math.round(Math.sqrt(wm.shapeOf('visual.positional_embedding')[0] - 1));
  const tWidth = wm.shapeOf('ln_final.weight')[0];
  return {
    embedDim: wm.shapeOf('text_projection')[1],
    vision: {
      width: vWidth,
      layers: count(keys, /^visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$/),
      heads: overrides.visionHeads ?? vWidth / 64,
      patchSize: patch,
      gridSize: grid,
    },
    text: {
      width: tWidth,
      layers: count(keys, /^transformer\.resblocks\.(\d+)\./),
      heads: overrides.textHeads ?? tWidth / 64,
      contextLength: wm.shapeOf('positional_embedding')[0],
      vocabSize: wm.shapeOf('token_embedding.weight')[0],
    },
    activation: overrides.activation ?? 'quickGelu',
    layerNormEps: overrides.layerNormEps ?? 1e-5,
  };
}

/** Builds the weights record (tensors of `o`), checking every shape against the config. */
export function clipWeights<T>(o: Ops<T>, wm: WeightMap, cfg: ClipConfig): ClipWeights<T> {
  const t = (data: Float32Array, shape: number[]) => o.constant(data, shape);
  const plain = (key: string, shape: number[]) => t(wm.floats(key, shape), shape);
  const ln = (prefix: string, d: number): LayerNormW<T> => ({ gamma: plain(`${prefix}.weight`, [d]), beta: plain(`${prefix}.bias`, [d]) });
  const linear = (prefix: string, din: number, dout: number, wKey = 'weight', bKey = 'bias'): LinearW<T> => {
    const w = linearToInOut(wm.get(`${prefix}.${wKey}`, [dout, din]));
    return { w: t(w.data, w.shape), b: plain(`${prefix}.${bKey}`, [dout]) };
  };
  const blocks = (prefix: string, layers: number, d: number): ResBlockW<T>[] =>
    Array.from({ length: layers }, (_, i) => {
      const p = `${prefix}.resblocks.${i}`;
      return {
        ln1: ln(`${p}.ln_1`, d),
        inProj: linear(`${p}.attn`, d, 3 * d, 'in_proj_weight', 'in_proj_bias'),
        outProj: linear(`${p}.attn.out_proj`, d, d),
        ln2: ln(`${p}.ln_2`, d),
        fc: linear(`${p}.mlp.c_fc`, d, 4 * d),
        proj: linear(`${p}.mlp.c_proj`, 4 * d, d),
      };
    });
  const { vision: v, text: x, embedDim: e } = cfg;
  if (!Number.isInteger(v.heads) || !Number.isInteger(x.heads) || v.width % v.heads || x.width % x.heads) {
    throw new FormatError(wm.file, `widths ${v.width}/${x.width} do not split into ${v.heads}/${x.heads} attention heads`, 'not an OpenAI CLIP model');
  }
  const conv = convToHWIO(wm.get('visual.conv1.weight', [v.width, 3, v.patchSize, v.patchSize]));
  return {
    visual: {
      // HWIO [p, p, 3, width] is already the (y, x, channel) x width matrix the patch matmul wants
      patchEmbed: t(conv.data, [v.patchSize * v.patchSize * 3, v.width]),
      classEmbedding: plain('visual.class_embedding', [v.width]),
      positionalEmbedding: plain('visual.positional_embedding', [v.gridSize * v.gridSize + 1, v.width]),
      lnPre: ln('visual.ln_pre', v.width),
      blocks: blocks('visual.transformer', v.layers, v.width),
      lnPost: ln('visual.ln_post', v.width),
      proj: plain('visual.proj', [v.width, e]),
    },
    text: {
      tokenEmbedding: plain('token_embedding.weight', [x.vocabSize, x.width]),
      positionalEmbedding: plain('positional_embedding', [x.contextLength, x.width]),
      blocks: blocks('transformer', x.layers, x.width),
      lnFinal: ln('ln_final', x.width),
      projection: plain('text_projection', [x.width, e]),
    },
    logitScale: t(wm.floats('logit_scale', []), []),
  };
}

/** Every tensor of a weights record (to dispose it). */
export function clipWeightTensors<T>(w: ClipWeights<T>): T[] {
  const out: T[] = [];
  const visit = (v: unknown) => {
    if (v === null || v === undefined || typeof v !== 'object') return;
    if (Array.isArray(v)) v.forEach(visit);
    else if (Object.getPrototypeOf(v) === Object.prototype) Object.values(v).forEach(visit);
    else out.push(v as T);
  };
  visit(w);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Hugging Face CLIPModel -> OpenAI names.

function isHuggingFace(tensors: TensorSource): boolean {
  return tensors.has('vision_model.embeddings.patch_embedding.weight') || tensors.has('text_model.embeddings.token_embedding.weight');
}

function host(file: string, tensors: TensorSource, key: string): HostTensor {
  const t = tensors.get(key);
  if (!t) throw new FormatError(file, `weight "${key}" is missing`, 'not a complete Hugging Face CLIPModel checkpoint');
  return t instanceof LazyTensor ? t.read() : t;
}

function transposed(t: HostTensor): HostTensor {
  const r = linearToInOut(t); // [out, in] -> [in, out]
  return { dtype: 'float32', shape: r.shape, data: r.data };
}

/**
 * A Hugging Face CLIPModel state dict viewed under OpenAI's names: q/k/v projections packed into in_proj, the two
 * projections transposed (HF stores them as bias-free Linear [out, in]; OpenAI as [in, out] matrices).
 */
export function huggingFaceToOpenAI(file: string, tensors: TensorSource): TensorSource {
  const out: TensorSource = new Map();
  const copy = (from: string, to: string) => out.set(to, host(file, tensors, from));
  const layers = (hfPrefix: string, oaPrefix: string) => {
    const n = count([...tensors.keys()], new RegExp(`^${hfPrefix.replaceAll('.', '\\.')}\\.(\\d+)\\.`));
    for (let i = 0; i < n; i++) {
      const h = `${hfPrefix}.${i}`;
      const o = `${oaPrefix}.resblocks.${i}`;
      for (const kind of ['weight', 'bias']) {
        const parts = ['q_proj', 'k_proj', 'v_proj'].map((p) => asFloat32(host(file, tensors, `${h}.self_attn.${p}.${kind}`)));
        const first = host(file, tensors, `${h}.self_attn.q_proj.${kind}`);
        const data = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
        let off = 0;
        for (const p of parts) {
          data.set(p, off);
          off += p.length;
        }
        out.set(`${o}.attn.in_proj_${kind}`, { dtype: 'float32', shape: [3 * first.shape[0], ...first.shape.slice(1)], data });
        copy(`${h}.self_attn.out_proj.${kind}`, `${o}.attn.out_proj.${kind}`);
        copy(`${h}.layer_norm1.${kind}`, `${o}.ln_1.${kind}`);
        copy(`${h}.layer_norm2.${kind}`, `${o}.ln_2.${kind}`);
        copy(`${h}.mlp.fc1.${kind}`, `${o}.mlp.c_fc.${kind}`);
        copy(`${h}.mlp.fc2.${kind}`, `${o}.mlp.c_proj.${kind}`);
      }
    }
  };
  copy('vision_model.embeddings.patch_embedding.weight', 'visual.conv1.weight');
  copy('vision_model.embeddings.class_embedding', 'visual.class_embedding');
  copy('vision_model.embeddings.position_embedding.weight', 'visual.positional_embedding');
  for (const kind of ['weight', 'bias']) {
    copy(`vision_model.pre_layrnorm.${kind}`, `visual.ln_pre.${kind}`); // sic: HF's spelling
    copy(`vision_model.post_layernorm.${kind}`, `visual.ln_post.${kind}`);
    copy(`text_model.final_layer_norm.${kind}`, `ln_final.${kind}`);
  }
  layers('vision_model.encoder.layers', 'visual.transformer');
  out.set('visual.proj', transposed(host(file, tensors, 'visual_projection.weight')));
  copy('text_model.embeddings.token_embedding.weight', 'token_embedding.weight');
  copy('text_model.embeddings.position_embedding.weight', 'positional_embedding');
  layers('text_model.encoder.layers', 'transformer');
  out.set('text_projection', transposed(host(file, tensors, 'text_projection.weight')));
  copy('logit_scale', 'logit_scale');
  return out;
}

function activationOf(file: string, act: string | undefined): 'quickGelu' | 'gelu' {
  if (act === undefined || act === 'quick_gelu') return 'quickGelu';
  if (act === 'gelu') return 'gelu';
  throw new FormatError(file, `hidden_act "${act}" is not supported`, 'expected quick_gelu (OpenAI models) or gelu');
}

function readHfConfig(file: string): { hf: HfClipConfig; overrides: Parameters<typeof inferClipConfig>[1] } {
  let hf: HfClipConfig;
  try {
    hf = JSON.parse(fs.readFileSync(file, 'utf8')) as HfClipConfig;
  } catch (err) {
    throw new FormatError(file, `is not valid JSON (${(err as Error).message})`);
  }
  const tAct = activationOf(file, hf.text_config?.hidden_act);
  const vAct = activationOf(file, hf.vision_config?.hidden_act);
  if (tAct !== vAct) throw new FormatError(file, 'text and vision towers use different activations', 'not supported');
  const eps = hf.text_config?.layer_norm_eps ?? hf.vision_config?.layer_norm_eps;
  return {
    hf,
    overrides: {
      activation: tAct,
      layerNormEps: eps,
      textHeads: hf.text_config?.num_attention_heads,
      visionHeads: hf.vision_config?.num_attention_heads,
    },
  };
}

/** The weights file of a model path: a file as is, or a Hugging Face folder's model.safetensors / pytorch_model.bin. */
export function resolveClipFile(p: string): { file: string; hfConfig?: string } {
  if (!fs.existsSync(p)) {
    const url = CLIP_URLS[path.basename(p)];
    throw new UserError(
      `CLIP weights not found: ${p}`,
      url ? `download ${url} to ${p}` : `pass --clip with OpenAI's ViT-B-32.pt (${CLIP_URLS['ViT-B-32.pt']}) or a Hugging Face CLIP folder`,
    );
  }
  if (!fs.statSync(p).isDirectory()) {
    const cfg = path.join(path.dirname(p), 'config.json');
    return { file: p, hfConfig: fs.existsSync(cfg) ? cfg : undefined };
  }
  for (const name of ['model.safetensors', 'pytorch_model.bin']) {
    const f = path.join(p, name);
    if (fs.existsSync(f)) {
      const cfg = path.join(p, 'config.json');
      return { file: f, hfConfig: fs.existsSync(cfg) ? cfg : undefined };
    }
  }
  throw new UserError(`${p} holds no model.safetensors or pytorch_model.bin`, 'pass the CLIP weights file itself, or a Hugging Face CLIP folder');
}

/**
 * Loads a CLIP ViT model (file or Hugging Face folder) as tensors of `o`; dispose them with clipWeightTensors.
 * An up-to-date converted X.safetensors beside X.pt (`vqclip weights convert`) is read instead of the archive.
 */
export async function loadClip<T>(o: Ops<T>, modelPath: string): Promise<LoadedClip<T>> {
  const { file: named, hfConfig } = resolveClipFile(modelPath);
  const sd = await resolveWeights(named);
  const file = sd.file;
  try {
    if (isHuggingFace(sd.tensors)) {
      const overrides = hfConfig ? readHfConfig(hfConfig).overrides : {};
      const wm = new WeightMap(file, huggingFaceToOpenAI(file, sd.tensors));
      const config = inferClipConfig(wm, overrides);
      return { config, weights: clipWeights(o, wm, config), file, format: 'huggingface' };
    }
    const wm = new WeightMap(file, sd.tensors);
    const config = inferClipConfig(wm);
    return { config, weights: clipWeights(o, wm, config), file, format: 'openai' };
  } finally {
    sd.close();
  }
}
