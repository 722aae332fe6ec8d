// CLIP's tokenizer, identical to OpenAI's `clip/simple_tokenizer.py` + `clip.tokenize`: ftfy + HTML unescape (twice)
// + whitespace collapse + lower-case, a regex split into words, UTF-8 bytes mapped to printable characters
// (bytes_to_unicode), byte-pair encoding with '</w>' marking the end of a word, then <|startoftext|> ... <|endoftext|>
// zero-padded to the context length.
//
// The vocabulary comes from OpenAI's `bpe_simple_vocab_16e6.txt.gz` or from a Hugging Face CLIP folder
// (vocab.json + merges.txt, or tokenizer.json). For Hugging Face folders we still run OpenAI's text cleanup, because
// OpenAI's tokenizer is the reference the released models were trained with. We do not use @xenova/transformers
// (or @huggingface/transformers) for those folders: its CLIP tokenizer follows tokenizer.json (NFC + whitespace +
// lower-case), without ftfy or HTML unescaping, so ligatures, fullwidth letters, mojibake and entities would give
// other ids than OpenAI's; it also does not install offline without package overrides and brings ONNX Runtime.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { UserError } from '../cli/errors.ts';
import { FormatError } from '../formats/host-tensor.ts';
import { fixText, htmlUnescape } from './ftfy.ts';

export const BPE_VOCAB_FILE = 'bpe_simple_vocab_16e6.txt.gz';
export const BPE_VOCAB_URL = 'https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz';
export const SOT = '<|startoftext|>';
export const EOT = '<|endoftext|>';

/**
 * GPT-2's reversible byte -> printable character map, as [byte, character] pairs in Python's dict order (printable
 * bytes first): that order numbers the first 512 vocabulary entries.
 */
export function bytesToUnicode(): [number, string][] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  return bs.map((b, i) => [b, String.fromCharCode(cs[i])]);
}

