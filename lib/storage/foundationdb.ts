/**
 * The FoundationDB backend: the storage contract on a FoundationDB cluster, through the
 * `npm:foundationdb` bindings (a Node-API addon over the C client library `libfdb_c`).
 *
 * The contract was shaped after FoundationDB, so the mapping is direct: a dgen transaction is
 * one FoundationDB transaction per attempt, snapshot reads are `tn.snapshot()`, atomic add,
 * versionstamped keys and values, watches and read-conflict ranges are the native operations,
 * subspaces come from the directory layer, and FoundationDB's error codes become dgen's error
 * classes. What FoundationDB enforces (100 KB values, 10 KB keys, 10 MB and 5 s per
 * transaction) is declared in `limits`; key and value sizes are checked before commit.
 *
 * Nothing here loads native code at import: the bindings are imported with a dynamic
 * `import()` on the first open, so importing `mod.ts` works on machines without FoundationDB.
 * Where `libfdb_c` is missing, opening throws `BackendUnavailableError` saying what to install.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import * as v from "valibot";
import type * as FdbPackage from "foundationdb";
import { compareBytes, concatBytes, EMPTY_BYTES, hasPrefix, int64LE, printable } from "../bytes.ts";
import {
  BackendUnavailableError,
  CommitUnknownResultError,
  ConflictError,
  LimitExceededError,
  TransactionError,
  ValidationError,
} from "../errors.ts";
import { parse } from "../validate.ts";
import { checkTransactOptions, WatchHandle } from "./common.ts";
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

// ---------------------------------------------------------------------------------------------
// The part of npm:foundationdb this backend uses. Written as narrow interfaces so the bindings
// can be swapped for a simulation in tests; `fromPackage` below proves at compile time that the
// package's own type definitions satisfy them.

/** A FoundationDB error as the bindings throw it: a message and FoundationDB's numeric code. */
export interface FdbErrorLike extends Error {
  /** FoundationDB's error code, e.g. 1020 for `not_committed`. */
  code: number;
}

/** A watch as the bindings return it. */
export interface FdbWatch {
  /** Resolves `true` when the key changed, `false` when cancelled or not committed. */
  promise: Promise<boolean>;
  /** Cancels the watch. */
  cancel(): void;
}

/** Transaction options this backend sets (FoundationDB's `timeout` and `size_limit`). */
export interface FdbTransactionOptions {
  /** Milliseconds after which the transaction is cancelled with `transaction_timed_out`. */
  timeout?: number;
  /** Largest transaction in bytes; a larger one fails with `transaction_too_large`. */
  size_limit?: number;
}

/** The operations of `npm:foundationdb`'s `Transaction` this backend uses, on raw byte keys. */
export interface FdbTransaction {
  get(key: Buffer): Promise<Buffer | undefined>;
  getRangeAll(
    start: Buffer,
    end: Buffer,
    opts?: { limit?: number; reverse?: boolean },
  ): Promise<[Buffer, Buffer][]>;
  snapshot(): FdbTransaction;
  set(key: Buffer, value: Buffer): void;
  clear(key: Buffer): void;
  clearRange(start: Buffer, end: Buffer): void;
  add(key: Buffer, operand: Buffer): void;
  setVersionstampedKeyBuf(
    prefix: Buffer | undefined,
    suffix: Buffer | undefined,
    value: Buffer,
  ): void;
  setVersionstampedValueRaw(key: Buffer, value: Buffer): void;
  getVersionstamp(): { promise: Promise<Buffer> };
  watch(key: Buffer): FdbWatch;
  addReadConflictKey(key: Buffer): void;
  addReadConflictRange(start: Buffer, end: Buffer): void;
  getReadVersion(): Promise<Buffer>;
  rawCommit(): Promise<void>;
  rawOnError(code: number): Promise<void>;
  rawCancel(): void;
}

/**
 * The operations of `npm:foundationdb`'s `Database` this backend uses. `Tn` is the bindings'
 * transaction type, which the directory layer takes back.
 */
export interface FdbDatabase<Tn extends FdbTransaction = FdbTransaction> {
  rawCreateTransaction(opts?: FdbTransactionOptions): Tn;
  close(): void;
}

/** A directory (or directory partition) of the directory layer. */
export interface FdbDirectory<Tn extends FdbTransaction = FdbTransaction> {
  /** The directory's content subspace; its `prefix` is where the directory's keys live. */
  readonly content: { readonly prefix: Buffer };
  isPartition(): boolean;
  createOrOpen(tn: Tn, path: string[], layer?: "partition"): Promise<FdbDirectory<Tn>>;
}

/** The directory layer's operations this backend uses. */
export interface FdbDirectoryLayer<Tn extends FdbTransaction = FdbTransaction> {
  createOrOpen(tn: Tn, path: string[], layer?: "partition"): Promise<FdbDirectory<Tn>>;
  removeIfExists(tn: Tn, path: string[]): Promise<boolean>;
}

