// Runs a graph node by node on any Ops<T>. With tfOps it is the reference that tracing and autodiff are checked
// against (interpret(tfOps, trace(f)) must equal f on tfOps, its backward must equal tf.grad of f). The backward
// kinds have no Ops method, so they are written here as formulas of Ops calls — the textbook formulas a kernel
// implements, which makes them a second, independent statement of each kind's semantics:
//   conv2dGradInput = valid conv of the stride-dilated, padded dy with the flipped filter (I and O swapped);
//   resizeGrad      = the transposed interpolation matrices (read off the forward resize of unit images);
//   gatherRowsGrad  = oneHot(indices)ᵀ @ dy;
//   groupNormGrad / layerNormGrad / softmaxGrad / the binary *Grad functions = their closed forms (ir.ts).
// Comparisons (greater, greaterEqual) are made from sign and maximum, as Ops has none.
import type { Ops } from '../ops.ts';
import { describeNode, type Attrs, type FusedArg, type Graph, type Node } from './ir.ts';

/** Runs the nodes the graph's outputs depend on; returns the outputs by name. */
export function interpret<T>(o: Ops<T>, g: Graph, inputs: Record<string, T>): Record<string, T> {
  const live = new Uint8Array(g.nodes.length);
  for (const id of Object.values(g.outputs)) live[id] = 1;
  for (let id = g.nodes.length - 1; id >= 0; id--) if (live[id]) for (const i of g.nodes[id].inputs) live[i] = 1;
  const vals: T[] = new Array(g.nodes.length);
  const k = new Kinds(o);
  for (const n of g.nodes) {
    if (!live[n.id]) continue;
    try {
      vals[n.id] = k.run(n, n.inputs.map((i) => vals[i]), inputs);
    } catch (err) {
      throw new Error(`interpret: ${describeNode(g, n)}: ${(err as Error).message}`, { cause: err });
    }
  }
  return Object.fromEntries(Object.entries(g.outputs).map(([name, id]) => [name, vals[id]]));
}

class Kinds<T> {
  /** The last step's value of each fused node with a separate output: its fusedOutput node's value. */
  private readonly fusedLast = new Map<number, T>();

  constructor(private readonly o: Ops<T>) {}

  private scalar(v: number): T {
    return this.o.constant(Float32Array.of(v), []);
  }

  /** a > b ? 1 : 0, broadcasting. */
  private greater(a: T, b: T): T {
    const o = this.o;
    return o.maximum(o.sign(o.sub(a, b)), this.scalar(0));
  }

  /** a >= b ? 1 : 0 = 1 - (b > a). */
  private greaterEqual(a: T, b: T): T {
    return this.o.addScalar(this.o.neg(this.greater(b, a)), 1);
  }

