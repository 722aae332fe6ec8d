// Shared test utilities: fixture lookup (a missing fixture skips the test and says so) and tensor comparison.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { after, before, type TestContext } from 'node:test';
import { readSafetensors } from '../src/formats/safetensors.ts';
import { asFloat32, type HostTensor } from '../src/formats/host-tensor.ts';
import { initBackend, type BackendName } from '../src/engine/backend.ts';
import { createWebGPUDevice } from '../src/engine/webgpu.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
export const FIXTURES = process.env.VQCLIP_FIXTURES ?? path.resolve(here, '../../shared/fixtures');

/** Absolute path of a fixture, or undefined after marking the test skipped with the reason. */
export function fixture(t: TestContext, name: string): string | undefined {
  const p = path.join(FIXTURES, name);
  if (fs.existsSync(p)) return p;
  t.skip(`fixture ${name} not found in ${FIXTURES} (set VQCLIP_FIXTURES or check out ../shared)`);
  return undefined;
}

const cache = new Map<string, Map<string, HostTensor>>();

/** All tensors of a fixture safetensors file (cached per process), or undefined when missing (test skipped). */
export function reference(t: TestContext, name: string): Map<string, HostTensor> | undefined {
  const p = fixture(t, name);
  if (!p) return undefined;
  let m = cache.get(p);
  if (!m) {
    m = readSafetensors(p);
    cache.set(p, m);
  }
  return m;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, `length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** Asserts |actual - expected| <= atol elementwise, with the shape checked when given. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: HostTensor | ArrayLike<number>,
  atol: number,
  label: string,
  actualShape?: number[],
): number {
  const exp = 'dtype' in (expected as object) ? asFloat32(expected as HostTensor) : (expected as ArrayLike<number>);
  if (actualShape && 'shape' in (expected as object)) {
    assert.deepEqual(actualShape, (expected as HostTensor).shape, `${label}: shape`);
  }
  const d = maxAbsDiff(actual, exp);
  assert.ok(d <= atol, `${label}: max abs diff ${d.toExponential(3)} > atol ${atol}`);
  return d;
}

/** NCHW (PyTorch) host array -> NHWC, and back: fixtures are NCHW, the op vocabulary is NHWC. */
export function nchwToNhwc(data: ArrayLike<number>, [n, c, h, w]: number[]): Float32Array {
  const out = new Float32Array(n * c * h * w);
  for (let a = 0; a < n; a++)
    for (let ch = 0; ch < c; ch++)
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out[((a * h + y) * w + x) * c + ch] = data[((a * c + ch) * h + y) * w + x];
  return out;
}

export function nhwcToNchw(data: ArrayLike<number>, [n, h, w, c]: number[]): Float32Array {
  const out = new Float32Array(n * c * h * w);
  for (let a = 0; a < n; a++)
    for (let ch = 0; ch < c; ch++)
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) out[((a * c + ch) * h + y) * w + x] = data[((a * h + y) * w + x) * c + ch];
  return out;
}

/** Starts a backend for a suite; returns why it cannot run there (the suite then skips with that reason). */
export async function startBackend(backend: BackendName): Promise<string | undefined> {
  try {
    const r = await initBackend(backend);
    return r.backend === backend ? undefined : `got ${r.backend} instead of ${backend}`;
  } catch (err) {
    return `${backend} backend unavailable: ${(err as Error).message}`;
  }
}

/**
 * A raw WebGPU device for the enclosing suite (or file): opened before its tests (hardware, else the software adapter)
 * and destroyed after them. `unavailable` says why there is none; tests skip with it.
 */
export function suiteDevice(): { device?: GPUDevice; unavailable?: string } {
  const gpu: { device?: GPUDevice; unavailable?: string } = {};
  before(async () => {
    try {
      gpu.device = (await createWebGPUDevice('allow')).device;
    } catch (e) {
      gpu.unavailable = `no WebGPU adapter: ${(e as Error).message}`;
    }
  });
  after(() => gpu.device?.destroy());
  return gpu;
}

/** Why a test needing these fixture files must skip (the ones missing from FIXTURES), or undefined when all are there. */
export function missingFixtures(names: readonly string[]): string | undefined {
  const missing = names.filter((f) => !fs.existsSync(path.join(FIXTURES, f)));
  return missing.length ? `fixtures missing in ${FIXTURES}: ${missing.join(', ')}` : undefined;
}
