import { beforeEach, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  type Backend,
  type BackendLimits,
  DeadLetterError,
  defineServer,
  DGenError,
  noreply,
  openMemoryBackend,
  openSqliteBackend,
  openTenant,
  reply,
  ServerStoppedError,
  start,
} from "../../mod.ts";
import { backends, fresh, tempDbPath } from "./_backends.ts";
import { openTestPostgres, postgresSkip } from "../storage/_postgres.ts";
import { FDB_SKIP_REASON, openTestFoundationdb } from "../storage/_foundationdb.ts";
import { createSimulation } from "../storage/_simulated_fdb.ts";
import { openFoundationdbBackendWith } from "../../lib/storage/foundationdb.ts";
import { Flaky, flaky } from "./_defs.ts";
import { deadline, waitFor } from "../_helpers.ts";

const HANG_LIMITS: Partial<BackendLimits> = { maxTransactionDuration: 300 };

function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const error = console.error;
  console.error = () => {};
  return fn().finally(() => console.error = error);
}

for (const b of backends) {
  describe(`server failures on ${b.name}`, { skip: b.skip }, () => {
    beforeEach(() => {
      flaky.poison.clear();
      flaky.runs.length = 0;
      flaky.deadLetters.length = 0;
    });

    it("retries a throwing message, then dead-letters it; later messages proceed", async () => {
      const { backend, tenant } = await fresh(b);
      const sender = await start(Flaky, [], { tenant, consume: false });
      flaky.poison.add("bad");
      await sender.cast("apply", "a");
      const doomed = sender.call("apply", "bad", { timeout: 10_000 });
      await sender.cast("apply", "c");
      const consumer = await start(Flaky, [], { tenant, deadLetterThreshold: 3 });
      await assert.rejects(doomed, (e) => e instanceof DeadLetterError && e.attempts === 3);
      assert.deepEqual(await sender.call("applied"), ["a", "c"]);
      assert.equal(flaky.runs.filter((r) => r === "bad").length, 3);
      assert.deepEqual(flaky.deadLetters, ["bad"]);
      const letters = await consumer.deadLetters.list();
      assert.equal(letters.length, 1);
      assert.equal(letters[0]!.name, "apply");
      assert.equal(letters[0]!.arg, "bad");
      assert.equal(letters[0]!.attempts, 3);
      assert.match(letters[0]!.error.message, /poison bad/);
      assert.equal(consumer.stats.deadLettered, 1);
      // Requeue after fixing the cause: applied at the tail.
      flaky.poison.clear();
      assert.equal(await consumer.deadLetters.requeue(letters[0]!.key), true);
      assert.equal(await consumer.deadLetters.requeue(letters[0]!.key), false);
      await waitFor(
        async () => (await sender.call("applied") as string[]).length === 3,
        5000,
        "requeued message not applied",
      );
      assert.deepEqual(await sender.call("applied"), ["a", "c", "bad"]);
      assert.equal(await consumer.deadLetters.purge(), 0);
      await sender.stop();
      await consumer.stop();
      await backend.close();
    });

    it("retries a failing message for ever with deadLetterThreshold Infinity", async () => {
      const { backend, tenant } = await fresh(b);
      flaky.poison.add("bad");
      const ref = await start(Flaky, [], { tenant, deadLetterThreshold: Infinity });
      await quietly(async () => {
        await ref.cast("apply", "bad");
        // Past the default threshold (5), and then some.
        await waitFor(
          () => flaky.runs.filter((r) => r === "bad").length >= 8,
          20_000,
          "the failing message was not retried",
        );
      });
      assert.equal(ref.stats.deadLettered, 0);
      assert.deepEqual(await ref.deadLetters.list(), []);
      await ref.stop();
      await backend.close();
    });

    it("purges dead letters", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Flaky, [], { tenant, deadLetterThreshold: 1 });
      flaky.poison.add("x");
      flaky.poison.add("y");
      await ref.cast("apply", "x");
      await ref.cast("apply", "y");
      await waitFor(
        async () => (await ref.deadLetters.list()).length === 2,
        5000,
        "not dead-lettered",
      );
      assert.equal(await ref.deadLetters.purge(), 2);
      assert.deepEqual(await ref.deadLetters.list(), []);
      await ref.stop();
      await backend.close();
    });

    it("treats a bad return as a failure, and reports what was expected", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Flaky, [], { tenant, deadLetterThreshold: 1 });
      await assert.rejects(
        ref.call("bad"),
        (e) =>
          e instanceof DeadLetterError &&
          /handleCall\.bad returned object; expected reply/.test(e.message),
      );
      await ref.stop();
      await backend.close();
    });

    it("loses a throwing priority message: the caller gets the error, the state is unchanged", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Flaky, [], { tenant });
      flaky.poison.add("p");
      await assert.rejects(ref.priorityCall("apply", "p"), /poison p/);
      await assert.rejects(ref.priorityCast("apply", "p"), /poison p/);
      assert.deepEqual(await ref.call("applied"), []);
      assert.equal(flaky.runs.filter((r) => r === "p").length, 2, "never retried");
      assert.deepEqual(await ref.deadLetters.list(), []);
      await ref.stop();
      await backend.close();
    });

    it("stop from a call commits, answers ServerStoppedError and stops only that instance", async () => {
      const { backend, tenant } = await fresh(b);
      const a = await start(Flaky, [], { tenant });
      await a.call("apply", "before");
      await assert.rejects(
        a.call("quit"),
        (e) => e instanceof ServerStoppedError && /asked to/.test(e.message),
      );
      assert.equal(await a.stopped, "asked to");
      const b2 = await start(Flaky, [], { tenant });
      assert.deepEqual(await b2.call("applied"), ["before"]);
      await b2.cast("quit");
      assert.equal(await b2.stopped, "asked to");
      const c = await start(Flaky, [], { tenant });
      assert.deepEqual(await c.call("applied"), ["before"]);
      await c.stop();
      await backend.close();
    });

    it("handles a throw from an inline call like a queued one: retried, then dead-lettered", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Flaky, [], { tenant, deadLetterThreshold: 2 });
      flaky.poison.add("inline");
      await assert.rejects(
        ref.call("apply", "inline"),
        (e) => e instanceof DeadLetterError && e.attempts === 2,
      );
      assert.equal(flaky.runs.filter((r) => r === "inline").length, 2);
      await ref.stop();
      await backend.close();
    });

    it("never wedges on a message whose handler is missing", async () => {
      const { backend, tenant } = await fresh(b);
      const Old = defineServer({
        name: "evolving",
        init: () => 0,
        handleCast: {
          gone: (_: undefined, n: number) => noreply(n),
          keep: (_: undefined, n: number) => noreply(n + 1),
        },
      });
      const New = defineServer({
        name: "evolving",
        init: () => 0,
        handleCast: { keep: (_: undefined, n: number) => noreply(n + 1) },
        handleCall: { get: (_: undefined, _f, n: number) => reply(n, n) },
      });
      const old = await start(Old, [], { tenant, consume: false });
      await old.cast("gone");
      await old.cast("keep");
      await old.stop();
      const fresh2 = await start(New, [], { tenant, deadLetterThreshold: 2 });
      await waitFor(async () => await fresh2.call("get") === 1, 5000, "queue wedged");
      const letters = await fresh2.deadLetters.list();
      assert.equal(letters[0]?.name, "gone");
      assert.equal(letters[0]?.error.code, "no_handler");
      await fresh2.stop();
      await backend.close();
    });

    // A message whose results cannot be stored fails outside its handler: the state it returns
    // holds a function (a CodecError at the write), or its error quotes a large argument.
    type Frail = { n: number; f?: () => number };
    const Fragile = defineServer({
      name: "fragile",
      init: (): Frail => ({ n: 0 }),
      handleCall: {
        get: (_: undefined, _f, s: Frail) => reply(s.n, s),
        unstorable: (_: undefined, _f, s: Frail) => reply("ok", { ...s, f: () => 1 } as Frail),
        unprintable: (): never => {
          throw Object.create(null); // no toString: String() of it throws
        },
      },
      handleCast: {
        // Keeps what else the state holds: an unstorable state stays so.
        inc: (_: undefined, s: Frail) => noreply({ ...s, n: s.n + 1 }),
        unstorable: (_: undefined, s: Frail) => noreply({ ...s, f: () => 1 } as Frail),
        quote: (text: string): never => {
          throw new Error(`refused: ${text}`);
        },
        surrogate: (): never => {
          throw new Error("refused: \ud800"); // half a UTF-16 pair: no UTF-8 form
        },
        unprintable: (): never => {
          throw Object.create(null);
        },
        badMessage: (): never => {
          const e = new Error();
          Object.defineProperty(e, "message", {
            get() {
              throw new TypeError("no message today");
            },
          });
          throw e;
        },
      },
    });

    it("dead-letters a queued message whose new state cannot be stored; the batch's others apply", async () => {
      const { backend, tenant } = await fresh(b);
      const sender = await start(Fragile, [], { tenant, consume: false });
      await sender.castMany([["inc"], ["unstorable"], ["inc"], ["inc"]]);
      const consumer = await quietly(() =>
        start(Fragile, [], { tenant, deadLetterThreshold: 2, batchSize: 8 })
      );
      await waitFor(async () => await sender.call("get") === 3, 10_000, "the batch wedged");
      const letters = await consumer.deadLetters.list();
      assert.deepEqual(letters.map((l) => [l.name, l.attempts]), [["unstorable", 2]]);
      assert.match(letters[0]!.error.message, /function cannot be stored/);
      await sender.stop();
      await consumer.stop();
      await backend.close();
    });

    it("queues an inline call whose new state cannot be stored, then dead-letters it", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Fragile, [], { tenant, deadLetterThreshold: 2 });
      await ref.cast("inc");
      await quietly(() =>
        assert.rejects(
          ref.call("unstorable", undefined, { timeout: 10_000 }),
          (e) =>
            e instanceof DeadLetterError && e.attempts === 2 &&
            // The last failure rides along as the cause, with its code and path.
            e.cause instanceof DGenError && e.cause.code === "codec" &&
            /function cannot be stored/.test(e.cause.message),
        )
      );
      assert.equal(await ref.call("get"), 1, "the state is unchanged");
      await ref.stop();
      await backend.close();
    });

    it("takes a batch of inline casts with an unstorable one: the others apply, it is dead-lettered", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Fragile, [], { tenant, deadLetterThreshold: 2 });
      await quietly(() =>
        Promise.all([ref.cast("inc"), ref.cast("inc"), ref.cast("unstorable"), ref.cast("inc")])
      );
      await waitFor(async () => await ref.call("get") === 3, 10_000, "the casts were not applied");
      await waitFor(() => ref.stats.deadLettered === 1, 10_000, "not dead-lettered");
      await ref.stop();
      await backend.close();
    });

    it("dead-letters a message whose error text has an unpaired surrogate", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Fragile, [], { tenant, deadLetterThreshold: 2 });
      await quietly(async () => {
        await ref.cast("surrogate");
        await ref.cast("inc");
        await waitFor(async () => await ref.call("get") === 1, 10_000, "the server wedged");
      });
      const letters = await ref.deadLetters.list();
      assert.equal(letters.length, 1);
      assert.equal(letters[0]!.error.message, "refused: \ufffd");
      await ref.stop();
      await backend.close();
    });

    it("dead-letters messages whose thrown values cannot be printed", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Fragile, [], { tenant, deadLetterThreshold: 2 });
      await quietly(async () => {
        await ref.cast("unprintable");
        await ref.cast("badMessage");
        await ref.cast("inc");
        await waitFor(async () => await ref.call("get") === 1, 10_000, "the server wedged");
        await assert.rejects(
          ref.call("unprintable", undefined, { timeout: 10_000 }),
          (e) => e instanceof DeadLetterError && e.attempts === 2,
        );
      });
      const letters = await ref.deadLetters.list();
      assert.deepEqual(letters.map((l) => [l.kind, l.name]), [
        ["cast", "unprintable"],
        ["cast", "badMessage"],
        ["call", "unprintable"],
      ]);
      assert.match(letters[0]!.error.message, /cannot be printed/);
      assert.match(letters[1]!.error.message, /cannot be printed/);
      await ref.stop();
      await backend.close();
    });

    it("dead-letters a message whose error quotes a large argument, keeping a clipped text", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Fragile, [], { tenant, deadLetterThreshold: 2 });
      const text = "é".repeat(30_000); // 60 KB of UTF-8, in a value limit of about 100 KB
      await quietly(async () => {
        await ref.cast("quote", text);
        await ref.cast("inc");
        await waitFor(async () => await ref.call("get") === 1, 10_000, "the server wedged");
      });
      const letters = await ref.deadLetters.list();
      assert.equal(letters.length, 1);
      assert.equal(letters[0]!.arg, text, "the message is kept whole");
      const message = letters[0]!.error.message;
      assert.ok(message.startsWith("refused: éé") && message.endsWith("…"), message.slice(0, 40));
      assert.ok(message.length <= 2_000, `${message.length} code units kept`);
      await ref.stop();
      await backend.close();
    });

    it("keeps the state committed when an action throws, and counts it", async () => {
      const { backend, tenant } = await fresh(b);
      const A = defineServer({
        name: "act",
        init: () => 0,
        handleCast: {
          go: (_: undefined, n: number) =>
            noreply(n + 1, [() => {
              throw new Error("side effect failed");
            }]),
        },
        handleCall: { get: (_: undefined, _f, n: number) => reply(n, n) },
      });
      const ref = await start(A, [], { tenant });
      await quietly(async () => {
        await ref.cast("go");
        await waitFor(() => ref.stats.actionErrors === 1, 5000, "action error not counted");
      });
      assert.equal(await ref.call("get"), 1, "applied once, not retried");
      await ref.stop();
      await backend.close();
    });
  });
}

