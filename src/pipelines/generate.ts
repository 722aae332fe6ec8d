// CLIP-guided latent optimisation: nerdyrodent/VQGAN-CLIP generate.py's train() loop, step by step.
//
//   synth(z)   = clamp_with_grad((decode(vector_quantize(z)) + 1) / 2, 0, 1)        (straight-through quantizer)
//   losses     = [init-weight pull] + [Prompt(encode_image(normalize(cutouts(synth(z)))))  for each prompt]
//   step       = Adam (or another optimiser) on sum(losses), then z clamped to the codebook's per-channel range
//
// Prompts are text (CLIP text embedding), image (CLIP embeddings of cutouts of the image) or noise (a random
// embedding); each contributes |w| * mean(replace_grad(d, max(d, stop))) with d = sign(w) * spherical distance.
// Several CLIP models can guide at once, each with its own weight, cut size and cutouts.
//
// ONE seed fixes everything: the initial latent (rng 'init'), each step's cutouts and augmentations (rng
// 'cutouts'/<model>/<step>), image-prompt cutouts ('image-prompt'/<i>). Because a step's randomness depends only on
// (seed, step), a run resumed from a saved state continues exactly as if it had never stopped.
import { UserError } from '../cli/errors.ts';
import { dataTensors, type Executor, type HostValue, type TrainingLoop } from '../engine/ops.ts';
import { encodeImagePixels, encodeText, inputResolution, sphericalDistance, type ClipConfig, type ClipWeights } from '../models/clip.ts';
import { decode, downsamplingFactor, encode, quantize, vectorQuantizeST, type VqganConfig, type VqganWeights } from '../models/vqgan.ts';
import { Rng } from '../util/rng.ts';
import { applyCutouts, drawCutouts, makeCutouts, type CutBox, type CutMethod, type CutoutConfig } from './cutouts.ts';
import { clampToRange, initialLatent, initWeightFactor, initWeightLoss, latentGrid, type InitKind } from './init.ts';
import { initialOptimizerState, optimizerHyper, optimizerScalars, optimizerStep, stateTensors, type OptimizerHyper, type OptimizerName, type OptimizerState } from './optimizers.ts';
import { prefixed, putPrefixed, type StepData } from './step-data.ts';
import { noisePromptEmbedding, parseNoisePrompt, parsePromptList, parseStory, storyPhraseAt, type PromptSpec } from './prompts.ts';

export interface Tokenizer {
  tokenize(texts: string[], opts?: { truncate?: boolean }): { ids: Int32Array; shape: [number, number] };
}

export interface GuideModel<T> {
  /** File name (or built-in name) as recorded in the output's metadata. */
  name: string;
  config: ClipConfig;
  weights: ClipWeights<T>;
  tokenizer: Tokenizer;
  /** Multiplies every loss this model computes (several CLIP models at once). */
  weight: number;
}

export interface ImageModel<T> {
  name: string;
  config: VqganConfig;
  weights: VqganWeights<T>;
}

/** Everything that determines the result, besides the model files (recorded in the PNG, replayed by --from). */
export interface GenerateSettings {
  /** Text prompts: 'text:weight:stop|...' with '^'-separated phrases of a story. */
  prompts: string;
  /** Image prompts 'path:weight:stop' (paths resolved by the caller into images). */
  imagePrompts: string[];
  /** Noise prompts 'seed:weight:stop'. */
  noisePrompts: string[];
  width: number;
  height: number;
  iterations: number;
  saveEvery: number;
  optimizer: OptimizerName;
  lr: number;
  cutn: number;
  cutPow: number;
  cutMethod: CutMethod;
  augments: string[];
  noiseFac: number;
  seed: number;
  /** 'prior': start from a sample of a taming transformer's GPT prior (the model is named in ModelChoice.prior). */
  init: InitKind | 'prior';
  initImage?: string;
  /** Sampling settings for init 'prior' (class label for class-conditional priors). */
  prior?: { classLabel?: number; topK?: number; topP?: number; temperature: number };
  initWeight: number;
  changePromptEvery: number;
}

