// The taming-transformers first stage (VQModel / GumbelVQ): Encoder, quant_conv, quantizer, post_quant_conv,
// Decoder, written as pure functions of (ops, weights, config, inputs) against the op vocabulary (NHWC).
// Upstream: taming/modules/diffusionmodules/model.py, taming/modules/vqvae/quantize.py, taming/models/vqgan.py.
//
// Architecture facts this must match (fixtures/MANIFEST.md section 1): GroupNorm(32, eps 1e-6); swish; no timestep
// embedding; Downsample = zero pad (right, bottom) by 1 + 3x3 stride-2 conv; Upsample = nearest x2 + 3x3 conv;
// attention wherever the NOMINAL resolution (config `resolution` halved per level) is in attn_resolutions, whatever
// the actual input size; Decoder levels have num_res_blocks+1 blocks; the decoder's `up` ModuleList is stored with
// up.0 = highest resolution but runs from the last index down.
import { FormatError, asFloat32, type HostTensor } from '../formats/host-tensor.ts';
import type { DDConfig, FirstStageConfig } from '../formats/taming-config.ts';
import type { Ops } from '../engine/ops.ts';
import { WeightMap, convToHWIO } from './weights.ts';

export type VqganConfig = FirstStageConfig;

/** Records intermediate outputs, keyed by the PyTorch state_dict prefix of the module that produced them. */
export type Taps<T> = (name: string, value: T) => void;

export interface Conv<T> {
  w: T; // HWIO
  b: T;
}
export interface Norm<T> {
  gamma: T;
  beta: T;
}
export interface ResBlock<T> {
  norm1: Norm<T>;
  conv1: Conv<T>;
  norm2: Norm<T>;
  conv2: Conv<T>;
  /** 1x1 shortcut, present when the block changes the channel count. */
  ninShortcut?: Conv<T>;
}
export interface AttnBlock<T> {
  norm: Norm<T>;
  q: Conv<T>;
  k: Conv<T>;
  v: Conv<T>;
  projOut: Conv<T>;
}
export interface Level<T> {
  block: ResBlock<T>[];
  /** Empty, or one attention block per res block. */
  attn: AttnBlock<T>[];
  /** Downsample (encoder) / Upsample (decoder) conv; absent on the last encoder / first decoder level. */
  resample?: Conv<T>;
}
export interface Mid<T> {
  block1: ResBlock<T>;
  attn1: AttnBlock<T>;
  block2: ResBlock<T>;
}
export interface EncoderWeights<T> {
  convIn: Conv<T>;
  down: Level<T>[];
  mid: Mid<T>;
  normOut: Norm<T>;
  convOut: Conv<T>;
}
export interface DecoderWeights<T> {
  convIn: Conv<T>;
  mid: Mid<T>;
  /** Indexed like the state dict: up[0] is the highest resolution (runs last). */
  up: Level<T>[];
  normOut: Norm<T>;
  convOut: Conv<T>;
}
export type QuantizerWeights<T> =
  | { kind: 'vq'; beta: number; embedding: T }
  | { kind: 'gumbel'; klWeight: number; nEmbed: number; proj: Conv<T>; embed: T };

