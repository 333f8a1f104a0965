import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import {
  type Backend,
  BackendUnavailableError,
  CommitUnknownResultError,
  ConflictError,
  type FoundationdbBackendOptions,
  LimitExceededError,
  openFoundationdbBackend,
  readInt64LE,
  RetriesExhaustedError,
  TransactionError,
  ValidationError,
} from "../../mod.ts";
import { hasPrefix } from "../../lib/bytes.ts";
import { createDriver, openFoundationdbBackendWith } from "../../lib/storage/foundationdb.ts";
import { runtime } from "../_helpers.ts";
import { registerConformance } from "./conformance.ts";
import { createSimulation, type Simulation } from "./_simulated_fdb.ts";
import { FDB_SKIP_REASON, findLibfdbc, openTestFoundationdb } from "./_foundationdb.ts";

const enc = new TextEncoder();
const k = (s: string) => enc.encode(s);

// ---------------------------------------------------------------------------------------------
// The real cluster, when there is one.

if (FDB_SKIP_REASON !== undefined) {
  console.log(`foundationdb conformance skipped: ${FDB_SKIP_REASON}`);
}
registerConformance(
  "foundationdb",
  (o) => openTestFoundationdb({ limits: o?.limits }),
  { optimistic: true },
  FDB_SKIP_REASON,
);

// ---------------------------------------------------------------------------------------------
// The adapter's own code, on simulated bindings (see _simulated_fdb.ts for what they model).

const shared = createSimulation();
let partitions = 0;
registerConformance(
  "foundationdb adapter on simulated bindings",
  (o) =>
    openFoundationdbBackendWith(shared.driver, {
      directory: ["dgen-test", `conformance-${++partitions}`],
      limits: o?.limits,
    }),
  { optimistic: true },
);

async function withSim(
  fn: (
    sim: Simulation,
    open: (o?: FoundationdbBackendOptions) => Promise<Backend>,
  ) => Promise<void>,
): Promise<void> {
  const sim = createSimulation();
  const backends: Backend[] = [];
  try {
    await fn(sim, async (o) => {
      const b = await openFoundationdbBackendWith(sim.driver, o);
      backends.push(b);
      return b;
    });
  } finally {
    for (const b of backends) await b.close();
  }
}

describe("FoundationDB API version", () => {
  it("is selected once per process: a second version is refused, naming the option", () =>
    withSim(async (_sim, open) => {
      await open({ apiVersion: 720 });
      await open({ apiVersion: 720 });
      await assert.rejects(
        open({ apiVersion: 710 }),
        (e) =>
          e instanceof ValidationError && /options\.apiVersion/.test(e.message) &&
          /already 720/.test(e.message),
      );
    }));

  it("goes to the first of concurrent opens; the others must agree", () =>
    withSim(async (_sim, open) => {
      const [first, second, third] = await Promise.allSettled([
        open({ apiVersion: 710 }),
        open({ apiVersion: 720 }),
        open({ apiVersion: 710 }),
      ]);
      assert.equal(first.status, "fulfilled");
      assert.equal(third.status, "fulfilled");
      assert.equal(second.status, "rejected");
      assert.ok(second.status === "rejected" && second.reason instanceof ValidationError);
    }));

  it("reports a version the client library lacks, and is not taken by the failure", async () => {
    const sim = createSimulation({ maxApiVersion: 710 });
    await assert.rejects(
      openFoundationdbBackendWith(sim.driver, { apiVersion: 720 }),
      (e) =>
        e instanceof BackendUnavailableError && /API version 720/.test(e.message) &&
        /710/.test(e.message),
    );
    const b = await openFoundationdbBackendWith(sim.driver, { apiVersion: 710 });
    await b.close();
  });

  it("refuses a version other than one another user of the bindings selected", async () => {
    const sim = createSimulation();
    sim.bindings.setAPIVersion(700);
    await assert.rejects(
      openFoundationdbBackendWith(sim.driver),
      (e) => e instanceof ValidationError && /already 700/.test(e.message),
    );
  });
});

