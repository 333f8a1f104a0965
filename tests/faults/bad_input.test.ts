/**
 * The bad-input catalogue: every case feeds one bad input to a public entry point (options,
 * messages, state, keys, stored data, the dashboard's HTTP side, the inspection and byte tools)
 * and expects a clear error (its class, its `code`, and the field, path or key it names) with
 * nothing written: the backend's every key and value is the same before and after (stored-data
 * cases compare after the corruption: it is reported, never reset). `DGEN_PRINT_CATALOGUE=1`
 * prints the table that docs/faults.md carries.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import * as v from "valibot";
import {
  type Backend,
  CodecError,
  compareTuples,
  defineServer,
  int64LE,
  listServers,
  lock,
  noreply,
  openFoundationdbBackend,
  openMemoryBackend,
  openPostgresBackend,
  openSqliteBackend,
  openTenant,
  readInt64LE,
  readServerView,
  reply,
  sandboxOpen,
  serveDashboard,
  type ServerRef,
  start,
  type Tenant,
  unpack,
  watchTenant,
  withFaults,
} from "../../mod.ts";
import { ServerKeys } from "../../lib/server/keys.ts";
import { encodeRecord } from "../../lib/server/records.ts";
import { toHex } from "../../lib/bytes.ts";
import { waitFor } from "../_helpers.ts";

interface State {
  n: number;
  items: Array<{ id: string; v: number }>;
}

const Subject = defineServer({
  name: "subject",
  init: (): State => ({ n: 0, items: [{ id: "a", v: 1 }] }),
  schemas: {
    call: { setN: v.number() },
    cast: { setN: v.number() },
    info: v.object({ ping: v.string() }),
    reply: { broken: v.string() },
    state: v.object({
      n: v.number(),
      items: v.array(v.object({ id: v.string(), v: v.number() })),
    }),
  },
  handleCall: {
    get: (_: undefined, _from, s: State) => reply(s, s),
    setN: (n: number, _from, s: State) => reply(n, { ...s, n }),
    broken: (_: undefined, _from, s: State) => reply(42 as unknown as string, s),
    badState: (_: undefined, _from, s: State) => reply(1, { ...s, n: "x" as unknown as number }),
    fnState: (_: undefined, _from, s: State) =>
      reply(1, { ...s, extra: { f: () => 1 } } as unknown as State),
    fnReply: (_: undefined, _from, s: State) => reply(() => 1, s),
    bigState: (_: undefined, _from, s: State) =>
      reply(1, { ...s, items: [{ id: "x".repeat(1_500_000), v: 1 }] }),
    bigKey: (_: undefined, _from, s: State, ctx) => {
      ctx.tx.set(new Uint8Array(20_000), new Uint8Array(1));
      return reply(1, { ...s, n: s.n + 1 });
    },
    textKey: (_: undefined, _from, s: State, ctx) => {
      ctx.tx.set("k" as unknown as Uint8Array, new Uint8Array(1));
      return reply(1, { ...s, n: s.n + 1 });
    },
    arrayKey: (_: undefined, _from, s: State, ctx) => {
      ctx.tx.set([1, 2] as unknown as Uint8Array, new Uint8Array(1));
      return reply(1, { ...s, n: s.n + 1 });
    },
    slow: (_: undefined, _from, s: State) => lock(s),
  },
  handleCast: {
    setN: (n: number, s: State) => noreply({ ...s, n }),
    fail: (_: undefined, _s: State) => {
      throw new Error("always fails");
    },
  },
  handleInfo: (_info: { ping: string }, s: State) => noreply(s),
  handleLocked: (_e, s: State) => reply(1, s),
});

const NoInfo = defineServer({ name: "noinfo", init: () => 0 });

/** What a case acts on: a fresh memory backend (small transaction limit) and instances. */
interface Env {
  backend: Backend;
  tenant: Tenant;
  keys: ServerKeys;
  /** A sending instance without cache (every read goes to storage). */
  ref: ServerRef<typeof Subject>;
  dir: string;
  dashboard?: { url: string; close(): Promise<void> };
}

/** What the error must say. */
interface Expect {
  /** Error class name, or `HTTP <status>`. */
  error: string;
  /** The `code` (or the JSON `error` of an HTTP response). */
  code: string;
  /** The field, path or key it names: `issues[0].path` for ValidationError, `path` for CodecError, else the message. */
  names: string | RegExp;
}

interface Case extends Expect {
  area: "options" | "messages" | "state" | "keys" | "stored data" | "HTTP" | "tools";
  input: string;
  /** Prepares (e.g. corrupts) before the snapshot. */
  setup?: (env: Env) => Promise<void>;
  act: (env: Env) => Promise<unknown>;
  /** The part of the backend compared (default: all of it). */
  scope?: (env: Env) => [Uint8Array, Uint8Array];
  /** Also checks that no file was created at this path. */
  noFile?: (env: Env) => string;
  /** Needs a dashboard with a token. */
  dashboard?: boolean;
}

