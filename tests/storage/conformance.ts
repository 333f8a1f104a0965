/**
 * The storage-contract conformance suite: one list of scenarios that every backend must pass.
 * A backend's test file calls {@link registerConformance} with a function that opens a fresh,
 * empty backend (with optional limit overrides).
 */

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  type Backend,
  type BackendLimits,
  CommitUnknownResultError,
  ConflictError,
  LimitExceededError,
  openTenant,
  readInt64LE,
  RetriesExhaustedError,
  type Transaction,
  withFaults,
} from "../../mod.ts";
import { compareBytes, concatBytes, toHex } from "../../lib/bytes.ts";
import { pack } from "../../lib/tuple.ts";
import { deadline } from "../_helpers.ts";

/** What differs between backends and the suite must know. */
export interface ConformanceTraits {
  /**
   * Concurrent transactions in one process run optimistically and conflict (memory,
   * FoundationDB, PostgreSQL) rather than being serialized by a lock (SQLite).
   */
  optimistic: boolean;
  /**
   * A transaction fails at commit whenever something it read was overwritten by a commit after
   * its snapshot, even if it could still be serialized before that writer (FoundationDB's and
   * the memory backend's read-set validation). PostgreSQL's serializable snapshot isolation
   * aborts only when a dependency cycle is possible, so there such a transaction commits,
   * ordered before the writer: still serializable, as the write-skew scenario checks.
   * @default true
   */
  staleReadsConflict?: boolean;
}

/** Opens a fresh, empty backend. */
export type OpenBackend = (options?: { limits?: Partial<BackendLimits> }) => Promise<Backend>;

const enc = new TextEncoder();
const k = (s: string) => enc.encode(s);
const dec = (
  b: Uint8Array | undefined,
) => (b === undefined ? undefined : new TextDecoder().decode(b));

async function withBackend(
  open: OpenBackend,
  fn: (b: Backend) => Promise<void>,
  options?: { limits?: Partial<BackendLimits> },
): Promise<void> {
  const backend = await open(options);
  try {
    await fn(backend);
  } finally {
    await backend.close();
  }
}

/** Registers every conformance scenario for one backend. */
/** Asserts that `p` rejects within 2 s (a promise that never settles fails the test). */
async function rejectsInTime(p: Promise<unknown>, what: string): Promise<void> {
  const outcome = await deadline(
    p.then(() => "resolved", () => "rejected"),
    2000,
    `${what} never settled`,
  );
  assert.equal(outcome, "rejected", `${what} rejects`);
}

