/**
 * Storage benchmark: durable commit rates of the SQLite backend next to the disk's own
 * fdatasync rate and a bare SQLite commit measured in the same run, group-commit throughput
 * with concurrent writers, the memory backend for reference, cross-process write throughput,
 * and cross-process watch latency (Deno and Bun watchers).
 *
 * Run: `deno task bench:storage` (or `bun bench/storage.ts`). Options: `--seconds=N` per
 * measurement (default 2), `--repeats=N` rounds of the single-commit measurements, interleaved
 * so that load from elsewhere hits them alike (default 3; medians are reported), `--rounds=N`
 * watch rounds (default 200). Prints a table, then one JSON line. Files go to
 * `.dgen/bench-<pid>/` (removed afterwards).
 *
 * Figures are noisy on a shared machine: compare ratios within one run, not across runs.
 */

import { closeSync, fdatasyncSync, mkdirSync, openSync, rmSync, writeSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { DatabaseSync } from "node:sqlite";
import {
  type Backend,
  openMemoryBackend,
  openSqliteBackend,
  readInt64LE,
  type SqliteBackend,
} from "../mod.ts";
import { int64LE, strinc } from "../lib/bytes.ts";
import { missingRuntimes, type Runtime, sqliteChild } from "../tests/_processes.ts";
import { percentile } from "./_stats.ts";

const arg = (name: string, fallback: number) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a === undefined ? fallback : Number(a.slice(name.length + 3));
};
const SECONDS = arg("seconds", 2);
const ROUNDS = arg("rounds", 200);
const REPEATS = arg("repeats", 3);
const dir = resolve(".dgen", `bench-${process.pid}`);
mkdirSync(dir, { recursive: true });
let files = 0;
const fresh = (name: string) => join(dir, `${name}-${files++}.sqlite`);
const enc = new TextEncoder();

interface Row {
  key: string;
  name: string;
  samples: number[];
  unit: string;
  note?: string;
}
const rows = new Map<string, Row>();
/** Adds a sample to a measurement; the table and JSON report the median of its samples. */
function record(key: string, name: string, value: number, unit: string, note?: string): void {
  let row = rows.get(key);
  if (row === undefined) rows.set(key, row = { key, name, samples: [], unit });
  row.samples.push(value);
  if (note !== undefined) row.note = note;
  console.error(`  ${name}: ${value.toFixed(unit === "ms" ? 2 : 0)} ${unit}`);
}

/** The `p` quantile of `values`, in any order. */
function quantile(values: number[], p: number): number {
  return percentile([...values].sort((a, b) => a - b), p);
}

/** Runs `op` back to back for SECONDS; returns ops/s and per-op latencies (ms). */
async function timed(op: () => unknown): Promise<{ rate: number; lat: number[] }> {
  const lat: number[] = [];
  const start = performance.now();
  const end = start + SECONDS * 1000;
  let now = start;
  while (now < end) {
    const t = now;
    await op();
    now = performance.now();
    lat.push(now - t);
  }
  return { rate: lat.length / ((now - start) / 1000), lat };
}

/** The disk's own durable-write floor: overwrite 4 KiB (changed each time) and fdatasync. */
async function fsyncFloor(): Promise<void> {
  const path = join(dir, "fsync.bin");
  const fd = openSync(path, "w");
  const block = new Uint8Array(4096);
  let i = 0;
  const { rate, lat } = await timed(() => {
    // Identical bytes may skip the flush; change them every time.
    block.fill(++i & 0xff, 0, 16);
    writeSync(fd, block, 0, block.length, 0);
    fdatasyncSync(fd);
  });
  closeSync(fd);
  record("fdatasyncPerSec", "disk: 4 KiB write + fdatasync", rate, "ops/s", "physical floor");
  record("fdatasyncP50Ms", "disk: fdatasync p50", quantile(lat, 0.5), "ms");
}

