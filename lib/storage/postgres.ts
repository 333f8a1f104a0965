/**
 * The PostgreSQL backend: the storage contract on PostgreSQL (13 or later) through
 * `npm:postgres`, which is loaded on the first {@link openPostgresBackend} call, never by
 * importing this module. It lets processes on several hosts share one dgen deployment where
 * FoundationDB is not available.
 *
 * Everything lives in one schema (`dgen` by default), created on first open:
 * - `kv(key bytea, seq bigint, value bytea)`, primary key `(key, seq)`: a key's value is its row
 *   with `seq` 0, and its pending atomic additions (deltas) are rows with `seq` above 0, next to
 *   it in the index (see atomic add below). `bytea` compares as unsigned bytes (no collation
 *   applies), which is the contract's key order.
 * - `meta(id, format)`: one row, whose row lock orders versionstamped commits.
 * - `stamps(stamp)`, `stamp_seq`, `delta_seq`: see versionstamps and atomic adds below.
 *
 * How the contract maps onto PostgreSQL (figures and trade-offs: `docs/postgres.md`):
 * - **Transactions** run at `SERIALIZABLE` (serializable snapshot isolation). Writes are
 *   buffered and sent, pipelined, with the next read or with the commit, so a blind write costs
 *   one round trip and a read-modify-write two. Serialization failures and deadlocks (SQLSTATE
 *   40001, 40P01) and lock time-outs become `ConflictError` and go through the shared retry
 *   loop. PostgreSQL aborts only transactions that could break serializability, so a
 *   transaction whose read went stale may still commit, ordered before the writer: it does not
 *   promise FoundationDB's "every stale read conflicts".
 * - **Snapshot reads** are plain reads: PostgreSQL cannot leave a read out of a serializable
 *   transaction's conflict tracking. That is stricter than the contract asks, never weaker.
 * - **Atomic add** inserts a delta row instead of updating the value, so concurrent adders never
 *   conflict with each other (an insert of a fresh row reads nothing). Readers fold the deltas;
 *   a background fold merges them into the value row after 64 adds to a key from one process,
 *   or when a read meets 16 or more. Deltas sit next to their key in the primary key, so a
 *   read returns a key's value and deltas in one range scan that touches that key's index
 *   pages only. A `set` deletes the key's deltas, a read of them that orders it against
 *   concurrent adders, through a partial index of the delta rows alone: small, so every set
 *   and add meet there, but a blind set reads none of its neighbours in the primary key.
 *   (Format 1 kept deltas in a table of their own that every read scanned; it is upgraded in
 *   place.)
 * - **Versionstamps**: at commit, after its writes, a stamped transaction locks the `meta` row
 *   (`FOR UPDATE`), takes the next `stamp_seq` value, writes its stamped keys and values, and
 *   commits, all in one pipelined round trip. The lock is released only once the commit is
 *   visible, so stamps are handed out in commit order: a snapshot that sees a stamp sees every
 *   smaller one. Stamped commits are serialized through that lock (one at a time, from taking
 *   the lock to the end of the commit's WAL flush); other commits are not. Each stamped
 *   transaction also inserts its stamp into `stamps` and reads the range above it, so a stamped
 *   transaction that read something a stamped transaction committed before it had not seen
 *   forms a cycle PostgreSQL aborts: stamp order is also the serialization order.
 * - **Watches** use LISTEN/NOTIFY: every write sends a notification (delivered only if the
 *   transaction commits) carrying a hash of the key and the writer's transaction id on the
 *   schema's channel, and one listening connection per backend wakes the matching watches. A
 *   watch records the key's row versions (`xmin`) as its transaction saw them: it ignores
 *   notifications of writes it saw (or made), and compares the versions again once it listens
 *   and after every reconnection of the listener, so writes made while nobody listened are not
 *   missed. The listener checks its connection every 5 s, so one that died silently is
 *   replaced within about 10 s.
 * - **Tenants** are tuple prefixes, as on the memory backend.
 * - **Connection loss**: an error before the commit was sent fails the attempt, retryably, with
 *   nothing applied; an error once it was sent is `CommitUnknownResultError`. Either way the
 *   transaction first waits (up to `reconnectTimeout`) for the server to accept connections.
 *
 * @module
 */

import {
  addLittleEndian,
  bytesToBinaryString,
  compareBytes,
  EMPTY_BYTES,
  int64LE,
  printable,
  toHex,
} from "../bytes.ts";
import {
  BackendUnavailableError,
  CommitUnknownResultError,
  ConflictError,
  LimitExceededError,
  TransactionError,
} from "../errors.ts";
import { pack } from "../tuple.ts";
import { parse } from "../validate.ts";
import * as v from "valibot";
import { checkTransactOptions, LazyStamp, WatchHandle } from "./common.ts";
import { retryLoop } from "./retry.ts";
import { BodyWatchdog, timeoutError, type WatchedBody } from "./watchdog.ts";
import {
  type Backend,
  type BackendLimits,
  FOUNDATIONDB_LIMITS,
  type KeyValue,
  type RangeOptions,
  type ReadTransaction,
  type Transaction,
  type TransactOptions,
  type Watch,
} from "./types.ts";
import { errorMessage } from "../describe.ts";

/**
 * The largest key the PostgreSQL backend accepts (FoundationDB allows 10,000 bytes): a B-tree
 * index entry holds at most 2,704 bytes, and an incompressible key of about 2,680 bytes is the
 * most that fits. Keys built from tuples of ids are far shorter.
 *
 * @example
 * ```ts
 * import { POSTGRES_MAX_KEY_SIZE } from "../../mod.ts";
 * console.log(POSTGRES_MAX_KEY_SIZE); // 2600
 * ```
 */
export const POSTGRES_MAX_KEY_SIZE = 2_600;

/**
 * Options of {@link openPostgresBackend}.
 *
 * @example
 * ```ts
 * import type { PostgresBackendOptions } from "../../mod.ts";
 * const options: PostgresBackendOptions = {
 *   url: "postgres://postgres@127.0.0.1:5432/postgres",
 *   schema: "acme",
 *   maxConnections: 4,
 * };
 * console.log(options.schema); // "acme"
 * // With a server running: const backend = await openPostgresBackend(options);
 * ```
 */
export interface PostgresBackendOptions {
  /**
   * Connection URL: `postgres://user:password@host:port/database`. Query parameters that
   * `npm:postgres` understands (such as `sslmode=require`) are honoured.
   */
  url: string;
  /**
   * Schema that holds dgen's tables, created if missing. Backends opened on the same schema
   * (in any process) share their data; different schemas are isolated.
   * @default "dgen"
   */
  schema?: string;
  /** Most connections opened for transactions; one more listens for watches. @default 10 */
  maxConnections?: number;
  /**
   * How long a transaction waits for an unreachable server (a restart, a failover) before it
   * fails with `BackendUnavailableError`, in milliseconds.
   * @default 30000
   */
  reconnectTimeout?: number;
  /**
   * Limits to enforce. Keys may not exceed {@link POSTGRES_MAX_KEY_SIZE}.
   * @default FoundationDB's limits, with keys of at most 2,600 bytes
   */
  limits?: Partial<BackendLimits>;
}

const positiveInt = v.pipe(v.number(), v.integer(), v.minValue(1));

/**
 * Parses a connection URL as npm:postgres does (several hosts, `h1:5432,h2:5433`, are replaced
 * by the first before the URL is parsed, and the others' ports must be numbers), so that one it
 * would refuse is a `ValidationError` here. Undefined when it does not parse.
 */
function parseConnectionUrl(url: string): URL | undefined {
  try {
    let host = url.slice(url.indexOf("://") + 3).split(/[?/]/)[0]!;
    host = decodeURIComponent(host.slice(host.indexOf("@") + 1));
    const [first, ...others] = host.split(",");
    for (const other of others) {
      const port = other.split(":")[1];
      if (port !== undefined && !(/^\d{1,5}$/.test(port) && Number(port) <= 65_535)) return;
    }
    return new URL(url.replace(host, first!));
  } catch {
    return undefined;
  }
}

/** A connection URL with its password (if any) replaced by `***`, for messages. */
function redactUrl(url: string): string {
  const start = url.indexOf("://");
  const at = url.lastIndexOf("@");
  if (start < 0 || at < start) return url;
  const colon = url.indexOf(":", start + 3);
  if (colon < 0 || colon > at) return url;
  return `${url.slice(0, colon + 1)}***${url.slice(at)}`;
}

/** `text` with every occurrence of the URL's password (raw or decoded) replaced by `***`. */
function redactPassword(text: string, url: string): string {
  const parsed = parseConnectionUrl(url);
  if (parsed === undefined || parsed.password === "") return text;
  let out = text.replaceAll(parsed.password, "***");
  try {
    const decoded = decodeURIComponent(parsed.password);
    if (decoded !== "") out = out.replaceAll(decoded, "***");
  } catch {
    // Not percent-encoded text: the raw form was replaced.
  }
  return out;
}