export interface VqganWeights<T> {
  /** Absent when loaded with `{ encoder: false }` (decode-only use, e.g. VQGAN+CLIP). */
  encoder?: EncoderWeights<T>;
  quantConv?: Conv<T>;
  quantize: QuantizerWeights<T>;
  postQuantConv: Conv<T>;
  decoder: DecoderWeights<T>;
  /** [nEmbed, embedDim]: quantize.embedding.weight (VQ) or quantize.embed.weight (Gumbel). */
  codebook: T;
  /** Per-channel min / max of the codebook over all codes, [embedDim] (generate.py clamps z to this range). */
  zMin: T;
  zMax: T;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward functions.

const GN_GROUPS = 32;
const GN_EPS = 1e-6;

function conv<T>(o: Ops<T>, c: Conv<T>, x: T, stride = 1): T {
  // Stride 1: PyTorch's padding k//2 for odd k is 'same'. Stride 2 (Downsample) is padded by the caller.
  return o.conv2d(x, c.w, c.b, stride === 1 ? { pad: 'same' } : { stride, pad: 'valid' });
}

function norm<T>(o: Ops<T>, n: Norm<T>, x: T): T {
  return o.groupNorm(x, GN_GROUPS, n.gamma, n.beta, GN_EPS);
}

function resBlock<T>(o: Ops<T>, w: ResBlock<T>, x: T): T {
  let h = conv(o, w.conv1, o.swish(norm(o, w.norm1, x)));
  // Dropout is the identity in eval mode.
  h = conv(o, w.conv2, o.swish(norm(o, w.norm2, h)));
  const skip = w.ninShortcut ? conv(o, w.ninShortcut, x) : x;
  return o.add(skip, h);
}

function attnBlock<T>(o: Ops<T>, w: AttnBlock<T>, x: T): T {
  const [b, hh, ww, c] = o.shape(x);
  const h = norm(o, w.norm, x);
  // One head over all H*W positions, scale c^-0.5, softmax over keys (taming AttnBlock's bmm formulation).
  const seq = (t: T) => o.reshape(t, [b, 1, hh * ww, c]);
  const a = o.attention(seq(conv(o, w.q, h)), seq(conv(o, w.k, h)), seq(conv(o, w.v, h)), { scale: c ** -0.5 });
  return o.add(x, conv(o, w.projOut, o.reshape(a, [b, hh, ww, c])));
}

/**
 * Runs one block so that its intermediates are freed right away and, under a gradient, recomputed in the backward
 * pass (o.checkpoint): the tape then holds only the tensors between blocks. Without it a 256 px decode+gradient
 * holds ~12 GB of intermediates, three times the wasm heap.
 */
function block<T>(o: Ops<T>, fn: (x: T) => T, x: T): T {
  return o.checkpoint ? o.checkpoint(fn, x) : fn(x);
}

function mid<T>(o: Ops<T>, w: Mid<T>, x: T, prefix: string, tap?: Taps<T>): T {
  let h = block(o, (t) => resBlock(o, w.block1, t), x);
  tap?.(`${prefix}.mid.block_1`, h);
  h = block(o, (t) => attnBlock(o, w.attn1, t), h);
  tap?.(`${prefix}.mid.attn_1`, h);
  h = block(o, (t) => resBlock(o, w.block2, t), h);
  tap?.(`${prefix}.mid.block_2`, h);
  return h;
}

/** norm_out -> swish -> conv_out, with the norm's output tapped. */
function head<T>(o: Ops<T>, normOut: Norm<T>, convOut: Conv<T>, x: T, prefix: string, tap?: Taps<T>): T {
  let h = block(o, (t) => norm(o, normOut, t), x);
  tap?.(`${prefix}.norm_out`, h);
  h = block(o, (t) => conv(o, convOut, o.swish(t)), h);
  tap?.(`${prefix}.conv_out`, h);
  return h;
}

/** taming Encoder: image NHWC [B,H,W,in_channels] in [-1,1] -> [B,H/f,W/f,z_channels (x2 if double_z)]. */
export function encoder<T>(o: Ops<T>, w: EncoderWeights<T>, x: T, tap?: Taps<T>): T {
  let h = conv(o, w.convIn, x);
  tap?.('encoder.conv_in', h);
  w.down.forEach((level, i) => {
    level.block.forEach((blk, j) => {
      h = block(o, (t) => resBlock(o, blk, t), h);
      tap?.(`encoder.down.${i}.block.${j}`, h);
      if (level.attn.length) {
        h = block(o, (t) => attnBlock(o, level.attn[j], t), h);
        tap?.(`encoder.down.${i}.attn.${j}`, h);
      }
    });
    const down = level.resample;
    if (down) {
      // torch.nn.functional.pad(x, (0, 1, 0, 1)): one zero column on the right, one zero row at the bottom.
      h = block(o, (t) => conv(o, down, o.pad(t, [[0, 0], [0, 1], [0, 1], [0, 0]]), 2), h);
      tap?.(`encoder.down.${i}.downsample`, h);
    }
  });
  h = mid(o, w.mid, h, 'encoder', tap);
  return head(o, w.normOut, w.convOut, h, 'encoder', tap);
}

/** taming Decoder: [B,h,w,z_channels] -> image [B,h*f,w*f,out_ch] (unbounded; ~[-1,1] for a trained model). */
export function decoder<T>(o: Ops<T>, w: DecoderWeights<T>, z: T, tap?: Taps<T>): T {
  let h = conv(o, w.convIn, z);
  tap?.('decoder.conv_in', h);
  h = mid(o, w.mid, h, 'decoder', tap);
  for (let i = w.up.length - 1; i >= 0; i--) {
    const level = w.up[i];
    level.block.forEach((blk, j) => {
      h = block(o, (t) => resBlock(o, blk, t), h);
      tap?.(`decoder.up.${i}.block.${j}`, h);
      if (level.attn.length) {
        h = block(o, (t) => attnBlock(o, level.attn[j], t), h);
        tap?.(`decoder.up.${i}.attn.${j}`, h);
      }
    });
    const up = level.resample;
    if (up) {
      h = block(o, (t) => conv(o, up, o.upsampleNearest2x(t)), h);
      tap?.(`decoder.up.${i}.upsample`, h);
    }
  }
  return head(o, w.normOut, w.convOut, h, 'decoder', tap);
}

/** VQModel.encode up to the quantizer: encoder -> quant_conv. Image NHWC in [-1,1] -> latent h [B,h,w,embed_dim]. */
export function encode<T>(o: Ops<T>, w: VqganWeights<T>, x: T, tap?: Taps<T>): T {
  if (!w.encoder || !w.quantConv) throw new Error('this VQGAN was loaded without its encoder ({ encoder: false })');
  const h = conv(o, w.quantConv, encoder(o, w.encoder, x, tap));
  tap?.('quant_conv', h);
  return h;
}

export type Quantized<T> = {
  /** int32 [B*H*W], row-major over (b, h, w): taming's flat index layout (sane_index_shape=False). */
  indices: T;
  /** [B,H,W,embed_dim]: the value is the chosen codebook rows; the gradient passes straight through to h. */
  zq: T;
  /** Scalar: VectorQuantizer2's commitment loss (1+beta)*mean((zq-h)^2), or GumbelQuantize's KL term. */
  loss: T;
};

/**
 * Squared distances from every row of x [N,D] to every code of E [K,D], computed exactly as taming and generate.py
 * do: sum(x^2, 1, keepdim) + sum(E^2, 1) - 2 x E^T (the same float32 rounding, so the same argmin on near-ties).
 */
export function codeDistances<T>(o: Ops<T>, x: T, codebook: T): T {
  const x2 = o.sum(o.square(x), [1], true);
  const e2 = o.sum(o.square(codebook), [1]);
  return o.sub(o.add(x2, e2), o.scale(o.matmul(x, codebook, false, true), 2));
}

/** The quantizer the config names: VectorQuantizer2 (nearest code) or GumbelQuantize (argmax of logits, no noise). */
export function quantize<T>(o: Ops<T>, w: VqganWeights<T>, h: T): Quantized<T> {
  return w.quantize.kind === 'vq' ? vectorQuantizer(o, w.quantize, h) : gumbelQuantizer(o, w.quantize, h);
}

/** taming VectorQuantizer2.forward (eval): nearest code by codeDistances, first minimum on ties. */
export function vectorQuantizer<T>(o: Ops<T>, q: { beta: number; embedding: T }, h: T): Quantized<T> {
  const shape = o.shape(h);
  const d = shape[3];
  const flat = o.reshape(h, [-1, d]);
  const indices = o.argmin(codeDistances(o, flat, q.embedding), 1);
  const rows = o.reshape(o.gatherRows(q.embedding, indices), shape);
  // legacy and non-legacy losses have the same value: mse + beta*mse.
  const loss = o.scale(o.mean(o.square(o.sub(rows, h))), 1 + q.beta);
  return { indices, zq: o.straightThrough(rows, h), loss };
}

/**
 * taming GumbelQuantize without the Gumbel noise (its forward always samples; this is the deterministic choice):
 * logits = proj(h) (1x1 conv to n_embed), index = argmax, zq = embed.weight[index];
 * loss = kl_weight * mean over positions of sum_n qy*log(qy*n_embed + 1e-10), qy = softmax(logits).
 */
export function gumbelQuantizer<T>(o: Ops<T>, q: { klWeight: number; nEmbed: number; proj: Conv<T>; embed: T }, h: T, tap?: Taps<T>): Quantized<T> {
  const [b, hh, ww] = o.shape(h);
  const logits = conv(o, q.proj, h);
  tap?.('quantize.proj', logits);
  const flatLogits = o.reshape(logits, [-1, q.nEmbed]);
  const indices = o.argmax(flatLogits, 1);
  const rows = o.reshape(o.gatherRows(q.embed, indices), [b, hh, ww, -1]);
  const qy = o.softmax(flatLogits);
  const kl = o.sum(o.mul(qy, o.log(o.addScalar(o.scale(qy, q.nEmbed), 1e-10))), [1]);
  return { indices, zq: o.straightThrough(rows, h), loss: o.scale(o.mean(kl), q.klWeight) };
}

/** VQModel.decode: post_quant_conv -> decoder. zq [B,h,w,embed_dim] -> image NHWC, differentiable w.r.t. zq. */
export function decode<T>(o: Ops<T>, w: VqganWeights<T>, zq: T, tap?: Taps<T>): T {
  const h = conv(o, w.postQuantConv, zq);
  tap?.('post_quant_conv', h);
  return decoder(o, w.decoder, h, tap);
}

/** Codebook rows for int32 indices [B*H*W] (get_codebook_entry), as a latent [B,H,W,embed_dim]. */
export function codebookEntries<T>(o: Ops<T>, w: VqganWeights<T>, indices: T, shape: [b: number, h: number, w: number]): T {
  return o.reshape(o.gatherRows(w.codebook, indices), [...shape, -1]);
}

/** Decode from code indices, as Net2NetTransformer.decode_to_img does: codebook rows -> decode. */
export function decodeIndices<T>(o: Ops<T>, w: VqganWeights<T>, indices: T, shape: [b: number, h: number, w: number], tap?: Taps<T>): T {
  return decode(o, w, codebookEntries(o, w, indices, shape), tap);
}

/** VQModel.forward: decode(quantize(encode(x))); returns the image and the quantizer loss. */
export function reconstruct<T>(o: Ops<T>, w: VqganWeights<T>, x: T, tap?: Taps<T>): { image: T; loss: T; indices: T } {
  const q = quantize(o, w, encode(o, w, x, tap));
  return { image: decode(o, w, q.zq, tap), loss: q.loss, indices: q.indices };
}

/**
 * nerdyrodent generate.py `vector_quantize(x, codebook)` for x [..., D] (channels last): the value is the nearest
 * codebook rows, picked with the same distance formula and formed as one_hot(idx) @ E; the gradient goes to x
 * unchanged (replace_grad).
 */
export function vectorQuantizeST<T>(o: Ops<T>, z: T, codebook: T): T {
  const shape = o.shape(z);
  const [n, d] = o.shape(codebook);
  const flat = o.reshape(z, [-1, d]);
  const idx = o.argmin(codeDistances(o, o.stopGradient(flat), codebook), 1);
  const xq = o.reshape(o.matmul(o.oneHot(idx, n), codebook), shape);
  return o.straightThrough(xq, z);
}

/** Downsampling factor of the encoder: 2^(len(ch_mult)-1). */
export function downsamplingFactor(cfg: VqganConfig): number {
  return 2 ** (cfg.ddconfig.chMult.length - 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Weights: read from a WeightMap once (shapes checked against the config, conv weights converted to HWIO).

/** Which resolutions get attention: the nominal ones, config `resolution` halved per level. */
function attnAt(dd: DDConfig, level: number): boolean {
  return dd.attnResolutions.includes(Math.floor(dd.resolution / 2 ** level));
}

/** A weight as read from the file, already in ops.ts layout; the record is built from these before any tensor is made. */
interface HostArray {
  data: Float32Array;
  shape: number[];
}

class Reader {
  readonly used = new Set<string>();
  constructor(readonly wm: WeightMap) {}

  get(key: string, shape: number[]): HostTensor {
    this.used.add(key);
    return this.wm.get(key, shape);
  }
  vec(key: string, n: number): HostArray {
    return { data: asFloat32(this.get(key, [n])), shape: [n] };
  }
  conv(prefix: string, cin: number, cout: number, k: number): Conv<HostArray> {
    return { w: convToHWIO(this.get(`${prefix}.weight`, [cout, cin, k, k])), b: this.vec(`${prefix}.bias`, cout) };
  }
  norm(prefix: string, c: number): Norm<HostArray> {
    if (c % GN_GROUPS) throw new FormatError(this.wm.file, `${prefix} has ${c} channels, not a multiple of ${GN_GROUPS} GroupNorm groups`, 'check ch / ch_mult in the config');
    return { gamma: this.vec(`${prefix}.weight`, c), beta: this.vec(`${prefix}.bias`, c) };
  }
  resBlock(prefix: string, cin: number, cout: number): ResBlock<HostArray> {
    return {
      norm1: this.norm(`${prefix}.norm1`, cin),
      conv1: this.conv(`${prefix}.conv1`, cin, cout, 3),
      norm2: this.norm(`${prefix}.norm2`, cout),
      conv2: this.conv(`${prefix}.conv2`, cout, cout, 3),
      ninShortcut: cin !== cout ? this.conv(`${prefix}.nin_shortcut`, cin, cout, 1) : undefined,
    };
  }
  attn(prefix: string, c: number): AttnBlock<HostArray> {
    return {
      norm: this.norm(`${prefix}.norm`, c),
      q: this.conv(`${prefix}.q`, c, c, 1),
      k: this.conv(`${prefix}.k`, c, c, 1),
      v: this.conv(`${prefix}.v`, c, c, 1),
      projOut: this.conv(`${prefix}.proj_out`, c, c, 1),
    };
  }
  mid(prefix: string, c: number): Mid<HostArray> {
    return { block1: this.resBlock(`${prefix}.block_1`, c, c), attn1: this.attn(`${prefix}.attn_1`, c), block2: this.resBlock(`${prefix}.block_2`, c, c) };
  }
}

function encoderWeights(r: Reader, dd: DDConfig): EncoderWeights<HostArray> {
  const levels = dd.chMult.length;
  const convIn = r.conv('encoder.conv_in', dd.inChannels, dd.ch, 3);
  const down: Level<HostArray>[] = [];
  let cin = dd.ch;
  for (let i = 0; i < levels; i++) {
    const cout = dd.ch * dd.chMult[i];
    const level: Level<HostArray> = { block: [], attn: [] };
    for (let j = 0; j < dd.numResBlocks; j++) {
      level.block.push(r.resBlock(`encoder.down.${i}.block.${j}`, cin, cout));
      cin = cout;
      if (attnAt(dd, i)) level.attn.push(r.attn(`encoder.down.${i}.attn.${j}`, cin));
    }
    if (i !== levels - 1) level.resample = r.conv(`encoder.down.${i}.downsample.conv`, cin, cin, 3);
    down.push(level);
  }
  return {
    convIn,
    down,
    mid: r.mid('encoder.mid', cin),
    normOut: r.norm('encoder.norm_out', cin),
    convOut: r.conv('encoder.conv_out', cin, dd.doubleZ ? 2 * dd.zChannels : dd.zChannels, 3),
  };
}

function decoderWeights(r: Reader, dd: DDConfig): DecoderWeights<HostArray> {
  const levels = dd.chMult.length;
  let cin = dd.ch * dd.chMult[levels - 1];
  const convIn = r.conv('decoder.conv_in', dd.zChannels, cin, 3);
  const midW = r.mid('decoder.mid', cin);
  const up: Level<HostArray>[] = new Array(levels);
  for (let i = levels - 1; i >= 0; i--) {
    const cout = dd.ch * dd.chMult[i];
    const level: Level<HostArray> = { block: [], attn: [] };
    for (let j = 0; j < dd.numResBlocks + 1; j++) {
      level.block.push(r.resBlock(`decoder.up.${i}.block.${j}`, cin, cout));
      cin = cout;
      if (attnAt(dd, i)) level.attn.push(r.attn(`decoder.up.${i}.attn.${j}`, cin));
    }
    if (i !== 0) level.resample = r.conv(`decoder.up.${i}.upsample.conv`, cin, cin, 3);
    up[i] = level;
  }
  return { convIn, mid: midW, up, normOut: r.norm('decoder.norm_out', cin), convOut: r.conv('decoder.conv_out', cin, dd.outCh, 3) };
}

function codebookRange(codebook: Float32Array, n: number, d: number): { min: Float32Array; max: Float32Array } {
  const min = new Float32Array(d).fill(Infinity);
  const max = new Float32Array(d).fill(-Infinity);
  for (let i = 0; i < n; i++)
    for (let c = 0; c < d; c++) {
      const v = codebook[i * d + c];
      if (v < min[c]) min[c] = v;
      if (v > max[c]) max[c] = v;
    }
  return { min, max };
}

/** The parameter prefixes of a first stage; any other key under them means the config does not describe the file. */
const MODEL_PREFIXES = ['encoder.', 'decoder.', 'quantize.', 'quant_conv.', 'post_quant_conv.'];

export interface VqganWeightOptions {
  /** Load the encoder and quant_conv (default true); decoding and VQGAN+CLIP do not need them. */
  encoder?: boolean;
}

/**
 * Builds the weights record from a state dict view (keys as VQModel.state_dict() names them; pass
 * `wm.sub('first_stage_model.')` for a transformer checkpoint). Every shape is checked against the config and a
 * mismatch names the key and both shapes; parameters the config does not account for are reported too. Training-only
 * keys (`loss.*`) are ignored.
 */
export function vqganWeights<T>(o: Ops<T>, wm: WeightMap, cfg: VqganConfig, opts: VqganWeightOptions = {}): VqganWeights<T> {
  // Everything is read and checked first; tensors are made only once the whole record is known to be right.
  return toTensors(o, hostWeights(wm, cfg, opts));
}

function hostWeights(wm: WeightMap, cfg: VqganConfig, opts: VqganWeightOptions): VqganWeights<HostArray> {
  const dd = cfg.ddconfig;
  if (cfg.remap) throw new FormatError(wm.file, `config sets quantizer remap (${cfg.remap}), which is not supported`, 'use a model without index remapping');
  const r = new Reader(wm);
  const withEncoder = opts.encoder ?? true;
  const encoderW = withEncoder ? encoderWeights(r, dd) : undefined;
  const quantConv = withEncoder ? r.conv('quant_conv', dd.zChannels, cfg.embedDim, 1) : undefined;
  let quantizeW: QuantizerWeights<HostArray>;
  let codebook: HostArray;
  if (cfg.kind === 'vq') {
    codebook = { data: asFloat32(r.get('quantize.embedding.weight', [cfg.nEmbed, cfg.embedDim])), shape: [cfg.nEmbed, cfg.embedDim] };
    quantizeW = { kind: 'vq', beta: 0.25, embedding: codebook };
  } else {
    // GumbelVQ builds GumbelQuantize(z_channels, embed_dim, ...) but feeds it quant_conv's embed_dim channels.
    if (cfg.embedDim !== dd.zChannels) {
      throw new FormatError(wm.file, `GumbelVQ needs embed_dim (${cfg.embedDim}) equal to z_channels (${dd.zChannels})`, 'use the config published with the checkpoint');
    }
    codebook = { data: asFloat32(r.get('quantize.embed.weight', [cfg.nEmbed, cfg.embedDim])), shape: [cfg.nEmbed, cfg.embedDim] };
    quantizeW = { kind: 'gumbel', klWeight: cfg.klWeight ?? 5e-4, nEmbed: cfg.nEmbed, proj: r.conv('quantize.proj', dd.zChannels, cfg.nEmbed, 1), embed: codebook };
  }
  const postQuantConv = r.conv('post_quant_conv', cfg.embedDim, dd.zChannels, 1);
  const decoderW = decoderWeights(r, dd);

  for (const key of wm.keys()) {
    if (!MODEL_PREFIXES.some((p) => key.startsWith(p)) || r.used.has(key)) continue;
    if (!withEncoder && (key.startsWith('encoder.') || key.startsWith('quant_conv.'))) continue;
    throw new FormatError(
      wm.file,
      `weight "${key}" (shape [${wm.shapeOf(key)}]) is not part of the model the config describes`,
      'the config (.yaml) does not match this checkpoint (ch_mult, num_res_blocks or attn_resolutions differ); use the config published with it',
    );
  }

  const range = codebookRange(codebook.data, cfg.nEmbed, cfg.embedDim);
  return {
    encoder: encoderW,
    quantConv,
    quantize: quantizeW,
    postQuantConv,
    decoder: decoderW,
    codebook,
    zMin: { data: range.min, shape: [cfg.embedDim] },
    zMax: { data: range.max, shape: [cfg.embedDim] },
  };
}

/** Same record with every host array made a tensor (an array referenced twice becomes one tensor). */
function toTensors<T>(o: Ops<T>, host: VqganWeights<HostArray>): VqganWeights<T> {
  const made = new Map<HostArray, T>();
  const visit = (v: unknown): unknown => {
    if (v === null || typeof v !== 'object') return v;
    if (Array.isArray(v)) return v.map(visit);
    if ((v as HostArray).data instanceof Float32Array) {
      const h = v as HostArray;
      let t = made.get(h);
      if (!t) made.set(h, (t = o.constant(h.data, h.shape)));
      return t;
    }
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, visit(x)]));
  };
  return visit(host) as VqganWeights<T>;
}

/** Every tensor of a weights record (to dispose it). */
export function weightTensors<T>(w: VqganWeights<T>): T[] {
  const out = new Set<T>();
  const visit = (v: unknown) => {
    if (v === null || v === undefined || typeof v !== 'object') return;
    if (Array.isArray(v)) v.forEach(visit);
    else if (Object.getPrototypeOf(v) === Object.prototype) Object.values(v).forEach(visit);
    else out.add(v as T);
  };
  visit(w);
  return [...out];
}
