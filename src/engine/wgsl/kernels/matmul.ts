// matmul: batched over the leading axes with broadcasting (as tf.matMul), optional transposes, on the shared GEMM
// skeleton (gemm.ts: a 64x64-tile workgroup-memory kernel, or a one-thread-per-output kernel for tiny/skinny shapes).
import type { Dispatch, HalfInputs, KernelLimits, KernelNode, Lowerings } from '../kernel.ts';
import { sizeOf } from '../../graph/ir.ts';
import { buffer, inputAt, inputBuffer } from './common.ts';
import { gemmDispatch } from './gemm.ts';

/**
 * WGSL expression (in `bz`, the flat index over the output's batch axes) of the element offset of one operand's
 * matrix: the operand's batch axes are aligned at the end with the output's, and axes of size 1 (or missing) are
 * broadcast (contribute nothing).
 */
export function batchOffset(outBatch: number[], inBatch: number[], matrixSize: number): string {
  const terms: string[] = [];
  let outStride = 1;
  let inStride = matrixSize;
  for (let d = 1; d <= outBatch.length; d++) {
    const size = outBatch[outBatch.length - d];
    const inSize = d <= inBatch.length ? inBatch[inBatch.length - d] : 1;
    if (inSize !== 1 && size > 1) {
      const coord = outStride === 1 ? `bz` : `(bz / ${outStride}u)`;
      terms.push(`(${coord} % ${size}u) * ${inStride}u`);
    }
    outStride *= size;
    inStride *= inSize;
  }
  return terms.length ? terms.join(' + ') : '0u';
}

/**
 * Where a matmul reads and writes: `decls` declares the buffers (bindings in the order of `bindings`), `a` and `b` are
 * the operands' buffer names, and `store` is WGSL statements that write `v`, the output element at the flat index
 * `i` (a fused elementwise epilogue goes there: kernels/fused.ts). `aAt`/`bAt` name WGSL functions (in `decls`) from
 * an operand's row-major element index to its place in the buffer, for an operand that is a transpose of the buffer.
 * An operand whose `node.inputs[i].storage` is 'f16' must be declared by common.ts's inputBuffer (it is read by inputAt).
 */
export interface MatmulIo {
  decls: string;
  a: string;
  b: string;
  store: string;
  bindings: Dispatch['bindings'];
  aAt?: string;
  bAt?: string;
}

export function matmulDispatch(node: KernelNode<'matmul'>, io: MatmulIo, limits: KernelLimits, label?: string): Dispatch {
  const { transposeA, transposeB } = node.attrs;
  const [a, b] = node.inputs.map((t) => t.shape);
  const out = node.output.shape;
  const M = out[out.length - 2];
  const N = out[out.length - 1];
  const K = transposeA ? a[a.length - 2] : a[a.length - 1];
  const outBatch = out.slice(0, -2);
  const at = (f: string | undefined, index: string) => (f ? `${f}(${index})` : index);
  const prelude = /* wgsl */ `
${io.decls}
fn loadA(bz: u32, m: u32, k: u32) -> f32 {
  return ${inputAt(io.a, at(io.aAt, `${batchOffset(outBatch, a.slice(0, -2), M * K)} + ${transposeA ? `k * ${M}u + m` : `m * ${K}u + k`}`), node.inputs[0])};
}
fn loadB(bz: u32, k: u32, n: u32) -> f32 {
  return ${inputAt(io.b, at(io.bAt, `${batchOffset(outBatch, b.slice(0, -2), K * N)} + ${transposeB ? `n * ${K}u + k` : `k * ${N}u + n`}`), node.inputs[1])};
}
fn store(bz: u32, m: u32, n: u32, v: f32) {
  let i = (bz * ${M}u + m) * ${N}u + n;
${io.store}
}
`;
  return gemmDispatch(
    {
      M,
      N,
      K,
      batch: sizeOf(outBatch),
      prelude,
      aFast: transposeA ? 'm' : 'k',
      bFast: transposeB ? 'k' : 'n',
      bindings: io.bindings,
      label: label ?? `matmul${transposeA ? ' tA' : ''}${transposeB ? ' tB' : ''} [${a}]x[${b}]->[${out}]`,
    },
    limits,
  );
}

const plainIo = (node: KernelNode<'matmul'>): MatmulIo => ({
  decls: [inputBuffer(0, 'mmA', node.inputs[0]), inputBuffer(1, 'mmB', node.inputs[1]), buffer(2, 'mmC', 'f32', true)].join('\n'),
  a: 'mmA',
  b: 'mmB',
  store: '  mmC[i] = v;',
  bindings: [{ input: 0 }, { input: 1 }, { output: true }],
});

export const lowerings: Lowerings = {
  matmul: (node, limits) => ({ dispatches: [matmulDispatch(node, plainIo(node), limits)] }),
};

/** Either operand may be stored as f16 (the planner picks constants: the weight of a linear layer). */
export const halfInputs: HalfInputs = { matmul: () => [0, 1] };
