import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import {
  BackendUnavailableError,
  FOUNDATIONDB_LIMITS,
  LimitExceededError,
  openSqliteBackend,
  readInt64LE,
  type SqliteBackend,
  type Transaction,
  ValidationError,
} from "../../mod.ts";
import { compareBytes, int64LE, toHex } from "../../lib/bytes.ts";
import { deadline, waitFor } from "../_helpers.ts";
import { registerConformance } from "./conformance.ts";

let root: string | undefined;
let files = 0;
/** A directory for this file's databases, made on first use (a filtered run makes none). */
const dir = () => root ??= mkdtempSync(join(tmpdir(), "dgen-sqlite-test-"));
/** A path for a fresh database file. */
const fresh = (name = "db") => join(dir(), `${name}-${files++}.sqlite`);
after(() => {
  if (root !== undefined) rmSync(root, { recursive: true, force: true });
});

const enc = new TextEncoder();
const k = (s: string) => enc.encode(s);

registerConformance("sqlite", (o) => openSqliteBackend({ path: fresh(), ...o }), {
  optimistic: false,
});

async function withSqlite(
  fn: (b: SqliteBackend, path: string) => Promise<void>,
  options: Omit<Parameters<typeof openSqliteBackend>[0], "path"> = {},
): Promise<void> {
  const path = fresh();
  const b = await openSqliteBackend({ path, ...options });
  try {
    await fn(b, path);
  } finally {
    await b.close();
  }
}

/** Increments the 64-bit counter at `key` by reading and writing it (not an atomic add). */
async function increment(tx: Transaction, key: Uint8Array): Promise<bigint> {
  const n = readInt64LE(await tx.get(key)) + 1n;
  tx.set(key, int64LE(n));
  return n;
}

describe("openSqliteBackend options", () => {
  const rejects = async (options: unknown, field: RegExp) => {
    await assert.rejects(
      openSqliteBackend(options as never),
      (e) => e instanceof ValidationError && field.test(e.message),
      `expected a ValidationError naming ${field}`,
    );
  };

  it("rejects a missing, empty or in-memory path, naming the field", async () => {
    await rejects(undefined, /^Invalid options: Expected Object, received undefined/);
    await rejects("db.sqlite", /^Invalid options: Expected Object, received "db.sqlite"/);
    await rejects({}, /options\.path/);
    await rejects({ path: "" }, /options\.path: Expected a non-empty file path/);
    await rejects({ path: 42 }, /options\.path: Expected string/);
    await rejects({ path: ":memory:" }, /options\.path: Expected a file path/);
  });

  it("rejects unknown keys and mistyped fields, naming the field", async () => {
    const path = fresh();
    await rejects({ path, nope: 1 }, /options\.nope: Unknown field/);
    await rejects({ path, synchronous: "off" }, /options\.synchronous/);
    await rejects({ path, synchronous: true }, /options\.synchronous/);
    await rejects({ path, maxGroupSize: 0 }, /options\.maxGroupSize/);
    await rejects({ path, maxGroupSize: 1.5 }, /options\.maxGroupSize/);
    await rejects({ path, limits: { maxValueSize: -1 } }, /options\.limits\.maxValueSize/);
    await rejects({ path, limits: { bogus: 1 } }, /options\.limits\.bogus/);
    assert.equal(existsSync(path), false, "nothing is created for invalid options");
  });

  it("creates missing parent directories", async () => {
    const path = join(dir(), "deep", "er", "db.sqlite");
    const b = await openSqliteBackend({ path });
    await b.transact((tx) => tx.set(k("a"), k("1")));
    await b.close();
    assert.ok(existsSync(path));
    assert.ok(existsSync(`${path}-notify`));
  });

  it("declares FoundationDB's limits unless overridden", () =>
    withSqlite(async (b) => {
      assert.deepEqual({ ...b.limits }, { ...FOUNDATIONDB_LIMITS });
      const c = await openSqliteBackend({ path: fresh(), limits: { maxValueSize: 10 } });
      assert.equal(c.limits.maxValueSize, 10);
      assert.equal(c.limits.maxKeySize, FOUNDATIONDB_LIMITS.maxKeySize);
      await assert.rejects(
        c.transact((tx) => tx.set(k("v"), new Uint8Array(11))),
        (e) => e instanceof LimitExceededError && e.code === "value_too_large",
      );
      await c.close();
    }));

  it("refuses a file written in another storage format", async () => {
    const path = fresh();
    await (await openSqliteBackend({ path })).close();
    const db = new DatabaseSync(path);
    db.exec("UPDATE meta SET value = 99 WHERE name = 'format'");
    db.close();
    await assert.rejects(
      openSqliteBackend({ path }),
      (e) => e instanceof BackendUnavailableError && /format 99/.test(e.message),
    );
  });
});

