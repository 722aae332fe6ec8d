// The GEMM skeleton shared by matmul, conv2d (implicit GEMM) and conv2dGradInput: C[bz, m, n] = sum_k A[bz, m, k] B[bz, k, n].
// A caller describes its operands by three WGSL functions (put in `prelude` with its bindings and constants), which
// the skeleton calls only for in-range indices (m < M, n < N, k < K):
//   fn loadA(bz: u32, m: u32, k: u32) -> f32     fn loadB(bz: u32, k: u32, n: u32) -> f32
//   fn store(bz: u32, m: u32, n: u32, v: f32)
// so broadcasting, transposes, im2col and the conv-gradient scatter are index arithmetic in those functions (shapes
// are WGSL constants, so the compiler turns the divisions by them into multiplies).
//
// Three kernels, chosen by shape (gemmDispatch):
// - tiled: a 64x64 output tile per workgroup of 16x16 threads, each thread a 4x4 block (rows 4ty.., columns 4tx..),
//   K in steps of 16 through workgroup memory (2 tiles of 16x64 floats, ~8 KiB, under the 16 KiB default) held as
//   vec4s, so each k step of the inner loop is 2 vec4 loads for 16 multiply-adds. Tile loads put consecutive threads
//   on the operand's contiguous axis (`aFast`/`bFast`) so global reads coalesce; a tile loaded k-fast is stored with
//   a row pitch of 68 floats (not 64) so that those scalar writes spread over banks instead of all hitting one.
// - skinny: M <= 4 rows (matrix-vector shapes), K split over the threads of a workgroup (see skinnyGemm).
// - simple: one thread per output, a plain K loop. For tiny products and N <= 4 columns, where a 64x64 tile would be
//   mostly padding and the launch/barrier overhead dominates.
// Element type is f32 throughout; an f16 variant would change the workgroup tiles' element type (`ELEM` below), the
// bindings' element type in the callers' preludes and the loadA/loadB return types, keeping f32 accumulators.
import { grid1d, type Dispatch, type KernelLimits } from '../kernel.ts';

export interface GemmSpec {
  /** Per-`bz` problem size; bz ranges over [0, batch). */
  M: number;
  N: number;
  K: number;
  batch: number;
  /** Bindings, constants and the loadA/loadB/store functions. */
  prelude: string;
  /** Which index of A (resp. B) is contiguous in memory: consecutive threads load along it. */
  aFast: 'm' | 'k';
  bFast: 'k' | 'n';
  bindings: Dispatch['bindings'];
  label: string;
}

const TM = 64;
const TN = 64;
const TK = 16;
/** Threads per workgroup of the tiled kernel (16 x 16) and outputs per thread along each axis. */
const TX = 16;
const TY = 16;
const PER = 4;

const ELEM = 'f32';

/** Below this many multiply-adds (all batches) the simple kernel is used; also when N is at most SKINNY. */
const SMALL_MACS = 1 << 16;
/** Up to this many rows (one vec4 of accumulators), the skinny kernel; also the simple kernel's N bound. */
const SKINNY = 4;

/** One dispatch computing the GEMM (tiled, skinny or simple, by shape). */
export function gemmDispatch(s: GemmSpec, limits: KernelLimits): Dispatch {
  if (s.M * s.N * s.K * s.batch <= SMALL_MACS || s.N <= SKINNY) return simpleGemm(s, limits);
  if (s.M <= SKINNY) return skinnyGemm(s, limits);
  return tiledGemm(s, limits);
}

/**
 * A tile grid of `tiles` workgroups along x times `batch` along y (then z): WGSL that sets `bz` and returns early
 * (uniformly) past the end, and the launch size.
 */
function batchGrid(tiles: number, batch: number, label: string, limits: KernelLimits): { wgsl: string; workgroups: [number, number, number] } {
  const maxDim = limits.maxWorkgroupsPerDimension;
  if (tiles > maxDim) throw new Error(`${label}: ${tiles} column tiles is too many`);
  const gy = Math.min(batch, maxDim);
  const gz = Math.ceil(batch / gy);
  if (gz > maxDim) throw new Error(`${label}: batch ${batch} is too large`);
  return { wgsl: `let bz = wid.y + wid.z * nwg.y;\n  if (bz >= ${batch}u) { return; }`, workgroups: [tiles, gy, gz] };
}

