// Speed of the heavy WGSL lowerings (src/engine/wgsl/kernels) on whatever WebGPU adapter exists, on a raw Dawn device
// (no tfjs): matmul 1024^3, the f16_16384 decoder's largest conv (3x3, 128 -> 128 channels at the output resolution:
// [1, S, S, 128], S = 256 for 256 px images) and its input gradient, and the ViT-B/32 patch embedding (32 cutouts of
// 224 px, 32x32 stride 32, 3 -> 768) with its input gradient (tfjs's naive version: ~50 ms on the H200).
// Each kernel's pipelines and bind groups are made once; a run encodes `reps` repeats of its dispatches in one command
// buffer, submits once and waits on one small readback, so the time is GPU time plus one submit/map round trip
// (after a warm-up run). Prints ms per repeat and GFLOP/s (2 flops per multiply-add of the GEMM, zero taps of the
// strided-conv gradient not counted).
//
//   node --import tsx src/bench/wgsl-kernels.ts [--quick] [--size 512] [--reps N]
//
// --quick shrinks every problem (for the software adapter, ~2 GFLOP/s). Not measured on a GPU yet.
import { createWebGPUDevice } from '../engine/webgpu.ts';
import { DEFAULT_LIMITS, byteSize, type KernelLimits, type KernelNode, type Lowered, type TensorInfo } from '../engine/wgsl/kernel.ts';
import type { OpName } from '../engine/graph/ir.ts';
import { lowerings as matmulLowerings } from '../engine/wgsl/kernels/matmul.ts';
import { lowerings as convLowerings } from '../engine/wgsl/kernels/conv.ts';
import { isEntry } from './entry.ts';

interface Case {
  name: string;
  node: KernelNode;
  flops: number;
}

const f32 = (shape: number[]): TensorInfo => ({ shape, dtype: 'f32' });

function cases(quick: boolean, size: number): Case[] {
  const n = quick ? 256 : 1024;
  const s = quick ? 32 : size;
  const cutouts = quick ? 2 : 32;
  const same: [number, number, number, number] = [1, 1, 1, 1];
  const none: [number, number, number, number] = [0, 0, 0, 0];
  const patches = cutouts * 7 * 7;
  return [
    {
      name: `matmul ${n}x${n}x${n}`,
      node: { op: 'matmul', attrs: { transposeA: false, transposeB: false }, inputs: [f32([n, n]), f32([n, n])], output: f32([n, n]) },
      flops: 2 * n ** 3,
    },
    {
      name: `decoder conv 3x3 128->128 at ${s}x${s}`,
      node: { op: 'conv2d', attrs: { stride: 1, pad: same }, inputs: [f32([1, s, s, 128]), f32([3, 3, 128, 128]), f32([128])], output: f32([1, s, s, 128]) },
      flops: 2 * s * s * 128 * 9 * 128,
    },
    {
      name: `decoder conv input gradient at ${s}x${s}`,
      node: { op: 'conv2dGradInput', attrs: { stride: 1, pad: same }, inputs: [f32([1, s, s, 128]), f32([3, 3, 128, 128])], output: f32([1, s, s, 128]) },
      flops: 2 * s * s * 128 * 9 * 128,
    },
    {
      name: `ViT-B/32 patch embedding, ${cutouts} cutouts`,
      node: { op: 'conv2d', attrs: { stride: 32, pad: none }, inputs: [f32([cutouts, 224, 224, 3]), f32([32, 32, 3, 768])], output: f32([cutouts, 7, 7, 768]) },
      flops: 2 * patches * 3072 * 768,
    },
    {
      name: `ViT-B/32 patch embedding input gradient, ${cutouts} cutouts`,
      node: { op: 'conv2dGradInput', attrs: { stride: 32, pad: none }, inputs: [f32([cutouts, 7, 7, 768]), f32([32, 32, 3, 768])], output: f32([cutouts, 224, 224, 3]) },
      flops: 2 * patches * 3072 * 768,
    },
  ];
}

const lowerings = { ...matmulLowerings, ...convLowerings };

