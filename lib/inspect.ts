/**
 * A read model of a tenant for tools such as the dashboard: the servers it holds, a view of
 * each (state, queue, lock, dead letters, instances), a change feed driven by the backend's
 * watches, and a lossless JSON display form for state values. Reads only; the runtime does
 * not know it is watched.
 *
 * @module
 */

import { readInt64LE, strinc, toHex } from "./bytes.ts";
import { createStateCodec } from "./codec/state.ts";
import { CHANGE_INDEX, SERVER_INDEX, ServerKeys } from "./server/keys.ts";
import {
  decodeEnvelope,
  decodeLock,
  decodeMeta,
  decodePresence,
  isLive,
} from "./server/records.ts";
import type { Tenant } from "./tenant.ts";
import { unpack } from "./tuple.ts";

/** One queued message as shown to tools. */
export interface QueuedView {
  /** `"call"` or `"cast"`. */
  kind: "call" | "cast";
  /** Message name. */
  name: string;
  /** Argument, in display form. */
  arg: unknown;
  /** Failed attempts so far. */
  attempts: number;
}

/** One live instance of a server as shown to tools. */
export interface InstanceView {
  /** Instance id. */
  instance: string;
  /** Whether it takes messages from the queue. */
  consuming: boolean;
  /** `"deno"`, `"bun"` or `"node"`. */
  runtime: string;
  /** Its OS process id. */
  pid: number;
  /** When it started, ms since the epoch. */
  since: number;
  /** Its last heartbeat, ms since the epoch. */
  lastSeen: number;
}

/** What tools see of one server. */
export interface ServerView {
  /** Server id. */
  id: string;
  /** Version of the stored state (hex of its versionstamp; grows with every state write). */
  version: string;
  /** The state, in display form (see {@link toDisplay}). */
  state: unknown;
  /** Queue length and its first messages. */
  queue: { length: number; head: QueuedView[] };
  /** The lock, if held. */
  lock: null | { holder: string; since: number; leaseUntil: number; message: string };
  /** Dead letters. */
  deadLetters: { length: number };
  /** Live instances. */
  instances: InstanceView[];
}

/**
 * A JSON-safe, lossless display form of a state value: plain objects, arrays, strings, finite
 * numbers, booleans and null stay as they are; everything JSON cannot hold becomes a one-key
 * tagged object: `{"$map": [[k, v], …]}`, `{"$set": […]}`, `{"$bigint": "…"}`,
 * `{"$bytes": "hex"}`, `{"$date": "ISO"}`, `{"$undefined": true}`, `{"$number": "NaN" |
 * "Infinity" | "-Infinity" | "-0"}`. A plain object whose only key starts with `$` is wrapped
 * as `{"$object": {…}}` so it cannot be mistaken for a tag.
 */
export function toDisplay(value: unknown): unknown {
  if (value === undefined) return { $undefined: true };
  if (value === null || typeof value === "string" || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (Object.is(value, -0)) return { $number: "-0" };
    return Number.isFinite(value) ? value : { $number: String(value) };
  }
  if (typeof value === "bigint") return { $bigint: value.toString() };
  if (value instanceof Date) {
    return { $date: Number.isNaN(value.getTime()) ? "Invalid Date" : value.toISOString() };
  }
  if (value instanceof Uint8Array) return { $bytes: toHex(value) };
  if (value instanceof Map) {
    return { $map: [...value].map(([k, v]) => [toDisplay(k), toDisplay(v)]) };
  }
  if (value instanceof Set) return { $set: [...value].map(toDisplay) };
  if (Array.isArray(value)) return value.map(toDisplay);
  if (typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = toDisplay(v);
    const keys = Object.keys(out);
    return keys.length === 1 && keys[0]!.startsWith("$") ? { $object: out } : out;
  }
  return String(value);
}

/** The ids of the servers stored in `tenant`, in id order. */
export async function listServers(tenant: Tenant): Promise<string[]> {
  const rows = await tenant.transact(
    (tx) => tx.getRange(SERVER_INDEX, strinc(SERVER_INDEX)),
    { readOnly: true },
  );
  return rows.map((r) => unpack(r.key)[1] as string);
}

