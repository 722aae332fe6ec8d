// A port of the parts of ftfy 6.3.1's `fix_text` (https://github.com/rspeer/python-ftfy) that CLIP's tokenizer runs
// on every prompt, so that token ids match OpenAI's `SimpleTokenizer` (which calls `ftfy.fix_text` first):
// HTML entities, mojibake repair (UTF-8 read as latin-1 / windows-125x / iso-8859-2 / MacRoman / cp437, incl. ftfy's
// "sloppy" codecs, byte A0 restoration and lossy sequences), C1 controls, Latin ligatures, fullwidth/halfwidth forms,
// curly quotes, line breaks, surrogates, terminal escapes, control characters and NFC normalization, repeated until
// nothing changes, one line at a time - the same steps in the same order as `ftfy.fix_and_explain`, including
// `decode_inconsistent_utf8` (UTF-8 mojibake embedded in text that does not reinterpret as a whole).
// Also here: Python's `html.unescape`, which CLIP applies twice after ftfy.
import HTML5_ENTITIES from './html5-entities.json' with { type: 'json' };

// ---------------------------------------------------------------------------------------------------------------
// Character categories of ftfy/badness.py (MOJIBAKE_CATEGORIES), as regex class contents.
const CAT = {
  common: '\u00a0\u00ad\u00b7\u00b4\u2013\u2014\u2015\u2026\u2019',
  c1: '\u0080-\u009f',
  bad: '\u00a6\u00a4\u00a8\u00ac\u00af\u00b8\u0192\u02c6\u02c7\u02d8\u02db\u02dc\u2020\u2021\u2030\u2310\u25ca\ufffd\u00aa\u00ba',
  law: '\u00b6\u00a7',
  currency: '\u00a2\u00a3\u00a5\u20a7\u20ac',
  start: '\u00a1\u00ab\u00bf\u00a9\u0384\u0385\u2018\u201a\u201c\u201e\u2022\u2039\uf8ff',
  end: '\u00ae\u00bb\u02dd\u201d\u203a\u2122',
  numeric:
    '\u00b2\u00b3\u00b9\u00b1\u00bc\u00bd\u00be\u00d7\u00b5\u00f7\u2044\u2202\u2206\u220f\u2211\u221a\u221e\u2229\u222b\u2248\u2260\u2261\u2264\u2265\u2116',
  kaomoji: '\u00d2-\u00d6\u00d9-\u00dc\u00f2-\u00f6\u00f8-\u00fc\u0150\u014c\u016a\u0172\u00b0',
  upperAccented:
    '\u00c0-\u00d1\u00d8\u00dc\u00dd\u0102\u0100\u0104\u0106\u010c\u010e\u0110\u0118\u011a\u0112\u0116\u011e\u0122\u0130\u012a\u0136\u0139\u013d\u0141\u013b\u0143\u0147\u0145\u0152\u0158\u015a\u015e\u0160\u0162\u0164\u016e\u0170\u0178\u0179\u017b\u017d\u0490',
  lowerAccented:
    '\u00df\u00e0-\u00f1\u0103\u0105\u0101\u0107\u010d\u010f\u0111\u0119\u011b\u0113\u0117\u011f\u0123\u012f\u012b\u0137\u013a\u013e\u0142\u013c\u0153\u0155\u015b\u015f\u0161\u0165\u00fc\u017a\u017c\u017e\u0491\ufb01\ufb02',
  upperCommon: '\u00de\u0391-\u03a9\u0386\u0388\u0389\u038a\u038c\u038e\u038f\u03aa\u03ab\u0401-\u042f',
  lowerCommon: '\u03b1-\u03c9\u03ac\u03ad\u03ae\u03af\u03b0\u0430-\u045f',
  box: '\u2502\u250c\u2510\u2518\u251c\u2524\u252c\u253c\u2550-\u256c\u2580\u2584\u2588\u258c\u2590\u2591\u2592\u2593',
};

