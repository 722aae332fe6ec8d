// groupNorm / layerNorm and their input gradients. Both are "normalize a group of elements, then scale and shift per
// channel": groupNorm's group is (b, g) over (H, W, C/groups) of NHWC x; layerNorm's is one row of the last axis,
// i.e. groupNorm with B = rows, H*W = 1, one group. One generator serves the four node kinds.
//
// Statistics: two passes over the elements (mean, then the sum of squared deviations from it: more accurate than
// E[x^2] - mean^2), tree reductions in workgroup memory.
// Gradient (gamma, beta are never differentiated here): with xhat = (x - mean) * rstd and g = dy * gamma[c],
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))          (means over the group)
// so the gradient's statistics add a third pass for sum g and sum g (x - mean).
// Groups of up to CHUNK elements (layerNorm rows, small feature maps): one workgroup per group does everything (one
// dispatch). Larger groups (a VQGAN feature map: 256x256x4 per group, only 32 groups) are split into chunks, one
// workgroup each, whose partial statistics (centred on the chunk's mean) are merged per group by a small dispatch;
// an elementwise dispatch then normalizes, so the whole GPU works on every pass.
import { f32Literal, grid1d, type Dispatch, type KernelLimits, type KernelNode, type Lowered, type Lowerings } from '../kernel.ts';
import { sizeOf, type NormKind } from '../../graph/ir.ts';

/**
 * Groups up to this many elements are normalized by the workgroup that computed their statistics; larger ones are
 * split into chunks of this size, one workgroup each, so that a few huge groups still fill the GPU.
 */
const CHUNK = 4096;
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
  /** A fused elementwise group in the output's store (kernels/fused.ts), if any. */
  io?: NormIo;
}

/**
 * Where a norm kernel reads and writes when a fused group is its epilogue: `decls` declares all the group's buffers
 * (bindings in the order of `bindings`), `inputs` names the node's operands among them (x, gamma, then beta or dy),
 * and `store` is WGSL statements that write `v`, the output element at the flat index `i`. The scratch buffers are
 * bound after those.
 */
export interface NormIo {
  decls: string;
  inputs: string[];
  store: string;
  bindings: Dispatch['bindings'];
}

/** Buffer names and the output's store of one dispatch. */
interface NormBuffers {
  code: string;
  bindings: Dispatch['bindings'];
  x: string;
  gamma: string;
  /** beta (forward) or dy (gradient). */
  third: string;
  store: string;
}

/**
 * Bindings: x, then gamma and beta (forward) or dy (gradient) unless `xOnly` (the forward statistics need nothing
 * else, and an unused binding would be missing from the pipeline's layout), then the read_write ones (`rest`), in
 * order. With an epilogue, the group's buffers (d.io), then the scratch ones among `rest`.
 */
