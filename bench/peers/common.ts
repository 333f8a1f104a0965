/**
 * Shared types and helpers of the peer harness (`bench/peers/*.ts`): the result shape the
 * benchmark reports, installing a peer's pinned npm packages into `bench/.peers/<peer>/`,
 * child processes that are always stopped, free ports, polling with a deadline, the sequential
 * counter loop with its latency summary, and counting a process's fsync calls with `strace`.
 *
 * Everything here runs unchanged under Deno and Bun (it uses `node:*` modules only).
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { findOnPath } from "../../tests/_processes.ts";

/** The repository root (two levels above this file). */
export const repoRoot: string = fileURLToPath(new URL("../../", import.meta.url));

/**
 * One measured mode of one peer. Figures are per sequential durable increment. A figure that
 * could not be measured is `NaN` (JSON: `null`) with the reason in `notes`, never a made-up
 * number; when the peer could not run at all, `error` says why and `ops` is 0.
 */
export interface PeerResult {
  /** The peer, e.g. `"Durable Objects"`. */
  name: string;
  /** How it was driven, e.g. `"HTTP from the bench"`. */
  mode: string;
  /** Timed operations (warm-up excluded). */
  ops: number;
  /** Timed operations per second of wall time. */
  opsPerSec: number;
  /** Median latency of one operation, ms (`NaN` if it cannot be measured; see `notes`). */
  p50Ms: number;
  /** 99th percentile latency of one operation, ms (`NaN` if it cannot be measured). */
  p99Ms: number;
  /** Mean latency of one operation, ms. */
  meanMs: number;
  /** The peer's durability setting as it applies to this measurement, and how we know. */
  durability: string;
  /** Versions and runtimes involved. */
  runtime: string;
  /** fsync/fdatasync calls per operation counted with strace in a separate probe, if counted. */
  fsyncsPerOp?: number;
  /** Result of the restart-and-read-back check of the peer's state, if one ran. */
  persistence?: { ok: boolean; detail: string };
  /** Timed operations per second of each round, when the mode ran in rounds. */
  roundOpsPerSec?: number[];
  /** Caveats about this figure. */
  notes?: string;
  /** Why the peer could not be measured (the figures are then `NaN`). */
  error?: string;
}

/** Options every peer runner takes. */
export interface PeerOptions {
  /** Timed sequential increments per mode. */
  n: number;
  /** Untimed increments before the timed ones (start-up, JIT, connection set-up). */
  warmup: number;
  /** Progress lines (installing, starting, checks). */
  log: (line: string) => void;
  /** Increments run under strace to count fsyncs per operation (0 skips; default 200). */
  fsyncProbeOps?: number;
  /** Timed rounds of `n` increments per mode (default 1); the warm-up precedes the first. */
  rounds?: number;
  /**
   * Called after each timed round of each mode: `bench/run.ts` times dgen's side of the ratio
   * there, so that the two sides take turns on the machine instead of running a minute apart.
   */
  afterRound?: (peer: PeerMode, round: number) => Promise<void>;
}

/** Which peer and mode a figure is of. */
export type PeerMode = Pick<PeerResult, "name" | "mode">;

/** The timed rounds per mode that `options` asks for (at least one). */
export function roundCount(options: PeerOptions): number {
  return Math.max(1, options.rounds ?? 1);
}

/** A timed run of sequential increments: each one's latency, the wall time, the last reply. */
export interface CounterRun {
  latenciesMs: number[];
  totalMs: number;
  last: number;
}

/**
 * Runs `round` (`warmup` is the untimed increments to do first: the given warm-up in the first
 * round, none after) for `options.rounds` rounds, calling `options.afterRound` after each.
 * Returns the pooled summary (latencies of all rounds, ops over their summed time), each
 * round's ops/s, and the last round's final value.
 */
export async function inRounds(
  options: PeerOptions,
  peer: PeerMode,
  round: (warmup: number) => Promise<CounterRun>,
): Promise<
  ReturnType<typeof summarize> & { roundOpsPerSec: number[]; last: number }
