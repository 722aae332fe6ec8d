// The prompt grammar of `vqclip generate` / `vqclip batch` (nerdyrodent generate.py's, made unambiguous).
//
//   story    := phrase ('^' phrase)*          phrases take turns every --change-prompt-every iterations
//   phrase   := prompt ('|' prompt)*          all prompts of a phrase are optimised together
//   prompt   := text [':' weight [':' stop]]
//
// generate.py splits a prompt with rsplit(':', 2) and float()s the two last fields, so 'http://x.png' or
// 'a cat:abc' crash it. Here a trailing ':'-field counts as weight/stop only when it IS a number:
//   - number: decimal or exponent form (1, -0.5, .5, 2e-3), or inf / -inf (stop only; 'nan' is rejected);
//   - up to two trailing numbers are taken (weight, then stop); everything before them is the text, colons included:
//     'C:\img\a.png:0.5' -> path 'C:\img\a.png', weight 0.5; 'http://host:8080/a.png' -> all path; 'a cat:abc' -> text;
//   - a trailing field made only of number characters (digits . , e + -) that is not a valid number ('0,5', '1.2.3')
//     is a typo and an error, as are an empty trailing field ('a cat:'), a third trailing number ('a:1:2:3'),
//     empty text, weight 0 (the prompt would do nothing), NaN or infinite weights, and stop = +inf or NaN;
//   - '\:', '\|' and '\^' are literal characters (write 'time 12\:30' for text ending in ':30'); every other
//     backslash is literal (Windows paths need no escaping).
// Defaults: weight 1, stop -inf. A negative weight pushes the image away from the prompt.
import fs from 'node:fs';
import { UserError } from '../cli/errors.ts';
import { parseSeed, Rng } from '../util/rng.ts';

export type PromptKind = 'text' | 'image' | 'noise';

export interface PromptSpec {
  kind: PromptKind;
  /** Text prompt text, image path, or (noise) the seed as written. */
  text: string;
  weight: number;
  /** Distances below `stop` (after the sign of the weight) get no gradient; -Infinity = never stop. */
  stop: number;
  /** The prompt as the user wrote it (for messages). */
  source: string;
}

export interface NoisePromptSpec extends PromptSpec {
  kind: 'noise';
  seed: number;
}

/** One-paragraph summary of the grammar, for --help texts and error hints. */
export const PROMPT_SYNTAX =
  "prompts are 'text[:weight[:stop]]' separated by '|' (phrases of a story by '^'); weight is a nonzero number " +
  "(default 1, negative = avoid), stop a number or -inf (default); write '\\:' for a literal colon before a number";

const ESCAPABLE = new Set([':', '|', '^']);

/** Splits on `sep` where it is not escaped with a backslash; the pieces keep their escapes. */
function splitUnescaped(s: string, sep: string): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && ESCAPABLE.has(s[i + 1])) i++;
    else if (s[i] === sep) {
      out.push(s.slice(start, i));
      start = i + 1;
    }
  }
  out.push(s.slice(start));
  return out;
}

const unescape = (s: string) => s.replace(/\\([:|^])/g, '$1');

const NUMBER = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
const INFINITE = /^[+-]?(inf|infinity)$/i;
const NAN = /^[+-]?nan$/i;
/** Only number characters, with a digit: meant as a number (a typo if it does not parse). */
const NUMBERISH = /^[+-]?[\d.,eE+-]*\d[\d.,eE+-]*$/;

function isNumber(field: string): boolean {
  return NUMBER.test(field) || INFINITE.test(field) || NAN.test(field);
}

function toNumber(field: string): number {
  if (NAN.test(field)) return NaN;
  if (INFINITE.test(field)) return field.startsWith('-') ? -Infinity : Infinity;
  return Number(field);
}

function noun(kind: PromptKind): string {
  return kind === 'image' ? 'image prompt' : kind === 'noise' ? 'noise prompt' : 'prompt';
}

/** Parses one prompt 'text[:weight[:stop]]' (see the grammar at the top of this file). */
export function parsePrompt(source: string, kind: PromptKind = 'text'): PromptSpec {
  const what = `${noun(kind)} '${source.trim()}'`;
  const fields = splitUnescaped(source, ':');
  const numbers: string[] = [];
  while (numbers.length < 2 && fields.length > 1) {
    const last = fields[fields.length - 1].trim();
    if (isNumber(last)) {
      numbers.unshift(last);
      fields.pop();
    } else if (last === '') {
      throw new UserError(`${what} ends with an empty ':' field`, `give a number after the ':' (e.g. '...:0.5') or remove the ':'; ${PROMPT_SYNTAX}`);
    } else if (NUMBERISH.test(last)) {
      throw new UserError(`${what}: '${last}' is not a number`, `write weights/stops like 0.5, -1 or 2e-3 (a dot as the decimal mark); to keep it as text write '\\:' instead of ':'`);
    } else break;
  }
  if (numbers.length === 2 && fields.length > 1) {
    const last = fields[fields.length - 1].trim();
    if (last === '' || NUMBERISH.test(last) || isNumber(last)) {
      throw new UserError(`${what} has too many ':' fields`, `a prompt is 'text:weight:stop' at most; write '\\:' for a colon that belongs to the text`);
    }
  }
  const text = unescape(fields.join(':')).trim();
  if (!text) throw new UserError(`${what} has no ${kind === 'image' ? 'path' : kind === 'noise' ? 'seed' : 'text'}`, PROMPT_SYNTAX);

  const weight = numbers.length > 0 ? toNumber(numbers[0]) : 1;
  const stop = numbers.length > 1 ? toNumber(numbers[1]) : -Infinity;
  if (!Number.isFinite(weight)) throw new UserError(`${what}: weight ${numbers[0]} is not a finite number`, 'use a weight like 1, 0.5 or -0.5');
  if (weight === 0) throw new UserError(`${what} has weight 0, so it would have no effect`, 'give it a nonzero weight (negative to steer away) or leave it out');
  if (Number.isNaN(stop) || stop === Infinity) {
    throw new UserError(`${what}: stop ${numbers[1]} is not usable (NaN or +inf would block every gradient)`, 'use a finite stop (e.g. 1.2) or -inf (the default: never stop)');
  }
  return { kind, text, weight, stop, source };
}

