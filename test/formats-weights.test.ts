// `vqclip weights list | inspect | convert` and the converted-safetensors fast path (resolveWeights).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runConvert, runInspect, runList } from '../src/cli/commands/weights.ts';
import { UserError, reportError } from '../src/cli/errors.ts';
import { META, convertedSibling, resolveWeights } from '../src/formats/convert.ts';
import type { LazyTensor } from '../src/formats/torch.ts';
import { SafetensorsFile } from '../src/formats/safetensors.ts';
import { KNOWN_WEIGHTS, locateWeight } from '../src/weights/registry.ts';
import { fixture } from './helpers.ts';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-weights-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

function capture(): { out: (l: string) => void; lines: string[] } {
  const lines: string[] = [];
  return { out: (l) => lines.push(l), lines };
}

function copyTo(src: string, dir: string, name = path.basename(src)): string {
  fs.mkdirSync(dir, { recursive: true });
  const dst = path.join(dir, name);
  fs.copyFileSync(src, dst);
  return dst;
}

function assertSameValues(a: Map<string, LazyTensor>, b: Map<string, LazyTensor>, label: string): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${label}: keys`);
  for (const [k, t] of a) {
    const x = t.read();
    const y = b.get(k)!.read();
    assert.deepEqual(x.shape, y.shape, `${label}: ${k}`);
    assert.equal(x.dtype, y.dtype, `${label}: ${k}`);
    assert.ok(Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength).equals(Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength)), `${label}: ${k} differs`);
  }
}

test('inspect: format, inert globals, tensor count, dtypes, parameters, model kind, keys', async (t) => {
  const cases: [string, RegExp, number, Record<string, number>, RegExp][] = [
    ['tiny_vqgan.ckpt', /PyTorch zip checkpoint/, 183, { float32: 183 }, /^VQGAN f4, 64 codes x 8$/],
    ['tiny_vqgan_legacy.ckpt', /legacy/, 183, { float32: 183 }, /^VQGAN f4/],
    ['tiny_transformer_cin.ckpt', /zip/, 222, { float32: 222 }, /^Net2Net transformer: GPT 2 layers x 32, vocab 64, block 80 \+ VQGAN f4, 64 codes x 8; class-conditional, 10 classes \(config\)$/],
    ['tiny_transformer_uncond.ckpt', /zip/, 222, { float32: 222 }, /; unconditional \(SOS token 0\) \(config\)$/],
    ['tiny_clip_state.pt', /zip/, 62, { float32: 62 }, /^CLIP ViT \(custom: width 128, patch 8, 2 vision \/ 2 text layers, embed 32\)$/],
    ['tiny_clip_jit.pt', /TorchScript/, 65, { float32: 27, float16: 35, int64: 3 }, /^CLIP ViT \(custom/],
  ];
  for (const [name, format, n, dtypes, kind] of cases) {
    const p = fixture(t, name);
    if (!p) return;
    const c = capture();
    const r = await runInspect(p, {}, c.out);
    assert.match(r.format, format, name);
    assert.equal(r.tensors.length, n, name);
    assert.deepEqual(r.dtypes, dtypes, name);
    assert.match(r.kind.label, kind, name);
    assert.equal(r.params, r.tensors.reduce((s, x) => s + x.shape.reduce((a, b) => a * b, 1), 0));
    const text = c.lines.join('\n');
    assert.match(text, new RegExp(`state dict: ${n} tensors`));
    assert.ok(c.lines.length < 40, `${name}: ${c.lines.length} lines without --all`);
    if (name.endsWith('.ckpt')) {
      assert.deepEqual(r.unknownGlobals, ['pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint']);
      assert.match(text, /unknown globals \(kept inert, never executed\): pytorch_lightning\.callbacks\.model_checkpoint\.ModelCheckpoint/);
      assert.equal(r.info['pytorch-lightning_version'], '1.0.8');
      if (fs.existsSync(p.replace(/\.ckpt$/, '.yaml'))) assert.ok(r.config?.ok, `${name}: its .yaml beside it`);
    } else assert.deepEqual(r.unknownGlobals, []);
    if (name === 'tiny_vqgan.ckpt') assert.equal(r.otherTensors.length, 13);
    if (name === 'tiny_clip_jit.pt') assert.equal(r.moduleClasses, 47);
  }
  const p = fixture(t, 'tiny_vqgan.ckpt')!;
  const all = capture();
  await runInspect(p, { all: true }, all.out);
  assert.ok(all.lines.some((l) => l.trim() === 'decoder.conv_out.weight  float32 [3, 32, 3, 3]'));
  assert.ok(all.lines.filter((l) => /^  \S+  float32 \[/.test(l)).length >= 183 + 13);
});

test('convert: VQGAN zip and legacy -> X.safetensors + X.yaml; later loads take the fast path while it is fresh', async (t) => {
  const ck = fixture(t, 'tiny_vqgan.ckpt');
  const legacy = fixture(t, 'tiny_vqgan_legacy.ckpt');
  const yaml = fixture(t, 'tiny_vqgan.yaml');
  if (!ck || !legacy || !yaml) return;
  const dir = path.join(tmp, 'vq');
  const file = copyTo(ck, dir, 'vq.ckpt');
  copyTo(yaml, dir, 'config.yaml');
  const before = await resolveWeights(file);
  assert.equal(before.converted, false);
  const c = capture();
  const r = await runConvert(file, {}, c.out);
  assert.equal(r.safetensors, path.join(dir, 'vq.safetensors'));
  assert.equal(r.config, path.join(dir, 'vq.yaml'));
  assert.equal(fs.readFileSync(r.config!, 'utf8'), fs.readFileSync(yaml, 'utf8'));
  assert.equal(r.tensors, 183);
  assert.equal(r.kind.id, 'vqgan_f4_64');
  assert.match(c.lines[0], /VQGAN f4, 64 codes x 8: 183 tensors -> .*vq\.safetensors/);
  const st = SafetensorsFile.open(r.safetensors);
  assert.equal(st.metadata[META.sourceSize], String(fs.statSync(file).size));
  assert.equal(st.metadata[META.tensors], '183');
  assert.equal(st.metadata[META.sourceFormat], 'zip');
  st.close();
  const fast = await resolveWeights(file);
  assert.equal(fast.converted, true);
  assert.equal(fast.format, 'safetensors');
  assert.equal(fast.file, r.safetensors);
  assertSameValues(fast.tensors, before.tensors, 'converted vs checkpoint');
  fast.close();
  // A replaced checkpoint (another modification time) is never shadowed by the old conversion...
  const earlier = new Date(Date.now() - 3_600_000);
  fs.utimesSync(file, earlier, earlier);
  assert.deepEqual(convertedSibling(file), { file: r.safetensors, fresh: false, reason: 'converted from a different version of the checkpoint' });
  const stale = await resolveWeights(file);
  assert.equal(stale.converted, false);
  assert.match(stale.note!, /vq\.safetensors not used: converted from a different version of the checkpoint; run `vqclip weights convert .*vq\.ckpt` again/);
  stale.close();
  // ... nor is a conversion older than the checkpoint.
  await runConvert(file, {}, capture().out);
  assert.equal(convertedSibling(file).fresh, true);
  fs.utimesSync(r.safetensors, new Date(Date.now() - 7_200_000), new Date(Date.now() - 7_200_000));
  assert.equal(convertedSibling(file).reason, 'older than the checkpoint');
  // Convert again, then damage the converted file: incomplete files are not used.
  await runConvert(file, {}, capture().out);
  assert.equal(convertedSibling(file).fresh, true);
  const sz = fs.statSync(r.safetensors).size;
  fs.truncateSync(r.safetensors, sz - 100);
  assert.match(convertedSibling(file).reason, /unreadable/);
  const fallback = await resolveWeights(file);
  assert.equal(fallback.converted, false);
  fallback.close();
  before.close();
  // The legacy format converts to the same tensors.
  const ldir = path.join(tmp, 'legacy');
  const lfile = copyTo(legacy, ldir, 'legacy.ckpt');
  const lr = await runConvert(lfile, { config: yaml }, capture().out);
  assert.equal(lr.config, path.join(ldir, 'legacy.yaml'));
  const lf = await resolveWeights(lfile);
  assert.ok(lf.converted);
  const zf = await resolveWeights(ck);
  assertSameValues(lf.tensors, zf.tensors, 'legacy converted vs zip');
  lf.close();
  zf.close();
});

test('convert: TorchScript CLIP keeps float16 and writes X.config.json (= clip build_model config)', async (t) => {
  const jit = fixture(t, 'tiny_clip_jit.pt');
  const state = fixture(t, 'tiny_clip_state.pt');
  const cfg = fixture(t, 'tiny_clip_config.json');
  if (!jit || !state || !cfg) return;
  const file = copyTo(jit, path.join(tmp, 'clip'), 'ViT-tiny.pt');
  const r = await runConvert(file, {}, capture().out);
  assert.equal(r.config, path.join(tmp, 'clip', 'ViT-tiny.config.json'));
  const written = JSON.parse(fs.readFileSync(r.config!, 'utf8'));
  assert.equal(written.source, 'ViT-tiny.pt');
  delete written.source;
  delete written.model;
  assert.deepEqual(written, JSON.parse(fs.readFileSync(cfg, 'utf8')));
  const st = SafetensorsFile.open(r.safetensors);
  const dtypes: Record<string, number> = {};
  for (const k of st.keys()) dtypes[st.entry(k).dtype] = (dtypes[st.entry(k).dtype] ?? 0) + 1;
  st.close();
  assert.deepEqual(dtypes, { F32: 27, F16: 35, I64: 3 });
  // Half the size of fp32 for the converted weights; values equal the fp32 state dict's exactly.
  const fast = await resolveWeights(file);
  const ref = await resolveWeights(state);
  assert.ok(fast.converted);
  for (const [k, tt] of ref.tensors) {
    const a = tt.read();
    const b = fast.tensors.get(k)!.read();
    assert.ok(Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength)), k);
  }
  assert.equal((fast.tensors.get('context_length')!.read().data as BigInt64Array)[0], 77n);
  fast.close();
  ref.close();
});

test('convert: taming logs layout (NAME/checkpoints/last.ckpt + NAME/configs/*-project.yaml), missing config', async (t) => {
  const ck = fixture(t, 'tiny_transformer_cin.ckpt');
  const yaml = fixture(t, 'tiny_transformer_cin.yaml');
  if (!ck || !yaml) return;
  const run = path.join(tmp, 'logs', '2021-04-03T19-39-50_cin_transformer');
  const last = copyTo(ck, path.join(run, 'checkpoints'), 'last.ckpt');
  copyTo(yaml, path.join(run, 'configs'), '2021-04-03T19-39-50-project.yaml');
  const r = await runConvert(run, {}, capture().out); // a folder resolves to checkpoints/last.ckpt
  assert.equal(r.safetensors, path.join(run, 'checkpoints', 'last.safetensors'));
  assert.equal(r.config, path.join(run, 'checkpoints', 'last.yaml'));
  assert.equal(r.kind.family, 'transformer');
  assert.ok((await resolveWeights(last)).converted);
  const lone = copyTo(ck, path.join(tmp, 'lone'), 'lone.ckpt');
  const c = capture();
  const r2 = await runConvert(lone, {}, c.out);
  assert.match(r2.configMissing!, /no taming config .* lone\.yaml/);
  assert.ok(c.lines.some((l) => l.startsWith('warning: no taming config')));
  await assert.rejects(runConvert(r2.safetensors, {}, capture().out), /already safetensors/);
});

test('list: present weights (flat names or taming folders), missing ones with file names and URLs', async (t) => {
  const ck = fixture(t, 'tiny_vqgan.ckpt');
  const yaml = fixture(t, 'tiny_vqgan.yaml');
  const cin = fixture(t, 'tiny_transformer_cin.ckpt');
  const cinYaml = fixture(t, 'tiny_transformer_cin.yaml');
  if (!ck || !yaml || !cin || !cinYaml) return;
  const dir = path.join(tmp, 'weights');
  copyTo(ck, dir, 'vqgan_imagenet_f16_16384.ckpt');
  copyTo(yaml, dir, 'vqgan_imagenet_f16_16384.yaml');
  const run = path.join(dir, '2021-04-03T19-39-50_cin_transformer');
  copyTo(cin, path.join(run, 'checkpoints'), 'last.ckpt');
  copyTo(cinYaml, path.join(run, 'configs'), '2021-04-03T19-39-50-project.yaml');
  copyTo(ck, dir, 'vqgan_gumbel_f8_8192.ckpt'); // without its yaml: still missing
  await runConvert(path.join(dir, 'vqgan_imagenet_f16_16384.ckpt'), {}, capture().out);
  const c = capture();
  const status = runList({ dir }, c.out);
  const text = c.lines.join('\n');
  const byId = new Map(status.map((s) => [s.weight.id, s]));
  assert.equal(status.length, KNOWN_WEIGHTS.length);
  assert.ok(byId.get('vqgan_imagenet_f16_16384')!.present);
  assert.equal(byId.get('vqgan_imagenet_f16_16384')!.files[0].converted, true);
  assert.ok(byId.get('cin_transformer')!.present);
  assert.ok(!byId.get('vqgan_gumbel_f8_8192')!.present);
  assert.ok(!byId.get('clip_vit_b_32')!.present);
  assert.match(text, /\[x\] vqgan_imagenet_f16_16384/);
  assert.match(text, /vqgan_imagenet_f16_16384\.ckpt \(4\.1 MB, converted \(fast load\)\)/);
  assert.match(text, /\[ \] vqgan_gumbel_f8_8192[^\n]*\n\s+found: vqgan_gumbel_f8_8192\.ckpt\n\s+get: .*vqgan_gumbel_f8_8192\.yaml  <-  https:\/\/heibox\.uni-heidelberg\.de\/d\/2e5662443a6b4307b470\/files\/\?p=%2Fconfigs%2Fmodel\.yaml&dl=1/);
  assert.match(text, /ViT-B-32\.pt  <-  https:\/\/openaipublic\.azureedge\.net\/clip\/models\/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af\/ViT-B-32\.pt/);
  assert.match(text, /3 of \d+ present|2 of \d+ present/);
  assert.deepEqual(locateWeight('cin_transformer', dir), [path.join(run, 'checkpoints', 'last.ckpt'), path.join(run, 'configs', '2021-04-03T19-39-50-project.yaml')]);
  assert.throws(
    () => locateWeight('clip_vit_l_14', dir),
    (e: unknown) => e instanceof UserError && /missing ViT-L-14\.pt/.test(e.message) && /b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836\/ViT-L-14\.pt/.test(e.hint ?? ''),
  );
  assert.throws(() => locateWeight('no_such_model', dir), UserError);
});

test('spawned `vqclip weights inspect`: prints the summary; a corrupt file gives one clear line and exit code 2', async (t) => {
  const p = fixture(t, 'tiny_vqgan.ckpt');
  if (!p) return;
  const ok = spawnSync(process.execPath, [path.join(root, 'src/bin.mjs'), 'weights', 'inspect', p], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /format: PyTorch zip checkpoint/);
  assert.match(ok.stdout, /model: VQGAN f4, 64 codes x 8/);
  assert.match(ok.stdout, /state dict: 183 tensors, 1\.01M parameters \(1007739\), dtypes float32 x183/);
  // The failure path in-process (a second spawn costs seconds of CLI start-up): the error the command throws,
  // printed by the CLI's reporter, is one line with the file and the problem plus a fix, exit code 2.
  const bad = path.join(tmp, 'truncated.ckpt');
  fs.writeFileSync(bad, fs.readFileSync(p).subarray(0, 100_000));
  let err: unknown;
  await runInspect(bad, {}, capture().out).catch((e) => (err = e));
  let stderr = '';
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string) => ((stderr += chunk), true)) as typeof process.stderr.write;
  let code: number;
  try {
    code = reportError(err);
  } finally {
    process.stderr.write = write;
  }
  assert.equal(code, 2);
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 2, stderr);
  assert.match(lines[0], new RegExp(`^vqclip: ${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not a readable zip archive`));
  assert.match(lines[1], /^  fix: /);
});
