// Output file names: derived from the prompt, safe on every common file system, never overwriting a result.
//
//   const path = claimOutputPath(path.join(dir, `${outputStem(prompts)}.png`));  // 'a-red-apple.png', '-2', '-3', ...
//
// The name is reserved atomically by creating the file with O_EXCL ('wx'), so two runs (or a batch writing many
// images) can never pick the same name; the caller then writes over the empty placeholder.
import fs from 'node:fs';
import path from 'node:path';
import { UserError } from '../cli/errors.ts';
import type { PromptSpec } from '../pipelines/prompts.ts';

/** Longest slug, in characters (each at most 4 UTF-8 bytes, so names stay far below the usual 255-byte limit). */
export const MAX_SLUG = 60;

const WINDOWS_RESERVED = /^(con|prn|aux|nul|com[1-9]|lpt[1-9])$/;

/**
 * Lower-case letters and digits of any script joined by single '-' (accents dropped: 'Café' -> 'cafe'), cut at a
 * word boundary to at most `max` characters; `fallback` when nothing is left.
 */
export function slugify(text: string, max = MAX_SLUG, fallback = 'vqclip'): string {
  let s = text
    .normalize('NFKD')
    .replace(/\p{M}+/gu, '')
    .toLowerCase()
    .replace(/[^\p{L}\p{N}]+/gu, '-')
    .replace(/^-+|-+$/g, '');
  const chars = [...s];
  if (chars.length > max) {
    s = chars.slice(0, max).join('');
    const cut = s.lastIndexOf('-');
    if (cut >= max / 2) s = s.slice(0, cut);
    s = s.replace(/-+$/, '');
  }
  if (!s) return fallback;
  return WINDOWS_RESERVED.test(s) ? `${s}-` : s;
}

/** The file stem for a run's prompts: its positive text prompts, else image file names, else noise seeds. */
export function outputStem(prompts: readonly PromptSpec[], fallback = 'vqclip'): string {
  const text = prompts.filter((p) => p.kind === 'text' && p.weight > 0).map((p) => p.text);
  if (text.length) return slugify(text.join(' '), MAX_SLUG, fallback);
  const images = prompts.filter((p) => p.kind === 'image').map((p) => path.win32.parse(p.text).name); // win32 splits on '/' and '\\'
  if (images.length) return slugify(images.join(' '), MAX_SLUG, fallback);
  const noise = prompts.filter((p) => p.kind === 'noise').map((p) => `noise ${p.text}`);
  return slugify(noise.join(' '), MAX_SLUG, fallback);
}

function describe(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

/**
 * Reserves `desired` ('out/a-cat.png'), or the first free 'out/a-cat-2.png', 'out/a-cat-3.png', ... by creating it
 * empty with O_EXCL; creates the folder when missing. Returns the reserved path.
 */
export function claimOutputPath(desired: string): string {
  const { dir, name, ext } = path.parse(desired);
  if (dir) {
    try {
      fs.mkdirSync(dir, { recursive: true });
    } catch (err) {
      throw new UserError(`cannot create output folder ${dir} (${describe(err)})`, 'choose another --output location');
    }
  }
  for (let n = 1; n < 100_000; n++) {
    const candidate = path.join(dir, n === 1 ? `${name}${ext}` : `${name}-${n}${ext}`);
    try {
      fs.closeSync(fs.openSync(candidate, 'wx'));
      return candidate;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new UserError(`cannot create ${candidate} (${describe(err)})`, 'check that the output folder is writable, or choose another --output');
      }
    }
  }
  throw new UserError(`too many files named ${name}-N${ext} in ${dir || '.'}`, 'choose another --output name or folder');
}

/** Like claimOutputPath for a folder (e.g. animation frames): 'frames', 'frames-2', ..., created atomically. */
export function claimOutputDir(desired: string): string {
  const parent = path.dirname(desired);
  const base = path.basename(desired);
  try {
    fs.mkdirSync(parent, { recursive: true });
  } catch (err) {
    throw new UserError(`cannot create output folder ${parent} (${describe(err)})`, 'choose another --output location');
  }
  for (let n = 1; n < 100_000; n++) {
    const candidate = path.join(parent, n === 1 ? base : `${base}-${n}`);
    try {
      fs.mkdirSync(candidate);
      return candidate;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new UserError(`cannot create ${candidate} (${describe(err)})`, 'check that the output folder is writable, or choose another --output');
      }
    }
  }
  throw new UserError(`too many folders named ${base}-N in ${parent}`, 'choose another --output name or folder');
}
