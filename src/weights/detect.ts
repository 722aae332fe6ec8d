// What model a state dict holds, from its key names and shapes alone (no config needed): taming VQGAN / GumbelVQ
// first stages, Net2Net transformers (GPT prior + first stage), OpenAI CLIP (ViT or ResNet, OpenAI or Hugging Face
// key layout). Used by `vqclip weights inspect` and by conversion to write the right config next to the weights.

export type ModelFamily = 'vqgan' | 'gumbel' | 'transformer' | 'gpt' | 'clip' | 'clip-resnet' | 'clip-hf' | 'unknown';

export interface ModelKind {
  family: ModelFamily;
  /** Short identifier, e.g. `vqgan_f16_16384`, `clip_vit_b_32`. */
  id: string;
  /** Human-readable, e.g. `VQGAN f16, 16384 codes x 256 (layout of vqgan_imagenet_f16_16384)`. */
  label: string;
  details: Record<string, number | string | boolean>;
}

/** The constructor arguments of clip.model.CLIP, as clip.model.build_model derives them from a state dict. */
export interface ClipConfig {
  embed_dim: number;
  image_resolution: number;
  vision_layers: number;
  vision_width: number;
  vision_patch_size: number;
  context_length: number;
  vocab_size: number;
  transformer_width: number;
  transformer_heads: number;
  transformer_layers: number;
}

type Shapes = Map<string, readonly number[]>;

function countIndexed(shapes: Shapes, prefix: string): number {
  const seen = new Set<string>();
  for (const k of shapes.keys()) {
    if (!k.startsWith(prefix)) continue;
    const i = k.slice(prefix.length).split('.')[0];
    if (/^\d+$/.test(i)) seen.add(i);
  }
  return seen.size;
}

/** build_model's derivation (ViT checkpoints): the config that rebuilds the model from these tensors. */
export function clipConfigFromShapes(shapes: Shapes, prefix = ''): ClipConfig | undefined {
  const get = (k: string) => shapes.get(prefix + k);
  const conv1 = get('visual.conv1.weight');
  const pos = get('visual.positional_embedding');
  const proj = get('text_projection');
  const ctx = get('positional_embedding');
  const tok = get('token_embedding.weight');
  const lnf = get('ln_final.weight');
  if (!conv1 || !pos || !proj || !ctx || !tok || !lnf || !get('visual.proj')) return undefined;
  let visionLayers = 0;
  for (const k of shapes.keys()) if (k.startsWith(`${prefix}visual.`) && k.endsWith('.attn.in_proj_weight')) visionLayers++;
  const grid = Math.round(Math.sqrt(pos[0] - 1));
  const textLayers = new Set<string>();
  for (const k of shapes.keys()) if (k.startsWith(`${prefix}transformer.resblocks`)) textLayers.add(k.slice(prefix.length).split('.')[2]);
  return {
    embed_dim: proj[1],
    image_resolution: conv1[conv1.length - 1] * grid,
    vision_layers: visionLayers,
    vision_width: conv1[0],
    vision_patch_size: conv1[conv1.length - 1],
    context_length: ctx[0],
    vocab_size: tok[0],
    transformer_width: lnf[0],
    transformer_heads: Math.floor(lnf[0] / 64),
    transformer_layers: textLayers.size,
  };
}

/** OpenAI's released ViT CLIP models, by the shape of their weights. */
const CLIP_RELEASES: { name: string; width: number; patch: number; layers: number; resolution: number }[] = [
  { name: 'ViT-B/32', width: 768, patch: 32, layers: 12, resolution: 224 },
  { name: 'ViT-B/16', width: 768, patch: 16, layers: 12, resolution: 224 },
  { name: 'ViT-L/14', width: 1024, patch: 14, layers: 24, resolution: 224 },
  { name: 'ViT-L/14@336px', width: 1024, patch: 14, layers: 24, resolution: 336 },
];

function clipReleaseName(c: ClipConfig): string | undefined {
  return CLIP_RELEASES.find((r) => r.width === c.vision_width && r.patch === c.vision_patch_size && r.layers === c.vision_layers && r.resolution === c.image_resolution)?.name;
}

