/**
 * The crash-point sweep, shared by the test and the soak: a consumer process (Deno or Bun)
 * SIGKILLs itself at the Nth pass of one named point, is restarted, and dies again, `kills`
 * times; then a consumer that never dies drains the queue. The recovered state, the replies,
 * the actions' side effects and the handler runs are compared with what the point implies.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openSqliteBackend, openTenant, readServerView, start } from "../../mod.ts";
import { Child, type Runtime, testScript } from "../_processes.ts";
import { deadline, waitFor } from "../_helpers.ts";
import { readApplied, Sweep, type SweepState } from "./_servers.ts";
import { between, prng } from "./_seed.ts";

const SCRIPT = testScript("./faults/fault_child.ts");

/** The points swept: the runtime's, then the two inside the test's own handleLocked. */
export const SWEEP_POINTS = [
  "dequeued",
  "handled",
  "committed",
  "between-actions",
  "before-release",
  "locked-before",
  "locked-after",
] as const;

/** One point. */
export type SweepPoint = (typeof SWEEP_POINTS)[number];

const LOCKED_POINTS: readonly SweepPoint[] = ["before-release", "locked-before", "locked-after"];

/** What the model predicts for `kills` deaths at a point, and what was observed. */
export interface SweepOutcome {
  point: SweepPoint;
  kills: number;
  messages: number;
  /** Handler runs beyond one per message (a kill after the handler, before its commit). */
  extraRuns: number;
  /** Messages whose actions were all lost. */
  actionsLost: number;
  /** Messages whose second action was lost. */
  secondActionLost: number;
  /** `handleLocked` side effects beyond one per locked message. */
  extraLockedEffects: number;
  /** `handleLocked` runs beyond one per locked message. */
  extraLockedRuns: number;
  /** Lock takeovers (each requeues the message with one more attempt). */
  takeovers: number;
  seconds: number;
}

