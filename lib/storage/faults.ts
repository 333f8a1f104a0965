/**
 * Fault injection over any backend, driven by a seed so a failing run replays: extra conflicts,
 * commits reported as failed that did apply (FoundationDB's `commit_unknown_result`), commits
 * reported unknown that did not apply, and latency before each attempt. For dgen's tests and
 * users' own.
 *
 * @module
 */

import * as v from "valibot";
import { CommitUnknownResultError, ConflictError } from "../errors.ts";
import { checkBackend } from "../tenant.ts";
import { parse } from "../validate.ts";
import { checkTransactOptions } from "./common.ts";
import { retryLoop } from "./retry.ts";
import type { Backend, Transaction, TransactOptions } from "./types.ts";

/**
 * What to inject, and how often. Rates are probabilities per transaction attempt.
 *
 * @example
 * ```ts
 * import { type FaultOptions, openMemoryBackend, withFaults } from "../../mod.ts";
 * const options: FaultOptions = { seed: 7, conflictRate: 1 };
 * const backend = withFaults(openMemoryBackend(), options);
 * const write = backend.transact((tx) => tx.add(new Uint8Array([1]), 1), { maxRetries: 2 });
 * await write.catch((e) => console.log(e.code)); // "retries_exhausted"
 * await backend.close();
 * ```
 */
export interface FaultOptions {
  /** Seed of the pseudo-random choices; the same seed makes the same choices. */
  seed: number;
  /** Attempts that run their body and then fail with a retryable `ConflictError`. @default 0 */
  conflictRate?: number;
  /**
   * Attempts that commit and then report `CommitUnknownResultError` (applied, reported failed).
   * @default 0
   */
  unknownAppliedRate?: number;
  /** Attempts that do not commit and report `CommitUnknownResultError`. @default 0 */
  unknownNotAppliedRate?: number;
  /** Random delay before each attempt, in ms: `[min, max]`. @default [0, 0] */
  latency?: readonly [number, number];
}

/**
 * Counts of what a {@link FaultyBackend} injected.
 *
 * @example
 * ```ts
 * import { type FaultStats, openMemoryBackend, withFaults } from "../../mod.ts";
 * const backend = withFaults(openMemoryBackend(), { seed: 1, conflictRate: 1 });
 * await backend.transact((tx) => tx.clear(new Uint8Array([1])), { maxRetries: 2 }).catch(() => {});
 * const stats: FaultStats = backend.stats;
 * console.log(stats); // { attempts: 3, conflicts: 3, unknownApplied: 0, unknownNotApplied: 0 }
 * await backend.close();
 * ```
 */
export interface FaultStats {
  /** Attempts started. */
  attempts: number;
  /** Conflicts injected. */
  conflicts: number;
  /** Commits applied but reported unknown. */
  unknownApplied: number;
  /** Commits dropped and reported unknown. */
  unknownNotApplied: number;
}

/**
 * A backend wrapped by {@link withFaults}, with counters of what it injected.
 *
 * @example
 * ```ts
 * import { type FaultyBackend, openMemoryBackend, withFaults } from "../../mod.ts";
 * const inner = openMemoryBackend();
 * const backend: FaultyBackend = withFaults(inner, { seed: 3, latency: [0, 5] });
 * await backend.transact((tx) => tx.set(new Uint8Array([1]), new Uint8Array([2])));
 * console.log(backend.inner === inner, backend.kind, backend.stats.attempts); // true "memory" 1
 * await backend.close();
 * ```
 */
export interface FaultyBackend extends Backend {
  /** What has been injected so far. */
  readonly stats: Readonly<FaultStats>;
  /** The wrapped backend. */
  readonly inner: Backend;
}

const rate = v.optional(v.pipe(v.number(), v.minValue(0), v.maxValue(1)));
const optionsSchema = v.strictObject({
  seed: v.pipe(v.number(), v.integer()),
  conflictRate: rate,
  unknownAppliedRate: rate,
  unknownNotAppliedRate: rate,
  latency: v.optional(
    v.pipe(
      v.tuple([v.pipe(v.number(), v.minValue(0)), v.pipe(v.number(), v.minValue(0))]),
      v.check(([a, b]) => a <= b, "Expected [min, max] with min <= max"),
    ),
  ),
});

/** mulberry32: a small, fast, seedable PRNG; enough for choosing faults (and the fault tests'
 * other random choices). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class InjectedAbort extends Error {}

/**
 * Wraps `backend` so that transaction attempts fail in the ways distributed stores fail. The
 * wrapper runs its own retry loop, so injected failures are retried like real ones.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, withFaults } from "../../mod.ts";
 * const backend = withFaults(openMemoryBackend(), { seed: 42, conflictRate: 0.2 });
 * await backend.transact((tx) => tx.add(new Uint8Array([1]), 1));
 * console.log(backend.stats.attempts >= 1); // true
 * await backend.close();
 * ```
 */
export function withFaults(backend: Backend, options: FaultOptions): FaultyBackend {
  checkBackend(backend);
  const opts = parse(optionsSchema, options, "options");
  const random = prng(opts.seed);
  const stats: FaultStats = { attempts: 0, conflicts: 0, unknownApplied: 0, unknownNotApplied: 0 };
  const [minLatency, maxLatency] = opts.latency ?? [0, 0];

  async function attempt<T>(
    fn: (tx: Transaction) => T | Promise<T>,
    o: TransactOptions,
  ): Promise<T> {
    stats.attempts++;
    // Draw every choice up front so the sequence depends only on the seed and attempt count.
    const delay = minLatency + random() * (maxLatency - minLatency);
    const r = random();
    const conflict = opts.conflictRate ?? 0;
    const applied = opts.unknownAppliedRate ?? 0;
    const dropped = opts.unknownNotAppliedRate ?? 0;
    if (delay > 0) await new Promise((res) => setTimeout(res, delay));
    const inner = { readOnly: o.readOnly, signal: o.signal, maxRetries: 0 };
    if (r < conflict + dropped) {
      try {
        await backend.transact(async (tx) => {
          await fn(tx);
          throw new InjectedAbort();
        }, inner);
      } catch (e) {
        if (!(e instanceof InjectedAbort)) throw e;
      }
      if (r < conflict) {
        stats.conflicts++;
        throw new ConflictError("Injected conflict");
      }
      stats.unknownNotApplied++;
      throw new CommitUnknownResultError("Injected unknown commit result (not applied)");
    }
    const result = await backend.transact(fn, inner);
    if (r < conflict + dropped + applied && !o.readOnly) {
      stats.unknownApplied++;
      throw new CommitUnknownResultError("Injected unknown commit result (applied)");
    }
    return result;
  }

  return {
    kind: backend.kind,
    limits: backend.limits,
    unknownCommitOutcomes: (opts.unknownAppliedRate ?? 0) > 0 ||
      (opts.unknownNotAppliedRate ?? 0) > 0 || backend.unknownCommitOutcomes !== false,
    inner: backend,
    stats,
    transact<T>(fn: (tx: Transaction) => T | Promise<T>, options?: TransactOptions): Promise<T> {
      const o = checkTransactOptions(options);
      return retryLoop(() => attempt(fn, o), o);
    },
    openSubspace: (path) => backend.openSubspace(path),
    close: () => backend.close(),
  };
}
