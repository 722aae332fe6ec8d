// PyTorch checkpoints: the zip format (torch >= 1.6, incl. TorchScript archives) and the legacy pickle-stream
// format (torch.save(..., _use_new_zipfile_serialization=False)). The pickled object tree is rebuilt by the
// restricted unpickler; tensors become LazyTensor records that point into the file and are read on demand, so a
// multi-GB checkpoint opens in milliseconds and only the tensors a model needs are ever read. Every size a header
// claims is checked against the file before anything is allocated, and every failure is a FormatError that names
// the file.
import { FormatError, numel, type HostTensor } from './host-tensor.ts';
import { AllowedGlobal, PickleError, PyGlobal, PyObject, unpickle } from './pickle.ts';
import { RAW_DTYPES, contiguousStrides, decodeElements, gatherStrided, type RawDType } from './raw.ts';
import { BufferSource, type ByteSource, toSource } from './source.ts';
import { ZipArchive, isZip } from './zip.ts';

/** Refuse tensors with more elements than this before allocating anything (16 G elements = 64 GB of float32). */
const MAX_TENSOR_ELEMENTS = 2 ** 34;
/** Largest object pickle accepted: real ones are a few MB even for checkpoints with 100k tensors. */
const MAX_PICKLE_BYTES = 64 * 2 ** 20;

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

/**
 * The parameters and buffers of OpenAI's released CLIP TorchScript archives that `clip.model.build_model` deletes
 * before building the model (0-d int64 values). stateDict() keeps them; model loaders simply never ask for them.
 */
export const CLIP_TORCHSCRIPT_EXTRAS = ['input_resolution', 'context_length', 'vocab_size'] as const;

/** A storage (flat typed buffer) inside a checkpoint file. */
export interface StorageRef {
  key: string;
  dtype: RawDType;
  numel: number;
  /** Reads `count` elements starting at element `start`. */
  readElements(start: number, count: number): Uint8Array;
  /** The file it lives in, for error messages. */
  file?: string;
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

  /** Elements of the storage the view spans, from `offset` (1 past the largest index). */
  get extent(): number {
    if (this.numel === 0) return 0;
    let extent = 1;
    for (let d = 0; d < this.shape.length; d++) extent += (this.shape[d] - 1) * this.strides[d];
    return extent;
  }

  /** Reads the tensor: only its extent of the storage; views with offsets and strides are honoured. */
  read(): HostTensor {
    try {
      const n = this.numel;
      const extent = this.extent;
      const bytes = extent ? this.storage.readElements(this.offset, extent) : new Uint8Array(0);
      const flat = decodeElements(bytes, this.dtype, extent);
      const data = extent === n && isContiguous(this.shape, this.strides) ? flat : gatherStrided(flat, this.shape, this.strides, 0);
      return { dtype: this.dtype.host, shape: [...this.shape], data };
    } catch (err) {
      if (err instanceof FormatError) throw err;
      throw new FormatError(this.storage.file ?? '<checkpoint>', `cannot read tensor data of storage ${this.storage.key}: ${(err as Error).message}`, 'the file is corrupt');
    }
  }

  /** The tensor's raw little-endian bytes in its stored dtype, contiguous (for lossless conversion). */
  readRaw(): Uint8Array {
    const n = this.numel;
    const extent = this.extent;
    const bytes = extent ? this.storage.readElements(this.offset, extent) : new Uint8Array(0);
    if (extent === n && isContiguous(this.shape, this.strides)) return bytes;
    // Gather element-sized byte groups: view the bytes as elements of an integer type of the same width.
    const w = this.dtype.bytes;
    const aligned = new Uint8Array(bytes.length);
    aligned.set(bytes);
    const asInts = w === 8 ? new BigInt64Array(aligned.buffer) : w === 4 ? new Int32Array(aligned.buffer) : w === 2 ? new Int16Array(aligned.buffer) : aligned;
    const out = gatherStrided(asInts, this.shape, this.strides, 0);
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  }
}

