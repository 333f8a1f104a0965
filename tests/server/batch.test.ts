import { beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import { start } from "../../mod.ts";
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
}
