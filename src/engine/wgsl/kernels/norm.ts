// groupNorm / layerNorm and their input gradients. Both are "normalize a group of elements, then scale and shift per
// channel": groupNorm's group is (b, g) over (H, W, C/groups) of NHWC x; layerNorm's is one row of the last axis,
// i.e. groupNorm with B = rows, H*W = 1, one group. One generator serves the four node kinds.
//
// Statistics: one workgroup per group, two passes over the group (mean, then the biased variance of x - mean: more
// accurate than E[x^2] - mean^2 or a float32 Welford merge), tree reductions in workgroup memory.
// Gradient (gamma, beta are never differentiated here): with xhat = (x - mean) * rstd and g = dy * gamma[c],
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))          (means over the group)
// so the gradient's statistics pass adds a third pass for the two means of g.
// Small groups (layerNorm rows, small feature maps) are finished by the same workgroup (one dispatch); large groups
// (a VQGAN feature map: 256x256x4 per group, 32 groups) write their statistics to scratch and an elementwise
// dispatch spreads the normalization over the whole GPU.
import { f32Literal, grid1d, type Dispatch, type KernelLimits, type KernelNode, type Lowered, type Lowerings } from '../kernel.ts';
import { sizeOf } from '../../graph/ir.ts';

/** Groups up to this many elements are normalized by the workgroup that computed their statistics. */
export const FUSED_GROUP_MAX = 4096;
const WG = 256;
/** The tree reduction's steps, unrolled: 128, 64, ..., 1. */
const halvings = [...Array(Math.log2(WG)).keys()].map((i) => WG >> (i + 1));

interface NormDims {
  /** Batch count, pixels per image, channels, groups: the group (b, g) has HW * C/G elements. */
  B: number;
  HW: number;
  C: number;
  G: number;
  eps: number;
  grad: boolean;
  label: string;
}

/**
 * Bindings: x, then gamma and beta (forward) or dy (gradient) unless `xOnly` (the forward statistics need nothing
 * else, and an unused binding would be missing from the pipeline's layout), then the read_write ones, in order.
 */
function bindingsWgsl(d: NormDims, xOnly: boolean, rest: string[]): { code: string; bindings: Dispatch['bindings'] } {
  const names = xOnly ? ['nX'] : ['nX', 'nGamma', d.grad ? 'nDy' : 'nBeta'];
  return {
    code: [
      ...names.map((n, i) => `@group(0) @binding(${i}) var<storage, read> ${n}: array<f32>;`),
      ...rest.map((n, i) => `@group(0) @binding(${i + names.length}) var<storage, read_write> ${n}: array<f32>;`),
    ].join('\n'),
    bindings: [
      ...names.map((_, i) => ({ input: i })),
      ...rest.map((n) => (n === 'nStats' ? { scratch: 0 } : { output: true as const })),
    ],
  };
}

function constants(d: NormDims): string {
  const CG = d.C / d.G;
  return /* wgsl */ `
const HW = ${d.HW}u;
const C = ${d.C}u;
const G = ${d.G}u;
const CG = ${CG}u;
const GROUP = ${d.HW * CG}u;
const ROWS = ${d.B * d.G}u;
const INV_N = ${f32Literal(1 / (d.HW * CG))};
const EPS = ${f32Literal(d.eps)};
`;
}

/** The output element of the workgroup's group row at its e-th element, given mean/rstd (and the gradient means). */
const outputExpr = (grad: boolean) =>
  grad
    ? 'rstd * (nDy[i] * nGamma[c] - mg - (nX[i] - mean) * rstd * mgx)'
    : '(nX[i] - mean) * rstd * nGamma[c] + nBeta[c]';

/**
 * WGSL of reduction number r: the workgroup's sum of v (every thread gets it). Each reduction has its own workgroup
 * array, so no thread writes an array another may still be reading: Mesa's llvmpipe (the CI adapter) gave wrong sums
 * when one array was reused with a barrier between the final read and the next write (the read moved past it).
 */
const reduction = (r: number) => /* wgsl */ `var<workgroup> red${r}: array<vec2<f32>, ${WG}>;
fn total${r}(v: vec2<f32>, li: u32) -> vec2<f32> {
  red${r}[li] = v;
  workgroupBarrier();
${halvings.map((h) => `  if (li < ${h}u) { red${r}[li] += red${r}[li + ${h}u]; }\n  workgroupBarrier();`).join('\n')}
  return red${r}[0];
}`;

