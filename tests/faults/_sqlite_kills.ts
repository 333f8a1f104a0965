/**
 * SQLite under SIGKILL, shared by the test and the soak: a child process (Deno or Bun, in
 * turn) runs tight write transactions through the SQLite backend (a counter plus one log entry
 * per increment, several in flight so group commits are under way) and is SIGKILLed at a
 * random moment; the next child first checks the file: `PRAGMA integrity_check` is ok, the
 * counter equals the log's length, the log is 1..counter, and nothing acknowledged was lost.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { Child, type Runtime, testScript } from "../_processes.ts";
import { between, prng } from "./_seed.ts";

const SCRIPT = testScript("./faults/fault_child.ts");

/** What a run did. */
export interface SqliteKillFigures {
  kills: number;
  /** Kills that landed while the writer was still committing (it had acknowledged writes). */
  midWrite: number;
  finalCounter: number;
  seconds: number;
}

/** Runs `kills` kill-and-restart cycles on a fresh file in `dir`. */
export async function runSqliteKills(
  o: { seed: number; kills: number; dir: string; log?: (line: string) => void },
): Promise<SqliteKillFigures> {
  const started = performance.now();
  const random = prng(o.seed);
  const path = join(o.dir, `kills-${o.seed}.sqlite`);
  let acked = 0;
  let last = 0;
  let midWrite = 0;
  const check = (d: Record<string, unknown>, i: number) => {
    assert.deepEqual(d.integrity, ["ok"], `integrity_check after kill ${i}`);
    assert.equal(d.counter, d.logLength, `counter = log length after kill ${i}`);
    assert.equal(d.contiguous, true, `log is 1..counter after kill ${i}`);
    assert.ok(
      (d.counter as number) >= acked,
      `kill ${i}: counter ${d.counter} lost acknowledged increments (up to ${acked})`,
    );
    assert.ok((d.counter as number) >= last, `kill ${i}: counter went back`);
    last = d.counter as number;
  };
  for (let i = 0; i <= o.kills; i++) {
    const runtime: Runtime = random() < 0.5 ? "deno" : "bun";
    const child = new Child(runtime, SCRIPT, [
      path,
      "sqlite-writer",
      JSON.stringify({ concurrency: 4 }),
    ]);
    try {
      const checked = await child.next((d) => d.checked === true, 60_000, "writer check");
      check(checked.data, i);
      if (i === o.kills) break;
      await child.next((d) => d.writing === true, 60_000, "writer start");
      // Let it write for a random while (some kills land in its first transactions).
      const ms = between(random, 0, 40);
      if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    } finally {
      await child.kill();
    }
    // Acknowledged increments (printed after their commit) must survive.
    let seen = false;
    for (;;) {
      let m;
      try {
        m = await child.next((d) => typeof d.acked === "number", 1, "acked");
      } catch {
        break;
      }
      seen = true;
      acked = Math.max(acked, m.data.acked as number);
    }
    if (seen) midWrite++;
    if (i % 50 === 49) o.log?.(`sqlite kills: ${i + 1} done, counter ${last}`);
  }
  // And once more from here, with a connection of this process.
  const db = new DatabaseSync(path);
  try {
    const rows = db.prepare("PRAGMA integrity_check").all() as Array<Record<string, unknown>>;
    assert.deepEqual(rows.map((r) => String(Object.values(r)[0])), ["ok"]);
  } finally {
    db.close();
  }
  return {
    kills: o.kills,
    midWrite,
    finalCounter: last,
    seconds: (performance.now() - started) / 1000,
  };
}
