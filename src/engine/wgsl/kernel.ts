// The contract between graph nodes and WGSL kernels, and a small runner to test one lowering on a device.
//
// A lowering turns ONE graph node (its op, attrs and the static shapes of its inputs and output) into dispatches.
// Shapes are known when the plan is made, so kernels bake them into the WGSL source as constants (the pipeline cache
// keys on the source); nothing about a node changes between runs. Per-run data (z, cutout matrices, the Adam step)
// arrives as graph inputs, i.e. buffers the executor writes, never as kernel parameters.
//
// Binding convention for every dispatch: @group(0) @binding(i) is bindings[i]; inputs are
// `var<storage, read>`, the output and scratch buffers `var<storage, read_write>`; element type array<f32> for f32
// tensors and array<i32> for i32. The entry point is `main`. Buffers may be sub-ranges of a larger arena: never
// assume a binding starts at offset 0 of anything, and use arrayLength() only if you must.
//
// f16 weight storage (CompiledEngine precision 'f16'): an input whose TensorInfo has `storage: 'f16'` is bound as
// `array<u32>` holding IEEE halves packed two per word (element 2j in the low 16 bits of word j, element 2j+1 in the
// high bits, a last odd element padded with 0) and is read with WGSL's core builtin unpack2x16float (no device
// feature needed): storage only, every kernel still computes and accumulates in f32. The planner gives that storage
// only to constants (weights) whose every reader lists the input in its lowering module's HalfInputs, so a lowering
// sees it only where it said it can read it (kernels/common.ts: inputBuffer / inputAt). Native f16 arithmetic
// (shader-f16, `KernelLimits.f16`) and tensor-core (cooperative/subgroup matrix) kernels are NOT built: they need a
// device with those features (e.g. an H200 with Dawn's allow_unsafe_apis and vulkan_enable_f16_on_nvidia toggles).
//
// Limits to respect (WebGPU defaults, the software adapter has them too): at most 65535 workgroups per grid
// dimension (spread large launches over x and y), 256 invocations per workgroup by default, 16 KiB workgroup
// memory by default (32 KiB on the software adapter, more on discrete GPUs), at most 8 storage buffers per stage.
import type { Attrs, DType, OpName } from '../graph/ir.ts';
import { packHalves } from './half.ts';

export interface TensorInfo {
  shape: number[];
  dtype: DType;
  /** Only on inputs a lowering listed in its HalfInputs: 'f16' = packed halves (see the header); absent = dtype. */
  storage?: 'f16';
}

export interface KernelNode<K extends OpName = OpName> {
  op: K;
  attrs: Attrs[K];
  inputs: TensorInfo[];
  output: TensorInfo;
}

/**
 * What a binding refers to: an input of the node, its output, a scratch buffer of this lowering, or (a fused node
 * with a separate output, ir.ts) the value of the fusedOutput node that reads it.
 */
export type Binding = { input: number } | { output: true } | { scratch: number } | { fusedOutput: true };

export interface Dispatch {
  /** A complete WGSL module with entry point `main`. */
  code: string;
  bindings: Binding[];
  workgroups: [number, number, number];
  /** For profiles and errors, e.g. 'conv2d 3x3 s1 [1,16,16,128]->[1,16,16,128]'. */
  label?: string;
}

export interface Lowered {
  /** Dispatches run in order; each sees the writes of the previous ones. */
  dispatches: Dispatch[];
  /** Sizes in bytes of scratch buffers (binding `{ scratch: i }`), live only during this node's dispatches. */
  scratch?: number[];
  /**
   * The output IS input `alias` reinterpreted (same bytes, e.g. reshape or a copy that needs no kernel); when set,
   * `dispatches` is empty and the planner shares the buffer.
   */
  alias?: number;
  /**
   * With `alias`: the output is the input's bytes from this offset on (a view of a contiguous part, e.g. a slice
   * along the first axis), a multiple of limits.minOffsetAlignment (bindings start at such offsets only).
   */
  aliasOffset?: number;
}

export interface KernelLimits {
  maxWorkgroupsPerDimension: number;
  maxInvocationsPerWorkgroup: number;
  maxWorkgroupStorageSize: number;
  /** shader-f16 is enabled on the device. */
  f16: boolean;
  /** Byte alignment of binding offsets (minStorageBufferOffsetAlignment): where a view (Lowered.aliasOffset) may start. */
  minOffsetAlignment: number;
}

export const DEFAULT_LIMITS: KernelLimits = {
  maxWorkgroupsPerDimension: 65535,
  maxInvocationsPerWorkgroup: 256,
  maxWorkgroupStorageSize: 16384,
  f16: false,
  minOffsetAlignment: 256,
};

export type Lowering<K extends OpName = OpName> = (node: KernelNode<K>, limits: KernelLimits) => Lowered;
export type Lowerings = { [K in OpName]?: Lowering<K> };
/** Per node kind: the f32 inputs of this node its lowering can read stored as packed f16 (`storage: 'f16'`). */
export type HalfInputs = { [K in OpName]?: (node: KernelNode<K>) => number[] };

