// randomNormal: one invocation per element, each computing its sample from the seed and its flat index with the
// generator of src/engine/random.ts (counter-based, so the launch shape does not matter).
import type { KernelLimits, KernelNode, Lowered, Lowerings } from '../kernel.ts';
import { RANDOM_NORMAL_WGSL } from '../../random.ts';
import { buffer, kernel1d, prod } from './common.ts';

function lowerRandomNormal(node: KernelNode<'randomNormal'>, limits: KernelLimits): Lowered {
  const seed = node.inputs[0];
  if (seed.dtype !== 'i32' || prod(seed.shape) !== 2 || node.output.dtype !== 'f32') {
    throw new Error(`randomNormal: seed i32 [2] -> f32 (got ${seed.dtype} [${seed.shape}] -> ${node.output.dtype})`);
  }
  const decls = `${buffer(0, 'seed', 'i32')}\n${buffer(1, 'y', 'f32', true)}\n${RANDOM_NORMAL_WGSL}`;
  const body = '  y[i] = random_normal(random_key(seed[0], seed[1]), i);';
  const k = kernel1d(decls, prod(node.output.shape), body, limits);
  return { dispatches: [{ ...k, bindings: [{ input: 0 }, { output: true }], label: `randomNormal [${node.output.shape}]` }] };
}

export const lowerings: Lowerings = { randomNormal: lowerRandomNormal };
