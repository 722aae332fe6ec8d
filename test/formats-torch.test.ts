// PyTorch checkpoint readers against the fixtures (zip, legacy, TorchScript), the writer used by tests and benches,
// and hostile inputs that must be refused before any allocation or execution.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { FormatError, type HostTensor } from '../src/formats/host-tensor.ts';
import { PickleError, PyGlobal, PyObject, unpickle } from '../src/formats/pickle.ts';
import { CLIP_TORCHSCRIPT_EXTRAS, LazyTensor, allTensors, openTorchBuffer, openTorchFile, stateDict, type TorchFile } from '../src/formats/torch.ts';
import { OrderedDictSpec, TensorSpec, picklePayload, storageOf, writeTorchLegacy, writeTorchZip, type StorageSpec } from '../src/formats/torch-writer.ts';
import { clipConfigFromShapes, detectModelKind } from '../src/weights/detect.ts';
import { fixture, reference } from './helpers.ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vqclip-formats-torch-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

async function open(t: import('node:test').TestContext, name: string): Promise<TorchFile | undefined> {
  const p = fixture(t, name);
  return p ? openTorchFile(p) : undefined;
}

function bytesOf(h: HostTensor): Buffer {
  return Buffer.from(h.data.buffer, h.data.byteOffset, h.data.byteLength);
}

/** Exact equality of two state dicts: same keys in the same order, shapes, dtypes and bit-identical values. */
function assertSameTensors(a: Map<string, LazyTensor>, b: Map<string, LazyTensor>, label: string): void {
  assert.deepEqual([...a.keys()], [...b.keys()], `${label}: keys`);
  for (const [k, ta] of a) {
    const ha = ta.read();
    const hb = b.get(k)!.read();
    assert.deepEqual(ha.shape, hb.shape, `${label}: ${k} shape`);
    assert.equal(ha.dtype, hb.dtype, `${label}: ${k} dtype`);
    assert.ok(bytesOf(ha).equals(bytesOf(hb)), `${label}: ${k} values differ`);
  }
}

test('tiny_vqgan.ckpt: 183 float32 tensors, Lightning layout, inert ModelCheckpoint global, codebook == reference', async (t) => {
  const f = await open(t, 'tiny_vqgan.ckpt');
  const ref = reference(t, 'vqgan_reference.safetensors');
  if (!f || !ref) return;
  try {
    assert.equal(f.format, 'zip');
    assert.deepEqual(f.unknownGlobals, ['pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint']);
    const sd = stateDict(f);
    assert.equal(sd.size, 183);
    for (const [k, v] of sd) {
      assert.equal(v.dtype.name, 'float32', k);
      const h = v.read();
      assert.equal(h.data.length, h.shape.reduce((a, b) => a * b, 1), k);
      assert.ok((h.data as Float32Array).every(Number.isFinite), `${k} has non-finite values`);
    }
    assert.deepEqual(sd.get('encoder.conv_in.weight')!.shape, [32, 3, 3, 3]);
    assert.deepEqual(sd.get('quantize.embedding.weight')!.shape, [64, 8]);
    assert.ok(bytesOf(sd.get('quantize.embedding.weight')!.read()).equals(bytesOf(ref.get('codebook')!)), 'codebook differs from vqgan_reference');
    const root = f.root as Map<unknown, unknown>;
    assert.deepEqual([...root.keys()], ['epoch', 'global_step', 'pytorch-lightning_version', 'callbacks', 'optimizer_states', 'lr_schedulers', 'state_dict']);
    assert.equal(root.get('pytorch-lightning_version'), '1.0.8');
    // The callback's class is a dict KEY: it stays an inert record, its value dict is still readable.
    const callbacks = root.get('callbacks') as Map<unknown, unknown>;
    const [cls] = callbacks.keys();
    assert.ok(cls instanceof PyGlobal && cls.qualified === 'pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint');
    const cb = callbacks.get(cls) as Map<string, unknown>;
    assert.equal(typeof cb.get('best_model_path'), 'string');
    const score = cb.get('best_model_score') as LazyTensor;
    assert.deepEqual(score.shape, []);
    assert.equal(score.read().data.length, 1);
    assert.equal(detectModelKind(new Map([...sd].map(([k, v]) => [k, v.shape]))).id, 'vqgan_f4_64');
  } finally {
    f.close();
  }
});

