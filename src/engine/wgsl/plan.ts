// Planning a graph for the WebGPU executor: every node lowered to WGSL dispatches once, and every value given a
// fixed place (buffer, byte offset) for all runs.
//
// Time is the node id (nodes are in topological order and run in that order). A value lives from the node that
// makes it to its last reader; a node's scratch lives during that node only; graph inputs live for the whole run
// (and keep their data between runs, so a run may write only the inputs that changed); outputs live from their
// node to the end (they are read after the run). Values whose lifetimes do not overlap may share bytes: they are
// packed into a few large arena buffers by a greedy placement (largest first, each at the lowest aligned offset
// that no time-overlapping block uses). Constants live in their own buffers, never reused, uploaded once.
//
// WebGPU tracks buffer usage per buffer, not per byte range: a dispatch may not bind one buffer both read-only (an
// input) and read-write (its output or scratch), even at disjoint ranges. So values are coloured: a node's output and
// scratch get a colour (arena group) that none of its inputs has, and each group has its own arenas. A chain of nodes
// alternates between two groups; a node reading both takes a third.
// Reshape-like lowerings (`alias`) make no dispatch: the output is the same bytes as the input (or, a view, a
// contiguous part of them at an aligned offset: a slice along the first axis), so the input's lifetime is extended
// over the output's readers. Nodes no output depends on are dropped.
// With `f16Weights`, large f32 constants that every reader can read as packed halves (the kernel modules' HalfInputs:
// conv and matmul weights) are stored that way: half the constant bytes; the executor packs them at upload.
import { describeNode, sizeOf, type DType, type Graph, type Node } from '../graph/ir.ts';
import { byteSize, conformedCode, type HalfInputs, type KernelLimits, type KernelNode, type Lowered, type Lowerings, type TensorInfo } from './kernel.ts';

/** A byte range of one of the plan's buffers: what a binding, an upload or a readback refers to. */
export interface Slot {
  buffer: number;
  offset: number;
  /** Bytes of the value (a multiple of 4). */
  size: number;
}

export interface PlanBuffer {
  /**
   * 'arena': values with lifetimes (inputs, intermediates, outputs, scratch); 'const': constants only; 'bound': one
   * input in a buffer the caller owns (the index-th of CompileOptions.bind, executor.ts).
   */
  kind: 'arena' | 'const' | 'bound';
  size: number;
  index?: number;
}

export interface PlannedDispatch {
  code: string;
  /** Binding i of the WGSL module is slots[i]. */
  slots: Slot[];
  /** Per binding: read-write (the output, scratch) or read-only (an input). */
  writable: boolean[];
  workgroups: [number, number, number];
  /** The node this dispatch computes (for errors and profiles). */
  node: number;
  label: string;
}

export interface PlannedTensor {
  node: number;
  shape: number[];
  dtype: DType;
  slot: Slot;
}

export interface Plan {
  buffers: PlanBuffer[];
  /** In execution order. */
  dispatches: PlannedDispatch[];
  /** Graph inputs by name: written by each run. */
  inputs: Record<string, PlannedTensor>;
  /** Graph outputs by name: read after a run. */
  outputs: Record<string, PlannedTensor>;
  /** Constants: uploaded once (and by updateConst); `storage` 'f16': the f32 data goes up as packed halves. */
  consts: Array<PlannedTensor & { data: Float32Array | Int32Array; storage?: 'f16' }>;
  memory: {
    /** Sum of the arena buffers' sizes: the peak bytes the plan needs for non-constant values. */
    arenaBytes: number;
    /** What the same values would take with no reuse: every value and scratch buffer in its own (aligned) place. */
    valueBytes: number;
    /** The most bytes live at one time: what one ideal arena would need (the arenas' sum is at least this). */
    peakLiveBytes: number;
    constBytes: number;
  };
}

