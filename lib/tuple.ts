/**
 * Order-preserving tuple encoding of keys, byte-compatible with FoundationDB's tuple layer:
 * the byte order of encoded tuples equals the logical order of the tuples (type first, then
 * value), so range reads over encoded keys visit tuples in order.
 *
 * Supported elements: `null`, bytes (`Uint8Array`), strings, integers (`number` when a safe
 * integer, `bigint` of any size), floating-point numbers (encoded as doubles), booleans, nested
 * tuples (arrays) and {@link Versionstamp}s. Integers decode as `number` when they are safe
 * integers and as `bigint` otherwise, so a small `bigint` reads back as a `number`.
 *
 * Written on `Uint8Array` (no `Buffer`) because every key dgen builds goes through it; the test
 * suite checks it byte for byte against `fdb-tuple`, the encoder of `npm:foundationdb`.
 *
 * @module
 */

import { checkBytes, compareBytes } from "./bytes.ts";
import { ValidationError } from "./errors.ts";

/** Length of a transaction versionstamp: 8 bytes of commit version, 2 of batch order. */
export const VERSIONSTAMP_LENGTH = 10;

/**
 * A 12-byte versionstamp as stored in tuples: the 10-byte transaction versionstamp assigned at
 * commit plus a 2-byte user version that orders several stamps written by one transaction.
 * An incomplete stamp (created with {@link Versionstamp.incomplete}) is a placeholder filled in
 * by the backend at commit (see `Transaction.setVersionstampedKey`).
 *
 * @example
 * ```ts
 * import { Versionstamp } from "./tuple.ts";
 * const placeholder = Versionstamp.incomplete(1);
 * console.log(placeholder.complete, placeholder.userVersion); // false 1
 * const stamp = Versionstamp.from(new Uint8Array(10).fill(7), 2);
 * console.log(stamp.complete, stamp.bytes.length); // true 12
 * ```
 */
export class Versionstamp {
  /** 12 bytes: 10 of transaction versionstamp, 2 of user version (big-endian). */
  readonly bytes: Uint8Array;

  /**
   * Wraps 12 bytes as a versionstamp.
   *
   * @param bytes The 12 bytes of the stamp.
   */
  constructor(bytes: Uint8Array) {
    if (bytes.length !== 12) {
      throw new RangeError(`A versionstamp has 12 bytes, got ${bytes.length}`);
    }
    this.bytes = bytes;
  }

  /** A complete stamp from a 10-byte transaction versionstamp and a user version. */
  static from(transactionStamp: Uint8Array, userVersion = 0): Versionstamp {
    if (transactionStamp.length !== VERSIONSTAMP_LENGTH) {
      throw new RangeError(
        `A transaction versionstamp has ${VERSIONSTAMP_LENGTH} bytes, got ${transactionStamp.length}`,
      );
    }
    checkUserVersion(userVersion);
    const b = new Uint8Array(12);
    b.set(transactionStamp);
    b[10] = userVersion >> 8;
    b[11] = userVersion & 0xff;
    return new Versionstamp(b);
  }

  /** A placeholder to be completed at commit; `userVersion` orders stamps within one commit. */
  static incomplete(userVersion = 0): Versionstamp {
    checkUserVersion(userVersion);
    const b = new Uint8Array(12).fill(0xff);
    b[10] = userVersion >> 8;
    b[11] = userVersion & 0xff;
    return new Versionstamp(b);
  }

  /** Whether this stamp is a placeholder (its first 10 bytes are all 0xff). */
  get complete(): boolean {
    for (let i = 0; i < VERSIONSTAMP_LENGTH; i++) if (this.bytes[i] !== 0xff) return true;
    return false;
  }

  /** The 2-byte user version. */
  get userVersion(): number {
    return (this.bytes[10]! << 8) | this.bytes[11]!;
  }
}

function checkUserVersion(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xffff) {
    throw new RangeError(`A user version is an integer in [0, 65535], got ${n}`);
  }
}

/**
 * One element of a tuple.
 *
 * @example
 * ```ts
 * import { pack, type TupleItem, unpack } from "./tuple.ts";
 * const items: TupleItem[] = [null, "a", 1, 2n ** 64n, 1.5, true, ["nested"]];
 * console.log(unpack(pack(items)).length); // 7
 * ```
 */
export type TupleItem =
  | null
  | Uint8Array
  | string
  | number
  | bigint
  | boolean
  | Versionstamp
  | readonly TupleItem[];

