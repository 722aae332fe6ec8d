// The op vocabulary every model is written against. Models are pure functions of (ops, weights, inputs): they never
// call TensorFlow.js directly, so the same definition runs on the tfjs engine (the reference, on every tfjs backend)
// and on other executors that implement this interface (e.g. a recorder that plans WebGPU dispatches).
//
// Conventions (chosen once, for every executor):
// - images and feature maps are NHWC (channels last); conv weights are HWIO [kh, kw, cin, cout];
// - linear weights are [in, out] (PyTorch's [out, in] transposed at load time), so linear(x) = x @ W + b;
// - sequences are [batch, tokens, channels]; attention inputs are [batch, heads, tokens, headDim];
// - every floating point tensor is float32; index tensors are int32.

export type Padding = 'same' | 'valid' | [top: number, bottom: number, left: number, right: number];

export interface Conv2dOptions {
  stride?: number;
  pad?: Padding;
}

export interface AttentionOptions {
  /** Multiplies q k^T before the softmax; default 1/sqrt(headDim). */
  scale?: number;
  /** Query i may only see keys j <= i + (keys - queries) (causal, aligned to the end for cached decoding). */
  causal?: boolean;
}

export interface ResizeOptions {
  mode: 'bilinear' | 'bicubic';
  /** PyTorch's align_corners; false = half-pixel centres. */
  alignCorners: boolean;
}

export interface Ops<T> {
  readonly name: string;

  // Creating and reading tensors.
  constant(data: Float32Array, shape: number[]): T;
  constantInt(data: Int32Array, shape: number[]): T;
  zeros(shape: number[]): T;
  shape(x: T): number[];
  read(x: T): Promise<Float32Array>;
  readInt(x: T): Promise<Int32Array>;

  // Layout.
  reshape(x: T, shape: number[]): T;
  transpose(x: T, perm: number[]): T;
  concat(xs: T[], axis: number): T;
  slice(x: T, begin: number[], size: number[]): T;
  pad(x: T, paddings: [number, number][], value?: number): T;
  /** Repeats each pixel 2x2 (nearest-neighbour upsampling by 2, NHWC). */
  upsampleNearest2x(x: T): T;
  resize(x: T, height: number, width: number, opts: ResizeOptions): T;

  // Elementwise (numpy broadcasting).
  add(a: T, b: T): T;
  sub(a: T, b: T): T;
  mul(a: T, b: T): T;
  div(a: T, b: T): T;
  scale(x: T, s: number): T;
  addScalar(x: T, s: number): T;
  neg(x: T): T;
  exp(x: T): T;
  log(x: T): T;
  sqrt(x: T): T;
  square(x: T): T;
  abs(x: T): T;
  sign(x: T): T;
  asin(x: T): T;
  sigmoid(x: T): T;
  maximum(a: T, b: T): T;
  minimum(a: T, b: T): T;
  clamp(x: T, lo: number, hi: number): T;
  /** Largest integer <= x, elementwise. Its gradient is zero. */
  floor(x: T): T;
  /** float32 -> int32, truncating toward zero (for index arithmetic: pass integer values in int32 range). No gradient. */
  toInt(x: T): T;
  /**
   * Standard normal samples of `shape`, a pure function of `seed` (int32 [2]) and the element index: the same seed
   * gives the same numbers on every engine (up to float32 rounding of log/cos/sqrt; the generator is random.ts's).
   * No gradient.
   */
  randomNormal(seed: T, shape: number[]): T;

  // Activations.
  swish(x: T): T;
  /** Exact GELU with erf (minGPT's nn.GELU). */
  gelu(x: T): T;
  /** x * sigmoid(1.702 x) (CLIP). */
  quickGelu(x: T): T;

  // Reductions.
  sum(x: T, axes?: number[], keepDims?: boolean): T;
  mean(x: T, axes?: number[], keepDims?: boolean): T;
  argmin(x: T, axis: number): T;
  argmax(x: T, axis: number): T;
  softmax(x: T): T;

  // Layers.
  matmul(a: T, b: T, transposeA?: boolean, transposeB?: boolean): T;
  linear(x: T, weight: T, bias?: T): T;
  conv2d(x: T, weight: T, bias: T | undefined, opts?: Conv2dOptions): T;
  groupNorm(x: T, groups: number, gamma: T, beta: T, eps: number): T;
  layerNorm(x: T, gamma: T, beta: T, eps: number): T;
  attention(q: T, k: T, v: T, opts?: AttentionOptions): T;
  /** Rows of `table` [N, D] at int32 `indices` [M] -> [M, D], differentiable w.r.t. the table. */
  gatherRows(table: T, indices: T): T;
  oneHot(indices: T, depth: number): T;

