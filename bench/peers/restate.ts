/**
 * Peer benchmark: a Restate virtual object counter on the sequential counter workload (N
 * sequential durable increments, each replying with the new value, one client, after a
 * warm-up). It starts `restate-server` offline on a fresh directory, serves the counter
 * (`restate_service.ts`, Restate TypeScript SDK) from Deno or Bun, registers it through the
 * admin API, and drives it through the HTTP ingress, one request per increment. Then it counts
 * the server's fsyncs per increment with strace (if available), checks that the counter
 * survives a restart of the server, and stops everything.
 *
 * Run: `deno run -A bench/peers/restate.ts [--n=1000] [--warmup=100] [--probe=200] [--rounds=1]
 * [--bun]`
 * (or `bun bench/peers/restate.ts`): progress on stderr, then a table and one JSON line on
 * stdout. The service runs under the same runtime as this script unless `--bun`/`--deno` says
 * otherwise. `bench/run.ts` calls {@link runRestate}. The server and SDK are installed on first
 * use into `bench/.peers/restate/`. Figures are noisy on a shared machine.
 */

import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { findOnPath } from "../../tests/_processes.ts";
import {
  Cleanup,
  countSyncs,
  describeSyncs,
  failedResult,
  freePort,
  hostRuntime,
  inRounds,
  installPeer,
  numberFlag,
  type PeerOptions,
  type PeerResult,
  printTable,
  Proc,
  roundCount,
  run,
  sequentialCounter,
  waitFor,
} from "./common.ts";

/** The pinned server. */
export const RESTATE_SERVER_VERSION = "1.7.12";
/** The pinned TypeScript SDK. */
export const RESTATE_SDK_VERSION = "1.17.2";

const PEER = "restate";
const NAME = "Restate";
const MODE = "HTTP ingress";
const SERVICE_SCRIPT = fileURLToPath(new URL("./restate_service.ts", import.meta.url));

/** Options of {@link runRestate}. */
export interface RestateOptions extends PeerOptions {
  /** The runtime serving the SDK (default: the one running this code, Deno if neither). */
  serviceRuntime?: "deno" | "bun";
}

/** The platform package that carries the server binary. */
function serverPlatformPackage(): string | undefined {
  const key = `${process.platform} ${process.arch}`;
  return ({
    "linux x64": "@restatedev/restate-server-linux-x64",
    "linux arm64": "@restatedev/restate-server-linux-arm64",
    "darwin x64": "@restatedev/restate-server-darwin-x64",
    "darwin arm64": "@restatedev/restate-server-darwin-arm64",
  } as Record<string, string>)[key];
}

/** Where this process's runtime binary is, if it is `runtime`; else from `PATH`. */
function runtimeExecutable(runtime: "deno" | "bun"): string | undefined {
  const here = process.versions.bun !== undefined ? "bun" : "Deno" in globalThis ? "deno" : "";
  return here === runtime ? process.execPath : findOnPath(runtime);
}

async function request(url: string, init?: RequestInit): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (e) {
    return new Response(String(e), { status: 599 });
  }
}

async function call(url: string): Promise<number> {
  const response = await fetch(url, { method: "POST" });
  const text = await response.text();
  if (!response.ok) throw new Error(`${url} → ${response.status}: ${text.slice(0, 500)}`);
  return JSON.parse(text) as number;
}

/** Ports and directory of one server; it can be stopped and started again on them. */
interface Server {
  proc: Proc;
  stop: () => Promise<void>;
}

/** The server's environment: offline, and on our ports (TCP only). */
function serverEnv(ports: { ingress: number; admin: number; node: number }) {
  return {
    RESTATE_DISABLE_TELEMETRY: "true",
    RESTATE_INGRESS__BIND_ADDRESS: `127.0.0.1:${ports.ingress}`,
    RESTATE_ADMIN__BIND_ADDRESS: `127.0.0.1:${ports.admin}`,
    RESTATE_BIND_ADDRESS: `127.0.0.1:${ports.node}`,
    RESTATE_LISTEN_MODE: "tcp",
    RESTATE_LOG_DISABLE_ANSI_CODES: "true",
  };
}

