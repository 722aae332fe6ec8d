// Prompt grammar: weights/stops, colons in text and paths, escapes, every malformed case, stories, prompt files,
// noise prompts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UserError } from '../src/cli/errors.ts';
import {
  noisePromptEmbedding,
  parseNoisePrompt,
  parsePrompt,
  parsePromptFile,
  parsePromptList,
  parseStory,
  readPromptFile,
  storyPhraseAt,
  type NoisePromptSpec,
} from '../src/pipelines/prompts.ts';

const tws = (p: { text: string; weight: number; stop: number }) => [p.text, p.weight, p.stop];

function userError(fn: () => unknown, pattern: RegExp, label?: string) {
  assert.throws(
    fn,
    (e: unknown) => {
      assert.ok(e instanceof UserError, `${label}: expected UserError, got ${e}`);
      assert.match(e.message, pattern, label);
      assert.ok(e.hint && e.hint.length > 5, `${label}: a fix is suggested`);
      return true;
    },
    label,
  );
}

test("generate.py's split_prompt cases parse as it does", () => {
  // The three prompts of the e2e fixture (MANIFEST section 4).
  assert.deepEqual(tws(parsePrompt('a red apple:1')), ['a red apple', 1, -Infinity]);
  assert.deepEqual(tws(parsePrompt('blurry:-0.5')), ['blurry', -0.5, -Infinity]);
  assert.deepEqual(tws(parsePrompt('a watercolor painting:0.8:1.212')), ['a watercolor painting', 0.8, 1.212]);
  assert.deepEqual(tws(parsePrompt('  spaced out  ')), ['spaced out', 1, -Infinity]);
  assert.deepEqual(tws(parsePrompt('x: 2 : -inf ')), ['x', 2, -Infinity]);
  assert.deepEqual(tws(parsePrompt('x:.5:1e-1')), ['x', 0.5, 0.1]);
  assert.deepEqual(tws(parsePrompt('x:+3.:-INF')), ['x', 3, -Infinity]);
  assert.deepEqual(tws(parsePrompt('0.5')), ['0.5', 1, -Infinity]);
  // More fields than two numbers: the rest is text (as rsplit(':', 2)).
  assert.deepEqual(tws(parsePrompt('a:b:1:2')), ['a:b', 1, 2]);
});

test('colons that are not followed by a number stay in the text; escapes keep literal colons', () => {
  assert.deepEqual(tws(parsePrompt('a cat:abc')), ['a cat:abc', 1, -Infinity]);
  assert.deepEqual(tws(parsePrompt('a:abc:0.5')), ['a:abc', 0.5, -Infinity]);
  assert.deepEqual(tws(parsePrompt('3d render: a cat')), ['3d render: a cat', 1, -Infinity]);
  assert.deepEqual(tws(parsePrompt('time 12\\:30')), ['time 12:30', 1, -Infinity]);
  assert.deepEqual(tws(parsePrompt('time 12\\:30:2')), ['time 12:30', 2, -Infinity]);
  assert.deepEqual(tws(parsePrompt('a \\| b \\^ c')), ['a | b ^ c', 1, -Infinity]);
  // Image paths: URLs, ports, Windows drive letters and backslashes.
  assert.deepEqual(tws(parsePrompt('http://example.com/a.png', 'image')), ['http://example.com/a.png', 1, -Infinity]);
  assert.deepEqual(tws(parsePrompt('http://host:8080/a.png:0.5', 'image')), ['http://host:8080/a.png', 0.5, -Infinity]);
  assert.deepEqual(tws(parsePrompt('C:\\img\\a.png', 'image')), ['C:\\img\\a.png', 1, -Infinity]);
  assert.deepEqual(tws(parsePrompt('C:\\img\\a.png:0.5:0.1', 'image')), ['C:\\img\\a.png', 0.5, 0.1]);
  assert.equal(parsePrompt('b.png', 'image').kind, 'image');
});

test('malformed prompts give a UserError naming the prompt and a fix', () => {
  userError(() => parsePrompt(''), /has no text/, 'empty');
  userError(() => parsePrompt('   '), /has no text/, 'blank');
  userError(() => parsePrompt(':0.5'), /':0.5' has no text/, 'weight only');
  userError(() => parsePrompt(':0.5', 'image'), /image prompt ':0.5' has no path/, 'image weight only');
  userError(() => parsePrompt('a cat:'), /'a cat:' ends with an empty ':' field/, 'trailing colon');
  userError(() => parsePrompt('a cat::1'), /empty ':' field/, 'empty weight before stop');
  userError(() => parsePrompt('a cat:0,5'), /'0,5' is not a number/, 'decimal comma');
  userError(() => parsePrompt('a cat:1.2.3'), /'1.2.3' is not a number/, 'two dots');
  userError(() => parsePrompt('a cat:1e'), /'1e' is not a number/, 'dangling exponent');
  userError(() => parsePrompt('a:1:2:3'), /too many ':' fields/, 'three numbers');
  userError(() => parsePrompt('a::1:2'), /too many ':' fields/, 'empty field before weight and stop');
  userError(() => parsePrompt('a cat:0'), /weight 0/, 'zero weight');
  userError(() => parsePrompt('a cat:-0.0'), /weight 0/, 'negative zero weight');
  userError(() => parsePrompt('a cat:nan'), /weight nan is not a finite number/, 'NaN weight');
  userError(() => parsePrompt('a cat:inf'), /weight inf is not a finite number/, 'infinite weight');
  userError(() => parsePrompt('a cat:1:nan'), /stop nan is not usable/, 'NaN stop');
  userError(() => parsePrompt('a cat:1:inf'), /stop inf is not usable/, '+inf stop');
  // A suffix that is not number-like at all is text, never an error.
  assert.equal(parsePrompt('a cat:1x:0.5').text, 'a cat:1x');
});