/**
 * A tuple: an array of elements.
 *
 * @example
 * ```ts
 * import { pack, type Tuple, unpack } from "./tuple.ts";
 * const key: Tuple = ["users", 42, "profile"];
 * console.log(unpack(pack(key))); // ["users", 42, "profile"]
 * ```
 */
export type Tuple = readonly TupleItem[];

const NULL = 0x00;
const BYTES = 0x01;
const STRING = 0x02;
const NESTED = 0x05;
const NEG_BIG = 0x0b;
const INT_ZERO = 0x14;
const POS_BIG = 0x1d;
const FLOAT = 0x20;
const DOUBLE = 0x21;
const FALSE = 0x26;
const TRUE = 0x27;
const UUID = 0x30;
const VERSIONSTAMP = 0x33;

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/** Growable output buffer. */
class Writer {
  buf = new Uint8Array(64);
  pos = 0;
  stampAt = -1;

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }

  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  /** Writes bytes with every 0x00 escaped as 0x00 0xff, then the 0x00 terminator. */
  escaped(b: Uint8Array): void {
    this.ensure(b.length * 2 + 1);
    for (let i = 0; i < b.length; i++) {
      const x = b[i]!;
      this.buf[this.pos++] = x;
      if (x === 0) this.buf[this.pos++] = 0xff;
    }
    this.buf[this.pos++] = 0;
  }

  result(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }
}

/**
 * The writer {@link pack} and {@link packAfter} reuse: encoding is synchronous and calls no
 * user code, so one is never used twice at once. A key then costs one allocation (its result)
 * instead of two, or three with a prefix: on Deno a small `Uint8Array` costs about 0.4 µs.
 */
let shared = new Writer();

const NO_PREFIX = new Uint8Array(0);

function sharedWriter(): Writer {
  // A huge tuple does not keep its buffer alive for every later key.
  if (shared.buf.length > 65_536) shared = new Writer();
  shared.pos = 0;
  shared.stampAt = -1;
  return shared;
}

function isAsciiWithoutNul(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0 || c > 0x7f) return false;
  }
  return true;
}

function writeItem(w: Writer, item: TupleItem, nested: boolean): void {
  if (item === null) {
    w.byte(NULL);
    if (nested) w.byte(0xff);
  } else if (typeof item === "string") {
    w.byte(STRING);
    if (isAsciiWithoutNul(item)) {
      w.ensure(item.length + 1);
      for (let i = 0; i < item.length; i++) w.buf[w.pos++] = item.charCodeAt(i);
      w.buf[w.pos++] = 0;
    } else {
      w.escaped(utf8.encode(item));
    }
  } else if (typeof item === "number") {
    if (Number.isSafeInteger(item) && !Object.is(item, -0)) {
      if (item >= -0xffffffff && item <= 0xffffffff) writeSmallInt(w, item);
      else writeInt(w, BigInt(item));
    } else {
      writeDouble(w, item);
    }
  } else if (typeof item === "bigint") {
    writeInt(w, item);
  } else if (typeof item === "boolean") {
    w.byte(item ? TRUE : FALSE);
  } else if (item instanceof Uint8Array) {
    w.byte(BYTES);
    w.escaped(item);
  } else if (item instanceof Versionstamp) {
    w.byte(VERSIONSTAMP);
    if (!item.complete) {
      if (w.stampAt !== -1) {
        throw new TypeError("A tuple may hold at most one incomplete versionstamp");
      }
      w.stampAt = w.pos;
    }
    w.bytes(item.bytes);
  } else if (Array.isArray(item)) {
    w.byte(NESTED);
    for (const child of item) writeItem(w, child, true);
    w.byte(0x00);
  } else {
    throw new TypeError(`Unsupported tuple element: ${describe(item)}`);
  }
}

function describe(v: unknown): string {
  if (typeof v === "object" && v !== null) return v.constructor?.name ?? "object";
  return typeof v;
}

function byteLength(n: bigint): number {
  let len = 0;
  while (n > 0n) {
    n >>= 8n;
    len++;
  }
  return len;
}

function writeBigEndian(w: Writer, n: bigint, len: number): void {
  w.ensure(len);
  for (let i = len - 1; i >= 0; i--) {
    w.buf[w.pos + i] = Number(n & 0xffn);
    n >>= 8n;
  }
  w.pos += len;
}