/** The module-level API of `npm:foundationdb` this backend uses. */
export interface FdbApi<Tn extends FdbTransaction = FdbTransaction> {
  setAPIVersion(version: number): void;
  open(clusterFile?: string): FdbDatabase<Tn>;
  FDBError: new (description: string, code: number) => FdbErrorLike;
  DirectoryError: new (description: string) => Error;
  directory: FdbDirectoryLayer<Tn>;
}

/** The package's own types must fit {@link FdbApi}: `deno check` fails here if they do not. */
function fromPackage(pkg: typeof FdbPackage): FdbApi {
  const api: FdbApi<FdbPackage.Transaction> = pkg;
  return api;
}

// ---------------------------------------------------------------------------------------------
// Loading the bindings, once per process.

/** The API version used when none is given: the highest `npm:foundationdb@2.0.1` supports. */
export const DEFAULT_API_VERSION = 720;
/** The lowest API version accepted (transaction `size_limit` and timeouts as used here). */
export const MIN_API_VERSION = 610;

const INSTALL_HINT = [
  "To use FoundationDB from dgen (under Deno or Node.js):",
  "  1. Install the FoundationDB client package for this platform from FoundationDB's GitHub " +
  "releases (https://github.com/apple/foundationdb/releases), e.g. on Debian/Ubuntu amd64 " +
  "`sudo dpkg -i foundationdb-clients_7.3.59-1_amd64.deb`, on macOS FoundationDB-7.3.59_<arch>.pkg. " +
  "It provides libfdb_c.so (libfdb_c.dylib on macOS), its headers and fdbcli.",
  "  2. npm:foundationdb ships prebuilt addons for linux-x64, darwin-x64 and darwin-arm64 only; " +
  "elsewhere build it against the installed client: `npm rebuild foundationdb " +
  "--ignore-scripts=false` (this project's .npmrc sets ignore-scripts=true; the build needs " +
  "python3, make and a C++ compiler).",
  "  3. Point dgen at a cluster: the `clusterFile` option or FDB_CLUSTER_FILE (default " +
  "/etc/foundationdb/fdb.cluster); `fdbcli --exec status` checks that it is reachable.",
  "On Deno, grant --allow-ffi (or -A). See docs/foundationdb.md.",
].join("\n");