  run(n: Node, x: T[], inputs: Record<string, T>): T {
    const o = this.o;
    switch (n.op) {
      case 'input': {
        const name = (n.attrs as Attrs['input']).name;
        const v = inputs[name];
        if (v === undefined) throw new Error(`no value for input '${name}'`);
        const s = o.shape(v);
        if (s.length !== n.shape.length || s.some((d, i) => d !== n.shape[i])) throw new Error(`input '${name}' has shape [${s}]`);
        return v;
      }
      case 'const': {
        const data = (n.attrs as Attrs['const']).data;
        return data instanceof Int32Array ? o.constantInt(data, n.shape) : o.constant(data, n.shape);
      }
      case 'reshape':
        return o.reshape(x[0], n.shape);
      case 'transpose':
        return o.transpose(x[0], (n.attrs as Attrs['transpose']).perm);
      case 'concat':
        return o.concat(x, (n.attrs as Attrs['concat']).axis);
      case 'slice':
        return o.slice(x[0], (n.attrs as Attrs['slice']).begin, n.shape);
      case 'pad': {
        const a = n.attrs as Attrs['pad'];
        return o.pad(x[0], a.paddings, a.value);
      }
      case 'upsample2x':
        return o.upsampleNearest2x(x[0]);
      case 'resize':
        return o.resize(x[0], n.shape[1], n.shape[2], n.attrs as Attrs['resize']);
      case 'resizeGrad':
        return this.resizeGrad(x[0], n.shape, n.attrs as Attrs['resizeGrad']);
      case 'unary':
        return this.unary(n.attrs as Attrs['unary'], x[0]);
      case 'binary':
        return this.binary(n.attrs as Attrs['binary'], x[0], x[1]);
      case 'sum': {
        const a = n.attrs as Attrs['sum'];
        return o.sum(x[0], a.axes, a.keepDims);
      }
      case 'max': {
        const a = n.attrs as Attrs['max'];
        return this.max(x[0], a.axes, a.keepDims);
      }
      case 'argmin':
        return o.argmin(x[0], (n.attrs as Attrs['argmin']).axis);
      case 'argmax':
        return o.argmax(x[0], (n.attrs as Attrs['argmax']).axis);
      case 'softmax':
        return o.softmax(x[0]);
      case 'softmaxGrad': {
        // tfjs's form: dy*y - sum(dy*y) * y.
        const dyy = o.mul(x[1], x[0]);
        return o.sub(dyy, o.mul(o.sum(dyy, [n.shape.length - 1], true), x[0]));
      }
      case 'matmul': {
        const a = n.attrs as Attrs['matmul'];
        return o.matmul(x[0], x[1], a.transposeA, a.transposeB);
      }
      case 'conv2d': {
        const a = n.attrs as Attrs['conv2d'];
        return o.conv2d(x[0], x[1], x[2], { stride: a.stride, pad: a.pad });
      }
      case 'conv2dGradInput':
        return this.conv2dGradInput(x[0], x[1], n.shape, n.attrs as Attrs['conv2dGradInput']);
      case 'groupNorm': {
        const a = n.attrs as Attrs['groupNorm'];
        return o.groupNorm(x[0], a.groups, x[1], x[2], a.eps);
      }
      case 'groupNormGrad': {
        const a = n.attrs as Attrs['groupNormGrad'];
        const [b, h, w, c] = n.shape;
        const grouped = (t: T) => o.reshape(t, [b, h * w, a.groups, c / a.groups]);
        return o.reshape(this.normGrad(grouped(x[0]), grouped(o.mul(x[2], x[1])), [1, 3], a.eps), n.shape);
      }
      case 'layerNorm':
        return o.layerNorm(x[0], x[1], x[2], (n.attrs as Attrs['layerNorm']).eps);
      case 'layerNormGrad':
        return this.normGrad(x[0], o.mul(x[2], x[1]), [n.shape.length - 1], (n.attrs as Attrs['layerNormGrad']).eps);
      case 'gatherRows':
        return o.gatherRows(x[0], x[1]);
      case 'gatherRowsGrad':
        return o.matmul(o.oneHot(x[1], n.shape[0]), x[0], true, false);
      case 'oneHot':
        return o.oneHot(x[0], (n.attrs as Attrs['oneHot']).depth);
      case 'cast':
        if ((n.attrs as Attrs['cast']).to !== 'i32') throw new Error('cast: only f32 -> i32 (toInt)');
        return o.toInt(x[0]);
      case 'randomNormal':
        return o.randomNormal(x[0], n.shape);
      case 'fused': {
        // A planner-made group (graph/fuse.ts): its steps are ordinary nodes, run in order.
        const vals: T[] = [];
        const arg = (a: FusedArg) => ('input' in a ? x[a.input] : vals[a.step]);
        for (const s of (n.attrs as Attrs['fused']).steps) {
          const step = { id: n.id, op: s.op, inputs: [], attrs: 'attrs' in s ? s.attrs : {}, shape: s.shape, dtype: 'f32' } as Node;
          const v = this.run(step, s.args.map(arg), inputs);
          // A transposed view may stand for a reshape of the transpose (ir.ts FusedStep).
          vals.push(s.op === 'transpose' && this.o.shape(v).join() !== s.shape.join() ? this.o.reshape(v, s.shape) : v);
        }
        const { output } = n.attrs as Attrs['fused'];
        if (output === undefined) return vals[vals.length - 1];
        this.fusedLast.set(n.id, vals[vals.length - 1]);
        return vals[output];
      }
      case 'fusedOutput': {
        const v = this.fusedLast.get(n.inputs[0]);
        if (v === undefined) throw new Error(`fusedOutput of %${n.inputs[0]}, which is not a fused node with a separate output`);
        return v;
      }
    }
  }