async function startServer(
  binary: string,
  dataDir: string,
  ports: { ingress: number; admin: number; node: number },
  cleanup: Cleanup,
): Promise<Server> {
  const proc = new Proc("restate-server", binary, [
    "--base-dir",
    dataDir,
    "--node-name",
    "bench",
    "--no-logo",
  ], { env: serverEnv(ports) });
  const stop = proc.register(cleanup);
  try {
    await waitFor(
      async () => {
        if (!proc.running) throw new Error(`restate-server exited:\n${proc.tail()}`);
        const admin = await request(`http://127.0.0.1:${ports.admin}/health`);
        const ingress = await request(`http://127.0.0.1:${ports.ingress}/restate/health`);
        await admin.body?.cancel();
        await ingress.body?.cancel();
        return admin.ok && ingress.ok;
      },
      60_000,
      "restate-server did not become healthy",
      50,
    );
  } catch (e) {
    throw new Error(`${e instanceof Error ? e.message : e}\n${proc.tail()}`);
  }
  return { proc, stop };
}

/** The durability-relevant lines of the server's effective configuration (`--dump-config`). */
async function durabilityConfig(binary: string, ports: Parameters<typeof serverEnv>[0]) {
  const toml = await run("restate-server --dump-config", binary, ["--dump-config"], {
    env: serverEnv(ports),
  });
  let section = "";
  const found: string[] = [];
  for (const line of toml.split("\n")) {
    const header = /^\[(.+)\]$/.exec(line.trim());
    if (header) section = header[1]!;
    else if (
      (section === "bifrost" && line.startsWith("default-provider")) ||
      (section === "log-server" && line.startsWith("rocksdb-disable-wal-fsync"))
    ) found.push(`${section}.${line.trim()}`);
  }
  return found.join(", ");
}

