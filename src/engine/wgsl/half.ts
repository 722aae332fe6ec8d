// Host side of f16 weight storage (kernel.ts's header: the layout; kernels/common.ts: the WGSL reader): float32 data
// rounded to IEEE halves (round to nearest, ties to even; overflow to infinity; NaN stays NaN) and packed two per
// 32-bit word, element 2j in the low half of word j. Node 20 has no Math.f16round; the rounding is the one the
// safetensors writer uses (formats/host-tensor.ts float32ToFloat16, tested there and in test/wgsl-half.test.ts).
import { float16ToFloat32, float32ToFloat16 } from '../../formats/host-tensor.ts';

/** `data` as packed halves: ceil(n / 2) words, a last odd element's partner 0. */
export function packHalves(data: Float32Array): Uint32Array {
  const bits = float32ToFloat16(data);
  const words = new Uint32Array(Math.max(1, Math.ceil(data.length / 2)));
  for (let j = 0, i = 0; i + 1 < bits.length; j++, i += 2) words[j] = bits[i] | (bits[i + 1] << 16);
  if (bits.length % 2 === 1) words[words.length - 1] = bits[bits.length - 1];
  return words;
}

/** The values a kernel reads from packHalves(data): data rounded to f16, as float32 (for references in tests). */
export function roundToHalf(data: Float32Array): Float32Array {
  return float16ToFloat32(float32ToFloat16(data));
}
