/**
 * The storage contract: the one interface between dgen and a transactional, ordered key-value
 * store. It is shaped after FoundationDB (as exposed by `npm:foundationdb`) so that engine maps
 * onto it directly, and every other engine (memory, SQLite, PostgreSQL) implements the same
 * semantics; one conformance suite proves each.
 *
 * Keys and values are byte strings; keys are ordered as unsigned bytes. Transactions are
 * serializable: a transaction that read something another transaction wrote after this one's
 * snapshot fails to commit with a retryable `ConflictError` and is run again by
 * {@link Backend.transact}. Transaction bodies may therefore run more than once and must not
 * have side effects outside the transaction.
 *
 * @module
 */

/**
 * One key-value pair of a range read.
 *
 * @example
 * ```ts
 * import { type KeyValue, openMemoryBackend, pack, unpack } from "../../mod.ts";
 * const backend = openMemoryBackend();
 * await backend.transact((tx) => tx.set(pack(["a"]), pack([1])));
 * const [begin, end] = [new Uint8Array([0x00]), new Uint8Array([0xff])];
 * const rows: KeyValue[] = await backend.transact((tx) => tx.getRange(begin, end));
 * console.log(rows.map(({ key, value }) => [unpack(key), unpack(value)])); // [[["a"], [1]]]
 * await backend.close();
 * ```
 */
export interface KeyValue {
  /** The key. */
  key: Uint8Array;
  /** The value. */
  value: Uint8Array;
}

/**
 * Options of {@link ReadTransaction.getRange}.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, pack, type RangeOptions, unpack } from "../../mod.ts";
 * const backend = openMemoryBackend();
 * await backend.transact((tx) => [1, 2, 3].forEach((i) => tx.set(pack([i]), pack([]))));
 * const options: RangeOptions = { limit: 2, reverse: true };
 * const rows = await backend.transact((tx) => tx.getRange(pack([0]), pack([9]), options));
 * console.log(rows.map((kv) => unpack(kv.key)[0])); // [3, 2]
 * await backend.close();
 * ```
 */
export interface RangeOptions {
  /** Maximum number of pairs to return. @default no limit */
  limit?: number;
  /** Return pairs from the end of the range backwards. @default false */
  reverse?: boolean;
}

/**
 * The read operations of a transaction.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, pack, type ReadTransaction } from "../../mod.ts";
 * const count = async (tx: ReadTransaction) => (await tx.getRange(pack([0]), pack([9]))).length;
 * const backend = openMemoryBackend();
 * await backend.transact((tx) => tx.set(pack([1]), pack(["one"])));
 * console.log(await backend.transact((tx) => count(tx.snapshot))); // 1
 * await backend.close();
 * ```
 */
export interface ReadTransaction {
  /**
   * The value stored at `key`, or `undefined`. Sees this transaction's own writes. The array
   * may be shared with the store and with other readers (as every value and versionstamp a
   * backend returns): read it, never change it.
   */
  get(key: Uint8Array): Promise<Uint8Array | undefined>;
  /**
   * The pairs with `begin <= key < end`, in key order (or reverse order). Sees this
   * transaction's own writes. With a `limit`, only the part of the range actually read joins
   * the conflict set (as in FoundationDB).
   */
  getRange(begin: Uint8Array, end: Uint8Array, options?: RangeOptions): Promise<KeyValue[]>;
}

/**
 * A watch on one key: `promise` resolves to `true` once a commit after the watching
 * transaction's snapshot has written the key (or at once if one already has), and to `false`
 * when the watch is cancelled or the backend closes. A watch may fire spuriously; watchers
 * re-read what they watch. Like FoundationDB's watches, it is armed only when the transaction
 * that made it commits; if that transaction fails, the watch resolves `false`.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, type Watch } from "../../mod.ts";
 * const backend = openMemoryBackend();
 * const key = new TextEncoder().encode("config");
 * const watch: Watch = await backend.transact((tx) => tx.watch(key));
 * await backend.transact((tx) => tx.set(key, new Uint8Array([1])));
 * console.log(await watch.promise); // true
 * await backend.close();
 * ```
 */
export interface Watch {
  /** Resolves `true` when the key was written, `false` when cancelled. */
  readonly promise: Promise<boolean>;
  /** Stops watching; `promise` resolves `false` if it had not fired. */
  cancel(): void;
}

/**
 * A read-write transaction. Writes are buffered or applied so that later reads see them.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, pack, readInt64LE, type Transaction } from "../../mod.ts";
 * const visit = async (tx: Transaction) => {
 *   tx.add(pack(["visits"]), 1);
 *   tx.set(pack(["last"]), new TextEncoder().encode("ada"));
 *   return readInt64LE(await tx.get(pack(["visits"])));
 * };
 * const backend = openMemoryBackend();
 * await backend.transact(visit);
 * console.log(await backend.transact(visit)); // 2n
 * await backend.close();
 * ```
 */