export const DEFAULT_SETTINGS: Omit<GenerateSettings, 'prompts' | 'seed'> = {
  imagePrompts: [],
  noisePrompts: [],
  width: 256,
  height: 256,
  iterations: 300,
  saveEvery: 50,
  optimizer: 'Adam',
  lr: 0.1,
  cutn: 32,
  cutPow: 1,
  cutMethod: 'latest',
  augments: ['Af', 'Pe', 'Ji', 'Er'],
  noiseFac: 0.1,
  init: 'random-codes',
  initWeight: 0,
  changePromptEvery: 0,
};

/** An image in [0, 1], NHWC [1, H, W, 3], as host data (the caller writes it). */
export interface Picture {
  data: Float32Array;
  width: number;
  height: number;
}

interface Target<T> {
  spec: PromptSpec;
  /** Per guide model: the embeddings the distances are measured to, [M, D]. */
  embeds: T[];
}

export interface StepResult {
  iteration: number;
  /** Per prompt (in the order of `lossNames`), weighted as they enter the sum. */
  losses: number[];
  total: number;
}

export interface StepDebug<T> {
  /** Kept tensors of this step (the caller disposes them): the gradient w.r.t. z, cutouts and embeddings per model. */
  grad: T;
  cutouts: T[];
  imageEmbeds: T[];
}

/** The resumable state of a run: latent, optimiser buffers and the iteration reached. */
export interface GenerationState<T> {
  iteration: number;
  z: T;
  optimizer: OptimizerState<T>;
}

export interface GenerationOptions<T> {
  /** Resolved image prompts (NHWC [1, H, W, 3] in [0, 1]), one per settings.imagePrompts entry. */
  imagePromptImages?: T[];
  /** Init image resized to the output size (NHWC [1, H, W, 3] in [0, 1]) when settings.init is 'image'. */
  initImage?: T;
  /** Continue from a saved state instead of a fresh latent. */
  resume?: GenerationState<T>;
  /** Start from this latent (NHWC) instead of settings.init (e.g. a transformer-prior sample; tests). */
  initialZ?: T;
  /** Replace the random cutouts with fixed crop boxes (the 'original' cutter; reproducing reference runs). */
  fixedBoxes?: (iteration: number) => CutBox[];
}

export class Generation<T> {
  readonly sideX: number;
  readonly sideY: number;
  readonly lossNames: string[];
  private phrase = -1;
  private textTargets: Target<T>[] = [];
  private extraTargets: Target<T>[] = [];
  private z!: T;
  private opt!: OptimizerState<T>;
  private iter = 0;
  /** Compiled engines: the replayed step, and whether this.z / this.opt hold its current state. */
  private loop?: TrainingLoop;
  private zOnHost = true;
  private zMin!: T;
  private zMax!: T;
  private readonly story: PromptSpec[][];
  private readonly rng: Rng;

  private constructor(
    private readonly ex: Executor<T>,
    readonly vqgan: ImageModel<T>,
    readonly guides: GuideModel<T>[],
    readonly settings: GenerateSettings,
    private readonly options: GenerationOptions<T>,
  ) {
    const f = downsamplingFactor(vqgan.config);
    checkSettings(settings, f);
    const grid = latentGrid(settings.width, settings.height, f);
    this.sideX = grid.sideX;
    this.sideY = grid.sideY;
    this.rng = new Rng(settings.seed);
    this.story = settings.prompts.trim() ? parseStory(settings.prompts) : [[]];
    const extra = [...settings.imagePrompts.map((p) => parsePromptList(p, 'image')[0]), ...settings.noisePrompts.map((p) => parseNoisePrompt(p))];
    const longest = this.story.reduce((a, b) => (b.length > a.length ? b : a), []);
    this.lossNames = [...(settings.initWeight ? ['init weight'] : []), ...longest.map((p) => p.text), ...extra.map((p) => `${p.kind} ${p.text}`)];
    if (!this.story.some((ph) => ph.length) && extra.length === 0) {
      throw new UserError('no prompts given', 'pass a text prompt, e.g. vqclip generate "a watercolor lighthouse at dawn", or --image-prompts / --noise-prompts');
    }
  }