  private unary(a: Attrs['unary'], x: T): T {
    const o = this.o;
    switch (a.fn) {
      case 'copy':
        return x;
      case 'neg':
        return o.neg(x);
      case 'exp':
        return o.exp(x);
      case 'log':
        return o.log(x);
      case 'sqrt':
        return o.sqrt(x);
      case 'rsqrt':
        return o.div(this.scalar(1), o.sqrt(x));
      case 'square':
        return o.square(x);
      case 'abs':
        return o.abs(x);
      case 'sign':
        return o.sign(x);
      case 'asin':
        return o.asin(x);
      case 'sigmoid':
        return o.sigmoid(x);
      case 'swish':
        return o.swish(x);
      case 'gelu':
        return o.gelu(x);
      case 'quickGelu':
        return o.quickGelu(x);
      case 'scale':
        return o.scale(x, a.s!);
      case 'addScalar':
        return o.addScalar(x, a.s!);
      case 'clamp':
        return o.clamp(x, a.lo!, a.hi!);
      case 'recip':
        return o.div(this.scalar(1), x);
      case 'floor':
        return o.floor(x);
    }
  }

  private binary(a: Attrs['binary'], x: T, y: T): T {
    const o = this.o;
    const oneMinus = (t: T) => o.addScalar(o.neg(t), 1);
    switch (a.fn) {
      case 'add':
        return o.add(x, y);
      case 'sub':
        return o.sub(x, y);
      case 'mul':
        return o.mul(x, y);
      case 'div':
        return o.div(x, y);
      case 'maximum':
        return o.maximum(x, y);
      case 'minimum':
        return o.minimum(x, y);
      case 'greaterEqual':
        return this.greaterEqual(x, y);
      case 'greater':
        return this.greater(x, y);
      // The *Grad functions: (x, dy) -> dL/dx.
      case 'swishGrad': {
        const s = o.sigmoid(x);
        return o.mul(y, o.add(s, o.mul(o.mul(x, s), oneMinus(s))));
      }
      case 'quickGeluGrad': {
        const kx = o.scale(x, 1.702);
        const s = o.sigmoid(kx);
        return o.mul(y, o.add(s, o.mul(kx, o.mul(s, oneMinus(s)))));
      }
      case 'geluGrad': {
        // Phi(x) + x phi(x). Ops has no erf: Phi(x) = gelu(x) / x, and 1/2 at x = 0 (nz masks the zeros).
        const nz = o.abs(o.sign(x));
        const zero = oneMinus(nz);
        const cdf = o.add(o.mul(nz, o.div(o.gelu(x), o.add(x, zero))), o.scale(zero, 0.5));
        const pdf = o.scale(o.exp(o.scale(o.square(x), -0.5)), 1 / Math.sqrt(2 * Math.PI));
        return o.mul(y, o.add(cdf, o.mul(x, pdf)));
      }
      case 'clampGrad': {
        const inside = o.mul(this.greaterEqual(x, this.scalar(a.lo!)), this.greaterEqual(this.scalar(a.hi!), x));
        return o.mul(y, inside);
      }
      case 'clampWithGradGrad': {
        // Keep dy where dy * (x - clamp(x)) >= 0: inside the range, or outside with descent pointing back in.
        const outside = o.sub(x, o.clamp(x, a.lo!, a.hi!));
        return o.mul(y, this.greaterEqual(o.mul(y, outside), this.scalar(0)));
      }
      case 'asinGrad':
        return o.div(y, o.sqrt(oneMinus(o.square(x))));
    }
  }

  /** Maximum over axes by folding `maximum` over slices (Ops has no max reduction). */
  private max(x: T, axes: number[], keepDims: boolean): T {
    const o = this.o;
    const shape = o.shape(x);
    let y = x;
    for (const a of axes) {
      const s = o.shape(y);
      const size = s.map((d, i) => (i === a ? 1 : d));
      const at = (j: number) => o.slice(y, s.map((_, i) => (i === a ? j : 0)), size);
      let m = at(0);
      for (let j = 1; j < s[a]; j++) m = o.maximum(m, at(j));
      y = m;
    }
    return keepDims ? y : o.reshape(y, shape.filter((_, i) => !axes.includes(i)));
  }

  /**
   * Input gradient of a normalisation over `axes` (biased variance), given g = dy * gamma:
   * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
   */
  private normGrad(x: T, g: T, axes: number[], eps: number): T {
    const o = this.o;
    const xc = o.sub(x, o.mean(x, axes, true));
    const rstd = o.div(this.scalar(1), o.sqrt(o.addScalar(o.mean(o.square(xc), axes, true), eps)));
    const xhat = o.mul(xc, rstd);
    return o.mul(rstd, o.sub(o.sub(g, o.mean(g, axes, true)), o.mul(xhat, o.mean(o.mul(g, xhat), axes, true))));
  }

