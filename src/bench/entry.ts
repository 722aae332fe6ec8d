// Running one bench file on its own (`node --import tsx src/bench/NAME.ts [--backend B] [--quick] [--flag V]`).
import { initBackend, shutdownBackend, type BackendChoice } from '../engine/backend.ts';
import { createWebGPUDevice, currentWebGPU, destroyWebGPU, type WebGPUSetup } from '../engine/webgpu.ts';

/**
 * Runs fn on the current WebGPU device (tfjs's webgpu backend), or on a device made for it (the software adapter if
 * there is no GPU) and destroyed after it: destroyWebGPU also forgets it as the current one, which a later section
 * would otherwise reuse. No adapter at all: logs why and skips `what`.
 */
export async function withWebGPU(log: (line: string) => void, what: string, fn: (setup: WebGPUSetup) => Promise<void>): Promise<void> {
  const current = currentWebGPU();
  if (current) return fn(current);
  const own = await createWebGPUDevice('allow').catch((e: Error) => e);
  if (own instanceof Error) return log(`${what}: no WebGPU adapter (${own.message.split('\n')[0]}); skipped`);
  try {
    await fn(own);
  } finally {
    destroyWebGPU();
  }
}

/**
 * Whether a bench file is the program being run, by the script's file name: comparing import.meta.url with argv[1]
 * is also true for every module of a one-file bundle (the GPU runs).
 */
export function isEntry(name: string): boolean {
  return new RegExp(`bench[\\\\/]${name}\\.[cm]?[jt]s$`).test(process.argv[1] ?? '');
}

export interface StandaloneArgs {
  /** The value after `--name`, if given. */
  arg(name: string): string | undefined;
  has(flag: string): boolean;
}

/** If `name` is the program being run: starts the backend (--backend, VQCLIP_BACKEND, else `fallback`), runs, shuts down. */
export async function runStandalone(name: string, run: (log: (line: string) => void, args: StandaloneArgs) => Promise<void>, fallback: BackendChoice = 'auto'): Promise<void> {
  if (!isEntry(name)) return;
  const argv = process.argv.slice(2);
  const args: StandaloneArgs = {
    arg: (n) => {
      const i = argv.indexOf(n);
      return i >= 0 ? argv[i + 1] : undefined;
    },
    has: (f) => argv.includes(f),
  };
  const report = await initBackend((args.arg('--backend') ?? (process.env.VQCLIP_BACKEND || fallback)) as BackendChoice);
  const log = (l: string) => process.stdout.write(`${l}\n`);
  log(`backend: ${report.backend} (${report.reason})${report.threads !== undefined ? `, ${report.threads} threads` : ''}`);
  try {
    await run(log, args);
  } finally {
    await shutdownBackend();
  }
}