  /** Prepares a run: prompt embeddings, the initial latent (or the resumed state), the codebook range. */
  static async create<T>(ex: Executor<T>, vqgan: ImageModel<T>, guides: GuideModel<T>[], settings: GenerateSettings, options: GenerationOptions<T> = {}): Promise<Generation<T>> {
    if (guides.length === 0) throw new UserError('no CLIP model to guide the image', 'pass --clip FILE');
    const g = new Generation(ex, vqgan, guides, settings, options);
    await g.prepare();
    return g;
  }

  get iteration(): number {
    return this.iter;
  }

  private async prepare(): Promise<void> {
    const { ex, settings, vqgan } = this;
    const o = ex.ops;
    const w = vqgan.weights;
    this.zMin = w.zMin as T;
    this.zMax = w.zMax as T;
    // Image and noise prompts: fixed for the whole run.
    const imgs = this.options.imagePromptImages ?? [];
    if (imgs.length !== settings.imagePrompts.length) throw new Error('imagePromptImages must match settings.imagePrompts');
    settings.imagePrompts.forEach((source, i) => {
      const spec = parsePromptList(source, 'image')[0];
      const embeds = this.guides.map((m, mi) =>
        ex.keep(ex.scope(() => {
          // generate.py: the prompt image is cut like the output (make_cutouts) and every cutout is a target.
          const cuts = makeCutouts(o, imgs[i], this.cutoutConfig(m), this.rng.fork('image-prompt').fork(i).fork(mi));
          return encodeImagePixels(o, m.weights, m.config, cuts);
        })),
      );
      this.extraTargets.push({ spec, embeds });
    });
    for (const source of settings.noisePrompts) {
      const spec = parseNoisePrompt(source);
      const embeds = this.guides.map((m) => ex.keep(o.constant(noisePromptEmbedding(spec.seed, m.config.embedDim), [1, m.config.embedDim])));
      this.extraTargets.push({ spec, embeds });
    }
    // The latent.
    const resume = this.options.resume;
    if (resume) {
      this.z = ex.keep(resume.z);
      this.opt = resume.optimizer;
      this.iter = resume.iteration;
    } else {
      this.opt = initialOptimizerState<T>();
      if (this.options.initialZ) this.z = ex.keep(this.options.initialZ);
      else {
        const f = downsamplingFactor(vqgan.config);
        const { toksX, toksY } = latentGrid(settings.width, settings.height, f);
        if (settings.init === 'image' && !this.options.initImage) throw new UserError('--init image needs --init-image FILE');
        if (settings.init === 'prior') throw new UserError('--init prior needs --prior CKPT (a taming transformer checkpoint)');
        const z = await initialLatent(o, {
          kind: settings.init,
          codebook: w.codebook as T,
          toksX,
          toksY,
          f,
          rng: this.rng.fork('init'),
          image: this.options.initImage,
          encode: (img) => {
            if (!w.encoder) throw new UserError(`--init ${settings.init} needs the VQGAN encoder, which this model lacks`);
            return quantize(o, w, encode(o, w, img)).zq;
          },
        });
        this.z = ex.keep(z);
      }
    }
    await this.settleTargets(this.extraTargets);
    if (this.ex.settle) [this.z] = await this.ex.settle([this.z]);
    await this.usePhrase(storyPhraseAt(this.iter, settings.changePromptEvery, this.story.length));
  }

  /** Text prompts of the current story phrase: embedded once per phrase change. */
  private async usePhrase(index: number): Promise<void> {
    if (index === this.phrase) return;
    for (const t of this.textTargets) this.ex.dispose(t.embeds);
    const specs = this.story[index];
    this.textTargets = specs.map((spec) => ({
      spec,
      embeds: this.guides.map((m) => this.ex.keep(this.ex.scope(() => encodeText(this.ex.ops, m.weights, m.config, m.tokenizer.tokenize([spec.text], { truncate: true }))))),
    }));
    await this.settleTargets(this.textTargets);
    this.phrase = index;
  }