// ftfy's BADNESS_RE, alternative by alternative (Python's verbose-mode spaces removed; `\w` spelled out Unicode-wide
// as Python's is).
const BADNESS_RE = (() => {
  const c = CAT;
  const alts = [
    `[${c.c1}]`,
    `[${c.bad}${c.lowerAccented}${c.upperAccented}${c.box}${c.start}${c.end}${c.currency}${c.numeric}${c.law}][${c.bad}]`,
    `[a-zA-Z][${c.lowerCommon}${c.upperCommon}][${c.bad}]`,
    `[${c.bad}][${c.lowerAccented}${c.upperAccented}${c.box}${c.start}${c.end}${c.currency}${c.numeric}${c.law}]`,
    `[${c.lowerAccented}${c.lowerCommon}${c.box}${c.end}${c.currency}${c.numeric}][${c.upperAccented}]`,
    `[${c.box}${c.end}${c.currency}${c.numeric}][${c.lowerAccented}]`,
    `[${c.lowerAccented}${c.box}${c.end}][${c.currency}]`,
    `${PY_SPACE_CLASS()}[${c.upperAccented}][${c.currency}]`,
    `[${c.upperAccented}${c.box}][${c.numeric}${c.law}]`,
    `[${c.lowerAccented}${c.upperAccented}${c.box}${c.currency}${c.end}][${c.start}][${c.numeric}]`,
    `[${c.lowerAccented}${c.upperAccented}${c.currency}${c.numeric}${c.box}${c.law}][${c.end}][${c.start}]`,
    `[${c.currency}${c.numeric}${c.box}][${c.start}]`,
    `[a-z][${c.upperAccented}][${c.start}${c.currency}]`,
    `[${c.box}][${c.kaomoji}]`,
    `[${c.lowerAccented}${c.upperAccented}${c.currency}${c.numeric}${c.start}${c.end}${c.law}][${c.box}]`,
    `[${c.box}][${c.end}]`,
    `[${c.lowerAccented}${c.upperAccented}][${c.start}${c.end}][\\p{L}\\p{N}_]`,
    // the ligature oe when not followed by an unaccented Latin letter
    '[\u0152\u0153][^A-Za-z]',
    // degree signs after capital letters
    `[${c.upperAccented}]\u00b0`,
    // common Windows-1252 2-character mojibake
    `[\u00c2\u00c3\u00ce\u00d0][\u20ac\u0153\u0160\u0161\u00a2\u00a3\u0178\u017e\u00a0\u00ad\u00ae\u00a9\u00b0\u00b7\u00bb${c.start}${c.end}\u2013\u2014\u00b4]`,
    '\u00d7[\u00b2\u00b3]',
    // Windows-1252 mojibake of Arabic words
    `[\u00d8\u00d9][${c.common}${c.currency}${c.bad}${c.numeric}${c.start}\u0178\u0160\u00ae\u00b0\u00b5\u00bb]` +
      `[\u00d8\u00d9][${c.common}${c.currency}${c.bad}${c.numeric}${c.start}\u0178\u0160\u00ae\u00b0\u00b5\u00bb]`,
    // Windows-1252 mojibake starting 3-byte sequences of South Asian alphabets
    '\u00e0[\u00b2\u00b5\u00b9\u00bc\u00bd\u00be]',
    // MacRoman mojibake
    '\u221a[\u00b1\u2202\u2020\u2260\u00ae\u2122\u00b4\u2264\u2265\u00a5\u00b5\u00f8]',
    '\u2248[\u00b0\u00a2]',
    '\u201a\u00c4[\u00ec\u00ee\u00ef\u00f2\u00f4\u00fa\u00f9\u00fb\u2020\u00b0\u00a2\u03c0]',
    '\u201a[\u00e2\u00f3][\u00e0\u00e4\u00b0\u00ea]',
    // Windows-1251 mojibake
    '\u0432\u0402',
    `[\u0412\u0413\u0420\u0421][${c.c1}${c.bad}${c.start}${c.end}${c.currency}\u00b0\u00b5][\u0412\u0413\u0420\u0421]`,
    '\u0413\u045e\u0412\u0402\u0412.[A-Za-z ]',
    // Windows-1252 encodings of a-grave, a-acute and A0 itself
    '\u00c3[\u00a0\u00a1]',
    `[a-z]${PY_SPACE_CLASS()}?[\u00c3\u00c2][ ]`,
    '^[\u00c3\u00c2][ ]',
    `[a-z.,?!${c.end}]\u00c2[ ${c.start}${c.end}]`,
    // Windows-1253 mojibake
    '\u03b2\u20ac[\u2122\u00a0\u0386\u00ad\u00ae\u00b0]',
    `[\u0392\u0393\u039e\u039f][${c.c1}${c.bad}${c.start}${c.end}${c.currency}\u00b0][\u0392\u0393\u039e\u039f]`,
    // Windows-1257 mojibake
    '\u0101\u20ac',
  ];
  return new RegExp(alts.join('|'), 'u');
})();

