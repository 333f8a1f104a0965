/**
 * Many servers on one PostgreSQL database, from one process (a script, not a test):
 * `deno task bench:postgres-servers`, or `bun bench/postgres_servers.ts`. Uses the server named
 * by `DGEN_PG_URL`, or starts the private one with `.ci/postgres.sh start`.
 *
 * For 1, 10 and 100 counter servers, one sequential caller per server calls `increment` for
 * `BENCH_SECONDS` (default 4) seconds; prints calls/s, call latency p50/p99, and how many times
 * transaction bodies ran per transaction (above 1: serialization failures retried). Each size runs
 * in a schema of its own, dropped after it. Then one JSON line.
 */

import process from "node:process";
import { type Backend, openPostgresBackend, openTenant, start } from "../mod.ts";
import { serverUrl } from "./_postgres_url.ts";
import { Counter } from "./_counter.ts";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const SIZES = [1, 10, 100];

/** Counts transactions and the bodies they ran (a body runs again after a conflict). */
function counting(backend: Backend): { backend: Backend; counts: { tx: number; bodies: number } } {
  const counts = { tx: 0, bodies: 0 };
  const wrapped: Backend = Object.create(backend);
  wrapped.transact = (fn, options) => {
    counts.tx++;
    return backend.transact((tx) => {
      counts.bodies++;
      return fn(tx);
    }, options);
  };
  return { backend: wrapped, counts };
}

const url = serverUrl();
interface Row {
  servers: number;
  callsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  bodiesPerTx: number;
}
const rows: Row[] = [];
for (const servers of SIZES) {
  process.stderr.write(`${servers} servers…\n`);
  const schema = `dgen_bench_servers_${servers}_${Date.now()}`;
  const raw = await openPostgresBackend({ url, schema, maxConnections: 32 });
  const { backend, counts } = counting(raw);
  const tenant = await openTenant(backend, "bench");
  const refs = await Promise.all(
    Array.from({ length: servers }, (_, i) => start(Counter, [], { tenant, id: `s${i}` })),
  );
  counts.tx = 0;
  counts.bodies = 0;
  const latencies: number[] = [];
  const t0 = performance.now();
  const end = t0 + SECONDS * 1000;
  await Promise.all(refs.map(async (ref) => {
    while (performance.now() < end) {
      const t = performance.now();
      await ref.call("increment", undefined, { timeout: 60_000 });
      latencies.push(performance.now() - t);
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  rows.push({
    servers,
    callsPerSec: latencies.length / seconds,
    p50Ms: latencies[latencies.length >> 1]!,
    p99Ms: latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))]!,
    bodiesPerTx: counts.bodies / counts.tx,
  });
  await Promise.all(refs.map((r) => r.stop()));
  await raw.close();
  // The schema goes with a fresh connection (the backend's are closed).
  const { default: postgres } = await import("postgres");
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  await sql.unsafe(`drop schema if exists "${schema}" cascade`);
  await sql.end();
}

const runtime = "Bun" in globalThis
  ? `bun ${process.versions.bun}`
  : `deno ${process.versions.deno}`;
console.log(`many servers on PostgreSQL, one process (${runtime}), ${SECONDS} s per size`);
console.log("servers   calls/s   p50 ms    p99 ms   bodies per transaction");
for (const r of rows) {
  console.log(
    `${String(r.servers).padStart(7)}  ${r.callsPerSec.toFixed(0).padStart(8)}  ${
      r.p50Ms.toFixed(2).padStart(7)
    }  ${r.p99Ms.toFixed(1).padStart(8)}   ${r.bodiesPerTx.toFixed(2)}`,
  );
}
console.log(JSON.stringify({ runtime, seconds: SECONDS, rows }));
