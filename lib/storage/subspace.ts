/**
 * A view of a transaction confined to one key prefix: keys are given and returned relative to
 * the prefix, and nothing outside it can be read or written. Tenants are built on it.
 *
 * @module
 */

import { concatBytes, strinc } from "../bytes.ts";
import type { KeyValue, RangeOptions, ReadTransaction, Transaction, Watch } from "./types.ts";

function scopedReads(inner: ReadTransaction, prefix: Uint8Array): ReadTransaction {
  const end = strinc(prefix);
  return {
    get: (key) => inner.get(concatBytes(prefix, key)),
    async getRange(begin, stop, options?: RangeOptions): Promise<KeyValue[]> {
      const b = concatBytes(prefix, begin);
      // An empty end means "to the end of the subspace".
      const e = stop.length === 0 ? end : concatBytes(prefix, stop);
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
  const abs = (key: Uint8Array) => concatBytes(prefix, key);
  return {
    get: reads.get,
    getRange: reads.getRange,
    snapshot: scopedReads(tx.snapshot, prefix),
    set: (key, value) => tx.set(abs(key), value),
    clear: (key) => tx.clear(abs(key)),
    clearRange: (begin, stop) => tx.clearRange(abs(begin), stop.length === 0 ? end : abs(stop)),
    add: (key, delta) => tx.add(abs(key), delta),
    setVersionstampedKey: (p, suffix, value) => tx.setVersionstampedKey(abs(p), suffix, value),
    setVersionstampedValue: (key, p, suffix) => tx.setVersionstampedValue(abs(key), p, suffix),
    getVersionstamp: () => tx.getVersionstamp(),
    watch: (key): Watch => tx.watch(abs(key)),
    addReadConflictKey: (key) => tx.addReadConflictKey(abs(key)),
    addReadConflictRange: (begin, stop) =>
      tx.addReadConflictRange(abs(begin), stop.length === 0 ? end : abs(stop)),
  };
}
