// Output names from prompts: slugs, length limits, safe characters, never overwriting earlier results.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { claimOutputDir, claimOutputPath, MAX_SLUG, outputStem, slugify } from '../src/util/names.ts';
import { parsePromptList } from '../src/pipelines/prompts.ts';
import { UserError } from '../src/cli/errors.ts';

test('slugify: safe characters, accents dropped, other scripts kept, length-limited at a word boundary', () => {
  assert.equal(slugify('A Red Apple!'), 'a-red-apple');
  assert.equal(slugify('  Café naïve / résumé: Über\\straße  '), 'cafe-naive-resume-uber-straße');
  assert.equal(slugify('東京タワー 日本語'), '東京タワー-日本語');
  assert.equal(slugify('../../etc/passwd'), 'etc-passwd');
  assert.equal(slugify('con'), 'con-');
  assert.equal(slugify('!!!'), 'vqclip');
  assert.equal(slugify('', MAX_SLUG, 'output'), 'output');
  const long = slugify('a painting of a lighthouse on a rocky coast at dusk, trending on artstation, highly detailed');
  assert.ok([...long].length <= MAX_SLUG, long);
  assert.ok(!long.endsWith('-') && 'a-painting-of-a-lighthouse-on-a-rocky-coast-at-dusk-trending-on'.startsWith(long), long);
  const word = slugify('x'.repeat(200));
  assert.equal(word, 'x'.repeat(MAX_SLUG));
  for (const s of [long, word, slugify('a/b\\c:d*e?f"g<h>i|j')]) assert.match(s, /^[\p{L}\p{N}]+(-[\p{L}\p{N}]+)*-?$/u);
});

test('outputStem uses positive text prompts, else image names, else noise seeds', () => {
  assert.equal(outputStem(parsePromptList('a red apple:1|blurry:-0.5|a watercolor painting:0.8:1.2')), 'a-red-apple-a-watercolor-painting');
  assert.equal(outputStem(parsePromptList('C:\\pics\\Sunset.jpg:0.5|b.png', 'image')), 'sunset-b');
  assert.equal(outputStem(parsePromptList('photos/Sunset.jpg|b.png', 'image')), 'sunset-b');
  assert.equal(outputStem(parsePromptList('42|7:0.5', 'noise')), 'noise-42-noise-7');
  assert.equal(outputStem([]), 'vqclip');
});

test('claimOutputPath never overwrites: name.png, name-2.png, ... reserved atomically', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-names-'));
  const want = path.join(dir, 'sub', 'a-cat.png');
  const first = claimOutputPath(want);
  assert.equal(first, want);
  fs.writeFileSync(first, 'image 1');
  const second = claimOutputPath(want);
  assert.equal(second, path.join(dir, 'sub', 'a-cat-2.png'));
  assert.equal(fs.readFileSync(first, 'utf8'), 'image 1', 'earlier result untouched');
  assert.ok(fs.existsSync(second), 'the claimed name is reserved on disk');
  assert.equal(claimOutputPath(want), path.join(dir, 'sub', 'a-cat-3.png'));
  // Many claims in a row are all distinct.
  const many = new Set(Array.from({ length: 20 }, () => claimOutputPath(want)));
  assert.equal(many.size, 20);

  assert.equal(claimOutputDir(path.join(dir, 'frames')), path.join(dir, 'frames'));
  assert.equal(claimOutputDir(path.join(dir, 'frames')), path.join(dir, 'frames-2'));

  // An unwritable location is a UserError, not a stack trace.
  fs.writeFileSync(path.join(dir, 'file'), '');
  assert.throws(() => claimOutputPath(path.join(dir, 'file', 'x.png')), UserError);
  fs.rmSync(dir, { recursive: true });
});
