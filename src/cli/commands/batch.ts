// `vqclip batch FILE`: one `generate` run per line of a prompt file (prompts/*.txt shows the format), with the
// models loaded once. Every line is checked before the first image starts; Ctrl-C stops the current image with
// its resume state and ends the batch; each finished image is kept whatever happens to later lines.
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { initBackend, shutdownBackend, type BackendChoice } from '../../engine/backend.ts';
import { chooseEngine, parseEngine, type ChosenEngine } from '../../engine/engines.ts';
import { tfExecutor } from '../../engine/tfjs-ops.ts';
import { loadGenerateModels } from '../../pipelines/generate-models.ts';
import { runGenerate, type RunSummary } from '../../pipelines/generate-run.ts';
import { readPromptFile } from '../../pipelines/prompts.ts';
import { claimOutputDir, outputStem } from '../../util/names.ts';
import { randomSeed } from '../../util/rng.ts';
import { UserError } from '../errors.ts';
import { interruptible } from '../interrupt.ts';
import { textReporter } from '../progress.ts';
import { generateOptions, modelChoiceFromArgs, settingsFromArgs, type GenerateArgs } from './generate.ts';

export interface BatchArgs extends GenerateArgs {
  file: string;
}

/** The batch on an initialised backend (tests call this). */
export async function runBatch(a: BatchArgs, opts: { backend: string; engine?: ChosenEngine; signal?: AbortSignal; log?: (line: string) => void; onEvent?: Parameters<typeof runGenerate>[1]['onEvent'] }): Promise<RunSummary[]> {
  const log = opts.log ?? (() => {});
  const ex = opts.engine?.ex ?? tfExecutor;
  if (a.from || a.resume) throw new UserError('batch does not take --from or --resume', 'resume a stopped image with `vqclip generate --resume FILE`');
  if (a.prompt || a.prompts) throw new UserError('batch reads its prompts from the file', 'put the prompts in the file, one per line');
  const entries = readPromptFile(a.file);
  // Check every line's settings before loading anything (a typo on line 9 should not cost 8 images first).
  const settingsPerLine = entries.map((e) => settingsFromArgs({ ...a, prompt: e.text, seed: a.seed ?? randomSeed() }, undefined));
  const outDir = claimOutputDir(a.output ?? path.join('outputs', path.basename(a.file).replace(/\.[^.]+$/, '')));
  const choice = modelChoiceFromArgs(a) ?? {};
  const needsEncoder = settingsPerLine.some((s) => ['image', 'pixels', 'gradient'].includes(s.init));
  const models = await loadGenerateModels(ex, choice, { encoder: needsEncoder });
  const done: RunSummary[] = [];
  try {
    for (const [i, entry] of entries.entries()) {
      if (opts.signal?.aborted) break;
      log(`[${i + 1}/${entries.length}] ${a.file}:${entry.line}: ${entry.text}`);
      const settings = settingsPerLine[i];
      const r = await runGenerate(ex, {
        settings,
        models: choice,
        loaded: models as never,
        output: path.join(outDir, `${outputStem(entry.story[0])}.png`),
        backend: opts.backend,
        engine: opts.engine?.name,
        signal: opts.signal,
        onEvent: opts.onEvent,
      });
      done.push(r);
      if (r.interrupted) break;
    }
  } finally {
    models.dispose();
  }
  return done;
}

const command: CommandModule<object, BatchArgs> = {
  command: 'batch <file>',
  describe: 'generate one image per line of a prompt file, loading the models once',
  builder: (y) =>
    (generateOptions(y) as unknown as Argv<BatchArgs>).positional('file', { type: 'string', describe: 'prompt file: one prompt (or ^-story) per line, # comments' }) as Argv<BatchArgs>,
  handler: async (a) => {
    const engineChoice = parseEngine(a.engine);
    const report = await initBackend(a.backend as BackendChoice);
    const { signal, release } = interruptible('iteration');
    let engine: ChosenEngine | undefined;
    try {
      engine = chooseEngine(engineChoice, report);
      const reporter = textReporter({ quiet: a.quiet });
      const results = await runBatch(a, { backend: report.backend, engine, signal, log: (l) => !a.quiet && process.stderr.write(`${l}\n`), onEvent: reporter });
      if (a.json) for (const r of results) process.stdout.write(`${JSON.stringify({ ...r, backend: report.backend })}\n`);
      if (results.some((r) => r.interrupted)) process.exitCode = 130;
    } finally {
      engine?.destroy();
      release();
      await shutdownBackend();
    }
  },
};

export default command;
