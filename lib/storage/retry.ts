/**
 * The one retry loop of dgen's storage layer: runs a transaction attempt again after retryable
 * failures, with capped exponential back-off and jitter, up to a bounded number of retries.
 *
 * @module
 */

import { RetriesExhaustedError, TransactionError } from "../errors.ts";

/** Retries allowed when {@link TransactOptions.maxRetries} is not given. */
export const DEFAULT_MAX_RETRIES = 100;

/** Whether an error is a retryable transaction failure. */
export function isRetryable(e: unknown): boolean {
  return e instanceof TransactionError && e.retryable;
}

/** Options of {@link retryLoop}. */
export interface RetryOptions {
  /** Retries after the first attempt. @default DEFAULT_MAX_RETRIES */
  maxRetries?: number;
  /** Stops retrying when aborted. */
  signal?: AbortSignal;
  /** Base of the exponential back-off, in ms. @default 1 */
  baseDelay?: number;
  /** Cap of the back-off, in ms. @default 100 */
  maxDelay?: number;
}

/**
 * Runs `attempt` until it resolves, retrying retryable {@link TransactionError}s. Throws
 * non-retryable errors at once and {@link RetriesExhaustedError} when the budget is spent.
 */
export async function retryLoop<T>(
  attempt: (attemptNumber: number) => Promise<T>,
  options: RetryOptions = {},
): Promise<T> {
  const maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
  const base = options.baseDelay ?? 1;
  const cap = options.maxDelay ?? 100;
  for (let n = 0;; n++) {
    options.signal?.throwIfAborted();
    try {
      return await attempt(n);
    } catch (e) {
      // With no retries allowed, the caller asked to see the failure itself.
      if (!isRetryable(e) || maxRetries === 0) throw e;
      if (n >= maxRetries) throw new RetriesExhaustedError(maxRetries, e);
      // The first retry is immediate: most conflicts clear as soon as the other commit lands.
      if (n > 0) await sleep(Math.random() * Math.min(cap, base * 2 ** n), options.signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
