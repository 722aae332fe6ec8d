// OpenAI CLIP, ViT variants (openai/CLIP clip/model.py): image and text encoders, the similarity logits, and the
// spherical distance loss of nerdyrodent/VQGAN-CLIP's Prompt, as pure functions of (ops, weights, config, inputs).
//
// Math this must match (fixtures/MANIFEST.md section 3): LayerNorm eps 1e-5 (CLIP computes it in float32; so do we);
// QuickGELU x*sigmoid(1.702x); nn.MultiheadAttention with a packed in_proj (q, k, v rows), heads = width / 64;
// residual blocks x + attn(ln_1(x)), x + mlp(ln_2(x)); the text transformer has a causal mask, the vision one none.
// Vision: conv1 (patch x patch, stride patch, no bias) -> prepend class_embedding -> + positional_embedding ->
// ln_pre -> transformer -> ln_post(class token) @ proj. Text: token_embedding + positional_embedding -> transformer ->
// ln_final -> the row at the end-of-text token (argmax of the ids: <|endoftext|> is the largest id) @ text_projection.
// Neither output is normalized.
//
// Layouts: images NHWC; sequences [batch, tokens, width] (PyTorch's transformer runs LND inside, which only changes
// the order taps see: the tap of a resblock is [batch, tokens, width] here, [tokens, batch, width] in PyTorch).
import type { Ops } from '../engine/ops.ts';

export interface ClipVisionConfig {
  width: number;
  layers: number;
  heads: number;
  patchSize: number;
  /** patches per side; the input image is gridSize * patchSize pixels square */
  gridSize: number;
}

export interface ClipTextConfig {
  width: number;
  layers: number;
  heads: number;
  contextLength: number;
  vocabSize: number;
}

export interface ClipConfig {
  embedDim: number;
  vision: ClipVisionConfig;
  text: ClipTextConfig;
  /** OpenAI's models use QuickGELU; Hugging Face configs may say 'gelu' (exact). */
  activation: 'quickGelu' | 'gelu';
  layerNormEps: number;
}

export function inputResolution(cfg: ClipConfig): number {
  return cfg.vision.gridSize * cfg.vision.patchSize;
}

export interface LayerNormW<T> {
  gamma: T;
  beta: T;
}
export interface LinearW<T> {
  /** [in, out] */
  w: T;
  b: T;
}
export interface ResBlockW<T> {
  ln1: LayerNormW<T>;
  /** packed q, k, v: w [width, 3 * width], b [3 * width] */
  inProj: LinearW<T>;
  outProj: LinearW<T>;
  ln2: LayerNormW<T>;
  fc: LinearW<T>;
  proj: LinearW<T>;
}
export interface ClipVisionW<T> {
  /** the patch conv as a matmul: [patch * patch * 3, width], rows in (y, x, channel) order */
  patchEmbed: T;
  classEmbedding: T; // [width]
  positionalEmbedding: T; // [grid^2 + 1, width]
  lnPre: LayerNormW<T>;
  blocks: ResBlockW<T>[];
  lnPost: LayerNormW<T>;
  proj: T; // [width, embedDim]
}
export interface ClipTextW<T> {
  tokenEmbedding: T; // [vocab, width]
  positionalEmbedding: T; // [context, width]
  blocks: ResBlockW<T>[];
  lnFinal: LayerNormW<T>;
  projection: T; // [width, embedDim]
}
export interface ClipWeights<T> {
  visual: ClipVisionW<T>;
  text: ClipTextW<T>;
  /** 0-d: log of the logit scale */
  logitScale: T;
}

/** Records intermediates, keyed as in clip_intermediates.safetensors ('image.visual.ln_pre', 'text.ln_final', ...). */
export type ClipTaps<T> = (name: string, value: T) => void;

/** The normalisation constants of CLIP's preprocessing (clip/clip.py _transform). */
export const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD = [0.26862954, 0.26130258, 0.27577711];

