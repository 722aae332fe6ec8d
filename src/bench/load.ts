// Checkpoint loading speed: writes a synthetic multi-GB torch zip checkpoint (Lightning layout, fp32, shapes like
// a large transformer's) into a temporary folder, then times opening it (directory + object pickle), reading every
// tensor (CRC-checked), converting it to safetensors, and reading every tensor again through the converted fast
// path. The file was just written, so these are warm page-cache figures (no root to drop caches here). Everything
// is deleted afterwards.
//
//   node --import tsx src/bench/load.ts [--quick]     (or: npm run bench -- --only load)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { convertCheckpoint, resolveWeights } from '../formats/convert.ts';
import { openTorchFile, stateDict } from '../formats/torch.ts';
import { OrderedDictSpec, TensorSpec, writeTorchZip, type StorageSpec } from '../formats/torch-writer.ts';
import { runStandalone } from './entry.ts';

export interface LoadBenchOptions {
  quick?: boolean;
  /** Checkpoint size in bytes (default 2.5 GB, 256 MB with quick). */
  bytes?: number;
  /** Where to write the temporary files (default: the OS temp folder). */
  dir?: string;
}

export interface LoadBenchResult {
  bytes: number;
  tensors: number;
  writeS: number;
  openMs: number;
  readS: number;
  convertS: number;
  fastOpenMs: number;
  fastReadS: number;
}

/** Deterministic, cheap, non-constant bytes (so nothing can shortcut the reads). */
function pattern(bytes: number, seed: number): Uint8Array {
  const out = new Uint32Array(bytes / 4);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < out.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    // Keep the values finite float32s: clear the top exponent bit.
    out[i] = (x >>> 0) & 0xbfffffff;
  }
  return new Uint8Array(out.buffer);
}

/** The bench section (`npm run bench -- --only load`): prints its lines. */
export async function benchLoad(log: (line: string) => void = console.log, opts: LoadBenchOptions = {}): Promise<void> {
  await measureLoad(log, opts);
}

/** Runs the load benchmark and returns its figures as well as printing them. */
export async function measureLoad(log: (line: string) => void = console.log, opts: LoadBenchOptions = {}): Promise<LoadBenchResult> {
  const target = opts.bytes ?? (opts.quick ? 256 * 2 ** 20 : 2.5 * 2 ** 30);
  const dir = fs.mkdtempSync(path.join(opts.dir ?? os.tmpdir(), 'vqclip-bench-load-'));
  const file = path.join(dir, 'synthetic.ckpt');
  try {
    // Transformer-like: blocks of 4 weight matrices [d, d] and 4d-wide MLP pieces plus biases, d = 2048 (16 MB each).
    const d = 2048;
    const chunk = pattern(d * d * 4, 1); // one 16 MB pattern, varied per tensor by its first bytes
    const sd = new Map<unknown, unknown>();
    let bytes = 0;
    let key = 0;
    const addTensor = (name: string, shape: number[]) => {
      const numel = shape.reduce((a, b) => a * b, 1);
      const id = String(key++);
      const storage: StorageSpec = {
        key: id,
        dtype: 'float32',
        numel,
        chunks: function* () {
          let left = numel * 4;
          let first = true;
          while (left > 0) {
            const n = Math.min(left, chunk.length);
            const c = chunk.subarray(0, n);
            if (first) {
              const head = Uint8Array.from(c.subarray(0, Math.min(4, n)));
              head[0] ^= Number(id) & 0x3f;
              yield head;
              yield c.subarray(head.length);
            } else yield c;
            first = false;
            left -= n;
          }
        },
      };
      sd.set(name, new TensorSpec(storage, shape));
      bytes += numel * 4;
    };
    for (let layer = 0; bytes < target; layer++) {
      for (const w of ['query', 'key', 'value', 'proj']) {
        addTensor(`transformer.blocks.${layer}.attn.${w}.weight`, [d, d]);
        addTensor(`transformer.blocks.${layer}.attn.${w}.bias`, [d]);
      }
      addTensor(`transformer.blocks.${layer}.mlp.0.weight`, [4 * d, d]);
      addTensor(`transformer.blocks.${layer}.mlp.2.weight`, [d, 4 * d]);
    }
    const checkpoint = new Map<unknown, unknown>([
      ['epoch', 1],
      ['global_step', 1000],
      ['state_dict', new OrderedDictSpec(sd)],
    ]);
    let t = performance.now();
    writeTorchZip(file, checkpoint, 'synthetic');
    const writeS = (performance.now() - t) / 1000;
    const size = fs.statSync(file).size;
    log(`load: synthetic torch zip checkpoint ${(size / 2 ** 30).toFixed(2)} GiB, ${sd.size} fp32 tensors, written in ${writeS.toFixed(1)} s (${dir})`);

    t = performance.now();
    const tf = await openTorchFile(file);
    const tensors = stateDict(tf);
    const openMs = performance.now() - t;
    t = performance.now();
    let checksum = 0;
    for (const lt of tensors.values()) checksum += (lt.read().data as Float32Array)[1];
    const readS = (performance.now() - t) / 1000;
    tf.close();
    log(`load: torch zip  open ${openMs.toFixed(1)} ms, read all ${readS.toFixed(2)} s (${(size / 2 ** 30 / readS).toFixed(2)} GiB/s, CRC-checked)`);

    t = performance.now();
    const conv = await convertCheckpoint(file);
    const convertS = (performance.now() - t) / 1000;
    log(`load: convert to safetensors ${convertS.toFixed(1)} s (${(conv.bytes / 2 ** 30).toFixed(2)} GiB)`);

    t = performance.now();
    const fast = await resolveWeights(file);
    const fastOpenMs = performance.now() - t;
    if (!fast.converted) throw new Error('the converted sibling was not used');
    t = performance.now();
    let checksum2 = 0;
    for (const lt of fast.tensors.values()) checksum2 += (lt.read().data as Float32Array)[1];
    const fastReadS = (performance.now() - t) / 1000;
    fast.close();
    if (checksum2 !== checksum) throw new Error(`fast path read different values (${checksum2} vs ${checksum})`);
    log(`load: safetensors fast path  open ${fastOpenMs.toFixed(1)} ms, read all ${fastReadS.toFixed(2)} s (${(size / 2 ** 30 / fastReadS).toFixed(2)} GiB/s)`);
    return { bytes: size, tensors: sd.size, writeS, openMs, readS, convertS, fastOpenMs, fastReadS };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

await runStandalone('load', (log, a) => benchLoad(log, { quick: a.has('--quick') }));
