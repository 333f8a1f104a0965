/**
 * Poison messages across processes: a handler that always throws for one message. Its attempts
 * accumulate in the durable queue across consumer processes (one is SIGKILLed midway and
 * another carries on); after the threshold it is dead-lettered with its attempt count, the
 * waiting caller gets DeadLetterError, and the queue behind it drains in order.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  DeadLetterError,
  defineServer,
  noreply,
  openSqliteBackend,
  openTenant,
  readServerView,
  reply,
  start,
} from "../../mod.ts";
import { Child, missingRuntimes, type Runtime, testScript } from "../_processes.ts";
import { deadline, waitFor } from "../_helpers.ts";
import { backends, fresh } from "../server/_backends.ts";
import { testSeed } from "./_seed.ts";

const skip = missingRuntimes();
const SCRIPT = testScript("./faults/fault_child.ts");
const THRESHOLD = 5;

/** The sending side of the child's Poison server. */
const Poison = defineServer({
  name: "poison",
  init: () => ({ applied: [] as string[] }),
  handleCast: { rec: (_: string, s: { applied: string[] }) => noreply(s) },
  handleCall: { rec: (_: string, _from, s: { applied: string[] }) => reply(0, s) },
});

describe("a poison message on SQLite, across processes", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "dgen-poison-"));
  const children: Child[] = [];
  after(async () => {
    await Promise.all(children.map((c) => c.kill()));
    rmSync(dir, { recursive: true, force: true });
  });

  it("is dead-lettered with its attempt count, and the queue behind it drains", async () => {
    const seed = testSeed("poison");
    const path = join(dir, "poison.sqlite");
    const backend = await openSqliteBackend({ path });
    const tenant = await openTenant(backend, "faults");
    const sender = await start(Poison, [], { tenant, consume: false });
    const runtimes: Runtime[] = seed % 2 === 0 ? ["deno", "bun"] : ["bun", "deno"];
    const consumer = (runtime: Runtime, dieAt?: number) => {
      const c = new Child(runtime, SCRIPT, [
        path,
        "poison-consumer",
        JSON.stringify({ threshold: THRESHOLD, dieAt }),
      ]);
      children.push(c);
      return c;
    };
    const expected: string[] = [];
    for (let i = 0; i < 10; i++) {
      expected.push(`a${i}`);
      await sender.cast("rec", `a${i}`);
    }
    await sender.cast("rec", "poison-cast");
    const doomed = sender.call("rec", "poison-call", { timeout: Infinity });
    for (let i = 0; i < 20; i++) {
      expected.push(`b${i}`);
      await sender.cast("rec", `b${i}`);
    }

    // The first consumer fails the poison twice (recorded durably), and dies (SIGKILL) in its
    // third run, before that failure is recorded.
    const first = consumer(runtimes[0]!, 3);
    const firstPid = (await first.next((d) => d.ready === true, 60_000, "ready")).data.pid;
    assert.equal(await deadline(first.closed, 30_000, "the first consumer did not die"), null);
    const recorded = (await readServerView(tenant, "poison", { headLimit: 1 }))!.queue.head[0]!;
    assert.equal(recorded.arg, "poison-cast");
    assert.equal(recorded.attempts, 2, "two failed attempts recorded by the first process");

    // Another process, in the other runtime, carries the count on to the threshold.
    const second = consumer(runtimes[1]!);
    const secondPid = (await second.next((d) => d.ready === true, 60_000, "ready")).data.pid;
    const dead = await second.next((d) => d.deadLetter === "poison-cast", 30_000, "dead letter");
    assert.equal(dead.data.attempts, THRESHOLD);
    await assert.rejects(
      deadline(doomed, 30_000, "the poison call was not answered"),
      (e) => e instanceof DeadLetterError && e.attempts === THRESHOLD,
    );
    const deadCall = await second.next((d) => d.deadLetter === "poison-call", 30_000, "dead call");
    assert.equal(deadCall.data.attempts, THRESHOLD);

    const view = await waitFor(
      async () => {
        const v = await readServerView(tenant, "poison");
        return v && v.queue.length === 0 && v.lock === null ? v : undefined;
      },
      30_000,
      "the queue behind the poison did not drain",
    );
    assert.deepEqual(
      (view.state as unknown as { applied: string[] }).applied,
      expected,
      "every other message applied once, in order",
    );
    assert.equal(view.deadLetters.length, 2);
    const letters = await sender.deadLetters.list();
    assert.deepEqual(
      letters.map((l) => [l.kind, l.arg, l.attempts, l.error.code]),
      [["cast", "poison-cast", THRESHOLD, "handler"], [
        "call",
        "poison-call",
        THRESHOLD,
        "handler",
      ]],
    );
    assert.match(letters[0]!.error.message, /poison-cast always fails/);
    // The attempts were made in both processes.
    const attemptsBy = async (c: Child) => {
      const pids: unknown[] = [];
      for (;;) {
        try {
          pids.push((await c.next((d) => d.attempt === "poison-cast", 1, "attempt")).data.pid);
        } catch {
          return pids;
        }
      }
    };
    const byFirst = await attemptsBy(first);
    const bySecond = await attemptsBy(second);
    assert.equal(byFirst.length, 3, "the first process ran it three times");
    assert.ok(byFirst.every((p) => p === firstPid));
    assert.equal(bySecond.length, THRESHOLD - recorded.attempts, "the second finished the count");
    assert.ok(bySecond.every((p) => p === secondPid));
    await sender.stop();
    await second.kill();
    await backend.close();
  });
});