// Python's `str.isspace()` / the `regex` module's `\s` (they differ only in U+001C-U+001F, which ftfy removes).
const PY_SPACE = '\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const WS_RUN = new RegExp(`[${PY_SPACE}]+`, 'g');
const WS_EDGES = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, 'g');
// simple_tokenizer.py's pattern (regex module, IGNORECASE); digits are single tokens.
const WORD_RE = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^${PY_SPACE}\\p{L}\\p{N}]+`,
  'giu',
);

/** basic_clean + whitespace_clean + lower(): the text the BPE sees. */
export function cleanText(text: string): string {
  let t = fixText(text);
  t = htmlUnescape(htmlUnescape(t)).replace(WS_EDGES, '');
  return t.replace(WS_RUN, ' ').replace(WS_EDGES, '').toLowerCase();
}

export interface TokenizeOptions {
  /** default 77 (or the tokenizer's own) */
  contextLength?: number;
  /** keep the first contextLength ids and make the last one <|endoftext|>, instead of failing */
  truncate?: boolean;
}

export class ClipTokenizer {
  /** byte -> character */
  private readonly byteEncoder: string[] = [];
  private readonly cache = new Map<string, string[]>();
  readonly sot: number;
  readonly eot: number;

  constructor(
    /** token string -> id */
    private readonly encoder: Map<string, number>,
    /** "first second" -> merge rank */
    private readonly ranks: Map<string, number>,
    readonly contextLength = 77,
    readonly source = '<memory>',
  ) {
    for (const [b, c] of bytesToUnicode()) this.byteEncoder[b] = c;
    const sot = encoder.get(SOT);
    const eot = encoder.get(EOT);
    if (sot === undefined || eot === undefined) throw new FormatError(source, `vocabulary lacks ${SOT} or ${EOT}`, 'not a CLIP vocabulary');
    this.sot = sot;
    this.eot = eot;
    this.cache.set(SOT, [SOT]);
    this.cache.set(EOT, [EOT]);
  }

  get vocabSize(): number {
    return this.encoder.size;
  }

  /** OpenAI's vocabulary: merges = lines 1..48894 of the gz file; 256 bytes, their '</w>' forms, merges, 2 specials. */
  static fromBpeMerges(mergesText: string, source = BPE_VOCAB_FILE): ClipTokenizer {
    const lines = mergesText.split('\n').slice(1, 49152 - 256 - 2 + 1);
    const merges = lines.map((l) => l.split(/\s+/).filter(Boolean));
    if (merges.length !== 48894 || merges.some((m) => m.length !== 2)) {
      throw new FormatError(source, `expected 48894 BPE merges, found ${merges.length}`, `re-download it from ${BPE_VOCAB_URL}`);
    }
    const base = bytesToUnicode().map(([, c]) => c);
    const vocab = [...base, ...base.map((v) => v + '</w>'), ...merges.map((m) => m.join('')), SOT, EOT];
    const encoder = new Map(vocab.map((v, i) => [v, i]));
    const ranks = new Map(merges.map((m, i) => [m.join(' '), i]));
    return new ClipTokenizer(encoder, ranks, 77, source);
  }

  /** Reads `bpe_simple_vocab_16e6.txt.gz` (gzip-compressed merges). */
  static fromBpeFile(file: string): ClipTokenizer {
    let text: string;
    try {
      text = zlib.gunzipSync(fs.readFileSync(file)).toString('utf8');
    } catch (err) {
      throw new FormatError(file, `cannot read the CLIP BPE vocabulary (${(err as Error).message})`, `download it from ${BPE_VOCAB_URL}`);
    }
    return ClipTokenizer.fromBpeMerges(text, file);
  }

  /** A Hugging Face tokenizer folder: vocab.json + merges.txt, or tokenizer.json. */
  static fromHuggingFace(dir: string, contextLength = 77): ClipTokenizer {
    const vocabJson = path.join(dir, 'vocab.json');
    const mergesTxt = path.join(dir, 'merges.txt');
    const tokJson = path.join(dir, 'tokenizer.json');
    let vocab: Record<string, number>;
    let merges: string[];
    let source: string;
    if (fs.existsSync(vocabJson) && fs.existsSync(mergesTxt)) {
      source = vocabJson;
      vocab = readJson(vocabJson) as Record<string, number>;
      merges = fs
        .readFileSync(mergesTxt, 'utf8')
        .split('\n')
        .filter((l) => l.trim() && !l.startsWith('#version'));
    } else if (fs.existsSync(tokJson)) {
      source = tokJson;
      const tj = readJson(tokJson) as { model?: { type?: string; vocab?: Record<string, number>; merges?: (string | string[])[] } };
      if (tj.model?.type !== 'BPE' || !tj.model.vocab || !tj.model.merges) {
        throw new FormatError(tokJson, 'is not a BPE tokenizer', 'expected the tokenizer.json of a CLIP model');
      }
      vocab = tj.model.vocab;
      merges = tj.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m));
    } else {
      throw new UserError(
        `no CLIP tokenizer in ${dir}: expected vocab.json + merges.txt or tokenizer.json`,
        `copy them from the model's Hugging Face repository, or put ${BPE_VOCAB_FILE} there (${BPE_VOCAB_URL})`,
      );
    }
    const encoder = new Map(Object.entries(vocab));
    const ranks = new Map(merges.map((m, i) => [m.trim().split(/\s+/).join(' '), i]));
    return new ClipTokenizer(encoder, ranks, contextLength, source);
  }

  private bpe(token: string): string[] {
    const cached = this.cache.get(token);
    if (cached) return cached;
    const chars = [...token];
    let word = [...chars.slice(0, -1), chars[chars.length - 1] + '</w>'];
    while (word.length > 1) {
      // the adjacent pair with the lowest merge rank
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(word[i] + ' ' + word[i + 1]);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best];
      const second = word[best + 1];
      // merge every non-overlapping occurrence, left to right
      const next: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          next.push(first + second);
          i += 2;
        } else {
          next.push(word[i++]);
        }
      }
      word = next;
    }
    this.cache.set(token, word);
    return word;
  }

  /** The BPE token strings of a text (without start/end tokens). */
  bpeTokens(text: string): string[] {
    const out: string[] = [];
    for (const m of cleanText(text).matchAll(WORD_RE)) {
      const bytes = Buffer.from(m[0], 'utf8');
      let mapped = '';
      for (const b of bytes) mapped += this.byteEncoder[b];
      out.push(...this.bpe(mapped));
    }
    return out;
  }

  /** SimpleTokenizer.encode: ids without start/end tokens. */
  encode(text: string): number[] {
    return this.bpeTokens(text).map((t) => {
      const id = this.encoder.get(t);
      if (id === undefined) throw new FormatError(this.source, `BPE produced "${t}", which the vocabulary lacks`, 'vocabulary and merges do not match');
      return id;
    });
  }

  /**
   * clip.tokenize: [n, contextLength] int32 ids, each row <|startoftext|> ids <|endoftext|> 0... A text longer than
   * the context fails (like clip.tokenize) unless `truncate`, which keeps the first contextLength ids and ends them
   * with <|endoftext|>.
   */
  tokenize(texts: string[], opts: TokenizeOptions = {}): { ids: Int32Array; shape: [number, number] } {
    const ctx = opts.contextLength ?? this.contextLength;
    const ids = new Int32Array(texts.length * ctx);
    texts.forEach((text, i) => {
      let tokens = [this.sot, ...this.encode(text), this.eot];
      if (tokens.length > ctx) {
        if (!opts.truncate) {
          throw new UserError(
            `the prompt "${text.length > 60 ? text.slice(0, 57) + '...' : text}" is ${tokens.length} tokens long; CLIP reads at most ${ctx}`,
            'shorten the prompt (or let it be truncated)',
          );
        }
        tokens = tokens.slice(0, ctx);
        tokens[ctx - 1] = this.eot;
      }
      ids.set(tokens, i * ctx);
    });
    return { ids, shape: [texts.length, ctx] };
  }

  /** Ids back to text (SimpleTokenizer.decode). */
  decode(ids: number[]): string {
    const decoder = new Map([...this.encoder].map(([k, v]) => [v, k]));
    const byteDecoder = new Map(this.byteEncoder.map((c, b) => [c, b]));
    const text = ids.map((i) => decoder.get(i) ?? '').join('');
    const bytes = Uint8Array.from([...text].map((c) => byteDecoder.get(c) ?? 0x3f));
    return new TextDecoder().decode(bytes).replaceAll('</w>', ' ');
  }
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new FormatError(file, `is not valid JSON (${(err as Error).message})`);
  }
}