  /** On a compiled engine, prompt embeddings become values once instead of being recomputed by every step. */
  private async settleTargets(targets: Target<T>[]): Promise<void> {
    if (!this.ex.settle) return;
    for (const t of targets) t.embeds = await this.ex.settle(t.embeds);
  }

  private cutoutConfig(m: GuideModel<T>): CutoutConfig {
    const s = this.settings;
    // Fixed boxes are MakeCutoutsOrig's.
    const method = this.options.fixedBoxes ? 'original' : s.cutMethod;
    return { method, cutSize: inputResolution(m.config), cutn: s.cutn, cutPow: s.cutPow, augments: s.augments, noiseFac: s.noiseFac };
  }

  private get hyper(): OptimizerHyper {
    return optimizerHyper(this.settings.optimizer, { lr: this.settings.lr });
  }

  /**
   * Everything random or step-dependent of iteration i, drawn on the host (LoopSpec.data): per guide model its
   * cutouts' data ('cut<m>.'), the optimiser's step scalars ('opt.'), the init-weight factor.
   */
  private stepData(i: number): StepData {
    const out: StepData = {};
    if (this.settings.initWeight) out.initWeight = initWeightFactor(i, this.settings.initWeight);
    const image = { h: this.sideY, w: this.sideX, c: 3 };
    this.guides.forEach((m, mi) => {
      putPrefixed(out, drawCutouts(this.cutoutConfig(m), image, this.rng.fork('cutouts').fork(mi).fork(i), this.options.fixedBoxes?.(i)), `cut${mi}.`);
    });
    putPrefixed(out, optimizerScalars(this.hyper, this.opt.step + 1), 'opt.');
    return out;
  }

  /** synth(z): the image the latent decodes to, in [0, 1] (differentiable in z). */
  private synth(z: T): T {
    const o = this.ex.ops;
    const w = this.vqgan.weights;
    const zq = vectorQuantizeST(o, z, w.codebook as T);
    return o.clampWithGrad(o.scale(o.addScalar(decode(o, w, zq), 1), 0.5), 0, 1);
  }

  /** The per-prompt losses with a step's data (stepData), as a vector, plus what a debug caller wants to see. */
  private losses(z: T, d: Record<string, T>, debug?: { cutouts: T[]; imageEmbeds: T[] }): T {
    const o = this.ex.ops;
    const out: T[] = [];
    if (this.settings.initWeight) out.push(initWeightLoss(o, z, d.initWeight));
    const image = this.synth(z);
    const embedsPerModel = this.guides.map((m, mi) => {
      const cuts = applyCutouts(o, image, this.cutoutConfig(m), prefixed(d, `cut${mi}.`));
      const embeds = encodeImagePixels(o, m.weights, m.config, cuts);
      if (debug) {
        debug.cutouts.push(this.ex.keep(cuts));
        debug.imageEmbeds.push(this.ex.keep(embeds));
      }
      return embeds;
    });
    const targets = [...this.textTargets, ...this.extraTargets];
    for (const t of targets) {
      let sum: T | undefined;
      this.guides.forEach((m, mi) => {
        const l = o.scale(promptLoss(this.ex, embedsPerModel[mi], t.embeds[mi], t.spec.weight, t.spec.stop), m.weight);
        sum = sum ? o.add(sum, l) : l;
      });
      out.push(sum!);
    }
    return o.concat(out.map((l) => o.reshape(l, [1])), 0);
  }

