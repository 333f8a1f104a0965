/**
 * Promises of SPEC §4-5 that the other suites implement but did not assert: garbage collection
 * of abandoned reply slots, `ctx.signal` of `handleLocked` on a lost lease, a throwing
 * `handleInfo`, `sandboxOpen`'s data directory, `withFaults`' latency, and non-consuming
 * instances only enqueueing.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import {
  CallTimeoutError,
  defineServer,
  LockLostError,
  noreply,
  readServerView,
  reply,
  sandboxOpen,
  start,
  withFaults,
} from "../../mod.ts";
import { testHooks } from "../../lib/server/instance.ts";
import { ServerKeys } from "../../lib/server/keys.ts";
import { encodeRecord, timeOrderedId } from "../../lib/server/records.ts";
import { backends, fresh } from "./_backends.ts";
import { Counter, jobServer } from "./_defs.ts";
import { deadline, waitFor } from "../_helpers.ts";

/** A server whose handleInfo fails on request (throws, or returns something that is no result). */
function infoServer() {
  const runs: string[] = [];
  const def = defineServer({
    name: "infoed",
    init: () => ({ seen: [] as string[] }),
    handleCall: {
      get: (_: undefined, _from, s: { seen: string[] }) => reply(s, s),
    },
    handleInfo: (info: { tag: string; fail?: "throw" | "bad return" }, s: { seen: string[] }) => {
      runs.push(info.tag);
      if (info.fail === "throw") throw new Error(`info ${info.tag} failed`);
      const next = { seen: [...s.seen, info.tag] };
      if (info.fail === "bad return") return next as never; // a state, not a result
      return noreply(next);
    },
  });
  return { def, runs };
}

/** A server whose standard handlers record the instance that ran them (`ctx.instance`). */
function whoServer() {
  const runs: { tag: string; instance: string }[] = [];
  const def = defineServer({
    name: "who",
    init: () => [] as string[],
    handleCall: {
      who: (tag: string, _from, s: string[], ctx) => {
        runs.push({ tag, instance: ctx.instance });
        return reply(ctx.instance, [...s, tag]);
      },
    },
    handleCast: {
      mark: (tag: string, s: string[], ctx) => {
        runs.push({ tag, instance: ctx.instance });
        return noreply([...s, tag]);
      },
    },
  });
  return { def, runs };
}

