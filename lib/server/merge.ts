/**
 * Structural equality and three-way merge of states. The lock's write-back applies
 * `handleLocked`'s state on top of the state current at that time: what `handleLocked`
 * changed relative to the state at lock time wins, what priority and info messages changed
 * meanwhile is kept, and a property both changed differently fails loudly.
 *
 * @module
 */

import { DGenError } from "../errors.ts";
import { isPlainObject } from "../validate.ts";

/** Deep structural equality of state values (distinguishes -0, treats NaN as equal to NaN). */
export function deepEqual(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    if (a.length !== bb.length) return false;
    for (let i = 0; i < a.length; i++) {
      if ((i in a) !== (i in bb) || !deepEqual(a[i], bb[i])) return false;
    }
    return true;
  }
  if (a instanceof Date) return Object.is(a.getTime(), (b as Date).getTime());
  if (a instanceof Uint8Array) {
    const bb = b as Uint8Array;
    if (a.length !== bb.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== bb[i]) return false;
    return true;
  }
  if (a instanceof Map) {
    const bb = b as Map<unknown, unknown>;
    if (a.size !== bb.size) return false;
    for (const [k, v] of a) if (!bb.has(k) || !deepEqual(v, bb.get(k))) return false;
    return true;
  }
  if (a instanceof Set) {
    const bb = b as Set<unknown>;
    if (a.size !== bb.size) return false;
    for (const v of a) if (!bb.has(v)) return false;
    return true;
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  for (const k of ka) {
    if (!Object.hasOwn(b, k)) return false;
    if (!deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) {
      return false;
    }
  }
  return true;
}

const MISSING = Symbol("missing");

/**
 * Both sides changed the same part of the state differently.
 *
 * @example
 * ```ts
 * import { StateConflictError } from "../../mod.ts";
 * const e = new StateConflictError("state.items");
 * console.log(e.code, e.path); // "state_conflict" "state.items"
 * ```
 */
export class StateConflictError extends DGenError {
  /** Where the sides disagree, e.g. `state.items`. */
  readonly path: string;
  /**
   * Creates the error.
   *
   * @param path Where the sides disagree.
   */
  constructor(path: string) {
    super(
      "state_conflict",
      `handleLocked and a message handled during the lock both changed ${path}`,
    );
    this.path = path;
  }
}

/**
 * Merges `ours` (derived from `base`) onto `theirs` (also derived from `base`): per property of
 * plain objects, the side that changed wins; both changing it to different values throws
 * {@link StateConflictError}.
 */
export function merge3(base: unknown, ours: unknown, theirs: unknown, path = "state"): unknown {
  if (ours === base || deepEqual(ours, base)) return theirs;
  if (theirs === base || deepEqual(theirs, base)) return ours;
  if (isPlainObject(base) && isPlainObject(ours) && isPlainObject(theirs)) {
    const out: Record<string, unknown> = {};
    const keys = new Set([...Object.keys(base), ...Object.keys(ours), ...Object.keys(theirs)]);
    for (const k of keys) {
      const b = Object.hasOwn(base, k) ? base[k] : MISSING;
      const o = Object.hasOwn(ours, k) ? ours[k] : MISSING;
      const t = Object.hasOwn(theirs, k) ? theirs[k] : MISSING;
      const merged = mergeSlot(b, o, t, `${path}.${k}`);
      if (merged !== MISSING) out[k] = merged;
    }
    return out;
  }
  if (deepEqual(ours, theirs)) return ours;
  throw new StateConflictError(path);
}

function mergeSlot(b: unknown, o: unknown, t: unknown, path: string): unknown {
  if (o === MISSING || t === MISSING || b === MISSING) {
    if (o === b || (o !== MISSING && b !== MISSING && deepEqual(o, b))) return t;
    if (t === b || (t !== MISSING && b !== MISSING && deepEqual(t, b))) return o;
    if (o === MISSING && t === MISSING) return MISSING;
    if (o !== MISSING && t !== MISSING && deepEqual(o, t)) return o;
    throw new StateConflictError(path);
  }
  return merge3(b, o, t, path);
}
