/** Helpers shared by the test files. */

import process from "node:process";

/** Resolves like `p`, or rejects with `message` if `p` has not settled within `ms`. */
export function deadline<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} (after ${ms} ms)`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Polls `check` until it returns a truthy value or `ms` pass; rejects with `message` then.
 * For conditions with no event to wait on.
 */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  ms: number,
  message: string,
  interval = 5,
): Promise<NonNullable<T>> {
  const end = performance.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (performance.now() > end) throw new Error(`${message} (after ${ms} ms)`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * fast-check parameters: the seed comes from `FC_SEED` when set (to replay a failure, whose
 * seed fast-check prints), the path of the shrunk counterexample from `FC_PATH` (to replay just
 * it), and the run count from `FC_RUNS`.
 */
export function fcParams(numRuns = 100): { seed?: number; path?: string; numRuns: number } {
  const seed = process.env.FC_SEED;
  const path = process.env.FC_PATH;
  const runs = process.env.FC_RUNS;
  return {
    ...(seed ? { seed: Number(seed) } : {}),
    ...(path ? { path } : {}),
    numRuns: runs ? Number(runs) : numRuns,
  };
}

/** Which runtime runs the tests. */
export const runtime: "deno" | "bun" = "Bun" in globalThis ? "bun" : "deno";