/** Backends opened with a short transaction time limit, for the handler that never settles. */
const shortLimit: Array<{ name: string; open(): Promise<Backend>; skip?: string }> = [
  { name: "memory", open: () => Promise.resolve(openMemoryBackend({ limits: HANG_LIMITS })) },
  { name: "sqlite", open: () => openSqliteBackend({ path: tempDbPath(), limits: HANG_LIMITS }) },
  { name: "postgres", open: () => openTestPostgres({ limits: HANG_LIMITS }), skip: postgresSkip },
  {
    name: "foundationdb",
    open: () => openTestFoundationdb({ limits: HANG_LIMITS }),
    skip: FDB_SKIP_REASON,
  },
  {
    name: "foundationdb adapter on simulated bindings",
    open: () => openFoundationdbBackendWith(createSimulation().driver, { limits: HANG_LIMITS }),
  },
];

for (const b of shortLimit) {
  describe(`a handler that never settles, on ${b.name}`, { skip: b.skip }, () => {
    it("is failed at the transaction time limit and dead-lettered; the cast behind it applies", async () => {
      const backend = await b.open();
      const tenant = await openTenant(backend, "hang");
      const Hang = defineServer({
        name: "hang",
        init: () => [] as string[],
        handleCast: {
          // A handler awaiting a fetch that never answers.
          hang: (_: undefined, _s: string[]) => new Promise<never>(() => {}),
          add: (x: string, s: string[]) => noreply([...s, x]),
        },
        handleCall: { value: (_: undefined, _f, s: string[]) => reply(s, s) },
      });
      const sender = await start(Hang, [], { tenant, consume: false });
      await sender.cast("hang");
      await sender.cast("add", "after");
      const consumer = await start(Hang, [], { tenant, deadLetterThreshold: 1 });
      try {
        await quietly(() =>
          waitFor(
            async () => (await sender.priorityCall("value")).length > 0,
            5000,
            "the server wedged on the handler that never settles",
          )
        );
        assert.deepEqual(await sender.call("value"), ["after"]);
        const letters = await sender.deadLetters.list();
        assert.deepEqual(letters.map((l) => [l.kind, l.name]), [["cast", "hang"]]);
        assert.match(letters[0]!.error.message, /over the 300 ms limit/);
        await deadline(consumer.stop(), 2000, "stop() never returned");
      } finally {
        await sender.stop();
        await deadline(backend.close(), 5000, "close() never returned");
      }
    });
  });
}