export interface Transaction extends ReadTransaction {
  /**
   * The same reads without adding to the conflict set (FoundationDB's snapshot reads): a
   * concurrent write to what is read this way does not make this transaction conflict.
   */
  readonly snapshot: ReadTransaction;
  /** Sets `key` to `value`. Throws `LimitExceededError` if either is over the limits. */
  set(key: Uint8Array, value: Uint8Array): void;
  /** Removes `key`. */
  clear(key: Uint8Array): void;
  /** Removes every key with `begin <= key < end`. */
  clearRange(begin: Uint8Array, end: Uint8Array): void;
  /**
   * Atomically adds a signed 64-bit integer to the little-endian integer stored at `key` (a
   * missing key counts as 0), without a read conflict (FoundationDB's `add`). Read the result
   * with `readInt64LE`.
   */
  add(key: Uint8Array, delta: bigint | number): void;
  /**
   * Sets the key `prefix ‖ versionstamp ‖ suffix` to `value`, where versionstamp is the
   * 10-byte versionstamp of this commit. Commits order versionstamps: a later commit gets a
   * greater stamp. Such a key cannot be read back in the same transaction.
   */
  setVersionstampedKey(prefix: Uint8Array, suffix: Uint8Array, value: Uint8Array): void;
  /** Sets `key` to `prefix ‖ versionstamp ‖ suffix`, the stamp being this commit's. */
  setVersionstampedValue(key: Uint8Array, prefix: Uint8Array, suffix?: Uint8Array): void;
  /**
   * The 10-byte versionstamp of this transaction; resolves after a successful commit that
   * wrote something, rejects if the transaction does not commit. Read-only transactions get no
   * stamp.
   */
  getVersionstamp(): Promise<Uint8Array>;
  /** Watches `key` from this transaction's snapshot on; armed at commit. See {@link Watch}. */
  watch(key: Uint8Array): Watch;
  /** Adds `key` to the read conflict set without reading it. */
  addReadConflictKey(key: Uint8Array): void;
  /** Adds `[begin, end)` to the read conflict set without reading it. */
  addReadConflictRange(begin: Uint8Array, end: Uint8Array): void;
}

/**
 * Size and time limits of a backend. Writes over them fail before commit.
 *
 * @example
 * ```ts
 * import { type BackendLimits, openMemoryBackend } from "../../mod.ts";
 * const backend = openMemoryBackend({ limits: { maxValueSize: 1_000 } });
 * const limits: BackendLimits = backend.limits;
 * console.log(limits.maxValueSize, limits.maxKeySize); // 1000 10000
 * await backend.close();
 * ```
 */
export interface BackendLimits {
  /** Largest key, in bytes. */
  readonly maxKeySize: number;
  /** Largest value, in bytes. Larger values must be chunked by the caller. */
  readonly maxValueSize: number;
  /** Largest transaction (keys and values written plus conflict ranges), in bytes. */
  readonly maxTransactionSize: number;
  /** Longest time a transaction body may run, in milliseconds. */
  readonly maxTransactionDuration: number;
}

/**
 * FoundationDB's limits, which the embedded backends declare too so code moves between them.
 *
 * @example
 * ```ts
 * import { FOUNDATIONDB_LIMITS, openMemoryBackend } from "../../mod.ts";
 * console.log(FOUNDATIONDB_LIMITS.maxValueSize); // 100000
 * const backend = openMemoryBackend();
 * console.log(backend.limits.maxKeySize === FOUNDATIONDB_LIMITS.maxKeySize); // true
 * await backend.close();
 * ```
 */
export const FOUNDATIONDB_LIMITS: BackendLimits = Object.freeze({
  maxKeySize: 10_000,
  maxValueSize: 100_000,
  maxTransactionSize: 10_000_000,
  maxTransactionDuration: 5_000,
});

/**
 * Options of {@link Backend.transact}.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, type TransactOptions } from "../../mod.ts";
 * const backend = openMemoryBackend();
 * const options: TransactOptions = { readOnly: true, maxRetries: 3 };
 * const value = await backend.transact((tx) => tx.get(new Uint8Array([1])), options);
 * console.log(value); // undefined
 * await backend.close();
 * ```
 */
export interface TransactOptions {
  /**
   * How many times to run the body again after a retryable failure (a conflict, an unknown
   * commit result). `0` runs it once. When the retries run out, `RetriesExhaustedError` is
   * thrown with the last failure as its cause.
   * @default 100
   */
  maxRetries?: number;
  /**
   * The transaction will only read: backends may run it without taking write locks. Writes
   * throw.
   * @default false
   */
  readOnly?: boolean;
  /** Aborts waiting and retrying (the current attempt is not committed). */
  signal?: AbortSignal;
}

/**
 * A transactional, ordered key-value store.
 *
 * @example
 * ```ts
 * import { openMemoryBackend } from "./memory.ts";
 * const backend = openMemoryBackend();
 * const key = new TextEncoder().encode("k");
 * await backend.transact((tx) => tx.set(key, new Uint8Array([1])));
 * console.log(await backend.transact((tx) => tx.get(key))); // Uint8Array [1]
 * await backend.close();
 * ```
 */
export interface Backend {
  /** Which engine this is: `"memory"`, `"sqlite"`, `"foundationdb"`, `"postgres"`, … */
  readonly kind: string;
  /** The limits this backend enforces. */
  readonly limits: BackendLimits;
  /**
   * Whether a commit can end with an unknown outcome (`CommitUnknownResultError`, FoundationDB's
   * `commit_unknown_result`): applied although it reported failure. Then dgen makes its own
   * transactions idempotent with request records; an engine that always knows whether its
   * commit applied (memory, SQLite) says `false` and spares that cost.
   * @default true
   */
  readonly unknownCommitOutcomes?: boolean;
  /**
   * Runs `fn` in a serializable transaction and commits it, running it again (with back-off)
   * after retryable failures. Resolves with `fn`'s result once the commit is durable.
   * If `fn` throws, nothing is written and the error is rethrown (not retried).
   */
  transact<T>(fn: (tx: Transaction) => T | Promise<T>, options?: TransactOptions): Promise<T>;
  /**
   * The key prefix of a named subspace (FoundationDB's directory layer; a tuple prefix
   * elsewhere). Distinct paths get prefixes none of which is a prefix of another.
   */
  openSubspace(path: readonly string[]): Promise<Uint8Array>;
  /** Closes the backend: pending watches resolve `false`, later transactions fail. */
  close(): Promise<void>;
}
