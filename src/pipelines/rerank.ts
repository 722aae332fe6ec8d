// Reranking sampled images by their CLIP similarity to a text prompt (the "generate many, keep the best" recipe
// used with taming's samplers and DALL-E): each image goes through CLIP's own preprocessing as an 8-bit picture
// (what the PNG on disk holds: resize of the short side, centre crop, normalize), the prompt through the tokenizer,
// and the score is 100 x the cosine similarity of the two embeddings (CLIP's logit scale in the released models).
import * as tf from '@tensorflow/tfjs';
import type { Ops } from '../engine/ops.ts';
import type { RgbImage } from '../io/image.ts';
import { cosineSimilarity, encodeImagePixels, encodeText, inputResolution, type ClipConfig, type ClipWeights } from '../models/clip.ts';
import { clipPixels, toRgb8 } from '../models/clip-preprocess.ts';
import type { ClipTokenizer } from '../models/clip-tokenizer.ts';
import { UserError } from '../cli/errors.ts';

export interface RerankClip<T> {
  config: ClipConfig;
  weights: ClipWeights<T>;
  tokenizer: ClipTokenizer;
}

export interface Ranked {
  /** Index into the images given. */
  index: number;
  /** 100 x cosine similarity to the prompt. */
  score: number;
}

/** The images ranked by CLIP score for `prompt`, best first (ties keep their order). */
export async function rerank(
  o: Ops<tf.Tensor>,
  images: RgbImage[],
  prompt: string,
  clip: RerankClip<tf.Tensor>,
  opts: { batchSize?: number } = {},
): Promise<Ranked[]> {
  if (!prompt.trim()) throw new UserError('the rerank prompt is empty', 'pass --rerank "a text describing the image you want"');
  const res = inputResolution(clip.config);
  const tokens = clip.tokenizer.tokenize([prompt], { contextLength: clip.config.text.contextLength, truncate: true });
  const text = tf.tidy(() => encodeText(o, clip.weights, clip.config, tokens));
  const batch = Math.max(1, opts.batchSize ?? 8);
  const scores: number[] = [];
  try {
    for (let first = 0; first < images.length; first += batch) {
      const chunk = images.slice(first, first + batch);
      const pixels = new Float32Array(chunk.length * res * res * 3);
      chunk.forEach((img, i) => pixels.set(clipPixels(toRgb8(img), res), i * res * res * 3));
      const sim = tf.tidy(() => cosineSimilarity(o, encodeImagePixels(o, clip.weights, clip.config, o.constant(pixels, [chunk.length, res, res, 3])), text));
      const s = await o.read(sim);
      sim.dispose();
      for (const v of s) scores.push(100 * v);
    }
  } finally {
    text.dispose();
  }
  return scores.map((score, index) => ({ index, score })).sort((a, b) => b.score - a.score || a.index - b.index);
}
