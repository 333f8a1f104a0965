/**
 * The in-process backend and reference implementation of the storage contract: multi-version
 * storage with snapshot reads, optimistic concurrency (a transaction's read set is checked at
 * commit against every write committed after its snapshot), versionstamps and watches.
 * Not durable; for tests and for the contract's own proof.
 *
 * @module
 */

import {
  addLittleEndian,
  binaryStringToBytes,
  bytesToBinaryString,
  EMPTY_BYTES,
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
import * as v from "valibot";
import { isRetryable, retryLoop } from "./retry.ts";
import { BodyWatchdog, isThenable, timeoutError, type WatchedBody } from "./watchdog.ts";
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
import {
  checkTransactOptions,
  committedStamp,
  LazyStamp,
  limitsSchema,
  setOwned,
  WatchHandle,
} from "./common.ts";

/** One committed version of a key; `value` undefined marks a deletion. */
interface Version {
  v: number;
  value: Uint8Array | undefined;
}

/** A pending write of a transaction to one key. */
type Mutation =
  | { kind: "set"; value: Uint8Array }
  | { kind: "clear" }
  | { kind: "add"; operands: Uint8Array[] }
  | { kind: "stampedValue"; prefix: Uint8Array; suffix: Uint8Array };

/**
 * Options of {@link openMemoryBackend}.
 *
 * @example
 * ```ts
 * import { type MemoryBackendOptions, openMemoryBackend } from "../../mod.ts";
 * const options: MemoryBackendOptions = { limits: { maxKeySize: 100 } };
 * const backend = openMemoryBackend(options);
 * const set = backend.transact((tx) => tx.set(new Uint8Array(200), new Uint8Array([1])));
 * await set.catch((e) => console.log(e.code)); // "key_too_large"
 * await backend.close();
 * ```
 */
export interface MemoryBackendOptions {
  /** Limits to enforce. @default FoundationDB's limits */
  limits?: Partial<BackendLimits>;
}

const optionsSchema = v.optional(
  v.strictObject({ limits: v.optional(limitsSchema) }),
  {},
);

/** Lower bound of sorted `keys` for `k`: first index with keys[i] >= k. */
function lowerBound(keys: string[], k: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid]! < k) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

class Store {
  readonly chains = new Map<string, Version[]>();
  /** Every key that has a chain, sorted. */
  sorted: string[] = [];
  version = 0;
  /** Open transactions per read version (but those of {@link heldAt}). */
  readonly active = new Map<number, number>();
  readonly watches = new Map<string, Set<WatchHandle>>();
  /** Keys whose chains hold more than the latest version or end in a deletion. */
  readonly dirty = new Set<string>();
  commitsSinceGc = 0;
  closed = false;

  visible(key: string, at: number): Uint8Array | undefined {
    const chain = this.chains.get(key);
    if (chain === undefined) return undefined;
    for (let i = chain.length - 1; i >= 0; i--) {
      const e = chain[i]!;
      if (e.v <= at) return e.value;
    }
    return undefined;
  }

  latestVersion(key: string): number {
    const chain = this.chains.get(key);
    return chain === undefined ? 0 : chain[chain.length - 1]!.v;
  }

  write(key: string, value: Uint8Array | undefined, at: number): void {
    let chain = this.chains.get(key);
    if (chain === undefined) {
      if (value === undefined) return;
      chain = [];
      this.chains.set(key, chain);
      this.sorted.splice(lowerBound(this.sorted, key), 0, key);
    }
    if (chain.length === 1 && value !== undefined && !this.anyOpen()) {
      // No transaction is open, so none can read the old version: it is replaced in place
      // (no version to collect later).
      const only = chain[0]!;
      only.v = at;
      only.value = value;
    } else {
      chain.push({ v: at, value });
      if (chain.length > 1 || value === undefined) this.dirty.add(key);
    }
    const ws = this.watches.get(key);
    if (ws !== undefined) {
      for (const w of ws) if (w.baseline < at) w.fire();
    }
  }

  /**
   * The newest read version held and how many open transactions hold it, counted apart from
   * {@link active}: the common case (transactions at the latest version) costs no Map update.
   */
  heldAt = -1;
  heldCount = 0;

  /** Whether any transaction is open. */
  anyOpen(): boolean {
    return this.heldCount > 0 || this.active.size > 0;
  }

