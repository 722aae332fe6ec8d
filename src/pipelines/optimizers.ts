// The optimisers of generate.py (torch.optim, PyTorch 1.13 single-tensor code paths, the ones used for a CPU tensor
// and by default for one CUDA tensor), as pure functions over the op vocabulary:
//
//   let state = initialOptimizerState<T>();
//   ({ param: z, state } = optimizerStep(o, hp, state, z, grad));   // caller keeps/disposes tensors
//
// Every update uses PyTorch's formula and operation order, with each Python scalar rounded to float32 as torch does
// for a float32 tensor (e.g. Adam: m = b1 m + (1-b1) g; v = b2 v + ((1-b2) g) g; denom = sqrt(v) / sqrt(1-b2^t) + eps;
// p = p + (-lr/(1-b1^t)) m / denom). Buffers start at zero at the first step, as torch's lazily created state.
// Not included: generate.py's torch_optimizer DiffGrad, AdamP, RAdam (third-party package) and Lion.
import { UserError } from '../cli/errors.ts';
import { dataTensors, type HostData, type Ops } from '../engine/ops.ts';

export const OPTIMIZERS = ['Adam', 'AdamW', 'Adagrad', 'Adamax', 'RMSprop', 'SGD'] as const;
export type OptimizerName = (typeof OPTIMIZERS)[number];

export interface OptimizerHyper {
  name: OptimizerName;
  lr: number;
  /** Adam, AdamW, Adamax. */
  betas: [number, number];
  eps: number;
  /** L2 penalty added to the gradient (AdamW: decoupled decay of the parameter). */
  weightDecay: number;
  /** Adam, AdamW. */
  amsgrad: boolean;
  /** Adagrad. */
  lrDecay: number;
  initialAccumulatorValue: number;
  /** RMSprop smoothing constant. */
  alpha: number;
  /** RMSprop, SGD. */
  momentum: number;
  centered: boolean;
  /** SGD. */
  dampening: number;
  nesterov: boolean;
  /** Ascend instead of descend. */
  maximize: boolean;
}

/** torch 1.13 defaults per optimiser (SGD has no default lr in torch: generate.py always passes --lr). */
export function optimizerDefaults(name: OptimizerName): OptimizerHyper {
  const base: OptimizerHyper = {
    name,
    lr: 1e-3,
    betas: [0.9, 0.999],
    eps: 1e-8,
    weightDecay: 0,
    amsgrad: false,
    lrDecay: 0,
    initialAccumulatorValue: 0,
    alpha: 0.99,
    momentum: 0,
    centered: false,
    dampening: 0,
    nesterov: false,
    maximize: false,
  };
  switch (name) {
    case 'Adam':
      return base;
    case 'AdamW':
      return { ...base, weightDecay: 1e-2 };
    case 'Adagrad':
      return { ...base, lr: 1e-2, eps: 1e-10 };
    case 'Adamax':
      return { ...base, lr: 2e-3 };
    case 'RMSprop':
      return { ...base, lr: 1e-2 };
    case 'SGD':
      return { ...base, lr: 0.1 };
  }
}

/** Case-insensitive optimiser name (--optimiser), or a UserError listing the choices. */
export function parseOptimizerName(text: string): OptimizerName {
  const found = OPTIMIZERS.find((n) => n.toLowerCase() === text.trim().toLowerCase());
  if (found) return found;
  throw new UserError(`unknown optimiser '${text}'`, `choose one of ${OPTIMIZERS.join(', ')}`);
}