/** A bare single-row SQLite commit (WAL, synchronous=FULL), no dgen in between. */
async function bareSqlite(): Promise<void> {
  const db = new DatabaseSync(fresh("bare"));
  db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL");
  db.exec(
    "CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO t VALUES (1, 0)",
  );
  const update = db.prepare("UPDATE t SET v = v + 1 WHERE k = 1");
  const { rate } = await timed(() => update.run());
  db.close();
  record("bareSqliteCommitsPerSec", "bare SQLite commit (WAL, FULL)", rate, "commits/s");
}

/** Sequential read-modify-write of one key: one transaction at a time. */
async function sequentialRmw(b: Backend, key: string, label: string, name: string) {
  const k = enc.encode("rmw");
  const { rate, lat } = await timed(() =>
    b.transact(async (tx) => {
      tx.set(k, int64LE(readInt64LE(await tx.get(k)) + 1n));
    })
  );
  record(`${key}PerSec`, `${label}: sequential RMW commits`, rate, "commits/s", name);
  record(`${key}P50Ms`, `${label}: RMW latency p50`, quantile(lat, 0.5), "ms");
  record(`${key}P99Ms`, `${label}: RMW latency p99`, quantile(lat, 0.99), "ms");
}

/** `writers` concurrent loops, each doing RMW transactions on its own key. */
async function groupCommit(writers: number): Promise<void> {
  const b = await openSqliteBackend({ path: fresh(`group${writers}`) });
  const before = { ...b.stats };
  let done = 0;
  const start = performance.now();
  // Stop by the clock, not a timer: the loops may run on promise callbacks alone.
  const end = start + SECONDS * 1000;
  const loops = Array.from({ length: writers }, async (_, i) => {
    const k = enc.encode(`w/${i}`);
    while (performance.now() < end) {
      await b.transact(async (tx) => {
        tx.set(k, int64LE(readInt64LE(await tx.get(k)) + 1n));
      });
      done++;
    }
  });
  await Promise.all(loops);
  const secs = (performance.now() - start) / 1000;
  const commits = b.stats.physicalCommits - before.physicalCommits;
  await b.close();
  record(
    `group${writers}PerSec`,
    `SQLite FULL, ${writers} concurrent writers`,
    done / secs,
    "tx/s",
    `mean group ${(done / commits).toFixed(1)}, ${(commits / secs).toFixed(0)} commits/s`,
  );
}

/** Two processes (Deno and Bun), each 16 concurrent RMW increments of one shared key. */
async function multiProcessWrites(): Promise<void> {
  const path = fresh("mp");
  await (await openSqliteBackend({ path })).close();
  const count = 5000;
  const children = (["deno", "bun"] as Runtime[]).map((r) =>
    sqliteChild(r, path, "increment", { key: "c", count, concurrency: 16, tag: r[0] })
  );
  try {
    await Promise.all(children.map((c) => c.next((d) => d.ready === true, 30_000, "ready")));
    const start = performance.now();
    for (const c of children) c.send("go");
    const ends = await Promise.all(
      children.map((c) => c.next((d) => d.done === true, 300_000, "done")),
    );
    const secs = (Math.max(...ends.map((e) => e.at)) - start) / 1000;
    const b = await openSqliteBackend({ path });
    const log = await b.transact((tx) =>
      tx.getRange(enc.encode("log/"), strinc(enc.encode("log/")))
    );
    const commits = new Set(log.map((r) => r.key.subarray(4, 12).join(","))).size;
    await b.close();
    record(
      "twoProcessRmwPerSec",
      "SQLite FULL, 2 processes × 16 writers, one key",
      (2 * count) / secs,
      "tx/s",
      `mean group ${((2 * count) / commits).toFixed(1)}`,
    );
  } finally {
    await Promise.all(children.map((c) => c.kill()));
  }
}

