/**
 * The SQLite backend, dgen's embedded default: a durable, ordered key-value store in one file
 * (`node:sqlite`, the same code on Deno and Bun), which several OS processes may share.
 *
 * How it meets the storage contract (docs/storage.md has the long form):
 * - **Pessimistic, serial writes.** A write transaction runs inside `BEGIN IMMEDIATE` on the
 *   writer connection, so it holds the database's write lock while its body runs and never
 *   conflicts. In one process, write transactions queue (an async mutex); across processes,
 *   SQLite's lock serializes them. Waiting for another process's lock never blocks the event
 *   loop: the busy timeout is 0 and the wait is asynchronous, ended by the holder's commit
 *   signal (below) or a capped back-off timer. A waiter leaves a marker in the notify file, and
 *   a process that has held the lock for a few milliseconds of back-to-back groups steps aside
 *   for it.
 * - **Group commit.** Write transactions already waiting when the lock is taken (and those
 *   arriving while the group runs, up to `maxGroupSize`) run back to back in one physical
 *   transaction, each in its own SAVEPOINT; one COMMIT (one fsync) makes them all durable. A
 *   lone transaction is never delayed to wait for company. A run of back-to-back groups gives
 *   the event loop a turn every few milliseconds.
 * - **Versionstamps** are the 8-byte big-endian commit counter followed by the 2-byte
 *   big-endian index of the transaction in its group. The counter is taken under the write lock,
 *   above the one stored in the `meta` table, hence strictly increasing across processes. A
 *   process alone with the database stores it ahead (a reservation, see `RESERVE`) and then
 *   commits without writing it: one page fewer per commit. Counters are not dense.
 * - **Read-only transactions** run on separate reader connections in a deferred `BEGIN`: a
 *   WAL snapshot, concurrent with the write lock.
 * - **Watches.** Every row carries the logical version (`counter << 16 | index`) of the
 *   transaction that last wrote it. A watch remembers the version it saw (0 for a missing key)
 *   and fires when the key's version differs. Commits of this process notify its watches
 *   directly; other processes' commits arrive through `<path>-notify`, a small file every
 *   committing process writes a random signal into after each commit, watched with `fs.watch`
 *   (inotify on Linux); on a wake-up the process re-reads the versions of all its watched keys
 *   in one snapshot, unless `PRAGMA data_version` says no other process committed since its
 *   last look. A poll every second is the safety net. Caveat (like FoundationDB's ABA
 *   caveat): a key created and deleted again by other processes between two looks reads as
 *   unchanged (missing both times), and that watch may not fire.
 *
 * @module
 */

import type { FSWatcher } from "node:fs";
import type { DatabaseSync, StatementSync } from "node:sqlite";
import * as v from "valibot";
import {
  addLittleEndian,
  bytesToBinaryString,
  compareBytes,
  EMPTY_BYTES,
  equalBytes,
  int64LE,
  ONE_LE,
  printable,
  stampedBytes,
  versionstampBytes,
} from "../bytes.ts";
import {
  BackendUnavailableError,
  ConflictError,
  LimitExceededError,
  TransactionError,
} from "../errors.ts";
import { pack } from "../tuple.ts";
import { parse } from "../validate.ts";
import {
  checkTransactOptions,
  committedStamp,
  LazyStamp,
  limitsSchema,
  setOwned,
  WatchHandle,
} from "./common.ts";
import { PeerBell } from "./_peer_bell.ts";
import { retryLoop } from "./retry.ts";
import { BodyWatchdog, timeoutError, type WatchedBody } from "./watchdog.ts";
import {
  type Backend,
  type BackendLimits,
  FOUNDATIONDB_LIMITS,
  type KeyValue,
  type RangeOptions,
  type ReadTransaction,
  type Transaction,
  type TransactOptions,
  type Watch,
} from "./types.ts";
import { errorMessage } from "../describe.ts";

/**
 * Options of {@link openSqliteBackend}.
 *
 * @example
 * ```ts
 * import { openSqliteBackend, type SqliteBackendOptions } from "../../mod.ts";
 * const options: SqliteBackendOptions = { path: ".dgen/options-example.sqlite", synchronous: "full" };
 * const backend = await openSqliteBackend(options);
 * console.log(backend.kind); // "sqlite"
 * await backend.close();
 * ```
 */
export interface SqliteBackendOptions {
  /**
   * Path of the database file. Its parent directory is created if missing. Next to it, SQLite
   * keeps `<path>-wal` and `<path>-shm`, and dgen keeps `<path>-notify` (the cross-process
   * wake-up signal) and `<path>-peers/` (the processes that have it open), both next to the
   * file the path leads to once symbolic links are followed, as SQLite's own files are.
   */
  path: string;
  /**
   * SQLite's `synchronous` setting. `"full"` makes every commit durable (one fsync of the WAL
   * per physical commit). `"normal"` skips that fsync: commits are atomic and survive a crash
   * of the process, but the last ones may be lost if the machine loses power. A durability
   * trade-off for throughput; dgen's guarantees assume `"full"`.
   * @default "full"
   */
  synchronous?: "full" | "normal";
  /** Limits to enforce. @default FoundationDB's limits ({@link FOUNDATIONDB_LIMITS}) */
  limits?: Partial<BackendLimits>;
  /**
   * Most write transactions committed together in one physical commit. `1` turns group commit
   * off. At most 4096.
   * @default 64
   */
  maxGroupSize?: number;
}

/**
 * Counters of a {@link SqliteBackend}, for benchmarks and monitoring. `transactions /
 * physicalCommits` is the mean group size.
 *
 * @example
 * ```ts
 * import { openSqliteBackend } from "../../mod.ts";
 * const backend = await openSqliteBackend({ path: ".dgen/stats-example.sqlite" });
 * await backend.transact((tx) => tx.add(new Uint8Array([1]), 1));
 * console.log(backend.stats.physicalCommits >= 1); // true
 * await backend.close();
 * ```
 */
export interface SqliteBackendStats {
  /** Write transactions committed (each with its own versionstamp). */
  transactions: number;
  /** Physical commits (COMMITs, hence WAL fsyncs with `synchronous: "full"`). */
  physicalCommits: number;
  /** Times `BEGIN IMMEDIATE` found the write lock held by another connection. */
  lockWaits: number;
}

/**
 * A {@link Backend} on a SQLite file, made by {@link openSqliteBackend}.
 *
 * @example
 * ```ts
 * import { openSqliteBackend } from "../../mod.ts";
 * const backend = await openSqliteBackend({ path: ".dgen/example.sqlite" });
 * console.log(backend.kind, backend.path); // "sqlite" ".dgen/example.sqlite"
 * await backend.close();
 * ```
 */
export interface SqliteBackend extends Backend {
  /** `"sqlite"`. */
  readonly kind: "sqlite";
  /** The database file, as given. */
  readonly path: string;
  /** Counters since this backend was opened. */
  readonly stats: Readonly<SqliteBackendStats>;
}

const optionsSchema = v.strictObject({
  path: v.pipe(
    v.string(),
    v.minLength(1, "Expected a non-empty file path"),
    v.check(
      (p) => p !== ":memory:" && !p.startsWith("file:"),
      "Expected a file path (not ':memory:' or a 'file:' URI; use openMemoryBackend for a " +
        "store in memory)",
    ),
  ),
  synchronous: v.optional(v.picklist(["full", "normal"])),
  limits: v.optional(limitsSchema),
  maxGroupSize: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(4096))),
});

/** Version of the on-disk layout; a file with another one is refused, not reinterpreted. */
const FORMAT_VERSION = 1;
/** The logical version of a write is `counter * GROUP_SPAN + index in group`. */
const GROUP_SPAN = 65536;
/** Interval of the safety poll for watches, in ms. Wake-ups normally come from `-notify`. */
const SAFETY_POLL_MS = 1000;
/** Quiet time after a notify event before one more look (see `#tail`), in ms. */
const NOTIFY_TAIL_MS = 15;
/** Cap of the back-off between attempts to take another process's write lock, in ms. */
const LOCK_WAIT_CAP_MS = 20;
/** Longest run of back-to-back groups before the event loop gets a turn, in ms. */
const SLICE_MS = 5;
/** A group starting this soon after the previous one ended continues a streak, in ms. */
const STREAK_MS = 1;
/** Lock time a process takes in a streak before it checks for waiting processes, in ms. */
const FAIR_SHARE_MS = 5;
/** Longest a process with more work steps aside for a process waiting for the lock, in ms. */
const LOCK_YIELD_MS = 10;
/** Layout of the notify file: a commit signal, then a "waiting for the lock" marker. */
const PULSE_OFFSET = 0;
const WAITER_OFFSET = 8;
const NOTIFY_FILE_SIZE = 12;
/** Reader connections kept for concurrent read-only transactions. */
const MAX_READERS = 4;
/**
 * Commit counters a process alone with the database reserves at once: it stores the counter
 * plus this much and then commits without writing the counter again until it has used them.
 * The counter's row sits on a page of its own, and writing it cost a commit one more WAL frame:
 * 42% more CPU per single-row commit with `synchronous=normal` (10 µs on Deno), 4–6% more time
 * with `full` (measured alternating, 2026-12-07). A process that meets another one's commit
 * reads the stored counter, which is at least every counter used, and continues above it; up
 * to this many counters are then skipped, once. Versionstamps stay strictly increasing, not
 * dense (FoundationDB's are not dense either).
 */
