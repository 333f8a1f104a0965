/**
 * Simulated `npm:foundationdb` bindings over the memory backend, so the FoundationDB backend's
 * own code (its retry loop and `on_error` use, error mapping, partition prefixes, versionstamp
 * operands, watch bookkeeping, limits, API-version selection) runs on machines without
 * FoundationDB. It models what the bindings document: FoundationDB's error codes and which of
 * them `on_error` retries, errors of writes deferred to commit, the API 520+ versionstamp
 * operand, the `timeout` and `size_limit` options, directory partitions. It is not
 * FoundationDB: passing against it proves the adapter, not the cluster.
 */

import { Buffer } from "node:buffer";
import {
  type Backend,
  BackendUnavailableError,
  ConflictError,
  int64LE,
  LimitExceededError,
  openMemoryBackend,
  pack,
  readInt64LE,
  type Transaction,
  TransactionError,
  unpack,
} from "../../mod.ts";
import { concatBytes, strinc } from "../../lib/bytes.ts";
import {
  createDriver,
  type FdbApi,
  type FdbDatabase,
  type FdbDirectory,
  type FdbDirectoryLayer,
  type FdbDriver,
  type FdbTransaction,
  type FdbTransactionOptions,
  type FdbWatch,
} from "../../lib/storage/foundationdb.ts";

/** The simulation's FoundationDB error: FoundationDB's message and code. */
export class SimFDBError extends Error {
  /** FoundationDB's error code. */
  readonly code: number;
  constructor(description: string, code: number) {
    super(description);
    this.code = code;
  }
}

/** The simulation's directory-layer error. */
export class SimDirectoryError extends Error {}

const MESSAGES: Record<number, string> = {
  1007: "Transaction is too old to perform reads or be committed",
  1009: "Request for future version",
  1020: "Transaction not committed due to conflict with another transaction",
  1021: "Transaction may or may not have committed",
  1025: "Operation aborted because the transaction was cancelled",
  1031: "Operation aborted because the transaction timed out",
  1036: "Read or wrote an unreadable key",
  1037: "Storage process does not have recent mutations",
  1515: "No cluster file found in current directory or default location",
  2000: "Invalid API call",
  2004: "Key outside legal range",
  2005: "Range begin key larger than end key",
  2017: "Operation issued while a commit was outstanding",
  2021: "Transaction is read-only and therefore does not have a commit version",
  2101: "Transaction exceeds byte limit",
  2102: "Key length exceeds limit",
  2103: "Value length exceeds limit",
  2203: "API version not supported",
};

/** Codes FoundationDB's `on_error` accepts (retries); any other it rethrows. */
const ON_ERROR_RETRIES = new Set([1007, 1009, 1020, 1021, 1037, 1038, 1039, 1042, 1078, 1213]);

function fdbError(code: number): SimFDBError {
  return new SimFDBError(MESSAGES[code] ?? "Simulated FoundationDB error", code);
}

/** What the memory engine threw, as the FoundationDB error the real client would give. */
function asFdbError(e: unknown): unknown {
  if (e instanceof ConflictError) return fdbError(1020);
  if (e instanceof LimitExceededError) {
    const code = { key_too_large: 2102, value_too_large: 2103, transaction_too_large: 2101 }[
      e.code
    ];
    if (code !== undefined) return fdbError(code);
  }
  if (e instanceof TransactionError && e.code === "accessed_unreadable") return fdbError(1036);
  if (e instanceof BackendUnavailableError) return fdbError(1025);
  return e;
}

const bytes = (b: Uint8Array) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

class Cancelled extends Error {}

/** A commit failure to inject. */
interface Injected {
  code: number;
  /** Whether the commit is applied before the failure is reported. */
  applied: boolean;
}

/** One simulated cluster: a memory store, injected failures and counters. */
class Cluster {
  readonly memory: Backend = openMemoryBackend({
    // The simulation enforces FoundationDB's timeout and size_limit options itself.
    limits: { maxTransactionDuration: 3_600_000, maxTransactionSize: 1_000_000_000 },
  });
  readonly injected: Injected[] = [];
  readonly onErrorCodes: number[] = [];
  unreachable = false;
  transactions = 0;
  lastOptions: FdbTransactionOptions | undefined;
}

/** State of one simulated transaction, shared with its snapshot view. */
interface TnState {
  readonly mtx: Transaction;
  readonly gate: PromiseWithResolvers<boolean>;
  readonly outcome: Promise<void>;
  readonly started: number;
  readonly timeout: number;
  readonly sizeLimit: number;
  size: number;
  deferred: unknown;
  finished: boolean;
}

