/**
 * Servers the fault tests drive. Each standard or priority message records that it applied by
 * an atomic add to `("fx", opId)` in the handler's own transaction (`ctx.tx`), so the count
 * there is exactly how many times the message's effect committed: a checker reads them back
 * to tell "applied once", "lost" and "applied twice" apart, without a growing state.
 */
import { appendFileSync } from "node:fs";
import {
  defineServer,
  lock,
  noreply,
  readInt64LE,
  reply,
  type Tenant,
  type TxContext,
} from "../../mod.ts";
import { pack, unpack } from "../../lib/tuple.ts";
import { strinc } from "../../lib/bytes.ts";

/** The key counting applications of operation `id`, relative to the tenant. */
export function appliedKey(id: string): Uint8Array {
  return pack(["fx", id]);
}

function mark(ctx: TxContext, id: string): void {
  ctx.tx.add(appliedKey(id), 1);
}

/** Reads every application count of the tenant: operation id → times applied. */
export async function readApplied(tenant: Tenant): Promise<Map<string, number>> {
  const begin = pack(["fx"]);
  const rows = await tenant.transact((tx) => tx.getRange(begin, strinc(begin)), {
    readOnly: true,
  });
  const out = new Map<string, number>();
  for (const row of rows) {
    const [, id] = unpack(row.key) as [string, string];
    out.set(id, Number(readInt64LE(row.value)));
  }
  return out;
}

/** An add of the nemesis workload. */
export interface AddArg {
  id: string;
  by: number;
}

/** A counter: `add` (cast, or call replying the new value) and `read`. */
export const NemCounter = defineServer({
  name: "nem-counter",
  init: () => 0,
  handleCall: {
    add: (a: AddArg, _from, n: number, ctx) => {
      mark(ctx, a.id);
      return reply(n + a.by, n + a.by);
    },
    read: (id: string, _from, n: number, ctx) => {
      mark(ctx, id);
      return reply(n, n);
    },
  },
  handleCast: {
    add: (a: AddArg, n: number, ctx) => {
      mark(ctx, a.id);
      return noreply(n + a.by);
    },
  },
});

/** A register write. */
export interface WriteArg {
  id: string;
  v: string;
}

/** A register compare-and-set. */
export interface CasArg {
  id: string;
  from: string;
  to: string;
}

/** A register: `write` (cast or call), `read`, `cas` (replies whether it swapped). */
export const NemRegister = defineServer({
  name: "nem-register",
  init: () => "",
  handleCall: {
    write: (a: WriteArg, _from, _v: string, ctx) => {
      mark(ctx, a.id);
      return reply("ok", a.v);
    },
    read: (id: string, _from, v: string, ctx) => {
      mark(ctx, id);
      return reply(v, v);
    },
    cas: (a: CasArg, _from, v: string, ctx) => {
      mark(ctx, a.id);
      return v === a.from ? reply(true, a.to) : reply(false, v);
    },
  },
  handleCast: {
    write: (a: WriteArg, _v: string, ctx) => {
      mark(ctx, a.id);
      return noreply(a.v);
    },
  },
});

// ---------------------------------------------------------------------------------------------
// Crash-point sweep

/** State of {@link Sweep}: the ids applied in order, and locked work in progress/done. */
export interface SweepState {
  log: Array<{ id: string }>;
  /** Ids whose lock phase committed (idempotent: a set, as a record of flags). */
  locked: Record<string, true>;
}

/** Where {@link Sweep}'s actions and locked side effects append their lines. */
export const sweepEnv = {
  /** The side-effect file (set by the child from its parameters). */
  file: "",
  /** Called inside `handleLocked` before and after its side effect. */
  point: (_name: "locked-before" | "locked-after", _id: string): void => {},
  /** The last action run (`"a1"` or `"a2"`), for the between-actions hook. */
  lastAction: "",
};

function effect(line: string): void {
  appendFileSync(sweepEnv.file, line + "\n");
}

function actionsFor(id: string) {
  return [
    () => {
      effect(`${id} a1`);
      sweepEnv.lastAction = "a1";
    },
    () => {
      effect(`${id} a2`);
      sweepEnv.lastAction = "a2";
    },
  ];
}

/**
 * The crash-point sweep's server: `step` (cast, or call replying the log length) appends its id
 * and has two actions, each appending a line to the side-effect file; `slow` takes the lock,
 * and `handleLocked` appends a side-effect line (idempotent by its key) before its write-back
 * appends the id (with an action, `done`). For the model's sake, handlers also append a `run`
 * line each time they run: real handlers must be pure; these lines only count the runs.
 */
export const Sweep = defineServer({
  name: "sweep",
  init: (): SweepState => ({ log: [], locked: {} }),
  handleCall: {
    step: (id: string, _from, s: SweepState, ctx) => {
      effect(`${id} run`);
      mark(ctx, id);
      return reply(s.log.length + 1, { ...s, log: [...s.log, { id }] }, actionsFor(id));
    },
    slow: (id: string, _from, s: SweepState, ctx) => {
      effect(`${id} run`);
      mark(ctx, `${id}/lock`);
      return lock({ ...s, locked: { ...s.locked, [id]: true as const } });
    },
  },
  handleCast: {
    step: (id: string, s: SweepState, ctx) => {
      effect(`${id} run`);
      mark(ctx, id);
      return noreply({ ...s, log: [...s.log, { id }] }, actionsFor(id));
    },
    slow: (id: string, s: SweepState, ctx) => {
      effect(`${id} run`);
      mark(ctx, `${id}/lock`);
      return lock({ ...s, locked: { ...s.locked, [id]: true as const } });
    },
  },
  handleLocked: (event, s: SweepState) => {
    const id = event.arg as string;
    effect(`${id} locked-run`);
    sweepEnv.point("locked-before", id);
    effect(`${id} locked-effect`);
    sweepEnv.point("locked-after", id);
    const next = { ...s, log: [...s.log, { id }] };
    return event.kind === "call"
      ? reply(next.log.length, next, [() => effect(`${id} done`)])
      : noreply(next, [() => effect(`${id} done`)]);
  },
});