/** The statistics kernel (one workgroup per group); `fused` also writes the output, else stats to scratch. */
function statsKernel(d: NormDims, fused: boolean, limits: KernelLimits): Dispatch {
  const rows = d.B * d.G;
  const gx = Math.min(rows, limits.maxWorkgroupsPerDimension);
  const gy = Math.ceil(rows / gx);
  const io = bindingsWgsl(d, !fused && !d.grad, [fused ? 'nOut' : 'nStats']);
  const code = /* wgsl */ `${io.code}
${constants(d)}
${(d.grad ? [0, 1, 2] : [0, 1]).map(reduction).join('\n')}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= ROWS) { return; }
  // Element e of group (b, g) lies at pixel e / CG, channel g*CG + e % CG.
  let base = (row / G) * HW * C + (row % G) * CG;
  var s = 0.0;
  for (var e = li; e < GROUP; e += ${WG}u) { s += nX[base + (e / CG) * C + e % CG]; }
  let mean = total0(vec2<f32>(s, 0.0), li).x * INV_N;
  var q = 0.0;
  for (var e = li; e < GROUP; e += ${WG}u) {
    let dev = nX[base + (e / CG) * C + e % CG] - mean;
    q += dev * dev;
  }
  let rstd = inverseSqrt(total1(vec2<f32>(q, 0.0), li).x * INV_N + EPS);
${
  d.grad
    ? /* wgsl */ `  var sg = vec2<f32>(0.0);
  for (var e = li; e < GROUP; e += ${WG}u) {
    let i = base + (e / CG) * C + e % CG;
    let g = nDy[i] * nGamma[(row % G) * CG + e % CG];
    sg += vec2<f32>(g, g * (nX[i] - mean) * rstd);
  }
  let means = total2(sg, li) * INV_N;
  let mg = means.x;
  let mgx = means.y;`
    : ''
}
${
  fused
    ? /* wgsl */ `  for (var e = li; e < GROUP; e += ${WG}u) {
    let i = base + (e / CG) * C + e % CG;
    let c = (row % G) * CG + e % CG;
    nOut[i] = ${outputExpr(d.grad)};
  }`
    : /* wgsl */ `  if (li == 0u) {
    nStats[row * 4u] = mean;
    nStats[row * 4u + 1u] = rstd;
${d.grad ? '    nStats[row * 4u + 2u] = mg;\n    nStats[row * 4u + 3u] = mgx;' : ''}
  }`
}
}
`;
  return { code, bindings: io.bindings, workgroups: [gx, gy, 1], label: `${d.label} ${fused ? 'fused' : 'stats'}` };
}

/** The elementwise pass after statsKernel(fused = false): one thread per element. */
function applyKernel(d: NormDims, limits: KernelLimits): Dispatch {
  const count = d.B * d.HW * d.C;
  const io = bindingsWgsl(d, false, ['nStats', 'nOut']);
  const code = /* wgsl */ `${io.code}
${constants(d)}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * (nwg.x * 64u);
  if (i >= ${count}u) { return; }
  let c = i % C;
  let row = (i / (HW * C)) * G + c / CG;
  let mean = nStats[row * 4u];
  let rstd = nStats[row * 4u + 1u];
${d.grad ? '  let mg = nStats[row * 4u + 2u];\n  let mgx = nStats[row * 4u + 3u];' : ''}
  nOut[i] = ${outputExpr(d.grad)};
}
`;
  return {
    code,
    bindings: io.bindings,
    workgroups: grid1d(count, 64, limits),
    label: `${d.label} apply`,
  };
}

function lowerNorm(d: NormDims, limits: KernelLimits): Lowered {
  if (d.C % d.G !== 0) throw new Error(`${d.label}: ${d.C} channels do not split into ${d.G} groups`);
  if ((d.HW * d.C) / d.G <= FUSED_GROUP_MAX) return { dispatches: [statsKernel(d, true, limits)] };
  return { dispatches: [statsKernel(d, false, limits), applyKernel(d, limits)], scratch: [d.B * d.G * 4 * 4] };
}

const groupDims = (node: KernelNode<'groupNorm' | 'groupNormGrad'>, grad: boolean): NormDims => {
  const [B, H, W, C] = node.inputs[0].shape;
  const { groups, eps } = node.attrs;
  return { B, HW: H * W, C, G: groups, eps, grad, label: `${node.op} ${groups} groups [${node.inputs[0].shape}]` };
};

const layerDims = (node: KernelNode<'layerNorm' | 'layerNormGrad'>, grad: boolean): NormDims => {
  const shape = node.inputs[0].shape;
  const C = shape[shape.length - 1];
  return { B: sizeOf(shape) / C, HW: 1, C, G: 1, eps: node.attrs.eps, grad, label: `${node.op} [${shape}]` };
};

export const lowerings: Lowerings = {
  groupNorm: (node, limits) => lowerNorm(groupDims(node, false), limits),
  groupNormGrad: (node, limits) => lowerNorm(groupDims(node, true), limits),
  layerNorm: (node, limits) => lowerNorm(layerDims(node, false), limits),
  layerNormGrad: (node, limits) => lowerNorm(layerDims(node, true), limits),
};
