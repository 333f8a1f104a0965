/** Server definitions shared by the server tests. */
import * as v from "valibot";
import { defineServer, lock, noreply, reply, stop } from "../../mod.ts";

/** The seed's counter. */
export const Counter = defineServer({
  name: "counter",
  init: (start: number = 0) => start,
  handleCall: {
    increment: (_arg: undefined, _from, n: number) => reply("ok" as const, n + 1),
    value: (_arg: undefined, _from, n: number) => reply(n, n),
    add: (by: number, _from, n: number) => reply(n + by, n + by),
  },
  handleCast: {
    bump: (by: number, n: number) => noreply(n + by),
  },
});

/** A server whose messages record their ids, to check exactly-once application. */
export const Ledger = defineServer({
  name: "ledger",
  init: () => ({ seen: [] as string[], total: 0 }),
  handleCall: {
    record: (id: string, _from, s: { seen: string[]; total: number }) =>
      reply(s.total + 1, { seen: [...s.seen, id], total: s.total + 1 }),
    total: (_: undefined, _from, s: { seen: string[]; total: number }) => reply(s.total, s),
    seen: (_: undefined, _from, s: { seen: string[]; total: number }) => reply(s.seen, s),
  },
  handleCast: {
    record: (id: string, s: { seen: string[]; total: number }) =>
      noreply({ seen: [...s.seen, id], total: s.total + 1 }),
  },
});

/** Controls for {@link Flaky}: which messages throw, and a log of handler runs. */
export const flaky = {
  poison: new Set<string>(),
  runs: [] as string[],
  deadLetters: [] as string[],
};

/** A server whose handlers throw for poisoned names. */
export const Flaky = defineServer({
  name: "flaky",
  init: () => ({ applied: [] as string[] }),
  handleCall: {
    apply: (tag: string, _from, s: { applied: string[] }) => {
      flaky.runs.push(tag);
      if (flaky.poison.has(tag)) throw new Error(`poison ${tag}`);
      return reply(tag, { applied: [...s.applied, tag] });
    },
    applied: (_: undefined, _from, s: { applied: string[] }) => reply(s.applied, s),
    bad: (_: undefined, _from, s: { applied: string[] }) => ({ state: s } as never),
    quit: (_: undefined, _from, s: { applied: string[] }) => stop("asked to", s),
  },
  handleCast: {
    apply: (tag: string, s: { applied: string[] }) => {
      flaky.runs.push(tag);
      if (flaky.poison.has(tag)) throw new Error(`poison ${tag}`);
      return noreply({ applied: [...s.applied, tag] });
    },
    quit: (_: undefined, s: { applied: string[] }) => stop("asked to", s),
    slow: (tag: string, s: { applied: string[] }) =>
      lock({ applied: [...s.applied, `${tag}:locked`] }),
  },
  handleLocked: (event, s: { applied: string[] }) =>
    noreply({ applied: [...s.applied, `${(event.arg as string)}:done`] }),
  handleDeadLetter: (m) => {
    flaky.deadLetters.push(String(m.arg));
  },
});

/** A server with valibot schemas on its messages, replies and state. */
export const Typed = defineServer({
  name: "typed",
  init: () => ({ name: "x", n: 0 }),
  schemas: {
    call: { rename: v.pipe(v.string(), v.minLength(1)) },
    cast: { setN: v.number() },
    reply: { broken: v.string() },
    state: v.object({ name: v.string(), n: v.number() }),
  },
  handleCall: {
    rename: (name: string, _from, s: { name: string; n: number }) => reply(s.name, { ...s, name }),
    broken: (_: undefined, _from, s: { name: string; n: number }) =>
      reply(42 as unknown as string, s),
    corrupt: (_: undefined, _from, s: { name: string; n: number }) =>
      reply("ok", { ...s, n: "nope" as unknown as number }),
  },
  handleCast: {
    setN: (n: number, s: { name: string; n: number }) => noreply({ ...s, n }),
  },
});

/** The state of {@link jobServer}'s server. */
export interface Job {
  status: string;
  notes: string[];
  results: string[];
}

/**
 * A server whose `work` call locks; `handleLocked` records the instance, fencing token and
 * signal it ran with, and waits on a gate the test opens.
 */
export function jobServer(onDeadLetter?: (error: unknown) => void) {
  const gates: PromiseWithResolvers<void>[] = [];
  const started: string[] = [];
  const tokens: bigint[] = [];
  const signals: AbortSignal[] = [];
  const def = defineServer({
    name: "job",
    init: (): Job => ({ status: "idle", notes: [], results: [] }),
    handleCall: {
      work: (task: string, _from, s: Job) =>
        task === "quick" ? reply("quick", s) : lock({ ...s, status: `running ${task}` }),
      get: (_: undefined, _from, s: Job) => reply(s, s),
      note: (n: string, _from, s: Job) => reply("noted", { ...s, notes: [...s.notes, n] }),
      status: (st: string, _from, s: Job) => reply("set", { ...s, status: st }),
    },
    handleCast: {
      note: (n: string, s: Job) => noreply({ ...s, notes: [...s.notes, n] }),
    },
    handleLocked: async (event, s: Job, ctx) => {
      started.push(ctx.instance);
      tokens.push(ctx.fencingToken!);
      signals.push(ctx.signal);
      const gate = Promise.withResolvers<void>();
      gates.push(gate);
      await gate.promise;
      const task = event.arg as string;
      return reply(`done ${task}`, { ...s, status: "idle", results: [...s.results, task] });
    },
    handleDeadLetter: (_message, _attempts, error) => onDeadLetter?.(error),
  });
  return { def, gates, started, tokens, signals };
}
