/**
 * Unknown commit results: the fault-injection wrapper reports applied commits as failed (and
 * not-applied ones as unknown), at high rates, over many seeds, on memory and SQLite. Whatever
 * path a message takes (cast, call through a consuming or a sending instance, priority call and
 * cast, castMany, a locked message, a failing one, a dead-letter requeue), nothing is enqueued
 * twice, no effect applies twice, and a retried call gets its original reply, promptly.
 *
 * Seeds: `DGEN_SEED` replays a run (each scenario prints the seeds it used).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import {
  type Backend,
  CommitUnknownResultError,
  defineServer,
  lock,
  noreply,
  openTenant,
  readServerView,
  reply,
  start,
  type Tenant,
  withFaults,
} from "../../mod.ts";
import { retryLoop } from "../../lib/storage/retry.ts";
import { backends, fresh } from "../server/_backends.ts";
import { deadline, waitFor } from "../_helpers.ts";
import { appliedKey, readApplied } from "./_servers.ts";
import { testSeed } from "./_seed.ts";
import type { TxContext } from "../../mod.ts";

const SEEDS = Number(process.env.DGEN_UNKNOWN_SEEDS ?? 6);

/** Silences the runtime's console.error (consumers report retries they survive). */
async function quietly<T>(fn: () => Promise<T>): Promise<T> {
  const error = console.error;
  console.error = () => {};
  try {
    return await fn();
  } finally {
    console.error = error;
  }
}

interface UcState {
  log: Array<{ id: string }>;
}

/** A server that logs every applied id, marks each application, and counts actions. */
function ucServer() {
  const actions = new Map<string, number>();
  const runs = new Map<string, number>();
  const dead: Array<{ arg: unknown; attempts: number }> = [];
  const act = (id: string) => () => void actions.set(id, (actions.get(id) ?? 0) + 1);
  const mark = (ctx: TxContext, id: string) => ctx.tx.add(appliedKey(id), 1);
  const append = (s: UcState, id: string): UcState => ({ log: [...s.log, { id }] });
  const def = defineServer({
    name: "uc",
    init: (): UcState => ({ log: [] }),
    handleCall: {
      rec: (id: string, _from, s: UcState, ctx) => {
        mark(ctx, id);
        return reply(s.log.length + 1, append(s, id), [act(id)]);
      },
      slow: (_id: string, _from, s: UcState) => lock(s),
      len: (_: undefined, _from, s: UcState) => reply(s.log.length, s),
    },
    handleCast: {
      rec: (id: string, s: UcState, ctx) => {
        mark(ctx, id);
        return noreply(append(s, id), [act(id)]);
      },
      slow: (_id: string, s: UcState) => lock(s),
      poison: (id: string, _s: UcState) => {
        runs.set(id, (runs.get(id) ?? 0) + 1);
        throw new Error(`${id} always fails`);
      },
    },
    handleLocked: (event, s: UcState) => {
      const id = event.arg as string;
      // Idempotent: a retried lock finds its id already there.
      if (s.log.some((x) => x.id === id)) throw new Error(`${id} written back twice`);
      const next = append(s, id);
      return event.kind === "call" ? reply(next.log.length, next) : noreply(next, [act(id)]);
    },
    handleDeadLetter: (m, attempts) => void dead.push({ arg: m.arg, attempts }),
  });
  return { def, actions, runs, dead };
}

/** Checks the end state: each id logged once, marked once, actions at most once. */
async function checkOnce(
  tenant: Tenant,
  ids: readonly string[],
  s: ReturnType<typeof ucServer>,
  marked: readonly string[] = ids,
): Promise<UcState> {
  const view = await waitFor(
    async () => {
      const v = await readServerView(tenant, "uc", { headLimit: 1 });
      return v && v.queue.length === 0 && v.queue.head.length === 0 && v.lock === null
        ? v
        : undefined;
    },
    60_000,
    "queue not drained",
    10,
  );
  const state = view.state as unknown as UcState;
  const logged = state.log.map((x) => x.id);
  assert.equal(new Set(logged).size, logged.length, `an id logged twice: ${logged.join(",")}`);
  assert.deepEqual([...logged].sort(), [...ids].sort(), "every message applied");
  const applied = await readApplied(tenant);
  for (const id of marked) {
    assert.equal(applied.get(id), 1, `${id} applied ${applied.get(id)} times`);
  }
  for (const [id, n] of s.actions) assert.ok(n <= 1, `actions of ${id} ran ${n} times`);
  return state;
}