function firstStage(shapes: Shapes, prefix: string): ModelKind | undefined {
  const conv = shapes.get(`${prefix}encoder.conv_in.weight`) ?? shapes.get(`${prefix}decoder.conv_in.weight`);
  if (!conv) return undefined;
  const levels = countIndexed(shapes, `${prefix}encoder.down.`) || countIndexed(shapes, `${prefix}decoder.up.`);
  const f = 2 ** Math.max(0, levels - 1);
  const ch = shapes.get(`${prefix}encoder.conv_in.weight`)?.[0] ?? 0;
  const vq = shapes.get(`${prefix}quantize.embedding.weight`);
  const gumbel = shapes.get(`${prefix}quantize.embed.weight`);
  const proj = shapes.get(`${prefix}quantize.proj.weight`);
  if (vq) {
    const [nEmbed, embedDim] = vq;
    const release =
      f === 16 && ch === 128 && embedDim === 256 && (nEmbed === 1024 || nEmbed === 16384) ? `vqgan_imagenet_f16_${nEmbed}` : undefined;
    return {
      family: 'vqgan',
      id: `vqgan_f${f}_${nEmbed}`,
      label: `VQGAN f${f}, ${nEmbed} codes x ${embedDim}${release ? ` (layout of ${release})` : ''}`,
      details: { downsampling: f, n_embed: nEmbed, embed_dim: embedDim, ch, levels },
    };
  }
  if (gumbel && proj) {
    const [nEmbed, embedDim] = gumbel;
    const release = f === 8 && nEmbed === 8192 ? 'vqgan_gumbel_f8' : undefined;
    return {
      family: 'gumbel',
      id: `gumbel_f${f}_${nEmbed}`,
      label: `Gumbel VQGAN f${f}, ${nEmbed} codes x ${embedDim}${release ? ` (layout of ${release})` : ''}`,
      details: { downsampling: f, n_embed: nEmbed, embed_dim: embedDim, ch, levels },
    };
  }
  return undefined;
}

function gpt(shapes: Shapes, prefix: string): Record<string, number> | undefined {
  const tok = shapes.get(`${prefix}tok_emb.weight`);
  const pos = shapes.get(`${prefix}pos_emb`);
  if (!tok || !pos) return undefined;
  return { vocab_size: tok[0], n_embd: tok[1], block_size: pos[1], n_layer: countIndexed(shapes, `${prefix}blocks.`) };
}

export function detectModelKind(shapes: Shapes): ModelKind {
  const fs = firstStage(shapes, '');
  if (fs) return fs;
  const g = gpt(shapes, 'transformer.');
  if (g) {
    const stage = firstStage(shapes, 'first_stage_model.');
    const cond = [...shapes.keys()].some((k) => k.startsWith('cond_stage_model.'));
    return {
      family: 'transformer',
      id: `transformer_${g.n_layer}x${g.n_embd}_v${g.vocab_size}`,
      label:
        `Net2Net transformer: GPT ${g.n_layer} layers x ${g.n_embd}, vocab ${g.vocab_size}, block ${g.block_size}` +
        `${stage ? ` + ${stage.label}` : ' (no first stage weights)'}${cond ? ' + learned cond stage' : ' (SOS or class-label conditioning: see its config)'}`,
      details: { ...g, first_stage: stage?.id ?? 'none', cond_stage_weights: cond },
    };
  }
  const bare = gpt(shapes, '');
  if (bare) return { family: 'gpt', id: `gpt_${bare.n_layer}x${bare.n_embd}_v${bare.vocab_size}`, label: `GPT ${bare.n_layer} layers x ${bare.n_embd}, vocab ${bare.vocab_size}`, details: bare };
  const clip = clipConfigFromShapes(shapes);
  if (clip) {
    const release = clipReleaseName(clip);
    return {
      family: 'clip',
      id: release ? `clip_${release.toLowerCase().replace(/[^a-z0-9]+/g, '_')}` : `clip_vit_w${clip.vision_width}_p${clip.vision_patch_size}_l${clip.vision_layers}`,
      label: release
        ? `CLIP ${release}`
        : `CLIP ViT (custom: width ${clip.vision_width}, patch ${clip.vision_patch_size}, ${clip.vision_layers} vision / ${clip.transformer_layers} text layers, embed ${clip.embed_dim})`,
      details: { ...clip },
    };
  }
  if (shapes.has('visual.layer1.0.conv1.weight') && shapes.has('text_projection')) {
    return { family: 'clip-resnet', id: 'clip_resnet', label: 'CLIP ResNet (RN50 family; not supported by this app: use a ViT model)', details: {} };
  }
  const hfPatch = shapes.get('vision_model.embeddings.patch_embedding.weight');
  if (hfPatch && shapes.has('text_model.embeddings.token_embedding.weight')) {
    const layers = countIndexed(shapes, 'vision_model.encoder.layers.');
    const pos = shapes.get('vision_model.embeddings.position_embedding.weight');
    const resolution = pos ? hfPatch[3] * Math.round(Math.sqrt(pos[0] - 1)) : 0;
    const release = CLIP_RELEASES.find((r) => r.width === hfPatch[0] && r.patch === hfPatch[3] && r.layers === layers && r.resolution === resolution)?.name;
    return {
      family: 'clip-hf',
      id: release ? `clip_${release.toLowerCase().replace(/[^a-z0-9]+/g, '_')}_hf` : 'clip_vit_hf',
      label: `CLIP ${release ?? 'ViT'} (Hugging Face layout)`,
      details: { vision_width: hfPatch[0], vision_patch_size: hfPatch[3], vision_layers: layers, image_resolution: resolution },
    };
  }
  return { family: 'unknown', id: 'unknown', label: 'unrecognised model (not a taming VQGAN/transformer or CLIP state dict)', details: {} };
}
