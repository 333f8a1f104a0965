/**
 * Instances: `start` and the `ServerRef` it returns. An instance sends messages, runs the
 * priority and info handlers sent to it, and (when consuming) takes messages from the durable
 * queue, runs `handleLocked` for the locks it takes, heartbeats its presence and collects
 * garbage (abandoned reply slots, old enqueue records, stale presence).
 *
 * @module
 */

import * as v from "valibot";
import { errorMessage } from "../describe.ts";
import { StateConflictError } from "./merge.ts";
import {
  compareBytes,
  concatBytes,
  equalBytes,
  fromHex,
  keyAfter,
  readInt64LENumber,
  strinc,
  toHex,
} from "../bytes.ts";
import { subtreeEnd } from "../tuple.ts";
import { TickedList } from "../ticked.ts";
import {
  BackendUnavailableError,
  CallTimeoutError,
  CodecError,
  DeadLetterError,
  DGenError,
  LockLostError,
  RetriesExhaustedError,
  ServerGoneError,
  ServerStoppedError,
  ValidationError,
} from "../errors.ts";
import { createStateCodec } from "../codec/state.ts";
import { pid, runtimeName, type TimerHandle, unrefTimer } from "../runtime/process.ts";
import type { Transaction, TransactOptions, Watch } from "../storage/types.ts";
import { committedStamp, type HasCommittedStamp, hasCommittedStamp } from "../storage/common.ts";
import { type Tenant, tenantSchema } from "../tenant.ts";
import { parse, safeParseUser, toIssues } from "../validate.ts";
import {
  bumpChange,
  cachedState,
  checkLockedResult,
  checkState,
  clearReplySlot,
  consumeStep,
  enqueue,
  failedAttempt,
  HandlerFailure,
  isNewerState,
  isPoison,
  loadState,
  loadStoredState,
  lockedFailure,
  lockedRelease,
  type LockedWork,
  lockedWork,
  lockFrom,
  metaRecord,
  nothingStored,
  openReplySlot,
  type QueueEntry,
  queueLength,
  readLock,
  readMeta,
  readReplyValue,
  readRequest,
  recordFailure,
  renewLock,
  runHandler,
  type Runtime,
  takeOverInline,
  TxEffects,
  writeBack,
  writeRequest,
  writeState,
  writtenElsewhere,
} from "./core.ts";
import {
  type AnyServerDefinition,
  type CallArg,
  type CallName,
  type CallReply,
  type CastArg,
  type CastName,
  type DeadLetterMessage,
  type HandlerResult,
  type InfoOf,
  type InitArgsOf,
  isDefinition,
  type LockedEvent,
  type MessageArgs,
} from "./definition.ts";
import { crashPoint } from "./crashpoints.ts";
import { serverIdSchema, ServerKeys } from "./keys.ts";
import {
  decodeDeadLetter,
  decodePresence,
  decodeReplySlot,
  encodeRecord,
  type Envelope,
  HEARTBEAT_INTERVAL,
  isLive,
  type LockRecord,
  type StoredError,
  timeOrderedId,
} from "./records.ts";
import { encodedSize } from "../codec/value.ts";

/**
 * Thrown inside an inline-cast attempt to abandon it (nothing commits): the cast at `index`
 * must go through the queue (with the `error` its handler threw, if it `threw`). Not an
 * `Error`: no stack to capture on this path.
 */
class QueueFrom {
  constructor(readonly index: number, readonly threw: boolean, readonly error: unknown) {}
}

/**
 * Test hooks (not exported from mod.ts): simulate an instance whose process froze or died, as
 * seen from the backend.
 */
export const TEST_HOOKS: unique symbol = Symbol("dgen.testHooks");

/** What {@link TEST_HOOKS} controls. */
export interface TestHooks {
  /** When false, lock leases are not renewed (a frozen holder). */
  renewLeases: boolean;
  /** Makes every further transaction of the instance fail, and stops its loops and timers. */
  crash(): void;
  /**
   * Runs one heartbeat now, as the instance's timer would (every GC_EVERY-th of a consuming
   * instance also collects garbage); resolves once its transaction settled.
   */
  beat(): Promise<void>;
}

/** The test hooks of an instance. */
export function testHooks(ref: ServerRef): TestHooks {
  return (ref as unknown as { [TEST_HOOKS]: TestHooks })[TEST_HOOKS];
}

/** Consuming instances collect garbage every this many heartbeats. */
const GC_EVERY = 6;
/**
 * Conflict retries of one consume transaction before the consumer steps back (a consumer that
 * keeps losing the race for the head of the queue backs off instead).
 */
const CONSUME_RETRIES = 3;
/**
 * Steps in a row that found the state written by another instance (a cache miss, or an idle
 * queue another instance drained) after which a consumer is a standby: it looks at the queue
 * every {@link STANDBY_LOOK}–2× that ms and takes a message only when the head has not moved
 * since its last look (the active consumer stalled or died). Lost races alone do not count:
 * on PostgreSQL an active consumer loses them to enqueues.
 */
const STANDBY_AFTER = 3;
const STANDBY_LOOK = 25;
/** Most casts enqueued in one transaction, and their most argument bytes. */
const CAST_BATCH = 1_000;
/**
 * A cast flush's transaction options: more retries than the default 100. A cast has no timeout,
 * and on PostgreSQL one server's flushes from several instances conflict with each other and
 * with its consume steps; with 100, whole flushes failed with RetriesExhaustedError.
 */
const CAST_TX = { maxRetries: 1_000 };
const CAST_BATCH_BYTES = 2_000_000;
/** What an inline call's transaction did. */
type InlineOutcome =
  | { kind: "replied"; value: unknown }
  | { kind: "queued"; watch: Watch }
  | { kind: "locked"; watch: Watch; work: LockedWork }
  | { kind: "stopped"; reason: string };

/**
 * An inline call's transaction awaited until the call's deadline (see Instance#transact): past
 * it, the caller gets a CallTimeoutError while the transaction goes on.
 */
class CallDeadline {
  /** Rejects the caller's promise (set when the transaction starts). */
  settle: (error: unknown) => void = IGNORE;
  /** The deadline passed before the transaction settled. */
  expired = false;
  /** Links of the instance's list of calls in flight (a list, not a Set: no hashing). */
  watchPrev: CallDeadline | undefined = undefined;
  watchNext: CallDeadline | undefined = undefined;

  constructor(
    readonly deadlineAt: number,
    readonly name: string,
    readonly timeout: number,
    /** The call, queued with its failed attempt if its handler fails after the deadline. */
    readonly message: Envelope,
  ) {}
}

/** A cast (`many` null) or a castMany (its messages) waiting in an instance's send queue. */
interface Send {
  m: Envelope;
  many: readonly Envelope[] | null;
  size: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

const IGNORE = (): void => {};

/** What an action that did not settle within actionTimeout counts as (never seen outside). */
const ACTION_TIMED_OUT: unique symbol = Symbol("action timed out");

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return (typeof x === "object" && x !== null || typeof x === "function") &&
    typeof (x as { then?: unknown }).then === "function";
}

/** How often the deadlines of inline calls in flight are checked, ms. */
const INLINE_TICK_MS = 10;

/** Microtask turns a flush of casts waits for casts made in the same burst (see #flushCasts). */
const CAST_JOIN_TURNS = 4;
/** Enqueue records are kept this long for idempotent retries, ms. */
const REQUEST_TTL = 10 * 60_000;
/** A reply slot answered but never read is removed after this long, ms. */
const ANSWERED_SLOT_TTL = 10 * 60_000;
/**
 * How long answered reply slots wait to be cleared. A call made meanwhile clears them in its
 * own commit; otherwise they are cleared together when this runs out. Clearing each slot as its
 * reply came back cost a commit (an fsync on SQLite) per call: a cross-process call's p50 on
 * Deno went from 1.76-2.03 ms to 1.35-1.52 ms without it (Bun 1.14-1.21 to 0.85-0.90 ms).
 */
const SLOT_CLEAR_DELAY = 50;
/** At most this many slot clears ride on one call's commit or one clearing commit. */
const SLOT_CLEAR_BATCH = 500;

/**
 * Options of {@link start}.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, reply, start, type StartOptions } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { value: (_: undefined, _from, n: number) => reply(n, n) },
 * });
 * const options: StartOptions = { tenant: await openTenant(openMemoryBackend(), "demo"), id: "c1" };
 * const ref = await start(Counter, [], options);
 * console.log(ref.id); // "c1"
 * await ref.stop();
 * await options.tenant.backend.close();
 * ```
 */
export interface StartOptions {
  /** The tenant the server lives in. */
  tenant: Tenant;
  /** The server id. @default the definition's name */
  id?: string;
  /** Whether this instance takes messages from the durable queue. @default true */
  consume?: boolean;
  /** Replace an existing state with `init`'s. @default false */
  reset?: boolean;
  /** Keep the decoded state between transactions (validated by its stored version). @default true */
  cache?: boolean;
  /** Messages applied per consume transaction. @default 1 */
  batchSize?: number;
  /**
   * Failed attempts after which a message is dead-lettered; `Infinity` retries a failing
   * message for ever (it then blocks the messages behind it). @default 5
   */
  deadLetterThreshold?: number;
  /** Lease of the lock while `handleLocked` runs, ms; renewed at a third of it. @default 10000 */
  lockLease?: number;
  /**
   * Time limit of each action and of each `handleDeadLetter` run, ms, or `Infinity`. One that
   * has not settled by then counts as failed (`stats.actionErrors`; the message's remaining
   * actions are skipped) and the instance goes on; it is not cancelled. @default 30000
   */
  actionTimeout?: number;
}

/**
 * Options of `ServerRef.call`.
 *
 * @example
 * ```ts
 * import { type CallOptions, defineServer, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { value: (_: undefined, _from, n: number) => reply(n, n) },
 * });
 * const ref = await start(Counter, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * const options: CallOptions = { timeout: 1_000 };
 * console.log(await ref.call("value", undefined, options)); // 0
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export interface CallOptions {
  /** Milliseconds to wait for the reply, or `Infinity`. @default 5000 */
  timeout?: number;
}

/**
 * A dead-lettered message as listed by `ServerRef.deadLetters.list`.
 *
 * @example
 * ```ts
 * import { type DeadLetter, defineServer, noreply, openMemoryBackend, openTenant, start } from "../../mod.ts";
 * const Picky = defineServer({
 *   name: "picky",
 *   init: () => 0,
 *   handleCast: {
 *     take: (n: number, s: number) => {
 *       if (n < 0) throw new Error("negative");
 *       return noreply(s + n);
 *     },
 *   },
 * });
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(Picky, [], { tenant, deadLetterThreshold: 1 });
 * await ref.cast("take", -1); // its first failed attempt reaches the threshold
 * const letters: DeadLetter[] = await ref.deadLetters.list();
 * console.log(letters[0]!.name, letters[0]!.error.message); // "take" "negative"
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
export interface DeadLetter {
  /** Key to pass to `requeue`. */
  key: string;
  /** `"call"` or `"cast"`. */
  kind: "call" | "cast";
  /** Message name. */
  name: string;
  /** Message argument. */
  arg: unknown;
  /** Attempts made. */
  attempts: number;
  /** The last failure. */
  error: StoredError;
  /** When it was dead-lettered, ms since the epoch. */
  at: number;
}

