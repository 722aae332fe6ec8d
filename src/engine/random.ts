// The counter-based normal generator behind Ops.randomNormal, on the host (tfjs engine) and in WGSL (compiled engine).
// Each sample is a pure function of the seed and its row-major element index, so any engine, any launch shape and
// any order of evaluation give the same numbers (up to float32 rounding of log/cos/sqrt), and a compiled step needs
// only the two seed words as per-step input.
//
//   hash(x: u32)  = lowbias32: x ^= x >>> 16; x *= 0x7feb352d; x ^= x >>> 15; x *= 0x846ca68b; x ^= x >>> 16
//                   (multiplications mod 2^32)
//   key           = hash(seed0 ^ hash(seed1 ^ 0x9e3779b9))          (seed0, seed1: the int32 seed as u32 bits)
//   element i:      bits1 = hash(key ^ hash(2i)), bits2 = hash(key ^ hash(2i + 1))
//                   u1 = ((bits1 >>> 8) + 1) * 2^-24   in (0, 1]
//                   u2 = (bits2 >>> 8) * 2^-24         in [0, 1)
//                   z  = sqrt(-2 ln u1) * cos(2 pi u2)  (Box-Muller, one sample per pair)
//
// The host does the u32 part with Math.imul and >>> 0 (bit-identical to WGSL's wrapping u32 arithmetic) and the float
// part in float64, rounded to float32 at the end. The WGSL computes the same formula in f32 with two rewrites that
// keep it accurate where the builtins are weak (WGSL only promises log to 2^-21 absolute near 1 and cos to 2^-11
// absolute on [-pi, pi]; llvmpipe's log loses all relative accuracy just below 1):
//   ln u1 for u1 >= 1/2 is 2 atanh(s), s = (u1 - 1) / (u1 + 1), as its odd series (|s| <= 1/3, 8 terms: < 1e-8
//     relative), so -2 ln u1 keeps its relative accuracy when u1 is near 1 (z near 0);
//   cos(2 pi u2) = -cos(pi (2 u2 - 1)), an argument in [-pi, pi) (2 u2 - 1 is exact in f32).

/** lowbias32 (Chris Wellons' integer hash): a u32 to a u32, as a non-negative number. */
export function hash32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** The stream key of a seed (two int32 words). */
export function randomKey(seed0: number, seed1: number): number {
  return hash32((seed0 ^ hash32((seed1 ^ 0x9e3779b9) >>> 0)) >>> 0);
}

const TWO_POW_M24 = 2 ** -24;

/** Sample i of the stream `key` (float64; randomNormal rounds it to float32). */
export function normalAt(key: number, i: number): number {
  const bits1 = hash32((key ^ hash32((2 * i) >>> 0)) >>> 0);
  const bits2 = hash32((key ^ hash32((2 * i + 1) >>> 0)) >>> 0);
  const u1 = ((bits1 >>> 8) + 1) * TWO_POW_M24;
  const u2 = (bits2 >>> 8) * TWO_POW_M24;
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

/** `count` standard normal samples of the int32 seed [seed0, seed1], elements 0..count-1. */
export function randomNormalData(seed: ArrayLike<number>, count: number): Float32Array {
  if (seed.length !== 2) throw new Error(`randomNormal: the seed must be two int32 values, got ${seed.length}`);
  const key = randomKey(seed[0], seed[1]);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = normalAt(key, i);
  return out;
}

/**
 * WGSL functions of the generator: `random_key(seed0, seed1)` (the int32 seed words) and `random_normal(key, i)` (the
 * sample of element i, f32). Helper names end in `_` like the elementwise helpers'.
 */
export const RANDOM_NORMAL_WGSL = `
fn hash32_(v: u32) -> u32 {
  var x = v;
  x = x ^ (x >> 16u);
  x = x * 0x7feb352du;
  x = x ^ (x >> 15u);
  x = x * 0x846ca68bu;
  x = x ^ (x >> 16u);
  return x;
}
fn random_key(seed0: i32, seed1: i32) -> u32 {
  return hash32_(bitcast<u32>(seed0) ^ hash32_(bitcast<u32>(seed1) ^ 0x9e3779b9u));
}
// ln u for u in (0, 1], accurate relative to ln u also near 1 (see src/engine/random.ts).
fn ln_unit_(u: f32) -> f32 {
  if (u < 0.5) { return log(u); }
  let s = (u - 1.0) / (u + 1.0);
  let w = s * s;
  let p = 1.0 + w * (0.33333333 + w * (0.2 + w * (0.14285714 + w * (0.11111111 + w * (0.09090909 + w * (0.07692308 + w * 0.06666667))))));
  return 2.0 * s * p;
}
fn random_normal(key: u32, i: u32) -> f32 {
  let bits1 = hash32_(key ^ hash32_(2u * i));
  let bits2 = hash32_(key ^ hash32_(2u * i + 1u));
  let u1 = f32((bits1 >> 8u) + 1u) * 5.9604644775390625e-8;
  let u2 = f32(bits2 >> 8u) * 5.9604644775390625e-8;
  return sqrt(-2.0 * ln_unit_(u1)) * -cos(3.14159265358979 * (2.0 * u2 - 1.0));
}
`;