export const elementBytes = (dtype: DType): number => (dtype === 'f32' || dtype === 'i32' ? 4 : 4);
export const byteSize = (t: TensorInfo): number => {
  const n = t.shape.reduce((a, b) => a * b, 1);
  return Math.max(4, t.storage === 'f16' ? Math.ceil(n / 2) * 4 : n * elementBytes(t.dtype));
};

/**
 * A 1-D launch of `count` invocations in workgroups of `size`, spread over x and y so that no grid dimension exceeds
 * the limit. In WGSL recover the flat index as `gid.x + gid.y * (nwg.x * size)` with
 * `@builtin(num_workgroups) nwg: vec3<u32>`, and return when it is >= count.
 */
export function grid1d(count: number, size: number, limits: KernelLimits = DEFAULT_LIMITS): [number, number, number] {
  const groups = Math.max(1, Math.ceil(count / size));
  const x = Math.min(groups, limits.maxWorkgroupsPerDimension);
  const y = Math.ceil(groups / x);
  if (y > limits.maxWorkgroupsPerDimension) throw new Error(`launch of ${count} invocations is too large`);
  return [x, y, 1];
}

/** A WGSL literal for a float constant (always with a decimal point or exponent, so WGSL types it as f32). */
export function f32Literal(x: number): string {
  if (!Number.isFinite(x)) throw new Error(`cannot write ${x} as a WGSL literal`);
  const s = String(Math.fround(x));
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/**
 * The dispatch's WGSL with every non-input binding declared read_write, as the binding convention says: a kernel
 * that reads a scratch buffer written by an earlier dispatch of its node may declare it `read`, which an explicit
 * bind group layout (storage) would refuse.
 */
export function conformedCode(d: Dispatch): string {
  return d.code.replace(/@group\(0\)\s*@binding\((\d+)\)\s*var<storage,\s*read>/g, (m, i: string) => {
    const b = d.bindings[Number(i)];
    return b && !('input' in b) ? m.replace(/read>$/, 'read_write>') : m;
  });
}

export interface HostTensorData {
  data: Float32Array | Int32Array;
  shape: number[];
  /** 'f16': the (f32) data is uploaded as packed halves, for an input the lowered node has with that storage. */
  storage?: 'f16';
}

function unsupported(what: string): never {
  throw new Error(`runLowered: ${what}`);
}

/**
 * Runs one lowered node on `device` with fresh buffers and reads the output back: for kernel tests, not for the
 * executor (which plans buffers and submits a whole graph at once).
 */
export async function runLowered(device: GPUDevice, lowered: Lowered, inputs: HostTensorData[], output: TensorInfo): Promise<Float32Array | Int32Array> {
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const made: GPUBuffer[] = [];
  const buffer = (bytes: number) => {
    const b = device.createBuffer({ size: Math.max(16, Math.ceil(bytes / 16) * 16), usage });
    made.push(b);
    return b;
  };
  try {
    const inBufs = inputs.map((t) => {
      const data = t.storage === 'f16' ? packHalves(t.data as Float32Array) : t.data;
      const b = buffer(data.byteLength);
      device.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength);
      return b;
    });
    const outBytes = byteSize(output);
    if (lowered.alias !== undefined) {
      const off = (lowered.aliasOffset ?? 0) / 4;
      const src = inputs[lowered.alias].data.subarray(off, off + outBytes / 4);
      return output.dtype === 'i32' ? new Int32Array(src) : new Float32Array(src);
    }
    const outBuf = buffer(outBytes);
    const scratch = (lowered.scratch ?? []).map((bytes) => buffer(bytes));
    device.pushErrorScope('validation');
    const enc = device.createCommandEncoder();
    for (const d of lowered.dispatches) {
      const module = device.createShaderModule({ code: conformedCode(d) });
      // Explicit layouts by the binding convention, as the executor makes them: a kernel that declares a binding
      // otherwise fails here, not only in a planned graph.
      const layout = device.createBindGroupLayout({
        entries: d.bindings.map((b, i) => ({ binding: i, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'input' in b ? ('read-only-storage' as const) : ('storage' as const) } })),
      });
      const pipeline = device.createComputePipeline({ layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }), compute: { module, entryPoint: 'main' } });
      const entries = d.bindings.map((b, i) => ({
        binding: i,
        resource: { buffer: 'input' in b ? inBufs[b.input] : 'output' in b ? outBuf : 'scratch' in b ? scratch[b.scratch] : unsupported('a fusedOutput binding (plan the graph instead)') },
      }));
      const bindGroup = device.createBindGroup({ layout, entries });
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(...d.workgroups);
      pass.end();
    }
    const read = device.createBuffer({ size: Math.ceil(outBytes / 16) * 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    made.push(read);
    enc.copyBufferToBuffer(outBuf, 0, read, 0, Math.ceil(outBytes / 16) * 16);
    device.queue.submit([enc.finish()]);
    const err = await device.popErrorScope();
    if (err) throw new Error(`WebGPU validation: ${err.message}\n${lowered.dispatches.map((d) => d.label ?? '').join('\n')}`);
    await read.mapAsync(GPUMapMode.READ);
    const bytes = read.getMappedRange().slice(0, outBytes);
    read.unmap();
    return output.dtype === 'i32' ? new Int32Array(bytes) : new Float32Array(bytes);
  } finally {
    for (const b of made) b.destroy();
  }
}