describe("loading the bindings", () => {
  const failing = (e: Error) => createDriver(() => Promise.reject(e));
  const cases: Array<[string, Error, RegExp[]]> = [
    [
      "a missing client library",
      new Error("libfdb_c.so: cannot open shared object file: No such file or directory"),
      [/libfdb_c could not be loaded/, /foundationdb-clients_/, /npm rebuild foundationdb/],
    ],
    [
      "a platform without a prebuilt addon",
      new Error("No native build was found for platform=linux arch=arm64 runtime=node abi=115"),
      [/no native addon built for this platform/, /npm rebuild foundationdb --ignore-scripts/],
    ],
    [
      "a package that is not installed",
      Object.assign(new TypeError('Could not resolve "foundationdb", but found it'), {
        code: "ERR_MODULE_NOT_FOUND",
      }),
      [/not installed: run `npm install`/],
    ],
    [
      "Deno permissions withheld",
      Object.assign(new Error('Requires ffi access to "node.napi.node"'), { name: "NotCapable" }),
      [/--allow-ffi/],
    ],
  ];
  for (const [what, error, hints] of cases) {
    it(`explains ${what}, keeping the loader's error as cause`, async () => {
      await assert.rejects(failing(error).load(720), (e) => {
        assert.ok(e instanceof BackendUnavailableError);
        for (const hint of hints) assert.match(e.message, hint);
        assert.equal(e.cause, error);
        return true;
      });
    });
  }

  it("tries the import again after a failure", async () => {
    const sim = createSimulation();
    let calls = 0;
    const driver = createDriver(() =>
      ++calls === 1
        ? Promise.reject(new Error("libfdb_c.so: missing"))
        : Promise.resolve(sim.bindings)
    );
    await assert.rejects(driver.load(720), BackendUnavailableError);
    await driver.load(720);
    assert.equal(calls, 2);
  });

  it("refuses a runtime that cannot run the bindings without selecting a version", async () => {
    const sim = createSimulation();
    const driver = createDriver(() => Promise.resolve(sim.bindings), "Not on this runtime.");
    await assert.rejects(
      driver.load(720),
      (e) => e instanceof BackendUnavailableError && /Not on this runtime\./.test(e.message),
    );
    // The version is still free: nothing was selected.
    sim.bindings.setAPIVersion(710);
  });
});

