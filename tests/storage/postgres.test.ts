import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  BackendUnavailableError,
  CommitUnknownResultError,
  int64LE,
  LimitExceededError,
  openPostgresBackend,
  readInt64LE,
  type Transaction,
  TransactionError,
  ValidationError,
} from "../../mod.ts";
import { registerConformance } from "./conformance.ts";
import {
  type AdminSql,
  dropTestSchema,
  openTestPostgres,
  postgresSkip,
  postgresUrl,
  startPostgresProxy,
  testSchemaName,
  withAdmin,
} from "./_postgres.ts";
import { deadline, waitFor } from "../_helpers.ts";

if (postgresSkip) console.log(`PostgreSQL tests skipped: ${postgresSkip}`);

registerConformance(
  "postgres",
  (o) => openTestPostgres(o),
  { optimistic: true, staleReadsConflict: false },
  postgresSkip,
);

const enc = new TextEncoder();
const k = (s: string) => enc.encode(s);

describe("openPostgresBackend", () => {
  it("rejects missing, unknown and mistyped options, naming the field", async () => {
    await assert.rejects(
      openPostgresBackend({} as never),
      (e) => e instanceof ValidationError && /options\.url/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "mysql://x" }),
      (e) => e instanceof ValidationError && /options\.url/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "postgres://x", schema: "Bad-Name" }),
      (e) => e instanceof ValidationError && /options\.schema/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "postgres://x", limits: { maxKeySize: 10_000 } }),
      (e) => e instanceof ValidationError && /options\.limits\.maxKeySize/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "postgres://x", nope: 1 } as never),
      (e) => e instanceof ValidationError && /options\.nope/.test(e.message),
    );
  });

  it("refuses a URL that does not parse as options.url, never showing its password", async () => {
    const cases = [
      "postgres://app:s3cretPW@127.0.0.1:99999/app", // port out of range
      "postgres://app:s3cretPW@127.0.0.1:notaport/app",
      "postgres://app:s3cretPW@[::1/app", // unclosed IPv6 bracket
      "postgres://app:s3cretPW@h1:5432,h2:x/app", // a second host's port
    ];
    for (const url of cases) {
      await assert.rejects(openPostgresBackend({ url }), (e) => {
        assert.ok(e instanceof ValidationError, `${url}: ${e}`);
        assert.match(e.message, /options\.url/);
        assert.match(e.message, /Expected a URL postgres:\/\/user:password@host:port\/database/);
        assert.match(e.message, /app:\*\*\*@/);
        assert.doesNotMatch(e.message, /s3cretPW/);
        return true;
      });
    }
  });

  it("fails with BackendUnavailableError when no server listens", async () => {
    // Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    await assert.rejects(
      openPostgresBackend({ url: "postgres://nobody@127.0.0.1:1/none" }),
      (e) => e instanceof BackendUnavailableError && /Cannot open PostgreSQL/.test(e.message),
    );
  });
});

