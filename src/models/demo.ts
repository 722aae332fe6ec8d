// The built-in models of `vqclip demo`: a small VQGAN and a small CLIP with the real architectures, made in code
// from a fixed seed, so the whole pipeline runs on a fresh machine with no downloads. They are NOT trained: the
// optimisation really lowers the CLIP loss, but the pictures show what random networks draw, not the prompt.
import type { FirstStageConfig } from '../formats/taming-config.ts';
import type { Ops } from '../engine/ops.ts';
import { clipWeights } from './clip-load.ts';
import type { ClipConfig, ClipWeights } from './clip.ts';
import { SyntheticWeights } from './synthetic.ts';
import { vqganWeights, type VqganWeights } from './vqgan.ts';

export const DEMO_NAME = 'vqclip-demo-v1';
const DEMO_SEED = 20211;

/** A 4x-downsampling VQGAN (taming's Encoder/Decoder/VectorQuantizer2), 256 codes of 16 dims. */
export const DEMO_VQGAN: FirstStageConfig = {
  target: 'taming.models.vqgan.VQModel',
  kind: 'vq',
  embedDim: 16,
  nEmbed: 256,
  ddconfig: { doubleZ: false, zChannels: 16, resolution: 64, inChannels: 3, outCh: 3, ch: 32, chMult: [1, 2, 2], numResBlocks: 1, attnResolutions: [16], dropout: 0 },
  remap: null,
  saneIndexShape: false,
};

/** A ViT CLIP at 32x32 pixels (4x4 patches of 8) with a byte-level text side (vocabulary 256 bytes + 2 specials). */
export const DEMO_CLIP: ClipConfig = {
  embedDim: 32,
  vision: { width: 64, layers: 2, heads: 1, patchSize: 8, gridSize: 4 },
  text: { width: 64, layers: 2, heads: 1, contextLength: 32, vocabSize: 258 },
  activation: 'quickGelu',
  layerNormEps: 1e-5,
};

export function demoVqgan<T>(o: Ops<T>): VqganWeights<T> {
  return vqganWeights(o, new SyntheticWeights(DEMO_SEED, undefined, '', `<${DEMO_NAME} VQGAN>`), DEMO_VQGAN);
}

export function demoClip<T>(o: Ops<T>): ClipWeights<T> {
  return clipWeights(o, new SyntheticWeights(DEMO_SEED + 1, undefined, '', `<${DEMO_NAME} CLIP>`), DEMO_CLIP);
}

/** Byte-level tokenizer of the demo CLIP: <start> + UTF-8 bytes of the lower-cased text + <end>, zero-padded. */
export class ByteTokenizer {
  readonly sot = 256;
  readonly eot = 257;
  constructor(readonly contextLength = DEMO_CLIP.text.contextLength) {}

  tokenize(texts: string[], opts: { truncate?: boolean } = {}): { ids: Int32Array; shape: [number, number] } {
    const ctx = this.contextLength;
    const ids = new Int32Array(texts.length * ctx);
    texts.forEach((text, i) => {
      let t = [this.sot, ...Buffer.from(text.toLowerCase().trim(), 'utf8'), this.eot];
      if (t.length > ctx) {
        if (!opts.truncate) throw new Error(`text is longer than ${ctx} tokens`);
        t = [...t.slice(0, ctx - 1), this.eot];
      }
      ids.set(t, i * ctx);
    });
    return { ids, shape: [texts.length, ctx] };
  }
}
