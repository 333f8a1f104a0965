import { beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readServerView, start } from "../../mod.ts";
import { ServerKeys } from "../../lib/server/keys.ts";
import { readInt64LE } from "../../lib/bytes.ts";
import { backends, fresh } from "./_backends.ts";
import { Flaky, flaky } from "./_defs.ts";
import { waitFor } from "../_helpers.ts";

const keys = new ServerKeys("flaky");

for (const b of backends) {
  describe(`batched consumption on ${b.name}`, { skip: b.skip }, () => {
    beforeEach(() => {
      flaky.poison.clear();
      flaky.runs.length = 0;
      flaky.deadLetters.length = 0;
    });

    /** Queues `tags` while nobody consumes, then starts a consumer with batchSize 5. */
    async function setup(tags: string[], threshold = 3) {
      const { backend, tenant } = await fresh(b);
      const sender = await start(Flaky, [], { tenant, consume: false });
      await sender.castMany(
        tags.map((t) =>
          t === "QUIT"
            ? ["quit", undefined] as const
            : t.startsWith("SLOW")
            ? ["slow", t] as const
            : ["apply", t] as const
        ),
      );
      let commits = 0;
      const inner = tenant.transact.bind(tenant);
      const counted = {
        ...tenant,
        transact: ((fn, options) =>
          inner(fn, options).then((r) => {
            commits++;
            return r;
          })) as typeof tenant.transact,
      };
      const consumer = await start(Flaky, [], {
        tenant: counted,
        batchSize: 5,
        deadLetterThreshold: threshold,
      });
      const queueLength = () =>
        tenant.transact(async (tx) => Number(readInt64LE(await tx.get(keys.queueLength))));
      const close = async () => {
        await sender.stop();
        await consumer.stop();
        await backend.close();
      };
      return { sender, consumer, queueLength, close, commits: () => commits };
    }

    it("applies a full batch in one transaction", async () => {
      const t = await setup(["a", "b", "c", "d", "e"]);
      const before = t.commits();
      await waitFor(async () => await t.queueLength() === 0, 5000, "batch not consumed");
      assert.deepEqual(await t.sender.call("applied"), ["a", "b", "c", "d", "e"]);
      assert.ok(
        t.commits() - before <= 3,
        `expected one consume commit, saw ${t.commits() - before}`,
      );
      await t.close();
    });

    it("ends a batch at a lock: the prefix and the lock commit, later messages wait", async () => {
      const t = await setup(["a", "SLOW-b", "c"]);
      await waitFor(async () => await t.queueLength() === 0, 5000, "not drained");
      assert.deepEqual(await t.sender.call("applied"), ["a", "SLOW-b:locked", "SLOW-b:done", "c"]);
      await t.close();
    });

    it("ends a batch at a stop: the prefix and the stop commit, the tail stays queued", async () => {
      const t = await setup(["a", "QUIT", "c"]);
      assert.equal(await t.consumer.stopped, "asked to");
      assert.equal(await t.queueLength(), 1);
      assert.deepEqual(await t.sender.priorityCall("applied"), ["a"]);
      await t.close();
    });

    it("ends a batch at a throw: the prefix commits exactly once, the failure counts", async () => {
      flaky.poison.add("b");
      const t = await setup(["a", "b", "c"], 2);
      await waitFor(
        async () => (await t.sender.call("applied") as string[]).length === 2,
        5000,
        "not applied",
      );
      assert.deepEqual(await t.sender.call("applied"), ["a", "c"]);
      assert.ok(
        flaky.runs.filter((r) => r === "a").length >= 2,
        "the prefix ran again before committing",
      );
      assert.equal(flaky.runs.filter((r) => r === "b").length, 2);
      assert.deepEqual(flaky.deadLetters, ["b"]);
      await t.close();
    });

    it("ends a batch at a throw on its first message: nothing but the attempt commits", async () => {
      flaky.poison.add("a");
      const t = await setup(["a", "b"], 1000);
      await waitFor(() => flaky.runs.filter((r) => r === "a").length >= 2, 5000, "not retried");
      assert.deepEqual(await t.sender.priorityCall("applied"), []);
      assert.equal(await t.queueLength(), 2);
      await t.close();
    });

    it("ends a batch at a dead letter: the prefix commits with it, the rest proceeds", async () => {
      flaky.poison.add("b");
      const t = await setup(["a", "b", "c", "d"], 1);
      await waitFor(async () => await t.queueLength() === 0, 5000, "not drained");
      assert.deepEqual(await t.sender.call("applied"), ["a", "c", "d"]);
      assert.deepEqual(flaky.deadLetters, ["b"]);
      await t.close();
    });
  });

  describe(`inline casts on ${b.name}`, { skip: b.skip }, () => {
    beforeEach(() => {
      flaky.poison.clear();
      flaky.runs.length = 0;
      flaky.deadLetters.length = 0;
    });

    const applied = async (tenant: Parameters<typeof readServerView>[0]) =>
      ((await readServerView(tenant, "flaky"))!.state as { applied: string[] }).applied;

    it("applies casts on an idle queue before they resolve, in order, without queueing them", async () => {
      const { backend, tenant } = await fresh(b);
      const consumer = await start(Flaky, [], { tenant, batchSize: 10 });
      await consumer.cast("apply", "a");
      // Read at once, without waiting for a consumer: the cast's own commit applied it.
      assert.deepEqual(await applied(tenant), ["a"]);
      await Promise.all(["b", "c", "d", "e", "f", "g", "h"].map((t) => consumer.cast("apply", t)));
      assert.deepEqual(await applied(tenant), ["a", "b", "c", "d", "e", "f", "g", "h"]);
      const view = (await readServerView(tenant, "flaky"))!;
      assert.equal(view.queue.length, 0);
      assert.equal(consumer.stats.processed, 8);
      // Each handler ran once: nothing was enqueued and consumed again.
      assert.deepEqual(flaky.runs, ["a", "b", "c", "d", "e", "f", "g", "h"]);
      await consumer.stop();
      await backend.close();
    });

    it("queues casts behind queued messages and a held lock (FIFO)", async () => {
      const { backend, tenant } = await fresh(b);
      const sender = await start(Flaky, [], { tenant, consume: false });
      await sender.castMany([["apply", "q1"], ["apply", "q2"]]);
      const consumer = await start(Flaky, [], { tenant, batchSize: 1 });
      // The queue is not idle until q1 and q2 are applied: a cast must wait its turn.
      await consumer.cast("apply", "c");
      await waitFor(async () => (await applied(tenant)).length === 3, 5000, "not applied");
      assert.deepEqual(await applied(tenant), ["q1", "q2", "c"]);
      await consumer.stop();
      await sender.stop();
      await backend.close();
    });

    it("sends a cast that throws, locks or stops through the queue, after the casts before it", async () => {
      const { backend, tenant } = await fresh(b);
      flaky.poison.add("x");
      const consumer = await start(Flaky, [], { tenant, batchSize: 5, deadLetterThreshold: 1 });
      await consumer.cast("apply", "a");
      // x throws inline: that is its first failed attempt (here its last: threshold 1), and
      // the casts after it are enqueued for the consumer.
      await Promise.all([
        consumer.cast("apply", "b"),
        consumer.cast("apply", "x"),
        consumer.cast("apply", "c"),
      ]);
      await waitFor(async () => (await applied(tenant)).length === 3, 5000, "not applied");
      assert.deepEqual(await applied(tenant), ["a", "b", "c"]);
      assert.deepEqual(flaky.deadLetters, ["x"]);
      // x ran once, its one recorded attempt; c ran once, from the queue.
      assert.equal(flaky.runs.filter((r) => r === "x").length, 1);
      assert.equal(flaky.runs.filter((r) => r === "c").length, 1);
      // A lock taken by a cast works as from the queue: handleLocked runs, later casts wait.
      await Promise.all([consumer.cast("slow", "s"), consumer.cast("apply", "d")]);
      await waitFor(async () => (await applied(tenant)).length === 6, 5000, "lock not done");
      assert.deepEqual((await applied(tenant)).slice(3), ["s:locked", "s:done", "d"]);
      await consumer.cast("quit");
      assert.equal(await consumer.stopped, "asked to");
      await backend.close();
    });
  });
}