function isContiguous(shape: number[], strides: number[]): boolean {
  const c = contiguousStrides(shape);
  return strides.every((s, d) => s === c[d] || shape[d] === 1);
}

export type TorchFormat = 'zip' | 'legacy' | 'torchscript';

/** Where a storage's bytes are: a zip entry, or a byte offset in a legacy stream. */
export interface StorageInfo {
  key: string;
  dtype: string;
  numel: number;
  bytes: number;
  /** Zip entry name (zip/TorchScript) ... */
  entry?: string;
  /** ... or the absolute offset of the data in a legacy file (its int64 element count sits just before). */
  dataOffset?: number;
}

export interface TorchFile {
  path: string;
  format: TorchFormat;
  /** The unpickled object: Maps for dicts, arrays for lists/tuples, LazyTensor, PyObject for unknown classes. */
  root: unknown;
  /** Globals the file names that are not on the allow-list (kept as inert records, never executed). */
  unknownGlobals: string[];
  /** Every storage the object pickle referenced. */
  storages: StorageInfo[];
  /** Size of the file in bytes. */
  size: number;
  close(): void;
}

function asIntArray(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || v.length > 64 || !v.every((x) => Number.isSafeInteger(x))) throw new Error(`${what} is not a list of integers`);
  return [...(v as number[])];
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
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (n > MAX_TENSOR_ELEMENTS) throw new Error(`tensor of shape [${shape}] is implausibly large`);
  }
  const dtype = dtypeOverride ?? st.dtype;
  if (dtype.bytes !== st.dtype.bytes) throw new Error(`tensor of ${dtype.name} on a ${st.dtype.name} storage`);
  if (n > 0) {
    let last = offset as number;
    for (let d = 0; d < shape.length; d++) last += (shape[d] - 1) * strides[d];
    if (!(last < st.numel)) throw new Error(`tensor view [${shape}] at offset ${offset} exceeds its storage of ${st.numel} elements`);
  }
  return new LazyTensor(st, dtype, shape, strides, offset as number);
}

