import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  DeadLetterError,
  defineServer,
  lock,
  noreply,
  reply,
  ServerStoppedError,
  start,
  StateConflictError,
} from "../../mod.ts";
import { testHooks } from "../../lib/server/instance.ts";
import { ServerKeys } from "../../lib/server/keys.ts";
import { decodeLock } from "../../lib/server/records.ts";
import { backends, fresh } from "./_backends.ts";
import { jobServer } from "./_defs.ts";
import { deadline, waitFor } from "../_helpers.ts";

const keys = new ServerKeys("job");

for (const b of backends) {
  describe(`lock on ${b.name}`, { skip: b.skip }, () => {
    it("runs handleLocked outside the transaction, replies, and releases the lock", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const ref = await start(j.def, [], { tenant });
      const done = ref.call("work", "t1");
      await waitFor(() => j.gates.length === 1, 5000, "handleLocked not started");
      const held = await tenant.transact((tx) => tx.get(keys.lock));
      const rec = decodeLock(held!, keys.lock);
      assert.equal(rec.holder, ref.instance);
      assert.equal(rec.message.name, "work");
      assert.equal(
        (await ref.priorityCall("get")).status,
        "running t1",
        "lock state committed first",
      );
      j.gates[0]!.resolve();
      assert.equal(await done, "done t1");
      assert.equal(await tenant.transact((tx) => tx.get(keys.lock)), undefined);
      const s = await ref.call("get");
      assert.deepEqual(s.results, ["t1"]);
      assert.equal(s.status, "idle");
      await ref.stop();
      await backend.close();
    });

    it("makes standard messages wait while priority messages run", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const ref = await start(j.def, [], { tenant });
      const done = ref.call("work", "t1");
      await waitFor(() => j.gates.length === 1, 5000, "handleLocked not started");
      let queuedAnswered = false;
      const queued = ref.call("note", "queued").then((r) => {
        queuedAnswered = true;
        return r;
      });
      assert.equal(await ref.priorityCall("note", "priority"), "noted");
      assert.equal(queuedAnswered, false, "a standard call ran during the lock");
      j.gates[0]!.resolve();
      assert.equal(await done, "done t1");
      assert.equal(await queued, "noted");
      const s = await ref.call("get");
      assert.deepEqual(
        s.notes,
        ["priority", "queued"],
        "the priority change survived the write-back",
      );
      assert.deepEqual(s.results, ["t1"]);
      await ref.stop();
      await backend.close();
    });

    it("fails the write-back loudly when handleLocked and a priority message both changed a field", async () => {
      const { backend, tenant } = await fresh(b);
      const hooked: unknown[] = [];
      const j = jobServer((e) => hooked.push(e));
      const ref = await start(j.def, [], { tenant, deadLetterThreshold: 1 });
      const errors = console.error;
      console.error = () => {};
      try {
        const done = ref.call("work", "t1");
        await waitFor(() => j.gates.length === 1, 5000, "handleLocked not started");
        await ref.priorityCall("status", "paused by operator");
        j.gates[0]!.resolve();
        await assert.rejects(
          done,
          (e) =>
            e instanceof DeadLetterError && e.message.includes("both changed state.status") &&
            (e.cause as { code?: string }).code === "state_conflict",
        );
        // handleDeadLetter gets the failure as the class it was thrown as, with its path.
        await waitFor(() => hooked.length === 1, 5000, "handleDeadLetter did not run");
        const failure = hooked[0];
        assert.ok(failure instanceof StateConflictError, String(failure));
        assert.equal(failure.path, "state.status");
      } finally {
        console.error = errors;
      }
      const s = await ref.call("get");
      assert.equal(s.status, "paused by operator", "the priority write was not overwritten");
      assert.deepEqual(s.results, []);
      await ref.stop();
      await backend.close();
    });

    it("takes over a stalled holder's lock after its lease and fences its write-back", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const a = await start(j.def, [], { tenant, lockLease: 200 });
      const done = a.call("work", "t1", { timeout: 20_000 });
      await waitFor(() => j.gates.length === 1, 5000, "handleLocked not started on A");
      testHooks(a).renewLeases = false; // A stalls: no renewals reach the backend
      const bRef = await start(j.def, [], { tenant, lockLease: 200 });
      await waitFor(() => j.gates.length === 2, 5000, "B did not take over");
      // The requeued message runs again under a new lock (on whichever consumer wins it).
      assert.ok(j.tokens[1]! > j.tokens[0]!, "fencing tokens increase");
      const rec = decodeLock((await tenant.transact((tx) => tx.get(keys.lock)))!, keys.lock);
      assert.equal(
        rec.message.attempts,
        1,
        "the in-progress message was requeued with one more attempt",
      );
      // A resumes and tries to write back: refused.
      const errors = console.error;
      console.error = () => {};
      try {
        j.gates[0]!.resolve();
        await waitFor(() => a.stats.lockLost === 1, 5000, "A's stale write-back was not refused");
      } finally {
        console.error = errors;
      }
      j.gates[1]!.resolve();
      assert.equal(await deadline(done, 10_000, "caller not answered"), "done t1");
      const s = await bRef.call("get");
      assert.deepEqual(s.results, ["t1"], "applied exactly once");
      await a.stop();
      await bRef.stop();
      await backend.close();
    });

    it("recovers the lock of a crashed holder", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const a = await start(j.def, [], { tenant, lockLease: 150 });
      const sender = await start(j.def, [], { tenant, consume: false });
      const done = sender.call("work", "t2", { timeout: 20_000 });
      await waitFor(() => j.gates.length === 1, 5000, "handleLocked not started on A");
      testHooks(a).crash();
      const bRef = await start(j.def, [], { tenant, lockLease: 150 });
      await waitFor(() => j.gates.length === 2, 5000, "B did not take over");
      const errors = console.error;
      console.error = () => {}; // the crashed holder's settle attempt is refused, and says so
      j.gates[0]!.resolve();
      j.gates[1]!.resolve();
      assert.equal(await deadline(done, 10_000, "caller not answered"), "done t2");
      console.error = errors;
      assert.deepEqual((await bRef.call("get")).results, ["t2"]);
      await sender.stop();
      await bRef.stop();
      await backend.close();
    });

    it("aborts ctx.signal when the instance stops during handleLocked", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const ref = await start(j.def, [], { tenant });
      ref.call("work", "t3").catch(() => {});
      await waitFor(() => j.signals.length === 1, 5000, "handleLocked not started");
      const stopping = ref.stop();
      await waitFor(() => j.signals[0]!.aborted, 5000, "signal not aborted");
      j.gates[0]!.resolve();
      await stopping;
      await backend.close();
    });

    it("commits what handleLocked returns after its instance began to stop", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const ref = await start(j.def, [], { tenant, deadLetterThreshold: 1 });
      ref.call("work", "t5").catch(() => {});
      await waitFor(() => j.signals.length === 1, 5000, "handleLocked not started");
      const stopping = ref.stop();
      await waitFor(() => j.signals[0]!.aborted, 5000, "signal not aborted");
      j.gates[0]!.resolve(); // it finishes its work all the same
      await stopping;
      const next = await start(j.def, [], { tenant, deadLetterThreshold: 1 });
      const s = await next.priorityCall("get");
      assert.deepEqual([s.status, s.results], ["idle", ["t5"]]);
      assert.deepEqual(await next.deadLetters.list(), []);
      assert.equal(await next.call("work", "quick"), "quick", "the lock was released");
      await next.stop();
      await backend.close();
    });

    it("requeues without an attempt a message whose handleLocked gave up on a stop", async () => {
      const { backend, tenant } = await fresh(b);
      let runs = 0;
      const Job = defineServer({
        name: "job",
        init: () => ({ done: 0 }),
        handleCast: { work: (_: undefined, s: { done: number }) => lock(s) },
        handleCall: { get: (_: undefined, _f, s: { done: number }) => reply(s.done, s) },
        handleLocked: async (_e, s: { done: number }, ctx) => {
          if (++runs === 1) {
            // Gives up when its instance stops, as ctx.signal asks.
            await new Promise((_, reject) => ctx.signal.addEventListener("abort", reject));
          }
          return noreply({ done: s.done + 1 });
        },
      });
      const ref = await start(Job, [], { tenant, deadLetterThreshold: 1 });
      await ref.cast("work");
      await waitFor(() => runs === 1, 5000, "handleLocked not started");
      await ref.stop();
      // Not dead-lettered at a threshold of 1: the stop was not the message's failure.
      const next = await start(Job, [], { tenant, deadLetterThreshold: 1 });
      await waitFor(async () => await next.call("get") === 1, 10_000, "not run again");
      assert.equal(runs, 2);
      assert.deepEqual(await next.deadLetters.list(), []);
      await next.stop();
      await backend.close();
    });

    it("stop() waits for calls in flight; a lock one takes then goes back to the queue", async () => {
      const { backend, tenant } = await fresh(b);
      let entered = Promise.withResolvers<void>();
      let gate = Promise.withResolvers<void>();
      const log: string[] = [];
      const Slow = defineServer({
        name: "slow",
        init: () => 0,
        handleCall: {
          // Inline calls: their handlers run in the calling instance's transaction.
          inc: async (_: undefined, _from, n: number) => {
            entered.resolve();
            await gate.promise;
            log.push("inc returns");
            return reply(n + 1, n + 1);
          },
          work: async (_: undefined, _from, n: number) => {
            entered.resolve();
            await gate.promise;
            return lock(n);
          },
          value: (_: undefined, _from, n: number) => reply(n, n),
        },
        handleLocked: (_e, n: number) => {
          log.push("handleLocked");
          return reply("done", n + 100);
        },
      });
      // An inline call and a priority call in flight when stop() is called: both are answered,
      // and nothing runs after stop() resolves (a handler may run twice: the two conflict).
      const first = await start(Slow, [], { tenant });
      const inc = first.call("inc");
      const prio = first.priorityCall("inc");
      await entered.promise;
      const stopping = first.stop().then(() => log.push("stopped"));
      gate.resolve();
      await stopping;
      assert.equal(log.at(-1), "stopped");
      assert.ok(log.filter((x) => x === "inc returns").length >= 2, log.join());
      assert.equal(await inc + await prio, 3, "both were answered");
      // An inline call that takes the lock as its instance stops: its caller is told, and the
      // lock goes back to the queue instead of running handleLocked on the stopped instance.
      entered = Promise.withResolvers<void>();
      gate = Promise.withResolvers<void>();
      const second = await start(Slow, [], { tenant });
      const work = second.call("work").catch((e) => e);
      await entered.promise;
      const stoppingToo = second.stop();
      gate.resolve();
      await stoppingToo;
      assert.ok(await work instanceof ServerStoppedError);
      assert.ok(!log.includes("handleLocked"), "handleLocked ran on a stopped instance");
      const next = await start(Slow, [], { tenant });
      await waitFor(async () => await next.call("value") === 102, 10_000, "not run again");
      assert.deepEqual(log.filter((x) => x === "handleLocked"), ["handleLocked"]);
      await next.stop();
      await backend.close();
    });

    it("keeps fencing tokens growing across a kill of the server", async () => {
      const { backend, tenant } = await fresh(b);
      const j = jobServer();
      const ref = await start(j.def, [], { tenant });
      for (const [i, task] of ["t1", "t2"].entries()) {
        const done = ref.call("work", task);
        await waitFor(() => j.gates.length === i + 1, 5000, `handleLocked of ${task}`);
        j.gates[i]!.resolve();
        await done;
      }
      await ref.kill();
      const again = await start(j.def, [], { tenant });
      const done = again.call("work", "t3");
      await waitFor(() => j.tokens.length === 3, 5000, "handleLocked not started");
      j.gates.at(-1)!.resolve();
      assert.equal(await done, "done t3");
      assert.deepEqual(j.tokens, [1n, 2n, 3n], "a lock after the kill still outranks those before");
      await again.stop();
      await backend.close();
    });

    it("refuses lock on the priority path and without handleLocked", async () => {
      const { backend, tenant } = await fresh(b);
      const NoLock = defineServer({
        name: "nolock",
        init: () => 0,
        handleCall: { l: (_: undefined, _f, n: number) => lock(n) },
      });
      const ref = await start(NoLock, [], { tenant, deadLetterThreshold: 1 });
      await assert.rejects(ref.priorityCall("l"), /no lock/);
      await assert.rejects(ref.call("l"), /without a handleLocked/);
      await ref.stop();
      await backend.close();
    });
  });
}
