import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  defineServer,
  MigrationError,
  noreply,
  reply,
  ServerGoneError,
  ServerStoppedError,
  start,
  ValidationError,
} from "../../mod.ts";
import { MEMBERSHIP, ServerKeys } from "../../lib/server/keys.ts";
import { equalBytes } from "../../lib/bytes.ts";
import { decodeMeta } from "../../lib/server/records.ts";
import { subtreeEnd } from "../../lib/tuple.ts";

const MAX_KEY = new Uint8Array([0xff, 0xff]);
import { backends, fresh } from "./_backends.ts";
import { Counter, Ledger, Typed } from "./_defs.ts";
import { deadline, waitFor } from "../_helpers.ts";

for (const b of backends) {
  describe(`server basics on ${b.name}`, { skip: b.skip }, () => {
    it("keeps state across instances: the seed's counter example", async () => {
      const { backend, tenant } = await fresh(b);
      const c = await start(Counter, [], { tenant });
      assert.equal(await c.call("increment"), "ok");
      assert.equal(await c.call("increment"), "ok");
      assert.equal(await c.call("value"), 2);
      await c.stop();
      const c2 = await start(Counter, [], { tenant });
      assert.equal(await c2.call("value"), 2);
      await c2.stop();
      await backend.close();
    });

    it("stores a state that changes from 0 to -0 (a different value)", async () => {
      const { backend, tenant } = await fresh(b);
      const Signed = defineServer({
        name: "signed",
        init: () => 0,
        handleCall: {
          set: (v: number) => reply("ok", v),
          get: (_: undefined, _from, state: number) => reply(state, state),
        },
      });
      const s = await start(Signed, [], { tenant, cache: false });
      await s.call("set", -0);
      assert.ok(Object.is(await s.call("get"), -0), "the state read back is -0");
      await s.stop();
      await backend.close();
    });

    it("runs init on restart but keeps the stored state unless reset", async () => {
      const { backend, tenant } = await fresh(b);
      const a = await start(Counter, [5], { tenant });
      assert.equal(await a.call("value"), 5);
      await a.call("add", 1);
      await a.stop();
      const b2 = await start(Counter, [100], { tenant });
      assert.equal(await b2.call("value"), 6);
      await b2.stop();
      const c = await start(Counter, [100], { tenant, reset: true });
      assert.equal(await c.call("value"), 100);
      await c.stop();
      await backend.close();
    });

    it("persists nothing when init throws on first start", async () => {
      const { backend, tenant } = await fresh(b);
      const Broken = defineServer({
        name: "broken",
        init: (): number => {
          throw new Error("init failed");
        },
      });
      await assert.rejects(start(Broken, [], { tenant }), /init failed/);
      const rows = await tenant.transact((tx) =>
        tx.getRange(new Uint8Array([0]), new Uint8Array())
      );
      assert.deepEqual(rows, []);
      await backend.close();
    });

    it("resolves cast only once the message is durably queued, and applies it", async () => {
      const { backend, tenant } = await fresh(b);
      const sender = await start(Counter, [], { tenant, consume: false });
      await sender.cast("bump", 3);
      // Nothing consumes yet: the message must be in the durable queue.
      const keys = new ServerKeys("counter");
      const queued = await tenant.transact((tx) => tx.getRange(keys.queue, keys.queueEnd));
      assert.equal(queued.length, 1);
      const consumer = await start(Counter, [], { tenant });
      assert.equal(await sender.call("value"), 3);
      await sender.stop();
      await consumer.stop();
      await backend.close();
    });

    it("enqueues castMany atomically and applies it in order", async () => {
      const { backend, tenant } = await fresh(b);
      const l = await start(Ledger, [], { tenant });
      await l.castMany([["record", "a"], ["record", "b"], ["record", "c"]]);
      await l.cast("record", "d");
      assert.equal(await l.call("total"), 4);
      const state = await l.priorityCall("total");
      assert.equal(state, 4);
      await assert.rejects(
        l.castMany([["record", "e"], ["nope" as "record", "f"]]),
        (e) => e instanceof ValidationError && /messages\[1\]\.name/.test(e.message),
      );
      assert.equal(await l.call("total"), 4, "nothing of a rejected castMany is enqueued");
      await l.stop();
      await backend.close();
    });

    it("calls through a non-consuming instance travel through the backend", async () => {
      const { backend, tenant } = await fresh(b);
      const consumer = await start(Counter, [], { tenant });
      const sender = await start(Counter, [], { tenant, consume: false });
      assert.equal(await sender.call("add", 10), 10);
      assert.equal(await consumer.call("value"), 10);
      await sender.stop();
      await consumer.stop();
      await backend.close();
    });

    it("serves a server id other than the definition's name", async () => {
      const { backend, tenant } = await fresh(b);
      const a = await start(Counter, [], { tenant, id: "a" });
      const bb = await start(Counter, [], { tenant, id: "b" });
      await a.call("add", 1);
      await bb.call("add", 2);
      assert.equal(await a.call("value"), 1);
      assert.equal(await bb.call("value"), 2);
      assert.equal(a.id, "a");
      await a.stop();
      await bb.stop();
      await backend.close();
    });

    it("refuses to start another definition on an existing server id", async () => {
      const { backend, tenant } = await fresh(b);
      const ledger = await start(Ledger, [], { tenant, id: "x" });
      await ledger.call("record", "a");
      for (const reset of [false, true]) {
        await assert.rejects(
          start(Counter, [], { tenant, id: "x", reset }),
          (e) =>
            e instanceof ValidationError && e.issues[0]!.path === "definition.name" &&
            /started from the definition 'ledger', not 'counter'/.test(e.message),
        );
      }
      // Nothing changed: the ledger's state is whole and it still serves.
      assert.equal(await ledger.call("record", "b"), 2);
      assert.equal(await ledger.priorityCall("total"), 2);
      // Killed, the id can serve another definition.
      await ledger.kill();
      const counter = await start(Counter, [], { tenant, id: "x" });
      assert.equal(await counter.call("add", 5), 5);
      await counter.stop();
      await backend.close();
    });

    it("rejects invalid input at the call site and enqueues nothing", async () => {
      const { backend, tenant } = await fresh(b);
      const t = await start(Typed, [], { tenant, consume: false });
      await assert.rejects(
        t.call("rename", ""),
        (e) => e instanceof ValidationError && /arg of call 'rename'/.test(e.message),
      );
      await assert.rejects(t.cast("setN", "3" as unknown as number), ValidationError);
      await assert.rejects(
        t.call("nope" as "rename", "x"),
        (e) =>
          e instanceof ValidationError && /'rename'/.test(e.message) && /"nope"/.test(e.message),
      );
      await assert.rejects(
        t.cast("setN", (() => 1) as unknown as number),
        ValidationError,
      );
      const keys = new ServerKeys("typed");
      const queued = await tenant.transact((tx) => tx.getRange(keys.queue, keys.queueEnd));
      assert.equal(queued.length, 0);
      await t.stop();
      await backend.close();
    });

    it("validates start's arguments, naming the field", async () => {
      const { backend, tenant } = await fresh(b);
      await assert.rejects(
        start(Counter, [], { tenant, batchSize: 0 }),
        (e) => e instanceof ValidationError && /options\.batchSize/.test(e.message),
      );
      await assert.rejects(
        start(Counter, [], { tenant, bogus: 1 } as never),
        (e) => e instanceof ValidationError && /options\.bogus/.test(e.message),
      );
      await assert.rejects(
        start(Counter, [], {} as never),
        (e) => e instanceof ValidationError && /options\.tenant/.test(e.message),
      );
      await assert.rejects(
        start({} as typeof Counter, [], { tenant }),
        (e) => e instanceof ValidationError && /definition/.test(e.message),
      );
      await assert.rejects(
        start(Counter, 5 as never, { tenant }),
        (e) => e instanceof ValidationError && /args/.test(e.message),
      );
      await assert.rejects(start(Counter, [], { tenant, lockLease: 1.5 }), ValidationError);
      await backend.close();
    });

    it("validates definitions, naming the field", () => {
      assert.throws(
        () => defineServer({ name: "", init: () => 0 }),
        (e) => e instanceof ValidationError && /spec\.name/.test(e.message),
      );
      assert.throws(
        () => defineServer({ name: "x", init: () => 0, handleCall: { a: 5 as never } }),
        (e) => e instanceof ValidationError && /spec\.handleCall\.a/.test(e.message),
      );
      assert.throws(
        () => defineServer({ name: "x", init: () => 0, schemas: { state: {} as never } }),
        (e) => e instanceof ValidationError && /spec\.schemas\.state/.test(e.message),
      );
      assert.throws(
        () => defineServer({ name: "x", init: () => 0, version: 2 }),
        (e) => e instanceof ValidationError && /spec\.migrate/.test(e.message),
      );
    });

    it("fails a handler whose state or reply breaks its schema, without writing", async () => {
      const { backend, tenant } = await fresh(b);
      const t = await start(Typed, [], { tenant, deadLetterThreshold: 1 });
      await assert.rejects(t.call("broken"), { code: "dead_letter" });
      await assert.rejects(t.call("corrupt"), { code: "dead_letter" });
      assert.equal(await t.call("rename", "y"), "x");
      await t.stop();
      await backend.close();
    });

    it("migrates state written by an older version", async () => {
      const { backend, tenant } = await fresh(b);
      const V1 = defineServer({
        name: "m",
        init: () => 7,
        handleCall: { get: (_: undefined, _f, s: number) => reply(s, s) },
      });
      const v1 = await start(V1, [], { tenant });
      await v1.stop();
      const V2 = defineServer({
        name: "m",
        version: 2,
        init: () => ({ count: 0 }),
        migrate: (from, old) => ({ count: from === 1 ? (old as number) * 10 : 0 }),
        handleCall: {
          get: (_: undefined, _f, s: { count: number }) => reply(s.count, s),
        },
      });
      const v2 = await start(V2, [], { tenant });
      assert.equal(await v2.call("get"), 70);
      await v2.stop();
      const again = await start(V2, [], { tenant });
      assert.equal(await again.call("get"), 70, "migrated once, stored with the new version");
      await again.stop();
      await assert.rejects(start(V1, [], { tenant }), { code: "codec" });
      await backend.close();
    });

    it("reports a failed migrate as a MigrationError, writes nothing, and keeps the creation time", async () => {
      const { backend, tenant } = await fresh(b);
      const name = "mig";
      const V1 = defineServer({
        name,
        init: () => 7,
        handleCall: { get: (_: undefined, _f, s: unknown) => reply(s, s) },
      });
      await (await start(V1, [], { tenant })).stop();
      const keys = new ServerKeys(name);
      const snapshot = () => tenant.transact((tx) => tx.getRange(keys.root, subtreeEnd(keys.root)));
      const meta = async () =>
        decodeMeta((await tenant.transact((tx) => tx.get(keys.meta)))!, keys.meta);
      const before = await snapshot();
      const created = (await meta()).created;
      const failing = (migrate: (from: number, old: unknown) => unknown) =>
        defineServer({
          name,
          version: 2,
          init: () => 0,
          migrate,
          handleCall: { get: (_: undefined, _f, s: unknown) => reply(s, s) },
        });
      for (
        const migrate of [
          () => {
            throw new Error("no field 'n'");
          },
          () => {
            throw "a string";
          },
          () => Promise.reject(new TypeError("async")),
        ]
      ) {
        await assert.rejects(
          start(failing(migrate), [], { tenant }),
          (e) =>
            e instanceof MigrationError && e.code === "migration" && e.fromVersion === 1 &&
            e.toVersion === 2 && e.message.includes(`server '${name}'`) && e.cause !== undefined,
        );
        assert.deepEqual(await snapshot(), before, "nothing written");
      }
      // A migration rewrites the meta record with the new version, not a new creation time.
      const ok = await start(failing((_from, old) => ({ n: old })), [], { tenant });
      assert.deepEqual(await ok.call("get"), { n: 7 });
      await ok.stop();
      assert.equal((await meta()).version, 2);
      assert.equal((await meta()).created, created);
      await backend.close();
    });

    it("stops a consumer of older code once newer code migrated its server ('superseded')", async () => {
      const { backend, tenant } = await fresh(b);
      const V1 = defineServer({
        name: "up",
        init: () => 0,
        handleCall: { get: (_: undefined, _f, s: number) => reply(s, s) },
        handleCast: { bump: (_: undefined, s: number) => noreply(s + 1) },
      });
      const V2 = defineServer({
        name: "up",
        version: 2,
        init: () => ({ count: 0 }),
        migrate: (_from, old) => ({ count: old as number }),
        handleCall: { get: (_: undefined, _f, s: { count: number }) => reply(s, s) },
        handleCast: {
          bump: (_: undefined, s: { count: number }) => noreply({ count: s.count + 1 }),
        },
      });
      const old = await start(V1, [], { tenant });
      await old.cast("bump");
      assert.equal(await old.call("get"), 1);
      // A rolling upgrade: the new code's first instance migrates; the old consumer still runs.
      const sender = await start(V2, [], { tenant, consume: false });
      await sender.cast("bump");
      const logged = console.error;
      console.error = () => {};
      try {
        assert.equal(
          await deadline(old.stopped, 10_000, "the old consumer kept going"),
          "superseded",
        );
      } finally {
        console.error = logged;
      }
      const neu = await start(V2, [], { tenant });
      assert.deepEqual(await neu.call("get", undefined, { timeout: 10_000 }), { count: 2 });
      await assert.rejects(old.call("get"), ServerStoppedError);
      await neu.stop();
      await sender.stop();
      await backend.close();
    });

    it("replaces the state with reset: true without reading it (unmigratable or newer)", async () => {
      const { backend, tenant } = await fresh(b);
      const name = "rst";
      const def = (version: number, migrate?: () => number) =>
        defineServer({
          name,
          version,
          init: (n: number = version * 100) => n,
          migrate,
          handleCall: { get: (_: undefined, _f, s: number) => reply(s, s) },
        });
      const broken = (): number => {
        throw new Error("cannot migrate");
      };
      await (await start(def(1), [], { tenant })).stop();
      await assert.rejects(start(def(2, broken), [], { tenant }), MigrationError);
      let migrated = 0;
      const counting = def(2, () => {
        migrated++;
        return broken();
      });
      const r2 = await start(counting, [5], { tenant, reset: true });
      assert.equal(await r2.call("get"), 5);
      assert.equal(migrated, 0, "the discarded state was not migrated");
      await r2.stop();
      // A state written by newer code is replaced too; the meta record takes this version.
      await (await start(def(3, () => 0), [], { tenant })).stop();
      await assert.rejects(start(def(2, broken), [], { tenant }), { code: "codec" });
      const r3 = await start(def(2, broken), [6], { tenant, reset: true });
      assert.equal(await r3.call("get"), 6);
      await r3.stop();
      const again = await start(def(2, broken), [], { tenant });
      assert.equal(await again.call("get"), 6, "stored with version 2");
      await again.stop();
      await backend.close();
    });

    it("refuses an id whose keys would not fit the backend's, naming options.id", async () => {
      const { backend, tenant } = await fresh(b);
      const limit = backend.limits.maxKeySize;
      // 1,000 characters pass the schema's length; in UTF-8 they may be 3,000 bytes or more.
      const tooLong = "漢".repeat(Math.min(1000, Math.ceil(limit / 3)));
      if (new TextEncoder().encode(tooLong).length > limit - 40) {
        await assert.rejects(
          start(Counter, [], { tenant, id: tooLong }),
          (e) => e instanceof ValidationError && /options\.id/.test(e.message),
        );
        const rows = await tenant.transact((tx) => tx.getRange(new Uint8Array(), MAX_KEY));
        assert.deepEqual(rows, [], "nothing written");
      }
      // An id as long as fits works on every path that writes keys with it.
      let n = Math.min(1000, Math.floor(limit / 3));
      while (n > 0) {
        const id = "漢".repeat(n);
        try {
          const ref = await start(Counter, [], { tenant, id });
          const sender = await start(Counter, [], { tenant, id, consume: false });
          await sender.cast("bump", 1);
          assert.equal(await sender.call("add", 1), 2, "a queued call with a reply slot");
          assert.equal(await ref.call("add", 1), 3, "an inline call");
          assert.equal(await ref.priorityCall("value"), 3);
          await sender.stop();
          await ref.stop();
          break;
        } catch (e) {
          if (!(e instanceof ValidationError)) throw e;
          n -= 5;
        }
      }
      assert.ok(n > 0);
      await backend.close();
    });

    it("refuses a lock lease longer than a timer can wait", async () => {
      const { backend, tenant } = await fresh(b);
      await assert.rejects(
        start(Counter, [], { tenant, lockLease: 2 ** 31 }),
        (e) => e instanceof ValidationError && /options\.lockLease/.test(e.message),
      );
      const ok = await start(Counter, [], { tenant, lockLease: 2 ** 31 - 1 });
      await ok.stop();
      await backend.close();
    });

    it("stop ends this instance only; kill erases the durable server", async () => {
      const { backend, tenant } = await fresh(b);
      const a = await start(Counter, [], { tenant });
      const other = await start(Counter, [], { tenant });
      const sender = await start(Counter, [], { tenant, consume: false });
      await a.call("add", 4);
      await a.stop();
      assert.equal(await a.stopped, "stopped");
      await assert.rejects(a.call("value"), ServerStoppedError);
      assert.equal(await other.call("value"), 4);
      await other.cast("bump", 1);
      await other.kill();
      const rows = await tenant.transact((tx) =>
        tx.getRange(new Uint8Array([0]), new Uint8Array())
      );
      // Only the tenant's membership counter (bumped by the kill) remains.
      const leftovers = rows.filter((r) => !equalBytes(r.key, MEMBERSHIP));
      assert.deepEqual(leftovers, [], "nothing of the server is left");
      // A sending instance of the killed server is told it is gone, with a public error.
      await assert.rejects(sender.call("value"), (e) => e instanceof ServerGoneError);
      await sender.stop();
      const c = await start(Counter, [9], { tenant });
      assert.equal(await c.call("value"), 9, "a killed server starts afresh");
      await c.stop();
      await backend.close();
    });

    it("kills only its own server when another id extends its id with a NUL", async () => {
      const { backend, tenant } = await fresh(b);
      const x = await start(Counter, [], { tenant, id: "x" });
      const xy = await start(Counter, [], { tenant, id: "x\0y" });
      await x.call("add", 1);
      await xy.call("add", 2);
      await x.kill();
      assert.equal(await xy.call("value"), 2, "the other server's state is whole");
      assert.equal(await xy.priorityCall("value"), 2);
      await xy.stop();
      await backend.close();
    });

    it("stores a Map or Set changed in place, and forgets the change of a failed attempt", async () => {
      const { backend, tenant } = await fresh(b);
      let failNext = false;
      interface Tags {
        tags: Set<string>;
        counts: Map<string, number>;
      }
      const Tagger = defineServer({
        name: "tagger",
        init: (): Tags => ({ tags: new Set(), counts: new Map() }),
        handleCast: {
          // Changes the state's Set and Map in place and returns the same state object.
          tag: (t: string, s: Tags) => {
            s.tags.add(t);
            s.counts.set(t, (s.counts.get(t) ?? 0) + 1);
            if (failNext) {
              failNext = false;
              throw new Error("after the change, once");
            }
            return noreply(s);
          },
        },
        handleCall: {
          get: (_: undefined, _from, s: Tags) => reply([[...s.tags], [...s.counts]], s),
        },
      });
      const ref = await start(Tagger, [], { tenant });
      await ref.cast("tag", "a");
      failNext = true;
      await ref.cast("tag", "b"); // its first attempt throws after the change
      await waitFor(async () => (await ref.call("get"))[0]?.length === 2, 5_000, "not retried");
      const expected = [["a", "b"], [["a", 1], ["b", 1]]];
      assert.deepEqual(await ref.call("get"), expected, "the failed attempt's change is gone");
      // What is stored, read by another instance without a cache.
      const reader = await start(Tagger, [], { tenant, consume: false, cache: false });
      assert.deepEqual(await reader.priorityCall("get"), expected);
      await reader.stop();
      await ref.stop();
      await backend.close();
    });

    it("keeps a batch's result when a Map changed in place was then replaced by a copy", async () => {
      const { backend, tenant } = await fresh(b);
      type Op = { set: string } | { drop: string };
      const Keys = defineServer({
        name: "keys",
        init: () => ({ m: new Map([["k", 1]]) }),
        handleCast: {
          edit: (op: Op, s: { m: Map<string, number> }) => {
            if ("set" in op) {
              s.m.set(op.set, 1); // in place
              return noreply({ m: s.m });
            }
            const m = new Map(s.m); // a copy without it
            m.delete(op.drop);
            return noreply({ m });
          },
        },
        handleCall: {
          keys: (_: undefined, _from, s: { m: Map<string, number> }) => reply([...s.m.keys()], s),
        },
      });
      // One batch: 'x' set in place, then dropped by a copy (nothing to store), then 'y'.
      const ref = await start(Keys, [], { tenant, batchSize: 2 });
      await ref.castMany([["edit", { set: "x" }], ["edit", { drop: "x" }], ["edit", { set: "y" }]]);
      await waitFor(async () => (await ref.call("keys")).length === 2, 5_000, "not applied");
      assert.deepEqual(await ref.call("keys"), ["k", "y"]);
      const reader = await start(Keys, [], { tenant, consume: false, cache: false });
      assert.deepEqual(await reader.priorityCall("keys"), ["k", "y"]);
      await reader.stop();
      await ref.stop();
      await backend.close();
    });

    it("stops other instances of a killed server, and fails their callers", async () => {
      const { backend, tenant } = await fresh(b);
      const a = await start(Counter, [], { tenant });
      const sender = await start(Counter, [], { tenant, consume: false });
      const killer = await start(Counter, [], { tenant, consume: false });
      await killer.kill();
      assert.equal(await a.stopped, "killed");
      await assert.rejects(
        sender.call("value"),
        (e) => e instanceof ServerStoppedError || (e as { code?: string }).code === "server_gone",
      );
      await sender.stop();
      await backend.close();
    });

    it("runs actions after commit with the committed state, in order, honouring halt", async () => {
      const { backend, tenant } = await fresh(b);
      const seen: unknown[] = [];
      const A = defineServer({
        name: "actions",
        init: () => 0,
        handleCall: {
          go: (_: undefined, _f, n: number) =>
            reply("done", n + 1, [
              (s) => seen.push(["first", s]),
              () => "halt",
              () => seen.push("never"),
            ]),
          boom: (_: undefined, _f, n: number) =>
            reply("done", n + 1, [() => {
              throw new Error("action failed");
            }, () => seen.push("skipped")]),
        },
      });
      const ref = await start(A, [], { tenant });
      await ref.call("go");
      assert.deepEqual(seen, [["first", 1]]);
      const errors = console.error;
      console.error = () => {};
      try {
        assert.equal(await ref.call("boom"), "done");
      } finally {
        console.error = errors;
      }
      assert.equal(ref.stats.actionErrors, 1);
      assert.deepEqual(seen, [["first", 1]]);
      assert.equal(await ref.priorityCall("go"), "done");
      assert.deepEqual(seen.at(-1), ["first", 3], "state committed despite the failing action");
      await ref.stop();
      await backend.close();
    });

    it("gives handlers ctx with tenant, id, signal and the transaction", async () => {
      const { backend, tenant } = await fresh(b);
      const key = new TextEncoder().encode("side-table");
      const T = defineServer({
        name: "txer",
        init: () => 0,
        handleCall: {
          write: async (value: string, _f, n: number, ctx) => {
            assert.equal(ctx.id, "txer");
            assert.equal(ctx.tenant, tenant);
            assert.ok(ctx.signal instanceof AbortSignal);
            ctx.tx.set(key, new TextEncoder().encode(value));
            const back = await ctx.tx.get(key);
            return reply(new TextDecoder().decode(back), n + 1);
          },
        },
      });
      const ref = await start(T, [], { tenant });
      assert.equal(await ref.call("write", "hello"), "hello");
      const stored = await tenant.transact((tx) => tx.get(key));
      assert.equal(new TextDecoder().decode(stored), "hello");
      await ref.stop();
      await backend.close();
    });

    it("runs priority messages and info on the receiving instance, even a sender", async () => {
      const { backend, tenant } = await fresh(b);
      const I = defineServer({
        name: "info",
        init: () => [] as string[],
        handleCall: { log: (_: undefined, _f, s: string[]) => reply(s, s) },
        handleCast: { push: (x: string, s: string[]) => noreply([...s, x]) },
        handleInfo: (info: string, s: string[]) => noreply([...s, `info:${info}`]),
      });
      const sender = await start(I, [], { tenant, consume: false });
      await sender.send("hello");
      await sender.priorityCast("push", "p");
      assert.deepEqual(await sender.priorityCall("log"), ["info:hello", "p"]);
      await sender.stop();
      await backend.close();
    });

    it("lists the tenant's servers and records each instance's presence", async () => {
      const { backend, tenant } = await fresh(b);
      const a = await start(Counter, [], { tenant, id: "p1" });
      const s = await start(Counter, [], { tenant, id: "p1", consume: false });
      const keys = new ServerKeys("p1");
      const presence = await tenant.transact((tx) =>
        tx.getRange(keys.instances, new Uint8Array([...keys.instances, 0xff]))
      );
      assert.equal(presence.length, 2);
      await s.stop();
      const after = await tenant.transact((tx) =>
        tx.getRange(keys.instances, new Uint8Array([...keys.instances, 0xff]))
      );
      assert.equal(after.length, 1);
      await a.stop();
      await backend.close();
    });
  });
}
