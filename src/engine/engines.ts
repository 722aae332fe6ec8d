// Which engine runs the models: tfjs (op by op on the chosen tfjs backend: the reference, and the only engine on
// CPUs) or compiled (the graph planned once into WGSL dispatches and replayed: WebGPU only). `auto` takes compiled
// on webgpu and tfjs elsewhere. `--precision f16` (compiled only) stores the large weights as halves, `--recompute`
// trades one more forward of the checkpointed blocks per step for memory (compiled.ts).
import { UserError } from '../cli/errors.ts';
import type { BackendReport } from './backend.ts';
import { CompiledEngine, PRECISIONS, type Precision } from './compiled.ts';
import type { Executor } from './ops.ts';
import { tfExecutor } from './tfjs-ops.ts';
import { currentWebGPU } from './webgpu.ts';

export const ENGINE_CHOICES = ['auto', 'tfjs', 'compiled'] as const;
export type EngineChoice = (typeof ENGINE_CHOICES)[number];

export interface ChosenEngine {
  name: 'tfjs' | 'compiled';
  // The pipelines are generic in the tensor type; each engine brings its own.
  ex: Executor<unknown>;
  /** The compiled engine, for its statistics. */
  compiled?: CompiledEngine;
  destroy(): void;
}

export function parseEngine(text: string | undefined): EngineChoice {
  const v = (text ?? process.env.VQCLIP_ENGINE ?? 'auto').trim().toLowerCase();
  const found = ENGINE_CHOICES.find((e) => e === v);
  if (!found) throw new UserError(`unknown engine '${text}'`, `choose one of ${ENGINE_CHOICES.join(', ')}`);
  return found;
}

export function parsePrecision(text: string | undefined): Precision {
  const v = (text ?? 'f32').trim().toLowerCase();
  const found = PRECISIONS.find((p) => p === v);
  if (!found) throw new UserError(`unknown precision '${text}'`, `choose one of ${PRECISIONS.join(', ')}`);
  return found;
}

/**
 * The engine for `choice` on this backend. `precision` and `recompute` (the checkpointed blocks recomputed in the
 * backward: compiled.ts) apply to the compiled engine only; the tfjs engine always recomputes those blocks.
 */
export function chooseEngine(choice: EngineChoice, report: BackendReport, precision: Precision = 'f32', recompute = false): ChosenEngine {
  const gpu = report.backend === 'webgpu' ? currentWebGPU() : undefined;
  if (choice === 'compiled' && !gpu) {
    throw new UserError(`--engine compiled needs the webgpu backend (this run uses ${report.backend})`, 'add --backend webgpu, or use --engine tfjs');
  }
  if (precision !== 'f32' && (choice === 'tfjs' || !gpu)) {
    const why = choice === 'tfjs' ? 'this run uses --engine tfjs' : `this run uses the tfjs engine on ${report.backend}`;
    throw new UserError(`--precision ${precision} applies only to the compiled engine (${why})`, 'drop --precision, or use --engine compiled with --backend webgpu');
  }
  if (recompute && (choice === 'tfjs' || !gpu)) {
    throw new UserError('--recompute applies only to the compiled engine (the tfjs engine always recomputes the decoder blocks)', 'drop --recompute, or use --engine compiled with --backend webgpu');
  }
  if (choice === 'tfjs' || !gpu) return { name: 'tfjs', ex: tfExecutor as Executor<unknown>, destroy: () => {} };
  const compiled = new CompiledEngine(gpu.device, { precision, recompute });
  return { name: 'compiled', ex: compiled.executor as Executor<unknown>, compiled, destroy: () => compiled.destroy() };
}
