/**
 * Test helpers for suites that run against a real FoundationDB cluster (the storage
 * conformance suite now, the server-runtime suite later). A cluster is used when
 * `FDB_CLUSTER_FILE` names its cluster file; each backend opened here lives in a fresh
 * directory partition that is removed when the backend closes, so runs and tests sharing a
 * cluster never see each other's keys.
 */

import { existsSync } from "node:fs";
import process from "node:process";
import type { Backend, BackendLimits } from "../../mod.ts";
import {
  DEFAULT_API_VERSION,
  defaultDriver,
  openFoundationdbBackend,
} from "../../lib/storage/foundationdb.ts";
import { runtime } from "../_helpers.ts";

/**
 * Why FoundationDB suites are skipped here, or `undefined` when they run: they need a cluster
 * (`FDB_CLUSTER_FILE`), and a runtime that can run npm:foundationdb's addon (Deno, not Bun:
 * see docs/foundationdb.md).
 */
export const FDB_SKIP_REASON: string | undefined = !process.env.FDB_CLUSTER_FILE
  ? "FDB_CLUSTER_FILE not set: no FoundationDB cluster on this machine"
  : runtime === "bun"
  ? "npm:foundationdb cannot run under Bun (see docs/foundationdb.md): FoundationDB suites run under Deno"
  : undefined;

/** Root directory of every test partition, so leftovers of crashed runs are easy to find. */
export const TEST_DIRECTORY = "dgen-test";

const runId = `${runtime}-${process.pid}-${Date.now().toString(36)}`;
let opened = 0;

/** Options of {@link openTestFoundationdb}. */
export interface TestFoundationdbOptions {
  /** Limits to declare (lower than FoundationDB's). */
  limits?: Partial<BackendLimits>;
  /** A name to recognize the partition by. @default a counter */
  name?: string;
}

/**
 * Opens a FoundationDB backend on the cluster of `FDB_CLUSTER_FILE`, confined to a fresh
 * directory partition `dgen-test/<runtime>-<pid>-<time>-<name>`; closing it removes the
 * partition and everything in it. Suites call this only when {@link FDB_SKIP_REASON} is
 * `undefined`.
 */
export async function openTestFoundationdb(
  options: TestFoundationdbOptions = {},
): Promise<Backend> {
  const clusterFile = process.env.FDB_CLUSTER_FILE;
  if (clusterFile === undefined) throw new Error(FDB_SKIP_REASON);
  const path = [TEST_DIRECTORY, `${runId}-${options.name ?? String(++opened)}`];
  const backend = await openFoundationdbBackend({
    clusterFile,
    directory: path,
    limits: options.limits,
  });
  return {
    kind: backend.kind,
    limits: backend.limits,
    transact: (fn, o) => backend.transact(fn, o),
    openSubspace: (p) => backend.openSubspace(p),
    async close() {
      await backend.close();
      await removeDirectory(clusterFile, path);
    },
  };
}

/** Removes a test partition with the bindings' own directory layer and retry protocol. */
async function removeDirectory(clusterFile: string, path: string[]): Promise<void> {
  const api = await defaultDriver.load(DEFAULT_API_VERSION);
  const db = api.open(clusterFile);
  try {
    for (let attempt = 0;; attempt++) {
      const tn = db.rawCreateTransaction({ timeout: 10_000 });
      try {
        await api.directory.removeIfExists(tn, path);
        await tn.rawCommit();
        return;
      } catch (e) {
        if (!(e instanceof api.FDBError) || attempt >= 20) throw e;
        await tn.rawOnError(e.code);
      }
    }
  } finally {
    db.close();
  }
}

/**
 * Where the dynamic loader would find FoundationDB's client library, if anywhere: the
 * directories it searches by default and those named by `LD_LIBRARY_PATH` /
 * `DYLD_LIBRARY_PATH`. Tests that need the library to be absent skip when it is found.
 */
export function findLibfdbc(): string | undefined {
  const name = process.platform === "darwin" ? "libfdb_c.dylib" : "libfdb_c.so";
  const dirs = [
    ...(process.env.LD_LIBRARY_PATH ?? "").split(":"),
    ...(process.env.DYLD_LIBRARY_PATH ?? "").split(":"),
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
  ].filter((d) => d !== "");
  return dirs.map((d) => `${d}/${name}`).find((p) => existsSync(p));
}
