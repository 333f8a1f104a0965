/**
 * A linearizability checker in the style of Wing & Gong, with Lowe's memoization (as in Knossos
 * and Porcupine): a depth-first search over the orders in which a history's operations could
 * have taken effect, respecting real-time precedence (an operation that returned before another
 * was invoked takes effect before it), pruning configurations (set of operations done, model
 * state) already explored.
 *
 * Operations carry a time window `[call, ret]`: they took effect at one instant inside it. An
 * operation whose outcome is unknown (its client died, or it timed out) is `optional`: it took
 * effect inside its window or never, and any output is accepted.
 *
 * Two models: a counter (`add` returning the new value or nothing, `read`) and a register
 * (`write`, `read`, `cas`).
 */

/** A sequential specification: the state after an operation, or `undefined` if illegal. */
export interface Model<S, I, O> {
  /** Name, for messages. */
  readonly name: string;
  /** The initial state. */
  init(): S;
  /**
   * Applies `input` to `state`. `output` is what the client observed, or `undefined` when it
   * observed nothing (a cast, an unknown outcome): then any output is accepted.
   */
  step(state: S, input: I, output: O | undefined): S | undefined;
  /** A string identifying `state`, for memoization. */
  key(state: S): string;
  /** Describes an operation, for messages. */
  describe(input: I, output: O | undefined): string;
}

/** One operation of a history, with the window in which it took effect. */
export interface Operation<I, O> {
  /** Identifies the operation in messages. */
  id: string;
  /** What was asked. */
  input: I;
  /** What was observed (`undefined`: nothing, or unknown). */
  output?: O;
  /** When it was invoked. */
  call: number;
  /** When it returned (or the latest time it could have taken effect). */
  ret: number;
  /** It may not have taken effect at all (unknown outcome). */
  optional?: boolean;
}

/** The verdict of {@link checkLinearizable}. */
export type Verdict =
  | { ok: true; order: string[]; explored: number }
  | { ok: false; explored: number; reason: string };

/** Thrown when the search exceeds its budget: neither proved nor refuted. */
export class UndecidedError extends Error {}

interface Entry {
  op: number;
  kind: "call" | "ret";
  time: number;
  match: Entry | undefined;
  prev: Entry | undefined;
  next: Entry | undefined;
}

/** A set of operation indices as a bit array, with a cheap string key for memoization. */
class Bits {
  readonly words: Uint32Array;
  constructor(n: number) {
    this.words = new Uint32Array(Math.ceil(n / 32) || 1);
  }
  set(i: number): void {
    this.words[i >>> 5]! |= 1 << (i & 31);
  }
  clear(i: number): void {
    this.words[i >>> 5]! &= ~(1 << (i & 31));
  }
  /**
   * Identifies the set. Operations take effect roughly in history order, so a set is mostly a
   * run of full words, a short ragged window and then zero words: only the window is spelled
   * out (keys stay short and memory bounded on long histories).
   */
  key(): string {
    const w = this.words;
    let lo = 0;
    while (lo < w.length && w[lo] === 0xffffffff) lo++;
    let hi = w.length;
    while (hi > lo && w[hi - 1] === 0) hi--;
    const window = new Uint16Array(w.buffer, lo * 4, (hi - lo) * 2);
    return lo.toString(36) + ":" + String.fromCharCode(...window);
  }
}

/**
 * Decides whether `ops` is linearizable with respect to `model`. `precedenceMargin` widens
 * every window's end when judging precedence (`a` precedes `b` only if
 * `a.ret + margin < b.call`), for clocks of different processes.
 */
