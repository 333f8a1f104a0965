/**
 * The value encoding: one portable, binary, deterministic encoding for every part of a state
 * that is not laid out as records and collections. It is CBOR (RFC 8949) written and read by
 * `cbor-x`, wrapped so that every supported JavaScript value round-trips identically on Deno
 * and Bun, and so that the same value always gives the same bytes:
 *
 * | JavaScript | CBOR |
 * |---|---|
 * | `undefined`, `null`, booleans, strings | the simple values and text strings |
 * | numbers | integers up to 32 bits, else float64 (`NaN` canonical) |
 * | `-0` | tag 56578 around `0` (cbor-x would write it as the integer 0) |
 * | `bigint` (any size) | tag 2 / tag 3 bignums (RFC 8949 §3.4.3) |
 * | `Uint8Array` | byte strings |
 * | arrays | arrays (sparse arrays are refused) |
 * | plain objects | maps with text keys (tag 56579 holding `[k, v, …]` if a key is `__proto__`) |
 * | `Map` | tag 259 around a map |
 * | `Set` | tag 258 around an array |
 * | `Date` | tag 56577 around its time in milliseconds (exact, unlike tag 1's seconds) |
 *
 * Anything else (functions, symbols, class instances, cycles, strings with unpaired
 * surrogates, symbol-keyed properties, accessor properties and non-enumerable properties of
 * plain objects, properties of arrays other than their elements) is refused with a `CodecError`
 * naming its path: a value that would lose something when stored, while the writer kept it.
 * Decoding refuses anything this encoder would not have written, naming the storage key.
 *
 * @module
 */

import { Encoder } from "cbor-x/encode";
import { Decoder, Tag } from "cbor-x/decode";
import { errorMessage } from "../describe.ts";
import { CodecError } from "../errors.ts";
import { slowArrayFreeze } from "../runtime/process.ts";
import { child, describeKey, rawChild, renderPath, rootPath, type ValuePath } from "./path.ts";

/** Tag of a `Date`: its time value in milliseconds. Private to dgen. */
const TAG_DATE = 56577;
/** Tag of negative zero. Private to dgen. */
const TAG_NEGATIVE_ZERO = 56578;
/** Tag of a plain object given as `[key, value, …]` (used when it has a `__proto__` key). */
const TAG_OBJECT_ENTRIES = 56579;
const TAG_POSITIVE_BIGNUM = 2;
const TAG_NEGATIVE_BIGNUM = 3;
const TAG_SET = 258;

// Options are spelled out so that cbor-x's defaults (records, structured clone, packing,
// float32, toJSON) can never change the bytes: the format is what these options say.
const encoder = new Encoder(
  {
    useRecords: false,
    mapsAsObjects: true,
    useTag259ForMaps: true,
    tagUint8Array: false,
    structuredClone: false,
    pack: false,
    bundleStrings: false,
    variableMapSize: true,
    useFloat32: 0,
    alwaysUseFloat: false,
    largeBigIntToFloat: false,
    useToJSON: false,
  } as ConstructorParameters<typeof Encoder>[0],
);

const decoder = new Decoder(
  {
    useRecords: false,
    mapsAsObjects: true,
    copyBuffers: true,
  } as ConstructorParameters<typeof Decoder>[0],
);

/** Whether a string can be encoded as UTF-8 and read back unchanged (no unpaired surrogates). */
export function isWellFormed(s: string): boolean {
  // Fast path: most strings are ASCII or BMP text without surrogates.
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdfff) return s.isWellFormed();
  }
  return true;
}

/** Throws a `CodecError` at `path` if `s` holds unpaired surrogates. */
export function checkString(s: string, path: ValuePath, what = "A string"): void {
  if (!isWellFormed(s)) {
    throw new CodecError(
      `${what} with unpaired UTF-16 surrogates cannot be stored (it has no UTF-8 form)`,
      renderPath(path),
    );
  }
}

/** The class name of an object, for error messages. */
export function className(x: object): string {
  const ctor = (x as { constructor?: { name?: unknown } }).constructor;
  return typeof ctor?.name === "string" && ctor.name !== "" ? ctor.name : "an unknown class";
}

