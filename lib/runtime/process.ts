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
