// A restricted unpickler (protocols 0-5). Nothing in a pickle is ever executed: only globals on an allow-list are
// built (by JavaScript functions that this module's caller supplies); any other global becomes an inert
// `PyGlobal` record, calls to it become `PyObject` records, and every such name is reported. All reads are
// bounds-checked against the input, lengths are validated before anything is allocated, and the loop consumes at
// least one byte per opcode, so corrupt input ends in a PickleError, never a hang or an out-of-memory crash.

export class PickleError extends Error {
  constructor(
    message: string,
    readonly offset: number,
    /** Set when the input ended early: the input length that would have been needed to go on (at least). */
    readonly needBytes?: number,
  ) {
    super(`${message} at byte ${offset}`);
    this.name = 'PickleError';
  }
}

/** A module-level name in the pickle (class or function) that is not on the allow-list. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** An object built from a non-allow-listed global: its constructor arguments and BUILD state, kept inert. */
export class PyObject {
  state: unknown = undefined;
  readonly items: unknown[] = [];
  readonly dictItems: [unknown, unknown][] = [];
  constructor(readonly cls: PyGlobal | unknown, readonly args: unknown[]) {}
}

export class PyTuple extends Array<unknown> {
  static fromItems(items: unknown[]): PyTuple {
    const t = new PyTuple();
    for (const x of items) t.push(x);
    return t;
  }
}

/** Python dicts keep any hashable key (strings, ints, tuples, even classes): a Map preserves them and their order. */
export type PyDict = Map<unknown, unknown>;

export interface UnpickleOptions {
  /** Allow-listed globals, keyed "module.name": the value is called for REDUCE/NEWOBJ with the args. */
  globals?: Record<string, (...args: unknown[]) => unknown>;
  /** Called for persistent ids (torch storages). */
  persistentLoad?: (pid: unknown) => unknown;
  /** Stops the parse early when the allowed work is exceeded (defence against pathological inputs). */
  maxMemo?: number;
  /** Most opcodes executed: bounds the objects (and memory) a hostile pickle can create. */
  maxOps?: number;
  /** Deepest MARK nesting allowed (real pickles nest a few levels). */
  maxDepth?: number;
}

/** Longest integer literal accepted (Python's own default limit for decimal text is 4300 digits). */
const MAX_INT_DIGITS = 4300;
/** Longest LONG1/LONG4 payload accepted; real pickles use a few bytes (torch's legacy magic number is 10). */
const MAX_LONG_BYTES = 4096;
/** Most arguments an allow-listed function is called with (torch's rebuild functions take at most 7). */
const MAX_CALL_ARGS = 64;

export interface UnpickleResult {
  value: unknown;
  /** Byte offset just after the STOP opcode (legacy torch files hold several pickles back to back). */
  end: number;
  unknownGlobals: string[];
}

/** An allow-listed global as it sits in the pickle before it is called (e.g. a storage type inside a persistent id). */
export class AllowedGlobal {
  constructor(readonly key: string, readonly fn: (...args: unknown[]) => unknown) {}
}