/** Why loading the bindings failed, and whether installing FoundationDB is the remedy. */
function describeLoadFailure(e: unknown): { reason: string; install: boolean } {
  const name = e instanceof Error ? e.name : "";
  // The loader's messages run over several lines (Deno appends the addon's path).
  const message = errorMessage(e).split("\n")[0]!;
  if (name === "NotCapable" || name === "PermissionDenied") {
    return {
      reason: "Deno refused to load the native addon of npm:foundationdb for lack of " +
        `permissions (${message}); run with --allow-ffi --allow-read --allow-env, or -A`,
      install: false,
    };
  }
  if (/libfdb_c/.test(message)) {
    return {
      reason: "the FoundationDB client library libfdb_c could not be loaded, so the native " +
        `addon of npm:foundationdb cannot start (${message})`,
      install: true,
    };
  }
  if (/No native build was found/i.test(message)) {
    return {
      reason: `npm:foundationdb has no native addon built for this platform (${message})`,
      install: true,
    };
  }
  const code = (e as { code?: unknown } | null)?.code;
  if (
    code === "ERR_MODULE_NOT_FOUND" ||
    /Cannot find (module|package) ['"]foundationdb|Could not resolve "foundationdb"/.test(message)
  ) {
    return {
      reason: "the npm package `foundationdb` is not installed: run `npm install` (it is a " +
        `dependency in package.json) (${message})`,
      install: false,
    };
  }
  return { reason: `the bindings npm:foundationdb failed to load (${message})`, install: true };
}

/**
 * Loads the bindings and selects the FoundationDB API version. FoundationDB fixes the API
 * version once per process, so a driver remembers the first one and refuses another.
 */
export interface FdbDriver {
  /** The bindings, with `apiVersion` selected; rejects if another version was selected. */
  load(apiVersion: number): Promise<FdbApi>;
}

/**
 * A driver over `importBindings`. The import is memoized; concurrent `load`s share it, and
 * since selecting the version happens synchronously after it, the first caller's version wins
 * and every other caller sees the same selection. `unsupported`, when set, says why the
 * bindings cannot run in this runtime: `load` then always rejects with it (after trying the
 * import, whose own failure it reports as the cause).
 */
export function createDriver(
  importBindings: () => Promise<FdbApi>,
  unsupported?: string,
): FdbDriver {
  let loading: Promise<FdbApi> | undefined;
  let selected: number | undefined;
  return {
    async load(apiVersion: number): Promise<FdbApi> {
      const pending = loading ??= importBindings();
      let api: FdbApi;
      try {
        api = await pending;
      } catch (e) {
        // Not cached: a library installed while the process runs is picked up on a later open.
        if (loading === pending) loading = undefined;
        const { reason, install } = describeLoadFailure(e);
        throw new BackendUnavailableError(
          unsupported !== undefined
            ? `FoundationDB backend unavailable: ${unsupported} Loading it here fails ` +
              `anyway: ${reason}.\n${INSTALL_HINT}`
            : `FoundationDB backend unavailable: ${reason}.` +
              (install ? `\n${INSTALL_HINT}` : " See docs/foundationdb.md."),
          { cause: e },
        );
      }
      if (unsupported !== undefined) {
        // The import itself is harmless; starting FoundationDB's network thread is not.
        throw new BackendUnavailableError(`FoundationDB backend unavailable: ${unsupported}`);
      }
      if (selected === undefined) {
        try {
          api.setAPIVersion(apiVersion);
        } catch (e) {
          throw apiVersionFailure(api, apiVersion, e);
        }
        selected = apiVersion;
      } else if (selected !== apiVersion) {
        throw apiVersionTaken(selected, apiVersion);
      }
      return api;
    },
  };
}

function apiVersionTaken(selected: number | string, wanted: number): ValidationError {
  return new ValidationError([{
    path: "options.apiVersion",
    message: `FoundationDB's API version is chosen once per process and is already ${selected}; ` +
      `cannot open a backend with ${wanted} (open every FoundationDB backend with the same ` +
      "apiVersion)",
  }]);
}

function apiVersionFailure(api: FdbApi, version: number, e: unknown): Error {
  // Another user of npm:foundationdb in this process selected a different version first.
  const taken = e instanceof Error && /already initialized with API version (\d+)/.exec(e.message);
  if (taken) return apiVersionTaken(taken[1]!, version);
  if (e instanceof api.FDBError && (e.code === 2203 || e.code === 2202)) {
    return new BackendUnavailableError(
      `The installed FoundationDB client library does not support API version ${version} ` +
        `(FoundationDB error ${e.code}: ${e.message}). Install a newer client (7.2 or later for ` +
        "720) or open the backend with the apiVersion your client supports (e.g. 710 for 7.1).",
      { cause: e },
    );
  }
  return new BackendUnavailableError(
    `Selecting FoundationDB API version ${version} failed: ${errorMessage(e)}`,
    { cause: e },
  );
}

async function importPackage(): Promise<FdbApi> {
  // npm:foundationdb is CommonJS: Deno and Bun expose `module.exports` as the default export.
  const ns: { default?: unknown } = await import("foundationdb");
  return fromPackage((ns.default ?? ns) as typeof FdbPackage);
}

const bun = (globalThis as { Bun?: { version: string } }).Bun;

/**
 * Why npm:foundationdb@2.0.1 cannot run under Bun (measured with Bun 1.4.4 and a stand-in
 * libfdb_c): Bun's Node-API loader rejects the prebuilt addon, whose module init returns no
 * exports object, and an addon rebuilt from source loads but makes Bun panic when FoundationDB's
 * network thread starts, as Bun does not implement libuv's `uv_thread_create`. Refusing up front
 * turns that crash into an error.
 */
const BUN_UNSUPPORTED = bun === undefined ? undefined : `npm:foundationdb cannot run under Bun ` +
  `(${bun.version}): Bun rejects its prebuilt addon ("Node-API module "fdblib" returned an ` +
  `error"), and an addon rebuilt from source makes Bun panic when FoundationDB's network thread ` +
  `starts ("unsupported uv function: uv_thread_create"). Use the FoundationDB backend from Deno ` +
  `(or Node.js), or another backend under Bun.`;

/** The process-wide driver of the real bindings. */
export const defaultDriver: FdbDriver = createDriver(importPackage, BUN_UNSUPPORTED);

// ---------------------------------------------------------------------------------------------
// Error mapping.

/** Names of the FoundationDB errors a dgen user may meet, used as `TransactionError` codes. */
const FDB_ERROR_NAMES: Readonly<Record<number, string>> = {
  1007: "transaction_too_old",
  1009: "future_version",
  1025: "transaction_cancelled",
  1032: "too_many_watches",
  1036: "accessed_unreadable",
  1037: "process_behind",
  1038: "database_locked",
  1039: "cluster_version_changed",
  1101: "operation_cancelled",
  1213: "tag_throttled",
  2000: "client_invalid_operation",
  2004: "key_outside_legal_range",
  2005: "inverted_range",
  2017: "used_during_commit",
  2021: "no_versionstamp",
};

/** Errors FoundationDB's `on_error` retries; used before `on_error` has been asked. */
const PROBABLY_RETRYABLE = new Set([1007, 1009, 1020, 1021, 1037, 1038, 1039, 1042, 1078, 1213]);

/**
 * Maps a FoundationDB error to dgen's taxonomy. `retryable` is FoundationDB's own verdict
 * (whether `on_error` accepted the code); conflicts, unknown results, `transaction_too_old`
 * and `future_version` are retryable whatever it said, limits never are.
 */
export function mapFdbError(e: FdbErrorLike, retryable: boolean, limits: BackendLimits): Error {
  const what = `FoundationDB error ${e.code}: ${e.message}`;
  switch (e.code) {
    case 1020:
      return new ConflictError(`Transaction conflicted with a concurrent commit (${what})`, {
        cause: e,
      });
    case 1021:
      return new CommitUnknownResultError(
        `Commit result unknown: the transaction may have been applied (${what})`,
        { cause: e },
      );
    case 1031:
      return new LimitExceededError(
        "transaction_timeout",
        `Transaction ran past its ${limits.maxTransactionDuration} ms limit (${what})`,
        { cause: e },
      );
    case 2101:
      return new LimitExceededError(
        "transaction_too_large",
        `Transaction exceeds the ${limits.maxTransactionSize}-byte limit (${what})`,
        { cause: e },
      );
    case 2102:
      return new LimitExceededError(
        "key_too_large",
        `Key exceeds the ${limits.maxKeySize}-byte limit (${what})`,
        { cause: e },
      );
    case 2103:
      return new LimitExceededError(
        "value_too_large",
        `Value exceeds the ${limits.maxValueSize}-byte limit (${what})`,
        { cause: e },
      );
    case 1007:
    case 1009:
      return new TransactionError(FDB_ERROR_NAMES[e.code]!, what, { cause: e, retryable: true });
    default:
      return new TransactionError(FDB_ERROR_NAMES[e.code] ?? `fdb_${e.code}`, what, {
        cause: e,
        retryable,
      });
  }
}

// ---------------------------------------------------------------------------------------------
// Options.

const segment = v.pipe(v.string(), v.minLength(1, "Expected a non-empty string"));

function limitsSchemaUpTo(max: BackendLimits) {
  const bounded = (limit: number, what: string, min = 1) =>
    v.optional(
      v.pipe(
        v.number(),
        v.integer(),
        v.minValue(min),
        v.maxValue(limit, `Expected at most ${limit} (FoundationDB's ${what})`),
      ),
    );
  return v.strictObject({
    maxKeySize: bounded(max.maxKeySize, "key size limit"),
    maxValueSize: bounded(max.maxValueSize, "value size limit"),
    // FoundationDB's size_limit option accepts 32 bytes at least.
    maxTransactionSize: bounded(max.maxTransactionSize, "transaction size limit", 32),
    maxTransactionDuration: bounded(max.maxTransactionDuration, "5-second transaction limit"),
  });
}

const optionsSchema = v.optional(
  v.strictObject({
    clusterFile: v.optional(segment),
    apiVersion: v.optional(
      v.pipe(
        v.number(),
        v.integer(),
        v.minValue(MIN_API_VERSION),
        v.maxValue(DEFAULT_API_VERSION, "Expected at most 720 (npm:foundationdb@2.0.1's highest)"),
      ),
    ),
    directory: v.optional(v.pipe(v.array(segment), v.minLength(1, "Expected a non-empty path"))),
    limits: v.optional(limitsSchemaUpTo(FOUNDATIONDB_LIMITS)),
    openTimeout: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1))),
  }),
  {},
);

