/**
 * The long soak of the fault tests (not part of CI): rounds of the nemesis (more operations),
 * SQLite kills, the crash-point sweep (more kills per point), and the unknown-commit, stale-lock
 * and poison test files run by the test runners (alternately Deno and Bun) with fresh seeds,
 * until `DGEN_SOAK_MINUTES` have passed. Every round prints its seeds; the end prints totals.
 *
 * ```sh
 * DGEN_SOAK_MINUTES=30 deno task soak:fault     # or: deno run -A tests/faults/soak.ts, or bun …
 * ```
 *
 * `DGEN_SEED` fixes the master seed (each round derives its own from it); `DGEN_SOAK_OPS` sets
 * the nemesis operations per round (default 20,000).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { findOnPath, testScript } from "../_processes.ts";
import { runNemesis } from "./_nemesis.ts";
import { runSqliteKills } from "./_sqlite_kills.ts";
import { runSweep, SWEEP_POINTS } from "./_sweep.ts";
import { prng, soakMinutes, testSeed } from "./_seed.ts";

const minutes = soakMinutes();
if (minutes === 0) {
  console.error("Set DGEN_SOAK_MINUTES (e.g. DGEN_SOAK_MINUTES=30) to run the soak.");
  process.exit(2);
}
const OPS = Number(process.env.DGEN_SOAK_OPS ?? 20_000);
const master = testSeed("soak");
const random = prng(master);
const end = performance.now() + minutes * 60_000;
const totals = {
  rounds: 0,
  nemesisOps: 0,
  nemesisOk: 0,
  nemesisUnknown: 0,
  nemesisApplied: 0,
  consumerKills: 0,
  clientKills: 0,
  consumerStops: 0,
  clientStops: 0,
  linearizabilityChecks: 0,
  configurationsExplored: 0,
  sqliteKills: 0,
  sweepKills: 0,
  sweepChecks: 0,
  testFileRuns: 0,
  testsPassed: 0,
};
const started = performance.now();
const log = (s: string) =>
  console.log(`[soak ${((performance.now() - started) / 60_000).toFixed(1)} min] ${s}`);

/** Runs test files under a runner with a seed; resolves with the passed count or throws. */
function runTests(runner: "deno" | "bun", files: string[], seed: number): Promise<number> {
  const exe = findOnPath(runner);
  if (exe === undefined) throw new Error(`${runner} not on PATH`);
  const args = runner === "deno"
    ? ["test", "-A", "--no-check", ...files]
    : ["test", "--timeout", "600000", ...files];
  return new Promise((resolve, reject) => {
    const p = spawn(exe, args, {
      env: { ...process.env, DGEN_SEED: String(seed), NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    p.stdout.on("data", (d) => out += d);
    p.stderr.on("data", (d) => out += d);
    p.on("close", (code) => {
      if (code !== 0) {
        console.log(out);
        reject(new Error(`${runner} test ${files.join(" ")} failed with DGEN_SEED=${seed}`));
        return;
      }
      // Deno: "ok | 3 passed (21 steps)"; Bun: " 14 pass".
      const m = /(\d+) passed \((\d+) steps?\)/.exec(out);
      const b = /^\s*(\d+) pass$/m.exec(out);
      resolve(m ? Number(m[1]) + Number(m[2]) : b ? Number(b[1]) : 0);
    });
  });
}

const dir = mkdtempSync(join(tmpdir(), "dgen-soak-"));
try {
  while (performance.now() < end) {
    const round = ++totals.rounds;
    const seed = Math.floor(random() * 1_000_000_000);
    log(`round ${round}: seed ${seed}`);

    const nem = await runNemesis({
      seed,
      ops: OPS,
      counters: ["c0", "c1", "c2", "c3"],
      registers: ["r0", "r1", "r2", "r3"],
      faultEvery: [200, 800],
      log,
    });
    const f = nem.figures;
    totals.nemesisOps += f.ops;
    totals.nemesisOk += f.ok;
    totals.nemesisUnknown += f.unknown;
    totals.nemesisApplied += f.applied;
    totals.consumerKills += f.consumerKills;
    totals.clientKills += f.clientKills;
    totals.consumerStops += f.consumerStops;
    totals.clientStops += f.clientStops;
    totals.linearizabilityChecks += nem.counters.length + nem.registers.length;
    totals.configurationsExplored += f.explored;
    log(`nemesis: ${JSON.stringify(f)}`);
    if (performance.now() > end) break;

    const k = await runSqliteKills({ seed, kills: 200, dir });
    totals.sqliteKills += k.kills;
    log(`sqlite kills: ${JSON.stringify(k)}`);
    if (performance.now() > end) break;

    for (const [i, point] of SWEEP_POINTS.entries()) {
      const s = await runSweep(point, { seed: seed + i, kills: 5, dir });
      totals.sweepKills += s.kills;
      totals.sweepChecks++;
    }
    log(`sweep: every point, 5 kills each`);
    if (performance.now() > end) break;

    const runner = round % 2 === 1 ? "deno" : "bun";
    const files = ["unknown_commits.test.ts", "stale_lock.test.ts", "poison.test.ts"].map((f) =>
      testScript(`./faults/${f}`)
    );
    totals.testsPassed += await runTests(runner, files, seed);
    totals.testFileRuns += files.length;
    log(`unknown commits, stale lock, poison under ${runner}: passed`);
  }
  const summary = { seed: master, minutes: (performance.now() - started) / 60_000, ...totals };
  console.log(`soak passed: ${JSON.stringify(summary)}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