> {
  const rounds = roundCount(options);
  const latencies: number[] = [];
  const roundOpsPerSec: number[] = [];
  let totalMs = 0;
  let last = 0;
  for (let r = 0; r < rounds; r++) {
    const run = await round(r === 0 ? options.warmup : 0);
    for (const x of run.latenciesMs) latencies.push(x);
    totalMs += run.totalMs;
    last = run.last;
    roundOpsPerSec.push(run.latenciesMs.length / (run.totalMs / 1000));
    await options.afterRound?.(peer, r);
  }
  return { ...summarize(latencies, totalMs), roundOpsPerSec, last };
}

/** A result for a mode that could not be measured, with the reason. */
export function failedResult(
  base: Pick<PeerResult, "name" | "mode" | "durability" | "runtime">,
  error: unknown,
): PeerResult {
  const message = error instanceof Error ? error.message : String(error);
  return { ...base, ops: 0, opsPerSec: NaN, p50Ms: NaN, p99Ms: NaN, meanMs: NaN, error: message };
}

/** The runtime this process runs under, e.g. `"deno 2.9.6"` or `"bun 1.4.4"`. */
export function hostRuntime(): string {
  const bun = process.versions.bun;
  if (bun !== undefined) return `bun ${bun}`;
  const deno = (globalThis as { Deno?: { version: { deno: string } } }).Deno;
  return deno !== undefined ? `deno ${deno.version.deno}` : `node ${process.versions.node}`;
}

// ---------------------------------------------------------------------------------------------
// Latency summary

/** Nearest-rank percentile of ascending `sorted` (`q` in 0..1). */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1]!;
}

/** ops/s, p50, p99 and mean of per-operation latencies (ms) over `totalMs` of wall time. */
export function summarize(
  latenciesMs: readonly number[],
  totalMs: number,
): Pick<PeerResult, "ops" | "opsPerSec" | "p50Ms" | "p99Ms" | "meanMs"> {
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  const ops = sorted.length;
  return {
    ops,
    opsPerSec: ops / (totalMs / 1000),
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    meanMs: sorted.reduce((s, x) => s + x, 0) / ops,
  };
}

/**
 * Runs `warmup` untimed then `n` timed calls of `increment`, one at a time, and checks that each
 * returns the previous value plus one (so every reply is the new, read-back value).
 */
export async function sequentialCounter(
  n: number,
  warmup: number,
  increment: () => Promise<number>,
): Promise<CounterRun> {
  let last = await increment();
  const check = (value: number) => {
    if (value !== last + 1) throw new Error(`counter replied ${value} after ${last}`);
    last = value;
  };
  for (let i = 1; i < warmup; i++) check(await increment());
  const latenciesMs: number[] = new Array(n);
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const value = await increment();
    latenciesMs[i] = performance.now() - t;
    check(value);
  }
  return { latenciesMs, totalMs: performance.now() - start, last };
}

// ---------------------------------------------------------------------------------------------
// Waiting

/** Polls until a condition holds, with a deadline (the test suite's helper). */
export { waitFor } from "../../tests/_helpers.ts";

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => port > 0 ? resolvePort(port) : reject(new Error("no free port")));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Cleanup: every child and temp dir is registered here, released in reverse order by
// `release()` (normal exit and failure), and synchronously on SIGINT/SIGTERM.

