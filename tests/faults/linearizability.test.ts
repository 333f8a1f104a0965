import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  checkLinearizable,
  type CounterInput,
  counterModel,
  type Operation,
  type RegisterInput,
  registerModel,
  UndecidedError,
} from "./linearizability.ts";
import { fcParams } from "../_helpers.ts";

type CounterOp = Operation<CounterInput, number>;
type RegisterOp = Operation<RegisterInput, string | boolean>;

const add = (id: string, by: number, call: number, ret: number, output?: number): CounterOp => ({
  id,
  input: { f: "add", by },
  output,
  call,
  ret,
});
const read = (id: string, call: number, ret: number, output: number): CounterOp => ({
  id,
  input: { f: "read" },
  output,
  call,
  ret,
});
const write = (id: string, v: string, call: number, ret: number): RegisterOp => ({
  id,
  input: { f: "write", v },
  output: "ok",
  call,
  ret,
});
const rread = (id: string, call: number, ret: number, output: string): RegisterOp => ({
  id,
  input: { f: "read" },
  output,
  call,
  ret,
});
const cas = (
  id: string,
  from: string,
  to: string,
  call: number,
  ret: number,
  output: boolean,
): RegisterOp => ({ id, input: { f: "cas", from, to }, output, call, ret });

function counter(ops: CounterOp[]) {
  return checkLinearizable(counterModel, ops);
}
function register(ops: RegisterOp[]) {
  return checkLinearizable(registerModel, ops);
}