/** Runs the workload; see the module documentation. */
export async function runRestate(options: RestateOptions): Promise<PeerResult[]> {
  const { n, warmup, log } = options;
  const probeOps = options.fsyncProbeOps ?? 200;
  const serviceRuntime = options.serviceRuntime ??
    (process.versions.bun !== undefined ? "bun" : "deno");
  const cleanup = new Cleanup();
  const documented = "every increment is appended to Restate's log twice before the ingress " +
    "replies (the invocation, then the handler's journal with the state change and result); " +
    "the log lives in the local log-server's RocksDB, whose WAL is synced per write";
  let runtimeDesc = `restate-server ${RESTATE_SERVER_VERSION}; service on ${serviceRuntime} ` +
    `(SDK ${RESTATE_SDK_VERSION}, fetch handler, HTTP/1.1 request-response); ` +
    `client ${hostRuntime()}`;
  const base = () => ({ name: NAME, mode: MODE, durability: documented, runtime: runtimeDesc });
  try {
    const platformPackage = serverPlatformPackage();
    if (platformPackage === undefined) {
      throw new Error(`no restate-server build for ${process.platform} ${process.arch}`);
    }
    const binaryPath = join("node_modules", platformPackage, "bin", "restate-server");
    const dir = await installPeer(PEER, {
      "@restatedev/restate-server": RESTATE_SERVER_VERSION,
      "@restatedev/restate-sdk": RESTATE_SDK_VERSION,
    }, { log, mustExist: [binaryPath], env: { SCARF_ANALYTICS: "false" } });
    const binary = join(dir, binaryPath);
    const sdk = join(dir, "node_modules", "@restatedev", "restate-sdk", "dist", "fetch.js");
    const exe = runtimeExecutable(serviceRuntime);
    if (exe === undefined) throw new Error(`${serviceRuntime} not found to serve the service`);
    const version = (await run(`${serviceRuntime} --version`, exe, ["--version"]))
      .split("\n")[0]!.replace(/ \(.*$/, "");
    // `deno --version` prints "deno 2.9.6 (…)", `bun --version` just "1.4.4".
    const serviceVersion = version.startsWith(serviceRuntime)
      ? version
      : `${serviceRuntime} ${version}`;
    runtimeDesc = runtimeDesc.replace(
      `service on ${serviceRuntime}`,
      `service on ${serviceVersion}`,
    );

    const ports = { ingress: await freePort(), admin: await freePort(), node: await freePort() };
    const config = await durabilityConfig(binary, ports);
    const dataDir = cleanup.tempDir("peer-restate");

    log(`${PEER}: starting restate-server ${RESTATE_SERVER_VERSION} (data in ${dataDir}) …`);
    let t = performance.now();
    let server = await startServer(binary, dataDir, ports, cleanup);
    log(`${PEER}: healthy in ${(performance.now() - t).toFixed(0)} ms`);

    const servicePort = await freePort();
    log(`${PEER}: starting the Counter service on ${serviceVersion} (port ${servicePort}) …`);
    const service = new Proc(
      "restate service",
      exe,
      serviceRuntime === "deno"
        ? ["run", "-A", SERVICE_SCRIPT, `--port=${servicePort}`, `--sdk=${sdk}`]
        : [SERVICE_SCRIPT, `--port=${servicePort}`, `--sdk=${sdk}`],
    );
    service.register(cleanup);
    await service.waitForOutput(`listening ${servicePort}`, 60_000);

    log(`${PEER}: registering http://127.0.0.1:${servicePort}/ with the admin API …`);
    const registered = await fetch(`http://127.0.0.1:${ports.admin}/deployments`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ uri: `http://127.0.0.1:${servicePort}/`, use_http_11: true }),
    });
    const registration = await registered.text();
    if (!registered.ok) {
      throw new Error(`registration → ${registered.status}: ${registration.slice(0, 500)}`);
    }
    const ingress = `http://127.0.0.1:${ports.ingress}`;
    // The ingress learns the new service shortly after the admin API accepts it.
    await waitFor(
      async () => (await request(`${ingress}/Counter/ready/get`, { method: "POST" })).ok,
      30_000,
      "the ingress did not see the Counter service",
      50,
    );

    const rounds = roundCount(options);
    log(`${PEER}: ${MODE}: ${warmup} warm-up + ${rounds} × ${n} sequential increments …`);
    const { last, ...summary } = await inRounds(
      options,
      { name: NAME, mode: MODE },
      (w) => sequentialCounter(n, w, () => call(`${ingress}/Counter/bench/increment`)),
    );
    const result: PeerResult = {
      ...base(),
      ...summary,
      durability: `${documented} (from --dump-config: ${config})`,
    };

    if (probeOps > 0 && server.proc.pid !== undefined) {
      log(`${PEER}: counting restate-server's fsyncs over ${probeOps} increments (strace) …`);
      const count = await countSyncs(server.proc.pid, probeOps, async () => {
        for (let i = 0; i < probeOps; i++) await call(`${ingress}/Counter/probe/increment`);
      }, cleanup);
      log(`${PEER}: ${describeSyncs(count)}`);
      if (typeof count !== "string") result.fsyncsPerOp = count.total / count.ops;
      result.durability += `; measured: ${describeSyncs(count)}`;
    }

    try {
      log(`${PEER}: persistence check: restarting restate-server on the same directory …`);
      const before = await call(`${ingress}/Counter/bench/get`);
      t = performance.now();
      await server.stop();
      server = await startServer(binary, dataDir, ports, cleanup);
      log(`${PEER}: restarted in ${(performance.now() - t).toFixed(0)} ms`);
      const after = await waitFor(
        async () => {
          const response = await request(`${ingress}/Counter/bench/get`, { method: "POST" });
          return response.ok ? { value: JSON.parse(await response.text()) as number } : undefined;
        },
        30_000,
        "the counter could not be read after the restart",
        50,
      );
      const ok = before === last && after.value === last;
      const detail = `counter ${last} after the run, ${before} before and ` +
        `${after.value} after restarting restate-server: ${ok ? "ok" : "FAILED"}`;
      result.persistence = { ok, detail };
      log(`${PEER}: persistence ${detail}`);
    } catch (e) {
      result.persistence = {
        ok: false,
        detail: `check failed: ${e instanceof Error ? e.message : e}`,
      };
      log(`${PEER}: persistence ${result.persistence.detail}`);
    }
    result.runtime = runtimeDesc;
    return [result];
  } catch (e) {
    log(`${PEER}: cannot run: ${e instanceof Error ? e.message : e}`);
    return [failedResult(base(), e)];
  } finally {
    await cleanup.release(log);
  }
}

if (import.meta.main) {
  const serviceRuntime = process.argv.includes("--bun")
    ? "bun"
    : process.argv.includes("--deno")
    ? "deno"
    : undefined;
  const results = await runRestate({
    n: numberFlag("n", 1000),
    warmup: numberFlag("warmup", 100),
    fsyncProbeOps: numberFlag("probe", 200),
    rounds: numberFlag("rounds", 1),
    log: (line) => console.error(line),
    ...(serviceRuntime === undefined ? {} : { serviceRuntime }),
  });
  printTable(results, (line) => console.log(line));
  console.log(JSON.stringify({ peer: PEER, results }));
  process.exit(results.some((r) => r.error !== undefined) ? 1 : 0);
}
