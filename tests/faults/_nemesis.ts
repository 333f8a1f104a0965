/**
 * The nemesis run, shared by the short test and the soak: consuming processes and client
 * processes (Deno and Bun mixed) on one SQLite file, a nemesis that SIGKILLs (and restarts)
 * and SIGSTOPs/SIGCONTs them at random, every operation recorded as a history event (invoke,
 * ok, fail, unknown), then quiesce and check:
 *
 * - exactly once: every acknowledged operation applied once, none applied twice, failed ones
 *   never (from the per-operation application counts the servers write in their transactions);
 * - linearizability of each server's history (counter and register models), priority calls
 *   included;
 * - no lock held, queues drained, no dead letters.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openSqliteBackend, openTenant, readServerView, start } from "../../mod.ts";
import { Child, type Runtime, testScript } from "../_processes.ts";
import { waitFor } from "../_helpers.ts";
import { NemCounter, NemRegister, readApplied } from "./_servers.ts";
import { between, pick, prng, wallTime } from "./_seed.ts";
import {
  checkLinearizable,
  type CounterInput,
  counterModel,
  type Operation,
  type RegisterInput,
  registerModel,
} from "./linearizability.ts";

const SCRIPT = testScript("./faults/fault_child.ts");
const FIRST_FAULTS = [
  ["consumer", "kill"],
  ["consumer", "stop"],
  ["client", "kill"],
  ["client", "stop"],
] as const;

/** Clock slack between processes when judging real-time order, ms. */
const MARGIN = 2;
/**
 * Configurations the linearizability search may explore per history before it gives up
 * undecided (neither proved nor refuted). The search's cost swings with the history's timing:
 * from 0.13 to 3.5 million configurations in ten runs of one seed range on 2026-12-08, and some
 * runs of histories of 1,200-1,500 register operations passed 5 million (the checker's
 * default), more often once consumers stood by (an operation waits up to a standby's look when
 * the active consumer is stopped, so more of them overlap). Such a run took about 23 s in all
 * and the test process peaked at 222 MB.
 */
const CHECK_BUDGET = 25_000_000;
/** Operations of an extra round a finished client runs while the nemesis wants more faults. */
const TOP_UP_OPS = 300;

/** Parameters of a run. */
export interface NemesisOptions {
  /** Seed of every random choice. */
  seed: number;
  /** Operations to run, in total over the clients. */
  ops: number;
  /** Counter and register server ids. */
  counters?: string[];
  registers?: string[];
  /** Ops in flight per client. */
  concurrency?: number;
  /** Pause between faults, ms: `[min, max]`. */
  faultEvery?: [number, number];
  /** Minimum number of faults (kills and stops) before the workload may end. */
  minFaults?: number;
  /** Prints progress. */
  log?: (line: string) => void;
}

/** What a run did. */
export interface NemesisFigures {
  seed: number;
  ops: number;
  ok: number;
  fail: number;
  unknown: number;
  consumerKills: number;
  clientKills: number;
  consumerStops: number;
  clientStops: number;
  applied: number;
  explored: number;
  seconds: number;
}

/** A finished run: its figures, and its history and application counts (for mutation tests). */
export interface NemesisRun {
  figures: NemesisFigures;
  history: HistoryEvent[];
  applied: Map<string, number>;
  counters: string[];
  registers: string[];
}

/** One event of the history. */
export type HistoryEvent =
  | {
    ev: "invoke";
    id: string;
    key: string;
    path: "cast" | "call" | "priority";
    f: string;
    arg: unknown;
    t: number;
  }
  | { ev: "ok"; id: string; value?: unknown; t: number }
  | { ev: "fail"; id: string; code: string; t: number }
  | { ev: "unknown"; id: string; code: string; t: number };

interface Slot {
  runtime: Runtime;
  child: Child | undefined;
  /** Up and not stopped. */
  up: boolean;
  generation: number;
}

