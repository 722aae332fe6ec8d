// Sampling code grids from the GPT prior of a Net2NetTransformer, and decoding them to images.
//
// One token per step, as taming's scripts/sample_fast.py (mingpt.sample_with_past) does: logits of the last
// position / temperature -> top-k -> top-p -> softmax -> draw (or argmax when greedy). Filters and the draw run on
// the host in float64 over one row of logits per sample; the draw uses a seeded stream per sample index
// (src/util/rng.ts), so a sample depends on (seed, index) only - not on the batch size, nor on any backend's
// random number generator (the same seed gives the same samples wherever the logits agree).
//
// Grids larger than the one the model was trained on (e.g. 32x32 codes for 512x512 from a 16x16 model) are
// sampled with taming's sliding window (scripts/sample_conditional.py): each new code sees the trained-size
// window of the grid placed around it (centred, clamped to the edges), flattened row by row, after the
// conditioning token. Consecutive steps in one window reuse the key/value cache; a moved window is recomputed.
//
// The GPT runs on tfjs (gptStep, its cache in growing tensors) or, given a compiled engine (SampleOptions.engine),
// as a compiled step over a fixed cache kept on the GPU (gptCachedStep: a one-token plan, and one prefill plan of
// the window's length for moved windows); each step uploads the tokens and positions and reads back one row of
// logits per sample. Filters and draws are the same host code, so a seed gives the same codes on both.
import * as tf from '@tensorflow/tfjs';
import type { CompiledEngine, CompiledStepper } from '../engine/compiled.ts';
import type { Sym } from '../engine/graph/trace.ts';
import type { HostValue, Ops } from '../engine/ops.ts';
import { UserError } from '../cli/errors.ts';
import {
  KV_CHUNK,
  cacheSlots,
  fixedKvShape,
  gptCachedStep,
  gptStep,
  condToken,
  kvTensors,
  type CacheSlots,
  type FixedKvCache,
  type GptConfig,
  type GptWeights,
  type KvCache,
  type Prior,
} from '../models/gpt.ts';
import { decodeIndices } from '../models/vqgan.ts';
import { Rng } from '../util/rng.ts';
import type { RgbImage } from '../io/image.ts';

// ---------------------------------------------------------------------------------------------------------------
// Logit filters (one row of logits over the vocabulary; -Infinity marks removed tokens).

/** logits / temperature, rounded to float32 as torch's division is. Applied before any filter. */
export function applyTemperature(logits: Float32Array, temperature: number): Float32Array {
  if (!(temperature > 0)) throw new UserError(`temperature must be > 0 (got ${temperature})`, 'pass --temperature 1 for the model as trained, lower for safer samples');
  if (temperature === 1) return logits.slice();
  const out = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] / temperature;
  return out;
}

/** The k-th largest value (k >= 1) of a row, by quickselect on a copy. */
function kthLargest(values: Float32Array, k: number): number {
  const a = Float32Array.from(values);
  let lo = 0;
  let hi = a.length - 1;
  const target = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = a[(lo + hi) >> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else return a[target];
  }
  return a[target];
}

/**
 * Top-k as taming's top_k_logits and transformers' TopKLogitsWarper: keep every logit >= the k-th largest (ties
 * with it are kept, so more than k may survive), set the rest to -Infinity. k is clamped to [1, vocab].
 */
export function topKLogits(logits: Float32Array, k: number): Float32Array {
  const kk = Math.min(Math.max(Math.floor(k), 1), logits.length);
  const out = logits.slice();
  if (kk === logits.length) return out;
  const v = kthLargest(logits, kk);
  for (let i = 0; i < out.length; i++) if (out[i] < v) out[i] = -Infinity;
  return out;
}

/**
 * Top-p (nucleus) as transformers' top_k_top_p_filtering of the 4.x era (taming's sample_with_past): sort
 * descending, cumulative softmax, remove tokens whose cumulative probability exceeds top_p, shifted right by one
 * so the token that crosses the threshold is kept; the top token is never removed. It runs even for top_p = 1.0
 * (where rounding can drop a far tail). Probabilities are float32 as in torch; the cumulative sum is accumulated
 * in double and rounded to float32, like torch's CPU cumsum.
 */