const RESERVE = 256;
/**
 * After a commit of another connection, this process writes the exact counter with each commit
 * (no reservation) for at least this long, ms: processes taking turns would otherwise skip up
 * to RESERVE counters at every hand-over, and a process that has just opened the database may
 * not be seen through its peer registration yet (see PeerBell's REFRESH_MS; every process
 * announces itself with a commit when it opens the database). Watch checks do not rely on it
 * (see #recheck).
 */
const EXACT_MS = 1000;

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS kv (
    k BLOB PRIMARY KEY,
    v BLOB NOT NULL,
    ver INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
  ) WITHOUT ROWID;
  INSERT OR IGNORE INTO meta (name, value) VALUES ('format', ${FORMAT_VERSION}), ('counter', 0);
`;

type Row = unknown[];

/** The prepared statements of one connection; all return arrays (`setReturnArrays`). */
class Conn {
  readonly get: StatementSync;
  readonly ver: StatementSync;
  readonly rangeAsc: StatementSync;
  readonly rangeDesc: StatementSync;
  readonly counter: StatementSync;
  readonly dataVersion: StatementSync;
  readonly begin: StatementSync;
  readonly commit: StatementSync;
  readonly rollback: StatementSync;

  constructor(readonly db: DatabaseSync, beginSql: string) {
    this.get = this.prepare("SELECT v FROM kv WHERE k = ?");
    this.ver = this.prepare("SELECT ver FROM kv WHERE k = ?");
    this.rangeAsc = this.prepare(
      "SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?",
    );
    this.rangeDesc = this.prepare(
      "SELECT k, v FROM kv WHERE k >= ? AND k < ? ORDER BY k DESC LIMIT ?",
    );
    this.counter = this.prepare("SELECT value FROM meta WHERE name = 'counter'");
    this.dataVersion = this.prepare("PRAGMA data_version");
    this.begin = this.prepare(beginSql);
    this.commit = this.prepare("COMMIT");
    this.rollback = this.prepare("ROLLBACK");
  }

  prepare(sql: string): StatementSync {
    const s = this.db.prepare(sql);
    s.setReturnArrays(true);
    return s;
  }

  /** The version of `key`'s row, 0 if there is none. */
  versionOf(key: Uint8Array): number {
    const row = this.ver.get(key) as unknown as unknown as Row | undefined;
    return row === undefined ? 0 : row[0] as number;
  }

  readCounter(): number {
    return (this.counter.get() as unknown as Row)[0] as number;
  }

  /** `PRAGMA data_version`: changes whenever another connection has committed. */
  readDataVersion(): number {
    return (this.dataVersion.get() as unknown as Row)[0] as number;
  }
}

/** Most rows the writer's {@link RowCache} holds; past that it starts afresh. */
const ROW_CACHE_LIMIT = 4096;

/**
 * The rows the writer connection read, and the values it wrote to such rows, kept from one
 * write transaction to the next while no other connection commits: a point read that hits it
 * costs a `Map` lookup instead of a statement (about 3 µs on Deno, 2 µs on Bun), and a call
 * reads the same few keys (lock, queue length, state version) every time.
 *
 * Valid only under the write lock, between checks of `PRAGMA data_version` (which changes
 * when any other connection, in this process or another, commits): {@link SqliteBackendImpl}
 * empties it when the version moved, and whenever a transaction of its own rolls back. Inside
 * a savepoint (a group member after the first) changes are recorded so that `ROLLBACK TO`
 * can undo them. Keys are binary strings; `null` records a row known to be missing. Values
 * are shared with readers, like the memory backend's: callers never change a value they read.
 */
class RowCache {
  readonly #rows = new Map<string, Uint8Array | null>();
  /** Previous entries (undefined: absent) of the keys changed since the savepoint. */
  #undo: Array<[string, Uint8Array | null | undefined]> | undefined;
  /** The `data_version` these rows are valid for. */
  dataVersion = -1;

  get(k: string): Uint8Array | null | undefined {
    return this.#rows.get(k);
  }

  /** Records what is stored at `k` (`null`: nothing). */
  put(k: string, value: Uint8Array | null): void {
    if (this.#undo !== undefined) this.#undo.push([k, this.#rows.get(k)]);
    if (this.#rows.size >= ROW_CACHE_LIMIT && !this.#rows.has(k)) this.#rows.clear();
    this.#rows.set(k, value);
  }

  /** Records a write to `k`, if `k` is cached (rows nobody read are not kept). */
  update(k: string, value: () => Uint8Array | null): void {
    if (this.#rows.has(k)) this.put(k, value());
  }

  /** Forgets the rows in `[begin, end)`. */
  dropRange(begin: string, end: string): void {
    for (const k of this.#rows.keys()) {
      if (k >= begin && k < end) {
        if (this.#undo !== undefined) this.#undo.push([k, this.#rows.get(k)]);
        this.#rows.delete(k);
      }
    }
  }

  clear(): void {
    this.#rows.clear();
    this.#undo = undefined;
  }

  /** A savepoint was set: record changes from here. */
  mark(): void {
    this.#undo = [];
  }

  /** The savepoint was released: its changes stay. */
  keep(): void {
    this.#undo = undefined;
  }

  /** `ROLLBACK TO` the savepoint: undo the changes made since. */
  revert(): void {
    const undo = this.#undo;
    this.#undo = undefined;
    if (undo === undefined) return;
    for (let i = undo.length - 1; i >= 0; i--) {
      const [k, prev] = undo[i]!;
      if (prev === undefined) this.#rows.delete(k);
      else this.#rows.set(k, prev);
    }
  }
}

/** The writer connection: the reads plus the writes and savepoints. */
class WriterConn extends Conn {
  readonly rows = new RowCache();
  readonly put: StatementSync;
  readonly del: StatementSync;
  readonly delRange: StatementSync;
  readonly setCounter: StatementSync;
  readonly savepoint: StatementSync;
  readonly release: StatementSync;
  readonly rollbackTo: StatementSync;

  constructor(db: DatabaseSync) {
    super(db, "BEGIN IMMEDIATE");
    this.put = this.prepare(
      "INSERT INTO kv (k, v, ver) VALUES (?, ?, ?) " +
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v, ver = excluded.ver",
    );
    this.del = this.prepare("DELETE FROM kv WHERE k = ?");
    this.delRange = this.prepare("DELETE FROM kv WHERE k >= ? AND k < ?");
    this.setCounter = this.prepare("UPDATE meta SET value = ? WHERE name = 'counter'");
    this.savepoint = this.prepare("SAVEPOINT member");
    this.release = this.prepare("RELEASE member");
    this.rollbackTo = this.prepare("ROLLBACK TO member");
  }

  /**
   * The last commit counter this connection used, or the stored counter when it does not know
   * (-1: not known; see {@link lockedCounter}).
   */
  used = -1;
  /** The stored counter (`meta`), as this connection last wrote or read it. */
  reserved = -1;
  /** Whether the last {@link lockedCounter} found a commit of another connection. */
  foreign = false;

  /**
   * Right after `BEGIN IMMEDIATE`: the last counter used. This connection's own knowledge
   * holds (with the row cache) while no other connection committed since it last looked;
   * otherwise the cache is emptied and the stored counter read, which is at least every
   * counter any commit used (see {@link RESERVE}).
   */
  lockedCounter(): number {
    const version = this.readDataVersion();
    const rows = this.rows;
    this.foreign = false;
    if (version !== rows.dataVersion) {
      this.foreign = rows.dataVersion !== -1;
      rows.clear();
      rows.dataVersion = version;
      this.used = -1;
    }
    if (this.used < 0) this.used = this.reserved = this.readCounter();
    return this.used;
  }
}

/** Whether a SQLite error means "locked by another connection, try again". */
function isBusy(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  // Bun reports the result code; Deno only the message.
  const code = (e as { errcode?: unknown }).errcode;
  if (typeof code === "number") return (code & 0xff) === 5 || (code & 0xff) === 6;
  return /database (table )?is locked|database is busy|SQLITE_BUSY|SQLITE_LOCKED/i.test(e.message);
}

/** Turns a SQLite failure inside a transaction into dgen's taxonomy. */
function storageError(e: unknown): Error {
  if (e instanceof TransactionError || e instanceof BackendUnavailableError) return e;
  if (isBusy(e)) return new ConflictError("The SQLite database is busy", { cause: e });
  const message = errorMessage(e);
  return new TransactionError("storage_error", `SQLite failed: ${message}`, { cause: e });
}

/**
 * What the members of one group wrote, for notifying watches after the commit. Keys are copied
 * into one buffer the backend reuses from group to group: most groups meet no watch, and one
 * that does usually meets few, which a byte comparison finds without converting every key
 * written to a string (or allocating a copy of it: slow on V8).
 */
class GroupWrites {
  /** The written keys, back to back. */
  #bytes: Uint8Array;
  #used = 0;
  /** Per key: its start and end in #bytes, and the index of the member that wrote it. */
  readonly #spans: number[] = [];
  /** Ranges cleared, with the index of the member that cleared them. */
  readonly cleared: Array<{ begin: Uint8Array; end: Uint8Array; index: number }> = [];
  /** Index of the last member, so far. */
  last = 0;
  #byString: Map<string, number> | undefined;

  constructor(buffer: Uint8Array) {
    this.#bytes = buffer;
  }

  /** The buffer, to reuse for the next group (it may have grown). */
  get buffer(): Uint8Array {
    return this.#bytes;
  }

  /** How many keys were written. */
  get size(): number {
    return this.#spans.length / 3;
  }

  touch(key: Uint8Array, index: number): void {
    const end = this.#used + key.length;
    if (end > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(2 * this.#bytes.length, end));
      grown.set(this.#bytes.subarray(0, this.#used));
      this.#bytes = grown;
    }
    this.#bytes.set(key, this.#used);
    this.#spans.push(this.#used, end, index);
    this.#used = end;
    this.#byString = undefined;
  }

  #equals(i: number, key: Uint8Array): boolean {
    const start = this.#spans[i]!;
    if (this.#spans[i + 1]! - start !== key.length) return false;
    const bytes = this.#bytes;
    for (let j = 0; j < key.length; j++) if (bytes[start + j] !== key[j]) return false;
    return true;
  }

  /** Key (binary string) → index of the last member that wrote it. */
  get byString(): Map<string, number> {
    if (this.#byString === undefined) {
      this.#byString = new Map();
      const spans = this.#spans;
      for (let i = 0; i < spans.length; i += 3) {
        this.#byString.set(
          bytesToBinaryString(this.#bytes.subarray(spans[i]!, spans[i + 1]!)),
          spans[i + 2]!,
        );
      }
    }
    return this.#byString;
  }

  /** Whether the group wrote `key` (cleared ranges aside). */
  wrote(key: Uint8Array): boolean {
    if (this.size > FEW_KEYS) return this.byString.has(bytesToBinaryString(key));
    for (let i = 0; i < this.#spans.length; i += 3) if (this.#equals(i, key)) return true;
    return false;
  }

  /** Whether a member after `index` wrote `key` (cleared ranges aside). */
  writtenAfter(key: Uint8Array, index: number): boolean {
    if (index >= this.last) return false;
    if (this.size > FEW_KEYS) return (this.byString.get(bytesToBinaryString(key)) ?? -1) > index;
    for (let i = 0; i < this.#spans.length; i += 3) {
      if (this.#spans[i + 2]! > index && this.#equals(i, key)) return true;
    }
    return false;
  }
}

/** Up to this many keys, a linear search by bytes beats converting the keys to strings. */
const FEW_KEYS = 16;

interface PendingWrite {
  fn: (tx: Transaction) => unknown;
  signal: AbortSignal | undefined;
  /** Removes the abort listener, once the request leaves the queue. */
  unlisten: (() => void) | undefined;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

class SqliteTransaction implements Transaction, WatchedBody<SqliteTransaction> {
  readonly started = performance.now();
  done = false;
  /** While the body's promise is pending: what fails it, and the watchdog's links. */
  fail: ((e: unknown) => void) | undefined = undefined;
  watchPrev: SqliteTransaction | undefined = undefined;
  watchNext: SqliteTransaction | undefined = undefined;
  wrote = false;
  size = 0;
  readonly watches: Array<[Uint8Array, WatchHandle]> = [];
  readonly stamp = new LazyStamp();
  readonly snapshot: ReadTransaction;
  #stampedKeys: Array<{ key: Uint8Array; value: Uint8Array }> | undefined;
  /** Keys set by `setVersionstampedValue` and not overwritten since: binary key → value. */
  #stampedValues: Map<string, { key: Uint8Array; value: Uint8Array }> | undefined;

  constructor(
    readonly backend: SqliteBackendImpl,
    readonly conn: Conn,
    readonly readOnly: boolean,
    readonly writer: WriterConn | undefined,
    readonly group: GroupWrites | undefined,
    /** Index of this transaction in its group. */
    readonly index: number,
    /** Logical version written into rows. */
    readonly version: number,
    /**
     * The commit counter of this transaction's versionstamp, with `index` (known up front: the
     * counter is locked); -1 for a read-only transaction.
     */
    readonly stampCounter: number,
  ) {
    this.snapshot = {
      get: (key) => this.#settle(() => this.#get(key, false)),
      getRange: (b, e, o) => this.#settle(() => this.#range(b, e, o, false)),
    };
  }

  #settle<T>(f: () => T): Promise<T> {
    try {
      return Promise.resolve(f());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  check(): void {
    if (this.done) throw new TransactionError("transaction_done", "Transaction already finished");
    if (this.backend.closed) {
      throw new BackendUnavailableError("The SQLite backend is closed", { closed: true });
    }
    const elapsed = performance.now() - this.started;
    const limit = this.backend.limits.maxTransactionDuration;
    if (elapsed > limit) throw timeoutError(elapsed, limit);
  }

  /** The watchdog timed the body out: its later operations throw (the attempt rolls back). */
  expire(): void {
    this.done = true;
  }

  checkKey(key: Uint8Array): void {
    if (!(key instanceof Uint8Array)) throw new TypeError("Keys are Uint8Arrays");
    const max = this.backend.limits.maxKeySize;
    if (key.length > max) {
      throw new LimitExceededError(
        "key_too_large",
        `Key of ${key.length} bytes exceeds the ${max}-byte limit: ${
          printable(key.subarray(0, 40))
        }…`,
      );
    }
  }

  /** Checks a write and returns the writer connection. */
  checkWrite(key: Uint8Array, value?: Uint8Array): WriterConn {
    this.check();
    if (this.readOnly || this.writer === undefined) {
      throw new TransactionError("read_only", "Cannot write in a read-only transaction");
    }
    this.checkKey(key);
    if (value !== undefined) {
      if (!(value instanceof Uint8Array)) throw new TypeError("Values are Uint8Arrays");
      const max = this.backend.limits.maxValueSize;
      if (value.length > max) {
        throw new LimitExceededError(
          "value_too_large",
          `Value of ${value.length} bytes for key ${
            printable(key.subarray(0, 40))
          } exceeds the ${max}-byte limit`,
        );
      }
    }
    this.size += key.length + (value?.length ?? 0);
    this.wrote = true;
    return this.writer;
  }

  touch(key: Uint8Array): void {
    this.group!.touch(key, this.index);
  }

  #unreadable(): TransactionError {
    return new TransactionError(
      "accessed_unreadable",
      "A versionstamped value cannot be read in the transaction that wrote it",
    );
  }

  #get(key: Uint8Array, conflict: boolean): Uint8Array | undefined {
    this.check();
    this.checkKey(key);
    if (this.#stampedValueAt(key) !== undefined) throw this.#unreadable();
    // Accounted like a read conflict key, as the engines with conflict sets do.
    if (conflict) this.size += 2 * key.length + 1;
    const w = this.writer;
    if (w === undefined) return this.#select(this.conn, key);
    const k = bytesToBinaryString(key);
    const cached = w.rows.get(k);
    if (cached !== undefined) return cached ?? undefined;
    const value = this.#select(w, key);
    w.rows.put(k, value ?? null);
    return value;
  }

  #select(conn: Conn, key: Uint8Array): Uint8Array | undefined {
    let row: Row | undefined;
    try {
      row = conn.get.get(key) as unknown as unknown as Row | undefined;
    } catch (e) {
      throw storageError(e);
    }
    return row === undefined ? undefined : row[0] as Uint8Array;
  }

  #range(
    begin: Uint8Array,
    end: Uint8Array,
    options: RangeOptions | undefined,
    conflict: boolean,
  ): KeyValue[] {
    this.check();
    this.checkKey(begin);
    this.checkKey(end);
    if (conflict) this.size += begin.length + end.length;
    const limit = options?.limit ?? Infinity;
    if (!(limit > 0) || compareBytes(begin, end) >= 0) return [];
    if (this.#stampedValues !== undefined) {
      for (const { key } of this.#stampedValues.values()) {
        if (compareBytes(key, begin) >= 0 && compareBytes(key, end) < 0) throw this.#unreadable();
      }
    }
    const stmt = options?.reverse ? this.conn.rangeDesc : this.conn.rangeAsc;
    let rows: Row[];
    try {
      rows = stmt.all(begin, end, limit === Infinity ? -1 : Math.floor(limit)) as unknown as Row[];
    } catch (e) {
      throw storageError(e);
    }
    const out: KeyValue[] = new Array(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i]!;
      out[i] = { key: row[0] as Uint8Array, value: row[1] as Uint8Array };
    }
    return out;
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#settle(() => this.#get(key, true));
  }

  getRange(begin: Uint8Array, end: Uint8Array, options?: RangeOptions): Promise<KeyValue[]> {
    return this.#settle(() => this.#range(begin, end, options, true));
  }

  /** The key under which `#stampedValues` holds `key`, if it does. */
  #stampedValueAt(key: Uint8Array): string | undefined {
    const m = this.#stampedValues;
    if (m === undefined) return undefined;
    if (m.size > FEW_KEYS) {
      const k = bytesToBinaryString(key);
      return m.has(k) ? k : undefined;
    }
    for (const [k, e] of m) if (equalBytes(e.key, key)) return k;
    return undefined;
  }

  #forgetStampedValue(key: Uint8Array): void {
    const k = this.#stampedValueAt(key);
    if (k !== undefined) this.#stampedValues!.delete(k);
  }

  /** Writes a row; `owned` says the value is the backend's own (cached without a copy). */
  #put(w: WriterConn, key: Uint8Array, value: Uint8Array, owned = false, k?: string): void {
    try {
      w.put.run(key, value, this.version);
    } catch (e) {
      throw storageError(e);
    }
    this.touch(key);
    if (owned) w.rows.put(k ?? bytesToBinaryString(key), value);
    else w.rows.update(k ?? bytesToBinaryString(key), () => value.slice());
  }

  set(key: Uint8Array, value: Uint8Array): void {
    const w = this.checkWrite(key, value);
    this.#forgetStampedValue(key);
    this.#put(w, key, value);
  }

  [setOwned](key: Uint8Array, value: Uint8Array): void {
    const w = this.checkWrite(key, value);
    this.#forgetStampedValue(key);
    this.#put(w, key, value, true);
  }

  clear(key: Uint8Array): void {
    const w = this.checkWrite(key);
    this.#forgetStampedValue(key);
    try {
      w.del.run(key);
    } catch (e) {
      throw storageError(e);
    }
    this.touch(key);
    w.rows.update(bytesToBinaryString(key), () => null);
  }

  clearRange(begin: Uint8Array, end: Uint8Array): void {
    const w = this.checkWrite(begin);
    this.checkKey(end);
    this.size += end.length;
    if (compareBytes(begin, end) >= 0) return;
    if (this.#stampedValues !== undefined) {
      for (const [k, { key }] of this.#stampedValues) {
        if (compareBytes(key, begin) >= 0 && compareBytes(key, end) < 0) {
          this.#stampedValues.delete(k);
        }
      }
    }
    try {
      w.delRange.run(begin, end);
    } catch (e) {
      throw storageError(e);
    }
    w.rows.dropRange(bytesToBinaryString(begin), bytesToBinaryString(end));
    this.group!.cleared.push({ begin: begin.slice(), end: end.slice(), index: this.index });
  }

  add(key: Uint8Array, delta: bigint | number): void {
    // Only read here: the common +1 (counters) needs no array of its own.
    const operand = delta === 1 ? ONE_LE : int64LE(delta);
    const w = this.checkWrite(key, operand);
    // The write lock is held, so reading and writing back is atomic.
    this.#forgetStampedValue(key);
    const k = bytesToBinaryString(key);
    const cached = w.rows.get(k);
    const old = cached === undefined ? this.#select(w, key) : cached ?? undefined;
    this.#put(w, key, addLittleEndian(old, operand), true, k);
  }

  setVersionstampedKey(prefix: Uint8Array, suffix: Uint8Array, value: Uint8Array): void {
    const key = stampedBytes(prefix, this.stampCounter, this.index, suffix);
    this.checkWrite(key, value);
    // Written at the end of the body: such keys are not readable in their own transaction.
    (this.#stampedKeys ??= []).push({ key, value: value.slice() });
  }

  setVersionstampedValue(key: Uint8Array, prefix: Uint8Array, suffix = EMPTY_BYTES): void {
    const value = prefix.length === 0 && suffix.length === 0
      ? this.stampBytes()
      : stampedBytes(prefix, this.stampCounter, this.index, suffix);
    this.checkWrite(key, value);
    (this.#stampedValues ??= new Map()).set(bytesToBinaryString(key), { key: key.slice(), value });
  }

  #stampBytes: Uint8Array | undefined;

  /**
   * This transaction's versionstamp, made once: values that are only the stamp and the caller
   * of getVersionstamp share it (values are shared with readers anyway).
   */
  stampBytes(): Uint8Array {
    return this.#stampBytes ??= versionstampBytes(this.stampCounter, this.index);
  }

  getVersionstamp(): Promise<Uint8Array> {
    return this.stamp.promise;
  }

  [committedStamp](): Uint8Array | undefined {
    return this.stamp.now();
  }

  watch(key: Uint8Array): Watch {
    this.check();
    this.checkKey(key);
    const handle = new WatchHandle();
    if (this.readOnly) {
      // The version the snapshot sees; write transactions take it at the end of the body.
      try {
        handle.baseline = this.conn.versionOf(key);
      } catch (e) {
        throw storageError(e);
      }
    }
    this.watches.push([key.slice(), handle]);
    return handle;
  }

  addReadConflictKey(key: Uint8Array): void {
    // Writers hold the lock, so there are no conflicts to track; only the size is accounted.
    this.check();
    this.checkKey(key);
    this.size += 2 * key.length + 1;
  }

  addReadConflictRange(begin: Uint8Array, end: Uint8Array): void {
    this.check();
    this.checkKey(begin);
    this.checkKey(end);
    if (compareBytes(begin, end) < 0) this.size += begin.length + end.length;
  }

  /**
   * Ends a body that returned normally: applies the deferred versionstamped writes, checks the
   * limits, and takes the watches' versions. Throws (and the member is rolled back) if a limit
   * is exceeded.
   */
  finish(): void {
    this.check();
    const max = this.backend.limits.maxTransactionSize;
    if (this.size > max) {
      throw new LimitExceededError(
        "transaction_too_large",
        `Transaction of ${this.size} bytes exceeds the ${max}-byte limit`,
      );
    }
    this.done = true;
    const w = this.writer;
    if (w === undefined) return;
    if (this.#stampedValues !== undefined) {
      for (const [k, { key, value }] of this.#stampedValues) this.#put(w, key, value, true, k);
    }
    if (this.#stampedKeys !== undefined) {
      for (const { key, value } of this.#stampedKeys) this.#put(w, key, value);
    }
    for (const [key, handle] of this.watches) {
      try {
        handle.baseline = w.versionOf(key);
      } catch (e) {
        throw storageError(e);
      }
    }
  }

  /** Ends a transaction that did not commit: its stamp rejects and its watches resolve false. */
  abandon(): void {
    this.done = true;
    this.stamp.reject(() =>
      new TransactionError("not_committed", "The transaction did not commit")
    );
    for (const [, handle] of this.watches) handle.cancel();
  }
}

type FsModule = typeof import("node:fs");

interface Registered {
  readonly key: Uint8Array;
  readonly handles: Set<WatchHandle>;
}

class SqliteBackendImpl implements SqliteBackend {
  readonly kind = "sqlite";
  // A COMMIT either applies or fails (BEGIN IMMEDIATE: no busy error at commit time).
  readonly unknownCommitOutcomes = false;
  readonly stats: SqliteBackendStats = { transactions: 0, physicalCommits: 0, lockWaits: 0 };
  closed = false;
  readonly #file: string;
  readonly #open: (path: string) => DatabaseSync;
  readonly #fs: FsModule;
  readonly #setImmediate: (f: () => void) => unknown;
  readonly #writer: WriterConn;
  /** Serves watch checks; used only synchronously, never inside a body. */
  readonly #probe: Conn;
  readonly #idleReaders: Conn[] = [];
  #readerCount = 0;
  readonly #readerWaiters: Array<(c: Conn | undefined) => void> = [];
  #activeReads = 0;
  readonly #queue: PendingWrite[] = [];
  #running: Promise<void> | undefined;
  readonly #notifyPath: string;
  #notifyFd: number;
  /** The last commit signal this process wrote (random, so processes' signals differ). */
  readonly #pulse = new Uint8Array(4);
  /** The last waiter marker seen (or written) by this process. */
  readonly #waiterSeen = new Uint8Array(4);
  readonly #scratch = new Uint8Array(4);
  /** Watched keys of this process, by binary key. */
  readonly #registry = new Map<string, Registered>();
  /**
   * The probe's `PRAGMA data_version` at its last look that accounted for every commit (-1:
   * none yet). It changes when any other connection commits, whatever the commit counter did.
   */
  #probeVersion = -1;
  /** The writer met another connection's commit (see lockedCounter) since the last look. */
  #foreignSinceLook = false;
  #watcher: FSWatcher | undefined;
  #pollTimer: ReturnType<typeof setInterval> | undefined;
  #recheckQueued = false;
  /** What the last look cost and when it ended (performance.now()), to pace the next one. */
  #recheckCost = 0;
  #recheckEnd = -Infinity;
  #lastNotify = 0;
  #tailTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #lockWaiters = new Set<() => void>();
  /** Another process held the lock during this run of the queue: keep listening for it. */
  #contended = false;
  #closing: Promise<void> | undefined;
  /** When the current slice of back-to-back groups began (see #pace). */
  #sliceStart: number | undefined;
  #lastGroupEnd = -Infinity;
  #streakStart = 0;
  readonly #drained: Array<() => void> = [];

  constructor(
    readonly path: string,
    /** The absolute path: reader connections open later, maybe after a `chdir`. */
    file: string,
    readonly limits: BackendLimits,
    readonly maxGroupSize: number,
    open: (path: string) => DatabaseSync,
    fs: FsModule,
    setImmediate: (f: () => void) => unknown,
    writer: DatabaseSync,
    notifyPath: string,
  ) {
    this.#watchdog = new BodyWatchdog(limits.maxTransactionDuration);
    this.#file = file;
    this.#open = open;
    this.#fs = fs;
    this.#setImmediate = setImmediate;
    this.#writer = new WriterConn(writer);
    this.#probe = openConn(open, file, "BEGIN");
    this.#notifyPath = notifyPath;
    this.#notifyFd = fs.openSync(notifyPath, "r+");
    fs.readSync(this.#notifyFd, this.#waiterSeen, 0, 4, WAITER_OFFSET);
  }

  transact<T>(fn: (tx: Transaction) => T | Promise<T>, options?: TransactOptions): Promise<T> {
    let opts: TransactOptions;
    try {
      opts = checkTransactOptions(options);
      this.#checkOpen();
    } catch (e) {
      return Promise.reject(e);
    }
    const attempt = opts.readOnly
      ? () => this.#read(fn, opts.signal)
      : () => this.#write(fn, opts.signal);
    return retryLoop(attempt, opts);
  }

  openSubspace(path: readonly string[]): Promise<Uint8Array> {
    return Promise.resolve(pack([path]));
  }

  #checkOpen(): void {
    if (this.closed) {
      throw new BackendUnavailableError("The SQLite backend is closed", { closed: true });
    }
  }

  // ---- Write transactions: the queue and group commit ----

  #write<T>(fn: (tx: Transaction) => T | Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.closed) {
        return reject(
          new BackendUnavailableError("The SQLite backend is closed", { closed: true }),
        );
      }
      if (signal?.aborted) return reject(signal.reason);
      const req: PendingWrite = {
        fn: fn as (tx: Transaction) => unknown,
        signal,
        unlisten: undefined,
        resolve: resolve as (v: unknown) => void,
        reject,
      };
      this.#queue.push(req);
      if (signal !== undefined) {
        // Only a request still waiting for the lock is withdrawn; a running body is checked
        // for the abort before its savepoint is released.
        const onAbort = () => {
          const i = this.#queue.indexOf(req);
          if (i >= 0) {
            this.#queue.splice(i, 1);
            reject(signal.reason);
          }
        };
        signal.addEventListener("abort", onAbort, { once: true });
        req.unlisten = () => signal.removeEventListener("abort", onAbort);
      }
      this.#running ??= this.#runQueue();
    });
  }

  async #runQueue(): Promise<void> {
    try {
      while (this.#queue.length > 0 && !this.closed) {
        const paused = this.#pace();
        if (paused !== undefined) {
          await paused;
          if (this.#queue.length === 0 || this.closed) break;
        }
        await this.#runGroup();
        this.#lastGroupEnd = performance.now();
      }
    } finally {
      this.#running = undefined;
      this.#contended = false;
      this.#updateWatcher();
      if (this.closed && this.#queue.length > 0) {
        const err = new BackendUnavailableError("The SQLite backend is closed", { closed: true });
        for (const req of this.#queue.splice(0)) req.reject(err);
      }
      this.#checkDrained();
    }
  }

  /**
   * Called before each group; returns a promise when the group should wait.
   *
   * - Transactions that keep arriving through promise callbacks alone would run group after
   *   group without ever returning to the event loop, starving timers and I/O (lock leases,
   *   sockets). After SLICE_MS of such work, wait one macrotask turn.
   * - After FAIR_SHARE_MS of back-to-back groups of this process (a streak), step aside for a
   *   process that waits for the lock (see #yieldToWaiters). The share bounds both how long a
   *   waiter waits and how much hand-offs cost when every process is busy.
   *
   * A lone transaction starts a new slice and is not delayed.
   */
  #pace(): Promise<void> | undefined {
    const now = performance.now();
    if (now - this.#lastGroupEnd >= STREAK_MS) this.#streakStart = now;
    else if (
      now - this.#streakStart >= FAIR_SHARE_MS && !this.#bell?.alone && this.#waiterArrived()
    ) {
      this.#streakStart = now;
      return this.#yieldToWaiters();
    }
    if (this.#sliceStart === undefined) {
      this.#sliceStart = now;
      // Runs once the event loop gets its turn: the next group then starts a new slice.
      this.#setImmediate(() => this.#sliceStart = undefined);
      return undefined;
    }
    if (now - this.#sliceStart < SLICE_MS) return undefined;
    return new Promise<void>((r) => this.#setImmediate(r));
  }

  /** Until when commits write the exact counter (see EXACT_MS). */
  #exactUntil = -Infinity;

  /**
   * Whether a group may reserve counters (see RESERVE): only while no other process has the
   * database open, as far as this one can tell, and not soon after another connection's commit.
   */
  #mayReserve(foreign: boolean): boolean {
    const now = performance.now();
    if (foreign) this.#exactUntil = now + EXACT_MS;
    if (now < this.#exactUntil) return false;
    const bell = this.#bell;
    return bell !== undefined && bell.listening && bell.alone;
  }

  /**
   * Commits a change of the stored counter and nothing else, so that a process already working
   * on the database meets another connection's commit and stops reserving counters (see
   * EXACT_MS) before this one can watch anything. Runs once, when the backend opens.
   */
  async announce(): Promise<void> {
    const committed = await this.#acquire();
    const w = this.#writer;
    const counter = Math.max(committed, w.reserved) + 1;
    try {
      w.setCounter.run(counter);
      w.commit.run();
    } catch (e) {
      w.used = -1;
      if (w.db.isTransaction) w.rollback.run();
      throw storageError(e);
    }
    w.used = w.reserved = counter;
    this.#foreignSinceLook ||= w.foreign;
    this.#signalCommit();
    this.#contended = false;
    this.#updateWatcher();
  }

  /** Takes the write lock (`BEGIN IMMEDIATE`) and returns the committed counter. */
  async #acquire(): Promise<number> {
    const w = this.#writer;
    let delay = 1;
    for (;;) {
      this.#checkOpen();
      try {
        w.begin.run();
        return w.lockedCounter();
      } catch (e) {
        if (w.db.isTransaction) w.rollback.run();
        if (!isBusy(e)) throw storageError(e);
      }
      this.stats.lockWaits++;
      this.#contended = true;
      this.#updateWatcher();
      // Tell the holder someone waits (see #yieldToWaiters); our own marker is no news to us.
      this.#writeRandom(this.#waiterSeen, WAITER_OFFSET);
      // Another process holds the lock. It writes the notify file when it releases it; wait
      // for that or for a back-off timer (the notify write may be missed, or it may never come
      // if the holder crashes), whichever is first.
      await this.#waitForRelease(delay * (0.5 + Math.random() / 2));
      delay = Math.min(delay * 2, LOCK_WAIT_CAP_MS);
    }
  }

  #waitForRelease(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#lockWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#lockWaiters.add(done);
      this.#updateWatcher();
    });
  }

  async #runGroup(): Promise<void> {
    let committed: number;
    try {
      committed = await this.#acquire();
    } catch (e) {
      for (const req of this.#queue.splice(0)) req.reject(e);
      return;
    }
    const w = this.#writer;
    // Watch checks must not take another process's commit for this one's (see #recheck).
    if (w.foreign) this.#foreignSinceLook = true;
    const reserving = this.#mayReserve(w.foreign);
    // Reserving, the next counter may still lie within the stored reservation; otherwise the
    // counter is the stored one plus one, so that every commit changes it (a reservation left
    // from a time alone is skipped once).
    const counter = (reserving ? committed : Math.max(committed, w.reserved)) + 1;
    const group = new GroupWrites(this.#groupBuffer);
    const done: Array<{ req: PendingWrite; tx: SqliteTransaction; result: unknown }> = [];
    let index = 0;
    let broken: unknown;
    // Members are taken from the queue one at a time, so transactions that arrive while the
    // group runs join it: they were waiting anyway, and share its one commit.
    while (this.#queue.length > 0 && index < this.maxGroupSize && !this.closed) {
      const req = this.#queue.shift()!;
      req.unlisten?.();
      const tx = new SqliteTransaction(
        this,
        w,
        false,
        w,
        group,
        index,
        counter * GROUP_SPAN + index,
        counter,
      );
      group.last = index;
      index++;
      // The first member needs no savepoint: if it fails, rolling back the whole transaction
      // undoes exactly it (a lone transaction, the common case, saves two statements).
      const first = index === 1;
      try {
        if (!first) {
          w.savepoint.run();
          w.rows.mark();
        }
      } catch (e) {
        broken = e;
        this.#queue.unshift(req);
        break;
      }
      try {
        const result = await this.#runBody(req.fn, tx);
        req.signal?.throwIfAborted();
        tx.finish();
        if (!first) {
          w.release.run();
          w.rows.keep();
        }
        done.push({ req, tx, result });
      } catch (e) {
        tx.abandon();
        req.reject(e);
        if (first) {
          // Undo it and start the group afresh for whoever waits.
          w.rows.clear();
          try {
            w.rollback.run();
          } catch { /* the next BEGIN reports an unusable connection */ }
          return;
        }
        w.rows.revert();
        try {
          w.rollbackTo.run();
          w.release.run();
        } catch (e2) {
          // SQLite rolled the whole transaction back (an I/O error, a full disk): the group
          // cannot commit.
          broken = e2;
        }
        if (broken !== undefined) break;
      }
      if (!w.db.isTransaction) {
        broken ??= new Error("SQLite ended the transaction");
        break;
      }
    }
    const wrote = broken === undefined && done.some((d) => d.tx.wrote);
    try {
      if (broken !== undefined) throw broken;
      if (wrote) {
        const stored = w.reserved;
        if (counter > stored) {
          const top = reserving ? counter + RESERVE - 1 : counter;
          w.setCounter.run(top);
          w.commit.run();
          w.reserved = top;
        } else {
          w.commit.run();
        }
        w.used = counter;
      } else {
        // Nothing to make durable: no fsync, no counter increment.
        w.rollback.run();
      }
    } catch (e) {
      // Whatever the group wrote (and read of its own writes) is gone, or unknown, and so is
      // the stored counter: read it again.
      w.rows.clear();
      w.used = -1;
      if (w.db.isTransaction) {
        try {
          w.rollback.run();
        } catch { /* the connection is unusable; the next BEGIN reports it */ }
      }
      const err = broken !== undefined
        ? storageError(e)
        // A failed COMMIT (an I/O error) may or may not have reached the disk. It is not
        // retried: this backend promises callers a known outcome (unknownCommitOutcomes is
        // false), so dgen does not make its writes idempotent here, and a blind retry could
        // apply twice. The caller sees the error.
        : new TransactionError(
          "commit_unknown_result",
          `SQLite commit failed, its outcome is unknown: ${(e as Error).message}`,
          { cause: e, retryable: false, maybeCommitted: true },
        );
      for (const d of done) {
        d.tx.abandon();
        d.req.reject(err);
      }
      return;
    }
    if (wrote) {
      this.#signalCommit();
      this.stats.physicalCommits++;
    }
    this.#notifyOwnWrites(group);
    // The next group reuses the buffer (not a huge one).
    if (group.buffer.length <= 1 << 16) this.#groupBuffer = group.buffer;
    for (const d of done) {
      if (d.tx.wrote) {
        this.stats.transactions++;
        const tx = d.tx;
        tx.stamp.resolve(() => tx.stampBytes());
      } else {
        d.tx.stamp.reject(() =>
          new TransactionError(
            "no_versionstamp",
            "A transaction that wrote nothing has no versionstamp",
          )
        );
      }
      this.#armGroupWatches(d.tx, group);
      d.req.resolve(d.result);
    }
  }

  /**
   * Tells other processes that a commit landed (their watches look) and that the write lock
   * is free (their lock waits retry). Groups that wrote nothing do not signal: there is nothing
   * to look at, and a lock wait also ends by its back-off timer.
   */
  #signalCommit(): void {
    const bell = this.#bell;
    // Nobody else has the database open: nothing to signal (a process that opens it later
    // reads the current state first).
    if (bell !== undefined && bell.alone) return;
    // The file's pulse also tells a waiting process's lock hand-off (see #yieldToWaiters) that
    // a commit landed; the bell is the fast path for watches and lock waits.
    this.#writeRandom(this.#pulse, PULSE_OFFSET);
    bell?.ring();
  }

  /** The loopback UDP bell (see `_peer_bell.ts`), once bound. */
  #bell: PeerBell | undefined;
  /** Where a group copies the keys it writes (see GroupWrites). */
  #groupBuffer: Uint8Array = new Uint8Array(4096);

  /** Attaches the bell; its rings are handled like notify-file events. */
  attachBell(bell: PeerBell): void {
    if (this.closed) bell?.close();
    else this.#bell = bell;
  }

  /** Handles a ring of another process's bell. */
  onRing = (): void => this.#onNotify();

  /** Writes 4 random bytes at `offset` of the notify file, keeping them in `into`. */
  #writeRandom(into: Uint8Array, offset: number): void {
    new DataView(into.buffer).setUint32(0, (Math.random() * 0x1_0000_0000) >>> 0);
    try {
      this.#fs.writeSync(this.#notifyFd, into, 0, 4, offset);
    } catch {
      // Best effort: other processes then notice through their back-off and safety poll.
    }
  }

  /** Reads 4 bytes at `offset` of the notify file; whether they equal `expected`. */
  #notifyEquals(offset: number, expected: Uint8Array): boolean {
    const got = this.#scratch;
    try {
      // Short or failed reads count as "unchanged": the signal is an optimisation only.
      if (this.#fs.readSync(this.#notifyFd, got, 0, 4, offset) !== 4) return true;
    } catch {
      return true;
    }
    return got[0] === expected[0] && got[1] === expected[1] && got[2] === expected[2] &&
      got[3] === expected[3];
  }

  /**
   * Whether another process has said it waits for the lock (a new waiter marker) since this
   * process last looked. Then #yieldToWaiters steps aside until some other process commits (its
   * commit signal replaces ours) or LOCK_YIELD_MS pass: otherwise the process that holds the
   * lock takes it again before the woken waiter can, and a waiter could wait for as long as
   * this process has work.
   */
  #waiterArrived(): boolean {
    if (this.#notifyEquals(WAITER_OFFSET, this.#waiterSeen)) return false;
    this.#fs.readSync(this.#notifyFd, this.#waiterSeen, 0, 4, WAITER_OFFSET);
    return true;
  }

  async #yieldToWaiters(): Promise<void> {
    this.#contended = true;
    this.#updateWatcher();
    const end = performance.now() + LOCK_YIELD_MS;
    for (;;) {
      const left = end - performance.now();
      if (left <= 0 || this.closed || !this.#notifyEquals(PULSE_OFFSET, this.#pulse)) return;
      await this.#waitForRelease(left);
    }
  }

  // ---- Read-only transactions ----

  /** Fails bodies that never settle (see {@link BodyWatchdog}). */
  readonly #watchdog: BodyWatchdog<SqliteTransaction>;

  /**
   * Runs a transaction body, failing it with `transaction_timeout` if it runs past
   * `maxTransactionDuration` (its writes then roll back, and the lock is free again).
   */
  #runBody<T>(fn: (tx: Transaction) => T | Promise<T>, tx: SqliteTransaction): T | Promise<T> {
    return this.#watchdog.run(tx, fn(tx));
  }

  async #read<T>(
    fn: (tx: Transaction) => T | Promise<T>,
    signal: AbortSignal | undefined,
  ): Promise<T> {
    this.#activeReads++;
    try {
      const conn = await this.#takeReader();
      try {
        signal?.throwIfAborted();
        conn.begin.run();
        const tx = new SqliteTransaction(this, conn, true, undefined, undefined, 0, 0, -1);
        let result: T;
        try {
          result = await this.#runBody(fn, tx);
          tx.finish();
        } catch (e) {
          tx.abandon();
          throw e;
        } finally {
          if (conn.db.isTransaction) conn.rollback.run();
        }
        tx.stamp.reject(() =>
          new TransactionError("no_versionstamp", "A read-only transaction has no versionstamp")
        );
        for (const [key, handle] of tx.watches) this.#armChecked(key, handle);
        return result;
      } finally {
        this.#returnReader(conn);
      }
    } finally {
      this.#activeReads--;
      this.#checkDrained();
    }
  }

  #takeReader(): Promise<Conn> {
    this.#checkOpen();
    const idle = this.#idleReaders.pop();
    if (idle !== undefined) return Promise.resolve(idle);
    if (this.#readerCount < MAX_READERS) {
      this.#readerCount++;
      try {
        return Promise.resolve(openConn(this.#open, this.#file, "BEGIN"));
      } catch (e) {
        this.#readerCount--;
        return Promise.reject(e);
      }
    }
    return new Promise((resolve, reject) => {
      this.#readerWaiters.push((c) =>
        c === undefined
          ? reject(new BackendUnavailableError("The SQLite backend is closed", { closed: true }))
          : resolve(c)
      );
    });
  }

  #returnReader(conn: Conn): void {
    const next = this.#readerWaiters.shift();
    if (next !== undefined && !this.closed) next(conn);
    else this.#idleReaders.push(conn);
  }

  // ---- Watches ----

  /** Arms the watches of a committed group member. */
  #armGroupWatches(tx: SqliteTransaction, group: GroupWrites): void {
    for (const [key, handle] of tx.watches) {
      if (handle.settled) continue;
      // A later member of the same group is a later commit.
      if (group.writtenAfter(key, tx.index)) {
        handle.fire();
        continue;
      }
      if (
        group.cleared.some((c) =>
          c.index > tx.index && compareBytes(key, c.begin) >= 0 && compareBytes(key, c.end) < 0
        )
      ) {
        handle.fire();
        continue;
      }
      this.#register(bytesToBinaryString(key), key, handle);
    }
  }

  /** Arms a watch whose version was taken from an older snapshot: compares with the latest. */
  #armChecked(key: Uint8Array, handle: WatchHandle): void {
    if (handle.settled) return;
    if (this.closed) return handle.cancel();
    // Listen before looking, so that a commit after the look is not missed.
    this.#register(bytesToBinaryString(key), key, handle);
    let current: number;
    try {
      current = this.#probe.versionOf(key);
    } catch {
      return; // the re-checks will look again
    }
    if (current !== handle.baseline) handle.fire();
  }

  #register(k: string, key: Uint8Array, handle: WatchHandle): void {
    if (this.closed) return handle.cancel();
    let entry = this.#registry.get(k);
    if (entry === undefined) {
      entry = { key, handles: new Set() };
      this.#registry.set(k, entry);
    }
    const handles = entry.handles;
    handles.add(handle);
    handle.onSettle = () => {
      handles.delete(handle);
      if (handles.size === 0 && this.#registry.get(k)?.handles === handles) {
        this.#registry.delete(k);
        this.#updateWatcher();
      }
    };
    this.#updateWatcher();
  }

  /** Fires the registered watches on keys this process's group just wrote. */
  #notifyOwnWrites(group: GroupWrites): void {
    if (this.#registry.size === 0) return;
    // Every registered watch took its version before this group committed, so any write in
    // the group is a later commit to the key.
    const fire: WatchHandle[] = [];
    if (group.size * this.#registry.size <= FEW_KEYS) {
      for (const entry of this.#registry.values()) {
        if (group.wrote(entry.key)) fire.push(...entry.handles);
      }
    } else {
      for (const k of group.byString.keys()) {
        const entry = this.#registry.get(k);
        if (entry !== undefined) fire.push(...entry.handles);
      }
    }
    if (group.cleared.length > 0) {
      for (const entry of this.#registry.values()) {
        if (
          group.cleared.some((c) =>
            compareBytes(entry.key, c.begin) >= 0 && compareBytes(entry.key, c.end) < 0
          )
        ) fire.push(...entry.handles);
      }
    }
    for (const h of fire) h.fire();
  }

  /**
   * Re-reads every watched key's version in one snapshot; fires those that changed. Skipped
   * when nothing was committed since the last look, or only this process's own commits (whose
   * watches were notified directly). Both are told by `PRAGMA data_version`, never by the
   * stored commit counter: a process that believes it is alone (see RESERVE) does not move
   * that, and whatever a process believes about the others must not lose a watch.
   */
  #recheck(): void {
    if (this.closed || this.#registry.size === 0) return;
    const probe = this.#probe;
    const fire: WatchHandle[] = [];
    try {
      probe.begin.run();
      try {
        // Read inside the transaction: the version of the snapshot the keys are read from.
        const version = probe.readDataVersion();
        if (version === this.#probeVersion) return;
        if (this.#foreignSinceLook || !this.#onlyOwnCommits()) {
          const started = performance.now();
          for (const entry of this.#registry.values()) {
            const ver = probe.versionOf(entry.key);
            for (const h of entry.handles) if (h.baseline !== ver) fire.push(h);
          }
          this.#recheckEnd = performance.now();
          this.#recheckCost = this.#recheckEnd - started;
        }
        // Every commit up to this snapshot is accounted for (kept as it was if a read threw).
        this.#foreignSinceLook = false;
        this.#probeVersion = version;
      } finally {
        probe.rollback.run();
      }
    } catch {
      return; // transiently busy: the next wake-up or the safety poll looks again
    }
    for (const h of fire) h.fire();
  }

  /**
   * Whether no other connection committed since the writer's last write transaction began:
   * the writer's `data_version` is still the one it found then. With #foreignSinceLook false
   * (no other connection's commit met by a write transaction since the last look), every
   * commit since the last look was then this process's own. Asked after the probe's snapshot
   * was taken, so a commit it does not cover makes this false.
   */
  #onlyOwnCommits(): boolean {
    const w = this.#writer;
    if (w.rows.dataVersion === -1) return false;
    try {
      return w.readDataVersion() === w.rows.dataVersion;
    } catch {
      return false;
    }
  }

  #onNotify = (): void => {
    for (const wake of [...this.#lockWaiters]) wake();
    if (this.#registry.size === 0) return;
    this.#lastNotify = performance.now();
    this.#tailTimer ??= setTimeout(this.#tail, NOTIFY_TAIL_MS);
    if (this.#recheckQueued) return;
    // Coalesce a burst of change events (Deno reports some writes twice) into one look. A look
    // reads every watched key: with thousands (a dashboard on a big tenant) it costs tens of
    // ms, and another process committing flat out then kept this one's thread busy (1.3-1.9 s
    // event-loop stalls with 5,000 watches, fourth audit). So the next look waits as long as the
    // last one took: looks take at most about half the thread, and a cheap look is not delayed.
    this.#recheckQueued = true;
    const look = () => {
      this.#recheckQueued = false;
      this.#recheck();
    };
    const wait = this.#recheckCost < 1
      ? 0
      : this.#recheckEnd + this.#recheckCost - performance.now();
    if (wait <= 0) queueMicrotask(look);
    else setTimeout(look, wait);
  };

  /**
   * Looks again once the change events have been quiet for NOTIFY_TAIL_MS: Bun's `fs.watch`
   * drops a change event that follows the previous one within a few milliseconds (measured
   * here: most at 1–3 ms apart, none at 8 ms), and that commit would otherwise wait for the
   * safety poll.
   */
  #tail = (): void => {
    const quiet = performance.now() - this.#lastNotify;
    if (quiet < NOTIFY_TAIL_MS && !this.closed) {
      this.#tailTimer = setTimeout(this.#tail, NOTIFY_TAIL_MS - quiet);
      return;
    }
    this.#tailTimer = undefined;
    this.#recheck();
  };

  /**
   * Keeps the notify-file watcher open while anything waits on it, and the safety poll running
   * while watches are pending. Both are closed when idle, so an open backend alone does not
   * keep the process alive (a pending watch does).
   */
  #updateWatcher(): void {
    const wantWatcher = !this.closed && (this.#registry.size > 0 || this.#contended);
    if (wantWatcher && this.#watcher === undefined) {
      try {
        const watcher = this.#fs.watch(this.#notifyPath, { persistent: true });
        watcher.on("change", this.#onNotify);
        watcher.on("error", () => {
          // The safety poll and back-off timers carry on; a later need reopens it.
          if (this.#watcher === watcher) this.#watcher = undefined;
          watcher.close();
        });
        this.#watcher = watcher;
      } catch {
        // No file watching here: the safety poll alone serves.
      }
    } else if (!wantWatcher && this.#watcher !== undefined) {
      this.#watcher.close();
      this.#watcher = undefined;
    }
    const wantPoll = !this.closed && this.#registry.size > 0;
    if (wantPoll && this.#pollTimer === undefined) {
      this.#pollTimer = setInterval(() => this.#recheck(), SAFETY_POLL_MS);
    } else if (!wantPoll && this.#pollTimer !== undefined) {
      clearInterval(this.#pollTimer);
      this.#pollTimer = undefined;
    }
    // The tail look survives the watcher: Bun's drop window carries over to a watcher
    // reopened on the same file, so a watch armed right after another fired needs it too.
    if (this.closed && this.#tailTimer !== undefined) {
      clearTimeout(this.#tailTimer);
      this.#tailTimer = undefined;
    }
  }

  // ---- Closing ----

  #checkDrained(): void {
    if (this.#running !== undefined || this.#activeReads > 0) return;
    for (const f of this.#drained.splice(0)) f();
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.closed = true;
    const err = new BackendUnavailableError("The SQLite backend is closed", { closed: true });
    for (const req of this.#queue.splice(0)) req.reject(err);
    for (const wake of [...this.#lockWaiters]) wake();
    for (const next of this.#readerWaiters.splice(0)) next(undefined);
    for (const entry of [...this.#registry.values()]) {
      for (const h of [...entry.handles]) h.cancel();
    }
    this.#registry.clear();
    this.#updateWatcher();
    // Bodies still running fail at their next operation; wait for them to unwind before the
    // connections go away.
    if (this.#running !== undefined || this.#activeReads > 0) {
      await new Promise<void>((resolve) => {
        this.#drained.push(resolve);
        this.#checkDrained();
      });
    }
    this.#bell?.close();
    for (const conn of this.#idleReaders.splice(0)) conn.db.close();
    this.#probe.db.close();
    this.#writer.db.close();
    this.#fs.closeSync(this.#notifyFd);
    this.#notifyFd = -1;
  }
}

function openConn(open: (path: string) => DatabaseSync, path: string, beginSql: string): Conn {
  const db = open(path);
  // Readers wait in SQLite only for WAL-index recovery, which is short and rare.
  db.exec("PRAGMA busy_timeout = 1000; PRAGMA query_only = 1");
  return new Conn(db, beginSql);
}

/**
 * Opens (creating if needed) a SQLite database file as a dgen backend: durable commits (WAL,
 * `synchronous=FULL` by default), group commit of concurrent write transactions, read-only
 * transactions on WAL snapshots, and watches that fire within milliseconds when another OS
 * process (Deno or Bun) sharing the file commits. It declares FoundationDB's limits, so code
 * written against it moves to FoundationDB unchanged.
 *
 * Write transactions are serialized (one holds the write lock at a time) and never conflict;
 * a write transaction's body should therefore be short, and must not wait for another write
 * transaction of the same backend (it would time out after `maxTransactionDuration`).
 *
 * @example
 * ```ts
 * import { openSqliteBackend, readInt64LE } from "../../mod.ts";
 * const backend = await openSqliteBackend({ path: ".dgen/example.sqlite" });
 * const key = new TextEncoder().encode("hits");
 * await backend.transact((tx) => tx.add(key, 1));
 * console.log(readInt64LE(await backend.transact((tx) => tx.get(key))) >= 1n); // true
 * await backend.close();
 * ```
 */
export async function openSqliteBackend(options: SqliteBackendOptions): Promise<SqliteBackend> {
  const opts = parse(optionsSchema, options, "options");
  const limits = { ...FOUNDATIONDB_LIMITS, ...opts.limits };
  // Loaded here, not at import: importing mod.ts must not need node:sqlite.
  const [{ DatabaseSync }, fs, nodePath, timers, dgram, nodeProcess] = await Promise
    .all([
      import("node:sqlite"),
      import("node:fs"),
      import("node:path"),
      // The cheapest macrotask on both runtimes (setTimeout(0) costs a millisecond or more).
      import("node:timers"),
      import("node:dgram"),
      import("node:process"),
    ]);
  const path = opts.path;
  let file = nodePath.resolve(path);
  try {
    fs.mkdirSync(nodePath.dirname(file), { recursive: true });
  } catch (e) {
    throw new BackendUnavailableError(
      `Cannot create the directory of the SQLite database ${path}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  const open = (p: string) => new DatabaseSync(p);
  let writer: DatabaseSync;
  try {
    writer = open(file);
  } catch (e) {
    throw new BackendUnavailableError(
      `Cannot open the SQLite database ${path}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  try {
    await setUp(writer, path, opts.synchronous ?? "full");
    // SQLite follows symbolic links to the database file and keeps its -wal and -shm next to
    // the file it leads to; the notify file and peer registrations go there too, so that
    // processes reaching the file by different paths find each other. It exists by now.
    try {
      file = fs.realpathSync(file);
    } catch { /* keep the resolved path */ }
    const notifyPath = `${file}-notify`;
    // Created with its full layout (signal and marker), appending zeros if another process
    // has just created it shorter.
    const fd = fs.openSync(notifyPath, "a");
    try {
      const size = fs.fstatSync(fd).size;
      if (size < NOTIFY_FILE_SIZE) fs.writeSync(fd, new Uint8Array(NOTIFY_FILE_SIZE - size));
    } finally {
      fs.closeSync(fd);
    }
    const backend = new SqliteBackendImpl(
      path,
      file,
      limits,
      opts.maxGroupSize ?? 64,
      open,
      fs,
      timers.setImmediate,
      writer,
      notifyPath,
    );
    const alive = (pid: number) => {
      try {
        nodeProcess.default.kill(pid, 0);
        return true;
      } catch (e) {
        return (e as { code?: string }).code === "EPERM";
      }
    };
    backend.attachBell(
      await PeerBell.open(
        dgram.default,
        fs,
        timers,
        `${file}-peers`,
        nodeProcess.default.pid,
        alive,
        backend.onRing,
      ),
    );
    try {
      await backend.announce();
    } catch (e) {
      await backend.close();
      throw e;
    }
    return backend;
  } catch (e) {
    try {
      writer.close();
    } catch { /* closed with the backend */ }
    if (e instanceof BackendUnavailableError) throw e;
    throw new BackendUnavailableError(
      `Cannot open the SQLite database ${path}: ${(e as Error).message}`,
      { cause: e },
    );
  }
}

/**
 * Runs `f` (a step of opening the file) again while SQLite reports the database busy, after a
 * capped exponential back-off, rolling back what a failed try left open; gives up after
 * `giveUpMs` of waiting.
 */
async function whileBusy<T>(db: DatabaseSync, f: () => T, giveUpMs = Infinity): Promise<T> {
  for (let delay = 1, waited = 0;; delay = Math.min(delay * 2, LOCK_WAIT_CAP_MS)) {
    try {
      return f();
    } catch (e) {
      if (db.isTransaction) db.exec("ROLLBACK");
      if (!isBusy(e) || waited > giveUpMs) throw e;
      await new Promise((r) => setTimeout(r, delay));
      waited += delay;
    }
  }
}

/** Bytes the write-ahead log is truncated to when it restarts (`journal_size_limit`). */
const WAL_SIZE_LIMIT = 64 * 1024 * 1024;

/** Configures the writer connection and creates the schema if the file is new. */
async function setUp(db: DatabaseSync, path: string, synchronous: string): Promise<void> {
  // Setting up may meet another process creating the same file: wait for it in SQLite (only
  // ever at open), then use async waits for the lock from here on.
  db.exec("PRAGMA busy_timeout = 5000");
  // Switching a new file to WAL can report "locked" at once, without SQLite's busy wait, while
  // another process switches it too (seen with two processes opening one new file): retry.
  const mode = await whileBusy(
    db,
    () =>
      (db.prepare("PRAGMA journal_mode = WAL").get() as { journal_mode?: string })?.journal_mode,
    10_000,
  );
  if (mode !== "wal") {
    throw new BackendUnavailableError(
      `SQLite could not use write-ahead logging for ${path} (journal mode "${mode}")`,
    );
  }
  db.exec(`PRAGMA synchronous = ${synchronous === "normal" ? "NORMAL" : "FULL"}`);
  // The write-ahead log grows while a reader holds an old snapshot (checkpoints cannot pass
  // it), and SQLite keeps the file at its largest size for ever after, reusing it: a reader
  // frozen for 4 s under steady casts left 230 MB (fourth audit). With a limit, the log is
  // truncated to it whenever it restarts from the beginning after a full checkpoint.
  db.exec(`PRAGMA journal_size_limit = ${WAL_SIZE_LIMIT}`);
  let format: number | undefined;
  try {
    const row = db.prepare("SELECT value FROM meta WHERE name = 'format'").get() as
      | { value: number }
      | undefined;
    format = row?.value;
  } catch {
    format = undefined; // no meta table yet
  }
  if (format === undefined) {
    await whileBusy(db, () => db.exec(`BEGIN IMMEDIATE; ${SCHEMA} COMMIT;`));
    format = (db.prepare("SELECT value FROM meta WHERE name = 'format'").get() as {
      value: number;
    }).value;
  }
  if (format !== FORMAT_VERSION) {
    throw new BackendUnavailableError(
      `The SQLite database ${path} has storage format ${format}; this dgen reads format ` +
        `${FORMAT_VERSION}`,
    );
  }
  db.exec("PRAGMA busy_timeout = 0");
}