/**
 * Finds CLIP's vocabulary for a model file or folder: a Hugging Face folder's own tokenizer files, else
 * `bpe_simple_vocab_16e6.txt.gz` next to the model, then in the weights folders (clip-load.ts weightFolders:
 * $VQCLIP_WEIGHTS, ./weights, this installation's weights/) or the directories given.
 * The error names every place looked at and where to download the file.
 */
export function loadClipTokenizer(modelPath?: string, searchDirs: string[] = [path.resolve('weights')]): ClipTokenizer {
  const dirs: string[] = [];
  if (modelPath) {
    const isDir = fs.existsSync(modelPath) && fs.statSync(modelPath).isDirectory();
    const dir = isDir ? modelPath : path.dirname(modelPath);
    if (isDir && (fs.existsSync(path.join(dir, 'tokenizer.json')) || fs.existsSync(path.join(dir, 'vocab.json')))) {
      return ClipTokenizer.fromHuggingFace(dir);
    }
    dirs.push(dir);
  }
  dirs.push(...searchDirs);
  const looked: string[] = [];
  for (const d of dirs) {
    const f = path.join(d, BPE_VOCAB_FILE);
    if (looked.includes(f)) continue;
    looked.push(f);
    if (fs.existsSync(f)) return ClipTokenizer.fromBpeFile(f);
  }
  throw new UserError(`CLIP's vocabulary ${BPE_VOCAB_FILE} was not found (looked for ${looked.join(', ')})`, `download ${BPE_VOCAB_URL} into weights/`);
}