/**
 * The dead-letter list of a server.
 *
 * `list` reads in pages, each in its own read-only transaction and bounded by count and bytes
 * (a few MB at most, whatever the number of letters), so it stays within the backend's
 * transaction limits. A listing of several pages is therefore not one snapshot: a letter
 * requeued or purged while it reads may be missing, and letters dead-lettered after it began
 * are left out (they sort after it). `purge` reads no letters.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, openMemoryBackend, openTenant, start } from "../../mod.ts";
 * const Picky = defineServer({
 *   name: "picky",
 *   init: () => 0,
 *   handleCast: {
 *     take: (n: number, s: number) => {
 *       if (n < 0) throw new Error("negative");
 *       return noreply(s + n);
 *     },
 *   },
 * });
 * const ref = await start(Picky, [], {
 *   tenant: await openTenant(openMemoryBackend(), "demo"),
 *   deadLetterThreshold: 1,
 * });
 * for (const n of [-1, -2, -3]) await ref.cast("take", n);
 * // One page at a time: pass the last key of a page as `after` to get the next.
 * const first = await ref.deadLetters.list({ limit: 2 });
 * const rest = await ref.deadLetters.list({ limit: 2, after: first.at(-1)!.key });
 * console.log(first.map((d) => d.arg), rest.map((d) => d.arg)); // [-1, -2] [-3]
 * console.log((await ref.deadLetters.list()).length, await ref.deadLetters.purge()); // 3 3
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export interface DeadLetters {
  /**
   * The dead letters, oldest first: all of them, or at most `options.limit`, starting after
   * the letter `options.after` (a `key` from an earlier `list`, which need not still exist).
   * Read in pages of bounded size, each in its own transaction (see {@link DeadLetters}).
   * Throws `ValidationError` for a `limit` that is not a positive integer or an `after` that is
   * not a dead-letter key.
   */
  list(options?: { limit?: number; after?: string }): Promise<DeadLetter[]>;
  /** Puts a dead letter back at the tail of the queue with its attempts reset; false if gone. */
  requeue(key: string): Promise<boolean>;
  /**
   * Removes every dead letter, without reading them; resolves with how many it removed (read
   * from the dead-letter count in the same transaction: exact).
   */
  purge(): Promise<number>;
}

/**
 * Counters of one instance.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, openMemoryBackend, openTenant, start } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCast: { bump: (by: number, n: number) => noreply(n + by) },
 * });
 * const ref = await start(Counter, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * await ref.cast("bump", 2);
 * console.log(ref.stats.processed, ref.stats.deadLettered); // 1 0
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export interface InstanceStats {
  /** Standard messages this instance applied. */
  processed: number;
  /**
   * Actions and `handleDeadLetter` runs that threw or did not settle within `actionTimeout`.
   */
  actionErrors: number;
  /** Messages this instance dead-lettered. */
  deadLettered: number;
  /** Write-backs refused because the lock's lease was lost. */
  lockLost: number;
}

/**
 * A live instance of a durable server, made by {@link start}.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, openMemoryBackend, openTenant, reply, type ServerRef, start } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { value: (_: undefined, _from, n: number) => reply(n, n) },
 *   handleCast: { bump: (by: number, n: number) => noreply(n + by) },
 * });
 * const ref: ServerRef<typeof Counter> = await start(Counter, [], {
 *   tenant: await openTenant(openMemoryBackend(), "demo"),
 * });
 * await ref.cast("bump", 5);
 * console.log(await ref.call("value")); // 5
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export interface ServerRef<D extends AnyServerDefinition = AnyServerDefinition> {
  /** The server id. */
  readonly id: string;
  /** The tenant. */
  readonly tenant: Tenant;
  /** This instance's id. */
  readonly instance: string;
  /** Counters of this instance. */
  readonly stats: Readonly<InstanceStats>;
  /** Resolves with the reason when this instance stops. */
  readonly stopped: Promise<string>;
  /** Calls the server through its durable queue; resolves with the reply after commit. */
  call<K extends CallName<D>>(
    name: K,
    ...args: MessageArgs<CallArg<D, K>, CallOptions>
  ): Promise<CallReply<D, K>>;
  /** Casts to the server; resolves once the message is durably enqueued. */
  cast<K extends CastName<D>>(name: K, ...args: MessageArgs<CastArg<D, K>, never>): Promise<void>;
  /** Enqueues several casts atomically (all or none), in order. */
  castMany(messages: ReadonlyArray<CastTuple<D>>): Promise<void>;
  /** Runs a call handler now, on this instance, skipping the queue and the lock. */
  priorityCall<K extends CallName<D>>(
    name: K,
    ...args: MessageArgs<CallArg<D, K>, never>
  ): Promise<CallReply<D, K>>;
  /** Runs a cast handler now, on this instance, skipping the queue and the lock. */
  priorityCast<K extends CastName<D>>(
    name: K,
    ...args: MessageArgs<CastArg<D, K>, never>
  ): Promise<void>;
  /** Runs `handleInfo` now, on this instance. */
  send(info: InfoOf<D>): Promise<void>;
  /** Stops this instance; the durable server and other instances live on. */
  stop(): Promise<void>;
  /** Erases the durable server (state, queue, dead letters, reply slots, lock) and stops. */
  kill(): Promise<void>;
  /** The server's dead letters. */
  readonly deadLetters: DeadLetters;
}

/**
 * One cast of `castMany`: `[name, arg]`.
 *
 * @example
 * ```ts
 * import { type CastTuple, defineServer, noreply, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { value: (_: undefined, _from, n: number) => reply(n, n) },
 *   handleCast: { bump: (by: number, n: number) => noreply(n + by) },
 * });
 * const casts: CastTuple<typeof Counter>[] = [["bump", 1], ["bump", 2]];
 * const ref = await start(Counter, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * await ref.castMany(casts);
 * console.log(await ref.call("value")); // 3
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export type CastTuple<D extends AnyServerDefinition> = {
  [K in CastName<D>]: undefined extends CastArg<D, K> ? readonly [K, CastArg<D, K>?]
    : readonly [K, CastArg<D, K>];
}[CastName<D>];

const positiveInt = v.pipe(v.number(), v.integer(), v.minValue(1));
const startOptionsSchema = v.strictObject({
  tenant: tenantSchema,
  id: v.optional(serverIdSchema),
  consume: v.optional(v.boolean()),
  reset: v.optional(v.boolean()),
  cache: v.optional(v.boolean()),
  batchSize: v.optional(v.pipe(positiveInt, v.maxValue(1000))),
  deadLetterThreshold: v.optional(
    v.union([positiveInt, v.literal(Infinity)], "Expected a positive integer or Infinity"),
  ),
  // At most 2^31 - 1 ms (about 24.8 days): the lease is a timer's delay, and longer ones
  // overflow to 1 ms (the lease was then renewed every millisecond).
  lockLease: v.optional(v.pipe(positiveInt, v.minValue(50), v.maxValue(2 ** 31 - 1))),
  // A timer's delay too (see lockLease), unless Infinity.
  actionTimeout: v.optional(
    v.union(
      [v.pipe(positiveInt, v.maxValue(2 ** 31 - 1)), v.literal(Infinity)],
      "Expected a positive integer of at most 2147483647 (ms), or Infinity",
    ),
  ),
});
const timeoutSchema = v.optional(
  v.strictObject({
    timeout: v.optional(
      v.union([v.pipe(v.number(), v.minValue(0), v.maxValue(2 ** 31 - 1)), v.literal(Infinity)]),
    ),
  }),
  {},
);

/**
 * Starts an instance of a durable server. The first start of a server id stores `init`'s
 * state; later starts run `init` but keep the stored state unless `reset` is set (a state of
 * an older `version` is migrated).
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { increment: (_: undefined, _from, n: number) => reply(n + 1, n + 1) },
 * });
 * const backend = openMemoryBackend();
 * const ref = await start(Counter, [], { tenant: await openTenant(backend, "demo") });
 * console.log(await ref.call("increment")); // 1
 * await ref.stop();
 * await backend.close();
 * ```
 */
export async function start<D extends AnyServerDefinition>(
  definition: D,
  args: InitArgsOf<D>,
  options: StartOptions,
): Promise<ServerRef<D>> {
  if (!isDefinition(definition)) {
    throw new ValidationError([{
      path: "definition",
      message: "Expected a value made by defineServer",
    }]);
  }
  if (!Array.isArray(args)) {
    throw new ValidationError([{ path: "args", message: "Expected an array of init arguments" }]);
  }
  const opts = parse(startOptionsSchema, options, "options");
  const instance = new Instance(definition, opts);
  await instance.init(args);
  return instance as unknown as ServerRef<D>;
}

/**
 * Room the runtime's longest fixed key needs past a reply slot's key: the reply value's own
 * prefix and the root of the value the codec writes under it (a few bytes of path and a chunk
 * number). A state's deeper keys are the codec's to check (a CodecError names their path).
 */
const REPLY_VALUE_ROOM = 16;

/**
 * Refuses a server id whose keys would not fit the backend's key limit, before anything is
 * written: the id is in every key of the server, and its limit is in encoded bytes (1,000
 * characters of CJK text are 3,000), so the schema's length alone cannot tell.
 */
function checkIdFits(keys: ServerKeys, tenant: Tenant): void {
  const id = keys.id;
  const sample = timeOrderedId();
  const longest = Math.max(
    keys.reply(sample).length + REPLY_VALUE_ROOM,
    keys.request(sample).length,
    keys.instance(sample).length,
  );
  const limit = tenant.backend.limits.maxKeySize;
  if (longest > limit) {
    throw new ValidationError([{
      path: "options.id",
      message: `Expected an id whose keys fit this backend's ${limit}-byte keys: with this one (${
        new TextEncoder().encode(id).length
      } bytes in UTF-8) the server's longest key would be ${longest} bytes`,
    }]);
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Whether `e` says the backend was closed by its `close()`. */
function isClosedBackend(e: unknown): boolean {
  return e instanceof BackendUnavailableError && e.closed;
}

/** Waits for `watch`, `ms` (if finite) or `signal`, cancelling the watch on the way out. */
async function waitWatch(
  watch: Watch,
  ms: number,
  signal: AbortSignal,
): Promise<"fired" | "timeout" | "aborted" | "cancelled"> {
  if (signal.aborted) {
    watch.cancel();
    return "aborted";
  }
  let timer: TimerHandle | undefined;
  const onAbort = () => watch.cancel();
  signal.addEventListener("abort", onAbort, { once: true });
  const timeout = Number.isFinite(ms)
    ? new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), Math.max(0, ms)))
    : new Promise<never>(() => {});
  try {
    // A watch resolves false when cancelled: by the abort, or by its backend (closed).
    const r = await Promise.race([
      watch.promise.then((f): "fired" | "cancelled" => (f ? "fired" : "cancelled")),
      timeout,
    ]);
    if (r === "timeout") watch.cancel();
    return signal.aborted ? "aborted" : r;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", onAbort);
  }
}