/**
 * M <= 4 rows (matrix-vector products: GPT decoding at batch 1, attention of one query): a workgroup computes COLS
 * columns for all rows, its 256 threads split K into SLICES interleaved slices (k = slice + SLICES*i) whose partial
 * sums are added in workgroup memory: SLICES times the threads of the simple kernel (one per output, each looping
 * over all of K), so a weight-streaming product keeps the whole GPU busy. Consecutive threads read consecutive
 * elements of B (columns when B is [K, N], k when it is [N, K], hence the two thread layouts).
 */
function skinnyGemm(s: GemmSpec, limits: KernelLimits): Dispatch {
  const WG = 256;
  const [COLS, SLICES] = s.bFast === 'n' ? [32, 8] : [8, 32];
  // Thread li's column and slice, and the workgroup-memory index of (slice, column) partial sums.
  const col = s.bFast === 'n' ? `li % ${COLS}u` : `li / ${SLICES}u`;
  const slice = s.bFast === 'n' ? `li / ${COLS}u` : `li % ${SLICES}u`;
  const at = (sl: string) => (s.bFast === 'n' ? `(${sl}) * ${COLS}u + c` : `c * ${SLICES}u + ${sl}`);
  const grid = batchGrid(Math.ceil(s.N / COLS), s.batch, s.label, limits);
  const rows = [...Array(s.M).keys()];
  const halvings = [...Array(Math.log2(SLICES)).keys()].map((i) => SLICES >> (i + 1));
  const code = /* wgsl */ `${s.prelude}
const GM = ${s.M}u;
const GN = ${s.N}u;
const GK = ${s.K}u;
var<workgroup> part: array<vec4<f32>, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  ${grid.wgsl}
  let c = ${col};
  let sl = ${slice};
  let n = wid.x * ${COLS}u + c;
  var acc = vec4<f32>(0.0);
  if (n < GN) {
    for (var k = sl; k < GK; k += ${SLICES}u) {
      let b = loadB(bz, k, n);
${rows.map((r) => `      acc[${r}] = fma(loadA(bz, ${r}u, k), b, acc[${r}]);`).join('\n')}
    }
  }
  part[${at('sl')}] = acc;
  workgroupBarrier();
${halvings.map((h) => `  if (sl < ${h}u) { part[${at('sl')}] += part[${at(`sl + ${h}u`)}]; }\n  workgroupBarrier();`).join('\n')}
  if (sl == 0u && n < GN) {
    let total = part[${at('0u')}];
${rows.map((r) => `    store(bz, ${r}u, n, total[${r}]);`).join('\n')}
  }
}
`;
  return { code, bindings: s.bindings, workgroups: grid.workgroups, label: `${s.label} [skinny ${s.batch}x${s.M}x${s.N}x${s.K}]` };
}

function simpleGemm(s: GemmSpec, limits: KernelLimits): Dispatch {
  const count = s.batch * s.M * s.N;
  const WG = 64;
  const code = /* wgsl */ `${s.prelude}
const GM = ${s.M}u;
const GN = ${s.N}u;
const GK = ${s.K}u;
const COUNT = ${count}u;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * (nwg.x * ${WG}u);
  if (i >= COUNT) { return; }
  let n = i % GN;
  let m = (i / GN) % GM;
  let bz = i / (GN * GM);
  var acc = 0.0;
  for (var k = 0u; k < GK; k++) {
    acc = fma(loadA(bz, m, k), loadB(bz, k, n), acc);
  }
  store(bz, m, n, acc);
}
`;
  return { code, bindings: s.bindings, workgroups: grid1d(count, WG, limits), label: `${s.label} [simple ${s.batch}x${s.M}x${s.N}x${s.K}]` };
}