const optionsSchema = v.strictObject({
  url: v.pipe(
    v.string(),
    v.regex(/^postgres(ql)?:\/\//, "Expected a postgres:// or postgresql:// URL"),
    v.check(
      (url) => parseConnectionUrl(url) !== undefined,
      (issue) =>
        `Expected a URL postgres://user:password@host:port/database that parses (a port from 0 to 65535, an IPv6 host in brackets, reserved characters of the user and password percent-encoded), received ${
          JSON.stringify(redactUrl(String(issue.input)))
        }`,
    ),
  ),
  schema: v.optional(
    v.pipe(
      v.string(),
      v.regex(
        /^[a-z_][a-z0-9_]{0,47}$/,
        "Expected a lower-case SQL identifier of at most 48 characters (a-z, 0-9, _)",
      ),
    ),
  ),
  maxConnections: v.optional(v.pipe(positiveInt, v.maxValue(1000))),
  reconnectTimeout: v.optional(v.pipe(v.number(), v.minValue(0))),
  limits: v.optional(v.strictObject({
    maxKeySize: v.optional(v.pipe(
      positiveInt,
      v.maxValue(
        POSTGRES_MAX_KEY_SIZE,
        `Expected at most ${POSTGRES_MAX_KEY_SIZE} (PostgreSQL's B-tree entry limit)`,
      ),
    )),
    maxValueSize: v.optional(positiveInt),
    maxTransactionSize: v.optional(positiveInt),
    maxTransactionDuration: v.optional(positiveInt),
  })),
});

// ---------------------------------------------------------------------------------------------
// The slice of npm:postgres this module uses. Only types are named here: the package itself is
// imported dynamically by openPostgresBackend.

type PgRow = unknown[];
interface PgResult extends Array<PgRow> {
  command: string;
}
interface PgQuery extends Promise<PgResult> {
  execute(): PgQuery;
  values(): PgQuery;
}
interface PgSql {
  unsafe(query: string, parameters?: unknown[], options?: { prepare?: boolean }): PgQuery;
  end(options?: { timeout?: number }): Promise<void>;
}
interface PgHooks {
  onnotify?: (channel: string, payload: string) => void;
  onclose?: () => void;
  /** Receives the socket once it is connected. */
  onsocket?: (socket: { destroy(): void }) => void;
}
/** Where npm:postgres asks its `socket` option to connect (from the parsed URL). */
interface SocketTarget {
  host: string[];
  port: number[];
  path?: string | false;
}
type NetModule = typeof import("node:net");

/** A TCP (or Unix) socket to the server, connected, as npm:postgres's `socket` option wants. */
function openSocket(net: NetModule, target: SocketTarget, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const host = target.host[0] ?? "localhost";
    const socket = target.path
      ? net.connect(target.path)
      : net.connect(target.port[0] ?? 5432, host);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        connectionError("CONNECT_TIMEOUT", `Connecting to PostgreSQL took over ${timeoutMs} ms`),
      );
    }, timeoutMs);
    const onError = (e: Error) => {
      clearTimeout(timer);
      reject(e);
    };
    socket.once("error", onError);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeListener("error", onError);
      // npm:postgres reads the host name for TLS's server name.
      Object.assign(socket, { host });
      resolve(socket);
    });
  });
}

function connectionError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** Opens a client of exactly one connection (each transaction needs a connection to itself). */
type PgConnect = (hooks?: PgHooks) => PgSql;
type PostgresFactory = (url: string, options: Record<string, unknown>) => PgSql;

// ---------------------------------------------------------------------------------------------
// Tuning.

/** Adds to one key, from one process, after which a background fold merges its deltas. */
const FOLD_AFTER_ADDS = 64;
/** Deltas a read may meet on one key before it asks for a background fold. */
const FOLD_AFTER_DELTAS = 16;
/** Stamps kept in `stamps` for the ordering fence (older ones are deleted in the background). */
const STAMPS_KEPT = 1024;
/** Extra time a response may take beyond the lock time-out before the connection is presumed dead. */
const RESPONSE_GRACE_MS = 10_000;
/** Longest wait for a TCP connection to the server. */
const CONNECT_TIMEOUT_MS = 10_000;
/**
 * How often the listener checks that its connection still answers, and how long an answer may
 * take: a connection that died silently is replaced within about 10 s.
 */
const LISTEN_CHECK_INTERVAL_MS = 5_000;
const LISTEN_CHECK_TIMEOUT_MS = 5_000;
/**
 * A connection idle this long is closed, unless a transaction may still be open on it (see
 * {@link idleTimeoutSeconds}).
 */
const IDLE_TIMEOUT_S = 60;
/**
 * A pool connection older than this (30 to 60 minutes, drawn per connection, as npm:postgres's
 * own `max_lifetime`) is closed when its transaction ends, never in the middle of one.
 */
function connectionLifetimeMs(): number {
  return 60_000 * (30 + Math.random() * 30);
}

/**
 * The idle time-out of transaction connections, in seconds. npm:postgres counts a connection
 * idle whenever no statement is in flight, even inside a transaction, and closes it then: the
 * time-out must outlast any pause between two statements of a transaction, which the watchdog
 * bounds by the duration limit. So it is 60 s, or the limit plus the response grace (the
 * server's `idle_in_transaction_session_timeout`) and one second when that is longer.
 */
function idleTimeoutSeconds(limits: BackendLimits): number {
  return Math.max(
    IDLE_TIMEOUT_S,
    Math.ceil((limits.maxTransactionDuration + RESPONSE_GRACE_MS) / 1000) + 1,
  );
}

// ---------------------------------------------------------------------------------------------
// Errors.

/** SQLSTATEs that mean "run the transaction again": serialization failure, deadlock, lock wait. */
const CONFLICT_STATES = new Set(["40001", "40P01", "55P03"]);
/** SQLSTATE out_of_shared_memory: full lock tables, a retryable failure (see mapError). */
const OUT_OF_SHARED_MEMORY = "53200";
/** SQLSTATEs after which the session is gone: shutdown, crash, start-up, too many clients. */
const CONNECTION_STATES = new Set(["57P01", "57P02", "57P03", "53300", "25P03"]);

/** Errors after which the transaction waits for the server before its retry. */
const lostConnection = new WeakSet<object>();

function isPostgresError(e: unknown): e is Error & { code: string } {
  return e instanceof Error && e.name === "PostgresError" &&
    typeof (e as { code?: unknown }).code === "string";
}

/** Whether `e` means the connection (not the transaction) failed. */
function isConnectionError(e: unknown): boolean {
  if (isPostgresError(e)) return e.code.startsWith("08") || CONNECTION_STATES.has(e.code);
  // npm:postgres reports socket trouble as plain errors coded CONNECTION_CLOSED, ECONNRESET, …
  return e instanceof Error;
}

/**
 * Maps a failure of one attempt to dgen's taxonomy. `commitSent` tells whether COMMIT may have
 * reached the server, which makes a lost connection an unknown outcome.
 */
