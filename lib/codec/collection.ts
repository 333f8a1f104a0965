/**
 * Index keys of collections: which fractional index (from `fractional-indexing`) each item of
 * a collection gets after an edit, so that order is kept exactly while as few items as
 * possible get a new key, and keys stay short.
 *
 * - Items that keep their relative order keep their keys: the survivors of the edit that form
 *   a longest increasing subsequence of their old positions stay put; only the others (moved
 *   and new items) get keys, generated between their kept neighbours.
 * - Appends and prepends take the library's integer-like keys (`a0`, `a1`, … then `b00`, …):
 *   after N appends (or prepends) to an empty collection the longest key has 1 + d characters,
 *   where d is the least integer with 62 + 62² + … + 62^d ≥ N (4 characters for N = 10,000).
 * - Repeated inserts at one place make keys grow (about one character per six inserts). When a
 *   generated key would be longer than {@link MAX_INDEX_KEY_LENGTH}, a window of neighbours
 *   around it, doubled until its keys can be spread at most {@link REBALANCED_KEY_LENGTH}
 *   characters long (at worst the whole collection, whose fresh keys are `a0`, `a1`, …), is
 *   re-keyed. So **no index key is ever longer than {@link MAX_INDEX_KEY_LENGTH} characters**
 *   (for collections of fewer than 62¹⁰ items), and a re-keyed window has room for dozens of
 *   further inserts before it needs re-keying again.
 *
 * @module
 */

import { generateNKeysBetween } from "fractional-indexing";

/** The longest index key this module ever assigns, in characters (ASCII, one byte each). */
export const MAX_INDEX_KEY_LENGTH = 24;

/** The longest key a re-keyed window may get, leaving room for later inserts. */
export const REBALANCED_KEY_LENGTH = 12;

/** Index keys for a new collection of `n` items: `a0`, `a1`, … in order. */
export function freshKeys(n: number): string[] {
  return generateNKeysBetween(null, null, n);
}

/**
 * Marks a longest strictly increasing subsequence of `seq`, ignoring entries that are `-1`.
 * Returns one flag per entry of `seq`. O(n log n).
 */
export function longestIncreasing(seq: readonly number[]): boolean[] {
  const n = seq.length;
  // tails[k]: index in seq of the smallest tail of an increasing run of length k + 1.
  const tails: number[] = [];
  const before = new Int32Array(n).fill(-1);
  for (let i = 0; i < n; i++) {
    const x = seq[i]!;
    if (x < 0) continue;
    let lo = 0;
    let hi = tails.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (seq[tails[mid]!]! < x) lo = mid + 1;
      else hi = mid;
    }
    if (lo > 0) before[i] = tails[lo - 1]!;
    tails[lo] = i;
  }
  const marked = new Array<boolean>(n).fill(false);
  for (let i = tails.length > 0 ? tails[tails.length - 1]! : -1; i >= 0; i = before[i]!) {
    marked[i] = true;
  }
  return marked;
}

function longest(keys: readonly string[]): number {
  let m = 0;
  for (const k of keys) if (k.length > m) m = k.length;
  return m;
}

/** The result of {@link planKeys}. */
export interface KeyPlan {
  /** The index keys of the new collection, in item order (strictly ascending). */
  keys: readonly string[];
  /**
   * Positions `[from, to)` of the new collection outside of which every item keeps its old
   * key (the prefix items at the same positions, the suffix items shifted). Empty when
   * nothing changes.
   */
  from: number;
  to: number;
}

/**
 * The index keys of a collection after an edit.
 *
 * The new collection has `length` items: its first `prefix` items are the old collection's
 * first `prefix` items (same ids, same order), its last `suffix` items are the old one's last
 * `suffix`, and `sources[i]` gives, for the item at position `prefix + i`, the position of the
 * item with the same id in the old collection (a position in the old middle part, between
 * `prefix` and `prevKeys.length - suffix`), or `-1` for a new item.
 *
 * An item keeps its old key unless it moved relative to the others (or a re-keying window
 * covers it). When nothing changes, `keys` is `prevKeys` itself.
 */
export function planKeys(
  prevKeys: readonly string[],
  length: number,
  prefix: number,
  suffix: number,
  sources: readonly number[],
): KeyPlan {
  const pn = prevKeys.length;
  if (length === pn && prefix + suffix >= length) return { keys: prevKeys, from: 0, to: 0 };
  const keys = new Array<string | undefined>(length);
  for (let j = 0; j < prefix; j++) keys[j] = prevKeys[j];
  for (let t = 1; t <= suffix; t++) keys[length - t] = prevKeys[pn - t];
  const kept = longestIncreasing(sources);
  for (let i = 0; i < sources.length; i++) {
    if (kept[i]) keys[prefix + i] = prevKeys[sources[i]!];
  }
  let from = prefix;
  let to = length - suffix;
  // Fill each run of items without a key, left to right.
  let j = prefix;
  while (j < length) {
    if (keys[j] !== undefined) {
      j++;
      continue;
    }
    let e = j;
    while (e < length && keys[e] === undefined) e++;
    const lo = j > 0 ? keys[j - 1]! : null;
    const hi = e < length ? keys[e]! : null;
    const generated = generateNKeysBetween(lo, hi, e - j);
    if (longest(generated) <= MAX_INDEX_KEY_LENGTH) {
      for (let i = 0; i < generated.length; i++) keys[j + i] = generated[i];
      j = e;
      continue;
    }
    const [l, r] = rekeyWindow(keys, j, e);
    from = Math.min(from, l);
    to = Math.max(to, r);
    j = r;
  }
  return { keys: keys as string[], from, to };
}

/**
 * Re-keys a window around the run `[start, end)` of items without keys, doubling it until its
 * keys fit in {@link REBALANCED_KEY_LENGTH} characters (or it covers every item). Returns the
 * window. Items left of `start` have keys; right of `end`, some may not.
 */
function rekeyWindow(
  keys: (string | undefined)[],
  start: number,
  end: number,
): [number, number] {
  const n = keys.length;
  for (let k = Math.max(end - start, 1);; k *= 2) {
    const l = Math.max(0, start - k);
    let r = Math.min(n, end + k);
    while (r < n && keys[r] === undefined) r++;
    const lo = l > 0 ? keys[l - 1]! : null;
    const hi = r < n ? keys[r]! : null;
    const generated = generateNKeysBetween(lo, hi, r - l);
    if (longest(generated) <= REBALANCED_KEY_LENGTH || (l === 0 && r === n)) {
      for (let i = 0; i < generated.length; i++) keys[l + i] = generated[i];
      return [l, r];
    }
  }
}