function writeInt(w: Writer, n: bigint): void {
  if (n === 0n) {
    w.byte(INT_ZERO);
    return;
  }
  if (n > 0n) {
    const len = byteLength(n);
    if (len <= 8) {
      w.byte(INT_ZERO + len);
    } else {
      if (len > 255) throw new RangeError("Integer too large for the tuple encoding");
      w.byte(POS_BIG);
      w.byte(len);
    }
    writeBigEndian(w, n, len);
    return;
  }
  const abs = -n;
  const len = byteLength(abs);
  if (len <= 8) {
    w.byte(INT_ZERO - len);
    // One's complement of |n| within len bytes: (2^(8·len) − 1) − |n|.
    writeBigEndian(w, ((1n << BigInt(8 * len)) - 1n) - abs, len);
  } else {
    if (len > 255) throw new RangeError("Integer too large for the tuple encoding");
    w.byte(NEG_BIG);
    w.byte(len ^ 0xff);
    writeBigEndian(w, ((1n << BigInt(8 * len)) - 1n) - abs, len);
  }
}

/** {@link writeInt} for an integer of at most four bytes, without bigint arithmetic. */
function writeSmallInt(w: Writer, n: number): void {
  if (n === 0) {
    w.byte(INT_ZERO);
    return;
  }
  const abs = Math.abs(n);
  const len = abs <= 0xff ? 1 : abs <= 0xffff ? 2 : abs <= 0xffffff ? 3 : 4;
  // Negative: one's complement of |n| within len bytes, (2^(8·len) − 1) − |n|.
  let v = n > 0 ? abs : 2 ** (8 * len) - 1 - abs;
  w.ensure(len + 1);
  w.buf[w.pos++] = n > 0 ? INT_ZERO + len : INT_ZERO - len;
  for (let i = len - 1; i >= 0; i--) {
    w.buf[w.pos + i] = v % 256;
    v = Math.floor(v / 256);
  }
  w.pos += len;
}

function writeDouble(w: Writer, x: number): void {
  w.byte(DOUBLE);
  w.ensure(8);
  const view = new DataView(w.buf.buffer, w.buf.byteOffset + w.pos, 8);
  view.setFloat64(0, x, false);
  if ((w.buf[w.pos]! & 0x80) !== 0) {
    for (let i = 0; i < 8; i++) w.buf[w.pos + i] = w.buf[w.pos + i]! ^ 0xff;
  } else {
    w.buf[w.pos] = w.buf[w.pos]! ^ 0x80;
  }
  w.pos += 8;
}

/**
 * Encodes a tuple into an order-preserving byte string.
 *
 * @example
 * ```ts
 * import { pack, unpack } from "./tuple.ts";
 * const key = pack(["users", 42]);
 * console.log(unpack(key)); // ["users", 42]
 * ```
 */
export function pack(tuple: Tuple): Uint8Array {
  return packAfter(NO_PREFIX, tuple);
}

/**
 * The end (exclusive) of the keys of packed tuple `node` and of every tuple that extends it:
 * `node` followed by 0xff. Not `strinc(node)`: a string element's encoding is a prefix of the
 * encoding of the same string with a NUL appended ("a" is `02 61 00`, "a\0" is `02 61 00 ff
 * 00`), so `[node, strinc(node))` also holds that sibling's keys, and clearing or reading it
 * as the node's subtree destroys or misreads them. No element's encoding starts with 0xff.
 *
 * ```ts
 * import { pack, subtreeEnd } from "./tuple.ts";
 * const a = pack(["a"]);
 * console.log(subtreeEnd(a)); // 02 61 00 ff: pack(["a", 1]) is below it, pack(["a\0"]) is not
 * ```
 */
export function subtreeEnd(node: Uint8Array): Uint8Array {
  const end = new Uint8Array(node.length + 1);
  end.set(node);
  end[node.length] = 0xff;
  return end;
}

/** Whether `key` is the packed tuple `node` or extends it (see {@link subtreeEnd}). */
export function inSubtree(key: Uint8Array, node: Uint8Array): boolean {
  if (key.length < node.length) return false;
  for (let i = node.length - 1; i >= 0; i--) if (key[i] !== node[i]) return false;
  return key.length === node.length || key[node.length] !== 0xff;
}

/**
 * `prefix` followed by `pack(tuple)`, in one new array: the key of a tuple under a subspace or
 * a node, without the intermediate copies of concatenating.
 *
 * ```ts
 * import { pack, packAfter } from "./tuple.ts";
 * const node = pack(["state"]);
 * console.log(packAfter(node, ["items", 3]).length === node.length + pack(["items", 3]).length);
 * ```
 */
