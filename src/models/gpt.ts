// taming-transformers' minGPT (taming/modules/transformer/mingpt.py GPT), the prior of Net2NetTransformer
// checkpoints, written as pure functions of (ops, config, weights, inputs) against the op vocabulary.
//
//   x = tok_emb(idx) + pos_emb[:, :t]
//   per block: x = x + attn(ln1(x));  x = x + mlp(ln2(x))      (pre-LN, LayerNorm eps 1e-5)
//     attn: separate key/query/value Linear(C,C) with bias, heads as view(B,T,nh,hs), softmax(q k^T / sqrt(hs))
//           with the causal mask, proj Linear(C,C);  mlp: Linear(C,4C) -> exact-erf GELU -> Linear(4C,C)
//   logits = head(ln_f(x))                                      (head: Linear(C,vocab), no bias)
//
// `gptForward` runs a whole sequence (GPT.forward); `gptStep` runs new tokens after a key/value cache
// (forward_with_past: position embeddings start at the cache length; a single new token needs no mask);
// `gptCachedStep` does the same over a cache of fixed size (every step the same shapes: compiled engines).
import { FormatError, asFloat32 } from '../formats/host-tensor.ts';
import { readTamingConfig, type GptConfig, type TransformerConfig } from '../formats/taming-config.ts';
import type { HostData, Ops } from '../engine/ops.ts';
import { UserError } from '../cli/errors.ts';
import { WeightMap, linearToInOut } from './weights.ts';
import { downsamplingFactor, vqganWeights, type VqganWeights } from './vqgan.ts';
import { findConfig, openStateDict, resolveCheckpoint } from './vqgan-load.ts';

export type { GptConfig };

const LN_EPS = 1e-5;

export interface Linear<T> {
  /** [in, out] */
  w: T;
  b?: T;
}

export interface LayerNorm<T> {
  gamma: T;
  beta: T;
}

export interface GptBlock<T> {
  ln1: LayerNorm<T>;
  /** query, key and value Linear(C,C) fused: [C, 3C], columns q | k | v (one matmul instead of three). */
  qkv: Linear<T>;
  proj: Linear<T>;
  ln2: LayerNorm<T>;
  fc: Linear<T>;
  fcOut: Linear<T>;
}

export interface GptWeights<T> {
  /** [vocab, C] */
  tokEmb: T;
  /** [block_size, C] */
  posEmb: T;
  blocks: GptBlock<T>[];
  lnF: LayerNorm<T>;
  /** [C, vocab] */
  head: T;
}

/**
 * Key/value cache of one block, as chunks along the sequence. Values v[c] are [B, heads, len_c, headDim]. Keys of
 * closed chunks are stored transposed, kT[c] [B, heads, headDim, len_c], so q k^T is a plain matmul (wasm's
 * transposed matmul copies its operand every call); the last chunk may be open, its keys in `open` untransposed
 * [B, heads, len, headDim], and then kT has one entry fewer than v. Single tokens are appended to the open chunk
 * (concat along the sequence axis, cheap in this layout) until it holds KV_CHUNK tokens and is closed (transposed
 * once). So a token costs an O(KV_CHUNK) copy per block, never a copy of the whole cache: tfjs has no in-place
 * update, and its concat on wasm/cpu copies element by element (at batch 25, position 255, one whole-cache concat
 * per block cost seconds per step there; see src/bench/gpt.ts).
 */
export type KvLayer<T> = { kT: T[]; v: T[]; open?: T };

/** Key/value cache of every block (type aliases, not interfaces, so tf.tidy can return them). */
export type KvCache<T> = { length: number; layers: KvLayer<T>[] };

/**
 * Default tokens per closed cache chunk: bounds the copy per appended token (the open chunk, < KV_CHUNK tokens,
 * is concatenated and, on wasm, transposed for q k^T) and keeps the chunks per step, hence the small batched
 * matmuls, at length/128 (on wasm a batched matmul of many tiny items, batch 25 x 24 heads of [1 x hs] x [hs x len],
 * costs far more than its arithmetic, so fewer chunks help; one whole-cache chunk was clearly slowest there at
 * batch 25, position 255: ~+0.25 s per block and step). Where copies are cheap and ops are not (GPUs), pass
 * kvChunk = block_size to gptStep: one chunk, the plain concatenated cache (src/bench/gpt.ts measures both).
 */
