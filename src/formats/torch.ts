// PyTorch checkpoints: the zip format (torch >= 1.6, incl. TorchScript archives) and the legacy pickle-stream
// format (torch.save(..., _use_new_zipfile_serialization=False)). The pickled object tree is rebuilt by the
// restricted unpickler; tensors become LazyTensor records that point into the file and are read on demand, so a
// multi-GB checkpoint opens in milliseconds and only the tensors a model needs are ever read.
import fs from 'node:fs';
import { FormatError, numel, type HostTensor } from './host-tensor.ts';
import { AllowedGlobal, PickleError, PyObject, unpickle } from './pickle.ts';
import { RAW_DTYPES, contiguousStrides, decodeElements, gatherStrided, type RawDType } from './raw.ts';
import { ZipArchive, isZip } from './zip.ts';

/** Refuse tensors with more elements than this before allocating anything (16 G elements = 64 GB of float32). */
const MAX_TENSOR_ELEMENTS = 2 ** 34;

const STORAGE_TYPES: Record<string, RawDType> = {
  FloatStorage: RAW_DTYPES.float32,
  DoubleStorage: RAW_DTYPES.float64,
  HalfStorage: RAW_DTYPES.float16,
  BFloat16Storage: RAW_DTYPES.bfloat16,
  LongStorage: RAW_DTYPES.int64,
  IntStorage: RAW_DTYPES.int32,
  ShortStorage: RAW_DTYPES.int16,
  CharStorage: RAW_DTYPES.int8,
  ByteStorage: RAW_DTYPES.uint8,
  BoolStorage: RAW_DTYPES.bool,
};

const TORCH_DTYPES: Record<string, RawDType> = {
  float32: RAW_DTYPES.float32,
  float: RAW_DTYPES.float32,
  float64: RAW_DTYPES.float64,
  double: RAW_DTYPES.float64,
  float16: RAW_DTYPES.float16,
  half: RAW_DTYPES.float16,
  bfloat16: RAW_DTYPES.bfloat16,
  int64: RAW_DTYPES.int64,
  long: RAW_DTYPES.int64,
  int32: RAW_DTYPES.int32,
  int: RAW_DTYPES.int32,
  int16: RAW_DTYPES.int16,
  int8: RAW_DTYPES.int8,
  uint8: RAW_DTYPES.uint8,
  bool: RAW_DTYPES.bool,
};

/** A storage (flat typed buffer) inside a checkpoint file. */
export interface StorageRef {
  key: string;
  dtype: RawDType;
  numel: number;
  /** Reads `count` elements starting at element `start`. */
  readElements(start: number, count: number): Uint8Array;
}

/** A tensor view into a storage, not yet read. */
export class LazyTensor {
  constructor(
    readonly storage: StorageRef,
    readonly dtype: RawDType,
    readonly shape: number[],
    readonly strides: number[],
    readonly offset: number,
  ) {}

  get numel(): number {
    return numel(this.shape);
  }

  /** Reads the tensor: only its extent of the storage; views with offsets and strides are honoured. */
  read(): HostTensor {
    const n = this.numel;
    if (n === 0) return { dtype: this.dtype.host, shape: [...this.shape], data: decodeElements(new Uint8Array(0), this.dtype, 0) };
    let extent = 1;
    for (let d = 0; d < this.shape.length; d++) extent += (this.shape[d] - 1) * this.strides[d];
    const bytes = this.storage.readElements(this.offset, extent);
    const flat = decodeElements(bytes, this.dtype, extent);
    const contiguous = this.strides.every((s, d) => s === contiguousStrides(this.shape)[d] || this.shape[d] === 1);
    const data = contiguous && extent === n ? flat : gatherStrided(flat, this.shape, this.strides, 0);
    return { dtype: this.dtype.host, shape: [...this.shape], data };
  }
}

export type TorchFormat = 'zip' | 'legacy' | 'torchscript';

export interface TorchFile {
  path: string;
  format: TorchFormat;
  /** The unpickled object: Maps for dicts, arrays for lists/tuples, LazyTensor, PyObject for unknown classes. */
  root: unknown;
  /** Globals the file names that are not on the allow-list (kept as inert records, never executed). */
  unknownGlobals: string[];
  close(): void;
}

function asIntArray(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every((x) => Number.isSafeInteger(x))) throw new Error(`${what} is not a list of integers`);
  return v as number[];
}

