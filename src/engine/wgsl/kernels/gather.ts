// gatherRows, its gradient (a deterministic scatter-add) and oneHot.
//
// gatherRowsGrad sums dy rows per index: dx[n] = sum over m with idx[m] = n of dy[m]. WGSL has no float atomics, and
// atomics would make the summation order (hence the float result) vary between runs anyway, so:
//   - few indices (M <= DIRECT_MAX, e.g. CLIP's pooled rows): each output element loops over all M indices;
//   - many (the augmentation warp gathers 4 x 32 x 224 x 224 rows from a [1 x H x W, 3] table): a stable LSD radix
//     sort of (index, m) pairs, 8 bits per pass, then each output element binary-searches its run of equal indices
//     and sums it in increasing m. Each pass: per block of 256 pairs a digit histogram (workgroup integer atomics:
//     counts are order-independent), an exclusive scan of the histograms (one workgroup per digit), and a stable
//     scatter (a pair's rank among equal digits of its block counted in workgroup memory).
//   Rows outside [0, N) get no gradient (they sort past the last row). One index value holding a huge share of the M
//   rows makes its row's sum long and serial: correct, but that row is then the slowest invocation.
import type { KernelLimits, KernelNode, Lowered, Lowerings, Dispatch } from '../kernel.ts';
import { buffer, kernel1d, kernelPerGroup, u32Literal } from './common.ts';

/** Up to this many indices, the gradient is a plain loop over them per output element. */
export const DIRECT_MAX = 256;
const BLOCK = 256;
const RADIX_BITS = 8;

function lowerGatherRows(node: KernelNode<'gatherRows'>, limits: KernelLimits): Lowered {
  const [n, d] = node.inputs[0].shape;
  const [m] = node.inputs[1].shape;
  const decls = `${buffer(0, 'table', 'f32')}\n${buffer(1, 'idx', 'i32')}\n${buffer(2, 'y', 'f32', true)}`;
  // Out-of-range rows read as 0 (never out of bounds).
  const body = `  let col = i % ${u32Literal(d)};
  let v = idx[i / ${u32Literal(d)}];
  let ok = v >= 0 && v < ${n};
  let row = u32(clamp(v, 0, ${n - 1}));
  y[i] = select(0.0, table[row * ${u32Literal(d)} + col], ok);`;
  const k = kernel1d(decls, m * d, body, limits);
  return { dispatches: [{ ...k, bindings: [{ input: 0 }, { input: 1 }, { output: true }], label: `gatherRows [${n},${d}] x ${m}` }] };
}

function lowerOneHot(node: KernelNode<'oneHot'>, limits: KernelLimits): Lowered {
  const { depth } = node.attrs;
  const [m] = node.inputs[0].shape;
  const decls = `${buffer(0, 'idx', 'i32')}\n${buffer(1, 'y', 'f32', true)}`;
  const body = `  y[i] = select(0.0, 1.0, idx[i / ${u32Literal(depth)}] == i32(i % ${u32Literal(depth)}));`;
  const k = kernel1d(decls, m * depth, body, limits);
  return { dispatches: [{ ...k, bindings: [{ input: 0 }, { output: true }], label: `oneHot ${m} x ${depth}` }] };
}

/** dx[n, col] = sum_m [idx[m] = n] dy[m, col], looping over every m. */
function directGrad(m: number, n: number, d: number, limits: KernelLimits, label: string): Dispatch {
  const decls = `${buffer(0, 'dy', 'f32')}\n${buffer(1, 'idx', 'i32')}\n${buffer(2, 'dx', 'f32', true)}`;
  const body = `  let col = i % ${u32Literal(d)};
  let row = i32(i / ${u32Literal(d)});
  var acc = 0.0;
  for (var k = 0u; k < ${u32Literal(m)}; k = k + 1u) {
    if (idx[k] == row) { acc = acc + dy[k * ${u32Literal(d)} + col]; }
  }
  dx[i] = acc;`;
  return { ...kernel1d(decls, n * d, body, limits), bindings: [{ input: 0 }, { input: 1 }, { output: true }], label };
}