export interface PlanOptions {
  /** Byte alignment of every placed value (device.limits.minStorageBufferOffsetAlignment). */
  alignment: number;
  /** Largest binding (device.limits.maxStorageBufferBindingSize): a larger value is an error. */
  maxBindingSize: number;
  /** Largest buffer (device.limits.maxBufferSize): arenas and constant buffers are split to stay under it. */
  maxBufferSize: number;
  /**
   * Store f32 constants of at least `minElements` as packed f16 where every reader lists them in `inputs` (weights;
   * see kernel.ts's header). Absent: every constant stays in its dtype.
   */
  f16Weights?: { inputs: HalfInputs; minElements: number };
}

/** A block to place: `size` bytes live at times start..end inclusive, in arenas of `group` only. */
export interface Block {
  size: number;
  start: number;
  end: number;
  group: number;
}

export interface Placement {
  /** Per block: arena index and byte offset. */
  at: Array<{ arena: number; offset: number }>;
  /** Size of each arena (the end of its highest block, rounded up to the alignment). */
  arenaSizes: number[];
}

const alignUp = (x: number, a: number): number => Math.ceil(x / a) * a;

/**
 * Greedy placement of blocks with lifetimes: largest first (ties: earliest start), each at the lowest aligned offset
 * of the first arena of its group where it overlaps no block live at the same time; a new arena when none has room
 * under `cap`. Placed blocks are indexed by time buckets, so finding the blocks live with a new one costs about the
 * number of those blocks, not of all blocks.
 */
export function placeBlocks(blocks: readonly Block[], alignment: number, cap: number): Placement {
  const order = blocks.map((_, i) => i).sort((a, b) => blocks[b].size - blocks[a].size || blocks[a].start - blocks[b].start);
  const at: Placement['at'] = new Array(blocks.length);
  const arenaSizes: number[] = [];
  const arenaGroup: number[] = [];
  const horizon = blocks.reduce((m, b) => Math.max(m, b.end), 0) + 1;
  const width = Math.max(1, Math.ceil(horizon / 1024));
  const buckets: number[][][] = []; // per arena, per time bucket: placed blocks live in it
  const seen = new Int32Array(blocks.length).fill(-1); // last query that collected a block (dedupe across buckets)
  let query = 0;
  for (const i of order) {
    const b = blocks[i];
    const size = alignUp(b.size, alignment);
    if (size > cap) throw new Error(`a block of ${b.size} bytes exceeds the buffer size limit ${cap}`);
    const lo = Math.floor(b.start / width);
    const hi = Math.floor(b.end / width);
    for (let arena = 0; ; arena++) {
      if (arena === buckets.length) {
        buckets.push(Array.from({ length: Math.ceil(horizon / width) }, () => []));
        arenaSizes.push(0);
        arenaGroup.push(b.group);
      }
      if (arenaGroup[arena] !== b.group) continue;
      const busy: number[] = [];
      query++;
      for (let k = lo; k <= hi; k++) {
        for (const j of buckets[arena][k]) {
          if (seen[j] === query) continue;
          seen[j] = query;
          if (blocks[j].start <= b.end && b.start <= blocks[j].end) busy.push(j);
        }
      }
      busy.sort((p, q) => at[p].offset - at[q].offset);
      let offset = 0;
      for (const j of busy) {
        if (offset + size <= at[j].offset) break;
        offset = Math.max(offset, alignUp(at[j].offset + blocks[j].size, alignment));
      }
      if (offset + size > cap) continue;
      at[i] = { arena, offset };
      for (let k = lo; k <= hi; k++) buckets[arena][k].push(i);
      arenaSizes[arena] = Math.max(arenaSizes[arena], offset + size);
      break;
    }
  }
  return { at, arenaSizes };
}

/** Lowered work of one node, before placement. */
interface Step {
  node: Node;
  lowered: Lowered;
  /** Arena group of the output and scratch: one that none of the inputs has. */
  group: number;
  /** Arena block of each scratch buffer. */
  scratchBlocks: number[];
}

