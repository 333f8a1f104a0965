/**
 * Paths into a state value (`state.items[3].handler`), for error messages. They are built as
 * linked nodes and rendered only when an error names one, so walking a large state costs no
 * string work.
 *
 * @module
 */

/** One step from the root of a state value to a part of it. */
export interface ValuePath {
  /** The step before this one; `null` at the root. */
  readonly up: ValuePath | null;
  /** A property name, an array index, or a ready-made suffix such as `.get("k")`. */
  readonly step: string | number;
  /** Whether `step` is a ready-made suffix rather than a property name. */
  readonly raw: boolean;
  /** Steps from the root (0 at the root): how many containers hold the part it names. */
  readonly depth: number;
}

/** A root path, rendered as `name` (`state`, `value`, …). */
export function rootPath(name: string): ValuePath {
  return { up: null, step: name, raw: true, depth: 0 };
}

/** The root of every path: the state itself. */
export const ROOT_PATH: ValuePath = rootPath("state");

/** The path of property `name` (or index) under `up`. */
export function child(up: ValuePath, step: string | number): ValuePath {
  return { up, step, raw: false, depth: up.depth + 1 };
}

/** A path whose last step is rendered verbatim (e.g. `.get("k")` for a `Map` entry). */
export function rawChild(up: ValuePath, suffix: string): ValuePath {
  return { up, step: suffix, raw: true, depth: up.depth + 1 };
}

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

/** Renders a path the way JavaScript would reach it: `state.items[3]["odd name"]`. */
export function renderPath(path: ValuePath): string {
  const parts: string[] = [];
  for (let p: ValuePath | null = path; p !== null; p = p.up) {
    if (p.raw) parts.push(String(p.step));
    else if (typeof p.step === "number") parts.push(`[${p.step}]`);
    else if (IDENTIFIER.test(p.step)) parts.push(`.${p.step}`);
    else parts.push(`[${JSON.stringify(p.step)}]`);
  }
  return parts.reverse().join("");
}

/** A short, printable description of a `Map` key or `Set` element for a path step. */
export function describeKey(key: unknown): string {
  if (typeof key === "string") {
    return JSON.stringify(key.length > 40 ? key.slice(0, 40) + "…" : key);
  }
  if (typeof key === "bigint") return `${key}n`;
  if (typeof key === "number" || typeof key === "boolean" || key == null) return String(key);
  return `<${typeof key === "object" ? (key.constructor?.name ?? "object") : typeof key}>`;
}
