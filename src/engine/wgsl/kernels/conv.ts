// conv2d (NHWC x HWIO, optional bias) and its input gradient, as implicit GEMMs on the shared skeleton (gemm.ts).
//
// Forward: rows m = output pixels (b, oy, ox), M = B*Ho*Wo; columns n = Cout; k = (ky, kx, ci), K = kh*kw*Cin, which
// is exactly the HWIO weight viewed as a [K, Cout] matrix, and the output [M, Cout] is the NHWC result. A 1x1
// stride-1 unpadded conv reads x as the plain [M, Cin] matrix; the ViT patch embedding (kernel = stride, no padding)
// is the same GEMM with K = kh*kw*3, whose A rows read contiguous runs of kw*Cin floats.
//
// Input gradient, dx[b, iy, ix, ci] = sum over (ky, kx, co) of dy[b, oy, ox, co] w[ky, kx, ci, co] where
// iy = oy*s - padTop + ky (and likewise x) for an integral, in-range oy. Two forms, neither touching the zero taps:
// - kernel <= stride (ViT patches, 1x1 stride 2): each dx pixel gets at most one tap, so dx is one GEMM
//   dy [B*Ho*Wo, Cout] x w^T [Cout, kh*kw*Cin] whose store scatters (oy, ox, ky, kx, ci) to the dx pixel; pixels no
//   tap reaches are zeroed first (a separate dispatch, only when there are any).
// - otherwise by phase: the dx pixels with iy = py (mod s), ix = px (mod s) all use the same taps ky = py + padTop
//   (mod s), kx likewise, so each of the s*s phases is a dense GEMM, M = its pixels, N = Cin, K = taps*Cout
//   (taming's Downsample, 3x3 stride 2 pad [0,1,0,1]: phases with 2x2, 2x1, 1x2 and 1x1 taps; stride 1 is one phase).
//
// Both take their buffers and the store from the caller (ConvIo), as matmul does, so that a fused elementwise group
// reading the result (kernels/fused.ts) runs in the GEMM's store: every output element is stored exactly once, by the
// GEMM or, for the input gradient's untouched pixels, by the fill with v = 0.
import { grid1d, type Dispatch, type HalfInputs, type KernelLimits, type KernelNode, type Lowerings, type TensorInfo } from '../kernel.ts';
import { buffer, inputAt, inputBuffer } from './common.ts';
import { gemmDispatch } from './gemm.ts';

const shapeText = (s: number[]) => `[${s.join(',')}]`;

/**
 * Where a conv reads and writes: `decls` declares the buffers (bindings in the order of `bindings`), `inputs` names
 * the node's operands' buffers in its input order (conv2d: x, w, bias if any; conv2dGradInput: dy, w), and `store` is
 * WGSL statements that write `v`, the output element (bias included) at the flat NHWC index `i`. A weight whose
 * `node.inputs[1].storage` is 'f16' must be declared by common.ts's inputBuffer (it is read by inputAt).
 */
export interface ConvIo {
  decls: string;
  inputs: string[];
  store: string;
  bindings: Dispatch['bindings'];
}

export function conv2dDispatch(node: KernelNode<'conv2d'>, io: ConvIo, limits: KernelLimits, label?: string): Dispatch {
  const { stride, pad } = node.attrs;
  const [B, H, W, Cin] = node.inputs[0].shape;
  const [kh, kw, , Cout] = node.inputs[1].shape;
  const [, Ho, Wo] = node.output.shape;
  const [x, w, bias] = io.inputs;
  const plain = kh === 1 && kw === 1 && stride === 1 && pad.every((p) => p === 0);
  const loadA = plain
    ? `return ${x}[m * ${Cin}u + k];`
    : /* wgsl */ `
  let ox = m % ${Wo}u;
  let oy = (m / ${Wo}u) % ${Ho}u;
  let b = m / ${Wo * Ho}u;
  let ci = k % ${Cin}u;
  let kx = (k / ${Cin}u) % ${kw}u;
  let ky = k / ${Cin * kw}u;
  // Unsigned wrap-around makes a negative coordinate (top/left padding) fail the < test too.
  let iy = oy * ${stride}u + ky - ${pad[0]}u;
  let ix = ox * ${stride}u + kx - ${pad[2]}u;
  if (iy >= ${H}u || ix >= ${W}u) { return 0.0; }
  return ${x}[((b * ${H}u + iy) * ${W}u + ix) * ${Cin}u + ci];`;
  const prelude = /* wgsl */ `
${io.decls}
fn loadA(bz: u32, m: u32, k: u32) -> f32 {${loadA}
}
fn loadB(bz: u32, k: u32, n: u32) -> f32 {
  return ${inputAt(w, `k * ${Cout}u + n`, node.inputs[1])};
}
fn store(bz: u32, m: u32, n: u32, acc: f32) {
  let i = m * ${Cout}u + n;
  let v = acc${bias ? ` + ${bias}[n]` : ''};
${io.store}
}
`;
  return gemmDispatch(
    {
      M: B * Ho * Wo,
      N: Cout,
      K: kh * kw * Cin,
      batch: 1,
      prelude,
      aFast: 'k',
      bFast: 'n',
      bindings: io.bindings,
      label: label ?? `conv2d ${kh}x${kw} s${stride} pad ${shapeText(pad)} ${shapeText([B, H, W, Cin])}->${shapeText(node.output.shape)}`,
    },
    limits,
  );
}

