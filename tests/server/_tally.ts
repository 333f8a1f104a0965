/**
 * The server the multi-process and fault tests drive: it logs every applied message id, so a
 * checker can tell that each acknowledged message was applied exactly once, and replies to
 * calls with the log length, so replies can be checked against a sequential history.
 */
import { defineServer, noreply, reply } from "../../mod.ts";

/** State of {@link Tally}: the applied ids, in order (a collection: cheap appends). */
export interface TallyState {
  count: number;
  log: Array<{ id: string }>;
}

/** Applies `rec` messages; `count` reads. */
export const Tally = defineServer({
  name: "tally",
  init: (): TallyState => ({ count: 0, log: [] }),
  handleCall: {
    rec: (id: string, _from, s: TallyState) =>
      reply(s.count + 1, { count: s.count + 1, log: [...s.log, { id }] }),
    count: (_: undefined, _from, s: TallyState) => reply(s.count, s),
  },
  handleCast: {
    rec: (id: string, s: TallyState) => noreply({ count: s.count + 1, log: [...s.log, { id }] }),
  },
});
