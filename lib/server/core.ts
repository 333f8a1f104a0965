/**
 * The transactional core of a server: what one message, one batch, one lock write-back or one
 * takeover does to state, queue, lock and reply slots, given a transaction. Plain functions
 * over the storage contract; timers, loops and waiting live in `instance.ts`.
 *
 * Nothing here has side effects outside the transaction: handlers may run more than once (a
 * conflict retries the whole body), so their actions are collected and returned, to run after
 * commit.
 *
 * @module
 */

import {
  concatBytes,
  EMPTY_BYTES,
  equalBytes,
  keyAfter,
  readInt64LE,
  readInt64LENumber,
  strinc,
} from "../bytes.ts";
import {
  BackendUnavailableError,
  CodecError,
  DGenError,
  LimitExceededError,
  LockLostError,
  MigrationError,
  ServerGoneError,
  TransactionError,
  ValidationError,
} from "../errors.ts";
import type { StateCodec, StoredState } from "../codec/types.ts";
import type { Transaction, Watch } from "../storage/types.ts";
import { errorMessage } from "../describe.ts";
import type { Tenant } from "../tenant.ts";
import { scopeTransaction } from "../storage/subspace.ts";
import { encodedSize } from "../codec/value.ts";
import { pack, subtreeEnd } from "../tuple.ts";
import { safeParseUser, toIssues } from "../validate.ts";
import {
  type Action,
  type From,
  type HandlerResult,
  isHandlerResult,
  type LockedEvent,
  type ServerDefinition,
  type TxContext,
} from "./definition.ts";
import { crashPoint } from "./crashpoints.ts";
import { ServerKeys } from "./keys.ts";
import { deepEqual, merge3 } from "./merge.ts";
import {
  decodeEnvelope,
  decodeLock,
  decodeMeta,
  decodePresence,
  decodeReplySlot,
  decodeRequest,
  encodeRecord,
  type Envelope,
  isLive,
  type LockRecord,
  type MetaRecord,
  type StoredError,
  toStoredError,
} from "./records.ts";

/** The decoded state with what the codec needs to diff against it. */
export interface CachedState {
  /** The `sv` versionstamp the state was stored with. */
  version: Uint8Array;
  /** What is stored (the codec's `prev`). */
  stored: { found: true; state: unknown };
}

/** What one instance knows and is configured with; shared by the core functions. */
export interface Runtime {
  /** The definition. */
  readonly def: ServerDefinition;
  /** The tenant. */
  readonly tenant: Tenant;
  /** The server id. */
  readonly id: string;
  /** This instance's id. */
  readonly instance: string;
  /** The server's keys. */
  readonly keys: ServerKeys;
  /** The state codec. */
  readonly codec: StateCodec;
  /** Messages per consume transaction. */
  readonly batchSize: number;
  /** Attempts before a failing message is dead-lettered. */
  readonly deadLetterThreshold: number;
  /** Lock lease, ms. */
  readonly lockLease: number;
  /** Whether to keep the decoded state between transactions. */
  readonly useCache: boolean;
  /** Aborted when the instance stops. */
  readonly signal: AbortSignal;
  /** The cached state, if any. */
  cache: CachedState | undefined;
  /** Wall clock, ms (injectable for tests). */
  now(): number;
  /**
   * Whether to record requests for idempotent retries: only where a commit can report an
   * unknown outcome (see `Backend.unknownCommitOutcomes`).
   */
  readonly idempotent: boolean;
}

/** The state as loaded in one transaction. */
export interface Loaded {
  /** The (frozen) state. */
  state: unknown;
  /** What is stored, for the codec's diff. */
  stored: StoredState;
  /** The `sv` stamp read, if any. */
  version: Uint8Array | undefined;
  /** Whether the cache served it. */
  cacheHit: boolean;
  /** Whether a migration produced it (so it must be written). */
  migrated: boolean;
  /** When the server was first created (kept in the meta record a migration rewrites). */
  created?: number;
}

/** CodecErrors saying the stored state was written by newer code (see {@link isNewerState}). */
const newerState = new WeakSet<Error>();

/**
 * Whether `e` says the stored state was written by a newer version of the definition than this
 * code's: this code cannot read it (a plain CodecError to callers, code `codec`), and a
 * consumer running it steps aside.
 */
export function isNewerState(e: unknown): boolean {
  return e instanceof Error && newerState.has(e);
}

/** A handler failed (threw, returned something invalid, or its outcome could not be stored). */
export class HandlerFailure extends Error {
  /**
   * Creates the failure.
   *
   * @param queueKey The failing message's queue key (undefined for inline and priority).
   * @param error The underlying error.
   * @param attempts The message's attempt count when it failed (to record the failure once).
   */
  constructor(
    readonly queueKey: Uint8Array | undefined,
    readonly error: unknown,
    readonly attempts?: number,
  ) {
    super(errorMessage(error), { cause: error });
  }

  /**
   * What a handler's error becomes: a storage error that a handler's reads or writes through
   * `ctx.tx` met and that retrying the transaction can cure (a conflict, an unknown commit
   * result, FoundationDB's `future_version` or `process_behind`, an unreachable backend) is
   * the transaction's, not the message's: it passes through to the backend's retry loop (or the
   * consumer's outage back-off) and costs the message no attempt. Anything else is a failure
   * of the message.
   */
  static wrap(queueKey: Uint8Array | undefined, error: unknown, attempts?: number): Error {
    if (
      (error instanceof TransactionError && error.retryable) ||
      error instanceof BackendUnavailableError
    ) return error;
    return new HandlerFailure(queueKey, error, attempts);
  }
}

