/**
 * dgen: durable, highly available `gen_server`s for Deno and Bun.
 *
 * A server's state and message queue live in a transactional key-value store (embedded SQLite
 * by default, FoundationDB or PostgreSQL when one machine is not enough), so the state survives
 * any process and several processes can serve one server.
 *
 * This module is the public face: it re-exports the storage contract, the backends, tenants,
 * the key encoding and the error classes.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, openTenant } from "./mod.ts";
 * const backend = openMemoryBackend();
 * const tenant = await openTenant(backend, "demo");
 * const key = new TextEncoder().encode("hits");
 * await tenant.transact((tx) => tx.add(key, 1));
 * await backend.close();
 * ```
 *
 * @module
 */

export * from "./lib/errors.ts";
export type {
  Backend,
  BackendLimits,
  KeyValue,
  RangeOptions,
  ReadTransaction,
  Transaction,
  TransactOptions,
  Watch,
} from "./lib/storage/types.ts";
export { FOUNDATIONDB_LIMITS } from "./lib/storage/types.ts";
export { type MemoryBackendOptions, openMemoryBackend } from "./lib/storage/memory.ts";
export {
  type FoundationdbBackendOptions,
  openFoundationdbBackend,
} from "./lib/storage/foundationdb.ts";
export {
  openSqliteBackend,
  type SqliteBackend,
  type SqliteBackendOptions,
  type SqliteBackendStats,
} from "./lib/storage/sqlite.ts";
export {
  openPostgresBackend,
  POSTGRES_MAX_KEY_SIZE,
  type PostgresBackendOptions,
} from "./lib/storage/postgres.ts";
export {
  type FaultOptions,
  type FaultStats,
  type FaultyBackend,
  withFaults,
} from "./lib/storage/faults.ts";
export { openTenant, type Tenant } from "./lib/tenant.ts";
import { openTenant, type Tenant } from "./lib/tenant.ts";
import { openSqliteBackend, type SqliteBackend } from "./lib/storage/sqlite.ts";
import { cwd, env } from "./lib/runtime/process.ts";
import { ValidationError } from "./lib/errors.ts";
export {
  compareTuples,
  pack,
  packWithVersionstamp,
  type Tuple,
  type TupleItem,
  unpack,
  Versionstamp,
} from "./lib/tuple.ts";
export { int64LE, readInt64LE } from "./lib/bytes.ts";
export {
  type Action,
  type AnyServerDefinition,
  type CallArg,
  type CallHandler,
  type CallName,
  type CallReply,
  type CallsOf,
  type CastArg,
  type CastHandler,
  type CastName,
  type CastsOf,
  type DeadLetterMessage,
  defineServer,
  type From,
  type HandlerContext,
  type HandlerResult,
  type InfoOf,
  type InitArgsOf,
  lock,
  type LockedEvent,
  type LockResult,
  type MessageArgs,
  noreply,
  type NoreplyResult,
  reply,
  type ReplyOf,
  type ReplyResult,
  type ServerDefinition,
  type ServerSchemas,
  type ServerSpec,
  type StateOf,
  stop,
  type StopResult,
  type TxContext,
  type TypesOf,
} from "./lib/server/definition.ts";
export {
  type CallOptions,
  type CastTuple,
  type DeadLetter,
  type DeadLetters,
  type InstanceStats,
  type ServerRef,
  start,
  type StartOptions,
} from "./lib/server/instance.ts";
export { StateConflictError } from "./lib/server/merge.ts";
export type { StoredError } from "./lib/server/records.ts";
export type { AnySchema } from "./lib/validate.ts";
export {
  type InstanceView,
  listServers,
  type QueuedView,
  readServerView,
  type ServerView,
  toDisplay,
  type ViewOptions,
  watchTenant,
} from "./lib/inspect.ts";
export { type Dashboard, type DashboardOptions, serveDashboard } from "./lib/dashboard/serve.ts";

const sandboxes = new Map<string, Promise<SqliteBackend>>();

/**
 * The seed's `sandbox_open`: the tenant `dir` in the SQLite file `<data dir>/<db>.sqlite`,
 * where the data dir is `$DGEN_DATA_DIR` if set, else `.dgen/` in the working directory (read
 * at each call). Calls for the same file share one backend per process (reopened if it was
 * closed); `tenant.backend.close()` closes it.
 *
 * @example
 * ```ts
 * import { sandboxOpen } from "./mod.ts";
 * const tenant = await sandboxOpen("example", "counter");
 * console.log(tenant.name, tenant.backend.kind); // "counter" "sqlite"
 * await tenant.backend.close();
 * ```
 */
export async function sandboxOpen(db: string, dir: string): Promise<Tenant> {
  if (typeof db !== "string" || !/^[A-Za-z0-9._-]+$/.test(db) || db === "." || db === "..") {
    throw new ValidationError([{
      path: "db",
      message: `Expected a file name of letters, digits, ".", "_" or "-", received ${
        JSON.stringify(db)
      }`,
    }]);
  }
  const base = env("DGEN_DATA_DIR") || `${cwd()}/.dgen`;
  const path = `${base.replace(/\/+$/, "")}/${db}.sqlite`;
  let opening = sandboxes.get(path);
  if (opening !== undefined) {
    const open = await opening.catch(() => undefined);
    if (open === undefined || (open as unknown as { closed: boolean }).closed) {
      if (sandboxes.get(path) === opening) sandboxes.delete(path);
    }
    opening = sandboxes.get(path);
  }
  if (opening === undefined) {
    opening = openSqliteBackend({ path });
    sandboxes.set(path, opening);
  }
  return await openTenant(await opening, dir);
}
