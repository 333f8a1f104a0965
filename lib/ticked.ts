/**
 * Things in flight with a time limit, watched without a timer each: an intrusive
 * doubly-linked list (the links are fields of the entries, so adding one allocates nothing),
 * walked by one interval that runs while the list holds anything and stops once it is empty.
 * Used for transaction bodies past a backend's time limit (lib/storage/watchdog.ts) and for
 * inline calls past their deadline (lib/server/instance.ts): a timer per entry costs about
 * 3 µs on Deno, more than half a memory-backend call.
 *
 * @module
 */

import { unrefTimer } from "./runtime/process.ts";

/** An entry of a {@link TickedList}: its links are the list's. */
export interface Ticked<T> {
  watchPrev: T | undefined;
  watchNext: T | undefined;
}

/** See the module notes. */
export class TickedList<T extends Ticked<T>> {
  #head: T | undefined = undefined;
  #timer: ReturnType<typeof setInterval> | undefined = undefined;

  /**
   * @param intervalMs How often the entries are checked while there are any.
   * @param clock The time `check` is given, read once per tick.
   * @param check Called for each entry at each tick; removes and fails the entry when due.
   * @param keepAlive Whether the interval keeps the process alive.
   */
  constructor(
    readonly intervalMs: number,
    readonly clock: () => number,
    readonly check: (entry: T, now: number) => void,
    readonly keepAlive: boolean,
  ) {}

  /** Adds `entry` (not in the list), starting the interval if it was stopped. */
  add(entry: T): void {
    const head = this.#head;
    entry.watchNext = head;
    if (head !== undefined) head.watchPrev = entry;
    this.#head = entry;
    if (this.#timer === undefined) {
      this.#timer = setInterval(() => this.#tick(), this.intervalMs);
      if (!this.keepAlive) unrefTimer(this.#timer);
    }
  }

  /** Removes `entry` (in the list). */
  remove(entry: T): void {
    const prev = entry.watchPrev;
    const next = entry.watchNext;
    if (prev === undefined) this.#head = next;
    else prev.watchNext = next;
    if (next !== undefined) next.watchPrev = prev;
    entry.watchPrev = entry.watchNext = undefined;
  }

  #tick(): void {
    const now = this.clock();
    for (let entry = this.#head; entry !== undefined;) {
      const next = entry.watchNext;
      this.check(entry, now);
      entry = next;
    }
    if (this.#head === undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }
}
