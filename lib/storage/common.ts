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
 * A transaction's versionstamp promise, made only when asked for. Most transactions never ask
 * (and a read-only one always fails it): a promise, plus an error with its stack, per
 * transaction is a measurable share of a short one. The first outcome given wins.
 */
export class LazyStamp {
  #p: PromiseWithResolvers<Uint8Array> | undefined;
  #outcome: { bytes: () => Uint8Array } | { error: () => Error } | undefined;

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