function layerNorm<T>(o: Ops<T>, cfg: ClipConfig, n: LayerNormW<T>, x: T): T {
  return o.layerNorm(x, n.gamma, n.beta, cfg.layerNormEps);
}

/** nn.MultiheadAttention(x, x, x) on [B, L, D] with the packed in_proj. */
function attention<T>(o: Ops<T>, blk: ResBlockW<T>, heads: number, x: T, causal: boolean): T {
  const [b, l, d] = o.shape(x);
  const hd = d / heads;
  const qkv = o.linear(x, blk.inProj.w, blk.inProj.b); // [B, L, 3D]
  // [3, B*L, D] in one transpose (on the compiled engine, the linear's store), so that q, k, v are contiguous parts
  // of it: the compiled engine reads them in place instead of copying three strided slices (ranks stay <= 4: tfjs's
  // webgpu backend got the gradient of a rank-5 slice wrong).
  const qkv3 = o.transpose(o.reshape(qkv, [b * l, 3, d]), [1, 0, 2]);
  const split = (i: number) => o.transpose(o.reshape(o.slice(qkv3, [i, 0, 0], [1, b * l, d]), [b, l, heads, hd]), [0, 2, 1, 3]);
  const y = o.attention(split(0), split(1), split(2), { scale: 1 / Math.sqrt(hd), causal });
  return o.linear(o.reshape(o.transpose(y, [0, 2, 1, 3]), [b, l, d]), blk.outProj.w, blk.outProj.b);
}

function residualBlock<T>(o: Ops<T>, cfg: ClipConfig, blk: ResBlockW<T>, heads: number, x: T, causal: boolean): T {
  x = o.add(x, attention(o, blk, heads, layerNorm(o, cfg, blk.ln1, x), causal));
  const h = o.linear(layerNorm(o, cfg, blk.ln2, x), blk.fc.w, blk.fc.b);
  const act = cfg.activation === 'gelu' ? o.gelu(h) : o.quickGelu(h);
  return o.add(x, o.linear(act, blk.proj.w, blk.proj.b));
}

/**
 * The residual blocks, each checkpointed where the executor can (o.checkpoint): under a gradient the tape then holds
 * one [B, L, D] tensor per block instead of every intermediate, and tfjs, which frees no gradient tensor before its
 * backward pass ends, keeps one block's gradients at a time. With 8-32 cutouts that is most of a step's memory
 * (128 px, 8 cutouts: ~0.8 GB of CLIP tensors at the peak); the price is one more forward of each block.
 */
function transformer<T>(o: Ops<T>, cfg: ClipConfig, blocks: ResBlockW<T>[], heads: number, x: T, causal: boolean, tap: ClipTaps<T> | undefined, prefix: string): T {
  blocks.forEach((blk, i) => {
    const fn = (t: T) => residualBlock(o, cfg, blk, heads, t, causal);
    x = o.checkpoint ? o.checkpoint(fn, x) : fn(x);
    tap?.(`${prefix}.resblocks.${i}`, x);
  });
  return x;
}

/**
 * CLIP.encode_image: NHWC images [B, R, R, 3], already normalized with CLIP_MEAN/CLIP_STD (see encodeImagePixels),
 * R = the model's input resolution -> [B, embedDim] (not normalized).
 */
