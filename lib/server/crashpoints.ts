/**
 * Named points along the consume path where fault tests make a process die (or stall), to check
 * what survives: a test installs a hook; production code never does, and then a point costs one
 * property read.
 *
 * | point                | where                                                              |
 * |----------------------|--------------------------------------------------------------------|
 * | `dequeued`           | the queue head was read, before any handler ran                    |
 * | `handled`            | the handlers ran, before the transaction commits                   |
 * | `committed`          | the transaction committed, before any action ran                   |
 * | `between-actions`    | after each action                                                  |
 * | `before-release`     | `handleLocked` returned, before its write-back (which releases)    |
 *
 * Points inside `handleLocked` (before and after its side effect) belong to the test's own
 * handler.
 *
 * @module
 */

/** The named points. */
export type CrashPoint =
  | "dequeued"
  | "handled"
  | "committed"
  | "between-actions"
  | "before-release";

/** The installed hook, if any. */
export const crashPoints: { hook: ((point: CrashPoint) => void) | undefined } = {
  hook: undefined,
};

/** Passes a point: calls the hook (which may kill the process) if one is installed. */
export function crashPoint(point: CrashPoint): void {
  crashPoints.hook?.(point);
}