  hold(readVersion: number): void {
    if (readVersion === this.heldAt) {
      this.heldCount++;
      return;
    }
    // A new transaction reads the latest version, never an older one than heldAt: the
    // holders of heldAt move to the map.
    if (this.heldCount > 0) {
      this.active.set(this.heldAt, (this.active.get(this.heldAt) ?? 0) + this.heldCount);
    }
    this.heldAt = readVersion;
    this.heldCount = 1;
  }

  release(readVersion: number): void {
    if (readVersion === this.heldAt) {
      this.heldCount--;
      return;
    }
    const n = this.active.get(readVersion)! - 1;
    if (n === 0) this.active.delete(readVersion);
    else this.active.set(readVersion, n);
  }

  /** Drops versions no active or future transaction can see. */
  gc(): void {
    this.commitsSinceGc = 0;
    let oldest = this.version;
    for (const rv of this.active.keys()) if (rv < oldest) oldest = rv;
    if (this.heldCount > 0 && this.heldAt < oldest) oldest = this.heldAt;
    let removed = false;
    for (const key of this.dirty) {
      const chain = this.chains.get(key)!;
      let keep = 0;
      for (let i = chain.length - 1; i >= 0; i--) {
        if (chain[i]!.v <= oldest) {
          keep = i;
          break;
        }
      }
      if (keep > 0) chain.splice(0, keep);
      const first = chain[0]!;
      if (chain.length === 1 && first.value === undefined && first.v <= oldest) {
        this.chains.delete(key);
        removed = true;
        this.dirty.delete(key);
      } else if (chain.length === 1 && first.value !== undefined) {
        this.dirty.delete(key);
      }
    }
    if (removed) this.sorted = this.sorted.filter((k) => this.chains.has(k));
  }
}

class MemoryTransaction implements Transaction, WatchedBody<MemoryTransaction> {
  readonly readVersion: number;
  readonly started = performance.now();
  readonly writes = new Map<string, Mutation>();
  readonly clears: Array<[string, string]> = [];
  readonly stampedKeys: Array<{ prefix: Uint8Array; suffix: Uint8Array; value: Uint8Array }> = [];
  /** Read conflict ranges, and single keys apart (most reads are of one key). */
  readonly conflicts: Array<[string, string]> = [];
  readonly conflictKeys: string[] = [];
  readonly watches: Array<[string, WatchHandle]> = [];
  size = 0;
  readonly stamp = new LazyStamp();
  done = false;
  #snapshot: ReadTransaction | undefined;
  /**
   * While the body's promise is pending: what fails it (the reject of the attempt's promise),
   * and the links of the backend's list of pending bodies, which its watchdog walks.
   */
  fail: ((e: unknown) => void) | undefined = undefined;
  watchPrev: MemoryTransaction | undefined = undefined;
  watchNext: MemoryTransaction | undefined = undefined;

  constructor(
    readonly store: Store,
    readonly limits: BackendLimits,
    readonly readOnly: boolean,
  ) {
    this.readVersion = store.version;
    store.hold(this.readVersion);
  }

