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
export const slowArrayFreeze: boolean = runtimeName === "bun";
