// resize and resizeGrad (NHWC), bilinear or bicubic, alignCorners true/false: PyTorch's F.interpolate semantics
// exactly as src/engine/gradients.ts defines them (its interpolationMatrix), bicubic with A = -0.75 and border taps
// clamped (replicate), linear modes clamping negative source coordinates to 0.
//
// Interpolation is separable, so both kinds run one pass per axis that changes size (the H pass first in the forward,
// as gradients.ts does; the adjoint in reverse), through a scratch buffer when both change:
//   forward: out[o] = sum_k w_k(o) in[tap_k(o)]            (one invocation per output element)
//   adjoint: dx[i]  = sum_{o: tap_k(o) = i} w_k(o) dy[o]   (one invocation per input element, a gather over the
//                     outputs whose taps reach i: deterministic, no atomics). Those outputs lie in a window found by
//                     inverting the monotonic source coordinate (widened by one pixel for rounding), plus, for the
//                     border pixels, every output whose clamped taps land there.
import type { KernelLimits, KernelNode, Lowered, Lowerings, Dispatch } from '../kernel.ts';
import { f32Literal } from '../kernel.ts';
import { buffer, kernel1d, u32Literal } from './common.ts';

type Mode = 'bilinear' | 'bicubic';
const CUBIC_A = -0.75;

/** PyTorch's area_pixel_compute_scale for an explicit output size. */
function pixelScale(inSize: number, outSize: number, alignCorners: boolean): number {
  if (alignCorners) return outSize > 1 ? (inSize - 1) / (outSize - 1) : 0;
  return inSize / outSize;
}

/** WGSL: `taps_(o)` gives the input indices (clamped) and weights of output index o along one axis. */
function tapsFn(inSize: number, outSize: number, mode: Mode, alignCorners: boolean): string {
  const scale = f32Literal(pixelScale(inSize, outSize, alignCorners));
  const last = `${inSize - 1}`;
  let src = alignCorners ? `${scale} * f32(o)` : `${scale} * (f32(o) + 0.5) - 0.5`;
  if (mode === 'bilinear' && !alignCorners) src = `max(${src}, 0.0)`;
  const a = f32Literal(CUBIC_A);
  const body =
    mode === 'bilinear'
      ? `  r.i[0] = clamp(i0, 0, ${last});
  r.i[1] = clamp(select(i0, i0 + 1, i0 < ${last}), 0, ${last});
  r.w[0] = 1.0 - t;
  r.w[1] = t;`
      : `  let x1 = t + 1.0;
  let x2 = 1.0 - t;
  let x3 = 2.0 - t;
  r.w[0] = ((A * x1 - 5.0 * A) * x1 + 8.0 * A) * x1 - 4.0 * A;
  r.w[1] = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
  r.w[2] = ((A + 2.0) * x2 - (A + 3.0)) * x2 * x2 + 1.0;
  r.w[3] = ((A * x3 - 5.0 * A) * x3 + 8.0 * A) * x3 - 4.0 * A;
  for (var k = 0; k < 4; k = k + 1) { r.i[k] = clamp(i0 - 1 + k, 0, ${last}); }`;
  return `const A: f32 = ${a};
struct Taps { i: array<i32, 4>, w: array<f32, 4> }
fn taps_(o: u32) -> Taps {
  let src = ${src};
  let i0 = i32(floor(src));
  let t = src - floor(src);
  var r: Taps;
${body}
  return r;
}`;
}

const tapCount = (mode: Mode): number => (mode === 'bilinear' ? 2 : 4);

interface AxisPass {
  /** [outer, n, inner] of the input of the pass and the size along the axis after it. */
  outer: number;
  inner: number;
  inSize: number;
  outSize: number;
  mode: Mode;
  alignCorners: boolean;
}

/** Forward resize along one axis: [outer, inSize, inner] -> [outer, outSize, inner]. */
function forwardPass(p: AxisPass, bindings: Dispatch['bindings'], limits: KernelLimits, label: string): Dispatch {
  const { outer, inner, inSize, outSize } = p;
  const decls = `${buffer(0, 'x', 'f32')}\n${buffer(1, 'y', 'f32', true)}\n${tapsFn(inSize, outSize, p.mode, p.alignCorners)}`;
  const body = `  let j = i % ${u32Literal(inner)};
  let q = i / ${u32Literal(inner)};
  let o = q % ${u32Literal(outSize)};
  let base = (q / ${u32Literal(outSize)}) * ${u32Literal(inSize * inner)} + j;
  let tp = taps_(o);
  var acc = 0.0;
  for (var k = 0; k < ${tapCount(p.mode)}; k = k + 1) { acc = acc + tp.w[k] * x[base + u32(tp.i[k]) * ${u32Literal(inner)}]; }
  y[i] = acc;`;
  return { ...kernel1d(decls, outer * outSize * inner, body, limits), bindings, label };
}