export function topPLogits(logits: Float32Array, topP: number): Float32Array {
  if (!(topP >= 0 && topP <= 1)) throw new UserError(`top-p must be in [0, 1] (got ${topP})`, 'pass --top-p 0.92, or 1 to keep the whole distribution');
  const out = logits.slice();
  const idx: number[] = [];
  for (let i = 0; i < logits.length; i++) if (logits[i] !== -Infinity) idx.push(i);
  // Stable descending order: equal logits keep index order.
  idx.sort((a, b) => logits[b] - logits[a] || a - b);
  const max = logits[idx[0]];
  let sum = 0;
  for (const i of idx) sum += Math.exp(logits[i] - max);
  const p = Math.fround(topP);
  let cum = 0;
  let removePrev = false; // shifted mask: position r is removed when position r-1 crossed the threshold
  for (let r = 0; r < idx.length; r++) {
    if (r > 0 && removePrev) out[idx[r]] = -Infinity;
    cum += Math.fround(Math.exp(logits[idx[r]] - max) / sum);
    removePrev = Math.fround(cum) > p;
  }
  return out;
}

export interface FilterOptions {
  /** Divides the logits first (default 1). */
  temperature?: number;
  /** Keep the k most likely tokens (ties kept); undefined = no top-k. */
  topK?: number;
  /** Nucleus filtering after top-k; undefined = none (1.0 still runs the filter, as the original does). */
  topP?: number;
}

/** temperature -> top-k -> top-p, the order of mingpt.sample_with_past. */
export function filterLogits(logits: Float32Array, opts: FilterOptions): Float32Array {
  let l = applyTemperature(logits, opts.temperature ?? 1);
  if (opts.topK !== undefined) l = topKLogits(l, opts.topK);
  if (opts.topP !== undefined) l = topPLogits(l, opts.topP);
  return l;
}

/** Softmax of a row in float64 (-Infinity -> probability 0). */
export function softmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  const out = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += out[i] = Math.exp(logits[i] - max);
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}

/** Index of the largest value (first on ties), as torch.topk(k=1) on the probabilities. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** Inverse-CDF draw from probabilities (summing to ~1) with u uniform in [0, 1). */
export function drawToken(probs: Float64Array, u: number): number {
  let total = 0;
  for (const p of probs) total += p;
  const target = u * total;
  let cum = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] <= 0) continue;
    cum += probs[i];
    last = i;
    if (cum > target) return i;
  }
  return last;
}

// ---------------------------------------------------------------------------------------------------------------
// The code grid: which sizes a prior can sample, and the sliding window.

/** The code grid [rows, cols] for an image size, checked against what the prior can produce. */
export function gridForSize<T>(prior: Prior<T>, width: number, height: number): [number, number] {
  const f = prior.factor;
  const [th, tw] = prior.grid;
  const trained = `${th * f}x${tw * f}`;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0 || width % f || height % f) {
    throw new UserError(`size ${width}x${height} is not a multiple of the model's downsampling factor ${f}`, `pick a size divisible by ${f} (this model was trained at ${trained})`);
  }
  const grid: [number, number] = [height / f, width / f];
  if (grid[0] < th || grid[1] < tw) {
    throw new UserError(
      `size ${width}x${height} is smaller than the ${trained} window the prior was trained on, so its sliding window cannot cover it`,
      `pick a size of at least ${trained} (larger sizes are sampled with a sliding window)`,
    );
  }
  if ((grid[0] !== th || grid[1] !== tw) && !/Identity/.test(prior.config.permuter)) {
    throw new UserError(
      `size ${width}x${height} needs the sliding window, which only works with the Identity permuter (this model uses ${prior.config.permuter})`,
      `sample at the trained size ${trained}`,
    );
  }
  return grid;
}

/** Start of the trained-size window along one axis for position i of n (taming's sample_conditional.py). */
export function windowStart(i: number, n: number, size: number): number {
  const half = Math.floor(size / 2);
  if (i <= half) return 0;
  if (n - i < half) return n - size;
  return i - half;
}

// ---------------------------------------------------------------------------------------------------------------
// Sampling.

