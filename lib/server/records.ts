/**
 * The records dgen stores besides the state: queued messages, the lock, reply slots, meta,
 * presence and dead letters. Each is encoded with the value encoding and checked against a
 * valibot schema when read, so corrupt data is reported (`CodecError` naming the key) rather
 * than misread.
 *
 * @module
 */

import * as v from "valibot";
import { printable } from "../bytes.ts";
import { CodecError } from "../errors.ts";
import { decode, encode } from "../codec/value.ts";
import { errorCode, errorMessage } from "../describe.ts";

/** A queued message. */
export interface Envelope {
  /** Standard-path message kind. */
  kind: "call" | "cast";
  /** Handler name. */
  name: string;
  /** Argument. */
  arg: unknown;
  /** Failed attempts so far. */
  attempts: number;
  /** Request id: makes enqueue idempotent under retried unknown commits. */
  request: string;
  /** For calls: the reply slot's id. */
  callId?: string;
  /** Instance the message was sent through. */
  sender: string;
  /** Enqueue time, ms since the epoch. */
  at: number;
  /** Message of the last failure, if any. */
  lastError?: string;
}

const envelopeSchema = v.object({
  kind: v.picklist(["call", "cast"]),
  name: v.string(),
  arg: v.unknown(),
  attempts: v.pipe(v.number(), v.integer(), v.minValue(0)),
  request: v.string(),
  callId: v.optional(v.string()),
  sender: v.string(),
  at: v.number(),
  lastError: v.optional(v.string()),
});

/** The lock, with the message that took it. */
export interface LockRecord {
  /** Instance holding the lock. */
  holder: string;
  /** Fencing token: strictly increasing per server. */
  token: bigint;
  /** Renewals so far; observers judge the lease by its progress on their own clock. */
  renewals: number;
  /** When the lock was taken (holder's clock, ms since the epoch; for display). */
  since: number;
  /** When the lease ends unless renewed (holder's clock; for display). */
  leaseUntil: number;
  /** Lease length, ms. */
  lease: number;
  /** The queue key the message had, so a takeover puts it back at the head. */
  queueKey: Uint8Array;
  /** The message being handled. */
  message: Envelope;
}

const lockSchema = v.object({
  holder: v.string(),
  token: v.bigint(),
  renewals: v.pipe(v.number(), v.integer(), v.minValue(0)),
  since: v.number(),
  leaseUntil: v.number(),
  lease: v.pipe(v.number(), v.minValue(1)),
  queueKey: v.instance(Uint8Array),
  message: envelopeSchema,
});

/**
 * An error as stored in a reply slot or dead letter.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, start, type StoredError } from "../../mod.ts";
 * const boom = () => Promise.reject(new Error("boom"));
 * const Fragile = defineServer({ name: "fragile", init: () => 0, handleCall: { boom } });
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(Fragile, [], { tenant, deadLetterThreshold: 1 });
 * await ref.call("boom").catch(() => {});
 * const error: StoredError = (await ref.deadLetters.list())[0]!.error;
 * console.log(error); // { code: "handler", message: "boom", attempts: 1 }
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
export interface StoredError {
  /** The `DGenError` code, or `"handler"` for other errors. */
  code: string;
  /** Its message. */
  message: string;
  /** For dead letters: attempts made. */
  attempts?: number;
  /** For a dead-lettered call's reply: the last failure's code and message. */
  cause?: { code: string; message: string };
  /** For a `StateConflictError`: where the two sides disagree. */
  path?: string;
}

const storedErrorSchema = v.object({
  code: v.string(),
  message: v.string(),
  attempts: v.optional(v.number()),
  path: v.optional(v.string()),
  cause: v.optional(v.object({ code: v.string(), message: v.string() })),
});

/** A reply slot: pending until the consumer writes the outcome. */
export type ReplySlot =
  | { status: "pending"; caller: string; deadline: number | null; at: number }
  | { status: "ok"; at: number; inline?: boolean; value?: unknown }
  | { status: "error"; error: StoredError; at: number };

const replySlotSchema = v.variant("status", [
  v.object({
    status: v.literal("pending"),
    caller: v.string(),
    deadline: v.nullable(v.number()),
    at: v.number(),
  }),
  v.object({
    status: v.literal("ok"),
    at: v.number(),
    inline: v.optional(v.boolean()),
    value: v.optional(v.unknown()),
  }),
  v.object({ status: v.literal("error"), error: storedErrorSchema, at: v.number() }),
]);

const requestSchema = v.object({
  at: v.number(),
  outcome: v.picklist(["queued", "reply", "noreply", "stop"]),
  reason: v.optional(v.string()),
});

/** Meta record of a server. */
export interface MetaRecord {
  /** Version of the state's shape (the definition's `version`). */
  version: number;
  /** Creation time, ms since the epoch. */
  created: number;
  /** The definition's name. */
  name: string;
}

const metaSchema = v.object({
  version: v.pipe(v.number(), v.integer(), v.minValue(1)),
  created: v.number(),
  name: v.string(),
});

/** Presence of an instance. */
export interface PresenceRecord {
  /** Instance id. */
  instance: string;
  /** `"deno"`, `"bun"` or `"node"`. */
  runtime: string;
  /** OS process id. */
  pid: number;
  /** Whether it consumes the queue. */
  consuming: boolean;
  /** Start time, ms since the epoch. */
  since: number;
  /** Last heartbeat, ms since the epoch. */
  lastSeen: number;
}

