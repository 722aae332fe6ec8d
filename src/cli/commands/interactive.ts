// `vqclip interactive`: the terminal UI (ui/app.tsx). Uses the real models when they are installed, else the
// built-in demo models (and says so), loaded once for the session.
import fs from 'node:fs';
import React from 'react';
import { render } from 'ink';
import sharp from 'sharp';
import type { Argv, CommandModule } from 'yargs';
import { initBackend, shutdownBackend, type BackendChoice } from '../../engine/backend.ts';
import { chooseEngine, parseEngine } from '../../engine/engines.ts';
import { defaultClipPath } from '../../models/clip-load.ts';
import { DEFAULT_VQGAN_ID, loadGenerateModels, type LoadedModels, type ModelChoice } from '../../pipelines/generate-models.ts';
import { runGenerate } from '../../pipelines/generate-run.ts';
import { weightStatus } from '../../weights/registry.ts';
import { App } from '../ui/app.tsx';
import { defaultOutput, generateOptions, modelChoiceFromArgs, settingsFromArgs, type GenerateArgs } from './generate.ts';
import { UserError } from '../errors.ts';

async function readPicture(file: string) {
  const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { data: Float32Array.from(data, (v) => v / 255), width: info.width, height: info.height };
}

const command: CommandModule<object, GenerateArgs> = {
  command: ['interactive', 'ui'],
  describe: 'terminal UI: type prompts, watch losses and a live preview, stop and continue',
  builder: (y) => generateOptions(y) as unknown as Argv<GenerateArgs>,
  handler: async (a) => {
    if (!process.stdin.isTTY) throw new UserError('interactive needs a terminal', 'use `vqclip generate` or `vqclip batch` in scripts');
    const engineChoice = parseEngine(a.engine);
    const report = await initBackend(a.backend as BackendChoice);
    const engine = chooseEngine(engineChoice, report);
    let choice: ModelChoice = modelChoiceFromArgs(a) ?? {};
    let banner = `vqclip interactive — backend ${report.backend}${engine.name === 'compiled' ? ' (compiled engine)' : ''}`;
    const haveDefaults = weightStatus().find((w) => w.weight.id === DEFAULT_VQGAN_ID)?.present && fs.existsSync(defaultClipPath());
    if (!choice.builtin && !choice.vqgan && !choice.clips?.length && !haveDefaults) {
      choice = { builtin: true };
      banner += '\nno weights installed: using the built-in UNTRAINED demo models (see `vqclip weights list` for the real ones)';
    }
    const models: LoadedModels<unknown> = (await loadGenerateModels(engine.ex, choice, { encoder: true })) as LoadedModels<unknown>;
    const defaults: Partial<GenerateArgs> = { ...a, prompt: undefined, prompts: undefined, backend: report.backend, builtin: choice.builtin };
    try {
      const app = render(
        React.createElement(App, {
          banner,
          defaults,
          readPicture,
          run: (args, signal, onEvent) => {
            const settings = settingsFromArgs(args, undefined);
            return runGenerate(engine.ex, { settings, models: choice, loaded: models, output: defaultOutput(settings, args.output), backend: report.backend, engine: engine.name, signal, onEvent });
          },
        }),
        { exitOnCtrlC: false },
      );
      await app.waitUntilExit();
    } finally {
      models.dispose();
      engine.destroy();
      await shutdownBackend();
    }
  },
};

export default command;
