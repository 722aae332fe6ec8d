// Running one bench file on its own (`node --import tsx src/bench/NAME.ts [--backend B] [--quick] [--flag V]`).
import { initBackend, shutdownBackend, type BackendChoice } from '../engine/backend.ts';

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
