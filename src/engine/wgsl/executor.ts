// Running a Plan on a WebGPU device: everything that does not change between runs is made once (shader modules and
// pipelines, cached by WGSL source; bind groups; buffers; constant uploads); a run writes the inputs, records all
// dispatches in one compute pass and submits once.
//
// Host cost per run is dominated by the calls into Dawn (about 1-3 us each through Dawn's Node binding, measured by
// src/bench/wgsl-executor.ts): a run makes one setBindGroup + one dispatchWorkgroups per dispatch and a setPipeline
// only when the pipeline changes. WebGPU cannot replay a recorded compute command buffer, so the per-run encoding is
// kept to a loop over pre-resolved arrays.
//
// Bind group layouts are explicit, from the plan's read-only/read-write flag per binding (inputs `var<storage, read>`,
// outputs and scratch `read_write`, as kernel.ts prescribes); 'auto' layouts would drop bindings a shader does not
// use and tie every bind group to one pipeline.
import type { Plan, PlannedTensor, Slot } from './plan.ts';
import { checkHostData } from './plan.ts';
import { packHalves } from './half.ts';

export interface CompileOptions {
  /**
   * State carried from one run to the next: input name -> output name. At the end of each run the output's bytes
   * are copied into the input (in the same submission), e.g. { z: 'zNext', m: 'mNext' } for an optimizer step.
   */
  carry?: Record<string, string>;
  /**
   * false: runs encode everything but submit nothing (host-cost benchmarks on an adapter too slow to run the work;
   * reads then give the buffers' old contents).
   */
  submit?: boolean;
  /**
   * Inputs held in caller-owned buffers (offset 0, at least the input's size) instead of the plan's arena, so that
   * several plans share one state on the GPU (a decode step and a prefill over the same key/value cache). run() never
   * needs them; a carry into one copies into the caller's buffer.
   */
  bind?: Record<string, GPUBuffer>;
}

export interface CompiledGraph {
  /**
   * Writes the given inputs (inputs not given keep the data of the previous run; the first run needs them all),
   * encodes every dispatch and submits. Does not wait for the GPU.
   */
  run(inputs?: Record<string, Float32Array | Int32Array>): void;
  /** An output's data after the runs submitted so far (one copy and one map). Throws on a validation error of a run. */
  read(name: string): Promise<Float32Array | Int32Array>;
  /** The single element of an output of size 1 (e.g. the loss). */
  readScalar(name: string): Promise<number>;
  /** Replaces a constant's data (node id) from the next run on: one small writeBuffer (packed for an f16 constant). */
  updateConst(node: number, data: Float32Array | Int32Array): void;
  destroy(): void;
  /** performance.now() around the last run's input writes + encoding + submit (not GPU time). */
  readonly lastRunHostMs: number;
  /**
   * The same without queue.submit: input writes + encoding only. Differs from lastRunHostMs on Dawn's OpenGL ES
   * backend (the software adapter), whose submit replays the commands as GL calls and llvmpipe runs them there.
   */
  readonly lastEncodeMs: number;
  /** pipelineSwitches: setPipeline calls per run (consecutive dispatches of one pipeline share one). */
  readonly stats: { dispatches: number; pipelines: number; pipelineSwitches: number; bindGroups: number; buffers: number; arenaBytes: number; constBytes: number };
}

const write = (device: GPUDevice, buffer: GPUBuffer, offset: number, data: Float32Array | Int32Array | Uint32Array): void =>
  device.queue.writeBuffer(buffer, offset, data.buffer, data.byteOffset, data.byteLength);

/** A constant's bytes as stored: its data, or packed halves (plan.ts f16Weights). */
const constBytes = (c: Plan['consts'][number], data: Float32Array | Int32Array) => (c.storage === 'f16' ? packHalves(data as Float32Array) : data);

