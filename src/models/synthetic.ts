// Weights made in code, deterministically from a seed: the built-in models of `vqclip demo` and the full-size
// random models the benchmarks time (speed does not depend on the values). They pass through the very same
// weight loaders as checkpoints do: SyntheticWeights answers every key a loader asks for with a tensor of exactly
// the shape it asks for, drawn from a stream named after the key (so one model's values never depend on the
// order in which keys are read), initialised the way PyTorch initialises such a layer.
import { FormatError, type HostTensor } from '../formats/host-tensor.ts';
import { Rng } from '../util/rng.ts';
import { WeightMap } from './weights.ts';

export type InitRule = (key: string, shape: number[]) => { kind: 'normal' | 'uniform'; mean: number; std: number } | { kind: 'constant'; value: number };

/** PyTorch-like defaults by parameter name: norms at 1, biases at 0, weights N(0, 1/fan_in), embeddings small. */
export function defaultInit(key: string, shape: number[]): ReturnType<InitRule> {
  const name = key.split('.').pop()!;
  if (key === 'logit_scale') return { kind: 'constant', value: Math.log(1 / 0.07) };
  if (/(^|\.)(norm\w*|ln_\w+|ln_f|ln\d)\.weight$/.test(key) || /layer_?norm\d*\.weight$/.test(key)) return { kind: 'constant', value: 1 };
  if (name === 'bias' || name === 'in_proj_bias') return { kind: 'constant', value: 0 };
  if (/positional_embedding|pos_emb/.test(key)) return { kind: 'normal', mean: 0, std: 0.01 };
  if (/class_embedding/.test(key)) return { kind: 'normal', mean: 0, std: shape[0] ** -0.5 };
  if (/token_embedding|tok_emb/.test(key)) return { kind: 'normal', mean: 0, std: 0.02 };
  if (/quantize\.(embedding|embed)\.weight/.test(key)) return { kind: 'normal', mean: 0, std: 1 };
  // visual.proj / text_projection are stored [in, out] (used as x @ P); every other matrix is [out, in, ...].
  const fanIn = /(^|\.)proj$|text_projection$/.test(key) ? shape[0] : shape.slice(1).reduce((a, b) => a * b, 1);
  return { kind: 'normal', mean: 0, std: 1 / Math.sqrt(Math.max(1, fanIn)) };
}

export class SyntheticWeights extends WeightMap {
  constructor(
    readonly seed: number,
    readonly init: InitRule = defaultInit,
    private readonly keyPrefix = '',
    name = `<built-in weights, seed ${seed}>`,
  ) {
    super(name, new Map());
  }

  override sub(prefix: string): WeightMap {
    return new SyntheticWeights(this.seed, this.init, this.keyPrefix + prefix, this.file);
  }

  override has(): boolean {
    return true;
  }

  override keys(): string[] {
    return [];
  }

  override get(key: string, shape?: number[]): HostTensor {
    if (!shape || shape.some((d) => d < 0)) throw new FormatError(this.file, `cannot make "${key}" without its full shape`);
    const full = this.keyPrefix + key;
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const rule = this.init(full, shape);
    if (rule.kind === 'constant') data.fill(rule.value);
    else {
      const rng = new Rng(this.seed).fork(full);
      if (rule.kind === 'normal') rng.fillNormal(data, rule.mean, rule.std);
      else rng.fillUniform(data, rule.mean - rule.std, rule.mean + rule.std);
    }
    return { dtype: 'float32', shape: [...shape], data };
  }
}