/** Hillis-Steele inclusive scan of the u32 workgroup array `a` of BLOCK entries, in place (uniform control flow). */
const scanInPlace = (a: string) => `  for (var off = 1u; off < ${BLOCK}u; off = off << 1u) {
    var add = 0u;
    if (t >= off) { add = ${a}[t - off]; }
    workgroupBarrier();
    ${a}[t] = ${a}[t] + add;
    workgroupBarrier();
  }`;

// Scratch buffers of the sort: keys and values, twice (passes ping-pong), the histograms, the digit totals.
const KEYS = [0, 2];
const VALS = [1, 3];
const HIST = 4;
const TOTALS = 5;

function sortedGrad(m: number, n: number, d: number, limits: KernelLimits, label: string): Lowered {
  const blocks = Math.ceil(m / BLOCK);
  const bits = 32 - Math.clz32(n); // keys go up to n (the row past the end, for invalid indices)
  const passes = Math.max(1, Math.ceil(bits / RADIX_BITS));
  const M = u32Literal(m);
  const NB = u32Literal(blocks);
  const mask = u32Literal((1 << RADIX_BITS) - 1);
  const firstKey = `let v = src[e]; key = select(${u32Literal(n)}, u32(v), v >= 0 && v < ${n});`;
  const dispatches: Dispatch[] = [];
  for (let p = 0; p < passes; p++) {
    const shift = u32Literal(p * RADIX_BITS);
    // Pass 0 reads the i32 indices (binding input 1) and uses m itself as the value.
    const srcDecl = p === 0 ? buffer(0, 'src', 'i32') : buffer(0, 'src', 'u32');
    const readKey = p === 0 ? firstKey : 'key = src[e];';
    const srcBinding: Dispatch['bindings'][number] = p === 0 ? { input: 1 } : { scratch: KEYS[(p - 1) % 2] };
    dispatches.push({
      ...kernelPerGroup(
        `${srcDecl}\n${buffer(1, 'hist', 'u32', true)}\nvar<workgroup> h: array<atomic<u32>, ${BLOCK}>;`,
        blocks,
        BLOCK,
        `  atomicStore(&h[t], 0u);
  workgroupBarrier();
  let e = g * ${BLOCK}u + t;
  if (e < ${M}) {
    var key: u32;
    ${readKey}
    atomicAdd(&h[(key >> ${shift}) & ${mask}], 1u);
  }
  workgroupBarrier();
  hist[t * ${NB} + g] = atomicLoad(&h[t]);`,
        limits,
      ),
      bindings: [srcBinding, { scratch: HIST }],
      label: `${label} pass ${p}: histograms`,
    });
    dispatches.push({
      ...kernelPerGroup(
        `${buffer(0, 'hist', 'u32', true)}\n${buffer(1, 'totals', 'u32', true)}\nvar<workgroup> s: array<u32, ${BLOCK}>;`,
        1 << RADIX_BITS,
        BLOCK,
        // Workgroup g scans digit g's histogram over the blocks, BLOCK entries at a time with a running carry.
        `  var carry = 0u;
  for (var c = 0u; c < ${NB}; c = c + ${BLOCK}u) {
    let k = c + t;
    var v = 0u;
    if (k < ${NB}) { v = hist[g * ${NB} + k]; }
    s[t] = v;
    workgroupBarrier();
${scanInPlace('s')}
    if (k < ${NB}) { hist[g * ${NB} + k] = carry + s[t] - v; }
    carry = carry + s[${BLOCK - 1}];
    workgroupBarrier();
  }
  if (t == 0u) { totals[g] = carry; }`,
        limits,
      ),
      bindings: [{ scratch: HIST }, { scratch: TOTALS }],
      label: `${label} pass ${p}: scan`,
    });
    const valDecl = p === 0 ? '' : `\n${buffer(5, 'vals', 'u32')}`;
    const readVal = p === 0 ? 'val = e;' : 'val = vals[e];';
    dispatches.push({
      ...kernelPerGroup(
        `${srcDecl}
${buffer(1, 'hist', 'u32')}
${buffer(2, 'totals', 'u32')}
${buffer(3, 'keysOut', 'u32', true)}
${buffer(4, 'valsOut', 'u32', true)}${valDecl}
var<workgroup> start: array<u32, ${BLOCK}>;
var<workgroup> dg: array<u32, ${BLOCK}>;`,
        blocks,
        BLOCK,
        // Digit starts: exclusive scan of the totals (recomputed per workgroup: 256 entries).
        `  start[t] = totals[t];
  workgroupBarrier();
${scanInPlace('start')}
  let e = g * ${BLOCK}u + t;
  var key = 0u;
  var val = 0u;
  var digit = 0xffffffffu;
  if (e < ${M}) {
    ${readKey}
    ${readVal}
    digit = (key >> ${shift}) & ${mask};
  }
  dg[t] = digit;
  workgroupBarrier();
  if (e < ${M}) {
    var rank = 0u;
    for (var j = 0u; j < t; j = j + 1u) { rank = rank + select(0u, 1u, dg[j] == digit); }
    let dest = start[digit] - totals[digit] + hist[digit * ${NB} + g] + rank;
    keysOut[dest] = key;
    valsOut[dest] = val;
  }`,
        limits,
      ),
      bindings: [
        srcBinding,
        { scratch: HIST },
        { scratch: TOTALS },
        { scratch: KEYS[p % 2] },
        { scratch: VALS[p % 2] },
        ...(p === 0 ? [] : [{ scratch: VALS[(p - 1) % 2] }]),
      ],
      label: `${label} pass ${p}: scatter`,
    });
  }
  const last = (passes - 1) % 2;
  const sum = kernel1d(
    `${buffer(0, 'keys', 'u32')}\n${buffer(1, 'vals', 'u32')}\n${buffer(2, 'dy', 'f32')}\n${buffer(3, 'dx', 'f32', true)}
fn lowerBound(v: u32) -> u32 {
  var a = 0u;
  var b = ${M};
  while (a < b) {
    let mid = (a + b) / 2u;
    if (keys[mid] < v) { a = mid + 1u; } else { b = mid; }
  }
  return a;
}`,
    n * d,
    `  let col = i % ${u32Literal(d)};
  let row = i / ${u32Literal(d)};
  let hi = lowerBound(row + 1u);
  var acc = 0.0;
  for (var j = lowerBound(row); j < hi; j = j + 1u) { acc = acc + dy[vals[j] * ${u32Literal(d)} + col]; }
  dx[i] = acc;`,
    limits,
  );
  dispatches.push({
    ...sum,
    bindings: [{ scratch: KEYS[last] }, { scratch: VALS[last] }, { input: 0 }, { output: true }],
    label: `${label}: row sums`,
  });
  const pairBytes = m * 4;
  return { dispatches, scratch: [pairBytes, pairBytes, pairBytes, pairBytes, (1 << RADIX_BITS) * blocks * 4, (1 << RADIX_BITS) * 4] };
}

function lowerGatherRowsGrad(node: KernelNode<'gatherRowsGrad'>, limits: KernelLimits): Lowered {
  const [m, d] = node.inputs[0].shape;
  const [n] = node.output.shape;
  const label = `gatherRowsGrad ${m} rows -> [${n},${d}]`;
  if (m <= DIRECT_MAX) return { dispatches: [directGrad(m, n, d, limits, label)] };
  return sortedGrad(m, n, d, limits, label);
}

export const lowerings: Lowerings = { gatherRows: lowerGatherRows, gatherRowsGrad: lowerGatherRowsGrad, oneHot: lowerOneHot };