describe("FoundationDB errors and the retry loop (simulated bindings)", () => {
  it("asks on_error about a failed commit and retries what it accepts", () =>
    withSim(async (sim, open) => {
      const b = await open();
      for (const code of [1007, 1009, 1020, 1021, 1037]) {
        let runs = 0;
        sim.failNextCommit(code);
        await b.transact((tx) => {
          runs++;
          tx.add(k("n"), 1);
        });
        assert.equal(runs, 2, `error ${code} should be retried once`);
        assert.equal(sim.onErrorCodes.at(-1), code);
      }
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("n")))), 5n);
    }));

  it("maps FoundationDB's codes to dgen's error classes", () =>
    withSim(async (sim, open) => {
      const b = await open();
      const cases: Array<[number, (e: unknown) => boolean]> = [
        [1020, (e) => e instanceof ConflictError && e.retryable],
        [1021, (e) => e instanceof CommitUnknownResultError && e.maybeCommitted && e.retryable],
        [1007, (e) =>
          e instanceof TransactionError && e.code === "transaction_too_old" && e.retryable],
        [1009, (e) =>
          e instanceof TransactionError && e.code === "future_version" && e.retryable],
        // At commit, the time limit leaves the outcome unknown (the commit may still apply).
        [1031, (e) => e instanceof CommitUnknownResultError && e.maybeCommitted && e.retryable],
        [2101, (e) => e instanceof LimitExceededError && e.code === "transaction_too_large"],
        [2102, (e) => e instanceof LimitExceededError && e.code === "key_too_large"],
        [2103, (e) => e instanceof LimitExceededError && e.code === "value_too_large"],
        [2004, (e) =>
          e instanceof TransactionError && e.code === "key_outside_legal_range" && !e.retryable],
      ];
      for (const [code, check] of cases) {
        sim.failNextCommit(code);
        await assert.rejects(
          b.transact((tx) =>
            tx.set(k("x"), k("1")), { maxRetries: 0 }),
          (e) =>
            check(e) && (e as Error).cause instanceof sim.bindings.FDBError &&
            ((e as Error).cause as { code: number }).code === code,
          `FoundationDB error ${code}`,
        );
      }
    }));

  it("does not retry limits and errors on_error rejects", () =>
    withSim(async (sim, open) => {
      const b = await open();
      for (const code of [2101, 2004]) {
        let runs = 0;
        sim.failNextCommit(code);
        await assert.rejects(b.transact((tx) => {
          runs++;
          tx.set(k("y"), k("1"));
        }));
        assert.equal(runs, 1, `error ${code} must not be retried`);
      }
      assert.equal(await b.transact((tx) => tx.get(k("y"))), undefined);
    }));

  it("reports an unknown commit result that did apply, and gives up after maxRetries", () =>
    withSim(async (sim, open) => {
      const b = await open();
      sim.failNextCommit(1021, true);
      await assert.rejects(
        b.transact((tx) => tx.add(k("u"), 1), { maxRetries: 0 }),
        (e) => e instanceof CommitUnknownResultError,
      );
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("u")))), 1n);
      for (let i = 0; i < 3; i++) sim.failNextCommit(1020);
      await assert.rejects(
        b.transact((tx) => tx.add(k("u"), 1), { maxRetries: 2 }),
        (e) =>
          e instanceof RetriesExhaustedError && e.attempts === 3 &&
          e.cause instanceof ConflictError,
      );
    }));

  it("reports a commit that the time limit struck in flight as unknown, and retries it", () =>
    withSim(async (sim, open) => {
      const b = await open();
      // FoundationDB may apply a commit that failed with 1031 (apple/foundationdb#3038).
      sim.failNextCommit(1031, true);
      await assert.rejects(
        b.transact((tx) => tx.add(k("timed"), 1), { maxRetries: 0 }),
        (e) =>
          e instanceof CommitUnknownResultError && e.maybeCommitted &&
          ((e as Error).cause as { code: number }).code === 1031,
      );
      assert.equal(readInt64LE(await b.transact((tx) => tx.get(k("timed")))), 1n);
      let runs = 0;
      sim.failNextCommit(1031);
      await b.transact((tx) => {
        runs++;
        tx.set(k("timed2"), k("1"));
      });
      assert.equal(runs, 2, "retried once");
    }));

  it("wakes a watcher whose watch failed after a delay that grows, not at once", async () => {
    const sim = createSimulation();
    let refuse = true;
    const refusing = (tn: object): object =>
      new Proxy(tn, {
        get(target, p) {
          const v = Reflect.get(target, p);
          if (p !== "watch" || !refuse) return typeof v === "function" ? v.bind(target) : v;
          return (key: Uint8Array) => {
            (target as { watch(key: Uint8Array): { cancel(): void } }).watch(key).cancel();
            // As the client reports a watch past max_watches: the future fails with 1032.
            const promise = Promise.reject(new sim.bindings.FDBError("Too many watches", 1032));
            promise.catch(() => {});
            return { promise, cancel() {} };
          };
        },
      });
    const bindings = {
      ...sim.bindings,
      open(clusterFile?: string) {
        const db = sim.bindings.open(clusterFile);
        return {
          rawCreateTransaction: (o: never) => refusing(db.rawCreateTransaction(o)),
          close: () => db.close(),
        };
      },
    } as typeof sim.bindings;
    const b = await openFoundationdbBackendWith(createDriver(() => Promise.resolve(bindings)), {});
    try {
      const wake = async () => {
        const t0 = performance.now();
        const w = await b.transact((tx) => tx.watch(k("w")));
        assert.equal(await w.promise, true, "a failed watch wakes its watcher");
        return performance.now() - t0;
      };
      // Timers may fire a millisecond early; the delays are 100 ms, then 200 ms.
      assert.ok((await wake()) >= 95, "first failure: about 100 ms");
      assert.ok((await wake()) >= 190, "second failure in a row: about 200 ms");
      // A watch that works resets the delay.
      refuse = false;
      const w = await b.transact((tx) => tx.watch(k("w")));
      await b.transact((tx) => tx.set(k("w"), k("1")));
      assert.equal(await w.promise, true);
      refuse = true;
      const again = await wake();
      assert.ok(again >= 95 && again < 190, `after a working watch: about 100 ms, not ${again}`);
    } finally {
      await b.close();
    }
  });

  it("runs each attempt in a fresh transaction carrying the timeout and size limit", () =>
    withSim(async (sim, open) => {
      const b = await open({ limits: { maxTransactionDuration: 40, maxTransactionSize: 5000 } });
      const before = sim.transactions;
      sim.failNextCommit(1020);
      await b.transact((tx) => tx.set(k("t"), k("1")));
      assert.equal(sim.transactions - before, 2);
      assert.deepEqual(sim.lastOptions, { timeout: 40, size_limit: 5000 });
    }));
});

