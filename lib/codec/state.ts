/**
 * The state codec (SPEC §7): lays a server's state out under its key prefix as records,
 * collections and values, and writes each change as a small diff.
 *
 * Layout under `prefix` (every key is `prefix ‖ pack(tuple)`; a node's key is its path, its
 * descendants extend it):
 *
 * | Key suffix | Value |
 * |---|---|
 * | `(0)` | format version: one byte, {@link FORMAT_VERSION} |
 * | `(1)` | the root node |
 * | node | `0x01` record, `0x02` collection, `0x03 ‖ value encoding`, or `0x04 ‖ total ‖ count` (a value chunked over several keys; big-endian uint32s) |
 * | record node `‖ (name)` | the node of property `name` |
 * | collection node `‖ (0, index)` | UTF-8 id of the item at fractional index `index` |
 * | collection node `‖ (1, id)` | the node of the item with that id |
 * | chunked value node `‖ (i)` | chunk `i` of the value encoding |
 *
 * A collection stores its order apart from its items, so moving an item rewrites one small
 * order key, never the item; changing an item rewrites only what changed inside it.
 *
 * Names and ids become key parts. A property name or id whose tuple encoding is longer than
 * {@link MAX_SEGMENT_BYTES}, or that would make a key longer than {@link KEY_BUDGET_BYTES}
 * past the prefix, makes the object that holds it a value (stored whole, still read back
 * identically), so keys stay under the backend's 10,000-byte limit. The rule is part of the
 * format: it does not depend on options.
 *
 * @module
 */

import * as v from "valibot";
import { copyFrozenArrays, slowArrayFreeze } from "../runtime/process.ts";
import { bytesToBinaryString, concatBytes, equalBytes, fixedBytes, printable } from "../bytes.ts";
import { CodecError } from "../errors.ts";
import type { ReadTransaction, Transaction } from "../storage/types.ts";
import { hasSetOwned, setOwned } from "../storage/common.ts";
import { inSubtree, pack, packAfter, subtreeEnd, unpack } from "../tuple.ts";
import { parse } from "../validate.ts";
import { freshKeys, planKeys } from "./collection.ts";
import { child, ROOT_PATH, type ValuePath } from "./path.ts";
import type { StateCodec, StoredState, WriteStats } from "./types.ts";
import {
  checkArrayProperties,
  checkOwnKeys,
  checkString,
  cycle,
  dataValue,
  decodeValue,
  encodeValue,
  isMutableLeaf,
  isPlain,
  isPlainArray,
  isSmallInt,
  isStackOverflow,
  isWellFormed,
  MAX_NESTING,
  smallInt,
  tooDeep,
  unreadable,
} from "./value.ts";

/** The version of the layout above; stored under `prefix ‖ (0)`. */
export const FORMAT_VERSION = 1;

/** Longest tuple-encoded property name or id that becomes a key part, in bytes. */
export const MAX_SEGMENT_BYTES = 1024;

/** Longest key the codec builds, not counting the prefix, in bytes. */
export const KEY_BUDGET_BYTES = 4096;

/** Longest prefix accepted, in bytes (with the tenant's, it must leave room for the keys). */
export const MAX_PREFIX_BYTES = 4096;

/** Room every node keeps for its own key suffixes (chunk numbers, order keys), in bytes. */
const RESERVE = 32;

const KIND_RECORD = 1;
const KIND_COLLECTION = 2;
const KIND_VALUE = 3;
const KIND_CHUNKED = 4;

const FORMAT_SUFFIX = pack([0]);
const ROOT_SUFFIX = pack([1]);
const ORDER = 0;
const ITEMS = 1;
const RECORD_MARK = Uint8Array.of(KIND_RECORD);
const COLLECTION_MARK = Uint8Array.of(KIND_COLLECTION);
const FORMAT_MARK = Uint8Array.of(FORMAT_VERSION);

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

type Kind = "record" | "collection" | "value";

/** What an object's layout depends on, independent of where it sits. */
interface Shape {
  /** Its kind if its names or ids fit in keys. */
  kind: Kind;
  /** Longest key segment its children need (upper bound), in bytes. */
  seg: number;
}

/** What is known of the bytes stored for a value holding mutable containers, at one path. */
interface EncodingEntry {
  /** Bytes known committed at that path; `undefined` if unknown. */
  committed: Uint8Array | undefined;
  /** Bytes written by a transaction whose outcome is not known yet. */
  pending: { tx: object; bytes: Uint8Array } | undefined;
  /**
   * Set when the object took `committed` from another object it replaced with equal bytes:
   * that object (weakly: objects replaced in turn must not stay alive in a chain). Drawing
   * that conclusion again is no second placement.
   */
  via: WeakRef<object> | undefined;
  /** The object was placed at this path more than once: never trust the entry. */
  poisoned: boolean;
}