export const KV_CHUNK = 128;

/** Every tensor a cache holds (chunks are shared between a cache and the one gptStep returns from it). */
export function kvTensors<T>(cache: KvCache<T> | undefined): T[] {
  return cache ? cache.layers.flatMap((l) => [...l.kT, ...l.v, ...(l.open ? [l.open] : [])]) : [];
}

/** Records the residual stream after each block (`blocks.N`) and the final `ln_f` output. */
export type GptTaps<T> = (name: string, value: T) => void;

function layerNorm<T>(o: Ops<T>, ln: LayerNorm<T>, x: T): T {
  return o.layerNorm(x, ln.gamma, ln.beta, LN_EPS);
}

function linear<T>(o: Ops<T>, l: Linear<T>, x: T): T {
  return o.linear(x, l.w, l.b);
}

/** tok_emb(idx) + pos_emb[start:start+t] for int32 idx [B,T]. */
function embed<T>(o: Ops<T>, cfg: GptConfig, w: GptWeights<T>, idx: T, start: number): T {
  const [b, t] = o.shape(idx);
  if (start + t > cfg.blockSize) {
    throw new RangeError(`GPT context of ${start + t} tokens exceeds the model's block_size ${cfg.blockSize}`);
  }
  const tok = o.reshape(o.gatherRows(w.tokEmb, o.reshape(idx, [b * t])), [b, t, cfg.nEmbd]);
  return o.add(tok, o.slice(w.posEmb, [start, 0], [t, cfg.nEmbd]));
}

/** Softmax attention of one new token per row, q [B,h,1,hs], over every cached chunk (no mask: all are past). */
function chunkedAttention<T>(o: Ops<T>, q: T, kv: KvLayer<T>, hs: number): T {
  const scores = kv.kT.map((kT) => o.matmul(q, kT));
  if (kv.open) scores.push(o.matmul(q, kv.open, false, true));
  const p = o.softmax(o.scale(scores.length === 1 ? scores[0] : o.concat(scores, 3), 1 / Math.sqrt(hs)));
  if (kv.v.length === 1) return o.matmul(p, kv.v[0]);
  const [b, h, t] = o.shape(q);
  let y: T | undefined;
  let offset = 0;
  for (const v of kv.v) {
    const len = o.shape(v)[2];
    const part = o.matmul(o.slice(p, [0, 0, 0, offset], [b, h, t, len]), v);
    y = y === undefined ? part : o.add(y, part);
    offset += len;
  }
  return y!;
}

const transposeKeys = <T>(o: Ops<T>, k: T): T => o.transpose(k, [0, 1, 3, 2]);

/** A chunk of new keys/values: closed (keys transposed) when it holds `size` tokens, else open. */
function newChunk<T>(o: Ops<T>, kT: T[], v: T[], k: T, vNew: T, size: number): KvLayer<T> {
  return o.shape(k)[2] >= size ? { kT: [...kT, transposeKeys(o, k)], v: [...v, vNew] } : { kT, v: [...v, vNew], open: k };
}

/** The cache of one block after appending k, v [B,h,t,hs], with chunks of `size` tokens. */
function appendKv<T>(o: Ops<T>, past: KvLayer<T> | undefined, k: T, v: T, size: number): KvLayer<T> {
  if (!past) return newChunk(o, [], [], k, v, size);
  const n = past.v.length;
  if (!past.open) return newChunk(o, past.kT, past.v, k, v, size);
  const head = past.v.slice(0, n - 1);
  if (o.shape(k)[2] === 1) return newChunk(o, past.kT, head, o.concat([past.open, k], 2), o.concat([past.v[n - 1], v], 2), size);
  // Several new tokens: close the open chunk, the new tokens make the next one.
  return newChunk(o, [...past.kT, transposeKeys(o, past.open)], past.v, k, v, size);
}

/**
 * One transformer block over x [B,T,C]. With `past` (the block's cached keys/values) the new queries attend to
 * the cached keys followed by their own (causal among the new ones, which is no mask at all for one token).
 * Returns the block output and the block's cache including the new tokens.
 */
