/**
 * A stale lock holder: a consumer process is SIGSTOPped inside handleLocked past its lease;
 * another consumer process takes over, runs the message again and processes new work; then the
 * stalled one is continued: its write-back is refused (LockLostError, counted in its
 * `stats.lockLost`), and the message's effect is applied exactly once.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type Backend,
  defineServer,
  lock,
  noreply,
  openSqliteBackend,
  openTenant,
  readServerView,
  start,
} from "../../mod.ts";
import { Child, missingRuntimes, type Runtime, testScript } from "../_processes.ts";
import { deadline, waitFor } from "../_helpers.ts";
import { testSeed } from "./_seed.ts";

const skip = missingRuntimes();
const SCRIPT = testScript("./faults/fault_child.ts");
const LEASE = 500;

interface StaleState {
  done: string[];
  n: number;
}

/** The sending side of the child's Stale server (same name and messages). */
const Stale = defineServer({
  name: "stale",
  init: (): StaleState => ({ done: [], n: 0 }),
  handleCast: {
    job: (_id: string, s: StaleState) => lock(s),
    bump: (_id: string, s: StaleState) => noreply({ ...s, n: s.n + 1 }),
  },
  handleCall: { job: (_id: string, _from, s: StaleState) => lock(s) },
  handleLocked: (_e, s: StaleState) => noreply(s),
});

/**
 * SIGSTOPs `child` at a moment it holds no SQLite write lock (a process frozen inside a write
 * transaction would freeze every other writer too, which is not the fault under test): if a
 * probe write cannot get through while it is stopped, it is continued briefly and stopped
 * again.
 */
async function stopOutsideTransaction(child: Child, backend: Backend): Promise<void> {
  const probe = new TextEncoder().encode("probe");
  for (let i = 0;; i++) {
    child.signal("SIGSTOP");
    const write = backend.transact((tx) => tx.set(probe, new Uint8Array([i & 0xff])));
    const passed = await Promise.race([
      write.then(() => true),
      new Promise<false>((r) => setTimeout(() => r(false), 1_000)),
    ]);
    if (passed) return;
    child.signal("SIGCONT");
    await write;
    if (i > 20) throw new Error("could not stop the holder outside a write transaction");
  }
}

/** The first line `match` accepts from any of `children` (polled: one reader per child). */
async function firstOf(
  children: Child[],
  match: (d: Record<string, unknown>) => boolean,
  ms: number,
): Promise<{ i: number; token: bigint }> {
  const end = performance.now() + ms;
  for (;;) {
    for (const [i, c] of children.entries()) {
      try {
        const m = await c.next(match, 10, "line");
        return { i, token: BigInt(m.data.token as string) };
      } catch (e) {
        if (performance.now() > end) throw e;
      }
    }
  }
}

describe("a stale lock holder on SQLite", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "dgen-stale-"));
  const children: Child[] = [];
  after(async () => {
    await Promise.all(children.map((c) => c.kill()));
    rmSync(dir, { recursive: true, force: true });
  });

  it("is fenced: another consumer takes over, and the stale write-back is refused", async () => {
    const seed = testSeed("stale lock");
    const path = join(dir, "stale.sqlite");
    const file = join(dir, "stale.effects");
    writeFileSync(file, "");
    const backend = await openSqliteBackend({ path });
    const tenant = await openTenant(backend, "faults");
    const sender = await start(Stale, [], { tenant, consume: false });
    const runtimes: Runtime[] = seed % 2 === 0 ? ["deno", "bun"] : ["bun", "deno"];
    const consumers = runtimes.map((r) => {
      const c = new Child(r, SCRIPT, [
        path,
        "stale-consumer",
        JSON.stringify({ lockLease: LEASE, hold: 3 * LEASE, file }),
      ]);
      children.push(c);
      return c;
    });
    const pids = await Promise.all(
      consumers.map(async (c) => (await c.next((d) => d.ready === true, 60_000, "ready")).data.pid),
    );
    const call = sender.call("job", "j1", { timeout: Infinity });
    // Whichever consumer took the lock is the victim.
    const entered = await firstOf(consumers, (d) => d.entered === "j1", 30_000);
    const stale = consumers[entered.i]!;
    const fresh = consumers[1 - entered.i]!;
    await stopOutsideTransaction(stale, backend);

    // The other consumer takes over after the lease, runs the message again (a newer token),
    // answers the call, and processes new work while the holder is still frozen.
    const again = await fresh.next((d) => d.entered === "j1", 30_000, "takeover");
    assert.ok(BigInt(again.data.token as string) > entered.token, "a newer fencing token");
    assert.equal(await deadline(call, 30_000, "call not answered"), 1);
    for (let i = 0; i < 5; i++) await sender.cast("bump", `b${i}`);
    await waitFor(
      async () => ((await readServerView(tenant, "stale"))?.state as unknown as StaleState).n === 5,
      30_000,
      "new work not processed during the stall",
      20,
    );

    // Continued, the stale holder finishes handleLocked, and its write-back is refused.
    stale.signal("SIGCONT");
    const lost = await stale.next((d) => typeof d.lockLost === "number", 30_000, "lockLost");
    assert.equal(lost.data.lockLost, 1, "counted in the stalled instance's stats.lockLost");
    assert.equal(lost.data.pid, pids[entered.i]);

    const view = await waitFor(
      async () => {
        const v = await readServerView(tenant, "stale");
        return v && v.lock === null && v.queue.length === 0 ? v : undefined;
      },
      30_000,
      "lock not released",
    );
    assert.deepEqual(view.state, { done: ["j1"], n: 5 }, "the effect applied exactly once");
    assert.equal(view.deadLetters.length, 0);
    // The side effect of handleLocked ran in both (at least once, hence idempotent).
    const effects = readFileSync(file, "utf8").trim().split("\n");
    assert.deepEqual(effects.map((l) => l.split(" ")[1]).sort(), [...pids.map(String)].sort());
    await sender.stop();
    await Promise.all(consumers.map((c) => c.kill()));
    await backend.close();
  });
});
