// Reverse-mode autodiff on a traced graph: appends the backward of a scalar `loss` w.r.t. ONE node (`wrt`, the
// latent z) as more nodes of the same builder. Only nodes on a gradient path from `wrt` to `loss` are
// differentiated: weights are constants and never need gradients, so e.g. a conv2d gets conv2dGradInput for x and
// nothing for its filter. Branches that do not lead to the loss, or do not depend on `wrt`, make no nodes.
//
// The VJPs follow tfjs's gradient formulas (so the interpreted backward equals tf.grad of the same model on the
// tfjs reference), with the gradient-routing semantics of ops.ts read from the builder's gradRules:
// straightThrough sends the gradient to its target, stopGradient stops it, clampWithGrad uses ClampWithGrad.
// A checkpoint region (GraphBuilder.checkpoint) is differentiated through a copy of it made where its gradient is
// needed (recomputation), so the forward's values inside it are not read by the backward.
import { sizeOf, type Attrs, type Node } from './ir.ts';
import type { GradRule, GraphBuilder, Sym } from './trace.ts';

/** Appends d(loss)/d(wrt) to the builder's graph and returns it (shape of wrt; zeros when loss ignores wrt). */
export function gradient(b: GraphBuilder, loss: Sym, wrt: Sym): Sym {
  b.own(loss, 'gradient');
  b.own(wrt, 'gradient');
  if (sizeOf(loss.shape) !== 1 || loss.dtype !== 'f32') throw new Error(`gradient: the loss must be one float32 value, got ${loss.dtype}[${loss.shape}]`);
  if (wrt.dtype !== 'f32') throw new Error('gradient: w.r.t. an int32 tensor');
  return backprop(b, loss, () => b.constant(Float32Array.of(1), loss.shape), wrt);
}

/**
 * The gradient w.r.t. wrt of `out` (a node after it) given out's gradient `seed` (made only when out depends on
 * wrt). A checkpoint region on the way (GraphBuilder.recomputable) is run again and its copy differentiated (a nested
 * backprop), so nothing in the backward reads the forward's values inside the region.
 */
function backprop(b: GraphBuilder, out: Sym, seed: () => Sym, wrt: Sym): Sym {
  const nodes = b.graph.nodes;

  // Nodes whose value depends on wrt along differentiable edges.
  const reach = new Uint8Array(out.id + 1);
  if (wrt.id <= out.id) reach[wrt.id] = 1;
  for (let id = wrt.id + 1; id <= out.id; id++) {
    if (gradInputs(nodes[id], b.gradRules.get(id)).some((i) => reach[i])) reach[id] = 1;
  }
  if (!reach[out.id]) return b.zeros(wrt.shape);

  const grads = new Map<number, Sym>();
  const accumulate = (id: number, g: Sym) => {
    const prev = grads.get(id);
    grads.set(id, prev ? b.add(prev, g) : g);
  };
  // Gradients of slices, kept apart per sliced node: slices that tile it along one axis (q, k and v cut from one
  // projection) get their gradient back as one concat instead of a zero-padded copy per slice plus the adds.
  const pieces = new Map<number, Array<{ begin: number[]; g: Sym }>>();
  const total = (id: number): Sym | undefined => {
    let g = grads.get(id);
    const ps = pieces.get(id);
    if (ps) {
      const s = assembleSlices(b, nodes[id].shape, ps);
      g = g ? b.add(g, s) : s;
    }
    return g;
  };
  grads.set(out.id, seed());
  for (let id = out.id; id > wrt.id; id--) {
    const g = total(id);
    if (!g || !reach[id]) continue;
    grads.delete(id);
    pieces.delete(id);
    const region = id === out.id ? undefined : b.recomputable.get(id);
    if (region && region.x.id >= wrt.id) {
      if (reach[region.x.id]) accumulate(region.x.id, backprop(b, b.recompute(region), () => g, region.x));
      continue;
    }
    const n = nodes[id];
    if (n.op === 'slice' && reach[n.inputs[0]]) {
      const list = pieces.get(n.inputs[0]) ?? [];
      list.push({ begin: (n.attrs as Attrs['slice']).begin, g });
      pieces.set(n.inputs[0], list);
      continue;
    }
    vjp(b, n, g, b.gradRules.get(id), (i) => reach[i] === 1, accumulate);
  }
  return total(wrt.id) ?? b.zeros(wrt.shape);
}