/**
 * Whether `e` is a failure that a message's own results cause every time they are stored: a
 * state or reply that cannot be encoded (a `CodecError` met writing it), or a key, value or
 * transaction over the backend's limits, or a transaction that ran past its time limit.
 * Retrying the same message cannot help; it counts as a failed attempt of the message that
 * caused it, so that the message is dead-lettered at the threshold instead of wedging its
 * server.
 */
export function isPoison(e: unknown): boolean {
  return e instanceof LimitExceededError || (e instanceof CodecError && unstorable.has(e));
}

/**
 * CodecErrors met while storing what a message returned, as opposed to reading stored data
 * (a corrupt record is not the message's fault, and is reported as it is).
 */
const unstorable = new WeakSet<CodecError>();

/** Marks `e` as met while storing (see isPoison) and returns it, to rethrow. */
function storing(e: unknown): unknown {
  if (e instanceof CodecError) unstorable.add(e);
  return e;
}

/** Everything a transaction body decided, applied after commit. */
export class TxEffects {
  /** Actions to run with the committed state, in order. */
  actions: Action<unknown>[] = [];
  /** Dead letters to report to `handleDeadLetter`. */
  deadLetters: Array<{ message: Envelope; attempts: number; error: StoredError }> = [];
  /** The state after the transaction, if it was written. */
  written: { found: true; state: unknown } | undefined;
  /** The state as of the end of the transaction (written or not). */
  state: unknown;
  /** The `sv` stamp the transaction read (kept if nothing was written). */
  readVersion: Uint8Array | undefined;
  /** The state as read (before this transaction's write), for the cache. */
  observed: { found: true; state: unknown } | undefined;
  /** Whether the state was decoded from storage rather than served by the cache. */
  loadedFromStorage = false;
  /** Next 2-byte index for versionstamped keys in this transaction. */
  stampIndex = 0;
  /** Set when a handler stopped the instance. */
  stopReason: string | undefined;
}

// ---------------------------------------------------------------------------------------------
// State

/** Loads the state: from the cache when the stored version matches, else through the codec. */
export async function loadState(tx: Transaction, rt: Runtime): Promise<Loaded> {
  const version = await tx.get(rt.keys.stateVersion);
  return cachedState(rt, version) ?? await loadStoredState(tx, rt, version);
}

/** What {@link writeState} starts from when no state is stored (or the stored one is cleared). */
export function nothingStored(): Loaded {
  return {
    state: undefined,
    stored: { found: false },
    version: undefined,
    cacheHit: false,
    migrated: false,
  };
}

/** The cached state, if `version` (the stored state's version) is the cache's. */
export function cachedState(rt: Runtime, version: Uint8Array | undefined): Loaded | undefined {
  const cache = rt.cache;
  if (rt.useCache && cache && version && equalBytes(version, cache.version)) {
    return {
      state: cache.stored.state,
      stored: cache.stored,
      version,
      cacheHit: true,
      migrated: false,
    };
  }
  return undefined;
}

/** Loads the state through the codec; `version` is the stored state's version, just read. */
export async function loadStoredState(
  tx: Transaction,
  rt: Runtime,
  version: Uint8Array | undefined,
): Promise<Loaded> {
  const meta = await readMeta(tx, rt);
  if (meta === undefined) throw new ServerGoneError(rt.id);
  const stored = await rt.codec.read(tx, rt.keys.state);
  if (!stored.found) {
    throw new CodecError("Server has a meta record but no state", `server '${rt.id}'`);
  }
  let state = stored.state;
  let migrated = false;
  if (meta.version < rt.def.version) {
    try {
      state = await rt.def.migrate!(meta.version, state);
    } catch (e) {
      throw new MigrationError(rt.id, rt.def.name, meta.version, rt.def.version, e);
    }
    migrated = true;
  } else if (meta.version > rt.def.version) {
    const e = new CodecError(
      `State was written by version ${meta.version} of '${rt.def.name}', newer than this code's ${rt.def.version}`,
      `server '${rt.id}'`,
    );
    newerState.add(e);
    throw e;
  }
  checkState(rt, state);
  return {
    state: rt.codec.freeze(state),
    stored,
    version,
    cacheHit: false,
    migrated,
    created: meta.created,
  };
}

/** Reads the meta record. */
export async function readMeta(tx: Transaction, rt: Runtime): Promise<MetaRecord | undefined> {
  const bytes = await tx.get(rt.keys.meta);
  return bytes === undefined ? undefined : decodeMeta(bytes, rt.keys.meta);
}

/** Checks a state against the definition's schema. */
export function checkState(rt: Runtime, state: unknown): void {
  const schema = rt.def.schemas?.state;
  if (schema === undefined) return;
  const r = safeParseUser(schema, state);
  if (!r.success) throw new ValidationError(toIssues("state", r.issues));
}

/**
 * Writes `next` as a diff against what `loaded` holds; bumps the state version and the change
 * counters only if something was written.
 */
