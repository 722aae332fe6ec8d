// SHA-256 of model files, recorded in every generated image so a result names exactly the weights that made it.
// Hashing a multi-GB checkpoint takes seconds, so hashes are cached per (path, size, mtime) in the user's cache
// folder; a changed file gets a new hash.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

function cacheFile(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'vqclip', 'hashes.json');
}

type Cache = Record<string, { size: number; mtimeMs: number; sha256: string }>;

function readCache(): Cache {
  try {
    return JSON.parse(fs.readFileSync(cacheFile(), 'utf8')) as Cache;
  } catch {
    return {};
  }
}

function writeCache(cache: Cache): void {
  try {
    const f = cacheFile();
    fs.mkdirSync(path.dirname(f), { recursive: true });
    const tmp = `${f}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(cache));
    fs.renameSync(tmp, f);
  } catch {
    // A read-only home only costs re-hashing next time.
  }
}

/** sha256 (hex) of a file, cached by path, size and modification time. */
export async function fileSha256(file: string): Promise<string> {
  const real = fs.realpathSync(file);
  const st = fs.statSync(real);
  const cache = readCache();
  const hit = cache[real];
  if (hit && hit.size === st.size && hit.mtimeMs === st.mtimeMs) return hit.sha256;
  const hash = crypto.createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    fs.createReadStream(real, { highWaterMark: 4 << 20 })
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve())
      .on('error', reject);
  });
  const sha256 = hash.digest('hex');
  cache[real] = { size: st.size, mtimeMs: st.mtimeMs, sha256 };
  writeCache(cache);
  return sha256;
}

/** Hash of a model given as a file or a folder (a Hugging Face folder: its weights file). */
export async function modelSha256(p: string): Promise<string> {
  const st = fs.statSync(p);
  if (!st.isDirectory()) return fileSha256(p);
  for (const name of ['model.safetensors', 'pytorch_model.bin']) {
    const f = path.join(p, name);
    if (fs.existsSync(f)) return fileSha256(f);
  }
  return 'folder';
}