/** Adjoint of forwardPass: dy [outer, outSize, inner] -> dx [outer, inSize, inner]. */
function adjointPass(p: AxisPass, bindings: Dispatch['bindings'], limits: KernelLimits, label: string): Dispatch {
  const { outer, inner, inSize, outSize } = p;
  const scale = pixelScale(inSize, outSize, p.alignCorners);
  // The outputs whose source coordinate lies in [s0, s1] (s = scale * (o + 0.5) - 0.5, or scale * o).
  const inv = (s: string) => (p.alignCorners ? `${s} / ${f32Literal(scale)}` : `(${s} + 0.5) / ${f32Literal(scale)} - 0.5`);
  const window =
    scale === 0
      ? `  let lo = 0;\n  let hi = ${outSize - 1};` // one output, or none: it reads input 0 only
      : `  let fi = f32(ii);
  let lo = select(max(i32(floor(${inv('(fi - 3.0)')})), 0), 0, ii == 0u);
  let hi = select(min(i32(ceil(${inv('(fi + 3.0)')})), ${outSize - 1}), ${outSize - 1}, ii == ${u32Literal(inSize - 1)});`;
  const decls = `${buffer(0, 'dy', 'f32')}\n${buffer(1, 'dx', 'f32', true)}\n${tapsFn(inSize, outSize, p.mode, p.alignCorners)}`;
  const body = `  let j = i % ${u32Literal(inner)};
  let q = i / ${u32Literal(inner)};
  let ii = q % ${u32Literal(inSize)};
  let base = (q / ${u32Literal(inSize)}) * ${u32Literal(outSize * inner)} + j;
${window}
  var acc = 0.0;
  for (var o = lo; o <= hi; o = o + 1) {
    let tp = taps_(u32(o));
    var w = 0.0;
    for (var k = 0; k < ${tapCount(p.mode)}; k = k + 1) { w = w + select(0.0, tp.w[k], tp.i[k] == i32(ii)); }
    acc = acc + w * dy[base + u32(o) * ${u32Literal(inner)}];
  }
  dx[i] = acc;`;
  return { ...kernel1d(decls, outer * inSize * inner, body, limits), bindings, label };
}

function lowerResizeLike(grad: boolean) {
  return (node: KernelNode<'resize' | 'resizeGrad'>, limits: KernelLimits): Lowered => {
    const { mode, alignCorners } = node.attrs;
    // Sizes of the forward: x [b, h, w, c] -> [b, oh, ow, c].
    const [b, h, w, c] = grad ? node.output.shape : node.inputs[0].shape;
    const [, oh, ow] = grad ? node.inputs[0].shape : node.output.shape;
    const label = `${grad ? 'resizeGrad' : 'resize'} ${mode}${alignCorners ? ' align' : ''} [${b},${h},${w},${c}] -> [${oh},${ow}]`;
    const hPass: AxisPass = { outer: b, inner: w * c, inSize: h, outSize: oh, mode, alignCorners };
    // The W pass runs on [b, oh, w, c] in the forward order (H first): its outer is b * oh.
    const wPass: AxisPass = { outer: b * oh, inner: c, inSize: w, outSize: ow, mode, alignCorners };
    const passes = [h !== oh ? hPass : undefined, w !== ow ? wPass : undefined].filter((p): p is AxisPass => !!p);
    if (passes.length === 0) return { dispatches: [], alias: 0 }; // both formulas are the identity at equal sizes
    if (grad) passes.reverse(); // the adjoint of (W after H) is (H-adjoint after W-adjoint), on [b, oh, w, c] between
    const make = grad ? adjointPass : forwardPass;
    if (passes.length === 1) return { dispatches: [make(passes[0], [{ input: 0 }, { output: true }], limits, label)] };
    // Scratch: the image between the passes, [b, oh, w, c] either way.
    return {
      dispatches: [
        make(passes[0], [{ input: 0 }, { scratch: 0 }], limits, `${label} (first axis)`),
        make(passes[1], [{ scratch: 0 }, { output: true }], limits, `${label} (second axis)`),
      ],
      scratch: [b * oh * w * c * 4],
    };
  };
}

export const lowerings: Lowerings = { resize: lowerResizeLike(false), resizeGrad: lowerResizeLike(true) };