describe("sqlite backend", () => {
  it("keeps committed data across close and reopen, with stamps still increasing", async () => {
    const path = fresh();
    const b1 = await openSqliteBackend({ path });
    let s1!: Promise<Uint8Array>;
    await b1.transact((tx) => {
      tx.set(k("durable"), k("yes"));
      tx.add(k("n"), 41);
      s1 = tx.getVersionstamp();
    });
    const stamp1 = await s1;
    await b1.close();
    const b2 = await openSqliteBackend({ path, synchronous: "normal" });
    try {
      assert.equal(
        new TextDecoder().decode(await b2.transact((tx) => tx.get(k("durable")))),
        "yes",
      );
      let s2!: Promise<Uint8Array>;
      await b2.transact((tx) => {
        tx.add(k("n"), 1);
        s2 = tx.getVersionstamp();
      });
      assert.ok(compareBytes(stamp1, await s2) < 0, "stamps keep increasing after a reopen");
      assert.equal(readInt64LE(await b2.transact((tx) => tx.get(k("n")))), 42n);
    } finally {
      await b2.close();
    }
  });

  it("commits a group of waiting transactions with one physical commit, each its own stamp", () =>
    withSqlite(async (b) => {
      const n = 50;
      const before = b.stats.physicalCommits;
      const results = await Promise.all(Array.from({ length: n }, async (_, i) => {
        let stamp!: Promise<Uint8Array>;
        const value = await b.transact(async (tx) => {
          tx.set(k(`own/${i}`), k(String(i)));
          stamp = tx.getVersionstamp();
          return await increment(tx, k("shared"));
        });
        return { value, stamp: await stamp };
      }));
      const commits = b.stats.physicalCommits - before;
      assert.ok(commits < n, `expected fewer than ${n} physical commits, got ${commits}`);
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("shared")))), BigInt(n));
      const own = await b.transact((tx) => tx.getRange(k("own/"), k("own0")));
      assert.equal(own.length, n);
      // Distinct stamps, and stamp order is the order in which the increments were applied.
      const byStamp = [...results].sort((x, y) => compareBytes(x.stamp, y.stamp));
      assert.equal(new Set(results.map((r) => toHex(r.stamp))).size, n);
      assert.deepEqual(byStamp.map((r) => r.value), results.map((_, i) => BigInt(i + 1)));
      // Stamps of one physical commit share the commit counter (their first 8 bytes).
      const counters = new Set(results.map((r) => toHex(r.stamp.subarray(0, 8))));
      assert.equal(counters.size, commits);
    }));

  it("rolls back only the throwing member of a group", () =>
    withSqlite(async (b) => {
      const before = b.stats.physicalCommits;
      const outcomes = await Promise.allSettled(Array.from({ length: 10 }, (_, i) =>
        b.transact(async (tx) => {
          tx.set(k(`m/${i}`), k("x"));
          await increment(tx, k("count"));
          if (i === 4) throw new Error("member 4 fails");
        })));
      assert.equal(
        outcomes.filter((o) =>
          o.status === "fulfilled"
        ).length,
        9,
      );
      const failed = outcomes[4] as PromiseRejectedResult;
      assert.match(String(failed.reason), /member 4 fails/);
      const keys = await b.transact((tx) => tx.getRange(k("m/"), k("m0")));
      assert.deepEqual(
        keys.map((r) => new TextDecoder().decode(r.key)),
        ["m/0", "m/1", "m/2", "m/3", "m/5", "m/6", "m/7", "m/8", "m/9"],
      );
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("count")))), 9n);
      assert.ok(b.stats.physicalCommits - before < 10);
    }));

  it("commits a lone transaction at once, and each sequential one separately", () =>
    withSqlite(async (b) => {
      const before = b.stats.physicalCommits;
      for (let i = 0; i < 5; i++) await b.transact((tx) => increment(tx, k("seq")));
      assert.equal(b.stats.physicalCommits - before, 5);
      assert.equal(b.stats.transactions, 5);
    }));

  it("caps groups at maxGroupSize, and maxGroupSize 1 turns grouping off", async () => {
    await withSqlite(async (b) => {
      await Promise.all(Array.from({ length: 40 }, () => b.transact((tx) => tx.add(k("c"), 1))));
      assert.ok(b.stats.physicalCommits >= 5, `${b.stats.physicalCommits} commits for 40 of 8`);
    }, { maxGroupSize: 8 });
    await withSqlite(async (b) => {
      await Promise.all(Array.from({ length: 20 }, () => b.transact((tx) => tx.add(k("c"), 1))));
      assert.equal(b.stats.physicalCommits, 20);
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("c")))), 20n);
    }, { maxGroupSize: 1 });
  });

  it("does not commit, or fsync, a transaction that wrote nothing", () =>
    withSqlite(async (b) => {
      await b.transact((tx) => tx.get(k("nothing")));
      assert.equal(b.stats.physicalCommits, 0);
    }));

  it("runs read-only transactions while a write transaction holds the lock", () =>
    withSqlite(async (b) => {
      await b.transact((tx) => tx.set(k("x"), k("old")));
      const gate = Promise.withResolvers<void>();
      const writing = b.transact(async (tx) => {
        tx.set(k("x"), k("new"));
        await gate.promise;
      });
      const seen = await deadline(
        b.transact((tx) => tx.get(k("x")), { readOnly: true }),
        2000,
        "read-only transaction waited for the writer",
      );
      assert.equal(new TextDecoder().decode(seen), "old");
      gate.resolve();
      await writing;
      assert.equal(new TextDecoder().decode(await b.transact((tx) => tx.get(k("x")))), "new");
    }));

  it("waits for another connection's lock without blocking the event loop", async () => {
    const path = fresh();
    const b1 = await openSqliteBackend({ path });
    const b2 = await openSqliteBackend({ path });
    try {
      const gate = Promise.withResolvers<void>();
      const started = Promise.withResolvers<void>();
      const holding = b1.transact(async (tx) => {
        tx.set(k("held"), int64LE(7));
        started.resolve();
        await gate.promise;
      });
      await started.promise;
      const waiting = b2.transact((tx) => increment(tx, k("held")));
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 5);
      try {
        await waitFor(() => ticks >= 10, 5000, "the event loop stalled while waiting for a lock");
      } finally {
        clearInterval(ticker);
      }
      assert.ok(b2.stats.lockWaits > 0, "b2 should have found the lock taken");
      gate.resolve();
      await holding;
      assert.equal(await deadline(waiting, 5000, "b2 never got the lock"), 8n);
    } finally {
      await b1.close();
      await b2.close();
    }
  });

  it("lets timers run while transactions keep arriving from promise callbacks alone", () =>
    withSqlite(async (b) => {
      let fired: number | undefined;
      const t0 = performance.now();
      const timer = setTimeout(() => fired = performance.now() - t0, 10);
      const end = t0 + 5000;
      try {
        await Promise.all(Array.from({ length: 16 }, async () => {
          while (fired === undefined && performance.now() < end) {
            await b.transact((tx) => tx.add(k("busy"), 1));
          }
        }));
      } finally {
        clearTimeout(timer);
      }
      assert.ok(fired !== undefined, "a 10 ms timer did not fire during 5 s of writes");
    }, { synchronous: "normal" }));

  it("fires a watch on a commit made through another connection to the file", async () => {
    const path = fresh();
    const b1 = await openSqliteBackend({ path });
    const b2 = await openSqliteBackend({ path });
    try {
      const watch = await b1.transact(async (tx) => {
        await tx.get(k("w"));
        return tx.watch(k("w"));
      });
      await b2.transact((tx) => tx.set(k("other"), k("x")));
      await b2.transact((tx) => tx.set(k("w"), k("1")));
      const t0 = performance.now();
      assert.equal(await deadline(watch.promise, 900, "cross-connection watch missed"), true);
      // Well under the safety poll: the notify file woke it.
      assert.ok(performance.now() - t0 < 900);
      // A clear is a write too.
      const w2 = await b1.transact((tx) => tx.watch(k("w")), { readOnly: true });
      await b2.transact((tx) => tx.clearRange(k("a"), k("z")));
      assert.equal(await deadline(w2.promise, 900, "clear did not fire the watch"), true);
    } finally {
      await b1.close();
      await b2.close();
    }
  });

  it("fires a watch made in a group when a later member of the group writes the key", () =>
    withSqlite(async (b) => {
      const gate = Promise.withResolvers<void>();
      const blocker = b.transact(async (tx) => {
        tx.set(k("blocker"), k("1"));
        await gate.promise;
      });
      // Both wait behind the blocker, so they run in one group, in this order.
      const watching = b.transact((tx) => tx.watch(k("g")));
      const writing = b.transact((tx) => tx.set(k("g"), k("later")));
      const unrelated = b.transact((tx) => tx.watch(k("h")));
      gate.resolve();
      await Promise.all([blocker, writing]);
      const [w, u] = [await watching, await unrelated];
      assert.equal(await deadline(w.promise, 2000, "in-group later write missed"), true);
      let fired = false;
      u.promise.then(() => fired = true);
      await new Promise((r) => setTimeout(r, 20));
      assert.equal(fired, false);
      u.cancel();
    }));

  it("refuses to read a versionstamped value in its own transaction", () =>
    withSqlite(async (b) => {
      await assert.rejects(
        b.transact(async (tx) => {
          tx.setVersionstampedValue(k("sv"), k("p"));
          await tx.get(k("sv"));
        }),
        { code: "accessed_unreadable" },
      );
      await b.transact(async (tx) => {
        tx.setVersionstampedValue(k("sv"), k("p"));
        tx.set(k("sv"), k("plain")); // overwritten: readable again
        assert.equal(new TextDecoder().decode(await tx.get(k("sv"))), "plain");
      });
    }));

  it("times out a body that waits for another write transaction instead of deadlocking", () =>
    withSqlite(async (b) => {
      await assert.rejects(
        b.transact(async (tx) => {
          tx.set(k("outer"), k("1"));
          await b.transact((inner) => inner.set(k("inner"), k("1")));
        }),
        (e) => e instanceof LimitExceededError && e.code === "transaction_timeout",
      );
      assert.equal(await b.transact((tx) => tx.get(k("outer"))), undefined);
      // The inner one was merely queued behind the outer one; it commits afterwards.
      await waitFor(
        () => b.transact((tx) => tx.get(k("inner")), { readOnly: true }),
        2000,
        "inner transaction never committed",
      );
    }, { limits: { maxTransactionDuration: 200 } }));

  it("withdraws a queued transaction whose signal aborts", () =>
    withSqlite(async (b) => {
      const gate = Promise.withResolvers<void>();
      const holding = b.transact(async () => await gate.promise);
      const ac = new AbortController();
      const queued = b.transact((tx) => tx.set(k("aborted"), k("1")), { signal: ac.signal });
      ac.abort(new Error("changed my mind"));
      await assert.rejects(queued, /changed my mind/);
      gate.resolve();
      await holding;
      assert.equal(await b.transact((tx) => tx.get(k("aborted"))), undefined);
    }));

  it("fails uncommitted transactions when closed, and settles pending watches", async () => {
    const path = fresh();
    const b = await openSqliteBackend({ path });
    const w = await b.transact((tx) => tx.watch(k("pending")));
    const gate = Promise.withResolvers<void>();
    const running = b.transact(async (tx) => {
      tx.set(k("a"), k("1"));
      await gate.promise;
    });
    const queued = b.transact((tx) => tx.set(k("b"), k("1")));
    const closing = b.close();
    await assert.rejects(queued, (e) => e instanceof BackendUnavailableError);
    assert.equal(await w.promise, false);
    gate.resolve();
    await assert.rejects(running, (e) => e instanceof BackendUnavailableError);
    await closing;
    await assert.rejects(b.transact((tx) => tx.get(k("a"))), { code: "backend_unavailable" });
    const again = await openSqliteBackend({ path });
    try {
      assert.deepEqual(await again.transact((tx) => tx.getRange(k("a"), k("c"))), []);
    } finally {
      await again.close();
    }
  });
});