describe("linearizability checker: counter", () => {
  it("accepts the empty history", () => {
    assert.equal(counter([]).ok, true);
  });

  it("accepts a sequential history and returns its order", () => {
    const v = counter([add("a", 1, 0, 1, 1), add("b", 2, 2, 3, 3), read("r", 4, 5, 3)]);
    assert.deepEqual(v.ok && v.order, ["a", "b", "r"]);
  });

  it("accepts concurrent adds observed in the order opposite to their invocation", () => {
    const v = counter([add("a", 1, 0, 10, 3), add("b", 2, 1, 10, 2)]);
    assert.deepEqual(v.ok && v.order, ["b", "a"]);
  });

  it("rejects a stale read after an acknowledged add", () => {
    const v = counter([add("a", 1, 0, 1, 1), read("r", 2, 3, 0)]);
    assert.equal(v.ok, false);
    assert.match(!v.ok ? v.reason : "", /r \(read -> 0/);
  });

  it("rejects a read of a value no order produces", () => {
    assert.equal(counter([add("a", 2, 0, 5), add("b", 3, 0, 5), read("r", 6, 7, 4)]).ok, false);
  });

  it("rejects reads going back in time (non-monotonic)", () => {
    // The add may take effect anywhere in [0, 10], but once r1 saw it, r2 must too.
    const v = counter([add("a", 1, 0, 10), read("r1", 1, 2, 1), read("r2", 3, 4, 0)]);
    assert.equal(v.ok, false);
  });

  it("rejects a lost update: two concurrent adds both answer 1", () => {
    assert.equal(counter([add("a", 1, 0, 5, 1), add("b", 1, 0, 5, 1)]).ok, false);
  });

  it("rejects an add applied twice", () => {
    assert.equal(counter([add("a", 1, 0, 1, 1), read("r", 2, 3, 2)]).ok, false);
  });

  it("requires a non-optional operation (an acknowledged cast) to take effect by its window's end", () => {
    // A cast with no output, whose window ends at 10: a read after 10 must see it.
    assert.equal(counter([add("c", 2, 0, 10), read("r", 11, 12, 2)]).ok, true);
    assert.equal(counter([add("c", 2, 0, 10), read("r", 11, 12, 0)]).ok, false);
    // ... but a read inside its window may or may not.
    assert.equal(counter([add("c", 2, 0, 10), read("r", 5, 6, 0)]).ok, true);
  });

  it("lets an optional operation (unknown outcome) take effect once or never, not twice", () => {
    const maybe: CounterOp = { ...add("u", 5, 0, 10), optional: true };
    assert.equal(counter([maybe, read("r", 11, 12, 5)]).ok, true);
    assert.equal(counter([maybe, read("r", 11, 12, 0)]).ok, true);
    assert.equal(counter([maybe, read("r", 11, 12, 10)]).ok, false);
    // Not after its window: a read inside saw nothing, one after the window cannot see it.
    assert.equal(counter([maybe, read("r1", 11, 12, 0), read("r2", 13, 14, 5)]).ok, false);
  });

  it("treats operations whose windows touch within the margin as concurrent", () => {
    const ops = [add("a", 1, 0, 10, 1), read("r", 11, 12, 0)];
    assert.equal(checkLinearizable(counterModel, ops).ok, false);
    assert.equal(checkLinearizable(counterModel, ops, { precedenceMargin: 2 }).ok, true);
  });

  it("settles a wide concurrent history quickly thanks to memoization", () => {
    // Twelve concurrent adds of 1 and a read of 13: no order works; without memoization the
    // search would try 12! orders, with it at most 2^12 sets.
    const ops = Array.from({ length: 12 }, (_, i) => add(`a${i}`, 1, 0, 100));
    const v = counter([...ops, read("r", 101, 102, 13)]);
    assert.equal(v.ok, false);
    assert.ok(v.explored < 100_000, `explored ${v.explored}`);
  });

  it("checks a long history with bounded concurrency in near-linear work", () => {
    // 20,000 adds, each overlapping its neighbours, observed in invocation order.
    const ops = Array.from({ length: 20_000 }, (_, i) => add(`a${i}`, 1, i, i + 2.5, i + 1));
    const v = counter([...ops, read("r", 30_000, 30_001, 20_000)]);
    assert.equal(v.ok, true);
    assert.ok(v.explored < 200_000, `explored ${v.explored}`);
  });

  it("says it cannot decide when the budget runs out", () => {
    const ops = Array.from({ length: 12 }, (_, i) => add(`a${i}`, 1, 0, 100));
    assert.throws(
      () => checkLinearizable(counterModel, [...ops, read("r", 101, 102, 13)], { budget: 100 }),
      UndecidedError,
    );
  });
});

describe("linearizability checker: register", () => {
  it("accepts concurrent writes read in either order while they overlap", () => {
    const ops = [write("a", "x", 0, 10), write("b", "y", 0, 10), rread("r1", 1, 2, "y")];
    assert.equal(register(ops).ok, true);
  });

  it("rejects reads that flip between two completed writes", () => {
    const ops = [
      write("a", "x", 0, 10),
      write("b", "y", 0, 10),
      rread("r1", 11, 12, "x"),
      rread("r2", 13, 14, "y"),
      rread("r3", 15, 16, "x"),
    ];
    assert.equal(register(ops).ok, false);
  });

  it("rejects a read of a value never written", () => {
    assert.equal(register([write("a", "x", 0, 1), rread("r", 2, 3, "z")]).ok, false);
  });

  it("rejects two compare-and-sets both succeeding from the same value", () => {
    const ops = [
      write("w", "x", 0, 1),
      cas("c1", "x", "y", 2, 10, true),
      cas("c2", "x", "z", 2, 10, true),
    ];
    assert.equal(register(ops).ok, false);
  });

  it("accepts a failed compare-and-set that a concurrent write explains", () => {
    const ops = [
      write("w", "x", 0, 1),
      write("w2", "q", 2, 10),
      cas("c", "x", "y", 2, 10, false),
      rread("r", 11, 12, "q"),
    ];
    assert.equal(register(ops).ok, true);
  });
});

describe("linearizability checker: generated histories", () => {
  /**
   * Simulates clients running operations on an atomic counter: each operation takes effect at
   * one instant strictly inside its window, so the history is linearizable by construction.
   */
  function simulate(
    steps: Array<{ by: number; read: boolean; start: number; len: number; at: number }>,
  ) {
    const ops = steps.map((s, i) => {
      const call = s.start;
      const ret = s.start + s.len + 1;
      const effect = call + (ret - call) * s.at;
      return { i, s, call, ret, effect };
    });
    const byEffect = [...ops].sort((a, b) => a.effect - b.effect);
    let n = 0;
    const out: CounterOp[] = [];
    for (const o of byEffect) {
      if (o.s.read) out.push(read(`o${o.i}`, o.call, o.ret, n));
      else {
        n += o.s.by;
        out.push(add(`o${o.i}`, o.s.by, o.call, o.ret, n));
      }
    }
    return out;
  }
  const steps = fc.array(
    fc.record({
      by: fc.integer({ min: 1, max: 3 }),
      read: fc.boolean(),
      start: fc.integer({ min: 0, max: 60 }),
      len: fc.integer({ min: 0, max: 15 }),
      at: fc.double({ min: 0.01, max: 0.99, noNaN: true }),
    }),
    { maxLength: 25 },
  );

  it("accepts every history an atomic counter produces", () => {
    fc.assert(fc.property(steps, (s) => counter(simulate(s)).ok), fcParams(200));
  });

  it("rejects such a history once a read reports more than was ever added", () => {
    fc.assert(
      fc.property(steps.filter((s) => s.some((x) => x.read)), (s) => {
        const ops = simulate(s);
        const total = ops.reduce((sum, o) => sum + (o.input.f === "add" ? o.input.by : 0), 0);
        const i = ops.findIndex((o) => o.input.f === "read");
        ops[i] = { ...ops[i]!, output: total + 1 };
        return !counter(ops).ok;
      }),
      fcParams(200),
    );
  });
});