/**
 * Options of {@link openFoundationdbBackend}.
 *
 * @example
 * ```ts
 * import type { FoundationdbBackendOptions } from "../../mod.ts";
 * const options: FoundationdbBackendOptions = {
 *   clusterFile: "/etc/foundationdb/fdb.cluster",
 *   directory: ["acme", "prod"],
 *   limits: { maxTransactionDuration: 2_000 },
 * };
 * console.log(options.directory); // ["acme", "prod"]
 * // With a cluster running: const backend = await openFoundationdbBackend(options);
 * ```
 */
export interface FoundationdbBackendOptions {
  /**
   * Path of the cluster file. @default `FDB_CLUSTER_FILE`, else `./fdb.cluster`, else
   * `/etc/foundationdb/fdb.cluster` (FoundationDB's own lookup)
   */
  clusterFile?: string;
  /**
   * FoundationDB API version (610 to 720). Chosen once per process: every FoundationDB backend
   * of a process must use the same. Use 710 with a 7.1 client library. @default 720
   */
  apiVersion?: number;
  /**
   * Confine the backend to this directory partition (created if missing): its keys are
   * relative to the partition and its subspaces are directories inside it, so applications or
   * environments can share a cluster without seeing each other's keys.
   * @default the whole database, with subspaces in the root directory layer
   */
  directory?: readonly string[];
  /**
   * Lower limits than FoundationDB's (never higher); the transaction timeout and size limit
   * are set on every FoundationDB transaction. @default FoundationDB's limits
   */
  limits?: Partial<BackendLimits>;
  /** How long opening waits for the cluster to answer, in ms. @default 10000 */
  openTimeout?: number;
}

