/**
 * Seeds and clocks of the fault tests: every random choice comes from a seeded generator; the
 * seed is printed and `DGEN_SEED` replays it. Times are wall-clock milliseconds with sub-ms
 * precision, comparable across the processes of one machine.
 */
import process from "node:process";
import { prng } from "../../lib/storage/faults.ts";

/** The seeded generator of the fault wrapper (mulberry32), shared by every fault test. */
export { prng };

/** An integer in `[lo, hi]`. */
export function between(random: () => number, lo: number, hi: number): number {
  return lo + Math.floor(random() * (hi - lo + 1));
}

/** One element of `xs`. */
export function pick<T>(random: () => number, xs: readonly T[]): T {
  return xs[Math.floor(random() * xs.length)]!;
}

/** The seed of a test: `DGEN_SEED` if set, else a fresh one; printed with how to replay it. */
export function testSeed(what: string): number {
  const given = process.env.DGEN_SEED;
  const seed = given !== undefined && given !== "" ? Number(given) : freshSeed();
  if (!Number.isInteger(seed)) throw new Error(`DGEN_SEED must be an integer, got ${given}`);
  console.log(`${what}: seed ${seed} (replay with DGEN_SEED=${seed})`);
  return seed;
}

function freshSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0]! % 1_000_000_000;
}

/** Wall-clock time in ms with sub-ms precision (comparable across local processes). */
export function wallTime(): number {
  return performance.timeOrigin + performance.now();
}

/** Minutes of soak requested by `DGEN_SOAK_MINUTES` (0 when unset: the short version). */
export function soakMinutes(): number {
  const m = Number(process.env.DGEN_SOAK_MINUTES ?? 0);
  return Number.isFinite(m) && m > 0 ? m : 0;
}