/** Builds a LazyTensor, checking that the view fits in its storage before anything is allocated. */
function rebuildTensor(storage: unknown, offset: unknown, size: unknown, stride: unknown, dtypeOverride?: RawDType): LazyTensor {
  if (!storage || typeof storage !== 'object' || !('readElements' in storage)) throw new Error('tensor without a storage');
  const st = storage as StorageRef;
  const shape = asIntArray(size, 'tensor size');
  const strides = asIntArray(stride, 'tensor stride');
  if (!Number.isSafeInteger(offset) || (offset as number) < 0) throw new Error('bad storage offset');
  if (shape.length !== strides.length) throw new Error(`size has ${shape.length} dims but stride has ${strides.length}`);
  if (shape.some((d) => d < 0) || strides.some((s) => s < 0)) throw new Error('negative size or stride');
  const n = numel(shape);
  if (n > MAX_TENSOR_ELEMENTS) throw new Error(`tensor of ${n} elements is implausibly large`);
  if (n > 0) {
    let last = offset as number;
    for (let d = 0; d < shape.length; d++) last += (shape[d] - 1) * strides[d];
    if (last >= st.numel) throw new Error(`tensor view [${shape}] at offset ${offset} exceeds its storage of ${st.numel} elements`);
  }
  return new LazyTensor(st, dtypeOverride ?? st.dtype, shape, strides, offset as number);
}

function torchGlobals(): Record<string, (...args: unknown[]) => unknown> {
  const g: Record<string, (...args: unknown[]) => unknown> = {
    'collections.OrderedDict': () => new Map(),
    'torch._utils._rebuild_tensor': (s, o, size, stride) => rebuildTensor(s, o, size, stride),
    'torch._utils._rebuild_tensor_v2': (s, o, size, stride) => rebuildTensor(s, o, size, stride),
    'torch._utils._rebuild_tensor_v3': (s, o, size, stride, _rg, _hooks, dtype) =>
      rebuildTensor(s, o, size, stride, dtype instanceof AllowedGlobal ? TORCH_DTYPES[dtype.key.slice(6)] : undefined),
    'torch._utils._rebuild_parameter': (data) => data,
    'torch._utils._rebuild_parameter_with_state': (data) => data,
    'torch.Size': (dims) => dims,
    'builtins.set': (items) => new Set(Array.isArray(items) ? items : []),
  };
  // Storage classes and dtypes appear as values, never called; they still must be recognised, not reported.
  const inert = () => {
    throw new Error('a storage type or dtype cannot be called');
  };
  for (const name of Object.keys(STORAGE_TYPES)) {
    g[`torch.${name}`] = inert;
    g[`torch.cuda.${name}`] = inert;
  }
  for (const name of Object.keys(TORCH_DTYPES)) g[`torch.${name}`] = inert;
  return g;
}

function storageDType(type: unknown): RawDType {
  if (!(type instanceof AllowedGlobal)) throw new Error('storage of an unknown type');
  const name = type.key.split('.').pop()!;
  const dt = STORAGE_TYPES[name];
  if (!dt) throw new Error(`unsupported storage type ${type.key}`);
  return dt;
}