/** Throws the `CodecError` for a value of a type the codec does not store. */
export function unsupported(x: unknown, path: ValuePath): never {
  const where = renderPath(path);
  if (typeof x === "function") throw new CodecError("A function cannot be stored", where);
  if (typeof x === "symbol") throw new CodecError("A symbol cannot be stored", where);
  throw new CodecError(
    `An instance of ${className(x as object)} cannot be stored (supported: primitives, ` +
      "plain objects, arrays, Map, Set, Date and Uint8Array)",
    where,
  );
}

/**
 * The most containers (plain objects, arrays, `Map`s, `Set`s, records and collections included)
 * a state or value may nest, the outermost included: a container `MAX_NESTING` steps below the
 * root is refused on write. Part of the format: the decoder recurses, and the deepest value it
 * reads depends on the runtime's stack (Maps: 1,000 to 1,100 on Deno 2.9.6 in a fresh process,
 * about 15,000 on Bun 1.4.4), so without a fixed limit one runtime wrote what the other, or
 * itself after a restart, could not read. 500 leaves Deno a margin of two (docs/state-codec.md).
 */
export const MAX_NESTING = 500;

/** Throws the `CodecError` for a container `MAX_NESTING` or more steps below the root. */
export function tooDeep(path: ValuePath): never {
  throw new CodecError(
    `Nested deeper than the ${MAX_NESTING} containers (objects, arrays, Maps, Sets) a state or ` +
      "value may have",
    renderPath(path),
  );
}

/** Throws the `CodecError` for an object that contains itself. */
export function cycle(path: ValuePath): never {
  throw new CodecError("A cycle cannot be stored: this object contains itself", renderPath(path));
}

/** Checks that a plain object has no symbol-keyed properties (they would be lost). */
export function checkNoSymbolKeys(obj: object, path: ValuePath): void {
  if (Object.getOwnPropertySymbols(obj).length > 0) {
    throw new CodecError("Properties keyed by symbols cannot be stored", renderPath(path));
  }
}

const ownDescriptor = Object.getOwnPropertyDescriptor;
/** Whether `Reflect.ownKeys` of a plain object is cheap (JavaScriptCore), not V8's slow path. */
const ownKeysFast = slowArrayFreeze;
const isEnumerable = Object.prototype.propertyIsEnumerable;

/**
 * Checks that the own properties of plain object `obj` are exactly `keys` (its enumerable
 * string-keyed ones, from `Object.keys`): no symbol-keyed and no non-enumerable property, which
 * would be lost (the writer's copy would keep what storage does not). Accessors are refused
 * property by property, by {@link dataValue}.
 */
export function checkOwnKeys(obj: object, keys: readonly string[], path: ValuePath): void {
  // One count: a key more than `keys` is a symbol or not enumerable. JavaScriptCore lists every
  // key faster than V8 (an object of 5 properties: 30 against 240 ns), where listing the names
  // and the symbols apart costs 12 ns more than `Object.keys` alone.
  if (
    ownKeysFast
      ? Reflect.ownKeys(obj).length === keys.length
      : Object.getOwnPropertySymbols(obj).length === 0 &&
        Object.getOwnPropertyNames(obj).length === keys.length
  ) return;
  checkNoSymbolKeys(obj, path);
  for (const k of Object.getOwnPropertyNames(obj)) {
    if (!isEnumerable.call(obj, k)) {
      throw new CodecError(
        `A non-enumerable property ('${k}') cannot be stored: only enumerable properties are ` +
          "stored, so it would be lost; make it enumerable or leave it out",
        renderPath(child(path, k)),
      );
    }
  }
}

/**
 * The value of property `k` of plain object `obj` (one of its `Object.keys`), if it is a data
 * property; a `CodecError` naming its path if it is an accessor. The stored value would be
 * what the getter returned once, while the writer's copy kept the live getter.
 */
