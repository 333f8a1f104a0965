/**
 * A view of a transaction confined to one key prefix: keys are given and returned relative to
 * the prefix, and nothing outside it can be read or written. Tenants are built on it.
 *
 * @module
 */

import { concatBytes, strinc } from "../bytes.ts";
import { ValidationError } from "../errors.ts";
import type { KeyValue, RangeOptions, ReadTransaction, Transaction, Watch } from "./types.ts";

/**
 * Checks a relative key (or value) before it is joined to the prefix: `concatBytes` would
 * silently turn a string, a number or an array into other bytes, writing where nobody meant.
 */
function bytes(x: Uint8Array, what: "key" | "begin" | "end" | "value"): Uint8Array {
  if (x instanceof Uint8Array) return x;
  const got = x === null ? "null" : Array.isArray(x) ? "an array" : typeof x;
  throw new ValidationError([{ path: what, message: `Expected a Uint8Array, received ${got}` }]);
}

function scopedReads(inner: ReadTransaction, prefix: Uint8Array): ReadTransaction {
  const end = strinc(prefix);
  return {
    get: (key) => inner.get(concatBytes(prefix, bytes(key, "key"))),
    async getRange(begin, stop, options?: RangeOptions): Promise<KeyValue[]> {
      const b = concatBytes(prefix, bytes(begin, "begin"));
      // An empty end means "to the end of the subspace".
      const e = bytes(stop, "end").length === 0 ? end : concatBytes(prefix, stop);
      const rows = await inner.getRange(b, e, options);
      for (const row of rows) row.key = row.key.subarray(prefix.length);
      return rows;
    },
  };
}

/**
 * Wraps `tx` so that every key is relative to `prefix`. In range reads and clears, an empty
 * `end` stands for the end of the subspace.
 */
export function scopeTransaction(tx: Transaction, prefix: Uint8Array): Transaction {
  const reads = scopedReads(tx, prefix);
  const end = strinc(prefix);
  const abs = (key: Uint8Array, what: "key" | "begin" | "end" = "key") =>
    concatBytes(prefix, bytes(key, what));
  return {
    get: reads.get,
    getRange: reads.getRange,
    snapshot: scopedReads(tx.snapshot, prefix),
    set: (key, value) => tx.set(abs(key), bytes(value, "value")),
    clear: (key) => tx.clear(abs(key)),
    clearRange: (begin, stop) =>
      tx.clearRange(abs(begin, "begin"), bytes(stop, "end").length === 0 ? end : abs(stop)),
    add: (key, delta) => tx.add(abs(key), delta),
    setVersionstampedKey: (p, suffix, value) => tx.setVersionstampedKey(abs(p), suffix, value),
    setVersionstampedValue: (key, p, suffix) => tx.setVersionstampedValue(abs(key), p, suffix),
    getVersionstamp: () => tx.getVersionstamp(),
    watch: (key): Watch => tx.watch(abs(key)),
    addReadConflictKey: (key) => tx.addReadConflictKey(abs(key)),
    addReadConflictRange: (begin, stop) =>
      tx.addReadConflictRange(
        abs(begin, "begin"),
        bytes(stop, "end").length === 0 ? end : abs(stop),
      ),
  };
}
