/**
 * A storage error that a handler meets through `ctx.tx` and that retrying the transaction can
 * cure (a conflict, an unreachable backend) is the transaction's, not the message's: it is
 * retried and costs the message no attempt, on every path a handler runs.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  type Backend,
  BackendUnavailableError,
  ConflictError,
  defineServer,
  noreply,
  openTenant,
  reply,
  start,
} from "../../mod.ts";
import { backends } from "./_backends.ts";
import { waitFor } from "../_helpers.ts";

const FLAKY = new TextEncoder().encode("flaky-side-table");

/** Whether `key` ends with the bytes of `suffix`. */
function endsWith(key: Uint8Array, suffix: Uint8Array): boolean {
  if (key.length < suffix.length) return false;
  const at = key.length - suffix.length;
  return suffix.every((b, i) => key[at + i] === b);
}

/**
 * A backend whose reads of the side-table key fail with `make()` while `failures.left > 0`
 * (the read a handler makes through `ctx.tx`; the runtime's own reads are untouched).
 */
function flakyReads(
  backend: Backend,
  failures: { left: number; seen: number },
  make: () => Error,
): Backend {
  const flaky: Backend = Object.create(backend);
  flaky.transact = (fn, options) =>
    backend.transact((tx) =>
      fn(
        new Proxy(tx, {
          get(target, p) {
            const v = Reflect.get(target, p);
            if (p !== "get") return typeof v === "function" ? v.bind(target) : v;
            return (key: Uint8Array) => {
              if (endsWith(key, FLAKY) && failures.left > 0) {
                failures.left--;
                failures.seen++;
                throw make();
              }
              return target.get(key);
            };
          },
        }),
      ), options);
  return flaky;
}

const Reader = defineServer({
  name: "reader",
  init: () => 0,
  handleCall: {
    touch: async (_: undefined, _f, n: number, ctx) => {
      await ctx.tx.get(FLAKY);
      return reply(n + 1, n + 1);
    },
    value: (_: undefined, _f, n: number) => reply(n, n),
  },
  handleCast: {
    touch: async (_: undefined, n: number, ctx) => {
      await ctx.tx.get(FLAKY);
      return noreply(n + 1);
    },
  },
});

for (const b of backends) {
  describe(`retryable storage errors in handlers on ${b.name}`, { skip: b.skip }, () => {
    for (
      const [what, make] of [
        ["a conflict", () => new ConflictError("injected read conflict")],
        ["an unreachable backend", () => new BackendUnavailableError("injected outage")],
      ] as const
    ) {
      it(`does not charge the message for ${what} met through ctx.tx`, async () => {
        const backend = await b.open();
        const failures = { left: 0, seen: 0 };
        const tenant = await openTenant(flakyReads(backend, failures, make), "flaky");
        // One attempt is all a message gets: any failure counted against it dead-letters it.
        const consumer = await start(Reader, [], { tenant, deadLetterThreshold: 1 });
        const sender = await start(Reader, [], {
          tenant,
          consume: false,
          deadLetterThreshold: 1,
        });
        const inject = (n = 2) => {
          failures.left = n;
          failures.seen = 0;
        };
        // An outage is not retried inside the caller's transaction: one failure per try.
        const inline = what === "a conflict" ? 2 : 1;
        // The inline call (a consuming instance, idle queue) and the inline cast: a conflict
        // is retried within the caller's transaction; an outage reaches the caller as such
        // (the message was neither applied nor charged), and the next try applies it.
        inject(inline);
        if (what === "a conflict") {
          assert.equal(await consumer.call("touch", undefined, { timeout: 20_000 }), 1);
        } else {
          await assert.rejects(consumer.call("touch"), BackendUnavailableError);
          assert.equal(await consumer.call("touch", undefined, { timeout: 20_000 }), 1);
        }
        assert.equal(failures.seen, inline, "the inline call's handler met the failures");
        inject(inline);
        if (what === "a conflict") await consumer.cast("touch");
        else {
          await assert.rejects(consumer.cast("touch"), BackendUnavailableError);
          await consumer.cast("touch");
        }
        await waitFor(async () => (await consumer.call("value")) === 2, 20_000, "inline cast");
        assert.equal(failures.seen, inline, "the inline cast's handler met the failures");
        // The queued call and cast (sent by a non-consuming instance, applied by the consumer).
        inject();
        assert.equal(await sender.call("touch", undefined, { timeout: 20_000 }), 3);
        assert.equal(failures.seen, 2, "the queued call's handler met the failures");
        inject();
        await sender.cast("touch");
        await waitFor(async () => (await sender.call("value")) === 4, 20_000, "queued cast");
        assert.equal(failures.seen, 2, "the queued cast's handler met the failures");
        assert.deepEqual(await consumer.deadLetters.list(), []);
        assert.equal(consumer.stats.deadLettered, 0);
        await sender.stop();
        await consumer.stop();
        await backend.close();
      });
    }
  });
}
