/**
 * A read model of a tenant for tools such as the dashboard: the servers it holds, a view of
 * each (state, queue, lock, dead letters, instances), a change feed driven by the backend's
 * watches, and a lossless JSON display form for state values. Reads only; the runtime does
 * not know it is watched.
 *
 * @module
 */

import * as v from "valibot";
import { EMPTY_BYTES, readInt64LENumber, strinc, toHex } from "./bytes.ts";
import { createStateCodec } from "./codec/state.ts";
import { MEMBERSHIP, SERVER_INDEX, serverIdSchema, ServerKeys } from "./server/keys.ts";
import type { Watch } from "./storage/types.ts";
import {
  decodeEnvelope,
  decodeLock,
  decodeMeta,
  decodePresence,
  isLive,
} from "./server/records.ts";
import { type Tenant, tenantSchema } from "./tenant.ts";
import { unpack } from "./tuple.ts";
import { parse } from "./validate.ts";

const viewOptionsSchema = v.strictObject({
  headLimit: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(10_000))),
});

/**
 * One queued message as shown to tools.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, openMemoryBackend, openTenant, readServerView, start } from "../mod.ts";
 * import type { QueuedView } from "./inspect.ts";
 * const run = (_: number, n: number) => noreply(n);
 * const Jobs = defineServer({ name: "jobs", init: () => 0, handleCast: { run } });
 * const ref = await start(Jobs, [], { tenant: await openTenant(openMemoryBackend(), "demo"), consume: false });
 * await ref.cast("run", 7);
 * const head: QueuedView[] = (await readServerView(ref.tenant, "jobs"))!.queue.head;
 * console.log(head); // [{ kind: "cast", name: "run", arg: 7, attempts: 0 }]
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
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

/**
 * One live instance of a server as shown to tools.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, readServerView, start } from "../mod.ts";
 * import type { InstanceView } from "./inspect.ts";
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(defineServer({ name: "idle", init: () => null }), [], { tenant });
 * const [instance]: InstanceView[] = (await readServerView(tenant, "idle"))!.instances;
 * console.log(instance?.instance === ref.instance, instance?.consuming); // true true
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
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

/**
 * What tools see of one server.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, readServerView, start } from "../mod.ts";
 * import type { ServerView } from "./inspect.ts";
 * const Cart = defineServer({ name: "cart", init: () => new Set(["apple"]) });
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(Cart, [], { tenant });
 * const view: ServerView | undefined = await readServerView(tenant, "cart");
 * console.log(view?.state, view?.queue.length, view?.lock); // { $set: ["apple"] } 0 null
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
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
 *
 * @example
 * ```ts
 * import { toDisplay } from "../mod.ts";
 * const display = toDisplay({ n: 1n, tags: new Set(["a"]), ratio: NaN });
 * console.log(JSON.stringify(display));
 * // {"n":{"$bigint":"1"},"tags":{"$set":["a"]},"ratio":{"$number":"NaN"}}
 * ```
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

/**
 * The ids of the servers stored in `tenant`, in id order.
 *
 * @example
 * ```ts
 * import { defineServer, listServers, openMemoryBackend, openTenant, start } from "../mod.ts";
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const Room = defineServer({ name: "room", init: () => [] as string[] });
 * const lobby = await start(Room, [], { tenant, id: "lobby" });
 * const attic = await start(Room, [], { tenant, id: "attic" });
 * console.log(await listServers(tenant)); // ["attic", "lobby"]
 * await lobby.stop();
 * await attic.stop();
 * await tenant.backend.close();
 * ```
 */
export async function listServers(tenant: Tenant): Promise<string[]> {
  parse(tenantSchema, tenant, "tenant");
  const rows = await tenant.transact(
    (tx) => tx.getRange(SERVER_INDEX, strinc(SERVER_INDEX)),
    { readOnly: true },
  );
  return rows.map((r) => unpack(r.key)[1] as string);
}

/**
 * Options of {@link readServerView}.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, openMemoryBackend, openTenant, readServerView, start } from "../mod.ts";
 * const run = (_: string, n: number) => noreply(n);
 * const Jobs = defineServer({ name: "jobs", init: () => 0, handleCast: { run } });
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(Jobs, [], { tenant, consume: false });
 * await ref.castMany([["run", "a"], ["run", "b"], ["run", "c"]]);
 * const view = await readServerView(tenant, "jobs", { headLimit: 1 }); // ViewOptions
 * console.log(view?.queue.length, view?.queue.head.map((m) => m.arg)); // 3 ["a"]
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
export interface ViewOptions {
  /** How many queued messages to show, 0 to 10,000. @default 10 */
  headLimit?: number;
}