/** Runs a synchronous entry point as an act: what it throws becomes the promise's rejection. */
const later = (f: () => unknown): Promise<unknown> => Promise.resolve().then(f);

const garbage = new Uint8Array([0xff, 0xfe, 0x00, 0x13]);
const TOKEN = "s3cret";
const ALL: [Uint8Array, Uint8Array] = [new Uint8Array([0x00]), new Uint8Array([0xff, 0xff])];

async function firstKey(env: Env, prefix: Uint8Array, end: Uint8Array): Promise<Uint8Array> {
  const rows = await env.backend.transact((tx) => tx.getRange(prefix, end, { limit: 1 }));
  assert.equal(rows.length, 1, "fixture: an entry to corrupt");
  return rows[0]!.key;
}

async function corrupt(env: Env, key: Uint8Array, value: Uint8Array = garbage): Promise<void> {
  await env.backend.transact((tx) => tx.set(key, value));
}

async function deadLetterFixture(env: Env): Promise<Uint8Array> {
  const consumer = await start(Subject, [], { tenant: env.tenant, deadLetterThreshold: 1 });
  const error = console.error;
  console.error = () => {};
  try {
    await consumer.cast("fail");
    await waitFor(
      async () => (await consumer.deadLetters.list()).length === 1,
      5_000,
      "fixture: no dead letter",
    );
  } finally {
    await consumer.stop();
    console.error = error;
  }
  return await firstKey(env, env.keys.deadLetters, env.keys.deadLettersEnd);
}

async function http(
  env: Env,
  path: string,
  init: RequestInit & { token?: string | null } = {},
): Promise<{ status: number; error: string; message: string }> {
  const url = new URL(path, env.dashboard!.url);
  const headers = new Headers(init.headers);
  if (init.token !== null) headers.set("authorization", `Bearer ${init.token ?? TOKEN}`);
  const res = await fetch(url, { ...init, headers });
  const text = await res.text();
  let body: { error?: string; message?: string } = {};
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: reported below as missing fields.
  }
  return { status: res.status, error: body.error ?? "", message: body.message ?? text };
}

const K = (name: string) => new RegExp(`\\\\x02${name}\\\\x00`);

