/**
 * A transaction longer than a minute on PostgreSQL: with `limits.maxTransactionDuration` above
 * 60 s, a pause between two statements must not cost the transaction its connection
 * (npm:postgres's idle time-out, 60 s before, counted a connection idle mid-transaction). Takes
 * about 62 s, in a file of its own.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { openTestPostgres, postgresSkip } from "./_postgres.ts";

const k = (s: string) => new TextEncoder().encode(s);

describe("postgres backend, long transactions", { skip: postgresSkip }, () => {
  it("keeps a transaction's connection through a 61 s pause under a 90 s limit", async () => {
    const b = await openTestPostgres({ limits: { maxTransactionDuration: 90_000 } });
    try {
      let attempts = 0;
      await b.transact(async (tx) => {
        attempts++;
        await tx.get(k("x"));
        await new Promise((r) => setTimeout(r, 61_500));
        tx.set(k("x"), k("1"));
      }, { maxRetries: 0 });
      assert.equal(attempts, 1);
      assert.deepEqual(await b.transact((tx) => tx.get(k("x"))), k("1"));
    } finally {
      await b.close();
    }
  });
});