/** Python's `str.isspace()` set, which `\s` of Python's `re` matches in str patterns. */
function PY_SPACE_CLASS(): string {
  return '[\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
}

/** True when the text looks like it contains mojibake (ftfy.badness.is_bad). */
export function isBad(text: string): boolean {
  return BADNESS_RE.test(text);
}

// ---------------------------------------------------------------------------------------------------------------
// Single-byte encodings (ftfy.chardata.CHARMAP_ENCODINGS, in the order ftfy tries them). Each maps bytes 0x80-0xFF
// to characters; ftfy's "sloppy" variants decode bytes the codec leaves undefined as the Latin-1 character of the
// same number and use byte 1A for U+FFFD.

interface Charmap {
  name: string;
  sloppy: boolean;
  /** character code point -> byte, for every encodable character */
  encode: Map<number, number>;
  decode: string[]; // byte -> character
}

// windows-1252's 0x80-0x9F (spelled out: Node's TextDecoder('windows-1252') decodes them as Latin-1 C1 controls).
const WIN1252_80_9F =
  '\u20ac\u0081\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u008d\u017d\u008f' +
  '\u0090\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u009d\u017e\u0178';
const CP437_HIGH =
  '\u00c7\u00fc\u00e9\u00e2\u00e4\u00e0\u00e5\u00e7\u00ea\u00eb\u00e8\u00ef\u00ee\u00ec\u00c4\u00c5\u00c9\u00e6\u00c6\u00f4\u00f6\u00f2\u00fb\u00f9\u00ff\u00d6\u00dc\u00a2\u00a3\u00a5\u20a7\u0192' +
  '\u00e1\u00ed\u00f3\u00fa\u00f1\u00d1\u00aa\u00ba\u00bf\u2310\u00ac\u00bd\u00bc\u00a1\u00ab\u00bb\u2591\u2592\u2593\u2502\u2524\u2561\u2562\u2556\u2555\u2563\u2551\u2557\u255d\u255c\u255b\u2510' +
  '\u2514\u2534\u252c\u251c\u2500\u253c\u255e\u255f\u255a\u2554\u2569\u2566\u2560\u2550\u256c\u2567\u2568\u2564\u2565\u2559\u2558\u2552\u2553\u256b\u256a\u2518\u250c\u2588\u2584\u258c\u2590\u2580' +
  '\u03b1\u00df\u0393\u03c0\u03a3\u03c3\u00b5\u03c4\u03a6\u0398\u03a9\u03b4\u221e\u03c6\u03b5\u2229\u2261\u00b1\u2265\u2264\u2320\u2321\u00f7\u2248\u00b0\u2219\u00b7\u221a\u207f\u00b2\u25a0\u00a0';

function highHalf(name: string): string[] {
  if (name === 'latin-1') return Array.from({ length: 128 }, (_, i) => String.fromCharCode(0x80 + i));
  if (name === 'windows-1252') {
    return [...WIN1252_80_9F, ...Array.from({ length: 96 }, (_, i) => String.fromCharCode(0xa0 + i))];
  }
  if (name === 'cp437') return [...CP437_HIGH];
  // The other tables come from the WHATWG decoders in Node's ICU (checked equal to Python's codecs for 0x80-0xFF,
  // undefined bytes aside, which the sloppy variants map to Latin-1 anyway).
  const decoded = new TextDecoder(name === 'macroman' ? 'macintosh' : name).decode(Uint8Array.from({ length: 128 }, (_, i) => 0x80 + i));
  return [...decoded].map((ch, i) => (ch === '\ufffd' ? String.fromCharCode(0x80 + i) : ch));
}

