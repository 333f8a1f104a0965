/**
 * The watchdog that fails a transaction body still pending past `maxTransactionDuration` (a
 * body awaiting a promise that never settles, say a fetch that never answers), shared by every
 * backend. A backend checks the limit at each operation and at commit, which a body that does
 * nothing more never reaches: without this, its `transact` would never settle.
 *
 * Pending bodies sit in a {@link TickedList} (lib/ticked.ts: the links are fields of the
 * transaction, so watching one allocates nothing), one per backend, ticking every quarter of
 * the limit (at most 250 ms) while any body is pending. No timer per transaction.
 *
 * @module
 */

import { LimitExceededError } from "../errors.ts";
import { type Ticked, TickedList } from "../ticked.ts";

/** A transaction whose body the watchdog can watch (the fields are the watchdog's). */
export interface WatchedBody<B extends WatchedBody<B>> extends Ticked<B> {
  /** `performance.now()` when the limit's clock started. */
  readonly started: number;
  /** Fails the attempt (the reject of its promise) while the body is watched. */
  fail: ((e: unknown) => void) | undefined;
  /**
   * Ends the transaction when its body timed out, before the attempt fails: its later
   * operations throw and nothing of it commits.
   */
  expire(): void;
}

/** The error of a transaction that ran `elapsed` ms, over its `limit`. */
export function timeoutError(elapsed: number, limit: number): LimitExceededError {
  return new LimitExceededError(
    "transaction_timeout",
    `Transaction ran ${Math.round(elapsed)} ms, over the ${limit} ms limit`,
  );
}

/** Whether `x` is a promise (or another thenable). */
export function isThenable<T>(x: T | PromiseLike<T>): x is PromiseLike<T> {
  return x !== null && (typeof x === "object" || typeof x === "function") &&
    typeof (x as { then?: unknown }).then === "function";
}

/** One backend's watchdog: see the module notes. */
export class BodyWatchdog<B extends WatchedBody<B>> {
  readonly #list: TickedList<B>;

  constructor(readonly limit: number) {
    // Kept alive: a process awaiting nothing but a pending body stays up until the body is
    // failed (at most the limit and a tick), rather than exiting with the promise pending.
    this.#list = new TickedList<B>(
      Math.max(5, Math.min(250, limit / 4)),
      () => performance.now(),
      (body, now) => {
        const elapsed = now - body.started;
        if (elapsed <= limit) return;
        const fail = body.fail;
        this.remove(body);
        body.expire();
        fail?.(timeoutError(elapsed, limit));
      },
      true,
    );
  }

  /** Watches `body` (its `fail` set) until {@link remove}d or failed. */
  add(body: B): void {
    this.#list.add(body);
  }

  /** Stops watching `body` (its body settled) and clears its `fail`. */
  remove(body: B): void {
    this.#list.remove(body);
    body.fail = undefined;
  }

  /**
   * Watches the promise `r` a body returned (for a transaction `tx` that is not yet watched):
   * the promise returned settles as `r` does, or fails with `transaction_timeout` once the body
   * runs past the limit, `tx` expired first. A value is returned as is.
   */
  run<T>(tx: B, r: T | PromiseLike<T>): T | Promise<T> {
    if (!isThenable(r)) return r;
    return new Promise<T>((resolve, reject) => {
      tx.fail = reject;
      this.add(tx);
      const settled = (): boolean => {
        // Failed by the watchdog already: the attempt is over.
        if (tx.fail === undefined) return false;
        this.remove(tx);
        return true;
      };
      try {
        r.then((v) => settled() && resolve(v), (e) => settled() && reject(e));
      } catch (e) {
        // A thenable whose then throws.
        if (settled()) reject(e);
      }
    });
  }
}