/** Things to undo, last first. */
export class Cleanup {
  readonly #steps: { name: string; async: () => Promise<void>; sync: () => void }[] = [];
  readonly #onSignal = (signal: NodeJS.Signals) => {
    this.releaseSync();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };

  constructor() {
    process.on("SIGINT", this.#onSignal);
    process.on("SIGTERM", this.#onSignal);
  }

  /** Registers an undo step: `async` normally, `sync` when the process is being interrupted. */
  add(name: string, async: () => Promise<void>, sync: () => void): () => Promise<void> {
    const step = { name, async, sync };
    this.#steps.push(step);
    return async () => {
      const i = this.#steps.indexOf(step);
      if (i >= 0) this.#steps.splice(i, 1);
      await step.async();
    };
  }

  /** A fresh directory under `.dgen/` (same disk as dgen's own benchmark files), removed later. */
  tempDir(prefix: string): string {
    const dir = resolve(repoRoot, ".dgen", `${prefix}-${process.pid}-${Date.now()}`);
    mkdirSync(dir, { recursive: true });
    const remove = () => rmSync(dir, { recursive: true, force: true });
    this.add(`remove ${dir}`, () => Promise.resolve(remove()), remove);
    return dir;
  }

  /** Runs every step, last first; failures are reported, not thrown. */
  async release(log: (line: string) => void): Promise<void> {
    while (this.#steps.length > 0) {
      const step = this.#steps.pop()!;
      try {
        await step.async();
      } catch (e) {
        log(`cleanup: ${step.name} failed: ${e instanceof Error ? e.message : e}`);
      }
    }
    process.off("SIGINT", this.#onSignal);
    process.off("SIGTERM", this.#onSignal);
  }

  /** Best-effort synchronous cleanup for an interrupted process. */
  releaseSync(): void {
    while (this.#steps.length > 0) {
      try {
        this.#steps.pop()!.sync();
      } catch { /* the process is going away; nothing more can be done */ }
    }
  }
}

/** A child process we started: its output is kept (for errors) and it is stopped by pid. */
export class Proc {
  readonly #child: ChildProcess;
  #output = "";
  #exit: number | null | undefined;
  readonly exited: Promise<number | null>;
  readonly #listeners: ((text: string) => void)[] = [];

  constructor(
    readonly label: string,
    command: string,
    args: readonly string[],
    options: { cwd?: string; env?: Record<string, string> } = {},
  ) {
    this.#child = spawn(command, [...args], {
      cwd: options.cwd ?? repoRoot,
      env: { ...process.env, NO_COLOR: "1", RUST_BACKTRACE: "0", ...options.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.exited = new Promise((done) => {
      this.#child.on("error", (e) => {
        this.#output += `\n[spawn error] ${e.message}`;
        this.#exit = null;
        done(null);
      });
      this.#child.on("close", (code) => {
        this.#exit = code;
        done(code);
      });
    });
    const take = (chunk: Buffer) => {
      const text = chunk.toString("utf8");
      // Keep the last 64 KB: enough to explain a failure without growing without bound.
      this.#output = (this.#output + text).slice(-65536);
      for (const l of this.#listeners) l(text);
    };
    this.#child.stdout!.on("data", take);
    this.#child.stderr!.on("data", take);
  }

  /** The process id (undefined if it failed to spawn). */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Whether it has exited. */
  get running(): boolean {
    return this.#exit === undefined;
  }

  /** The last output lines (stdout and stderr mixed). */
  tail(lines = 20): string {
    return this.#output.trimEnd().split("\n").slice(-lines).join("\n");
  }

  /** Resolves once its output contains `text`; rejects if it exits first or after `ms`. */
  waitForOutput(text: string, ms: number): Promise<void> {
    if (this.#output.includes(text)) return Promise.resolve();
    return new Promise((done, fail) => {
      const timer = setTimeout(
        () => fail(new Error(`${this.label}: no "${text}" after ${ms} ms`)),
        ms,
      );
      const listener = () => {
        if (this.#output.includes(text)) {
          clearTimeout(timer);
          done();
        }
      };
      this.#listeners.push(listener);
      this.exited.then((code) => {
        clearTimeout(timer);
        if (!this.#output.includes(text)) {
          fail(new Error(`${this.label} exited (${code}) before "${text}":\n${this.tail()}`));
        }
      });
    });
  }

  /** Sends `signal` to this process (by pid) if it is still running. */
  signal(signal: NodeJS.Signals): void {
    if (this.running && this.#child.pid !== undefined) {
      try {
        process.kill(this.#child.pid, signal);
      } catch { /* already gone */ }
    }
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.running) return;
    this.signal("SIGTERM");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), graceMs));
    const result = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (result === "timeout") {
      this.signal("SIGKILL");
      await this.exited;
    }
  }

  /** Registers this process with `cleanup` (stopped on release or interrupt). */
  register(cleanup: Cleanup): () => Promise<void> {
    return cleanup.add(`stop ${this.label}`, () => this.stop(), () => this.signal("SIGKILL"));
  }
}

