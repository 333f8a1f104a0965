/**
 * The child process of the fault tests (Deno or Bun). Arguments: a SQLite file, a role and its
 * parameters (JSON). Prints one JSON object per line; `{"ready":true,…}` once started.
 *
 * Roles:
 * - `nem-consumer` `{ counters, registers, lockLease? }`: consuming instances of NemCounter and
 *   NemRegister for the given server ids; stays up.
 * - `nem-client` `{ counters, registers, prefix, ops, concurrency, seed, timeout }`: sending
 *   instances of the same ids; runs `ops` random operations (casts, calls, priority calls),
 *   `concurrency` at a time, printing a history event per step: `invoke`, then `ok`, `fail`
 *   (definitely not applied) or `unknown` (may have applied: a timeout, an unclear error).
 *   Then `{"done":true}`.
 * - `sweep-consumer` `{ point, hit, file, lockLease }`: a consuming Sweep instance that
 *   SIGKILLs its own process at the `hit`-th pass of crash point `point` (a runtime point or
 *   `locked-before`/`locked-after` inside handleLocked); `point: "none"` never dies.
 * - `stale-consumer` `{ lockLease, hold, file }`: a consuming Stale instance whose handleLocked
 *   prints `{"entered":id}` and then takes `hold` ms (a timer: a SIGSTOPped process misses its
 *   lease); prints `{"lockLost":n}` whenever its `stats.lockLost` changes.
 * - `poison-consumer` `{ threshold, dieAt? }`: a consuming Poison instance; prints
 *   `{"deadLetter":…}` from handleDeadLetter and `{"attempt":arg}` for every failed run; dies
 *   (SIGKILL) on the `dieAt`-th run of a poison message.
 * - `sqlite-writer` `{ concurrency }`: checks the file (`PRAGMA integrity_check`, counter equals
 *   log length, log keys 1..counter), prints `{"checked":…}`, then runs tight write
 *   transactions (counter + 1 and a log entry, one transaction each), printing
 *   `{"acked":counter}` every few milliseconds, until killed.
 */
import process from "node:process";
import { DatabaseSync } from "node:sqlite";
import {
  DeadLetterError,
  defineServer,
  lock,
  noreply,
  openSqliteBackend,
  openTenant,
  readInt64LE,
  reply,
  start,
  ValidationError,
} from "../../mod.ts";
import { crashPoints } from "../../lib/server/crashpoints.ts";
import { int64LE } from "../../lib/bytes.ts";
import { pack, unpack } from "../../lib/tuple.ts";
import { strinc } from "../../lib/bytes.ts";
import { appendFileSync } from "node:fs";
import { NemCounter, NemRegister, Sweep, sweepEnv } from "./_servers.ts";
import { between, pick, prng, wallTime } from "./_seed.ts";

const [path, role, paramsJson] = process.argv.slice(2);
if (path === undefined || role === undefined) {
  console.error("usage: fault_child.ts <sqlite path> <role> <JSON params>");
  process.exit(2);
}
const params = JSON.parse(paramsJson ?? "{}");

function out(line: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(line) + "\n");
}

/** Kills this process at once, as a crash would (no cleanup, no flush of anything pending). */
function die(): never {
  process.kill(process.pid, "SIGKILL");
  throw new Error("unreachable: SIGKILL did not kill");
}

async function nemConsumer(): Promise<void> {
  const backend = await openSqliteBackend({ path: path! });
  const tenant = await openTenant(backend, "faults");
  const lockLease = params.lockLease ?? 2_000;
  const refs = await Promise.all([
    ...(params.counters as string[]).map((id) => start(NemCounter, [], { tenant, id, lockLease })),
    ...(params.registers as string[]).map((id) =>
      start(NemRegister, [], { tenant, id, lockLease })
    ),
  ]);
  out({ ready: true, pid: process.pid, instances: refs.map((r) => r.instance) });
  await Promise.all(refs.map((r) => r.stopped));
  await backend.close();
}

/** Errors after which the operation certainly did not apply. */
function definite(e: unknown): boolean {
  return e instanceof ValidationError || e instanceof DeadLetterError;
}

