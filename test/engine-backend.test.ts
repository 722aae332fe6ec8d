// backend.ts: choosing, reporting, env vars, wasm pthreads, the software WebGPU path, and clean process exit.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { backendReport, initBackend, shutdownBackend } from '../src/engine/backend.ts';
import { coreCount, MAX_WASM_THREADS } from '../src/engine/wasm-threads.ts';

/** tf.grad for a function of a specific tensor rank (tf.grad's parameter type is the plain Tensor). */
const grad = <T extends tf.Tensor>(f: (x: T) => tf.Tensor) => tf.grad(f as unknown as (x: tf.Tensor) => tf.Tensor);

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

after(() => shutdownBackend());

/** A 3x3 conv and its input gradient on the current backend (awaited reads: webgpu cannot read synchronously). */
async function convProbe(): Promise<Float32Array> {
  const x = tf.tensor4d(Float32Array.from({ length: 2 * 6 * 5 * 3 }, (_, i) => Math.sin(i)), [2, 6, 5, 3]);
  const w = tf.tensor4d(Float32Array.from({ length: 3 * 3 * 3 * 4 }, (_, i) => Math.cos(i)), [3, 3, 3, 4]);
  const y = tf.conv2d(x, w, 1, 'same');
  const g = grad((v: tf.Tensor4D) => tf.sum(tf.square(tf.conv2d(v, w, 2, 'same'))))(x);
  const out = new Float32Array([...(await y.data()), ...(await g.data())]);
  tf.dispose([x, w, y, g]);
  return out;
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(a[i]));
  }
  return d / (m || 1);
}

function withEnv<T>(vars: Record<string, string | undefined>, f: () => Promise<T>): Promise<T> {
  const saved: Record<string, string | undefined> = {};
  for (const k of Object.keys(vars)) {
    saved[k] = process.env[k];
    if (vars[k] === undefined) delete process.env[k];
    else process.env[k] = vars[k];
  }
  return f().finally(() => {
    for (const k of Object.keys(saved)) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });
}

/** Run a script in a fresh Node process (tsx loader) and report how it ended. */
function child(script: string, timeoutMs = 30_000) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: root,
    encoding: 'utf8',
    timeout: timeoutMs,
    env: { ...process.env, VQCLIP_BACKEND: '', VQCLIP_THREADS: '' },
  });
  const timedOut = r.error?.message.includes('ETIMEDOUT') ?? false;
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, timedOut };
}

