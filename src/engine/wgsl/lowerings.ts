// Every node kind's WGSL lowering, from the kernel modules (one per family), and which of its inputs it can read
// stored as f16 (kernel.ts HalfInputs). A kind defined by two modules is a mistake caught at import time rather than a
// silent override.
import type { HalfInputs, Lowerings } from './kernel.ts';
import { halfInputs as convHalf, lowerings as conv } from './kernels/conv.ts';
import { lowerings as elementwise } from './kernels/elementwise.ts';
import { halfInputs as fusedHalf, lowerings as fused } from './kernels/fused.ts';
import { lowerings as gather } from './kernels/gather.ts';
import { lowerings as layout } from './kernels/layout.ts';
import { halfInputs as matmulHalf, lowerings as matmul } from './kernels/matmul.ts';
import { lowerings as norm } from './kernels/norm.ts';
import { lowerings as random } from './kernels/random.ts';
import { lowerings as reduce } from './kernels/reduce.ts';
import { lowerings as resize } from './kernels/resize.ts';

export function mergeLowerings<T extends Lowerings | HalfInputs>(...tables: T[]): T {
  const all: Record<string, unknown> = {};
  for (const t of tables) {
    for (const [kind, lower] of Object.entries(t)) {
      if (all[kind]) throw new Error(`two kernel modules define ${kind} (lowerings or halfInputs)`);
      all[kind] = lower;
    }
  }
  return all as T;
}

export const lowerings: Lowerings = mergeLowerings(elementwise, fused, reduce, layout, gather, resize, matmul, conv, norm, random);

export const halfInputs: HalfInputs = mergeLowerings<HalfInputs>(convHalf, fusedHalf, matmulHalf);