/** Opens a checkpoint of either format. Errors name the file and what is wrong. */
export async function openTorchFile(path: string): Promise<TorchFile> {
  let head: Buffer;
  let size: number;
  try {
    const fd = fs.openSync(path, 'r');
    try {
      size = fs.fstatSync(fd).size;
      head = Buffer.alloc(Math.min(16, size));
      fs.readSync(fd, head, 0, head.length, 0);
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new FormatError(path, code === 'ENOENT' ? 'file not found' : `cannot read (${code ?? String(err)})`);
  }
  if (size === 0) throw new FormatError(path, 'file is empty', 'the download or copy did not finish');
  try {
    if (isZip(head)) return await openZip(path);
    if (head[0] === 0x80) return openLegacy(path, size);
  } catch (err) {
    if (err instanceof FormatError) throw err;
    throw new FormatError(path, describe(err), 'the file is corrupt or truncated; download it again');
  }
  throw new FormatError(path, 'not a PyTorch checkpoint (neither a zip archive nor a pickle stream)');
}

function describe(err: unknown): string {
  if (err instanceof PickleError) return `corrupt pickle: ${err.message}`;
  if (err instanceof RangeError) return `corrupt data: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

async function openZip(path: string): Promise<TorchFile> {
  const zip = await ZipArchive.open(path);
  try {
    const pkl = [...zip.entries.keys()].filter((n) => n.endsWith('data.pkl') && n.split('/').length === 2).sort()[0];
    if (!pkl) throw new FormatError(path, 'zip archive without a <name>/data.pkl entry', 'not a torch.save file');
    const prefix = pkl.slice(0, -'data.pkl'.length);
    const format: TorchFormat = zip.entries.has(`${prefix}constants.pkl`) || [...zip.entries.keys()].some((n) => n.startsWith(`${prefix}code/`)) ? 'torchscript' : 'zip';
    const storages = new Map<string, StorageRef>();
    const persistentLoad = (pid: unknown): StorageRef => {
      if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) throw new Error('unsupported persistent id');
      const [, type, key, , count] = pid as [string, unknown, unknown, unknown, unknown];
      if (typeof key !== 'string') throw new Error('storage key is not a string');
      const seen = storages.get(key);
      if (seen) return seen;
      const dtype = storageDType(type);
      if (!Number.isSafeInteger(count) || (count as number) < 0) throw new Error(`storage ${key} has a bad element count`);
      const entry = zip.entries.get(`${prefix}data/${key}`);
      if (!entry) throw new Error(`storage ${key} has no data entry`);
      if ((count as number) * dtype.bytes > entry.size) {
        throw new Error(`storage ${key} claims ${count} x ${dtype.bytes} bytes but its entry holds ${entry.size}`);
      }
      const ref: StorageRef = {
        key,
        dtype,
        numel: count as number,
        readElements: (start, n) => zip.readRange(entry, start * dtype.bytes, n * dtype.bytes),
      };
      storages.set(key, ref);
      return ref;
    };
    const bytes = zip.readEntry(zip.entries.get(pkl)!);
    const res = unpickle(bytes, 0, { globals: torchGlobals(), persistentLoad });
    return { path, format, root: res.value, unknownGlobals: res.unknownGlobals, close: () => zip.close() };
  } catch (err) {
    zip.close();
    throw err;
  }
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

function openLegacy(path: string, size: number): TorchFile {
  const fd = fs.openSync(path, 'r');
  try {
    // The pickles sit at the start of the file, followed by the raw storages. Read a window that grows until the
    // pickles parse, so a multi-GB file is never read whole.
    let window = Math.min(size, 1 << 22);
    for (;;) {
      const buf = Buffer.alloc(window);
      fs.readSync(fd, buf, 0, window, 0);
      try {
        return parseLegacy(path, fd, buf, size);
      } catch (err) {
        const truncated = err instanceof PickleError && /truncated|unterminated/.test(err.message);
        if (!truncated || window >= size) throw err;
        window = Math.min(size, window * 4);
      }
    }
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

function parseLegacy(path: string, fd: number, buf: Buffer, size: number): TorchFile {
  const noGlobals = { globals: {} };
  const magic = unpickle(buf, 0, noGlobals);
  if (magic.value !== LEGACY_MAGIC) {
    throw new FormatError(path, 'pickle stream without the torch magic number', 'not a torch.save file');
  }
  const proto = unpickle(buf, magic.end, noGlobals);
  if (proto.value !== 1001) throw new FormatError(path, `unsupported legacy protocol ${String(proto.value)}`);
  const sysInfo = unpickle(buf, proto.end, { globals: {} });
  const info = sysInfo.value instanceof Map ? sysInfo.value : new Map();
  if (info.get('little_endian') === false) throw new FormatError(path, 'big-endian checkpoints are not supported');

  interface LegacyStorage extends StorageRef {
    dataOffset: number;
  }
  const storages = new Map<string, LegacyStorage>();
  const views: { root: LegacyStorage; viewKey: string; offset: number; count: number; ref: StorageRef }[] = [];
  const persistentLoad = (pid: unknown): StorageRef => {
    if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) throw new Error('unsupported persistent id');
    const [, type, key, , count, viewMeta] = pid as unknown[];
    if (typeof key !== 'string') throw new Error('storage key is not a string');
    const dtype = storageDType(type);
    if (!Number.isSafeInteger(count) || (count as number) < 0) throw new Error(`storage ${key} has a bad element count`);
    let root = storages.get(key);
    if (!root) {
      const r: LegacyStorage = {
        key,
        dtype,
        numel: count as number,
        dataOffset: -1,
        readElements: (start, n) => {
          if (r.dataOffset < 0) throw new Error(`storage ${key} has no data`);
          if (start < 0 || start + n > r.numel) throw new Error(`read outside storage ${key}`);
          const out = Buffer.alloc(n * dtype.bytes);
          const got = fs.readSync(fd, out, 0, out.length, r.dataOffset + start * dtype.bytes);
          if (got !== out.length) throw new Error(`storage ${key} is truncated`);
          return out;
        },
      };
      root = r;
      storages.set(key, root);
    }
    if (viewMeta == null) return root;
    // Pre-1.0 storage views: (view_key, offset, view_size) into the root storage.
    const [viewKey, offset, viewSize] = asIntArrayLoose(viewMeta);
    const existing = views.find((v) => v.viewKey === String(viewKey));
    if (existing) return existing.ref;
    const rootRef = root;
    const ref: StorageRef = {
      key: String(viewKey),
      dtype,
      numel: viewSize as number,
      readElements: (start, n) => {
        if (start + n > (viewSize as number)) throw new Error('read outside storage view');
        return rootRef.readElements((offset as number) + start, n);
      },
    };
    views.push({ root, viewKey: String(viewKey), offset: offset as number, count: viewSize as number, ref });
    return ref;
  };
  const main = unpickle(buf, sysInfo.end, { globals: torchGlobals(), persistentLoad });
  const keyList = unpickle(buf, main.end, noGlobals);
  if (!Array.isArray(keyList.value)) throw new FormatError(path, 'storage key list missing after the object pickle');
  let pos = keyList.end;
  for (const key of keyList.value as unknown[]) {
    const st = storages.get(String(key));
    if (!st) throw new FormatError(path, `storage ${String(key)} listed but never used`);
    const nb = Buffer.alloc(8);
    if (pos + 8 > size || fs.readSync(fd, nb, 0, 8, pos) !== 8) throw new FormatError(path, `truncated before storage ${st.key}`, 'download the file again');
    const count = nb.readBigInt64LE(0);
    if (count !== BigInt(st.numel)) throw new FormatError(path, `storage ${st.key} holds ${count} elements, the pickle says ${st.numel}`);
    st.dataOffset = pos + 8;
    pos = st.dataOffset + st.numel * st.dtype.bytes;
    if (pos > size) throw new FormatError(path, `storage ${st.key} is truncated (file ends at byte ${size}, data needs ${pos})`, 'download the file again');
  }
  for (const v of views) {
    if (v.offset < 0 || v.offset + v.count > v.root.numel) throw new FormatError(path, `storage view ${v.viewKey} exceeds its root storage`);
  }
  const unknownGlobals = [...new Set([...sysInfo.unknownGlobals, ...main.unknownGlobals])];
  return { path, format: 'legacy', root: main.value, unknownGlobals, close: () => fs.closeSync(fd) };
}

function asIntArrayLoose(v: unknown): unknown[] {
  if (!Array.isArray(v) || v.length < 3) throw new Error('bad storage view metadata');
  if (!Number.isSafeInteger(v[1]) || !Number.isSafeInteger(v[2]) || (v[1] as number) < 0 || (v[2] as number) < 0) {
    throw new Error('bad storage view metadata');
  }
  return v;
}

/**
 * The model weights in a checkpoint, keyed as `model.state_dict()` names them:
 * - Lightning / taming checkpoints: the `state_dict` entry;
 * - plain `torch.save(model.state_dict())` files and Hugging Face `pytorch_model.bin`: the root dict;
 * - TorchScript archives: parameters and buffers found by walking the module tree.
 */
export function stateDict(file: TorchFile): Map<string, LazyTensor> {
  if (file.format === 'torchscript') return moduleTreeTensors(file.root);
  const root = file.root;
  if (root instanceof Map) {
    for (const key of ['state_dict', 'model_state_dict', 'model']) {
      const inner = root.get(key);
      if (inner instanceof Map && [...inner.values()].some((v) => v instanceof LazyTensor)) return tensorEntries(inner);
    }
    return tensorEntries(root);
  }
  if (root instanceof PyObject) return moduleTreeTensors(root);
  throw new FormatError(file.path, 'holds no dictionary of tensors', 'expected a checkpoint or state dict saved with torch.save');
}

function tensorEntries(m: Map<unknown, unknown>): Map<string, LazyTensor> {
  const out = new Map<string, LazyTensor>();
  for (const [k, v] of m) if (typeof k === 'string' && v instanceof LazyTensor) out.set(k, v);
  return out;
}

/** Walks a pickled module tree (TorchScript data.pkl): each module's BUILD state holds its tensors and children. */
function moduleTreeTensors(root: unknown): Map<string, LazyTensor> {
  const out = new Map<string, LazyTensor>();
  const seen = new Set<unknown>();
  const visit = (obj: unknown, prefix: string) => {
    if (!(obj instanceof PyObject) || seen.has(obj)) return;
    seen.add(obj);
    const state = obj.state;
    const items: [unknown, unknown][] = state instanceof Map ? [...state.entries()] : obj.dictItems;
    for (const [k, v] of items) {
      if (typeof k !== 'string') continue;
      const name = prefix ? `${prefix}.${k}` : k;
      if (v instanceof LazyTensor) out.set(name, v);
      else if (v instanceof PyObject) visit(v, name);
    }
  };
  visit(root, '');
  return out;
}
