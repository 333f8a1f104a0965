/** Helpers shared by the codec tests. */

import { openMemoryBackend, openTenant, type Tenant, type Transaction } from "../../mod.ts";
import { toHex } from "../../lib/bytes.ts";
import { createStateCodec } from "../../lib/codec/state.ts";
import type { StateCodec, StoredState, WriteStats } from "../../lib/codec/types.ts";
import { pack, subtreeEnd } from "../../lib/tuple.ts";

/**
 * The first difference between two values, or `undefined` if they are identical in every way
 * the codec promises to keep: `-0` vs `0`, `NaN`, `undefined` vs a missing property, bigint vs
 * number, `Map`/`Set` entries in order, `Date` times, bytes, prototypes (plain vs class).
 * Record properties may come in any order.
 */
export function difference(a: unknown, b: unknown, path = "state"): string | undefined {
  if (typeof a !== typeof b) return `${path}: ${typeof a} vs ${typeof b}`;
  if (typeof a !== "object" || a === null || b === null) {
    return Object.is(a, b) ? undefined : `${path}: ${show(a)} vs ${show(b)}`;
  }
  const pa = Object.getPrototypeOf(a);
  const pb = Object.getPrototypeOf(b as object);
  const plainA = pa === Object.prototype || pa === null;
  const plainB = pb === Object.prototype || pb === null;
  if (plainA !== plainB || (!plainA && pa !== pb)) {
    return `${path}: ${a.constructor?.name ?? "null-prototype"} vs ${
      (b as object).constructor?.name ?? "null-prototype"
    }`;
  }
  if (a instanceof Uint8Array) {
    const x = b as Uint8Array;
    return toHex(a) === toHex(x) ? undefined : `${path}: bytes ${toHex(a)} vs ${toHex(x)}`;
  }
  if (a instanceof Date) {
    return Object.is(a.getTime(), (b as Date).getTime())
      ? undefined
      : `${path}: Date ${a.getTime()} vs ${(b as Date).getTime()}`;
  }
  if (a instanceof Map || a instanceof Set || Array.isArray(a)) {
    const ea = a instanceof Map ? [...a].flat() : [...(a as Iterable<unknown>)];
    const eb = b instanceof Map ? [...b].flat() : [...(b as Iterable<unknown>)];
    if (ea.length !== eb.length) return `${path}: length ${ea.length} vs ${eb.length}`;
    if (Array.isArray(a)) {
      for (let i = 0; i < a.length; i++) {
        if ((i in a) !== (i in (b as unknown[]))) return `${path}[${i}]: hole vs element`;
      }
    }
    for (let i = 0; i < ea.length; i++) {
      const d = difference(ea[i], eb[i], `${path}[${i}]`);
      if (d !== undefined) return d;
    }
    return undefined;
  }
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b as object).sort();
  if (ka.join("\u0000") !== kb.join("\u0000")) {
    return `${path}: keys [${ka.join(", ")}] vs [${kb.join(", ")}]`;
  }
  for (const k of ka) {
    const d = difference(
      (a as Record<string, unknown>)[k],
      (b as Record<string, unknown>)[k],
      `${path}.${k}`,
    );
    if (d !== undefined) return d;
  }
  return undefined;
}

function show(x: unknown): string {
  if (typeof x === "bigint") return `${x}n`;
  if (typeof x === "string") return JSON.stringify(x.length > 60 ? x.slice(0, 60) + "…" : x);
  if (Object.is(x, -0)) return "-0";
  return String(x);
}

/** What a transaction was asked to do, counted at the storage interface. */
export interface TxCounts {
  sets: number;
  setBytes: number;
  clears: number;
  clearRanges: number;
}

/** Wraps `tx` so that every write through it is counted in `counts`. */
export function counting(tx: Transaction, counts: TxCounts): Transaction {
  return {
    get: (k) => tx.get(k),
    getRange: (b, e, o) => tx.getRange(b, e, o),
    snapshot: tx.snapshot,
    set(k, v) {
      counts.sets++;
      counts.setBytes += k.length + v.length;
      tx.set(k, v);
    },
    clear(k) {
      counts.clears++;
      tx.clear(k);
    },
    clearRange(b, e) {
      counts.clearRanges++;
      tx.clearRange(b, e);
    },
    add: (k, d) => tx.add(k, d),
    setVersionstampedKey: (p, s, v) => tx.setVersionstampedKey(p, s, v),
    setVersionstampedValue: (k, p, s) => tx.setVersionstampedValue(k, p, s),
    getVersionstamp: () => tx.getVersionstamp(),
    watch: (k) => tx.watch(k),
    addReadConflictKey: (k) => tx.addReadConflictKey(k),
    addReadConflictRange: (b, e) => tx.addReadConflictRange(b, e),
  };
}

/** A fresh counter. */
export function zeroCounts(): TxCounts {
  return { sets: 0, setBytes: 0, clears: 0, clearRanges: 0 };
}

/** A codec and a state prefix in a fresh tenant of a fresh memory backend. */
export interface Bench {
  tenant: Tenant;
  codec: StateCodec;
  prefix: Uint8Array;
  /** What is stored now (as the runtime would track it). */
  prev: StoredState;
  /** Writes `next` over `prev` and makes it `prev`; returns the stats and the raw counts. */
  put(next: unknown): Promise<{ stats: WriteStats; counts: TxCounts }>;
  /** Reads the stored state with the given codec (a fresh one by default: no caches). */
  get(codec?: StateCodec): Promise<StoredState>;
  /** Every key-value pair under the prefix, as hex. */
  rows(): Promise<Array<[string, string]>>;
  close(): Promise<void>;
}

/** Opens a {@link Bench}. */
export async function openBench(
  maxValueSize = 100_000,
  freezeArrayLimit?: number,
): Promise<Bench> {
  const backend = openMemoryBackend();
  const tenant = await openTenant(backend, "codec");
  const codec = createStateCodec({ maxValueSize, freezeArrayLimit });
  const prefix = pack(["server", "s"]);
  const bench: Bench = {
    tenant,
    codec,
    prefix,
    prev: { found: false },
    async put(next) {
      const counts = zeroCounts();
      const stats = await tenant.transact((tx) =>
        codec.write(counting(tx, counts), prefix, bench.prev, next)
      );
      bench.prev = { found: true, state: next };
      return { stats, counts };
    },
    get(c = createStateCodec({ maxValueSize, freezeArrayLimit })) {
      return tenant.transact((tx) => c.read(tx, prefix));
    },
    async rows() {
      const rows = await tenant.transact((tx) => tx.getRange(prefix, subtreeEnd(prefix)));
      return rows.map((r) => [toHex(r.key), toHex(r.value)]);
    },
    close: () => backend.close(),
  };
  return bench;
}