export function encodeImage<T>(o: Ops<T>, w: ClipWeights<T>, cfg: ClipConfig, x: T, tap?: ClipTaps<T>): T {
  const { patchSize: p, gridSize: g, width } = cfg.vision;
  const [b, h, wd, c] = o.shape(x);
  if (h !== g * p || wd !== g * p || c !== 3) {
    throw new Error(`encodeImage: expected images [B, ${g * p}, ${g * p}, 3], got [${o.shape(x)}]`);
  }
  // The stride-p conv as one matmul over non-overlapping patches (rank-4 reshapes only: every backend has them, with
  // gradients, and a matmul's input gradient is far cheaper than a strided conv's).
  const rows = o.reshape(x, [b * g, p, g, p * c]); // (b, gy) | py | gx | (px, c)
  const patches = o.reshape(o.transpose(rows, [0, 2, 1, 3]), [b * g * g, p * p * c]);
  let t = o.reshape(o.matmul(patches, w.visual.patchEmbed), [b, g * g, width]);
  tap?.('image.visual.conv1', o.reshape(t, [b, g, g, width]));
  const cls = o.add(o.zeros([b, 1, width]), o.reshape(w.visual.classEmbedding, [1, 1, width]));
  t = o.add(o.concat([cls, t], 1), o.reshape(w.visual.positionalEmbedding, [1, g * g + 1, width]));
  t = layerNorm(o, cfg, w.visual.lnPre, t);
  tap?.('image.visual.ln_pre', t);
  t = transformer(o, cfg, w.visual.blocks, cfg.vision.heads, t, false, tap, 'image.visual.transformer');
  const pooled = layerNorm(o, cfg, w.visual.lnPost, o.reshape(o.slice(t, [0, 0, 0], [b, 1, width]), [b, width]));
  tap?.('image.visual.ln_post', pooled);
  return o.matmul(pooled, w.visual.proj);
}

/** torchvision Normalize with CLIP's constants, on NHWC pixels in [0, 1] (differentiable). */
export function normalizePixels<T>(o: Ops<T>, x: T): T {
  const mean = o.constant(Float32Array.from(CLIP_MEAN), [1, 1, 1, 3]);
  const std = o.constant(Float32Array.from(CLIP_STD), [1, 1, 1, 3]);
  return o.div(o.sub(x, mean), std);
}

/** The optimizer's path: NHWC pixels in [0, 1] -> normalize -> encode_image. */
export function encodeImagePixels<T>(o: Ops<T>, w: ClipWeights<T>, cfg: ClipConfig, pixels: T, tap?: ClipTaps<T>): T {
  return encodeImage(o, w, cfg, normalizePixels(o, pixels), tap);
}

/** Where each row's <|endoftext|> is: the first position of its largest id (torch's argmax on these rows). */
export function endOfTextPositions(ids: Int32Array, [n, ctx]: [number, number]): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < ctx; j++) if (ids[i * ctx + j] > ids[i * ctx + best]) best = j;
    out.push(best);
  }
  return out;
}

/** CLIP.encode_text: token ids [n, context] (from ClipTokenizer.tokenize) -> [n, embedDim] (not normalized). */
export function encodeText<T>(o: Ops<T>, w: ClipWeights<T>, cfg: ClipConfig, tokens: { ids: Int32Array; shape: [number, number] }, tap?: ClipTaps<T>): T {
  const [n, ctx] = tokens.shape;
  const { width, contextLength, vocabSize } = cfg.text;
  if (ctx !== contextLength) throw new Error(`encodeText: the model reads ${contextLength} tokens per text, got ${ctx}`);
  const bad = tokens.ids.findIndex((id) => id < 0 || id >= vocabSize);
  if (bad >= 0) throw new Error(`encodeText: token id ${tokens.ids[bad]} is outside the vocabulary of ${vocabSize}`);
  const emb = o.gatherRows(w.text.tokenEmbedding, o.constantInt(tokens.ids, [n * ctx]));
  let x = o.add(o.reshape(emb, [n, ctx, width]), o.reshape(w.text.positionalEmbedding, [1, ctx, width]));
  x = transformer(o, cfg, w.text.blocks, cfg.text.heads, x, true, tap, 'text.transformer');
  x = layerNorm(o, cfg, w.text.lnFinal, x);
  tap?.('text.ln_final', x);
  const rows = endOfTextPositions(tokens.ids, tokens.shape).map((pos, i) => i * ctx + pos);
  const pooled = o.gatherRows(o.reshape(x, [n * ctx, width]), o.constantInt(Int32Array.from(rows), [n]));
  return o.matmul(pooled, w.text.projection);
}