describe("postgres backend", { skip: postgresSkip }, () => {
  /** Delta rows (`seq` above 0) of `key` in `schema` (to see adds and folds). */
  const countDeltas = (schema: string, key: Uint8Array) =>
    withAdmin(async (sql) => {
      const [row] = await sql.unsafe(
        `select count(*)::int as n from "${schema}".kv where key = $1 and seq > 0`,
        [key],
      );
      return row!.n as number;
    });

  it("keeps the declared limits: FoundationDB's, with keys of at most 2,600 bytes", async () => {
    const b = await openTestPostgres();
    try {
      assert.deepEqual({ ...b.limits }, {
        maxKeySize: 2_600,
        maxValueSize: 100_000,
        maxTransactionSize: 10_000_000,
        maxTransactionDuration: 5_000,
      });
      // An incompressible key of the largest size is indexable.
      const key = crypto.getRandomValues(new Uint8Array(b.limits.maxKeySize));
      await b.transact((tx) => tx.set(key, new Uint8Array(b.limits.maxValueSize)));
      assert.equal((await b.transact((tx) => tx.get(key)))?.length, 100_000);
    } finally {
      await b.close();
    }
  });

  it("rolls back a body that never settles at its limit and frees its connection", async () => {
    const schema = testSchemaName();
    // One connection: a timed-out body that kept it would block every later transaction.
    const b = await openTestPostgres({
      schema,
      maxConnections: 1,
      limits: { maxTransactionDuration: 300 },
    });
    const inTransaction = `application_name = 'dgen' and state like 'idle in transaction%' ` +
      `and query like '%"${schema}"%'`;
    try {
      let held: Transaction | undefined;
      const opened = Promise.withResolvers<void>();
      const hung = b.transact(async (tx) => {
        held = tx;
        tx.set(k("hung"), k("1"));
        // Sends the write and holds a server-side transaction open.
        await tx.get(k("hung"));
        opened.resolve();
        return await new Promise<never>(() => {});
      });
      hung.catch(() => {});
      await opened.promise;
      const open = await withAdmin((sql) =>
        sql.unsafe(`select count(*)::int as n from pg_stat_activity where ${inTransaction}`)
      );
      assert.equal(open[0]!.n, 1, "the body holds a server-side transaction");
      await assert.rejects(
        deadline(hung, 3000, "a body that never settles was never failed"),
        (e) => e instanceof LimitExceededError && e.code === "transaction_timeout",
      );
      // The connection came back to the pool (the next transaction gets it), rolled back.
      assert.equal(
        await deadline(b.transact((tx) => tx.get(k("hung"))), 2000, "the connection was kept"),
        undefined,
      );
      await waitFor(
        () =>
          withAdmin(async (sql) =>
            (await sql.unsafe(
              `select count(*)::int as n from pg_stat_activity where ${inTransaction}`,
            ))[0]!.n === 0
          ),
        2000,
        "the server-side transaction was left open",
      );
      // What the late body does throws, and nothing of it commits.
      assert.throws(() => held!.set(k("late"), k("1")));
      await assert.rejects(Promise.resolve().then(() => held!.get(k("hung"))));
      assert.deepEqual(await b.transact((tx) => tx.getRange(k("a"), k("z"))), []);
    } finally {
      await b.close();
    }
  });

  it("returns plain Uint8Arrays that own their bytes", async () => {
    const b = await openTestPostgres();
    try {
      await b.transact((tx) => tx.set(k("p"), k("value")));
      const [value, [row]] = await b.transact(async (tx) =>
        [await tx.get(k("p")), await tx.getRange(k("p"), k("q"))] as const
      );
      for (const bytes of [value!, row!.key, row!.value]) {
        assert.equal(Object.getPrototypeOf(bytes), Uint8Array.prototype);
        assert.equal(bytes.byteOffset, 0);
        assert.equal(bytes.buffer.byteLength, bytes.length);
      }
    } finally {
      await b.close();
    }
  });

  it("never makes concurrent adders conflict", async () => {
    const b = await openTestPostgres();
    try {
      let attempts = 0;
      await Promise.all(Array.from({ length: 30 }, () =>
        b.transact((tx) => {
          attempts++;
          tx.add(k("hits"), 1);
        })));
      assert.equal(attempts, 30, "an add was retried");
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("hits")))), 30n);
    } finally {
      await b.close();
    }
  });

  it("folds many adds into one row in the background, keeping the sum", async () => {
    const schema = testSchemaName();
    const b = await openTestPostgres({ schema });
    try {
      const key = k("folded");
      await b.transact((tx) => tx.set(key, int64LE(1000)));
      for (let i = 0; i < 70; i++) await b.transact((tx) => tx.add(key, 1));
      await waitFor(
        async () => (await countDeltas(schema, key)) < 10,
        10_000,
        "deltas were not folded",
        20,
      );
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(key))), 1070n);
      // A set replaces the additions before it.
      await b.transact((tx) => tx.add(key, 5));
      await b.transact((tx) => tx.set(key, int64LE(7)));
      assert.equal(await countDeltas(schema, key), 0);
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(key))), 7n);
    } finally {
      await b.close();
    }
  });

  it("reads adds on top of values in ranges, forward, reverse and limited", async () => {
    const b = await openTestPostgres();
    try {
      await b.transact((tx) => {
        tx.set(k("r/a"), int64LE(10));
        tx.set(k("r/c"), k("plain"));
        tx.set(k("r/d"), int64LE(5));
      });
      // Separate commits make separate delta rows; d gets more than a page of them.
      for (let i = 0; i < 3; i++) await b.transact((tx) => tx.add(k("r/a"), 1));
      for (let i = 0; i < 2; i++) await b.transact((tx) => tx.add(k("r/b"), 1));
      await b.transact((tx) => {
        for (let i = 0; i < 20; i++) tx.add(k("r/d"), 1);
      });
      const show = (rows: { key: Uint8Array; value: Uint8Array }[]) =>
        rows.map((r) =>
          `${new TextDecoder().decode(r.key)}=${
            r.value.length === 8 ? readInt64LE(r.value) : new TextDecoder().decode(r.value)
          }`
        );
      const all = ["r/a=13", "r/b=2", "r/c=plain", "r/d=25"];
      await b.transact(async (tx) => {
        assert.deepEqual(show(await tx.getRange(k("r/"), k("r0"))), all);
        assert.deepEqual(show(await tx.getRange(k("r/"), k("r0"), { limit: 2 })), all.slice(0, 2));
        assert.deepEqual(show(await tx.getRange(k("r/"), k("r0"), { limit: 3 })), all.slice(0, 3));
        assert.deepEqual(
          show(await tx.getRange(k("r/"), k("r0"), { reverse: true })),
          [...all].reverse(),
        );
        assert.deepEqual(
          show(await tx.getRange(k("r/"), k("r0"), { reverse: true, limit: 1 })),
          ["r/d=25"],
        );
        assert.deepEqual(
          show(await tx.getRange(k("r/"), k("r0"), { reverse: true, limit: 2 })),
          ["r/d=25", "r/c=plain"],
        );
        // Within the transaction, its own adds count too.
        tx.add(k("r/b"), 40);
        assert.deepEqual(show(await tx.getRange(k("r/b"), k("r/c"))), ["r/b=42"]);
      });
    } finally {
      await b.close();
    }
  });

  it("orders stamps as the commits serialize: a stale stamped transaction runs again", async () => {
    const b = await openTestPostgres();
    try {
      // B reads x, then A writes x and a stamped key and commits, then B writes a stamped key.
      // B's stamp would be after A's although B saw the state before A: B must run again.
      let runs = 0;
      const gate = Promise.withResolvers<void>();
      const read = Promise.withResolvers<void>();
      const late = b.transact(async (tx) => {
        runs++;
        const x = await tx.get(k("x"));
        read.resolve();
        if (runs === 1) await gate.promise;
        tx.setVersionstampedKey(k("q/"), new Uint8Array(), x ?? k("none"));
      });
      // B's snapshot is taken at its first read: A commits after it.
      await read.promise;
      await b.transact((tx) => {
        tx.set(k("x"), k("A"));
        tx.setVersionstampedKey(k("q/"), new Uint8Array(), k("first"));
      });
      gate.resolve();
      await late;
      assert.equal(runs, 2);
      const queue = await b.transact((tx) => tx.getRange(k("q/"), k("q0")));
      assert.deepEqual(queue.map((r) => new TextDecoder().decode(r.value)), ["first", "A"]);
    } finally {
      await b.close();
    }
  });

  describe("connection loss", () => {
    /** Terminates the sessions of `schema` that match `where`; resolves with how many. */
    const terminate = (sql: AdminSql, where: string) =>
      sql.unsafe(`select pg_terminate_backend(pid) from pg_stat_activity where ${where}`)
        .then((rows) => rows.length);

    it("fails an attempt whose connection dies before commit, retryably, applying nothing", async () => {
      const schema = testSchemaName();
      const b = await openTestPostgres({ schema });
      try {
        const reading = Promise.withResolvers<void>();
        const gate = Promise.withResolvers<void>();
        const attempt = b.transact(async (tx) => {
          await tx.get(k("x"));
          tx.set(k("y"), k("1"));
          reading.resolve();
          await gate.promise;
          // The next statement finds the connection gone.
          await tx.get(k("x"));
        }, { maxRetries: 0 });
        attempt.catch(() => {});
        await reading.promise;
        const killed = await withAdmin((sql) =>
          terminate(
            sql,
            `application_name = 'dgen' and state = 'idle in transaction' and query like '%"${schema}"%'`,
          )
        );
        assert.equal(killed, 1);
        gate.resolve();
        await assert.rejects(
          attempt,
          (e) =>
            e instanceof TransactionError && e.code === "connection_lost" && e.retryable &&
            !e.maybeCommitted,
        );
        assert.equal(await b.transact((tx) => tx.get(k("y"))), undefined);
        // With retries (the default), the same body commits once the connection is back.
        let runs = 0;
        let killedOnce = false;
        await b.transact(async (tx) => {
          runs++;
          await tx.get(k("x"));
          if (!killedOnce) {
            killedOnce = true;
            await withAdmin((sql) =>
              terminate(
                sql,
                `application_name = 'dgen' and state = 'idle in transaction' and query like '%"${schema}"%'`,
              )
            );
          }
          tx.add(k("z"), 1);
        });
        assert.equal(runs, 2);
        assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("z")))), 1n);
      } finally {
        await b.close();
      }
    });

    it("reports a connection lost during COMMIT as an unknown result", async () => {
      const schema = testSchemaName();
      const b = await openTestPostgres({ schema });
      try {
        await b.transact((tx) => tx.set(k("warm"), k("1")));
        await withAdmin(async (admin) => {
          // Hold the lock that stamped commits take, so the commit waits on the server.
          await admin.unsafe("begin");
          await admin.unsafe(`select 1 from "${schema}".meta where id = 1 for update`);
          const committing = b.transact(
            (tx) => tx.setVersionstampedKey(k("s/"), new Uint8Array(), k("v")),
            { maxRetries: 0 },
          );
          committing.catch(() => {});
          await waitFor(
            async () =>
              await terminate(
                admin,
                `application_name = 'dgen' and pg_backend_pid() = any(pg_blocking_pids(pid))`,
              ) > 0,
            3_000,
            "the commit never waited for the lock",
            10,
          );
          await assert.rejects(
            committing,
            (e) => e instanceof CommitUnknownResultError && e.maybeCommitted && e.retryable,
          );
          await admin.unsafe("rollback");
        });
        // It was in fact not applied, and the backend carries on.
        assert.deepEqual(await b.transact((tx) => tx.getRange(k("s/"), k("s0"))), []);
        await b.transact((tx) => tx.setVersionstampedKey(k("s/"), new Uint8Array(), k("v")));
        assert.equal((await b.transact((tx) => tx.getRange(k("s/"), k("s0")))).length, 1);
      } finally {
        await b.close();
      }
    });

    it("keeps watches when the listening connection is lost: no missed or false wake-ups", async () => {
      const schema = testSchemaName();
      const b = await openTestPostgres({ schema });
      try {
        await b.transact((tx) => {
          tx.set(k("w/changed"), k("0"));
          tx.set(k("w/same"), k("0"));
        });
        const [changed, same] = await b.transact(async (tx) => {
          await tx.get(k("w/changed"));
          await tx.get(k("w/same"));
          return [tx.watch(k("w/changed")), tx.watch(k("w/same"))];
        });
        const listenerOf = `application_name = 'dgen-listen' and query like '%dgen_${schema}%'`;
        await waitFor(
          () =>
            withAdmin(async (sql) =>
              (await sql.unsafe(`select 1 from pg_stat_activity where ${listenerOf}`)).length === 1
            ),
          5_000,
          "the listener did not connect",
          10,
        );
        const before = await withAdmin(async (sql) => {
          const rows = await sql.unsafe(`select pid from pg_stat_activity where ${listenerOf}`);
          await terminate(sql, listenerOf);
          return rows[0]!.pid;
        });
        // Written while the listener may still be away: the re-check after it reconnects (or
        // the notification, if it is back already) must wake the watch.
        await b.transact((tx) => tx.set(k("w/changed"), k("1")));
        assert.equal(await deadline(changed.promise, 10_000, "watch missed a write"), true);
        await waitFor(
          () =>
            withAdmin(async (sql) => {
              const rows = await sql.unsafe(`select pid from pg_stat_activity where ${listenerOf}`);
              return rows.length === 1 && rows[0]!.pid !== before;
            }),
          10_000,
          "the listener did not reconnect",
          20,
        );
        // The unchanged key's watch survived the reconnection without firing, and still works.
        let fired = false;
        same.promise.then(() => fired = true);
        await new Promise((r) => setTimeout(r, 200));
        assert.equal(fired, false, "a watch on an unchanged key fired after the reconnection");
        await b.transact((tx) => tx.set(k("w/same"), k("0")));
        assert.equal(await deadline(same.promise, 5_000, "watch did not fire"), true);
      } finally {
        await b.close();
      }
    });

    it("replaces a listening connection that went silent, waking watches within about 10 s", async () => {
      // The listener's packets vanish (no FIN, no RST): only its own checks can notice.
      const proxy = await startPostgresProxy();
      const schema = testSchemaName();
      const b = await openPostgresBackend({ url: proxy.url, schema });
      try {
        await b.transact((tx) => tx.set(k("w"), k("0")));
        const w = await b.transact(async (tx) => {
          await tx.get(k("w"));
          return tx.watch(k("w"));
        });
        await waitFor(
          () =>
            withAdmin(async (sql) =>
              (await sql.unsafe(
                `select 1 from pg_stat_activity where application_name = 'dgen-listen' and query like '%dgen_${schema}%'`,
              )).length === 1
            ),
          5_000,
          "the listener did not connect",
          10,
        );
        const listeners = () =>
          proxy.connections.filter((c) => c.applicationName === "dgen-listen");
        assert.equal(listeners().length, 1);
        listeners()[0]!.silence();
        const silenced = performance.now();
        await b.transact((tx) => tx.set(k("w"), k("1")));
        assert.equal(await deadline(w.promise, 15_000, "the watch missed the write"), true);
        const took = performance.now() - silenced;
        assert.ok(took < 13_000, `the watch fired after ${Math.round(took)} ms`);
        assert.equal(listeners().length, 2, "the listener did not reconnect");
        // The new listener hears commits as usual.
        const again = await b.transact(async (tx) => {
          await tx.get(k("w"));
          return tx.watch(k("w"));
        });
        await new Promise((r) => setTimeout(r, 100));
        await b.transact((tx) => tx.set(k("w"), k("2")));
        assert.equal(await deadline(again.promise, 3_000, "the new listener missed a write"), true);
      } finally {
        await b.close();
        await proxy.close();
        await dropTestSchema(schema);
      }
    });
  });

  it("opens a schema made beforehand for a role with only CREATE and USAGE on it", async () => {
    const schema = testSchemaName();
    const role = `${schema}_app`;
    await withAdmin(async (sql) => {
      await sql.unsafe(`create role "${role}" login`);
      await sql.unsafe(`create schema "${schema}"`);
      await sql.unsafe(`grant create, usage on schema "${schema}" to "${role}"`);
    });
    try {
      const url = new URL(postgresUrl!);
      url.username = role;
      url.password = "";
      // The role has no CREATE on the database (only PUBLIC's CONNECT and TEMPORARY).
      const b = await openPostgresBackend({ url: url.href, schema });
      try {
        await b.transact((tx) => tx.set(k("a"), k("1")));
        assert.deepEqual(await b.transact((tx) => tx.get(k("a"))), k("1"));
      } finally {
        await b.close();
      }
    } finally {
      await dropTestSchema(schema);
      await withAdmin(async (sql) => {
        await sql.unsafe(`drop owned by "${role}"`);
        await sql.unsafe(`drop role "${role}"`);
      });
    }
  });

  it("retries a transaction that ran out of shared memory (53200), as a transient failure", async () => {
    const schema = testSchemaName();
    const b = await openTestPostgres({ schema });
    try {
      // A trigger that fails the first write of key "f" as a full predicate lock table would.
      await withAdmin(async (sql) => {
        await sql.unsafe(`create sequence "${schema}".faults`);
        await sql.unsafe(`create function "${schema}".fault() returns trigger language plpgsql as $$
          begin
            if nextval('"${schema}".faults') = 1 then
              raise exception 'out of shared memory' using errcode = '53200',
                hint = 'You might need to increase max_pred_locks_per_transaction.';
            end if;
            return new;
          end $$`);
        await sql.unsafe(
          `create trigger fault before insert on "${schema}".kv for each row when (new.key = '\\x66'::bytea) execute function "${schema}".fault()`,
        );
      });
      await assert.rejects(
        b.transact((tx) => tx.set(k("f"), k("1")), { maxRetries: 0 }),
        (e) =>
          e instanceof TransactionError && e.code === "resource_exhausted" && e.retryable &&
          !e.maybeCommitted && /53200/.test(e.message),
      );
      assert.equal(await b.transact((tx) => tx.get(k("f"))), undefined);
      await withAdmin((sql) => sql.unsafe(`alter sequence "${schema}".faults restart`));
      let runs = 0;
      await b.transact((tx) => {
        runs++;
        tx.set(k("f"), k("2"));
      });
      assert.equal(runs, 2);
      assert.deepEqual(await b.transact((tx) => tx.get(k("f"))), k("2"));
    } finally {
      await b.close();
    }
  });

  it("does not wake a watch for its own transaction's write", async () => {
    const b = await openTestPostgres();
    try {
      const watchOn = (key: string) =>
        b.transact(async (tx) => {
          await tx.get(k(key));
          return tx.watch(k(key));
        });
      // The listener delivers notifications in commit order: once the barrier's watch (on a
      // key written after the watched commit) fires, the watched commit's notification has
      // been handled.
      const barrier = await watchOn("barrier");
      const warm = await watchOn("warm");
      await b.transact((tx) => tx.set(k("warm"), k("1")));
      await deadline(warm.promise, 5_000, "the listener is not up");
      const own = await b.transact((tx) => {
        tx.set(k("own"), k("1"));
        return tx.watch(k("own"));
      });
      let fired = false;
      own.promise.then((v) => fired = v);
      await b.transact((tx) => tx.set(k("barrier"), k("1")));
      assert.equal(await deadline(barrier.promise, 5_000, "barrier watch"), true);
      assert.equal(fired, false, "the watch fired for its own transaction's write");
      await b.transact((tx) => tx.set(k("own"), k("2")));
      assert.equal(await deadline(own.promise, 5_000, "watch missed a later write"), true);
    } finally {
      await b.close();
    }
  });

  it("upgrades a format 1 schema (deltas in a table of their own) in place", async () => {
    const schema = testSchemaName();
    // The layout format 1 created, with a value, a value with pending adds, and adds alone.
    await withAdmin(async (sql) => {
      for (
        const text of [
          `create schema "${schema}"`,
          `create table "${schema}".kv (key bytea primary key, value bytea not null)`,
          `create table "${schema}".deltas (key bytea not null, seq bigint not null, operand bytea not null, primary key (key, seq))`,
          `create table "${schema}".meta (id int primary key, format int not null)`,
          `insert into "${schema}".meta values (1, 1)`,
          `create table "${schema}".stamps (stamp bigint primary key)`,
          `create sequence "${schema}".stamp_seq`,
          `create sequence "${schema}".delta_seq start 10`,
        ]
      ) await sql.unsafe(text);
      await sql.unsafe(`insert into "${schema}".kv values ($1, $2), ($3, $4)`, [
        k("plain"),
        k("hello"),
        k("counted"),
        int64LE(100),
      ]);
      await sql.unsafe(
        `insert into "${schema}".deltas values ($1, 1, $2), ($1, 2, $3), ($4, 3, $5)`,
        [
          k("counted"),
          int64LE(5),
          int64LE(-2),
          k("adds only"),
          int64LE(7),
        ],
      );
    });
    // Two backends open it at once: one upgrades, the other waits and finds format 2.
    const [one, two] = await Promise.all([
      openTestPostgres({ schema, keepSchema: true }),
      openTestPostgres({ schema }),
    ]);
    try {
      const read = (key: string) => two.transact((tx) => tx.get(k(key)));
      assert.equal(new TextDecoder().decode(await read("plain")), "hello");
      assert.equal(readInt64LE(await read("counted")), 103n);
      assert.equal(readInt64LE(await read("adds only")), 7n);
      await one.transact((tx) => tx.add(k("counted"), 1));
      assert.equal(readInt64LE(await read("counted")), 104n);
      const [meta] = await withAdmin((sql) =>
        sql.unsafe(
          `select format, to_regclass('"${schema}".deltas')::text as deltas from "${schema}".meta`,
        )
      );
      assert.deepEqual(meta, { format: 2, deltas: null });
    } finally {
      await one.close();
      await two.close();
    }
  });

  it("refuses a schema of an unknown format, naming it", async () => {
    const schema = testSchemaName();
    await withAdmin(async (sql) => {
      await sql.unsafe(`create schema "${schema}"`);
      await sql.unsafe(`create table "${schema}".meta (id int primary key, format int not null)`);
      await sql.unsafe(`insert into "${schema}".meta values (1, 99)`);
    });
    try {
      await assert.rejects(
        openTestPostgres({ schema }),
        (e: unknown) =>
          e instanceof BackendUnavailableError &&
          /format 99; this version reads format 2/.test(e.message),
      );
    } finally {
      await withAdmin((sql) => sql.unsafe(`drop schema "${schema}" cascade`));
    }
  });

  it("lets backends in one schema share data and see each other's commits", async () => {
    const schema = testSchemaName();
    const one = await openTestPostgres({ schema, keepSchema: true });
    const two = await openTestPostgres({ schema });
    try {
      const watch = await one.transact(async (tx) => {
        await tx.get(k("shared"));
        return tx.watch(k("shared"));
      });
      await two.transact((tx) => tx.set(k("shared"), k("hello")));
      assert.equal(await deadline(watch.promise, 5_000, "watch across backends"), true);
      assert.equal(
        new TextDecoder().decode(await one.transact((tx) => tx.get(k("shared")))),
        "hello",
      );
    } finally {
      await one.close();
      await two.close();
    }
  });
});