  /** Inserts stride-1 zeros between the entries of axis 1 of [A, L, R...] given as [A, L, rest]: length (L-1)s+1. */
  private dilate(t: T, a: number, l: number, rest: number, s: number): T {
    const o = this.o;
    const withZeros = o.concat([o.reshape(t, [a, l, 1, rest]), o.zeros([a, l, s - 1, rest])], 2);
    return o.slice(o.reshape(withZeros, [a, l * s, rest]), [0, 0, 0], [a, (l - 1) * s + 1, rest]);
  }

  private conv2dGradInput(dy: T, w: T, xShape: number[], a: Attrs['conv2dGradInput']): T {
    const o = this.o;
    const [b, h, wd, ci] = xShape;
    const [kh, kw, , co] = o.shape(w);
    const [, ho, wo] = o.shape(dy);
    const { stride: s, pad } = a;
    let d = dy;
    let dh = ho;
    let dw = wo;
    if (s > 1) {
      dh = (ho - 1) * s + 1;
      dw = (wo - 1) * s + 1;
      d = o.reshape(this.dilate(d, b, ho, wo * co, s), [b * dh, wo, co]);
      d = o.reshape(this.dilate(d, b * dh, wo, co, s), [b, dh, dw, co]);
    }
    // A full correlation (pad k-1) gives the padded input's gradient; shifted by the forward padding it gives x's
    // directly. Rows the stride skipped at the end (extra) get zeros. Negative amounts (padding >= k) are crops.
    const extraH = h + pad[0] + pad[1] - ((ho - 1) * s + kh);
    const extraW = wd + pad[2] + pad[3] - ((wo - 1) * s + kw);
    const amounts: [number, number][] = [[0, 0], [kh - 1 - pad[0], kh - 1 - pad[1] + extraH], [kw - 1 - pad[2], kw - 1 - pad[3] + extraW], [0, 0]];
    d = o.pad(d, amounts.map(([a, z]) => [Math.max(a, 0), Math.max(z, 0)] as [number, number]));
    if (amounts.some(([a, z]) => a < 0 || z < 0)) {
      const ds = o.shape(d);
      d = o.slice(d, amounts.map(([a]) => Math.max(-a, 0)), ds.map((v, i) => v - Math.max(-amounts[i][0], 0) - Math.max(-amounts[i][1], 0)));
    }
    // Flipping both spatial axes reverses the flat tap index: one matmul with the anti-identity (exact: x*1 + 0s).
    const taps = kh * kw;
    const anti = new Float32Array(taps * taps);
    for (let i = 0; i < taps; i++) anti[i * taps + taps - 1 - i] = 1;
    const flipped = o.reshape(o.matmul(o.constant(anti, [taps, taps]), o.reshape(w, [taps, ci * co])), [kh, kw, ci, co]);
    const wf = o.transpose(flipped, [0, 1, 3, 2]); // [kh, kw, Cout, Cin]
    return o.conv2d(d, wf, undefined, { stride: 1, pad: 'valid' });
  }

  /** The interpolation matrix Mᵀ [in, out] of one axis, read off the forward resize of unit images. */
  private resizeMatrixT(inSize: number, outSize: number, axis: 1 | 2, opts: Attrs['resizeGrad']): T {
    const o = this.o;
    const eye = new Float32Array(inSize * inSize);
    for (let i = 0; i < inSize; i++) eye[i * inSize + i] = 1;
    const images = o.constant(eye, axis === 1 ? [inSize, inSize, 1, 1] : [inSize, 1, inSize, 1]);
    const out = axis === 1 ? o.resize(images, outSize, 1, opts) : o.resize(images, 1, outSize, opts);
    return o.reshape(out, [inSize, outSize]);
  }

  private resizeGrad(dy: T, xShape: number[], opts: Attrs['resizeGrad']): T {
    const o = this.o;
    const [b, h, w, c] = xShape;
    const [, oh, ow] = o.shape(dy);
    let g = dy;
    if (oh !== h) g = o.matmul(this.resizeMatrixT(h, oh, 1, opts), o.reshape(g, [b, oh, ow * c]));
    if (ow !== w) g = o.matmul(this.resizeMatrixT(w, ow, 2, opts), o.reshape(g, [b * h, ow, c]));
    return o.reshape(g, xShape);
  }
}