/** Tuple-encoded length of a string: type byte, UTF-8 with NULs escaped, terminator. */
function packedLength(s: string): number {
  let n = 2;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += c === 0 ? 2 : 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function u32(view: DataView, at: number): number {
  return view.getUint32(at, false);
}

const NOT_A_COLLECTION = Symbol("not a collection");

const optionsSchema = v.strictObject({
  maxValueSize: v.pipe(v.number(), v.integer(), v.minValue(64)),
  freezeArrayLimit: v.optional(v.pipe(v.number(), v.minValue(0))),
});

/** Options of {@link createStateCodec}. */
export interface StateCodecOptions {
  /**
   * Largest value the backend accepts, in bytes (`backend.limits.maxValueSize`); larger
   * encodings are chunked over several keys. At least 64.
   */
  maxValueSize: number;
  /**
   * Arrays longer than this are not frozen by `freeze` (their items still are); they count as
   * mutable containers instead, so the next diff compares them with the copy it kept. Freezing
   * costs about 0.5 µs per element on JavaScriptCore (Bun), which made a 10,000-item change cost
   * milliseconds there; V8 freezes cheaply.
   * @default 1000 on Bun, unlimited elsewhere
   */
  freezeArrayLimit?: number;
}

/**
 * Creates the state codec of SPEC §7 (see `StateCodec` for the contract). One codec may serve
 * any number of servers: its caches are keyed by state objects and full key paths.
 *
 * @example
 * ```ts
 * import { createStateCodec } from "./state.ts";
 * import { openMemoryBackend } from "../storage/memory.ts";
 * import { pack } from "../tuple.ts";
 *
 * const backend = openMemoryBackend();
 * const codec = createStateCodec({ maxValueSize: backend.limits.maxValueSize });
 * const prefix = pack(["state", "cart"]);
 * const s1 = codec.freeze({ owner: "ada", items: [{ id: "a", qty: 1 }] });
 * await backend.transact((tx) => codec.write(tx, prefix, { found: false }, s1));
 * const s2 = codec.freeze({ ...s1, items: [...s1.items, { id: "b", qty: 2 }] });
 * const stats = await backend.transact((tx) => codec.write(tx, prefix, { found: true, state: s1 }, s2));
 * console.log(stats.keysWritten); // 4: one order key, the item's node and its two properties
 * console.log(await backend.transact((tx) => codec.read(tx, prefix)));
 * await backend.close();
 * ```
 */
export function createStateCodec(options: StateCodecOptions): StateCodec {
  const { maxValueSize, freezeArrayLimit } = parse(optionsSchema, options, "options");
  return new Codec(maxValueSize, freezeArrayLimit ?? (slowArrayFreeze ? 1000 : Infinity));
}

function checkPrefix(prefix: Uint8Array): void {
  if (!(prefix instanceof Uint8Array) || prefix.length === 0) {
    throw new TypeError("The state prefix must be a non-empty Uint8Array");
  }
  if (prefix.length > MAX_PREFIX_BYTES) {
    throw new CodecError(
      `State prefix of ${prefix.length} bytes is longer than ${MAX_PREFIX_BYTES}`,
      printable(prefix.subarray(0, 40)),
    );
  }
  // A loop, not every(): it runs on each write, and stops at the first byte in practice.
  let allFF = true;
  for (let i = 0; i < prefix.length && allFF; i++) allFF = prefix[i] === 0xff;
  if (allFF) throw new TypeError("The state prefix must hold a byte other than 0xff");
}

class Codec implements StateCodec {
  readonly shapes = new WeakMap<object, Shape>();
  readonly mutables = new WeakMap<object, boolean>();
  /** Index keys of collections, per full path; `null` when two placements disagreed. */
  readonly orders = new WeakMap<object, Map<string, readonly string[] | null>>();
  readonly encodings = new WeakMap<object, Map<string, EncodingEntry>>();
  /** Objects this codec froze (a faster test than `Object.isFrozen` on some engines). */
  readonly frozen = new WeakSet<object>();
  /**
   * For a collection array `write` has diffed against a deep-frozen one: the positions whose
   * items are not the old (frozen) items, the only ones `freeze` then needs to look at.
   */
  readonly freezeHints = new WeakMap<object, number[]>();
  /**
   * Unfrozen copies of collection arrays, read instead of them by the next diff. Each copy is
   * the codec's own and belongs to one array: an edit in place moves it to the next array.
   */
  readonly shadows = new WeakMap<object, unknown[]>();
  /** Arrays `freeze` left unfrozen (see `freezeArrayLimit`) after deep-freezing their items. */
  readonly frozenItems = new WeakSet<object>();
  /**
   * For a collection array: whether one of its items holds a mutable container. (The array
   * itself counts as mutable when it is left unfrozen; its items never are.)
   */
  readonly mutableItems = new WeakMap<object, boolean>();

  constructor(readonly maxValueSize: number, readonly freezeArrayLimit: number) {}

  /** {@link unfrozenArray}, bound (what the value encoder asks of each array). */
  readonly leftUnfrozen = (x: unknown[]): boolean => this.unfrozenArray(x);

  /**
   * Whether `freeze` leaves array `x` unfrozen (see `freezeArrayLimit`): only collections
   * (arrays of items with ids), whose diff reads the copy the codec keeps of them.
   */
  unfrozenArray(x: unknown[]): boolean {
    if (x.length <= this.freezeArrayLimit) return false;
    const shape = this.shapes.get(x);
    if (shape !== undefined) return shape.kind === "collection";
    try {
      return this.arrayShape(x, ROOT_PATH).kind === "collection";
    } catch {
      return false;
    }
  }

  /** The last prefix written (a copy) and its root node's key: a server writes one prefix. */
  #lastPrefix: Uint8Array | undefined;
  #lastRoot: Uint8Array | undefined;

  /** `prefix ‖ (1)`, the root node's key (the same array while the prefix stays the same). */
  rootKey(prefix: Uint8Array): Uint8Array {
    if (this.#lastPrefix === undefined || !equalBytes(this.#lastPrefix, prefix)) {
      this.#lastPrefix = prefix.slice();
      this.#lastRoot = fixedBytes(concatBytes(prefix, ROOT_SUFFIX));
    }
    return this.#lastRoot!;
  }

  // ---- What kind of node a value is ----------------------------------------------------

  /** The shape of a plain object or plain array (validating names and ids), cached. */
  shapeOf(x: object, path: ValuePath): Shape {
    const cached = this.shapes.get(x);
    if (cached !== undefined) return cached;
    let shape: Shape;
    if (Array.isArray(x)) shape = this.arrayShape(x, path);
    else {
      const keys = Object.keys(x);
      checkOwnKeys(x, keys, path);
      let seg = 0;
      for (const k of keys) {
        checkString(k, path, "A property name");
        dataValue(x, k, path); // throws for an accessor
        const len = packedLength(k);
        if (len > seg) seg = len;
      }
      shape = { kind: "record", seg };
    }
    this.shapes.set(x, shape);
    return shape;
  }

  arrayShape(arr: readonly unknown[], path: ValuePath): Shape {
    if (arr.length === 0) return { kind: "value", seg: 0 };
    for (const item of arr) {
      if (!isPlain(item) || typeof item.id !== "string") return { kind: "value", seg: 0 };
    }
    // Ids must be unique too (SPEC §7): an array with a duplicate id is a value.
    const seen = new Set<string>();
    let seg = 0;
    for (let i = 0; i < arr.length; i++) {
      const id = (arr[i] as { id: string }).id;
      checkString(id, child(child(path, i), "id"), "An id");
      if (seen.has(id)) return { kind: "value", seg: 0 };
      seen.add(id);
      const len = 2 + packedLength(id);
      if (len > seg) seg = len;
    }
    return { kind: "collection", seg };
  }

  /** The kind of node `x` is at a path of `rel` bytes past the prefix. */
  kindOf(x: unknown, rel: number, path: ValuePath): Kind {
    if (typeof x !== "object" || x === null || !(isPlain(x) || isPlainArray(x))) return "value";
    return kindAt(this.shapeOf(x, path), rel);
  }

  /** Whether `x` holds a `Map`, `Set`, `Date` or `Uint8Array` anywhere, cached per object. */
  isMutable(x: unknown): boolean {
    if (typeof x !== "object" || x === null) return false;
    const cached = this.mutables.get(x);
    if (cached !== undefined) return cached;
    let m: boolean;
    if (isMutableLeaf(x)) m = true;
    else if (Array.isArray(x)) m = this.unfrozenArray(x) || x.some((e) => this.isMutable(e));
    else if (isPlain(x)) m = Object.values(x).some((e) => this.isMutable(e));
    else m = false;
    this.mutables.set(x, m);
    return m;
  }

  // ---- Caches tied to a path --------------------------------------------------------------

  orderAt(arr: object, at: string): readonly string[] | undefined {
    return this.orders.get(arr)?.get(at) ?? undefined;
  }

  placeOrder(arr: object, at: string, keys: readonly string[]): void {
    let m = this.orders.get(arr);
    if (m === undefined) this.orders.set(arr, m = new Map());
    const old = m.get(at);
    // The same array at the same path in two stores (tenants sharing a constant) may have
    // different keys in each: never trust such an entry again.
    if (old === undefined) m.set(at, keys);
    else if (old !== null && old !== keys && !sameKeys(old, keys)) m.set(at, null);
  }

  /** The bytes stored at `at` for mutable value `x`, as far as transaction `tx` can tell. */
  knownEncoding(x: object, at: string, tx: object): Uint8Array | undefined {
    const e = this.encodings.get(x)?.get(at);
    if (e === undefined || e.poisoned) return undefined;
    if (e.pending !== undefined) return e.pending.tx === tx ? e.pending.bytes : undefined;
    return e.committed;
  }

  // ---- read ------------------------------------------------------------------------------

  async read(tx: ReadTransaction, prefix: Uint8Array): Promise<StoredState> {
    checkPrefix(prefix);
    const rows = await tx.getRange(prefix, subtreeEnd(prefix));
    if (rows.length === 0) return { found: false };
    const first = rows[0]!;
    const formatKey = concatBytes(prefix, FORMAT_SUFFIX);
    if (!equalBytes(first.key, formatKey)) {
      throw new CodecError("Stored state has no format key", printable(first.key));
    }
    if (first.value.length !== 1 || first.value[0] !== FORMAT_VERSION) {
      throw new CodecError(
        `Stored state has format version ${
          first.value.length === 1 ? first.value[0] : `<${first.value.length} bytes>`
        }; this dgen reads version ${FORMAT_VERSION}`,
        printable(first.key),
      );
    }
    const rootKey = concatBytes(prefix, ROOT_SUFFIX);
    const reader = new Reader(this, rows, prefix);
    reader.i = 1;
    if (reader.i >= rows.length || !equalBytes(rows[1]!.key, rootKey)) {
      throw new CodecError("Stored state has no root node", printable(rootKey));
    }
    let state: unknown;
    try {
      state = reader.node();
    } catch (e) {
      if (isStackOverflow(e)) {
        throw new CodecError("Stored state is nested too deeply to decode", printable(rootKey), {
          cause: e,
        });
      }
      throw e;
    }
    if (reader.i < rows.length) {
      throw new CodecError(
        "Stored state has a key outside its layout",
        printable(rows[reader.i]!.key),
      );
    }
    return { found: true, state };
  }

  // ---- write -----------------------------------------------------------------------------

  write(tx: Transaction, prefix: Uint8Array, prev: StoredState, next: unknown): WriteStats {
    checkPrefix(prefix);
    const w = new Writer(this, tx, prefix);
    const root = this.rootKey(prefix);
    try {
      if (!prev.found) {
        // Whatever is there (nothing, by the contract) goes: the state is written whole.
        w.clearRange(prefix, subtreeEnd(prefix));
        w.set(concatBytes(prefix, FORMAT_SUFFIX), FORMAT_MARK.slice());
        w.fresh(root, next, ROOT_PATH, new Set());
      } else {
        w.diff(root, prev.state, next, ROOT_PATH, new Set());
      }
    } catch (e) {
      if (isStackOverflow(e)) {
        throw new CodecError("State is nested too deeply to store", "state", { cause: e });
      }
      // Nothing is staged on the transaction before apply(): whatever the walk met (a getter
      // that throws, a revoked Proxy) is the state's fault, never the storage's.
      throw unreadable(e, next, ROOT_PATH);
    }
    return w.apply();
  }

  clear(tx: Transaction, prefix: Uint8Array): void {
    checkPrefix(prefix);
    tx.clearRange(prefix, subtreeEnd(prefix));
  }

  freeze<T>(state: T): T {
    // An object is frozen before its children are visited (they are only queued), so a cycle
    // ends at an already-frozen object, and every already-frozen subtree is skipped without a
    // look inside: the cost is that of the new parts of the state.
    if (typeof state !== "object" || state === null) return state;
    const frozen = this.frozen;
    const stack: object[] = [state];
    while (stack.length > 0) {
      const x = stack.pop()!;
      if (frozen.has(x) || Object.isFrozen(x)) continue;
      let children: unknown[];
      if (isPlainArray(x)) children = x;
      else if (isPlain(x)) children = Object.values(x);
      else continue;
      const hint = this.freezeHints.get(x);
      if (hint !== undefined) this.freezeHints.delete(x);
      // Children are read before the freeze: engines read unfrozen arrays faster.
      const count = hint === undefined ? children.length : hint.length;
      for (let i = 0; i < count; i++) {
        const e = children[hint === undefined ? i : hint[i]!];
        if (typeof e === "object" && e !== null && !frozen.has(e) && !Object.isFrozen(e)) {
          stack.push(e);
        }
      }
      // A long array stays unfrozen where freezing is slow; it counts as mutable instead.
      if (Array.isArray(x) && this.unfrozenArray(x)) {
        this.frozenItems.add(x); // its items are on the stack: frozen before this returns
        continue;
      }
      Object.freeze(x);
      frozen.add(x);
    }
    return state;
  }
}

/**
 * Length of the run of items that are the same in `prev` and `next` (identical, or plain
 * objects with the same id), walking from `prev[i]` and `next[j]` forwards (`step` 1) or
 * backwards (`step` -1), at most `limit`. Pushes onto `touched` the positions in `next` of the
 * run's items that are not identical (or that hold mutable containers, when `mutable` is
 * given).
 *
 * This is the one part of a diff whose cost grows with the length, so the run of identical
 * items is skipped by a loop that does nothing else: on a 10,000-item collection it takes half
 * the time of one loop that also compares ids (measured on V8 and JavaScriptCore).
 */
function commonRun(
  prev: ReadonlyArray<{ id: string }>,
  next: readonly unknown[],
  i: number,
  j: number,
  step: 1 | -1,
  limit: number,
  touched: number[],
  mutable: ((x: unknown) => boolean) | undefined,
): number {
  if (mutable !== undefined) {
    return commonRunVisitingAll(prev, next, i, j, step, limit, touched, mutable);
  }
  let k = 0;
  for (;;) {
    if (step === 1) { while (k < limit && prev[i + k] === next[j + k]) k++; }
    else while (k < limit && prev[i - k] === next[j - k]) k++;
    if (k === limit) return k;
    const at = j + step * k;
    const a = prev[i + step * k]!;
    const b = next[at];
    if (!isPlain(b) || b.id !== a.id) return k;
    touched.push(at);
    k++;
  }
}

/** {@link commonRun} where identical items may hold mutable containers (`mutable` says). */
function commonRunVisitingAll(
  prev: ReadonlyArray<{ id: string }>,
  next: readonly unknown[],
  i: number,
  j: number,
  step: 1 | -1,
  limit: number,
  touched: number[],
  mutable: (x: unknown) => boolean,
): number {
  let k = 0;
  for (; k < limit; k++, i += step, j += step) {
    const a = prev[i]!;
    const b = next[j];
    if (a !== b) {
      if (!isPlain(b) || b.id !== a.id) break;
      touched.push(j);
    } else if (mutable(b)) touched.push(j);
  }
  return k;
}

/**
 * `arr`, or where the engine reads frozen arrays slowly but copies them fast (V8, see
 * `copyFrozenArrays`), an unfrozen copy of it if it is frozen. A scan that reads one frozen
 * array stays slow for every array after it (measured on Deno: 10,000-item scans in a server
 * went from 30–40 µs to 125–160 µs after one call returned a frozen collection).
 */
function readable<T>(arr: T[]): T[] {
  return copyFrozenArrays && Object.isFrozen(arr) ? [...arr] : arr;
}

function kindAt(shape: Shape, rel: number): Kind {
  if (shape.kind === "value") return "value";
  if (shape.seg > MAX_SEGMENT_BYTES || rel + shape.seg + RESERVE > KEY_BUDGET_BYTES) return "value";
  return shape.kind;
}

function sameKeys(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function orderKey(node: Uint8Array, index: string): Uint8Array {
  return packAfter(node, [ORDER, index]);
}

function itemKey(node: Uint8Array, id: string): Uint8Array {
  return packAfter(node, [ITEMS, id]);
}

/**
 * The range of every key strictly under `node` (its descendants, not itself). It ends at
 * `subtreeEnd(node)`, not `strinc(node)`: the keys of a sibling whose name extends this node's
 * with a NUL (`"a"` is `02 61 00`, `"a\0"` is `02 61 00 ff 00`) lie in between.
 */
function below(node: Uint8Array): [Uint8Array, Uint8Array] {
  const begin = new Uint8Array(node.length + 1);
  begin.set(node);
  return [begin, subtreeEnd(node)];
}

/** One `write`: stages every operation and cache update, and applies them only at the end. */
class Writer {
  readonly sets: Array<[Uint8Array, Uint8Array]> = [];
  readonly clears: Uint8Array[] = [];
  readonly ranges: Array<[Uint8Array, Uint8Array]> = [];
  readonly after: Array<() => void> = [];
  readonly pending: Array<{ entry: EncodingEntry; pending: { tx: object; bytes: Uint8Array } }> =
    [];

  constructor(readonly codec: Codec, readonly tx: Transaction, readonly prefix: Uint8Array) {}

  set(key: Uint8Array, value: Uint8Array): void {
    this.sets.push([key, value]);
  }

  clearRange(begin: Uint8Array, end: Uint8Array): void {
    this.ranges.push([begin, end]);
  }

  /** Clears a node and everything under it (not a sibling extending it: see {@link below}). */
  remove(node: Uint8Array): void {
    this.ranges.push([node, subtreeEnd(node)]);
  }

  /**
   * Keeps an unfrozen copy of collection array `arr` for the next diff to read, if cheap:
   * `scanned` when the scan already read a copy of `arr` (see {@link readable}).
   */
  shadow(arr: unknown[], scanned: unknown[] = readable(arr)): void {
    // The runtime writes a state before it freezes it, so `arr` is frozen only when the
    // handler returned an array frozen already (moved from the old state, or its own).
    let copy = scanned;
    if (copy === arr) {
      if (Object.isFrozen(arr)) return; // copying it is slow where readable() did not
      copy = arr.slice();
    }
    this.after.push(() => this.codec.shadows.set(arr, copy));
  }

  /**
   * Keeps the copy of collection `next` when it is `prevArray` with the items at `touched`
   * replaced (same length, same ids in the same places): `prevArray`'s copy becomes `next`'s,
   * with those items replaced, instead of a fresh copy of the whole array. `prevArray` keeps
   * no copy (a retry with the same `prev` reads it, or a copy of it: slower, still right).
   */
  shadowEdit(
    prevArray: object,
    next: unknown[],
    scanned: unknown[],
    touched: readonly number[],
  ): void {
    const codec = this.codec;
    // prevArray is next's own copy when next is an unfrozen array diffed against itself.
    const copy = codec.shadows.get(prevArray) ??
      (codec.shadows.get(next) === prevArray ? prevArray as unknown[] : undefined);
    if (copy === undefined || prevArray === next) return this.shadow(next, scanned);
    this.after.push(() => {
      codec.shadows.delete(prevArray);
      for (const j of touched) copy[j] = next[j];
      codec.shadows.set(next, copy);
    });
  }

  rel(node: Uint8Array): number {
    return node.length - this.prefix.length;
  }

  /** Applies the staged operations (clears first: they only ever target the old state). */
  apply(): WriteStats {
    const tx = this.tx;
    let bytesWritten = 0;
    for (const key of this.clears) tx.clear(key);
    for (const [b, e] of this.ranges) tx.clearRange(b, e);
    // Every value staged here is a fresh array (the marks are copied) that the codec keeps no
    // reference to: the backend may take it without a copy.
    const owned = hasSetOwned(tx) ? tx : undefined;
    for (const [k, value] of this.sets) {
      if (owned !== undefined) owned[setOwned](k, value);
      else tx.set(k, value);
      bytesWritten += k.length + value.length;
    }
    for (const f of this.after) f();
    if (this.pending.length > 0) {
      const pending = this.pending;
      let stamp: Promise<Uint8Array>;
      try {
        stamp = tx.getVersionstamp();
      } catch {
        // No way to learn the outcome: the entries stay pending, i.e. untrusted.
        return this.stats(bytesWritten);
      }
      // A pending encoding becomes trusted once its transaction commits, and is dropped if
      // it does not, so a retried handler that mutated a Map in place rewrites it.
      stamp.then(
        () => {
          for (const p of pending) {
            if (p.entry.pending === p.pending) {
              p.entry.committed = p.pending.bytes;
              p.entry.pending = undefined;
            }
          }
        },
        () => {
          for (const p of pending) if (p.entry.pending === p.pending) p.entry.pending = undefined;
        },
      );
    }
    return this.stats(bytesWritten);
  }

  stats(bytesWritten: number): WriteStats {
    return {
      keysWritten: this.sets.length,
      keysCleared: this.clears.length + this.ranges.length,
      bytesWritten,
    };
  }

  // ---- Fresh writes ----------------------------------------------------------------------

  /** Writes `x` at `node`, where nothing is stored (returns whether `x` is mutable). */
  fresh(node: Uint8Array, x: unknown, path: ValuePath, ancestors: Set<object>): boolean {
    const kind = this.codec.kindOf(x, this.rel(node), path);
    if (kind === "value") return this.value(node, x, path, ancestors, undefined, "none");
    const obj = x as object;
    if (ancestors.has(obj)) cycle(path);
    if (path.depth >= MAX_NESTING) tooDeep(path);
    ancestors.add(obj);
    let mutable = false;
    if (kind === "record") {
      this.set(node, RECORD_MARK.slice());
      const rec = obj as Record<string, unknown>;
      for (const k of Object.keys(rec)) {
        const m = this.fresh(packAfter(node, [k]), rec[k], child(path, k), ancestors);
        mutable ||= m;
      }
    } else {
      const arr = obj as Array<{ id: string }>;
      // Written in full: its properties other than items are refused here (a diff of a stored
      // collection does not look for them: see checkArrayProperties).
      checkArrayProperties(arr, path);
      this.set(node, COLLECTION_MARK.slice());
      const keys = freshKeys(arr.length);
      for (let j = 0; j < arr.length; j++) {
        const id = arr[j]!.id;
        this.set(orderKey(node, keys[j]!), utf8.encode(id));
        const m = this.fresh(itemKey(node, id), arr[j], child(path, j), ancestors);
        mutable ||= m;
      }
      const at = bytesToBinaryString(node);
      this.after.push(() => this.codec.placeOrder(arr, at, keys));
      this.shadow(arr);
      mutable ||= this.codec.unfrozenArray(arr);
    }
    ancestors.delete(obj);
    this.codec.mutables.set(obj, mutable);
    return mutable;
  }

  // ---- Values ----------------------------------------------------------------------------

  /**
   * Writes value `x` at `node`, unless its encoding equals `prevBytes`. `prevLength` is what
   * is stored there now: `"none"` (nothing), `"unknown"`, or the old encoding's length.
   */
  value(
    node: Uint8Array,
    x: unknown,
    path: ValuePath,
    ancestors: Set<object>,
    prev: { x: unknown; bytes: Uint8Array | undefined; committed: boolean } | undefined,
    prevLength: number | "none" | "unknown",
  ): boolean {
    if (isSmallInt(x) && !Object.is(prev?.x, x)) {
      // The commonest leaf: its node in one array, and no other value encodes the same.
      this.clearChunks(node, prevLength);
      this.set(node, smallInt(x, KIND_VALUE));
      return false;
    }
    const { bytes, mutable } = encodeValue(x, path, ancestors, this.codec.leftUnfrozen);
    const same = prev?.bytes !== undefined && equalBytes(prev.bytes, bytes);
    if (!same) this.putValue(node, bytes, prevLength);
    if (typeof x === "object" && x !== null) {
      this.codec.mutables.set(x, mutable);
      if (mutable) this.track(node, x, prev, bytes, same);
    }
    return mutable;
  }

  /** Records what is now stored at `node` for mutable value `x`. */
  track(
    node: Uint8Array,
    x: object,
    prev: { x: unknown; bytes: Uint8Array | undefined; committed: boolean } | undefined,
    bytes: Uint8Array,
    same: boolean,
  ): void {
    const codec = this.codec;
    const at = bytesToBinaryString(node);
    const tx = this.tx;
    // Unchanged bytes keep the old entry's standing (committed or pending in this tx): they
    // are stored whatever becomes of this transaction.
    const committed = same && prev!.committed;
    // An equal object placed over one whose bytes are committed: the entry says so, and whom
    // it took them from.
    const via = committed && prev!.x !== x ? prev!.x as object : undefined;
    const vouched = (e: EncodingEntry) =>
      via !== undefined && e.via?.deref() === via && e.pending === undefined &&
      e.committed !== undefined && equalBytes(e.committed, bytes);
    this.after.push(() => {
      let m = codec.encodings.get(x);
      if (m === undefined) codec.encodings.set(x, m = new Map());
      let entry = m.get(at);
      if (prev?.x !== x) {
        // Placed here by this write: an entry left by an earlier placement that committed (or
        // may still commit) may describe another store holding the same object. An entry
        // whose placements all failed describes nothing, and is taken over.
        // The same conclusion drawn again (a retry of an attempt that did not commit, placing
        // the object over the same one) is no second placement.
        if (entry !== undefined && (entry.committed !== undefined || entry.pending !== undefined)) {
          if (!vouched(entry)) entry.poisoned = true;
          return;
        }
        if (entry === undefined || entry.poisoned) {
          if (entry?.poisoned) return;
          entry = { committed: undefined, pending: undefined, via: undefined, poisoned: false };
          m.set(at, entry);
        }
      } else if (entry === undefined) {
        entry = { committed: undefined, pending: undefined, via: undefined, poisoned: false };
        m.set(at, entry);
      }
      entry.via = via === undefined ? undefined : new WeakRef(via);
      if (committed) {
        entry.committed = bytes;
        entry.pending = undefined;
      } else if (!(same && entry.pending?.tx === tx)) {
        const pending = { tx, bytes };
        entry.pending = pending;
        this.pending.push({ entry, pending });
      }
    });
  }

  /** Sets the node of a value, chunked if needed, clearing chunks it no longer has. */
  putValue(node: Uint8Array, bytes: Uint8Array, prevLength: number | "none" | "unknown"): void {
    const max = this.codec.maxValueSize;
    this.clearChunks(node, prevLength);
    if (bytes.length + 1 <= max) {
      const out = new Uint8Array(bytes.length + 1);
      out[0] = KIND_VALUE;
      out.set(bytes, 1);
      this.set(node, out);
      return;
    }
    const count = Math.ceil(bytes.length / max);
    const header = new Uint8Array(9);
    const view = new DataView(header.buffer);
    header[0] = KIND_CHUNKED;
    view.setUint32(1, bytes.length, false);
    view.setUint32(5, count, false);
    this.set(node, header);
    for (let i = 0; i < count; i++) {
      this.set(packAfter(node, [i]), bytes.slice(i * max, (i + 1) * max));
    }
  }

  /** Clears the chunks of the value stored at `node` if it may have been chunked. */
  clearChunks(node: Uint8Array, prevLength: number | "none" | "unknown"): void {
    if (
      prevLength === "unknown" ||
      (typeof prevLength === "number" && prevLength + 1 > this.codec.maxValueSize)
    ) {
      const [b, e] = below(node);
      this.clearRange(b, e);
    }
  }

  /** What is known of the stored encoding of value `x` at `node`. */
  prevValue(
    node: Uint8Array,
    x: unknown,
  ): { x: unknown; bytes: Uint8Array | undefined; committed: boolean } {
    if (typeof x === "object" && x !== null && this.codec.isMutable(x)) {
      const at = bytesToBinaryString(node);
      const e = this.codec.encodings.get(x)?.get(at);
      const bytes = this.codec.knownEncoding(x, at, this.tx);
      return { x, bytes, committed: bytes !== undefined && e?.pending === undefined };
    }
    // Immutable values encode as they were stored (unless stored before the nesting limit, too
    // deep to encode now: then what is stored is unknown, and rewritten).
    try {
      // Trusted: it was checked when written (or decoded), and it is frozen since.
      return {
        x,
        bytes: encodeValue(x, ROOT_PATH, undefined, undefined, true).bytes,
        committed: true,
      };
    } catch {
      return { x, bytes: undefined, committed: false };
    }
  }

  // ---- Diffs -----------------------------------------------------------------------------

  /** Writes `next` at `node`, where `prev` is stored (returns whether `next` is mutable). */
  diff(
    node: Uint8Array,
    prev: unknown,
    next: unknown,
    path: ValuePath,
    ancestors: Set<object>,
  ): boolean {
    const codec = this.codec;
    const nextIsObject = typeof next === "object" && next !== null;
    // Object.is: 0 and -0 are different values to store.
    if (Object.is(prev, next)) {
      // The same immutable value: nothing to do. Mutable containers can change in place.
      if (!nextIsObject || !codec.isMutable(next)) return false;
    }
    const rel = this.rel(node);
    let storedShape: Shape | undefined;
    let prevItemsFrozen = false;
    if (prev === next && Array.isArray(next) && codec.unfrozenArray(next)) {
      // An array freeze leaves unfrozen (freezeArrayLimit), maybe changed in place: its cached
      // shape, order keys and copy describe what is stored; its content is measured afresh.
      // The copy (never handed out) stands for what is stored, with what is known of it: the
      // diff then scans identities only, and shadowEdit updates the copy in place.
      storedShape = codec.shapes.get(next);
      codec.shapes.delete(next);
      const old = codec.shadows.get(next);
      if (old !== undefined && storedShape !== undefined) {
        codec.shapes.set(old, storedShape);
        const order = codec.orders.get(next);
        if (order !== undefined) codec.orders.set(old, order);
        // This write places the array afresh (not a second store disagreeing on its keys).
        codec.orders.delete(next);
        const items = codec.mutableItems.get(next);
        if (items !== undefined) codec.mutableItems.set(old, items);
        // The copy's items are frozen if freeze has visited the array since it was last
        // written (no hint waiting for it): the diff may then hint freeze to the new items
        // only. A waiting hint is dropped instead (freeze then visits every item).
        prevItemsFrozen = codec.frozenItems.has(next) && !codec.freezeHints.has(next);
        if (!prevItemsFrozen) this.after.push(() => codec.freezeHints.delete(next));
        prev = old;
      }
    }
    const prevKind = storedShape !== undefined
      ? kindAt(storedShape, rel)
      : codec.kindOf(prev, rel, path);
    if (prevKind === "record" && isPlain(next) && codec.kindOf(next, rel, path) === "record") {
      return this.diffRecord(node, prev as Record<string, unknown>, next, path, ancestors);
    }
    if (prevKind === "collection" && isPlainArray(next)) {
      const r = this.diffCollection(
        node,
        prev as Array<{ id: string }>,
        next,
        path,
        ancestors,
        prevItemsFrozen,
      );
      if (r !== NOT_A_COLLECTION) return r;
    }
    if (prevKind === "value" && codec.kindOf(next, rel, path) === "value") {
      // A number, boolean, null or undefined that is not `next` encodes differently, in at
      // most 9 bytes (never chunked): no need to encode it again to know.
      if (
        typeof prev === "number" || typeof prev === "boolean" || prev === null ||
        prev === undefined
      ) return this.value(node, next, path, ancestors, undefined, 9);
      const known = this.prevValue(node, prev);
      return this.value(node, next, path, ancestors, known, known.bytes?.length ?? "unknown");
    }
    // The kind changed: replace the whole subtree.
    this.remove(node);
    return this.fresh(node, next, path, ancestors);
  }

  diffRecord(
    node: Uint8Array,
    prev: Record<string, unknown>,
    next: Record<string, unknown>,
    path: ValuePath,
    ancestors: Set<object>,
  ): boolean {
    const codec = this.codec;
    if (prev !== next && ancestors.has(next)) cycle(path);
    if (path.depth >= MAX_NESTING) tooDeep(path);
    ancestors.add(next);
    // If nothing under prev is mutable, an unchanged child needs no look.
    const prevMutable = codec.isMutable(prev);
    let mutable = false;
    for (const k of Object.keys(next)) {
      const nv = next[k];
      if (Object.hasOwn(prev, k)) {
        const pv = prev[k];
        if (Object.is(pv, nv) && (!prevMutable || !codec.isMutable(nv))) continue;
        const m = this.diff(packAfter(node, [k]), pv, nv, child(path, k), ancestors);
        mutable ||= m;
      } else {
        const m = this.fresh(packAfter(node, [k]), nv, child(path, k), ancestors);
        mutable ||= m;
      }
    }
    if (prev !== next) {
      for (const k of Object.keys(prev)) {
        if (!Object.hasOwn(next, k)) this.remove(packAfter(node, [k]));
      }
    }
    ancestors.delete(next);
    codec.mutables.set(next, mutable);
    return mutable;
  }

  /**
   * Diffs two collections by id. Returns {@link NOT_A_COLLECTION}, having staged nothing, if
   * `next` turns out not to be one (then the caller rewrites the node). `prevItemsFrozen` says
   * that every item of `prevArray` is known deep-frozen although freeze never saw it (the
   * codec's copy of an unfrozen array).
   */
  diffCollection(
    node: Uint8Array,
    prevArray: Array<{ id: string }>,
    next: unknown[],
    path: ValuePath,
    ancestors: Set<object>,
    prevItemsFrozen = false,
  ): boolean | typeof NOT_A_COLLECTION {
    const codec = this.codec;
    // The scans below are the loops that grow with the collection, and they read unfrozen
    // arrays only: the codec's copy of what it stored when there is one, else copies of frozen
    // arrays where that is cheap (readable: frozen reads are slow, and slow down the loop).
    const prev = (codec.shadows.get(prevArray) ?? readable(prevArray)) as Array<{ id: string }>;
    const scanned = readable(next);
    const n = next.length;
    const pn = prev.length;
    if (n === 0) return NOT_A_COLLECTION;
    if (path.depth >= MAX_NESTING) tooDeep(path);
    // Common prefix and suffix: same ids at the same places. Note the items among them that
    // changed (or may have: mutable containers inside), the only ones to visit there.
    // Items that are the same object in both need a visit only if they hold mutable containers.
    const prevMutable = codec.mutableItems.get(prevArray) ?? codec.isMutable(prevArray);
    const touched: number[] = [];
    const mutableTest = prevMutable ? (x: unknown) => codec.isMutable(x) : undefined;
    const p = commonRun(prev, scanned, 0, 0, 1, Math.min(n, pn), touched, mutableTest);
    const s = commonRun(
      prev,
      scanned,
      pn - 1,
      n - 1,
      -1,
      Math.min(n, pn) - p,
      touched,
      mutableTest,
    );
    // Validate the middle of next before staging anything.
    const prevShape = codec.shapeOf(prevArray, path);
    let seg = prevShape.seg;
    const rel = this.rel(node);
    const middleIds: string[] = [];
    const seen = new Map<string, number>();
    for (let j = p; j < n - s; j++) {
      const item = next[j];
      if (!isPlain(item) || typeof item.id !== "string") return NOT_A_COLLECTION;
      const id = item.id;
      if (!isWellFormed(id)) checkString(id, child(child(path, j), "id"), "An id");
      const len = 2 + packedLength(id);
      if (len > seg) seg = len;
      // A duplicate id makes it a value (SPEC §7), rewritten by the caller.
      if (seen.has(id)) return NOT_A_COLLECTION;
      seen.set(id, j);
      middleIds.push(id);
    }
    const shape: Shape = { kind: "collection", seg };
    if (kindAt(shape, rel) !== "collection") return NOT_A_COLLECTION;
    // Old positions of the middle's items; an id not in the old middle must be new, not one
    // of the (kept) items outside it.
    const prevMiddle = new Map<string, number>();
    for (let i = p; i < pn - s; i++) prevMiddle.set(prev[i]!.id, i);
    const sources: number[] = new Array(middleIds.length);
    const fresh: string[] = [];
    for (let i = 0; i < middleIds.length; i++) {
      const src = prevMiddle.get(middleIds[i]!);
      sources[i] = src ?? -1;
      if (src === undefined) fresh.push(middleIds[i]!);
    }
    if (fresh.length > 0 && this.keptOutside(prev, p, pn - s, fresh)) return NOT_A_COLLECTION;
    codec.shapes.set(next, shape);
    if (prevArray !== next && ancestors.has(next)) cycle(path);

    const at = bytesToBinaryString(node);
    const prevKeys = codec.orderAt(prevArray, at);
    if (prevKeys === undefined) {
      // The old order keys are unknown (the state did not come from this codec, or one array
      // sits at this path in two stores): rewrite the collection.
      this.remove(node);
      return this.fresh(node, next, path, ancestors);
    }
    ancestors.add(next);
    const { keys, from, to } = planKeys(prevKeys, n, p, s, sources);
    // Items gone from the middle.
    for (let i = p; i < pn - s; i++) {
      const id = prev[i]!.id;
      if (!seen.has(id)) {
        this.clears.push(orderKey(node, prevKeys[i]!));
        this.remove(itemKey(node, id));
      }
    }
    // Only positions in [from, to) may have new keys; elsewhere only touched items change.
    let mutable = false;
    const visit = (j: number) => {
      const src = j < p ? j : j >= n - s ? pn - (n - j) : sources[j - p]!;
      const item = next[j] as { id: string };
      if (src < 0) {
        this.set(orderKey(node, keys[j]!), utf8.encode(item.id));
        const m = this.fresh(itemKey(node, item.id), item, child(path, j), ancestors);
        mutable ||= m;
        return;
      }
      if (keys[j] !== prevKeys[src]) {
        this.clears.push(orderKey(node, prevKeys[src]!));
        this.set(orderKey(node, keys[j]!), utf8.encode(item.id));
      }
      const old = prev[src]!;
      if (old === item && (!prevMutable || !codec.isMutable(item))) return;
      const m = this.diff(itemKey(node, item.id), old, item, child(path, j), ancestors);
      mutable ||= m;
    };
    for (const j of touched) if (j < from || j >= to) visit(j);
    for (let j = from; j < to; j++) visit(j);
    // Unvisited items are identical and hold no mutable container (those were touched).
    ancestors.delete(next);
    codec.mutableItems.set(next, mutable);
    // A long array left unfrozen (see freezeArrayLimit) can change in place: never skip it.
    mutable ||= codec.unfrozenArray(next);
    codec.mutables.set(next, mutable);
    this.after.push(() => codec.placeOrder(next, at, keys));
    // Only items at `touched` changed (an edit in place): no copy of the whole array.
    if (n === pn && p + s >= n) this.shadowEdit(prevArray, next, scanned, touched);
    else this.shadow(next, scanned);
    if (
      (prevItemsFrozen || codec.frozen.has(prevArray) || codec.frozenItems.has(prevArray)) &&
      !Object.isFrozen(next)
    ) {
      // Every item outside these positions is an item of prev (or of its copy), hence
      // deep-frozen already.
      const hint = [...touched];
      for (let j = p; j < n - s; j++) hint.push(j);
      this.after.push(() => codec.freezeHints.set(next, hint));
    }
    return mutable;
  }

  /**
   * Whether one of `ids` (new in next's middle) is the id of an item kept outside the middle,
   * i.e. a duplicate: then next is not a collection.
   */
  keptOutside(
    prev: Array<{ id: string }>,
    middleStart: number,
    middleEnd: number,
    ids: string[],
  ): boolean {
    const one = ids.length === 1 ? ids[0] : undefined;
    const set = one === undefined ? new Set(ids) : undefined;
    for (let i = 0; i < prev.length; i++) {
      if (i === middleStart) i = middleEnd;
      if (i >= prev.length) break;
      const id = prev[i]!.id;
      if (one !== undefined ? id === one : set!.has(id)) return true;
    }
    return false;
  }
}

/** Decodes the rows of one state, node by node, in key order. */
class Reader {
  i = 0;
  constructor(
    readonly codec: Codec,
    readonly rows: Array<{ key: Uint8Array; value: Uint8Array }>,
    readonly prefix: Uint8Array,
  ) {}

  fail(message: string, key: Uint8Array): never {
    throw new CodecError(`Stored state is corrupt: ${message}`, printable(key));
  }

  /** The tuple elements of `key` after `node`. */
  suffix(key: Uint8Array, node: Uint8Array): unknown[] {
    try {
      return unpack(key.subarray(node.length));
    } catch (e) {
      throw new CodecError("Stored state is corrupt: malformed key", printable(key), { cause: e });
    }
  }

  /**
   * Whether the current row lies under `node`: extends it, and not as the key of a sibling
   * whose last name extends the node's with a NUL (see {@link below}).
   */
  under(node: Uint8Array): boolean {
    const row = this.rows[this.i];
    return row !== undefined && row.key.length > node.length && inSubtree(row.key, node);
  }

  /** Decodes the node at the current row (and its descendants). */
  node(): unknown {
    const { key, value } = this.rows[this.i++]!;
    const kind = value[0];
    if (kind === KIND_VALUE) return this.value(key, value.subarray(1));
    if (kind === KIND_CHUNKED && value.length === 9) return this.chunked(key, value);
    if (kind === KIND_RECORD && value.length === 1) return this.record(key);
    if (kind === KIND_COLLECTION && value.length === 1) return this.collection(key);
    this.fail(`unknown node kind ${kind ?? "(empty)"}`, key);
  }

  value(key: Uint8Array, bytes: Uint8Array): unknown {
    const { value, mutable } = decodeValue(bytes, printable(key));
    this.registerValue(key, value, mutable, bytes);
    return value;
  }

  registerValue(key: Uint8Array, value: unknown, mutable: boolean, bytes: Uint8Array): void {
    if (typeof value !== "object" || value === null) return;
    this.codec.mutables.set(value, mutable);
    if (!mutable) return;
    const m = new Map<string, EncodingEntry>();
    m.set(bytesToBinaryString(key), {
      committed: bytes,
      pending: undefined,
      via: undefined,
      poisoned: false,
    });
    this.codec.encodings.set(value, m);
  }

  chunked(key: Uint8Array, header: Uint8Array): unknown {
    const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
    const total = u32(view, 1);
    const count = u32(view, 5);
    const bytes = new Uint8Array(total);
    let at = 0;
    for (let c = 0; c < count; c++) {
      const row = this.rows[this.i];
      if (row === undefined || !this.under(key)) {
        this.fail(`chunk ${c} of ${count} is missing`, key);
      }
      const t = this.suffix(row.key, key);
      if (t.length !== 1 || t[0] !== c) this.fail(`expected chunk ${c}`, row.key);
      if (at + row.value.length > total) this.fail("chunks longer than the header says", row.key);
      bytes.set(row.value, at);
      at += row.value.length;
      this.i++;
    }
    if (at !== total) this.fail(`chunks hold ${at} bytes, the header says ${total}`, key);
    return this.value(key, bytes);
  }

  record(key: Uint8Array): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    let seg = 0;
    let mutable = false;
    while (this.under(key)) {
      const row = this.rows[this.i]!;
      const t = this.suffix(row.key, key);
      const name = t[0];
      if (t.length !== 1 || typeof name !== "string") this.fail("expected a property", row.key);
      seg = Math.max(seg, row.key.length - key.length);
      const value = this.node();
      // defineProperty: a `__proto__` property must stay an own property.
      Object.defineProperty(out, name, {
        value,
        writable: true,
        enumerable: true,
        configurable: true,
      });
      mutable ||= this.codec.isMutable(value);
    }
    this.codec.shapes.set(out, { kind: "record", seg });
    this.codec.mutables.set(out, mutable);
    return out;
  }

  collection(key: Uint8Array): unknown[] {
    const order: Array<{ index: string; id: string; key: Uint8Array }> = [];
    const items = new Map<string, unknown>();
    let seg = 0;
    let mutable = false;
    while (this.under(key)) {
      const row = this.rows[this.i]!;
      const t = this.suffix(row.key, key);
      if (t.length === 2 && t[0] === ORDER && typeof t[1] === "string") {
        let id: string;
        try {
          id = utf8Strict.decode(row.value);
        } catch (e) {
          throw new CodecError("Stored state is corrupt: an id is not UTF-8", printable(row.key), {
            cause: e,
          });
        }
        order.push({ index: t[1], id, key: row.key });
        this.i++;
      } else if (t.length === 2 && t[0] === ITEMS && typeof t[1] === "string") {
        seg = Math.max(seg, row.key.length - key.length);
        const item = this.node();
        if (!isPlain(item) || item.id !== t[1]) {
          this.fail("an item's id differs from its key", row.key);
        }
        items.set(t[1], item);
        mutable ||= this.codec.isMutable(item);
      } else {
        this.fail("expected an order entry or an item", row.key);
      }
    }
    const out: unknown[] = [];
    const keys: string[] = [];
    for (const o of order) {
      const item = items.get(o.id);
      if (item === undefined) this.fail(`no item for id ${JSON.stringify(o.id)}`, o.key);
      items.delete(o.id);
      out.push(item);
      keys.push(o.index);
    }
    if (items.size > 0) {
      const id = items.keys().next().value!;
      this.fail("an item has no place in the order", itemKey(key, id));
    }
    this.codec.shapes.set(out, { kind: out.length > 0 ? "collection" : "value", seg });
    // An array freeze will leave unfrozen can change in place: never skip it in a diff.
    this.codec.mutableItems.set(out, mutable);
    this.codec.mutables.set(out, mutable || this.codec.unfrozenArray(out));
    this.codec.placeOrder(out, bytesToBinaryString(key), keys);
    this.codec.shadows.set(out, out.slice());
    return out;
  }
}
