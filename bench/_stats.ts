/** Latency statistics shared by the benchmark scripts. */

/** The `p` quantile (0..1) of ascending `sorted`: the value at index ⌊p·n⌋; `NaN` if empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}
