/**
 * A crash of the PostgreSQL server (`pg_ctl restart -m immediate`) while transactions and a
 * watch are in flight: the backend recovers by itself, no acknowledged write is lost, and the
 * watch still fires on a later commit.
 */

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { BackendUnavailableError, readInt64LE, type Transaction } from "../../mod.ts";
import {
  openTestPostgres,
  postgresRestartSkip,
  restartPostgres,
  startPostgres,
  stopPostgres,
} from "./_postgres.ts";
import { deadline, waitFor } from "../_helpers.ts";

if (postgresRestartSkip) console.log(`PostgreSQL restart test skipped: ${postgresRestartSkip}`);

const enc = new TextEncoder();
const k = (s: string) => enc.encode(s);

describe("postgres backend across a server crash", { skip: postgresRestartSkip }, () => {
  it("recovers by itself, keeps every acknowledged write and keeps its watch", {
    timeout: 120_000,
  }, async () => {
    const b = await openTestPostgres();
    try {
      await b.transact((tx) => tx.set(k("watched"), k("before")));
      const watch = await b.transact(async (tx) => {
        await tx.get(k("watched"));
        return tx.watch(k("watched"));
      });
      let fired = false;
      watch.promise.then((v) => fired = v);

      // Writers commit continuously: an add to a shared counter and one key of their own per
      // commit. A commit counts as acknowledged once transact resolves.
      const writers = 4;
      const acked = Array.from({ length: writers }, () => [] as number[]);
      let bodies = 0;
      let stop = false;
      const loops = Array.from({ length: writers }, async (_, w) => {
        for (let i = 0; !stop; i++) {
          await b.transact(async (tx: Transaction) => {
            bodies++;
            await tx.get(k(`ack/${w}/${i - 1}`));
            tx.add(k("counter"), 1);
            tx.set(k(`ack/${w}/${i}`), k("1"));
          });
          acked[w]!.push(i);
        }
      });
      const progressed = (n: number) => acked.every((a) => a.length >= n);
      await waitFor(() => progressed(3), 20_000, "writers did not start");
      const before = acked.map((a) => a.length);
      const bodiesBefore = bodies;

      await restartPostgres();

      // Every writer commits again after the crash, by itself.
      await waitFor(
        () => acked.every((a, w) => a.length >= before[w]! + 3),
        60_000,
        "writers did not recover after the restart",
        20,
      );
      stop = true;
      await Promise.all(loops);
      const total = acked.reduce((n, a) => n + a.length, 0);
      assert.ok(bodies > total, "expected some attempt to fail and run again");
      assert.ok(bodies > bodiesBefore);

      // Every acknowledged write is there. The counter may be higher than the number of
      // acknowledged commits (a commit whose result was unknown may have applied and then run
      // again), never lower.
      const present = await b.transact(async (tx) => {
        const rows = await tx.getRange(k("ack/"), k("ack0"));
        return new Set(rows.map((r) => new TextDecoder().decode(r.key)));
      });
      for (const [w, list] of acked.entries()) {
        for (const i of list) assert.ok(present.has(`ack/${w}/${i}`), `lost ack/${w}/${i}`);
      }
      const counter = readInt64LE(await b.transact((tx) => tx.get(k("counter"))));
      assert.ok(counter >= BigInt(total), `counter ${counter} < ${total} acknowledged adds`);
      assert.ok(counter <= BigInt(bodies), `counter ${counter} > ${bodies} attempts`);

      // The watch was not woken by the crash (its key did not change) and fires on a write.
      assert.equal(fired, false, "the watch fired although its key did not change");
      await b.transact((tx) => tx.set(k("watched"), k("after")));
      assert.equal(await deadline(watch.promise, 10_000, "watch did not fire after restart"), true);
    } finally {
      await b.close();
    }
  });

  it("waits for a server that is down, up to reconnectTimeout, then fails unavailable", {
    timeout: 120_000,
  }, async () => {
    const patient = await openTestPostgres({ reconnectTimeout: 60_000 });
    const hasty = await openTestPostgres({ reconnectTimeout: 300 });
    try {
      await patient.transact((tx) => tx.set(k("before"), k("1")));
      await hasty.transact((tx) => tx.set(k("before"), k("1")));
      await stopPostgres();
      let stopped = true;
      try {
        const waiting = patient.transact((tx) => tx.set(k("during"), k("1")));
        await assert.rejects(
          hasty.transact((tx) => tx.get(k("before"))),
          (e) => e instanceof BackendUnavailableError && /300 ms/.test(e.message),
        );
        await startPostgres();
        stopped = false;
        // The patient backend's transaction went through once the server was back.
        await waiting;
        assert.equal(
          new TextDecoder().decode(await patient.transact((tx) => tx.get(k("during")))),
          "1",
        );
        // And the hasty one works again too.
        assert.equal(
          new TextDecoder().decode(await hasty.transact((tx) => tx.get(k("before")))),
          "1",
        );
      } finally {
        if (stopped) await startPostgres();
      }
    } finally {
      await patient.close();
      await hasty.close();
    }
  });
});