export function packAfter(prefix: Uint8Array, tuple: Tuple): Uint8Array {
  const w = sharedWriter();
  w.bytes(prefix);
  for (const item of tuple) writeItem(w, item, false);
  if (w.stampAt !== -1) {
    throw new TypeError("Tuple holds an incomplete versionstamp: use packWithVersionstamp");
  }
  return w.result();
}

/**
 * Encodes a tuple that holds exactly one incomplete {@link Versionstamp}, returning the bytes
 * and the offset of the placeholder, as `Transaction.setVersionstampedKey` takes them.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, packWithVersionstamp, unpack, Versionstamp } from "../mod.ts";
 * const { bytes, offset } = packWithVersionstamp(["log", Versionstamp.incomplete()]);
 * const [prefix, suffix] = [bytes.subarray(0, offset), bytes.subarray(offset + 10)];
 * const backend = openMemoryBackend();
 * await backend.transact((tx) => tx.setVersionstampedKey(prefix, suffix, new Uint8Array([1])));
 * const [row] = await backend.transact((tx) => tx.getRange(prefix, new Uint8Array([0xff])));
 * console.log(offset, (unpack(row!.key)[1] as Versionstamp).complete); // 6 true
 * await backend.close();
 * ```
 */
export function packWithVersionstamp(tuple: Tuple): { bytes: Uint8Array; offset: number } {
  const w = new Writer();
  for (const item of tuple) writeItem(w, item, false);
  if (w.stampAt === -1) throw new TypeError("Tuple holds no incomplete versionstamp");
  return { bytes: w.result(), offset: w.stampAt };
}

class Reader {
  pos = 0;
  constructor(readonly buf: Uint8Array) {}

  need(n: number): void {
    if (this.pos + n > this.buf.length) throw new RangeError("Truncated tuple encoding");
  }

  /** Reads an escaped byte string up to its 0x00 terminator. */
  escaped(): Uint8Array {
    const out: number[] = [];
    for (;;) {
      this.need(1);
      const b = this.buf[this.pos++]!;
      if (b === 0) {
        if (this.buf[this.pos] === 0xff) {
          out.push(0);
          this.pos++;
          continue;
        }
        return Uint8Array.from(out);
      }
      out.push(b);
    }
  }
}

function readBigEndian(r: Reader, len: number): bigint {
  r.need(len);
  let n = 0n;
  for (let i = 0; i < len; i++) n = (n << 8n) | BigInt(r.buf[r.pos++]!);
  return n;
}

function intResult(n: bigint): number | bigint {
  return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)
    ? Number(n)
    : n;
}

function readItem(r: Reader, nested: boolean): TupleItem {
  r.need(1);
  const code = r.buf[r.pos++]!;
  if (code === NULL) {
    if (nested) r.pos++; // skip the 0xff escape
    return null;
  }
  if (code === BYTES) return r.escaped();
  if (code === STRING) return utf8Decoder.decode(r.escaped());
  if (code === NESTED) {
    const items: TupleItem[] = [];
    for (;;) {
      r.need(1);
      if (r.buf[r.pos] === 0x00 && r.buf[r.pos + 1] !== 0xff) {
        r.pos++;
        return items;
      }
      items.push(readItem(r, true));
    }
  }
  if (code === INT_ZERO) return 0;
  if (code > INT_ZERO && code < POS_BIG) return intResult(readBigEndian(r, code - INT_ZERO));
  if (code < INT_ZERO && code > NEG_BIG) {
    const len = INT_ZERO - code;
    const v = readBigEndian(r, len);
    return intResult(v - ((1n << BigInt(8 * len)) - 1n));
  }
  if (code === POS_BIG) {
    r.need(1);
    return intResult(readBigEndian(r, r.buf[r.pos++]!));
  }
  if (code === NEG_BIG) {
    r.need(1);
    const len = r.buf[r.pos++]! ^ 0xff;
    const v = readBigEndian(r, len);
    return intResult(v - ((1n << BigInt(8 * len)) - 1n));
  }
  if (code === DOUBLE || code === FLOAT) {
    const len = code === DOUBLE ? 8 : 4;
    r.need(len);
    const raw = r.buf.slice(r.pos, r.pos + len);
    r.pos += len;
    if ((raw[0]! & 0x80) !== 0) raw[0] = raw[0]! ^ 0x80;
    else for (let i = 0; i < len; i++) raw[i] = raw[i]! ^ 0xff;
    const view = new DataView(raw.buffer);
    return len === 8 ? view.getFloat64(0, false) : view.getFloat32(0, false);
  }
  if (code === FALSE) return false;
  if (code === TRUE) return true;
  if (code === UUID) {
    r.need(16);
    const b = r.buf.slice(r.pos, r.pos + 16);
    r.pos += 16;
    return b;
  }
  if (code === VERSIONSTAMP) {
    r.need(12);
    const b = r.buf.slice(r.pos, r.pos + 12);
    r.pos += 12;
    return new Versionstamp(b);
  }
  throw new RangeError(`Unknown tuple type code 0x${code.toString(16).padStart(2, "0")}`);
}