function block<T>(o: Ops<T>, cfg: GptConfig, w: GptBlock<T>, x: T, past?: KvLayer<T>, kvChunk = KV_CHUNK): { x: T; kv: KvLayer<T> } {
  const [b, t] = o.shape(x);
  const heads = cfg.nHead;
  const hs = cfg.nEmbd / heads;
  const h = layerNorm(o, w.ln1, x);
  // [B,T,3C] -> [B,3*heads,T,hs]: heads 0..nh-1 are q, then k, then v.
  const qkv = o.transpose(o.reshape(linear(o, w.qkv, h), [b, t, 3 * heads, hs]), [0, 2, 1, 3]);
  const q = o.slice(qkv, [0, 0, 0, 0], [b, heads, t, hs]);
  const k = o.slice(qkv, [0, heads, 0, 0], [b, heads, t, hs]);
  const v = o.slice(qkv, [0, 2 * heads, 0, 0], [b, heads, t, hs]);
  const kv = appendKv(o, past, k, v, kvChunk);
  let y: T;
  if (!past) y = o.attention(q, k, v, { causal: t > 1 });
  else if (t === 1) y = chunkedAttention(o, q, kv, hs);
  else {
    // Several new tokens after a cache (rare: conditioning prefixes): one causal attention over the whole cache.
    const keys = [...kv.kT.map((kT) => transposeKeys(o, kT)), ...(kv.open ? [kv.open] : [])];
    y = o.attention(q, o.concat(keys, 2), o.concat(kv.v, 2), { causal: true });
  }
  const merged = o.reshape(o.transpose(y, [0, 2, 1, 3]), [b, t, cfg.nEmbd]);
  const x1 = o.add(x, linear(o, w.proj, merged));
  const m = linear(o, w.fcOut, o.gelu(linear(o, w.fc, layerNorm(o, w.ln2, x1))));
  return { x: o.add(x1, m), kv };
}

function headLogits<T>(o: Ops<T>, w: GptWeights<T>, x: T, tap?: GptTaps<T>): T {
  const h = layerNorm(o, w.lnF, x);
  tap?.('ln_f', h);
  return o.linear(h, w.head);
}

/** GPT.forward: int32 idx [B,T] (T <= block_size) -> logits [B,T,vocab]. */
export function gptForward<T>(o: Ops<T>, cfg: GptConfig, w: GptWeights<T>, idx: T, tap?: GptTaps<T>): T {
  let x = embed(o, cfg, w, idx, 0);
  w.blocks.forEach((bw, i) => {
    x = block(o, cfg, bw, x).x;
    tap?.(`blocks.${i}`, x);
  });
  return headLogits(o, w, x, tap);
}

/**
 * forward_with_past: int32 idx [B,Tnew] placed after `cache` (positions cache.length ...). Returns the logits
 * [B,Tnew,vocab] (with `lastOnly`, [B,1,vocab] of the last new token) and the cache extended by the new tokens.
 * The new cache shares the old one's full chunks: free only the old tensors it does not hold (kvTensors).
 * Tnew > 1 (e.g. several conditioning tokens) is causal among the new tokens.
 */