  // Gradient routing (the pieces autograd frameworks lack).
  /** Value of `value`, gradient passed unchanged to `gradTarget` (straight-through estimator, ReplaceGrad). */
  straightThrough(value: T, gradTarget: T): T;
  stopGradient(x: T): T;
  /** clamp whose gradient passes outside the range only when descent points back inside (ClampWithGrad). */
  clampWithGrad(x: T, lo: number, hi: number): T;

  // Memory.
  /**
   * fn(x), computed so that fn's intermediate tensors are freed at once and not held for a backward pass; the
   * gradient w.r.t. x recomputes fn (gradient checkpointing: one more forward of fn, memory of one block instead
   * of the whole network). Tensors fn captures (weights) get no gradient through it. Optional: an executor without
   * memory pressure may omit it, and callers then use fn(x) directly.
   */
  checkpoint?(fn: (x: T) => T, x: T): T;
}

/**
 * What a pipeline needs from an engine besides the ops: gradients and tensor lifetimes. The tfjs executor uses
 * tfjs autodiff and tidy(); a compiled executor derives the gradient on its plan.
 */
export interface Executor<T> {
  readonly ops: Ops<T>;
  /** f(x) (a scalar) and its gradient w.r.t. x; tensors f makes are freed unless kept. */
  valueAndGrad(f: (x: T) => T, x: T): { value: T; grad: T };
  /** Runs f and frees every tensor it made except those it returns (and those kept). */
  scope<R>(f: () => R): R;
  /** Exempts a tensor from the enclosing scope's cleanup. */
  keep<R extends T>(x: R): R;
  dispose(xs: T | readonly T[]): void;
  /**
   * Compiled engines: computes xs now and returns tensors holding their values that depend on nothing else, so that
   * later work starts from them instead of recomputing them (prompt embeddings, the starting latent). Absent on
   * eager engines, where every tensor already is a value.
   */
  settle?(xs: T[]): Promise<T[]>;
  /** Compiled engines: a training step planned once and replayed (see LoopSpec). */
  loop?(spec: LoopSpec<T>, state: Record<string, HostValue>): TrainingLoop;
}

export interface HostValue {
  data: Float32Array;
  shape: number[];
}

/** Host data of a float32 or int32 tensor (a step's data, see LoopSpec.data). */
export interface HostData {
  data: Float32Array | Int32Array;
  shape: number[];
}

/** Named host data as tensors of `o` (constants): how an eager engine feeds a step's data to its functions. */
export function dataTensors<T>(o: Ops<T>, data: Record<string, HostData>): Record<string, T> {
  const out: Record<string, T> = {};
  for (const [k, v] of Object.entries(data)) out[k] = v.data instanceof Int32Array ? o.constantInt(v.data, v.shape) : o.constant(v.data, v.shape);
  return out;
}

/** One training step for a compiled engine: a forward with a scalar loss, differentiated w.r.t. state[wrt], and the update. */
export interface LoopSpec<T> {
  wrt: string;
  /**
   * The step's data: everything that changes from step to step besides the state (crop indices, warp parameters,
   * random seeds, step-dependent scalars), made on the host without running any op. It is called once per step;
   * forward and update receive it as tensors. With it, a compiled loop traces forward and update once and each step
   * only uploads this data (and traces again when its names, shapes or dtypes change). Without it, every step re-runs
   * forward and update on a replay recorder to collect the constants that changed (slower: the functions' host time).
   */
  data?(): Record<string, HostData>;
  /** The loss and the values to read back after each step (e.g. the per-prompt losses). */
  forward(o: Ops<T>, state: Record<string, T>, data: Record<string, T>): { loss: T; reads: Record<string, T> };
  /** The next state; it may add keys (an optimiser's buffers appear after its first step). */
  update(o: Ops<T>, state: Record<string, T>, grad: T, data: Record<string, T>): Record<string, T>;
  /** Also read the gradient back each step (tests). */
  readGrad?: boolean;
}

/**
 * A stateful step without gradient (sampling with a key/value cache): reads and the next state from the state and
 * the step's data. The next state has the state's keys and shapes. A compiled engine keeps the state on the GPU
 * from step to step and plans the step once per shape of the data (CompiledEngine.stepper).
 */
export interface StepSpec<T> {
  step(o: Ops<T>, state: Record<string, T>, data: Record<string, T>): { reads: Record<string, T>; next: Record<string, T> };
}

export interface TrainingLoop {
  /** Runs one step (see LoopSpec.data for what is re-run on the host). */
  step(): Promise<{ loss: number; reads: Record<string, Float32Array>; grad?: Float32Array }>;
  /** The state after the last step, on the host. */
  readState(): Promise<Record<string, HostValue>>;
  destroy(): void;
}
