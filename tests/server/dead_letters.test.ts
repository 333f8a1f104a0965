/**
 * `ServerRef.deadLetters` with many letters: `list` reads in bounded pages (one read-only
 * transaction each) and pages on request (`limit`, `after`); `purge` clears without reading
 * the letters; bad options are refused.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  type Backend,
  defineServer,
  noreply,
  openTenant,
  type ServerRef,
  start,
  type Tenant,
  type Transaction,
  ValidationError,
} from "../../mod.ts";
import { ServerKeys } from "../../lib/server/keys.ts";
import { hasPrefix } from "../../lib/bytes.ts";
import { backends, fresh, type TestBackend } from "./_backends.ts";
import { createSimulation } from "../storage/_simulated_fdb.ts";
import { openFoundationdbBackendWith } from "../../lib/storage/foundationdb.ts";
import { waitFor } from "../_helpers.ts";

/** Every cast fails: with `deadLetterThreshold: 1` each one is dead-lettered at once. */
const Doomed = defineServer({
  name: "doomed",
  init: () => 0,
  handleCast: {
    fail: (n: number, _s: number): never => {
      throw new Error(`doomed ${n}`);
    },
    ok: (_: undefined, s: number) => noreply(s + 1),
  },
});

/** Dead-letters `fail` casts with arguments `from`, …, `from + n - 1`, in that order. */
async function deadLetter(ref: ServerRef<typeof Doomed>, n: number, from = 0): Promise<void> {
  const before = (await ref.deadLetters.list()).length;
  // Inline casts of a consuming instance, in batches: dead-lettered in the order cast.
  for (let i = 0; i < n; i += 50) {
    const batch = Array.from({ length: Math.min(50, n - i) }, (_, j) => from + i + j);
    await Promise.all(batch.map((k) => ref.cast("fail", k)));
  }
  await waitFor(
    async () => (await ref.deadLetters.list()).length === before + n,
    20_000,
    `${n} casts not dead-lettered`,
  );
}

/** What a wrapped backend saw of dead-letter reads: rows per transaction that read them. */
interface DeadLetterReads {
  /** Rows of the dead-letter range read, one entry per transaction that read any. */
  perTransaction: number[];
  /** Whether those transactions were read-only. */
  readOnly: boolean[];
  /** Run (and awaited) after the next transaction that read dead letters, once. */
  after?: () => Promise<void>;
}

/** A Doomed server (every cast dead-lettered at once) on a fresh tenant of a counting backend. */
async function countedDoomed(b: TestBackend) {
  const { backend: inner, tenant: plain } = await fresh(b);
  const { backend, reads, watch } = counting(inner);
  const tenant = await openTenant(backend, plain.name);
  const ref = await start(Doomed, [], { tenant, deadLetterThreshold: 1 });
  return { backend, reads, watch, tenant, ref };
}

/**
 * The backend, passing everything through, with the dead-letter range reads of server `id`
 * counted per transaction.
 */
function counting(
  inner: Backend,
): { backend: Backend; reads: DeadLetterReads; watch(tenant: Tenant, id: string): void } {
  const reads: DeadLetterReads = { perTransaction: [], readOnly: [] };
  let prefix: Uint8Array | undefined;
  const backend: Backend = {
    kind: inner.kind,
    limits: inner.limits,
    unknownCommitOutcomes: inner.unknownCommitOutcomes,
    openSubspace: (path) => inner.openSubspace(path),
    close: () => inner.close(),
    transact: async (fn, options) => {
      let read = false;
      const result = await inner.transact(async (tx) => {
        if (prefix === undefined) return await fn(tx);
        const watched = prefix;
        let rows = 0;
        read = false;
        const wrapped = new Proxy(tx, {
          get(target, name) {
            if (name === "getRange") {
              return async (...args: Parameters<Transaction["getRange"]>) => {
                const got = await target.getRange(...args);
                if (hasPrefix(args[0], watched)) {
                  read = true;
                  rows += got.length;
                }
                return got;
              };
            }
            const value = Reflect.get(target, name, target);
            return typeof value === "function" ? value.bind(target) : value;
          },
        });
        const result = await fn(wrapped);
        if (read) {
          reads.perTransaction.push(rows);
          reads.readOnly.push(options?.readOnly === true);
        }
        return result;
      }, options);
      const after = reads.after;
      if (read && after !== undefined) {
        reads.after = undefined;
        await after();
      }
      return result;
    },
  };
  return {
    backend,
    reads,
    watch: (tenant, id) => prefix = new ServerKeys(id, tenant.prefix).deadLetters,
  };
}

/** Every backend, and the FoundationDB adapter on simulated bindings (no cluster needed). */
const all: TestBackend[] = [...backends, {
  name: "foundationdb adapter on simulated bindings",
  open: () => openFoundationdbBackendWith(createSimulation().driver),
}];