function mapError(e: unknown, commitSent: boolean, closed: boolean): unknown {
  if (e instanceof TransactionError || e instanceof BackendUnavailableError) return e;
  if (isPostgresError(e) && CONFLICT_STATES.has(e.code)) {
    return new ConflictError(`PostgreSQL ${e.code}: ${e.message}`, { cause: e });
  }
  if (isPostgresError(e) && e.code === OUT_OF_SHARED_MEMORY) {
    // The server ran out of room for the locks of its concurrent transactions (predicate locks
    // under SSI, most often): the transaction was rolled back, the session lives on, and the
    // attempt may succeed once others end.
    return new TransactionError(
      "resource_exhausted",
      `PostgreSQL ${e.code}: ${e.message}${
        (e as { hint?: string }).hint ? ` (${(e as { hint?: string }).hint})` : ""
      }`,
      { cause: e, retryable: true },
    );
  }
  if (closed) {
    return new BackendUnavailableError("The PostgreSQL backend is closed", {
      cause: e,
      closed: true,
    });
  }
  if (isConnectionError(e)) {
    const message = errorMessage(e);
    const mapped = commitSent
      ? new CommitUnknownResultError(`Connection lost during commit: ${message}`, { cause: e })
      : new TransactionError("connection_lost", `Connection to PostgreSQL lost: ${message}`, {
        cause: e,
        retryable: true,
      });
    lostConnection.add(mapped);
    return mapped;
  }
  const code = isPostgresError(e) ? ` ${e.code}` : "";
  const message = errorMessage(e);
  return new TransactionError("postgres_error", `PostgreSQL error${code}: ${message}`, {
    cause: e,
  });
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers.

/**
 * A plain Uint8Array copy of a `Buffer` from npm:postgres: callers never see `Buffer`, and
 * never a view into the shared pool small Buffers are carved from.
 */
function bytesOf(x: unknown): Uint8Array {
  return new Uint8Array(x as Uint8Array);
}

/** A `bytea[]` array literal; sent as text, PostgreSQL casts it (`$1::bytea[]`). */
function byteaArray(items: readonly Uint8Array[]): string {
  let s = "{";
  for (let i = 0; i < items.length; i++) s += (i ? ',"\\\\x' : '"\\\\x') + toHex(items[i]!) + '"';
  return s + "}";
}

/** The stamp layout of the contract: 8 bytes of commit order (big-endian) and 2 of zeros. */
function stampBytes(value: string): Uint8Array {
  const out = new Uint8Array(10);
  new DataView(out.buffer).setBigUint64(0, BigInt(value), false);
  return out;
}

/** Hash of a key as notifications carry it; SQL computes the same (see `notifyKey`). */
async function keyHash(key: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", key as Uint8Array<ArrayBuffer>);
  return toHex(new Uint8Array(digest, 0, 16));
}

/** Folds a key's rows (value first, then deltas in `seq` order) into its value. */
function foldValue(base: Uint8Array | undefined, deltas: readonly Uint8Array[]): Uint8Array {
  let value = base;
  for (const d of deltas) value = addLittleEndian(value, d);
  return value!;
}

function noop(): void {}

// ---------------------------------------------------------------------------------------------
// SQL. The schema name is a validated identifier, so it is spliced in; everything else is a
// parameter. The texts are fixed so that each connection prepares each statement once.

/** A 64-bit transaction id (`xid8`) as the 32-bit id `xmin` shows, in decimal. */
function xid32(xid8: string): string {
  return `(${xid8}::text::bigint % 4294967296)::text`;
}

/** The layout this version writes (`meta.format`); format 1 kept deltas in a table of their own. */
const FORMAT = 2;

function statements(schema: string) {
  const s = `"${schema}"`;
  const kv = `${s}.kv`;
  /**
   * Notification of a write to a key: the first 16 bytes of the key's SHA-256 in hex (see
   * keyHash), a colon, and the writer's transaction id as it appears in `xmin`, which lets a
   * watch ignore writes it had already seen.
   */
  const notifyKeys = (channel: string, from: string) =>
    `select count(pg_notify(${channel}, encode(substr(sha256(key), 1, 16), 'hex') || ':' || ${
      xid32("pg_current_xact_id()")
    })) from (select distinct key from ${from}) n`;
  const stamp = `int8send(currval('${s}.stamp_seq')) || '\\x0000'::bytea`;
  const upsert =
    `insert into ${kv} (key, seq, value) select k, 0, v from t on conflict (key, seq) do update set value = excluded.value returning key`;
  /**
   * Beside an upsert `w` of the keys in `$1`: deletes their delta rows (a CTE named `d`), and
   * the keys both wrote, for `notifyKeys`.
   */
  const dropDeltas =
    `d as (delete from ${kv} where key = any($1::bytea[]) and seq > 0 returning key)`;
  const upsertedOrDropped = "(select key from w union all select key from d) u";
  return {
    setup: [
      // Not `create schema if not exists`: PostgreSQL checks CREATE on the database before it
      // looks for the schema, so a role granted CREATE and USAGE on a schema made for it could
      // not open it. A schema created meanwhile by someone else (not a dgen backend: those
      // hold setup's lock) is fine too.
      `do $$ begin
        if not exists (select 1 from pg_namespace where nspname = '${schema}') then
          create schema ${s};
        end if;
      exception when duplicate_schema or unique_violation then null;
      end $$`,
      `create table if not exists ${s}.meta (id int primary key, format int not null)`,
      `insert into ${s}.meta (id, format) values (1, ${FORMAT}) on conflict do nothing`,
      `create table if not exists ${kv} (key bytea not null, seq bigint not null, value bytea not null, primary key (key, seq))`,
      `create table if not exists ${s}.stamps (stamp bigint primary key)`,
      `create sequence if not exists ${s}.stamp_seq`,
      `create sequence if not exists ${s}.delta_seq`,
      // Format 1 (a separate deltas table) becomes format 2 in place, once, under setup's lock.
      `do $$ begin if (select format from ${s}.meta where id = 1) = 1 then
        alter table ${kv} add column seq bigint not null default 0;
        alter table ${kv} drop constraint kv_pkey;
        alter table ${kv} add primary key (key, seq);
        insert into ${kv} (key, seq, value) select key, seq, operand from ${s}.deltas;
        drop table ${s}.deltas;
        update ${s}.meta set format = ${FORMAT} where id = 1;
      end if; end $$`,
      // The delta rows alone, for the delete that orders a set against concurrent adders: it
      // reads this small index, not the key's page of the primary key, so a blind set is no
      // read of its neighbours there.
      `create index if not exists kv_deltas on ${kv} (key, seq) where seq > 0`,
    ],
    format: `select format from ${s}.meta where id = 1`,
    beginWrite: "begin isolation level serializable",
    beginRead: "begin isolation level serializable, read only",
    commit: "commit",
    rollback: "rollback",
    // A key's rows: its value (`seq` 0) and its deltas, adjacent in the index.
    get: `select seq, value from ${kv} where key = $1 order by seq`,
    rangeForward:
      `select key, seq, value from ${kv} where key >= $1 and key < $2 order by key, seq limit $3`,
    rangeReverse:
      `select key, seq, value from ${kv} where key >= $1 and key < $2 order by key desc, seq desc limit $3`,
    conflictKey: `select count(*) from ${kv} where key = $1`,
    conflictRange: `select count(*) from ${kv} where key >= $1 and key < $2`,
    // A set replaces the additions made before it: the same statement deletes the keys' delta
    // rows (through the partial index of delta rows; see setup). The upsert's rows are read
    // first, so it runs first and locks the value row before the deltas, as the fold does;
    // PostgreSQL does not promise that order, and a deadlock would be retried as a conflict.
    set:
      `with t as (select * from unnest($1::bytea[], $2::bytea[]) as t(k, v)), w as (${upsert}), ${dropDeltas} ${
        notifyKeys("$3", upsertedOrDropped)
      }`,
    // A clear removes a key's value and deltas together.
    clear: `with w as (delete from ${kv} where key = any($1::bytea[]) returning key) ${
      notifyKeys("$2", "w")
    }`,
    clearRange: `with w as (delete from ${kv} where key >= $1 and key < $2 returning key) ${
      notifyKeys("$3", "w")
    }`,
    add:
      `with w as (insert into ${kv} (key, seq, value) select k, nextval('${s}.delta_seq'), v from unnest($1::bytea[], $2::bytea[]) as t(k, v) returning key) ${
        notifyKeys("$3", "w")
      }`,
    lock: `select 1 from ${s}.meta where id = 1 for update`,
    stamp:
      `with n as (select nextval('${s}.stamp_seq') as v), f as (insert into ${s}.stamps (stamp) select v from n) select v::text, exists (select 1 from ${s}.stamps where stamp > (select v from n)) from n`,
    // A stamped key is new by construction (its stamp was never handed out before), so unlike
    // `set` it has no deltas to drop, and its insert reads nothing.
    stampedKeys:
      `with t as (select p || ${stamp} || x as k, v from unnest($1::bytea[], $2::bytea[], $3::bytea[]) as u(p, x, v)), w as (${upsert}) ${
        notifyKeys("$4", "w")
      }`,
    stampedValues:
      `with t as (select k, p || ${stamp} || x as v from unnest($1::bytea[], $2::bytea[], $3::bytea[]) as u(k, p, x)), w as (${upsert}), ${dropDeltas} ${
        notifyKeys("$4", upsertedOrDropped)
      }`,
    versions:
      `select key, seq, xmin::text from ${kv} where key = any($1::bytea[]) order by key, seq`,
    ownXid: `select ${xid32("pg_current_xact_id_if_assigned()")}`,
    foldBase: `select value from ${kv} where key = $1 and seq = 0 for update`,
    foldDeltas: `select seq, value from ${kv} where key = $1 and seq > 0 order by seq for update`,
    foldSetBase: `update ${kv} set value = $2 where key = $1 and seq = 0`,
    foldSetDelta: `update ${kv} set value = $2 where key = $1 and seq = $3::bigint`,
    foldDelete: `delete from ${kv} where key = $1 and seq = any($2::bigint[])`,
    stampsGc: `delete from ${s}.stamps where stamp < $1::bigint`,
  };
}

type Statements = ReturnType<typeof statements>;

// ---------------------------------------------------------------------------------------------
// Connections.

/** One connection, used by one transaction at a time. Never reused after a connection error. */
class Session {
  /** The connection is gone (or given up on): nothing more can be sent on it. */
  broken = false;
  readonly sql: PgSql;
  /** When the pool retires this connection (see {@link connectionLifetimeMs}). */
  readonly retireAt = performance.now() + connectionLifetimeMs();
  readonly #pending = new Set<PromiseWithResolvers<PgResult>>();

  constructor(connect: PgConnect) {
    this.sql = connect({ onclose: () => this.destroy() });
  }

  /**
   * Sends a statement at once, pipelined behind those sent before; rows come as arrays.
   * Settles when the server answers, or rejects when the connection is lost: npm:postgres
   * leaves statements queued behind a failed connection attempt unsettled, so the session
   * settles them itself.
   */
  send(text: string, params?: unknown[]): Promise<PgResult> {
    if (this.broken) {
      return Promise.reject(connectionError("CONNECTION_LOST", "The connection was lost"));
    }
    const q = params === undefined
      ? this.sql.unsafe(text)
      : this.sql.unsafe(text, params, { prepare: true });
    const d = Promise.withResolvers<PgResult>();
    this.#pending.add(d);
    q.values().execute().then((rows) => {
      this.#pending.delete(d);
      d.resolve(rows);
    }, (e) => {
      this.#pending.delete(d);
      d.reject(e);
      if (isConnectionError(e)) this.destroy();
    });
    return d.promise;
  }

  /** Gives the connection up, failing whatever still waits for an answer on it. */
  destroy(): void {
    if (this.broken) return;
    this.broken = true;
    for (const d of this.#pending) {
      d.reject(connectionError("CONNECTION_LOST", "The connection to PostgreSQL was lost"));
    }
    this.#pending.clear();
    this.sql.end({ timeout: 0 }).catch(noop);
  }
}

class SessionPool {
  readonly #idle: Session[] = [];
  readonly #all = new Set<Session>();
  readonly #waiters: Array<{ resolve(s: Session): void; reject(e: unknown): void }> = [];
  #closed = false;

  constructor(readonly connect: PgConnect, readonly max: number) {}

  acquire(): Promise<Session> {
    if (this.#closed) {
      return Promise.reject(
        new BackendUnavailableError("The PostgreSQL backend is closed", { closed: true }),
      );
    }
    let idle: Session | undefined;
    while ((idle = this.#idle.pop()) !== undefined) {
      // Connections that closed while idle (server restart, idle time-out) are replaced.
      if (!idle.broken) return Promise.resolve(idle);
      this.#all.delete(idle);
    }
    if (this.#all.size < this.max) return Promise.resolve(this.#open());
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  release(s: Session): void {
    // An old connection is retired between transactions (npm:postgres's own max_lifetime,
    // switched off, would close it whenever no statement is in flight, even mid-transaction).
    if (s.broken || this.#closed || performance.now() > s.retireAt) {
      this.#all.delete(s);
      s.destroy();
      const w = this.#closed ? undefined : this.#waiters.shift();
      if (w !== undefined) w.resolve(this.#open());
      return;
    }
    const w = this.#waiters.shift();
    if (w !== undefined) w.resolve(s);
    else this.#idle.push(s);
  }

  #open(): Session {
    const s = new Session(this.connect);
    this.#all.add(s);
    return s;
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) {
      w.reject(new BackendUnavailableError("The PostgreSQL backend is closed", { closed: true }));
    }
    this.#idle.length = 0;
    const all = [...this.#all];
    this.#all.clear();
    // In-flight statements get a second to finish; then the sockets are closed, and anything
    // still waiting for an answer fails.
    await Promise.allSettled(all.map((s) => s.sql.end({ timeout: 1 })));
    for (const s of all) s.destroy();
  }
}

/** A delay that {@link Pauser.wake} cuts short, so closing never waits on a timer. */
class Pauser {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #resolve: (() => void) | undefined;

  pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      this.#resolve = resolve;
      this.#timer = setTimeout(() => {
        this.#timer = this.#resolve = undefined;
        resolve();
      }, ms);
    });
  }

  wake(): void {
    clearTimeout(this.#timer);
    const r = this.#resolve;
    this.#timer = this.#resolve = undefined;
    r?.();
  }
}