function bindingsWgsl(d: NormDims, xOnly: boolean, rest: string[]): NormBuffers {
  const scratch = (n: string) => (n === 'nPart' ? { scratch: 0 } : n === 'nStats' ? { scratch: 1 } : { output: true as const });
  const writable = (n: string, i: number) => `@group(0) @binding(${i}) var<storage, read_write> ${n}: array<f32>;`;
  if (d.io) {
    const own = rest.filter((n) => n !== 'nOut');
    const [x, gamma, third] = d.io.inputs;
    return {
      code: [d.io.decls, ...own.map((n, i) => writable(n, d.io!.bindings.length + i))].join('\n'),
      bindings: [...d.io.bindings, ...own.map(scratch)],
      x,
      gamma,
      third,
      store: d.io.store,
    };
  }
  const names = xOnly ? ['nX'] : ['nX', 'nGamma', d.grad ? 'nDy' : 'nBeta'];
  return {
    code: [...names.map((n, i) => `@group(0) @binding(${i}) var<storage, read> ${n}: array<f32>;`), ...rest.map((n, i) => writable(n, i + names.length))].join('\n'),
    bindings: [...names.map((_, i) => ({ input: i })), ...rest.map(scratch)],
    x: 'nX',
    gamma: 'nGamma',
    third: d.grad ? 'nDy' : 'nBeta',
    store: '  nOut[i] = v;',
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

/** The output element at index i (channel c), given mean/rstd (and the gradient means). */
const outputExpr = (grad: boolean, b: NormBuffers) =>
  grad
    ? `rstd * (${b.third}[i] * ${b.gamma}[c] - mg - (${b.x}[i] - mean) * rstd * mgx)`
    : `(${b.x}[i] - mean) * rstd * ${b.gamma}[c] + ${b.third}[c]`;

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

/**
 * The statistics kernel: one workgroup per (group, chunk of CHUNK elements), `chunks` per group. Over its elements it
 * computes, centred on its own mean (so that chunks combine without cancellation): mean_c, M2_c = sum (x - mean_c)^2,
 * and for the gradient Sg_c = sum g, Sgx_c = sum g (x - mean_c). With one chunk per group (`fused`) it finishes the
 * job and writes the output; otherwise it writes those four partials to scratch 0 for combineKernel.
 */
function statsKernel(d: NormDims, chunks: number, limits: KernelLimits): Dispatch {
  const fused = chunks === 1;
  const launches = d.B * d.G * chunks;
  const gx = Math.min(launches, limits.maxWorkgroupsPerDimension);
  const gy = Math.ceil(launches / gx);
  const io = bindingsWgsl(d, !fused && !d.grad, [fused ? 'nOut' : 'nPart']);
  const code = /* wgsl */ `${io.code}
${constants(d)}
const CHUNKS = ${chunks}u;
const CHUNK = ${fused ? d.HW * (d.C / d.G) : CHUNK}u;
${(d.grad ? [0, 1, 2] : [0, 1]).map(reduction).join('\n')}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let flat = wid.x + wid.y * nwg.x;
  if (flat >= ROWS * CHUNKS) { return; }
  let row = flat / CHUNKS;
  let first = (flat % CHUNKS) * CHUNK;
  let end = min(first + CHUNK, GROUP);
  let inv = 1.0 / f32(end - first);
  // Element e of group (b, g) lies at pixel e / CG, channel g*CG + e % CG.
  let base = (row / G) * HW * C + (row % G) * CG;
  var s = 0.0;
  for (var e = first + li; e < end; e += ${WG}u) { s += ${io.x}[base + (e / CG) * C + e % CG]; }
  let mean = total0(vec2<f32>(s, 0.0), li).x * inv;
  var q = 0.0;
  for (var e = first + li; e < end; e += ${WG}u) {
    let dev = ${io.x}[base + (e / CG) * C + e % CG] - mean;
    q += dev * dev;
  }
  let m2 = total1(vec2<f32>(q, 0.0), li).x;
${
  d.grad
    ? /* wgsl */ `  var sg = vec2<f32>(0.0);
  for (var e = first + li; e < end; e += ${WG}u) {
    let i = base + (e / CG) * C + e % CG;
    let g = ${io.third}[i] * ${io.gamma}[(row % G) * CG + e % CG];
    sg += vec2<f32>(g, g * (${io.x}[i] - mean));
  }
  let sums = total2(sg, li);`
    : ''
}
${
  fused
    ? /* wgsl */ `  let rstd = inverseSqrt(m2 * INV_N + EPS);
${d.grad ? '  let mg = sums.x * INV_N;\n  let mgx = sums.y * rstd * INV_N;' : ''}
  for (var e = li; e < GROUP; e += ${WG}u) {
    let i = base + (e / CG) * C + e % CG;
    let c = (row % G) * CG + e % CG;
    let v = ${outputExpr(d.grad, io)};
${io.store}
  }`
    : /* wgsl */ `  if (li == 0u) {
    nPart[flat * 4u] = mean;
    nPart[flat * 4u + 1u] = m2;
${d.grad ? '    nPart[flat * 4u + 2u] = sums.x;\n    nPart[flat * 4u + 3u] = sums.y;' : ''}
  }`
}
}
`;
  return { code, bindings: io.bindings, workgroups: [gx, gy, 1], label: `${d.label} ${fused ? 'fused' : `stats ${chunks} chunks`}` };
}

/**
 * One thread per group: merges the chunks' partials (Chan et al.: M2 = sum M2_c + n_c (mean_c - mean)^2, and
 * likewise sum g (x - mean) = sum Sgx_c + (mean_c - mean) Sg_c) into scratch 1: mean, rstd, mean(g), mean(g xhat).
 */
function combineKernel(d: NormDims, chunks: number, limits: KernelLimits): Dispatch {
  const rows = d.B * d.G;
  const code = /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> nPart: array<f32>;
@group(0) @binding(1) var<storage, read_write> nStats: array<f32>;
${constants(d)}
const CHUNKS = ${chunks}u;
const CHUNK = ${CHUNK}u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.x + gid.y * (nwg.x * 64u);
  if (row >= ROWS) { return; }
  let p = row * CHUNKS * 4u;
  var mean = 0.0;
  for (var c = 0u; c < CHUNKS; c++) { mean += nPart[p + c * 4u] * f32(min(CHUNK, GROUP - c * CHUNK)); }
  mean *= INV_N;
  var m2 = 0.0;
  var sg = vec2<f32>(0.0);
  for (var c = 0u; c < CHUNKS; c++) {
    let dm = nPart[p + c * 4u] - mean;
    m2 += nPart[p + c * 4u + 1u] + f32(min(CHUNK, GROUP - c * CHUNK)) * dm * dm;
${d.grad ? '    sg += vec2<f32>(nPart[p + c * 4u + 2u], nPart[p + c * 4u + 3u] + dm * nPart[p + c * 4u + 2u]);' : ''}
  }
  let rstd = inverseSqrt(m2 * INV_N + EPS);
  nStats[row * 4u] = mean;
  nStats[row * 4u + 1u] = rstd;
  nStats[row * 4u + 2u] = sg.x * INV_N;
  nStats[row * 4u + 3u] = sg.y * rstd * INV_N;
}
`;
  return { code, bindings: [{ scratch: 0 }, { scratch: 1 }], workgroups: grid1d(rows, 64, limits), label: `${d.label} combine` };
}

/** The elementwise pass after combineKernel: one thread per element. */
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
  let v = ${outputExpr(d.grad, io)};
${io.store}
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
  const chunks = Math.ceil((d.HW * d.C) / d.G / CHUNK);
  if (chunks === 1) return { dispatches: [statsKernel(d, 1, limits)] };
  return {
    dispatches: [statsKernel(d, chunks, limits), combineKernel(d, chunks, limits), applyKernel(d, limits)],
    scratch: [d.B * d.G * chunks * 4 * 4, d.B * d.G * 4 * 4],
  };
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

/** The dispatches of any of the four kinds, with a fused group in the output's store (kernels/fused.ts). */
export function normLowered(node: KernelNode<NormKind>, io: NormIo, limits: KernelLimits, label: string): Lowered {
  const grad = node.op === 'groupNormGrad' || node.op === 'layerNormGrad';
  const d = node.op === 'groupNorm' || node.op === 'groupNormGrad' ? groupDims(node as KernelNode<'groupNorm'>, grad) : layerDims(node as KernelNode<'layerNorm'>, grad);
  return lowerNorm({ ...d, io, label }, limits);
}

export const lowerings: Lowerings = {
  groupNorm: (node, limits) => lowerNorm(groupDims(node, false), limits),
  groupNormGrad: (node, limits) => lowerNorm(groupDims(node, true), limits),
  layerNorm: (node, limits) => lowerNorm(layerDims(node, false), limits),
  layerNormGrad: (node, limits) => lowerNorm(layerDims(node, true), limits),
};