describe('initBackend', () => {
  let cpuRef: Float32Array;

  test('cpu: report, versions, no "install tfjs-node" banner', async () => {
    const warnings: string[] = [];
    const orig = console.warn;
    console.warn = (...a: unknown[]) => void warnings.push(a.join(' '));
    try {
      const r = await initBackend('cpu');
      assert.equal(r.backend, 'cpu');
      assert.equal(r.requested, 'cpu');
      assert.equal(tf.getBackend(), 'cpu');
      assert.equal(r.threads, 1);
      assert.equal(r.software, false);
      assert.equal(r.versions['@tensorflow/tfjs'], tf.version.tfjs);
      for (const p of ['@tensorflow/tfjs-backend-wasm', '@tensorflow/tfjs-backend-webgpu', 'webgpu']) {
        assert.match(r.versions[p] ?? '', /^\d+\.\d+\.\d+/, p);
      }
      assert.equal(backendReport(), r);
      cpuRef = await convProbe();
    } finally {
      console.warn = orig;
    }
    assert.ok(!warnings.some((w) => /tfjs-node/.test(w)), `banner printed: ${warnings.join('|')}`);
  });

  test('wasm on all cores: real pthreads, fast kernels, same numbers as cpu', async () => {
    const r = await initBackend('wasm');
    assert.equal(r.backend, 'wasm');
    assert.equal(tf.getBackend(), 'wasm');
    const want = Math.min(coreCount(), MAX_WASM_THREADS);
    assert.equal(r.threads, want, `threads ${r.threads}, reason: ${r.wasm?.fallbackReason}`);
    assert.equal(r.wasm?.binary, want > 1 ? 'threaded-simd' : 'simd');
    if (want > 1) {
      // XNNPACK's pool: the calling thread plus threads-1 running pthread workers.
      const pthread = (tf.backend() as unknown as { wasm: { PThread: { runningWorkers: unknown[] } } }).wasm.PThread;
      assert.equal(pthread.runningWorkers.length, want - 1);
    }
    assert.ok(r.fastKernels?.includes('Conv2DBackpropInput'));
    const d = maxRel(cpuRef, await convProbe());
    assert.ok(d < 1e-5, `wasm vs cpu ${d}`);
  });

  test('VQCLIP_BACKEND and VQCLIP_THREADS', async () => {
    await withEnv({ VQCLIP_BACKEND: 'wasm', VQCLIP_THREADS: '1' }, async () => {
      const r = await initBackend();
      assert.equal(r.backend, 'wasm');
      assert.equal(r.requested, 'wasm');
      assert.equal(r.threads, 1);
      assert.equal(r.wasm?.binary, 'simd');
      assert.ok(maxRel(cpuRef, await convProbe()) < 1e-5);
    });
    await withEnv({ VQCLIP_BACKEND: 'cpu', VQCLIP_THREADS: undefined }, async () => {
      assert.equal((await initBackend()).backend, 'cpu');
    });
    await withEnv({ VQCLIP_THREADS: 'lots' }, async () => {
      await assert.rejects(initBackend('wasm'), /VQCLIP_THREADS/);
    });
    await assert.rejects(initBackend('tpu'), /unknown backend "tpu"/);
  });

  test('tensorflow: loaded only if installed, else rejected with the reason', async (t) => {
    try {
      const r = await initBackend('tensorflow');
      t.diagnostic(`tfjs-node present: ${r.tensorflowPackage}`);
      assert.equal(tf.getBackend(), 'tensorflow');
    } catch (e) {
      const msg = (e as Error).message;
      assert.match(msg, /@tensorflow\/tfjs-node-gpu: /);
      assert.match(msg, /@tensorflow\/tfjs-node: /);
      t.diagnostic(msg);
    }
  });

  test('auto: every candidate before the chosen one is rejected with a reason; no software GPU', async (t) => {
    const r = await initBackend('auto');
    t.diagnostic(`auto -> ${r.backend}: ${r.reason}`);
    assert.equal(r.requested, 'auto');
    assert.equal(tf.getBackend(), r.backend);
    const order = ['tensorflow', 'webgpu', 'wasm', 'cpu'];
    assert.deepEqual(
      r.attempts.map((a) => a.backend),
      order.slice(0, order.indexOf(r.backend) + 1),
    );
    for (const a of r.attempts.slice(0, -1)) {
      assert.equal(a.ok, false);
      assert.ok(a.reason && a.reason.length > 0, `${a.backend} rejected without a reason`);
      assert.ok(r.reason.includes(a.backend), 'reason line names each rejected candidate');
    }
    assert.equal(r.attempts[r.attempts.length - 1].ok, true);
    if (r.backend === 'webgpu') assert.equal(r.gpu?.software, false, 'auto must not pick a software adapter');
  });

  test('webgpu, software path (Dawn OpenGL ES on llvmpipe): same numbers as cpu', async (t) => {
    let r;
    try {
      r = await initBackend('webgpu', { software: true });
    } catch (e) {
      console.log(`# SKIP software webgpu: ${(e as Error).message}`);
      return t.skip(`no software WebGPU adapter: ${(e as Error).message}`);
    }
    t.diagnostic(`${r.gpu?.device} | ${r.gpu?.description} | ${r.gpu?.dawnFlags.join(',')} ${r.gpu?.featureLevel}`);
    assert.equal(r.backend, 'webgpu');
    assert.equal(r.software, true);
    assert.equal(r.gpu?.software, true);
    assert.equal(r.gpu?.featureLevel, 'compatibility');
    const d = maxRel(cpuRef, await convProbe());
    assert.ok(d < 1e-4, `webgpu vs cpu ${d}`);
    await shutdownBackend();
    assert.equal(tf.getBackend(), 'cpu');
    assert.equal(backendReport(), undefined);
  });

  test('shutdownBackend leaves cpu current and can be called twice', async () => {
    await initBackend('wasm', { threads: 2 });
    await shutdownBackend();
    await shutdownBackend();
    assert.equal(tf.getBackend(), 'cpu');
    // A later initBackend works again (the wasm factory was re-registered).
    const r = await initBackend('wasm', { threads: 2 });
    assert.equal(r.backend, 'wasm');
    assert.ok(maxRel(cpuRef, await convProbe()) < 1e-5);
  });
});

describe('process exit', () => {
  const script = (choice: string, opts: string) => `
    import * as tf from '@tensorflow/tfjs';
    import { initBackend, shutdownBackend } from './src/engine/backend.ts';
    const r = await initBackend('${choice}', ${opts});
    const y = tf.matMul(tf.ones([8, 8]), tf.ones([8, 8]));
    console.log('RESULT', r.backend, r.threads ?? '-', (await y.data())[0]);
    await shutdownBackend();
  `;

  test('exits by itself after shutdownBackend (wasm with threads)', () => {
    const r = child(script('wasm', '{ threads: 2 }'));
    assert.equal(r.timedOut, false, 'process hung after shutdownBackend');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /RESULT wasm 2 8/);
  });

  test('exits by itself even without shutdownBackend (idle wasm pthreads are unref()ed)', () => {
    const r = child(script('wasm', '{ threads: 2 }').replace('await shutdownBackend();', ''));
    assert.equal(r.timedOut, false, 'process hung with live pthreads');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /RESULT wasm 2 8/);
  });

  test('exits by itself after shutdownBackend (software webgpu)', (t) => {
    const r = child(script('webgpu', '{ software: true }'));
    if (r.status !== 0 && /unavailable/.test(r.stderr)) return t.skip('no software WebGPU adapter');
    assert.equal(r.timedOut, false, 'process hung after shutdownBackend');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /RESULT webgpu - 8/);
  });

  test('importing the engine does not change tfjs defaults (ops before initBackend run on cpu)', () => {
    const r = child(`
      import * as tf from '@tensorflow/tfjs';
      import './src/engine/backend.ts';
      console.log('RESULT', (await tf.add(1, 2).data())[0], tf.getBackend());
    `);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /RESULT 3 cpu/);
  });
});
