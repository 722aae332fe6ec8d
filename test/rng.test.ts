// The run's seeded generator: known-answer vectors, determinism, fork independence, distributions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng, parseSeed, randomSeed } from '../src/util/rng.ts';
import { UserError } from '../src/cli/errors.ts';

test('xoshiro128** core matches the reference test vector for state {1,2,3,4}', () => {
  const r = new Rng(0);
  Object.assign(r, { s0: 1, s1: 2, s2: 3, s3: 4 }); // the reference implementation's documented test state
  const got = Array.from({ length: 10 }, () => r.uint32());
  assert.deepEqual(got, [11520, 0, 5927040, 70819200, 2031721883, 1637235492, 1287239034, 3734860849, 3729100597, 4258142804]);
});

test('same seed and path give the same stream; the stream is pinned so seeds stay reproducible across versions', () => {
  const a = new Rng(42);
  const b = new Rng(42);
  const xa = Array.from({ length: 100 }, () => a.uint32());
  const xb = Array.from({ length: 100 }, () => b.uint32());
  assert.deepEqual(xa, xb);
  assert.notDeepEqual(xa, Array.from({ length: 100 }, () => new Rng(43).uint32()));
  // Changing the seeding scheme would silently change every image made from a given seed: pin a few values.
  // Values recorded when the scheme was written (xoshiro128** seeded by SplitMix64 of seed ^ FNV-1a-64(path)).
  const c = new Rng(42).fork('cutouts');
  assert.deepEqual([c.uint32(), c.uint32(), new Rng(0).uint32()], [1927266916, 1957034584, 3781564968]);
});

/** The seeding as first written, in BigInt: the state words of (seed, path). */
function bigIntSeedWords(seed: number, path: string): number[] {
  const MASK64 = (1n << 64n) - 1n;
  let h = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(path)) h = ((h ^ BigInt(byte)) * 0x100000001b3n) & MASK64;
  let state = (BigInt(seed) ^ h) & MASK64;
  const words: number[] = [];
  while (words.length < 4) {
    state = (state + 0x9e3779b97f4a7c15n) & MASK64;
    let z = state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    z ^= z >> 31n;
    words.push(Number(z & 0xffffffffn), Number(z >> 32n));
  }
  return words;
}

test('the 32-bit seeding equals the 64-bit BigInt definition for any seed and path', () => {
  const paths = ['', 'cutouts', 'cutouts/0/17', 'augment/Af#2', 'é/漢字/🎨', 'x'.repeat(300)];
  const seeds = [0, 1, 42, 0xffffffff, 2 ** 32, 2 ** 32 + 1, 2 ** 52 + 12345, Number.MAX_SAFE_INTEGER];
  const pick = new Rng(99);
  for (let i = 0; i < 200; i++) seeds.push(pick.int(2 ** 32) * 2 ** 21 + pick.int(2 ** 21));
  for (let i = 0; i < 50; i++) paths.push(Array.from({ length: 1 + pick.int(40) }, () => String.fromCharCode(32 + pick.int(5000))).join(''));
  for (const seed of seeds) {
    for (const path of paths) {
      const r = new Rng(seed, path) as unknown as { s0: number; s1: number; s2: number; s3: number };
      const want = bigIntSeedWords(seed, path);
      if (!want.some((w) => w !== 0)) want[0] = 1; // xoshiro's forbidden all-zero state
      assert.deepEqual([r.s0, r.s1, r.s2, r.s3], want, `seed ${seed} path ${JSON.stringify(path)}`);
    }
  }
});

test('forks depend only on (seed, path), never on how much the parent drew', () => {
  const root = new Rng(7);
  const before = root.fork('init').fork(3);
  for (let i = 0; i < 1000; i++) root.uniform();
  const after = root.fork('init').fork(3);
  assert.equal(after.path, 'init/3');
  assert.deepEqual(Array.from({ length: 20 }, () => before.uint32()), Array.from({ length: 20 }, () => after.uint32()));
  // Different names give different streams, and a fork differs from its parent.
  const x = new Rng(7).fork('cutouts').uint32();
  const y = new Rng(7).fork('augment').uint32();
  assert.notEqual(x, y);
  assert.notEqual(new Rng(7).uint32(), x);
  assert.throws(() => root.fork('a/b'), RangeError);
});

test('uniform, int, normal and fills have the right ranges and moments', () => {
  const r = new Rng(123).fork('stats');
  const n = 200_000;
  let sum = 0;
  let sq = 0;
  let min = 1;
  let max = 0;
  for (let i = 0; i < n; i++) {
    const u = r.uniform();
    sum += u;
    sq += u * u;
    min = Math.min(min, u);
    max = Math.max(max, u);
  }
  assert.ok(min >= 0 && max < 1);
  assert.ok(Math.abs(sum / n - 0.5) < 0.005, `uniform mean ${sum / n}`);
  assert.ok(Math.abs(sq / n - sum * sum / n / n - 1 / 12) < 0.002, 'uniform variance');

  const counts = new Array(7).fill(0);
  for (let i = 0; i < 70_000; i++) counts[r.int(7)]++;
  for (const c of counts) assert.ok(Math.abs(c - 10_000) < 500, `int(7) counts ${counts}`);
  for (let i = 0; i < 1000; i++) {
    const k = r.intRange(-3, 2);
    assert.ok(k >= -3 && k < 2 && Number.isInteger(k));
  }
  assert.equal(r.int(1), 0);
  assert.throws(() => r.int(0), RangeError);

  const z = r.fillNormal(new Float64Array(n), 2, 3);
  let m = 0;
  for (const v of z) m += v;
  m /= n;
  let v2 = 0;
  let m4 = 0;
  for (const v of z) {
    v2 += (v - m) ** 2;
    m4 += (v - m) ** 4;
  }
  v2 /= n;
  m4 /= n;
  assert.ok(Math.abs(m - 2) < 0.03, `normal mean ${m}`);
  assert.ok(Math.abs(v2 - 9) < 0.15, `normal variance ${v2}`);
  assert.ok(Math.abs(m4 / (v2 * v2) - 3) < 0.1, `normal kurtosis ${m4 / v2 / v2}`);

  const f = r.fillUniform(new Float32Array(1000), -1, 1);
  assert.ok(f.every((x) => x >= -1 && x <= 1));
  const p = r.permutation(50);
  assert.deepEqual([...p].sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i));
});

test('seed parsing and validation', () => {
  assert.equal(parseSeed('42'), 42);
  assert.equal(parseSeed(' 0 '), 0);
  for (const bad of ['-1', '1.5', 'abc', '', '9007199254740993', '1e3']) {
    assert.throws(() => parseSeed(bad), (e: unknown) => e instanceof UserError && /whole number/.test(e.message), bad);
  }
  assert.throws(() => new Rng(-1), RangeError);
  assert.throws(() => new Rng(0.5), RangeError);
  const s = randomSeed();
  assert.ok(Number.isSafeInteger(s) && s >= 0);
  // The largest seed still works.
  assert.ok(new Rng(Number.MAX_SAFE_INTEGER).uniform() < 1);
});