/** Runs the nemesis workload and checks it; throws (an assertion) on any violation. */
export async function runNemesis(o: NemesisOptions): Promise<NemesisRun> {
  const started = performance.now();
  const log = o.log ?? (() => {});
  const random = prng(o.seed);
  const counters = o.counters ?? ["c0", "c1"];
  const registers = o.registers ?? ["r0", "r1"];
  const dir = mkdtempSync(join(tmpdir(), "dgen-nemesis-"));
  const path = join(dir, "nemesis.sqlite");
  const children = new Set<Child>();
  const spawn = (runtime: Runtime, role: string, params: unknown) => {
    const c = new Child(runtime, SCRIPT, [path, role, JSON.stringify(params)]);
    children.add(c);
    return c;
  };
  const figures: NemesisFigures = {
    seed: o.seed,
    ops: 0,
    ok: 0,
    fail: 0,
    unknown: 0,
    consumerKills: 0,
    clientKills: 0,
    consumerStops: 0,
    clientStops: 0,
    applied: 0,
    explored: 0,
    seconds: 0,
  };
  try {
    // Create the servers once, so consumers and clients do not race to initialize them.
    {
      const backend = await openSqliteBackend({ path });
      const tenant = await openTenant(backend, "faults");
      for (const id of counters) {
        await (await start(NemCounter, [], { tenant, id, consume: false })).stop();
      }
      for (const id of registers) {
        await (await start(NemRegister, [], { tenant, id, consume: false })).stop();
      }
      await backend.close();
    }

    // ---- consumers
    const consumerRuntimes: Runtime[] = random() < 0.5
      ? ["deno", "bun", "deno"]
      : ["bun", "deno", "bun"];
    const consumers: Slot[] = consumerRuntimes.map((runtime) => ({
      runtime,
      child: undefined,
      up: false,
      generation: 0,
    }));
    const startConsumer = async (s: Slot) => {
      const c = spawn(s.runtime, "nem-consumer", { counters, registers, lockLease: 1_000 });
      s.child = c;
      s.generation++;
      await c.next((d) => d.ready === true, 60_000, "consumer ready");
      if (s.child === c) s.up = true;
    };
    await Promise.all(consumers.map(startConsumer));

    // ---- clients
    const history: HistoryEvent[] = [];
    const share = Math.ceil(o.ops / 2);
    const clients: Array<Slot & { remaining: number; reader?: Promise<void>; done: boolean }> = (
      ["deno", "bun"] as Runtime[]
    ).map((runtime) => ({
      runtime,
      child: undefined,
      up: false,
      generation: 0,
      remaining: share,
      done: false,
    }));
    const outstanding = new Map<string, HistoryEvent & { ev: "invoke" }>();
    const startClient = async (s: (typeof clients)[number], index: number) => {
      const c = spawn(s.runtime, "nem-client", {
        counters,
        registers,
        prefix: `k${index}g${s.generation}-`,
        ops: s.remaining,
        concurrency: o.concurrency ?? 6,
        seed: Math.floor(random() * 2 ** 31),
        timeout: 120_000,
      });
      s.child = c;
      s.generation++;
      await c.next((d) => d.ready === true, 60_000, "client ready");
      s.up = true;
      s.reader = (async () => {
        for (;;) {
          let m;
          try {
            m = await c.next(() => true, 600_000, "client event");
          } catch {
            return; // killed: its outstanding operations are settled by the nemesis
          }
          const d = m.data as HistoryEvent & { done?: boolean };
          if (d.done) {
            s.done = true;
            return;
          }
          history.push(d);
          if (d.ev === "invoke") outstanding.set(d.id, d);
          else {
            outstanding.delete(d.id);
            s.remaining--;
            figures[d.ev]++;
          }
        }
      })();
    };
    await Promise.all(clients.map((s, i) => startClient(s, i)));

    // ---- nemesis
    const pending = new Set<Promise<unknown>>();
    const track = (p: Promise<unknown>) => {
      pending.add(p);
      p.finally(() => pending.delete(p)).catch(() => {});
    };
    const faults = () =>
      figures.consumerKills + figures.clientKills + figures.consumerStops + figures.clientStops;
    const minFaults = o.minFaults ?? 20;
    const [lo, hi] = o.faultEvery ?? [250, 900];
    let lastReport = performance.now();
    while (!clients.every((c) => c.done) || faults() < minFaults) {
      await new Promise((r) => setTimeout(r, between(random, lo, hi)));
      // A fast machine may finish the operations before the nemesis has struck often enough:
      // a finished client then runs another round, so the workload outlasts the faults.
      if (faults() < minFaults) {
        clients.forEach((s, i) => {
          if (!s.done) return;
          s.done = false;
          s.up = false;
          s.remaining = TOP_UP_OPS;
          track(startClient(s, i));
        });
      }
      if (performance.now() - lastReport > 10_000) {
        lastReport = performance.now();
        log(
          `nemesis: ${figures.ok + figures.fail + figures.unknown} ops settled, ${faults()} faults`,
        );
      }
      // The first four faults cover every kind of victim and fault; then chance decides.
      const drawnKind = pick(random, ["kill", "kill", "stop"] as const);
      const drawnOnClient = random() < 0.3;
      const first = FIRST_FAULTS.find(([who, what]) =>
        figures[`${who}${what === "kill" ? "Kills" : "Stops"}`] === 0
      );
      const kind = first?.[1] ?? drawnKind;
      const onClient = first ? first[0] === "client" : drawnOnClient;
      if (onClient) {
        const i = Math.floor(random() * clients.length);
        const s = clients[i]!;
        if (!s.up || s.done || s.child === undefined) continue;
        const victim = s.child;
        s.up = false;
        if (kind === "kill") {
          figures.clientKills++;
          track((async () => {
            await victim.kill();
            const killedAt = wallTime();
            await s.reader;
            // Operations in flight when it died: their outcome is unknown.
            const prefix = `k${i}g${s.generation - 1}-`;
            for (const [id] of outstanding) {
              if (!id.startsWith(prefix)) continue;
              outstanding.delete(id);
              history.push({ ev: "unknown", id, code: "killed", t: killedAt });
              figures.unknown++;
              s.remaining--;
            }
            if (s.remaining > 0) await startClient(s, i);
            else s.done = true;
          })());
        } else {
          figures.clientStops++;
          track((async () => {
            victim.signal("SIGSTOP");
            await new Promise((r) => setTimeout(r, between(random, 100, 1_200)));
            victim.signal("SIGCONT");
            s.up = true;
          })());
        }
        continue;
      }
      const upConsumers = consumers.filter((s) => s.up);
      if (upConsumers.length < 2) continue; // keep one consumer serving
      const s = pick(random, upConsumers);
      const victim = s.child!;
      s.up = false;
      if (kind === "kill") {
        figures.consumerKills++;
        track((async () => {
          await victim.kill();
          await startConsumer(s);
        })());
      } else {
        figures.consumerStops++;
        track((async () => {
          victim.signal("SIGSTOP");
          await new Promise((r) => setTimeout(r, between(random, 100, 1_500)));
          victim.signal("SIGCONT");
          s.up = true;
        })());
      }
    }
    // ---- quiesce: no more faults; everything stopped resumes; every consumer is up.
    await Promise.all([...pending]);
    for (const s of [...consumers, ...clients]) s.child?.signal("SIGCONT");
    await Promise.all(clients.map((c) => c.reader));
    assert.ok(
      consumers.some((s) => s.child !== undefined && !s.child.exited),
      "no consumer alive at quiesce",
    );
    figures.ops = figures.ok + figures.fail + figures.unknown;
    assert.equal(outstanding.size, 0, "every invoked operation has an outcome");

    let applied = new Map<string, number>();
    const backend = await openSqliteBackend({ path });
    try {
      const tenant = await openTenant(backend, "faults");
      const ids = [...counters, ...registers];
      await waitFor(
        async () => {
          for (const id of ids) {
            const v = await readServerView(tenant, id, { headLimit: 1 });
            if (!v || v.queue.length !== 0 || v.queue.head.length !== 0 || v.lock !== null) {
              return false;
            }
          }
          return true;
        },
        120_000,
        "queues not drained (or a lock still held) after quiesce",
        50,
      );
      // Final reads through the queue: every acknowledged cast precedes them.
      for (const id of ids) {
        const def = counters.includes(id) ? NemCounter : NemRegister;
        const ref = await start(def, [], { tenant, id, consume: false });
        const fid = `final-${id}`;
        const t = wallTime();
        history.push({ ev: "invoke", id: fid, key: id, path: "call", f: "read", arg: fid, t });
        const value = await ref.call("read", fid, { timeout: 60_000 });
        history.push({ ev: "ok", id: fid, value, t: wallTime() });
        await ref.stop();
      }
      applied = await readApplied(tenant);
      figures.applied = checkExactlyOnce(history, applied);
      for (const id of ids) {
        const v = (await readServerView(tenant, id))!;
        assert.equal(v.lock, null, `${id}: lock held after quiesce`);
        assert.equal(v.queue.length, 0, `${id}: queue not empty after quiesce`);
        assert.equal(v.deadLetters.length, 0, `${id}: dead letters`);
      }
    } finally {
      await backend.close();
    }
    for (const key of [...counters, ...registers]) {
      figures.explored += checkKey(history, key, counters.includes(key) ? "counter" : "register");
    }
    figures.seconds = (performance.now() - started) / 1000;
    assert.ok(figures.ops >= o.ops, `only ${figures.ops} operations settled`);
    assert.ok(faults() >= minFaults, `only ${faults()} faults (at least ${minFaults} wanted)`);
    return { figures, history, applied, counters, registers };
  } finally {
    await Promise.all([...children].map((c) => c.kill()));
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Checks application counts against the history: acknowledged operations applied exactly once,
 * failed ones never, unknown ones at most once, nothing applied that was not invoked. Returns
 * how many operations applied.
 */
export function checkExactlyOnce(history: HistoryEvent[], applied: Map<string, number>): number {
  const outcome = new Map<string, HistoryEvent["ev"]>();
  for (const e of history) outcome.set(e.id, e.ev);
  let total = 0;
  for (const [id, n] of applied) {
    const o = outcome.get(id);
    assert.ok(o !== undefined, `${id} applied but never invoked`);
    assert.ok(n <= 1, `${id} applied ${n} times`);
    assert.ok(o !== "fail", `${id} failed, yet applied`);
    total += n;
  }
  for (const [id, o] of outcome) {
    if (o === "ok") {
      assert.equal(applied.get(id), 1, `acknowledged ${id} applied ${applied.get(id) ?? 0} times`);
    }
  }
  return total;
}

/**
 * Checks that one server's history is linearizable; returns the configurations explored.
 *
 * Windows: a call or priority call that returned took effect between its invocation and its
 * return. A cast took effect after its invocation and, the queue being FIFO, before any call
 * invoked after its acknowledgement returned (the final reads after quiesce are such calls).
 * An operation with an unknown outcome may not have taken effect at all; if it did, a priority
 * call did so before its client died or gave up, and a queued one (if enqueued, it was by then)
 * before any later-invoked call returned.
 */
export function checkKey(
  history: HistoryEvent[],
  key: string,
  model: "counter" | "register",
): number {
  const invokes = new Map<string, HistoryEvent & { ev: "invoke" }>();
  const ends = new Map<string, HistoryEvent>();
  for (const e of history) {
    if (e.ev === "invoke") {
      if (e.key === key) invokes.set(e.id, e);
    } else if (invokes.has(e.id)) ends.set(e.id, e);
  }
  // Standard-path calls that returned, by invocation time: a message enqueued (acknowledged)
  // before such a call was invoked is ahead of it in the queue, so it took effect before the
  // call returned. That bounds the window of casts and of calls whose outcome is unknown.
  const calls = [...invokes.values()]
    .filter((i) => i.path === "call" && ends.get(i.id)?.ev === "ok")
    .map((i) => ({ call: i.t, ret: ends.get(i.id)!.t }))
    .sort((a, b) => a.call - b.call);
  const suffixMin = new Array<number>(calls.length + 1).fill(Infinity);
  for (let i = calls.length - 1; i >= 0; i--) {
    suffixMin[i] = Math.min(calls[i]!.ret, suffixMin[i + 1]!);
  }
  const bound = (t: number): number => {
    let lo = 0, hi = calls.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (calls[mid]!.call > t + MARGIN) hi = mid;
      else lo = mid + 1;
    }
    return suffixMin[lo]!;
  };
  const ops: Operation<unknown, unknown>[] = [];
  for (const inv of invokes.values()) {
    const end = ends.get(inv.id);
    if (end === undefined) throw new Error(`${inv.id} has no outcome`);
    if (end.ev === "fail") continue;
    const input = toInput(model, inv.f, inv.arg);
    if (end.ev === "ok") {
      if (inv.path === "cast") ops.push({ id: inv.id, input, call: inv.t, ret: bound(end.t) });
      else ops.push({ id: inv.id, input, output: end.value, call: inv.t, ret: end.t });
    } else {
      const ret = inv.path === "priority" ? end.t : bound(end.t);
      ops.push({ id: inv.id, input, call: inv.t, ret, optional: true });
    }
  }
  const verdict = model === "counter"
    ? checkLinearizable(counterModel, ops as Operation<CounterInput, number>[], {
      precedenceMargin: MARGIN,
      budget: CHECK_BUDGET,
    })
    : checkLinearizable(registerModel, ops as Operation<RegisterInput, string | boolean>[], {
      precedenceMargin: MARGIN,
      budget: CHECK_BUDGET,
    });
  if (!verdict.ok) assert.fail(`${key}: ${verdict.reason}`);
  return verdict.explored;
}

function toInput(model: "counter" | "register", f: string, arg: unknown): unknown {
  const a = arg as Record<string, unknown>;
  if (model === "counter") return f === "add" ? { f: "add", by: a.by } : { f: "read" };
  if (f === "write") return { f: "write", v: a.v };
  if (f === "cas") return { f: "cas", from: a.from, to: a.to };
  return { f: "read" };
}