function faultsFor(seed: number) {
  return { seed, unknownAppliedRate: 0.3, unknownNotAppliedRate: 0.1, conflictRate: 0.1 };
}

/**
 * A fresh backend and tenant (`plain`, to check what was stored) and the same tenant seen
 * through the fault-injection wrapper driven by `seed` (`tenant`, for the servers under test).
 */
async function faultyTenant(b: Parameters<typeof fresh>[0], seed: number) {
  const { backend, tenant: plain } = await fresh(b);
  const faulty = withFaults(backend, faultsFor(seed));
  return { backend, plain, faulty, tenant: await openTenant(faulty, plain.name) };
}

/** Runs `scenario` for `seeds` seeds derived from one printed seed. */
async function forSeeds(
  what: string,
  scenario: (seed: number) => Promise<number>,
  seeds = SEEDS,
): Promise<void> {
  const base = testSeed(what);
  let injected = 0;
  for (let i = 0; i < seeds; i++) {
    const seed = base + i;
    try {
      injected += await quietly(() => scenario(seed));
    } catch (e) {
      throw new Error(`${what}: failed with seed ${seed} (DGEN_SEED=${base}, run ${i})`, {
        cause: e,
      });
    }
  }
  assert.ok(injected > seeds, `${what}: only ${injected} unknown results were injected`);
}

/**
 * A backend whose next write transaction commits, then (once `hold` settles) reports an unknown
 * result, so the contract's retry runs it again: a deterministic "applied, reported failed" at
 * a moment the test chooses.
 */
function heldUnknown(inner: Backend): Backend & {
  arm(hold: Promise<unknown>, which?: (result: unknown) => boolean): Promise<void>;
} {
  let armed:
    | { hold: Promise<unknown>; fired: PromiseWithResolvers<void>; which(r: unknown): boolean }
    | undefined;
  return {
    kind: inner.kind,
    limits: inner.limits,
    openSubspace: (path) => inner.openSubspace(path),
    close: () => inner.close(),
    arm(hold, which = () => true) {
      armed = { hold, fired: Promise.withResolvers(), which };
      return armed.fired.promise;
    },
    transact(fn, options) {
      return retryLoop(async () => {
        const result = await inner.transact(fn, { ...options, maxRetries: 0 });
        const a = armed;
        if (a !== undefined && !options?.readOnly && a.which(result)) {
          armed = undefined;
          a.fired.resolve();
          await a.hold;
          throw new CommitUnknownResultError("Held unknown commit result (applied)");
        }
        return result;
      }, options);
    },
  };
}

