/**
 * Peer benchmark: a Cloudflare Durable Object counter with SQLite-backed storage, run locally in
 * workerd by `npm:miniflare` with its state persisted to disk (`durableObjectsPersist`), on the
 * sequential counter workload (N sequential durable increments, each replying with the new
 * value, one client, after a warm-up). Two modes:
 *
 * - `HTTP from the bench`: one `fetch` per increment from this process to the Worker, which calls
 *   the object over RPC (what a client of a deployed Worker does);
 * - `RPC inside its Worker`: the Worker runs the N increments against the object's stub itself
 *   and times them (the like-for-like path: no HTTP between the caller and the Worker).
 *
 * Then it counts the runtime's fsyncs per increment with strace (if available) and checks that
 * the counters survive a restart of the runtime.
 *
 * Run: `deno run -A bench/peers/durable_objects.ts [--n=1000] [--warmup=100] [--probe=200]
 * [--rounds=1]`
 * (or `bun bench/peers/durable_objects.ts`): progress on stderr, then a table and one JSON line
 * on stdout. `bench/run.ts` calls {@link runDurableObjects}. miniflare is installed on first use
 * into `bench/.peers/durable-objects/`. Figures are noisy on a shared machine.
 */

import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import {
  childPids,
  Cleanup,
  countSyncs,
  describeSyncs,
  failedResult,
  hostRuntime,
  inRounds,
  installedVersion,
  installPeer,
  numberFlag,
  type PeerOptions,
  type PeerResult,
  printTable,
  roundCount,
  sequentialCounter,
} from "./common.ts";

/** The pinned miniflare (it pins its own workerd). */
export const MINIFLARE_VERSION = "4.20260730.0";

const PEER = "durable-objects";
const NAME = "Durable Objects";
const HTTP_MODE = "HTTP from the bench";
const RPC_MODE = "RPC inside its Worker";
const WORKER_SCRIPT = fileURLToPath(new URL("./durable_objects_worker.js", import.meta.url));
/** Within workerd's supported range (it refuses dates after its own build). */
const COMPATIBILITY_DATE = "2026-07-01";

/** The platform package that carries the workerd binary, as workerd's own launcher maps it. */
function workerdPlatformPackage(): string | undefined {
  const key = `${process.platform} ${process.arch}`;
  return ({
    "linux x64": "@cloudflare/workerd-linux-64",
    "linux arm64": "@cloudflare/workerd-linux-arm64",
    "darwin x64": "@cloudflare/workerd-darwin-64",
    "darwin arm64": "@cloudflare/workerd-darwin-arm64",
  } as Record<string, string>)[key];
}

/** The part of miniflare's API used here (its own types are not resolvable from the project). */
interface MiniflareInstance {
  readonly ready: Promise<URL>;
  dispose(): Promise<void>;
}
interface MiniflareModule {
  Miniflare: new (options: Record<string, unknown>) => MiniflareInstance;
}

/** What the Worker's `/loop` endpoint returns. */
interface LoopReply {
  first: number;
  last: number;
  totalMs: number;
  latenciesMs: number[];
}

/** A running workerd (through miniflare) with the counter Worker. */
interface Runtime {
  url: URL;
  workerdPid: number | undefined;
  stop: () => Promise<void>;
}

async function startRuntime(
  miniflare: MiniflareModule,
  persistDir: string,
  scratchDir: string,
  cleanup: Cleanup,
): Promise<Runtime> {
  const before = new Set(childPids("workerd"));
  // miniflare makes a scratch directory under os.tmpdir() in its constructor and removes it on
  // dispose; pointing TMPDIR into our own temp dir for that moment means an interrupted run
  // (no dispose) leaves nothing behind in /tmp either.
  const savedTmp = process.env.TMPDIR;
  process.env.TMPDIR = scratchDir;
  let mf: MiniflareInstance;
  try {
    mf = new miniflare.Miniflare({
      modules: true,
      scriptPath: WORKER_SCRIPT,
      // Module names are taken relative to this root; without it they are relative to the cwd,
      // and workerd refuses a path that climbs out of it with "..".
      modulesRoot: dirname(WORKER_SCRIPT),
      compatibilityDate: COMPATIBILITY_DATE,
      durableObjects: { COUNTER: { className: "Counter", useSQLite: true } },
      durableObjectsPersist: persistDir,
    });
  } finally {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
  }
  const workerd: { pid?: number } = {};
  const stop = cleanup.add("dispose miniflare", () => mf.dispose(), () => {
    // Interrupted: kill the workerd this instance started (by pid), since dispose is async.
    if (workerd.pid !== undefined) process.kill(workerd.pid, "SIGKILL");
  });
  const url = await mf.ready;
  workerd.pid = childPids("workerd").find((pid) => !before.has(pid));
  return { url, workerdPid: workerd.pid, stop };
}