function torchGlobals(): Record<string, (...args: unknown[]) => unknown> {
  const g: Record<string, (...args: unknown[]) => unknown> = {
    // OrderedDict() then SETITEMS (how torch pickles it), or OrderedDict([(key, value), ...]).
    'collections.OrderedDict': (items) => new Map(Array.isArray(items) ? items.filter((kv) => Array.isArray(kv) && kv.length === 2).map((kv) => [kv[0], kv[1]] as [unknown, unknown]) : []),
    'torch._utils._rebuild_tensor': (s, o, size, stride) => rebuildTensor(s, o, size, stride),
    'torch._utils._rebuild_tensor_v2': (s, o, size, stride) => rebuildTensor(s, o, size, stride),
    'torch._utils._rebuild_tensor_v3': (s, o, size, stride, _rg, _hooks, dtype) =>
      rebuildTensor(s, o, size, stride, dtype instanceof AllowedGlobal ? TORCH_DTYPES[dtype.key.slice(6)] : undefined),
    'torch._utils._rebuild_parameter': (data) => data,
    // Tensor subclasses (e.g. a pickled nn.Parameter in newer torch): rebuild the plain tensor, drop the type.
    'torch._tensor._rebuild_from_type_v2': (fn, _type, args) => {
      if (!(fn instanceof AllowedGlobal) || !Array.isArray(args) || args.length > 16) throw new Error('unsupported tensor subclass rebuild');
      return fn.fn(...args);
    },
    'torch._utils._rebuild_parameter_with_state': (data) => data,
    'torch.Size': (dims) => dims,
    'builtins.set': (items) => new Set(Array.isArray(items) ? items : []),
    // TorchScript pickles typed lists and dicts through these helpers; the value itself is what matters here.
    'torch.jit._pickle.build_intlist': (v) => v,
    'torch.jit._pickle.build_floatlist': (v) => v,
    'torch.jit._pickle.build_boollist': (v) => v,
    'torch.jit._pickle.build_doublelist': (v) => v,
    'torch.jit._pickle.build_tensorlist': (v) => v,
    'torch.jit._pickle.restore_type_tag': (v) => v,
    // Protocol-2 pickles of Python 3 bytes objects: _codecs.encode(text, 'latin1').
    '_codecs.encode': (text, encoding) => {
      if (typeof text !== 'string' || (encoding !== 'latin1' && encoding !== 'latin-1')) throw new Error('unsupported _codecs.encode call');
      return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
    },
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
  g['torch.Tensor'] = inert;
  g['torch.nn.parameter.Parameter'] = inert;
  return g;
}

function storageDType(type: unknown): RawDType {
  if (!(type instanceof AllowedGlobal)) throw new Error(`storage of an unknown type${type instanceof PyGlobal ? ` ${type.qualified}` : ''}`);
  const name = type.key.split('.').pop()!;
  const dt = STORAGE_TYPES[name];
  if (!dt) throw new Error(`unsupported storage type ${type.key}`);
  return dt;
}

function storageCount(count: unknown, key: string): number {
  if (!Number.isSafeInteger(count) || (count as number) < 0) throw new Error(`storage ${key} has a bad element count`);
  return count as number;
}

function describe(err: unknown): string {
  if (err instanceof PickleError) return `corrupt object pickle: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

export interface OpenOptions {
  /** Check CRC-32s of zip entries when they are read whole (default true). */
  verifyChecksums?: boolean;
}

/** Opens a checkpoint of either format from a path or a byte source. Errors name the file and what is wrong. */
export async function openTorchFile(input: string | ByteSource, opts: OpenOptions = {}): Promise<TorchFile> {
  const src = toSource(input);
  const owns = typeof input === 'string';
  try {
    if (src.size === 0) throw new FormatError(src.name, 'file is empty', 'the download or copy did not finish');
    const head = src.read(0, Math.min(16, src.size));
    if (isZip(head)) return await openZip(src, owns, opts);
    if (head[0] === 0x80) return openLegacy(src, owns);
    if (src.size > 262 && src.read(257, 5).toString('latin1') === 'ustar') {
      throw new FormatError(src.name, 'is a tar archive: the checkpoint format of torch before 0.4, not supported', 'load it with an old torch and save it again with a current one');
    }
    throw new FormatError(src.name, 'not a PyTorch checkpoint (neither a zip archive nor a pickle stream)');
  } catch (err) {
    if (owns) src.close();
    if (err instanceof FormatError) throw err;
    throw new FormatError(src.name, describe(err), 'the file is corrupt or truncated; download it again');
  }
}

/** A checkpoint already in memory (tests, data fetched elsewhere). */
export function openTorchBuffer(bytes: Uint8Array, name: string, opts: OpenOptions = {}): Promise<TorchFile> {
  return openTorchFile(new BufferSource(bytes, name), opts);
}

async function openZip(src: ByteSource, owns: boolean, opts: OpenOptions): Promise<TorchFile> {
  const path = src.name;
  const zip = await ZipArchive.open(src);
  zip.verifyChecksums = opts.verifyChecksums ?? true;
  {
    const names = [...zip.entries.keys()];
    const pkl = names.filter((n) => n.endsWith('/data.pkl') && n.split('/').length === 2).sort()[0] ?? (zip.entries.has('data.pkl') ? 'data.pkl' : undefined);
    if (!pkl) throw new FormatError(path, 'zip archive without a <name>/data.pkl entry', 'not a torch.save file');
    const prefix = pkl.slice(0, -'data.pkl'.length);
    const byteorder = zip.entries.get(`${prefix}byteorder`);
    if (byteorder && zip.readEntry(byteorder, 16).toString('latin1').trim() === 'big') {
      throw new FormatError(path, 'holds big-endian tensor data, which is not supported', 'save it again on a little-endian machine');
    }
    const format: TorchFormat = zip.entries.has(`${prefix}constants.pkl`) || names.some((n) => n.startsWith(`${prefix}code/`)) ? 'torchscript' : 'zip';
    const storages = new Map<string, StorageRef>();
    const infos: StorageInfo[] = [];
    const persistentLoad = (pid: unknown): StorageRef => {
      if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) throw new Error('unsupported persistent id');
      const [, type, key, , count] = pid as [string, unknown, unknown, unknown, unknown];
      if (typeof key !== 'string') throw new Error('storage key is not a string');
      const dtype = storageDType(type);
      const n = storageCount(count, key);
      const seen = storages.get(key);
      if (seen) {
        if (seen.dtype !== dtype || seen.numel !== n) throw new Error(`storage ${key} is described two different ways`);
        return seen;
      }
      const name = `${prefix}data/${key}`;
      const entry = zip.entries.get(name);
      if (!entry) throw new Error(`storage ${key} has no data entry ${name}`);
      // torch writes exactly numel * element size bytes per storage; anything else is a corrupt header.
      if (n * dtype.bytes !== entry.size) throw new Error(`storage ${key} claims ${n} x ${dtype.bytes} bytes but its entry holds ${entry.size}`);
      const ref: StorageRef = {
        key,
        dtype,
        numel: n,
        file: path,
        readElements: (start, count) => zip.readRange(entry, start * dtype.bytes, count * dtype.bytes),
      };
      storages.set(key, ref);
      infos.push({ key, dtype: dtype.name, numel: n, bytes: entry.size, entry: name });
      return ref;
    };
    const bytes = zip.readEntry(zip.entries.get(pkl)!, MAX_PICKLE_BYTES);
    const res = unpickle(bytes, 0, { globals: torchGlobals(), persistentLoad });
    return {
      path,
      format,
      root: res.value,
      unknownGlobals: res.unknownGlobals,
      storages: infos,
      size: src.size,
      close: () => {
        if (owns) src.close();
      },
    };
  }
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

function openLegacy(src: ByteSource, owns: boolean): TorchFile {
  // The pickles sit at the start of the file, followed by the raw storages. Read a window that grows until the
  // pickles parse, so a multi-GB file is never read whole.
  let window = Math.min(src.size, 1 << 22);
  for (;;) {
    const buf = src.read(0, window);
    try {
      return parseLegacy(src, buf, owns);
    } catch (err) {
      if (!(err instanceof PickleError) || err.needBytes === undefined) throw err;
      if (err.needBytes > src.size || window >= src.size) {
        throw new FormatError(src.name, `truncated: the object pickle needs ${err.needBytes} bytes, the file has ${src.size}`, 'download the file again');
      }
      if (err.needBytes > MAX_PICKLE_BYTES) throw new FormatError(src.name, `object pickle larger than ${MAX_PICKLE_BYTES} bytes`, 'not a checkpoint, or corrupt');
      window = Math.min(src.size, MAX_PICKLE_BYTES, Math.max(err.needBytes, window * 4));
    }
  }
}

function parseLegacy(src: ByteSource, buf: Buffer, owns: boolean): TorchFile {
  const path = src.name;
  const noGlobals = { globals: {} };
  const magic = unpickle(buf, 0, noGlobals);
  if (magic.value !== LEGACY_MAGIC) throw new FormatError(path, 'pickle stream without the torch magic number', 'not a torch.save file');
  const proto = unpickle(buf, magic.end, noGlobals);
  if (proto.value !== 1001) throw new FormatError(path, `unsupported legacy protocol ${String(proto.value).slice(0, 40)}`);
  const sysInfo = unpickle(buf, proto.end, noGlobals);
  const info = sysInfo.value instanceof Map ? sysInfo.value : new Map();
  if (info.get('little_endian') === false) throw new FormatError(path, 'big-endian checkpoints are not supported');

  interface LegacyStorage extends StorageRef {
    dataOffset: number;
  }
  const storages = new Map<string, LegacyStorage>();
  const views = new Map<string, { root: LegacyStorage; offset: number; count: number; ref: StorageRef }>();
  const persistentLoad = (pid: unknown): StorageRef => {
    if (!Array.isArray(pid) || pid[0] !== 'storage' || pid.length < 5) throw new Error('unsupported persistent id');
    const [, type, key, , count, viewMeta] = pid as unknown[];
    if (typeof key !== 'string') throw new Error('storage key is not a string');
    const dtype = storageDType(type);
    const n = storageCount(count, key);
    let root = storages.get(key);
    if (root && (root.dtype !== dtype || root.numel !== n)) throw new Error(`storage ${key} is described two different ways`);
    if (!root) {
      // A storage cannot hold more bytes than the file: refuse absurd counts before any allocation.
      if (n * dtype.bytes > src.size) throw new Error(`storage ${key} claims ${n} elements (${n * dtype.bytes} bytes), more than the whole file`);
      const r: LegacyStorage = {
        key,
        dtype,
        numel: n,
        file: path,
        dataOffset: -1,
        readElements: (start, count) => {
          if (r.dataOffset < 0) throw new Error(`storage ${key} has no data`);
          if (start < 0 || start + count > r.numel) throw new Error(`read outside storage ${key}`);
          return src.read(r.dataOffset + start * dtype.bytes, count * dtype.bytes);
        },
      };
      root = r;
      storages.set(key, root);
    }
    if (viewMeta == null) return root;
    // Pre-1.0 storage views: (view_key, offset, view_size) into the root storage.
    if (!Array.isArray(viewMeta) || viewMeta.length < 3) throw new Error('bad storage view metadata');
    const [viewKey, offset, viewSize] = viewMeta as unknown[];
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(viewSize) || (offset as number) < 0 || (viewSize as number) < 0) {
      throw new Error('bad storage view metadata');
    }
    if ((offset as number) + (viewSize as number) > n) throw new Error(`storage view ${String(viewKey)} exceeds its root storage`);
    const existing = views.get(String(viewKey));
    if (existing) return existing.ref;
    const rootRef = root;
    const ref: StorageRef = {
      key: String(viewKey),
      dtype,
      numel: viewSize as number,
      file: path,
      readElements: (start, cnt) => {
        if (start + cnt > (viewSize as number)) throw new Error('read outside storage view');
        return rootRef.readElements((offset as number) + start, cnt);
      },
    };
    views.set(String(viewKey), { root, offset: offset as number, count: viewSize as number, ref });
    return ref;
  };
  const main = unpickle(buf, sysInfo.end, { globals: torchGlobals(), persistentLoad });
  const keyList = unpickle(buf, main.end, noGlobals);
  if (!Array.isArray(keyList.value)) throw new FormatError(path, 'storage key list missing after the object pickle');
  let pos = keyList.end;
  const infos: StorageInfo[] = [];
  const placed = new Set<string>();
  for (const key of keyList.value as unknown[]) {
    const st = storages.get(String(key));
    if (!st) throw new FormatError(path, `storage ${String(key).slice(0, 40)} listed but never used`);
    if (placed.has(st.key)) throw new FormatError(path, `storage ${st.key} listed twice`);
    placed.add(st.key);
    if (pos + 8 > src.size) throw new FormatError(path, `truncated before storage ${st.key}`, 'download the file again');
    const count = src.read(pos, 8).readBigInt64LE(0);
    if (count !== BigInt(st.numel)) throw new FormatError(path, `storage ${st.key} holds ${count} elements, the pickle says ${st.numel}`, 'the file is corrupt');
    st.dataOffset = pos + 8;
    pos = st.dataOffset + st.numel * st.dtype.bytes;
    if (pos > src.size) throw new FormatError(path, `storage ${st.key} is truncated (file ends at byte ${src.size}, data needs ${pos})`, 'download the file again');
    infos.push({ key: st.key, dtype: st.dtype.name, numel: st.numel, bytes: st.numel * st.dtype.bytes, dataOffset: st.dataOffset });
  }
  for (const st of storages.values()) if (!placed.has(st.key)) throw new FormatError(path, `storage ${st.key} is used but its data is missing`, 'the file is corrupt');
  const unknownGlobals = [...new Set([...sysInfo.unknownGlobals, ...main.unknownGlobals])];
  return {
    path,
    format: 'legacy',
    root: main.value,
    unknownGlobals,
    storages: infos,
    size: src.size,
    close: () => {
      if (owns) src.close();
    },
  };
}

/**
 * The model weights in a checkpoint, keyed as `model.state_dict()` names them:
 * - Lightning / taming checkpoints: the `state_dict` entry;
 * - plain `torch.save(model.state_dict())` files and Hugging Face `pytorch_model.bin`: the root dict;
 * - TorchScript archives: parameters and buffers found by walking the module tree (OpenAI's CLIP archives also
 *   hold CLIP_TORCHSCRIPT_EXTRAS, which are kept).
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

/** Walks a pickled module tree (TorchScript data.pkl): each module's BUILD state holds its tensors and children.
 *  Iterative (no recursion limit on deep trees) and cycle-safe (memo references can make cycles). */
function moduleTreeTensors(root: unknown): Map<string, LazyTensor> {
  const out = new Map<string, LazyTensor>();
  const seen = new Set<unknown>();
  // Depth-first, children in attribute order, the same order module.state_dict() uses for traced modules.
  const todo: [unknown, string][] = [[root, '']];
  while (todo.length) {
    const [obj, prefix] = todo.pop()!;
    if (!(obj instanceof PyObject) || seen.has(obj)) continue;
    seen.add(obj);
    const items: [unknown, unknown][] = obj.state instanceof Map ? [...obj.state.entries()] : obj.dictItems;
    const children: [unknown, string][] = [];
    for (const [k, v] of items) {
      if (typeof k !== 'string') continue;
      const name = prefix ? `${prefix}.${k}` : k;
      if (v instanceof LazyTensor) out.set(name, v);
      else if (v instanceof PyObject) children.push([v, name]);
    }
    for (let i = children.length - 1; i >= 0; i--) todo.push(children[i]);
  }
  return out;
}

/**
 * Every tensor reachable from the unpickled object, with a readable path (e.g. `optimizer_states[0].state[179].exp_avg`),
 * including those outside the state dict. Iterative and cycle-safe; each tensor object is listed once.
 */
export function allTensors(root: unknown, limit = 1_000_000): Map<string, LazyTensor> {
  const out = new Map<string, LazyTensor>();
  const seen = new Set<unknown>();
  const todo: [unknown, string][] = [[root, '']];
  const keyName = (k: unknown): string => (typeof k === 'string' ? k : typeof k === 'number' || typeof k === 'bigint' ? String(k) : k instanceof PyGlobal ? k.qualified : '?');
  while (todo.length && out.size < limit) {
    const [obj, path] = todo.pop()!;
    if (obj instanceof LazyTensor) {
      if (!seen.has(obj)) out.set(path || '<root>', obj);
      seen.add(obj);
      continue;
    }
    if (!obj || typeof obj !== 'object' || seen.has(obj)) continue;
    seen.add(obj);
    const kids: [unknown, string][] = [];
    if (obj instanceof Map) for (const [k, v] of obj) kids.push([v, path ? `${path}.${keyName(k)}` : keyName(k)]);
    else if (Array.isArray(obj)) obj.forEach((v, i) => kids.push([v, `${path}[${i}]`]));
    else if (obj instanceof Set) [...obj].forEach((v, i) => kids.push([v, `${path}{${i}}`]));
    else if (obj instanceof PyObject) {
      kids.push([obj.state, path]);
      obj.args.forEach((v, i) => kids.push([v, `${path}(${i})`]));
      obj.items.forEach((v, i) => kids.push([v, `${path}[${i}]`]));
      for (const [k, v] of obj.dictItems) kids.push([v, path ? `${path}.${keyName(k)}` : keyName(k)]);
    }
    for (let i = kids.length - 1; i >= 0; i--) todo.push(kids[i]);
  }
  return out;
}