export interface SampleOptions extends FilterOptions {
  /** Number of samples. */
  n: number;
  /** Class label for class-conditional priors (must be omitted for unconditional ones). */
  classLabel?: number;
  /** Code grid [rows, cols]; default the trained one. Use gridForSize() for an image size. */
  grid?: [number, number];
  /** Samples run together (default min(n, 8)). */
  batchSize?: number;
  /** Argmax instead of drawing (deterministic; for tests). */
  greedy?: boolean;
  /** Seed (default 0); sample i draws from stream `prior/i` of it. */
  seed?: number;
  /** Or the run's generator: sample i draws from its fork i (overrides seed). */
  rng?: Rng;
  /** Key/value cache chunk size (default defaultKvChunk()); tfjs only. */
  kvChunk?: number;
  /** Run the GPT on this compiled engine (the prior's weights must be its tensors); default tfjs. */
  engine?: CompiledEngine;
  /** Called after every code of a batch: codes done so far over all samples, and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** Rejects settings the filters cannot use, before any work. */
export function checkSampleOptions(opts: Partial<SampleOptions>): void {
  if (opts.n !== undefined && !(Number.isSafeInteger(opts.n) && opts.n >= 1)) throw new UserError(`the number of samples must be a whole number >= 1 (got ${opts.n})`, 'pass -n 8');
  if (opts.temperature !== undefined && !(opts.temperature > 0 && Number.isFinite(opts.temperature))) {
    throw new UserError(`temperature must be > 0 (got ${opts.temperature})`, 'pass --temperature 1 for the model as trained, lower for safer samples');
  }
  if (opts.topK !== undefined && !(Number.isSafeInteger(opts.topK) && opts.topK >= 1)) throw new UserError(`top-k must be a whole number >= 1 (got ${opts.topK})`, 'pass --top-k 250, or leave it out for no top-k');
  if (opts.topP !== undefined && !(opts.topP >= 0 && opts.topP <= 1)) throw new UserError(`top-p must be in [0, 1] (got ${opts.topP})`, 'pass --top-p 0.92, or 1 to keep the whole distribution');
}

interface Step {
  /** Identity of the context window; a step may reuse the cache of the previous one with the same key. */
  key: string;
  /** Tokens of the window before the new one (the context after the conditioning token), per sample. */
  context: (sample: Int32Array) => Int32Array;
  /** Where the drawn code goes in the sample's buffer. */
  at: number;
}

/** The step plan: sequence order on the trained grid (any permuter), sliding window on larger grids. */
function plan(grid: [number, number], trained: [number, number]): Step[] {
  const [H, W] = grid;
  const [th, tw] = trained;
  const steps: Step[] = [];
  if (H === th && W === tw) {
    for (let s = 0; s < H * W; s++) steps.push({ key: 'seq', context: (buf) => buf.subarray(0, s), at: s });
    return steps;
  }
  for (let i = 0; i < H; i++)
    for (let j = 0; j < W; j++) {
      const i0 = windowStart(i, H, th);
      const j0 = windowStart(j, W, tw);
      const p = (i - i0) * tw + (j - j0);
      steps.push({
        key: `${i0},${j0}`,
        context: (buf) => {
          const out = new Int32Array(p);
          for (let q = 0; q < p; q++) out[q] = buf[(i0 + Math.floor(q / tw)) * W + j0 + (q % tw)];
          return out;
        },
        at: i * W + j,
      });
    }
  return steps;
}

/**
 * The kv-cache chunk size for the current backend: GPUs copy fast but pay per op, so one chunk (the plain
 * concatenated cache, fewest ops per step); wasm and cpu copy element by element, so KV_CHUNK-token chunks.
 */
export function defaultKvChunk(cfg: GptConfig): number {
  const backend = tf.getBackend();
  return backend === 'webgpu' || backend === 'webgl' || backend === 'tensorflow' ? cfg.blockSize : KV_CHUNK;
}

/**
 * How sampleCodes runs the GPT: the logits [B, vocab] of each sample's last token, for tokens [B, t] (row-major)
 * that start a context at position 0 (fresh) or, t = 1, continue the previous call's context by one token.
 */
interface PriorDecoder {
  next(tokens: Int32Array, batch: number, fresh: boolean): Promise<Float32Array>;
  dispose(): void;
}

/** Frees the tensors of `old` that `next` does not share (all of them without `next`). */
function releaseCache(old: KvCache<tf.Tensor> | undefined, next?: KvCache<tf.Tensor>): void {
  const keep = new Set(kvTensors(next));
  tf.dispose(kvTensors(old).filter((x) => !keep.has(x)));
}

/** gptStep on tfjs, its cache in tensors that grow by one token per step. */
function tfjsDecoder(o: Ops<tf.Tensor>, prior: Prior<tf.Tensor>, kvChunk: number): PriorDecoder {
  let cache: KvCache<tf.Tensor> | undefined;
  return {
    async next(tokens, batch, fresh) {
      const old = cache;
      // tidy keeps what the step returns (logits and the new cache) and frees its intermediates.
      const r = tf.tidy(() =>
        gptStep(o, prior.config.gpt, prior.gpt, o.constantInt(tokens, [batch, tokens.length / batch]), fresh ? undefined : old, { lastOnly: true, kvChunk }),
      );
      releaseCache(old, r.cache);
      cache = r.cache;
      const logits = await o.read(r.logits);
      r.logits.dispose();
      return logits;
    },
    dispose: () => releaseCache(cache),
  };
}

/**
 * gptCachedStep on a compiled engine: one stepper per batch size (plans and the GPU cache kept across batches:
 * stale rows are masked), a one-token plan, and every fresh context of several tokens padded to `prefillRows`
 * (one prefill plan for all context lengths).
 */
function compiledDecoder(engine: CompiledEngine, cfg: GptConfig, w: GptWeights<Sym>, prefillRows: number): PriorDecoder {
  const steppers = new Map<number, { stepper: CompiledStepper; length: number }>();
  const L = w.blocks.length;
  const spec = {
    step: (o: Ops<Sym>, s: Record<string, Sym>, d: Record<string, Sym>) => {
      const cache: FixedKvCache<Sym> = Array.from({ length: L }, (_, i) => ({ k: s[`k${i}`], v: s[`v${i}`] }));
      const r = gptCachedStep(o, cfg, w, d.idx, d as unknown as CacheSlots<Sym>, cache);
      const next: Record<string, Sym> = {};
      r.cache.forEach((kv, i) => Object.assign(next, { [`k${i}`]: kv.k, [`v${i}`]: kv.v }));
      return { reads: { logits: r.logits }, next };
    },
  };
  return {
    async next(tokens, batch, fresh) {
      let s = steppers.get(batch);
      if (!s) {
        const shape = fixedKvShape(cfg, batch);
        const zeros: HostValue = { data: new Float32Array(shape.reduce((a, b) => a * b, 1)), shape };
        const state: Record<string, HostValue> = {};
        for (let i = 0; i < L; i++) state[`k${i}`] = state[`v${i}`] = zeros;
        steppers.set(batch, (s = { stepper: engine.stepper(spec, state), length: 0 }));
      }
      const t = tokens.length / batch;
      const start = fresh ? 0 : s.length;
      const rows = t === 1 ? 1 : prefillRows;
      let idx = tokens;
      if (rows > t) {
        idx = new Int32Array(batch * rows);
        for (let b = 0; b < batch; b++) idx.set(tokens.subarray(b * t, (b + 1) * t), b * rows);
      }
      const r = await s.stepper.run({ idx: { data: idx, shape: [batch, rows] }, ...cacheSlots(cfg, batch, start, t, rows) });
      s.length = start + t;
      return r.logits as Float32Array;
    },
    dispose: () => {
      for (const s of steppers.values()) s.stepper.destroy();
    },
  };
}

/**
 * Samples `n` code grids from the prior. Returns, per sample, the codes in raster order (row-major over the grid;
 * the permuter is undone), ready for the first stage's decoder.
 */
export async function sampleCodes<T>(o: Ops<T>, prior: Prior<T>, opts: SampleOptions): Promise<Int32Array[]> {
  checkSampleOptions(opts);
  const cond = condToken(prior, opts.classLabel);
  const grid = opts.grid ?? prior.grid;
  const total = grid[0] * grid[1];
  const steps = plan(grid, prior.grid);
  const cfg = prior.config.gpt;
  const V = cfg.vocabSize;
  const root = opts.rng ?? new Rng(opts.seed ?? 0).fork('prior');
  const batchSize = Math.max(1, Math.min(opts.batchSize ?? 8, opts.n));
  const results: Int32Array[] = [];
  // Only tokens that are codes can be drawn: a vocabulary larger than the codebook (never so in the released
  // models, where vocab_size == n_embed) has its extra rows left out, as if their logits were -inf.
  const nEmbed = prior.config.firstStage.nEmbed;
  // A context is the conditioning token and at most a window less one code.
  const decoder = opts.engine
    ? compiledDecoder(opts.engine, cfg, (prior as Prior<unknown> as Prior<Sym>).gpt, Math.min(cfg.blockSize, prior.grid[0] * prior.grid[1]))
    : tfjsDecoder(o as unknown as Ops<tf.Tensor>, prior as Prior<unknown> as Prior<tf.Tensor>, opts.kvChunk ?? defaultKvChunk(cfg));

  try {
    for (let first = 0; first < opts.n; first += batchSize) {
      const B = Math.min(batchSize, opts.n - first);
      const bufs = Array.from({ length: B }, () => new Int32Array(total));
      const rngs = Array.from({ length: B }, (_, b) => root.fork(first + b));
      let prevKey = '';
      let prevLen = -1;
      for (let s = 0; s < steps.length; s++) {
        const step = steps[s];
        const contexts = bufs.map(step.context);
        const len = contexts[0].length;
        let input: Int32Array;
        const reuse = s > 0 && step.key === prevKey && len === prevLen + 1;
        if (reuse) {
          input = Int32Array.from(contexts, (c) => c[len - 1]);
        } else {
          input = new Int32Array(B * (len + 1));
          contexts.forEach((c, b) => {
            input[b * (len + 1)] = cond;
            input.set(c, b * (len + 1) + 1);
          });
        }
        prevKey = step.key;
        prevLen = len;
        const logits = await decoder.next(input, B, !reuse);
        for (let b = 0; b < B; b++) {
          const row = logits.subarray(b * V, b * V + Math.min(V, nEmbed));
          const filtered = filterLogits(row, opts);
          bufs[b][step.at] = opts.greedy ? argmax(filtered) : drawToken(softmax(filtered), rngs[b].uniform());
        }
        opts.onProgress?.((first * total) + (s + 1) * B, opts.n * total);
      }
      const sequenceMode = steps[0].key === 'seq';
      for (const buf of bufs) results.push(sequenceMode ? prior.permuter.toRaster(buf) : buf);
    }
  } finally {
    decoder.dispose();
  }
  return results;
}

/** Decodes code grids [rows*cols] to RGB images in [0,1] with the prior's first stage, `batchSize` at a time. */
export async function decodeCodes<T>(o: Ops<T>, prior: Prior<T>, codes: Int32Array[], grid: [number, number], batchSize = 4): Promise<RgbImage[]> {
  const [H, W] = grid;
  const images: RgbImage[] = [];
  for (let first = 0; first < codes.length; first += batchSize) {
    const chunk = codes.slice(first, first + batchSize);
    const idx = new Int32Array(chunk.length * H * W);
    chunk.forEach((c, b) => idx.set(c, b * H * W));
    // tidy frees tfjs's intermediates (a compiled engine's are graph nodes: nothing to free).
    const img = tf.tidy(() => {
      const x = decodeIndices(o, prior.firstStage, o.constantInt(idx, [chunk.length * H * W]), [chunk.length, H, W]);
      // taming's decode_to_img output is in [-1, 1]; images are stored as (x + 1) / 2 clamped to [0, 1].
      return o.clamp(o.scale(o.addScalar(x, 1), 0.5), 0, 1) as unknown as tf.TensorContainer;
    }) as unknown as T;
    const data = await o.read(img);
    const [, h, w] = o.shape(img);
    if (img instanceof tf.Tensor) img.dispose();
    const per = h * w * 3;
    for (let b = 0; b < chunk.length; b++) images.push({ data: data.slice(b * per, (b + 1) * per), width: w, height: h });
  }
  return images;
}

/** sampleCodes + decodeCodes: n images of the grid's size (grid * factor pixels). */
export async function sampleImages<T>(
  o: Ops<T>,
  prior: Prior<T>,
  opts: SampleOptions,
): Promise<{ images: RgbImage[]; codes: Int32Array[]; grid: [number, number] }> {
  const grid = opts.grid ?? prior.grid;
  const codes = await sampleCodes(o, prior, { ...opts, grid });
  const images = await decodeCodes(o, prior, codes, grid);
  return { images, codes, grid };
}