function lower(node: KernelNode, limits: KernelLimits): Lowered {
  const f = lowerings[node.op as 'matmul' | 'conv2d' | 'conv2dGradInput'] as ((n: KernelNode<OpName>, l: KernelLimits) => Lowered) | undefined;
  if (!f) throw new Error(`no lowering for ${node.op}`);
  return f(node, limits);
}

/** Seconds per repeat of the node's dispatches, `reps` repeats per submit, after one warm-up submit. */
async function time(device: GPUDevice, node: KernelNode, limits: KernelLimits, reps: number): Promise<number> {
  const lowered = lower(node, limits);
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const made: GPUBuffer[] = [];
  const buffer = (bytes: number) => {
    const b = device.createBuffer({ size: Math.ceil(bytes / 16) * 16, usage });
    made.push(b);
    return b;
  };
  try {
    const inputs = node.inputs.map((t) => {
      const b = buffer(byteSize(t));
      const data = new Float32Array(b.size / 4);
      let x = 12345;
      for (let i = 0; i < data.length; i++) {
        x = (x * 1103515245 + 12345) >>> 0;
        data[i] = x / 2 ** 31 - 1;
      }
      device.queue.writeBuffer(b, 0, data);
      return b;
    });
    const out = buffer(byteSize(node.output));
    const scratch = (lowered.scratch ?? []).map(buffer);
    const steps = lowered.dispatches.map((d) => {
      const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: d.code }), entryPoint: 'main' } });
      const entries = d.bindings.map((b, i) => ({
        binding: i,
        resource: { buffer: 'input' in b ? inputs[b.input] : 'scratch' in b ? scratch[b.scratch] : out },
      }));
      return { pipeline, bindGroup: device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries }), workgroups: d.workgroups };
    });
    const read = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    made.push(read);
    const run = async (n: number) => {
      const enc = device.createCommandEncoder();
      const pass = enc.beginComputePass();
      for (let r = 0; r < n; r++) {
        for (const s of steps) {
          pass.setPipeline(s.pipeline);
          pass.setBindGroup(0, s.bindGroup);
          pass.dispatchWorkgroups(...s.workgroups);
        }
      }
      pass.end();
      enc.copyBufferToBuffer(out, 0, read, 0, 16);
      device.queue.submit([enc.finish()]);
      await read.mapAsync(GPUMapMode.READ);
      read.unmap();
    };
    await run(1);
    const t0 = performance.now();
    await run(reps);
    return (performance.now() - t0) / 1000 / reps;
  } finally {
    for (const b of made) b.destroy();
  }
}

export async function benchWgslKernels(log: (line: string) => void, opts: { quick?: boolean; size?: number; reps?: number } = {}): Promise<void> {
  const { device, info } = await createWebGPUDevice('allow');
  try {
    log(`adapter: ${info.description || info.device || info.vendor} (${info.software ? 'software' : 'hardware'}, ${info.featureLevel})`);
    const limits: KernelLimits = {
      ...DEFAULT_LIMITS,
      maxWorkgroupsPerDimension: device.limits.maxComputeWorkgroupsPerDimension,
      maxInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
    };
    for (const c of cases(opts.quick ?? false, opts.size ?? 256)) {
      const reps = opts.reps ?? (info.software ? 1 : 20);
      const sec = await time(device, c.node, limits, reps);
      const labels = lower(c.node, limits).dispatches.length;
      log(`${c.name}: ${(sec * 1000).toFixed(3)} ms (${labels} dispatch${labels > 1 ? 'es' : ''}), ${(c.flops / sec / 1e9).toFixed(1)} GFLOP/s`);
    }
  } finally {
    device.destroy();
  }
}

if (isEntry('wgsl-kernels')) {
  const argv = process.argv.slice(2);
  const arg = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? Number(argv[i + 1]) : undefined;
  };
  await benchWgslKernels((l) => process.stdout.write(`${l}\n`), { quick: argv.includes('--quick'), size: arg('--size'), reps: arg('--reps') });
}