test('prompt lists and stories', () => {
  const list = parsePromptList(' a red apple:1 | blurry:-0.5|a watercolor painting:0.8:1.212 ');
  assert.deepEqual(list.map(tws), [
    ['a red apple', 1, -Infinity],
    ['blurry', -0.5, -Infinity],
    ['a watercolor painting', 0.8, 1.212],
  ]);
  assert.deepEqual(parsePromptList('a.png:0.5|b.png', 'image').map(tws), [
    ['a.png', 0.5, -Infinity],
    ['b.png', 1, -Infinity],
  ]);
  userError(() => parsePromptList('a||b'), /--prompts: prompt 2 of 3 in 'a\|\|b' is empty/, 'double pipe');
  userError(() => parsePromptList('a|'), /prompt 2 of 2/, 'trailing pipe');
  userError(() => parsePromptList('x.png|', 'image'), /--image-prompts: image prompt 2 of 2/, 'image list');
  userError(() => parsePromptList('a|b:0'), /prompt 'b:0' has weight 0/, 'bad item is named');

  const story = parseStory('a forest|dark:-1 ^ a city ^ the sea:2');
  assert.deepEqual(story.map((ph) => ph.map(tws)), [
    [['a forest', 1, -Infinity], ['dark', -1, -Infinity]],
    [['a city', 1, -Infinity]],
    [['the sea', 2, -Infinity]],
  ]);
  assert.equal(parseStory('just one').length, 1);
  userError(() => parseStory('a^^b'), /phrase 2 of 3/, 'empty phrase');
  userError(() => parseStory('a^b:0,1'), /'0,1' is not a number/, 'bad prompt in a phrase');
});

test("story phrase schedule follows generate.py's --change_prompt_every", () => {
  // Reference: simulate the script's loop (p = 1; at i % f == 0 and i > 0: if p >= n: p = 0; use phrase p; p += 1).
  for (const [f, n] of [[3, 4], [5, 2], [1, 3], [7, 1]]) {
    let p = 1;
    let active = 0;
    for (let i = 0; i < 60; i++) {
      if (i % f === 0 && i > 0) {
        if (p >= n) p = 0;
        active = p;
        p += 1;
      }
      assert.equal(storyPhraseAt(i, f, n), active, `f=${f} n=${n} i=${i}`);
    }
  }
  assert.equal(storyPhraseAt(1000, 0, 5), 0);
});

test('noise prompts: seed[:weight[:stop]] and a deterministic embedding per seed', () => {
  const p = parseNoisePrompt('123:0.5');
  assert.equal(p.seed, 123);
  assert.equal(p.weight, 0.5);
  assert.equal(p.stop, -Infinity);
  assert.equal(parseNoisePrompt(' 7 ').weight, 1);
  assert.deepEqual(parsePromptList('1|2:-0.3', 'noise').map((q) => [(q as NoisePromptSpec).seed, q.weight]), [[1, 1], [2, -0.3]]);
  userError(() => parseNoisePrompt('abc:1'), /noise prompt seed in 'abc:1'.*not a whole number/, 'bad seed');
  userError(() => parseNoisePrompt('1.5'), /not a whole number/, 'fractional seed');
  userError(() => parseNoisePrompt(':1'), /noise prompt ':1' has no seed/, 'no seed');

  const a = noisePromptEmbedding(123, 512);
  const b = noisePromptEmbedding(123, 512);
  const c = noisePromptEmbedding(124, 512);
  assert.equal(a.length, 512);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  let m = 0;
  let v = 0;
  for (const x of a) m += x / a.length;
  for (const x of a) v += (x - m) ** 2 / a.length;
  assert.ok(Math.abs(m) < 0.2 && Math.abs(v - 1) < 0.25, `standard normal: mean ${m} var ${v}`);
});

test('prompt files: one image per line, comments, blank lines, CRLF, errors name file:line', () => {
  const content = '\uFEFF# my prompts\r\n\r\na red apple:1|blurry:-0.5\r\n   # indented comment\n  a forest ^ a city  \n\\#hashtag art\n';
  const entries = parsePromptFile(content, 'p.txt');
  assert.deepEqual(entries.map((e) => [e.line, e.text, e.story.length]), [
    [3, 'a red apple:1|blurry:-0.5', 1],
    [5, 'a forest ^ a city', 2],
    [6, '#hashtag art', 1],
  ]);
  assert.equal(entries[2].story[0][0].text, '#hashtag art');
  userError(() => parsePromptFile('ok\n\nbad:0\n', 'p.txt'), /^p\.txt:3: prompt 'bad:0' has weight 0/, 'error names file and line');
  userError(() => parsePromptFile('# only comments\n\n', 'q.txt'), /q\.txt has no prompts/, 'empty file');

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-prompts-'));
  const file = path.join(dir, 'batch.txt');
  fs.writeFileSync(file, 'one\ntwo:2\n');
  assert.deepEqual(readPromptFile(file).map((e) => e.story[0][0].weight), [1, 2]);
  userError(() => readPromptFile(path.join(dir, 'missing.txt')), /cannot read prompt file .*missing\.txt \(ENOENT\)/, 'missing file');
  fs.rmSync(dir, { recursive: true });
});
