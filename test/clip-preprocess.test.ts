// CLIP's image preprocessing: Pillow-exact bicubic resize of the short side, torchvision's centre crop, and the
// normalisation constants. Expected bytes were produced with Pillow 9.4.0 (Debian python3-pil) running exactly
// torchvision 0.14's Resize(size) + CenterCrop(size) on PIL images:
//   im.resize((new_w, new_h), Image.BICUBIC).crop((left, top, left + size, top + size)),
//   new short side = size, long = int(size * long / short), top/left = int(round((side - size) / 2.0)).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLIP_MEAN, CLIP_STD } from '../src/models/clip.ts';
import { centerCrop, clipPixels, resizeBicubicPil, type Rgb8 } from '../src/models/clip-preprocess.ts';
import { asFloat32 } from '../src/formats/host-tensor.ts';
import { reference } from './helpers.ts';

/** The test image: ((x * 37 + y * 91 + c * 53) ^ (x * y)) % 256 (same formula as the Pillow script). */
function pattern(w: number, h: number): Rgb8 {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) data[(y * w + x) * 3 + c] = ((x * 37 + y * 91 + c * 53) ^ (x * y)) % 256;
  return { data, width: w, height: h };
}

const PILLOW: { w: number; h: number; size: number; out: string }[] = [
  // 37x53 -> 16x23 (downscale: antialiased kernel) -> crop 16x16 at top 4 (round(3.5) = 4, half to even)
  { w: 37, h: 53, size: 16, out: 'lXSDi4V+doeKeod6iXl6iXdvkGtekV5deHJ2a3t5foV+fH6RhJiVj5+Moo9Zf1pjeH2PjYGIen6FeXd7hoR7c1iOdHSRgn+GiIdwco2RkaeMkJOHiI9yh3KFhJCcjqBpi45ydoiOeIZ9eWmAmYiPeX6DgYWHhnF2n5RqkYJqe4eBi3iBiqGLn5VsjHqAkHSChHd0hIN/h3R0ZImSanSMgod/eHJ2YEiMdml1j4KGj39VnIVTiXV/fH6aiZWMnZt+dYmCfXl3b3iNZ4N1fYmJeYB0nZN9en6Ff3+NYGWHeHGOko5qoIRMk5N7goh2RXSegYV9gZGKeYWDjJZygnlujoaDhYR6gXtxp4xqfY6FdnF6cVNmeImGgKCNhJqIbnuBiXd9gHF+fXyVgX1/gHKLj3yDfI2JVWGVe3F4lIZwgJOLkYd5nn5EjWtjUneQZ0mDenGAfIOJh3aRi3aHcYZ8eniGkGFpe5B8a2qPgGJmdI6Fg2KJd32BiJaMaoiEoGhXf4V0gn6Bj3F7eIZ1dIhxeoOZin2Nf3J4dZF+e4+Gk4x/e4CJZ4GSZGCER3abeYSjfHVth3iKgGmOi456k4p2XmmKc3STgW+Hj3uCbaGdg3Zsj6mNoJ2Bb6GSgYV8q4lwen9/h4GFnHqJlH6VcHKKmpVedI1thI1rdJuNg297mVlui3iCjmNveYmPVXKjRHmjeoBwioGEeXmDfXRzlIWLfXyNg4tsinJ1dYBul5NclpR1mYtnioiJpHt9so9kZ5KHgHODiG1+eX2Nc46NjG11jnyIgJiMjXiJjH+CiJqOhIWHfoiDhJmmf3+Uhol+cJetdnaOj5V3gXl7f218oF5tcWqXYHF+a1+TdpSUdH58j3x0ioWbjHFim25ko3hWkF1xg3+MaYl8cIeJen6Gd2uOam9/iYZ8hnB6d3tvdHJvgI6SkpKAlop0nJB3domZXHepjItzfoiTfICCbHyFeoN0d4CNf4t9iHdzj4R6hYWKYo+WaYSAfY6Fdo5/dYaAiYlo' },
  // 9x6 -> 18x12 (upscale) -> crop 12x12 at left 3
  { w: 9, h: 6, size: 12, out: 'JluUOW61S4DNXpLfcKr3gsr/munduv9L2c0R9zswvQFJKyBbP3iiVYuUaZ6Ye7KujrbGo6ndprG8mdFToqwswkJJnBxiMzl5dLa/kcdOqN4mufVGztFg6mJzwDx3U15lLWZnUVJ+WFSZQ264m5yqjbA3kMgNouEruLtG00deqB91N0KMD2CjMni5UJC/aqi1sidiREFTH1lTM3FjSXN+W16jXGO8S4PHUJ7bbbT1icvQpuVsmQ9bKyp8BkOUHVyhM3OkRYqbWqOgdb+wkcTErrLas7WynNBLUFKUQmuySIXOX6Tmd7q4kMpFpN0htPZF0dFd93Fnzk5kS2pTSpK+bKqriK+xn6TOoqOik7Avk8ELodcxvLJI4FFRtjFgMlN4h8zXquZoxsE+3FxatC9iTjxYJk1ePWRzVGaGalOXa1+oU4u5rq+9o8tPqagnwENFmRdkMyWHEDahL02zRmGvVXOXapCRiLmevUByXGBhN2hpUVeKVFakQWW5S3jRcY3rjJ7Cm6xVscAkzdwuxAxPOi5pAkqIHWCqNHPCR4PRZ5fokav/rbvKvMc20tcA7uwA' },
];

test('resize + centre crop match Pillow/torchvision byte for byte', () => {
  for (const c of PILLOW) {
    const got = clipPixels(pattern(c.w, c.h), c.size);
    const exp = Buffer.from(c.out, 'base64');
    assert.equal(got.length, exp.length);
    const bytes = Uint8Array.from(got, (v) => Math.round(v * 255));
    assert.deepEqual(Buffer.from(bytes), exp, `${c.w}x${c.h} -> ${c.size}`);
    assert.ok(got.every((v, i) => v === Math.fround(exp[i] / 255)), 'ToTensor: float32(byte) / 255');
  }
});

test('resize is the identity at the same size; centre crop offsets use Python rounding', () => {
  const img = pattern(5, 4);
  assert.deepEqual(resizeBicubicPil(img, 5, 4), img);
  // (8 - 3) / 2 = 2.5 -> round half to even = 2; (7 - 4) / 2 = 1.5 -> 2
  const wide = pattern(8, 7);
  const crop = centerCrop(wide, 3);
  const top = 2;
  const left = 2;
  assert.deepEqual(Array.from(crop.data.subarray(0, 3)), Array.from(wide.data.subarray((top * 8 + left) * 3, (top * 8 + left) * 3 + 3)));
  const c2 = centerCrop(pattern(7, 7), 4); // (7 - 4) / 2 = 1.5 -> 2
  assert.deepEqual(Array.from(c2.data.subarray(0, 3)), Array.from(pattern(7, 7).data.subarray((2 * 7 + 2) * 3, (2 * 7 + 2) * 3 + 3)));
});

test('normalisation constants are those of clip/clip.py', (t) => {
  const ref = reference(t, 'clip_reference.safetensors');
  if (!ref) return;
  assert.deepEqual(Array.from(Float32Array.from(CLIP_MEAN)), Array.from(asFloat32(ref.get('clip_mean')!)));
  assert.deepEqual(Array.from(Float32Array.from(CLIP_STD)), Array.from(asFloat32(ref.get('clip_std')!)));
});