class SimTransaction implements FdbTransaction {
  constructor(
    readonly cluster: Cluster,
    readonly state: TnState,
    readonly isSnapshot: boolean,
  ) {}

  static begin(cluster: Cluster, opts: FdbTransactionOptions = {}): SimTransaction {
    cluster.transactions++;
    cluster.lastOptions = opts;
    const gate = Promise.withResolvers<boolean>();
    let mtx: Transaction | undefined;
    // The memory backend runs the body synchronously up to its first await, so the
    // transaction is captured before `transact` returns; the body then waits for the commit.
    const outcome = cluster.memory.transact(async (tx) => {
      mtx = tx;
      if (!(await gate.promise)) throw new Cancelled();
    }, { maxRetries: 0 });
    outcome.catch(() => {});
    if (mtx === undefined) throw new Error("Simulation: the memory transaction was not captured");
    return new SimTransaction(cluster, {
      mtx,
      gate,
      outcome,
      started: performance.now(),
      timeout: opts.timeout ?? 0,
      sizeLimit: opts.size_limit ?? 10_000_000,
      size: 0,
      deferred: undefined,
      finished: false,
    }, false);
  }

  #alive(): void {
    if (this.state.finished) throw fdbError(2017);
    const { timeout, started } = this.state;
    if (timeout > 0 && performance.now() - started > timeout) throw fdbError(1031);
  }

  /** Runs a write; like the C API, its error surfaces at commit. */
  #write(size: number, f: () => void): void {
    if (this.isSnapshot) throw new Error("Simulation: writes go through the transaction");
    this.state.size += size;
    if (this.state.finished) return;
    try {
      f();
    } catch (e) {
      this.state.deferred ??= asFdbError(e);
    }
  }

  async get(key: Buffer): Promise<Buffer | undefined> {
    this.#alive();
    const reads = this.isSnapshot ? this.state.mtx.snapshot : this.state.mtx;
    try {
      const v = await reads.get(bytes(key));
      return v === undefined ? undefined : Buffer.from(v);
    } catch (e) {
      throw asFdbError(e);
    }
  }

  async getRangeAll(
    start: Buffer,
    end: Buffer,
    opts: { limit?: number; reverse?: boolean } = {},
  ): Promise<[Buffer, Buffer][]> {
    this.#alive();
    const reads = this.isSnapshot ? this.state.mtx.snapshot : this.state.mtx;
    try {
      // As in the bindings, a limit of 0 means no limit.
      const rows = await reads.getRange(bytes(start), bytes(end), {
        limit: opts.limit || undefined,
        reverse: opts.reverse ?? false,
      });
      return rows.map((r) => [Buffer.from(r.key), Buffer.from(r.value)]);
    } catch (e) {
      throw asFdbError(e);
    }
  }

  snapshot(): SimTransaction {
    return new SimTransaction(this.cluster, this.state, true);
  }

  set(key: Buffer, value: Buffer): void {
    this.#write(key.length + value.length, () => this.state.mtx.set(bytes(key), bytes(value)));
  }

  clear(key: Buffer): void {
    this.#write(key.length, () => this.state.mtx.clear(bytes(key)));
  }

  clearRange(start: Buffer, end: Buffer): void {
    this.#write(start.length + end.length, () => {
      if (Buffer.compare(start, end) > 0) throw fdbError(2005);
      this.state.mtx.clearRange(bytes(start), bytes(end));
    });
  }

  add(key: Buffer, operand: Buffer): void {
    this.#write(key.length + operand.length, () => {
      if (operand.length !== 8) throw new Error("Simulation: dgen adds 8-byte operands");
      this.state.mtx.add(bytes(key), readInt64LE(bytes(operand)));
    });
  }

  setVersionstampedKeyBuf(
    prefix: Buffer | undefined,
    suffix: Buffer | undefined,
    value: Buffer,
  ): void {
    const p = prefix ?? Buffer.alloc(0);
    const s = suffix ?? Buffer.alloc(0);
    this.#write(
      p.length + 10 + s.length + value.length,
      () => this.state.mtx.setVersionstampedKey(bytes(p), bytes(s), bytes(value)),
    );
  }

  setVersionstampedValueRaw(key: Buffer, operand: Buffer): void {
    this.#write(key.length + operand.length, () => {
      // API 520+: the last 4 bytes are the little-endian offset of 10 placeholder bytes.
      if (operand.length < 14) throw fdbError(2000);
      const body = operand.subarray(0, operand.length - 4);
      const offset = operand.readUInt32LE(operand.length - 4);
      if (offset + 10 > body.length) throw fdbError(2000);
      this.state.mtx.setVersionstampedValue(
        bytes(key),
        bytes(body.subarray(0, offset)),
        bytes(body.subarray(offset + 10)),
      );
    });
  }

  getVersionstamp(): { promise: Promise<Buffer> } {
    const promise = this.state.mtx.getVersionstamp().then(
      (s) => Buffer.from(s),
      (e) => {
        throw e instanceof TransactionError && e.code === "no_versionstamp"
          ? fdbError(2021)
          : fdbError(1025);
      },
    );
    promise.catch(() => {});
    return { promise };
  }

  watch(key: Buffer): FdbWatch {
    const w = this.state.mtx.watch(bytes(key));
    return { promise: w.promise, cancel: () => w.cancel() };
  }

  addReadConflictKey(key: Buffer): void {
    this.state.mtx.addReadConflictKey(bytes(key));
  }

  addReadConflictRange(start: Buffer, end: Buffer): void {
    this.state.mtx.addReadConflictRange(bytes(start), bytes(end));
  }

  async getReadVersion(): Promise<Buffer> {
    this.#alive();
    if (this.cluster.unreachable) {
      // No answer: the transaction's timeout is the only way out, as with a real client.
      const { timeout, started } = this.state;
      if (timeout <= 0) return await new Promise<never>(() => {});
      await new Promise((r) => setTimeout(r, Math.max(0, started + timeout - performance.now())));
      throw fdbError(1031);
    }
    return Buffer.alloc(8);
  }

  async rawCommit(): Promise<void> {
    const state = this.state;
    try {
      this.#alive();
      if (state.deferred !== undefined) throw state.deferred;
      if (state.size > state.sizeLimit) throw fdbError(2101);
    } catch (e) {
      this.rawCancel();
      throw e;
    }
    state.finished = true;
    const injected = this.cluster.injected.shift();
    if (injected !== undefined && !injected.applied) {
      state.gate.resolve(false);
      throw fdbError(injected.code);
    }
    state.gate.resolve(true);
    try {
      await state.outcome;
    } catch (e) {
      throw asFdbError(e);
    }
    if (injected !== undefined) throw fdbError(injected.code);
  }

  rawOnError(code: number): Promise<void> {
    this.cluster.onErrorCodes.push(code);
    this.rawCancel();
    return ON_ERROR_RETRIES.has(code) ? Promise.resolve() : Promise.reject(fdbError(code));
  }

  rawCancel(): void {
    if (this.state.finished) return;
    this.state.finished = true;
    this.state.gate.resolve(false);
  }
}

