// The one seeded random number generator of a run, with named sub-streams.
//
//   const rng = new Rng(seed);                   // ONE seed for everything a run draws
//   const cuts = rng.fork('cutouts').fork(step); // an independent stream per purpose (and per step)
//   cuts.uniform(); cuts.int(10); cuts.normal(); cuts.fillNormal(buffer);
//
// A fork is derived from (root seed, fork path) alone, never from how much its parent has drawn, so adding a draw
// in one place never shifts the numbers drawn anywhere else. The generator is xoshiro128** (32-bit integer
// arithmetic, exact in JavaScript); streams are seeded with SplitMix64 from a 64-bit FNV-1a hash of the path.
// Integers and uniforms are bit-identical on every machine. Normals use the Marsaglia polar method, which needs
// Math.log and Math.sqrt: sqrt is exact IEEE; V8's Math.log is a software (fdlibm) port, identical on every
// platform V8 runs on, so normals are reproducible across machines running Node (not guaranteed across JS engines).
//
// These streams do not reproduce PyTorch's generator: a seed gives the same images in vqclip every time, not the
// images nerdyrodent's generate.py gives for that seed.
import { randomInt } from 'node:crypto';
import { UserError } from '../cli/errors.ts';

// 64-bit words as [hi, lo] pairs of unsigned 32-bit integers: seeding runs once per fork (several forks per step),
// and the same arithmetic on BigInt took about 6 us per fork.

/** a * b mod 2^64. */
function mul64(ah: number, al: number, bh: number, bl: number): [hi: number, lo: number] {
  // al * bl in full from 16-bit halves (each partial product < 2^32, their sums exact in a double).
  const a0 = al & 0xffff;
  const a1 = al >>> 16;
  const b0 = bl & 0xffff;
  const b1 = bl >>> 16;
  const p00 = a0 * b0;
  const mid = a0 * b1 + a1 * b0 + (p00 >>> 16);
  const lo = ((mid & 0xffff) * 0x10000 + (p00 & 0xffff)) >>> 0;
  const hi = (a1 * b1 + Math.floor(mid / 0x10000) + Math.imul(ah, bl) + Math.imul(al, bh)) >>> 0;
  return [hi, lo];
}

/** x ^ (x >> k) for 0 < k < 32. */
const xorShr = (h: number, l: number, k: number): [number, number] => [(h ^ (h >>> k)) >>> 0, (l ^ ((l >>> k) | (h << (32 - k)))) >>> 0];

/** One SplitMix64 step: the next state and the output, as [hi, lo] pairs. */
function splitmix64(sh: number, sl: number): { h: number; l: number; outH: number; outL: number } {
  const l = (sl + 0x7f4a7c15) >>> 0;
  const h = (sh + 0x9e3779b9 + (sl + 0x7f4a7c15 > 0xffffffff ? 1 : 0)) >>> 0;
  let [zh, zl] = xorShr(h, l, 30);
  [zh, zl] = mul64(zh, zl, 0xbf58476d, 0x1ce4e5b9);
  [zh, zl] = xorShr(zh, zl, 27);
  [zh, zl] = mul64(zh, zl, 0x94d049bb, 0x133111eb);
  [zh, zl] = xorShr(zh, zl, 31);
  return { h, l, outH: zh, outL: zl };
}

const utf8 = new TextEncoder();

/** 64-bit FNV-1a of the UTF-8 bytes of `text`, as [hi, lo]. */
function fnv1a64(text: string): [hi: number, lo: number] {
  let h = 0xcbf29ce4;
  let l = 0x84222325;
  for (const byte of utf8.encode(text)) [h, l] = mul64(h, (l ^ byte) >>> 0, 0x100, 0x1b3);
  return [h, l];
}

const rotl = (x: number, k: number) => ((x << k) | (x >>> (32 - k))) >>> 0;

/** Largest seed accepted: seeds are non-negative safe integers. */
export const MAX_SEED = Number.MAX_SAFE_INTEGER;

export class Rng {
  private s0 = 0;
  private s1 = 0;
  private s2 = 0;
  private s3 = 0;
  private spare: number | undefined;

