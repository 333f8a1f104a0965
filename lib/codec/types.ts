/**
 * The contract between the server runtime and the state codec: how a server's state is laid
 * out under its key prefix and how a change is written as a small diff.
 *
 * @module
 */

import type { ReadTransaction, Transaction } from "../storage/types.ts";

/** What a read found under a state prefix. */
export type StoredState = { found: false } | { found: true; state: unknown };

/** Counts of what one {@link StateCodec.write} did, for tests and benchmarks. */
export interface WriteStats {
  /** Keys set. */
  keysWritten: number;
  /** Keys (or ranges) cleared. */
  keysCleared: number;
  /** Bytes of keys and values set. */
  bytesWritten: number;
}

/**
 * Encodes a server's state under a key prefix of a (tenant-scoped) transaction.
 *
 * States are immutable values: `write` compares `next` with `prev` structurally, skipping
 * subtrees that are the same object (`prev.a === next.a`), so a handler that returns a new
 * state built from the old one (spreads, `map`, `filter`) writes only what changed.
 */
export interface StateCodec {
  /**
   * Decodes the state stored under `prefix`. Throws `CodecError` naming the key if the stored
   * bytes cannot be decoded (never a silent reset).
   */
  read(tx: ReadTransaction, prefix: Uint8Array): Promise<StoredState>;
  /**
   * Writes `next` under `prefix` as a diff against `prev`, which must be exactly what is
   * stored there now (as returned by `read` or passed as `next` to the last `write`), or
   * `{ found: false }` if nothing is. Validates all of `next` before writing anything: an
   * unsupported value throws `CodecError` naming its path and leaves the transaction
   * untouched. Writing a state equal to `prev` writes nothing.
   */
  write(tx: Transaction, prefix: Uint8Array, prev: StoredState, next: unknown): WriteStats;
  /** Removes the state stored under `prefix`. */
  clear(tx: Transaction, prefix: Uint8Array): void;
  /**
   * Prepares `state` for handing to user code: deep-freezes plain objects and arrays so an
   * in-place mutation throws instead of silently escaping the diff. Returns `state`.
   */
  freeze<T>(state: T): T;
  /**
   * Whether `state` holds something a handler can change in place (a `Map`, `Set`, `Date` or
   * `Uint8Array`, or an array left unfrozen): returning the same state object then does not
   * mean it is unchanged.
   */
  isMutable(state: unknown): boolean;
}
