/**
 * Byte-string helpers shared by the key encoding and the backends. Keys are `Uint8Array`s
 * compared as unsigned bytes, lexicographically (FoundationDB's order).
 *
 * @module
 */

import { ValidationError } from "./errors.ts";

/** Compares two byte strings lexicographically as unsigned bytes: negative, zero or positive. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) {
    const d = a[i]! - b[i]!;
    if (d !== 0) return d;
  }
  return a.length - b.length;
}

/** An empty byte string, shared: never write into it (it has no room anyway). */
export const EMPTY_BYTES: Uint8Array = new Uint8Array(0);

/** Whether two byte strings are equal. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Concatenates byte strings into a new array. */
export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Whether `key` starts with `prefix`. */
export function hasPrefix(key: Uint8Array, prefix: Uint8Array): boolean {
  if (key.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (key[i] !== prefix[i]) return false;
  return true;
}

/**
 * The first byte string that is greater than every string starting with `prefix`
 * (FoundationDB's `strinc`): strip trailing 0xff bytes, then increment the last byte.
 */
export function strinc(prefix: Uint8Array): Uint8Array {
  let end = prefix.length;
  while (end > 0 && prefix[end - 1] === 0xff) end--;
  if (end === 0) throw new RangeError("Key must contain at least one byte that is not 0xff");
  const out = prefix.slice(0, end);
  out[end - 1]!++;
  return out;
}

/** The key immediately after `key` in byte order (`key` + 0x00). */
export function keyAfter(key: Uint8Array): Uint8Array {
  const out = new Uint8Array(key.length + 1);
  out.set(key);
  return out;
}

/** `[begin, end)` covering every key that starts with `prefix`. */
export function prefixRange(prefix: Uint8Array): [Uint8Array, Uint8Array] {
  return [prefix, strinc(prefix)];
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

/** Lower-case hexadecimal form of a byte string. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += HEX[bytes[i]!];
  return s;
}

/** Parses a hexadecimal string into bytes. */
export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new RangeError(`Expected an even-length hexadecimal string, got "${hex}"`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/**
 * A printable form of a key for error messages: printable ASCII kept, other bytes as `\xNN`
 * (FoundationDB's `printable`).
 */
export function printable(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) {
    s += b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${HEX[b]}`;
  }
  return s;
}

/**
 * A string whose UTF-16 code units are the bytes of `bytes` (each 0–255). Such strings
 * compare with `<` exactly as the bytes do, so they serve as `Map` keys and sort keys.
 * Arrays marked with {@link fixedBytes} are looked up, not converted.
 */
export function bytesToBinaryString(bytes: Uint8Array): string {
  return fixedStrings.get(bytes) ?? convertToBinaryString(bytes);
}

/** Binary strings of the arrays marked with {@link fixedBytes}. */
const fixedStrings = new WeakMap<Uint8Array, string>();

/**
 * Marks `bytes` as never changing again, so {@link bytesToBinaryString} finds its string in a
 * cache: a lookup takes 5–8 ns where converting a 12–40-byte key takes 60–200 ns (Deno and
 * Bun, measured). For the keys the runtime builds once and passes to a backend on every call
 * (a server's lock, queue length, state version, change marker, root state node); nothing may
 * write into them afterwards. Returns `bytes`.
 */
export function fixedBytes(bytes: Uint8Array): Uint8Array {
  fixedStrings.set(bytes, convertToBinaryString(bytes));
  return bytes;
}

function convertToBinaryString(bytes: Uint8Array): string {
  const chunk = 8192;
  // A key (the common case) in one go, without a view.
  if (bytes.length <= chunk) {
    return String.fromCharCode.apply(null, bytes as unknown as number[]);
  }
  let s = "";
  for (let i = 0; i < bytes.length; i += chunk) {
    s += String.fromCharCode.apply(
      null,
      bytes.subarray(i, i + chunk) as unknown as number[],
    );
  }
  return s;
}

/** The inverse of {@link bytesToBinaryString}. */
export function binaryStringToBytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/**
 * Encodes a signed integer as 8 little-endian bytes (two's complement), as FDB's `add` takes.
 *
 * @example
 * ```ts
 * import { int64LE } from "../mod.ts";
 * console.log(int64LE(258)); // Uint8Array(8) [2, 1, 0, 0, 0, 0, 0, 0]
 * console.log(int64LE(-1n)); // Uint8Array(8) [255, 255, 255, 255, 255, 255, 255, 255]
 * ```
 */
export function int64LE(n: bigint | number): Uint8Array {
  const out = new Uint8Array(8);
  if (typeof n === "number" && Number.isInteger(n) && n >= -0x8000_0000 && n < 0x8000_0000) {
    // The common case (small deltas) without BigInt: two's complement, sign-extended.
    const fill = n < 0 ? 0xff : 0;
    out[0] = n & 0xff;
    out[1] = (n >> 8) & 0xff;
    out[2] = (n >> 16) & 0xff;
    out[3] = (n >> 24) & 0xff;
    out[4] =
      out[5] =
      out[6] =
      out[7] =
        fill;
    return out;
  }
  if (typeof n !== "bigint" && !(typeof n === "number" && Number.isInteger(n))) {
    throw new ValidationError([{
      path: "n",
      message: `Expected a bigint or an integer, got ${describe(n)}`,
    }]);
  }
  new DataView(out.buffer).setBigInt64(0, BigInt.asIntN(64, BigInt(n)), true);
  return out;
}

/** A short description of `x` for an error message. */
function describe(x: unknown): string {
  if (typeof x === "number" || typeof x === "boolean" || x == null) return String(x);
  if (typeof x === "string") return JSON.stringify(x.length > 20 ? `${x.slice(0, 20)}…` : x);
  return typeof x;
}

/** Throws a ValidationError naming `path` unless `bytes` is a Uint8Array (or undefined). */
export function checkBytes(bytes: unknown, path: string, optional: boolean): void {
  if (bytes instanceof Uint8Array || (optional && bytes === undefined)) return;
  throw new ValidationError([{
    path,
    message: `Expected a Uint8Array${optional ? " or undefined" : ""}, got ${describe(bytes)}`,
  }]);
}

/** 1 as an operand of `add` (`int64LE(1)`), shared: never write into it. */
export const ONE_LE: Uint8Array = int64LE(1);

/**
 * Reads a little-endian signed integer of up to 8 bytes (shorter values are zero-extended, as
 * FoundationDB's atomic add does); `undefined` reads as 0.
 *
 * @example
 * ```ts
 * import { int64LE, openMemoryBackend, readInt64LE } from "../mod.ts";
 * console.log(readInt64LE(int64LE(-2)), readInt64LE(undefined)); // -2n 0n
 * const backend = openMemoryBackend();
 * const key = new TextEncoder().encode("hits");
 * await backend.transact((tx) => tx.add(key, 3));
 * console.log(readInt64LE(await backend.transact((tx) => tx.get(key)))); // 3n
 * await backend.close();
 * ```
 */
export function readInt64LE(bytes: Uint8Array | undefined): bigint {
  if (bytes === undefined) return 0n;
  checkBytes(bytes, "bytes", false);
  if (bytes.length === 0) return 0n;
  const [hi, lo] = int64Halves(bytes);
  return (BigInt(hi) << 32n) + BigInt(lo);
}

/**
 * {@link readInt64LE} as a number (rounded as `Number` rounds a bigint beyond 2^53), without a
 * bigint: for counters read on every call.
 */
export function readInt64LENumber(bytes: Uint8Array | undefined): number {
  if (bytes === undefined || bytes.length === 0) return 0;
  const [hi, lo] = int64Halves(bytes);
  return hi * 0x1_0000_0000 + lo;
}

/** The signed high and unsigned low 32 bits of up to 8 little-endian bytes. */
function int64Halves(bytes: Uint8Array): [number, number] {
  let lo = 0;
  let hi = 0;
  const n = Math.min(bytes.length, 8);
  for (let i = 0; i < n && i < 4; i++) lo += bytes[i]! * 2 ** (8 * i);
  for (let i = 4; i < n; i++) hi |= bytes[i]! << (8 * (i - 4));
  return [hi, lo];
}

/**
 * A versionstamp: `counter` as 8 big-endian bytes (below 2^53), then `index` as 2 (the
 * transaction's place in a batch of commits).
 */
export function versionstampBytes(counter: number, index = 0): Uint8Array {
  return writeVersionstamp(new Uint8Array(10), 0, counter, index);
}

/** `prefix`, the versionstamp of {@link versionstampBytes}, then `suffix`, in one new array. */
export function stampedBytes(
  prefix: Uint8Array,
  counter: number,
  index: number,
  suffix: Uint8Array,
): Uint8Array {
  const out = new Uint8Array(prefix.length + 10 + suffix.length);
  out.set(prefix);
  writeVersionstamp(out, prefix.length, counter, index);
  out.set(suffix, prefix.length + 10);
  return out;
}

/**
 * Writes the versionstamp of {@link versionstampBytes} into `out` at `offset` (10 bytes), for
 * a caller that builds a stamped key or value without allocating the stamp apart; returns `out`.
 */
function writeVersionstamp(
  out: Uint8Array,
  offset: number,
  counter: number,
  index = 0,
): Uint8Array {
  const hi = Math.floor(counter / 0x1_0000_0000);
  const lo = counter >>> 0;
  out[offset] = hi >>> 24;
  out[offset + 1] = (hi >>> 16) & 0xff;
  out[offset + 2] = (hi >>> 8) & 0xff;
  out[offset + 3] = hi & 0xff;
  out[offset + 4] = lo >>> 24;
  out[offset + 5] = (lo >>> 16) & 0xff;
  out[offset + 6] = (lo >>> 8) & 0xff;
  out[offset + 7] = lo & 0xff;
  out[offset + 8] = index >>> 8;
  out[offset + 9] = index & 0xff;
  return out;
}

/**
 * FoundationDB's atomic add: little-endian addition of `operand` to `existing`, truncated to
 * the operand's length (a missing value counts as zeros).
 */
export function addLittleEndian(existing: Uint8Array | undefined, operand: Uint8Array): Uint8Array {
  const out = new Uint8Array(operand.length);
  let carry = 0;
  for (let i = 0; i < operand.length; i++) {
    const sum = (existing?.[i] ?? 0) + operand[i]! + carry;
    out[i] = sum & 0xff;
    carry = sum >> 8;
  }
  return out;
}