function charmap(name: string): Charmap {
  const sloppy = name.startsWith('sloppy-');
  const base = sloppy ? name.slice(7) : name;
  const decode = Array.from({ length: 128 }, (_, i) => String.fromCharCode(i)).concat(highHalf(base));
  if (sloppy) decode[0x1a] = '\ufffd';
  const encode = new Map<number, number>();
  decode.forEach((ch, b) => encode.set(ch.codePointAt(0)!, b));
  return { name, sloppy, encode, decode };
}

let charmaps: Charmap[] | undefined;
function getCharmaps(): Charmap[] {
  charmaps ??= [
    'latin-1',
    'sloppy-windows-1252',
    'sloppy-windows-1251',
    'sloppy-windows-1250',
    'sloppy-windows-1253',
    'sloppy-windows-1254',
    'sloppy-windows-1257',
    'iso-8859-2',
    'macroman',
    'cp437',
  ].map(charmap);
  return charmaps;
}

/** Bytes as a "binary string" (one char 0-255 per byte), so byte-level regexes can be ordinary JS regexes. */
function encodeBinary(text: string, cm: Charmap): string | undefined {
  let out = '';
  for (const ch of text) {
    const b = cm.encode.get(ch.codePointAt(0)!);
    if (b === undefined) return undefined;
    out += String.fromCharCode(b);
  }
  return out;
}

const utf8Strict = new TextDecoder('utf-8', { fatal: true });