describe("sqlite backend: the commit counter", () => {
  /** Commits one write on `b`; the commit counter of its versionstamp. */
  const commit = async (b: SqliteBackend, key = "n"): Promise<number> => {
    let stamp!: Promise<Uint8Array>;
    await b.transact((tx) => {
      tx.add(k(key), 1);
      stamp = tx.getVersionstamp();
    });
    return Number(new DataView((await stamp).buffer).getBigUint64(0));
  };
  /** The counter stored in the file, read through a connection of its own. */
  const storedIn = (raw: DatabaseSync) => () =>
    (raw.prepare("SELECT value FROM meta WHERE name = 'counter'").get() as { value: number })
      .value;

  it("stores the counter ahead while alone, and each commit's own once another backend opens", async () => {
    const path = fresh();
    const a = await openSqliteBackend({ path });
    const raw = new DatabaseSync(path);
    const stored = storedIn(raw);
    let b: SqliteBackend | undefined;
    try {
      // Alone: consecutive counters, and the stored one written once, ahead of them all (a
      // crash at any point leaves it above every counter used).
      const alone = [await commit(a)];
      const reservation = stored();
      for (let i = 0; i < 20; i++) {
        alone.push(await commit(a));
        assert.equal(alone.at(-1), alone.at(-2)! + 1, "counters are consecutive");
        assert.equal(stored(), reservation, "the stored counter is not written again");
      }
      assert.ok(reservation > alone.at(-1)!, `stored ${reservation} ≥ used ${alone.at(-1)}`);
      // Another backend opens: from its opening commit on, every commit stores its own
      // counter (other processes' watch checks see each one), and counters keep increasing.
      b = await openSqliteBackend({ path });
      assert.ok(stored() > reservation, "the newcomer continues above the reservation");
      let last = stored();
      for (let i = 0; i < 10; i++) {
        const c = await commit(i % 2 === 0 ? a : b);
        assert.ok(c > last, `counter ${c} above ${last}`);
        assert.equal(stored(), c, `commit ${i} stores its own counter`);
        last = c;
      }
      await b.close();
      b = undefined;
      // Alone again, it goes back to reserving (after EXACT_MS without another commit).
      await waitFor(
        async () => {
          const c = await commit(a);
          assert.ok(c > last && stored() >= c);
          last = c;
          return stored() > c;
        },
        10_000,
        "the backend alone again never reserved counters",
      );
    } finally {
      raw.close();
      await b?.close();
      await a.close();
    }
  });

  it("uses no counter for a transaction that fails or writes nothing", () =>
    withSqlite(async (b) => {
      const first = await commit(b);
      await assert.rejects(
        b.transact((tx) => {
          tx.set(k("x"), k("y"));
          throw new Error("no");
        }),
        /no/,
      );
      await b.transact((tx) => tx.get(k("x")));
      assert.equal(await commit(b), first + 1);
    }));

  it("continues above every counter used after a close and reopen", async () => {
    const path = fresh();
    const a = await openSqliteBackend({ path });
    let used = 0;
    try {
      for (let i = 0; i < 5; i++) used = await commit(a);
    } finally {
      await a.close();
    }
    const again = await openSqliteBackend({ path });
    try {
      assert.ok(await commit(again) > used);
    } finally {
      await again.close();
    }
  });
});

