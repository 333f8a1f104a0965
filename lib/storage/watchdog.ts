/**
 * The watchdog that fails a transaction body still pending past `maxTransactionDuration` (a
 * body awaiting a promise that never settles, say a fetch that never answers), shared by every
 * backend. A backend checks the limit at each operation and at commit, which a body that does
 * nothing more never reaches: without this, its `transact` would never settle.
 *
 * Pending bodies sit in an intrusive doubly-linked list (the links are fields of the
 * transaction), so watching one allocates nothing; one interval per backend, ticking
 * every quarter of the limit (at most 250 ms) and cleared when the list is empty, walks the
 * list. No timer per transaction on the hot path.
 *
 * @module
 */

import { LimitExceededError } from "../errors.ts";

/** A transaction whose body the watchdog can watch (the fields are the watchdog's). */
export interface WatchedBody<B extends WatchedBody<B>> {
  /** `performance.now()` when the limit's clock started. */
  readonly started: number;
  /** Fails the attempt (the reject of its promise) while the body is watched. */
  fail: ((e: unknown) => void) | undefined;
  /** Links of the watchdog's list of pending bodies. */
  watchPrev: B | undefined;
  watchNext: B | undefined;
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
  /** The most recently watched pending body, the head of the list. */
  #head: B | undefined = undefined;
  #timer: ReturnType<typeof setInterval> | undefined = undefined;

  constructor(readonly limit: number) {}

  /** Watches `body` (its `fail` set) until {@link remove}d or failed. */
  add(body: B): void {
    const head = this.#head;
    body.watchNext = head;
    if (head !== undefined) head.watchPrev = body;
    this.#head = body;
    if (this.#timer === undefined) {
      // Not unref'd: a process awaiting nothing but a pending body stays up until the body
      // is failed (at most the limit and a tick), rather than exiting with the promise pending.
      this.#timer = setInterval(
        () => this.#tick(),
        Math.max(5, Math.min(250, this.limit / 4)),
      );
    }
  }

  /** Stops watching `body` (its body settled) and clears its `fail`. */
  remove(body: B): void {
    const prev = body.watchPrev;
    const next = body.watchNext;
    if (prev === undefined) this.#head = next;
    else prev.watchNext = next;
    if (next !== undefined) next.watchPrev = prev;
    body.watchPrev = body.watchNext = body.fail = undefined;
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

  /** Fails every pending body past the limit; stops ticking once none is pending. */
  #tick(): void {
    const now = performance.now();
    const limit = this.limit;
    for (let body = this.#head; body !== undefined;) {
      const next = body.watchNext;
      const elapsed = now - body.started;
      if (elapsed > limit) {
        const fail = body.fail;
        this.remove(body);
        body.expire();
        fail?.(timeoutError(elapsed, limit));
      }
      body = next;
    }
    if (this.#head === undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }
}