/** How often an instance refreshes its presence record, ms. */
export const HEARTBEAT_INTERVAL = 5_000;
/** A presence not refreshed for this long (three heartbeats) belongs to a dead instance. */
export const PRESENCE_TTL = 3 * HEARTBEAT_INTERVAL;

/** Whether a presence record was refreshed recently enough to count as live at `now`. */
export function isLive(p: PresenceRecord, now: number): boolean {
  return p.lastSeen >= now - PRESENCE_TTL;
}

const presenceSchema = v.object({
  instance: v.string(),
  runtime: v.string(),
  pid: v.number(),
  consuming: v.boolean(),
  since: v.number(),
  lastSeen: v.number(),
});

/** A dead-lettered message. */
export interface DeadLetterRecord {
  /** The message. */
  message: Envelope;
  /** Attempts made. */
  attempts: number;
  /** The last failure. */
  error: StoredError;
  /** When it was dead-lettered. */
  at: number;
}

const deadLetterSchema = v.object({
  message: envelopeSchema,
  attempts: v.number(),
  error: storedErrorSchema,
  at: v.number(),
});

function decoder<T>(schema: v.GenericSchema<unknown, T>, what: string) {
  return (bytes: Uint8Array, key: Uint8Array): T => {
    const where = printable(key);
    const value = decode(bytes, where);
    const r = v.safeParse(schema, value);
    if (!r.success) {
      throw new CodecError(`Stored ${what} is malformed: ${r.issues[0]?.message}`, where);
    }
    return r.output;
  };
}

/** Encodes any record. */
export const encodeRecord = (record: unknown): Uint8Array => encode(record, "record");
const decodeEnvelopeChecked = decoder(envelopeSchema, "message");

/**
 * Decodes a queued message. The common, well-formed case is checked by hand (this runs for
 * every message consumed); anything unusual goes through the schema for a precise error.
 */
export function decodeEnvelope(bytes: Uint8Array, key: Uint8Array): Envelope {
  let m: Partial<Envelope> | null;
  try {
    m = decode(bytes, "") as Partial<Envelope> | null;
  } catch {
    return decodeEnvelopeChecked(bytes, key); // throws, naming the key
  }
  if (
    m !== null && typeof m === "object" && (m.kind === "call" || m.kind === "cast") &&
    typeof m.name === "string" && typeof m.attempts === "number" &&
    Number.isInteger(m.attempts) && m.attempts >= 0 && typeof m.request === "string" &&
    typeof m.sender === "string" && typeof m.at === "number" &&
    (m.callId === undefined || typeof m.callId === "string") &&
    (m.lastError === undefined || typeof m.lastError === "string")
  ) {
    return m as Envelope;
  }
  return decodeEnvelopeChecked(bytes, key);
}
/** Decodes a lock record. */
export const decodeLock = decoder(lockSchema, "lock");
/** Decodes a reply slot. */
export const decodeReplySlot = decoder(
  replySlotSchema as v.GenericSchema<unknown, ReplySlot>,
  "reply slot",
);
/** Decodes a request record. */
export const decodeRequest = decoder(requestSchema, "request record");
/** Decodes a meta record. */
export const decodeMeta = decoder(metaSchema, "meta record");
/** Decodes a presence record. */
export const decodePresence = decoder(presenceSchema, "presence record");
/** Decodes a dead letter. */
export const decodeDeadLetter = decoder(deadLetterSchema, "dead letter");

let counter = 0;
/** Random per process: ids from different processes never collide. */
const processTag = Array.from(
  crypto.getRandomValues(new Uint32Array(2)),
  (n) => n.toString(36).padStart(7, "0"),
).join("");
/**
 * A unique id whose string order follows creation time (ms, base 36), so records keyed by it
 * can be garbage-collected with one range clear: time, a per-process counter, and a random
 * per-process tag.
 */
export function timeOrderedId(now = Date.now()): string {
  counter = (counter + 1) % 2_176_782_336; // 36^6
  // Many ids share a millisecond: its rendering is kept.
  if (now !== lastTime) {
    lastTime = now;
    lastTimePart = now.toString(36).padStart(9, "0");
  }
  const n = counter.toString(36);
  // Zeros sliced on, not padStart (twice as fast on Bun, measured): this runs on every call.
  return lastTimePart + ZEROS.slice(n.length) + n + processTag;
}
const ZEROS = "000000";
let lastTime = NaN;
let lastTimePart = "";

/** The creation time encoded in a {@link timeOrderedId}. */
export function idTime(id: string): number {
  return parseInt(id.slice(0, 9), 36);
}

/** Converts an error into its stored form. */
export function toStoredError(e: unknown, attempts?: number): StoredError {
  const code = errorCode(e) ?? "handler";
  const message = errorMessage(e);
  const stored: StoredError = attempts === undefined
    ? { code, message }
    : { code, message, attempts };
  // A state conflict keeps its path, so that it can be given back as a StateConflictError.
  if (code === "state_conflict" && typeof (e as { path?: unknown }).path === "string") {
    stored.path = (e as { path: string }).path;
  }
  return stored;
}