/** F.normalize(x, dim=-1) on [N, D]: x / max(|x|, 1e-12). */
export function l2normalize<T>(o: Ops<T>, x: T): T {
  const norm = o.sqrt(o.sum(o.square(x), [1], true));
  return o.div(x, o.maximum(norm, o.constant(new Float32Array([1e-12]), [1, 1])));
}

/**
 * CLIP.forward's logits: exp(logit_scale) * cos-sim, [N images, M texts] (logits_per_text is its transpose).
 * Cosine similarity x 100 is the usual "CLIP score"; logit_scale is ln(100) in the released models.
 */
export function clipLogits<T>(o: Ops<T>, w: ClipWeights<T>, imageEmbeds: T, textEmbeds: T): T {
  const cos = o.matmul(l2normalize(o, imageEmbeds), l2normalize(o, textEmbeds), false, true);
  return o.mul(cos, o.exp(w.logitScale));
}

/** Cosine similarities [N, M] of two sets of embeddings. */
export function cosineSimilarity<T>(o: Ops<T>, a: T, b: T): T {
  return o.matmul(l2normalize(o, a), l2normalize(o, b), false, true);
}

/**
 * The spherical distance of nerdyrodent's Prompt: for unit a, b: 2 * asin(|a - b| / 2)^2 (= angle^2 / 2), with
 * F.normalize semantics, [N image embeds, M text embeds]. The |a - b| norm carries a 1e-30 floor under the sqrt so
 * that identical vectors get a zero gradient (PyTorch's norm backward does that) instead of NaN; values are unchanged.
 */
export function sphericalDistance<T>(o: Ops<T>, imageEmbeds: T, textEmbeds: T): T {
  const [n, d] = o.shape(imageEmbeds);
  const m = o.shape(textEmbeds)[0];
  const a = o.reshape(l2normalize(o, imageEmbeds), [n, 1, d]);
  const b = o.reshape(l2normalize(o, textEmbeds), [1, m, d]);
  const dist = o.sqrt(o.addScalar(o.sum(o.square(o.sub(a, b)), [2]), 1e-30));
  return o.scale(o.square(asinUnit(o, o.scale(dist, 0.5))), 2);
}

/**
 * asin on [0, 1] from +, *, sqrt (Cephes' asinf: relative error ~2.5e-7 in float32). WGSL lets asin be off by 4096
 * ULP, and tfjs-webgpu's measured 3.5e-4 on Dawn/llvmpipe - 500x the loss tolerance - so the loss does not use it.
 * Above 0.5 the argument is reduced with asin(x) = pi/2 - 2 asin(sqrt((1 - x) / 2)); the branch is a 0/1 mask
 * (gradient zero). Its threshold sits 2^-30 above 0.5, between float32 neighbours, so sign() never sees 0 (a 0.5
 * mask would blend the two reduced arguments and break the gradient there).
 */
export function asinUnit<T>(o: Ops<T>, x: T): T {
  const hi = o.scale(o.addScalar(o.sign(o.addScalar(o.addScalar(x, -0.5), -(2 ** -30))), 1), 0.5); // 1 where x > 0.5
  const lo = o.addScalar(o.neg(hi), 1);
  const s = o.add(o.mul(lo, x), o.mul(hi, o.sqrt(o.scale(o.addScalar(o.neg(x), 1), 0.5))));
  const z = o.square(s);
  let poly = o.addScalar(o.scale(z, 4.2163199048e-2), 2.4181311049e-2);
  for (const c of [4.5470025998e-2, 7.4953002686e-2, 1.6666752422e-1]) poly = o.addScalar(o.mul(poly, z), c);
  const r = o.add(o.mul(o.mul(poly, z), s), s); // asin(s)
  return o.add(o.mul(lo, r), o.mul(hi, o.addScalar(o.scale(r, -2), Math.PI / 2)));
}