/**
 * The pixels of dx that no tap reaches (kernel <= stride with gaps or a ragged edge) get v = 0 through the store;
 * pixel (iy, ix) is reached when iy + padTop = oy*s + ky for some oy < Ho, ky < kh (likewise x).
 */
function fillUncovered(node: KernelNode<'conv2dGradInput'>, io: ConvIo, label: string, limits: KernelLimits): Dispatch {
  const { stride: s, pad } = node.attrs;
  const [, Ho, Wo] = node.inputs[0].shape;
  const [kh, kw] = node.inputs[1].shape;
  const [B, H, W, Cin] = node.output.shape;
  const count = B * H * W * Cin;
  const code = /* wgsl */ `
${io.decls}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * (nwg.x * 64u);
  if (i >= ${count}u) { return; }
  let ty = (i / ${W * Cin}u) % ${H}u + ${pad[0]}u;
  let tx = (i / ${Cin}u) % ${W}u + ${pad[2]}u;
  if (ty % ${s}u < ${kh}u && ty / ${s}u < ${Ho}u && tx % ${s}u < ${kw}u && tx / ${s}u < ${Wo}u) { return; }
  let v = 0.0;
${io.store}
}
`;
  return { code, bindings: io.bindings, workgroups: grid1d(count, 64, limits), label: `${label} zero` };
}