/**
 * The connection that LISTENs for the backend's notifications. It reconnects by itself, with
 * back-off, as long as the backend is open, and reports each reconnection so that watches are
 * checked again for writes made while it was away.
 *
 * A connection can also die silently (its packets dropped: the server's host vanished, a
 * failover, a partition) and then closes only when TCP keep-alive gives up, minutes later; a
 * listener on it would hear nothing meanwhile. So the listener checks its own connection: a
 * `select 1` every {@link LISTEN_CHECK_INTERVAL_MS} that must answer within
 * {@link LISTEN_CHECK_TIMEOUT_MS}, or the connection is dropped and replaced, as if it had
 * closed.
 */
class Listener {
  #conn: ListenConnection | undefined;
  #listening = false;
  #closed = false;
  #ready: Promise<void> | undefined;
  #check: ReturnType<typeof setTimeout> | undefined;
  readonly #pauser = new Pauser();

  constructor(
    readonly connect: PgConnect,
    readonly channel: string,
    readonly onNotify: (payload: string) => void,
    readonly onReconnect: () => void,
  ) {}

  /** Resolves once the channel is listened to (connecting first if needed). */
  ready(): Promise<void> {
    if (this.#ready === undefined) this.#ready = this.#connect(false);
    return this.#ready;
  }

  async #connect(reconnecting: boolean): Promise<void> {
    let delay = 20;
    while (!this.#closed) {
      const conn: ListenConnection = {
        sql: this.connect({
          onnotify: (_channel, payload) => {
            if (conn === this.#conn) this.onNotify(payload);
          },
          onclose: () => this.#lost(conn),
          onsocket: (socket) => {
            conn.socket = socket;
            // Dropped while it connected: it must not go on connecting.
            if (conn.dropped) socket.destroy();
          },
        }),
      };
      this.#conn = conn;
      try {
        // Connecting has its own time-out; the LISTEN, like every check, must answer in time.
        const ms = CONNECT_TIMEOUT_MS + LISTEN_CHECK_TIMEOUT_MS;
        await withTimeout(
          conn.sql.unsafe(`listen "${this.channel}"`),
          ms,
          `No answer to LISTEN within ${ms} ms`,
        );
        if (this.#closed) break;
        this.#listening = true;
        this.#schedule(conn);
        if (reconnecting) this.onReconnect();
        return;
      } catch {
        drop(conn);
        await this.#pauser.pause(delay);
        delay = Math.min(delay * 2, 1_000);
      }
    }
    throw new BackendUnavailableError("The PostgreSQL backend is closed", { closed: true });
  }

  /** Checks the connection after the interval, and again after each answer. */
  #schedule(conn: ListenConnection): void {
    this.#check = setTimeout(async () => {
      this.#check = undefined;
      if (conn !== this.#conn || this.#closed) return;
      try {
        await withTimeout(
          conn.sql.unsafe("select 1"),
          LISTEN_CHECK_TIMEOUT_MS,
          `No answer to select 1 within ${LISTEN_CHECK_TIMEOUT_MS} ms`,
        );
      } catch {
        this.#lost(conn);
        return;
      }
      if (conn === this.#conn && !this.#closed) this.#schedule(conn);
    }, LISTEN_CHECK_INTERVAL_MS);
  }

  #lost(conn: ListenConnection): void {
    if (conn !== this.#conn || !this.#listening || this.#closed) return;
    this.#listening = false;
    clearTimeout(this.#check);
    this.#check = undefined;
    drop(conn);
    this.#ready = this.#connect(true);
    this.#ready.catch(noop);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#pauser.wake();
    clearTimeout(this.#check);
    this.#check = undefined;
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn !== undefined) await drop(conn);
  }
}

/** The listener's connection, and its socket once open (to close it even if it is silent). */
interface ListenConnection {
  sql: PgSql;
  socket?: { destroy(): void };
  dropped?: boolean;
}

/** Closes a connection at once: ends the client and destroys its socket. */
async function drop(conn: ListenConnection): Promise<void> {
  conn.dropped = true;
  const ended = conn.sql.end({ timeout: 0 }).catch(noop);
  // npm:postgres ends a socket politely (a Terminate message, then FIN), which on a silent
  // connection would linger until TCP gives up.
  conn.socket?.destroy();
  await ended;
}

/** `p`, or a rejection coded RESPONSE_TIMEOUT (with `message`) if it takes longer than `ms`. */
function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(connectionError("RESPONSE_TIMEOUT", message)), ms);
  });
  p.catch(noop);
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// Transactions.

/** A buffered operation, sent in order with the next read or the commit. */
type Op =
  | { kind: "set"; key: Uint8Array; value: Uint8Array }
  | { kind: "clear"; key: Uint8Array }
  | { kind: "clearRange"; begin: Uint8Array; end: Uint8Array }
  | { kind: "add"; key: Uint8Array; operand: Uint8Array }
  | { kind: "conflictKey"; key: Uint8Array }
  | { kind: "conflictRange"; begin: Uint8Array; end: Uint8Array };

interface StampedKey {
  prefix: Uint8Array;
  suffix: Uint8Array;
  value: Uint8Array;
}

interface StampedValue {
  key: Uint8Array;
  prefix: Uint8Array;
  suffix: Uint8Array;
}

interface PendingWatch {
  key: Uint8Array;
  handle: WatchHandle;
  /** The key's row versions as the watching transaction saw them. */
  versions: string;
  /** Transactions whose writes to the key the watching transaction saw (or made). */
  seen: Set<string>;
  hash: string;
}

/** A key's rows from one read: the value row (if any) and the deltas, in `seq` order. */
interface KeyRows {
  key: Uint8Array;
  base: Uint8Array | undefined;
  deltas: Uint8Array[];
}