export function dataValue(obj: object, k: string, path: ValuePath): unknown {
  const d = ownDescriptor(obj, k);
  if (d === undefined) return (obj as Record<string, unknown>)[k]; // a Proxy's odd answer
  if (d.get === undefined && d.set === undefined) return d.value;
  throw new CodecError(
    d.get !== undefined
      ? `A getter (accessor property '${k}') cannot be stored: stored values are data; ` +
        "store the value it returns"
      : `A setter (accessor property '${k}' without a getter) cannot be stored: stored ` +
        "values are data",
    renderPath(child(path, k)),
  );
}

/** Whether `k` is the name of an element of an array of length `length`. */
function isIndex(k: string, length: number): boolean {
  const i = Number(k);
  return Number.isInteger(i) && i >= 0 && i < length && String(i) === k;
}

/**
 * The longest array whose other properties {@link checkArrayProperties} looks for: listing an
 * array's keys costs about 50 ns an element on V8 and 110 ns on JavaScriptCore, 2-5 times
 * encoding an array of numbers, so longer arrays (rewritten whole when they change) are not
 * checked, as a stored collection's diff is not.
 */
export const ARRAY_PROPERTIES_CHECKED = 1000;

/**
 * Checks that array `arr` (of at most {@link ARRAY_PROPERTIES_CHECKED} elements) has no own
 * property but its elements and `length`: a property set on
 * an array (`Object.assign([1, 2], { owner: "x" })`), enumerable or not, or keyed by a symbol,
 * would be lost (only elements are stored). The check lists the array's keys: no engine lists
 * an array's other properties without its indices. `Reflect.ownKeys` is the cheapest complete
 * list measured (10,000 elements: about 520 µs on V8, 1,100 µs on JavaScriptCore; one call
 * covers symbols too), so it is made where an array is encoded in full, never by the diff of a
 * stored collection (docs/state-codec.md). A sparse array passes if its holes outnumber its other
 * properties: holes are refused elsewhere.
 */
export function checkArrayProperties(arr: readonly unknown[], path: ValuePath): void {
  // Past this length the list costs 2-5 times encoding the elements: not made (documented).
  if (arr.length > ARRAY_PROPERTIES_CHECKED) return;
  const keys = Reflect.ownKeys(arr);
  if (keys.length === arr.length + 1) return;
  for (const k of keys) {
    if (typeof k === "symbol") checkNoSymbolKeys(arr, path);
    else if (k !== "length" && !isIndex(k, arr.length)) {
      throw new CodecError(
        `An array with a property other than its elements ('${k}') cannot be stored: only ` +
          "elements are stored, so it would be lost; keep it in an object beside the array",
        renderPath(child(path, k)),
      );
    }
  }
}