export function registerConformance(
  name: string,
  open: OpenBackend,
  traits: ConformanceTraits,
  skip?: string,
): void {
  describe(`storage conformance: ${name}`, { skip }, () => {
    it("reads back what it wrote, and nothing for a missing key", () =>
      withBackend(open, async (b) => {
        await b.transact((tx) => tx.set(k("a"), k("1")));
        assert.equal(dec(await b.transact((tx) => tx.get(k("a")))), "1");
        assert.equal(await b.transact((tx) => tx.get(k("missing"))), undefined);
      }));

    it("sees its own writes before commit, in gets and ranges", () =>
      withBackend(open, async (b) => {
        await b.transact((tx) => {
          tx.set(k("r1"), k("old"));
          tx.set(k("r3"), k("x"));
        });
        await b.transact(async (tx) => {
          tx.set(k("r1"), k("new"));
          tx.set(k("r2"), k("two"));
          tx.clear(k("r3"));
          assert.equal(dec(await tx.get(k("r1"))), "new");
          assert.equal(await tx.get(k("r3")), undefined);
          const rows = await tx.getRange(k("r"), k("s"));
          assert.deepEqual(rows.map((r) => dec(r.key)), ["r1", "r2"]);
          assert.deepEqual(rows.map((r) => dec(r.value)), ["new", "two"]);
        });
      }));

    it("reads ranges forward, in reverse and with a limit, in byte order", () =>
      withBackend(open, async (b) => {
        const keys = [
          new Uint8Array([5]),
          new Uint8Array([1, 0]),
          new Uint8Array([1]),
          new Uint8Array([0xff, 1]),
          new Uint8Array([2, 255]),
        ];
        await b.transact((tx) => keys.forEach((key, i) => tx.set(key, new Uint8Array([i]))));
        const sorted = [...keys].sort(compareBytes);
        const all = await b.transact((tx) =>
          tx.getRange(new Uint8Array([0]), new Uint8Array([0xff, 0xff]))
        );
        assert.deepEqual(all.map((r) => [...r.key]), sorted.map((s) => [...s]));
        const rev = await b.transact((tx) =>
          tx.getRange(new Uint8Array([0]), new Uint8Array([0xff, 0xff]), {
            reverse: true,
            limit: 2,
          })
        );
        assert.deepEqual(
          rev.map((r) => [...r.key]),
          sorted.reverse().slice(0, 2).map((s) => [...s]),
        );
        const lim = await b.transact((tx) =>
          tx.getRange(new Uint8Array([1]), new Uint8Array([3]), { limit: 2 })
        );
        assert.deepEqual(lim.map((r) => [...r.key]), [[1], [1, 0]]);
        const empty = await b.transact((tx) =>
          tx.getRange(new Uint8Array([3]), new Uint8Array([1]))
        );
        assert.deepEqual(empty, []);
      }));

    it("clears single keys and ranges", () =>
      withBackend(open, async (b) => {
        await b.transact((tx) => {
          for (const s of ["c1", "c2", "c3", "c4", "d1"]) tx.set(k(s), k(s));
        });
        await b.transact((tx) => {
          tx.clear(k("c1"));
          tx.clearRange(k("c2"), k("c4"));
        });
        const rows = await b.transact((tx) => tx.getRange(k("c"), k("e")));
        assert.deepEqual(rows.map((r) => dec(r.key)), ["c4", "d1"]);
        await b.transact((tx) => {
          tx.clearRange(k("a"), k("z"));
          tx.set(k("c9"), k("after-clear"));
        });
        const left = await b.transact((tx) => tx.getRange(k("a"), k("z")));
        assert.deepEqual(left.map((r) => dec(r.key)), ["c9"]);
      }));

    it("adds atomically, and concurrent adds lose nothing", () =>
      withBackend(open, async (b) => {
        const key = k("counter");
        await Promise.all(
          Array.from({ length: 50 }, (_, i) => b.transact((tx) => tx.add(key, i % 2 ? 1 : 2))),
        );
        await b.transact((tx) => tx.add(key, -5));
        assert.equal(readInt64LE(await b.transact((tx) => tx.get(key))), 75n - 5n);
        await b.transact(async (tx) => {
          tx.add(key, 1);
          assert.equal(readInt64LE(await tx.get(key)), 71n);
        });
      }));

    it("serializes concurrent read-modify-writes: no lost updates", () =>
      withBackend(open, async (b) => {
        const key = k("rmw");
        let attempts = 0;
        await Promise.all(Array.from({ length: 40 }, () =>
          b.transact(async (tx) => {
            attempts++;
            const n = readInt64LE(await tx.get(key));
            await Promise.resolve(); // let others interleave
            tx.set(key, int64(n + 1n));
          })));
        assert.equal(readInt64LE(await b.transact((tx) => tx.get(key))), 40n);
        if (traits.optimistic) assert.ok(attempts > 40, "expected conflicts to cause retries");
      }));

    if (traits.optimistic) {
      const staleSkip = traits.staleReadsConflict === false
        ? `${name} aborts only transactions that could break serializability (staleReadsConflict)`
        : undefined;
      it(
        "detects a read conflict at commit and retries the body",
        { skip: staleSkip },
        () =>
          withBackend(open, async (b) => {
            const key = k("conflict");
            let runs = 0;
            const gate = Promise.withResolvers<void>();
            const read = Promise.withResolvers<void>();
            const first = b.transact(async (tx) => {
              runs++;
              await tx.get(key);
              read.resolve();
              if (runs === 1) await gate.promise;
              tx.set(k("out"), k(String(runs)));
            });
            // Backends may take their snapshot at the first read: write only after it.
            await read.promise;
            await b.transact((tx) => tx.set(key, k("v")));
            gate.resolve();
            await first;
            assert.equal(runs, 2);
          }),
      );

      it("aborts one of two transactions whose reads and writes cross (write skew)", () =>
        withBackend(open, async (b) => {
          await b.transact((tx) => {
            tx.set(k("ws/x"), k("0"));
            tx.set(k("ws/y"), k("0"));
          });
          let runs = 0;
          let arrived = 0;
          const bothRead = Promise.withResolvers<void>();
          // Each sets its own key only if neither is set: run one after the other, exactly one
          // of them writes. Both read before either commits, so one must run again.
          const attempt = (mine: string) => {
            let first = true;
            return b.transact(async (tx) => {
              runs++;
              const x = dec(await tx.get(k("ws/x")));
              const y = dec(await tx.get(k("ws/y")));
              if (first) {
                first = false;
                if (++arrived === 2) bothRead.resolve();
                await bothRead.promise;
              }
              if (x === "0" && y === "0") tx.set(k(mine), k("1"));
            });
          };
          await Promise.all([attempt("ws/x"), attempt("ws/y")]);
          const [x, y] = await b.transact(async (tx) => [
            dec(await tx.get(k("ws/x"))),
            dec(await tx.get(k("ws/y"))),
          ]);
          assert.deepEqual([x, y].sort(), ["0", "1"], "exactly one of the two may write");
          assert.ok(runs > 2, "expected one transaction to run again");
        }));

      it("settles the watch and versionstamp of an attempt that conflicted", () =>
        withBackend(open, async (b) => {
          const key = k("settle");
          const gate = Promise.withResolvers<void>();
          const read = Promise.withResolvers<void>();
          const firsts: Array<{ watch: Promise<boolean>; stamp: Promise<Uint8Array> }> = [];
          const tx1 = b.transact(async (tx) => {
            await tx.get(key);
            read.resolve();
            const watch = tx.watch(k("elsewhere"));
            const stamp = tx.getVersionstamp();
            stamp.catch(() => {});
            firsts.push({ watch: watch.promise, stamp });
            if (firsts.length === 1) await gate.promise;
            // Writing the key it read, after another commit wrote it: a conflict everywhere.
            tx.set(key, k("mine"));
          });
          await read.promise;
          await b.transact((tx) => tx.set(key, k("theirs")));
          gate.resolve();
          await tx1;
          assert.equal(firsts.length, 2, "the first attempt conflicted");
          assert.equal(
            await deadline(firsts[0]!.watch, 2000, "watch of the failed attempt"),
            false,
          );
          await rejectsInTime(firsts[0]!.stamp, "stamp of the failed attempt");
          assert.equal((await firsts[1]!.stamp).length, 10);
        }));

      it("does not conflict on snapshot reads", () =>
        withBackend(open, async (b) => {
          const key = k("snap");
          let runs = 0;
          const gate = Promise.withResolvers<void>();
          const read = Promise.withResolvers<void>();
          const first = b.transact(async (tx) => {
            runs++;
            await tx.snapshot.get(key);
            read.resolve();
            await gate.promise;
            tx.set(k("out"), k("x"));
          });
          await read.promise;
          await b.transact((tx) => tx.set(key, k("v")));
          gate.resolve();
          await first;
          assert.equal(runs, 1);
        }));

      it("reads a consistent snapshot while others commit", () =>
        withBackend(open, async (b) => {
          await b.transact((tx) => {
            tx.set(k("x"), k("0"));
            tx.set(k("y"), k("0"));
          });
          const gate = Promise.withResolvers<void>();
          const seen: string[] = [];
          const read = Promise.withResolvers<void>();
          const reader = b.transact(async (tx) => {
            seen.push(dec(await tx.get(k("x")))!);
            read.resolve();
            await gate.promise;
            seen.push(dec(await tx.get(k("y")))!);
          }, { readOnly: true });
          await read.promise;
          await b.transact((tx) => {
            tx.set(k("x"), k("1"));
            tx.set(k("y"), k("1"));
          });
          gate.resolve();
          await reader;
          assert.deepEqual(seen, ["0", "0"]);
        }));

      it("narrows the conflict range of a limited range read to what was read", () =>
        withBackend(open, async (b) => {
          await b.transact((tx) => {
            tx.set(k("q1"), k("a"));
            tx.set(k("q5"), k("b"));
          });
          let runs = 0;
          const gate = Promise.withResolvers<void>();
          const read = Promise.withResolvers<void>();
          const consumer = b.transact(async (tx) => {
            runs++;
            const [head] = await tx.getRange(k("q"), k("r"), { limit: 1 });
            read.resolve();
            if (runs === 1) await gate.promise;
            tx.clear(head!.key);
          });
          await read.promise;
          await b.transact((tx) => tx.set(k("q9"), k("appended")));
          gate.resolve();
          await consumer;
          assert.equal(runs, 1, "an append past the read head must not conflict");
        }));
    }

    it("rethrows a body's error without retrying or writing", () =>
      withBackend(open, async (b) => {
        let runs = 0;
        await assert.rejects(
          b.transact((tx) => {
            runs++;
            tx.set(k("never"), k("x"));
            throw new Error("boom");
          }),
          /boom/,
        );
        assert.equal(runs, 1);
        assert.equal(await b.transact((tx) => tx.get(k("never"))), undefined);
      }));

    it("rejects the versionstamp of a transaction that wrote nothing, read-only or not", () =>
      withBackend(open, async (b) => {
        await b.transact((tx) => tx.set(k("vs-none"), k("x")));
        let readOnly!: Promise<Uint8Array>;
        let idle!: Promise<Uint8Array>;
        await b.transact(async (tx) => {
          await tx.get(k("vs-none"));
          readOnly = tx.getVersionstamp();
        }, { readOnly: true });
        await b.transact(async (tx) => {
          await tx.get(k("vs-none"));
          idle = tx.getVersionstamp();
        });
        await rejectsInTime(readOnly, "stamp of a read-only transaction");
        await rejectsInTime(idle, "stamp of a transaction that wrote nothing");
      }));

    it("gives commits strictly increasing versionstamps and fills stamped keys and values", () =>
      withBackend(open, async (b) => {
        const stamps: Uint8Array[] = [];
        for (let i = 0; i < 5; i++) {
          let p!: Promise<Uint8Array>;
          await b.transact((tx) => {
            tx.setVersionstampedKey(k("vs/"), new Uint8Array([i]), k(`m${i}`));
            tx.setVersionstampedValue(k(`val${i}`), k("<"), k(">"));
            p = tx.getVersionstamp();
          });
          stamps.push(await p);
        }
        for (const s of stamps) assert.equal(s.length, 10);
        for (let i = 1; i < stamps.length; i++) {
          assert.ok(compareBytes(stamps[i - 1]!, stamps[i]!) < 0);
        }
        const rows = await b.transact((tx) => tx.getRange(k("vs/"), k("vs0")));
        assert.deepEqual(rows.map((r) => dec(r.value)), ["m0", "m1", "m2", "m3", "m4"]);
        assert.deepEqual([...rows[2]!.key], [
          ...concatBytes(k("vs/"), stamps[2]!, new Uint8Array([2])),
        ]);
        const v3 = await b.transact((tx) => tx.get(k("val3")));
        assert.deepEqual([...v3!], [...concatBytes(k("<"), stamps[3]!, k(">"))]);
      }));

    it("makes versionstamped keys visible in stamp order, with no gap behind the newest", () =>
      withBackend(open, async (b) => {
        const prefix = k("vq/");
        const end = k("vq0");
        let writing = true;
        const writers = Array.from({ length: 4 }, async (_, w) => {
          for (let i = 0; i < 8; i++) {
            await b.transact((tx) =>
              tx.setVersionstampedKey(prefix, new Uint8Array([w, i]), k("m"))
            );
          }
        });
        const snapshots: string[][] = [];
        const reader = (async () => {
          while (writing) {
            const rows = await b.transact((tx) => tx.getRange(prefix, end), { readOnly: true });
            snapshots.push(rows.map((r) => toHex(r.key)));
            await new Promise((r) => setTimeout(r, 0));
          }
        })();
        await Promise.all(writers).finally(() => writing = false);
        await reader;
        const all = (await b.transact((tx) => tx.getRange(prefix, end))).map((r) => toHex(r.key));
        assert.equal(all.length, 32);
        // A reader that sees a stamp sees every smaller one: what it sees is a prefix.
        for (const seen of snapshots) assert.deepEqual(seen, all.slice(0, seen.length));
      }));

    it("fires a watch on a later commit to the key, not before", () =>
      withBackend(open, async (b) => {
        const key = k("w");
        const watch = await b.transact(async (tx) => {
          await tx.get(key);
          return tx.watch(key);
        });
        let fired = false;
        watch.promise.then(() => fired = true);
        await b.transact((tx) => tx.set(k("unrelated"), k("x")));
        await new Promise((r) => setTimeout(r, 20));
        assert.equal(fired, false);
        await b.transact((tx) => tx.set(key, k("1")));
        assert.equal(await deadline(watch.promise, 2000, "watch did not fire"), true);
      }));

    it("fires a watch at once when a commit lands between its read and its commit", () =>
      withBackend(open, async (b) => {
        const key = k("between");
        const gate = Promise.withResolvers<void>();
        const read = Promise.withResolvers<void>();
        const made = b.transact(async (tx) => {
          await tx.get(key);
          const w = tx.watch(key);
          read.resolve();
          await gate.promise;
          return w;
        }, { readOnly: true });
        await read.promise;
        await b.transact((tx) => tx.set(key, k("raced")));
        gate.resolve();
        const watch = await made;
        assert.equal(await deadline(watch.promise, 2000, "watch missed the racing commit"), true);
      }));

    it("resolves a cancelled watch, and one from a failed transaction, with false", () =>
      withBackend(open, async (b) => {
        const w1 = await b.transact((tx) => tx.watch(k("c")));
        w1.cancel();
        assert.equal(await w1.promise, false);
        let w2!: { promise: Promise<boolean> };
        await assert.rejects(b.transact((tx) => {
          w2 = tx.watch(k("c"));
          throw new Error("no");
        }));
        assert.equal(await deadline(w2.promise, 2000, "watch of failed tx did not settle"), false);
      }));

    it("rejects oversized keys and values before commit, writing nothing", () =>
      withBackend(open, async (b) => {
        await assert.rejects(
          b.transact((tx) => {
            tx.set(k("ok"), k("1"));
            tx.set(new Uint8Array(b.limits.maxKeySize + 1), k("x"));
          }),
          (e) => e instanceof LimitExceededError && e.code === "key_too_large",
        );
        await assert.rejects(
          b.transact((tx) => tx.set(k("big"), new Uint8Array(b.limits.maxValueSize + 1))),
          (e) =>
            e instanceof LimitExceededError && e.code === "value_too_large" &&
            /big/.test(e.message),
        );
        assert.equal(await b.transact((tx) => tx.get(k("ok"))), undefined);
        await b.transact((tx) => tx.set(k("max"), new Uint8Array(b.limits.maxValueSize)));
      }));

    it("rejects a transaction over its size limit, writing nothing", () =>
      withBackend(open, async (b) => {
        await assert.rejects(
          b.transact((tx) => {
            for (let i = 0; i < 12; i++) tx.set(k(`t${i}`), new Uint8Array(100));
          }),
          (e) => e instanceof LimitExceededError && e.code === "transaction_too_large",
        );
        assert.deepEqual(await b.transact((tx) => tx.getRange(k("t"), k("u"))), []);
      }, { limits: { maxTransactionSize: 1000 } }));

    it("fails a transaction that outlives its time limit, writing nothing", () =>
      withBackend(open, async (b) => {
        await assert.rejects(
          b.transact(async (tx) => {
            tx.set(k("slow"), k("1"));
            await new Promise((r) => setTimeout(r, 120));
            tx.set(k("slow2"), k("1"));
          }),
          (e) => e instanceof LimitExceededError && e.code === "transaction_timeout",
        );
        assert.equal(await b.transact((tx) => tx.get(k("slow"))), undefined);
      }, { limits: { maxTransactionDuration: 50 } }));

    it("stops a body that keeps reading past its time limit, before its commit", () =>
      withBackend(open, async (b) => {
        let reads = 0;
        await assert.rejects(
          b.transact(async (tx) => {
            tx.set(k("poll"), k("1"));
            // A poll inside a transaction: only a read can stop it before it gives up.
            while (reads <= 40) {
              await tx.get(k("flag"));
              reads++;
              await new Promise((r) => setTimeout(r, 10));
            }
          }),
          (e) => e instanceof LimitExceededError && e.code === "transaction_timeout",
        );
        assert.ok(reads <= 40, `the body made ${reads} reads: no read looked at the clock`);
        assert.equal(await b.transact((tx) => tx.get(k("poll"))), undefined);
      }, { limits: { maxTransactionDuration: 50 } }));

    it("fails a body that never settles at its time limit, once, and nothing it does commits", () =>
      withBackend(open, async (b) => {
        let held: Transaction | undefined;
        let runs = 0;
        const started = performance.now();
        const hung = b.transact((tx) => {
          runs++;
          held = tx;
          tx.set(k("hung"), k("1"));
          // A handler awaiting a fetch that never answers.
          return new Promise<never>(() => {});
        });
        await assert.rejects(
          deadline(hung, 3000, "a body that never settles was never failed"),
          (e) =>
            e instanceof LimitExceededError && e.code === "transaction_timeout" &&
            /over the 200 ms limit/.test(e.message),
        );
        assert.ok(performance.now() - started >= 200, "failed before its limit");
        assert.equal(runs, 1, "a timeout is not retried");
        // The transaction is over: what the body does afterwards throws and commits nothing.
        assert.throws(() => held!.set(k("late"), k("1")));
        await assert.rejects(Promise.resolve().then(() => held!.get(k("hung"))));
        await b.transact((tx) => tx.set(k("after"), k("1")));
        const rows = await b.transact((tx) => tx.getRange(k("a"), k("z")));
        assert.deepEqual(rows.map((r) => dec(r.key)), ["after"]);
      }, { limits: { maxTransactionDuration: 200 } }));

    it("refuses writes in a read-only transaction", () =>
      withBackend(open, async (b) => {
        await assert.rejects(b.transact((tx) => tx.set(k("ro"), k("1")), { readOnly: true }));
        assert.equal(await b.transact((tx) => tx.get(k("ro"))), undefined);
      }));

    it("keeps tenants apart", () =>
      withBackend(open, async (b) => {
        const t1 = await openTenant(b, "acme/prod");
        const t2 = await openTenant(b, "acme");
        const t3 = await openTenant(b, "acme/prod");
        await t1.transact((tx) => tx.set(k("k"), k("one")));
        await t2.transact((tx) => tx.set(k("k"), k("two")));
        assert.equal(dec(await t3.transact((tx) => tx.get(k("k")))), "one");
        const inT2 = await t2.transact((tx) => tx.getRange(new Uint8Array([0]), new Uint8Array()));
        assert.deepEqual(inT2.map((r) => dec(r.value)), ["two"]);
        await t2.transact((tx) => tx.clearRange(new Uint8Array([0]), new Uint8Array()));
        assert.equal(dec(await t1.transact((tx) => tx.get(k("k")))), "one");
      }));

    it("retries injected conflicts and gives up with a clear error when retries run out", () =>
      withBackend(open, async (b) => {
        const flaky = withFaults(b, { seed: 7, conflictRate: 0.5 });
        for (let i = 0; i < 20; i++) await flaky.transact((tx) => tx.add(k("n"), 1));
        assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("n")))), 20n);
        assert.ok(flaky.stats.conflicts > 0);
        const doomed = withFaults(b, { seed: 1, conflictRate: 1 });
        await assert.rejects(
          doomed.transact((tx) => tx.add(k("n"), 1), { maxRetries: 3 }),
          (e) =>
            e instanceof RetriesExhaustedError && e.attempts === 4 &&
            e.cause instanceof ConflictError,
        );
        assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("n")))), 20n);
      }));

    it("makes an injected unknown commit result observable, with the write applied", () =>
      withBackend(open, async (b) => {
        const faulty = withFaults(b, { seed: 3, unknownAppliedRate: 1 });
        await assert.rejects(
          faulty.transact((tx) => tx.add(k("u"), 1), { maxRetries: 0 }),
          (e) => e instanceof CommitUnknownResultError && e.maybeCommitted,
        );
        assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("u")))), 1n);
        assert.equal(faulty.stats.unknownApplied, 1);
      }));

    it("fails transactions and settles watches once closed", async () => {
      const b = await open();
      const w = await b.transact((tx) => tx.watch(k("z")));
      await b.close();
      assert.equal(await deadline(w.promise, 2000, "watch not settled by close"), false);
      await assert.rejects(b.transact((tx) => tx.get(k("z"))), { code: "backend_unavailable" });
    });

    it("stores tuple-encoded keys in tuple order", () =>
      withBackend(open, async (b) => {
        const tuples = [[1], [-1], ["a"], ["a", 2], [null], [2n ** 70n], [1.5]];
        await b.transact((tx) => tuples.forEach((t, i) => tx.set(pack(t), new Uint8Array([i]))));
        const rows = await b.transact((tx) =>
          tx.getRange(new Uint8Array([0]), new Uint8Array([0xff]))
        );
        assert.deepEqual(rows.map((r) => r.value[0]), [4, 2, 3, 1, 0, 5, 6]);
      }));
  });
}

function int64(n: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigInt64(0, n, true);
  return out;
}