/** Defaults for `name` overridden by `overrides`, checked the way torch's constructors check them. */
export function optimizerHyper(name: OptimizerName, overrides: Partial<Omit<OptimizerHyper, 'name'>> = {}): OptimizerHyper {
  const defined = Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined));
  const hp: OptimizerHyper = { ...optimizerDefaults(name), ...defined, name };
  const bad = (what: string, fix: string) => {
    throw new UserError(`${name}: ${what}`, fix);
  };
  if (!(hp.lr >= 0 && Number.isFinite(hp.lr))) bad(`invalid learning rate ${hp.lr}`, 'use a learning rate >= 0, e.g. --lr 0.1');
  if (!(hp.eps >= 0)) bad(`invalid eps ${hp.eps}`, 'use eps >= 0');
  if (!(hp.weightDecay >= 0)) bad(`invalid weight decay ${hp.weightDecay}`, 'use a weight decay >= 0');
  for (const b of hp.betas) if (!(b >= 0 && b < 1)) bad(`invalid beta ${b}`, 'betas must lie in [0, 1)');
  if (!(hp.alpha >= 0)) bad(`invalid alpha ${hp.alpha}`, 'use alpha >= 0');
  if (!(hp.momentum >= 0)) bad(`invalid momentum ${hp.momentum}`, 'use momentum >= 0');
  if (!(hp.lrDecay >= 0)) bad(`invalid lr decay ${hp.lrDecay}`, 'use lr decay >= 0');
  if (!(hp.initialAccumulatorValue >= 0)) bad(`invalid initial accumulator value ${hp.initialAccumulatorValue}`, 'use a value >= 0');
  if (hp.nesterov && (hp.momentum <= 0 || hp.dampening !== 0)) bad('Nesterov momentum requires a momentum and zero dampening', 'set momentum > 0 and dampening 0');
  return hp;
}

/** Step count (torch's state['step']) and the per-parameter buffers, absent until the first step. */
export interface OptimizerState<T> {
  step: number;
  buffers: Partial<Record<'expAvg' | 'expAvgSq' | 'maxExpAvgSq' | 'sum' | 'expInf' | 'squareAvg' | 'gradAvg' | 'momentum', T>>;
}

export function initialOptimizerState<T>(): OptimizerState<T> {
  return { step: 0, buffers: {} };
}

/** The tensors held by a state (to keep or dispose them). */
export function stateTensors<T>(state: OptimizerState<T>): T[] {
  // A set: AMSGrad's first step keeps one tensor under two names.
  return [...new Set(Object.values(state.buffers).filter((t): t is T => t !== undefined))];
}

/**
 * The values of step number `step` (1 = the first) that change with the step count, as step data for optimizerStep:
 * tensors rather than op parameters, so that a compiled step stays one plan and only uploads them. On tfjs the two
 * are the same multiplication.
 */
export function optimizerScalars(hp: OptimizerHyper, step: number): Record<string, HostData> {
  const one = (x: number): HostData => ({ data: Float32Array.of(x), shape: [] });
  const [b1, b2] = hp.betas;
  switch (hp.name) {
    case 'Adam':
    case 'AdamW':
      return { biasCorrection2: one(Math.sqrt(1 - b2 ** step)), stepSize: one(-hp.lr / (1 - b1 ** step)) };
    case 'Adagrad':
      return { stepSize: one(-hp.lr / (1 + (step - 1) * hp.lrDecay)) };
    case 'Adamax':
      return { stepSize: one(-hp.lr / (1 - b1 ** step)) };
    case 'RMSprop':
    case 'SGD':
      return {};
  }
}

/**
 * One optimiser step for one parameter tensor: returns the new parameter and state (new tensors; the inputs are not
 * modified or disposed). `scalars`: optimizerScalars(hp, state.step + 1) as tensors (made here when not given).
 */