const tensorOf = (n: Node): TensorInfo => ({ shape: n.shape, dtype: n.dtype });

/**
 * The constants to store as f16: f32, at least `minElements`, not a graph output, and every needed node reading one
 * lists each input position it reads it at in its HalfInputs.
 */
function halfConstants(g: Graph, needed: Uint8Array, outputIds: Set<number>, opt: NonNullable<PlanOptions['f16Weights']>): Set<number> {
  const nodes = g.nodes;
  const accepted = new Map<number, boolean>();
  for (const n of nodes) {
    if (!needed[n.id]) continue;
    let positions: number[] | undefined;
    n.inputs.forEach((j, p) => {
      const c = nodes[j];
      if (c.op !== 'const' || c.dtype !== 'f32' || sizeOf(c.shape) < opt.minElements || outputIds.has(j)) return;
      const which = opt.inputs[n.op] as ((k: KernelNode) => number[]) | undefined;
      positions ??= which?.({ op: n.op, attrs: n.attrs, inputs: n.inputs.map((i) => tensorOf(nodes[i])), output: tensorOf(n) }) ?? [];
      accepted.set(j, (accepted.get(j) ?? true) && positions.includes(p));
    });
  }
  return new Set([...accepted].filter(([, ok]) => ok).map(([j]) => j));
}

/**
 * Lowers every node `g.outputs` depends on and places every value. Throws naming the node when a kind has no
 * lowering or a lowering fails.
 */
