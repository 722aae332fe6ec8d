// Step data: the named host arrays a step draws (crop indices, warp matrices, seeds, step scalars; see
// LoopSpec.data in engine/ops.ts), built by the draw* functions of the pipelines and read back, as tensors, by their
// apply* counterparts. Names are paths ('cut0.aug.warp0.s1.m4'): each drawing function puts its part under a prefix,
// and the applying function takes it back out.
import type { HostData } from '../engine/ops.ts';

export type StepData = Record<string, HostData>;

/** Copies the entries of `d` into `out` under `prefix`. */
export function putPrefixed(out: StepData, d: StepData, prefix: string): void {
  for (const [k, v] of Object.entries(d)) out[`${prefix}${k}`] = v;
}

/** The entries of `d` whose names start with `prefix`, without it. */
export function prefixed<T>(d: Record<string, T>, prefix: string): Record<string, T> {
  const out: Record<string, T> = {};
  for (const [k, v] of Object.entries(d)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

/** The step data's entry `key`, or an error naming what is missing (data drawn for other settings). */
export function need<T>(d: Record<string, T>, key: string): T {
  const v = d[key];
  if (v === undefined) throw new Error(`step data has no '${key}' (drawn for other settings?)`);
  return v;
}
