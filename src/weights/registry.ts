// The published checkpoints this app loads, the exact file names it looks for in the weights folder, and where
// users get them. Sources: taming-transformers README ("Overview of pretrained models"), nerdyrodent/VQGAN-CLIP
// download_models.sh (file names and direct heibox links), openai/CLIP clip/clip.py `_MODELS` (URLs whose
// parent folder is the file's SHA-256, which clip.load verifies), Hugging Face model pages. See weights/README.md.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../cli/errors.ts';
import { convertedSibling } from '../formats/convert.ts';

export type WeightKind = 'vqgan' | 'gumbel' | 'transformer' | 'clip' | 'clip-hf' | 'vocab';

export interface WeightFile {
  /** What to call it inside the weights folder (one of `alternatives` also counts). */
  name: string;
  what: string;
  /** Direct download link, when one is published. */
  url?: string;
  /** Other accepted locations inside the weights folder (e.g. taming's logs layout). */
  alternatives?: string[];
}

export interface KnownWeight {
  id: string;
  title: string;
  kind: WeightKind;
  /** Files that must all be present (the checkpoint first). */
  files: WeightFile[];
  /** The page where it is published. */
  page: string;
  /** How to put it in place when there is no direct link. */
  howto?: string;
  /** Expected SHA-256 of the checkpoint (OpenAI CLIP: part of the URL). */
  sha256?: string;
  /** Download size as the source states it. */
  size?: string;
}

const heibox = (folder: string, file: string) => `https://heibox.uni-heidelberg.de/d/${folder}/files/?p=${encodeURIComponent(file)}&dl=1`;
const clipUrl = (sha: string, name: string) => `https://openaipublic.azureedge.net/clip/models/${sha}/${name}`;

function tamingFirstStage(id: string, title: string, folder: string, size: string): KnownWeight {
  return {
    id,
    title,
    kind: id.includes('gumbel') ? 'gumbel' : 'vqgan',
    files: [
      { name: `${id}.ckpt`, what: 'checkpoint (Lightning, torch zip)', url: heibox(folder, '/ckpts/last.ckpt') },
      { name: `${id}.yaml`, what: 'taming config', url: heibox(folder, '/configs/model.yaml') },
    ],
    page: `https://heibox.uni-heidelberg.de/d/${folder}/`,
    size,
  };
}

function tamingTransformer(id: string, title: string, logName: string, link: string): KnownWeight {
  return {
    id,
    title,
    kind: 'transformer',
    files: [
      { name: `${id}.ckpt`, what: 'checkpoint (GPT prior + its VQGAN)', alternatives: [`${logName}/checkpoints/last.ckpt`] },
      { name: `${id}.yaml`, what: 'taming config', alternatives: [`${logName}/configs`] },
    ],
    page: link,
    howto: `download the ${logName} folder from ${link}; copy checkpoints/last.ckpt to ${id}.ckpt and configs/*-project.yaml to ${id}.yaml (or put the whole folder in the weights folder)`,
  };
}

function openaiClip(id: string, title: string, sha: string, file: string): KnownWeight {
  return { id, title, kind: 'clip', files: [{ name: file, what: 'TorchScript archive (fp16)', url: clipUrl(sha, file) }], page: 'https://github.com/openai/CLIP', sha256: sha };
}

function hfClip(id: string, title: string, repo: string): KnownWeight {
  const folder = repo.split('/')[1];
  return {
    id,
    title,
    kind: 'clip-hf',
    files: [
      { name: `${folder}/config.json`, what: 'Hugging Face config', url: `https://huggingface.co/${repo}/resolve/main/config.json` },
      { name: `${folder}/pytorch_model.bin`, what: 'weights (or model.safetensors)', url: `https://huggingface.co/${repo}/resolve/main/pytorch_model.bin`, alternatives: [`${folder}/model.safetensors`] },
    ],
    page: `https://huggingface.co/${repo}`,
  };
}