/** Whether `x` is a plain object (made by `{}`, `Object.create(null)` or JSON). */
export function isPlain(x: unknown): x is Record<string, unknown> {
  if (typeof x !== "object" || x === null) return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

/** Whether `x` is an array made by `[]` or `Array` (not a subclass). */
export function isPlainArray(x: unknown): x is unknown[] {
  return Array.isArray(x) && Object.getPrototypeOf(x) === Array.prototype;
}

/**
 * Whether `x` is a mutable leaf container: a `Map`, `Set`, `Date` or `Uint8Array`. Such
 * objects cannot be frozen, so an unchanged reference does not prove unchanged content.
 */
export function isMutableLeaf(x: object): boolean {
  return x instanceof Uint8Array || x instanceof Map || x instanceof Set || x instanceof Date;
}

function bigintTag(n: bigint): Tag {
  // RFC 8949 §3.4.3: tag 2 holds n, tag 3 holds -1 - n, as big-endian bytes.
  let m = n >= 0n ? n : -1n - n;
  const bytes: number[] = [];
  while (m > 0n) {
    bytes.push(Number(m & 0xffn));
    m >>= 8n;
  }
  return new Tag(
    Uint8Array.from(bytes.reverse()),
    n >= 0n ? TAG_POSITIVE_BIGNUM : TAG_NEGATIVE_BIGNUM,
  );
}

/** Mutable state of one encoding walk. */
interface Walk {
  /** Objects on the path from the root to the current one (cycle detection). */
  readonly ancestors: Set<object>;
  /** Whether a mutable leaf container was met. */
  mutable: boolean;
  /** Whether an array counts as a mutable container (one `freeze` leaves unfrozen). */
  readonly unfrozen: ((arr: unknown[]) => boolean) | undefined;
  /**
   * Whether the value was checked when it was stored (see {@link encodeValue}): its arrays'
   * other properties and its objects' accessors and non-enumerable properties are not looked for.
   */
  readonly trusted: boolean;
}

/** Turns a value into what `cbor-x` writes exactly as the table above says. */
function prepare(v: unknown, path: ValuePath, walk: Walk): unknown {
  switch (typeof v) {
    case "string":
      checkString(v, path);
      return v;
    case "number":
      // NaN's bits vary with how it was computed; the format has one NaN.
      if (v !== v) return NaN;
      return v === 0 && 1 / v < 0 ? new Tag(0, TAG_NEGATIVE_ZERO) : v;
    case "boolean":
    case "undefined":
      return v;
    case "bigint":
      return bigintTag(v);
    case "object":
      break;
    default:
      unsupported(v, path);
  }
  if (v === null) return null;
  if (walk.ancestors.has(v)) cycle(path);
  const proto = Object.getPrototypeOf(v);
  // Dates and bytes hold no other value: only containers count towards the nesting limit.
  if (path.depth >= MAX_NESTING && !(v instanceof Date || v instanceof Uint8Array)) tooDeep(path);
  if (proto === Array.prototype && Array.isArray(v)) {
    // An array freeze leaves unfrozen (a long collection, see the state codec's
    // freezeArrayLimit) can change in place; every other array is frozen with the state.
    if (walk.unfrozen?.(v) === true) walk.mutable = true;
    walk.ancestors.add(v);
    const out = new Array<unknown>(v.length);
    for (let i = 0; i < v.length; i++) {
      if (!(i in v)) {
        throw new CodecError("Sparse arrays (with holes) cannot be stored", renderPath(path));
      }
      out[i] = prepare(v[i], child(path, i), walk);
    }
    if (!walk.trusted) checkArrayProperties(v, path);
    walk.ancestors.delete(v);
    return out;
  }
  if (proto === Object.prototype || proto === null) {
    walk.ancestors.add(v);
    const obj = v as Record<string, unknown>;
    const keys = Object.keys(obj);
    if (walk.trusted) checkNoSymbolKeys(obj, path);
    else checkOwnKeys(obj, keys, path);
    // Only a checked object's properties are all data: a trusted one's are read as they are.
    const read = walk.trusted ? undefined : path;
    let out: unknown;
    if (Object.hasOwn(obj, "__proto__")) {
      // cbor-x renames a decoded `__proto__` key (prototype-pollution guard): spell the
      // object as a list of entries instead.
      const entries: unknown[] = [];
      for (const k of keys) {
        checkString(k, path, "A property name");
        const x = read === undefined ? obj[k] : dataValue(obj, k, read);
        entries.push(k, prepare(x, child(path, k), walk));
      }
      out = new Tag(entries, TAG_OBJECT_ENTRIES);
    } else {
      const o: Record<string, unknown> = {};
      for (const k of keys) {
        checkString(k, path, "A property name");
        o[k] = prepare(read === undefined ? obj[k] : dataValue(obj, k, read), child(path, k), walk);
      }
      out = o;
    }
    walk.ancestors.delete(v);
    return out;
  }
  if (v instanceof Uint8Array) {
    walk.mutable = true;
    // A view, so that subclasses (Node's Buffer) are written as plain bytes.
    return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  }
  if (v instanceof Date && proto === Date.prototype) {
    walk.mutable = true;
    const t = v.getTime();
    return new Tag(t !== t ? NaN : t, TAG_DATE);
  }
  if (v instanceof Map && proto === Map.prototype) {
    walk.mutable = true;
    walk.ancestors.add(v);
    const out = new Map<unknown, unknown>();
    let i = 0;
    for (const [k, x] of v) {
      const kk = prepare(k, rawChild(path, `.keys()[${i}]`), walk);
      out.set(kk, prepare(x, rawChild(path, `.get(${describeKey(k)})`), walk));
      i++;
    }
    walk.ancestors.delete(v);
    return out;
  }
  if (v instanceof Set && proto === Set.prototype) {
    walk.mutable = true;
    walk.ancestors.add(v);
    const out: unknown[] = [];
    let i = 0;
    for (const x of v) out.push(prepare(x, rawChild(path, `.values()[${i++}]`), walk));
    walk.ancestors.delete(v);
    return new Tag(out, TAG_SET);
  }
  unsupported(v, path);
}

/** Whether an error is the engine's stack overflow. */
export function isStackOverflow(e: unknown): boolean {
  return e instanceof RangeError && /call stack/i.test(e.message);
}

/**
 * What to throw for error `e`, met while walking `value` (whose path is `path`): `e` itself if
 * it is a `CodecError` or a stack overflow, else a `CodecError` saying that reading the value
 * threw (a getter that throws, a revoked `Proxy`, a `Proxy` trap that throws), naming the path
 * where it throws, with `e` as its cause. Such a value can never be stored, so the error must
 * not pass for a storage failure (which the runtime would retry for ever).
 *
 * The walks that read user values do not track where they are in a way that survives a throw,
 * so the path is found afterwards, by reading `value` again, carefully, at no cost to the walks.
 * A value that throws only once is named by `path`.
 */
export function unreadable(e: unknown, value: unknown, path: ValuePath): unknown {
  if (e instanceof CodecError || isStackOverflow(e)) return e;
  let at = path;
  try {
    at = locateThrow(value, path, new Set(), 0) ?? path;
  } catch {
    // Anything unforeseen: name the root of the walk.
  }
  return new CodecError(
    `Reading this value threw (a getter or a Proxy?): ${errorMessage(e)}`,
    renderPath(at),
    { cause: e },
  );
}

/** How deep {@link locateThrow} looks (it recurses, and must not overflow the stack). */
const LOCATE_DEPTH = MAX_NESTING;

/**
 * The path of the first part of `v` whose reading throws, reading what `prepare` and the state
 * codec read (prototype, keys, properties, entries); `undefined` if nothing throws.
 */
function locateThrow(
  v: unknown,
  path: ValuePath,
  seen: Set<object>,
  depth: number,
): ValuePath | undefined {
  if (typeof v !== "object" || v === null || depth > LOCATE_DEPTH) return undefined;
  let proto: unknown;
  let isArray: boolean;
  try {
    proto = Object.getPrototypeOf(v);
    isArray = Array.isArray(v);
  } catch {
    return path;
  }
  if (seen.has(v)) return undefined;
  seen.add(v);
  const inner = (x: unknown, p: ValuePath) => locateThrow(x, p, seen, depth + 1);
  if (isArray) {
    const arr = v as unknown[];
    let length: number;
    try {
      length = arr.length;
    } catch {
      return path;
    }
    for (let i = 0; i < length; i++) {
      let x: unknown;
      try {
        x = arr[i];
      } catch {
        return child(path, i);
      }
      const r = inner(x, child(path, i));
      if (r !== undefined) return r;
    }
    return undefined;
  }
  if (proto === Object.prototype || proto === null) {
    const obj = v as Record<string, unknown>;
    let keys: string[];
    try {
      keys = Object.keys(obj);
      Object.getOwnPropertySymbols(obj);
    } catch {
      return path;
    }
    for (const k of keys) {
      let x: unknown;
      try {
        x = obj[k];
      } catch {
        return child(path, k);
      }
      const r = inner(x, child(path, k));
      if (r !== undefined) return r;
    }
    return undefined;
  }
  if (v instanceof Map || v instanceof Set) {
    let entries: Array<[unknown, unknown]>;
    try {
      entries = v instanceof Map ? [...v] : [...v].map((x) => [x, undefined]);
    } catch {
      return path;
    }
    for (let i = 0; i < entries.length; i++) {
      const [k, x] = entries[i]!;
      if (v instanceof Set) {
        const r = inner(k, rawChild(path, `.values()[${i}]`));
        if (r !== undefined) return r;
        continue;
      }
      const r = inner(k, rawChild(path, `.keys()[${i}]`)) ??
        inner(x, rawChild(path, `.get(${describeKey(k)})`));
      if (r !== undefined) return r;
    }
    return undefined;
  }
  try {
    if (v instanceof Date) v.getTime();
    else if (v instanceof Uint8Array) void [v.buffer, v.byteOffset, v.byteLength];
  } catch {
    return path;
  }
  return undefined;
}

/** The result of {@link encodeValue}. */
export interface EncodedValue {
  /** The encoding (a fresh array owned by the caller). */
  bytes: Uint8Array;
  /** Whether the value holds a `Map`, `Set`, `Date` or `Uint8Array`. */
  mutable: boolean;
}

/**
 * Encodes `value`. Throws `CodecError` naming the path of anything that cannot be stored
 * (the root is `path`). `ancestors` are the objects that contain `value` (cycle detection);
 * the set is left as it was given. `unfrozen` says which arrays count as mutable containers
 * (those the state codec's `freeze` leaves unfrozen); by default none. `trusted` skips the
 * checks that cost most and that a value passed when it was stored (an array's properties other
 * than its elements, an object's accessors and non-enumerable properties): for re-encoding what
 * is stored, to compare.
 */
export function encodeValue(
  value: unknown,
  path: ValuePath,
  ancestors?: Set<object>,
  unfrozen?: (arr: unknown[]) => boolean,
  trusted = false,
): EncodedValue {
  // Small integers and booleans are most of what a state's leaves hold: write their CBOR
  // (RFC 8949 §3.1, shortest form, exactly what cbor-x writes) without the encoder's buffers.
  if (isSmallInt(value)) {
    return { bytes: smallInt(value), mutable: false };
  } else if (typeof value === "boolean") {
    return { bytes: new Uint8Array([value ? 0xf5 : 0xf4]), mutable: false };
  } else if (value === undefined) {
    return { bytes: new Uint8Array([0xf7]), mutable: false };
  } else if (value === null) {
    return { bytes: new Uint8Array([0xf6]), mutable: false };
  }
  const walk: Walk = { ancestors: ancestors ?? new Set(), mutable: false, unfrozen, trusted };
  let prepared: unknown;
  try {
    prepared = prepare(value, path, walk);
  } catch (e) {
    throw unreadable(e, value, path);
  }
  // cbor-x returns a view of its reusable buffer (a Buffer): copy it into a plain array.
  return { bytes: new Uint8Array(encoder.encode(prepared)), mutable: walk.mutable };
}

/** Whether {@link encodeValue} encodes `x` with {@link smallInt}. */
export function isSmallInt(x: unknown): x is number {
  return typeof x === "number" && Number.isInteger(x) && x >= -0x1_0000_0000 &&
    x < 0x1_0000_0000 && !Object.is(x, -0);
}

/**
 * CBOR of an integer in [-2^32, 2^32): major type 0 or 1, shortest argument; preceded by the
 * byte `lead` if given (a node's kind: one array instead of two).
 */
export function smallInt(n: number, lead?: number): Uint8Array {
  const major = n < 0 ? 0x20 : 0x00;
  const u = n < 0 ? -1 - n : n;
  const size = u < 24 ? 1 : u < 0x100 ? 2 : u < 0x10000 ? 3 : 5;
  const at = lead === undefined ? 0 : 1;
  const out = new Uint8Array(at + size);
  if (lead !== undefined) out[0] = lead;
  if (size === 1) out[at] = major | u;
  else if (size === 2) {
    out[at] = major | 24;
    out[at + 1] = u;
  } else if (size === 3) {
    out[at] = major | 25;
    out[at + 1] = u >> 8;
    out[at + 2] = u & 0xff;
  } else {
    out[at] = major | 26;
    out[at + 1] = u >>> 24;
    out[at + 2] = (u >>> 16) & 0xff;
    out[at + 3] = (u >>> 8) & 0xff;
    out[at + 4] = u & 0xff;
  }
  return out;
}

class Corrupt extends Error {}

function restore(x: unknown, walk: { mutable: boolean }): unknown {
  if (typeof x !== "object" || x === null) {
    if (typeof x === "string" && !isWellFormed(x)) throw new Corrupt("ill-formed string");
    if (typeof x === "symbol" || typeof x === "function") throw new Corrupt(typeof x);
    return x;
  }
  if (x instanceof Tag) {
    const t = x.tag as number;
    const v = x.value as unknown;
    if (t === TAG_DATE && typeof v === "number") {
      walk.mutable = true;
      return new Date(v);
    }
    if (t === TAG_NEGATIVE_ZERO && v === 0) return -0;
    if (t === TAG_OBJECT_ENTRIES && Array.isArray(v) && v.length % 2 === 0) {
      const out: Record<string, unknown> = {};
      for (let i = 0; i < v.length; i += 2) {
        const k = v[i];
        if (typeof k !== "string") throw new Corrupt("non-string property name");
        // defineProperty, so that `__proto__` becomes an own property, not the prototype.
        Object.defineProperty(out, k, {
          value: restore(v[i + 1], walk),
          writable: true,
          enumerable: true,
          configurable: true,
        });
      }
      return out;
    }
    throw new Corrupt(`unexpected tag ${t}`);
  }
  const proto = Object.getPrototypeOf(x);
  if (Array.isArray(x)) {
    for (let i = 0; i < x.length; i++) x[i] = restore(x[i], walk);
    return x;
  }
  if (proto === Object.prototype) {
    const obj = x as Record<string, unknown>;
    for (const k of Object.keys(obj)) obj[k] = restore(obj[k], walk);
    return obj;
  }
  if (x instanceof Uint8Array) {
    walk.mutable = true;
    // A plain Uint8Array of its own (the decoder may hand out a Buffer).
    return new Uint8Array(x);
  }
  if (x instanceof Map) {
    walk.mutable = true;
    const out = new Map<unknown, unknown>();
    for (const [k, v] of x) out.set(restore(k, walk), restore(v, walk));
    if (out.size !== x.size) throw new Corrupt("duplicate map keys");
    return out;
  }
  if (x instanceof Set) {
    walk.mutable = true;
    const out = new Set<unknown>();
    for (const v of x) out.add(restore(v, walk));
    if (out.size !== x.size) throw new Corrupt("duplicate set elements");
    return out;
  }
  throw new Corrupt(`unexpected ${className(x)}`);
}

/** The result of {@link decodeValue}. */
export interface DecodedValue {
  /** The value. */
  value: unknown;
  /** Whether the value holds a `Map`, `Set`, `Date` or `Uint8Array`. */
  mutable: boolean;
}

/**
 * Decodes bytes made by {@link encodeValue}. Throws `CodecError` naming `where` (a storage key)
 * if they are not such an encoding.
 */
export function decodeValue(bytes: Uint8Array, where: string): DecodedValue {
  const walk = { mutable: false };
  try {
    const value = restore(decoder.decode(bytes), walk);
    return { value, mutable: walk.mutable };
  } catch (e) {
    if (isStackOverflow(e)) {
      throw new CodecError("Stored value is nested too deeply to decode", where, { cause: e });
    }
    throw new CodecError(
      `Stored bytes are not a valid value encoding (${errorMessage(e)})`,
      where,
      { cause: e },
    );
  }
}

/**
 * Encodes a value that is not a state (a message, a reply, a record of dgen's) as one byte
 * string; errors name paths from `root`.
 */
export function encode(value: unknown, root = "value"): Uint8Array {
  return encodeValue(value, rootPath(root)).bytes;
}

/**
 * Checks that `value` can be encoded (throws `CodecError` naming the path if not; the root is
 * `root`) and returns an upper bound of the size of its encoding. A number, boolean, `null` or
 * `undefined` takes at most 9 bytes: known without encoding it.
 */
export function encodedSize(value: unknown, root = "value"): number {
  const t = typeof value;
  if (t === "number" || t === "boolean" || value === null || value === undefined) return 9;
  return encode(value, root).length;
}

/** Decodes bytes made by {@link encode}; errors name `where` (a storage key). */
export function decode(bytes: Uint8Array, where: string): unknown {
  return decodeValue(bytes, where).value;
}