function errorFromStored(e: StoredError): Error {
  if (e.code === "dead_letter") {
    // The last failure as its cause, with its code (a CodecError's "codec", a handler's own).
    const cause = e.cause === undefined ? undefined : new DGenError(e.cause.code, e.cause.message);
    return new DeadLetterError(e.message, e.attempts ?? 0, { cause });
  }
  if (e.code === "server_stopped") return new ServerStoppedError(e.message);
  if (e.code === "state_conflict" && e.path !== undefined) return new StateConflictError(e.path);
  return new DGenError(e.code, e.message);
}

class Instance {
  readonly id: string;
  readonly tenant: Tenant;
  readonly instance: string;
  readonly stats: InstanceStats = { processed: 0, actionErrors: 0, deadLettered: 0, lockLost: 0 };
  readonly stopped: Promise<string>;
  readonly deadLetters: DeadLetters;
  readonly #def: AnyServerDefinition;
  readonly #rt: Runtime;
  readonly #abort = new AbortController();
  readonly #consume: boolean;
  readonly #reset: boolean;
  readonly #actionTimeout: number;
  #resolveStopped!: (reason: string) => void;
  #state: "starting" | "running" | "stopping" | "stopped" = "starting";
  #loop: Promise<void> | undefined;
  #heartbeat: TimerHandle | undefined;
  #beats = 0;
  readonly #tasks = new Set<Promise<unknown>>();
  readonly #runningLocks = new Set<bigint>();
  #lockSeen: { token: bigint; renewals: number; at: number } | undefined;
  #misses = 0;
  /** Consume steps in a row that met another instance's state writes (see STANDBY_AFTER). */
  #foreignSteps = 0;
  #since = Date.now();
  #crashed = false;
  readonly [TEST_HOOKS]: TestHooks = {
    renewLeases: true,
    crash: () => {
      this.#crashed = true;
      this.#state = "stopped";
      clearInterval(this.#heartbeat);
      this.#abort.abort(new ServerStoppedError("crashed"));
      this.#resolveStopped("crashed");
    },
    beat: () => this.#beat() ?? Promise.resolve(),
  };

  constructor(def: AnyServerDefinition, opts: v.InferOutput<typeof startOptionsSchema>) {
    this.#def = def;
    this.tenant = opts.tenant;
    this.id = opts.id ?? def.name;
    this.instance = timeOrderedId();
    this.#consume = opts.consume ?? true;
    this.#reset = opts.reset ?? false;
    this.#actionTimeout = opts.actionTimeout ?? 30_000;
    this.stopped = new Promise((r) => this.#resolveStopped = r);
    this.#rt = {
      def,
      tenant: opts.tenant,
      id: this.id,
      instance: this.instance,
      keys: new ServerKeys(this.id, opts.tenant.prefix),
      codec: createStateCodec({ maxValueSize: opts.tenant.backend.limits.maxValueSize }),
      batchSize: opts.batchSize ?? 1,
      deadLetterThreshold: opts.deadLetterThreshold ?? 5,
      lockLease: opts.lockLease ?? 10_000,
      useCache: opts.cache ?? true,
      signal: this.#abort.signal,
      cache: undefined,
      now: () => Date.now(),
      idempotent: opts.tenant.backend.unknownCommitOutcomes !== false,
    };
    checkIdFits(this.#rt.keys, opts.tenant);
    this.deadLetters = {
      list: (options) => this.#listDeadLetters(options),
      requeue: (key) => this.#requeueDeadLetter(key),
      purge: () => this.#purgeDeadLetters(),
    };
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  async init(args: readonly unknown[]): Promise<void> {
    const rt = this.#rt;
    const initial = await this.#def.init(...args);
    checkState(rt, initial);
    await this.#transact(async (tx, effects) => {
      const meta = await readMeta(tx, rt);
      if (meta === undefined) {
        tx.set(rt.keys.meta, encodeRecord(metaRecord(rt)));
        tx.set(rt.keys.index, encodeRecord({ created: rt.now() }));
        tx.add(rt.keys.membership, 1);
        writeState(tx, rt, nothingStored(), initial, effects);
      } else if (meta.name !== rt.def.name) {
        // Another definition's handlers would run on this state (and its on ours).
        throw new ValidationError([{
          path: "definition.name",
          message:
            `Expected '${meta.name}': server '${rt.id}' of tenant '${rt.tenant.name}' was started from the definition '${meta.name}', not '${rt.def.name}' (use another id, or kill() the server first to replace it)`,
        }]);
      } else if (this.#reset) {
        // The stored state is replaced unread: not decoded, not migrated, whatever version of
        // the code wrote it, so a state that a broken migrate or a corrupt value makes
        // unreadable can still be replaced.
        tx.clearRange(rt.keys.state, subtreeEnd(rt.keys.state));
        if (meta.version !== rt.def.version) {
          tx.set(rt.keys.meta, encodeRecord(metaRecord(rt, meta.created)));
        }
        writeState(tx, rt, nothingStored(), initial, effects);
      } else if (meta.version !== rt.def.version) {
        // Migrate (loadState refuses a state written by newer code).
        const loaded = await loadState(tx, rt);
        writeState(tx, rt, loaded, loaded.state, effects);
      }
      // Otherwise the stored state wins and is not even read: a start does not contend with
      // busy consumers of the same server.
      this.#writePresence(tx);
    });
    this.#state = "running";
    this.#heartbeat = setInterval(() => this.#beat(), HEARTBEAT_INTERVAL);
    // A consuming instance keeps its process alive until stop(); a sending one does not.
    if (!this.#consume) unrefTimer(this.#heartbeat);
    if (this.#consume) this.#loop = this.#consumeLoop();
  }

  #writePresence(tx: Transaction): void {
    const now = this.#rt.now();
    tx.set(
      this.#rt.keys.instance(this.instance),
      encodeRecord({
        instance: this.instance,
        runtime: runtimeName,
        pid,
        consuming: this.#consume,
        since: this.#since,
        lastSeen: now,
      }),
    );
    bumpChange(tx, this.#rt);
  }

  #beat(): Promise<void> | undefined {
    if (this.#state !== "running") return undefined;
    this.#beats++;
    const gc = this.#consume && this.#beats % GC_EVERY === 0;
    return this.#track(
      this.#rt.tenant.backend.transact(async (tx) => {
        if (await readMeta(tx, this.#rt) === undefined) return;
        this.#writePresence(tx);
        if (gc) await this.#collectGarbage(tx);
      }).catch((e) => {
        if (e instanceof ServerGoneError) return;
        if (isClosedBackend(e)) return void this.#shutdown("backend closed");
        console.error(`dgen: heartbeat of ${this.id}/${this.instance} failed:`, e);
      }),
    );
  }

  async #collectGarbage(tx: Transaction): Promise<void> {
    const rt = this.#rt;
    const now = rt.now();
    // Enqueue records are time-ordered: one range clear drops the old ones.
    tx.clearRange(rt.keys.requests, rt.keys.request(timeOrderedId(now - REQUEST_TTL)));
    const live = new Set<string>();
    const stale: Uint8Array[] = [];
    for (const row of await tx.getRange(rt.keys.instances, strinc(rt.keys.instances))) {
      const p = decodePresence(row.value, row.key);
      if (!isLive(p, now)) stale.push(row.key);
      else live.add(p.instance);
    }
    for (const key of stale) tx.clear(key);
    if (stale.length > 0) bumpChange(tx, rt);
    const slots = await tx.getRange(rt.keys.replies, rt.keys.reply(timeOrderedId(now - 60_000)), {
      limit: 500,
    });
    for (const row of slots) {
      // Only slot headers (`reply(callId)`), not their value chunks, decode as slots.
      let slot;
      try {
        slot = decodeReplySlot(row.value, row.key);
      } catch {
        continue;
      }
      // A slot with a deadline is its caller's until a minute past it, however long the caller
      // has not been seen (a paused process may come back and read its reply); one without is
      // abandoned when its caller is no longer present.
      const abandoned = slot.status === "pending"
        ? slot.deadline !== null ? slot.deadline < now - 60_000 : !live.has(slot.caller)
        : slot.at < now - ANSWERED_SLOT_TTL;
      if (abandoned) tx.clearRange(row.key, subtreeEnd(row.key));
    }
  }

  async stop(): Promise<void> {
    if (this.#state === "stopped" || this.#state === "stopping") return await this.#finishing();
    await this.#shutdown("stopped");
  }

  #finishing(): Promise<void> {
    return this.stopped.then(() => {});
  }

  async #shutdown(reason: string, erase = false): Promise<void> {
    if (this.#state === "stopping" || this.#state === "stopped") return await this.#finishing();
    this.#state = "stopping";
    clearInterval(this.#heartbeat);
    this.#flushSlotClears();
    this.#abort.abort(
      new ServerStoppedError(`Instance ${this.instance} of '${this.id}' stopped: ${reason}`),
    );
    await this.#loop;
    // Calls and priority messages made through this instance finish first: none of its
    // handlers runs, and nothing of it commits, after stop() resolves.
    await this.#quiesced();
    await Promise.allSettled([...this.#tasks]);
    // And the actions and dead-letter hooks in flight (each within actionTimeout).
    await this.#after;
    if (!erase) {
      try {
        await this.#rt.tenant.backend.transact((tx) => {
          tx.clear(this.#rt.keys.instance(this.instance));
          bumpChange(tx, this.#rt);
        });
      } catch (e) {
        // Closed: the presence expires by itself (PRESENCE_TTL).
        if (!isClosedBackend(e)) {
          console.error(`dgen: could not remove presence of ${this.instance}:`, e);
        }
      }
    }
    this.#state = "stopped";
    this.#resolveStopped(reason);
  }

  async kill(): Promise<void> {
    this.#checkRunning();
    const rt = this.#rt;
    await rt.tenant.backend.transact(async (tx) => {
      // The last fencing token outlives the server: a holder of a lock taken before the kill
      // must still lose against the holder of any lock taken after it (tokens only grow).
      const fence = await tx.get(rt.keys.fence);
      tx.clearRange(rt.keys.root, subtreeEnd(rt.keys.root));
      if (fence !== undefined) tx.set(rt.keys.fence, fence);
      tx.clear(rt.keys.index);
      tx.add(rt.keys.membership, 1);
    });
    await this.#shutdown("killed", true);
  }

  #checkRunning(): void {
    if (this.#state !== "running") {
      throw new ServerStoppedError(`Instance ${this.instance} of '${this.id}' is ${this.#state}`);
    }
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#tasks.add(p);
    p.finally(() => this.#tasks.delete(p)).catch(() => {});
    return p;
  }

  // ---- transactions and their aftermath ----------------------------------------------------

  /**
   * Runs a body in a transaction with fresh effects per attempt; after commit, updates the
   * cache, settles, and queues its dead-letter hooks and actions on the instance's chain (see
   * #queueAfter): the caller is answered at commit, not after them. With `deadline` (an inline
   * call's), the promise rejects with a CallTimeoutError once the deadline passes, and the
   * transaction goes on: if it commits, what the call left to do is still done (see #carryOut).
   */
  #transact<T>(
    body: (tx: Transaction, effects: TxEffects) => Promise<T>,
    options?: TransactOptions,
    deadline?: CallDeadline,
    call = false,
  ): Promise<{ value: T; effects: TxEffects; attempts: number }> {
    // Made by each attempt: the last one's are the committed transaction's.
    let effects: TxEffects | undefined;
    let attempts = 0;
    // A call's retries hold this instance's cast flushes and consume steps (see #takeTurn).
    let turn: (() => void) | undefined;
    // The stamp of a state write: read from the committed transaction where the backend
    // allows it, else asked for before the commit (an attempt that fails to commit rejects its
    // promise; only the last one is awaited).
    let stamp: Promise<Uint8Array> | undefined;
    let stamped: HasCommittedStamp | undefined;
    this.#inFlight++;
    const committed = this.#rt.tenant.backend.transact(async (tx) => {
      if (this.#crashed) throw new ServerStoppedError("Instance crashed (test hook)");
      if (++attempts > 1) {
        this.#forgetChangedCache();
        if (call && turn === undefined) turn = this.#holdOthers();
      }
      effects = new TxEffects();
      const r = await body(tx, effects);
      stamp = stamped = undefined;
      if (effects.written && hasCommittedStamp(tx)) stamped = tx;
      else if (effects.written) (stamp = tx.getVersionstamp()).catch(() => {});
      return r;
    }, options);
    // One promise, not an async function around the backend's: a deadline settles it without
    // another layer (a wrapper around it cost 6-13% of a memory-backend call).
    return new Promise((resolve, reject) => {
      if (deadline !== undefined) {
        deadline.settle = reject;
        this.#deadlines.add(deadline);
      }
      const fail = (e: unknown) => {
        this.#forgetChangedCache();
        if (deadline === undefined) return reject(e);
        // Nothing committed, and the caller has gone; a handler's failure still counts.
        if (deadline.expired) return this.#lateFailure(deadline, e);
        this.#dropDeadline(deadline);
        reject(e);
      };
      committed.then((value) => {
        // Settled at its commit, before its actions run: an action may stop this instance,
        // and stop() waits for the transactions in flight.
        this.#settled();
        turn?.();
        const version = stamped?.[committedStamp]() ?? stamp;
        const done = () => {
          const e = effects!;
          if (deadline?.expired) this.#carryOutLate(value as InlineOutcome, deadline);
          else {
            if (deadline !== undefined) this.#dropDeadline(deadline);
            resolve({ value, effects: e, attempts });
          }
          if (e.deadLetters.length !== 0 || e.actions.length !== 0) this.#queueAfter(e);
        };
        // The common case (no version to wait for) ends without another await.
        const more = this.#updateCache(effects!, version);
        if (more === undefined) done();
        else more.then(done, fail);
      }, (e) => {
        this.#settled();
        turn?.();
        fail(e);
      });
    });
  }

  /**
   * Calls of this instance whose transaction lost a race and is being retried. Its own cast
   * flushes and consume steps let them go first (see #takeTurn): they touch the same keys,
   * and on a backend where a stream of them commits back to back (PostgreSQL: every one is
   * stamped) a call could lose every race until the stream paused.
   */
  readonly #retryingCalls = new Set<Promise<void>>();

  /** Registers a retrying call; the returned function ends its turn. */
  #holdOthers(): () => void {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#retryingCalls.add(promise);
    return () => {
      this.#retryingCalls.delete(promise);
      resolve();
    };
  }

