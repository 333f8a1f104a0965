/**
 * Pieces shared by the backends: option schemas, the watch handle and the versionstamp promise.
 *
 * @module
 */

import * as v from "valibot";
import { parse } from "../validate.ts";
import type { TransactOptions, Watch } from "./types.ts";

const positiveInt = v.pipe(v.number(), v.integer(), v.minValue(1));

/** Schema of a partial {@link BackendLimits} override. */
export const limitsSchema = v.strictObject({
  maxKeySize: v.optional(positiveInt),
  maxValueSize: v.optional(positiveInt),
  maxTransactionSize: v.optional(positiveInt),
  maxTransactionDuration: v.optional(positiveInt),
});

const transactOptionsSchema = v.optional(
  v.strictObject({
    maxRetries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))),
    readOnly: v.optional(v.boolean()),
    signal: v.optional(v.instance(AbortSignal)),
  }),
  {},
);

/** Validates the options of `Backend.transact`. */
export function checkTransactOptions(options: TransactOptions | undefined): TransactOptions {
  // The common case (no options) skips valibot: transact is on every hot path.
  if (options === undefined) return {};
  return parse(transactOptionsSchema, options, "options");
}

/**
 * A {@link Watch} that a backend settles: `fire()` when the key was written, `cancel()` when
 * the watcher gives up or the backend closes. `baseline` is the commit version the watch
 * compares against; `onSettle` lets the backend drop it from its registry.
 */
export class WatchHandle implements Watch {
  /** Commit version (backend-defined) the key must be written after to fire the watch. */
  baseline = 0;
  /** Whether the promise has resolved. */
  settled = false;
  /** Called once, when the watch settles. */
  onSettle: (() => void) | undefined;
  readonly promise: Promise<boolean>;
  #resolve!: (fired: boolean) => void;

  constructor() {
    this.promise = new Promise<boolean>((resolve) => {
      this.#resolve = resolve;
    });
  }

  /** Resolves the watch with `true`. */
  fire(): void {
    this.#settle(true);
  }

  /** Resolves the watch with `false`. */
  cancel(): void {
    this.#settle(false);
  }

  #settle(fired: boolean): void {
    if (this.settled) return;
    this.settled = true;
    this.#resolve(fired);
    const f = this.onSettle;
    this.onSettle = undefined;
    f?.();
  }
}

/**
 * Internal to dgen: a transaction of an in-process backend (memory, SQLite) gives its
 * versionstamp through this method, without a promise, once it has committed (undefined before,
 * or when it committed no write). The runtime reads the stamp after every state write; a
 * promise costs it a resolver, a handler and an await per call. Backends without it are asked
 * with {@link Transaction.getVersionstamp} before the commit, as FoundationDB requires.
 */
export const committedStamp: unique symbol = Symbol("dgen.committedStamp");

/** A transaction that gives its versionstamp synchronously after committing. */
export interface HasCommittedStamp {
  /** The versionstamp of the committed transaction (see {@link committedStamp}). */
  [committedStamp](): Uint8Array | undefined;
}

/** Whether `tx` gives its versionstamp synchronously after committing. */
export function hasCommittedStamp(tx: object): tx is HasCommittedStamp {
  return committedStamp in tx;
}

/**
 * Internal to dgen: a transaction of an in-process backend (memory, SQLite) takes a value
 * through this method without copying it. For writers that hand over a fresh array and never
 * touch it again (the state codec); `set` copies, as its callers may reuse their arrays, and a
 * typed array costs 300–600 ns to allocate on Deno.
 */
export const setOwned: unique symbol = Symbol("dgen.setOwned");

/** A transaction that can take a value without copying it. */
export interface HasSetOwned {
  /** `set`, taking `value` as the backend's own (see {@link setOwned}). */
  [setOwned](key: Uint8Array, value: Uint8Array): void;
}

/** Whether `tx` can take a value without copying it. */
export function hasSetOwned(tx: object): tx is HasSetOwned {
  return setOwned in tx;
}

/**
 * A transaction's versionstamp promise, made only when asked for. Most transactions never ask
 * (and a read-only one always fails it): a promise, plus an error with its stack, per
 * transaction is a measurable share of a short one. The first outcome given wins.
 */
export class LazyStamp {
  #p: PromiseWithResolvers<Uint8Array> | undefined;
  #outcome: { bytes: () => Uint8Array } | { error: () => Error } | undefined;

  /** The versionstamp, once the transaction has committed with one; otherwise undefined. */
  now(): Uint8Array | undefined {
    const o = this.#outcome;
    return o !== undefined && "bytes" in o ? o.bytes() : undefined;
  }

  /** The versionstamp: resolves after the commit, rejects if there is none. */
  get promise(): Promise<Uint8Array> {
    if (this.#p === undefined) {
      const p = Promise.withResolvers<Uint8Array>();
      // Unobserved rejections of the versionstamp promise are not errors.
      p.promise.catch(() => {});
      this.#p = p;
      const o = this.#outcome;
      if (o !== undefined) "bytes" in o ? p.resolve(o.bytes()) : p.reject(o.error());
    }
    return this.#p.promise;
  }

  /**
   * The transaction committed with this stamp; `bytes` makes it, if anyone asks (a typed
   * array costs a few hundred nanoseconds on V8).
   */
  resolve(bytes: () => Uint8Array): void {
    if (this.#outcome !== undefined) return;
    this.#outcome = { bytes };
    this.#p?.resolve(bytes());
  }

  /** The transaction has no stamp; `error` makes the reason, if anyone asks. */
  reject(error: () => Error): void {
    if (this.#outcome !== undefined) return;
    this.#outcome = { error };
    this.#p?.reject(error());
  }
}