interface Node {
  prefix: Uint8Array;
  layer: string;
}

/** A directory layer storing its nodes under `nodePrefix` and allocating under `content`. */
class SimDirectoryLayer implements FdbDirectoryLayer<SimTransaction> {
  constructor(readonly nodePrefix: Uint8Array, readonly contentPrefix: Uint8Array) {}

  #nodeKey(path: string[]): Buffer {
    return Buffer.from(concatBytes(this.nodePrefix, pack(path)));
  }

  async #find(tn: SimTransaction, path: string[]): Promise<Node | undefined> {
    const raw = await tn.get(this.#nodeKey(path));
    if (raw === undefined) return undefined;
    const [prefix, layer] = unpack(bytes(raw)) as [Uint8Array, string];
    return { prefix, layer };
  }

  async #create(tn: SimTransaction, path: string[], layer: string): Promise<Node> {
    // The allocator's counter sorts before every node key (integers before strings).
    const counterKey = Buffer.from(concatBytes(this.nodePrefix, pack([0])));
    const n = readInt64LE(await tn.get(counterKey)) + 1n;
    tn.set(counterKey, Buffer.from(int64LE(n)));
    const prefix = concatBytes(this.contentPrefix, pack([n]));
    const used = await tn.getRangeAll(Buffer.from(prefix), Buffer.from(strinc(prefix)), {
      limit: 1,
    });
    if (used.length > 0) {
      throw new SimDirectoryError(
        "The database has keys stored at the prefix chosen by the automatic prefix allocator",
      );
    }
    tn.set(this.#nodeKey(path), Buffer.from(pack([prefix, layer])));
    return { prefix, layer };
  }

  async createOrOpen(
    tn: SimTransaction,
    path: string[],
    layer?: "partition",
  ): Promise<FdbDirectory<SimTransaction>> {
    if (path.length === 0) throw new SimDirectoryError("The root directory cannot be opened.");
    for (let i = 1;; i++) {
      const sub = path.slice(0, i);
      const last = i === path.length;
      const node = await this.#find(tn, sub) ??
        await this.#create(tn, sub, last ? layer ?? "" : "");
      const dir = new SimDirectory(this, sub, node);
      if (last) {
        if (layer !== undefined && node.layer !== layer) {
          throw new SimDirectoryError("The directory was created with an incompatible layer.");
        }
        return dir;
      }
      // A partition on the way takes over the rest of the path.
      if (dir.isPartition()) return dir.createOrOpen(tn, path.slice(i), layer);
    }
  }

  async removeIfExists(tn: SimTransaction, path: string[]): Promise<boolean> {
    if (await this.#find(tn, path) === undefined) return false;
    const begin = this.#nodeKey(path);
    const end = Buffer.from(strinc(begin));
    // The directory and its subdirectories: their nodes, then their contents.
    for (const [, value] of await tn.getRangeAll(begin, end)) {
      const [prefix] = unpack(bytes(value)) as [Uint8Array];
      tn.clearRange(Buffer.from(prefix), Buffer.from(strinc(prefix)));
    }
    tn.clearRange(begin, end);
    return true;
  }
}