test('tiny_vqgan.ckpt: Adam state outside the state dict is readable and consistent with one step (betas 0.5, 0.9)', async (t) => {
  const f = await open(t, 'tiny_vqgan.ckpt');
  if (!f) return;
  try {
    const sd = stateDict(f);
    const opt = ((f.root as Map<string, unknown>).get('optimizer_states') as unknown[])[0] as Map<string, unknown>;
    const state = opt.get('state') as Map<number, Map<string, LazyTensor>>;
    assert.equal(state.size, 4);
    const groups = opt.get('param_groups') as Map<string, unknown>[];
    assert.deepEqual([...(groups[0].get('betas') as number[])], [0.5, 0.9]);
    // The parameters with gradients were quant_conv and post_quant_conv: their shapes, in some order.
    const shapes = [...state.values()].map((s) => JSON.stringify(s.get('exp_avg')!.shape)).sort();
    const expected = ['quant_conv.weight', 'quant_conv.bias', 'post_quant_conv.weight', 'post_quant_conv.bias'].map((k) => JSON.stringify(sd.get(k)!.shape)).sort();
    assert.deepEqual(shapes, expected);
    for (const [idx, s] of state) {
      assert.equal(s.get('step')!.read().data[0], 1, `param ${idx} step`);
      // After one step from zero: m = (1-b1) g, v = (1-b2) g^2, so v = 0.1 (m / 0.5)^2 = 0.4 m^2.
      const m = s.get('exp_avg')!.read().data as Float32Array;
      const v = s.get('exp_avg_sq')!.read().data as Float32Array;
      assert.ok(m.some((x) => x !== 0), 'exp_avg is all zeros');
      for (let i = 0; i < m.length; i++) assert.ok(Math.abs(v[i] - 0.4 * m[i] * m[i]) <= 1e-6 * Math.max(1e-6, v[i]) + 1e-12, `param ${idx} element ${i}: v=${v[i]} m=${m[i]}`);
    }
    // allTensors finds them too, under readable paths, plus the callback score: 4 x 3 + 1 outside the state dict.
    const inSd = new Set(sd.values());
    const outside = [...allTensors(f.root)].filter(([, v]) => !inSd.has(v));
    assert.equal(outside.length, 13);
    assert.ok(outside.some(([k]) => /^optimizer_states\[0\]\.state\.\d+\.exp_avg_sq$/.test(k)));
  } finally {
    f.close();
  }
});

test('tiny_vqgan_legacy.ckpt (pre-1.6 pickle stream) == tiny_vqgan.ckpt for all 183 tensors', async (t) => {
  const z = await open(t, 'tiny_vqgan.ckpt');
  const l = await open(t, 'tiny_vqgan_legacy.ckpt');
  if (!z || !l) return;
  try {
    assert.equal(l.format, 'legacy');
    assert.deepEqual(l.unknownGlobals, ['pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint']);
    assertSameTensors(stateDict(l), stateDict(z), 'legacy vs zip');
    // Storage keys of the legacy format are memory addresses written as decimal strings.
    assert.ok(l.storages.length >= 183 && l.storages.every((s) => /^\d+$/.test(s.key) && s.dataOffset! > 0));
  } finally {
    z.close();
    l.close();
  }
});