export function writeState(
  tx: Transaction,
  rt: Runtime,
  loaded: Loaded,
  next: unknown,
  effects: TxEffects,
): void {
  const before = loaded.state;
  effects.state = next;
  effects.readVersion = loaded.version;
  if (loaded.stored.found) effects.observed = loaded.stored;
  if (!loaded.cacheHit) effects.loadedFromStorage = true;
  // The same state object is unchanged, unless it holds what a handler can change in place.
  if (Object.is(next, loaded.state) && !loaded.migrated && !rt.codec.isMutable(next)) return;
  checkState(rt, next);
  let stats;
  try {
    stats = rt.codec.write(tx, rt.keys.state, loaded.stored, next);
  } catch (e) {
    throw storing(e);
  }
  // Frozen after the write (the codec leaves hints that make freezing cheap then).
  rt.codec.freeze(next);
  const stored = { found: true as const, state: next };
  loaded.stored = stored;
  loaded.state = next;
  if (loaded.migrated) {
    tx.set(rt.keys.meta, encodeRecord(metaRecord(rt, loaded.created)));
    loaded.migrated = false;
  } else if (stats.keysWritten + stats.keysCleared === 0) {
    // Nothing to store: what is stored equals `next`. A handler may still have changed the
    // state it was given in place on the way (a Map it set, then replaced by a copy): that
    // object no longer is what is stored, so neither the cache nor this commit keeps it.
    if (!Object.is(before, next) && rt.codec.isMutable(before)) {
      effects.observed = stored;
      if (rt.cache?.stored.state === before) rt.cache = undefined;
    }
    return;
  }
  tx.setVersionstampedValue(rt.keys.stateVersion, EMPTY_BYTES);
  bumpChange(tx, rt);
  effects.written = stored;
}

/**
 * Marks the server as changed (for watchers such as the dashboard): its change marker becomes
 * this commit's versionstamp. A blind write, not an atomic add: on the PostgreSQL backend an add
 * inserts a delta row, and one per call from every server made unrelated servers' transactions
 * abort each other (docs/postgres.md, "Many servers at once").
 */
export function bumpChange(tx: Transaction, rt: Runtime): void {
  tx.setVersionstampedValue(rt.keys.change, EMPTY_BYTES);
}

/** The meta record this instance writes; `created` is kept from the first start. */
export function metaRecord(rt: Runtime, created: number = rt.now()): MetaRecord {
  return { version: rt.def.version, created, name: rt.def.name };
}

// ---------------------------------------------------------------------------------------------
// Handlers

/**
 * The context passed to transactional handlers. The runtime works on the backend's
 * transaction with absolute keys; handlers get a view confined to the tenant, made only if
 * they use it. A class, not an object literal: V8 builds a literal with a getter through its
 * runtime (about 450 ns a call on Deno, measured), an instance of a class in about 10 ns.
 */
class HandlerTxContext implements TxContext {
  readonly tenant: Runtime["tenant"];
  readonly id: string;
  readonly instance: string;
  readonly signal: AbortSignal;
  #raw: Transaction;
  #scoped: Transaction | undefined;

  constructor(rt: Runtime, tx: Transaction) {
    this.tenant = rt.tenant;
    this.id = rt.id;
    this.instance = rt.instance;
    this.signal = rt.signal;
    this.#raw = tx;
  }

  get tx(): Transaction {
    return this.#scoped ??= scopeTransaction(this.#raw, this.tenant.prefix);
  }
}

export function txContext(rt: Runtime, tx: Transaction): TxContext {
  return new HandlerTxContext(rt, tx);
}

function badReturn(what: string, got: unknown, expected: string): DGenError {
  const shown = isHandlerResult(got) ? `${got.kind}(…)` : typeof got;
  return new DGenError("bad_return", `${what} returned ${shown}; expected ${expected}`);
}

/**
 * Runs the handler for a message and checks its result. `path` is `"standard"` (may lock),
 * `"priority"` (may not lock) or `"locked"` (`handleLocked`, may not lock). Not async: a
 * handler that answers synchronously (most do) is checked at once, without a promise of its
 * own; a missing handler throws synchronously (every caller awaits it in an async function).
 */
export function runHandler(
  rt: Runtime,
  tx: Transaction | undefined,
  kind: "call" | "cast" | "info",
  name: string,
  arg: unknown,
  from: From | undefined,
  state: unknown,
  path: "standard" | "priority",
): HandlerResult<unknown> | Promise<HandlerResult<unknown>> {
  const def = rt.def;
  const ctx = txContext(rt, tx!);
  let result: unknown;
  let what: string;
  if (kind === "call") {
    const h = def.handleCall?.[name];
    what = `handleCall.${name}`;
    if (h === undefined) {
      throw new DGenError("no_handler", `'${def.name}' has no handleCall.${name}`);
    }
    result = h(arg, from!, state, ctx);
  } else if (kind === "cast") {
    const h = def.handleCast?.[name];
    what = `handleCast.${name}`;
    if (h === undefined) {
      throw new DGenError("no_handler", `'${def.name}' has no handleCast.${name}`);
    }
    result = h(arg, state, ctx);
  } else {
    what = "handleInfo";
    if (def.handleInfo === undefined) {
      throw new DGenError("no_handler", `'${def.name}' has no handleInfo`);
    }
    result = def.handleInfo(arg as never, state, ctx);
  }
  if (isThenable(result)) {
    return Promise.resolve(result).then((r) => checkResult(rt, kind, name, path, what, r));
  }
  return checkResult(rt, kind, name, path, what, result);
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return typeof x === "object" && x !== null &&
    typeof (x as { then?: unknown }).then === "function";
}