  /**
   * One iteration of generate.py's train(i): losses, backward, optimiser step, clamp to the codebook range.
   * With `debug`, the gradient, cutouts and CLIP embeddings of the step are returned as kept tensors.
   */
  async step(debug = false): Promise<StepResult & { debug?: StepDebug<T> }> {
    const { ex } = this;
    const o = ex.ops;
    const i = this.iter;
    const phrase = this.phrase;
    await this.usePhrase(storyPhraseAt(i, this.settings.changePromptEvery, this.story.length));
    if (this.loop && this.phrase !== phrase) {
      // Other prompt embeddings: the compiled step is traced again, from the current state.
      await this.syncState();
      this.loop.destroy();
      this.loop = undefined;
    }
    if (ex.loop) return this.compiledStep(debug);
    const data = this.stepData(i);
    let lossVec!: T;
    const dbg = debug ? { cutouts: [] as T[], imageEmbeds: [] as T[] } : undefined;
    const { value, grad } = ex.valueAndGrad((z) => {
      lossVec = ex.keep(this.losses(z, dataTensors(o, data), dbg));
      return o.sum(lossVec);
    }, this.z);
    const next = ex.scope(() => {
      const r = optimizerStep(o, this.hyper, this.opt, this.z, grad, dataTensors(o, prefixed(data, 'opt.')));
      return { z: clampToRange(o, r.param, this.zMin, this.zMax), state: r.state };
    });
    ex.keep(next.z);
    for (const t of stateTensors(next.state)) ex.keep(t);
    const old = [this.z, ...stateTensors(this.opt)].filter((t) => t !== next.z && !stateTensors(next.state).includes(t));
    ex.dispose(old);
    this.z = next.z;
    this.opt = next.state;
    // One small readback per step: the per-prompt losses (the total is their sum).
    const losses = Array.from(await o.read(lossVec));
    const total = (await o.read(value))[0];
    ex.dispose([lossVec, value]);
    if (!debug) ex.dispose(grad);
    this.iter = i + 1;
    return { iteration: i, losses, total, debug: dbg ? { grad, ...dbg } : undefined };
  }

  /**
   * The same step on a compiled engine: the step (forward, gradient, optimiser, clamp) is planned once and replayed;
   * z and the optimiser's buffers stay on the GPU between steps. `debug` gives the gradient only.
   */
  private async compiledStep(debug: boolean): Promise<StepResult & { debug?: StepDebug<T> }> {
    const { ex } = this;
    const o = ex.ops;
    if (!this.loop) {
      const state: Record<string, HostValue> = { z: { data: await o.read(this.z), shape: o.shape(this.z) } };
      for (const [k, v] of Object.entries(this.opt.buffers)) if (v) state[k] = { data: await o.read(v), shape: o.shape(v) };
      const hyper = this.hyper;
      this.loop = ex.loop!(
        {
          wrt: 'z',
          readGrad: debug,
          data: () => this.stepData(this.iter),
          forward: (so, st, d) => {
            const lossVec = this.losses(st.z, d);
            return { loss: so.sum(lossVec), reads: { losses: lossVec } };
          },
          update: (so, st, grad, d) => {
            const { z, ...buffers } = st;
            const r = optimizerStep(so, hyper, { step: this.opt.step, buffers }, z, grad, prefixed(d, 'opt.'));
            const next: Record<string, T> = { z: clampToRange(so, r.param, this.zMin, this.zMax) };
            for (const [k, v] of Object.entries(r.state.buffers)) if (v) next[k] = v;
            return next;
          },
        },
        state,
      );
      this.zOnHost = false;
    }
    const i = this.iter;
    const r = await this.loop.step();
    this.opt = { step: this.opt.step + 1, buffers: this.opt.buffers };
    this.zOnHost = false;
    this.iter = i + 1;
    const grad = r.grad ? o.constant(r.grad, o.shape(this.z)) : undefined;
    return { iteration: i, losses: Array.from(r.reads.losses), total: r.loss, debug: debug ? { grad: grad!, cutouts: [], imageEmbeds: [] } : undefined };
  }

