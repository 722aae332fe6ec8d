// CLIP's image preprocessing (clip/clip.py _transform): torchvision Resize(n) of the short side with PIL's bicubic
// filter, CenterCrop(n), ToTensor (/255), then Normalize(CLIP_MEAN, CLIP_STD) - the last step lives in the model
// graph (clip.ts normalizePixels) so that the optimizer's path and this one share it.
//
// The resize reproduces Pillow's 8-bit resampling (libImaging/Resample.c) exactly: a separable convolution with the
// bicubic kernel (a = -0.5) widened by the scale factor when shrinking (antialiasing), coefficients in 22-bit fixed
// point, horizontal pass first with an 8-bit intermediate image. Alpha is dropped before resizing (exact for opaque
// images; PIL would resize premultiplied RGBA first).
import { readImage } from '../io/image.ts';

/** 8-bit RGB, row-major HWC. */
export interface Rgb8 {
  data: Uint8Array;
  width: number;
  height: number;
}

const PRECISION_BITS = 32 - 8 - 2;

function bicubic(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: per output pixel, first input index and int weights. */
function coefficients(inSize: number, outSize: number): { start: Int32Array; weights: Int32Array[] } {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const start = new Int32Array(outSize);
  const weights: Int32Array[] = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    // C's (int) truncates toward zero; both values are >= -0.5 + something, so trunc is what Pillow computes
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    const ik = new Int32Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? k[x] / ww : k[x];
      ik[x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    start[xx] = xmin;
    weights.push(ik);
  }
  return { start, weights };
}

function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Image.resize((width, height), Image.BICUBIC) on an 8-bit RGB image. */
export function resizeBicubicPil(img: Rgb8, width: number, height: number): Rgb8 {
  let cur = img;
  if (width !== img.width) {
    const { start, weights } = coefficients(img.width, width);
    const out = new Uint8Array(width * img.height * 3);
    for (let y = 0; y < img.height; y++) {
      const row = y * img.width * 3;
      for (let x = 0; x < width; x++) {
        const k = weights[x];
        const s = start[x];
        for (let c = 0; c < 3; c++) {
          // the accumulator stays below 2^31 in magnitude (255 * 2^22 * sum|k| < 2^31), so int32 math is exact
          let acc = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) acc = (acc + cur.data[row + (s + i) * 3 + c] * k[i]) | 0;
          out[(y * width + x) * 3 + c] = clip8(acc);
        }
      }
    }
    cur = { data: out, width, height: img.height };
  }
  if (height !== cur.height) {
    const { start, weights } = coefficients(cur.height, height);
    const out = new Uint8Array(width * height * 3);
    for (let y = 0; y < height; y++) {
      const k = weights[y];
      const s = start[y];
      for (let x = 0; x < width; x++) {
        for (let c = 0; c < 3; c++) {
          let acc = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) acc = (acc + cur.data[((s + i) * width + x) * 3 + c] * k[i]) | 0;
          out[(y * width + x) * 3 + c] = clip8(acc);
        }
      }
    }
    cur = { data: out, width, height };
  }
  return cur;
}

/** Python's round(): halves go to the even neighbour (torchvision's CenterCrop offsets use it). */
function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** torchvision Resize(size) on a PIL image: the short side becomes `size`, the long side int(size * long / short). */
export function resizeShortSide(img: Rgb8, size: number): Rgb8 {
  const { width: w, height: h } = img;
  if (Math.min(w, h) === size) return img;
  const [nw, nh] = w <= h ? [size, Math.trunc((size * h) / w)] : [Math.trunc((size * w) / h), size];
  return resizeBicubicPil(img, nw, nh);
}

/** torchvision CenterCrop(size) (the image is at least `size` on both sides here). */
export function centerCrop(img: Rgb8, size: number): Rgb8 {
  const top = pyRound((img.height - size) / 2);
  const left = pyRound((img.width - size) / 2);
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    const src = ((top + y) * img.width + left) * 3;
    out.set(img.data.subarray(src, src + size * 3), y * size * 3);
  }
  return { data: out, width: size, height: size };
}

/** Float RGB in [0, 1] (as io/image.ts readImage returns it) -> 8-bit, as the original scripts' PIL images are. */
export function toRgb8(img: { data: Float32Array; width: number; height: number }): Rgb8 {
  const data = new Uint8Array(img.data.length);
  for (let i = 0; i < data.length; i++) data[i] = Math.min(255, Math.max(0, Math.round(img.data[i] * 255)));
  return { data, width: img.width, height: img.height };
}

/** Resize + center crop + ToTensor: NHWC [1, size, size, 3] pixels in [0, 1], ready for encodeImagePixels. */
export function clipPixels(img: Rgb8, size: number): Float32Array {
  const crop = centerCrop(resizeShortSide(img, size), size);
  return Float32Array.from(crop.data, (v) => v / 255);
}

/** Reads an image file and prepares it for CLIP at `size` (the model's input resolution). */
export async function readClipImage(file: string, size: number): Promise<Float32Array> {
  return clipPixels(toRgb8(await readImage(file)), size);
}