function binaryToBytes(bin: string): Uint8Array {
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** UTF-8 decode that throws on invalid input (Python's strict codec and WHATWG's fatal decoder agree). */
function decodeUtf8(bin: string): string | undefined {
  try {
    return utf8Strict.decode(binaryToBytes(bin));
  } catch {
    return undefined;
  }
}

/** ftfy's 'utf-8-variants': also CESU-8 surrogate pairs and Java's C0 80 for NUL. */
function decodeUtf8Variants(bin: string): string | undefined {
  const fixed = bin
    .replace(/\xed([\xa0-\xaf])([\x80-\xbf])\xed([\xb0-\xbf])([\x80-\xbf])/g, (_m, a: string, b: string, c: string, d: string) => {
      const hi = 0xd000 | ((a.charCodeAt(0) & 0x3f) << 6) | (b.charCodeAt(0) & 0x3f);
      const lo = 0xd000 | ((c.charCodeAt(0) & 0x3f) << 6) | (d.charCodeAt(0) & 0x3f);
      const cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
      return Buffer.from(String.fromCodePoint(cp), 'utf8').toString('latin1');
    })
    .replace(/\xc0\x80/g, '\x00');
  return decodeUtf8(fixed);
}

// ftfy.chardata.ALTERED_UTF8_RE and fixes.A_GRAVE_WORD_RE / restore_byte_a0, on binary strings.
const ALTERED_UTF8_RE =
  /[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]/g;
const A_GRAVE_WORD_RE = /\xc3 (?! |quele|quela|quilo|s )/g;

function restoreByteA0(bin: string): string {
  return bin.replace(A_GRAVE_WORD_RE, '\xc3\xa0 ').replace(ALTERED_UTF8_RE, (m) => m.replaceAll(' ', '\xa0'));
}

// ftfy.chardata.LOSSY_UTF8_RE / fixes.replace_lossy_sequences: UTF-8 sequences with bytes lost to U+FFFD (byte 1A).
const LOSSY_UTF8_RE = new RegExp(
  [
    '[\\xc2-\\xdf][\\x1a]',
    '[\\xc2-\\xc3][?]',
    '\\xed[\\xa0-\\xaf][\\x1a?]\\xed[\\xb0-\\xbf][\\x1a?\\x80-\\xbf]',
    '\\xed[\\xa0-\\xaf][\\x1a?\\x80-\\xbf]\\xed[\\xb0-\\xbf][\\x1a?]',
    '[\\xe0-\\xef][\\x1a?][\\x1a\\x80-\\xbf]',
    '[\\xe0-\\xef][\\x1a\\x80-\\xbf][\\x1a?]',
    '[\\xf0-\\xf4][\\x1a?][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf]',
    '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a?][\\x1a\\x80-\\xbf]',
    '[\\xf0-\\xf4][\\x1a\\x80-\\xbf][\\x1a\\x80-\\xbf][\\x1a?]',
    '\\x1a',
  ].join('|'),
  'g',
);

function replaceLossySequences(bin: string): string {
  return bin.replace(LOSSY_UTF8_RE, '\xef\xbf\xbd');
}

/** One step of ftfy's `_fix_encoding_one_step_and_explain`; returns the text unchanged when nothing applies. */
function fixEncodingOneStep(text: string): string {
  if (text.length === 0 || /^[\x00-\x7f]*$/.test(text) || !isBad(text)) return text;
  const possible: string[] = [];
  for (const cm of getCharmaps()) {
    let bin = encodeBinary(text, cm);
    if (bin === undefined) continue;
    possible.push(cm.name);
    if (cm.name !== 'macroman' && bin.search(ALTERED_UTF8_RE) >= 0) bin = restoreByteA0(bin);
    if (cm.sloppy) bin = replaceLossySequences(bin);
    const fixed = bin.includes('\xed') || bin.includes('\xc0') ? decodeUtf8Variants(bin) : decodeUtf8(bin);
    if (fixed !== undefined) return fixed;
  }
  if (text.search(utf8DetectorRe()) >= 0) {
    const fixed = decodeInconsistentUtf8(text);
    if (fixed !== text) return fixed;
  }
  if (possible.includes('latin-1')) {
    // ftfy compares against the name 'windows-1252', which is never in the list (only 'sloppy-windows-1252' is),
    // so this branch always re-reads Latin-1 as strict windows-1252 - reproduced as is.
    const bin = encodeBinary(text, getCharmaps()[0])!;
    if (!/[\x81\x8d\x8f\x90\x9d]/.test(bin)) {
      const cp1252 = charmap('windows-1252');
      const fixed = [...bin].map((ch) => cp1252.decode[ch.charCodeAt(0)]).join('');
      if (fixed !== text) return fixed;
    }
  }
  if (C1_RE.test(text)) return fixC1Controls(text);
  return text;
}

// ftfy.chardata.UTF8_CLUES: the characters that UTF-8 lead bytes (C2-DF, E0-EF, F0/F3) and continuation bytes (80-BF)
// become when read as Latin-1 or windows-1250/1251/1252/1253/1254/1257 (ftfy generates these lists the same way).
// A space may stand for a lost A0; the "strict" continuation set leaves out characters that often stand for
// themselves next to mojibake (dashes, quotes, bullet, ellipsis).
let utf8Detector: RegExp | undefined;
function utf8DetectorRe(): RegExp {
  if (utf8Detector) return utf8Detector;
  const maps = ['latin-1', 'windows-1250', 'windows-1251', 'windows-1252', 'windows-1253', 'windows-1254', 'windows-1257'].map(charmap);
  const chars = (bytes: number[]) => {
    const set = new Set<string>();
    for (const cm of maps) for (const b of bytes) set.add(cm.decode[b]);
    return set;
  };
  const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);
  const cls = (set: Set<string>) => [...set].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
  const cont = new Set([...chars(range(0x80, 0xbf))].filter((c) => c.charCodeAt(0) < 0x80 || c.charCodeAt(0) > 0xbf));
  const notStrict = new Set(['\u2013', '\u2014', '\u2015', '\u2018', '\u2019', '\u201a', '\u201c', '\u201d', '\u201e', '\u2022', '\u2026']);
  const strict = new Set([...cont].filter((c) => !notStrict.has(c)));
  const c = `[\\x80-\\xbf ${cls(cont)}]`;
  const f2 = `[${cls(chars(range(0xc2, 0xdf)))}]`;
  const f3 = `[${cls(chars(range(0xe0, 0xef)))}]`;
  const f4 = `[${cls(chars([0xf0, 0xf3]))}]`;
  utf8Detector = new RegExp(`(?<![\\x80-\\xbf${cls(strict)}])(?:${f2}${c}|${f3}${c}{2}|${f4}${c}{3})+`, 'g');
  return utf8Detector;
}

/** Fixes each UTF-8-looking run on its own, when it is shorter than the text and looks like mojibake. */
function decodeInconsistentUtf8(text: string): string {
  return text.replace(utf8DetectorRe(), (m) => (m.length < text.length && isBad(m) ? fixEncoding(m) : m));
}