/**
 * A handler returning a state that throws while being read (a getter that throws, a revoked
 * Proxy): the codec's error must count as the message's own failure, not as a storage outage
 * the consumer retries for ever.
 */
interface UnreadableState {
  n: number;
  v?: unknown;
}
const Unreadable = defineServer({
  name: "unreadable",
  init: (): UnreadableState => ({ n: 0 }),
  handleCast: {
    poison: (how: "getter" | "proxy", s: UnreadableState) => {
      let v: object;
      if (how === "getter") {
        v = Object.defineProperty({}, "g", {
          get() {
            throw new Error("boom getter");
          },
          enumerable: true,
        });
      } else {
        const r = Proxy.revocable({}, {});
        r.revoke();
        v = r.proxy;
      }
      return noreply<UnreadableState>({ ...s, v });
    },
    inc: (_: undefined, s: UnreadableState) => noreply({ ...s, n: s.n + 1 }),
  },
  handleCall: { get: (_: undefined, _from, s: UnreadableState) => reply(s.n, s) },
});

for (const b of backends) {
  describe(`a state that throws while being read, on ${b.name}`, { skip: b.skip }, () => {
    it("is dead-lettered as the message's failure, and a message behind it applies", async () => {
      const { backend, tenant } = await fresh(b);
      const ref = await start(Unreadable, [], { tenant, deadLetterThreshold: 2 });
      const sender = await start(Unreadable, [], { tenant, consume: false });
      await sender.castMany([["poison", "getter"], ["poison", "proxy"], ["inc"]]);
      assert.equal(await deadline(ref.call("get", undefined), 10_000, "the server is wedged"), 1);
      const letters = await ref.deadLetters.list();
      assert.deepEqual(letters.map((l) => [l.arg, l.attempts, l.error.code]), [
        ["getter", 2, "codec"],
        ["proxy", 2, "codec"],
      ]);
      // A getter is refused as such (stored values are data), without calling it.
      assert.match(letters[0]!.error.message, /A getter \(accessor property 'g'\).*state\.v\.g/);
      assert.match(letters[1]!.error.message, /Reading this value threw.*state\.v\)/);
      await sender.stop();
      await ref.stop();
      await backend.close();
    });
  });
}