/** Checks what a handler returned (see {@link runHandler}). */
function checkResult(
  rt: Runtime,
  kind: "call" | "cast" | "info",
  name: string,
  path: "standard" | "priority",
  what: string,
  result: unknown,
): HandlerResult<unknown> {
  const def = rt.def;
  if (!isHandlerResult(result)) {
    throw badReturn(what, result, "reply(…), noreply(…), lock(…) or stop(…)");
  }
  if (kind === "call" && result.kind === "noreply") {
    throw badReturn(what, result, "reply(…), lock(…) or stop(…): a call must be answered");
  }
  if (kind !== "call" && result.kind === "reply") {
    throw badReturn(what, result, "noreply(…), lock(…) or stop(…): nobody waits for a reply");
  }
  if (result.kind === "lock") {
    if (path === "priority") {
      throw badReturn(what, result, "no lock(…) on the priority path (it skips the lock)");
    }
    if (def.handleLocked === undefined) {
      throw badReturn(what, result, "no lock(…) without a handleLocked");
    }
  }
  if (result.kind === "reply") checkReply(rt, name, result.value);
  return result;
}

/** Checks a call's reply against its schema. */
export function checkReply(rt: Runtime, name: string, value: unknown): void {
  // Every path replies alike: a reply that could not travel through the backend (as a queued
  // call's must) fails on the inline and priority paths too.
  encodedSize(value, `reply of ${name}`);
  const schema = rt.def.schemas?.reply?.[name];
  if (schema === undefined) return;
  const r = safeParseUser(schema, value);
  if (!r.success) throw new ValidationError(toIssues(`reply of ${name}`, r.issues));
}

// ---------------------------------------------------------------------------------------------
// Queue and reply slots

/** A queued message with its key. */
export interface QueueEntry {
  /** Its queue key. */
  key: Uint8Array;
  /** The message. */
  message: Envelope;
}

/**
 * What a request (an enqueue, an inline call, a priority message) did, recorded in the same
 * transaction so that a retry after an unknown commit result finds it instead of applying the
 * request twice, and a retried call gets its original reply.
 */
export interface RequestRecord {
  /** When, ms since the epoch. */
  at: number;
  /** The outcome. */
  outcome: "queued" | "reply" | "noreply" | "stop";
  /** For `stop`: the reason. */
  reason?: string;
}

/** Reads the record of request `id`, if any. */
export async function readRequest(
  tx: Transaction,
  rt: Runtime,
  id: string,
): Promise<{ record: RequestRecord; reply: unknown } | undefined> {
  if (!rt.idempotent) return undefined;
  const key = rt.keys.request(id);
  const bytes = await tx.get(key);
  if (bytes === undefined) return undefined;
  const record = decodeRequest(bytes, key);
  let value: unknown;
  if (record.outcome === "reply") {
    const stored = await rt.codec.read(tx, concatBytes(key, REPLY_VALUE));
    value = stored.found ? stored.state : undefined;
  }
  return { record, reply: value };
}

/** Records request `id`'s outcome (and reply) in the current transaction. */
export function writeRequest(
  tx: Transaction,
  rt: Runtime,
  id: string,
  record: RequestRecord,
  reply?: unknown,
): void {
  if (!rt.idempotent) return;
  const key = rt.keys.request(id);
  tx.set(key, encodeRecord(record));
  if (record.outcome === "reply") {
    rt.codec.write(tx, concatBytes(key, REPLY_VALUE), { found: false }, reply);
  }
}

/** Enqueues `messages` in one transaction (idempotent per request id). */
export async function enqueue(
  tx: Transaction,
  rt: Runtime,
  messages: readonly Envelope[],
  effects: TxEffects,
): Promise<"enqueued" | "duplicate"> {
  if (await readMeta(tx, rt) === undefined) throw new ServerGoneError(rt.id);
  // One request id covers the whole batch: if it is recorded, a previous attempt whose commit
  // result was unknown did apply.
  const request = messages[0]!.request;
  if (rt.idempotent && await tx.get(rt.keys.request(request)) !== undefined) return "duplicate";
  writeRequest(tx, rt, request, { at: rt.now(), outcome: "queued" });
  for (const m of messages) {
    tx.setVersionstampedKey(
      rt.keys.queue,
      ServerKeys.entrySuffix(effects.stampIndex++),
      encodeRecord(m),
    );
  }
  tx.add(rt.keys.queueLength, messages.length);
  bumpChange(tx, rt);
  return "enqueued";
}

/** The first `limit` queued messages. */
export async function queueHead(
  tx: Transaction,
  rt: Runtime,
  limit: number,
): Promise<QueueEntry[]> {
  const rows = await tx.getRange(rt.keys.queue, rt.keys.queueEnd, { limit });
  return rows.map((r) => ({ key: r.key, message: decodeEnvelope(r.value, r.key) }));
}

/** The queue length. */
export async function queueLength(tx: Transaction, rt: Runtime): Promise<number> {
  return readInt64LENumber(await tx.get(rt.keys.queueLength));
}

function removeFromQueue(tx: Transaction, rt: Runtime, key: Uint8Array): void {
  tx.clear(key);
  tx.add(rt.keys.queueLength, -1);
}

const REPLY_VALUE = pack(["v"]);

/** Prefix under which a reply value is stored (through the state codec, so any size works). */
export function replyValuePrefix(rt: Runtime, callId: string): Uint8Array {
  return concatBytes(rt.keys.reply(callId), REPLY_VALUE);
}