async function nemClient(): Promise<void> {
  const backend = await openSqliteBackend({ path: path! });
  const tenant = await openTenant(backend, "faults");
  const counters = await Promise.all(
    (params.counters as string[]).map((id) =>
      start(NemCounter, [], { tenant, id, consume: false })
    ),
  );
  const registers = await Promise.all(
    (params.registers as string[]).map((id) =>
      start(NemRegister, [], { tenant, id, consume: false })
    ),
  );
  out({ ready: true, pid: process.pid });
  const random = prng(params.seed);
  const prefix: string = params.prefix;
  const timeout: number = params.timeout ?? 60_000;
  let next = 0;
  const worker = async () => {
    while (next < params.ops) {
      const id = `${prefix}${next++}`;
      const path = pick(random, ["cast", "call", "call", "priority"] as const);
      const useCounter = random() < 0.5;
      const ref = useCounter ? pick(random, counters) : pick(random, registers);
      let f: string;
      let arg: Record<string, unknown> | string;
      if (useCounter) {
        f = path === "cast" || random() < 0.6 ? "add" : "read";
        arg = f === "add" ? { id, by: between(random, 1, 5) } : id;
      } else {
        const r = random();
        f = path === "cast" || r < 0.5 ? "write" : r < 0.8 ? "read" : "cas";
        arg = f === "write"
          ? { id, v: id }
          : f === "read"
          ? id
          : { id, from: lastSeen.get(ref.id) ?? "", to: id };
      }
      out({ ev: "invoke", id, key: ref.id, path, f, arg, t: wallTime() });
      try {
        let value: unknown;
        const r = ref as unknown as {
          cast(n: string, a: unknown): Promise<void>;
          call(n: string, a: unknown, o: { timeout: number }): Promise<unknown>;
          priorityCall(n: string, a: unknown): Promise<unknown>;
        };
        if (path === "cast") await r.cast(f, arg);
        else if (path === "call") value = await r.call(f, arg, { timeout });
        else value = await r.priorityCall(f, arg);
        if (!useCounter && typeof value === "string" && f === "read") {
          lastSeen.set(ref.id, value);
        }
        out({ ev: "ok", id, value, t: wallTime() });
      } catch (e) {
        const code = (e as { code?: string }).code ?? "error";
        out({ ev: definite(e) ? "fail" : "unknown", id, code, message: String(e), t: wallTime() });
      }
    }
  };
  const lastSeen = new Map<string, string>();
  await Promise.all(Array.from({ length: params.concurrency ?? 4 }, worker));
  out({ done: true });
  await Promise.all([...counters, ...registers].map((r) => r.stop()));
  await backend.close();
}

// ---------------------------------------------------------------------------------------------

async function sweepConsumer(): Promise<void> {
  const point: string = params.point;
  let hits = 0;
  const hit = () => {
    if (++hits === params.hit) die();
  };
  sweepEnv.file = params.file;
  if (point === "locked-before" || point === "locked-after") {
    sweepEnv.point = (name) => {
      if (name === point) hit();
    };
  } else if (point === "between-actions") {
    // Only after the first of a message's two actions: the kill must fall between them.
    crashPoints.hook = (p) => {
      if (p === "between-actions" && sweepEnv.lastAction === "a1") hit();
    };
  } else if (point !== "none") {
    crashPoints.hook = (p) => {
      if (p === point) hit();
    };
  }
  const backend = await openSqliteBackend({ path: path! });
  const tenant = await openTenant(backend, "faults");
  const ref = await start(Sweep, [], {
    tenant,
    lockLease: params.lockLease ?? 1_000,
    deadLetterThreshold: params.deadLetterThreshold ?? 5,
  });
  out({ ready: true, pid: process.pid, instance: ref.instance });
  await ref.stopped;
  await backend.close();
}

// ---------------------------------------------------------------------------------------------

/** The stale-lock test's server: `job` locks; handleLocked takes a while, then counts. */
const Stale = defineServer({
  name: "stale",
  init: () => ({ done: [] as string[], n: 0 }),
  handleCast: {
    job: (_id: string, s: { done: string[]; n: number }) => lock(s),
    bump: (_id: string, s: { done: string[]; n: number }) => noreply({ ...s, n: s.n + 1 }),
  },
  handleCall: {
    job: (_id: string, _from, s: { done: string[]; n: number }) => lock(s),
  },
  handleLocked: async (event, s: { done: string[]; n: number }, ctx) => {
    const id = event.arg as string;
    out({ entered: id, pid: process.pid, token: String(ctx.fencingToken) });
    await new Promise((r) => setTimeout(r, params.hold));
    appendFileSync(params.file, `${id} ${process.pid} effect\n`);
    out({ leaving: id, pid: process.pid, aborted: ctx.signal.aborted });
    const next = { ...s, done: [...s.done, id] };
    return event.kind === "call" ? reply(next.done.length, next) : noreply(next);
  },
});