for (const b of backends) {
  describe(`promises on ${b.name}`, { skip: b.skip }, () => {
    it("garbage-collects the pending reply slots of crashed callers and of deadlines long past", async () => {
      const { backend, tenant } = await fresh(b);
      const keys = new ServerKeys("counter");
      // A live caller (a sending instance: no garbage collection of its own) and the consumer.
      const sender = await start(Counter, [], { tenant, consume: false });
      const now = Date.now();
      // Slots of calls made two minutes ago (only slots over 60 s old are looked at).
      const old = () => timeOrderedId(now - 120_000);
      const gone = {
        noPresence: old(), // no deadline, and its caller left no presence: a crashed caller
        stalePresence: old(), // no deadline, its caller's presence not refreshed for a minute
        deadlinePassed: old(), // live caller, but its deadline passed over 60 s ago
        crashedPastDeadline: old(), // crashed caller, its deadline passed over 60 s ago
      };
      const kept = {
        noDeadline: old(), // live caller waiting without a timeout
        futureDeadline: old(), // live caller still within its deadline
        recentDeadline: old(), // live caller whose deadline passed less than 60 s ago
        pausedCaller: old(), // caller not seen for a minute (paused?), within its deadline
      };
      const crashed = "crashed-caller-" + timeOrderedId();
      const stale = "stale-caller-" + timeOrderedId();
      const slot = (caller: string, deadline: number | null) =>
        encodeRecord({ status: "pending", caller, deadline, at: now - 120_000 });
      await tenant.transact((tx) => {
        tx.set(
          keys.instance(stale),
          encodeRecord({
            instance: stale,
            runtime: "deno",
            pid: 1,
            consuming: false,
            since: now - 120_000,
            lastSeen: now - 60_000,
          }),
        );
        tx.set(keys.reply(gone.noPresence), slot(crashed, null));
        tx.set(keys.reply(gone.stalePresence), slot(stale, null));
        tx.set(keys.reply(gone.deadlinePassed), slot(sender.instance, now - 61_000));
        tx.set(keys.reply(gone.crashedPastDeadline), slot(crashed, now - 61_000));
        tx.set(keys.reply(kept.pausedCaller), slot(stale, now + 60_000));
        tx.set(keys.reply(kept.noDeadline), slot(sender.instance, null));
        tx.set(keys.reply(kept.futureDeadline), slot(sender.instance, now + 60_000));
        tx.set(keys.reply(kept.recentDeadline), slot(sender.instance, now - 10_000));
      });
      const present = async (ids: Record<string, string>) =>
        await tenant.transact(async (tx) => {
          const out: string[] = [];
          for (const [name, id] of Object.entries(ids)) {
            if (await tx.get(keys.reply(id)) !== undefined) out.push(name);
          }
          return out;
        });
      assert.deepEqual(await present(gone), Object.keys(gone), "the slots were written");
      const consumer = await start(Counter, [], { tenant });
      // At the real pace a consuming instance collects garbage every GC_EVERY heartbeats (30 s):
      // run its heartbeats now instead.
      await waitFor(
        async () => {
          await testHooks(consumer).beat();
          return (await present(gone)).length === 0;
        },
        10_000,
        "abandoned reply slots were not collected",
      );
      // The same collection (one range read, one transaction) left the others alone.
      assert.deepEqual(
        await present(kept),
        Object.keys(kept),
        "a live caller's slot was collected",
      );
      await consumer.stop();
      await sender.stop();
      await backend.close();
    });

    it("aborts handleLocked's ctx.signal when another instance takes over its expired lease", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const a = await start(j.def, [], { tenant, lockLease: 200 });
      const sender = await start(j.def, [], { tenant, consume: false });
      const done = sender.call("work", "t1", { timeout: 20_000 });
      await waitFor(() => j.signals.length === 1, 5_000, "handleLocked not started on A");
      assert.equal(j.started[0], a.instance);
      testHooks(a).renewLeases = false; // A freezes: no renewal reaches the backend
      const bRef = await start(j.def, [], { tenant, lockLease: 200 });
      // A's consume loop waits for its handleLocked: the requeued message can only go to B.
      await waitFor(() => j.signals.length === 2, 5_000, "B did not take over the lease");
      assert.equal(j.started[1], bRef.instance);
      const errors = console.error;
      console.error = () => {}; // A's refused settle says so
      try {
        testHooks(a).renewLeases = true; // A resumes: its next renewal finds the lock taken
        await waitFor(() => j.signals[0]!.aborted, 5_000, "A's ctx.signal was not aborted");
        assert.ok(
          j.signals[0]!.reason instanceof LockLostError,
          `aborted with ${j.signals[0]!.reason}`,
        );
        assert.equal(j.signals[1]!.aborted, false, "the new holder's signal was aborted");
        j.gates[0]!.resolve();
        await waitFor(() => a.stats.lockLost === 1, 5_000, "A's write-back was not refused");
      } finally {
        console.error = errors;
      }
      j.gates[1]!.resolve();
      assert.equal(await deadline(done, 10_000, "caller not answered"), "done t1");
      assert.deepEqual((await bRef.call("get")).results, ["t1"], "applied exactly once");
      await a.stop();
      await bRef.stop();
      await sender.stop();
      await backend.close();
    });

    for (const consume of [true, false]) {
      it(
        `loses a failing handleInfo's message and keeps the state (${
          consume ? "consuming" : "sending"
        } instance)`,
        async () => {
          const { backend, tenant } = await fresh(b);
          const s = infoServer();
          const ref = await start(s.def, [], { tenant, consume });
          const stored = async () => {
            const view = await readServerView(tenant, "infoed");
            return {
              state: view!.state,
              queued: view!.queue.length,
              deadLetters: view!.deadLetters.length,
            };
          };
          await ref.send({ tag: "i1" });
          const before = await stored();
          assert.deepEqual(before, { state: { seen: ["i1"] }, queued: 0, deadLetters: 0 });
          // SPEC §5.4: message lost, state unchanged, the sender gets the error.
          await assert.rejects(ref.send({ tag: "thrown", fail: "throw" }), /info thrown failed/);
          await assert.rejects(
            ref.send({ tag: "bad", fail: "bad return" }),
            (e) => (e as { code?: string }).code === "bad_return",
          );
          assert.deepEqual(await stored(), before, "state changed, or the message was kept");
          // The next handler sees the unchanged state; the failed ones were not run again.
          await ref.send({ tag: "i2" });
          assert.deepEqual((await stored()).state, { seen: ["i1", "i2"] });
          // A throw is no conflict: a failed info handler ran once (a successful one may run
          // again after a conflict, so only the failed ones are counted).
          assert.deepEqual(
            s.runs.filter((t) => t === "thrown" || t === "bad"),
            ["thrown", "bad"],
            "a failed info was retried",
          );
          await ref.stop();
          await backend.close();
        },
      );
    }

    it("delays each transaction attempt of withFaults by at least latency[0] ms", async () => {
      const inner = await b.open();
      const MIN = 30;
      const TOLERANCE = 2; // timers may fire up to a ms early on some runtimes
      const key = new Uint8Array([0x70, 0x72, 0x6f, 0x6d]);
      const slow = withFaults(inner, { seed: 11, latency: [MIN, MIN + 10] });
      for (let i = 0; i < 4; i++) {
        const t0 = performance.now();
        await slow.transact((tx) => tx.set(key, new Uint8Array([i])));
        const took = performance.now() - t0;
        assert.ok(took >= MIN - TOLERANCE, `transaction ${i} took ${took} ms`);
      }
      assert.equal(slow.stats.attempts, 4);
      // With injected conflicts, every retried attempt is delayed too.
      const retried = withFaults(inner, { seed: 5, conflictRate: 0.5, latency: [MIN, MIN] });
      const t0 = performance.now();
      for (let i = 0; i < 4; i++) {
        await retried.transact((tx) => tx.set(key, new Uint8Array([i])));
      }
      const took = performance.now() - t0;
      assert.ok(retried.stats.conflicts > 0, "no conflict was injected");
      const attempts = retried.stats.attempts;
      assert.ok(
        took >= attempts * (MIN - TOLERANCE),
        `${attempts} attempts took ${took} ms`,
      );
      await inner.close();
    });

    it("runs no standard handler on a non-consuming instance: it only enqueues", async () => {
      const { backend, tenant } = await fresh(b);
      const w = whoServer();
      const sender = await start(w.def, [], { tenant, consume: false });
      const queued = async () => (await readServerView(tenant, "who"))!.queue.length;
      // No consumer yet: the sender's calls and casts are enqueued and wait, the first of each
      // made on an empty, unlocked queue (where a consuming instance would run them inline).
      await assert.rejects(sender.call("who", "k1", { timeout: 200 }), CallTimeoutError);
      await sender.cast("mark", "c1");
      await sender.castMany([["mark", "c2"], ["mark", "c3"]]);
      assert.equal(w.runs.length, 0, "a standard handler ran without a consumer");
      assert.equal(await queued(), 4);
      assert.deepEqual((await readServerView(tenant, "who"))!.state, []);
      // The probe sees the sender when it does run a handler: on the priority path.
      assert.equal(await sender.priorityCall("who", "p1"), sender.instance);
      const consumer = await start(w.def, [], { tenant });
      assert.equal(await sender.call("who", "k2"), consumer.instance);
      // With a consumer, on an empty queue again: still enqueued, applied by the consumer.
      assert.equal(await queued(), 0);
      await sender.cast("mark", "c4");
      await waitFor(async () => await queued() === 0, 5_000, "c4 was not applied");
      assert.equal(await sender.call("who", "k3"), consumer.instance);
      // A handler may run more than once (a conflict retries its transaction): the log is
      // checked for who ran what, the state for what was applied.
      const elsewhere = w.runs.filter((r) => r.instance !== consumer.instance);
      assert.ok(
        elsewhere.length > 0 &&
          elsewhere.every((r) => r.tag === "p1" && r.instance === sender.instance),
        `ran outside the consumer: ${JSON.stringify(elsewhere)}`,
      );
      assert.deepEqual(
        new Set(w.runs.filter((r) => r.instance === consumer.instance).map((r) => r.tag)),
        new Set(["k1", "c1", "c2", "c3", "k2", "c4", "k3"]),
      );
      assert.deepEqual(
        (await readServerView(tenant, "who"))!.state,
        ["p1", "k1", "c1", "c2", "c3", "k2", "c4", "k3"],
        "each message applied once, in queue order",
      );
      await sender.stop();
      await consumer.stop();
      await backend.close();
    });
  });
}