export function gptStep<T>(
  o: Ops<T>,
  cfg: GptConfig,
  w: GptWeights<T>,
  idx: T,
  cache?: KvCache<T>,
  opts: { lastOnly?: boolean; kvChunk?: number } = {},
): { logits: T; cache: KvCache<T> } {
  const start = cache?.length ?? 0;
  const [b, t] = o.shape(idx);
  let x = embed(o, cfg, w, idx, start);
  const layers: KvLayer<T>[] = [];
  w.blocks.forEach((bw, i) => {
    const r = block(o, cfg, bw, x, cache?.layers[i], opts.kvChunk);
    x = r.x;
    layers.push(r.kv);
  });
  // Sampling only needs the last position: skip the vocabulary projection of the others (lastOnly).
  if (opts.lastOnly && t > 1) x = o.slice(x, [0, t - 1, 0], [b, 1, cfg.nEmbd]);
  return { logits: headLogits(o, w, x), cache: { length: start + t, layers } };
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding with a fixed-size cache, for engines that plan a step once and re-run it (compiled WebGPU): every step
// has the same shapes whatever the position, because the cache always holds block_size rows per block and the
// position is data. A step writes its new keys/values into their rows (a one-hot `write`: cache*(1-e) + k*e, exact
// for 0/1 weights) and attends to every row through an additive mask that hides the rows after each token's
// position (rows not written yet hold stale but finite values, masked; the softmax gives them exactly 0). Position 0
// after a fresh cache is an ordinary step, so sampling in sequence order never needs another shape; several tokens
// at once (a sliding window's recomputed context) are the same function with T > 1.

/** Per block k and v [B, heads, block_size, hs]: cached keys/values, row r = position r. */
export type FixedKvCache<T> = Array<{ k: T; v: T }>;

/** Where the T new tokens of a fixed-cache step go (host data from cacheSlots). */
export interface CacheSlots<T> {
  /** int32 [T]: each token's position (its position embedding). */
  pos: T;
  /** float32 [T, block_size]: row i is one-hot at the cache row token i is written to (all zero: written nowhere). */
  write: T;
  /** float32 [T, block_size]: additive attention mask of token i: 0 for the rows it sees, MASKED for the others. */
  mask: T;
  /** int32 [B]: the row of the step's [B*T, C] output whose logits are returned; only when T > 1. */
  last?: T;
}

/** Additive mask of a hidden cache row: exp(-1e9 - max) is exactly 0 in float32, and stays finite (WGSL may assume no infinities). */
const MASKED = -1e9;

/** The shape of one block's fixed k (or v) cache for `batch` samples. */
export function fixedKvShape(cfg: GptConfig, batch: number): number[] {
  return [batch, cfg.nHead, cfg.blockSize, cfg.nEmbd / cfg.nHead];
}

/**
 * Host data of CacheSlots for `t` new tokens at positions start.., each seeing the rows up to its own position,
 * padded to `rows` tokens (padding is written nowhere, sees row 0 only and its logits are never picked: a compiled
 * engine then plans one prefill length for every context length).
 */
export function cacheSlots(cfg: GptConfig, batch: number, start: number, t: number, rows = t): Record<string, HostData> {
  const bs = cfg.blockSize;
  if (t < 1 || rows < t || start + t > bs) throw new RangeError(`GPT context of ${start + t} tokens (padded to ${start + rows}) exceeds the model's block_size ${bs}`);
  const pos = new Int32Array(rows);
  const write = new Float32Array(rows * bs);
  const mask = new Float32Array(rows * bs).fill(MASKED);
  for (let i = 0; i < rows; i++) {
    const p = i < t ? start + i : 0;
    pos[i] = p;
    if (i < t) write[i * bs + p] = 1;
    mask.fill(0, i * bs, i * bs + p + 1);
  }
  const slots = { pos: { data: pos, shape: [rows] }, write: { data: write, shape: [rows, bs] }, mask: { data: mask, shape: [rows, bs] } };
  if (rows === 1) return slots;
  return { ...slots, last: { data: Int32Array.from({ length: batch }, (_, b) => b * rows + t - 1), shape: [batch] } };
}

/** The cache with new rows [B,h,T,hs] written where `write` [T, block_size] says (other rows unchanged). */
function writeRows<T>(o: Ops<T>, cache: T, rows: T, write: T): T {
  const [t, bs] = o.shape(write);
  if (t === 1) {
    // One row: broadcasts only, one elementwise kernel on a compiled engine.
    const e = o.reshape(write, [1, 1, bs, 1]);
    return o.add(o.mul(cache, o.addScalar(o.neg(e), 1)), o.mul(e, rows));
  }
  const keep = o.addScalar(o.neg(o.reshape(o.sum(write, [0]), [1, 1, bs, 1])), 1);
  return o.add(o.mul(cache, keep), o.matmul(o.reshape(write, [1, 1, t, bs]), rows, true, false));
}

/** [B,T,n*heads*hs] -> [B,n*heads,T,hs] (and back): for T = 1 a reshape, since moving an axis of size 1 moves no data. */
const toHeads = <T>(o: Ops<T>, x: T, heads: number, hs: number): T => {
  const [b, t] = o.shape(x);
  return t === 1 ? o.reshape(x, [b, heads, 1, hs]) : o.transpose(o.reshape(x, [b, t, heads, hs]), [0, 2, 1, 3]);
};
const fromHeads = <T>(o: Ops<T>, y: T): T => {
  const [b, h, t, hs] = o.shape(y);
  return t === 1 ? o.reshape(y, [b, 1, h * hs]) : o.reshape(o.transpose(y, [0, 2, 1, 3]), [b, t, h * hs]);
};

/** One transformer block over x [B,T,C] after a fixed cache: the new keys/values are written, then attended to. */
function cachedBlock<T>(o: Ops<T>, cfg: GptConfig, w: GptBlock<T>, x: T, slots: CacheSlots<T>, kv: { k: T; v: T }): { x: T; kv: { k: T; v: T } } {
  const [b, t] = o.shape(x);
  const heads = cfg.nHead;
  const hs = cfg.nEmbd / heads;
  const qkv = toHeads(o, linear(o, w.qkv, layerNorm(o, w.ln1, x)), 3 * heads, hs);
  const part = (i: number) => o.slice(qkv, [0, i * heads, 0, 0], [b, heads, t, hs]);
  const k = writeRows(o, kv.k, part(1), slots.write);
  const v = writeRows(o, kv.v, part(2), slots.write);
  const scores = o.add(o.scale(o.matmul(part(0), k, false, true), 1 / Math.sqrt(hs)), slots.mask);
  const y = fromHeads(o, o.matmul(o.softmax(scores), v));
  const x1 = o.add(x, linear(o, w.proj, y));
  const m = linear(o, w.fcOut, o.gelu(linear(o, w.fc, layerNorm(o, w.ln2, x1))));
  return { x: o.add(x1, m), kv: { k, v } };
}

/**
 * forward_with_past over a fixed cache: int32 idx [B,T] at the positions `slots` gives. Returns the logits
 * [B,vocab] of one token per sample (the only one for T = 1, else the row slots.last picks) and the cache with the
 * new keys/values written. The same numbers as gptStep with the tokens before them in its cache.
 */
export function gptCachedStep<T>(o: Ops<T>, cfg: GptConfig, w: GptWeights<T>, idx: T, slots: CacheSlots<T>, cache: FixedKvCache<T>): { logits: T; cache: FixedKvCache<T> } {
  const [b, t] = o.shape(idx);
  const C = cfg.nEmbd;
  const tok = o.reshape(o.gatherRows(w.tokEmb, o.reshape(idx, [b * t])), [b, t, C]);
  let x = o.add(tok, o.gatherRows(w.posEmb, slots.pos));
  const next: FixedKvCache<T> = [];
  w.blocks.forEach((bw, i) => {
    const r = cachedBlock(o, cfg, bw, x, slots, cache[i]);
    x = r.x;
    next.push(r.kv);
  });
  if (t > 1 && !slots.last) throw new Error('gptCachedStep: several tokens need slots.last (the row whose logits are returned)');
  const rows = t === 1 ? o.reshape(x, [b, C]) : o.gatherRows(o.reshape(x, [b * t, C]), slots.last!);
  return { logits: headLogits(o, w, rows), cache: next };
}

// ---------------------------------------------------------------------------------------------------------------
// Weights: `transformer.*` of a Net2NetTransformer state dict (pass wm.sub('transformer.')), shapes checked
// against the config; linear weights turned to [in, out]. The causal-mask buffers `blocks.N.attn.mask` are not
// weights and are skipped.

const MASK_KEY = /^blocks\.\d+\.attn\.mask$/;

/** The GPT parameters of a Net2NetTransformer state dict, from the `transformer.` view of it. */
export function gptWeights<T>(o: Ops<T>, wm: WeightMap, cfg: GptConfig): GptWeights<T> {
  const keys = wm.keys();
  if (keys.filter((k) => !MASK_KEY.test(k)).length === 0) {
    throw new FormatError(
      wm.file,
      'holds no transformer weights (no "transformer.*" keys)',
      'pass a Net2NetTransformer checkpoint (e.g. cin_transformer, ffhq or celebahq transformer), not a VQGAN checkpoint',
    );
  }
  const C = cfg.nEmbd;
  const V = cfg.vocabSize;
  const used = new Set<string>();
  const get = (key: string, shape: number[]) => {
    used.add(key);
    return wm.get(key, shape);
  };
  const vec = (key: string, n: number): T => o.constant(asFloat32(get(key, [n])), [n]);
  const lin = (prefix: string, cin: number, cout: number, bias = true): Linear<T> => {
    const t = linearToInOut(get(`${prefix}.weight`, [cout, cin]));
    return { w: o.constant(t.data, t.shape), b: bias ? vec(`${prefix}.bias`, cout) : undefined };
  };
  // query | key | value side by side: row r of the [C, 3C] matrix is row r of each [C, C] one.
  const qkv = (prefix: string): Linear<T> => {
    const parts = ['query', 'key', 'value'].map((n) => linearToInOut(get(`${prefix}.${n}.weight`, [C, C])).data);
    const w = new Float32Array(C * 3 * C);
    for (let r = 0; r < C; r++) parts.forEach((m, j) => w.set(m.subarray(r * C, (r + 1) * C), r * 3 * C + j * C));
    const b = new Float32Array(3 * C);
    ['query', 'key', 'value'].forEach((n, j) => b.set(asFloat32(get(`${prefix}.${n}.bias`, [C])), j * C));
    return { w: o.constant(w, [C, 3 * C]), b: o.constant(b, [3 * C]) };
  };
  const ln = (prefix: string): LayerNorm<T> => ({ gamma: vec(`${prefix}.weight`, C), beta: vec(`${prefix}.bias`, C) });

  const tokEmb = o.constant(asFloat32(get('tok_emb.weight', [V, C])), [V, C]);
  const posEmb = o.constant(asFloat32(get('pos_emb', [1, cfg.blockSize, C])), [cfg.blockSize, C]);
  const blocks: GptBlock<T>[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const p = `blocks.${i}`;
    blocks.push({
      ln1: ln(`${p}.ln1`),
      qkv: qkv(`${p}.attn`),
      proj: lin(`${p}.attn.proj`, C, C),
      ln2: ln(`${p}.ln2`),
      fc: lin(`${p}.mlp.0`, C, 4 * C),
      fcOut: lin(`${p}.mlp.2`, 4 * C, C),
    });
  }
  const lnF = ln('ln_f');
  const head = lin('head', C, V, false).w;
  for (const key of keys) {
    if (used.has(key) || MASK_KEY.test(key)) continue;
    throw new FormatError(
      wm.file,
      `weight "transformer.${key}" (shape [${wm.shapeOf(key)}]) is not part of the GPT the config describes (n_layer ${cfg.nLayer})`,
      'the config (.yaml) does not match this checkpoint; use the config published with it',
    );
  }
  return { tokEmb, posEmb, blocks, lnF, head };
}

/** Every tensor of a GPT weights record (to dispose it). */
export function gptWeightTensors<T>(w: GptWeights<T>): T[] {
  const out: T[] = [w.tokEmb, w.posEmb, w.lnF.gamma, w.lnF.beta, w.head];
  for (const b of w.blocks) {
    for (const l of [b.qkv, b.proj, b.fc, b.fcOut]) out.push(l.w, ...(l.b ? [l.b] : []));
    out.push(b.ln1.gamma, b.ln1.beta, b.ln2.gamma, b.ln2.beta);
  }
  return out;
}

/** Parameter count of a GPT config (for reports). */
export function gptParameterCount(cfg: GptConfig): number {
  const C = cfg.nEmbd;
  const perBlock = 4 * (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 4 * C;
  return cfg.vocabSize * C + cfg.blockSize * C + cfg.nLayer * perBlock + 2 * C + C * cfg.vocabSize;
}

// ---------------------------------------------------------------------------------------------------------------
// Permuters (taming/modules/transformer/permuter.py): the order in which the prior sees the code grid.
// forward(x) = x[:, forward_idx]: sequence position s holds raster position forward_idx[s].

export interface Permuter {
  name: string;
  /** Raster position of each sequence position. */
  forward: Int32Array;
  /** Sequence (permuted) order -> raster (row-major) order: raster[r] = seq[inverse[r]]. */
  toRaster(seq: Int32Array): Int32Array;
}

function permuter(name: string, forward: number[] | Int32Array): Permuter {
  const fwd = Int32Array.from(forward);
  const inverse = new Int32Array(fwd.length);
  fwd.forEach((r, s) => (inverse[r] = s));
  return { name, forward: fwd, toRaster: (seq) => Int32Array.from(inverse, (s) => seq[s]) };
}

function subsampleOrder(H: number, W: number): number[] {
  // indices (C,H,W) -> reshape (C,H/2,2,W/2,2) -> transpose (0,2,4,1,3) -> (4C,H/2,W/2), until 1x1.
  let idx = Array.from({ length: H * W }, (_, i) => i);
  let C = 1;
  while (Math.min(H, W) > 1) {
    const h2 = Math.floor(H / 2);
    const w2 = Math.floor(W / 2);
    const next: number[] = [];
    for (let c = 0; c < C; c++)
      for (let a = 0; a < 2; a++)
        for (let b = 0; b < 2; b++)
          for (let y = 0; y < h2; y++) for (let x = 0; x < w2; x++) next.push(idx[c * H * W + (2 * y + a) * W + (2 * x + b)]);
    idx = next;
    H = h2;
    W = w2;
    C *= 4;
  }
  return idx;
}

function morton(i: number, j: number): number {
  let z = 0;
  for (let pos = 0; pos < 16; pos++) z += (((j >> pos) & 1) * 2 ** (2 * pos)) + (((i >> pos) & 1) * 2 ** (2 * pos + 1));
  return z;
}

function spiralOrder(size: number): number[] {
  const at = (i: number, j: number) => i * size + j;
  let i = size / 2;
  let j = size / 2 - 1;
  const idx = [at(i, j)];
  let step = 0;
  for (let c = 1; c <= size / 2; c++) {
    step++;
    for (let k = 0; k < step; k++) idx.push(at(--i, j));
    for (let k = 0; k < step; k++) idx.push(at(i, ++j));
    step++;
    if (c < size / 2) {
      for (let k = 0; k < step; k++) idx.push(at(++i, j));
      for (let k = 0; k < step; k++) idx.push(at(i, --j));
    } else {
      for (let k = 0; k < step - 1; k++) idx.push(at(++i, j));
    }
  }
  return idx;
}

/** The permuter a config names, for the trained code grid H x W. */
export function makePermuter(target: string, H: number, W: number, file = '<config>'): Permuter {
  const name = target.split('.').pop() ?? target;
  const bad = (why: string): never => {
    throw new FormatError(file, `permuter ${name} ${why}`, 'use a model trained with the Identity permuter, or its published config');
  };
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  switch (name) {
    case 'Identity':
    case 'identity':
      return permuter('Identity', Array.from({ length: H * W }, (_, i) => i));
    case 'Subsample':
      if (!pow2(H) || H !== W) bad(`needs a square power-of-two grid (got ${H}x${W})`);
      return permuter(name, subsampleOrder(H, W));
    case 'ZCurve': {
      if (!pow2(H) || H !== W) bad(`needs a square power-of-two grid (got ${H}x${W})`);
      const codes = Array.from({ length: H * W }, (_, r) => morton(Math.floor(r / W), r % W));
      const order = Array.from(codes.keys()).sort((a, b) => codes[a] - codes[b]);
      return permuter(name, order);
    }
    case 'SpiralOut':
    case 'SpiralIn': {
      if (H !== W || H % 2) bad(`needs a square grid of even size (got ${H}x${W})`);
      const order = spiralOrder(H);
      return permuter(name, name === 'SpiralIn' ? order.reverse() : order);
    }
    case 'AlternateParsing': {
      const order: number[] = [];
      for (let i = 0; i < H; i++) for (let j = 0; j < W; j++) order.push(i * W + (i % 2 ? W - 1 - j : j));
      return permuter(name, order);
    }
    default:
      // Random draws numpy's RandomState(1) permutation (Mersenne Twister), not reproduced here.
      return bad('is not supported (supported: Identity, Subsample, ZCurve, SpiralOut, SpiralIn, AlternateParsing)');
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The prior of a Net2NetTransformer checkpoint: GPT + first stage (same checkpoint) + conditioning + permuter.

export interface Prior<T> {
  checkpoint: string;
  configFile: string;
  config: TransformerConfig;
  gpt: GptWeights<T>;
  /** The checkpoint's own first stage (`first_stage_model.*`), decoder only. */
  firstStage: VqganWeights<T>;
  /** First-stage downsampling factor. */
  factor: number;
  /** The code grid [rows, cols] the prior was trained on (first-stage resolution / factor). */
  grid: [number, number];
  permuter: Permuter;
}

/**
 * The conditioning token: the class label itself for class-conditional models (Labelator: no offset, it shares
 * the embedding row of the code with the same number), the SOS token (default 0) for unconditional ones.
 */
export function condToken<T>(prior: Prior<T>, classLabel?: number): number {
  const cond = prior.config.cond;
  if (cond.kind === 'unconditional') {
    if (classLabel !== undefined) {
      throw new UserError(`${prior.checkpoint} is an unconditional model: a class label does not apply`, 'omit --class, or use a class-conditional model such as cin_transformer');
    }
    return cond.sosToken;
  }
  if (cond.kind === 'class') {
    if (classLabel === undefined) throw new UserError(`${prior.checkpoint} is class-conditional: name a class`, `pass --class N with N in 0..${cond.nClasses - 1}`);
    if (!Number.isInteger(classLabel) || classLabel < 0 || classLabel >= cond.nClasses) {
      throw new UserError(`class ${classLabel} is out of range: this model has ${cond.nClasses} classes`, `pass --class N with N in 0..${cond.nClasses - 1}`);
    }
    return classLabel;
  }
  throw new UserError(`${prior.checkpoint} is conditioned on ${cond.target}, which sampling does not support`, 'use a class-conditional or unconditional model');
}

/** What a prior is, from its files, before any weight is read: resolved paths, config, grid, permuter. */
export type PriorFiles = Pick<Prior<never>, 'checkpoint' | 'configFile' | 'config' | 'factor' | 'grid' | 'permuter'>;

/**
 * Resolves a Net2NetTransformer checkpoint (a file, or a folder holding one) and its YAML (found beside it when not
 * given) and checks the config, without reading weights.
 */
export function readPriorFiles(ckptPath: string, configPath?: string): PriorFiles {
  const checkpoint = resolveCheckpoint(ckptPath);
  const configFile = configPath ?? findConfig(checkpoint);
  if (!configFile) {
    throw new FormatError(checkpoint, 'no config found next to the checkpoint', `pass --config, or put the model's .yaml beside it as ${checkpoint.replace(/\.[^./]+$/, '')}.yaml`);
  }
  const tc = readTamingConfig(configFile);
  if (tc.kind !== 'transformer') {
    throw new FormatError(configFile, 'describes a VQGAN first stage, not a Net2NetTransformer: there is no prior to sample from', 'pass a transformer checkpoint and its config (e.g. cin_transformer, ffhq or celebahq transformer)');
  }
  const config = tc.model;
  if (config.cond.kind === 'other') {
    throw new FormatError(configFile, `conditions on ${config.cond.target}, which sampling does not support`, 'use a class-conditional (Labelator) or unconditional transformer');
  }
  const { gpt, firstStage } = config;
  const factor = downsamplingFactor(firstStage);
  const res = firstStage.ddconfig.resolution;
  if (res % factor) throw new FormatError(configFile, `first stage resolution ${res} is not a multiple of its downsampling factor ${factor}`);
  const grid: [number, number] = [res / factor, res / factor];
  const condMax = config.cond.kind === 'class' ? config.cond.nClasses - 1 : config.cond.sosToken;
  if (condMax >= gpt.vocabSize) throw new FormatError(configFile, `conditioning token ${condMax} does not fit the vocabulary of ${gpt.vocabSize}`);
  if (grid[0] * grid[1] > gpt.blockSize) {
    throw new FormatError(configFile, `the ${grid[0]}x${grid[1]} code grid needs ${grid[0] * grid[1]} positions but block_size is ${gpt.blockSize}`);
  }
  const permuter = makePermuter(config.permuter, grid[0], grid[1], configFile);
  return { checkpoint, configFile, config, factor, grid, permuter };
}

/**
 * Loads a Net2NetTransformer checkpoint (a file, or a folder holding one) with its YAML (found beside it when not
 * given): the GPT from `transformer.*` and the first stage's decoder from `first_stage_model.*`.
 */
export async function loadPrior<T>(o: Ops<T>, ckptPath: string | PriorFiles, configPath?: string): Promise<Prior<T>> {
  const files = typeof ckptPath === 'string' ? readPriorFiles(ckptPath, configPath) : ckptPath;
  const sd = await openStateDict(files.checkpoint);
  try {
    const wm = new WeightMap(files.checkpoint, sd.tensors);
    const gpt = gptWeights(o, wm.sub('transformer.'), files.config.gpt);
    const firstStage = vqganWeights(o, wm.sub('first_stage_model.'), files.config.firstStage, { encoder: false });
    return { ...files, gpt, firstStage };
  } finally {
    sd.close();
  }
}
