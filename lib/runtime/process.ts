/**
 * The runtime corner: the few things the server runtime needs from Deno, Bun or Node that web
 * standards do not give (timer refs, process id, runtime name).
 *
 * @module
 */

interface DenoLike {
  pid: number;
  unrefTimer(id: number): void;
  refTimer(id: number): void;
}

const deno = (globalThis as { Deno?: DenoLike }).Deno;
const nodeProcess = (globalThis as { process?: { pid: number } }).process;

/** Which runtime runs this code. */
export const runtimeName: "deno" | "bun" | "node" = "Bun" in globalThis
  ? "bun"
  : deno !== undefined
  ? "deno"
  : "node";

/** The OS process id. */
export const pid: number = deno?.pid ?? nodeProcess?.pid ?? 0;

/** A timer handle as returned by `setTimeout`/`setInterval` on any runtime. */
export type TimerHandle = ReturnType<typeof setTimeout>;

/** Lets the process exit while `timer` is pending. */
export function unrefTimer(timer: TimerHandle): void {
  if (typeof timer === "number") deno?.unrefTimer(timer);
  else (timer as { unref?: () => void }).unref?.();
}

/** An environment variable, or undefined (also when the runtime denies access to it). */
export function env(name: string): string | undefined {
  try {
    const d = (globalThis as { Deno?: { env: { get(n: string): string | undefined } } }).Deno;
    if (d !== undefined) return d.env.get(name);
    return (globalThis as { process?: { env: Record<string, string | undefined> } }).process
      ?.env[name];
  } catch {
    return undefined;
  }
}

/** The current working directory. */
export function cwd(): string {
  const d = (globalThis as { Deno?: { cwd(): string } }).Deno;
  if (d !== undefined) return d.cwd();
  return (globalThis as { process?: { cwd(): string } }).process?.cwd() ?? ".";
}
/**
 * JavaScriptCore (Bun) freezes an array slowly (about 0.5 µs per element) and copies a frozen
 * one slowly too (a spread of 10,000 frozen elements: about 350 µs): the codec leaves long
 * collections unfrozen there and never copies a frozen one.
 */
export const slowArrayFreeze: boolean = runtimeName === "bun";
/**
 * V8 (Deno) reads a frozen array's elements in a loop several times slower than an unfrozen
 * one's, and a loop that has read one frozen array stays slow for unfrozen ones after it; a
 * spread of a frozen array is fast there (3–9 µs for 10,000 elements). So the codec's scans
 * read a spread copy of a frozen array on V8 (see `Writer.diffCollection`).
 */
export const copyFrozenArrays: boolean = !slowArrayFreeze;