for (const variant of ['uncond', 'cin']) {
  test(`tiny_transformer_${variant}.ckpt: 222 keys, first_stage_model.* == tiny_vqgan, causal masks, GPT shapes`, async (t) => {
    const f = await open(t, `tiny_transformer_${variant}.ckpt`);
    const v = await open(t, 'tiny_vqgan.ckpt');
    if (!f || !v) return;
    try {
      const sd = stateDict(f);
      assert.equal(sd.size, 222);
      assert.deepEqual([...new Set([...sd.keys()].map((k) => k.split('.')[0]))], ['first_stage_model', 'transformer']);
      const fsm = new Map([...sd].filter(([k]) => k.startsWith('first_stage_model.')).map(([k, x]) => [k.slice('first_stage_model.'.length), x]));
      assertSameTensors(fsm, stateDict(v), 'first stage');
      assert.deepEqual(sd.get('transformer.tok_emb.weight')!.shape, [64, 32]);
      assert.deepEqual(sd.get('transformer.pos_emb')!.shape, [1, 80, 32]);
      assert.deepEqual(sd.get('transformer.head.weight')!.shape, [64, 32]);
      for (const b of [0, 1]) {
        const m = sd.get(`transformer.blocks.${b}.attn.mask`)!.read();
        assert.deepEqual(m.shape, [1, 1, 80, 80]);
        for (let i = 0; i < 80; i++) for (let j = 0; j < 80; j++) assert.equal(m.data[i * 80 + j], j <= i ? 1 : 0);
      }
      const opt = ((f.root as Map<string, unknown>).get('optimizer_states') as Map<string, unknown>[])[0];
      assert.equal((opt.get('state') as Map<unknown, unknown>).size, 0);
      assert.equal((opt.get('param_groups') as unknown[]).length, 2);
      const kind = detectModelKind(new Map([...sd].map(([k, x]) => [k, x.shape])));
      assert.equal(kind.family, 'transformer');
      assert.equal(kind.details.n_layer, 2);
      assert.equal(kind.details.first_stage, 'vqgan_f4_64');
    } finally {
      f.close();
      v.close();
    }
  });
}

test('tiny_clip_jit.pt: TorchScript module tree gives state_dict() keys; fp16 weights == fp32 state exactly; int64 extras', async (t) => {
  const j = await open(t, 'tiny_clip_jit.pt');
  const s = await open(t, 'tiny_clip_state.pt');
  const cfgPath = fixture(t, 'tiny_clip_config.json');
  const ref = reference(t, 'clip_reference.safetensors');
  if (!j || !s || !cfgPath || !ref) return;
  try {
    assert.equal(j.format, 'torchscript');
    assert.equal(s.format, 'zip');
    assert.deepEqual(s.unknownGlobals, []);
    assert.ok(j.unknownGlobals.every((g) => g.startsWith('__torch__.')), `unexpected globals ${j.unknownGlobals.filter((g) => !g.startsWith('__torch__.'))}`);
    const js = stateDict(j);
    const ss = stateDict(s);
    assert.equal(ss.size, 62);
    assert.equal(js.size, 65);
    // Same keys, in the same order, once the three extras are set aside.
    assert.deepEqual([...js.keys()].filter((k) => !(CLIP_TORCHSCRIPT_EXTRAS as readonly string[]).includes(k)), [...ss.keys()]);
    const dtypes: Record<string, number> = {};
    for (const [k, st] of ss) {
      const jt = js.get(k)!;
      dtypes[jt.dtype.name] = (dtypes[jt.dtype.name] ?? 0) + 1;
      const a = jt.read();
      const b = st.read();
      assert.deepEqual(a.shape, b.shape, k);
      assert.equal(a.dtype, 'float32', `${k} reads as float32`);
      assert.ok(bytesOf(a).equals(bytesOf(b)), `${k}: the fp16 archive differs from the fp32 state dict`);
    }
    assert.deepEqual(dtypes, { float32: 27, float16: 35 });
    const extras = Object.fromEntries(CLIP_TORCHSCRIPT_EXTRAS.map((k) => [k, js.get(k)!.read()]));
    for (const h of Object.values(extras)) {
      assert.equal(h.dtype, 'int64');
      assert.deepEqual(h.shape, []);
    }
    assert.deepEqual(Object.values(extras).map((h) => (h.data as BigInt64Array)[0]), [32n, 77n, 49408n]);
    assert.deepEqual(clipConfigFromShapes(new Map([...ss].map(([k, x]) => [k, x.shape]))), JSON.parse(fs.readFileSync(cfgPath, 'utf8')));
    assert.equal((ss.get('logit_scale')!.read().data as Float32Array)[0], (ref.get('logit_scale')!.data as Float32Array)[0]);
  } finally {
    j.close();
    s.close();
  }
});