export function conv2dGradInputDispatches(node: KernelNode<'conv2dGradInput'>, io: ConvIo, limits: KernelLimits, label?: string): Dispatch[] {
  const { stride: s, pad } = node.attrs;
  const [B, Ho, Wo, Cout] = node.inputs[0].shape;
  const [kh, kw, Cin] = node.inputs[1].shape;
  const [, H, W] = node.output.shape;
  const [padT, , padL] = pad;
  label ??= `conv2dGradInput ${kh}x${kw} s${s} pad ${shapeText(pad)} ${shapeText(node.inputs[0].shape)}->${shapeText(node.output.shape)}`;
  const { bindings } = io;
  const [gDy, gW] = io.inputs;
  const buffers = io.decls;

  if (kh <= s && kw <= s) {
    // m = (b, oy, ox), n = (ky, kx, ci), k = co.
    const covered = kh === s && kw === s && Ho * s - padT >= H && Wo * s - padL >= W;
    const prelude = /* wgsl */ `${buffers}
fn loadA(bz: u32, m: u32, k: u32) -> f32 {
  return ${gDy}[m * ${Cout}u + k];
}
fn loadB(bz: u32, k: u32, n: u32) -> f32 {
  return ${inputAt(gW, `n * ${Cout}u + k`, node.inputs[1])};
}
fn store(bz: u32, m: u32, n: u32, v: f32) {
  let ox = m % ${Wo}u;
  let oy = (m / ${Wo}u) % ${Ho}u;
  let b = m / ${Wo * Ho}u;
  let ci = n % ${Cin}u;
  let kx = (n / ${Cin}u) % ${kw}u;
  let ky = n / ${Cin * kw}u;
  let iy = oy * ${s}u + ky - ${padT}u;
  let ix = ox * ${s}u + kx - ${padL}u;
  if (iy < ${H}u && ix < ${W}u) {
    let i = ((b * ${H}u + iy) * ${W}u + ix) * ${Cin}u + ci;
${io.store}
  }
}
`;
    const gemm = gemmDispatch(
      { M: B * Ho * Wo, N: kh * kw * Cin, K: Cout, batch: 1, prelude, aFast: 'k', bFast: 'k', bindings, label: `${label} patches` },
      limits,
    );
    return covered ? [gemm] : [fillUncovered(node, io, label, limits), gemm];
  }

  const dispatches: Dispatch[] = [];
  for (let py = 0; py < s; py++) {
    for (let px = 0; px < s; px++) {
      const Hp = Math.ceil((H - py) / s);
      const Wp = Math.ceil((W - px) / s);
      if (Hp <= 0 || Wp <= 0) continue;
      // Taps of this phase: ky = ky0 + s*t for t < nty; the dy row is oy = j + qy - t for dx row iy = py + s*j.
      const ky0 = (py + padT) % s;
      const kx0 = (px + padL) % s;
      const nty = Math.max(0, Math.ceil((kh - ky0) / s));
      const ntx = Math.max(0, Math.ceil((kw - kx0) / s));
      const qy = (py + padT - ky0) / s;
      const qx = (px + padL - kx0) / s;
      // A phase without taps has K = 0 (its pixels get zeros) and never evaluates the index arithmetic, but WGSL
      // rejects a constant zero divisor.
      const ntxDiv = Math.max(1, ntx);
      // m = (b, j, i), n = ci, k = (ty, tx, co).
      const prelude = /* wgsl */ `${buffers}
fn loadA(bz: u32, m: u32, k: u32) -> f32 {
  let i = m % ${Wp}u;
  let j = (m / ${Wp}u) % ${Hp}u;
  let b = m / ${Wp * Hp}u;
  let co = k % ${Cout}u;
  let tx = (k / ${Cout}u) % ${ntxDiv}u;
  let ty = k / ${Cout * ntxDiv}u;
  let oy = j + ${qy}u - ty;
  let ox = i + ${qx}u - tx;
  if (oy >= ${Ho}u || ox >= ${Wo}u) { return 0.0; }
  return ${gDy}[((b * ${Ho}u + oy) * ${Wo}u + ox) * ${Cout}u + co];
}
fn loadB(bz: u32, k: u32, n: u32) -> f32 {
  let co = k % ${Cout}u;
  let kx = ${kx0}u + ${s}u * ((k / ${Cout}u) % ${ntxDiv}u);
  let ky = ${ky0}u + ${s}u * (k / ${Cout * ntxDiv}u);
  return ${inputAt(gW, `((ky * ${kw}u + kx) * ${Cin}u + n) * ${Cout}u + co`, node.inputs[1])};
}
fn store(bz: u32, m: u32, n: u32, v: f32) {
  let col = m % ${Wp}u;
  let row = (m / ${Wp}u) % ${Hp}u;
  let b = m / ${Wp * Hp}u;
  let i = ((b * ${H}u + ${py}u + ${s}u * row) * ${W}u + ${px}u + ${s}u * col) * ${Cin}u + n;
${io.store}
}
`;
      const phase = s > 1 ? ` phase ${py},${px}` : '';
      dispatches.push(
        gemmDispatch(
          { M: B * Hp * Wp, N: Cin, K: nty * ntx * Cout, batch: 1, prelude, aFast: 'k', bFast: 'k', bindings, label: `${label}${phase}` },
          limits,
        ),
      );
    }
  }
  return dispatches;
}

/** The single-node kernels' buffers: inputs in order, then the output `cvOut`, stored plainly. */
function plainIo(inputs: TensorInfo[]): ConvIo {
  const names = inputs.map((_, k) => `cvIn${k}`);
  const decls = [...names.map((n, k) => inputBuffer(k, n, inputs[k])), buffer(inputs.length, 'cvOut', 'f32', true)];
  return {
    decls: decls.join('\n'),
    inputs: names,
    store: '  cvOut[i] = v;',
    bindings: [...names.map((_, k) => ({ input: k })), { output: true }],
  };
}

export const lowerings: Lowerings = {
  conv2d: (node, limits) => ({ dispatches: [conv2dDispatch(node, plainIo(node.inputs), limits)] }),
  conv2dGradInput: (node, limits) => ({ dispatches: conv2dGradInputDispatches(node, plainIo(node.inputs), limits) }),
};

/** The weight (input 1) may be stored as f16; x, dy and the bias stay f32. */
export const halfInputs: HalfInputs = { conv2d: () => [1], conv2dGradInput: () => [1] };
