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
