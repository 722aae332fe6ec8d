// The interactive terminal UI (`vqclip interactive`): type a prompt (with any generate flags), watch the losses,
// speed and a live preview of the image, stop with Esc or Ctrl-C (the image and a resumable state are kept), type
// the next prompt. It only draws GenerateEvents; the run itself is the same runGenerate the CLI uses.
import { Box, Text, useApp, useInput } from 'ink';
import TextInput from 'ink-text-input';
import React, { useRef, useState } from 'react';
import yargsParser from 'yargs-parser';
import type { GenerateArgs } from '../commands/generate.ts';
import type { GenerateEvent, RunSummary } from '../../pipelines/generate-run.ts';
import type { Picture } from '../../pipelines/generate.ts';
import { formatDuration } from '../progress.ts';
import { pictureLines } from './preview.ts';

export interface AppProps {
  /** Starts one run (generate with these args); events drive the view. */
  run: (args: GenerateArgs, signal: AbortSignal, onEvent: (e: GenerateEvent) => void) => Promise<RunSummary>;
  readPicture: (file: string) => Promise<Picture>;
  /** Flags applied to every run unless the line overrides them (e.g. --builtin). */
  defaults: Partial<GenerateArgs>;
  banner?: string;
  previewSize?: { cols: number; rows: number };
}

/** A typed line -> generate arguments: free words are the prompt, flags as on the command line. */
export function parseLine(line: string, defaults: Partial<GenerateArgs>): GenerateArgs {
  const argv = yargsParser(line, {
    alias: { iterations: ['i'], size: ['s'], output: ['o'], prompts: ['p'], saveEvery: ['se'], initImage: ['ii'], initWeight: ['iw'] },
    array: ['size', 'clip', 'augments'],
    string: ['seed', 'prompts', 'image-prompts', 'noise-prompts', 'output', 'optimizer', 'cut-method', 'init', 'init-image', 'vqgan', 'clip'],
    number: ['iterations', 'save-every', 'lr', 'cutn', 'cut-pow', 'noise-fac', 'init-weight', 'change-prompt-every'],
    boolean: ['builtin'],
    configuration: { 'camel-case-expansion': true, 'strip-aliased': true, 'strip-dashed': true },
  });
  const { _: words, ...flags } = argv;
  const prompt = words.map(String).join(' ').trim();
  return { ...defaults, ...(flags as Partial<GenerateArgs>), ...(prompt ? { prompt } : {}), backend: defaults.backend ?? 'auto' } as GenerateArgs;
}

type Step = Extract<GenerateEvent, { type: 'step' }>;

function bar(fraction: number, width: number): string {
  const n = Math.round(Math.max(0, Math.min(1, fraction)) * width);
  return `${'█'.repeat(n)}${'░'.repeat(width - n)}`;
}

export function App({ run, readPicture, defaults, banner, previewSize = { cols: 48, rows: 16 } }: AppProps): React.ReactElement {
  const { exit } = useApp();
  const [input, setInput] = useState('');
  const [running, setRunning] = useState(false);
  const [start, setStart] = useState<Extract<GenerateEvent, { type: 'start' }>>();
  const [step, setStep] = useState<Step>();
  const [preview, setPreview] = useState<string[]>([]);
  const [messages, setMessages] = useState<string[]>([]);
  const abort = useRef<AbortController | undefined>(undefined);
  const say = (m: string) => setMessages((ms) => [...ms.slice(-5), m]);

  useInput((ch, key) => {
    const stop = key.escape || (key.ctrl && ch === 'c');
    if (!stop) return;
    if (running) {
      if (abort.current?.signal.aborted) return;
      abort.current?.abort();
      say('stopping after this iteration...');
    } else exit();
  });

  const submit = (line: string) => {
    if (running) return;
    if (!line.trim()) return;
    if (/^(q|quit|exit)$/i.test(line.trim())) return exit();
    const args = parseLine(line, defaults);
    setInput('');
    setStep(undefined);
    setPreview([]);
    setRunning(true);
    const ac = new AbortController();
    abort.current = ac;
    const onEvent = (e: GenerateEvent) => {
      if (e.type === 'start') setStart(e);
      else if (e.type === 'step') setStep(e);
      else if (e.type === 'saved' && e.kind !== 'frame') {
        readPicture(e.path)
          .then((pic) => setPreview(pictureLines(pic, previewSize.cols, previewSize.rows)))
          .catch(() => {});
      } else if (e.type === 'interrupted') say(`stopped at ${e.iteration}: ${e.output} (continue: vqclip generate --resume ${e.resumeFile})`);
      else if (e.type === 'done') say(`done: ${e.output} (${e.iteration} iterations in ${formatDuration(e.seconds)})`);
    };
    run(args, ac.signal, onEvent)
      .catch((err: unknown) => {
        const e = err as Error & { hint?: string; problem?: string; file?: string };
        say(`error: ${e.file ? `${e.file}: ${e.problem}` : e.message}${e.hint ? ` (fix: ${e.hint})` : ''}`);
      })
      .finally(() => setRunning(false));
  };

  return (
    <Box flexDirection="column">
      {banner ? <Text dimColor>{banner}</Text> : null}
      {start ? (
        <Box flexDirection="column" marginTop={1}>
          <Text>
            <Text bold>{start.settings.prompts || '(image/noise prompts)'}</Text>
            <Text dimColor>{`  ${start.sideX}x${start.sideY}  seed ${start.settings.seed}  ${start.backend}`}</Text>
          </Text>
          <Text dimColor>{start.output}</Text>
        </Box>
      ) : null}
      {step ? (
        <Box flexDirection="column">
          <Text>
            {bar(step.iteration / step.iterations, 30)} {step.iteration}/{step.iterations}  {step.itPerSec.toFixed(2)} it/s  ETA {formatDuration(step.etaSeconds)}
          </Text>
          {step.losses.map((l, i) => (
            <Text key={i}>
              <Text color={l < 0 ? 'yellow' : 'cyan'}>{l.toFixed(4).padStart(9)}</Text> {step.lossNames[i]}
            </Text>
          ))}
          <Text bold>{step.total.toFixed(4).padStart(9)} total</Text>
        </Box>
      ) : null}
      {preview.length ? (
        <Box flexDirection="column" marginTop={1}>
          {preview.map((l, i) => (
            <Text key={i}>{l}</Text>
          ))}
        </Box>
      ) : null}
      {messages.map((m, i) => (
        <Text key={i} color={m.startsWith('error') ? 'red' : undefined}>
          {m}
        </Text>
      ))}
      <Box marginTop={1}>
        {running ? (
          <Text dimColor>running — Esc or Ctrl-C stops (the image and a resumable state are kept)</Text>
        ) : (
          <Box>
            <Text color="green">prompt› </Text>
            <TextInput value={input} onChange={setInput} onSubmit={submit} placeholder='a watercolor lighthouse at dawn -i 100 --seed 7   (q to quit)' />
          </Box>
        )}
      </Box>
    </Box>
  );
}