/** Runs the sweep at `point` in directory `dir`; throws if anything departs from the model. */
export async function runSweep(
  point: SweepPoint,
  o: { seed: number; kills: number; dir: string },
): Promise<SweepOutcome> {
  const started = performance.now();
  const random = prng(o.seed);
  const locked = LOCKED_POINTS.includes(point);
  const path = join(o.dir, `sweep-${point}-${o.seed}.sqlite`);
  const file = join(o.dir, `sweep-${point}-${o.seed}.effects`);
  writeFileSync(file, "");
  const maxHit = locked ? 2 : 3;
  const n = locked ? o.kills * maxHit + 2 : o.kills * maxHit + 4;
  const children: Child[] = [];
  const backend = await openSqliteBackend({ path });
  try {
    const tenant = await openTenant(backend, "faults");
    const sender = await start(Sweep, [], { tenant, consume: false });
    const name = locked ? "slow" : "step";
    const ids: string[] = [];
    const calls: Array<Promise<[string, number]>> = [];
    for (let i = 0; i < n; i++) {
      const id = `m${i}`;
      ids.push(id);
      if (i % 2 === 0) await sender.cast(name, id);
      else {
        calls.push(
          sender.call(name, id, { timeout: Infinity }).then((r) =>
            [id, r as number] as [string, number]
          ),
        );
      }
    }
    const consumer = (runtime: Runtime, hit: number, p: string) => {
      const c = new Child(runtime, SCRIPT, [
        path,
        "sweep-consumer",
        JSON.stringify({ point: p, hit, file, lockLease: 300, deadLetterThreshold: 100 }),
      ]);
      children.push(c);
      return c;
    };
    for (let k = 0; k < o.kills; k++) {
      const hit = between(random, 1, maxHit);
      const c = consumer(random() < 0.5 ? "deno" : "bun", hit, point);
      await c.next((d) => d.ready === true, 60_000, "sweep consumer ready");
      const code = await deadline(
        c.closed,
        60_000,
        `the consumer did not die at '${point}' (hit ${hit}, kill ${k + 1})`,
      );
      assert.equal(code, null, `the consumer exited (${code}) instead of dying at '${point}'`);
    }
    const last = consumer(random() < 0.5 ? "deno" : "bun", 0, "none");
    await last.next((d) => d.ready === true, 60_000, "final sweep consumer ready");
    const replies = new Map(await deadline(Promise.all(calls), 60_000, "calls not answered"));
    const view = await waitFor(
      async () => {
        const v = await readServerView(tenant, "sweep", { headLimit: 1 });
        return v && v.queue.length === 0 && v.queue.head.length === 0 && v.lock === null
          ? v
          : undefined;
      },
      60_000,
      "queue not drained",
      20,
    );
    await sender.stop();
    await last.kill();
    assert.equal(view.deadLetters.length, 0, "no dead letters");
    const state = view.state as unknown as SweepState;
    const applied = await readApplied(tenant);

    // State: every message applied exactly once, and a call's reply is its place in the log.
    const logged = state.log.map((x) => x.id);
    assert.deepEqual([...logged].sort(), [...ids].sort(), `${point}: every message once`);
    for (const [id, r] of replies) assert.equal(logged[r - 1], id, `${point}: reply of ${id}`);

    // Side effects, per message.
    const count = new Map<string, number>();
    for (const line of readFileSync(file, "utf8").split("\n")) {
      if (line !== "") count.set(line, (count.get(line) ?? 0) + 1);
    }
    const c = (id: string, what: string) => count.get(`${id} ${what}`) ?? 0;
    const sum = (what: string) => ids.reduce((s, id) => s + c(id, what), 0);
    const out: SweepOutcome = {
      point,
      kills: o.kills,
      messages: n,
      extraRuns: sum("run") - n,
      actionsLost: 0,
      secondActionLost: 0,
      extraLockedEffects: 0,
      extraLockedRuns: 0,
      takeovers: 0,
      seconds: 0,
    };
    if (!locked) {
      for (const id of ids) {
        assert.equal(applied.get(id), 1, `${point}: ${id} applied ${applied.get(id)} times`);
        assert.ok(c(id, "a1") <= 1 && c(id, "a2") <= c(id, "a1"), `${point}: actions of ${id}`);
        if (c(id, "a1") === 0) out.actionsLost++;
        else if (c(id, "a2") === 0) out.secondActionLost++;
      }
      const expect = {
        extraRuns: point === "handled" ? o.kills : 0,
        actionsLost: point === "committed" ? o.kills : 0,
        secondActionLost: point === "between-actions" ? o.kills : 0,
      };
      assert.deepEqual(
        {
          extraRuns: out.extraRuns,
          actionsLost: out.actionsLost,
          secondActionLost: out.secondActionLost,
        },
        expect,
        `${point}: handler runs and actions`,
      );
    } else {
      for (const id of ids) {
        assert.ok(state.locked[id], `${point}: lock phase of ${id} committed`);
        assert.equal(c(id, "done"), 1, `${point}: write-back action of ${id}`);
        assert.ok(c(id, "locked-effect") >= 1, `${point}: side effect of ${id} happened`);
        out.takeovers += (applied.get(`${id}/lock`) ?? 0) - 1;
      }
      out.extraLockedEffects = sum("locked-effect") - n;
      out.extraLockedRuns = sum("locked-run") - n;
      // Every kill leaves the lock to expire: one takeover each, and the handler runs again.
      const expect = {
        takeovers: o.kills,
        extraRuns: o.kills,
        extraLockedRuns: o.kills,
        extraLockedEffects: point === "locked-before" ? 0 : o.kills,
      };
      assert.deepEqual(
        {
          takeovers: out.takeovers,
          extraRuns: out.extraRuns,
          extraLockedRuns: out.extraLockedRuns,
          extraLockedEffects: out.extraLockedEffects,
        },
        expect,
        `${point}: takeovers, handler runs and locked side effects`,
      );
    }
    out.seconds = (performance.now() - started) / 1000;
    return out;
  } finally {
    await Promise.all(children.map((c) => c.kill()));
    await backend.close();
  }
}
