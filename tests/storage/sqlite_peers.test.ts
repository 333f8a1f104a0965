/**
 * Processes sharing one SQLite file find each other however they reach it, and a watch never
 * misses another process's commit, whatever the processes believe about each other: through a
 * symbolic link, from another PID namespace, from a process that believes it is alone (it
 * stores the commit counter only every 256 commits), and after a peer was SIGKILLed (its
 * registration is pruned although the peers directory does not change). Children are
 * `sqlite_peers_child.ts`; each prints a ready line the test waits for, and is killed in
 * `finally`.
 */

import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { openSqliteBackend, type SqliteBackend } from "../../mod.ts";
import { findOnPath, missingRuntimes, type Runtime, testScript } from "../_processes.ts";
import { deadline, runtime, waitFor } from "../_helpers.ts";

const skip = missingRuntimes();
let root: string | undefined;
after(() => {
  if (root !== undefined) rmSync(root, { recursive: true, force: true });
});
let dirs = 0;
/** A fresh directory, under one made on first use (a skipped run makes none). */
const fresh = () => {
  const dir = join(
    root ??= realpathSync(mkdtempSync(join(tmpdir(), "dgen-sqlite-peers-"))),
    `d${dirs++}`,
  );
  mkdirSync(dir);
  return dir;
};
const enc = new TextEncoder();
const dec = new TextDecoder();

/** Generous: two cores shared with other agents; a cold child start takes a second or so. */
const READY_MS = 30_000;
/** A watch must fire within this of the other process's commit: well under the 1 s poll. */
const FIRE_MS = 500;
const TEST = { skip, timeout: 120_000 };
/** The other runtime than the one running the tests. */
const other: Runtime = runtime === "deno" ? "bun" : "deno";

/** A `sqlite_peers_child.ts` process; `prefix` runs it under another command (`unshare`). */
class PeerChild {
  readonly #proc: ChildProcess;
  readonly #lines: Array<Record<string, unknown>> = [];
  #wake: (() => void) | undefined;
  #buffer = "";
  #ended = false;
  readonly closed: Promise<void>;