/** Opens a pending reply slot for a queued call. */
export function openReplySlot(
  tx: Transaction,
  rt: Runtime,
  callId: string,
  deadline: number | null,
): void {
  tx.set(
    rt.keys.reply(callId),
    encodeRecord({ status: "pending", caller: rt.instance, deadline, at: rt.now() }),
  );
}

/** Writes a call's outcome into its slot, if the caller still waits. */
export async function writeReply(
  tx: Transaction,
  rt: Runtime,
  callId: string,
  outcome: { ok: true; value: unknown } | { ok: false; error: StoredError },
): Promise<void> {
  const key = rt.keys.reply(callId);
  const bytes = await tx.get(key);
  if (bytes === undefined) return; // the caller timed out or is gone
  const slot = decodeReplySlot(bytes, key);
  if (slot.status !== "pending") return;
  if (outcome.ok) {
    try {
      // A reply that fits in one value travels inside the slot record: one key written, one
      // read.
      const inline = encodeRecord({
        status: "ok",
        at: rt.now(),
        inline: true,
        value: outcome.value,
      });
      if (inline.length <= rt.tenant.backend.limits.maxValueSize) {
        tx.set(key, inline);
        return;
      }
      rt.codec.write(tx, replyValuePrefix(rt, callId), { found: false }, outcome.value);
    } catch (e) {
      throw storing(e);
    }
    tx.set(key, encodeRecord({ status: "ok", at: rt.now() }));
  } else {
    tx.set(key, encodeRecord({ status: "error", error: outcome.error, at: rt.now() }));
  }
}

/** The reply an answered slot holds (inline, or stored through the codec beside it). */
export async function readReplyValue(
  tx: Transaction,
  rt: Runtime,
  callId: string,
  slot: { inline?: boolean; value?: unknown },
): Promise<unknown> {
  if (slot.inline) return slot.value;
  const stored = await rt.codec.read(tx, replyValuePrefix(rt, callId));
  return stored.found ? stored.state : undefined;
}

/** Removes a reply slot and its value. */
export function clearReplySlot(tx: Transaction, rt: Runtime, callId: string): void {
  const key = rt.keys.reply(callId);
  tx.clearRange(key, subtreeEnd(key));
}

// ---------------------------------------------------------------------------------------------
// Failures and dead letters

/** Longest error text a failed attempt or a dead letter keeps, in UTF-16 code units. */
export const MAX_ERROR_TEXT = 2_000;

/** The first `room` code units of `text` (ending with "…" when cut), never half a pair. */
function clip(text: string, room: number): string {
  if (text.length <= room) return text;
  if (room <= 1) return "";
  let end = room - 1;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--; // a high surrogate without its pair
  return text.slice(0, end) + "…";
}

/**
 * Encodes `build(text)` with `text` a prefix of `full` (at most {@link MAX_ERROR_TEXT}), halved
 * until the record fits in one value: an error's text must never make its record unstorable
 * (a handler may throw an error that quotes its whole argument).
 */
function fitErrorText(
  rt: Runtime,
  full: string,
  build: (text: string) => unknown,
): { bytes: Uint8Array; text: string } {
  const max = rt.tenant.backend.limits.maxValueSize;
  for (let room = Math.min(full.length, MAX_ERROR_TEXT);; room >>= 1) {
    const text = clip(full, room);
    const bytes = encodeRecord(build(text));
    if (bytes.length <= max || room === 0) return { bytes, text };
  }
}

/**
 * What `error` says, as stored with a failed attempt (before clipping): well-formed, since a
 * string with an unpaired surrogate cannot be stored, and the failure would then fail too.
 */
function errorText(error: unknown): string {
  return errorMessage(error).toWellFormed();
}

/**
 * `message` with one more failed attempt, and `error` as its last error (its text clipped so
 * that the record fits in one value).
 */
export function failedAttempt(rt: Runtime, message: Envelope, error: unknown): Envelope & {
  attempts: number;
  lastError: string;
} {
  const attempts = message.attempts + 1;
  return { ...message, attempts, lastError: fittedAttempt(rt, message, error).text };
}

/** {@link failedAttempt}, encoded as the queue entry it becomes. */
export function failedAttemptRecord(rt: Runtime, message: Envelope, error: unknown): Uint8Array {
  return fittedAttempt(rt, message, error).bytes;
}

function fittedAttempt(
  rt: Runtime,
  message: Envelope,
  error: unknown,
): { bytes: Uint8Array; text: string } {
  const attempts = message.attempts + 1;
  return fitErrorText(rt, errorText(error), (lastError) => ({ ...message, attempts, lastError }));
}

/**
 * Records a failed attempt of `entry`: bumps its attempt count in place, or moves it to the
 * dead letters once it reaches the threshold (answering a waiting caller).
 */