describe("FoundationDB directory partitions and subspaces (simulated bindings)", () => {
  it("keeps each backend's keys under its partition's prefix", () =>
    withSim(async (sim, open) => {
      const a = await open({ directory: ["apps", "a"] });
      const a2 = await open({ directory: ["apps", "a"] });
      const b = await open({ directory: ["apps", "b"] });
      await a.transact((tx) => tx.set(k("key"), k("A")));
      await b.transact((tx) => tx.set(k("key"), k("B")));
      assert.equal(new TextDecoder().decode(await a2.transact((tx) => tx.get(k("key")))), "A");
      assert.equal(await (await open()).transact((tx) => tx.get(k("key"))), undefined);
      // As stored in the cluster: the key behind each partition's own, distinct prefix.
      const raw = await sim.memory.transact((tx) =>
        tx.getRange(new Uint8Array([0]), new Uint8Array([0xfe]))
      );
      const stored = raw.filter((r) => new TextDecoder().decode(r.key).endsWith("key"));
      assert.equal(stored.length, 2);
      const [pa, pb] = stored.map((r) => r.key.subarray(0, r.key.length - 3));
      assert.ok(pa!.length > 0 && pb!.length > 0);
      assert.ok(!hasPrefix(pa!, pb!) && !hasPrefix(pb!, pa!));
    }));

  it("declares the key limit left after the partition prefix, and accepts keys up to it", () =>
    withSim(async (_sim, open) => {
      const b = await open({ directory: ["limits"] });
      assert.ok(b.limits.maxKeySize < 10_000 && b.limits.maxKeySize > 9_900);
      await b.transact((tx) => tx.set(new Uint8Array(b.limits.maxKeySize).fill(7), k("v")));
      const whole = await open();
      assert.equal(whole.limits.maxKeySize, 10_000);
    }));

  it("opens subspaces as directories inside the partition, prefix-free", () =>
    withSim(async (_sim, open) => {
      const b = await open({ directory: ["subspaces"] });
      const p1 = await b.openSubspace(["dgen", "acme"]);
      const p2 = await b.openSubspace(["dgen", "acme", "prod"]);
      const p1again = await b.openSubspace(["dgen", "acme"]);
      assert.deepEqual(p1again, p1);
      assert.ok(!hasPrefix(p2, p1) && !hasPrefix(p1, p2));
      const root = await open();
      const outside = await root.openSubspace(["dgen", "acme"]);
      assert.notDeepEqual(outside, p1);
    }));

  it("refuses a directory option that names a plain directory", () =>
    withSim(async (_sim, open) => {
      const root = await open();
      await root.openSubspace(["plain"]);
      await assert.rejects(
        open({ directory: ["plain"] }),
        (e) => e instanceof ValidationError && /options\.directory/.test(e.message),
      );
    }));
});

