// Elementwise fusion, a graph -> graph rewrite for the planner: maximal groups of elementwise nodes (unary, binary
// with broadcasting, reshapes between them) become one `fused` node (ir.ts), i.e. one kernel instead of one per node.
// On the compiled path the host cost of a run is per dispatch (the calls into Dawn), and most of a training step's
// nodes are elementwise (activations, bias and residual adds, the *Grad functions, the optimiser's update chain).
//
// It lives with the graph, not the WGSL kernels, because it only rewrites the graph; the one kernel limit it must
// respect (storage buffers per dispatch) comes in as `maxInputs`.
//
// Node ids do not change: a group's fused node takes its last node's id (its sink), and the other members stay in
// the node list, unread (the planner skips nodes no output depends on). So constants, inputs and outputs keep their
// ids and names, and a map from a builder's ids to the graph's stays valid.
//
// A group is grown from its sink towards the inputs, in decreasing id order, and a node joins only when every node
// reading it is already in the group and it is not a graph output: then no value inside the group is needed outside
// it, and nothing outside depends on the group except through the sink (which has the group's largest id), so the
// rewrite keeps the graph acyclic and in topological order. A member read by several members is computed once (one
// `let` in the kernel), so diamonds fuse without recomputation.
//
// Indexing: the kernel runs one invocation per element of the sink, flat index i. A step's value is needed at i read
// in a "frame" shape of the same size as the sink: the sink's shape, or below a reshape, the reshape's input shape
// (a reshape of the group's full size changes how i splits into coordinates, not which element it is). Broadcasting
// composes (a [C] operand broadcast to [H,W,C] and then to [B,H,W,C] reads as [C] broadcast to [B,H,W,C]), so each
// operand is read at its broadcast index into its reader's frame, whatever the shapes in between. Hence two rules:
// a reshape joins only at the group's full size, and a member's readers must agree on its frame (fusedFrames).
//
// Epilogues (option): the group may also take the GEMM-shaped node (matmul, conv2d, conv2dGradInput) or the
// normalization (groupNorm, layerNorm and their gradients) that makes one of its operands, when the group reads it
// whole (same size as the sink) and nothing else does. The lead's store then computes the group at the element it
// stores (kernels/fused.ts); the lead's operands become inputs of the fused node (they are not fused further).
// Bias adds after linear layers, the attention scores' scale, residual adds after convs, the activation gradients
// that read a conv's input gradient, the residual stream's gradient sums after a norm's gradient are such groups.
// A norm's chunked form binds a scratch buffer besides the group's, so a group led by one has one input fewer.
//
// Transposes (with epilogues): a transpose that only matmuls read is folded into each of them as a view (their GEMM
// loads read its input at permuted indices; the transpose itself is then dead), so a matmul reading one heads a group
// even with no epilogue; so is a transpose that only a reshape read by matmuls reads (the view then has the
// reshape's shape: the GEMM loads index it flat, and a reshape keeps flat indices); and a transpose may end a group
// (the sink), which then runs over the transpose's input and stores each element at its permuted place. Attention's
// head layouts ([B,T,H,D] <-> [B,H,T,D], forward and backward) are all such transposes.
//
// Separate outputs (with epilogues): one member whose value is also read outside the group may stay in it when
// every input of the group comes before that member. The fused node then takes that member's id and value (ir.ts
// fused.output), and the sink becomes a fusedOutput node whose value the same kernel stores: GroupNorm + swish, or a
// biased linear + QuickGELU, whose inner value the backward's swishGrad / quickGeluGrad reads, run as one kernel.
import { sizeOf, type FusedArg, type FusedStep, type Graph, type Node } from './ir.ts';

