/**
 * Actions (SPEC §5.3): callers are answered at commit on every path, before the message's
 * actions end; the actions of one instance run in commit order without interleaving; an action
 * (or a handleDeadLetter run) that does not settle within `actionTimeout` counts as failed and
 * wedges nothing.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { defineServer, noreply, reply, start, ValidationError } from "../../mod.ts";
import { backends, fresh } from "./_backends.ts";
import { deadline, waitFor } from "../_helpers.ts";

function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const error = console.error;
  console.error = () => {};
  return fn().finally(() => console.error = error);
}

/** A promise the test settles: what a slow action awaits. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => open = r);
  return { promise, open };
}

/** The "slow" server: each message's action logs its start, awaits `gates.next`, logs its end. */
function slowServer(log: string[], gates: { next: Promise<void> }) {
  const slow = (label: string) => async (state: number) => {
    log.push(`start ${label} ${state}`);
    await gates.next;
    log.push(`end ${label} ${state}`);
  };
  return defineServer({
    name: "slow",
    init: () => 0,
    handleCall: {
      go: (_: undefined, _from, n: number) => reply(n + 1, n + 1, [slow("call")]),
      get: (_: undefined, _from, n: number) => reply(n, n),
    },
    handleCast: { go: (_: undefined, n: number) => noreply(n + 1, [slow("cast")]) },
  });
}