export const KNOWN_WEIGHTS: KnownWeight[] = [
  tamingFirstStage('vqgan_imagenet_f16_1024', 'VQGAN ImageNet f16, 1024 codes', '8088892a516d4e3baf92', '958 MB'),
  tamingFirstStage('vqgan_imagenet_f16_16384', 'VQGAN ImageNet f16, 16384 codes (the VQGAN+CLIP default)', 'a7530b09fed84f80a887', '980 MB'),
  tamingFirstStage('vqgan_gumbel_f8_8192', 'VQGAN OpenImages f8, 8192 codes, Gumbel quantization (taming: vqgan_gumbel_f8)', '2e5662443a6b4307b470', '376 MB'),
  tamingTransformer('cin_transformer', 'ImageNet class-conditional transformer (cIN, f16)', '2021-04-03T19-39-50_cin_transformer', 'https://k00.fr/s511rwcv'),
  tamingTransformer('ffhq_transformer', 'FFHQ unconditional transformer (f16)', '2021-04-23T18-19-01_ffhq_transformer', 'https://k00.fr/yndvfu95'),
  tamingTransformer('celebahq_transformer', 'CelebA-HQ unconditional transformer (f16)', '2021-04-23T18-11-19_celebahq_transformer', 'https://k00.fr/2xkmielf'),
  openaiClip('clip_vit_b_32', 'OpenAI CLIP ViT-B/32', '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af', 'ViT-B-32.pt'),
  openaiClip('clip_vit_b_16', 'OpenAI CLIP ViT-B/16', '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f', 'ViT-B-16.pt'),
  openaiClip('clip_vit_l_14', 'OpenAI CLIP ViT-L/14', 'b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836', 'ViT-L-14.pt'),
  hfClip('hf_clip_vit_base_patch32', 'CLIP ViT-B/32, Hugging Face folder', 'openai/clip-vit-base-patch32'),
  hfClip('hf_clip_vit_base_patch16', 'CLIP ViT-B/16, Hugging Face folder', 'openai/clip-vit-base-patch16'),
  hfClip('hf_clip_vit_large_patch14', 'CLIP ViT-L/14, Hugging Face folder', 'openai/clip-vit-large-patch14'),
  {
    id: 'clip_bpe_vocab',
    title: "CLIP's BPE vocabulary (tokenizer merges)",
    kind: 'vocab',
    files: [{ name: 'bpe_simple_vocab_16e6.txt.gz', what: 'gzip text', url: 'https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz' }],
    page: 'https://github.com/openai/CLIP (clip/bpe_simple_vocab_16e6.txt.gz)',
  },
];

/** The weights folder: $VQCLIP_WEIGHTS, else `weights/` in the project. */
export function weightsDir(): string {
  return process.env.VQCLIP_WEIGHTS ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../weights');
}

export function knownWeight(id: string): KnownWeight {
  const w = KNOWN_WEIGHTS.find((k) => k.id === id);
  if (!w) throw new UserError(`unknown weights "${id}"`, `known: ${KNOWN_WEIGHTS.map((k) => k.id).join(', ')}`);
  return w;
}

export interface FileStatus {
  file: WeightFile;
  /** Absolute path where it was found (the name or one of the alternatives). */
  found?: string;
  bytes?: number;
  /** For checkpoints: whether an up-to-date converted .safetensors sibling exists. */
  converted?: boolean;
}

export interface WeightStatus {
  weight: KnownWeight;
  present: boolean;
  files: FileStatus[];
}

function findFile(dir: string, f: WeightFile): string | undefined {
  for (const rel of [f.name, ...(f.alternatives ?? [])]) {
    const p = path.join(dir, rel);
    if (!fs.existsSync(p)) continue;
    const st = fs.statSync(p);
    if (st.isFile()) return p;
    // A taming `configs` folder: its *-project.yaml.
    if (st.isDirectory()) {
      const y = fs.readdirSync(p).filter((n) => n.endsWith('.yaml')).sort();
      if (y.length) return path.join(p, y[y.length - 1]);
    }
  }
  return undefined;
}

/** Which known weights are in `dir`. */
export function weightStatus(dir = weightsDir()): WeightStatus[] {
  return KNOWN_WEIGHTS.map((weight) => {
    const files = weight.files.map((file): FileStatus => {
      const found = findFile(dir, file);
      if (!found) return { file };
      const isCheckpoint = /\.(ckpt|pt|pth|bin)$/.test(found);
      return { file, found, bytes: fs.statSync(found).size, converted: isCheckpoint ? convertedSibling(found).fresh : undefined };
    });
    return { weight, present: files.every((f) => f.found), files };
  });
}

/** Where to get a known weight, as one line per missing file. */
export function whereToGet(w: KnownWeight, dir = weightsDir()): string[] {
  const lines = w.files.map((f) => `${path.join(dir, f.name)}${f.url ? `  <-  ${f.url}` : ''}`);
  if (w.howto) lines.push(w.howto);
  else if (!w.files.every((f) => f.url)) lines.push(`see ${w.page}`);
  return lines;
}

/**
 * The files of a known weight (checkpoint first), or a UserError saying exactly which file to put where and
 * where to download it.
 */
export function locateWeight(id: string, dir = weightsDir()): string[] {
  const w = knownWeight(id);
  const st = weightStatus(dir).find((s) => s.weight.id === id)!;
  const missing = st.files.filter((f) => !f.found);
  if (missing.length) {
    throw new UserError(
      `${w.title}: missing ${missing.map((m) => m.file.name).join(' and ')} in ${dir}`,
      `download: ${whereToGet(w, dir).join('; ')}`,
    );
  }
  return st.files.map((f) => f.found!);
}