/** Options of {@link readServerView}. */
export interface ViewOptions {
  /** How many queued messages to show. @default 10 */
  headLimit?: number;
}

/** Reads the view of server `id` in one snapshot; undefined if it does not exist. */
export async function readServerView(
  tenant: Tenant,
  id: string,
  options: ViewOptions = {},
): Promise<ServerView | undefined> {
  const keys = new ServerKeys(id);
  const codec = createStateCodec({ maxValueSize: tenant.backend.limits.maxValueSize });
  return await tenant.transact(async (tx) => {
    const metaBytes = await tx.get(keys.meta);
    if (metaBytes === undefined) return undefined;
    decodeMeta(metaBytes, keys.meta);
    const [stored, sv, qn, head, lockBytes, dln, instances] = await Promise.all([
      codec.read(tx, keys.state),
      tx.get(keys.stateVersion),
      tx.get(keys.queueLength),
      tx.getRange(keys.queue, keys.queueEnd, { limit: options.headLimit ?? 10 }),
      tx.get(keys.lock),
      tx.get(keys.deadLetterCount),
      tx.getRange(keys.instances, strinc(keys.instances)),
    ]);
    const lock = lockBytes === undefined ? null : decodeLock(lockBytes, keys.lock);
    const now = Date.now();
    return {
      id,
      version: sv === undefined ? "" : toHex(sv),
      state: toDisplay(stored.found ? stored.state : undefined),
      queue: {
        length: Number(readInt64LE(qn)),
        head: head.map((r) => {
          const m = decodeEnvelope(r.value, r.key);
          return { kind: m.kind, name: m.name, arg: toDisplay(m.arg), attempts: m.attempts };
        }),
      },
      lock: lock === null ? null : {
        holder: lock.holder,
        since: lock.since,
        leaseUntil: lock.leaseUntil,
        message: lock.message.name,
      },
      deadLetters: { length: Number(readInt64LE(dln)) },
      // Presence of instances that died without stopping lingers until a consumer's garbage
      // collection; tools show only live ones.
      instances: instances.map((r) => decodePresence(r.value, r.key)).filter((p) => isLive(p, now))
        .map((p) => {
          return {
            instance: p.instance,
            consuming: p.consuming,
            runtime: p.runtime,
            pid: p.pid,
            since: p.since,
            lastSeen: p.lastSeen,
          };
        }),
    };
  }, { readOnly: true });
}

/**
 * Calls `onChange` with the ids of the servers that changed (were created, written, killed, or
 * changed queue, lock, dead letters or instances), first with every server (an empty list for
 * an empty tenant), then after each change, until `signal` aborts; the next read waits for the
 * promise `onChange` returns, so a slow consumer throttles the feed instead of queueing. Driven by one watch on the tenant's change counter; a change
 * costs one range read of the per-server counters, not a re-read of every server.
 */
export async function watchTenant(
  tenant: Tenant,
  onChange: (ids: string[]) => void | Promise<void>,
  signal: AbortSignal,
): Promise<void> {
  const seen = new Map<string, bigint>();
  const tenantKey = new ServerKeys("").tenantChange;
  let first = true;
  while (!signal.aborted) {
    const { rows, watch } = await tenant.transact(async (tx) => {
      const rows = await tx.getRange(CHANGE_INDEX, strinc(CHANGE_INDEX));
      return { rows, watch: tx.watch(tenantKey) };
    }, { readOnly: true });
    const changed: string[] = [];
    const present = new Set<string>();
    for (const r of rows) {
      const id = unpack(r.key)[1] as string;
      present.add(id);
      const n = readInt64LE(r.value);
      if (seen.get(id) !== n) changed.push(id);
      seen.set(id, n);
    }
    for (const id of [...seen.keys()]) {
      if (!present.has(id)) {
        seen.delete(id);
        changed.push(id);
      }
    }
    // The first call comes even for an empty tenant, so a consumer knows the initial read is done.
    if (changed.length > 0 || first) await onChange(changed);
    first = false;
    const onAbort = () => watch.cancel();
    signal.addEventListener("abort", onAbort, { once: true });
    // An abort during the read or onChange has already fired: the listener would never run.
    if (signal.aborted) watch.cancel();
    try {
      await watch.promise;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