/** Commit in this process → watch fires in a Deno and a Bun child (time of their line here). */
async function watchLatency(): Promise<void> {
  const path = fresh("watch");
  const b = await openSqliteBackend({ path });
  const key = enc.encode("watched");
  const runtimes: Runtime[] = ["deno", "bun"];
  const children = runtimes.map((r) =>
    sqliteChild(r, path, "watch", { key: "watched", rounds: ROUNDS })
  );
  const lat: Record<string, number[]> = { deno: [], bun: [] };
  try {
    await Promise.all(children.map((c) => c.next((d) => d.ready === true, 30_000, "ready")));
    for (let i = 0; i < ROUNDS; i++) {
      await Promise.all(children.map((c) => c.next((d) => d.armed === i, 30_000, `armed ${i}`)));
      const t0 = performance.now();
      await b.transact((tx) => tx.set(key, int64LE(i)));
      const fired = await Promise.all(
        children.map((c) => c.next((d) => d.fired === i, 30_000, `fired ${i}`)),
      );
      fired.forEach((m, j) => lat[runtimes[j]!]!.push(m.at - t0));
    }
  } finally {
    await Promise.all(children.map((c) => c.kill()));
    await b.close();
  }
  for (const r of runtimes) {
    record(`watch_${r}_p50Ms`, `cross-process watch → ${r}: p50`, quantile(lat[r]!, 0.5), "ms");
    record(`watch_${r}_p99Ms`, `cross-process watch → ${r}: p99`, quantile(lat[r]!, 0.99), "ms");
  }
}

const runtime = process.versions.bun
  ? `bun ${process.versions.bun}`
  : `deno ${process.versions.deno}`;
const cpu = cpus();
console.error(`storage bench: ${runtime}, ${cpu.length} × ${cpu[0]?.model}, ${SECONDS} s each`);
try {
  for (let i = 0; i < REPEATS; i++) {
    console.error(`round ${i + 1} of ${REPEATS}`);
    await fsyncFloor();
    await bareSqlite();
    for (const sync of ["full", "normal"] as const) {
      const b: SqliteBackend = await openSqliteBackend({ path: fresh(sync), synchronous: sync });
      await sequentialRmw(
        b,
        `sqlite_${sync}`,
        `SQLite ${sync.toUpperCase()}`,
        sync === "full" ? "durable" : "not durable on power loss",
      );
      await b.close();
    }
  }
  {
    const m = openMemoryBackend();
    await sequentialRmw(m, "memory", "memory", "not durable");
    await m.close();
  }
  for (const writers of [1, 4, 16, 64]) await groupCommit(writers);
  const missing = missingRuntimes();
  if (missing === undefined) {
    await multiProcessWrites();
    await watchLatency();
  } else {
    console.error(`skipping cross-process measurements: ${missing}`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const median = (xs: number[]) => quantile(xs, 0.5);
const value = (key: string) => median(rows.get(key)!.samples);
const floor = value("fdatasyncPerSec");
const bare = value("bareSqliteCommitsPerSec");
const pad = (s: string, n: number) => s.padEnd(n);
console.log(`\nstorage bench — ${runtime}, ${cpu.length} × ${cpu[0]?.model}`);
console.log(
  `${SECONDS} s per measurement; single-commit rows: median of ${REPEATS} interleaved rounds; ` +
    `load average at end: ${loadavg().map((x) => x.toFixed(2)).join(" ")}\n`,
);
console.log(
  `${pad("measurement", 50)}${pad("value", 18)}${pad("×fsync", 8)}${pad("×bare", 8)}note`,
);
const json: Record<string, number> = {};
for (const r of rows.values()) {
  const v = median(r.samples);
  json[r.key] = Math.round(v * 100) / 100;
  const ms = r.unit === "ms";
  const text = `${v.toFixed(ms ? 2 : 0)} ${r.unit}`;
  const ratios = ms ? pad("", 16) : pad((v / floor).toFixed(2), 8) + pad((v / bare).toFixed(2), 8);
  console.log(`${pad(r.name, 50)}${pad(text, 18)}${ratios}${r.note ?? ""}`);
}
console.log(
  JSON.stringify({
    bench: "storage",
    runtime,
    cpus: cpu.length,
    cpu: cpu[0]?.model,
    loadavg: loadavg(),
    seconds: SECONDS,
    repeats: REPEATS,
    date: new Date().toISOString(),
    results: json,
  }),
);