/** Parses 'a|b:0.5|...' into prompts; `what` names the option or file line in messages. */
export function parsePromptList(list: string, kind: PromptKind = 'text', what = `--${kind === 'text' ? 'prompts' : `${kind}-prompts`}`): PromptSpec[] {
  const parts = splitUnescaped(list, '|');
  return parts.map((part, i) => {
    if (!part.trim()) {
      throw new UserError(`${what}: ${noun(kind)} ${i + 1} of ${parts.length} in '${list.trim()}' is empty`, "remove the extra '|' (prompts are separated by single '|')");
    }
    try {
      return kind === 'noise' ? parseNoisePrompt(part) : parsePrompt(part, kind);
    } catch (err) {
      if (err instanceof UserError) throw new UserError(`${what}: ${err.message}`, err.hint);
      throw err;
    }
  });
}

/** The phrases of a story as written (split on unescaped '^'; escapes kept, so each parses on its own). */
export function storyPhrases(story: string): string[] {
  return splitUnescaped(story, '^');
}

/** A story: phrases separated by '^', each a '|' list of text prompts (generate.py's --prompts with '^'). */
export function parseStory(story: string, what = '--prompts'): PromptSpec[][] {
  const phrases = splitUnescaped(story, '^');
  return phrases.map((phrase, i) => {
    if (!phrase.trim()) {
      throw new UserError(`${what}: phrase ${i + 1} of ${phrases.length} in '${story.trim()}' is empty`, "remove the extra '^' (story phrases are separated by single '^')");
    }
    return parsePromptList(phrase, 'text', what);
  });
}

/**
 * Which phrase of a story is active at `iteration` (0-based) when the prompt changes every `changeEvery` iterations
 * (0 = never), cycling back to the first: generate.py's `i % change_prompt_every == 0 and i > 0` bookkeeping.
 */
export function storyPhraseAt(iteration: number, changeEvery: number, phrases: number): number {
  if (changeEvery <= 0 || phrases <= 1) return 0;
  return Math.floor(iteration / changeEvery) % phrases;
}

/** Parses one noise prompt 'seed[:weight[:stop]]'. */
export function parseNoisePrompt(source: string): NoisePromptSpec {
  const p = parsePrompt(source, 'noise');
  const seed = parseSeed(p.text, `noise prompt seed in '${source.trim()}'`);
  return { ...p, kind: 'noise', seed };
}

/**
 * The CLIP-space target of a noise prompt: `dim` standard normals from the prompt's own seed (independent of the
 * run seed, as generate.py's torch.Generator().manual_seed(seed)). Drawn from vqclip's generator, so the values
 * differ from PyTorch's for the same seed.
 */
export function noisePromptEmbedding(seed: number, dim: number): Float32Array {
  return new Rng(seed).fork('noise-prompt').fillNormal(new Float32Array(dim));
}

export interface PromptFileEntry {
  /** 1-based line number in the file. */
  line: number;
  /** The line as written (trimmed), e.g. used for naming the output. */
  text: string;
  /** Its phrases (one unless the line is a '^' story). */
  story: PromptSpec[][];
}

/**
 * A batch prompt file: one image per line, each line a prompt list or story in the grammar above. Blank lines and
 * lines whose first non-blank character is '#' are skipped (start a line with '\#' for a prompt beginning with '#').
 */
export function parsePromptFile(content: string, file: string): PromptFileEntry[] {
  const entries: PromptFileEntry[] = [];
  content
    .replace(/^\uFEFF/, '')
    .split(/\r?\n/)
    .forEach((raw, i) => {
      let text = raw.trim();
      if (!text || text.startsWith('#')) return;
      if (text.startsWith('\\#')) text = text.slice(1);
      entries.push({ line: i + 1, text, story: parseStory(text, `${file}:${i + 1}`) });
    });
  if (entries.length === 0) {
    throw new UserError(`${file} has no prompts (only blank lines and # comments)`, 'put one prompt per line, e.g. "a red apple:1|blurry:-0.5"');
  }
  return entries;
}

/** Reads and parses a batch prompt file. */
export function readPromptFile(file: string): PromptFileEntry[] {
  let content: string;
  try {
    content = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UserError(`cannot read prompt file ${file}${code ? ` (${code})` : ''}`, 'check the path; a prompt file is a text file with one prompt per line');
  }
  return parsePromptFile(content, file);
}