describe("sandboxOpen", () => {
  it("stores its database under $DGEN_DATA_DIR when set, else .dgen/, reading it at each call", async () => {
    const root = mkdtempSync(join(tmpdir(), "dgen-sandbox-test-"));
    const savedDir = process.env.DGEN_DATA_DIR;
    const savedCwd = process.cwd();
    const dirA = join(root, "a");
    const dirB = join(root, "b");
    const backends = new Set<{ close(): Promise<void> }>();
    const open = async () => {
      const tenant = await sandboxOpen("promises", "t");
      backends.add(tenant.backend);
      return tenant;
    };
    const value = async (tenant: Awaited<ReturnType<typeof open>>) => {
      const ref = await start(Counter, [], { tenant });
      const n = await ref.call("value");
      await ref.stop();
      return n;
    };
    try {
      process.env.DGEN_DATA_DIR = dirA;
      const a = await open();
      assert.ok(existsSync(join(dirA, "promises.sqlite")), "not under $DGEN_DATA_DIR");
      const ref = await start(Counter, [], { tenant: a });
      assert.equal(await ref.call("add", 5), 5);
      await ref.stop();
      // Changed in the same process: the next call reads it.
      process.env.DGEN_DATA_DIR = dirB;
      const bTenant = await open();
      assert.ok(existsSync(join(dirB, "promises.sqlite")), "the changed variable was not read");
      assert.notEqual(bTenant.backend, a.backend);
      assert.equal(await value(bTenant), 0, "a fresh database");
      // Unset: `.dgen/` in the working directory.
      delete process.env.DGEN_DATA_DIR;
      process.chdir(root);
      const c = await open();
      assert.ok(existsSync(join(root, ".dgen", "promises.sqlite")), "not under .dgen/");
      assert.equal(await value(c), 0, "a fresh database");
      // Back to the first directory: its data is there.
      process.env.DGEN_DATA_DIR = dirA;
      assert.equal(await value(await open()), 5, "the first database's data");
    } finally {
      process.chdir(savedCwd);
      if (savedDir === undefined) delete process.env.DGEN_DATA_DIR;
      else process.env.DGEN_DATA_DIR = savedDir;
      for (const backend of backends) await backend.close();
      rmSync(root, { recursive: true, force: true });
    }
  });
});
