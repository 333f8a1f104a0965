/**
 * The nemesis test: three consuming processes and two client processes (Deno and Bun mixed) on
 * one SQLite file; at least 5,000 operations (casts, calls, priority calls on two counters and
 * two registers) while a nemesis SIGKILLs (and restarts) and SIGSTOPs/SIGCONTs consumers and
 * clients; a client that finishes before the nemesis has struck 20 times runs another round of
 * operations, so the check does not depend on the machine's speed. Checks exactly-once
 * application and linearizability of every server's history; then
 * that the checks can fail, by mutating the recorded history.
 *
 * `DGEN_SEED` replays a run; `DGEN_NEMESIS_OPS` changes the operation count.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { missingRuntimes } from "../_processes.ts";
import { checkExactlyOnce, checkKey, type HistoryEvent, runNemesis } from "./_nemesis.ts";
import { testSeed } from "./_seed.ts";

const skip = missingRuntimes();
const OPS = Number(process.env.DGEN_NEMESIS_OPS ?? 5_000);

describe("nemesis: SIGKILL and SIGSTOP of consumers and clients on SQLite", { skip }, () => {
  it("applies every acknowledged operation exactly once, and every history is linearizable", async () => {
    const seed = testSeed("nemesis");
    const run = await runNemesis({ seed, ops: OPS, faultEvery: [200, 700], log: console.log });
    const f = run.figures;
    console.log(
      `nemesis (seed ${seed}): ${f.ops} ops (${f.ok} ok, ${f.fail} fail, ${f.unknown} unknown), ` +
        `${f.applied} applied; consumers ${f.consumerKills} killed, ${f.consumerStops} stopped; ` +
        `clients ${f.clientKills} killed, ${f.clientStops} stopped; ` +
        `${f.explored} configurations explored; ${f.seconds.toFixed(1)} s`,
    );
    assert.ok(f.ops >= OPS);
    const faults = f.consumerKills + f.consumerStops + f.clientKills + f.clientStops;
    assert.ok(faults >= 20, `${faults} faults`);
    assert.ok(f.consumerKills > 0 && f.consumerStops > 0, "consumers were killed and stopped");
    assert.ok(f.clientKills > 0 && f.clientStops > 0, "clients were killed and stopped");

    // The checks are not vacuous: each mutation of the real history must be caught.
    const history = run.history;
    const invokes = history.filter((e): e is HistoryEvent & { ev: "invoke" } => e.ev === "invoke");
    const outcome = new Map(history.filter((e) => e.ev !== "invoke").map((e) => [e.id, e]));
    const okOf = (path: string, f: string, key: (k: string) => boolean) =>
      invokes.find((i) =>
        i.path === path && i.f === f && key(i.key) && outcome.get(i.id)?.ev === "ok" &&
        !i.id.startsWith("final-")
      )!;
    const isCounter = (k: string) => run.counters.includes(k);
    const isRegister = (k: string) => run.registers.includes(k);

    // An acknowledged cast lost, and one applied twice.
    const cast = okOf("cast", "add", isCounter);
    const lost = new Map(run.applied);
    lost.delete(cast.id);
    assert.throws(() => checkExactlyOnce(history, lost), /acknowledged .* applied 0 times/);
    const twice = new Map(run.applied).set(cast.id, 2);
    assert.throws(() => checkExactlyOnce(history, twice), /applied 2 times/);

    // A counter read that returns an impossible value.
    const read = okOf("call", "read", isCounter);
    const badRead = history.map((e) => e.ev === "ok" && e.id === read.id ? { ...e, value: -1 } : e);
    assert.throws(() => checkKey(badRead, read.key, "counter"), /not linearizable/);

    // A register read that sees a write invoked only after the read returned.
    const rread = invokes.find((i) => {
      if (!isRegister(i.key) || i.f !== "read" || i.path === "cast") return false;
      const end = outcome.get(i.id);
      return end?.ev === "ok" &&
        invokes.some((w) =>
          w.key === i.key && w.f === "write" && w.t > end.t + 10 && outcome.get(w.id)?.ev === "ok"
        );
    })!;
    const readEnd = outcome.get(rread.id)!;
    const future = invokes.find((w) =>
      w.key === rread.key && w.f === "write" && w.t > readEnd.t + 10 &&
      outcome.get(w.id)?.ev === "ok"
    )!;
    const seesFuture = history.map((e) =>
      e.ev === "ok" && e.id === rread.id ? { ...e, value: (future.arg as { v: string }).v } : e
    );
    assert.throws(() => checkKey(seesFuture, rread.key, "register"), /not linearizable/);
  });
});