for (const b of backends) {
  describe(`unknown commit results on ${b.name}`, { skip: b.skip }, () => {
    it("casts, calls and castMany through a sending instance: each enqueued and applied once", async () => {
      await forSeeds(`unknown commits, sender (${b.name})`, async (seed) => {
        const { backend, plain, faulty, tenant } = await faultyTenant(b, seed);
        const s = ucServer();
        const consumer = await start(s.def, [], { tenant, deadLetterThreshold: 1_000 });
        const sender = await start(s.def, [], { tenant, consume: false });
        const ids: string[] = [];
        const replies = new Map<string, number>();
        await deadline(
          Promise.all(Array.from({ length: 4 }, async (_, w) => {
            for (let i = 0; i < 6; i++) {
              const id = `w${w}-${i}`;
              if (i % 3 === 0) {
                ids.push(id);
                await sender.cast("rec", id);
              } else if (i % 3 === 1) {
                ids.push(id);
                replies.set(id, await sender.call("rec", id, { timeout: Infinity }));
              } else {
                ids.push(`${id}a`, `${id}b`);
                await sender.castMany([["rec", `${id}a`], ["rec", `${id}b`]]);
              }
            }
          })),
          60_000,
          "the workload did not finish (a call waiting for a reply that had already come?)",
        );
        const state = await checkOnce(plain, ids, s);
        // A retried call got its original reply: its position in the log.
        for (const [id, r] of replies) assert.equal(state.log[r - 1]?.id, id, `reply of ${id}`);
        await sender.stop();
        await consumer.stop();
        await backend.close();
        return faulty.stats.unknownApplied;
      });
    });

    it("calls through consuming instances (inline and queued) and priority messages: applied once, original replies", async () => {
      await forSeeds(`unknown commits, consumers (${b.name})`, async (seed) => {
        const { backend, plain, faulty, tenant } = await faultyTenant(b, seed);
        const s = ucServer();
        const a = await start(s.def, [], { tenant, deadLetterThreshold: 1_000 });
        const c = await start(s.def, [], { tenant, deadLetterThreshold: 1_000 });
        const ids: string[] = [];
        const replies = new Map<string, number>();
        const priorityReplies = new Map<string, number>();
        await deadline(
          Promise.all([a, c, a, c].map(async (ref, w) => {
            for (let i = 0; i < 6; i++) {
              const id = `w${w}-${i}`;
              ids.push(id);
              if (i % 3 === 0) priorityReplies.set(id, await ref.priorityCall("rec", id));
              else if (i % 3 === 1) await ref.priorityCast("rec", id);
              else replies.set(id, await ref.call("rec", id, { timeout: Infinity }));
            }
          })),
          60_000,
          "the workload did not finish",
        );
        const state = await checkOnce(plain, ids, s);
        for (const [id, r] of [...replies, ...priorityReplies]) {
          assert.equal(state.log[r - 1]?.id, id, `reply of ${id}`);
        }
        await a.stop();
        await c.stop();
        await backend.close();
        return faulty.stats.unknownApplied;
      });
    });

    it("casts through consuming instances (applied inline or queued): each applied once", async () => {
      await forSeeds(`unknown commits, inline casts (${b.name})`, async (seed) => {
        const { backend, plain, faulty, tenant } = await faultyTenant(b, seed);
        const s = ucServer();
        const opts = { tenant, deadLetterThreshold: 1_000, batchSize: 4 };
        const a = await start(s.def, [], opts);
        const c = await start(s.def, [], opts);
        const ids: string[] = [];
        await deadline(
          Promise.all([a, c, a, c, a, c].map(async (ref, w) => {
            for (let i = 0; i < 8; i++) {
              const id = `w${w}-${i}`;
              ids.push(id);
              await ref.cast("rec", id);
            }
          })),
          60_000,
          "the workload did not finish",
        );
        await checkOnce(plain, ids, s);
        await a.stop();
        await c.stop();
        await backend.close();
        return faulty.stats.unknownApplied;
      });
    });

    it("locked messages: each written back once, the lock released", async () => {
      await forSeeds(`unknown commits, locks (${b.name})`, async (seed) => {
        const { backend, plain, faulty, tenant } = await faultyTenant(b, seed);
        const s = ucServer();
        const opts = { tenant, deadLetterThreshold: 1_000, lockLease: 300 };
        const a = await start(s.def, [], opts);
        const c = await start(s.def, [], opts);
        const sender = await start(s.def, [], { tenant, consume: false });
        const ids: string[] = [];
        const replies = new Map<string, number>();
        await deadline(
          Promise.all(Array.from({ length: 3 }, async (_, w) => {
            for (let i = 0; i < 3; i++) {
              const id = `w${w}-${i}`;
              ids.push(id);
              if (i % 2 === 0) await sender.cast("slow", id);
              else {
                const r = await [a, c, sender][w]!.call("slow", id, { timeout: Infinity });
                replies.set(id, r as number);
              }
            }
          })),
          60_000,
          "the workload did not finish",
        );
        const state = await checkOnce(plain, ids, s, []);
        for (const [id, r] of replies) assert.equal(state.log[r - 1]?.id, id, `reply of ${id}`);
        await Promise.all([a, c, sender].map((r) => r.stop()));
        await backend.close();
        return faulty.stats.unknownApplied;
        // Each lost lock waits out a lease: fewer seeds keep the run short.
      }, Math.ceil(SEEDS / 2));
    });

    it("a poison message: dead-lettered after exactly its threshold of attempts; a requeue applies once", async () => {
      await forSeeds(`unknown commits, poison (${b.name})`, async (seed) => {
        const { backend, plain, faulty, tenant } = await faultyTenant(b, seed);
        const s = ucServer();
        const threshold = 4;
        const consumer = await start(s.def, [], { tenant, deadLetterThreshold: threshold });
        await consumer.cast("rec", "before");
        await consumer.cast("poison", "p");
        await consumer.cast("rec", "after");
        const letters = await waitFor(
          async () => {
            const l = await consumer.deadLetters.list();
            return l.length > 0 ? l : undefined;
          },
          30_000,
          "not dead-lettered",
        );
        assert.equal(letters.length, 1);
        assert.equal(letters[0]!.attempts, threshold, "attempts recorded once each");
        assert.equal(s.runs.get("p"), threshold, "the handler ran once per recorded attempt");
        // handleDeadLetter runs after the commit, like actions: at most once (not at all when
        // the dead-lettering commit's result was unknown).
        assert.ok(s.dead.length <= 1, `handleDeadLetter ran ${s.dead.length} times`);
        for (const d of s.dead) assert.deepEqual(d, { arg: "p", attempts: threshold });
        // A requeue (its commit may be reported unknown too) says so, and enqueues once.
        const requeued = await consumer.deadLetters.requeue(letters[0]!.key);
        assert.equal(requeued, true, "requeue reported its success");
        await waitFor(
          async () => (await consumer.deadLetters.list()).length === 1,
          30_000,
          "the requeued message was not dead-lettered again",
        );
        assert.equal(s.runs.get("p"), 2 * threshold);
        await checkOnce(plain, ["before", "after"], s);
        await consumer.stop();
        await backend.close();
        return faulty.stats.unknownApplied;
      });
    });

    it("a call whose enqueue is reported unknown after its reply was written still returns at once (sending instance)", async () => {
      const { backend: inner } = await fresh(b);
      const held = heldUnknown(inner);
      const s = ucServer();
      const consumer = await start(s.def, [], { tenant: await openTenant(inner, "held") });
      const sender = await start(s.def, [], {
        tenant: await openTenant(held, "held"),
        consume: false,
      });
      const replied = Promise.withResolvers<void>();
      const fired = held.arm(replied.promise);
      const call = sender.call("rec", "x", { timeout: Infinity });
      await fired;
      // The consumer applies the enqueued call and writes its reply before the retry runs.
      await waitFor(() => consumer.stats.processed === 1, 10_000, "the call was not processed");
      replied.resolve();
      assert.equal(await deadline(call, 5_000, "the call missed its reply"), 1);
      await checkOnce(await openTenant(inner, "held"), ["x"], s);
      await sender.stop();
      await consumer.stop();
      await inner.close();
    });

    it("a call queued behind a lock whose enqueue is reported unknown after its reply was written still returns at once (consuming instance)", async () => {
      const { backend: inner } = await fresh(b);
      const held = heldUnknown(inner);
      const gate = Promise.withResolvers<void>();
      const def = defineServer({
        name: "uc",
        init: (): UcState => ({ log: [] }),
        handleCall: {
          rec: (id: string, _from, s: UcState) =>
            reply(s.log.length + 1, { log: [...s.log, { id }] }),
        },
        handleCast: { slow: (_: string, s: UcState) => lock(s) },
        handleLocked: async (_e, s: UcState) => {
          await gate.promise;
          return noreply({ log: [...s.log, { id: "slow" }] });
        },
      });
      const tenant = await openTenant(held, "held");
      const ref = await start(def, [], { tenant });
      await ref.cast("slow", "s");
      await waitFor(
        async () => (await readServerView(tenant, "uc"))?.lock != null,
        10_000,
        "lock not taken",
      );
      const replied = Promise.withResolvers<void>();
      const fired = held.arm(replied.promise);
      // Queued behind the lock (not inline); its enqueue commits, then the lock is released,
      // the call is applied and answered, and only then does the caller learn "unknown".
      const call = ref.call("rec", "x", { timeout: Infinity });
      await fired;
      gate.resolve();
      await waitFor(() => ref.stats.processed === 2, 10_000, "the call was not processed");
      replied.resolve();
      assert.equal(await deadline(call, 5_000, "the call missed its reply"), 2);
      await ref.stop();
      await inner.close();
    });

    it("a lone consumer whose lock-taking commit is reported unknown recovers its own lock", async () => {
      const { backend: inner } = await fresh(b);
      const held = heldUnknown(inner);
      const s = ucServer();
      const sender = await start(s.def, [], {
        tenant: await openTenant(inner, "held"),
        consume: false,
      });
      const ref = await start(s.def, [], {
        tenant: await openTenant(held, "held"),
        lockLease: 200,
        deadLetterThreshold: 5,
      });
      // The consume transaction that takes the lock commits, but reports "unknown".
      const fired = held.arm(
        Promise.resolve(),
        (r) =>
          (r as { kind?: string; lock?: unknown })?.kind === "processed" &&
          (r as { lock?: unknown }).lock !== undefined,
      );
      await sender.cast("slow", "x");
      await fired;
      await checkOnce(await openTenant(inner, "held"), ["x"], s, []);
      await sender.stop();
      await ref.stop();
      await inner.close();
    });
  });
}
