/**
 * A child process of `bench/run.ts`. Usage: `bench_child.ts <db path> <mode> <JSON params>`;
 * prints JSON lines.
 *
 * - `serve` `{ ids }`: consuming counter instances for each id; prints `ready`, stays up.
 * - `drive` `{ ids, seconds }`: consuming counter instances for each id; prints `ready`, waits
 *   for a `go` line, then calls `increment` on every id in parallel (one sequential loop per
 *   id) for `seconds`; prints `{ calls, seconds }`.
 */
import process from "node:process";
import { createInterface } from "node:readline";
import { openSqliteBackend, openTenant, start } from "../mod.ts";
import { Counter } from "./_counter.ts";

const [path, mode, paramsJson] = process.argv.slice(2);
const params = JSON.parse(paramsJson ?? "{}") as { ids: string[]; seconds?: number };
const out = (x: unknown) => process.stdout.write(JSON.stringify(x) + "\n");

const backend = await openSqliteBackend({ path: path! });
const tenant = await openTenant(backend, "bench");
const refs = await Promise.all(params.ids.map((id) => start(Counter, [], { tenant, id })));
out({ ready: true, pid: process.pid });

if (mode === "drive") {
  const lines = createInterface({ input: process.stdin });
  await new Promise<void>((resolve) => lines.on("line", (l) => l.trim() === "go" && resolve()));
  const end = performance.now() + (params.seconds ?? 2) * 1000;
  const t0 = performance.now();
  let calls = 0;
  await Promise.all(refs.map(async (ref) => {
    while (performance.now() < end) {
      await ref.call("increment");
      calls++;
    }
  }));
  out({ calls, seconds: (performance.now() - t0) / 1000 });
  lines.close();
  await Promise.all(refs.map((r) => r.stop()));
  await backend.close();
  process.exit(0);
}