function tiledGemm(s: GemmSpec, limits: KernelLimits): Dispatch {
  const mTiles = Math.ceil(s.M / TM);
  const nTiles = Math.ceil(s.N / TN);
  const total = mTiles * s.batch;
  const maxDim = limits.maxWorkgroupsPerDimension;
  if (nTiles > maxDim) throw new Error(`${s.label}: N = ${s.N} needs more than ${maxDim} workgroups`);
  const gy = Math.min(total, maxDim);
  const gz = Math.ceil(total / gy);
  if (gz > maxDim) throw new Error(`${s.label}: ${total} row tiles is too many`);
  // Workgroup tiles are [k][m] and [k][n] in vec4s; one vec4 of padding per row when filled k-fast (see the header).
  const aPitch = s.aFast === 'k' ? TM / 4 + 1 : TM / 4;
  const bPitch = s.bFast === 'k' ? TN / 4 + 1 : TN / 4;
  const threads = TX * TY;
  const loads = (TM * TK) / threads; // = (TN * TK) / threads = 4
  // Tile coordinates (row of the tile along m or n, column along k) loaded by thread li in its load number r.
  const tileIndex = (fast: string, extent: number) =>
    fast === 'k'
      ? { outer: `li / ${TK}u + ${threads / TK}u * r`, kk: `li % ${TK}u` }
      : { outer: `li % ${extent}u`, kk: `li / ${extent}u + ${threads / extent}u * r` };
  const a = tileIndex(s.aFast, TM);
  const b = tileIndex(s.bFast, TN);
  const rows = [...Array(PER).keys()];
  const code = /* wgsl */ `${s.prelude}
const GM = ${s.M}u;
const GN = ${s.N}u;
const GK = ${s.K}u;
const M_TILES = ${mTiles}u;
const TOTAL = ${total}u;
var<workgroup> As: array<vec4<${ELEM}>, ${TK * aPitch}>;
var<workgroup> Bs: array<vec4<${ELEM}>, ${TK * bPitch}>;
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  // Uniform per workgroup, so the early return keeps the barriers below in uniform control flow.
  let flat = wid.y + wid.z * nwg.y;
  if (flat >= TOTAL) { return; }
  let bz = flat / M_TILES;
  let m0 = (flat % M_TILES) * ${TM}u;
  let n0 = wid.x * ${TN}u;
${rows.map((i) => `  var acc${i} = vec4<f32>(0.0);`).join('\n')}
  for (var k0 = 0u; k0 < GK; k0 += ${TK}u) {
    for (var r = 0u; r < ${loads}u; r++) {
      let mm = ${a.outer};
      let ka = ${a.kk};
      var va = 0.0;
      if (m0 + mm < GM && k0 + ka < GK) { va = loadA(bz, m0 + mm, k0 + ka); }
      As[ka * ${aPitch}u + mm / 4u][mm % 4u] = va;
      let nn = ${b.outer};
      let kb = ${b.kk};
      var vb = 0.0;
      if (n0 + nn < GN && k0 + kb < GK) { vb = loadB(bz, k0 + kb, n0 + nn); }
      Bs[kb * ${bPitch}u + nn / 4u][nn % 4u] = vb;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${TK}u; kk++) {
      let a = As[kk * ${aPitch}u + lid.y];
      let b = Bs[kk * ${bPitch}u + lid.x];
${rows.map((i) => `      acc${i} = fma(vec4<f32>(a[${i}]), b, acc${i});`).join('\n')}
    }
    workgroupBarrier();
  }
${rows
  .map((i) =>
    rows
      .map((j) => `  if (m0 + ${PER}u * lid.y + ${i}u < GM && n0 + ${PER}u * lid.x + ${j}u < GN) { store(bz, m0 + ${PER}u * lid.y + ${i}u, n0 + ${PER}u * lid.x + ${j}u, acc${i}[${j}]); }`)
      .join('\n'),
  )
  .join('\n')}
}
`;
  return { code, bindings: s.bindings, workgroups: [nTiles, gy, gz], label: `${s.label} [tiled ${s.batch}x${s.M}x${s.N}x${s.K}]` };
}