const cases: Case[] = [
  // ---- options: backends
  {
    area: "options",
    input: "`openSqliteBackend({})` (no path)",
    error: "ValidationError",
    code: "validation",
    names: "options.path",
    act: () => openSqliteBackend({} as never),
  },
  {
    area: "options",
    input: '`openSqliteBackend({ path: ":memory:" })`',
    error: "ValidationError",
    code: "validation",
    names: "options.path",
    act: () => openSqliteBackend({ path: ":memory:" }),
  },
  {
    area: "options",
    input: '`openSqliteBackend` with `synchronous: "sometimes"`',
    error: "ValidationError",
    code: "validation",
    names: "options.synchronous",
    act: (e) =>
      openSqliteBackend({ path: join(e.dir, "a.sqlite"), synchronous: "sometimes" as never }),
    noFile: (e) => join(e.dir, "a.sqlite"),
  },
  {
    area: "options",
    input: "`openSqliteBackend` with `limits.maxValueSize: -1`",
    error: "ValidationError",
    code: "validation",
    names: "options.limits.maxValueSize",
    act: (e) => openSqliteBackend({ path: join(e.dir, "b.sqlite"), limits: { maxValueSize: -1 } }),
    noFile: (e) => join(e.dir, "b.sqlite"),
  },
  {
    area: "options",
    input: "`openSqliteBackend` with an unknown option",
    error: "ValidationError",
    code: "validation",
    names: "options.nope",
    act: (e) => openSqliteBackend({ path: join(e.dir, "c.sqlite"), nope: 1 } as never),
    noFile: (e) => join(e.dir, "c.sqlite"),
  },
  {
    area: "options",
    input: "`openMemoryBackend({ limits: { maxKeySize: 0 } })`",
    error: "ValidationError",
    code: "validation",
    names: "options.limits.maxKeySize",
    act: () => Promise.resolve().then(() => openMemoryBackend({ limits: { maxKeySize: 0 } })),
  },
  {
    area: "options",
    input: "`openPostgresBackend({ url: 5 })`",
    error: "ValidationError",
    code: "validation",
    names: "options.url",
    act: () => openPostgresBackend({ url: 5 } as never),
  },
  {
    area: "options",
    input: "`openPostgresBackend` with a URL that does not parse (port 99999, a password)",
    error: "ValidationError",
    code: "validation",
    names: "options.url",
    act: async () => {
      try {
        return await openPostgresBackend({ url: "postgres://app:s3cretPW@127.0.0.1:99999/app" });
      } catch (e) {
        assert.ok(!String((e as Error).message).includes("s3cretPW"), "the password is not shown");
        throw e;
      }
    },
  },
  {
    area: "options",
    input: "`openFoundationdbBackend({ clusterFile: 5 })`",
    error: "ValidationError",
    code: "validation",
    names: "options.clusterFile",
    act: () => openFoundationdbBackend({ clusterFile: 5 } as never),
  },
  {
    area: "options",
    input: "`withFaults(backend, { seed: 1.5 })`",
    error: "ValidationError",
    code: "validation",
    names: "options.seed",
    act: (e) => Promise.resolve().then(() => withFaults(e.backend, { seed: 1.5 })),
  },
  {
    area: "options",
    input: "`withFaults` with `conflictRate: 2`",
    error: "ValidationError",
    code: "validation",
    names: "options.conflictRate",
    act: (e) => Promise.resolve().then(() => withFaults(e.backend, { seed: 1, conflictRate: 2 })),
  },
  {
    area: "options",
    input: "`transact(fn, { maxRetries: -1 })`",
    error: "ValidationError",
    code: "validation",
    names: "options.maxRetries",
    act: (e) => e.backend.transact(() => {}, { maxRetries: -1 }),
  },
  {
    area: "options",
    input: '`sandboxOpen("../x", "t")` (a path, not a file name)',
    error: "ValidationError",
    code: "validation",
    names: "db",
    act: () => sandboxOpen("../x", "t"),
  },
  {
    area: "options",
    input: '`openTenant({}, "t")` (not a backend)',
    error: "ValidationError",
    code: "validation",
    names: "backend",
    act: () => openTenant({} as never, "t"),
  },
  // ---- options: definitions and start
  {
    area: "options",
    input: "`defineServer` without `init`",
    error: "ValidationError",
    code: "validation",
    names: "spec.init",
    act: () => Promise.resolve().then(() => defineServer({ name: "x" } as never)),
  },
  {
    area: "options",
    input: "`defineServer` with a schema that is not a valibot schema",
    error: "ValidationError",
    code: "validation",
    names: "spec.schemas.call.go",
    act: () =>
      Promise.resolve().then(() =>
        defineServer({
          name: "x",
          init: () => 0,
          schemas: { call: { go: { type: "string" } as never } },
        })
      ),
  },
  {
    area: "options",
    input: "`defineServer` with `version: 2` and no `migrate`",
    error: "ValidationError",
    code: "validation",
    names: "spec.migrate",
    act: () => Promise.resolve().then(() => defineServer({ name: "x", init: () => 0, version: 2 })),
  },
  {
    area: "options",
    input: "`start` with a plain object as the definition",
    error: "ValidationError",
    code: "validation",
    names: "definition",
    act: (e) => start({ name: "x", init: () => 0 } as never, [] as never, { tenant: e.tenant }),
  },
  {
    area: "options",
    input: "`start` with init arguments that are not an array",
    error: "ValidationError",
    code: "validation",
    names: "args",
    act: (e) => start(Subject, "x" as never, { tenant: e.tenant }),
  },
  {
    area: "options",
    input: "`start` without a tenant",
    error: "ValidationError",
    code: "validation",
    names: "options.tenant",
    act: () => start(Subject, [], {} as never),
  },
  {
    area: "options",
    input: "`start` with `batchSize: 0`",
    error: "ValidationError",
    code: "validation",
    names: "options.batchSize",
    act: (e) => start(Subject, [], { tenant: e.tenant, batchSize: 0 }),
  },
  {
    area: "options",
    input: "`start` with `lockLease: 10` (under 50 ms)",
    error: "ValidationError",
    code: "validation",
    names: "options.lockLease",
    act: (e) => start(Subject, [], { tenant: e.tenant, lockLease: 10 }),
  },
  {
    area: "options",
    input: "`start` with `lockLease: 2 ** 31` (longer than a timer can wait)",
    error: "ValidationError",
    code: "validation",
    names: "options.lockLease",
    act: (e) => start(Subject, [], { tenant: e.tenant, lockLease: 2 ** 31 }),
  },
  {
    area: "options",
    input: "`start` with `actionTimeout: -1`",
    error: "ValidationError",
    code: "validation",
    names: "options.actionTimeout",
    act: (e) => start(Subject, [], { tenant: e.tenant, actionTimeout: -1 }),
  },
  {
    area: "state",
    input: "`start` of a new version whose `migrate` throws",
    error: "MigrationError",
    code: "migration",
    names: /server 'subject' from version 1 to 2/,
    act: (e) =>
      start(
        defineServer({
          name: "subject",
          version: 2,
          init: () => 0,
          migrate: (): number => {
            throw new Error("cannot convert");
          },
        }),
        [],
        { tenant: e.tenant },
      ),
  },
  {
    area: "messages",
    input: "`call` with a getter inside its argument",
    error: "ValidationError",
    code: "validation",
    names: "arg of call 'get'",
    act: (e) =>
      e.ref.call(
        "get",
        Object.defineProperty({}, "g", { get: () => 1, enumerable: true }) as never,
      ),
  },
  {
    area: "options",
    input: "`start` with `deadLetterThreshold: 0`",
    error: "ValidationError",
    code: "validation",
    names: "options.deadLetterThreshold",
    act: (e) => start(Subject, [], { tenant: e.tenant, deadLetterThreshold: 0 }),
  },
  {
    area: "options",
    input: '`start` with `consume: "yes"`',
    error: "ValidationError",
    code: "validation",
    names: "options.consume",
    act: (e) => start(Subject, [], { tenant: e.tenant, consume: "yes" as never }),
  },
  {
    area: "options",
    input: "`start` with an unknown option",
    error: "ValidationError",
    code: "validation",
    names: "options.consumer",
    act: (e) => start(Subject, [], { tenant: e.tenant, consumer: true } as never),
  },
  {
    area: "options",
    input: "`call(name, arg, { timeout: -1 })`",
    error: "ValidationError",
    code: "validation",
    names: "options.timeout",
    act: (e) => e.ref.call("get", undefined, { timeout: -1 }),
  },
  {
    area: "options",
    input: '`call(name, arg, { timeout: "5s" })`',
    error: "ValidationError",
    code: "validation",
    names: "options.timeout",
    act: (e) => e.ref.call("get", undefined, { timeout: "5s" as never }),
  },
  {
    area: "options",
    input: "`call` with an unknown option",
    error: "ValidationError",
    code: "validation",
    names: "options.retries",
    act: (e) => e.ref.call("get", undefined, { retries: 3 } as never),
  },
  {
    area: "options",
    input: "`serveDashboard({ tenants: [] })`",
    error: "ValidationError",
    code: "validation",
    names: "options.tenants",
    act: () => serveDashboard({ tenants: [] }),
  },
  {
    area: "options",
    input: "`serveDashboard` with `port: 70000`",
    error: "ValidationError",
    code: "validation",
    names: "options.port",
    act: (e) => serveDashboard({ tenants: [e.tenant], port: 70_000 }),
  },
  {
    area: "options",
    input: "`serveDashboard` with a token containing a space",
    error: "ValidationError",
    code: "validation",
    names: "options.token",
    act: (e) => serveDashboard({ tenants: [e.tenant], token: "a b" }),
  },
  {
    area: "options",
    input: "`serveDashboard` with the same tenant twice",
    error: "ValidationError",
    code: "validation",
    names: "options.tenants[1]",
    act: (e) => serveDashboard({ tenants: [e.tenant, e.tenant] }),
  },
  // ---- messages
  {
    area: "messages",
    input: "`call` of an unknown message name",
    error: "ValidationError",
    code: "validation",
    names: "name",
    act: (e) => e.ref.call("nope" as never, undefined as never),
  },
  {
    area: "messages",
    input: "`cast` of an unknown message name",
    error: "ValidationError",
    code: "validation",
    names: "name",
    act: (e) => e.ref.cast("nope" as never, undefined as never),
  },
  {
    area: "messages",
    input: "`cast` whose argument fails its schema",
    error: "ValidationError",
    code: "validation",
    names: "arg of cast 'setN'",
    act: (e) => e.ref.cast("setN", "7" as never),
  },
  {
    area: "messages",
    input: "`call` whose argument fails its schema",
    error: "ValidationError",
    code: "validation",
    names: "arg of call 'setN'",
    act: (e) => e.ref.call("setN", null as never),
  },
  {
    area: "messages",
    input: "`cast` with a function inside its argument",
    error: "ValidationError",
    code: "validation",
    names: "arg of cast 'fail'",
    act: (e) => e.ref.cast("fail", { f: () => 1 } as never),
  },
  {
    area: "messages",
    input: "`cast` with a symbol argument",
    error: "ValidationError",
    code: "validation",
    names: "arg of cast 'fail'",
    act: (e) => e.ref.cast("fail", Symbol("x") as never),
  },
  {
    area: "messages",
    input: "`call` with a cyclic argument",
    error: "ValidationError",
    code: "validation",
    names: "arg of call 'get'",
    act: (e) => {
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      return e.ref.call("get", cyclic as never);
    },
  },
  {
    area: "messages",
    input: "`cast` with a 200 KB argument (over the value limit)",
    error: "ValidationError",
    code: "validation",
    names: "arg of cast 'fail'",
    act: (e) => e.ref.cast("fail", "x".repeat(200_000) as never),
  },
  {
    area: "messages",
    input: "`castMany([])`",
    error: "ValidationError",
    code: "validation",
    names: "messages",
    act: (e) => e.ref.castMany([]),
  },
  {
    area: "messages",
    input: "`castMany` with a bad pair after a good one",
    error: "ValidationError",
    code: "validation",
    names: "messages[1]",
    act: (e) => e.ref.castMany([["setN", 1], "setN" as never]),
  },
  {
    area: "messages",
    input: "`castMany` with an unknown name at index 2",
    error: "ValidationError",
    code: "validation",
    names: "messages[2].name",
    act: (e) => e.ref.castMany([["setN", 1], ["setN", 2], ["nope" as never]]),
  },
  {
    area: "messages",
    input: "`castMany` with an argument failing its schema at index 1",
    error: "ValidationError",
    code: "validation",
    names: "messages[1].arg of cast 'setN'",
    act: (e) => e.ref.castMany([["setN", 1], ["setN", "2" as never]]),
  },
  {
    area: "messages",
    input: "`priorityCall` of an unknown message name",
    error: "ValidationError",
    code: "validation",
    names: "name",
    act: (e) => e.ref.priorityCall("nope" as never, undefined as never),
  },
  {
    area: "messages",
    input: "`send` with an info message failing its schema",
    error: "ValidationError",
    code: "validation",
    names: "info.ping",
    act: (e) => e.ref.send({ ping: 5 } as never),
  },
  {
    area: "messages",
    input: "`send` to a server without `handleInfo`",
    error: "ValidationError",
    code: "validation",
    names: "info",
    act: async (e) => {
      const r = await start(NoInfo, [], { tenant: e.tenant, consume: false });
      try {
        await r.send("hi" as never);
      } finally {
        await r.stop();
      }
    },
    setup: async (e) => {
      // Its own start writes; the snapshot is taken after.
      await (await start(NoInfo, [], { tenant: e.tenant, consume: false })).stop();
    },
    scope: (e) => {
      const k = new ServerKeys("noinfo", e.tenant.prefix);
      return [k.state, k.queueEnd];
    },
  },
  {
    area: "messages",
    input: '`deadLetters.requeue("zz")` (not a key from `list()`)',
    error: "ValidationError",
    code: "validation",
    names: "key",
    act: (e) => e.ref.deadLetters.requeue("zz"),
  },
  {
    area: "options",
    input: "`deadLetters.list({ limit: 0 })` (not a positive integer)",
    error: "ValidationError",
    code: "validation",
    names: "options.limit",
    act: (e) => e.ref.deadLetters.list({ limit: 0 }),
  },
  {
    area: "options",
    input: '`deadLetters.list({ after: "zz" })` (not a key from `list()`)',
    error: "ValidationError",
    code: "validation",
    names: "options.after",
    act: (e) => e.ref.deadLetters.list({ after: "zz" }),
  },
  // ---- state
  {
    area: "state",
    input: "`init` returns a state holding a function",
    error: "CodecError",
    code: "codec",
    names: "state.f",
    act: (e) =>
      start(defineServer({ name: "x", init: () => ({ f: () => 1 }) }), [], { tenant: e.tenant }),
  },
  {
    area: "state",
    input: "`init` returns a class instance inside the state",
    error: "CodecError",
    code: "codec",
    names: "state.at",
    act: (e) =>
      start(defineServer({ name: "x", init: () => ({ at: new URL("http://x") }) }), [], {
        tenant: e.tenant,
      }),
  },
  {
    area: "state",
    input: "`init` returns a state failing the state schema",
    error: "ValidationError",
    code: "validation",
    names: "state.n",
    act: (e) =>
      start(
        defineServer({
          name: "x",
          init: () => ({ n: "zero" }),
          schemas: { state: v.object({ n: v.number() }) },
        }),
        [],
        { tenant: e.tenant },
      ),
  },
  {
    area: "state",
    input: "`init` returns a 1.5 MB state (over a 1 MB transaction limit)",
    error: "LimitExceededError",
    code: "transaction_too_large",
    names: /exceeds the 1000000-byte limit/,
    act: (e) =>
      start(defineServer({ name: "x", init: () => ({ s: "x".repeat(1_500_000) }) }), [], {
        tenant: e.tenant,
      }),
  },
  {
    area: "state",
    input: "a priority handler returns a state failing the schema",
    error: "ValidationError",
    code: "validation",
    names: "state.n",
    act: (e) => e.ref.priorityCall("badState"),
  },
  {
    area: "state",
    input: "a priority handler returns a state holding a function",
    error: "CodecError",
    code: "codec",
    names: "state.extra.f",
    act: (e) => e.ref.priorityCall("fnState"),
  },
  {
    area: "state",
    input: "a priority handler returns a state over the transaction limit",
    error: "LimitExceededError",
    code: "transaction_too_large",
    names: /exceeds the 1000000-byte limit/,
    act: (e) => e.ref.priorityCall("bigState"),
  },
  {
    area: "state",
    input: "a priority call's reply fails its reply schema",
    error: "ValidationError",
    code: "validation",
    names: "reply of broken",
    act: (e) => e.ref.priorityCall("broken"),
  },
  {
    area: "state",
    input: "a priority call's reply is a function",
    error: "CodecError",
    code: "codec",
    names: "reply of fnReply",
    act: (e) => e.ref.priorityCall("fnReply"),
  },
  // ---- keys
  {
    area: "keys",
    input: "`start` with a 1,001-character server id",
    error: "ValidationError",
    code: "validation",
    names: "options.id",
    act: (e) => start(Subject, [], { tenant: e.tenant, id: "x".repeat(1_001) }),
  },
  {
    area: "keys",
    input: "`start` with a number as server id",
    error: "ValidationError",
    code: "validation",
    names: "options.id",
    act: (e) => start(Subject, [], { tenant: e.tenant, id: 42 as never }),
  },
  {
    area: "keys",
    input: "`start` with an empty server id",
    error: "ValidationError",
    code: "validation",
    names: "options.id",
    act: (e) => start(Subject, [], { tenant: e.tenant, id: "" }),
  },
  {
    area: "keys",
    input: "`openTenant` with a 201-character name segment",
    error: "ValidationError",
    code: "validation",
    names: /^name \(segment 1 of/,
    act: (e) => openTenant(e.backend, "y".repeat(201)),
  },
  {
    area: "keys",
    input: '`openTenant(backend, "a//b")` (empty segment)',
    error: "ValidationError",
    code: "validation",
    names: 'name (segment 2 of "a//b")',
    act: (e) => openTenant(e.backend, "a//b"),
  },
  {
    area: "keys",
    input: "a handler writes a 20,000-byte key through `ctx.tx`",
    error: "LimitExceededError",
    code: "key_too_large",
    names: /Key of 200\d\d bytes exceeds the 10000-byte limit/,
    act: (e) => e.ref.priorityCall("bigKey"),
  },
  {
    area: "keys",
    input: "a handler writes a string key through `ctx.tx`",
    error: "ValidationError",
    code: "validation",
    names: "key",
    act: (e) => e.ref.priorityCall("textKey"),
  },
  {
    area: "keys",
    input: "a handler writes an array of numbers as key through `ctx.tx`",
    error: "ValidationError",
    code: "validation",
    names: "key",
    act: (e) => e.ref.priorityCall("arrayKey"),
  },
  {
    area: "keys",
    input: "`tenant.transact` reads a range from a number",
    error: "ValidationError",
    code: "validation",
    names: "begin",
    act: (e) => e.tenant.transact((tx) => tx.getRange(7 as never, new Uint8Array(0))),
  },
  {
    area: "keys",
    input: "`tenant.transact` sets a value that is a string",
    error: "ValidationError",
    code: "validation",
    names: "value",
    act: (e) => e.tenant.transact((tx) => tx.set(new Uint8Array([1]), "v" as never)),
  },
  // ---- stored data
  {
    area: "stored data",
    input: "garbage bytes in a queued message, read by the dashboard's read model",
    error: "CodecError",
    code: "codec",
    names: K("q"),
    setup: async (e) => {
      await e.ref.cast("setN", 1);
      await corrupt(e, await firstKey(e, e.keys.queue, e.keys.queueEnd));
    },
    act: (e) => readServerView(e.tenant, "subject"),
  },
  {
    area: "stored data",
    input:
      "garbage bytes in a queued message, met by a consuming instance (reported, left in place)",
    error: "CodecError",
    code: "codec",
    names: K("q"),
    setup: async (e) => {
      await e.ref.cast("setN", 1);
      await corrupt(e, await firstKey(e, e.keys.queue, e.keys.queueEnd));
    },
    act: async (e) => {
      const logged: unknown[] = [];
      const error = console.error;
      console.error = (...args: unknown[]) =>
        void logged.push(args.find((a) => a instanceof Error));
      const consumer = await start(Subject, [], { tenant: e.tenant });
      try {
        await waitFor(() => logged.length > 0, 5_000, "the consumer did not report");
      } finally {
        await consumer.stop();
        console.error = error;
      }
      throw logged[0];
    },
    scope: (e) => [e.keys.queue, e.keys.queueEnd],
  },
  {
    area: "stored data",
    input: "garbage bytes in the lock record",
    error: "CodecError",
    code: "codec",
    names: K("lock"),
    setup: (e) => corrupt(e, e.keys.lock),
    act: (e) => readServerView(e.tenant, "subject"),
  },
  {
    area: "stored data",
    input: "a lock record of the wrong shape, met by a consuming instance's call",
    error: "CodecError",
    code: "codec",
    names: K("lock"),
    setup: (e) => corrupt(e, e.keys.lock, encodeRecord({ holder: 7 })),
    act: async (e) => {
      const error = console.error;
      console.error = () => {};
      const consumer = await start(Subject, [], { tenant: e.tenant });
      try {
        await consumer.call("get", undefined, { timeout: 2_000 });
      } finally {
        await consumer.stop();
        console.error = error;
      }
    },
    scope: (e) => [e.keys.lock, new Uint8Array([...e.keys.lock, 0xff])],
  },
  {
    area: "stored data",
    input: "garbage bytes in the meta record",
    error: "CodecError",
    code: "codec",
    names: K("meta"),
    setup: (e) => corrupt(e, e.keys.meta),
    act: (e) => start(Subject, [], { tenant: e.tenant }),
  },
  {
    area: "stored data",
    input: "a meta record of the wrong shape (version a string)",
    error: "CodecError",
    code: "codec",
    names: K("meta"),
    setup: (e) => corrupt(e, e.keys.meta, encodeRecord({ version: "1", created: 0, name: "x" })),
    act: (e) => start(Subject, [], { tenant: e.tenant }),
  },
  {
    area: "stored data",
    input: "a state written by a newer version of the definition",
    error: "CodecError",
    code: "codec",
    names: "server 'subject'",
    setup: (e) =>
      corrupt(e, e.keys.meta, encodeRecord({ version: 9, created: 0, name: "subject" })),
    act: (e) => e.ref.priorityCall("get"),
  },
  {
    area: "stored data",
    input: "garbage bytes in a state chunk",
    error: "CodecError",
    code: "codec",
    names: K("st"),
    setup: async (e) => {
      await corrupt(e, await firstKey(e, e.keys.state, e.keys.stateVersion));
    },
    act: (e) => e.ref.priorityCall("get"),
  },
  {
    area: "stored data",
    input: "garbage bytes in a dead letter, listed",
    error: "CodecError",
    code: "codec",
    names: K("dl"),
    setup: async (e) => corrupt(e, await deadLetterFixture(e)),
    act: (e) => e.ref.deadLetters.list(),
  },
  {
    area: "stored data",
    input: "garbage bytes in a dead letter, requeued",
    error: "CodecError",
    code: "codec",
    names: K("dl"),
    setup: async (e) => corrupt(e, await deadLetterFixture(e)),
    act: async (e) => {
      const key = await firstKey(e, e.keys.deadLetters, e.keys.deadLettersEnd);
      return await e.ref.deadLetters.requeue(toHex(key.subarray(e.keys.deadLetters.length)));
    },
  },
  // ---- HTTP (serveDashboard with a token)
  {
    area: "HTTP",
    input: "`GET /api/tenants/nope/events` (unknown tenant)",
    error: "HTTP 404",
    code: "unknown_tenant",
    names: /"nope"/,
    dashboard: true,
    act: (e) => http(e, "/api/tenants/nope/events"),
  },
  {
    area: "HTTP",
    input: "`GET /api/tenants/%E0%A4%A/events` (malformed percent-encoding)",
    error: "HTTP 400",
    code: "bad_request",
    names: /%E0%A4%A/,
    dashboard: true,
    act: (e) => http(e, "/api/tenants/%E0%A4%A/events"),
  },
  {
    area: "HTTP",
    input: "`GET /api/tenants` without a token",
    error: "HTTP 401",
    code: "unauthorized",
    names: /needs a token/,
    dashboard: true,
    act: (e) => http(e, "/api/tenants", { token: null }),
  },
  {
    area: "HTTP",
    input: "`GET /api/tenants` with a wrong token",
    error: "HTTP 401",
    code: "unauthorized",
    names: /Wrong token/,
    dashboard: true,
    act: (e) => http(e, "/api/tenants", { token: "s3cre" }),
  },
  {
    area: "HTTP",
    input: "`GET /api/tenants` with `Authorization: Basic …` and no token",
    error: "HTTP 401",
    code: "unauthorized",
    // Another scheme is not a token (a proxy's credentials): the token is missing.
    names: /needs a token/,
    dashboard: true,
    act: (e) =>
      http(e, "/api/tenants", { token: null, headers: { authorization: "Basic czNjcmV0" } }),
  },
  {
    area: "HTTP",
    input: "`POST /api/tenants`",
    error: "HTTP 405",
    code: "method_not_allowed",
    names: /POST \/api\/tenants/,
    dashboard: true,
    act: (e) => http(e, "/api/tenants", { method: "POST", body: "{}" }),
  },
  {
    area: "HTTP",
    input: "`DELETE /`",
    error: "HTTP 405",
    code: "method_not_allowed",
    names: /DELETE \//,
    dashboard: true,
    act: (e) => http(e, "/", { method: "DELETE" }),
  },
  {
    area: "HTTP",
    input: "`GET /admin` (unknown route)",
    error: "HTTP 404",
    code: "not_found",
    names: /\/admin/,
    dashboard: true,
    act: (e) => http(e, "/admin"),
  },
  {
    area: "HTTP",
    input: "`GET /api/tenants/a/b/events` (tenant name not percent-encoded)",
    error: "HTTP 404",
    code: "not_found",
    names: /percent-encoded/,
    dashboard: true,
    act: (e) => http(e, "/api/tenants/a/b/events"),
  },
  {
    area: "tools",
    input: "`readServerView` with a number as server id",
    error: "ValidationError",
    code: "validation",
    names: "id",
    act: (e) => readServerView(e.tenant, 123 as never),
  },
  {
    area: "tools",
    input: "`readServerView` with `headLimit: -1`",
    error: "ValidationError",
    code: "validation",
    names: "options.headLimit",
    act: (e) => readServerView(e.tenant, "subject", { headLimit: -1 }),
  },
  {
    area: "tools",
    input: "`listServers` without a tenant",
    error: "ValidationError",
    code: "validation",
    names: "tenant",
    act: () => listServers(null as never),
  },
  {
    area: "tools",
    input: "`watchTenant` with a string as `onChange`",
    error: "ValidationError",
    code: "validation",
    names: "onChange",
    act: (e) => watchTenant(e.tenant, "x" as never, new AbortController().signal),
  },
  {
    area: "tools",
    input: "`watchTenant` without a signal",
    error: "ValidationError",
    code: "validation",
    names: "signal",
    act: (e) => watchTenant(e.tenant, () => {}, undefined as never),
  },
  {
    area: "tools",
    input: '`int64LE("x")`',
    error: "ValidationError",
    code: "validation",
    names: "n",
    act: () => later(() => int64LE("x" as never)),
  },
  {
    area: "tools",
    input: '`readInt64LE("x")`',
    error: "ValidationError",
    code: "validation",
    names: "bytes",
    act: () => later(() => readInt64LE("x" as never)),
  },
  {
    area: "tools",
    input: '`unpack("x")`',
    error: "ValidationError",
    code: "validation",
    names: "bytes",
    act: () => later(() => unpack("x" as never)),
  },
  {
    area: "tools",
    input: "`compareTuples(1, 2)`",
    error: "ValidationError",
    code: "validation",
    names: "a",
    act: () => later(() => compareTuples(1 as never, 2 as never)),
  },
  {
    area: "tools",
    input: "`withFaults` with a plain object as backend",
    error: "ValidationError",
    code: "validation",
    names: "backend",
    act: () => later(() => withFaults({} as never, { seed: 1 })),
  },
];

/** Every key and value of the backend in `[begin, end)`, as hex. */
async function dump(backend: Backend, [begin, end]: [Uint8Array, Uint8Array]): Promise<string[]> {
  const rows = await backend.transact((tx) => tx.getRange(begin, end), { readOnly: true });
  return rows.map((r) => `${toHex(r.key)}=${toHex(r.value)}`);
}

function describeError(e: unknown): string {
  return e instanceof Error
    ? `${e.constructor.name}(${(e as { code?: string }).code}): ${e.message}`
    : String(e);
}

/** Checks an error against what the case expects. */
function checkError(c: Case, e: unknown): void {
  assert.ok(e instanceof Error, `not an Error: ${String(e)}`);
  assert.equal(e.constructor.name, c.error, describeError(e));
  assert.equal((e as { code?: string }).code, c.code, describeError(e));
  const named = c.error === "ValidationError"
    ? (e as unknown as { issues: Array<{ path: string }> }).issues[0]!.path
    : c.error === "CodecError"
    ? (e as CodecError).path
    : e.message;
  if (typeof c.names === "string") assert.equal(named, c.names, describeError(e));
  else assert.match(named, c.names, describeError(e));
  assert.ok(e.message.length > 10, "a message for humans");
}

describe("bad-input catalogue: each input fails clearly, and nothing is written", () => {
  it(`has at least 40 cases (${cases.length})`, () => {
    assert.ok(cases.length >= 40);
    const areas = new Set(cases.map((c) => c.area));
    assert.deepEqual(
      [...areas].sort(),
      ["HTTP", "keys", "messages", "options", "state", "stored data", "tools"],
    );
  });

  for (const c of cases) {
    it(`${c.area}: ${c.input}`, async () => {
      const dir = mkdtempSync(join(tmpdir(), "dgen-bad-"));
      const backend = openMemoryBackend({ limits: { maxTransactionSize: 1_000_000 } });
      const tenant = await openTenant(backend, "bad");
      const ref = await start(Subject, [], { tenant, consume: false, cache: false });
      const env: Env = {
        backend,
        tenant,
        keys: new ServerKeys("subject", tenant.prefix),
        ref,
        dir,
      };
      try {
        if (c.dashboard) env.dashboard = await serveDashboard({ tenants: [tenant], token: TOKEN });
        await c.setup?.(env);
        const scope = c.scope?.(env) ?? ALL;
        const before = await dump(backend, scope);
        let outcome: unknown;
        let error: unknown;
        try {
          outcome = await c.act(env);
        } catch (e) {
          error = e;
        }
        if (c.area === "HTTP") {
          const r = outcome as { status: number; error: string; message: string };
          assert.ok(r !== undefined, `no response: ${describeError(error)}`);
          assert.equal(`HTTP ${r.status}`, c.error, JSON.stringify(r));
          assert.equal(r.error, c.code, JSON.stringify(r));
          assert.match(r.message, c.names as RegExp);
        } else {
          assert.ok(error !== undefined, `no error; it returned ${JSON.stringify(outcome)}`);
          checkError(c, error);
        }
        assert.deepEqual(await dump(backend, scope), before, "nothing written");
        if (c.noFile) assert.equal(existsSync(c.noFile(env)), false, "no file created");
      } finally {
        await env.dashboard?.close();
        await ref.stop();
        await backend.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  if (process.env.DGEN_PRINT_CATALOGUE) {
    it("prints the catalogue", () => {
      const rows = cases.map((c) =>
        `| ${c.area} | ${c.input.replaceAll("|", "\\|")} | \`${c.error}\` | \`${c.code}\` | ${
          typeof c.names === "string" ? `\`${c.names}\`` : `matches \`${c.names.source}\``
        } |`
      );
      console.log(
        ["| area | bad input | error | code | names |", "|---|---|---|---|---|", ...rows].join(
          "\n",
        ),
      );
    });
  }
});
