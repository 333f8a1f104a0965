/**
 * PostgreSQL for tests: isolated backends on the server named by `DGEN_PG_URL`, and control of
 * that server for restart tests. Start a private server with `eval "$(.ci/postgres.sh start)"`
 * (CI does). Any suite can run on PostgreSQL with:
 *
 * ```ts
 * import { openTestPostgres, postgresSkip } from "./storage/_postgres.ts";
 * describe("my suite on postgres", { skip: postgresSkip }, () => {
 *   it("works", async () => {
 *     const backend = await openTestPostgres();
 *     try { … } finally { await backend.close(); } // also drops its schema
 *   });
 * });
 * ```
 */

import process from "node:process";
import { spawn } from "node:child_process";
import {
  type Backend,
  type BackendLimits,
  openPostgresBackend,
  type PostgresBackendOptions,
} from "../../mod.ts";

/** The server's URL, or undefined when no PostgreSQL is configured. */
export const postgresUrl: string | undefined = process.env.DGEN_PG_URL || undefined;

/** Skip reason for suites that need PostgreSQL; undefined when `DGEN_PG_URL` is set. */
export const postgresSkip: string | undefined = postgresUrl === undefined
  ? 'DGEN_PG_URL is not set; start a local PostgreSQL with: eval "$(.ci/postgres.sh start)"'
  : undefined;

/** Skip reason for tests that restart the server; undefined when they can run. */
export const postgresRestartSkip: string | undefined = postgresSkip ??
  (process.env.DGEN_PG_DATA && process.env.DGEN_PG_CTL
    ? undefined
    : "DGEN_PG_DATA and DGEN_PG_CTL are not set (.ci/postgres.sh exports them)");

