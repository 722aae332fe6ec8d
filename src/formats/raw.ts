// Decoding raw little-endian storage bytes (torch storages, safetensors payloads) into host tensors.
import { bfloat16ToFloat32, float16ToFloat32, type HostDType, type HostData, type HostTensor } from './host-tensor.ts';

/** Storage element types as files name them, with their byte size and the host dtype they become. */
export interface RawDType {
  name: string;
  bytes: number;
  host: HostDType;
}

export const RAW_DTYPES: Record<string, RawDType> = {
  float32: { name: 'float32', bytes: 4, host: 'float32' },
  float64: { name: 'float64', bytes: 8, host: 'float32' },
  float16: { name: 'float16', bytes: 2, host: 'float32' },
  bfloat16: { name: 'bfloat16', bytes: 2, host: 'float32' },
  int64: { name: 'int64', bytes: 8, host: 'int64' },
  int32: { name: 'int32', bytes: 4, host: 'int32' },
  int16: { name: 'int16', bytes: 2, host: 'int16' },
  int8: { name: 'int8', bytes: 1, host: 'int8' },
  uint8: { name: 'uint8', bytes: 1, host: 'uint8' },
  bool: { name: 'bool', bytes: 1, host: 'bool' },
};

/** Copies `count` elements of `dtype` from little-endian `bytes` (any alignment) into a fresh host array. */
export function decodeElements(bytes: Uint8Array, dtype: RawDType, count: number): HostData {
  const need = count * dtype.bytes;
  if (bytes.length < need) throw new Error(`need ${need} bytes, have ${bytes.length}`);
  // A buffer that holds exactly these bytes (what the readers allocate per tensor) is used in place; anything else
  // (a slice of a larger buffer, possibly unaligned for the element type) is copied first.
  let buf: ArrayBuffer;
  if (bytes.byteOffset === 0 && bytes.buffer.byteLength === need && bytes.buffer instanceof ArrayBuffer) buf = bytes.buffer;
  else {
    const aligned = new Uint8Array(need);
    aligned.set(bytes.subarray(0, need));
    buf = aligned.buffer;
  }
  switch (dtype.name) {
    case 'float32':
      return new Float32Array(buf);
    case 'float64':
      return Float32Array.from(new Float64Array(buf));
    case 'float16':
      return float16ToFloat32(new Uint16Array(buf));
    case 'bfloat16':
      return bfloat16ToFloat32(new Uint16Array(buf));
    case 'int64':
      return new BigInt64Array(buf);
    case 'int32':
      return new Int32Array(buf);
    case 'int16':
      return new Int16Array(buf);
    case 'int8':
      return new Int8Array(buf);
    case 'uint8':
    case 'bool':
      return new Uint8Array(buf);
  }
  throw new Error(`unsupported dtype ${dtype.name}`);
}

/**
 * Gathers a strided view (shape, strides in elements, offset in elements) out of a contiguous element array.
 * Torch checkpoints may store views (e.g. a slice of a shared storage, or a transposed tensor).
 */
export function gatherStrided(src: HostData, shape: number[], strides: number[], offset: number): HostData {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new (src.constructor as { new (n: number): HostData })(n);
  if (n === 0) return out;
  const rank = shape.length;
  const idx = new Array(rank).fill(0);
  let pos = offset;
  for (let i = 0; i < n; i++) {
    (out as unknown as unknown[])[i] = (src as unknown as unknown[])[pos];
    for (let d = rank - 1; d >= 0; d--) {
      idx[d]++;
      pos += strides[d];
      if (idx[d] < shape[d]) break;
      pos -= strides[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

export function contiguousStrides(shape: number[]): number[] {
  const s = new Array(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

export function hostTensor(dtype: RawDType, shape: number[], data: HostData): HostTensor {
  return { dtype: dtype.host, shape, data };
}
