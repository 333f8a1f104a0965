/**
 * Crash-point sweep: for each named point along the consume path (and two inside the test's
 * own handleLocked), a consumer process SIGKILLs itself there N times (N ≥ 3, the hit seeded),
 * restarted each time; the recovered state, replies, actions and side effects must match the
 * model (state applied exactly once; actions at most once; locked work repeated, idempotently).
 * The table of outcomes is in docs/faults.md.
 *
 * `DGEN_SEED` replays; `DGEN_SWEEP_KILLS` sets N (default 3).
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { missingRuntimes } from "../_processes.ts";
import { runSweep, SWEEP_POINTS } from "./_sweep.ts";
import { testSeed } from "./_seed.ts";

const skip = missingRuntimes();
const KILLS = Number(process.env.DGEN_SWEEP_KILLS ?? 3);

describe(
  "crash-point sweep (SIGKILL at each point, restart, compare with the model)",
  { skip },
  () => {
    const dir = mkdtempSync(join(tmpdir(), "dgen-sweep-"));
    after(() => rmSync(dir, { recursive: true, force: true }));
    const seed = skip ? 0 : testSeed("crash-point sweep");
    for (const [i, point] of SWEEP_POINTS.entries()) {
      it(`dies ${KILLS} times at '${point}' and recovers as the model says`, async () => {
        const out = await runSweep(point, { seed: seed + i, kills: KILLS, dir });
        console.log(`sweep '${point}' (seed ${seed + i}): ${JSON.stringify(out)}`);
        assert.equal(out.kills, KILLS);
      });
    }
  },
);