// ---------------------------------------------------------------------------------------------
// The transaction adapter.

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A plain `Uint8Array` view of a `Buffer`, so callers' `slice()` copies as everywhere else. */
function toBytes(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Per-attempt state shared by a transaction and its snapshot view. */
interface AttemptState {
  done: boolean;
  readonly started: number;
  readonly watches: WatchHandle[];
  stamp: Promise<Uint8Array> | undefined;
}

class FdbTransactionAdapter implements Transaction, WatchedBody<FdbTransactionAdapter> {
  readonly snapshot: ReadTransaction;
  readonly #state: AttemptState = {
    done: false,
    started: performance.now(),
    watches: [],
    stamp: undefined,
  };
  /** While the body's promise is pending: what fails it, and the watchdog's links. */
  fail: ((e: unknown) => void) | undefined = undefined;
  watchPrev: FdbTransactionAdapter | undefined = undefined;
  watchNext: FdbTransactionAdapter | undefined = undefined;

  constructor(
    readonly backend: FoundationdbBackend,
    readonly tn: FdbTransaction,
    readonly readOnly: boolean,
  ) {
    const snap = tn.snapshot();
    this.snapshot = {
      get: (key) => this.#get(snap, key),
      getRange: (b, e, o) => this.#getRange(snap, b, e, o, false),
    };
  }

  /** Throws if the attempt is over, the backend closed, or the time limit passed. */
  check(): void {
    if (this.#state.done) {
      throw new TransactionError("transaction_done", "Transaction already finished");
    }
    if (this.backend.closed) throw closedError();
    const limit = this.backend.limits.maxTransactionDuration;
    const elapsed = performance.now() - this.#state.started;
    if (elapsed > limit) throw timeoutError(elapsed, limit);
  }

  /** Start of the duration limit's clock, for the watchdog. */
  get started(): number {
    return this.#state.started;
  }

  /**
   * The watchdog timed the body out: its later operations throw; the attempt's failure then
   * cancels the FoundationDB transaction, so nothing of it commits.
   */
  expire(): void {
    this.#state.done = true;
  }

  #key(key: Uint8Array): Buffer {
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
    return toBuffer(this.backend.prefix.length === 0 ? key : concatBytes(this.backend.prefix, key));
  }

  #writable(): void {
    this.check();
    if (this.readOnly) {
      throw new TransactionError("read_only", "Cannot write in a read-only transaction");
    }
  }

  #value(key: Uint8Array, value: Uint8Array): Buffer {
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
    return toBuffer(value);
  }

  async #get(tn: FdbTransaction, key: Uint8Array): Promise<Uint8Array | undefined> {
    this.check();
    const k = this.#key(key);
    try {
      const value = await tn.get(k);
      return value === undefined ? undefined : toBytes(value);
    } catch (e) {
      throw this.backend.mapProvisionally(e);
    }
  }

  async #getRange(
    tn: FdbTransaction,
    begin: Uint8Array,
    end: Uint8Array,
    options: RangeOptions | undefined,
    conflict: boolean,
  ): Promise<KeyValue[]> {
    this.check();
    const b = this.#key(begin);
    const e = this.#key(end);
    if (compareBytes(begin, end) >= 0) return [];
    const limit = options?.limit;
    if (limit !== undefined && !(limit > 0)) {
      // The bindings read a limit of 0 as "no limit"; the contract reads nothing (but, like a
      // read, still conflicts on the range).
      if (conflict) tn.addReadConflictRange(b, e);
      return [];
    }
    let rows: [Buffer, Buffer][];
    try {
      rows = await tn.getRangeAll(b, e, { limit, reverse: options?.reverse ?? false });
    } catch (err) {
      throw this.backend.mapProvisionally(err);
    }
    const cut = this.backend.prefix.length;
    return rows.map(([key, value]) => ({ key: toBytes(key).subarray(cut), value: toBytes(value) }));
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#get(this.tn, key);
  }

  getRange(begin: Uint8Array, end: Uint8Array, options?: RangeOptions): Promise<KeyValue[]> {
    return this.#getRange(this.tn, begin, end, options, true);
  }

  set(key: Uint8Array, value: Uint8Array): void {
    this.#writable();
    this.tn.set(this.#key(key), this.#value(key, value));
  }

  clear(key: Uint8Array): void {
    this.#writable();
    this.tn.clear(this.#key(key));
  }

  clearRange(begin: Uint8Array, end: Uint8Array): void {
    this.#writable();
    const b = this.#key(begin);
    const e = this.#key(end);
    // FoundationDB rejects an inverted range (inverted_range); the contract clears nothing.
    if (compareBytes(begin, end) >= 0) return;
    this.tn.clearRange(b, e);
  }

  add(key: Uint8Array, delta: bigint | number): void {
    this.#writable();
    this.tn.add(this.#key(key), toBuffer(int64LE(delta)));
  }

  setVersionstampedKey(prefix: Uint8Array, suffix: Uint8Array, value: Uint8Array): void {
    this.#writable();
    // The key as it will be once stamped, for the size check.
    const stamped = new Uint8Array(prefix.length + 10 + suffix.length);
    stamped.set(prefix);
    this.#key(stamped);
    this.tn.setVersionstampedKeyBuf(
      this.#key(prefix),
      toBuffer(suffix),
      this.#value(stamped, value),
    );
  }

  setVersionstampedValue(
    key: Uint8Array,
    prefix: Uint8Array,
    suffix: Uint8Array = EMPTY_BYTES,
  ): void {
    this.#writable();
    const k = this.#key(key);
    // FoundationDB's operand (API 520+): the value with 10 placeholder bytes where the stamp
    // goes, followed by the stamp's offset as 4 little-endian bytes.
    const n = prefix.length + 10 + suffix.length;
    this.#value(key, new Uint8Array(n));
    const operand = new Uint8Array(n + 4);
    operand.set(prefix);
    operand.set(suffix, prefix.length + 10);
    new DataView(operand.buffer).setUint32(n, prefix.length, true);
    this.tn.setVersionstampedValueRaw(k, toBuffer(operand));
  }

  getVersionstamp(): Promise<Uint8Array> {
    if (this.#state.stamp !== undefined) return this.#state.stamp;
    try {
      this.check();
    } catch (e) {
      return Promise.reject(e);
    }
    const api = this.backend.api;
    const stamp = this.tn.getVersionstamp().promise.then(toBytes, (e: unknown) => {
      if (e instanceof api.FDBError && e.code === 2021) {
        throw new TransactionError(
          "no_versionstamp",
          "A read-only transaction has no versionstamp",
          {
            cause: e,
          },
        );
      }
      throw new TransactionError("not_committed", "The transaction did not commit", { cause: e });
    });
    // Unobserved rejections of the versionstamp promise are not errors.
    stamp.catch(() => {});
    return this.#state.stamp = stamp;
  }

  watch(key: Uint8Array): Watch {
    this.check();
    const native = this.tn.watch(this.#key(key));
    const handle = new WatchHandle();
    let nativeSettled = false;
    native.promise.then(
      (changed) => {
        nativeSettled = true;
        this.backend.watchFailures = 0;
        if (changed) handle.fire();
        else handle.cancel();
      },
      () => {
        // An error (too_many_watches, a lost connection, future_version) wakes the watcher,
        // which re-reads and watches again: the contract allows spurious fires, and a watcher
        // told `false` would stop watching for good. Not at once: a cluster that refuses every
        // watch (past its max_watches) made each idle consumer re-read and re-watch in a hot
        // loop (10,003 transactions in 474 ms). The delay doubles with each consecutive
        // failure, from 100 ms up to 5 s, and resets when a watch works again.
        nativeSettled = true;
        errorTimer = setTimeout(() => handle.fire(), this.backend.watchFailed());
      },
    );
    let errorTimer: ReturnType<typeof setTimeout> | undefined;
    handle.onSettle = () => {
      if (errorTimer !== undefined) clearTimeout(errorTimer);
      this.backend.watches.delete(handle);
      if (!nativeSettled) {
        try {
          native.cancel();
        } catch {
          // Already completed natively: nothing to cancel.
        }
      }
    };
    this.#state.watches.push(handle);
    return handle;
  }

  addReadConflictKey(key: Uint8Array): void {
    this.check();
    this.tn.addReadConflictKey(this.#key(key));
  }

  addReadConflictRange(begin: Uint8Array, end: Uint8Array): void {
    this.check();
    const b = this.#key(begin);
    const e = this.#key(end);
    if (compareBytes(begin, end) < 0) this.tn.addReadConflictRange(b, e);
  }

  /** After a successful commit: the watches are armed; the backend tracks them until close. */
  committed(): void {
    this.#state.done = true;
    for (const handle of this.#state.watches) {
      if (handle.settled) continue;
      if (this.backend.closed) handle.cancel();
      else this.backend.watches.add(handle);
    }
  }

  /** After a failed attempt: its watches resolve `false`. */
  failed(): void {
    this.#state.done = true;
    for (const handle of this.#state.watches) handle.cancel();
  }
}

function closedError(): BackendUnavailableError {
  return new BackendUnavailableError("The FoundationDB backend is closed", { closed: true });
}

// ---------------------------------------------------------------------------------------------
// The backend.

class FoundationdbBackend implements Backend {
  readonly kind = "foundationdb";
  closed = false;
  readonly watches = new Set<WatchHandle>();
  /** Watches failed in a row since one last worked (see {@link watchFailed}). */
  watchFailures = 0;
  /** Key prefix of the directory partition the backend is confined to (empty: none). */
  prefix: Uint8Array = EMPTY_BYTES;
  /** Where subspaces are allocated: the root directory layer or the partition. */
  directories: FdbDirectoryLayer | FdbDirectory;
  readonly #tnOptions: FdbTransactionOptions;
  /** Fails bodies that never settle (see {@link BodyWatchdog}). */
  readonly #watchdog: BodyWatchdog<FdbTransactionAdapter>;

  /** Counts a failed watch; returns how long its watcher waits before it is woken (ms). */
  watchFailed(): number {
    return Math.min(5_000, 100 * 2 ** Math.min(this.watchFailures++, 6));
  }

  constructor(
    readonly api: FdbApi,
    readonly db: FdbDatabase,
    public limits: BackendLimits,
  ) {
    this.directories = api.directory;
    this.#watchdog = new BodyWatchdog(limits.maxTransactionDuration);
    this.#tnOptions = {
      timeout: limits.maxTransactionDuration,
      size_limit: limits.maxTransactionSize,
    };
  }

  /** The FoundationDB error in `e` (itself, or the cause of a dgen error made from it). */
  fdbError(e: unknown): FdbErrorLike | undefined {
    if (e instanceof this.api.FDBError) return e;
    if (e instanceof TransactionError && e.cause instanceof this.api.FDBError) return e.cause;
    return undefined;
  }

  /** Maps an error of a read before FoundationDB has classified it (see `#attempt`). */
  mapProvisionally(e: unknown): unknown {
    return e instanceof this.api.FDBError
      ? mapFdbError(e, PROBABLY_RETRYABLE.has(e.code), this.limits)
      : e;
  }

  transact<T>(fn: (tx: Transaction) => T | Promise<T>, options?: TransactOptions): Promise<T> {
    let opts: TransactOptions;
    try {
      opts = checkTransactOptions(options);
      if (this.closed) throw closedError();
    } catch (e) {
      return Promise.reject(e);
    }
    return this.run((tx) => fn(tx), opts, this.#tnOptions, true);
  }

  /**
   * dgen's retry loop (`retryLoop`) around one fresh FoundationDB transaction per attempt.
   * FoundationDB still decides what is retryable and how long to back off: a failed attempt's
   * error goes through the transaction's `on_error`, which waits its recommended delay and
   * accepts retryable codes. A fresh transaction per attempt gives each its own 5-second clock,
   * watches and versionstamp. With `watch`, a body still pending past `maxTransactionDuration`
   * is failed by the watchdog (the backend's own transactions, which give the directory layer
   * FoundationDB's timeout, are not watched).
   */
  run<T>(
    fn: (tx: FdbTransactionAdapter) => T | Promise<T>,
    opts: TransactOptions,
    tnOptions: FdbTransactionOptions,
    watch = false,
  ): Promise<T> {
    return retryLoop(() => this.#attempt(fn, opts, tnOptions, watch), opts);
  }

  async #attempt<T>(
    fn: (tx: FdbTransactionAdapter) => T | Promise<T>,
    opts: TransactOptions,
    tnOptions: FdbTransactionOptions,
    watch: boolean,
  ): Promise<T> {
    if (this.closed) throw closedError();
    const tn = this.db.rawCreateTransaction(tnOptions);
    const tx = new FdbTransactionAdapter(this, tn, opts.readOnly ?? false);
    let committing = false;
    try {
      const result = await (watch ? this.#watchdog.run(tx, fn(tx)) : fn(tx));
      tx.check();
      // An abort during the body keeps this attempt from committing.
      opts.signal?.throwIfAborted();
      committing = true;
      await tn.rawCommit();
      tx.committed();
      return result;
    } catch (e) {
      tx.failed();
      const fdb = this.fdbError(e);
      if (fdb === undefined) {
        tn.rawCancel();
        throw e;
      }
      if (committing && fdb.code === 1031) {
        // The time limit struck while the commit was in flight: FoundationDB may still apply
        // it, even after this client's later commits (apple/foundationdb#3038). Its outcome is
        // unknown, not "did not commit": retried as such (the runtime's request records make
        // the retry idempotent), never charged to a message as a transaction over its limit.
        tn.rawCancel();
        throw new CommitUnknownResultError(
          `Commit result unknown: the transaction's ${this.limits.maxTransactionDuration} ms limit struck while its commit was in flight, and it may have been applied (FoundationDB error 1031: ${fdb.message})`,
          { cause: e },
        );
      }
      let retryable = true;
      try {
        await tn.rawOnError(fdb.code);
      } catch {
        retryable = false;
      }
      tn.rawCancel();
      throw mapFdbError(fdb, retryable, this.limits);
    }
  }

  async openSubspace(path: readonly string[]): Promise<Uint8Array> {
    if (this.closed) throw closedError();
    const dir = await this.run(
      async (tx) => {
        try {
          return await this.directories.createOrOpen(tx.tn, [...path]);
        } catch (e) {
          if (e instanceof this.api.DirectoryError) {
            throw new TransactionError(
              "directory",
              `Cannot open directory ${JSON.stringify(path)}: ${e.message}`,
              { cause: e },
            );
          }
          throw e;
        }
      },
      {},
      this.#tnOptions,
    );
    if (dir.isPartition()) {
      throw new TransactionError(
        "directory",
        `Directory ${JSON.stringify(path)} is a directory partition, which cannot hold keys`,
      );
    }
    const prefix = toBytes(dir.content.prefix);
    if (!hasPrefix(prefix, this.prefix)) {
      throw new TransactionError(
        "directory",
        `Directory ${JSON.stringify(path)} lies outside the backend's partition`,
      );
    }
    return prefix.slice(this.prefix.length);
  }

  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    for (const w of [...this.watches]) w.cancel();
    this.watches.clear();
    this.db.close();
    return Promise.resolve();
  }
}

/**
 * Opens a FoundationDB backend with `driver` (the real bindings, or a simulation in tests).
 * {@link openFoundationdbBackend} is this with the real bindings.
 */
export async function openFoundationdbBackendWith(
  driver: FdbDriver,
  options?: FoundationdbBackendOptions,
): Promise<Backend> {
  // Options are checked before anything is loaded, so a bad option is reported as such even
  // where FoundationDB is not installed.
  const opts = parse(optionsSchema, options, "options");
  const api = await driver.load(opts.apiVersion ?? DEFAULT_API_VERSION);
  const where = opts.clusterFile === undefined
    ? "the cluster file named by FDB_CLUSTER_FILE, else /etc/foundationdb/fdb.cluster"
    : `the cluster file ${opts.clusterFile}`;
  let db: FdbDatabase;
  try {
    db = api.open(opts.clusterFile);
  } catch (e) {
    throw new BackendUnavailableError(
      `Cannot open the FoundationDB database of ${where}: ${errorMessage(e)}`,
      { cause: e },
    );
  }
  const limits = { ...FOUNDATIONDB_LIMITS, ...opts.limits };
  const backend = new FoundationdbBackend(api, db, limits);
  const openTimeout = opts.openTimeout ?? 10_000;
  try {
    // One transaction proves the cluster answers (the client connects lazily) and opens the
    // partition the backend is confined to.
    const partition = await backend.run(
      async (tx) => {
        await tx.tn.getReadVersion();
        if (opts.directory === undefined) return undefined;
        return await api.directory.createOrOpen(tx.tn, [...opts.directory], "partition");
      },
      { maxRetries: 5 },
      { timeout: openTimeout },
    );
    if (partition !== undefined) {
      backend.directories = partition;
      backend.prefix = toBytes(partition.content.prefix).slice();
      // Keys are stored with the partition's prefix in front: the declared key limit is what
      // is left of FoundationDB's.
      backend.limits = {
        ...limits,
        maxKeySize: Math.min(
          limits.maxKeySize,
          FOUNDATIONDB_LIMITS.maxKeySize - backend.prefix.length,
        ),
      };
    }
  } catch (e) {
    await backend.close();
    if (e instanceof api.DirectoryError) {
      throw new ValidationError([{
        path: "options.directory",
        message: `Expected a directory partition or a free path: ${e.message}`,
      }], { cause: e });
    }
    if (e instanceof LimitExceededError && e.code === "transaction_timeout") {
      throw new BackendUnavailableError(
        `No answer from the FoundationDB cluster of ${where} within ${openTimeout} ms. ` +
          "Check that it is running and reachable: `fdbcli --exec status`.",
        { cause: e },
      );
    }
    throw new BackendUnavailableError(
      `Cannot use the FoundationDB cluster of ${where}: ${errorMessage(e)}`,
      { cause: e },
    );
  }
  return backend;
}

/**
 * Opens a backend on a FoundationDB cluster through `npm:foundationdb`. The bindings are
 * loaded on the first call (never at import); where the FoundationDB client library is
 * missing this rejects with `BackendUnavailableError` saying what to install. The API version
 * is chosen once per process. Opening waits until the cluster answers.
 *
 * @example
 * ```ts ignore
 * import { openFoundationdbBackend, openTenant } from "../../mod.ts";
 * const backend = await openFoundationdbBackend({
 *   clusterFile: "/etc/foundationdb/fdb.cluster",
 * });
 * const tenant = await openTenant(backend, "acme/prod");
 * await tenant.transact((tx) => tx.add(new TextEncoder().encode("hits"), 1));
 * await backend.close();
 * ```
 */
export function openFoundationdbBackend(options?: FoundationdbBackendOptions): Promise<Backend> {
  return openFoundationdbBackendWith(defaultDriver, options);
}
