// The plain-text progress reporter of `vqclip generate`: one status line redrawn in place on a terminal, and one
// line every few iterations when stdout is a file or a pipe (so logs stay readable). Reads GenerateEvents only.
import type { GenerateEvent } from '../pipelines/generate-run.ts';

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

function shorten(text: string, n: number): string {
  return text.length <= n ? text : `${text.slice(0, n - 1)}…`;
}

export interface Reporter {
  (e: GenerateEvent): void;
}

export function textReporter(opts: { stream?: NodeJS.WriteStream; quiet?: boolean; every?: number } = {}): Reporter {
  const out = opts.stream ?? process.stderr;
  const tty = !!out.isTTY;
  let lineOpen = false;
  const every = opts.every ?? 10;
  const write = (line: string) => {
    if (lineOpen) out.write('\r\x1b[2K');
    lineOpen = false;
    out.write(`${line}\n`);
  };
  return (e) => {
    if (opts.quiet && e.type !== 'interrupted') return;
    switch (e.type) {
      case 'start': {
        const s = e.settings;
        write(`vqclip: ${e.fromIteration ? `resuming at iteration ${e.fromIteration}` : 'generating'} ${e.sideX}x${e.sideY}, ${s.iterations} iterations, seed ${s.seed}, backend ${e.backend}${e.engine === 'compiled' ? ' (compiled engine)' : ''}`);
        write(`  models: ${e.models.map((m) => `${m.role} ${m.name}${m.weight !== undefined && m.role === 'clip' ? ` x${m.weight}` : ''}`).join(', ')}`);
        write(`  output: ${e.output}`);
        break;
      }
      case 'step': {
        const parts = e.losses.map((l, i) => `${shorten(e.lossNames[i] ?? `#${i}`, 18)} ${l.toFixed(4)}`);
        const line = `it ${e.iteration}/${e.iterations}  loss ${e.total.toFixed(4)}  [${parts.join(', ')}]  ${e.itPerSec.toFixed(2)} it/s  ETA ${formatDuration(e.etaSeconds)}`;
        if (tty) {
          out.write(`\r\x1b[2K${shorten(line, (out.columns ?? 120) - 1)}`);
          lineOpen = true;
        } else if (e.iteration % every === 0 || e.iteration === e.iterations) write(line);
        break;
      }
      case 'saved':
        if (e.kind !== 'frame') write(`  saved ${e.path} (iteration ${e.iteration})`);
        break;
      case 'interrupted':
        write(`interrupted at iteration ${e.iteration}: image ${e.output}, state ${e.resumeFile}`);
        write(`  continue with: vqclip generate --resume ${e.resumeFile}`);
        break;
      case 'done':
        write(`done: ${e.output} (${e.iteration} iterations in ${formatDuration(e.seconds)})`);
        break;
    }
  };
}