describe("sqlite backend: the writer's row cache", () => {
  const dec = new TextDecoder();
  const text = (v: Uint8Array | undefined) => v === undefined ? undefined : dec.decode(v);

  it("sees what other connections commit to rows it has read, and keeps stamps increasing", () =>
    withSqlite(async (b1, path) => {
      const b2 = await openSqliteBackend({ path });
      const raw = new DatabaseSync(path);
      try {
        await b1.transact((tx) => tx.set(k("shared"), k("one")));
        assert.equal(text(await b1.transact((tx) => tx.get(k("shared")))), "one");
        await b2.transact((tx) => tx.set(k("shared"), k("two")));
        assert.equal(text(await b1.transact((tx) => tx.get(k("shared")))), "two");
        // A missing row the cache knows as missing, created elsewhere.
        assert.equal(await b1.transact((tx) => tx.get(k("later"))), undefined);
        await b2.transact((tx) => tx.set(k("later"), k("here")));
        assert.equal(text(await b1.transact((tx) => tx.get(k("later")))), "here");
        // Any connection counts, not only dgen's.
        raw.prepare("UPDATE kv SET v = ? WHERE k = ?").run(k("raw"), k("shared"));
        assert.equal(text(await b1.transact((tx) => tx.get(k("shared")))), "raw");
        // The commit counter is re-read after the other connection's commits.
        const stamps: Uint8Array[] = [];
        for (let i = 0; i < 6; i++) {
          const b = i % 2 === 0 ? b1 : b2;
          let stamp!: Promise<Uint8Array>;
          await b.transact((tx) => {
            tx.add(k("n"), 1);
            stamp = tx.getVersionstamp();
          });
          stamps.push(await stamp);
        }
        for (let i = 1; i < stamps.length; i++) {
          assert.ok(compareBytes(stamps[i - 1]!, stamps[i]!) < 0, `stamp ${i} increases`);
        }
        assert.equal(readInt64LE(await b1.transact((tx) => tx.get(k("n")))), 6n);
      } finally {
        raw.close();
        await b2.close();
      }
    }));

  it("forgets what a rolled-back member of a group wrote or read, and keeps the rest", () =>
    withSqlite(async (b) => {
      await b.transact((tx) => tx.set(k("c"), int64LE(0)));
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("c")))), 0n); // cached
      const gate = Promise.withResolvers<void>();
      // The first member holds the group open until the others wait behind it.
      const first = b.transact(async (tx) => {
        await gate.promise;
        await increment(tx, k("c"));
      });
      const failing = b.transact(async (tx) => {
        tx.set(k("c"), int64LE(99));
        assert.equal(readInt64LE(await tx.get(k("c"))), 99n);
        tx.set(k("fresh"), k("x"));
        assert.equal(text(await tx.get(k("fresh"))), "x");
        tx.clear(k("gone"));
        throw new Error("rolled back");
      });
      const last = b.transact(async (
        tx,
      ) => [readInt64LE(await tx.get(k("c"))), await tx.get(k("fresh"))]);
      const before = b.stats.physicalCommits;
      gate.resolve();
      await first;
      await assert.rejects(failing, /rolled back/);
      assert.deepEqual(await last, [1n, undefined]);
      assert.equal(b.stats.physicalCommits - before, 1, "one group");
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("c")))), 1n);
      assert.equal(await b.transact((tx) => tx.get(k("fresh"))), undefined);
    }));

  it("forgets what a lone transaction that failed wrote", () =>
    withSqlite(async (b) => {
      await b.transact((tx) => tx.set(k("c"), k("kept")));
      assert.equal(text(await b.transact((tx) => tx.get(k("c")))), "kept");
      await assert.rejects(
        b.transact(async (tx) => {
          tx.set(k("c"), k("lost"));
          assert.equal(text(await tx.get(k("c"))), "lost");
          tx.add(k("counter"), 5);
          await tx.get(k("counter"));
          throw new Error("fails");
        }),
        /fails/,
      );
      assert.equal(text(await b.transact((tx) => tx.get(k("c")))), "kept");
      assert.equal(await b.transact((tx) => tx.get(k("counter"))), undefined);
    }));

  it("forgets the rows of a cleared range", () =>
    withSqlite(async (b) => {
      await b.transact((tx) => {
        for (const s of ["r/1", "r/2", "s/1"]) tx.set(k(s), k(s));
      });
      const read = (tx: Transaction) =>
        Promise.all(["r/1", "r/2", "s/1"].map(async (s) => text(await tx.get(k(s)))));
      assert.deepEqual(await b.transact(read), ["r/1", "r/2", "s/1"]);
      assert.deepEqual(
        await b.transact(async (tx) => {
          tx.clearRange(k("r/"), k("r0"));
          return await read(tx);
        }),
        [undefined, undefined, "s/1"],
      );
      assert.deepEqual(await b.transact(read), [undefined, undefined, "s/1"]);
    }));
});