/** Creates every GPU object the plan needs and uploads the constants. Throws on shader or validation errors. */
export async function compilePlan(device: GPUDevice, plan: Plan, opts: CompileOptions = {}): Promise<CompiledGraph> {
  const bound = Object.entries(opts.bind ?? {});
  if (bound.length) plan = bindInputs(plan, bound.map(([name]) => name));
  for (const [name, b] of bound) if (b.size < plan.inputs[name].slot.size) throw new Error(`bind: the buffer for ${name} has ${b.size} bytes, the input needs ${plan.inputs[name].slot.size}`);
  const carry = Object.entries(opts.carry ?? {}).map(([input, output]) => {
    const to = plan.inputs[input];
    const from = plan.outputs[output];
    if (!to) throw new Error(`carry: no input named ${input}`);
    if (!from) throw new Error(`carry: no output named ${output}`);
    if (to.dtype !== from.dtype || to.slot.size !== from.slot.size) throw new Error(`carry: ${output} and ${input} differ in shape or dtype`);
    return { from: from.slot, to: to.slot };
  });

  device.pushErrorScope('validation');
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const buffers = plan.buffers.map((b, i) => (b.kind === 'bound' ? bound[b.index!][1] : device.createBuffer({ size: Math.max(16, Math.ceil(b.size / 16) * 16), usage, label: `${b.kind} ${i}` })));
  for (const c of plan.consts) write(device, buffers[c.slot.buffer], c.slot.offset, constBytes(c, c.data));
  const bounceBytes = Math.max(0, ...carry.filter((c) => c.from.buffer === c.to.buffer).map((c) => c.from.size));
  const bounce = bounceBytes > 0 ? device.createBuffer({ size: Math.ceil(bounceBytes / 16) * 16, usage, label: 'carry bounce' }) : undefined;
  if (bounce) buffers.push(bounce);

  // Layouts by their pattern of read-only (r) and read-write (w) bindings, e.g. 'rrw'.
  const layouts = new Map<string, { key: string; bindGroup: GPUBindGroupLayout; pipeline: GPUPipelineLayout }>();
  const layoutFor = (writable: boolean[]) => {
    const key = writable.map((w) => (w ? 'w' : 'r')).join('');
    let l = layouts.get(key);
    if (!l) {
      const entries = writable.map((w, binding) => ({
        binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: w ? ('storage' as const) : ('read-only-storage' as const) },
      }));
      const bindGroup = device.createBindGroupLayout({ entries });
      l = { key, bindGroup, pipeline: device.createPipelineLayout({ bindGroupLayouts: [bindGroup] }) };
      layouts.set(key, l);
    }
    return l;
  };
  const pipelines = new Map<string, GPUComputePipeline>();
  const bindGroups = new Map<string, GPUBindGroup>();
  const n = plan.dispatches.length;
  const dPipeline: GPUComputePipeline[] = new Array(n);
  const dBindGroup: GPUBindGroup[] = new Array(n);
  const dGrid = new Uint32Array(3 * n);
  plan.dispatches.forEach((d, i) => {
    const layout = layoutFor(d.writable);
    const key = `${layout.key}\n${d.code}`;
    let pipeline = pipelines.get(key);
    if (!pipeline) {
      const module = device.createShaderModule({ code: d.code, label: d.label });
      pipeline = device.createComputePipeline({ layout: layout.pipeline, compute: { module, entryPoint: 'main' }, label: d.label });
      pipelines.set(key, pipeline);
    }
    const bgKey = `${layout.key}:${d.slots.map((s) => `${s.buffer},${s.offset},${s.size}`).join(';')}`;
    let bindGroup = bindGroups.get(bgKey);
    if (!bindGroup) {
      const entries = d.slots.map((s, binding) => ({ binding, resource: { buffer: buffers[s.buffer], offset: s.offset, size: s.size } }));
      bindGroup = device.createBindGroup({ layout: layout.bindGroup, entries });
      bindGroups.set(bgKey, bindGroup);
    }
    dPipeline[i] = pipeline;
    dBindGroup[i] = bindGroup;
    dGrid.set(d.workgroups, 3 * i);
  });
  const compileError = await device.popErrorScope();
  if (compileError) {
    for (const [i, b] of buffers.entries()) if (plan.buffers[i]?.kind !== 'bound') b.destroy();
    throw new Error(`compiling the plan: ${compileError.message}`);
  }

  const constByNode = new Map(plan.consts.map((c) => [c.node, c]));
  const written = new Set<string>();
  const staging = new Map<string, GPUBuffer>();
  let pending: Promise<GPUError | null> | undefined;
  let lastRunHostMs = 0;
  let lastEncodeMs = 0;

  const copy = (enc: GPUCommandEncoder, from: Slot, to: GPUBuffer, toOffset: number) =>
    enc.copyBufferToBuffer(buffers[from.buffer], from.offset, to, toOffset, from.size);

  const output = (name: string): PlannedTensor => {
    const t = plan.outputs[name];
    if (!t) throw new Error(`no output named ${name} (outputs: ${Object.keys(plan.outputs).join(', ')})`);
    return t;
  };

  const compiled: CompiledGraph = {
    run(inputs = {}) {
      const t0 = performance.now();
      for (const [name, data] of Object.entries(inputs)) {
        const t = plan.inputs[name];
        if (!t) throw new Error(`no input named ${name} (inputs: ${Object.keys(plan.inputs).join(', ')})`);
        checkHostData(t, data, `input ${name}`);
        write(device, buffers[t.slot.buffer], t.slot.offset, data);
        written.add(name);
      }
      if (written.size + bound.length < Object.keys(plan.inputs).length) {
        const missing = Object.keys(plan.inputs).filter((k) => !written.has(k) && !(opts.bind && k in opts.bind));
        throw new Error(`inputs never written: ${missing.join(', ')}`);
      }
      device.pushErrorScope('validation');
      const enc = device.createCommandEncoder();
      if (n > 0) {
        const pass = enc.beginComputePass();
        let current: GPUComputePipeline | undefined;
        for (let i = 0; i < n; i++) {
          const p = dPipeline[i];
          if (p !== current) pass.setPipeline((current = p));
          pass.setBindGroup(0, dBindGroup[i]);
          pass.dispatchWorkgroups(dGrid[3 * i], dGrid[3 * i + 1], dGrid[3 * i + 2]);
        }
        pass.end();
      }
      for (const c of carry) {
        // WebGPU refuses a copy within one buffer: those go through the bounce buffer.
        if (c.from.buffer === c.to.buffer && c.from.offset === c.to.offset) continue; // a state passed through unchanged
        if (c.from.buffer === c.to.buffer) {
          copy(enc, c.from, bounce!, 0);
          enc.copyBufferToBuffer(bounce!, 0, buffers[c.to.buffer], c.to.offset, c.from.size);
        } else copy(enc, c.from, buffers[c.to.buffer], c.to.offset);
      }
      const commands = enc.finish();
      lastEncodeMs = performance.now() - t0;
      if (opts.submit !== false) device.queue.submit([commands]);
      const err = device.popErrorScope();
      const prev = pending;
      pending = prev ? Promise.all([prev, err]).then(([a, b]) => a ?? b) : err;
      lastRunHostMs = performance.now() - t0;
    },

    async read(name) {
      const t = output(name);
      // One staging buffer per output, reused; a second read of the same output while the first maps gets its own.
      let st = staging.get(name);
      const busy = st !== undefined && st.mapState !== 'unmapped';
      if (!st || busy) {
        st = device.createBuffer({ size: Math.max(16, Math.ceil(t.slot.size / 16) * 16), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
        if (!busy) staging.set(name, st);
      }
      const enc = device.createCommandEncoder();
      copy(enc, t.slot, st, 0);
      device.queue.submit([enc.finish()]);
      const err = await pending;
      pending = undefined;
      if (err) throw new Error(`WebGPU validation error in a run: ${err.message}`);
      await st.mapAsync(GPUMapMode.READ, 0, t.slot.size);
      const bytes = st.getMappedRange(0, t.slot.size).slice(0);
      st.unmap();
      if (staging.get(name) !== st) st.destroy();
      return t.dtype === 'i32' ? new Int32Array(bytes) : new Float32Array(bytes);
    },

    async readScalar(name) {
      const t = output(name);
      if (t.slot.size !== 4) throw new Error(`output ${name} has shape [${t.shape.join(',')}], not a single element`);
      return (await compiled.read(name))[0];
    },

    updateConst(node, data) {
      const c = constByNode.get(node);
      if (!c) throw new Error(`node ${node} is not a constant of this plan`);
      checkHostData(c, data, `constant %${node}`);
      write(device, buffers[c.slot.buffer], c.slot.offset, constBytes(c, data));
    },

    destroy() {
      for (const [i, b] of buffers.entries()) if (plan.buffers[i]?.kind !== 'bound') b.destroy();
      for (const b of staging.values()) b.destroy();
      staging.clear();
    },

    get lastRunHostMs() {
      return lastRunHostMs;
    },

    get lastEncodeMs() {
      return lastEncodeMs;
    },

    stats: {
      dispatches: n,
      pipelines: pipelines.size,
      pipelineSwitches: dPipeline.filter((p, i) => i === 0 || p !== dPipeline[i - 1]).length,
      bindGroups: bindGroups.size,
      buffers: buffers.length,
      arenaBytes: plan.memory.arenaBytes,
      constBytes: plan.memory.constBytes,
    },
  };
  return compiled;
}

/**
 * The plan with the named inputs moved to buffers of their own (kind 'bound', in the order of `names`), every slot
 * within an input's bytes re-pointed there. An input's range in its arena is never shared (inputs live for the whole
 * run), so a slot inside it is the input or a view of it (a reshape, a contiguous slice), at the same offset from its
 * start.
 */
function bindInputs(plan: Plan, names: string[]): Plan {
  const buffers = plan.buffers.slice();
  const moved: Array<{ from: Slot; to: number }> = [];
  names.forEach((name, index) => {
    const t = plan.inputs[name];
    if (!t) throw new Error(`bind: no input named ${name} (inputs: ${Object.keys(plan.inputs).join(', ')})`);
    moved.push({ from: t.slot, to: buffers.length });
    buffers.push({ kind: 'bound', size: t.slot.size, index });
  });
  const re = (s: Slot): Slot => {
    const m = moved.find(({ from }) => s.buffer === from.buffer && s.offset >= from.offset && s.offset + s.size <= from.offset + from.size);
    return m ? { buffer: m.to, offset: s.offset - m.from.offset, size: s.size } : s;
  };
  const tensors = (r: Record<string, PlannedTensor>) => Object.fromEntries(Object.entries(r).map(([k, t]) => [k, { ...t, slot: re(t.slot) }]));
  return {
    ...plan,
    buffers,
    dispatches: plan.dispatches.map((d) => ({ ...d, slots: d.slots.map(re) })),
    inputs: tensors(plan.inputs),
    outputs: tensors(plan.outputs),
  };
}