class PgTransaction implements Transaction, WatchedBody<PgTransaction> {
  readonly snapshot: ReadTransaction;
  /**
   * Start of the duration limit's clock: creation, then (as FoundationDB counts from the read
   * version) the moment the server opened the transaction, so that waiting for a connection and
   * connecting do not count against the body.
   */
  #started = performance.now();
  #session: Session | undefined;
  #acquiring: Promise<Session> | undefined;
  #began = false;
  #ended = false;
  #done = false;
  #aborted = false;
  #commitSent = false;
  #failure: unknown = undefined;
  #ops: Op[] = [];
  #wrote = false;
  #wantStamp = false;
  readonly #stampedKeys = new Map<string, StampedKey>();
  readonly #stampedValues = new Map<string, StampedValue>();
  readonly #watches: Array<{ key: Uint8Array; handle: WatchHandle }> = [];
  readonly #stamp = new LazyStamp();
  readonly #addedKeys = new Set<string>();
  readonly foldKeys = new Map<string, Uint8Array>();
  #size = 0;
  #conflictSize = 0;
  /** While the body's promise is pending: what fails it, and the watchdog's links. */
  fail: ((e: unknown) => void) | undefined = undefined;
  watchPrev: PgTransaction | undefined = undefined;
  watchNext: PgTransaction | undefined = undefined;

  constructor(
    readonly backend: PostgresBackend,
    readonly readOnly: boolean,
  ) {
    this.snapshot = {
      get: (key) => this.#get(key, false),
      getRange: (b, e, o) => this.#getRange(b, e, o, false),
    };
  }