  /**
   * Before a cast flush's or a consume step's transaction: waits for the calls retrying now to
   * settle (committed or failed; each is bounded by its retry budget). Only those: calls that
   * start retrying meanwhile wait for the next turn, so a stream of calls cannot starve the
   * casts either. Nothing retrying, nothing awaited.
   */
  #takeTurn(): Promise<unknown> | undefined {
    if (this.#retryingCalls.size === 0) return undefined;
    return Promise.all(this.#retryingCalls);
  }

  /** Transactions of this instance in flight (see #transact), and who waits for none. */
  #inFlight = 0;
  #drained: (() => void) | undefined;

  #settled(): void {
    if (--this.#inFlight === 0 && this.#drained !== undefined) {
      const drained = this.#drained;
      this.#drained = undefined;
      drained();
    }
  }

  /** Resolves once no transaction of this instance is in flight (undefined if none is). */
  #quiesced(): Promise<void> | undefined {
    if (this.#inFlight === 0) return undefined;
    return new Promise<void>((resolve) => this.#drained = resolve);
  }

  /**
   * After an attempt that did not commit: its handler may have changed the cached state in
   * place (a Map it set), so a state that can be changed so is read again from storage.
   */
  #forgetChangedCache(): void {
    const cache = this.#rt.cache;
    if (cache !== undefined && this.#rt.codec.isMutable(cache.stored.state)) {
      this.#rt.cache = undefined;
    }
  }