// ---------------------------------------------------------------- written checkpoints: views, dtypes, formats

function dtypeCases(): { name: string; storage: StorageSpec; expect: number[] | bigint[] }[] {
  const f16 = new Uint16Array([0x3c00, 0xc000, 0x3555, 0x7bff, 0x0001]); // 1, -2, 0.333..., 65504, 2^-24
  const bf16 = new Uint16Array([0x3f80, 0xc040, 0x4049]); // 1, -3, 3.140625
  return [
    { name: 'f32', storage: storageOf('f32', 'float32', Float32Array.from([1.5, -2, 3e-8])), expect: [1.5, -2, Math.fround(3e-8)] },
    { name: 'f64', storage: storageOf('f64', 'float64', Float64Array.from([0.1, -1e300])), expect: [Math.fround(0.1), -Infinity] },
    { name: 'f16', storage: storageOf('f16', 'float16', f16), expect: [1, -2, 0.333251953125, 65504, 2 ** -24] },
    { name: 'bf16', storage: storageOf('bf16', 'bfloat16', bf16), expect: [1, -3, 3.140625] },
    { name: 'i64', storage: storageOf('i64', 'int64', BigInt64Array.from([-(2n ** 40n), 7n])), expect: [-(2n ** 40n), 7n] },
    { name: 'u8', storage: storageOf('u8', 'uint8', Uint8Array.from([0, 255, 7])), expect: [0, 255, 7] },
    { name: 'bool', storage: storageOf('bool', 'bool', Uint8Array.from([1, 0, 1])), expect: [1, 0, 1] },
    { name: 'i32', storage: storageOf('i32', 'int32', Int32Array.from([-5, 2 ** 31 - 1])), expect: [-5, 2 ** 31 - 1] },
  ];
}

for (const format of ['zip', 'legacy'] as const) {
  test(`written ${format} checkpoints: dtypes (float16/bfloat16 -> float32), views with offsets and strides, shared storages`, async () => {
    const base = storageOf('base', 'float32', Float32Array.from({ length: 24 }, (_, i) => i));
    const sd = new Map<unknown, unknown>([
      ['full', new TensorSpec(base, [2, 3, 4])],
      ['transposed', new TensorSpec(base, [4, 6], [1, 4])], // a .t() of a [6, 4] view
      ['row', new TensorSpec(base, [4], [1], 8)], // base[2]
      ['column', new TensorSpec(base, [6], [4], 1)], // base.view(6,4)[:, 1]
      ['broadcast', new TensorSpec(base, [3, 2], [0, 1], 5)], // stride-0 expand of base[5:7]
      ['scalar', new TensorSpec(base, [], [], 23)],
      ['empty', new TensorSpec(base, [0, 5])],
    ]);
    const cases = dtypeCases();
    for (const c of cases) sd.set(c.name, new TensorSpec(c.storage, [c.expect.length]));
    const file = path.join(tmp, `written-${format}.pt`);
    (format === 'zip' ? writeTorchZip : writeTorchLegacy)(file, new Map<unknown, unknown>([['state_dict', new OrderedDictSpec(sd)], ['epoch', 2]]));
    const f = await openTorchFile(file);
    try {
      assert.equal(f.format, format);
      const got = stateDict(f);
      const v = (k: string) => Array.from(got.get(k)!.read().data as Float32Array);
      const idx = (i: number) => i;
      assert.deepEqual(v('full'), Array.from({ length: 24 }, (_, i) => idx(i)));
      assert.deepEqual(got.get('transposed')!.read().shape, [4, 6]);
      assert.deepEqual(v('transposed'), [0, 4, 8, 12, 16, 20, 1, 5, 9, 13, 17, 21, 2, 6, 10, 14, 18, 22, 3, 7, 11, 15, 19, 23]);
      assert.deepEqual(v('row'), [8, 9, 10, 11]);
      assert.deepEqual(v('column'), [1, 5, 9, 13, 17, 21]);
      assert.deepEqual(v('broadcast'), [5, 6, 5, 6, 5, 6]);
      assert.deepEqual(v('scalar'), [23]);
      assert.deepEqual(got.get('empty')!.read().shape, [0, 5]);
      assert.equal(got.get('empty')!.read().data.length, 0);
      // One storage shared by seven views is stored once.
      assert.equal(f.storages.filter((s) => s.key === 'base').length, 1);
      for (const c of cases) {
        const h = got.get(c.name)!.read();
        assert.deepEqual(Array.from(h.data as ArrayLike<number | bigint>), c.expect, c.name);
      }
      assert.equal(got.get('f16')!.read().dtype, 'float32');
      assert.equal(got.get('i64')!.read().dtype, 'int64');
      assert.equal(got.get('bool')!.read().dtype, 'bool');
      // readRaw keeps the stored dtype (lossless conversion), and gathers views.
      assert.deepEqual(Array.from(new Uint16Array(got.get('f16')!.readRaw().slice().buffer)), [0x3c00, 0xc000, 0x3555, 0x7bff, 0x0001]);
      assert.deepEqual(Array.from(new Float32Array(got.get('column')!.readRaw().slice().buffer)), [1, 5, 9, 13, 17, 21]);
    } finally {
      f.close();
    }
  });
}