export async function recordFailure(
  tx: Transaction,
  rt: Runtime,
  queueKey: Uint8Array | undefined,
  message: Envelope,
  error: unknown,
  effects: TxEffects,
): Promise<"retry" | "dead"> {
  const attempts = message.attempts + 1;
  if (attempts >= rt.deadLetterThreshold) {
    if (queueKey !== undefined) removeFromQueue(tx, rt, queueKey);
    const at = rt.now();
    const base = toStoredError(error, attempts);
    const { bytes, text: lastError } = fitErrorText(rt, errorText(error), (text) => ({
      message: { ...message, attempts, lastError: text },
      attempts,
      error: { ...base, message: text },
      at,
    }));
    const stored = { ...base, message: lastError };
    tx.setVersionstampedKey(
      rt.keys.deadLetters,
      ServerKeys.entrySuffix(effects.stampIndex++),
      bytes,
    );
    tx.add(rt.keys.deadLetterCount, 1);
    if (message.kind === "call" && message.callId !== undefined) {
      await writeReply(tx, rt, message.callId, {
        ok: false,
        error: {
          code: "dead_letter",
          message:
            `Message '${message.name}' was dead-lettered after ${attempts} attempts: ${lastError}`,
          attempts,
          cause: { code: base.code, message: lastError },
        },
      });
    }
    effects.deadLetters.push({ message, attempts, error: stored });
    bumpChange(tx, rt);
    return "dead";
  }
  if (queueKey !== undefined) tx.set(queueKey, failedAttemptRecord(rt, message, error));
  bumpChange(tx, rt);
  return "retry";
}

// ---------------------------------------------------------------------------------------------
// Consuming

/** Work left for after the commit of a batch that took the lock. */
export interface LockedWork {
  /** The event for `handleLocked`. */
  event: LockedEvent;
  /** The state at lock time. */
  state: unknown;
  /** The lock taken. */
  lock: LockRecord;
}

/** What a consume transaction found or did. */
export type ConsumeOutcome =
  | { kind: "idle"; watch: Watch; foreign: boolean }
  | { kind: "locked"; watch: Watch; lock: LockRecord }
  | { kind: "expired"; lock: LockRecord }
  | { kind: "processed"; count: number; lock?: LockedWork; stopped?: string }
  | { kind: "failed"; result: "retry" | "dead" }
  | { kind: "yielded"; head: Uint8Array };

/** A watch that fires when any of `watches` fires; cancelling cancels them all. */
export function anyWatch(...watches: Watch[]): Watch {
  const promise = Promise.race(watches.map((w) => w.promise)).then((fired) => {
    for (const w of watches) w.cancel();
    return fired;
  });
  return { promise, cancel: () => watches.forEach((w) => w.cancel()) };
}

/** Reads the lock record. */
export async function readLock(tx: Transaction, rt: Runtime): Promise<LockRecord | undefined> {
  return lockFrom(rt, await tx.get(rt.keys.lock));
}

/** The lock record stored as `bytes`, if any. */
export function lockFrom(rt: Runtime, bytes: Uint8Array | undefined): LockRecord | undefined {
  return bytes === undefined ? undefined : decodeLock(bytes, rt.keys.lock);
}

/**
 * One consume transaction: if unlocked, applies up to `limit` queued messages in order.
 * A handler failure throws {@link HandlerFailure}; the caller runs the step again with
 * `failing` set, which applies the messages before it and records its failed attempt, so the
 * batch commits exactly the messages before the failure with their effects.
 *
 * `isExpired` judges another holder's lease (by the observer's own clock). `limit` caps the
 * batch (the caller narrows it to 1 to find the message behind a failure that {@link isPoison}
 * names), and `seen.head` receives the first queued entry the step found. With `standby`
 * (a consumer that keeps meeting other instances' writes), the step applies nothing and
 * reports `yielded` unless the head is the one `standby` names (`null`: none seen yet).
 */