for (const b of backends) {
  describe(`server actions on ${b.name}`, { skip: b.skip }, () => {
    it("answers an inline call, a priorityCall and an inline cast before their slow actions end", async () => {
      const { backend, tenant } = await fresh(b);
      const log: string[] = [];
      const gates = { next: Promise.resolve() };
      const ref = await start(slowServer(log, gates), [], { tenant });
      const paths: [string, () => Promise<unknown>, unknown][] = [
        // The call's own timeout is shorter than the test's wait: before the change the caller
        // got CallTimeoutError although its state had committed.
        ["inline call", () => ref.call("go", undefined, { timeout: 1_000 }), 1],
        ["priorityCall", () => ref.priorityCall("go"), 2],
        ["inline cast", () => ref.cast("go"), undefined],
      ];
      for (const [label, send, expected] of paths) {
        const g = gate();
        gates.next = g.promise;
        const before = log.length;
        assert.equal(await deadline(send(), 5_000, `${label} waited for its action`), expected);
        assert.ok(
          !log.slice(before).some((l) => l.startsWith("end")),
          `${label}: answered before its action ended`,
        );
        g.open();
        await waitFor(() => log.slice(before).some((l) => l.startsWith("end")), 5_000, label);
      }
      assert.equal(await ref.priorityCall("get"), 3);
      assert.equal(ref.stats.actionErrors, 0);
      await ref.stop();
      await backend.close();
    });

    it("answers a caller whose deadline passes while its actions run (not CallTimeoutError)", async () => {
      const { backend, tenant } = await fresh(b);
      const log: string[] = [];
      const g = gate();
      const ref = await start(slowServer(log, { next: g.promise }), [], { tenant });
      // A first message holds the action chain: the second call's action waits behind it.
      assert.equal(await deadline(ref.call("go"), 5_000, "first call"), 1);
      assert.equal(await ref.call("go", undefined, { timeout: 300 }), 2);
      assert.deepEqual(log, ["start call 1"]);
      g.open();
      await waitFor(() => log.length === 4, 5_000, "actions did not finish");
      assert.deepEqual(log, ["start call 1", "end call 1", "start call 2", "end call 2"]);
      await ref.stop();
      await backend.close();
    });

    it("runs the actions of successive messages in commit order, never interleaved", async () => {
      const { backend, tenant } = await fresh(b);
      const log: [string, number][] = [];
      const steps = (n: number) => [
        async () => {
          log.push(["a", n]);
          // Longer than a commit, so that the next message commits meanwhile.
          await new Promise((r) => setTimeout(r, 20));
          log.push(["b", n]);
        },
        async () => {
          await Promise.resolve();
          log.push(["c", n]);
        },
      ];
      const Ordered = defineServer({
        name: "ordered",
        init: () => 0,
        handleCall: { go: (_: undefined, _from, n: number) => reply(n + 1, n + 1, steps(n + 1)) },
        handleCast: { go: (_: undefined, n: number) => noreply(n + 1, steps(n + 1)) },
      });
      const consumer = await start(Ordered, [], { tenant });
      const sender = await start(Ordered, [], { tenant, consume: false });
      // Inline calls and casts and priority calls of the consuming instance, and queued casts
      // and calls from the other one, all at once.
      const sends: Promise<unknown>[] = [];
      for (let i = 0; i < 6; i++) {
        sends.push(
          consumer.call("go"),
          consumer.priorityCall("go"),
          consumer.cast("go"),
          sender.cast("go"),
          sender.call("go"),
        );
      }
      await deadline(Promise.all(sends), 20_000, "messages not answered");
      const total = sends.length;
      await waitFor(() => log.length === 3 * total, 10_000, "actions did not all run");
      const order: number[] = [];
      for (let i = 0; i < log.length; i += 3) {
        const n = log[i]![1];
        assert.deepEqual(
          log.slice(i, i + 3),
          [["a", n], ["b", n], ["c", n]],
          `the actions of message ${n} ran without others in between`,
        );
        order.push(n);
      }
      assert.deepEqual(order, Array.from({ length: total }, (_, i) => i + 1), "commit order");
      await consumer.stop();
      await sender.stop();
      await backend.close();
    });

    it("gives up on an action that never settles after actionTimeout; the server goes on and stops", async () => {
      const { backend, tenant } = await fresh(b);
      const seen: string[] = [];
      let rejectLate!: (e: unknown) => void;
      const Hang = defineServer({
        name: "hang",
        init: () => 0,
        handleCast: {
          hang: (_: undefined, n: number) =>
            noreply(n + 1, [() => new Promise(() => {}), () => void seen.push("skipped ran")]),
          // Rejects long after its limit: no unhandled rejection.
          late: (_: undefined, n: number) =>
            noreply(n + 1, [() => new Promise((_, reject) => rejectLate = reject)]),
        },
        handleCall: {
          hang: (_: undefined, _from, n: number) =>
            reply("ok", n + 1, [() => new Promise(() => {})]),
          get: (_: undefined, _from, n: number) => reply(n, n),
        },
      });
      await quietly(async () => {
        const consumer = await start(Hang, [], { tenant, actionTimeout: 100 });
        const sender = await start(Hang, [], { tenant, consume: false });
        await sender.cast("hang");
        // Queued behind the hanging action: applied once it is given up on.
        assert.equal(await deadline(sender.call("get"), 10_000, "next message not applied"), 1);
        assert.equal(consumer.stats.actionErrors, 1);
        assert.deepEqual(seen, [], "the message's remaining actions are skipped");
        // An inline call whose action hangs is answered; the next one waits for nothing.
        assert.equal(await deadline(consumer.call("hang"), 5_000, "inline call"), "ok");
        await sender.cast("late");
        assert.equal(await deadline(sender.call("get"), 10_000, "after late"), 3);
        await waitFor(() => consumer.stats.actionErrors === 3, 5_000, "timeouts not counted");
        rejectLate(new Error("too late"));
        await deadline(consumer.stop(), 5_000, "stop() did not resolve");
        await sender.stop();
      });
      await backend.close();
    });

    it("gives up on a handleDeadLetter that never settles after actionTimeout", async () => {
      const { backend, tenant } = await fresh(b);
      const Poison = defineServer({
        name: "poison",
        init: () => 0,
        handleCast: {
          bad: (): never => {
            throw new Error("poison");
          },
          good: (_: undefined, n: number) => noreply(n + 1),
        },
        handleCall: { get: (_: undefined, _from, n: number) => reply(n, n) },
        handleDeadLetter: () => new Promise(() => {}),
      });
      await quietly(async () => {
        const consumer = await start(Poison, [], {
          tenant,
          deadLetterThreshold: 1,
          actionTimeout: 100,
        });
        const sender = await start(Poison, [], { tenant, consume: false });
        await sender.cast("bad");
        await sender.cast("good");
        assert.equal(await deadline(sender.call("get"), 10_000, "next message not applied"), 1);
        assert.equal(consumer.stats.deadLettered, 1);
        assert.equal(consumer.stats.actionErrors, 1);
        await deadline(consumer.stop(), 5_000, "stop() did not resolve");
        await sender.stop();
      });
      await backend.close();
    });

    it("waits in stop() for the actions in flight, an inline call's too", async () => {
      const { backend, tenant } = await fresh(b);
      const log: string[] = [];
      const g = gate();
      const ref = await start(slowServer(log, { next: g.promise }), [], { tenant });
      assert.equal(await deadline(ref.call("go"), 5_000, "call"), 1);
      let stopped = false;
      const stopping = ref.stop().then(() => stopped = true);
      // Time for stop() to finish if it did not wait for the action.
      await Promise.race([stopping, new Promise((r) => setTimeout(r, 100))]);
      assert.equal(stopped, false, "stop() resolved while an action ran");
      g.open();
      await deadline(stopping, 5_000, "stop() did not resolve");
      assert.deepEqual(log, ["start call 1", "end call 1"]);
      await backend.close();
    });

    it("lets an action stop its own instance (without awaiting it)", async () => {
      const { backend, tenant } = await fresh(b);
      // deno-lint-ignore prefer-const
      let ref: { stop(): Promise<void> };
      const Quit = defineServer({
        name: "quit",
        init: () => 0,
        handleCast: { quit: (_: undefined, n: number) => noreply(n + 1, [() => void ref.stop()]) },
      });
      const sender = await start(Quit, [], { tenant, consume: false });
      const consumer = await start(Quit, [], { tenant });
      ref = consumer;
      await sender.cast("quit");
      assert.equal(await deadline(consumer.stopped, 5_000, "not stopped"), "stopped");
      await sender.stop();
      await backend.close();
    });

    it("validates actionTimeout", async () => {
      const { backend, tenant } = await fresh(b);
      for (const bad of [0, -1, 1.5, 2 ** 31, NaN, -Infinity, "1000", null]) {
        await assert.rejects(
          start(slowServer([], { next: Promise.resolve() }), [], {
            tenant,
            actionTimeout: bad as number,
          }),
          (e) => e instanceof ValidationError && /options\.actionTimeout/.test(e.message),
          `actionTimeout ${String(bad)}`,
        );
      }
      for (const ok of [1, 2 ** 31 - 1, Infinity]) {
        const ref = await start(slowServer([], { next: Promise.resolve() }), [], {
          tenant,
          actionTimeout: ok,
        });
        await ref.stop();
      }
      await backend.close();
    });
  });
}