const C1_RE = /[\x80-\x9f]/;

/** Replaces C1 control characters with their (sloppy) windows-1252 meaning, as browsers do. */
function fixC1Controls(text: string): string {
  const cp1252 = charmap('sloppy-windows-1252');
  return text.replace(/[\x80-\x9f]/g, (ch) => cp1252.decode[ch.charCodeAt(0)]);
}

function fixEncoding(text: string): string {
  for (;;) {
    const next = fixEncodingOneStep(text);
    if (next === text) return text;
    text = next;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The character-level fixes.

const LIGATURES: Record<string, string> = {
  '\u0132': 'IJ',
  '\u0133': 'ij',
  '\u0149': '\u02bcn',
  '\u01f1': 'DZ',
  '\u01f2': 'Dz',
  '\u01f3': 'dz',
  '\u01c4': 'D\u017d',
  '\u01c5': 'D\u017e',
  '\u01c6': 'd\u017e',
  '\u01c7': 'LJ',
  '\u01c8': 'Lj',
  '\u01c9': 'lj',
  '\u01ca': 'NJ',
  '\u01cb': 'Nj',
  '\u01cc': 'nj',
  '\ufb00': 'ff',
  '\ufb01': 'fi',
  '\ufb02': 'fl',
  '\ufb03': 'ffi',
  '\ufb04': 'ffl',
  '\ufb05': '\u017ft',
  '\ufb06': 'st',
};
const LIGATURE_RE = new RegExp(`[${Object.keys(LIGATURES).join('')}]`, 'g');

/** Fullwidth ASCII/halfwidth katakana (U+FF01-U+FFEF) to their NFKC forms, and U+3000 to a space. */
function fixCharacterWidth(text: string): string {
  return text.replace(/[\u3000\uff01-\uffef]/g, (ch) => (ch === '\u3000' ? ' ' : ch.normalize('NFKC')));
}

function uncurlQuotes(text: string): string {
  return text.replace(/[\u201c-\u201f]/g, '"').replace(/[\u02bc\u2018-\u201b]/g, "'");
}

function fixLineBreaks(text: string): string {
  return text.replace(/\r\n|[\r\u2028\u2029\u0085]/g, '\n');
}

/** Lone UTF-16 surrogates become U+FFFD (pairs are already single characters in JS). */
function fixSurrogates(text: string): string {
  return text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

function removeTerminalEscapes(text: string): string {
  return text.replace(/\x1b\[((?:\p{Nd}|;)*)([a-zA-Z])/gu, '');
}

function removeControlChars(text: string): string {
  return text.replace(/[\x00-\x08\x0b\x0e-\x1f\x7f\u206a-\u206f\ufeff\ufff9-\ufffc]/g, '');
}

// ---------------------------------------------------------------------------------------------------------------
// HTML entities.

/** Python's html.entities.html5 (names with and without ';'), generated from CPython 3.11's table. */
function html5Entities(): Record<string, string> {
  return HTML5_ENTITIES as Record<string, string>;
}

// Python's html._invalid_charrefs (numeric references the HTML5 spec remaps) and _invalid_codepoints (dropped).
const INVALID_CHARREFS: Record<number, string> = {
  0x00: '\ufffd',
  0x0d: '\r',
  0x80: '\u20ac',
  0x81: '\x81',
  0x82: '\u201a',
  0x83: '\u0192',
  0x84: '\u201e',
  0x85: '\u2026',
  0x86: '\u2020',
  0x87: '\u2021',
  0x88: '\u02c6',
  0x89: '\u2030',
  0x8a: '\u0160',
  0x8b: '\u2039',
  0x8c: '\u0152',
  0x8d: '\x8d',
  0x8e: '\u017d',
  0x8f: '\x8f',
  0x90: '\x90',
  0x91: '\u2018',
  0x92: '\u2019',
  0x93: '\u201c',
  0x94: '\u201d',
  0x95: '\u2022',
  0x96: '\u2013',
  0x97: '\u2014',
  0x98: '\u02dc',
  0x99: '\u2122',
  0x9a: '\u0161',
  0x9b: '\u203a',
  0x9c: '\u0153',
  0x9d: '\x9d',
  0x9e: '\u017e',
  0x9f: '\u0178',
};

function invalidCodepoint(n: number): boolean {
  return (
    (n >= 0x1 && n <= 0x8) ||
    (n >= 0xe && n <= 0x1f) ||
    (n >= 0x7f && n <= 0x9f) ||
    (n >= 0xfdd0 && n <= 0xfdef) ||
    n === 0xb ||
    (n & 0xfffe) === 0xfffe
  );
}

const CHARREF_RE = /&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)/g;

/** Python's `html.unescape` (HTML5 rules: named references with or without ';', longest prefix, numeric fixes). */
export function htmlUnescape(s: string): string {
  if (!s.includes('&')) return s;
  const table = html5Entities();
  return s.replace(CHARREF_RE, (_m, ref: string) => {
    if (ref[0] === '#') {
      const hex = ref[1] === 'x' || ref[1] === 'X';
      const digits = ref.slice(hex ? 2 : 1).replace(/;$/, '');
      const num = parseInt(digits, hex ? 16 : 10);
      if (num in INVALID_CHARREFS) return INVALID_CHARREFS[num];
      if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff || !Number.isFinite(num)) return '\ufffd';
      if (invalidCodepoint(num)) return '';
      return String.fromCodePoint(num);
    }
    if (ref in table) return table[ref];
    for (let x = ref.length - 1; x > 1; x--) {
      if (ref.slice(0, x) in table) return table[ref.slice(0, x)] + ref.slice(x);
    }
    return '&' + ref;
  });
}

let ftfyEntities: Map<string, string> | undefined;
/** ftfy.chardata.HTML_ENTITIES: '&name;' for names ending in ';', plus ALL-CAPS forms of lowercase-only names. */
function ftfyHtmlEntities(): Map<string, string> {
  if (ftfyEntities) return ftfyEntities;
  const m = new Map<string, string>();
  const table = html5Entities();
  for (const [name, ch] of Object.entries(table)) {
    if (!name.endsWith(';')) continue;
    m.set('&' + name, ch);
    if (name === name.toLowerCase()) {
      const upper = '&' + name.toUpperCase();
      if (htmlUnescape(upper) === upper) m.set(upper, ch.toUpperCase());
    }
  }
  ftfyEntities = m;
  return m;
}

/** ftfy.fixes.unescape_html: only unambiguous references (with ';'), plus some ALL-CAPS names. */
function ftfyUnescapeHtml(text: string): string {
  if (!text.includes('&')) return text;
  const entities = ftfyHtmlEntities();
  return text.replace(/&#?[0-9A-Za-z]{1,24};/g, (m) => {
    const named = entities.get(m);
    if (named !== undefined) return named;
    if (m.startsWith('&#')) {
      const u = htmlUnescape(m);
      return u.includes(';') ? m : u;
    }
    return m;
  });
}

// ---------------------------------------------------------------------------------------------------------------

/** ftfy.fix_and_explain on one segment: every fix in ftfy's order, repeated until the text stops changing. */
function fixSegment(text: string, unescapeHtml: boolean): string {
  for (;;) {
    const orig = text;
    if (unescapeHtml) text = ftfyUnescapeHtml(text);
    text = fixEncoding(text);
    text = fixC1Controls(text);
    text = text.replace(LIGATURE_RE, (ch) => LIGATURES[ch]);
    text = fixCharacterWidth(text);
    text = uncurlQuotes(text);
    text = fixLineBreaks(text);
    text = fixSurrogates(text);
    text = removeTerminalEscapes(text);
    text = removeControlChars(text);
    text = text.normalize('NFC');
    if (text === orig) return text;
  }
}

/**
 * ftfy.fix_text with its default configuration: fixes each line (up to and including its '\n') separately; HTML
 * entities are decoded until a line containing '<' is seen (then the text is taken to be HTML and left alone).
 */
export function fixText(text: string): string {
  let out = '';
  let unescapeHtml = true;
  let pos = 0;
  while (pos < text.length) {
    let end = text.indexOf('\n', pos) + 1;
    if (end === 0) end = text.length;
    const segment = text.slice(pos, end);
    if (segment.includes('<')) unescapeHtml = false;
    out += fixSegment(segment, unescapeHtml);
    pos = end;
  }
  return out;
}
