// Named weights for a model: a view over a checkpoint's state dict (lazy torch tensors or host tensors) that checks
// shapes and names the key, the file and both shapes when something does not match, plus the layout conversions
// from PyTorch's conventions to ops.ts's (conv OIHW -> HWIO, linear [out,in] -> [in,out]).
import { FormatError, asFloat32, numel, type HostTensor } from '../formats/host-tensor.ts';
import { LazyTensor } from '../formats/torch.ts';

export type TensorSource = Map<string, LazyTensor | HostTensor>;

export class WeightMap {
  constructor(
    readonly file: string,
    private readonly tensors: TensorSource,
    private readonly prefix = '',
  ) {}

  /** The same weights seen under a key prefix, e.g. `first_stage_model.` inside a transformer checkpoint. */
  sub(prefix: string): WeightMap {
    return new WeightMap(this.file, this.tensors, this.prefix + prefix);
  }

  has(key: string): boolean {
    return this.tensors.has(this.prefix + key);
  }

  keys(): string[] {
    const out: string[] = [];
    for (const k of this.tensors.keys()) if (k.startsWith(this.prefix)) out.push(k.slice(this.prefix.length));
    return out;
  }

  shapeOf(key: string): number[] {
    const t = this.tensors.get(this.prefix + key);
    if (!t) throw this.missing(key);
    return [...t.shape];
  }

  /** Reads one tensor; `shape`, when given, must match exactly (use -1 for "any"). */
  get(key: string, shape?: number[]): HostTensor {
    const full = this.prefix + key;
    const t = this.tensors.get(full);
    if (!t) throw this.missing(key);
    if (shape) {
      const ok = shape.length === t.shape.length && shape.every((d, i) => d < 0 || d === t.shape[i]);
      if (!ok) {
        throw new FormatError(
          this.file,
          `weight "${full}" has shape [${t.shape}] but the config implies [${shape.map((d) => (d < 0 ? '*' : d))}]`,
          'the config (.yaml) does not match this checkpoint; use the config that was published with it',
        );
      }
    }
    return t instanceof LazyTensor ? t.read() : t;
  }

  /** A float32 tensor's values. */
  floats(key: string, shape?: number[]): Float32Array {
    return asFloat32(this.get(key, shape));
  }

  private missing(key: string): FormatError {
    return new FormatError(
      this.file,
      `weight "${this.prefix + key}" is missing`,
      'the checkpoint does not hold this model, or the config does not match it',
    );
  }
}

/** PyTorch conv weight [out, in, kh, kw] -> HWIO [kh, kw, in, out]. */
export function convToHWIO(t: HostTensor): { data: Float32Array; shape: number[] } {
  const [o, i, kh, kw] = t.shape;
  const src = asFloat32(t);
  const out = new Float32Array(numel(t.shape));
  for (let a = 0; a < o; a++)
    for (let b = 0; b < i; b++)
      for (let y = 0; y < kh; y++)
        for (let x = 0; x < kw; x++) out[((y * kw + x) * i + b) * o + a] = src[((a * i + b) * kh + y) * kw + x];
  return { data: out, shape: [kh, kw, i, o] };
}

/** PyTorch linear weight [out, in] -> [in, out]. */
export function linearToInOut(t: HostTensor): { data: Float32Array; shape: number[] } {
  const [o, i] = t.shape;
  const src = asFloat32(t);
  const out = new Float32Array(o * i);
  for (let a = 0; a < o; a++) for (let b = 0; b < i; b++) out[b * o + a] = src[a * i + b];
  return { data: out, shape: [i, o] };
}