  /** Reads that add no conflicts (made on first use: most transactions never ask). */
  get snapshot(): ReadTransaction {
    return this.#snapshot ??= {
      get: (key) => Promise.resolve(this.readKey(key, false)),
      getRange: (b, e, o) => Promise.resolve(this.readRange(b, e, o, false)),
    };
  }

  /** Reads and watches so far, for {@link check}'s clock. */
  #reads = 0;

  /**
   * Fails a finished transaction, a closed backend, and a body over its time limit. The
   * commit always looks at the clock, so no transaction over the limit commits; writes never
   * do; reads and watches do every eighth time, to stop a body that keeps reading (a poll)
   * without paying for the clock on every read (116 ns on Deno, a call reads three keys).
   */
  check(clock: "commit" | "read" | "write" = "read"): void {
    if (this.done) throw new TransactionError("transaction_done", "Transaction already finished");
    if (this.store.closed) {
      throw new BackendUnavailableError("The memory backend is closed", { closed: true });
    }
    if (clock === "write" || (clock === "read" && (++this.#reads & 7) !== 0)) return;
    const elapsed = performance.now() - this.started;
    const limit = this.limits.maxTransactionDuration;
    if (elapsed > limit) throw timeoutError(elapsed, limit);
  }

  /** The watchdog timed the body out: nothing of it commits. */
  expire(): void {
    this.abort();
  }

  checkKey(key: Uint8Array): string {
    if (!(key instanceof Uint8Array)) throw new TypeError("Keys are Uint8Arrays");
    if (key.length > this.limits.maxKeySize) {
      throw new LimitExceededError(
        "key_too_large",
        `Key of ${key.length} bytes exceeds the ${this.limits.maxKeySize}-byte limit: ${
          printable(key.subarray(0, 40))
        }…`,
      );
    }
    return bytesToBinaryString(key);
  }

  checkWrite(key: Uint8Array, value?: Uint8Array, valueLength = value?.length ?? 0): string {
    this.check("write");
    if (this.readOnly) {
      throw new TransactionError("read_only", "Cannot write in a read-only transaction");
    }
    const k = this.checkKey(key);
    if (value !== undefined && !(value instanceof Uint8Array)) {
      throw new TypeError("Values are Uint8Arrays");
    }
    if (valueLength > this.limits.maxValueSize) {
      throw new LimitExceededError(
        "value_too_large",
        `Value of ${valueLength} bytes for key ${
          printable(key.subarray(0, 40))
        } exceeds the ${this.limits.maxValueSize}-byte limit`,
      );
    }
    this.size += key.length + valueLength;
    return k;
  }

  inClearedRange(k: string): boolean {
    for (const [b, e] of this.clears) if (k >= b && k < e) return true;
    return false;
  }

  readKey(key: Uint8Array, conflict: boolean): Uint8Array | undefined {
    this.check();
    const k = this.checkKey(key);
    const m = this.writes.get(k);
    if (m?.kind === "set") return m.value;
    if (m?.kind === "clear") return undefined;
    if (m?.kind === "stampedValue") {
      throw new TransactionError(
        "accessed_unreadable",
        "A versionstamped value cannot be read in the transaction that wrote it",
      );
    }
    if (conflict) this.conflictKeys.push(k);
    const base = this.inClearedRange(k) ? undefined : this.store.visible(k, this.readVersion);
    if (m?.kind === "add") {
      let value = base;
      for (const op of m.operands) value = addLittleEndian(value, op);
      this.writes.set(k, { kind: "set", value: value! });
      return value;
    }
    return base;
  }

  readRange(
    begin: Uint8Array,
    end: Uint8Array,
    options: RangeOptions | undefined,
    conflict: boolean,
  ): KeyValue[] {
    this.check();
    const b = this.checkKey(begin);
    const e = this.checkKey(end);
    const limit = options?.limit ?? Infinity;
    const reverse = options?.reverse ?? false;
    if (!(limit > 0) || b >= e) {
      if (conflict && b < e) this.conflicts.push([b, e]);
      return [];
    }
    // Local writes in range, sorted in the read direction.
    const local: string[] = [];
    for (const [k, m] of this.writes) {
      if (k >= b && k < e && m.kind !== "clear") local.push(k);
    }
    local.sort();
    if (reverse) local.reverse();
    const sorted = this.store.sorted;
    let i = reverse ? lowerBound(sorted, e) - 1 : lowerBound(sorted, b);
    let j = 0;
    const out: KeyValue[] = [];
    let last: string | undefined;
    while (out.length < limit) {
      let k: string | undefined = sorted[i];
      if (k !== undefined && (reverse ? k < b : k >= e)) k = undefined;
      const lk = local[j];
      let key: string;
      let fromLocal: boolean;
      if (k === undefined && lk === undefined) break;
      if (lk !== undefined && (k === undefined || (reverse ? lk >= k : lk <= k))) {
        key = lk;
        fromLocal = true;
        j++;
        if (k === lk) i += reverse ? -1 : 1;
      } else {
        key = k!;
        fromLocal = false;
        i += reverse ? -1 : 1;
      }
      let value: Uint8Array | undefined;
      if (fromLocal) {
        value = this.readKey(binaryStringToBytes(key), false);
      } else {
        if (this.writes.get(key)?.kind === "clear" || this.inClearedRange(key)) continue;
        value = this.store.visible(key, this.readVersion);
      }
      last = key;
      if (value !== undefined) out.push({ key: binaryStringToBytes(key), value });
    }
    if (conflict) {
      if (out.length >= limit && last !== undefined) {
        this.conflicts.push(reverse ? [last, e] : [b, last + "\0"]);
      } else {
        this.conflicts.push([b, e]);
      }
    }
    return out;
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    try {
      return Promise.resolve(this.readKey(key, true));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  getRange(begin: Uint8Array, end: Uint8Array, options?: RangeOptions): Promise<KeyValue[]> {
    try {
      return Promise.resolve(this.readRange(begin, end, options, true));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  set(key: Uint8Array, value: Uint8Array): void {
    const k = this.checkWrite(key, value);
    this.writes.set(k, { kind: "set", value: value.slice() });
  }

  [setOwned](key: Uint8Array, value: Uint8Array): void {
    const k = this.checkWrite(key, value);
    this.writes.set(k, { kind: "set", value });
  }

  clear(key: Uint8Array): void {
    const k = this.checkWrite(key);
    this.writes.set(k, { kind: "clear" });
  }

  clearRange(begin: Uint8Array, end: Uint8Array): void {
    const b = this.checkWrite(begin);
    const e = this.checkKey(end);
    this.size += end.length;
    if (b >= e) return;
    for (const k of [...this.writes.keys()]) {
      if (k >= b && k < e) this.writes.delete(k);
    }
    this.clears.push([b, e]);
  }

  add(key: Uint8Array, delta: bigint | number): void {
    // The common +1 (counters) shares its operand, which is only ever read: it is
    // copied where it becomes a value.
    const operand = delta === 1 ? ONE_LE : int64LE(delta);
    const k = this.checkWrite(key, operand);
    const m = this.writes.get(k);
    if (m?.kind === "set") {
      this.writes.set(k, { kind: "set", value: addLittleEndian(m.value, operand) });
    } else if (m?.kind === "clear") this.writes.set(k, { kind: "set", value: operand.slice() });
    else if (m?.kind === "add") m.operands.push(operand);
    else if (this.inClearedRange(k)) this.writes.set(k, { kind: "set", value: operand.slice() });
    else this.writes.set(k, { kind: "add", operands: [operand] });
  }

  setVersionstampedKey(prefix: Uint8Array, suffix: Uint8Array, value: Uint8Array): void {
    const key = new Uint8Array(prefix.length + 10 + suffix.length);
    this.checkWrite(key, value);
    this.stampedKeys.push({ prefix: prefix.slice(), suffix: suffix.slice(), value: value.slice() });
  }

  setVersionstampedValue(key: Uint8Array, prefix: Uint8Array, suffix = EMPTY_BYTES): void {
    const k = this.checkWrite(key, undefined, prefix.length + 10 + suffix.length);
    this.writes.set(k, {
      kind: "stampedValue",
      prefix: ownCopy(prefix),
      suffix: ownCopy(suffix),
    });
  }

  getVersionstamp(): Promise<Uint8Array> {
    return this.stamp.promise;
  }

  [committedStamp](): Uint8Array | undefined {
    return this.stamp.now();
  }

  watch(key: Uint8Array): Watch {
    this.check();
    const k = this.checkKey(key);
    const handle = new WatchHandle();
    this.watches.push([k, handle]);
    return handle;
  }

  addReadConflictKey(key: Uint8Array): void {
    this.check();
    const k = this.checkKey(key);
    this.conflictKeys.push(k);
  }

  addReadConflictRange(begin: Uint8Array, end: Uint8Array): void {
    this.check();
    const b = this.checkKey(begin);
    const e = this.checkKey(end);
    if (b < e) this.conflicts.push([b, e]);
  }

  hasWrites(): boolean {
    return this.writes.size > 0 || this.clears.length > 0 || this.stampedKeys.length > 0;
  }

  /** Validates and applies the transaction atomically (no awaits inside). */
  commit(): void {
    this.check("commit");
    const store = this.store;
    let conflictBytes = 0;
    for (const [b, e] of this.conflicts) conflictBytes += b.length + e.length;
    for (const k of this.conflictKeys) conflictBytes += 2 * k.length + 1;
    if (this.size + conflictBytes > this.limits.maxTransactionSize) {
      throw new LimitExceededError(
        "transaction_too_large",
        `Transaction of ${
          this.size + conflictBytes
        } bytes exceeds the ${this.limits.maxTransactionSize}-byte limit`,
      );
    }
    this.done = true;
    store.release(this.readVersion);
    if (!this.hasWrites()) {
      this.stamp.reject(() =>
        new TransactionError("no_versionstamp", "A read-only transaction has no versionstamp")
      );
      this.armWatches(undefined);
      return;
    }
    const conflict = this.findConflict();
    if (conflict !== undefined) {
      const error = new ConflictError(conflictMessage(conflict));
      this.stamp.reject(() => error);
      for (const [, handle] of this.watches) handle.cancel();
      throw error;
    }
    const at = ++store.version;
    // The stamp alone, made once: values that are only the stamp, and the caller of
    // getVersionstamp, share it (stored values are shared with readers anyway).
    let bare: Uint8Array | undefined;
    const stampOnly = () => bare ??= versionstampBytes(at);
    // What this commit wrote, for its own watches only (most transactions watch nothing).
    const written = this.watches.length > 0 ? new Set<string>() : undefined;
    for (const [b, e] of this.clears) {
      const keys = store.sorted.slice(lowerBound(store.sorted, b), lowerBound(store.sorted, e));
      for (const k of keys) {
        if (store.visible(k, at) !== undefined) {
          store.write(k, undefined, at);
          written?.add(k);
        }
      }
    }
    for (const [k, m] of this.writes) {
      let value: Uint8Array | undefined;
      if (m.kind === "set") value = m.value;
      else if (m.kind === "clear") value = undefined;
      else if (m.kind === "add") {
        value = store.visible(k, at);
        for (const op of m.operands) value = addLittleEndian(value, op);
      } else if (m.prefix.length === 0 && m.suffix.length === 0) {
        value = stampOnly();
      } else {
        value = stampedBytes(m.prefix, at, 0, m.suffix);
      }
      if (value === undefined && store.visible(k, at) === undefined) continue;
      store.write(k, value, at);
      written?.add(k);
    }
    for (const s of this.stampedKeys) {
      const k = bytesToBinaryString(stampedBytes(s.prefix, at, 0, s.suffix));
      store.write(k, s.value, at);
      written?.add(k);
    }
    this.armWatches(written, at);
    this.stamp.resolve(stampOnly);
    if (++store.commitsSinceGc >= 256 || store.dirty.size > 4096) store.gc();
  }

  /** A key this transaction read that a later commit wrote, if any. */
  findConflict(): string | undefined {
    const store = this.store;
    for (const k of this.conflictKeys) if (store.latestVersion(k) > this.readVersion) return k;
    for (const [b, e] of this.conflicts) {
      const sorted = store.sorted;
      for (let i = lowerBound(sorted, b); i < sorted.length && sorted[i]! < e; i++) {
        if (store.latestVersion(sorted[i]!) > this.readVersion) return sorted[i]!;
      }
    }
    return undefined;
  }

  armWatches(written: Set<string> | undefined, at?: number): void {
    for (const [k, handle] of this.watches) {
      handle.baseline = at !== undefined && written?.has(k) ? at : this.readVersion;
      if (handle.settled) continue;
      if (this.store.latestVersion(k) > handle.baseline) {
        handle.fire();
        continue;
      }
      let set = this.store.watches.get(k);
      if (set === undefined) this.store.watches.set(k, set = new Set());
      set.add(handle);
      handle.onSettle = () => {
        set.delete(handle);
        if (set.size === 0) this.store.watches.delete(k);
      };
    }
  }

  abort(): void {
    if (this.done) return;
    this.done = true;
    this.store.release(this.readVersion);
    this.stamp.reject(() =>
      new TransactionError("not_committed", "The transaction did not commit")
    );
    for (const [, handle] of this.watches) handle.cancel();
  }
}

function conflictMessage(k: string): string {
  return `Transaction conflicted on key ${printable(binaryStringToBytes(k).subarray(0, 60))}`;
}

/** A copy the transaction owns (the shared empty array for an empty one). */
function ownCopy(b: Uint8Array): Uint8Array {
  return b.length === 0 ? EMPTY_BYTES : b.slice();
}

class MemoryBackend implements Backend {
  readonly kind = "memory";
  readonly unknownCommitOutcomes = false;
  readonly #store = new Store();
  /** Fails bodies that never settle (see {@link BodyWatchdog}). */
  readonly #watchdog: BodyWatchdog<MemoryTransaction>;

  constructor(readonly limits: BackendLimits) {
    this.#watchdog = new BodyWatchdog(limits.maxTransactionDuration);
  }

  transact<T>(
    fn: (tx: Transaction) => T | Promise<T>,
    options?: TransactOptions,
  ): Promise<T> {
    // Not async itself: the retry loop's promise is the caller's (one await fewer per call).
    let opts: TransactOptions;
    try {
      opts = checkTransactOptions(options);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.#store.closed) {
      return Promise.reject(
        new BackendUnavailableError("The memory backend is closed", { closed: true }),
      );
    }
    if (opts.signal?.aborted) return Promise.reject(opts.signal.reason);
    // The first attempt runs outside the retry loop (one async function and one await fewer
    // per transaction): a retryable failure hands over to the loop (see #retry).
    return this.#attempt(fn, opts.readOnly ?? false, opts);
  }

  /**
   * One attempt: runs the body and commits. A body that returns a promise is watched until it
   * settles (see {@link BodyWatchdog}); one that returns a value commits at once. With `retry`
   * (the first attempt's options), a retryable failure goes on in the retry loop.
   */
  #attempt<T>(
    fn: (tx: Transaction) => T | Promise<T>,
    readOnly: boolean,
    retry: TransactOptions | undefined,
  ): Promise<T> {
    const tx = new MemoryTransaction(this.#store, this.limits, readOnly);
    let r: T | Promise<T>;
    try {
      r = fn(tx);
      if (!isThenable(r)) {
        tx.commit();
        return Promise.resolve(r);
      }
    } catch (e) {
      tx.abort();
      return retry === undefined ? Promise.reject(e) : this.#retry(e, fn, readOnly, retry);
    }
    const body = r;
    return new Promise<T>((resolve, reject) => {
      tx.fail = retry === undefined ? reject : (e) => {
        if (isRetryable(e)) resolve(this.#retry(e, fn, readOnly, retry));
        else reject(e);
      };
      this.#watchdog.add(tx);
      try {
        body.then((value) => {
          // Failed by the watchdog already: the transaction was aborted, nothing commits.
          if (tx.fail === undefined) return;
          try {
            tx.commit();
          } catch (e) {
            this.#bodyFailed(tx, e);
            return;
          }
          this.#watchdog.remove(tx);
          resolve(value);
        }, (e) => this.#bodyFailed(tx, e));
      } catch (e) {
        // A thenable whose then throws.
        this.#bodyFailed(tx, e);
      }
    });
  }

  /**
   * Goes on after the first attempt failed with `e`: the retry loop replays that failure as its
   * own first attempt, so the retry count, the back-off and the errors are the loop's.
   */
  #retry<T>(
    e: unknown,
    fn: (tx: Transaction) => T | Promise<T>,
    readOnly: boolean,
    opts: TransactOptions,
  ): Promise<T> {
    if (!isRetryable(e)) return Promise.reject(e);
    return retryLoop(
      (n) => n === 0 ? Promise.reject(e) : this.#attempt(fn, readOnly, undefined),
      opts,
    );
  }

  #bodyFailed(tx: MemoryTransaction, e: unknown): void {
    const fail = tx.fail;
    if (fail === undefined) return;
    this.#watchdog.remove(tx);
    tx.abort();
    fail(e);
  }

  openSubspace(path: readonly string[]): Promise<Uint8Array> {
    return Promise.resolve(pack([path]));
  }

  close(): Promise<void> {
    const store = this.#store;
    if (store.closed) return Promise.resolve();
    store.closed = true;
    for (const set of store.watches.values()) for (const w of [...set]) w.cancel();
    store.watches.clear();
    return Promise.resolve();
  }
}

/**
 * Opens an in-process backend with real transaction semantics (snapshot reads, conflict
 * detection, versionstamps, watches). Nothing survives the process.
 *
 * @example
 * ```ts
 * import { openMemoryBackend } from "./memory.ts";
 * const backend = openMemoryBackend();
 * const key = new Uint8Array([1]);
 * await backend.transact((tx) => tx.add(key, 5));
 * await backend.close();
 * ```
 */
export function openMemoryBackend(options?: MemoryBackendOptions): Backend {
  const opts = parse(optionsSchema, options, "options");
  return new MemoryBackend({ ...FOUNDATIONDB_LIMITS, ...opts.limits });
}
