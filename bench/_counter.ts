/**
 * The counter server of the benchmark, shared by `run.ts` and its child processes
 * (`bench_child.ts`), so both sides of a cross-process call run one definition.
 *
 * @module
 */
import { defineServer, noreply, reply } from "../mod.ts";

/** A number: `increment` and `value` calls, a `bump` cast. */
export const Counter = defineServer({
  name: "counter",
  init: () => 0,
  handleCall: {
    increment: (_: undefined, _from, n: number) => reply(n + 1, n + 1),
    value: (_: undefined, _from, n: number) => reply(n, n),
  },
  handleCast: {
    bump: (_: undefined, n: number) => noreply(n + 1),
  },
});