/**
 * Decodes a byte string made by {@link pack}. Throws `RangeError` on malformed input.
 *
 * @example
 * ```ts
 * import { pack, unpack } from "./tuple.ts";
 * console.log(unpack(pack([null, "a", [1, 2n ** 70n]]))); // [null, "a", [1, 1180591620717411303424n]]
 * ```
 */
export function unpack(bytes: Uint8Array): TupleItem[] {
  checkBytes(bytes, "bytes", false);
  const r = new Reader(bytes);
  const items: TupleItem[] = [];
  while (r.pos < bytes.length) items.push(readItem(r, false));
  return items;
}

function rank(item: TupleItem): number {
  if (item === null) return NULL;
  if (item instanceof Uint8Array) return BYTES;
  if (typeof item === "string") return STRING;
  if (Array.isArray(item)) return NESTED;
  if (typeof item === "bigint") return INT_ZERO;
  if (typeof item === "number") {
    return Number.isSafeInteger(item) && !Object.is(item, -0) ? INT_ZERO : DOUBLE;
  }
  if (typeof item === "boolean") return item ? TRUE : FALSE;
  if (item instanceof Versionstamp) return VERSIONSTAMP;
  throw new TypeError(`Unsupported tuple element: ${describe(item)}`);
}

function doubleKey(x: number): bigint {
  // The total order FoundationDB uses for doubles: the sign-adjusted IEEE bits.
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x, false);
  const bits = view.getBigUint64(0, false);
  return (bits & (1n << 63n)) !== 0n ? ~bits & ((1n << 64n) - 1n) : bits | (1n << 63n);
}

/**
 * The logical order of tuples that {@link pack} preserves: element by element, first by type
 * (null < bytes < string < tuple < integer < double < false < true < versionstamp), then by
 * value (strings by their UTF-8 bytes; doubles in IEEE total order). A shorter tuple that is a
 * prefix of a longer one sorts first.
 *
 * @example
 * ```ts
 * import { compareTuples } from "./tuple.ts";
 * console.log(compareTuples(["a", 1], ["a", 2]) < 0); // true
 * console.log(compareTuples([1], ["z"]) > 0, compareTuples(["a"], ["a", 0]) < 0); // true true
 * const sorted = [["b"], [2], [null]].sort(compareTuples);
 * console.log(sorted); // [[null], ["b"], [2]]
 * ```
 */
export function compareTuples(a: Tuple, b: Tuple): number {
  if (!Array.isArray(a) || !Array.isArray(b)) {
    throw new ValidationError([{
      path: Array.isArray(a) ? "b" : "a",
      message: "Expected a tuple (an array of tuple items)",
    }]);
  }
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const c = compareItems(a[i]!, b[i]!);
    if (c !== 0) return c;
  }
  return a.length - b.length;
}

function compareItems(a: TupleItem, b: TupleItem): number {
  const ra = rank(a);
  const rb = rank(b);
  if (ra !== rb) return ra - rb;
  switch (ra) {
    case NULL:
    case FALSE:
    case TRUE:
      return 0;
    case BYTES:
      return compareBytes(a as Uint8Array, b as Uint8Array);
    case STRING:
      return compareBytes(utf8.encode(a as string), utf8.encode(b as string));
    case NESTED:
      return compareTuples(a as Tuple, b as Tuple);
    case INT_ZERO: {
      const x = BigInt(a as number | bigint);
      const y = BigInt(b as number | bigint);
      return x < y ? -1 : x > y ? 1 : 0;
    }
    case DOUBLE: {
      const x = doubleKey(a as number);
      const y = doubleKey(b as number);
      return x < y ? -1 : x > y ? 1 : 0;
    }
    case VERSIONSTAMP:
      return compareBytes((a as Versionstamp).bytes, (b as Versionstamp).bytes);
  }
  return 0;
}