async function staleConsumer(): Promise<void> {
  const backend = await openSqliteBackend({ path: path! });
  const tenant = await openTenant(backend, "faults");
  const ref = await start(Stale, [], { tenant, lockLease: params.lockLease });
  out({ ready: true, pid: process.pid, instance: ref.instance });
  let seen = 0;
  const poll = setInterval(() => {
    if (ref.stats.lockLost !== seen) {
      seen = ref.stats.lockLost;
      out({ lockLost: seen, pid: process.pid });
    }
  }, 10);
  await ref.stopped;
  clearInterval(poll);
  await backend.close();
}

// ---------------------------------------------------------------------------------------------

let poisonRuns = 0;

/**
 * The poison test's server: `rec` appends, except that `poison…` always throws (and, with
 * `dieAt`, SIGKILLs the process on that run instead, before its failure is recorded).
 */
const Poison = defineServer({
  name: "poison",
  init: () => ({ applied: [] as string[] }),
  handleCast: {
    rec: (arg: string, s: { applied: string[] }) => {
      if (arg.startsWith("poison")) {
        out({ attempt: arg, pid: process.pid });
        if (++poisonRuns === params.dieAt) die();
        throw new Error(`${arg} always fails`);
      }
      return noreply({ applied: [...s.applied, arg] });
    },
  },
  handleCall: {
    rec: (arg: string, _from, s: { applied: string[] }) => {
      if (arg.startsWith("poison")) {
        out({ attempt: arg, pid: process.pid });
        throw new Error(`${arg} always fails`);
      }
      return reply(s.applied.length + 1, { applied: [...s.applied, arg] });
    },
  },
  handleDeadLetter: (m, attempts, error) => {
    out({ deadLetter: m.arg, attempts, code: (error as { code?: string }).code, pid: process.pid });
  },
});

async function poisonConsumer(): Promise<void> {
  const backend = await openSqliteBackend({ path: path! });
  const tenant = await openTenant(backend, "faults");
  const ref = await start(Poison, [], { tenant, deadLetterThreshold: params.threshold });
  out({ ready: true, pid: process.pid, instance: ref.instance });
  await ref.stopped;
  await backend.close();
}

// ---------------------------------------------------------------------------------------------

const COUNTER = pack(["counter"]);
const LOG = pack(["log"]);

async function sqliteWriter(): Promise<void> {
  // Check what the previous writer left, with a plain connection of our own.
  const db = new DatabaseSync(path!);
  const integrity = (db.prepare("PRAGMA integrity_check").all() as Array<Record<string, unknown>>)
    .map((r) => String(Object.values(r)[0]));
  db.close();
  const backend = await openSqliteBackend({ path: path! });
  const { counter, logLength, contiguous } = await backend.transact(async (tx) => {
    const counter = Number(readInt64LE(await tx.get(COUNTER)));
    const rows = await tx.getRange(LOG, strinc(LOG));
    let contiguous = true;
    rows.forEach((row, i) => {
      const [, n] = unpack(row.key) as [string, number];
      if (n !== i + 1 || Number(readInt64LE(row.value)) !== n) contiguous = false;
    });
    return { counter, logLength: rows.length, contiguous };
  }, { readOnly: true });
  out({ checked: true, integrity, counter, logLength, contiguous, pid: process.pid });
  let acked = counter;
  let lastPrint = 0;
  const worker = async () => {
    for (;;) {
      const n = await backend.transact(async (tx) => {
        const n = Number(readInt64LE(await tx.get(COUNTER))) + 1;
        tx.set(COUNTER, int64LE(n));
        tx.set(pack(["log", n]), int64LE(n));
        return n;
      });
      if (n > acked) acked = n;
      const now = performance.now();
      if (now - lastPrint > 2) {
        lastPrint = now;
        out({ acked });
      }
    }
  };
  out({ writing: true });
  await Promise.all(Array.from({ length: params.concurrency ?? 4 }, worker));
}

// Dispatch last: the definitions above must be initialized first.
switch (role) {
  case "nem-consumer":
    await nemConsumer();
    break;
  case "nem-client":
    await nemClient();
    break;
  case "sweep-consumer":
    await sweepConsumer();
    break;
  case "stale-consumer":
    await staleConsumer();
    break;
  case "poison-consumer":
    await poisonConsumer();
    break;
  case "sqlite-writer":
    await sqliteWriter();
    break;
  default:
    console.error(`unknown role ${role}`);
    process.exit(2);
}