async function get(url: URL): Promise<string> {
  // workerd gzips a reply when the client accepts it, and Deno's fetch then opens a new TCP
  // connection for most requests (about 60 of 100, seen with strace); asking for the identity
  // encoding keeps one kept-alive connection, as curl or Bun get anyway.
  const response = await fetch(url, { headers: { "accept-encoding": "identity" } });
  const text = await response.text();
  if (!response.ok) throw new Error(`${url.pathname} → ${response.status}: ${text.slice(0, 500)}`);
  return text;
}

async function counterValue(runtime: Runtime, name: string): Promise<number> {
  return Number(await get(new URL(`/value?name=${name}`, runtime.url)));
}

/** Runs the workload in both modes; see the module documentation. */
export async function runDurableObjects(options: PeerOptions): Promise<PeerResult[]> {
  const { n, warmup, log } = options;
  const rounds = roundCount(options);
  const probeOps = options.fsyncProbeOps ?? 200;
  const cleanup = new Cleanup();
  let runtimeDesc = `miniflare ${MINIFLARE_VERSION}, driven from ${hostRuntime()}`;
  const documented = "SQLite-backed storage in workerd, persisted to a local SQLite file " +
    "(WAL); each increment is its own implicit transaction and the output gate holds the " +
    "reply until it has committed";
  const base = (mode: string, durability = documented) => ({
    name: NAME,
    mode,
    durability,
    runtime: runtimeDesc,
  });
  try {
    const dir = await installPeer(PEER, { miniflare: MINIFLARE_VERSION }, {
      log,
      mustExist: [workerdPlatformPackage()]
        .filter((p) => p !== undefined)
        .map((p) => join("node_modules", p, "bin", "workerd")),
    });
    runtimeDesc = `workerd ${installedVersion(dir, "workerd")} via miniflare ${MINIFLARE_VERSION}` +
      `, driven from ${hostRuntime()}`;
    const miniflare = createRequire(import.meta.url)(
      join(dir, "node_modules", "miniflare"),
    ) as MiniflareModule;
    const persistDir = cleanup.tempDir("peer-do");
    const scratchDir = cleanup.tempDir("peer-do-scratch");

    log(`${PEER}: starting workerd (state in ${persistDir}) …`);
    const t = performance.now();
    let runtime = await startRuntime(miniflare, persistDir, scratchDir, cleanup);
    log(`${PEER}: ready at ${runtime.url.href} in ${(performance.now() - t).toFixed(0)} ms`);

    // Mode (a): a fetch per increment from here.
    const results: PeerResult[] = [];
    let httpLast = 0;
    try {
      log(`${PEER}: ${HTTP_MODE}: ${warmup} warm-up + ${rounds} × ${n} sequential increments …`);
      const url = new URL("/increment?name=http", runtime.url);
      const { last, ...summary } = await inRounds(
        options,
        { name: NAME, mode: HTTP_MODE },
        (w) => sequentialCounter(n, w, async () => Number(await get(url))),
      );
      httpLast = last;
      results.push({ ...base(HTTP_MODE), ...summary });
    } catch (e) {
      results.push(failedResult(base(HTTP_MODE), e));
    }

    // Mode (b): the Worker loops over the object's stub and times itself.
    let rpcLast = 0;
    try {
      log(`${PEER}: ${RPC_MODE}: ${warmup} warm-up + ${rounds} × ${n} sequential increments …`);
      let wallMs = 0;
      const { last, ...whole } = await inRounds(
        options,
        { name: NAME, mode: RPC_MODE },
        async (w) => {
          const sent = performance.now();
          const reply = JSON.parse(
            await get(new URL(`/loop?name=rpc&n=${n}&warmup=${w}`, runtime.url)),
          ) as LoopReply;
          wallMs += performance.now() - sent;
          return reply;
        },
      );
      rpcLast = last;
      // workerd's clocks tick in whole milliseconds, so single increments cannot be timed
      // inside the Worker: the percentiles are not reported as numbers; the whole-ms readings
      // only bound them (a reading of d ms means less than d + 1 ms). The mean is exact enough:
      // it comes from the total time over n increments.
      results.push({
        ...base(RPC_MODE),
        ...whole,
        p50Ms: NaN,
        p99Ms: NaN,
        notes: "timed inside the Worker with workerd's clock, which ticks in whole ms: per-" +
          `increment percentiles cannot be measured there (the readings bound them: p50 < ` +
          `${whole.p50Ms + 1} ms, p99 < ${whole.p99Ms + 1} ms); ops/s and the mean come from ` +
          `the total time (the bench saw ${wallMs.toFixed(0)} ms for the requests, warm-up ` +
          "included)",
      });
    } catch (e) {
      results.push(failedResult(base(RPC_MODE), e));
    }

    // How often workerd fsyncs per increment, apart from the timed runs (strace slows syscalls).
    if (probeOps > 0 && runtime.workerdPid !== undefined) {
      log(`${PEER}: counting fsyncs over ${probeOps} increments per mode (strace) …`);
      const url = new URL("/increment?name=probe-http", runtime.url);
      const http = await countSyncs(runtime.workerdPid, probeOps, async () => {
        for (let i = 0; i < probeOps; i++) await get(url);
      }, cleanup);
      // The loop endpoint does one increment more than asked (its first, untimed one).
      const rpc = await countSyncs(runtime.workerdPid, probeOps + 1, async () => {
        await get(new URL(`/loop?name=probe-rpc&n=${probeOps}&warmup=0`, runtime.url));
      }, cleanup);
      for (const [result, count] of [[results[0]!, http], [results[1]!, rpc]] as const) {
        log(`${PEER}: ${result.mode}: ${describeSyncs(count)}`);
        if (typeof count !== "string") result.fsyncsPerOp = count.total / count.ops;
        result.durability = `${documented}; measured: ${describeSyncs(count)}`;
      }
    }

    // Persistence: restart workerd on the same directory and read both counters back.
    try {
      log(`${PEER}: persistence check: restarting workerd on the same directory …`);
      const before = [await counterValue(runtime, "http"), await counterValue(runtime, "rpc")];
      await runtime.stop();
      runtime = await startRuntime(miniflare, persistDir, scratchDir, cleanup);
      const after = [await counterValue(runtime, "http"), await counterValue(runtime, "rpc")];
      const expected = [httpLast, rpcLast];
      for (const [i, result] of results.entries()) {
        const ok = result.error === undefined && before[i] === expected[i] &&
          after[i] === expected[i];
        const detail = `counter ${expected[i]} after the run, ${before[i]} before and ` +
          `${after[i]} after restarting workerd: ${ok ? "ok" : "FAILED"}`;
        result.persistence = { ok, detail };
        log(`${PEER}: ${result.mode}: persistence ${detail}`);
      }
    } catch (e) {
      const detail = `check failed: ${e instanceof Error ? e.message : e}`;
      for (const result of results) result.persistence = { ok: false, detail };
      log(`${PEER}: persistence ${detail}`);
    }
    for (const result of results) result.runtime = runtimeDesc;
    return results;
  } catch (e) {
    log(`${PEER}: cannot run: ${e instanceof Error ? e.message : e}`);
    return [failedResult(base(HTTP_MODE), e), failedResult(base(RPC_MODE), e)];
  } finally {
    await cleanup.release(log);
  }
}

if (import.meta.main) {
  const results = await runDurableObjects({
    n: numberFlag("n", 1000),
    warmup: numberFlag("warmup", 100),
    fsyncProbeOps: numberFlag("probe", 200),
    rounds: numberFlag("rounds", 1),
    log: (line) => console.error(line),
  });
  printTable(results, (line) => console.log(line));
  console.log(JSON.stringify({ peer: PEER, results }));
  process.exit(results.some((r) => r.error !== undefined) ? 1 : 0);
}
