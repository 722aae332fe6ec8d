// CLIP's tokenizer against OpenAI's SimpleTokenizer + clip.tokenize (fixtures: clip_tokenizer_cases.json and
// token_ids in clip_reference.safetensors, made with ftfy 6.3.1), the ftfy port against ftfy's own documented
// examples, html.unescape against CPython's, the Hugging Face vocabulary formats, and the missing-vocabulary error.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { test, type TestContext } from 'node:test';
import { UserError } from '../src/cli/errors.ts';
import { asNumbers } from '../src/formats/host-tensor.ts';
import { fixText, htmlUnescape } from '../src/models/ftfy.ts';
import { BPE_VOCAB_FILE, BPE_VOCAB_URL, ClipTokenizer, bytesToUnicode, cleanText, loadClipTokenizer } from '../src/models/clip-tokenizer.ts';
import { fixture, reference } from './helpers.ts';

interface Case {
  text: string;
  cleaned_lowercased: string;
  bpe_ids_without_sot_eot: number[];
  bpe_strings: string[];
  n_bpe: number;
  truncated: boolean;
  tokenize_default_raises: string | null;
  ids_77: number[];
  decoded: string;
}

let cached: ClipTokenizer | undefined;
/** The tokenizer on the fixture vocabulary (read in place), or undefined (test skipped) without it. */
function tokenizer(t: TestContext): ClipTokenizer | undefined {
  const p = fixture(t, BPE_VOCAB_FILE);
  if (!p) return undefined;
  cached ??= ClipTokenizer.fromBpeFile(p);
  return cached;
}

function cases(t: TestContext): Case[] | undefined {
  const p = fixture(t, 'clip_tokenizer_cases.json');
  return p ? (JSON.parse(fs.readFileSync(p, 'utf8')) as { cases: Case[] }).cases : undefined;
}

test('every fixture case: cleaned text, BPE strings and ids, 77-token rows, decode, truncation', (t) => {
  const tok = tokenizer(t);
  const cs = cases(t);
  if (!tok || !cs) return;
  assert.equal(tok.vocabSize, 49408);
  assert.equal(tok.sot, 49406);
  assert.equal(tok.eot, 49407);
  for (const c of cs) {
    const label = JSON.stringify(c.text.slice(0, 40));
    assert.equal(cleanText(c.text), c.cleaned_lowercased, `${label}: cleaned`);
    assert.deepEqual(tok.bpeTokens(c.text), c.bpe_strings, `${label}: BPE strings`);
    assert.deepEqual(tok.encode(c.text), c.bpe_ids_without_sot_eot, `${label}: ids`);
    assert.equal(c.bpe_ids_without_sot_eot.length, c.n_bpe);
    assert.deepEqual(Array.from(tok.tokenize([c.text], { truncate: true }).ids), c.ids_77, `${label}: tokenize(truncate=True)`);
    assert.equal(tok.decode(c.bpe_ids_without_sot_eot), c.decoded, `${label}: decode`);
    if (c.tokenize_default_raises) {
      assert.ok(c.truncated);
      assert.throws(() => tok.tokenize([c.text]), (err: unknown) => err instanceof UserError && /tokens long; CLIP reads at most 77/.test(err.message));
    } else {
      assert.deepEqual(Array.from(tok.tokenize([c.text]).ids), c.ids_77, `${label}: tokenize()`);
    }
  }
  const longCase = cs.find((c) => c.truncated)!;
  const row = tok.tokenize([longCase.text], { truncate: true }).ids;
  assert.equal(row[76], 49407, 'truncation ends with <|endoftext|>');
});

test('token_ids of clip_reference.safetensors (the cases as one batch, truncate=True)', (t) => {
  const tok = tokenizer(t);
  const cs = cases(t);
  const ref = reference(t, 'clip_reference.safetensors');
  if (!tok || !cs || !ref) return;
  const { ids, shape } = tok.tokenize(cs.map((c) => c.text), { truncate: true });
  assert.deepEqual(shape, ref.get('token_ids')!.shape);
  assert.deepEqual(Array.from(ids), asNumbers(ref.get('token_ids')!));
});