describe("opening a FoundationDB backend (simulated bindings)", () => {
  it("reports a cluster that does not answer within openTimeout", () =>
    withSim(async (sim, open) => {
      sim.setReachable(false);
      await assert.rejects(
        open({ openTimeout: 30 }),
        (e) =>
          e instanceof BackendUnavailableError && /within 30 ms/.test(e.message) &&
          /fdbcli/.test(e.message),
      );
    }));

  it("reports a missing cluster file", () =>
    withSim(async (_sim, open) => {
      await assert.rejects(
        open({ clusterFile: "/nonexistent/fdb.cluster" }),
        (e) =>
          e instanceof BackendUnavailableError && /\/nonexistent\/fdb\.cluster/.test(e.message),
      );
    }));
});

// ---------------------------------------------------------------------------------------------
// This machine: the real bindings, without FoundationDB's client library.

const probe = fileURLToPath(new URL("./_fdb_import_probe.ts", import.meta.url));
const root = fileURLToPath(new URL("../../", import.meta.url));

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

function exec(file: string, args: string[], env?: Record<string, string>): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      { cwd: root, timeout: 60_000, env: { ...process.env, ...env } },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === "number" ? err.code : 1;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** Runs this runtime on `args` (a script and its arguments) in a child process. */
function run(args: string[], env?: Record<string, string>): Promise<Ran> {
  return exec(
    process.execPath,
    runtime === "deno" ? ["run", "-A", "--no-check", ...args] : args,
    env,
  );
}

/** The probe's JSON line. */
function lastLine(ran: Ran): string {
  const line = ran.stdout.trim().split("\n").at(-1);
  assert.ok(line, `the probe printed nothing (exit ${ran.code}); stderr: ${ran.stderr}`);
  return line;
}

const libfdbc = findLibfdbc();
const noLibrary = libfdbc === undefined
  ? false
  : `libfdb_c is installed here (${libfdbc}): the missing-library error cannot happen`;

describe("openFoundationdbBackend where FoundationDB is not installed", () => {
  it(
    "rejects with BackendUnavailableError saying what to install",
    { skip: noLibrary },
    async () => {
      await assert.rejects(openFoundationdbBackend(), (e) => {
        assert.ok(e instanceof BackendUnavailableError, `got ${e}`);
        assert.equal(e.code, "backend_unavailable");
        for (
          const hint of [
            /libfdb_c/,
            /foundationdb-clients_[0-9.]+-1_amd64\.deb/,
            /github\.com\/apple\/foundationdb\/releases/,
            /npm rebuild foundationdb --ignore-scripts=false/,
            /FDB_CLUSTER_FILE/,
            /clusterFile/,
          ]
        ) assert.match(e.message, hint);
        assert.ok(e.cause instanceof Error && /libfdb_c/.test(e.cause.message), "cause is kept");
        return true;
      });
    },
  );

  it("fails the same way when tried again", { skip: noLibrary }, async () => {
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        openFoundationdbBackend({ apiVersion: 710 }),
        (e) => e instanceof BackendUnavailableError && /libfdb_c/.test(e.message),
      );
    }
  });

  it("tells Deno users which permission the addon needs", {
    skip: runtime === "bun" ? "Bun has no permission flags" : false,
  }, async () => {
    const ran = await exec(process.execPath, [
      "run",
      "--no-check",
      "--allow-read",
      "--allow-env",
      probe,
      "open",
    ]);
    const result = JSON.parse(lastLine(ran));
    assert.equal(result.name, "BackendUnavailableError");
    assert.match(result.message, /--allow-ffi/);
  });

  it("is not loaded by importing mod.ts, only by opening", async () => {
    const { afterImport, afterOpen } = JSON.parse(lastLine(await run([probe]))) as {
      afterImport: string[];
      afterOpen: string[];
    };
    assert.deepEqual(afterImport, [], "importing mod.ts evaluated npm:foundationdb");
    // The control: opening does load the package, so the probe can see a load.
    assert.ok(afterOpen.some((m) => /node-gyp-build/.test(m)), `after open: ${afterOpen}`);
  });
});

