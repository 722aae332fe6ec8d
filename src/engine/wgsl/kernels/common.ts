// WGSL source helpers shared by the kernel modules: bindings, 1-D launches, and index arithmetic over baked shapes.
// Every index is u32 (tensors here stay below 2^32 elements).
import type { DType } from '../../graph/ir.ts';
import { grid1d, type KernelLimits, type TensorInfo } from '../kernel.ts';

/** Invocations per workgroup of plain elementwise launches (the default limit). */
export const WG = 256;

export const wgslType = (dtype: DType): 'f32' | 'i32' => (dtype === 'i32' ? 'i32' : 'f32');

export const u32Literal = (n: number): string => {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`${n} is not a u32`);
  return `${n}u`;
};

/** A storage buffer declaration at binding `i` (inputs read-only, outputs and scratch read_write). */
export function buffer(i: number, name: string, type: string, write = false): string {
  return `@group(0) @binding(${i}) var<storage, ${write ? 'read_write' : 'read'}> ${name}: array<${type}>;`;
}

/**
 * The read-only buffer `name` at binding `i` for input `t`: `array<f32>`/`array<i32>` by dtype, or for f16 storage
 * (kernel.ts's header) `array<u32>` of packed halves plus a reader function; read it with inputAt.
 */
export function inputBuffer(i: number, name: string, t: TensorInfo): string {
  if (t.storage !== 'f16') return buffer(i, name, wgslType(t.dtype));
  return `${buffer(i, name, 'u32')}
fn ${name}_h(i: u32) -> f32 {
  let p = unpack2x16float(${name}[i >> 1u]);
  return select(p.x, p.y, (i & 1u) == 1u);
}`;
}

/** WGSL expression of element `index` of the input buffer `name` declared by inputBuffer for `t`. */
export const inputAt = (name: string, index: string, t: TensorInfo): string => (t.storage === 'f16' ? `${name}_h(${index})` : `${name}[${index}]`);

export const strides = (shape: readonly number[]): number[] => {
  const s = new Array<number>(shape.length).fill(1);
  for (let k = shape.length - 2; k >= 0; k--) s[k] = s[k + 1] * shape[k + 1];
  return s;
};

/**
 * A complete module for a 1-D launch of `count` invocations: `body` runs with `i: u32` < count. The launch is spread
 * over x and y (grid1d) so that large tensors stay inside the per-dimension workgroup limit.
 */
export function kernel1d(decls: string, count: number, body: string, limits: KernelLimits): { code: string; workgroups: [number, number, number] } {
  const code = `${decls}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * (nwg.x * ${WG}u);
  if (i >= ${u32Literal(count)}) { return; }
${body}
}
`;
  return { code, workgroups: grid1d(count, WG, limits) };
}

/**
 * A module with one workgroup of `size` invocations per item (a row to reduce, a block to sort): `body` runs with
 * `g: u32` (the item, uniform across the workgroup) and `t: u32` (the local invocation). Items are spread over x and y.
 * Workgroups past the last item return at once, which keeps barriers in uniform control flow.
 */
export function kernelPerGroup(
  decls: string,
  items: number,
  size: number,
  body: string,
  limits: KernelLimits,
): { code: string; workgroups: [number, number, number] } {
  const code = `${decls}
@compute @workgroup_size(${size})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32, @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x;
  if (g >= ${u32Literal(items)}) { return; }
${body}
}
`;
  return { code, workgroups: grid1d(items, 1, limits) };
}

/**
 * WGSL statements that split the flat row-major index `idx` over `shape` and define, for each operand, `let name =`
 * the sum of coordinate * stride (strides given per dimension of `shape`; 0 on broadcast dimensions). Dimensions of
 * size 1 contribute nothing and are skipped. `tag` keeps the temporaries of two uses in one scope apart.
 */
export function stridedOffsets(
  idx: string,
  shape: readonly number[],
  operands: { name: string; strides: readonly number[] }[],
  tag = '',
): string {
  const dims = shape.map((_, k) => k).filter((k) => shape[k] !== 1);
  const lines: string[] = [];
  const terms: string[][] = operands.map(() => []);
  if (dims.length > 0) lines.push(`  var r${tag}_ = ${idx};`);
  for (let j = dims.length - 1; j >= 0; j--) {
    const k = dims[j];
    const c = `c${k}${tag}_`;
    const r = `r${tag}_`;
    if (j === 0) lines.push(`  let ${c} = ${r};`);
    else lines.push(`  let ${c} = ${r} % ${u32Literal(shape[k])}; ${r} = ${r} / ${u32Literal(shape[k])};`);
    operands.forEach((o, n) => {
      if (o.strides[k] !== 0) terms[n].push(o.strides[k] === 1 ? c : `${c} * ${u32Literal(o.strides[k])}`);
    });
  }
  operands.forEach((o, n) => lines.push(`  let ${o.name} = ${terms[n].length ? terms[n].join(' + ') : '0u'};`));
  return lines.join('\n');
}

/** Flattened dimension sizes in WGSL-friendly form: the product of `shape[from..to)`. */
export const prod = (shape: readonly number[], from = 0, to = shape.length): number => {
  let p = 1;
  for (let k = from; k < to; k++) p *= shape[k];
  return p;
};