export async function consumeStep(
  tx: Transaction,
  rt: Runtime,
  effects: TxEffects,
  failing: HandlerFailure | undefined,
  isExpired: (lock: LockRecord) => boolean,
  limit: number = rt.batchSize,
  seen?: { head?: QueueEntry },
  standby?: Uint8Array | null,
): Promise<ConsumeOutcome> {
  const held = await readLock(tx, rt);
  if (held !== undefined) {
    // Our own lock too: one taken by an attempt whose commit result was unknown runs nowhere
    // (`isExpired` never expires a lock this instance is running).
    if (isExpired(held)) {
      await takeOver(tx, rt, held, effects);
      return { kind: "expired", lock: held };
    }
    return { kind: "locked", watch: tx.watch(rt.keys.lock), lock: held };
  }
  const entries = await queueHead(tx, rt, limit);
  if (seen !== undefined) seen.head = entries[0];
  // A standby leaves the queue to the active consumer while it makes progress: it takes the
  // head only if that is the head it saw at its last look (nobody consumed meanwhile), or if
  // no other consuming instance is there (its misses came from priority messages, say).
  if (
    standby !== undefined && entries.length > 0 &&
    (standby === null || !equalBytes(standby, entries[0]!.key)) &&
    await otherConsumer(tx, rt)
  ) {
    return { kind: "yielded", head: entries[0]!.key };
  }
  if (entries.length === 0) {
    if (await readMeta(tx, rt) === undefined) throw new ServerGoneError(rt.id);
    // Whether another instance wrote the state since this one cached it (or a state it never
    // cached: caching, it caches what it writes): the queue was drained by someone else, which
    // tells a consumer that another one is active (it then backs off).
    const foreign = rt.useCache && writtenElsewhere(rt, await tx.get(rt.keys.stateVersion));
    // The meta key too: a kill clears it, and an idle consumer must notice.
    return {
      kind: "idle",
      watch: anyWatch(tx.watch(rt.keys.queueLength), tx.watch(rt.keys.meta)),
      foreign,
    };
  }
  crashPoint("dequeued");
  const loaded = await loadState(tx, rt);
  let state = loaded.state;
  let count = 0;
  // The applied messages leave the queue together: the first `count` entries are all the
  // queue holds up to the last of them (the range read saw nothing else there, and a
  // serializable commit keeps it so), so one range clear removes them, and the queue length
  // moves once per batch.
  const done = (outcome: ConsumeOutcome): ConsumeOutcome => {
    if (count > 0) {
      tx.clearRange(rt.keys.queue, keyAfter(entries[count - 1]!.key));
      tx.add(rt.keys.queueLength, -count);
    }
    return outcome;
  };
  for (const entry of entries) {
    const m = entry.message;
    if (failing?.queueKey !== undefined && equalBytes(failing.queueKey, entry.key)) {
      // Commit the messages before it, then its failed attempt.
      writeState(tx, rt, loaded, state, effects);
      if (failing.attempts !== undefined && m.attempts !== failing.attempts) {
        // Already recorded, by an attempt of this transaction whose commit result was unknown
        // (or by another consumer that failed it too): count it once.
        return done(count > 0 ? { kind: "processed", count } : { kind: "failed", result: "retry" });
      }
      const result = await recordFailure(tx, rt, entry.key, m, failing.error, effects);
      return done(count > 0 ? { kind: "processed", count } : { kind: "failed", result });
    }
    const from = m.kind === "call" ? { instance: m.sender, callId: m.callId! } : undefined;
    let result: HandlerResult<unknown>;
    // Within a batch, the state a previous handler returned is frozen before the next sees it.
    if (count > 0) state = rt.codec.freeze(state);
    try {
      result = await runHandler(rt, tx, m.kind, m.name, m.arg, from, state, "standard");
      checkState(rt, result.state);
    } catch (e) {
      throw HandlerFailure.wrap(entry.key, e, m.attempts);
    }
    state = result.state;
    count++;
    if (result.kind === "reply") {
      await writeReply(tx, rt, m.callId!, { ok: true, value: result.value });
    }
    if (result.kind !== "lock") effects.actions.push(...result.actions);
    if (result.kind === "lock") {
      writeState(tx, rt, loaded, state, effects);
      const lock = await takeLock(tx, rt, entry.key, m);
      const event: LockedEvent = m.kind === "call"
        ? { kind: "call", name: m.name, arg: m.arg, from: from! }
        : { kind: "cast", name: m.name, arg: m.arg };
      return done({ kind: "processed", count, lock: { event, state, lock } });
    }
    if (result.kind === "stop") {
      if (m.kind === "call") {
        await writeReply(tx, rt, m.callId!, {
          ok: false,
          error: { code: "server_stopped", message: `Server stopped: ${result.reason}` },
        });
      }
      writeState(tx, rt, loaded, state, effects);
      effects.stopReason = result.reason;
      return done({ kind: "processed", count, stopped: result.reason });
    }
  }
  writeState(tx, rt, loaded, state, effects);
  crashPoint("handled");
  return done({ kind: "processed", count });
}

/**
 * Whether the stored state's version `version` says another instance wrote the state since
 * this one cached it, or stored a state this one never cached (caching, it caches what it
 * writes). Only meaningful with the cache on.
 */
export function writtenElsewhere(rt: Runtime, version: Uint8Array | undefined): boolean {
  const cached = rt.cache?.version;
  return cached === undefined
    ? version !== undefined
    : version === undefined || !equalBytes(version, cached);
}

/** Whether another consuming instance of the server has a live presence (snapshot read). */
async function otherConsumer(tx: Transaction, rt: Runtime): Promise<boolean> {
  const now = rt.now();
  const rows = await tx.snapshot.getRange(rt.keys.instances, strinc(rt.keys.instances));
  return rows.some((row) => {
    const p = decodePresence(row.value, row.key);
    return p.consuming && p.instance !== rt.instance && isLive(p, now);
  });
}

/** Takes the lock for the message at `queueKey`, with the next fencing token. */
async function takeLock(
  tx: Transaction,
  rt: Runtime,
  queueKey: Uint8Array,
  message: Envelope,
): Promise<LockRecord> {
  const token = readInt64LE(await tx.get(rt.keys.fence)) + 1n;
  const fence = new Uint8Array(8);
  new DataView(fence.buffer).setBigInt64(0, token, true);
  tx.set(rt.keys.fence, fence);
  const now = rt.now();
  const lock: LockRecord = {
    holder: rt.instance,
    token,
    renewals: 0,
    since: now,
    leaseUntil: now + rt.lockLease,
    lease: rt.lockLease,
    queueKey,
    message,
  };
  tx.set(rt.keys.lock, encodeRecord(lock));
  bumpChange(tx, rt);
  return lock;
}

/**
 * Takes over an expired lock: the in-progress message goes back to the head of the queue with
 * one more attempt (or to the dead letters), and the lock is cleared.
 */
export async function takeOver(
  tx: Transaction,
  rt: Runtime,
  held: LockRecord,
  effects: TxEffects,
): Promise<void> {
  tx.clear(rt.keys.lock);
  const error = new LockLostError(
    `Lock lease of instance ${held.holder} expired while it handled '${held.message.name}'`,
  );
  const result = await recordFailure(tx, rt, undefined, held.message, error, effects);
  if (result === "retry") {
    tx.set(
      held.queueKey,
      failedAttemptRecord(rt, held.message, error),
    );
    tx.add(rt.keys.queueLength, 1);
  }
  bumpChange(tx, rt);
}

