/**
 * Many servers on one PostgreSQL database, from one process (a script, not a test):
 * `deno task bench:postgres-servers`, or `bun bench/postgres_servers.ts`. Uses the server named
 * by `DGEN_PG_URL`, or starts the private one with `.ci/postgres.sh start`.
 *
 * For 1, 10 and 100 counter servers, one sequential client per server calls `increment` (then,
 * in a second pass, casts `bump`, consumed by the servers meanwhile) for `BENCH_SECONDS` (default
 * 4) seconds; prints calls or accepted casts per second, their latency p50/p99, how many times
 * transaction bodies ran per transaction (above 1: serialization failures retried), and for casts
 * how long the servers took afterwards to apply every accepted cast (checked), beside a bare
 * serializable single-row read-modify-write against `npm:postgres` measured first, in the same
 * run, for as long. Each pass and size
 * runs in a schema of its own, dropped after it. Then one JSON line. `BENCH_MODES=cast` (or
 * `call`) runs one pass only; `BENCH_SIZES=10,100` picks the sizes.
 */

import process from "node:process";
import { type Backend, openPostgresBackend, openTenant, start } from "../mod.ts";
import { bareRmw, serverUrl } from "./_postgres.ts";
import { Counter } from "./_counter.ts";
import { percentile } from "./_stats.ts";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const SIZES = (process.env.BENCH_SIZES ?? "1,10,100").split(",").map(Number);

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
type Mode = "call" | "cast";
interface Row {
  mode: Mode;
  servers: number;
  /** Calls (or accepted casts) per second, all servers together. */
  perSec: number;
  p50Ms: number;
  p99Ms: number;
  bodiesPerTx: number;
  /** Casts only: time from the end of the window until every accepted cast was applied. */
  drainMs?: number;
}
const rows: Row[] = [];

/** p50 and p99 of sorted latencies. */
function percentiles(sorted: number[]): { p50Ms: number; p99Ms: number } {
  return { p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99) };
}

// The floor, measured first in the same run: a bare serializable single-row read-modify-write,
// one client, one connection, for the same time.
const bare = await (async () => {
  process.stderr.write("bare serializable single-row transaction…\n");
  const { default: postgres } = await import("postgres");
  const sql = postgres(url, { max: 1, onnotice: () => {}, fetch_types: false });
  const schema = `dgen_bench_bare_${Date.now()}`;
  try {
    await sql.unsafe(`create schema "${schema}"`);
    await sql.unsafe(`create table "${schema}".bare (k int primary key, v bigint not null)`);
    await sql.unsafe(`insert into "${schema}".bare values (1, 0)`);
    const table = `"${schema}".bare`;
    for (let i = 0; i < 50; i++) await bareRmw(sql, table);
    const latencies: number[] = [];
    const t0 = performance.now();
    const end = t0 + SECONDS * 1000;
    while (performance.now() < end) {
      const t = performance.now();
      await bareRmw(sql, table);
      latencies.push(performance.now() - t);
    }
    const perSec = latencies.length / ((performance.now() - t0) / 1000);
    return { perSec, ...percentiles(latencies.sort((a, b) => a - b)) };
  } finally {
    await sql.unsafe(`drop schema if exists "${schema}" cascade`);
    await sql.end();
  }
})();

const MODES = (process.env.BENCH_MODES ?? "call,cast").split(",") as Mode[];
for (const mode of MODES) {
  for (const servers of SIZES) {
    process.stderr.write(`${mode}: ${servers} servers…\n`);
    const schema = `dgen_bench_servers_${mode}_${servers}_${Date.now()}`;
    const raw = await openPostgresBackend({ url, schema, maxConnections: 32 });
    const { backend, counts } = counting(raw);
    const tenant = await openTenant(backend, "bench");
    const refs = await Promise.all(
      Array.from({ length: servers }, (_, i) => start(Counter, [], { tenant, id: `s${i}` })),
    );
    counts.tx = 0;
    counts.bodies = 0;
    const latencies: number[] = [];
    const sent = refs.map(() => 0);
    const t0 = performance.now();
    const end = t0 + SECONDS * 1000;
    await Promise.all(refs.map(async (ref, i) => {
      while (performance.now() < end) {
        const t = performance.now();
        if (mode === "call") await ref.call("increment", undefined, { timeout: 60_000 });
        else await ref.cast("bump");
        latencies.push(performance.now() - t);
        sent[i]!++;
      }
    }));
    const seconds = (performance.now() - t0) / 1000;
    let drainMs: number | undefined;
    if (mode === "cast") {
      // Every accepted cast must be applied: poll each server's value, with a deadline.
      const drainStart = performance.now();
      const deadline = drainStart + 120_000;
      await Promise.all(refs.map(async (ref, i) => {
        while ((await ref.call("value", undefined, { timeout: 60_000 })) !== sent[i]) {
          if (performance.now() > deadline) throw new Error(`server s${i} did not drain`);
          await new Promise((r) => setTimeout(r, 20));
        }
      }));
      drainMs = performance.now() - drainStart;
    }
    rows.push({
      mode,
      servers,
      perSec: latencies.length / seconds,
      ...percentiles(latencies.sort((a, b) => a - b)),
      bodiesPerTx: counts.bodies / counts.tx,
      drainMs,
    });
    await Promise.all(refs.map((r) => r.stop()));
    await raw.close();
    // The schema goes with a fresh connection (the backend's are closed).
    const { default: postgres } = await import("postgres");
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    await sql.unsafe(`drop schema if exists "${schema}" cascade`);
    await sql.end();
  }
}

const runtime = "Bun" in globalThis
  ? `bun ${process.versions.bun}`
  : `deno ${process.versions.deno}`;
console.log(`many servers on PostgreSQL, one process (${runtime}), ${SECONDS} s per size`);
console.log(
  `bare serializable single-row read-modify-write (npm:postgres, one client): ${
    bare.perSec.toFixed(0)
  }/s, p50 ${bare.p50Ms.toFixed(2)} ms, p99 ${bare.p99Ms.toFixed(1)} ms`,
);
console.log(
  "mode  servers     ops/s   vs bare   p50 ms    p99 ms   bodies per transaction   drain s",
);
for (const r of rows) {
  console.log(
    `${r.mode}  ${String(r.servers).padStart(7)}  ${r.perSec.toFixed(0).padStart(8)}  ${
      (r.perSec / bare.perSec).toFixed(2).padStart(7)
    }x  ${r.p50Ms.toFixed(2).padStart(7)}  ${r.p99Ms.toFixed(1).padStart(8)}   ${
      r.bodiesPerTx.toFixed(2).padEnd(22)
    }   ${r.drainMs === undefined ? "" : (r.drainMs / 1000).toFixed(1)}`,
  );
}
console.log(JSON.stringify({ runtime, seconds: SECONDS, bare, rows }));