for (const b of all) {
  describe(`dead letters on ${b.name}`, { skip: b.skip }, () => {
    it("pages with limit and after return the letters of list(), in order", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Doomed, [], { tenant, deadLetterThreshold: 1 });
      try {
        await deadLetter(ref, 7);
        const all = await ref.deadLetters.list();
        assert.deepEqual(all.map((d) => d.arg), [0, 1, 2, 3, 4, 5, 6]);
        const keys = all.map((d) => d.key);
        assert.deepEqual([...keys].sort(), keys, "oldest first");
        const paged = [];
        const sizes = [];
        let after: string | undefined;
        for (;;) {
          const page = await ref.deadLetters.list(
            after === undefined ? { limit: 3 } : {
              limit: 3,
              after,
            },
          );
          if (page.length === 0) break;
          sizes.push(page.length);
          assert.ok(sizes.length <= 3, `pages of ${sizes.join(", ")} letters, and more`);
          paged.push(...page);
          after = page[page.length - 1]!.key;
        }
        assert.deepEqual(sizes, [3, 3, 1]);
        assert.deepEqual(paged, all);
        assert.deepEqual(await ref.deadLetters.list({ limit: 1 }), all.slice(0, 1));
        assert.deepEqual(await ref.deadLetters.list({ limit: 100 }), all);
        assert.deepEqual(await ref.deadLetters.list({ after: keys[2]! }), all.slice(3));
        assert.deepEqual(await ref.deadLetters.list({ after: keys[6]! }), []);
        assert.deepEqual(await ref.deadLetters.list({}), all);
        // `after` is a position: the letter need not exist any more.
        assert.equal(await ref.deadLetters.requeue(keys[3]!), true);
        await waitFor(
          async () => (await ref.deadLetters.list()).length === 7,
          10_000,
          "requeued letter not dead-lettered again",
        );
        const now = await ref.deadLetters.list();
        assert.deepEqual(now.slice(0, 6), [...all.slice(0, 3), ...all.slice(4)]);
        assert.deepEqual(now[6]!.arg, 3, "dead-lettered again, newest");
        assert.deepEqual(
          await ref.deadLetters.list({ after: keys[3]!, limit: 2 }),
          all.slice(4, 6),
        );
      } finally {
        await ref.stop();
        await backend.close();
      }
    });

    it("lists more letters than one page, over several read-only transactions", async () => {
      const { backend, reads, watch, tenant, ref } = await countedDoomed(b);
      try {
        // Pages are sized for letters as large as the backend's values (100 KB): at most 40.
        assert.ok(backend.limits.maxValueSize >= 100_000);
        const n = 100;
        await deadLetter(ref, n);
        watch(tenant, ref.id);
        const all = await ref.deadLetters.list();
        assert.deepEqual(all.map((d) => d.arg), Array.from({ length: n }, (_, i) => i));
        assert.ok(
          reads.perTransaction.length >= 3,
          `one listing of ${n} letters read them in ${reads.perTransaction.length} transaction(s)`,
        );
        assert.ok(
          Math.max(...reads.perTransaction) <= 40,
          `a transaction read ${Math.max(...reads.perTransaction)} letters`,
        );
        assert.ok(reads.readOnly.every((r) => r), "read-only transactions");
        // A page larger than a transaction's share is read in several too, and is the same.
        reads.perTransaction.length = 0;
        assert.deepEqual(
          await ref.deadLetters.list({ limit: 90, after: all[4]!.key }),
          all.slice(5, 95),
        );
        assert.ok(reads.perTransaction.length >= 3, `${reads.perTransaction.length} transactions`);
        assert.ok(Math.max(...reads.perTransaction) <= 40);
      } finally {
        await ref.stop();
        await backend.close();
      }
    });

    it("a listing leaves out letters dead-lettered after it began", async () => {
      const { backend, reads, watch, tenant, ref } = await countedDoomed(b);
      try {
        await deadLetter(ref, 50);
        watch(tenant, ref.id);
        // Between the first page and the next, five more.
        reads.after = () => deadLetter(ref, 5, 1000);
        const listed = await ref.deadLetters.list();
        assert.equal(reads.after, undefined, "more than one page");
        assert.deepEqual(listed.map((d) => d.arg), Array.from({ length: 50 }, (_, i) => i));
        assert.equal((await ref.deadLetters.list()).length, 55);
      } finally {
        await ref.stop();
        await backend.close();
      }
    });

    it("purge returns how many it removed, leaves none, and reads no letter", async () => {
      const { backend, reads, watch, tenant, ref } = await countedDoomed(b);
      try {
        await deadLetter(ref, 45);
        watch(tenant, ref.id);
        assert.equal(await ref.deadLetters.purge(), 45);
        assert.deepEqual(reads.perTransaction, [], "purge read dead letters");
        assert.deepEqual(await ref.deadLetters.list(), []);
        assert.equal(await ref.deadLetters.purge(), 0);
        // The count starts again from zero: a later purge counts only the later letters.
        await deadLetter(ref, 3, 100);
        assert.deepEqual((await ref.deadLetters.list()).map((d) => d.arg), [100, 101, 102]);
        assert.equal(await ref.deadLetters.purge(), 3);
        assert.deepEqual(await ref.deadLetters.list(), []);
        // The server goes on.
        await ref.cast("ok");
      } finally {
        await ref.stop();
        await backend.close();
      }
    });

    it("refuses bad list options with a ValidationError naming the field", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Doomed, [], { tenant, consume: false });
      try {
        const bad: Array<[unknown, string]> = [
          [{ limit: 0 }, "options.limit"],
          [{ limit: -1 }, "options.limit"],
          [{ limit: 1.5 }, "options.limit"],
          [{ limit: Infinity }, "options.limit"],
          [{ limit: NaN }, "options.limit"],
          [{ limit: "10" }, "options.limit"],
          [{ after: "zz" }, "options.after"],
          [{ after: "0".repeat(23) }, "options.after"],
          [{ after: "A".repeat(24) }, "options.after"],
          [{ after: 5 }, "options.after"],
          [{ cursor: "x" }, "options.cursor"],
          [null, "options"],
          ["all", "options"],
        ];
        for (const [options, path] of bad) {
          await assert.rejects(
            ref.deadLetters.list(options as never),
            (e) => e instanceof ValidationError && e.issues[0]!.path === path,
            `${JSON.stringify(options)} -> ${path}`,
          );
        }
      } finally {
        await ref.stop();
        await backend.close();
      }
    });
  });
}