export function unpickle(bytes: Uint8Array, start = 0, opts: UnpickleOptions = {}): UnpickleResult {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const globals = opts.globals ?? {};
  const maxMemo = opts.maxMemo ?? 10_000_000;
  const maxOps = opts.maxOps ?? 8_000_000;
  const maxDepth = opts.maxDepth ?? 10_000;
  let ops = 0;
  const unknown = new Set<string>();
  let pos = start;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const latin1 = new TextDecoder('latin1');
  const utf8 = new TextDecoder('utf-8', { fatal: false });

  const fail = (msg: string): never => {
    throw new PickleError(msg, pos);
  };
  const need = (n: number) => {
    if (n < 0) fail('negative length');
    if (pos + n > bytes.length) throw new PickleError(`truncated pickle: need ${n} bytes`, pos, pos + n);
  };
  const u8 = () => {
    need(1);
    return bytes[pos++];
  };
  const u16 = () => {
    need(2);
    const v = view.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = () => {
    need(4);
    const v = view.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = () => {
    need(4);
    const v = view.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${v} is absurd`);
    return Number(v);
  };
  const take = (n: number) => {
    need(n);
    const s = bytes.subarray(pos, pos + n);
    pos += n;
    return s;
  };
  const line = () => {
    const e = bytes.indexOf(0x0a, pos);
    if (e < 0) throw new PickleError('unterminated text line', pos, bytes.length + 1);
    const s = latin1.decode(bytes.subarray(pos, e));
    pos = e + 1;
    return s;
  };
  const pop = () => {
    if (!stack.length) fail('stack underflow');
    return stack.pop();
  };
  const top = () => {
    if (!stack.length) fail('stack underflow');
    return stack[stack.length - 1];
  };
  const popMark = () => {
    if (!metastack.length) fail('MARK missing');
    const items = stack;
    stack = metastack.pop()!;
    return items;
  };
  const decodeLong = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    if (b.length > MAX_LONG_BYTES) fail(`integer of ${b.length} bytes is too long`);
    // Little-endian two's complement; one hex parse keeps this linear in the length.
    let hexDigits = '';
    for (let i = b.length - 1; i >= 0; i--) hexDigits += b[i].toString(16).padStart(2, '0');
    let v = BigInt(`0x${hexDigits}`);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const parseDecimal = (s: string, what: string): number | bigint => {
    if (s.length > MAX_INT_DIGITS + 1 || !/^[-+]?\d+$/.test(s)) fail(`bad ${what}`);
    const v = BigInt(s);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const findGlobal = (module: string, name: string): unknown => {
    const key = `${module}.${name}`;
    const fn = globals[key];
    if (fn) return new AllowedGlobal(key, fn);
    unknown.add(key);
    return new PyGlobal(module, name);
  };
  const call = (callable: unknown, args: unknown[]): unknown => {
    if (callable instanceof AllowedGlobal) {
      if (args.length > MAX_CALL_ARGS) fail(`${callable.key} called with ${args.length} arguments`);
      try {
        return callable.fn(...args);
      } catch (err) {
        if (err instanceof PickleError) throw err;
        return fail(`${callable.key}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (callable instanceof PyGlobal) return new PyObject(callable, args);
    // Calling a non-global (e.g. a record) is never meaningful in the files we read: keep it inert.
    return new PyObject(callable, args);
  };
  const setItem = (obj: unknown, k: unknown, v: unknown) => {
    if (obj instanceof Map) obj.set(k, v);
    else if (obj instanceof PyObject) obj.dictItems.push([k, v]);
    else fail('SETITEM on a non-dict');
  };
  const append = (obj: unknown, v: unknown) => {
    if (Array.isArray(obj)) obj.push(v);
    else if (obj instanceof PyObject) obj.items.push(v);
    else fail('APPEND on a non-list');
  };
  const memoPut = (i: number, v: unknown) => {
    if (memo.size >= maxMemo && !memo.has(i)) fail('memo too large');
    memo.set(i, v);
  };
  const memoGet = (i: number) => {
    if (!memo.has(i)) fail(`memo key ${i} missing`);
    return memo.get(i);
  };

  const persistent = (pid: unknown): unknown => {
    if (!opts.persistentLoad) return fail('persistent id without a loader');
    try {
      return opts.persistentLoad(pid);
    } catch (err) {
      if (err instanceof PickleError) throw err;
      return fail(err instanceof Error ? err.message : String(err));
    }
  };

  for (;;) {
    if (++ops > maxOps) fail(`more than ${maxOps} opcodes: not a checkpoint pickle`);
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail('unsupported pickle protocol');
        break;
      case 0x95: // FRAME: only a hint
        u64();
        break;
      case 0x2e: // STOP
        return { value: pop(), end: pos, unknownGlobals: [...unknown] };
      case 0x28: // MARK
        if (metastack.length >= maxDepth) fail(`nesting deeper than ${maxDepth}`);
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88:
        stack.push(true);
        break;
      case 0x89:
        stack.push(false);
        break;
      case 0x49: {
        // INT (text): also encodes True/False in protocol 0
        const s = line();
        if (s === '01') stack.push(true);
        else if (s === '00') stack.push(false);
        else stack.push(parseDecimal(s, 'INT'));
        break;
      }
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x4c: {
        // LONG (text)
        stack.push(parseDecimal(line().replace(/L$/, ''), 'LONG'));
        break;
      }
      case 0x8a: // LONG1
        stack.push(decodeLong(take(u8())));
        break;
      case 0x8b: {
        // LONG4
        const n = i32();
        if (n < 0) fail('negative LONG4 length');
        stack.push(decodeLong(take(n)));
        break;
      }
      case 0x46: {
        // FLOAT (text)
        const v = Number(line());
        stack.push(v);
        break;
      }
      case 0x47: {
        // BINFLOAT: big-endian double
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x53: {
        // STRING (quoted text)
        let s = line();
        if (s.length >= 2 && (s[0] === "'" || s[0] === '"') && s[s.length - 1] === s[0]) s = s.slice(1, -1);
        else fail('bad STRING quoting');
        stack.push(s.replace(/\\x([0-9a-fA-F]{2})|\\(['"\\nrt])/g, (_m, hex, ch) => {
          if (hex) return String.fromCharCode(parseInt(hex, 16));
          return ({ n: '\n', r: '\r', t: '\t' } as Record<string, string>)[ch] ?? ch;
        }));
        break;
      }
      case 0x54: {
        // BINSTRING
        const n = i32();
        if (n < 0) fail('negative BINSTRING length');
        stack.push(latin1.decode(take(n)));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1.decode(take(u8())));
        break;
      case 0x56: // UNICODE (raw-unicode-escape text)
        stack.push(line().replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, a, b) => String.fromCodePoint(parseInt(a ?? b, 16))));
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8.decode(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8.decode(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8.decode(take(u64())));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(take(u64()).slice());
        break;
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()).slice());
        break;
      case 0x97: // NEXT_BUFFER (out-of-band buffers are never supplied)
      case 0x98: // READONLY_BUFFER
        fail('out-of-band buffers are not supported');
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(PyTuple.fromItems([]));
        break;
      case 0x74: {
        // TUPLE (popMark first: `stack.push(f())` would bind the pre-mark stack before f runs)
        const items = popMark();
        stack.push(PyTuple.fromItems(items));
        break;
      }
      case 0x85:
        stack.push(PyTuple.fromItems([pop()]));
        break;
      case 0x86: {
        const b = pop();
        const a = pop();
        stack.push(PyTuple.fromItems([a, b]));
        break;
      }
      case 0x87: {
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(PyTuple.fromItems([a, b, c]));
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: {
        // LIST
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        append(top(), v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        const list = top();
        for (const v of items) append(list, v);
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: {
        // DICT
        const items = popMark();
        const d = new Map();
        for (let i = 0; i + 1 < items.length; i += 2) d.set(items[i], items[i + 1]);
        stack.push(d);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItem(top(), k, v);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        const d = top();
        for (let i = 0; i + 1 < items.length; i += 2) setItem(d, items[i], items[i + 1]);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof Set)) fail('ADDITEMS on a non-set');
        for (const v of items) (s as Set<unknown>).add(v);
        break;
      }
      case 0x91: {
        // FROZENSET
        const items = popMark();
        stack.push(new Set(items));
        break;
      }
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line();
        const name = line();
        stack.push(findGlobal(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        stack.push(findGlobal(module as string, name as string));
        break;
      }
      case 0x82:
      case 0x83:
      case 0x84:
        fail('extension registry codes are not supported');
        break;
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        if (!Array.isArray(args)) fail('REDUCE arguments are not a tuple');
        stack.push(call(fn, args as unknown[]));
        break;
      }
      case 0x81: {
        // NEWOBJ
        const args = pop();
        const cls = pop();
        if (!Array.isArray(args)) fail('NEWOBJ arguments are not a tuple');
        stack.push(call(cls, args as unknown[]));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX
        pop(); // kwargs: ignored, the object stays inert
        const args = pop();
        const cls = pop();
        if (!Array.isArray(args)) fail('NEWOBJ_EX arguments are not a tuple');
        stack.push(call(cls, args as unknown[]));
        break;
      }
      case 0x69: {
        // INST module\nname\n with args from the mark
        const module = line();
        const name = line();
        const args = popMark();
        const cls = findGlobal(module, name);
        stack.push(call(cls, args));
        break;
      }
      case 0x6f: {
        // OBJ: cls and args from the mark
        const items = popMark();
        if (!items.length) fail('OBJ without a class');
        stack.push(call(items[0], items.slice(1)));
        break;
      }
      case 0x62: {
        // BUILD
        const state = pop();
        const obj = top();
        if (obj instanceof PyObject) obj.state = state;
        else if (obj && typeof obj === 'object' && 'setState' in obj && typeof (obj as { setState: unknown }).setState === 'function') {
          (obj as { setState: (s: unknown) => void }).setState(state);
        }
        // BUILD on anything else (e.g. a tensor's empty state) is harmless to ignore.
        break;
      }
      case 0x50: {
        // PERSID (text)
        stack.push(persistent(line()));
        break;
      }
      case 0x51: {
        // BINPERSID
        stack.push(persistent(pop()));
        break;
      }
      case 0x67: {
        // GET (text index)
        const s = line();
        if (!/^\d+$/.test(s)) fail('bad GET index');
        stack.push(memoGet(Number(s)));
        break;
      }
      case 0x68:
        stack.push(memoGet(u8()));
        break;
      case 0x6a:
        stack.push(memoGet(u32()));
        break;
      case 0x70: {
        const s = line();
        if (!/^\d+$/.test(s)) fail('bad PUT index');
        memoPut(Number(s), top());
        break;
      }
      case 0x71:
        memoPut(u8(), top());
        break;
      case 0x72:
        memoPut(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memoPut(memo.size, top());
        break;
      default:
        fail(`unknown opcode 0x${op.toString(16)}`);
    }
  }
}