/** A fresh schema name: every test backend gets its own, so tests never see each other. */
export function testSchemaName(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return `t_${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Options of {@link openTestPostgres}. */
export interface TestPostgresOptions extends Omit<Partial<PostgresBackendOptions>, "limits"> {
  /** Limits to enforce. */
  limits?: Partial<BackendLimits>;
  /**
   * Keep the schema when the backend closes (for tests that open several backends on one
   * schema, in this process or others; drop it with {@link dropTestSchema}).
   * @default false
   */
  keepSchema?: boolean;
}

/**
 * Opens a backend on a new, empty schema of the test server. Closing it drops the schema
 * (unless `keepSchema`). Pass `schema` to share one schema between several backends.
 */
export async function openTestPostgres(options: TestPostgresOptions = {}): Promise<Backend> {
  if (postgresUrl === undefined) throw new Error(postgresSkip);
  const { keepSchema = false, ...rest } = options;
  const schema = rest.schema ?? testSchemaName();
  const backend = await openPostgresBackend({ url: postgresUrl, ...rest, schema });
  if (keepSchema) return backend;
  return {
    kind: backend.kind,
    limits: backend.limits,
    transact: (fn, o) => backend.transact(fn, o),
    openSubspace: (path) => backend.openSubspace(path),
    async close() {
      await backend.close();
      await dropTestSchema(schema);
    },
  };
}

/** Drops a test schema and everything in it. */
export async function dropTestSchema(schema: string): Promise<void> {
  await withAdmin((sql) => sql.unsafe(`drop schema if exists "${schema}" cascade`));
}

/** The slice of npm:postgres the tests use for administration. */
export interface AdminSql {
  unsafe(query: string, parameters?: unknown[]): Promise<Array<Record<string, unknown>>>;
}

/** Runs `fn` with a plain `npm:postgres` client on the test server (for inspection, faults). */
export async function withAdmin<T>(fn: (sql: AdminSql) => Promise<T>): Promise<T> {
  if (postgresUrl === undefined) throw new Error(postgresSkip);
  const { default: postgres } = await import("postgres");
  const sql = postgres(postgresUrl, { max: 1, onnotice: () => {} });
  try {
    return await fn(sql as unknown as AdminSql);
  } finally {
    await sql.end({ timeout: 1 });
  }
}

/**
 * Restarts the test server with `pg_ctl restart -m immediate` (a crash: no checkpoint, every
 * connection cut, crash recovery at start) and resolves once it accepts connections again.
 */
export function restartPostgres(): Promise<void> {
  return pgCtl(["-m", "immediate", "-w", "-t", "60", "restart"]);
}

/** Stops the test server at once (`pg_ctl stop -m immediate`), as a crash would. */
export function stopPostgres(): Promise<void> {
  return pgCtl(["-m", "immediate", "-w", "-t", "60", "stop"]);
}

/** Starts the test server again and resolves once it accepts connections. */
export function startPostgres(): Promise<void> {
  return pgCtl(["-w", "-t", "60", "start"]);
}

/** Runs `pg_ctl` on the test server's data directory (its settings live there). */
function pgCtl(args: string[]): Promise<void> {
  if (postgresRestartSkip !== undefined) return Promise.reject(new Error(postgresRestartSkip));
  const data = process.env.DGEN_PG_DATA!;
  const command = [process.env.DGEN_PG_CTL!, "-D", data, "-l", `${data}/server.log`, ...args];
  const user = process.env.DGEN_PG_USER;
  // Debian's server refuses to run as root: run pg_ctl as the owner of the data directory.
  const asOwner = user && process.getuid?.() === 0;
  const [cmd, ...rest] = asOwner ? ["runuser", "-u", user, "--", ...command] : command;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd!, rest, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.on("data", (d) => stderr += String(d));
    child.on("error", reject);
    child.on("exit", (code) => {
      if (code === 0) resolve();
      else reject(new Error(`pg_ctl ${args.at(-1)} exited with ${code}: ${stderr}`));
    });
  });
}

/** A connection through a {@link PostgresProxy}. */
export interface ProxiedConnection {
  /** The `application_name` of the client's start-up message (`dgen`, `dgen-listen`). */
  applicationName: string | undefined;
  /**
   * Stops forwarding bytes either way while both sockets stay open: the connection goes silent,
   * as when the other host vanishes or a partition drops its packets (no FIN, no RST).
   */
  silence(): void;
}

/** A TCP proxy in front of the test server, for fault injection. */
export interface PostgresProxy {
  /** `DGEN_PG_URL` with the proxy's address instead of the server's. */
  readonly url: string;
  /** Every connection accepted so far, in order. */
  readonly connections: readonly ProxiedConnection[];
  /** Closes the proxy and every connection through it. */
  close(): Promise<void>;
}

/** Starts a {@link PostgresProxy} on the loopback. */
export async function startPostgresProxy(): Promise<PostgresProxy> {
  if (postgresUrl === undefined) throw new Error(postgresSkip);
  const net = await import("node:net");
  const target = new URL(postgresUrl);
  const targetPort = Number(target.port || 5432);
  const targetHost = target.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1";
  const connections: ProxiedConnection[] = [];
  const sockets = new Set<import("node:net").Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, targetHost);
    let silent = false;
    const conn: ProxiedConnection = {
      applicationName: undefined,
      silence: () => silent = true,
    };
    connections.push(conn);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => sockets.delete(s));
    }
    client.on("data", (d: Uint8Array) => {
      if (conn.applicationName === undefined) {
        const text = new TextDecoder("latin1").decode(d);
        const at = text.indexOf("application_name\0");
        if (at >= 0) {
          conn.applicationName = text.slice(at + 17, text.indexOf("\0", at + 17));
        }
      }
      if (!silent) upstream.write(d);
    });
    upstream.on("data", (d: Uint8Array) => {
      if (!silent) client.write(d);
    });
    // A silent connection stays open on the side still there, as a vanished peer's would.
    client.on("close", () => silent || upstream.destroy());
    upstream.on("close", () => silent || client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as import("node:net").AddressInfo).port;
  const url = new URL(postgresUrl);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return {
    url: url.href,
    connections,
    close() {
      for (const s of sockets) s.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