  /** @param seed the run's seed (integer 0..2^53-1); @param path the fork path ('' for the root stream). */
  constructor(
    readonly seed: number,
    readonly path = '',
  ) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`Rng seed must be an integer in 0..${MAX_SEED}, got ${seed}`);
    const [fh, fl] = fnv1a64(path);
    let h = (Math.floor(seed / 0x100000000) ^ fh) >>> 0;
    let l = ((seed >>> 0) ^ fl) >>> 0;
    const words: number[] = [];
    while (words.length < 4) {
      const r = splitmix64(h, l);
      ({ h, l } = r);
      words.push(r.outL, r.outH);
    }
    [this.s0, this.s1, this.s2, this.s3] = words;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // xoshiro's one forbidden state
  }

  /** An independent stream named `name` under this one ('cutouts', 'init', step numbers, ...). */
  fork(name: string | number): Rng {
    const part = String(name);
    if (part.includes('/')) throw new RangeError(`Rng fork names cannot contain '/': ${part}`);
    return new Rng(this.seed, this.path ? `${this.path}/${part}` : part);
  }

  /** Next 32 random bits as an unsigned integer. */
  uint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.uint32() >>> 5; // 27 bits
    const lo = this.uint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform double in [lo, hi). */
  uniformRange(lo: number, hi: number): number {
    return lo + (hi - lo) * this.uniform();
  }

  /** Uniform integer in [0, n), unbiased (rejection sampling); n in 1..2^32. */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32) throw new RangeError(`Rng.int(n) needs an integer n in 1..2^32, got ${n}`);
    const limit = 2 ** 32 - (2 ** 32 % n); // accept draws below the largest multiple of n
    for (;;) {
      const x = this.uint32();
      if (x < limit) return x % n;
    }
  }

  /** Uniform integer in [lo, hi) (like torch.randint(lo, hi)). */
  intRange(lo: number, hi: number): number {
    return lo + this.int(hi - lo);
  }

  /** True with probability p. */
  bernoulli(p: number): boolean {
    return this.uniform() < p;
  }

  /** Standard normal (Marsaglia polar method; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    for (;;) {
      const u = 2 * this.uniform() - 1;
      const v = 2 * this.uniform() - 1;
      const s = u * u + v * v;
      if (s > 0 && s < 1) {
        const f = Math.sqrt((-2 * Math.log(s)) / s);
        this.spare = v * f;
        return u * f;
      }
    }
  }

  /** Fills `out` with uniforms in [lo, hi) (rounded to float32 when `out` is a Float32Array). */
  fillUniform<A extends Float32Array | Float64Array>(out: A, lo = 0, hi = 1): A {
    for (let i = 0; i < out.length; i++) out[i] = lo + (hi - lo) * this.uniform();
    return out;
  }

  /**
   * Fills `out` with normals of the given mean and standard deviation: the polar method on 32-bit uniforms (half the
   * generator calls of normal(); bulk noise does not need 53-bit uniforms).
   */
  fillNormal<A extends Float32Array | Float64Array>(out: A, mean = 0, std = 1): A {
    const k = 2 ** -31;
    for (let i = 0; i < out.length; ) {
      const u = (this.uint32() + 0.5) * k - 1;
      const v = (this.uint32() + 0.5) * k - 1;
      const s = u * u + v * v;
      if (s >= 1) continue;
      const f = Math.sqrt((-2 * Math.log(s)) / s);
      out[i++] = mean + std * u * f;
      if (i < out.length) out[i++] = mean + std * v * f;
    }
    return out;
  }

  /** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
  permutation(n: number): number[] {
    const p = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    return p;
  }
}

/** A fresh seed for a run that was given none (report it so the run can be repeated). */
export function randomSeed(): number {
  return randomInt(0, 2 ** 32);
}

/** Parses a user-supplied seed (e.g. --seed), or explains what a seed must look like. */
export function parseSeed(text: string | number, what = 'seed'): number {
  const s = String(text).trim();
  const n = /^\d+$/.test(s) ? Number(s) : NaN;
  if (!Number.isSafeInteger(n)) {
    throw new UserError(`${what} '${s}' is not a whole number from 0 to ${MAX_SEED}`, 'use a whole number such as 42');
  }
  return n;
}