/** Runs a command to completion; rejects with its output when it fails. */
export async function run(
  label: string,
  command: string,
  args: readonly string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<string> {
  const proc = new Proc(label, command, args, options);
  const code = await proc.exited;
  if (code !== 0) throw new Error(`${label} failed (exit ${code}):\n${proc.tail(30)}`);
  return proc.tail(Number.MAX_SAFE_INTEGER);
}

// ---------------------------------------------------------------------------------------------
// Installing a peer

/** Where a peer's packages live: `bench/.peers/<peer>/` (ignored by git). */
export function peerDir(peer: string): string {
  return join(repoRoot, "bench", ".peers", peer);
}

/** The version of `pkg` installed under `dir`, if any. */
export function installedVersion(dir: string, pkg: string): string | undefined {
  const manifest = join(dir, "node_modules", pkg, "package.json");
  if (!existsSync(manifest)) return undefined;
  return (JSON.parse(readFileSync(manifest, "utf8")) as { version?: string }).version;
}

/**
 * Installs `packages` (name → exact version) from the npm registry into `bench/.peers/<peer>/`,
 * unless exactly those versions and every file in `mustExist` are already there. Install
 * scripts never run (`--ignore-scripts`): neither peer needs them (see docs/peers.md).
 */
export async function installPeer(
  peer: string,
  packages: Readonly<Record<string, string>>,
  options: {
    log: (line: string) => void;
    mustExist?: readonly string[];
    env?: Record<string, string>;
  },
): Promise<string> {
  const dir = peerDir(peer);
  const wanted = Object.entries(packages);
  const present = () =>
    wanted.every(([pkg, version]) => installedVersion(dir, pkg) === version) &&
    (options.mustExist ?? []).every((f) => existsSync(join(dir, f)));
  if (present()) {
    options.log(`${peer}: ${wanted.map(([p, v]) => `${p}@${v}`).join(", ")} already installed`);
    return dir;
  }
  const npm = findOnPath("npm");
  if (npm === undefined) throw new Error("npm not found on PATH (needed to install the peer)");
  mkdirSync(dir, { recursive: true });
  const specs = wanted.map(([pkg, version]) => `${pkg}@${version}`);
  options.log(`${peer}: installing ${specs.join(", ")} into ${dir} (npm registry) …`);
  const start = performance.now();
  await run(`npm install (${peer})`, npm, [
    "install",
    "--prefix",
    dir,
    "--save-exact",
    "--ignore-scripts",
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
    ...specs,
  ], { cwd: dir, env: options.env });
  if (!present()) throw new Error(`${peer}: npm install finished but the packages are missing`);
  options.log(`${peer}: installed in ${((performance.now() - start) / 1000).toFixed(1)} s`);
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Counting fsyncs

/** The pids of this process's children whose command name is `comm`. */
export function childPids(comm: string, parent = process.pid): number[] {
  const found: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return found; // not Linux
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // Format: pid (comm) state ppid …; comm may contain spaces, so split after the last ')'.
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (name === comm && ppid === parent) found.push(Number(entry));
    } catch { /* the process went away meanwhile */ }
  }
  return found;
}

/** What `countSyncs` saw: calls per syscall name, over the probe's operations. */
export interface SyncCount {
  /** Calls per syscall (`fsync`, `fdatasync`, …) while the probe ran. */
  calls: Record<string, number>;
  /** All of them. */
  total: number;
  /** Operations the probe ran. */
  ops: number;
}