/**
 * The gradient of a node of `shape` from the gradients of slices of it: a concat when the slices tile it along one
 * axis (in any order), else the sum of the zero-padded slice gradients.
 */
function assembleSlices(b: GraphBuilder, shape: number[], ps: Array<{ begin: number[]; g: Sym }>): Sym {
  const axes = shape.map((_, a) => a).filter((a) => ps.some((p) => p.begin[a] !== 0 || p.g.shape[a] !== shape[a]));
  if (axes.length === 1) {
    const axis = axes[0];
    const sorted = [...ps].sort((p, q) => p.begin[axis] - q.begin[axis]);
    let at = 0;
    const tiles = sorted.every((p) => {
      const ok = p.begin[axis] === at;
      at += p.g.shape[axis];
      return ok;
    });
    if (tiles && at === shape[axis]) return b.concat(sorted.map((p) => p.g), axis);
  }
  let sum: Sym | undefined;
  for (const p of ps) {
    const padded = b.pad(p.g, shape.map((d, a) => [p.begin[a], d - p.begin[a] - p.g.shape[a]] as [number, number]));
    sum = sum ? b.add(sum, padded) : padded;
  }
  return sum!;
}

/** The inputs a node passes gradient to (before asking whether they depend on wrt). */
function gradInputs(n: Node, rule: GradRule | undefined): number[] {
  switch (n.op) {
    case 'const':
    case 'input':
    case 'argmin':
    case 'argmax':
    case 'oneHot':
    case 'cast':
    case 'randomNormal':
      return [];
    case 'unary': {
      if (rule?.kind === 'stop') return [];
      if (rule?.kind === 'straightThrough') return [rule.target];
      const fn = (n.attrs as Attrs['unary']).fn;
      return fn === 'sign' || fn === 'floor' ? [] : n.inputs; // piecewise constant: zero gradient
    }
    case 'binary': {
      const fn = (n.attrs as Attrs['binary']).fn;
      return fn === 'greaterEqual' || fn === 'greater' ? [] : n.inputs;
    }
    case 'gatherRows':
    case 'gatherRowsGrad':
      return [n.inputs[0]]; // not the int32 indices
    default:
      return n.inputs;
  }
}

const sameNumbers = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((v, i) => v === b[i]);

/** Sums g over the axes along which a tensor of `shape` was broadcast to g's shape, then gives it that shape. */
export function sumTo(b: GraphBuilder, g: Sym, shape: number[]): Sym {
  if (sameNumbers(g.shape, shape)) return g;
  const lead = g.shape.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.shape.length; i++) if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  return b.reshape(b.sum(g, axes, true), shape);
}