test('ftfy port: the examples in ftfy 6.3.1 docstrings and README', () => {
  const examples: [string, string][] = [
    ['\u00e2\u0153\u201d No problems', '\u2714 No problems'],
    ['&macr;\\_(\u00e3\x83\x84)_/&macr;', '\u00af\\_(\u30c4)_/\u00af'],
    ['Broken text&hellip; it&#x2019;s \ufb02ubberi\ufb01c!', "Broken text\u2026 it's flubberific!"],
    ['\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33', 'LOUD NOISES'],
    ['s\u00c3\u00b3', 's\u00f3'],
    ['voil\u00c3 le travail', 'voil\u00e0 le travail'],
    ['&Jscr;ohn &HilbertSpace;ancock', '\u{1d4a5}ohn \u210bancock'],
    ['P&EACUTE;REZ', 'P\u00c9REZ'],
    ['BUNDESSTRA&SZLIG;E', 'BUNDESSTRASSE'],
    ['&ntilde; &Ntilde; &NTILDE; &nTILDE;', '\u00f1 \u00d1 \u00d1 &nTILDE;'],
    ['<em>HTML entities &lt;3</em>', '<em>HTML entities &lt;3</em>'],
    ['\uff35\uff80\uff70\uff9d', 'U\u30bf\u30fc\u30f3'],
    ['\ufb02u\ufb03e\ufb06', 'fluffiest'],
    ["\x1b[36;44mI'm blue, da ba dee da ba doo...\x1b[0m", "I'm blue, da ba dee da ba doo..."],
    ['\u00e2\u20ac\u0153 like this \u00e2\u20ac\ufffd', '" like this \ufffd'],
    ['The Mona Lisa doesn\u00c3\u0192\u00c2\u00a2\u00c3\u00a2\u00e2\u20ac\u0161\u00c2\u00ac\u00c3\u00a2\u00e2\u20ac\u017e\u00c2\u00a2t have eyebrows.', "The Mona Lisa doesn't have eyebrows."],
    ['l\u2019humanit\u00c3\u00a9', "l'humanit\u00e9"],
    ['u\u00cc\u02c6nicode', '\u00fcnicode'],
    ['This text was never UTF-8 at all\x85', 'This text was never UTF-8 at all\u2026'],
    ['This text is fine already :\u00fe', 'This text is fine already :\u00fe'],
    ['AH\u00c5\u2122, the new sofa from IKEA\u00ae', 'AH\u00c5\u2122, the new sofa from IKEA\u00ae'],
    ['\u00c3\u00a0\u00c2\u00b2\u00c2\u00a0_\u00c3\u00a0\u00c2\u00b2\u00c2\u00a0', '\u0ca0_\u0ca0'],
    ['Party like\r\nit\u2019s 1999!\u2028', "Party like\nit's 1999!\n"],
  ];
  for (const [input, expected] of examples) assert.equal(fixText(input), expected, JSON.stringify(input));
});

test('html.unescape: CPython 3.11 semantics', () => {
  // expected values printed by CPython 3.11's html.unescape
  const examples: [string, string][] = [
    ['&amp', '&'],
    ['&ampxyz;', '&xyz;'],
    ['&#128;', '\u20ac'],
    ['&#x1F600;', '\u{1f600}'],
    ['&#0;', '\ufffd'],
    ['&#1;', ''],
    ['&notit;', '\u00acit;'],
    ['&#xD800;', '\ufffd'],
    ['&nbsp', '\u00a0'],
    ['a&lt;b&gtc', 'a<b>c'],
    ['&amp;amp;', '&amp;'],
  ];
  for (const [input, expected] of examples) assert.equal(htmlUnescape(input), expected, input);
});

test('bytes_to_unicode: 256 distinct printable characters, printable bytes first', () => {
  const m = bytesToUnicode();
  assert.equal(m.length, 256);
  assert.equal(new Set(m.map(([, c]) => c)).size, 256);
  assert.deepEqual(m[0], [0x21, '!']);
  assert.deepEqual(m[188], [0x00, '\u0100']);
  assert.equal(new Map(m).get(0x20), '\u0120');
});

test('Hugging Face vocab.json + merges.txt and tokenizer.json give the same ids', (t) => {
  const tok = tokenizer(t);
  const cs = cases(t);
  const gz = fixture(t, BPE_VOCAB_FILE);
  if (!tok || !cs || !gz) return;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-hf-tok-'));
  try {
    // the layout of openai/clip-vit-base-patch32: the same merges (header line kept) and the encoder as vocab.json
    const lines = zlib.gunzipSync(fs.readFileSync(gz)).toString('utf8').split('\n').slice(1, 48895);
    const base = bytesToUnicode().map(([, c]) => c);
    const vocab = [...base, ...base.map((v) => v + '</w>'), ...lines.map((l) => l.replace(' ', '')), '<|startoftext|>', '<|endoftext|>'];
    const vocabJson = Object.fromEntries(vocab.map((v, i) => [v, i]));
    fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(vocabJson));
    fs.writeFileSync(path.join(dir, 'merges.txt'), ['#version: 0.2', ...lines].join('\n') + '\n');
    const hf = loadClipTokenizer(dir);
    const texts = cs.map((c) => c.text);
    assert.deepEqual(hf.tokenize(texts, { truncate: true }).ids, tok.tokenize(texts, { truncate: true }).ids);

    const dir2 = path.join(dir, 'json');
    fs.mkdirSync(dir2);
    fs.writeFileSync(path.join(dir2, 'tokenizer.json'), JSON.stringify({ model: { type: 'BPE', vocab: vocabJson, merges: lines.map((l) => l.split(' ')) } }));
    const hf2 = loadClipTokenizer(dir2);
    assert.deepEqual(hf2.tokenize(texts, { truncate: true }).ids, tok.tokenize(texts, { truncate: true }).ids);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('missing vocabulary: the error names the file, where it looked, and where to get it', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-novocab-'));
  const cwd = process.cwd();
  try {
    process.chdir(dir); // so that no weights/ folder is found
    assert.throws(
      () => loadClipTokenizer(path.join(dir, 'ViT-B-32.pt')),
      (err: unknown) =>
        err instanceof UserError &&
        err.message.includes(BPE_VOCAB_FILE) &&
        err.message.includes(path.join(dir, BPE_VOCAB_FILE)) &&
        err.message.includes(path.join(dir, 'weights', BPE_VOCAB_FILE)) &&
        (err.hint ?? '').includes(BPE_VOCAB_URL),
    );
    fs.writeFileSync(path.join(dir, BPE_VOCAB_FILE), 'not gzip');
    assert.throws(() => loadClipTokenizer(path.join(dir, 'ViT-B-32.pt')), /cannot read the CLIP BPE vocabulary.*download it from https:\/\/github\.com\/openai\/CLIP/);
  } finally {
    process.chdir(cwd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