export function planGraph(g: Graph, lowerings: Lowerings, limits: KernelLimits, opts: PlanOptions): Plan {
  const nodes = g.nodes;
  const outputIds = new Set(Object.values(g.outputs));
  // Liveness needs the readers of each value; dead nodes are skipped entirely.
  const needed = new Uint8Array(nodes.length);
  for (const id of outputIds) needed[id] = 1;
  for (let i = nodes.length - 1; i >= 0; i--) if (needed[i]) for (const j of nodes[i].inputs) needed[j] = 1;
  // A fused node with a separate output stores its fusedOutput node's value too: that value needs a place.
  const fusedOutputOf = new Map<number, number>();
  for (const n of nodes) {
    if (n.op !== 'fusedOutput' || !needed[n.inputs[0]]) continue;
    needed[n.id] = 1;
    fusedOutputOf.set(n.inputs[0], n.id);
  }

  const half = opts.f16Weights ? halfConstants(g, needed, outputIds, opts.f16Weights) : new Set<number>();
  const stored = (i: number): TensorInfo => (half.has(i) ? { ...tensorOf(nodes[i]), storage: 'f16' } : tensorOf(nodes[i]));

  // Lower, and resolve aliases to the node whose bytes they are (at a byte offset into them, for views).
  const root = nodes.map((n) => n.id);
  const viewOffset = new Float64Array(nodes.length);
  const steps: Step[] = [];
  for (const n of nodes) {
    if (!needed[n.id] || n.op === 'const' || n.op === 'input' || n.op === 'fusedOutput') continue;
    const lower = lowerings[n.op] as ((k: KernelNode, l: KernelLimits) => Lowered) | undefined;
    if (!lower) throw new Error(`no WGSL lowering for ${n.op}: ${describeNode(g, n)}`);
    const k: KernelNode = { op: n.op, attrs: n.attrs, inputs: n.inputs.map(stored), output: tensorOf(n) };
    let lowered: Lowered;
    try {
      lowered = lower(k, limits);
    } catch (e) {
      throw new Error(`lowering ${describeNode(g, n)}: ${(e as Error).message}`);
    }
    if (lowered.alias !== undefined) {
      const off = lowered.aliasOffset ?? 0;
      const inBytes = byteSize(k.inputs[lowered.alias]);
      const within = lowered.aliasOffset === undefined ? inBytes === byteSize(k.output) : off % opts.alignment === 0 && off + byteSize(k.output) <= inBytes;
      if (!within || k.inputs[lowered.alias].storage) throw new Error(`alias of a different size or a misaligned view: ${describeNode(g, n)}`);
      root[n.id] = root[n.inputs[lowered.alias]];
      viewOffset[n.id] = viewOffset[n.inputs[lowered.alias]] + off;
      continue;
    }
    steps.push({ node: n, lowered, group: 0, scratchBlocks: [] });
  }

  // Colouring (see the header): inputs in group 0, each node's output in the lowest group its inputs do not use.
  const group = new Map<number, number>();
  for (const n of nodes) if (n.op === 'input') group.set(n.id, 0);
  for (const s of steps) {
    const taken = new Set(s.node.inputs.map((i) => group.get(root[i])));
    while (taken.has(s.group)) s.group++;
    group.set(s.node.id, s.group);
    const second = fusedOutputOf.get(s.node.id);
    if (second !== undefined) group.set(second, s.group);
  }

  // Lifetimes of root values (time = node id; the run ends at `end`).
  const end = nodes.length;
  const first = new Map<number, number>();
  const last = new Map<number, number>();
  const touch = (v: number, t: number) => {
    const r = root[v];
    if (!first.has(r)) first.set(r, t);
    last.set(r, Math.max(last.get(r) ?? t, t));
  };
  for (const n of nodes) {
    // Every input gets a place, even one nothing reads, so that run() may always be given it.
    if (n.op === 'input') {
      touch(n.id, 0);
      touch(n.id, end);
    }
    if (!needed[n.id]) continue;
    if (n.op === 'fusedOutput') touch(n.id, n.inputs[0]); // written by the fused node it reads
    if (root[n.id] === n.id) touch(n.id, n.id);
    for (const i of n.inputs) touch(i, n.id);
  }
  for (const id of outputIds) touch(id, end);

  const blocks: Block[] = [];
  const blockOf = new Map<number, number>(); // root value -> block
  let valueBytes = 0;
  for (const [r, start] of first) {
    const n = nodes[r];
    if (n.op === 'const') continue;
    const size = byteSize(tensorOf(n));
    if (size > opts.maxBindingSize) throw new Error(`value of ${size} bytes exceeds the binding limit ${opts.maxBindingSize}: ${describeNode(g, n)}`);
    blockOf.set(r, blocks.length);
    blocks.push({ size, start, end: last.get(r)!, group: group.get(r)! });
    valueBytes += alignUp(size, opts.alignment);
  }
  for (const s of steps) {
    for (const bytes of s.lowered.scratch ?? []) {
      const size = alignUp(Math.max(4, bytes), 4);
      if (size > opts.maxBindingSize) throw new Error(`scratch of ${size} bytes exceeds the binding limit: ${describeNode(g, s.node)}`);
      s.scratchBlocks.push(blocks.length);
      blocks.push({ size, start: s.node.id, end: s.node.id, group: s.group });
      valueBytes += alignUp(size, opts.alignment);
    }
  }
  const placement = placeBlocks(blocks, opts.alignment, opts.maxBufferSize);
  const buffers: PlanBuffer[] = placement.arenaSizes.map((size) => ({ kind: 'arena', size }));
  const blockSlot = (b: number): Slot => ({ buffer: placement.at[b].arena, offset: placement.at[b].offset, size: blocks[b].size });

  // Constants: packed in order into const buffers, a new one when the current would pass the buffer limit.
  const constSlot = new Map<number, Slot>();
  const consts: Plan['consts'] = [];
  let constBytes = 0;
  for (const r of first.keys()) {
    const n = nodes[r];
    if (n.op !== 'const') continue;
    const size = byteSize(stored(r));
    if (size > opts.maxBindingSize) throw new Error(`constant of ${size} bytes exceeds the binding limit: ${describeNode(g, n)}`);
    let cur = buffers[buffers.length - 1];
    if (cur?.kind !== 'const' || alignUp(cur.size, opts.alignment) + size > opts.maxBufferSize) {
      cur = { kind: 'const', size: 0 };
      buffers.push(cur);
    }
    const slot: Slot = { buffer: buffers.length - 1, offset: alignUp(cur.size, opts.alignment), size };
    cur.size = slot.offset + size;
    constSlot.set(r, slot);
    const data = (n.attrs as { data: Float32Array | Int32Array }).data;
    consts.push({ node: r, shape: n.shape, dtype: n.dtype, slot, data, ...(half.has(r) ? { storage: 'f16' as const } : {}) });
    constBytes += size;
  }

  const slotOf = (v: number): Slot => {
    const r = root[v];
    const s = constSlot.get(r) ?? blockSlot(blockOf.get(r)!);
    // A view's own range (an alias of the same size, e.g. of a constant stored as f16, keeps the root's).
    const size = byteSize(tensorOf(nodes[v]));
    return viewOffset[v] === 0 && (r === v || size === byteSize(tensorOf(nodes[r]))) ? s : { buffer: s.buffer, offset: s.offset + viewOffset[v], size };
  };
  const tensor = (id: number): PlannedTensor => ({ node: id, shape: nodes[id].shape, dtype: nodes[id].dtype, slot: slotOf(id) });

  const dispatches: PlannedDispatch[] = [];
  for (const s of steps) {
    for (const d of s.lowered.dispatches) {
      const slots = d.bindings.map((b) =>
        'input' in b ? slotOf(s.node.inputs[b.input]) : 'output' in b ? slotOf(s.node.id) : 'scratch' in b ? blockSlot(s.scratchBlocks[b.scratch]) : slotOf(fusedOutputOf.get(s.node.id)!),
      );
      const writable = d.bindings.map((b) => !('input' in b));
      dispatches.push({ code: conformedCode(d), slots, writable, workgroups: d.workgroups, node: s.node.id, label: d.label ?? `${s.node.op} %${s.node.id}` });
    }
  }

  const inputs: Plan['inputs'] = {};
  for (const n of nodes) {
    if (n.op !== 'input') continue;
    const { name } = n.attrs as { name: string };
    if (inputs[name]) throw new Error(`two inputs named ${name}: ${describeNode(g, n)}`);
    inputs[name] = tensor(n.id);
  }
  const outputs: Plan['outputs'] = {};
  for (const [name, id] of Object.entries(g.outputs)) outputs[name] = tensor(id);

  const arenaBytes = buffers.filter((b) => b.kind === 'arena').reduce((a, b) => a + b.size, 0);
  const memory = { arenaBytes, valueBytes, peakLiveBytes: peakLive(blocks, opts.alignment), constBytes };
  return { buffers, dispatches, inputs, outputs, consts, memory };
}

/** The largest total (aligned) size of the blocks live at one time. */
function peakLive(blocks: readonly Block[], alignment: number): number {
  const events: Array<[number, number]> = [];
  for (const b of blocks) events.push([b.start, alignUp(b.size, alignment)], [b.end + 1, -alignUp(b.size, alignment)]);
  events.sort((p, q) => p[0] - q[0] || p[1] - q[1]);
  let live = 0;
  let peak = 0;
  for (const [, d] of events) peak = Math.max(peak, (live += d));
  return peak;
}

/** Element count check for host data written to a planned tensor. */
export function checkHostData(t: PlannedTensor, data: Float32Array | Int32Array, what: string): void {
  const want = sizeOf(t.shape);
  if (data.length !== want) throw new Error(`${what}: ${data.length} elements given, shape [${t.shape.join(',')}] needs ${want}`);
  const isInt = data instanceof Int32Array;
  if (isInt !== (t.dtype === 'i32')) throw new Error(`${what}: ${isInt ? 'Int32Array' : 'Float32Array'} given for ${t.dtype}`);
}