  /** Compiled engines: brings z and the optimiser's buffers from the GPU into this.z / this.opt (constants). */
  async syncState(): Promise<void> {
    if (!this.loop || this.zOnHost) return;
    const o = this.ex.ops;
    const st = await this.loop.readState();
    this.z = o.constant(st.z.data, st.z.shape);
    const buffers: OptimizerState<T>['buffers'] = {};
    for (const [k, v] of Object.entries(st)) if (k !== 'z') buffers[k as keyof OptimizerState<T>['buffers']] = o.constant(v.data, v.shape);
    this.opt = { step: this.opt.step, buffers };
    this.zOnHost = true;
  }

  /** The current image (synth(z)) as host data. */
  async picture(): Promise<Picture> {
    await this.syncState();
    const img = this.ex.scope(() => this.synth(this.z));
    const data = await this.ex.ops.read(img);
    this.ex.dispose(img);
    return { data, width: this.sideX, height: this.sideY };
  }

  /** The state to save for --resume (tensors owned by this generation: read them, don't dispose them). */
  state(): GenerationState<T> {
    return { iteration: this.iter, z: this.z, optimizer: this.opt };
  }

  /** The current latent (owned by this generation). */
  latent(): T {
    return this.z;
  }

  dispose(): void {
    this.loop?.destroy();
    this.ex.dispose([this.z, ...stateTensors(this.opt)]);
    for (const t of [...this.textTargets, ...this.extraTargets]) this.ex.dispose(t.embeds);
    this.textTargets = [];
    this.extraTargets = [];
  }
}

/**
 * nerdyrodent's Prompt.forward: d = sign(w) * spherical distance [N cutouts, M targets];
 * loss = |w| * mean(replace_grad(d, max(d, stop))): the value is w * mean(distance), and entries with d < stop pass
 * no gradient.
 */
export function promptLoss<T>(ex: Executor<T>, imageEmbeds: T, targetEmbeds: T, weight: number, stop: number): T {
  const o = ex.ops;
  const d = o.scale(sphericalDistance(o, imageEmbeds, targetEmbeds), Math.sign(weight));
  const gradPath = stop === -Infinity ? d : o.maximum(d, o.constant(Float32Array.of(stop), []));
  return o.scale(o.mean(o.straightThrough(d, gradPath)), Math.abs(weight));
}

/** Settings checks that would otherwise fail deep inside a run, each with the fix. */
export function checkSettings(s: GenerateSettings, f: number): void {
  const posInt = (v: number, name: string, min = 1) => {
    if (!Number.isInteger(v) || v < min) throw new UserError(`${name} must be an integer >= ${min} (got ${v})`);
  };
  posInt(s.width, '--size width', f);
  posInt(s.height, '--size height', f);
  for (const [side, v] of [
    ['width', s.width],
    ['height', s.height],
  ] as const) {
    if (v % f !== 0) {
      const lo = Math.max(f, Math.floor(v / f) * f);
      throw new UserError(`image ${side} ${v} is not a multiple of the VQGAN's downsampling factor ${f}`, `use ${lo} or ${lo + f}`);
    }
  }
  if (s.width * s.height > 4096 * 4096) throw new UserError(`--size ${s.width}x${s.height} is too large`, 'use at most 4096x4096 (typical: 256 to 1024 per side)');
  posInt(s.iterations, '--iterations', 0);
  posInt(s.saveEvery, '--save-every', 0);
  posInt(s.cutn, '--cutn');
  posInt(s.changePromptEvery, '--change-prompt-every', 0);
  if (!(s.lr > 0) || !Number.isFinite(s.lr)) throw new UserError(`--lr must be a positive number (got ${s.lr})`);
  if (!(s.cutPow > 0) || !Number.isFinite(s.cutPow)) throw new UserError(`--cut-pow must be a positive number (got ${s.cutPow})`);
  if (!(s.noiseFac >= 0)) throw new UserError(`--noise-fac must be >= 0 (got ${s.noiseFac})`);
  if (!Number.isFinite(s.initWeight) || s.initWeight < 0) throw new UserError(`--init-weight must be >= 0 (got ${s.initWeight})`);
}