  /**
   * Inline calls in flight with a deadline, checked every INLINE_TICK_MS while there are any:
   * the wait of those past it ends.
   */
  readonly #deadlines = new TickedList<CallDeadline>(INLINE_TICK_MS, Date.now, (d, now) => {
    if (now < d.deadlineAt) return;
    const settle = d.settle;
    this.#dropDeadline(d);
    d.expired = true;
    settle(
      new CallTimeoutError(
        `Call '${d.name}' to '${this.id}' timed out after ${d.timeout} ms (it may still be handled later)`,
      ),
    );
  }, false);

  #dropDeadline(d: CallDeadline): void {
    this.#deadlines.remove(d);
    d.settle = IGNORE;
  }

  /**
   * What an inline call committed after its caller timed out: carried out, and its reply slot
   * (queued behind a busy queue, or waiting for `handleLocked`) cleared, since nobody waits
   * for it; the reply that comes later is dropped, as for a caller that timed out waiting.
   */
  #carryOutLate(outcome: InlineOutcome, deadline: CallDeadline): void {
    this.#carryOut(outcome);
    if (outcome.kind === "queued" || outcome.kind === "locked") {
      outcome.watch.cancel();
      this.#clearSlotLater(deadline.message.callId!);
    }
  }

  /**
   * Does what a committed inline call left to do (run the lock it took, stop the instance),
   * whether its caller still waits or has timed out.
   */
  #carryOut(outcome: InlineOutcome): void {
    if (outcome.kind === "locked") this.#track(this.#runLocked(outcome.work));
    else if (outcome.kind === "stopped") void this.#shutdown(outcome.reason);
  }

  /** Updates the state cache after a commit; a promise if its version is still to come. */
  #updateCache(
    effects: TxEffects,
    version: Uint8Array | Promise<Uint8Array> | undefined,
  ): Promise<void> | undefined {
    if (version !== undefined && !(version instanceof Uint8Array)) {
      return version.then((v) => this.#updateCache(effects, v));
    }
    const rt = this.#rt;
    if (effects.written && version) {
      if (!rt.cache || compareBytes(version, rt.cache.version) > 0) {
        rt.cache = { version, stored: effects.written };
      }
    } else if (effects.readVersion && effects.observed) {
      if (!rt.cache || compareBytes(effects.readVersion, rt.cache.version) > 0) {
        rt.cache = { version: effects.readVersion, stored: effects.observed };
      }
    }
    return undefined;
  }

  /**
   * The after-commit work of this instance (dead-letter hooks, actions) in flight: one chain,
   * so the actions of successive transactions run one after another, never interleaved
   * (whether the consumer, an inline call or a priority message committed them). Undefined
   * when there is none. It never rejects. The consumer waits for it after each of its commits
   * (a slow action slows consumption, as in gen_server); callers are answered at commit and do
   * not wait; stop() waits for it.
   */
  #after: Promise<void> | undefined;

  /** Queues a committed transaction's dead-letter hooks and actions on #after. */
  #queueAfter(effects: TxEffects): void {
    this.stats.deadLettered += effects.deadLetters.length;
    const prev = this.#after;
    const run = prev === undefined
      ? this.#afterCommit(effects)
      : prev.then(() => this.#afterCommit(effects));
    const tail: Promise<void> = run.then(
      () => {
        if (this.#after === tail) this.#after = undefined;
      },
      (e) => {
        // Only a crash point's hook (fault tests) throws out of #afterCommit.
        if (this.#after === tail) this.#after = undefined;
        console.error(`dgen: the actions of '${this.id}' stopped:`, e);
      },
    );
    this.#after = tail;
  }

  /** Runs the dead-letter hooks and the actions of a committed transaction, in order. */
  async #afterCommit(effects: TxEffects): Promise<void> {
    const hook = this.#def.handleDeadLetter;
    if (hook !== undefined) {
      for (const d of effects.deadLetters) {
        const message: DeadLetterMessage = {
          kind: d.message.kind,
          name: d.message.name,
          arg: d.message.arg,
        };
        try {
          await this.#withinLimit(hook(message, d.attempts, errorFromStored(d.error)));
        } catch (e) {
          this.stats.actionErrors++;
          if (e === ACTION_TIMED_OUT) {
            console.error(
              `dgen: handleDeadLetter of '${this.id}' did not settle within ${this.#actionTimeout} ms (actionTimeout); left running, the instance goes on`,
            );
          } else console.error(`dgen: handleDeadLetter of '${this.id}' threw:`, e);
        }
      }
    }
    if (effects.actions.length > 0) crashPoint("committed");
    for (const action of effects.actions) {
      try {
        const r = await this.#withinLimit(action(effects.state));
        crashPoint("between-actions");
        if (r === "halt") break;
      } catch (e) {
        this.stats.actionErrors++;
        if (e === ACTION_TIMED_OUT) {
          console.error(
            `dgen: an action of '${this.id}' did not settle within ${this.#actionTimeout} ms (actionTimeout); left running, the remaining actions were skipped`,
          );
        } else {
          console.error(
            `dgen: an action of '${this.id}' threw; the remaining actions were skipped:`,
            e,
          );
        }
        break;
      }
    }
  }

  /**
   * What an action (or hook) returned, settled within actionTimeout: a promise that has not
   * settled by then rejects with ACTION_TIMED_OUT and is left to settle on its own (its
   * rejection, if any, is handled here, so it is never reported as unhandled).
   */
  #withinLimit(r: unknown): unknown {
    if (!isThenable(r)) return r;
    const ms = this.#actionTimeout;
    if (ms === Infinity) return r;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(ACTION_TIMED_OUT), ms);
      // The action's own work keeps the process alive if it has any; the limit does not.
      unrefTimer(timer);
      Promise.resolve(r).then((v) => {
        clearTimeout(timer);
        resolve(v);
      }, (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  // ---- consuming -----------------------------------------------------------------------------

  #isExpired = (lock: LockRecord): boolean => {
    if (lock.holder === this.instance && this.#runningLocks.has(lock.token)) return false;
    const now = performance.now();
    const seen = this.#lockSeen;
    if (!seen || seen.token !== lock.token || seen.renewals !== lock.renewals) {
      this.#lockSeen = { token: lock.token, renewals: lock.renewals, at: now };
      return false;
    }
    return now - seen.at > lock.lease;
  };

  async #consumeLoop(): Promise<void> {
    const signal = this.#abort.signal;
    let failing: HandlerFailure | undefined;
    // After a failure that the messages' own results cause (isPoison), the next step takes one
    // message, so that the failure is counted against the message behind it.
    let narrow = false;
    const seen: { head?: QueueEntry } = {};
    let transientDelay = 0;
    // The head a standby saw at its last look (null: none yet; see STANDBY_AFTER).
    let lastHead: Uint8Array | null = null;
    while (!signal.aborted) {
      const turn = this.#takeTurn();
      if (turn !== undefined) {
        await turn;
        if (signal.aborted) break;
      }
      let outcome;
      let attempts = 0;
      let cacheMissed = false;
      const limit = narrow ? 1 : this.#rt.batchSize;
      const standby = failing === undefined && this.#foreignSteps >= STANDBY_AFTER
        ? lastHead
        : undefined;
      lastHead = null;
      try {
        const r = await this.#transact(async (tx, effects) => {
          const hadCache = this.#rt.cache !== undefined;
          seen.head = undefined;
          const o = await consumeStep(
            tx,
            this.#rt,
            effects,
            failing,
            this.#isExpired,
            limit,
            seen,
            standby,
          );
          cacheMissed = hadCache && effects.loadedFromStorage;
          return o;
        }, { maxRetries: CONSUME_RETRIES });
        outcome = r.value;
        attempts = r.attempts;
        failing = undefined;
        narrow = false;
        transientDelay = 0;
        // Its actions (and those queued before them) before the next message: back-pressure.
        if (this.#after !== undefined) await this.#after;
      } catch (e) {
        if (signal.aborted) break;
        if (e instanceof HandlerFailure) {
          failing = e;
          continue;
        }
        const head = seen.head;
        if (isPoison(e) && head !== undefined && (limit > 1 || failing === undefined)) {
          if (limit > 1) {
            // Which message of the batch caused it is not known: take them one at a time.
            narrow = true;
            failing = undefined;
          } else {
            failing = new HandlerFailure(head.key, e, head.message.attempts);
          }
          continue;
        }
        if (e instanceof RetriesExhaustedError) {
          // Another consumer keeps winning the head of the queue (or commits keep reporting
          // unknown results): step back for a while so one instance tends to stay active,
          // instead of fighting for every message; the message is simply tried again. Races
          // lost while nobody else writes the state are lost to senders (on PostgreSQL every
          // enqueue conflicts with a consume step): the active consumer must not step back
          // then, or the other takes over at the next burst.
          this.#misses = Math.min(this.#misses + 1, 10);
          if (await this.#stateWrittenElsewhere()) {
            this.#foreignSteps = Math.min(this.#foreignSteps + 1, STANDBY_AFTER);
          }
          await sleep(
            Math.random() * Math.min(25 * (this.#foreignSteps === 0 ? 1 : this.#misses), 250),
            signal,
          );
          continue;
        }
        if (e instanceof ServerGoneError) {
          void this.#shutdown("killed", true);
          break;
        }
        if (isClosedBackend(e)) {
          // Closed under it (close() before stop()): it will not come back. Stop, instead of
          // reporting the same failure every few seconds for ever.
          void this.#shutdown("backend closed");
          break;
        }
        if (isNewerState(e)) {
          // Newer code migrated the state (a rolling upgrade): this instance can neither read
          // it nor apply messages, so it stops (stopped resolves with "superseded") instead of
          // failing on every message; the newer instances serve the server.
          console.error(
            `dgen: consumer ${this.instance} of '${this.id}' stops: ${errorMessage(e)}`,
          );
          void this.#shutdown("superseded");
          break;
        }
        // Storage unavailable, corrupt stored state, … : report and back off, never spin.
        console.error(`dgen: consumer of '${this.id}' failed; retrying:`, e);
        transientDelay = Math.min(5_000, Math.max(50, transientDelay * 2));
        await sleep(transientDelay, signal);
        continue;
      }
      // Lost races and foreign writes mean another consumer is active: back off a little so one
      // instance tends to stay active (and keep its cache hot), without starving failover.
      // A message applied without a lost race or a cache miss shows this instance is the active
      // one. An idle queue whose state another instance wrote meanwhile shows it is not: it was
      // woken by messages another consumer applied. Forgetting its misses there put the two on
      // equal terms at the next wake-up, and consumers took turns burst by burst on PostgreSQL.
      // A standby that found the queue stalled for a look takes over: it is the active one now
      // (were two to, they meet each other's writes and one becomes a standby again).
      const foreign = cacheMissed || (outcome.kind === "idle" && outcome.foreign);
      if (standby !== undefined && outcome.kind === "processed") {
        this.#misses = 0;
        this.#foreignSteps = 0;
      } else if (attempts > 1 || foreign) {
        this.#misses = Math.min(this.#misses + 1, 10);
      } else if (outcome.kind === "processed" || outcome.kind === "failed") this.#misses = 0;
      // An idle queue whose state this instance wrote last shows it is the active one too.
      if (foreign) this.#foreignSteps = Math.min(this.#foreignSteps + 1, STANDBY_AFTER);
      else if (outcome.kind !== "yielded" && outcome.kind !== "locked") this.#foreignSteps = 0;
      switch (outcome.kind) {
        case "yielded":
          lastHead = outcome.head;
          await sleep(STANDBY_LOOK * (1 + Math.random()), signal);
          break;
        case "processed":
          this.stats.processed += outcome.count;
          if (outcome.lock) {
            await this.#runLocked(outcome.lock);
            // The write-back's actions, as after a commit of this loop.
            if (this.#after !== undefined) await this.#after;
          }
          if (outcome.stopped !== undefined) {
            void this.#shutdown(outcome.stopped);
            return;
          }
          // Another instance wrote since this one last did (its cache missed, or it lost a
          // race): step back a little, so that one instance tends to stay active. Backends
          // that serialize writers (SQLite) report no lost races, and without this two
          // consumers took turns message by message (a cache miss each time).
          await this.#backoff(signal);
          break;
        case "failed":
          // The message stays at the head with one more attempt: pause before retrying it.
          await sleep(Math.min(1_000, 10 * 2 ** Math.min(this.#misses, 6)), signal);
          break;
        case "expired":
          break;
        case "idle":
          await waitWatch(outcome.watch, Infinity, signal);
          await this.#backoff(signal);
          break;
        case "locked": {
          const seen = this.#lockSeen;
          const remaining = seen
            ? outcome.lock.lease - (performance.now() - seen.at) + 5
            : outcome.lock.lease;
          await waitWatch(outcome.watch, remaining, signal);
          await this.#backoff(signal);
          break;
        }
      }
    }
  }

  /**
   * {@link writtenElsewhere}, read for a consume step that kept losing races (it learns
   * nothing else). Read-only; false with `cache: false` or on error.
   */
  async #stateWrittenElsewhere(): Promise<boolean> {
    const rt = this.#rt;
    if (!rt.useCache) return false;
    try {
      const version = await rt.tenant.backend.transact(
        (tx) => tx.snapshot.get(rt.keys.stateVersion),
        { readOnly: true, maxRetries: 0 },
      );
      return writtenElsewhere(rt, version);
    } catch {
      return false;
    }
  }

  /**
   * After foreign writes: 2–4 ms per recent miss, up to 20–40 ms. Not from zero: the instance
   * that misses more waits longer, every time, so the one that keeps winning stays active even
   * when a loaded machine stretches its transactions (a draw from zero let the other one cut
   * in whenever it drew short).
   */
  async #backoff(signal: AbortSignal): Promise<void> {
    if (this.#misses === 0) return;
    await sleep(Math.min(2 * this.#misses, 20) * (1 + Math.random()), signal);
  }

  /** Runs `handleLocked` for a lock this instance took, renewing its lease meanwhile. */
  async #runLocked(work: LockedWork): Promise<void> {
    const rt = this.#rt;
    const token = work.lock.token;
    if (this.#abort.signal.aborted && !this.#crashed) {
      // Locked by a transaction that committed as this instance began to stop: the next
      // consumer runs handleLocked, the message back at the head, its attempts unchanged.
      try {
        await this.#transact((tx) => lockedRelease(tx, rt, work));
      } catch (e) {
        console.error(`dgen: the lock of '${this.id}' could not be released:`, e);
      }
      return;
    }
    this.#runningLocks.add(token);
    // ctx.signal: aborted when the lease is lost (the write-back would be refused) or when the
    // instance stops (handleLocked may finish early; what it still returns is written back).
    const lost = new AbortController();
    let leaseLost = false;
    let stopping = false;
    const onStop = () => {
      if (this.#crashed) return;
      stopping = true;
      lost.abort(this.#abort.signal.reason);
    };
    this.#abort.signal.addEventListener("abort", onStop, { once: true });
    const renew = setInterval(() => {
      if (!this[TEST_HOOKS].renewLeases || this.#crashed) return;
      this.#track(
        rt.tenant.backend.transact((tx) => renewLock(tx, rt, token)).then((ok) => {
          if (ok) return;
          leaseLost = true;
          lost.abort(new LockLostError(`Lease of lock ${token} of '${this.id}' was lost`));
        }).catch(() => {}),
      );
    }, Math.max(10, Math.floor(work.lock.lease / 3)));
    let error: unknown;
    let result;
    try {
      const ctx = {
        tenant: rt.tenant,
        id: rt.id,
        instance: rt.instance,
        signal: lost.signal,
        fencingToken: token,
      };
      result = checkLockedResult(
        rt,
        work.event,
        await this.#def.handleLocked!(work.event, work.state, ctx),
      );
    } catch (e) {
      error = e;
    } finally {
      clearInterval(renew);
      this.#abort.signal.removeEventListener("abort", onStop);
    }
    try {
      if (error === undefined && !leaseLost) {
        crashPoint("before-release");
        try {
          const r = await this.#transact((tx, effects) =>
            writeBack(tx, rt, work, result!, effects)
          );
          if (r.effects.stopReason !== undefined) void this.#shutdown(r.effects.stopReason);
          return;
        } catch (e) {
          if (e instanceof LockLostError) throw e;
          error = e;
        }
      }
      if (stopping && !leaseLost) {
        // It gave up because its instance stops: not the message's failure. Back to the
        // head of the queue, its attempts unchanged, for the next consumer.
        await this.#transact((tx) => lockedRelease(tx, rt, work));
        return;
      }
      await this.#transact((tx, effects) =>
        lockedFailure(tx, rt, work, error ?? lost.signal.reason, effects)
      );
    } catch (e) {
      if (e instanceof LockLostError) {
        this.stats.lockLost++;
        console.error(`dgen: ${e.message}; its write-back was refused`);
      } else {
        console.error(`dgen: handleLocked of '${this.id}' could not be settled:`, e);
      }
    } finally {
      this.#runningLocks.delete(token);
    }
  }

  // ---- sending -------------------------------------------------------------------------------

  /** Validates a message; returns its argument's encoded size. */
  #checkMessage(kind: "call" | "cast", name: unknown, arg: unknown): number {
    const def = this.#def;
    const handlers = kind === "call" ? def.handleCall : def.handleCast;
    if (typeof name !== "string" || handlers?.[name] === undefined) {
      const known = Object.keys(handlers ?? {}).map((n) => `'${n}'`).join(", ") || "none";
      throw new ValidationError([{
        path: "name",
        message: `Expected one of the ${kind}s of '${def.name}' (${known}), received ${
          JSON.stringify(name)
        }`,
      }]);
    }
    const schema = def.schemas?.[kind]?.[name];
    if (schema !== undefined) {
      const r = safeParseUser(schema, arg);
      if (!r.success) throw new ValidationError(toIssues(`arg of ${kind} '${name}'`, r.issues));
    }
    return this.#checkEncodable(arg, `arg of ${kind} '${name}'`);
  }

  #checkEncodable(arg: unknown, path: string): number {
    let size: number;
    try {
      size = encodedSize(arg, path);
    } catch (e) {
      if (e instanceof CodecError) {
        throw new ValidationError([{ path, message: e.message }], { cause: e });
      }
      throw e;
    }
    const max = this.#rt.tenant.backend.limits.maxValueSize - 1_000;
    if (size > max) {
      throw new ValidationError([{
        path,
        message: `Expected an argument of at most ${max} encoded bytes, got ${size}`,
      }]);
    }
    return size;
  }

  #envelope(
    kind: "call" | "cast",
    name: string,
    arg: unknown,
    request: string,
    at = Date.now(),
  ): Envelope {
    const m: Envelope = {
      kind,
      name,
      arg,
      attempts: 0,
      request,
      sender: this.instance,
      at,
    };
    if (kind === "call") m.callId = request;
    return m;
  }

  async cast(name: string, arg?: unknown): Promise<void> {
    this.#checkRunning();
    const size = this.#checkMessage("cast", name, arg);
    const m = this.#envelope("cast", name, arg, timeOrderedId());
    await new Promise<void>((resolve, reject) => {
      this.#queueSend({ m, many: null, size, resolve, reject });
    });
  }

  /** Queues a cast or castMany behind this instance's earlier ones (see #flushCasts). */
  #queueSend(send: Send): void {
    this.#castQueue.push(send);
    this.#castsQueued++;
    this.#castFlush ??= this.#track(this.#flushCasts());
  }

  /**
   * Waits for the casts and castManys this instance made before (awaited or not) to be
   * enqueued or applied, so that a call lands after them: the order of messages between two
   * Erlang processes. Only those: casts made later (a stream of them from other producers
   * keeps the flush going) are not waited for. Nothing to wait for, nothing awaited.
   */
  #sendsBefore(): Promise<void> | undefined {
    const upTo = this.#castsQueued;
    if (this.#castsSettled >= upTo) return undefined;
    return new Promise<void>((resolve) => this.#castWaiters.push({ upTo, resolve }));
  }

  /** Sends queued so far, and how many of them have settled (they settle in queue order). */
  #castsQueued = 0;
  #castsSettled = 0;
  /** Calls waiting for the sends queued before them, in `upTo` order. */
  readonly #castWaiters: Array<{ upTo: number; resolve: () => void }> = [];

  readonly #castQueue: Send[] = [];
  #castFlush: Promise<void> | undefined;

  /**
   * Enqueues waiting casts and castManys, in the order they were made: casts made while an
   * enqueue is in flight go together in the next transaction, so concurrent producers share
   * commits; a castMany goes in a transaction of its own (atomic, as before). Each resolves
   * only once its own messages are durably enqueued (or applied).
   */
  async #flushCasts(): Promise<void> {
    try {
      // Let the casts of one burst of promise callbacks join this transaction: producers that
      // the last flush resumed cast again a few callbacks later, and without this the first of
      // them would go alone and the rest together. A few microtask turns, no timer: a lone
      // cast is not delayed.
      for (let i = 0; i < CAST_JOIN_TURNS; i++) await null;
      const queue = this.#castQueue;
      while (queue.length > 0) {
        const turn = this.#takeTurn();
        if (turn !== undefined) await turn;
        const many = queue[0]!.many;
        let batch: Send[];
        if (many !== null) {
          batch = queue.splice(0, 1);
          try {
            await this.#transact((tx, effects) => enqueue(tx, this.#rt, many, effects), CAST_TX);
            batch[0]!.resolve();
          } catch (e) {
            batch[0]!.reject(e);
          }
        } else {
          let bytes = 0;
          let n = 0;
          while (
            n < queue.length && queue[n]!.many === null && n < CAST_BATCH &&
            bytes < CAST_BATCH_BYTES
          ) {
            bytes += queue[n++]!.size;
          }
          batch = queue.splice(0, n);
          const messages = batch.map((c) => c.m);
          try {
            if (this.#consume) await this.#castInline(messages);
            else {
              await this.#transact(
                (tx, effects) => enqueue(tx, this.#rt, messages, effects),
                CAST_TX,
              );
            }
            for (const c of batch) c.resolve();
          } catch (e) {
            for (const c of batch) c.reject(e);
          }
        }
        this.#castsSettled += batch.length;
        const waiters = this.#castWaiters;
        let w = 0;
        while (w < waiters.length && waiters[w]!.upTo <= this.#castsSettled) {
          waiters[w++]!.resolve();
        }
        if (w > 0) waiters.splice(0, w);
      }
    } finally {
      this.#castFlush = undefined;
    }
  }

  /**
   * The inline fast path of casts, as for calls: on an idle, unlocked queue, a consuming
   * instance applies a batch of casts in the transaction that would have enqueued them (as if
   * enqueued and dequeued in one commit: no queue rows, no consume transaction), up to
   * `batchSize` of them. From the first cast whose handler throws or returns `lock` or `stop`,
   * the casts are enqueued instead, for the queue's consumer to apply (the lock, the stop); a
   * throw counts as the cast's first failed attempt, as on the queue (or dead-letters it at a
   * threshold of 1). The attempt that met it is abandoned and the batch runs again with the
   * casts before it applied inline, so a handler's discarded run never commits anything.
   */
  async #castInline(messages: readonly Envelope[]): Promise<void> {
    let inline = Math.min(messages.length, this.#rt.batchSize);
    let failed: QueueFrom | undefined;
    for (;;) {
      try {
        const r = await this.#transact(
          (tx, effects) => this.#inlineCasts(tx, messages, inline, failed, effects),
          CAST_TX,
        );
        this.stats.processed += r.value;
        return;
      } catch (e) {
        if (e instanceof QueueFrom && e.index < inline) {
          inline = e.index;
          failed = e.threw ? e : undefined;
        } else if (isPoison(e) && inline > 0) {
          // Too much for one transaction, or a result that cannot be stored, of a cast not
          // known: all are enqueued, and the consumer finds the one behind it (dead-lettering
          // it in the end) while it applies the others.
          inline = 0;
          failed = undefined;
        } else throw e;
      }
    }
  }

  /**
   * One attempt of {@link #castInline}: applies `messages[0, inline)` and enqueues the rest,
   * the first of them with its failed attempt if `failed` says it threw. Returns how many it
   * applied.
   */
  async #inlineCasts(
    tx: Transaction,
    messages: readonly Envelope[],
    inline: number,
    failed: QueueFrom | undefined,
    effects: TxEffects,
  ): Promise<number> {
    const rt = this.#rt;
    if (inline === 0 && failed === undefined) return (await enqueue(tx, rt, messages, effects), 0);
    // A killed server is noticed by the enqueue or the state load below (a kill clears both).
    // One request record covers the batch, as for an enqueue: if it exists, an attempt whose
    // commit result was unknown did apply (or enqueue) the whole batch.
    const request = messages[0]!.request;
    if (await readRequest(tx, rt, request) !== undefined) return 0;
    if (await readLock(tx, rt) !== undefined || await queueLength(tx, rt) > 0) {
      return (await enqueue(tx, rt, messages, effects), 0);
    }
    const loaded = await loadState(tx, rt);
    let state = loaded.state;
    for (let i = 0; i < inline; i++) {
      const m = messages[i]!;
      // Within a batch, the state a previous handler returned is frozen before the next sees it.
      if (i > 0) state = rt.codec.freeze(state);
      let result: HandlerResult<unknown>;
      try {
        result = await runHandler(rt, tx, "cast", m.name, m.arg, undefined, state, "standard");
        checkState(rt, result.state);
      } catch (e) {
        const failure = HandlerFailure.wrap(undefined, e);
        // A retryable storage error is the transaction's: retried, no attempt counted.
        if (!(failure instanceof HandlerFailure)) throw failure;
        throw new QueueFrom(i, true, e);
      }
      if (result.kind !== "noreply") throw new QueueFrom(i, false, undefined);
      state = result.state;
      effects.actions.push(...result.actions);
    }
    writeState(tx, rt, loaded, state, effects);
    let rest = messages.slice(inline);
    if (failed !== undefined) {
      const m = rest[0]!;
      const outcome = await recordFailure(tx, rt, undefined, m, failed.error, effects);
      rest = outcome === "retry"
        ? [failedAttempt(rt, m, failed.error), ...rest.slice(1)]
        : rest.slice(1);
    }
    // Before the batch's request record: when the failed cast is the batch's first, its
    // enqueue must not take that record for a duplicate.
    if (rest.length > 0) await enqueue(tx, rt, rest, effects);
    writeRequest(tx, rt, request, { at: rt.now(), outcome: "queued" });
    return inline;
  }

  async castMany(messages: ReadonlyArray<readonly [string, unknown?]>): Promise<void> {
    this.#checkRunning();
    if (!Array.isArray(messages) || messages.length === 0 || messages.length > 65_535) {
      throw new ValidationError([{
        path: "messages",
        message: "Expected a non-empty array of at most 65535 [name, arg] pairs",
      }]);
    }
    const request = timeOrderedId();
    const envelopes = messages.map((pair, i) => {
      if (!Array.isArray(pair) || pair.length < 1 || pair.length > 2) {
        throw new ValidationError([{
          path: `messages[${i}]`,
          message: "Expected a [name, arg] pair",
        }]);
      }
      try {
        this.#checkMessage("cast", pair[0], pair[1]);
      } catch (e) {
        if (e instanceof ValidationError) {
          throw new ValidationError(
            e.issues.map((x) => ({ ...x, path: `messages[${i}].${x.path}` })),
          );
        }
        throw e;
      }
      return this.#envelope("cast", pair[0], pair[1], request);
    });
    // Behind the instance's earlier casts, and ahead of its later ones.
    await new Promise<void>((resolve, reject) => {
      this.#queueSend({ m: envelopes[0]!, many: envelopes, size: 0, resolve, reject });
    });
  }

  async call(name: string, arg?: unknown, options?: CallOptions): Promise<unknown> {
    this.#checkRunning();
    this.#checkMessage("call", name, arg);
    // No options (the common case) needs no schema run.
    const { timeout = 5_000 } = options === undefined
      ? {}
      : parse(timeoutSchema, options, "options");
    const started = performance.now();
    const now = Date.now();
    const deadlineAt = Number.isFinite(timeout) ? now + timeout : null;
    const m = this.#envelope("call", name, arg, timeOrderedId(now), now);
    const rt = this.#rt;
    let watch: Watch | undefined;
    let checkFirst = false;
    const before = this.#sendsBefore();
    if (before !== undefined) await before; // not an await of nothing: a hop per call
    if (this.#consume) {
      try {
        const r = await this.#callTransact(
          (tx, effects) => this.#inlineCall(tx, m, deadlineAt, effects),
          deadlineAt === null ? undefined : new CallDeadline(deadlineAt, name, timeout, m),
        );
        const outcome = r.value;
        if (outcome.kind === "replied") return outcome.value;
        this.#carryOut(outcome);
        if (outcome.kind === "stopped") {
          throw new ServerStoppedError(`Server stopped: ${outcome.reason}`);
        }
        watch = outcome.watch;
        // After a retry, an earlier attempt may have committed and the reply may have landed
        // before this attempt's watch was made: such a watch would never fire.
        checkFirst = r.attempts > 1;
      } catch (e) {
        if (!(e instanceof HandlerFailure) && !isPoison(e)) throw e;
        watch = await this.#queueFailedCall(m, e, deadlineAt);
        // The slot may already hold the answer (dead-lettered at once): the watch, made in the
        // transaction that wrote it, would not fire for that write.
        checkFirst = true;
      }
    } else {
      const r = await this.#callTransact(async (tx, effects) => {
        const done = await enqueue(tx, rt, [m], effects);
        if (done === "duplicate") return tx.watch(rt.keys.reply(m.callId!));
        openReplySlot(tx, rt, m.callId!, deadlineAt);
        return tx.watch(rt.keys.reply(m.callId!));
      });
      watch = r.value;
      checkFirst = r.attempts > 1; // as above: the reply may predate the retry's watch
    }
    return await this.#awaitReply(m.callId!, watch, timeout, started, name, checkFirst);
  }

  /**
   * An inline call's handler failed after its caller timed out: it is still queued with its
   * failed attempt, as on the queue (retried, then dead-lettered).
   */
  #lateFailure(deadline: CallDeadline, e: unknown): void {
    if (!(e instanceof HandlerFailure) && !isPoison(e)) return;
    const error = e instanceof HandlerFailure ? e.error : e;
    // No reply slot: nobody waits for it (its reply is dropped, as for a timed-out caller).
    this.#track(
      this.#transact((tx, effects) =>
        this.#enqueueFailedCall(tx, deadline.message, error, undefined, effects)
      ).catch((e) => {
        console.error(`dgen: a failed call to '${this.id}' could not be queued:`, e);
      }),
    );
  }

  /**
   * Queues an inline call whose handler failed (or whose results cannot be stored: isPoison)
   * with one failed attempt: the same outcome as on the queue.
   */
  async #queueFailedCall(m: Envelope, e: unknown, deadlineAt: number | null): Promise<Watch> {
    const error = e instanceof HandlerFailure ? e.error : e;
    const r = await this.#transact((tx, effects) =>
      this.#enqueueFailedCall(tx, m, error, { deadlineAt }, effects)
    );
    return r.value!;
  }

  /** Queues the failed call; with `slot`, opens its reply slot and returns a watch on it. */
  async #enqueueFailedCall(
    tx: Transaction,
    m: Envelope,
    error: unknown,
    slot: { deadlineAt: number | null } | undefined,
    effects: TxEffects,
  ): Promise<Watch | undefined> {
    const rt = this.#rt;
    if (await readRequest(tx, rt, m.request) === undefined) {
      if (slot !== undefined) openReplySlot(tx, rt, m.callId!, slot.deadlineAt);
      const result = await recordFailure(tx, rt, undefined, m, error, effects);
      if (result === "retry") {
        await enqueue(tx, rt, [failedAttempt(rt, m, error)], effects);
      } else {
        writeRequest(tx, rt, m.request, { at: rt.now(), outcome: "queued" });
      }
    }
    return slot === undefined ? undefined : tx.watch(rt.keys.reply(m.callId!));
  }

  /** The inline fast path: handle a call in the caller's own transaction when the queue is idle. */
  async #inlineCall(
    tx: Transaction,
    m: Envelope,
    deadlineAt: number | null,
    effects: TxEffects,
  ): Promise<InlineOutcome> {
    const rt = this.#rt;
    const slotWatch = () => ({
      kind: "queued" as const,
      watch: tx.watch(rt.keys.reply(m.callId!)),
    });
    // The reads that decide the path. Where a commit's outcome can be unknown (networked
    // backends) the request record is read too, and the three go out together: one round trip
    // instead of three (PostgreSQL: 14–20% more calls per second). In process, one after the
    // other is cheaper than gathering promises (5–10% of a memory-backend call). The state is
    // read after: a call that gets queued does not read it, so a state write it does not depend
    // on cannot make it conflict.
    let prior: Awaited<ReturnType<typeof readRequest>> = undefined;
    let held: LockRecord | undefined;
    let length = 0;
    if (rt.idempotent) {
      // A retry after an unknown commit result: the first attempt may have applied.
      [prior, held, length] = await Promise.all([
        readRequest(tx, rt, m.request),
        readLock(tx, rt),
        queueLength(tx, rt),
      ]);
    } else {
      // Awaited here, not through readLock and queueLength: one async hop fewer each.
      held = lockFrom(rt, await tx.get(rt.keys.lock));
      if (held === undefined) length = readInt64LENumber(await tx.get(rt.keys.queueLength));
    }
    if (prior !== undefined) {
      const { record } = prior;
      if (record.outcome === "reply") return { kind: "replied", value: prior.reply };
      if (record.outcome === "stop") return { kind: "stopped", reason: record.reason ?? "stopped" };
      if (held?.holder === this.instance && held.message.callId === m.callId) {
        const loaded = await loadState(tx, rt);
        return {
          kind: "locked",
          watch: tx.watch(rt.keys.reply(m.callId!)),
          work: lockedWork(held, loaded.state),
        };
      }
      return slotWatch();
    }
    const queueIt = async () => {
      await enqueue(tx, rt, [m], effects);
      openReplySlot(tx, rt, m.callId!, deadlineAt);
      return slotWatch();
    };
    if (held !== undefined) return await queueIt();
    // The length (one key every enqueue and dequeue moves) says it as a range read would.
    if (length > 0) return await queueIt();
    const version = await tx.get(rt.keys.stateVersion);
    const loaded = cachedState(rt, version) ?? await loadStoredState(tx, rt, version);
    const from = { instance: this.instance, callId: m.callId! };
    let result;
    try {
      const r = runHandler(rt, tx, "call", m.name, m.arg, from, loaded.state, "standard");
      // A synchronous handler's result is not awaited: one microtask fewer (Bun: measurable).
      result = r instanceof Promise ? await r : r;
      checkState(rt, result.state);
    } catch (e) {
      throw HandlerFailure.wrap(undefined, e);
    }
    writeState(tx, rt, loaded, result.state, effects);
    const state = loaded.state;
    const at = rt.now();
    if (result.kind === "reply") {
      effects.actions.push(...result.actions);
      writeRequest(tx, rt, m.request, { at, outcome: "reply" }, result.value);
      return { kind: "replied", value: result.value };
    }
    if (result.kind === "stop") {
      effects.actions.push(...result.actions);
      writeRequest(tx, rt, m.request, { at, outcome: "stop", reason: result.reason });
      return { kind: "stopped", reason: result.reason };
    }
    // lock: the call becomes an in-progress message with a reply slot, like a queued one.
    writeRequest(tx, rt, m.request, { at, outcome: "queued" });
    openReplySlot(tx, rt, m.callId!, deadlineAt);
    const work = await takeOverInline(tx, rt, m, state);
    return { kind: "locked", watch: tx.watch(rt.keys.reply(m.callId!)), work };
  }

  async #awaitReply(
    callId: string,
    first: Watch,
    timeout: number,
    started: number,
    name: string,
    checkFirst: boolean,
  ): Promise<unknown> {
    const rt = this.#rt;
    const key = rt.keys.reply(callId);
    let watch = first;
    for (;;) {
      const left = timeout - (performance.now() - started);
      let r: "fired" | "timeout" | "aborted" | "cancelled" = "fired";
      if (checkFirst) {
        watch.cancel();
        checkFirst = false;
      } else {
        r = await waitWatch(watch, left, this.#abort.signal);
        if (r === "aborted") {
          // This instance is stopping: its own consumer (and any handleLocked it runs) may
          // still apply this call and write its reply. Read the slot once they have finished,
          // so the caller gets that reply instead of being told it was not answered.
          await this.#loop;
          await Promise.allSettled([...this.#tasks]);
        }
      }
      const timedOut = r === "timeout" || (Number.isFinite(timeout) && left <= 0);
      // Read without writing, so that a retry after an unknown commit result still finds the
      // reply; the slot is cleared afterwards (idempotently).
      const read = await rt.tenant.backend.transact(async (tx) => {
        const bytes = await tx.get(key);
        if (bytes === undefined) {
          return { kind: "missing" as const, gone: await readMeta(tx, rt) === undefined };
        }
        const slot = decodeReplySlot(bytes, key);
        if (slot.status === "pending") {
          if (timedOut || r === "aborted") return { kind: "abandoned" as const };
          return { kind: "pending" as const, watch: tx.watch(key) };
        }
        if (slot.status === "error") return { kind: "error" as const, error: slot.error };
        return { kind: "ok" as const, value: await readReplyValue(tx, rt, callId, slot) };
      }, { readOnly: true });
      if (read.kind === "ok" || read.kind === "error") {
        // Answered: the caller has its reply; the slot is cleared off the reply's path, in a
        // batch with other answered slots (one commit for many calls).
        this.#clearSlotLater(callId);
      } else if (read.kind === "abandoned") {
        // An abandoned slot is cleared only if still pending: a reply may have just landed.
        const late = await rt.tenant.backend.transact(async (tx) => {
          const bytes = await tx.get(key);
          if (bytes === undefined) return undefined;
          const slot = decodeReplySlot(bytes, key);
          const value = read.kind === "abandoned" && slot.status === "ok"
            ? await readReplyValue(tx, rt, callId, slot)
            : undefined;
          clearReplySlot(tx, rt, callId);
          return read.kind === "abandoned" && slot.status !== "pending"
            ? { slot, value }
            : undefined;
        });
        if (late !== undefined) {
          if (late.slot.status === "error") throw errorFromStored(late.slot.error);
          return late.value;
        }
      }
      switch (read.kind) {
        case "ok":
          return read.value;
        case "error":
          throw errorFromStored(read.error);
        case "missing":
          if (read.gone) {
            throw new ServerStoppedError(
              `Server '${this.id}' was killed before replying to '${name}'`,
            );
          }
          // Collected while this caller was not seen (paused past its presence): the call may
          // have been applied; its outcome is unknown, as after a timeout.
          throw new CallTimeoutError(
            `The reply slot of call '${name}' to '${this.id}' was collected while this caller was away (the call may have been applied)`,
          );
        case "abandoned":
          if (r === "aborted") {
            throw new ServerStoppedError(
              `Instance ${this.instance} stopped before '${name}' was answered (the call stays queued: another consuming instance may still apply it)`,
            );
          }
          throw new CallTimeoutError(
            `Call '${name}' to '${this.id}' timed out after ${timeout} ms (it may still be handled later)`,
          );
        case "pending":
          watch = read.watch;
      }
    }
  }

  #slotsToClear: string[] = [];
  #clearing: Promise<void> | undefined;
  #clearTimer: TimerHandle | undefined;

  /**
   * Clears an answered reply slot soon: in the commit of this instance's next call, or with the
   * others answered meanwhile once SLOT_CLEAR_DELAY runs out (at once when stopping).
   */
  #clearSlotLater(...callIds: string[]): void {
    this.#slotsToClear.push(...callIds);
    if (this.#state !== "running") this.#flushSlotClears();
    else if (this.#clearTimer === undefined && this.#clearing === undefined) {
      this.#clearTimer = setTimeout(() => this.#flushSlotClears(), SLOT_CLEAR_DELAY);
    }
  }

  #flushSlotClears(): void {
    clearTimeout(this.#clearTimer);
    this.#clearTimer = undefined;
    if (this.#slotsToClear.length > 0) this.#clearing ??= this.#track(this.#clearSlots());
  }

  async #clearSlots(): Promise<void> {
    try {
      while (this.#slotsToClear.length > 0 && !this.#crashed) {
        const ids = this.#slotsToClear.splice(0, SLOT_CLEAR_BATCH);
        await this.#rt.tenant.backend.transact((tx) => {
          for (const id of ids) clearReplySlot(tx, this.#rt, id);
        }).catch((e) => {
          // Left for the garbage collection of answered slots.
          console.error(`dgen: could not clear ${ids.length} answered reply slots:`, e);
        });
      }
    } finally {
      this.#clearing = undefined;
    }
  }

  /**
   * A call's transaction, carrying the clears of the answered slots waiting for one: they cost
   * no commit of their own. Clears are blind writes (no read conflicts); if the transaction
   * fails they wait for the next commit again.
   */
  #callTransact<T>(
    body: (tx: Transaction, effects: TxEffects) => Promise<T>,
    deadline?: CallDeadline,
  ): Promise<{ value: T; effects: TxEffects; attempts: number }> {
    if (this.#slotsToClear.length === 0 || this.#clearing !== undefined) {
      return this.#transact(body, undefined, deadline, true);
    }
    return this.#transactClearingSlots(body, deadline);
  }

  async #transactClearingSlots<T>(
    body: (tx: Transaction, effects: TxEffects) => Promise<T>,
    deadline?: CallDeadline,
  ): Promise<{ value: T; effects: TxEffects; attempts: number }> {
    const ids = this.#slotsToClear.splice(0, SLOT_CLEAR_BATCH);
    try {
      return await this.#transact(
        (tx, effects) => {
          for (const id of ids) clearReplySlot(tx, this.#rt, id);
          return body(tx, effects);
        },
        undefined,
        deadline,
        true,
      );
    } catch (e) {
      this.#clearSlotLater(...ids);
      throw e;
    }
  }

  async #priority(kind: "call" | "cast" | "info", name: string, arg: unknown): Promise<unknown> {
    this.#checkRunning();
    const rt = this.#rt;
    const request = timeOrderedId();
    const r = await this.#transact(async (tx, effects) => {
      const prior = await readRequest(tx, rt, request);
      if (prior !== undefined) {
        if (prior.record.outcome === "stop") effects.stopReason = prior.record.reason;
        return prior.reply;
      }
      const loaded = await loadState(tx, rt);
      const from = { instance: this.instance, callId: request };
      const result = await runHandler(
        rt,
        tx,
        kind,
        name,
        arg,
        kind === "call" ? from : undefined,
        loaded.state,
        "priority",
      );
      checkState(rt, result.state);
      writeState(tx, rt, loaded, result.state, effects);
      if (result.kind === "lock") return undefined; // runHandler refuses lock on this path
      effects.actions.push(...result.actions);
      if (result.kind === "stop") effects.stopReason = result.reason;
      writeRequest(
        tx,
        rt,
        request,
        result.kind === "stop"
          ? { at: rt.now(), outcome: "stop", reason: result.reason }
          : { at: rt.now(), outcome: result.kind },
        result.kind === "reply" ? result.value : undefined,
      );
      return result.kind === "reply" ? result.value : undefined;
    });
    if (r.effects.stopReason !== undefined) {
      void this.#shutdown(r.effects.stopReason);
      if (kind === "call") throw new ServerStoppedError(`Server stopped: ${r.effects.stopReason}`);
    }
    return r.value;
  }

  priorityCall(name: string, arg?: unknown): Promise<unknown> {
    try {
      this.#checkMessage("call", name, arg);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#priority("call", name, arg);
  }

  priorityCast(name: string, arg?: unknown): Promise<void> {
    try {
      this.#checkMessage("cast", name, arg);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#priority("cast", name, arg).then(() => {});
  }

  send(info: unknown): Promise<void> {
    try {
      const schema = this.#def.schemas?.info;
      if (schema !== undefined) {
        const r = safeParseUser(schema, info);
        if (!r.success) throw new ValidationError(toIssues("info", r.issues));
      }
      if (this.#def.handleInfo === undefined) {
        throw new ValidationError([{
          path: "info",
          message: `'${this.#def.name}' has no handleInfo`,
        }]);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#priority("info", "info", info).then(() => {});
  }

  // ---- dead letters --------------------------------------------------------------------------

  /** Most bytes (keys and largest values) one page of `deadLetters.list` may read. */
  static readonly #DEAD_LETTER_PAGE_BYTES = 4_000_000;
  /** Most letters one page of `deadLetters.list` reads, however small the values. */
  static readonly #DEAD_LETTER_PAGE_MAX = 1_000;
  static readonly #deadLetterListSchema = v.optional(
    v.strictObject({
      limit: v.optional(positiveInt),
      after: v.optional(
        v.pipe(v.string(), v.regex(/^[0-9a-f]{24}$/, "Expected a dead-letter key from list()")),
      ),
    }),
    {},
  );

  /** The stored key of the dead letter whose `key` (as `list` gives it) is `hex`. */
  #deadLetterKey(hex: string): Uint8Array {
    return concatBytes(this.#rt.keys.deadLetters, fromHex(hex));
  }

  async #listDeadLetters(options?: { limit?: number; after?: string }): Promise<DeadLetter[]> {
    const { limit = Infinity, after } = parse(
      Instance.#deadLetterListSchema,
      options,
      "options",
    );
    const rt = this.#rt;
    const prefix = rt.keys.deadLetters;
    let begin = after === undefined ? prefix : keyAfter(this.#deadLetterKey(after));
    let end = rt.keys.deadLettersEnd;
    // Sized for letters of the largest value the backend stores (a stored letter is never
    // larger), so no page reads more than a few MB whatever the letters hold: well within
    // FoundationDB's 5 s and every backend's declared limits (one letter less than the bytes
    // allow: the first page may also read the newest letter, below).
    const largest = rt.tenant.backend.limits.maxValueSize + prefix.length + 12;
    const pageSize = Math.max(
      1,
      Math.min(
        Instance.#DEAD_LETTER_PAGE_MAX,
        Math.floor(Instance.#DEAD_LETTER_PAGE_BYTES / largest) - 1,
      ),
    );
    const letters: DeadLetter[] = [];
    let first = true;
    while (letters.length < limit) {
      const want = Math.min(pageSize, limit - letters.length);
      const more = letters.length + want < limit;
      const page = await rt.tenant.backend.transact(async (tx) => {
        const rows = await tx.getRange(begin, end, { limit: want });
        // More pages to come: the listing ends at the newest letter there is now, so letters
        // dead-lettered meanwhile (whose keys sort after it) cannot keep it going for ever.
        const last = first && more && rows.length === want
          ? (await tx.getRange(begin, end, { limit: 1, reverse: true }))[0]?.key
          : undefined;
        return { rows, last };
      }, { readOnly: true });
      first = false;
      for (const row of page.rows) {
        const d = decodeDeadLetter(row.value, row.key);
        letters.push({
          key: toHex(row.key.subarray(prefix.length)),
          kind: d.message.kind,
          name: d.message.name,
          arg: d.message.arg,
          attempts: d.attempts,
          error: d.error,
          at: d.at,
        });
      }
      const lastRead = page.rows[page.rows.length - 1]?.key;
      if (
        page.rows.length < want || (page.last !== undefined && equalBytes(page.last, lastRead!))
      ) {
        break;
      }
      if (page.last !== undefined) end = keyAfter(page.last);
      begin = keyAfter(lastRead!);
    }
    return letters;
  }

  async #requeueDeadLetter(key: string): Promise<boolean> {
    if (typeof key !== "string" || !/^[0-9a-f]{24}$/.test(key)) {
      throw new ValidationError([{
        path: "key",
        message: "Expected a dead-letter key from list()",
      }]);
    }
    const rt = this.#rt;
    const bytes = this.#deadLetterKey(key);
    const request = timeOrderedId();
    const r = await this.#transact(async (tx, effects) => {
      const value = await tx.get(bytes);
      // Gone: requeued by an earlier attempt whose commit result was unknown, or not there.
      if (value === undefined) return await tx.get(rt.keys.request(request)) !== undefined;
      const d = decodeDeadLetter(value, bytes);
      tx.clear(bytes);
      tx.add(rt.keys.deadLetterCount, -1);
      // A requeued call's caller was already answered (DeadLetterError): its reply slot is gone,
      // so the reply of the retry is dropped.
      const message: Envelope = { ...d.message, attempts: 0, request };
      delete message.lastError;
      await enqueue(tx, rt, [message], effects);
      return true;
    });
    return r.value;
  }

  async #purgeDeadLetters(): Promise<number> {
    const rt = this.#rt;
    return await rt.tenant.backend.transact(async (tx) => {
      // The count, not the letters: one small read, and a range clear however many there are.
      // The count is kept with the letters (each dead-lettering adds 1, each requeue -1, in the
      // same transaction), and read here with a conflict, so the result is exactly what this
      // purge removed even while messages are being dead-lettered: a letter dead-lettered (or
      // requeued) concurrently either makes the purge conflict and run again, then counted and
      // removed, or is ordered after it (PostgreSQL may do so instead), then kept, and counted
      // by the count key, not by this result.
      const count = readInt64LENumber(await tx.get(rt.keys.deadLetterCount));
      tx.clearRange(rt.keys.deadLetters, rt.keys.deadLettersEnd);
      tx.clear(rt.keys.deadLetterCount);
      if (count !== 0) bumpChange(tx, rt);
      return count;
    });
  }
}

/** Keeps the definition's type parameter of a ref (for `LockedEvent` consumers). */
export type { LockedEvent };