/**
 * Attaches `strace -f -c` to `pid` (all its threads), runs `during` (which performs `ops`
 * operations) and returns how many fsync-family calls the process made meanwhile. Returns the
 * reason as a string when strace is missing or cannot attach. strace slows every traced
 * syscall, so this runs apart from the timed measurement.
 */
export async function countSyncs(
  pid: number,
  ops: number,
  during: () => Promise<void>,
  cleanup: Cleanup,
): Promise<SyncCount | string> {
  const strace = findOnPath("strace");
  if (strace === undefined) return "strace not found (Debian package `strace`)";
  const dir = cleanup.tempDir("strace");
  const out = join(dir, "strace.txt");
  const proc = new Proc("strace", strace, [
    "-f",
    "-c",
    "-e",
    "trace=fsync,fdatasync,sync_file_range,syncfs,msync",
    "-o",
    out,
    "-p",
    String(pid),
  ]);
  const unregister = proc.register(cleanup);
  try {
    await proc.waitForOutput("attached", 10_000);
  } catch (e) {
    await unregister();
    return `strace could not attach: ${e instanceof Error ? e.message.split("\n")[0] : e}`;
  }
  try {
    await during();
  } finally {
    // SIGINT makes strace detach and write its summary.
    proc.signal("SIGINT");
    await proc.exited;
    await unregister();
  }
  const calls: Record<string, number> = {};
  for (const line of readFileSync(out, "utf8").split("\n")) {
    const cols = line.trim().split(/\s+/);
    const name = cols[cols.length - 1];
    if (cols.length < 5 || name === undefined || name === "total" || name === "syscall") continue;
    const count = Number(cols[3]);
    if (Number.isFinite(count)) calls[name] = count;
  }
  const total = Object.values(calls).reduce((s, x) => s + x, 0);
  return { calls, total, ops };
}

/** `"1.00 fsync/op (fsync 200 over 200 increments)"`, or the reason there is no count. */
export function describeSyncs(count: SyncCount | string): string {
  if (typeof count === "string") return `not counted: ${count}`;
  const detail = Object.entries(count.calls).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
  return `${
    (count.total / count.ops).toFixed(2)
  } fsync-family calls/op (${detail} over ${count.ops} increments)`;
}

// ---------------------------------------------------------------------------------------------
// Output

/** Prints the results as a table. */
export function printTable(results: readonly PeerResult[], print: (line: string) => void): void {
  const num = (x: number, digits: number) => Number.isNaN(x) ? "n/a" : x.toFixed(digits);
  const rows = results.map((r) => [
    r.name,
    r.mode,
    num(r.opsPerSec, 0),
    num(r.p50Ms, 2),
    num(r.p99Ms, 2),
    num(r.meanMs, 2),
    r.fsyncsPerOp === undefined ? "?" : r.fsyncsPerOp.toFixed(2),
    r.persistence === undefined ? "-" : r.persistence.ok ? "ok" : "FAILED",
  ]);
  const head = ["peer", "mode", "ops/s", "p50 ms", "p99 ms", "mean ms", "fsync/op", "persists"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ");
  print(fmt(head));
  print(widths.map((w) => "-".repeat(w)).join("  "));
  for (const row of rows) print(fmt(row));
  for (const r of results) {
    const extra = [
      `  ${r.name} / ${r.mode}: ${r.runtime}`,
      `    durability: ${r.durability}`,
      r.persistence ? `    persistence: ${r.persistence.detail}` : "",
      r.notes ? `    notes: ${r.notes}` : "",
      r.error ? `    ERROR: ${r.error}` : "",
    ];
    for (const line of extra) if (line !== "") print(line);
  }
}

/** Parses `--name=value` numeric flags of a standalone run. */
export function numberFlag(name: string, fallback: number): number {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (arg === undefined) return fallback;
  const value = Number(arg.slice(name.length + 3));
  if (!Number.isInteger(value) || value < 0) throw new Error(`--${name} must be an integer >= 0`);
  return value;
}