class SimDirectory implements FdbDirectory<SimTransaction> {
  readonly content: { readonly prefix: Buffer };
  readonly #partition: SimDirectoryLayer | undefined;

  constructor(readonly owner: SimDirectoryLayer, readonly path: string[], node: Node) {
    this.content = { prefix: Buffer.from(node.prefix) };
    // As in FoundationDB, a partition keeps its own directory layer inside its prefix, with
    // its nodes under prefix ‖ 0xfe.
    this.#partition = node.layer === "partition"
      ? new SimDirectoryLayer(concatBytes(node.prefix, new Uint8Array([0xfe])), node.prefix)
      : undefined;
  }

  isPartition(): boolean {
    return this.#partition !== undefined;
  }

  createOrOpen(
    tn: SimTransaction,
    path: string[],
    layer?: "partition",
  ): Promise<FdbDirectory<SimTransaction>> {
    return this.#partition !== undefined
      ? this.#partition.createOrOpen(tn, path, layer)
      : this.owner.createOrOpen(tn, [...this.path, ...path], layer);
  }
}

/** Options of {@link createSimulation}. */
export interface SimulationOptions {
  /** Highest API version the simulated client library accepts. @default 720 */
  maxApiVersion?: number;
}

/** A simulated cluster with its bindings and a driver over them. */
export interface Simulation {
  /** The simulated bindings. */
  readonly bindings: FdbApi<SimTransaction>;
  /** A driver over them (its own API-version selection, as a fresh process would have). */
  readonly driver: FdbDriver;
  /** The store behind the simulated cluster, keys as FoundationDB would hold them. */
  readonly memory: Backend;
  /** Codes passed to `on_error`, in order. */
  readonly onErrorCodes: readonly number[];
  /** Transactions created so far. */
  readonly transactions: number;
  /** Options of the last transaction created. */
  readonly lastOptions: FdbTransactionOptions | undefined;
  /** Makes the next commit fail with FoundationDB error `code`, applied or not. */
  failNextCommit(code: number, applied?: boolean): void;
  /** Whether the cluster answers (a read version) at all. */
  setReachable(reachable: boolean): void;
}

/** Creates a simulated cluster and bindings. */
export function createSimulation(options: SimulationOptions = {}): Simulation {
  const cluster = new Cluster();
  const maxApiVersion = options.maxApiVersion ?? 720;
  let selected: number | undefined;
  const bindings: FdbApi<SimTransaction> = {
    setAPIVersion(version: number): void {
      // Worded as npm:foundationdb words it, which the driver recognizes.
      if (selected !== undefined && selected !== version) {
        throw new Error(`foundationdb already initialized with API version ${selected}`);
      }
      if (version > maxApiVersion) throw fdbError(2203);
      selected = version;
    },
    open(clusterFile?: string): FdbDatabase<SimTransaction> {
      if (clusterFile === "/nonexistent/fdb.cluster") throw fdbError(1515);
      return {
        rawCreateTransaction: (opts) => SimTransaction.begin(cluster, opts),
        close: () => {},
      };
    },
    FDBError: SimFDBError,
    DirectoryError: SimDirectoryError,
    directory: new SimDirectoryLayer(new Uint8Array([0xfe]), new Uint8Array(0)),
  };
  return {
    bindings,
    driver: createDriver(() => Promise.resolve(bindings)),
    memory: cluster.memory,
    get onErrorCodes() {
      return cluster.onErrorCodes;
    },
    get transactions() {
      return cluster.transactions;
    },
    get lastOptions() {
      return cluster.lastOptions;
    },
    failNextCommit(code, applied = false) {
      cluster.injected.push({ code, applied });
    },
    setReachable(reachable) {
      cluster.unreachable = !reachable;
    },
  };
}