/**
 * Reads the view of server `id` in one snapshot; undefined if it does not exist.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, readServerView, start } from "../mod.ts";
 * const backend = openMemoryBackend();
 * const tenant = await openTenant(backend, "demo");
 * const ref = await start(defineServer({ name: "counter", init: () => 41 }), [], { tenant });
 * console.log((await readServerView(tenant, "counter"))?.state); // 41
 * console.log(await readServerView(tenant, "missing")); // undefined
 * await ref.stop();
 * await backend.close();
 * ```
 */
export async function readServerView(
  tenant: Tenant,
  id: string,
  options: ViewOptions = {},
): Promise<ServerView | undefined> {
  parse(tenantSchema, tenant, "tenant");
  parse(serverIdSchema, id, "id");
  parse(viewOptionsSchema, options, "options");
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
        length: readInt64LENumber(qn),
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
      deadLetters: { length: readInt64LENumber(dln) },
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
 * changed queue, lock, dead letters or instances), first with every server (even none), then
 * after each change, until `signal` aborts. Each server is followed by one backend watch on its
 * own change marker, and the tenant by one on its membership counter, so a change costs one
 * read of that server's marker only, whatever the number of servers. `onChange` calls do not
 * overlap: ids changed meanwhile are batched into the next call.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, start, watchTenant } from "../mod.ts";
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(defineServer({ name: "counter", init: () => 0 }), [], { tenant });
 * const done = new AbortController();
 * await watchTenant(tenant, (ids) => {
 *   console.log(ids); // ["counter"]
 *   done.abort();
 * }, done.signal);
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
export async function watchTenant(
  tenant: Tenant,
  onChange: (ids: string[]) => void | Promise<void>,
  signal: AbortSignal,
): Promise<void> {
  parse(tenantSchema, tenant, "tenant");
  parse(v.function("Expected a function"), onChange, "onChange");
  parse(v.instance(AbortSignal, "Expected an AbortSignal"), signal, "signal");
  const pending = new Set<string>();
  let wake: (() => void) | undefined;
  let initial = -1; // first reads outstanding before the first call (-1: membership not read)
  let failure: unknown;
  const bell = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const fail = (e: unknown) => {
    failure ??= e;
    bell();
  };
  const waitFor = (watch: Watch, stop: AbortSignal) =>
    new Promise<void>((resolve) => {
      const done = () => {
        watch.cancel();
        stop.removeEventListener("abort", done);
        resolve();
      };
      if (stop.aborted) return done();
      stop.addEventListener("abort", done, { once: true });
      watch.promise.then(done);
    });
  const followers = new Map<string, AbortController>();
  const follow = async (id: string, stop: AbortSignal) => {
    const keys = new ServerKeys(id);
    let last: string | undefined;
    let first = true;
    while (!stop.aborted) {
      const { marker, watch } = await tenant.transact(async (tx) => ({
        marker: toHex(await tx.get(keys.change) ?? EMPTY_BYTES),
        watch: tx.watch(keys.change),
      }), { readOnly: true });
      if (first || marker !== last) pending.add(id);
      if (first) {
        first = false;
        if (initial > 0) initial--;
      }
      last = marker;
      bell();
      await waitFor(watch, stop);
    }
  };
  const membership = async () => {
    while (!signal.aborted) {
      const { ids, watch } = await tenant.transact(async (tx) => {
        const rows = await tx.getRange(SERVER_INDEX, strinc(SERVER_INDEX));
        return { ids: rows.map((r) => unpack(r.key)[1] as string), watch: tx.watch(MEMBERSHIP) };
      }, { readOnly: true });
      const present = new Set(ids);
      for (const [id, stop] of followers) {
        if (present.has(id)) continue;
        stop.abort();
        followers.delete(id);
        pending.add(id);
      }
      const fresh = ids.filter((id) => !followers.has(id));
      if (initial === -1) initial = fresh.length;
      for (const id of fresh) {
        const stop = new AbortController();
        followers.set(id, stop);
        follow(id, stop.signal).catch(fail);
      }
      bell();
      await waitFor(watch, signal);
    }
  };
  signal.addEventListener("abort", bell, { once: true });
  membership().catch(fail);
  try {
    let first = true;
    while (!signal.aborted) {
      if (failure !== undefined) throw failure;
      const ready = first ? initial === 0 : pending.size > 0;
      if (!ready) {
        await new Promise<void>((r) => wake = r);
        continue;
      }
      // The first call comes even for an empty tenant, so a consumer knows the initial read is done.
      const ids = [...pending];
      pending.clear();
      first = false;
      await onChange(ids);
    }
  } finally {
    signal.removeEventListener("abort", bell);
    for (const stop of followers.values()) stop.abort();
  }
}