  get #limits(): BackendLimits {
    return this.backend.limits;
  }

  /** Start of the duration limit's clock, for the watchdog. */
  get started(): number {
    return this.#started;
  }

  /**
   * The watchdog timed the body out: its later operations throw, and nothing it buffered is
   * sent. The attempt's failure then rolls the server-side transaction back ({@link abort}).
   */
  expire(): void {
    this.#done = true;
  }

  get #sql(): Statements {
    return this.backend.sql;
  }

  // --- checks, as the memory backend makes them -----------------------------------------------

  #check(): void {
    if (this.#done) throw new TransactionError("transaction_done", "Transaction already finished");
    if (this.backend.closed) {
      throw new BackendUnavailableError("The PostgreSQL backend is closed", { closed: true });
    }
    const elapsed = performance.now() - this.#started;
    const limit = this.#limits.maxTransactionDuration;
    if (elapsed > limit) throw timeoutError(elapsed, limit);
  }

  #checkKey(key: Uint8Array): string {
    if (!(key instanceof Uint8Array)) throw new TypeError("Keys are Uint8Arrays");
    if (key.length > this.#limits.maxKeySize) {
      throw new LimitExceededError(
        "key_too_large",
        `Key of ${key.length} bytes exceeds the ${this.#limits.maxKeySize}-byte limit: ${
          printable(key.subarray(0, 40))
        }…`,
      );
    }
    return bytesToBinaryString(key);
  }

  #checkWrite(key: Uint8Array, value?: Uint8Array): string {
    this.#check();
    if (this.readOnly) {
      throw new TransactionError("read_only", "Cannot write in a read-only transaction");
    }
    const k = this.#checkKey(key);
    if (value !== undefined) {
      if (!(value instanceof Uint8Array)) throw new TypeError("Values are Uint8Arrays");
      if (value.length > this.#limits.maxValueSize) {
        throw new LimitExceededError(
          "value_too_large",
          `Value of ${value.length} bytes for key ${
            printable(key.subarray(0, 40))
          } exceeds the ${this.#limits.maxValueSize}-byte limit`,
        );
      }
    }
    this.#size += key.length + (value?.length ?? 0);
    this.#wrote = true;
    return k;
  }

  // --- talking to the server -------------------------------------------------------------------

  /** Takes a connection and opens the server-side transaction (pipelined with what follows). */
  async #open(): Promise<Session> {
    if (this.#session === undefined) {
      // Reads started together share one acquisition (and so one connection).
      const waitStart = performance.now();
      this.#acquiring ??= this.backend.pool.acquire();
      const session = await this.#acquiring;
      // Waiting for a free connection is not the body's time.
      this.#started += performance.now() - waitStart;
      this.#acquiring = undefined;
      if (this.#aborted) {
        // The attempt ended while this read waited for a connection.
        if (this.#session !== session) this.backend.pool.release(session);
        throw new TransactionError("transaction_done", "Transaction already finished");
      }
      this.#session = session;
      this.#check();
    }
    if (!this.#began) {
      this.#began = true;
      this.#send(this.readOnly ? this.#sql.beginRead : this.#sql.beginWrite).then(() => {
        this.#started = performance.now();
      }, noop);
    }
    return this.#session;
  }

  /** Sends a statement; its failure, if it is the first, becomes the attempt's failure. */
  #send(text: string, params?: unknown[]): Promise<PgResult> {
    const session = this.#session!;
    if (session.broken) {
      // The connection died between statements (the transaction with it).
      this.#failure ??= connectionError("CONNECTION_LOST", "The connection to PostgreSQL closed");
      throw mapError(this.#failure, false, this.backend.closed);
    }
    const q = session.send(text, params);
    // Responses come in order, so the first rejection is the statement that failed; those after
    // it only report "current transaction is aborted".
    q.catch((e) => {
      if (this.#failure === undefined) this.#failure = e;
    });
    return q;
  }

  /** Awaits a response; on failure, throws the attempt's first failure in dgen's taxonomy. */
  async #await(q: Promise<PgResult>): Promise<PgResult> {
    try {
      return await this.backend.withDeadline(q);
    } catch (e) {
      const first = this.#failure ?? e;
      if (isConnectionError(first)) this.#session?.destroy();
      throw mapError(first, this.#commitSent, this.backend.closed);
    }
  }

  /** Sends the buffered operations, in order, merging runs of the same kind. */
  #flush(): void {
    const ops = this.#ops;
    if (ops.length === 0) return;
    this.#ops = [];
    const channel = this.backend.channel;
    for (let i = 0; i < ops.length;) {
      const op = ops[i]!;
      let j = i + 1;
      while (j < ops.length && ops[j]!.kind === op.kind && mergeable(op.kind)) j++;
      const run = ops.slice(i, j);
      i = j;
      switch (op.kind) {
        case "set": {
          // Last write of a key wins; sorted so concurrent batches lock rows in one order.
          const byKey = new Map<string, { key: Uint8Array; value: Uint8Array }>();
          for (const o of run as Array<Extract<Op, { kind: "set" }>>) {
            byKey.set(bytesToBinaryString(o.key), o);
          }
          const rows = [...byKey.values()].sort((a, b) => compareBytes(a.key, b.key));
          const keys = byteaArray(rows.map((r) => r.key));
          // It also deletes the keys' delta rows: that read of them is what orders a set
          // against concurrent adders. Through the partial index of delta rows, not the
          // primary key, so a blind set reads none of its neighbours' rows.
          this.#send(this.#sql.set, [keys, byteaArray(rows.map((r) => r.value)), channel]);
          break;
        }
        case "clear": {
          const list = (run as Array<Extract<Op, { kind: "clear" }>>).map((o) => o.key);
          const keys = byteaArray(list.sort(compareBytes));
          this.#send(this.#sql.clear, [keys, channel]);
          break;
        }
        case "add": {
          const adds = run as Array<Extract<Op, { kind: "add" }>>;
          this.#send(this.#sql.add, [
            byteaArray(adds.map((o) => o.key)),
            byteaArray(adds.map((o) => o.operand)),
            channel,
          ]);
          break;
        }
        case "clearRange":
          this.#send(this.#sql.clearRange, [op.begin, op.end, channel]);
          break;
        case "conflictKey":
          this.#send(this.#sql.conflictKey, [op.key]);
          break;
        case "conflictRange":
          this.#send(this.#sql.conflictRange, [op.begin, op.end]);
          break;
      }
    }
  }

  // --- reads -----------------------------------------------------------------------------------

  #unreadable(): never {
    throw new TransactionError(
      "accessed_unreadable",
      "A versionstamped value cannot be read in the transaction that wrote it",
    );
  }

  get(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#get(key, true);
  }

  getRange(begin: Uint8Array, end: Uint8Array, options?: RangeOptions): Promise<KeyValue[]> {
    return this.#getRange(begin, end, options, true);
  }

  async #get(key: Uint8Array, conflict: boolean): Promise<Uint8Array | undefined> {
    this.#check();
    const k = this.#checkKey(key);
    if (this.#stampedValues.has(k)) this.#unreadable();
    if (conflict) this.#conflictSize += 2 * key.length + 1;
    await this.#open();
    this.#flush();
    const rows = await this.#await(this.#send(this.#sql.get, [key]));
    if (rows.length === 0) return undefined;
    let base: Uint8Array | undefined;
    const deltas: Uint8Array[] = [];
    for (const [seq, value] of rows) {
      if (seq === "0") base = bytesOf(value);
      else deltas.push(bytesOf(value));
    }
    if (deltas.length >= FOLD_AFTER_DELTAS) this.foldKeys.set(k, key);
    return deltas.length === 0 ? base : foldValue(base, deltas);
  }

  async #getRange(
    begin: Uint8Array,
    end: Uint8Array,
    options: RangeOptions | undefined,
    conflict: boolean,
  ): Promise<KeyValue[]> {
    this.#check();
    this.#checkKey(begin);
    this.#checkKey(end);
    const limit = options?.limit ?? Infinity;
    const reverse = options?.reverse ?? false;
    if (conflict) this.#conflictSize += begin.length + end.length;
    if (!(limit > 0) || compareBytes(begin, end) >= 0) return [];
    await this.#open();
    this.#flush();
    const out: KeyValue[] = [];
    let lo = begin;
    let hi = end;
    // A key's rows (value and deltas) are adjacent; a page that ends inside a key is re-read
    // from that key. One more row than needed tells whether the last wanted key is complete.
    let extra = 1;
    for (;;) {
      const want = limit === Infinity ? null : Math.ceil(limit - out.length) + extra;
      const rows = await this.#await(
        this.#send(reverse ? this.#sql.rangeReverse : this.#sql.rangeForward, [lo, hi, want]),
      );
      const groups = groupRows(rows, reverse);
      const exhausted = want === null || rows.length < want;
      const usable = exhausted ? groups : groups.slice(0, -1);
      for (const g of usable) {
        if (g.deltas.length >= FOLD_AFTER_DELTAS) {
          this.foldKeys.set(bytesToBinaryString(g.key), g.key);
        }
        out.push({ key: g.key, value: foldValue(g.base, g.deltas) });
        if (out.length >= limit) break;
      }
      if (out.length >= limit || exhausted) break;
      // Only a key with more deltas than the page holds leaves nothing usable: widen the page.
      extra = usable.length === 0 ? extra * 2 : 1;
      const cut = groups[groups.length - 1]!.key;
      if (reverse) hi = keyAfterBytes(cut);
      else lo = cut;
    }
    this.#checkStampedInRange(begin, end, out, limit, reverse);
    return out;
  }

  /** A range read that reaches a key holding a pending versionstamped value fails. */
  #checkStampedInRange(
    begin: Uint8Array,
    end: Uint8Array,
    out: KeyValue[],
    limit: number,
    reverse: boolean,
  ): void {
    if (this.#stampedValues.size === 0) return;
    const full = out.length >= limit;
    const last = out[out.length - 1]?.key;
    for (const { key } of this.#stampedValues.values()) {
      if (compareBytes(key, begin) < 0 || compareBytes(key, end) >= 0) continue;
      if (!full || last === undefined) this.#unreadable();
      if (reverse ? compareBytes(key, last) >= 0 : compareBytes(key, last) <= 0) {
        this.#unreadable();
      }
    }
  }

  // --- writes ----------------------------------------------------------------------------------

  set(key: Uint8Array, value: Uint8Array): void {
    const k = this.#checkWrite(key, value);
    this.#stampedValues.delete(k);
    this.#ops.push({ kind: "set", key: key.slice(), value: value.slice() });
  }

  clear(key: Uint8Array): void {
    const k = this.#checkWrite(key);
    this.#stampedValues.delete(k);
    this.#ops.push({ kind: "clear", key: key.slice() });
  }

  clearRange(begin: Uint8Array, end: Uint8Array): void {
    this.#checkWrite(begin);
    this.#checkKey(end);
    this.#size += end.length;
    if (compareBytes(begin, end) >= 0) return;
    for (const [k, s] of this.#stampedValues) {
      if (compareBytes(s.key, begin) >= 0 && compareBytes(s.key, end) < 0) {
        this.#stampedValues.delete(k);
      }
    }
    this.#ops.push({ kind: "clearRange", begin: begin.slice(), end: end.slice() });
  }

  add(key: Uint8Array, delta: bigint | number): void {
    const operand = int64LE(delta);
    const k = this.#checkWrite(key, operand);
    this.#stampedValues.delete(k);
    this.#addedKeys.add(k);
    this.#ops.push({ kind: "add", key: key.slice(), operand });
  }

  setVersionstampedKey(prefix: Uint8Array, suffix: Uint8Array, value: Uint8Array): void {
    this.#checkWrite(new Uint8Array(prefix.length + 10 + suffix.length), value);
    // The same prefix and suffix twice make the same key: the later value wins.
    const id = `${prefix.length}:${bytesToBinaryString(prefix)}${bytesToBinaryString(suffix)}`;
    this.#stampedKeys.delete(id);
    this.#stampedKeys.set(id, {
      prefix: prefix.slice(),
      suffix: suffix.slice(),
      value: value.slice(),
    });
  }

  setVersionstampedValue(key: Uint8Array, prefix: Uint8Array, suffix = EMPTY_BYTES): void {
    const k = this.#checkWrite(key, new Uint8Array(prefix.length + 10 + suffix.length));
    this.#stampedValues.delete(k);
    this.#stampedValues.set(k, {
      key: key.slice(),
      prefix: prefix.slice(),
      suffix: suffix.slice(),
    });
  }

  getVersionstamp(): Promise<Uint8Array> {
    this.#wantStamp = true;
    return this.#stamp.promise;
  }

  watch(key: Uint8Array): Watch {
    this.#check();
    this.#checkKey(key);
    const handle = new WatchHandle();
    this.#watches.push({ key: key.slice(), handle });
    return handle;
  }

  addReadConflictKey(key: Uint8Array): void {
    this.#check();
    this.#checkKey(key);
    this.#conflictSize += 2 * key.length + 1;
    this.#ops.push({ kind: "conflictKey", key: key.slice() });
  }

  addReadConflictRange(begin: Uint8Array, end: Uint8Array): void {
    this.#check();
    this.#checkKey(begin);
    this.#checkKey(end);
    if (compareBytes(begin, end) >= 0) return;
    this.#conflictSize += begin.length + end.length;
    this.#ops.push({ kind: "conflictRange", begin: begin.slice(), end: end.slice() });
  }

  // --- commit and abort ------------------------------------------------------------------------

  /** Commits; returns the watches to arm, with the versions this transaction saw. */
  async commit(): Promise<void> {
    this.#check();
    const total = this.#size + this.#conflictSize;
    if (total > this.#limits.maxTransactionSize) {
      throw new LimitExceededError(
        "transaction_too_large",
        `Transaction of ${total} bytes exceeds the ${this.#limits.maxTransactionSize}-byte limit`,
      );
    }
    const stamped = this.#wrote &&
      (this.#wantStamp || this.#stampedKeys.size > 0 || this.#stampedValues.size > 0);
    if (this.#session === undefined && !this.#wrote && this.#watches.length === 0) {
      // Nothing was read, written or watched: there is nothing to commit.
      this.#done = true;
      this.#finish(undefined, []);
      return;
    }
    await this.#open();
    this.#flush();
    this.#done = true;
    const channel = this.backend.channel;
    let stampQuery: Promise<PgResult> | undefined;
    if (stamped) {
      this.#send(this.#sql.lock);
      stampQuery = this.#send(this.#sql.stamp);
      if (this.#stampedKeys.size > 0) {
        const items = [...this.#stampedKeys.values()];
        this.#send(this.#sql.stampedKeys, [
          byteaArray(items.map((s) => s.prefix)),
          byteaArray(items.map((s) => s.suffix)),
          byteaArray(items.map((s) => s.value)),
          channel,
        ]);
      }
      if (this.#stampedValues.size > 0) {
        const items = [...this.#stampedValues.values()];
        this.#send(this.#sql.stampedValues, [
          byteaArray(items.map((s) => s.key)),
          byteaArray(items.map((s) => s.prefix)),
          byteaArray(items.map((s) => s.suffix)),
          channel,
        ]);
      }
    }
    let versionsQuery: Promise<PgResult> | undefined;
    let xidQuery: Promise<PgResult> | undefined;
    if (this.#watches.length > 0) {
      versionsQuery = this.#send(this.#sql.versions, [
        byteaArray(this.#watches.map((w) => w.key)),
      ]);
      xidQuery = this.#send(this.#sql.ownXid);
    }
    this.#commitSent = true;
    const result = await this.#await(this.#send(this.#sql.commit));
    this.#ended = true;
    if (this.#failure !== undefined) {
      // The server turned COMMIT into ROLLBACK after an earlier statement failed.
      throw mapError(this.#failure, false, this.backend.closed);
    }
    if (result.command !== "COMMIT") {
      throw new ConflictError(`PostgreSQL answered ${result.command} to COMMIT`);
    }
    let stamp: Uint8Array | undefined;
    if (stampQuery !== undefined) {
      const rows = await stampQuery;
      stamp = stampBytes(rows[0]![0] as string);
    }
    const versions = versionsQuery === undefined ? new Map() : versionsOf(await versionsQuery);
    const ownXid = xidQuery === undefined ? null : (await xidQuery)[0]?.[0] as string | null;
    this.#finish(
      stamp,
      this.#watches.map((w) => {
        const seen = versions.get(bytesToBinaryString(w.key)) ?? "";
        return { ...w, versions: seen, seen: seenBy(seen, ownXid) };
      }),
    );
  }

  #finish(
    stamp: Uint8Array | undefined,
    watches: Array<Omit<PendingWatch, "hash">>,
  ): void {
    const session = this.#session;
    this.#session = undefined;
    if (session !== undefined) this.backend.pool.release(session);
    if (stamp !== undefined) {
      this.#stamp.resolve(() => stamp);
      this.backend.stamped(stamp);
    } else {
      this.#stamp.reject(() =>
        new TransactionError("no_versionstamp", "A read-only transaction has no versionstamp")
      );
    }
    this.backend.committed(this.#addedKeys, this.foldKeys);
    this.backend.arm(watches);
  }

  /** Ends a failed attempt: rolls back, returns the connection, settles stamp and watches. */
  async abort(): Promise<void> {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#done = true;
    this.#stamp.reject(() =>
      new TransactionError("not_committed", "The transaction did not commit")
    );
    for (const w of this.#watches) w.handle.cancel();
    const session = this.#session;
    this.#session = undefined;
    if (session === undefined) return;
    if (this.#began && !this.#ended && !session.broken) {
      try {
        await this.backend.withDeadline(session.send(this.#sql.rollback));
      } catch {
        session.destroy();
      }
    }
    this.backend.pool.release(session);
    this.backend.committed(new Set(), this.foldKeys);
  }
}

function mergeable(kind: Op["kind"]): boolean {
  return kind === "set" || kind === "clear" || kind === "add";
}

function keyAfterBytes(key: Uint8Array): Uint8Array {
  const out = new Uint8Array(key.length + 1);
  out.set(key);
  return out;
}

/** Groups `(key, seq, value)` rows by key; deltas come out in ascending `seq` order. */
function groupRows(rows: PgResult, reverse: boolean): KeyRows[] {
  const groups: KeyRows[] = [];
  let current: KeyRows | undefined;
  let currentKey: string | undefined;
  for (const [rawKey, seq, value] of rows) {
    const key = bytesOf(rawKey);
    const k = bytesToBinaryString(key);
    if (k !== currentKey) {
      current = { key, base: undefined, deltas: [] };
      currentKey = k;
      groups.push(current);
    }
    if (seq === "0") current!.base = bytesOf(value);
    else current!.deltas.push(bytesOf(value));
  }
  // In reverse scans `seq` descends too; the order of deltas does not change their sum, but
  // keep the documented order anyway.
  if (reverse) { for (const g of groups) g.deltas.reverse(); }
  return groups;
}

/** The transactions named in a `versions` entry ("seq:xmin,…"), and the watcher's own. */
function seenBy(versions: string, ownXid: string | null): Set<string> {
  const seen = new Set<string>();
  if (versions !== "") { for (const v of versions.split(",")) seen.add(v.split(":")[1]!); }
  if (ownXid !== null) seen.add(ownXid);
  return seen;
}

/** `key → "seq:xmin,…"` from the `versions` statement: any commit to a key changes its entry. */
function versionsOf(rows: PgResult): Map<string, string> {
  const out = new Map<string, string>();
  for (const [key, seq, xmin] of rows) {
    const k = bytesToBinaryString(bytesOf(key));
    const entry = `${seq}:${xmin}`;
    const prev = out.get(k);
    out.set(k, prev === undefined ? entry : `${prev},${entry}`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The backend.

class PostgresBackend implements Backend {
  readonly kind = "postgres";
  closed = false;
  readonly pool: SessionPool;
  readonly channel: string;
  readonly #listener: Listener;
  readonly #connect: PgConnect;
  readonly #reconnectTimeout: number;
  readonly #watches = new Map<string, Set<PendingWatch>>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #addCounts = new Map<string, number>();
  readonly #folding = new Set<string>();
  readonly #pauser = new Pauser();
  /** Fails bodies that never settle (see {@link BodyWatchdog}). */
  readonly #watchdog: BodyWatchdog<PgTransaction>;
  #reachable: Promise<void> | undefined;

  constructor(
    connect: PgConnect,
    readonly sql: Statements,
    schema: string,
    readonly limits: BackendLimits,
    maxConnections: number,
    reconnectTimeout: number,
  ) {
    this.#connect = connect;
    this.#watchdog = new BodyWatchdog(limits.maxTransactionDuration);
    this.#reconnectTimeout = reconnectTimeout;
    this.pool = new SessionPool(connect, maxConnections);
    this.channel = `dgen_${schema}`;
    this.#listener = new Listener(
      connect,
      this.channel,
      (payload) => this.#notified(payload),
      () => this.#recheckAll(),
    );
  }

  /**
   * Awaits a response, presuming the connection dead if it takes longer than any lock wait
   * can (npm:postgres may never settle a query written to a half-closed socket).
   */
  withDeadline<T>(p: Promise<T>): Promise<T> {
    const ms = this.limits.maxTransactionDuration + RESPONSE_GRACE_MS;
    return withTimeout(p, ms, `No response from PostgreSQL within ${ms} ms`);
  }

  async transact<T>(
    fn: (tx: Transaction) => T | Promise<T>,
    options?: TransactOptions,
  ): Promise<T> {
    const opts = checkTransactOptions(options);
    if (this.closed) {
      throw new BackendUnavailableError("The PostgreSQL backend is closed", { closed: true });
    }
    return await retryLoop(async () => {
      if (this.closed) {
        throw new BackendUnavailableError("The PostgreSQL backend is closed", { closed: true });
      }
      const tx = new PgTransaction(this, opts.readOnly ?? false);
      try {
        const result = await this.#watchdog.run(tx, fn(tx));
        await tx.commit();
        return result;
      } catch (e) {
        await tx.abort();
        if (typeof e === "object" && e !== null && lostConnection.has(e)) {
          await this.#waitReachable(opts.signal);
        }
        throw e;
      }
    }, opts);
  }

  openSubspace(path: readonly string[]): Promise<Uint8Array> {
    return Promise.resolve(pack([path]));
  }

  /** Waits until the server accepts a connection again (one probe shared by every waiter). */
  #waitReachable(signal: AbortSignal | undefined): Promise<void> {
    if (this.#reachable === undefined) {
      this.#reachable = this.#probe().finally(() => this.#reachable = undefined);
    }
    if (signal === undefined) return this.#reachable;
    signal.throwIfAborted();
    const aborted = Promise.withResolvers<never>();
    const onAbort = () => aborted.reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    return Promise.race([this.#reachable, aborted.promise]).finally(() =>
      signal.removeEventListener("abort", onAbort)
    );
  }

  async #probe(): Promise<void> {
    const deadline = performance.now() + this.#reconnectTimeout;
    let delay = 20;
    for (;;) {
      if (this.closed) {
        throw new BackendUnavailableError("The PostgreSQL backend is closed", { closed: true });
      }
      const sql = this.#connect();
      try {
        await this.withDeadline(sql.unsafe("select 1"));
        return;
      } catch (e) {
        if (performance.now() + delay > deadline) {
          throw new BackendUnavailableError(
            `PostgreSQL has not accepted connections for ${this.#reconnectTimeout} ms`,
            { cause: e },
          );
        }
      } finally {
        sql.end({ timeout: 0 }).catch(noop);
      }
      await this.#pauser.pause(delay);
      delay = Math.min(delay * 2, 500);
    }
  }

  // --- background work -------------------------------------------------------------------------

  #track(task: Promise<void>): void {
    const t = task.catch(noop).finally(() => this.#tasks.delete(t));
    this.#tasks.add(t);
  }

  /** After a stamped commit: drops stamps the ordering fence no longer needs. */
  stamped(stamp: Uint8Array): void {
    const n = new DataView(stamp.buffer, stamp.byteOffset).getBigUint64(0, false);
    if (n % BigInt(STAMPS_KEPT) !== 0n || this.closed) return;
    this.#track(this.#autocommit(this.sql.stampsGc, [String(n - BigInt(STAMPS_KEPT))]));
  }

  /** After an attempt: counts adds per key and folds the keys that collected many deltas. */
  committed(added: ReadonlySet<string>, seen: ReadonlyMap<string, Uint8Array>): void {
    if (this.closed) return;
    const fold = new Map(seen);
    for (const k of added) {
      const n = (this.#addCounts.get(k) ?? 0) + 1;
      if (n >= FOLD_AFTER_ADDS) {
        this.#addCounts.delete(k);
        fold.set(k, binary(k));
      } else {
        this.#addCounts.set(k, n);
      }
    }
    // A bound on memory; folds triggered by reads catch keys forgotten here.
    if (this.#addCounts.size > 10_000) this.#addCounts.clear();
    for (const [k, key] of fold) {
      if (this.#folding.has(k)) continue;
      this.#folding.add(k);
      this.#track(this.#fold(key).finally(() => this.#folding.delete(k)));
    }
  }

  async #autocommit(text: string, params: unknown[]): Promise<void> {
    const session = await this.pool.acquire();
    try {
      await this.withDeadline(session.send(text, params));
    } catch (e) {
      session.destroy();
      throw e;
    } finally {
      this.pool.release(session);
    }
  }

  /**
   * Merges a key's deltas into its value row (or into one delta when it has no value row).
   * It runs at READ COMMITTED, outside serializable conflict tracking, because it does not
   * change the key's value; row locks keep it from overwriting a concurrent write.
   */
  async #fold(key: Uint8Array): Promise<void> {
    const session = await this.pool.acquire();
    let open = false;
    try {
      session.send("begin isolation level read committed").catch(noop);
      open = true;
      // The value row is locked first, then the deltas: the order every writer uses.
      const baseRows = session.send(this.sql.foldBase, [key]);
      const deltaRows = await this.withDeadline(session.send(this.sql.foldDeltas, [key]));
      const baseRow = (await baseRows)[0];
      const base = baseRow === undefined ? undefined : bytesOf(baseRow[0]);
      const deltas = deltaRows.map(([seq, operand]) => ({
        seq: seq as string,
        operand: bytesOf(operand),
      }));
      // With a value row, every delta folds into it; without one (a key only ever added to),
      // they fold into the first delta, so the fold never inserts a row a writer could race.
      const merged = base !== undefined ? deltas : deltas.slice(1);
      if (merged.length > 0) {
        const folded = foldValue(base, deltas.map((d) => d.operand));
        if (base !== undefined) {
          session.send(this.sql.foldSetBase, [key, folded]).catch(noop);
        } else {
          session.send(this.sql.foldSetDelta, [key, folded, deltas[0]!.seq]).catch(noop);
        }
        session.send(this.sql.foldDelete, [key, `{${merged.map((d) => d.seq).join(",")}}`])
          .catch(noop);
      }
      const done = await this.withDeadline(session.send("commit"));
      open = false;
      if (done.command !== "COMMIT") throw new Error("Fold rolled back");
    } catch (e) {
      if (open) session.destroy();
      throw e;
    } finally {
      this.pool.release(session);
    }
  }

  // --- watches ---------------------------------------------------------------------------------

  /** Arms the watches of a committed transaction (see the module notes). */
  arm(watches: Array<Omit<PendingWatch, "hash">>): void {
    const live = watches.filter((w) => !w.handle.settled);
    if (live.length === 0) return;
    this.#track((async () => {
      const pending: PendingWatch[] = [];
      for (const w of live) pending.push({ ...w, hash: await keyHash(w.key) });
      if (this.closed) {
        for (const w of pending) w.handle.cancel();
        return;
      }
      for (const w of pending) this.#register(w);
      try {
        await this.#listener.ready();
        await this.#recheck(pending);
      } catch {
        // Unsure whether the key changed: wake the watcher (watches may fire spuriously).
        for (const w of pending) settleUnsure(w.handle, this.closed);
      }
    })());
  }

  #register(w: PendingWatch): void {
    if (w.handle.settled) return;
    let set = this.#watches.get(w.hash);
    if (set === undefined) this.#watches.set(w.hash, set = new Set());
    set.add(w);
    w.handle.onSettle = () => {
      set.delete(w);
      if (set.size === 0 && this.#watches.get(w.hash) === set) this.#watches.delete(w.hash);
    };
  }

  #notified(payload: string): void {
    const [hash, xid] = payload.split(":");
    const set = this.#watches.get(hash!);
    if (set === undefined) return;
    for (const w of [...set]) {
      // A write the watching transaction saw, or made, is not a change after its snapshot.
      if (xid === undefined || !w.seen.has(xid)) w.handle.fire();
    }
  }

  /** Fires the watches whose key has changed since their transaction read it. */
  async #recheck(watches: PendingWatch[]): Promise<void> {
    const live = watches.filter((w) => !w.handle.settled);
    if (live.length === 0) return;
    const session = await this.pool.acquire();
    let rows: PgResult;
    try {
      rows = await this.withDeadline(
        session.send(this.sql.versions, [byteaArray(live.map((w) => w.key))]),
      );
    } catch (e) {
      session.destroy();
      throw e;
    } finally {
      this.pool.release(session);
    }
    const now = versionsOf(rows);
    for (const w of live) {
      if ((now.get(bytesToBinaryString(w.key)) ?? "") !== w.versions) w.handle.fire();
    }
  }

  #recheckAll(): void {
    const all: PendingWatch[] = [];
    for (const set of this.#watches.values()) all.push(...set);
    if (all.length === 0) return;
    this.#track(
      this.#recheck(all).catch(() => {
        for (const w of all) settleUnsure(w.handle, this.closed);
      }),
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.#pauser.wake();
    for (const set of this.#watches.values()) for (const w of [...set]) w.handle.cancel();
    this.#watches.clear();
    await this.#listener.close();
    // Closing the pool first fails background work that waits for a connection.
    await this.pool.close();
    await Promise.allSettled([...this.#tasks]);
  }
}

/** Settles a watch whose key may have changed: fired, or cancelled once the backend closed. */
function settleUnsure(handle: WatchHandle, closed: boolean): void {
  if (closed) handle.cancel();
  else handle.fire();
}

function binary(k: string): Uint8Array {
  const out = new Uint8Array(k.length);
  for (let i = 0; i < k.length; i++) out[i] = k.charCodeAt(i);
  return out;
}

/**
 * Opens a backend on a PostgreSQL database: creates the schema's tables if missing, then
 * serves transactions through a pool of connections. Loads `npm:postgres` on first use.
 * Fails with `BackendUnavailableError` if the server cannot be reached.
 *
 * @example
 * ```ts ignore
 * import { openPostgresBackend, openTenant } from "../../mod.ts";
 * const backend = await openPostgresBackend({ url: "postgres://postgres@127.0.0.1:5432/postgres" });
 * const tenant = await openTenant(backend, "acme");
 * await tenant.transact((tx) => tx.add(new TextEncoder().encode("hits"), 1));
 * await backend.close();
 * ```
 */
export async function openPostgresBackend(
  options: PostgresBackendOptions,
): Promise<Backend> {
  const opts = parse(optionsSchema, options, "options");
  const limits: BackendLimits = {
    ...FOUNDATIONDB_LIMITS,
    maxKeySize: POSTGRES_MAX_KEY_SIZE,
    ...opts.limits,
  };
  const schema = opts.schema ?? "dgen";
  const idleSeconds = idleTimeoutSeconds(limits);
  let postgres: PostgresFactory;
  try {
    const mod = await import("postgres");
    postgres = mod.default as unknown as PostgresFactory;
  } catch (e) {
    throw new BackendUnavailableError(
      "Cannot load npm:postgres: add it to the project's dependencies (npm install postgres)",
      { cause: e },
    );
  }
  let net: NetModule;
  try {
    net = await import("node:net");
  } catch (e) {
    throw new BackendUnavailableError("The PostgreSQL backend needs node:net (Deno or Bun)", {
      cause: e,
    });
  }
  const connect: PgConnect = (hooks = {}) => {
    let used = false;
    return postgres(opts.url, {
      max: 1,
      // Each client gets exactly one connection. npm:postgres would otherwise reconnect after a
      // connection loss and run the statements still queued for the lost transaction (its
      // writes, even its COMMIT) on the new connection, outside any transaction.
      socket: async (target: SocketTarget) => {
        if (used) throw connectionError("CONNECTION_LOST", "This connection was lost");
        used = true;
        const socket = await openSocket(net, target, CONNECT_TIMEOUT_MS);
        hooks.onsocket?.(socket as { destroy(): void });
        return socket;
      },
      // The array types are never needed (arrays are sent as text literals), and skipping
      // their lookup saves a round trip per connection.
      fetch_types: false,
      onnotice: noop,
      onnotify: hooks.onnotify,
      onclose: hooks.onclose,
      // The listener must stay connected; transaction connections may idle out and come back,
      // but never in the middle of a transaction (see idleTimeoutSeconds). npm:postgres's
      // max_lifetime would end a connection mid-transaction too: the pool retires old
      // connections itself, between transactions.
      idle_timeout: hooks.onnotify ? null : idleSeconds,
      max_lifetime: null,
      connection: {
        application_name: hooks.onnotify ? "dgen-listen" : "dgen",
        // Sequential scans take relation-wide predicate locks, which make every concurrent
        // writer of the table a conflict; index scans lock only the pages they read. Bitmap
        // scans read the whole range before a sort and a limit: a plain index scan returns
        // rows in key order and stops at the limit.
        enable_seqscan: "off",
        enable_bitmapscan: "off",
        lock_timeout: limits.maxTransactionDuration,
        idle_in_transaction_session_timeout: limits.maxTransactionDuration + RESPONSE_GRACE_MS,
      },
    });
  };
  const sql = statements(schema);
  await setup(connect, sql, schema, opts.url);
  return new PostgresBackend(
    connect,
    sql,
    schema,
    limits,
    opts.maxConnections ?? 10,
    opts.reconnectTimeout ?? 30_000,
  );
}

/** Creates the schema's tables if missing; several processes may race here, hence the lock. */
async function setup(
  connect: PgConnect,
  sql: Statements,
  schema: string,
  url: string,
): Promise<void> {
  let conn: PgSql | undefined;
  try {
    conn = connect();
    const all = [
      "begin",
      `select pg_advisory_xact_lock(hashtext('dgen setup ${schema}'))`,
      ...sql.setup,
    ].map((text) => conn!.unsafe(text));
    const format = conn.unsafe(sql.format).values();
    const commit = conn.unsafe("commit");
    await Promise.all([...all, format, commit]);
    const version = (await format)[0]?.[0];
    if (version !== FORMAT) {
      throw new BackendUnavailableError(
        `Schema "${schema}" holds dgen data in format ${version}; this version reads format ${FORMAT} (and upgrades format 1)`,
      );
    }
  } catch (e) {
    if (e instanceof BackendUnavailableError) throw e;
    throw new BackendUnavailableError(
      `Cannot open PostgreSQL schema "${schema}": ${redactPassword(errorMessage(e), url)}`,
      { cause: e },
    );
  } finally {
    await conn?.end({ timeout: 1 }).catch(noop);
  }
}