/**
 * Takes the lock for a call handled inline (never queued): a takeover puts it back at the very
 * head of the queue (a zero stamp), where it logically was.
 */
export async function takeOverInline(
  tx: Transaction,
  rt: Runtime,
  message: Envelope,
  state: unknown,
): Promise<LockedWork> {
  const queueKey = new Uint8Array(rt.keys.queue.length + 12);
  queueKey.set(rt.keys.queue);
  const lock = await takeLock(tx, rt, queueKey, message);
  return lockedWork(lock, state);
}

/** The work `handleLocked` continues for `lock`, with the state at lock time. */
export function lockedWork(lock: LockRecord, state: unknown): LockedWork {
  const m = lock.message;
  const event: LockedEvent = m.kind === "call"
    ? { kind: "call", name: m.name, arg: m.arg, from: { instance: m.sender, callId: m.callId! } }
    : { kind: "cast", name: m.name, arg: m.arg };
  return { event, state, lock };
}

/** Renews this instance's lease; false if the lock is no longer ours. */
export async function renewLock(tx: Transaction, rt: Runtime, token: bigint): Promise<boolean> {
  const held = await readLock(tx, rt);
  if (held === undefined || held.token !== token || held.holder !== rt.instance) return false;
  const now = rt.now();
  tx.set(
    rt.keys.lock,
    encodeRecord({ ...held, renewals: held.renewals + 1, leaseUntil: now + held.lease }),
  );
  return true;
}

/** Verifies that this instance still holds the lock with `token`; throws LockLostError if not. */
async function checkHeld(tx: Transaction, rt: Runtime, token: bigint): Promise<LockRecord> {
  const held = await readLock(tx, rt);
  if (held === undefined || held.token !== token || held.holder !== rt.instance) {
    throw new LockLostError(
      `Instance ${rt.instance} lost the lock (token ${token}) of '${rt.id}' before its write-back`,
    );
  }
  return held;
}

/**
 * Commits `handleLocked`'s result: verifies the fencing token, applies the result's state on
 * top of the current state (three-way merge against the state at lock time when messages on
 * the priority path changed it meanwhile), answers the caller and releases the lock.
 */
export async function writeBack(
  tx: Transaction,
  rt: Runtime,
  work: LockedWork,
  result: HandlerResult<unknown>,
  effects: TxEffects,
): Promise<void> {
  const held = await checkHeld(tx, rt, work.lock.token);
  const loaded = await loadState(tx, rt);
  const next = loaded.state === work.state || deepEqual(loaded.state, work.state)
    ? result.state
    : merge3(work.state, result.state, loaded.state);
  checkState(rt, next);
  writeState(tx, rt, loaded, next, effects);
  const m = held.message;
  if (m.kind === "call") {
    if (result.kind === "reply") {
      await writeReply(tx, rt, m.callId!, { ok: true, value: result.value });
    } else if (result.kind === "stop") {
      await writeReply(tx, rt, m.callId!, {
        ok: false,
        error: { code: "server_stopped", message: `Server stopped: ${result.reason}` },
      });
    }
  }
  if (result.kind !== "lock") effects.actions.push(...result.actions);
  if (result.kind === "stop") effects.stopReason = result.reason;
  tx.clear(rt.keys.lock);
  bumpChange(tx, rt);
}

/** Records that `handleLocked` (or its write-back) failed: requeue or dead-letter, release. */
export async function lockedFailure(
  tx: Transaction,
  rt: Runtime,
  work: LockedWork,
  error: unknown,
  effects: TxEffects,
): Promise<"retry" | "dead"> {
  const held = await checkHeld(tx, rt, work.lock.token);
  tx.clear(rt.keys.lock);
  const result = await recordFailure(tx, rt, undefined, held.message, error, effects);
  if (result === "retry") {
    tx.set(
      held.queueKey,
      failedAttemptRecord(rt, held.message, error),
    );
    tx.add(rt.keys.queueLength, 1);
  }
  return result;
}

/**
 * Releases the lock of a `handleLocked` that gave up because its instance stops: the message
 * goes back to its place at the head of the queue with its attempts unchanged.
 */
export async function lockedRelease(tx: Transaction, rt: Runtime, work: LockedWork): Promise<void> {
  const held = await checkHeld(tx, rt, work.lock.token);
  tx.clear(rt.keys.lock);
  tx.set(held.queueKey, encodeRecord(held.message));
  tx.add(rt.keys.queueLength, 1);
}

/** Checks a handler result returned by `handleLocked`. */
export function checkLockedResult(
  rt: Runtime,
  event: LockedEvent,
  result: unknown,
): HandlerResult<unknown> {
  if (!isHandlerResult(result)) {
    throw badReturn("handleLocked", result, "reply(…), noreply(…) or stop(…)");
  }
  if (result.kind === "lock") throw badReturn("handleLocked", result, "no lock(…) inside a lock");
  if (event.kind === "call" && result.kind === "noreply") {
    throw badReturn("handleLocked", result, "reply(…) or stop(…): the call must be answered");
  }
  if (event.kind === "cast" && result.kind === "reply") {
    throw badReturn("handleLocked", result, "noreply(…) or stop(…) for a cast");
  }
  if (result.kind === "reply") checkReply(rt, event.name, result.value);
  checkState(rt, result.state);
  return result;
}