test('an in-memory checkpoint opens through openTorchBuffer like a file', async (t) => {
  const p = fixture(t, 'tiny_vqgan.ckpt');
  if (!p) return;
  const fromFile = await openTorchFile(p);
  const fromBuf = await openTorchBuffer(fs.readFileSync(p), 'mem.ckpt');
  try {
    assertSameTensors(stateDict(fromBuf), stateDict(fromFile), 'buffer vs file');
    assert.equal(fromBuf.path, 'mem.ckpt');
  } finally {
    fromFile.close();
    fromBuf.close();
  }
});

// ---------------------------------------------------------------- hostile input

async function rejects(p: Promise<unknown>, pattern: RegExp, file: string): Promise<FormatError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof FormatError, `expected a FormatError, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    assert.equal(err.file, file);
    assert.match(err.problem, pattern);
    return err;
  }
  assert.fail(`expected a FormatError matching ${pattern}`);
}

test('absurd storage sizes are refused before allocation (zip and legacy, numel 2^40)', async () => {
  const huge: StorageSpec = { key: '0', dtype: 'float32', numel: 2 ** 40, chunks: () => [new Uint8Array(16)] };
  // The zip writer would insist on writing 4 TiB; write a consistent small entry and claim 2^40 in the pickle.
  const zipFile = path.join(tmp, 'huge-zip.pt');
  const pkl = picklePayload(new OrderedDictSpec(new Map([['w', new TensorSpec(huge, [2 ** 20, 2 ** 20])]])));
  const { ZipWriter } = await import('../src/formats/torch-writer.ts');
  const w = new ZipWriter(zipFile);
  w.add('huge-zip/data.pkl', pkl.length, [pkl]);
  w.add('huge-zip/data/0', 16, [new Uint8Array(16)]);
  w.finish();
  const before = process.memoryUsage().rss;
  await rejects(openTorchFile(zipFile), /claims 1099511627776 x 4 bytes but its entry holds 16/, zipFile);
  // Legacy: the element count before the data agrees with the pickle, the file is tiny.
  const legacyFile = path.join(tmp, 'huge-legacy.pt');
  writeTorchLegacy(legacyFile, new OrderedDictSpec(new Map([['w', new TensorSpec({ ...huge, chunks: () => [] }, [2 ** 20, 2 ** 20])]])));
  await rejects(openTorchFile(legacyFile), /claims 1099511627776 elements .* more than the whole file/, legacyFile);
  assert.ok(process.memoryUsage().rss - before < 200 * 2 ** 20, 'memory grew while refusing');
  // A view that reaches past its (real) storage, and a shape with 2^40 elements on a small storage.
  const small = storageOf('0', 'float32', new Float32Array(8));
  const viewFile = path.join(tmp, 'view.pt');
  writeTorchZip(viewFile, new OrderedDictSpec(new Map([['w', new TensorSpec(small, [4, 4])]])));
  await rejects(openTorchFile(viewFile), /tensor view \[4,4\] at offset 0 exceeds its storage of 8 elements/, viewFile);
  writeTorchZip(viewFile, new OrderedDictSpec(new Map([['w', new TensorSpec(small, [2 ** 20, 2 ** 20], [0, 0])]])));
  await rejects(openTorchFile(viewFile), /implausibly large/, viewFile);
});

test('unknown globals are never executed: calls and BUILDs on them stay inert records and are reported', () => {
  // os.system('echo pwned') as REDUCE, then BUILD on the result; plus INST/OBJ/NEWOBJ forms.
  const p = Buffer.concat([
    Buffer.from([0x80, 0x02, 0x5d, 0x28]), // PROTO 2, EMPTY_LIST, MARK
    Buffer.from('cos\nsystem\n', 'latin1'),
    Buffer.from([0x58, 10, 0, 0, 0]),
    Buffer.from('echo pwned'),
    Buffer.from([0x85, 0x52]), // TUPLE1 REDUCE
    Buffer.from([0x7d, 0x62]), // EMPTY_DICT BUILD
    Buffer.from('cbuiltins\neval\n', 'latin1'),
    Buffer.from([0x29, 0x81]), // EMPTY_TUPLE NEWOBJ
    Buffer.from([0x28]), // MARK
    Buffer.from('isubprocess\nPopen\n', 'latin1'), // INST
    Buffer.from([0x65, 0x2e]), // APPENDS STOP
  ]);
  const r = unpickle(p, 0, { globals: {} });
  assert.deepEqual(r.unknownGlobals.sort(), ['builtins.eval', 'os.system', 'subprocess.Popen']);
  const [call, obj, inst] = r.value as PyObject[];
  assert.ok(call instanceof PyObject && (call.cls as PyGlobal).qualified === 'os.system');
  assert.deepEqual([...call.args], ['echo pwned']);
  assert.ok(call.state instanceof Map);
  assert.ok(obj instanceof PyObject && inst instanceof PyObject);
});

test('the unpickler survives deep nesting, memo cycles, huge lengths and long integers without crashing or hanging', () => {
  const deep = Buffer.concat([Buffer.from([0x80, 0x02]), Buffer.alloc(200_000, 0x5d), Buffer.from([0x2e])]); // 200k EMPTY_LISTs
  assert.deepEqual(unpickle(deep).value, []);
  const marks = Buffer.concat([Buffer.from([0x80, 0x02]), Buffer.alloc(100_000, 0x28), Buffer.from([0x2e])]);
  assert.throws(() => unpickle(marks), (e: unknown) => e instanceof PickleError && /nesting deeper than/.test(e.message));
  // A list that contains itself, through the memo: walkers must terminate.
  const cyc = Buffer.from([0x80, 0x02, 0x5d, 0x71, 0x00, 0x68, 0x00, 0x61, 0x2e]); // EMPTY_LIST BINPUT 0 BINGET 0 APPEND STOP
  const v = unpickle(cyc).value as unknown[];
  assert.equal(v[0], v);
  assert.equal(allTensors(v).size, 0);
  const hugeLen = Buffer.from([0x80, 0x02, 0x58, 0xff, 0xff, 0xff, 0xff, 0x41, 0x2e]); // BINUNICODE length 0xFFFFFFFF
  assert.throws(() => unpickle(hugeLen), (e: unknown) => e instanceof PickleError && /truncated/.test(e.message));
  const long4 = Buffer.concat([Buffer.from([0x80, 0x02, 0x8b]), Buffer.from([0x00, 0x00, 0x10, 0x00]), Buffer.alloc(1 << 20, 0xff), Buffer.from([0x2e])]);
  assert.throws(() => unpickle(long4), (e: unknown) => e instanceof PickleError && /too long/.test(e.message));
  const bigInt = Buffer.from(`\x80\x02I${'9'.repeat(100_000)}\n.`, 'latin1');
  const t0 = performance.now();
  assert.throws(() => unpickle(bigInt), PickleError);
  assert.ok(performance.now() - t0 < 1000);
  // A REDUCE of an allow-listed function with a million arguments must not blow the stack.
  const args = Buffer.concat([Buffer.from('\x80\x02ccollections\nOrderedDict\n(', 'latin1'), Buffer.alloc(1_000_000, 0x4e), Buffer.from([0x74, 0x52, 0x2e])]);
  assert.throws(() => unpickle(args, 0, { globals: { 'collections.OrderedDict': () => new Map() } }), (e: unknown) => e instanceof PickleError && /arguments/.test(e.message));
});

test('stateDict of a deeply nested TorchScript-like module tree does not overflow the stack', async () => {
  // 50k nested inert objects, obj_i BUILD {"child": obj_i+1}; a recursive walker would overflow. Stack layout:
  // [obj0, dict0, 'child', obj1, dict1, 'child', ..., None], then SETITEM + BUILD pairs close it innermost first.
  const n = 50_000;
  const chain: Buffer[] = [Buffer.from([0x80, 0x02])];
  for (let i = 0; i < n; i++) chain.push(Buffer.from('c__torch__\nM\n)\x81}\x8c\x05child', 'latin1'));
  chain.push(Buffer.from('N', 'latin1'));
  for (let i = 0; i < n; i++) chain.push(Buffer.from('sb', 'latin1'));
  chain.push(Buffer.from('.', 'latin1'));
  const r = unpickle(Buffer.concat(chain), 0, { globals: {} });
  assert.ok(r.value instanceof PyObject);
  const fakeFile: TorchFile = { path: 'x', format: 'torchscript', root: r.value, unknownGlobals: r.unknownGlobals, storages: [], size: 0, close() {} };
  assert.equal(stateDict(fakeFile).size, 0);
  assert.equal(allTensors(r.value).size, 0);
});

test('OrderedDict(list of pairs), TorchScript list helpers, big-endian and pre-0.4 tar checkpoints', async () => {
  const { ZipWriter } = await import('../src/formats/torch-writer.ts');
  const zipWith = (name: string, pkl: Buffer, extra: [string, Buffer][] = []) => {
    const file = path.join(tmp, `${name}.pt`);
    const w = new ZipWriter(file);
    w.add(`${name}/data.pkl`, pkl.length, [pkl]);
    for (const [n, b] of extra) w.add(`${name}/${n}`, b.length, [b]);
    w.finish();
    return file;
  };
  // OrderedDict([('a', 1), ('b', torch.jit._pickle.build_intlist([2, 3]))])
  const pkl = Buffer.concat([
    Buffer.from('\x80\x02ccollections\nOrderedDict\n(](\x8c\x01aK\x01\x86\x8c\x01b', 'latin1'),
    Buffer.from('ctorch.jit._pickle\nbuild_intlist\n](K\x02K\x03e\x85R\x86et', 'latin1'),
    Buffer.from('R.', 'latin1'),
  ]);
  const f = await openTorchFile(zipWith('od', pkl));
  assert.deepEqual(f.unknownGlobals, []);
  const root = f.root as Map<string, unknown>;
  assert.equal(root.get('a'), 1);
  assert.deepEqual(root.get('b'), [2, 3]);
  f.close();
  const little = await openTorchFile(zipWith('le', picklePayload(new Map()), [['byteorder', Buffer.from('little')]]));
  little.close();
  const big = zipWith('be', picklePayload(new Map()), [['byteorder', Buffer.from('big')]]);
  await rejects(openTorchFile(big), /big-endian/, big);
  const tar = path.join(tmp, 'old.tar');
  const header = Buffer.alloc(1024);
  header.write('storages', 0);
  header.write('ustar', 257);
  fs.writeFileSync(tar, header);
  await rejects(openTorchFile(tar), /tar archive: the checkpoint format of torch before 0\.4/, tar);
  const junk = path.join(tmp, 'junk.bin');
  fs.writeFileSync(junk, 'hello');
  await rejects(openTorchFile(junk), /not a PyTorch checkpoint/, junk);
  await rejects(openTorchFile(path.join(tmp, 'nope.pt')), /file not found/, path.join(tmp, 'nope.pt'));
  await rejects(openTorchFile(tmp), /is a directory/, tmp);
});

test('a GumbelVQ checkpoint (tiny VQGAN + gumbel_reference quantizer, written here) reads back exactly and is detected', async (t) => {
  const v = await open(t, 'tiny_vqgan.ckpt');
  const g = reference(t, 'gumbel_reference.safetensors');
  if (!v || !g) return;
  const sd = new Map<unknown, unknown>();
  let key = 0;
  const add = (name: string, dtype: 'float32', shape: number[], bytes: Uint8Array) =>
    sd.set(name, new TensorSpec({ key: String(key++), dtype, numel: bytes.length / 4, chunks: () => [bytes] }, shape));
  for (const [k, lt] of stateDict(v)) if (!k.startsWith('quantize.')) add(k, 'float32', lt.shape, lt.readRaw());
  v.close();
  const raw = (h: HostTensor) => new Uint8Array(h.data.buffer, h.data.byteOffset, h.data.byteLength);
  add('quantize.embed.weight', 'float32', [64, 8], raw(g.get('embed_weight')!));
  add('quantize.proj.weight', 'float32', [64, 8, 1, 1], raw(g.get('proj_weight')!));
  add('quantize.proj.bias', 'float32', [64], raw(g.get('proj_bias')!));
  const file = path.join(tmp, 'gumbel.ckpt');
  writeTorchZip(file, new Map<unknown, unknown>([['global_step', 1], ['state_dict', new OrderedDictSpec(sd)]]), 'gumbel');
  const f = await openTorchFile(file);
  try {
    const got = stateDict(f);
    assert.equal(got.size, 183 - 1 + 3);
    for (const [k, ref] of [['quantize.embed.weight', 'embed_weight'], ['quantize.proj.weight', 'proj_weight'], ['quantize.proj.bias', 'proj_bias']]) {
      assert.ok(bytesOf(got.get(k)!.read()).equals(bytesOf(g.get(ref)!)), k);
    }
    const kind = detectModelKind(new Map([...got].map(([k, x]) => [k, x.shape])));
    assert.equal(kind.family, 'gumbel');
    assert.equal(kind.id, 'gumbel_f4_64');
  } finally {
    f.close();
  }
});

test('tensor subclasses pickled by newer torch (_rebuild_from_type_v2 with nn.Parameter) rebuild as plain tensors', async () => {
  const { ZipWriter } = await import('../src/formats/torch-writer.ts');
  const pkl = Buffer.from(
    '\x80\x02ccollections\nOrderedDict\n)R(\x8c\x01w' +
      'ctorch._tensor\n_rebuild_from_type_v2\n(ctorch._utils\n_rebuild_tensor_v2\nctorch.nn.parameter\nParameter\n' +
      '((\x8c\x07storagectorch\nFloatStorage\n\x8c\x010\x8c\x03cpuK\x02tQK\x00K\x02\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rt}tRu.',
    'latin1',
  );
  const file = path.join(tmp, 'param.pt');
  const w = new ZipWriter(file);
  w.add('param/data.pkl', pkl.length, [pkl]);
  const data = new Uint8Array(Float32Array.from([0.5, -4]).buffer);
  w.add('param/data/0', 8, [data]);
  w.finish();
  const f = await openTorchFile(file);
  try {
    assert.deepEqual(f.unknownGlobals, []);
    assert.deepEqual(Array.from(stateDict(f).get('w')!.read().data as Float32Array), [0.5, -4]);
  } finally {
    f.close();
  }
});