export function checkLinearizable<S, I, O>(
  model: Model<S, I, O>,
  ops: readonly Operation<I, O>[],
  options: { precedenceMargin?: number; budget?: number } = {},
): Verdict {
  const margin = options.precedenceMargin ?? 0;
  const budget = options.budget ?? 5_000_000;
  // Entries in time order; at equal times calls come first, so such operations are concurrent.
  const entries: Entry[] = [];
  ops.forEach((op, i) => {
    if (!(op.call <= op.ret)) throw new Error(`operation ${op.id}: call after return`);
    const call: Entry = {
      op: i,
      kind: "call",
      time: op.call,
      match: undefined,
      prev: undefined,
      next: undefined,
    };
    const ret: Entry = {
      op: i,
      kind: "ret",
      time: op.ret + margin,
      match: undefined,
      prev: undefined,
      next: undefined,
    };
    call.match = ret;
    ret.match = call;
    entries.push(call, ret);
  });
  entries.sort((a, b) =>
    a.time - b.time || (a.kind === b.kind ? a.op - b.op : a.kind === "call" ? -1 : 1)
  );
  const head: Entry = {
    op: -1,
    kind: "call",
    time: -Infinity,
    match: undefined,
    prev: undefined,
    next: undefined,
  };
  let last = head;
  for (const e of entries) {
    e.prev = last;
    last.next = e;
    last = e;
  }
  const lift = (e: Entry) => {
    e.prev!.next = e.next;
    if (e.next) e.next.prev = e.prev;
    const m = e.match!;
    m.prev!.next = m.next;
    if (m.next) m.next.prev = m.prev;
  };
  const unlift = (e: Entry) => {
    const m = e.match!;
    m.prev!.next = m;
    if (m.next) m.next.prev = m;
    e.prev!.next = e;
    if (e.next) e.next.prev = e;
  };

  const done = new Bits(ops.length);
  const seen = new Set<string>();
  // Choice points: the call entry lifted, the state before it, and whether it was a skip.
  const stack: Array<{ entry: Entry; state: S; skipped: boolean }> = [];
  let state = model.init();
  let entry = head.next;
  let explored = 0;
  // The deepest point reached, to explain a refutation.
  let deepest = { depth: -1, stuck: -1, state: "" };

  const backtrack = (): boolean => {
    for (;;) {
      const top = stack.pop();
      if (top === undefined) return false;
      state = top.state;
      done.clear(top.entry.op);
      unlift(top.entry);
      if (!top.skipped) {
        entry = top.entry.next;
        return true;
      }
      // A skip was forced at the operation's return: no alternative there; unwind further.
    }
  };

  while (head.next !== undefined) {
    if (++explored > budget) {
      throw new UndecidedError(
        `${model.name}: no verdict after exploring ${budget} configurations (${ops.length} operations)`,
      );
    }
    if (entry === undefined) throw new Error("unreachable: ran off the entry list");
    const op = ops[entry.op]!;
    if (entry.kind === "call") {
      const next = model.step(state, op.input, op.output);
      if (next !== undefined) {
        done.set(entry.op);
        const key = done.key() + "\u0000" + model.key(next);
        if (!seen.has(key)) {
          seen.add(key);
          stack.push({ entry, state, skipped: false });
          state = next;
          lift(entry);
          entry = head.next;
          continue;
        }
        done.clear(entry.op);
      }
      entry = entry.next;
      continue;
    }
    // The return of an operation not yet linearized: it must have taken effect by now.
    const callEntry = entry.match!;
    if (op.optional) {
      // It may never have taken effect: drop it, once per configuration.
      done.set(entry.op);
      const key = done.key() + "\u0000" + model.key(state);
      if (!seen.has(key)) {
        seen.add(key);
        stack.push({ entry: callEntry, state, skipped: true });
        lift(callEntry);
        entry = head.next;
        continue;
      }
      done.clear(entry.op);
    }
    if (stack.length > deepest.depth) {
      deepest = { depth: stack.length, stuck: entry.op, state: model.key(state) };
    }
    if (!backtrack()) {
      const stuck = ops[deepest.stuck]!;
      return {
        ok: false,
        explored,
        reason: `${model.name}: not linearizable. Deepest prefix: ${deepest.depth} operations, ` +
          `then no order lets ${stuck.id} (${model.describe(stuck.input, stuck.output)}, ` +
          `window ${fmt(stuck.call)}..${fmt(stuck.ret)}) take effect by its return, ` +
          `from state ${deepest.state}`,
      };
    }
  }
  const order: string[] = [];
  for (const s of stack) if (!s.skipped) order.push(ops[s.entry.op]!.id);
  return { ok: true, order, explored };
}

function fmt(t: number): string {
  return Number.isFinite(t) ? t.toFixed(1) : String(t);
}

// ---------------------------------------------------------------------------------------------
// Models

/** Counter inputs: add `by` (the output, if observed, is the new value) or read. */
export type CounterInput = { f: "add"; by: number } | { f: "read" };

/** A counter starting at 0. */
export const counterModel: Model<number, CounterInput, number> = {
  name: "counter",
  init: () => 0,
  step(n, input, output) {
    const next = input.f === "add" ? n + input.by : n;
    if (output !== undefined && output !== next) return undefined;
    return next;
  },
  key: (n) => String(n),
  describe: (input, output) =>
    (input.f === "add" ? `add ${input.by}` : "read") +
    (output === undefined ? "" : ` -> ${output}`),
};

/** Register inputs: write `v`, read, or compare-and-set `from` to `to` (output: swapped?). */
export type RegisterInput =
  | { f: "write"; v: string }
  | { f: "read" }
  | { f: "cas"; from: string; to: string };

/** A register holding `""` at first. */
export const registerModel: Model<string, RegisterInput, string | boolean> = {
  name: "register",
  init: () => "",
  step(v, input, output) {
    switch (input.f) {
      case "write":
        return output === undefined || output === "ok" ? input.v : undefined;
      case "read":
        return output === undefined || output === v ? v : undefined;
      case "cas": {
        const swapped = v === input.from;
        if (output !== undefined && output !== swapped) return undefined;
        return swapped ? input.to : v;
      }
    }
  },
  key: (v) => v,
  describe: (input, output) =>
    (input.f === "write"
      ? `write ${input.v}`
      : input.f === "read"
      ? "read"
      : `cas ${input.from}->${input.to}`) + (output === undefined ? "" : ` -> ${output}`),
};