describe("openFoundationdbBackend options", () => {
  const bad: Array<[string, unknown]> = [
    ["options.nope", { nope: 1 }],
    ["options.clusterFile", { clusterFile: "" }],
    ["options.apiVersion", { apiVersion: 600 }],
    ["options.apiVersion", { apiVersion: 730 }],
    ["options.apiVersion", { apiVersion: 710.5 }],
    ["options.directory", { directory: [] }],
    ["options.directory[0]", { directory: [""] }],
    ["options.limits.maxValueSize", { limits: { maxValueSize: 100_001 } }],
    ["options.limits.maxKeySize", { limits: { maxKeySize: 10_001 } }],
    ["options.limits.maxTransactionSize", { limits: { maxTransactionSize: 16 } }],
    ["options.limits.maxTransactionDuration", { limits: { maxTransactionDuration: 6000 } }],
    ["options.openTimeout", { openTimeout: 0 }],
  ];
  for (const [field, options] of bad) {
    it(`rejects ${JSON.stringify(options)} naming ${field}, before loading anything`, async () => {
      await assert.rejects(
        openFoundationdbBackend(options as FoundationdbBackendOptions),
        (e) =>
          e instanceof ValidationError &&
          e.issues.some((i) => i.path === field) &&
          e.message.includes(field),
      );
    });
  }
});

// ---------------------------------------------------------------------------------------------
// The real bindings against a stand-in libfdb_c (fixtures/libfdb_c_standin.c), built here with
// the C compiler: the addon loads, so the lazy import, the API-version selection and the
// mapping of the client's own errors run for real, up to the first database call.

const standinSource = fileURLToPath(new URL("./fixtures/libfdb_c_standin.c", import.meta.url));
const standinSkip = process.platform !== "linux"
  ? "the stand-in libfdb_c is built for Linux only"
  : process.arch !== "x64"
  ? "npm:foundationdb ships a prebuilt addon for x64 Linux only"
  : false;

describe("the real bindings against a stand-in libfdb_c", { skip: standinSkip }, () => {
  it(
    runtime === "deno"
      ? "load, select the API version and map the client library's errors"
      : "are refused on Bun, with the reason, instead of crashing",
    async (t) => {
      const dir = mkdtempSync(join(tmpdir(), "dgen-standin-"));
      try {
        const built = await exec("cc", [
          "-shared",
          "-fPIC",
          "-o",
          join(dir, "libfdb_c.so"),
          standinSource,
        ]);
        if (built.code !== 0) {
          t.skip(`no C compiler to build the stand-in libfdb_c: ${built.stderr.trim()}`);
          return;
        }
        const env = { LD_LIBRARY_PATH: dir, STANDIN_FDB_MAX_API: "710" };
        const open = async (...extra: string[]) =>
          JSON.parse(lastLine(await run([probe, "open", ...extra], env)));
        if (runtime === "bun") {
          const result = await open();
          assert.equal(result.name, "BackendUnavailableError");
          assert.match(result.message, /cannot run under Bun/);
          assert.match(result.message, /Node-API module "fdblib" returned an error/);
          return;
        }
        const unsupported = await open("--api=720");
        assert.equal(unsupported.name, "BackendUnavailableError");
        assert.match(unsupported.message, /does not support API version 720/);
        assert.deepEqual(unsupported.cause, { class: "FDBError", code: 2203 });
        const noCluster = await open("--api=710");
        assert.equal(noCluster.name, "BackendUnavailableError");
        assert.match(noCluster.message, /No cluster file found/);
        assert.match(noCluster.message, /FDB_CLUSTER_FILE/);
        assert.deepEqual(noCluster.cause, { class: "FDBError", code: 1515 });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
