/**
 * SQLite under SIGKILL: 200 kills (`DGEN_SQLITE_KILLS`) of a process in the middle of tight
 * write transactions, each followed by a restart that checks `PRAGMA integrity_check`, that
 * the counter equals the log's length, and that no acknowledged commit was lost.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { missingRuntimes } from "../_processes.ts";
import { runSqliteKills } from "./_sqlite_kills.ts";
import { testSeed } from "./_seed.ts";

const skip = missingRuntimes();
const KILLS = Number(process.env.DGEN_SQLITE_KILLS ?? 200);

describe("SQLite under SIGKILL", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "dgen-kills-"));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it(`stays intact and consistent through ${KILLS} kills mid-commit`, async () => {
    const seed = testSeed("sqlite kills");
    const f = await runSqliteKills({ seed, kills: KILLS, dir, log: console.log });
    console.log(
      `sqlite kills (seed ${seed}): ${f.kills} kills, ${f.midWrite} while committing, ` +
        `final counter ${f.finalCounter}, ${f.seconds.toFixed(1)} s`,
    );
    assert.ok(f.midWrite >= KILLS / 2, `only ${f.midWrite} kills landed while it was writing`);
    assert.ok(f.finalCounter > 0);
  });
});