export interface FuseOptions {
  /** Most distinct inputs of one fused node (the kernel's storage buffers, less the output). */
  maxInputs: number;
  /**
   * Also fuse a group into the store of the matmul/conv/norm making one of its operands (one dispatch for both), and
   * transposes into matmul loads or a group's store.
   */
  epilogues?: boolean;
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((v, i) => v === b[i]);

/** Kinds that may lead a group as its epilogue's producer (see the header). */
const LEADS = new Set<string>(['matmul', 'conv2d', 'conv2dGradInput', 'groupNorm', 'layerNorm', 'groupNormGrad', 'layerNormGrad']);
/** Lead kinds whose kernels also bind a scratch buffer next to the group's: one input fewer for the group. */
const SCRATCH_LEADS = new Set<string>(['groupNorm', 'layerNorm', 'groupNormGrad', 'layerNormGrad']);

/** unary/binary nodes that compute something (a copy alone is a buffer alias, no kernel). */
const computes = (n: Node): boolean => n.dtype === 'f32' && (n.op === 'binary' || (n.op === 'unary' && (n.attrs as { fn: string }).fn !== 'copy'));

/**
 * The frame of each step (see the header): the last step's is `out`; another's is the one its readers give it (a
 * reshape reader: the step's own shape; any other reader: the reader's frame). Throws when readers disagree, when a
 * reshape is not of the full size, or when a step has no reader (fuseElementwise never makes such groups).
 */
export function fusedFrames(steps: readonly FusedStep[], out: readonly number[]): number[][] {
  const n = steps.length;
  const size = sizeOf(out);
  const frames: (number[] | undefined)[] = new Array(n);
  frames[n - 1] = out.slice();
  for (let j = n - 1; j >= 0; j--) {
    const s = steps[j];
    const frame = frames[j];
    if (!frame) throw new Error(`fused step ${j} is read by no later step`);
    if (s.op === 'reshape' && sizeOf(s.shape) !== size) throw new Error(`fused step ${j}: a reshape to [${s.shape}] in a group of ${size} elements`);
    for (const a of s.args) {
      if (!('step' in a)) continue;
      const want = s.op === 'reshape' || s.op === 'transpose' ? steps[a.step].shape : frame;
      const had = frames[a.step];
      if (had && !sameShape(had, want)) throw new Error(`fused step ${a.step} is read in frames [${had}] and [${want}]`);
      frames[a.step] = want.slice();
    }
  }
  return frames as number[][];
}

/**
 * The graph with maximal elementwise groups replaced by fused nodes (same ids; see the header). Groups of fewer
 * than two computing nodes are left as they are.
 */
export function fuseElementwise(g: Graph, opts: FuseOptions): Graph {
  const nodes = g.nodes;
  const readers: number[][] = nodes.map(() => []);
  for (const n of nodes) for (const i of new Set(n.inputs)) readers[i].push(n.id);
  const isOutput = new Uint8Array(nodes.length);
  for (const id of Object.values(g.outputs)) isOutput[id] = 1;
  const taken = new Uint8Array(nodes.length); // member of a group already
  const viewed = new Uint8Array(nodes.length); // a transpose every reader of which reads through it (dead now)
  const out = nodes.slice();
  // A transpose that only matmuls read, or reshapes of a transpose (each read by the next alone) that only matmuls
  // read: each of them reads the transpose's input at permuted indices instead (see the header). Returns the
  // transpose's id.
  const viewTranspose = (id: number): number | undefined => {
    if (nodes[id].dtype !== 'f32' || isOutput[id] || !readers[id].every((r) => nodes[r].op === 'matmul')) return undefined;
    let t = id;
    while (nodes[t].op === 'reshape') {
      t = nodes[t].inputs[0];
      if (isOutput[t] || readers[t].length !== 1) return undefined;
    }
    return nodes[t].op === 'transpose' ? t : undefined;
  };

  for (let sinkId = nodes.length - 1; sinkId >= 0; sinkId--) {
    const sink = nodes[sinkId];
    // With epilogues, a matmul heads a group of its own when it reads views, and a transpose may end a group.
    const leadSink = opts.epilogues && sink.op === 'matmul';
    const transposeSink = opts.epilogues && sink.op === 'transpose' && sink.dtype === 'f32' && !viewed[sinkId];
    if (taken[sinkId] || !(computes(sink) || leadSink || transposeSink)) continue;
    const size = sizeOf(sink.shape);
    // A group may keep one member whose value is also read outside it (a separate output, see the header); if an
    // input of the group comes after that member, the group is grown again without one.
    const grow = (allowExtra: boolean) => {
      const members = new Set<number>([sinkId]);
      const frame = new Map<number, number[]>([[sinkId, sink.shape]]);
      const external = new Set<number>(sink.inputs);
      const views: number[] = [];
      let extra: number | undefined;
      const foldViews = (mm: Node) => {
        for (const v of mm.inputs) {
          const t = viewTranspose(v);
          if (t === undefined || views.includes(v)) continue;
          views.push(v);
          viewed[t] = 1;
          external.delete(v);
          external.add(nodes[t].inputs[0]);
        }
      };
      // Candidates in decreasing id order: when one is decided, every reader it could have in the group is decided.
      const candidates = new Set<number>(leadSink ? [] : sink.inputs);
      let hasProducer = leadSink;
      let maxInputs = opts.maxInputs;
      if (leadSink) foldViews(sink);
      while (candidates.size > 0) {
        const p = Math.max(...candidates);
        candidates.delete(p);
        const n = nodes[p];
        // A GEMM of the group's size (not broadcast inside it) may lead the group: the rest becomes its epilogue.
        const producer = opts.epilogues && LEADS.has(n.op) && !hasProducer && sizeOf(n.shape) === size;
        const fusible = n.dtype === 'f32' && (producer || n.op === 'unary' || n.op === 'binary' || (n.op === 'reshape' && sizeOf(n.shape) === size));
        if (!fusible || taken[p] || isOutput[p]) continue;
        const inside = readers[p].filter((r) => members.has(r));
        const separate = inside.length < readers[p].length;
        if (separate && !(allowExtra && extra === undefined && sizeOf(n.shape) === size)) continue;
        // Below a reshape or the final transpose a step is read in its own shape's frame.
        const frames = inside.map((r) => (nodes[r].op === 'reshape' || nodes[r].op === 'transpose' ? n.shape : frame.get(r)!));
        if (!frames.every((f) => sameShape(f, frames[0]))) continue;
        const grown = new Set(external);
        grown.delete(p);
        for (const i of n.inputs) if (!members.has(i)) grown.add(i);
        // The separate output's buffer, and a norm's scratch, take binding slots too.
        if (grown.size > maxInputs - (producer && SCRATCH_LEADS.has(n.op) ? 1 : 0) - (separate ? 1 : 0)) continue;
        members.add(p);
        frame.set(p, frames[0]);
        external.clear();
        for (const i of grown) external.add(i);
        if (separate) {
          extra = p;
          maxInputs--;
        }
        if (producer) {
          hasProducer = true;
          if (SCRATCH_LEADS.has(n.op)) maxInputs--;
          if (n.op === 'matmul') foldViews(n);
        } else for (const i of n.inputs) candidates.add(i);
      }
      return { members, views, extra, external };
    };
    let group = grow(opts.epilogues === true);
    if (group.extra !== undefined && [...group.external].some((i) => i >= group.extra!)) group = grow(false);
    const { members, views, extra } = group;
    const order = [...members].sort((a, b) => a - b);
    const work = order.filter((id) => computes(nodes[id]) || LEADS.has(nodes[id].op) || nodes[id].op === 'transpose').length + views.length;
    if (work < 2) continue;
    for (const id of order) taken[id] = 1;
    const fused = fusedNode(nodes, [...order, ...views].sort((a, b) => a - b), new Set(views), extra);
    if (extra === undefined) out[sinkId] = fused;
    else {
      // The group runs where its separate output is made; the sink's value is stored by the same kernel.
      out[extra] = fused;
      out[sinkId] = { id: sinkId, op: 'fusedOutput', inputs: [extra], attrs: {}, shape: sink.shape.slice(), dtype: 'f32' };
    }
  }
  return { nodes: out, outputs: g.outputs };
}

/**
 * The fused node of a group (member ids ascending; the last is the sink), inputs in order of first use; with `extra`
 * (a member), the node is that member's (its id and value) and the sink's value its fusedOutput's.
 */
function fusedNode(nodes: readonly Node[], order: number[], views: ReadonlySet<number>, extra?: number): Node<'fused'> {
  const stepOf = new Map(order.map((id, j) => [id, j]));
  const inputs: number[] = [];
  const arg = (id: number): FusedArg => {
    const j = stepOf.get(id);
    if (j !== undefined) return { step: j };
    let k = inputs.indexOf(id);
    if (k < 0) k = inputs.push(id) - 1;
    return { input: k };
  };
  const steps: FusedStep[] = order.map((id) => {
    const n = nodes[id];
    const shape = n.shape.slice();
    if (n.op === 'unary') return { op: 'unary', attrs: n.attrs as Node<'unary'>['attrs'], args: [arg(n.inputs[0])], shape };
    if (n.op === 'binary') return { op: 'binary', attrs: n.attrs as Node<'binary'>['attrs'], args: [arg(n.inputs[0]), arg(n.inputs[1])], shape };
    if (n.op === 'matmul') return { op: 'matmul', attrs: n.attrs as Node<'matmul'>['attrs'], args: [arg(n.inputs[0]), arg(n.inputs[1])], shape };
    if (n.op === 'conv2d') return { op: 'conv2d', attrs: n.attrs as Node<'conv2d'>['attrs'], args: n.inputs.map(arg), shape };
    if (n.op === 'conv2dGradInput') return { op: 'conv2dGradInput', attrs: n.attrs as Node<'conv2dGradInput'>['attrs'], args: [arg(n.inputs[0]), arg(n.inputs[1])], shape };
    if (n.op === 'groupNorm' || n.op === 'layerNorm' || n.op === 'groupNormGrad' || n.op === 'layerNormGrad') {
      return { op: n.op, attrs: n.attrs, args: [arg(n.inputs[0]), arg(n.inputs[1]), arg(n.inputs[2])], shape } as FusedStep;
    }
    if (n.op === 'transpose') return { op: 'transpose', attrs: n.attrs as Node<'transpose'>['attrs'], args: [arg(n.inputs[0])], shape };
    // A reshape view: the transpose it reshapes, in the reshape's shape.
    if (views.has(id)) {
      let t = nodes[n.inputs[0]];
      while (t.op === 'reshape') t = nodes[t.inputs[0]];
      return { op: 'transpose', attrs: t.attrs as Node<'transpose'>['attrs'], args: [arg(t.inputs[0])], shape };
    }
    return { op: 'reshape', args: [arg(n.inputs[0])], shape };
  });
  if (extra !== undefined) return { id: extra, op: 'fused', inputs, attrs: { steps, output: stepOf.get(extra)! }, shape: nodes[extra].shape, dtype: 'f32' };
  const sink = nodes[order[order.length - 1]];
  return { id: sink.id, op: 'fused', inputs, attrs: { steps }, shape: sink.shape, dtype: 'f32' };
}