  constructor(childRuntime: Runtime, dbPath: string, prefix: string[] = []) {
    const exe = findOnPath(childRuntime)!;
    const script = testScript("./storage/sqlite_peers_child.ts");
    const args = childRuntime === "deno" ? ["run", "-A", script, dbPath] : [script, dbPath];
    const argv = [...prefix, exe, ...args];
    this.#proc = spawn(argv[0]!, argv.slice(1), {
      stdio: ["pipe", "pipe", "inherit"],
      env: { ...process.env, NO_COLOR: "1" },
    });
    this.closed = new Promise((resolve) =>
      this.#proc.on("close", () => {
        this.#ended = true;
        this.#wake?.();
        resolve();
      })
    );
    this.#proc.stdout!.setEncoding("utf8");
    this.#proc.stdout!.on("data", (chunk: string) => {
      this.#buffer += chunk;
      let nl: number;
      while ((nl = this.#buffer.indexOf("\n")) >= 0) {
        const line = this.#buffer.slice(0, nl).trim();
        this.#buffer = this.#buffer.slice(nl + 1);
        if (line !== "") this.#lines.push(JSON.parse(line));
      }
      this.#wake?.();
    });
  }

  /** The first line `match` accepts (removed); rejects after `ms`. */
  async next(
    match: (d: Record<string, unknown>) => boolean,
    ms: number,
    what: string,
  ): Promise<Record<string, unknown>> {
    const end = performance.now() + ms;
    for (;;) {
      const i = this.#lines.findIndex(match);
      if (i >= 0) return this.#lines.splice(i, 1)[0]!;
      if (this.#ended) throw new Error(`child exited before ${what}`);
      const left = end - performance.now();
      if (left <= 0) throw new Error(`child: no ${what} after ${ms} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        const wake = () => done();
        function done() {
          clearTimeout(timer);
          resolve();
        }
        this.#wake = wake;
      });
      this.#wake = undefined;
    }
  }

  /** Commits `key` = `value` in the child; resolves with the commit counter it used. */
  async write(key: string, value: string): Promise<number> {
    this.#proc.stdin!.write(`write ${key} ${value}\n`);
    const d = await this.next((d) => d.wrote === value, READY_MS, `write of ${value}`);
    return d.counter as number;
  }

  get pid(): number {
    return this.#proc.pid ?? 0;
  }

  /** SIGKILLs the process (if still running) and waits until it has gone. */
  async kill(): Promise<void> {
    if (!this.#ended) {
      try {
        process.kill(this.pid, "SIGKILL");
      } catch { /* already gone */ }
    }
    this.#proc.stdin?.destroy();
    await this.closed;
  }
}

async function withChild(
  childRuntime: Runtime,
  dbPath: string,
  fn: (child: PeerChild, ready: Record<string, unknown>) => Promise<void>,
  prefix: string[] = [],
): Promise<void> {
  const child = new PeerChild(childRuntime, dbPath, prefix);
  try {
    const ready = await child.next((d) => d.ready === true, READY_MS, "ready line");
    await fn(child, ready);
  } finally {
    await child.kill();
  }
}

/** Arms a watch on `key` in a read-only transaction (no commit); returns it and the value. */
async function watchKey(b: SqliteBackend, key: string) {
  const k = enc.encode(key);
  return await b.transact(async (tx) => {
    const v = await tx.get(k);
    return { value: v === undefined ? undefined : dec.decode(v), watch: tx.watch(k) };
  }, { readOnly: true });
}

/**
 * Rounds of: watch `k` in this process, the child writes it, the watch fires within `ms` of
 * the child's report that it committed.
 */
async function watchChildWrites(
  b: SqliteBackend,
  child: PeerChild,
  rounds: number,
  ms: number,
  between?: (round: number) => Promise<void>,
): Promise<number[]> {
  const counters: number[] = [];
  for (let i = 1; i <= rounds; i++) {
    await between?.(i);
    const { watch } = await watchKey(b, "k");
    counters.push(await child.write("k", String(i)));
    assert.equal(await deadline(watch.promise, ms, `watch of round ${i}`), true);
    assert.equal((await watchKey(b, "k")).value, String(i));
  }
  return counters;
}

/** Names of the registration files in `peers` of process `pid`. */
const registrationsOf = (peers: string, pid: number) =>
  existsSync(peers) ? readdirSync(peers).filter((n) => n.endsWith(`.${pid}`)) : [];

/** Why processes cannot be started in a new PID namespace here, if they cannot. */
function unshareMissing(): string | undefined {
  if (findOnPath("unshare") === undefined) return "unshare not found on PATH";
  const r = spawnSync("unshare", ["--pid", "--fork", "--kill-child", "true"]);
  return r.status === 0
    ? undefined
    : `unshare --pid failed (needs root or user namespaces): ${String(r.stderr).trim()}`;
}

describe("sqlite: processes find each other, and watches miss no commit", () => {
  if (skip) console.log(`skipping SQLite peer tests: ${skip}`);

  for (const childRuntime of ["deno", "bun"] as const) {
    it(
      `wakes a watch at once for the commits of a ${childRuntime} process that reached the file through a symbolic link`,
      TEST,
      async () => {
        const dir = fresh();
        mkdirSync(join(dir, "real"));
        mkdirSync(join(dir, "alias"));
        const path = join(dir, "real", "db.sqlite");
        const b = await openSqliteBackend({ path, synchronous: "normal" });
        try {
          const alias = join(dir, "alias", "db.sqlite");
          symlinkSync(path, alias);
          await withChild(childRuntime, alias, async (child, ready) => {
            await watchChildWrites(b, child, 5, FIRE_MS);
            // One notify file and one peers directory, next to the file SQLite opened.
            assert.equal(registrationsOf(`${path}-peers`, ready.pid as number).length, 1);
            assert.equal(existsSync(`${alias}-peers`), false);
            assert.equal(existsSync(`${alias}-notify`), false);
          });
        } finally {
          await b.close();
        }
      },
    );
  }

  it(
    "wakes a watch for the commits of a process that believes it is alone",
    TEST,
    async () => {
      // This process's registration is deleted as soon as it appears, so the child sees no
      // other process: it reserves commit counters (the stored counter moves once per 256
      // commits) and signals nothing. The watch must still fire, by the safety poll (1 s).
      const path = join(fresh(), "db.sqlite");
      const b = await openSqliteBackend({ path, synchronous: "normal" });
      const peers = `${path}-peers`;
      const unregister = () => {
        for (const name of registrationsOf(peers, process.pid)) {
          try {
            unlinkSync(join(peers, name));
          } catch { /* gone */ }
        }
      };
      unregister();
      const deleter = setInterval(unregister, 1);
      try {
        await withChild(other, path, async (child) => {
          const counters = await watchChildWrites(b, child, 3, 1500);
          // The scenario happened: the child reserved counters ahead of the last ones it used.
          const { DatabaseSync } = await import("node:sqlite");
          const db = new DatabaseSync(path);
          try {
            const stored = (db.prepare("SELECT value FROM meta WHERE name = 'counter'").get() as {
              value: number;
            }).value;
            assert.ok(stored > counters.at(-1)!, `stored ${stored}, used ${counters}`);
          } finally {
            db.close();
          }
        });
      } finally {
        clearInterval(deleter);
        await b.close();
      }
    },
  );

  it(
    "prunes a SIGKILLed process's registration without the peers directory changing",
    TEST,
    async () => {
      const path = join(fresh(), "db.sqlite");
      const peers = `${path}-peers`;
      const b = await openSqliteBackend({ path, synchronous: "normal" });
      const commit = () => b.transact((tx) => tx.set(enc.encode("x"), enc.encode("1")));
      try {
        const notify = `${path}-notify`;
        let pid = 0;
        await withChild(other, path, async (child, ready) => {
          pid = ready.pid as number;
          assert.equal(registrationsOf(peers, pid).length, 1);
          // This process has seen the child's registration: its commits signal it.
          await waitFor(
            async () => {
              const before = statSync(notify).mtimeMs;
              await commit();
              return statSync(notify).mtimeMs !== before;
            },
            10_000,
            "a commit signalling the child",
          );
          await child.kill();
        });
        assert.equal(registrationsOf(peers, pid).length, 1, "a SIGKILL leaves the file");
        // Only this process's commits look at the directory; nothing else changes it.
        const start = performance.now();
        await waitFor(
          async () => {
            await commit();
            return registrationsOf(peers, pid).length === 0;
          },
          10_000,
          "the dead process's registration pruned",
          20,
        );
        const took = performance.now() - start;
        // Alone again: commits no longer write the notify file.
        const before = statSync(notify).mtimeMs;
        for (let i = 0; i < 20; i++) await commit();
        assert.equal(statSync(notify).mtimeMs, before, "commits after the prune signal nobody");
        console.log(`dead registration pruned ${Math.round(took)} ms after the SIGKILL`);
      } finally {
        await b.close();
      }
    },
  );

  const noUnshare = skip ?? unshareMissing();
  it(
    "wakes a watch for the commits of a process in another PID namespace, for longer than a stale registration lives",
    { ...TEST, skip: noUnshare },
    async () => {
      if (noUnshare) return;
      const path = join(fresh(), "db.sqlite");
      const b = await openSqliteBackend({ path, synchronous: "normal" });
      try {
        await withChild(
          other,
          path,
          async (child) => {
            // Rounds spread over 4 s: this process's pid is not alive in the child's namespace,
            // so only its heartbeat keeps its registration past the 2 s a dead pid's file is
            // kept (spacing the writes is the scenario, not a wait for a condition).
            const start = performance.now();
            await watchChildWrites(b, child, 9, FIRE_MS, async (round) => {
              const at = start + (round - 1) * 500;
              while (performance.now() < at) {
                await new Promise((r) => setTimeout(r, at - performance.now()));
              }
            });
            assert.equal(registrationsOf(`${path}-peers`, process.pid).length, 1);
          },
          ["unshare", "--pid", "--fork", "--kill-child"],
        );
      } finally {
        await b.close();
      }
    },
  );
  if (!skip && noUnshare) console.log(`skipping the PID namespace test: ${noUnshare}`);
});