export function optimizerStep<T>(o: Ops<T>, hp: OptimizerHyper, state: OptimizerState<T>, param: T, grad: T, scalars?: Record<string, T>): { param: T; state: OptimizerState<T> } {
  const step = state.step + 1;
  const given = scalars ?? dataTensors(o, optimizerScalars(hp, step));
  const scalar = (name: string): T => {
    const v = given[name];
    if (v === undefined) throw new Error(`optimizer ${hp.name}: no step scalar '${name}'`);
    return v;
  };
  const prev = state.buffers;
  let g = hp.maximize ? o.neg(grad) : grad;

  switch (hp.name) {
    case 'Adam':
    case 'AdamW': {
      const [b1, b2] = hp.betas;
      let p = param;
      if (hp.name === 'AdamW') {
        if (hp.lr * hp.weightDecay !== 0) p = o.scale(p, 1 - hp.lr * hp.weightDecay);
      } else if (hp.weightDecay !== 0) g = o.add(g, o.scale(param, hp.weightDecay));
      const expAvg = ema(o, prev.expAvg, b1, o.scale(g, 1 - b1));
      const expAvgSq = ema(o, prev.expAvgSq, b2, o.mul(o.scale(g, 1 - b2), g));
      const buffers: OptimizerState<T>['buffers'] = { expAvg, expAvgSq };
      let second = expAvgSq;
      if (hp.amsgrad) {
        second = buffers.maxExpAvgSq = prev.maxExpAvgSq ? o.maximum(prev.maxExpAvgSq, expAvgSq) : expAvgSq;
      }
      const denom = o.addScalar(o.div(o.sqrt(second), scalar('biasCorrection2')), hp.eps);
      return { param: o.add(p, o.div(o.mul(expAvg, scalar('stepSize')), denom)), state: { step, buffers } };
    }
    case 'Adagrad': {
      if (hp.weightDecay !== 0) g = o.add(g, o.scale(param, hp.weightDecay));
      const gg = o.mul(g, g);
      const start = prev.sum ?? (hp.initialAccumulatorValue !== 0 ? o.addScalar(o.zeros(o.shape(param)), hp.initialAccumulatorValue) : undefined);
      const sum = start ? o.add(start, gg) : gg;
      const std = o.addScalar(o.sqrt(sum), hp.eps);
      return { param: o.add(param, o.div(o.mul(g, scalar('stepSize')), std)), state: { step, buffers: { sum } } };
    }
    case 'Adamax': {
      const [b1, b2] = hp.betas;
      if (hp.weightDecay !== 0) g = o.add(g, o.scale(param, hp.weightDecay));
      const expAvg = ema(o, prev.expAvg, b1, o.scale(g, 1 - b1));
      const bound = o.addScalar(o.abs(g), hp.eps);
      // First step: max(0 * b2, |g| + eps) = |g| + eps.
      const expInf = prev.expInf ? o.maximum(o.scale(prev.expInf, b2), bound) : bound;
      return { param: o.add(param, o.div(o.mul(expAvg, scalar('stepSize')), expInf)), state: { step, buffers: { expAvg, expInf } } };
    }
    case 'RMSprop': {
      const a = hp.alpha;
      if (hp.weightDecay !== 0) g = o.add(g, o.scale(param, hp.weightDecay));
      const squareAvg = ema(o, prev.squareAvg, a, o.mul(o.scale(g, 1 - a), g));
      const buffers: OptimizerState<T>['buffers'] = { squareAvg };
      let avg: T;
      if (hp.centered) {
        const gradAvg = (buffers.gradAvg = ema(o, prev.gradAvg, a, o.scale(g, 1 - a)));
        avg = o.sqrt(o.add(squareAvg, o.mul(o.neg(gradAvg), gradAvg)));
      } else avg = o.sqrt(squareAvg);
      avg = o.addScalar(avg, hp.eps);
      if (hp.momentum > 0) {
        const ratio = o.div(g, avg);
        const buf = (buffers.momentum = prev.momentum ? o.add(o.scale(prev.momentum, hp.momentum), ratio) : ratio);
        return { param: o.add(param, o.scale(buf, -hp.lr)), state: { step, buffers } };
      }
      return { param: o.add(param, o.div(o.scale(g, -hp.lr), avg)), state: { step, buffers } };
    }
    case 'SGD': {
      let d = hp.weightDecay !== 0 ? o.add(g, o.scale(param, hp.weightDecay)) : g;
      const buffers: OptimizerState<T>['buffers'] = {};
      if (hp.momentum !== 0) {
        // torch starts the buffer as a copy of the first gradient (no dampening on that step).
        const buf = (buffers.momentum = prev.momentum ? o.add(o.scale(prev.momentum, hp.momentum), o.scale(d, 1 - hp.dampening)) : o.scale(d, 1));
        d = hp.nesterov ? o.add(d, o.scale(buf, hp.momentum)) : buf;
      }
      return { param: o.add(param, o.scale(d, -hp.lr)), state: { step, buffers } };
    }
  }
}

/** prev * decay + update (torch's mul_(decay).add_(...)); at the first step prev is zero, so it is `update`. */
function ema<T>(o: Ops<T>, prev: T | undefined, decay: number, update: T): T {
  return prev ? o.add(o.scale(prev, decay), update) : update;
}
