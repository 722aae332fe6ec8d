// `vqclip animate "a seed^a sprout^a tree" --frames 60 --zoom 1.02`: animation frames (see pipelines/animate.ts),
// written as numbered PNGs into a new folder; ffmpeg turns them into a video.
import fs from 'node:fs';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { initBackend, shutdownBackend, type BackendChoice } from '../../engine/backend.ts';
import { chooseEngine, parseEngine } from '../../engine/engines.ts';
import { checkAnimateSettings, runAnimation, type AnimateSettings } from '../../pipelines/animate.ts';
import { loadGenerateModels } from '../../pipelines/generate-models.ts';
import { parseStory } from '../../pipelines/prompts.ts';
import { outputStem } from '../../util/names.ts';
import { UserError } from '../errors.ts';
import { interruptible } from '../interrupt.ts';
import { formatDuration } from '../progress.ts';
import { generateOptions, modelChoiceFromArgs, settingsFromArgs, type GenerateArgs } from './generate.ts';

export interface AnimateArgs extends GenerateArgs {
  frameCount?: number;
  iterationsPerFrame?: number;
  zoom?: number;
  rotate?: number;
  translate?: number[];
  changePromptEveryFrames?: number;
}

export function animateSettingsFromArgs(a: AnimateArgs): AnimateSettings {
  if (a.from || a.resume) throw new UserError('animate does not take --from or --resume');
  let prompt = a.prompt ?? a.prompts;
  // A prompt file (prompts/story.txt): its first prompt line is the story.
  if (prompt && fs.existsSync(prompt) && fs.statSync(prompt).isFile()) {
    const line = fs.readFileSync(prompt, 'utf8').split(/\r?\n/).map((l) => l.trim()).find((l) => l && !l.startsWith('#'));
    if (!line) throw new UserError(`${prompt} holds no prompt line`);
    prompt = line;
  }
  const base = settingsFromArgs({ ...a, prompt, iterations: a.iterations ?? 100 }, undefined);
  const t = a.translate ?? [0, 0];
  if (t.length !== 2) throw new UserError('--translate takes two numbers: x y (pixels per frame)');
  const s: AnimateSettings = {
    base,
    frames: a.frameCount ?? 30,
    iterationsPerFrame: a.iterationsPerFrame ?? 20,
    camera: { zoom: a.zoom ?? 1.02, rotate: a.rotate ?? 0, translateX: t[0], translateY: t[1] },
    changePromptEvery: a.changePromptEveryFrames ?? 0,
  };
  checkAnimateSettings(s);
  return s;
}

const command: CommandModule<object, AnimateArgs> = {
  command: 'animate [prompt]',
  describe: 'render animation frames: each frame continues the last one through a moving camera',
  builder: (y) =>
    (generateOptions(y) as unknown as Argv<AnimateArgs>)
      .option('frame-count', { alias: 'n', type: 'number', describe: 'frames to render (default 30)' })
      .option('iterations-per-frame', { alias: 'ipf', type: 'number', describe: 'iterations for each frame after the first (default 20; --iterations is the first frame, default 100)' })
      .option('zoom', { type: 'number', describe: 'camera zoom per frame (default 1.02)' })
      .option('rotate', { type: 'number', describe: 'degrees per frame (default 0)' })
      .option('translate', { type: 'array', number: true, describe: 'pixels per frame: x y (default 0 0)' })
      .option('change-prompt-every-frames', { alias: 'cpef', type: 'number', describe: "next '^' phrase every N frames (default: never)" }) as Argv<AnimateArgs>,
  handler: async (a) => {
    const settings = animateSettingsFromArgs(a);
    const engineChoice = parseEngine(a.engine);
    const report = await initBackend(a.backend as BackendChoice);
    const engine = chooseEngine(engineChoice, report);
    const { signal, release } = interruptible('frame');
    const models = await loadGenerateModels(engine.ex, modelChoiceFromArgs(a) ?? {}, { encoder: true });
    try {
      const t0 = performance.now();
      const outDir = a.output ?? path.join('outputs', `${outputStem(parseStory(settings.base.prompts)[0])}-animation`);
      const say = (l: string) => !a.quiet && process.stderr.write(`${l}\n`);
      say(`vqclip: animating ${settings.frames} frames, seed ${settings.base.seed}, backend ${report.backend}${engine.name === 'compiled' ? ' (compiled engine)' : ''}`);
      const r = await runAnimation(engine.ex, models, settings, {
        outDir,
        backend: report.backend,
        signal,
        onEvent: (e) => {
          const per = (performance.now() - t0) / 1000 / (e.frame + 1);
          say(`frame ${e.frame + 1}/${e.frames}: ${e.path}  loss ${e.losses.reduce((x, y) => x + y, 0).toFixed(4)}  ETA ${formatDuration(per * (e.frames - e.frame - 1))}`);
        },
      });
      say(`${r.interrupted ? 'stopped' : 'done'}: ${r.frames} frames in ${r.dir}`);
      say(`video: ffmpeg -framerate 12 -i ${path.join(r.dir, '%05d.png')} -pix_fmt yuv420p ${r.dir}.mp4`);
      if (a.json) process.stdout.write(`${JSON.stringify({ ...r, seed: settings.base.seed, backend: report.backend })}\n`);
      if (r.interrupted) process.exitCode = 130;
    } finally {
      release();
      models.dispose();
      engine.destroy();
      await shutdownBackend();
    }
  },
};

export default command;