/** x's shape with the reduced axes kept as 1 (the shape a reduction's gradient is broadcast from). */
function keptShape(x: Sym, axes: number[]): number[] {
  return x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

function vjp(b: GraphBuilder, n: Node, g: Sym, rule: GradRule | undefined, needs: (id: number) => boolean, acc: (id: number, g: Sym) => void): void {
  const ins = n.inputs.map((i) => b.syms[i]);
  const [x] = ins;
  const y = b.syms[n.id];
  const to = (i: number, grad: () => Sym) => {
    if (needs(n.inputs[i])) acc(n.inputs[i], grad());
  };
  if (rule?.kind === 'straightThrough') {
    // The gradient goes to the target (not a graph input of the node), not to the value n.inputs[0].
    if (needs(rule.target)) acc(rule.target, sumTo(b, g, b.syms[rule.target].shape));
    return;
  }
  const noWeightGrad = (i: number, what: string) => {
    if (needs(n.inputs[i])) throw new Error(`gradient: ${what} of node %${n.id} (${n.op}) depends on the differentiated input; only input gradients are supported`);
  };
  switch (n.op) {
    case 'reshape':
      return to(0, () => b.reshape(g, x.shape));
    case 'transpose': {
      const perm = (n.attrs as Attrs['transpose']).perm;
      const inv = perm.slice();
      perm.forEach((p, i) => (inv[p] = i));
      return to(0, () => b.transpose(g, inv));
    }
    case 'concat': {
      const axis = (n.attrs as Attrs['concat']).axis;
      let offset = 0;
      ins.forEach((s, i) => {
        const begin = s.shape.map((_, a) => (a === axis ? offset : 0));
        to(i, () => b.slice(g, begin, s.shape));
        offset += s.shape[axis];
      });
      return;
    }
    case 'slice': {
      const begin = (n.attrs as Attrs['slice']).begin;
      return to(0, () => b.pad(g, x.shape.map((d, a) => [begin[a], d - begin[a] - y.shape[a]] as [number, number])));
    }
    case 'pad': {
      const p = (n.attrs as Attrs['pad']).paddings;
      return to(0, () => b.slice(g, p.map(([before]) => before), x.shape));
    }
    case 'upsample2x':
      return to(0, () => {
        // g [B, 2H, 2W, C] = [B*H, 2, 2W*C]: sum the row pair, then [B*H*W, 2, C]: sum the column pair.
        const [bb, h, w, c] = x.shape;
        const rows = b.sum(b.reshape(g, [bb * h, 2, 2 * w * c]), [1]);
        return b.reshape(b.sum(b.reshape(rows, [bb * h * w, 2, c]), [1]), x.shape);
      });
    case 'resize':
      return to(0, () => b.resizeGrad(g, x.shape, n.attrs as Attrs['resize']));
    case 'unary':
      return unaryVjp(b, n as Node<'unary'>, x, y, g, rule, to);
    case 'binary':
      return binaryVjp(b, n as Node<'binary'>, ins[0], ins[1], g, to);
    case 'sum': {
      const { axes, keepDims } = n.attrs as Attrs['sum'];
      // No broadcast kind in the ir: adding a zero tensor of x's shape broadcasts (only small sums lie on the
      // models' gradient paths; the normalisations have their own backward kinds).
      return to(0, () => b.add(keepDims ? g : b.reshape(g, keptShape(x, axes)), b.zeros(x.shape)));
    }
    case 'max': {
      const { axes, keepDims } = n.attrs as Attrs['max'];
      const kept = keptShape(x, axes);
      // tfjs: every position equal to the maximum gets the gradient.
      return to(0, () => b.mul(b.binary('greaterEqual', x, keepDims ? y : b.reshape(y, kept)), keepDims ? g : b.reshape(g, kept)));
    }
    case 'softmax':
      return to(0, () => b.softmaxGrad(y, g));
    case 'matmul':
      return matmulVjp(b, n as Node<'matmul'>, ins[0], ins[1], g, to);
    case 'conv2d': {
      noWeightGrad(1, 'the filter');
      to(0, () => b.conv2dGradInput(g, ins[1], x.shape, n.attrs as Attrs['conv2d']));
      if (ins.length > 2) to(2, () => b.sum(g, [0, 1, 2]));
      return;
    }
    case 'groupNorm': {
      noWeightGrad(1, 'gamma');
      noWeightGrad(2, 'beta');
      const { groups, eps } = n.attrs as Attrs['groupNorm'];
      return to(0, () => b.groupNormGrad(x, ins[1], g, groups, eps));
    }
    case 'layerNorm': {
      noWeightGrad(1, 'gamma');
      noWeightGrad(2, 'beta');
      return to(0, () => b.layerNormGrad(x, ins[1], g, (n.attrs as Attrs['layerNorm']).eps));
    }
    case 'gatherRows':
      return to(0, () => b.gatherRowsGrad(g, ins[1], x.shape));
    default:
      throw new Error(`gradient: no VJP for ${n.op} (node %${n.id}; backward kinds are not differentiated again)`);
  }
}

type To = (i: number, grad: () => Sym) => void;

function unaryVjp(b: GraphBuilder, n: Node<'unary'>, x: Sym, y: Sym, g: Sym, rule: GradRule | undefined, to: To): void {
  const { fn, s, lo, hi } = n.attrs;
  const bounds = { lo: lo!, hi: hi! };
  switch (fn) {
    case 'copy':
    case 'addScalar':
      return to(0, () => g);
    case 'neg':
      return to(0, () => b.neg(g));
    case 'scale':
      return to(0, () => b.scale(g, s!));
    case 'exp':
      return to(0, () => b.mul(g, y));
    case 'log':
      return to(0, () => b.div(g, x));
    case 'sqrt':
      return to(0, () => b.div(g, b.scale(y, 2)));
    case 'square':
      return to(0, () => b.mul(g, b.scale(x, 2)));
    case 'abs':
      return to(0, () => b.mul(g, b.sign(x))); // 0 at 0 (PyTorch; tfjs gives -1 there)
    case 'sigmoid':
      return to(0, () => b.mul(g, b.mul(y, b.addScalar(b.neg(y), 1))));
    case 'asin':
      return to(0, () => b.binary('asinGrad', x, g));
    case 'swish':
      return to(0, () => b.binary('swishGrad', x, g));
    case 'gelu':
      return to(0, () => b.binary('geluGrad', x, g));
    case 'quickGelu':
      return to(0, () => b.binary('quickGeluGrad', x, g));
    case 'clamp':
      return to(0, () => b.binary(rule?.kind === 'clampWithGrad' ? 'clampWithGradGrad' : 'clampGrad', x, g, bounds));
    default:
      throw new Error(`gradient: no VJP for unary ${fn} (node %${n.id})`);
  }
}

function binaryVjp(b: GraphBuilder, n: Node<'binary'>, a: Sym, c: Sym, g: Sym, to: To): void {
  switch (n.attrs.fn) {
    case 'add':
      to(0, () => sumTo(b, g, a.shape));
      return to(1, () => sumTo(b, g, c.shape));
    case 'sub':
      to(0, () => sumTo(b, g, a.shape));
      return to(1, () => b.neg(sumTo(b, g, c.shape)));
    case 'mul':
      to(0, () => sumTo(b, b.mul(g, c), a.shape));
      return to(1, () => sumTo(b, b.mul(g, a), c.shape));
    case 'div':
      to(0, () => sumTo(b, b.div(g, c), a.shape));
      return to(1, () => b.neg(b.div(sumTo(b, b.mul(g, a), c.shape), b.square(c))));
    case 'maximum':
      // Ties go to a (tfjs: a >= b, b < a).
      to(0, () => sumTo(b, b.mul(g, b.binary('greaterEqual', a, c)), a.shape));
      return to(1, () => sumTo(b, b.mul(g, b.binary('greater', c, a)), c.shape));
    case 'minimum':
      to(0, () => sumTo(b, b.mul(g, b.binary('greaterEqual', c, a)), a.shape));
      return to(1, () => sumTo(b, b.mul(g, b.binary('greater', a, c)), c.shape));
    default:
      throw new Error(`gradient: no VJP for binary ${n.attrs.fn} (node %${n.id})`);
  }
}

function matmulVjp(b: GraphBuilder, n: Node<'matmul'>, a: Sym, c: Sym, gIn: Sym, to: To): void {
  const { transposeA: ta, transposeB: tb } = n.attrs;
  // A gradient that is scale(h, s) (attention's score scale: softmaxGrad, then its scale, then these products) is
  // taken as h, and the products are scaled instead (matmul is linear): there the scale is the GEMM's epilogue,
  // before them it was a dispatch of its own.
  const gn = b.graph.nodes[gIn.id] as Node<'unary'>;
  const s = gn.op === 'unary' && gn.attrs.fn === 'scale' ? gn.attrs.s! : 1;
  const g = s === 1 ? gIn : b.syms[gn.inputs[0]];
  const scaled = (x: Sym) => (s === 1 ? x : b.scale(x, s));
  // y = op(a) op(c); the products below have the broadcast batch axes, summed back to each operand's shape.
  const da = () => (ta ? (tb ? b.matmul(c, g, true, true) : b.matmul(c, g, false, true)) : tb ? b.matmul(g, c) : b.matmul(g, c, false, true));
  const dc = () => (ta ? (tb ? b.matmul(g, a, true, true) : b.matmul(a, g)) : tb ? b.matmul(g, a, true, false) : b.matmul(a, g, true, false));
  to(0, () => sumTo(b, scaled(da()), a.shape));
  to(1, () => sumTo(b, scaled(dc()), c.shape));
}
