/**
 * Model-based test of the state codec: random sequences of edits on nested records and
 * collections (set, delete, insert anywhere, move, reorder, remove, change kind, mutate a
 * Map/Set/Date/bytes in place, reload through a codec without caches, a failed transaction),
 * each written as a diff; after every write, a fresh read must equal the in-memory state and
 * the stored layout must have exactly the keys a fresh write of that state would have.
 *
 * Replay a failure with the seed fast-check prints: `FC_SEED=<seed> deno test -A tests/codec/model.test.ts`.
 */

// deno-lint-ignore-file no-explicit-any
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { createStateCodec } from "../../lib/codec/state.ts";
import type { StateCodec } from "../../lib/codec/types.ts";
import { fcParams } from "../_helpers.ts";
import { counting, difference, openBench, zeroCounts } from "./_support.ts";

const MAX_VALUE = 64; // small, so that values get chunked
const NAMES = ["a", "b", "c", "long-name-" + "n".repeat(20), "", "__proto__"];
const IDS = ["p", "q", "r", "s", "t", "u", "v", "w"];

/** Leaves and small structures of every supported kind. */
const leaf: fc.Arbitrary<() => unknown> = fc.oneof(
  fc.constantFrom<() => unknown>(
    () => undefined,
    () => null,
    () => -0,
    () => NaN,
    () => 2n ** 70n,
    () => -5n,
    () => new Date(1_234_567),
    () => new Map<unknown, unknown>([[1, { x: [1] }], ["k", new Set([1n])]]),
    () => new Set(["a", 1]),
    () => Uint8Array.of(1, 2, 3),
    () => [],
    () => [1, [2, { z: -0 }]],
    () => ({}),
  ),
  fc.oneof(fc.double(), fc.integer(), fc.string({ maxLength: 200 }), fc.boolean()).map((v) => () =>
    v
  ),
);

type Gen = fc.Arbitrary<() => unknown>;
const value: Gen = fc.letrec<{ v: () => unknown }>((tie) => ({
  v: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    leaf,
    fc.dictionary(fc.constantFrom(...NAMES), tie("v"), { maxKeys: 3 }).map((d) => () =>
      Object.fromEntries(Object.entries(d).map(([k, f]) => [k, f()]))
    ),
    fc.uniqueArray(fc.constantFrom(...IDS), { minLength: 1, maxLength: 4 }).chain((ids) =>
      fc.tuple(...ids.map(() => tie("v"))).map((vs) => () =>
        ids.map((id, i) => ({ id, data: vs[i]!() }))
      )
    ),
  ),
})).v;

/** One edit, interpreted against the current state by {@link applyEdit}. */
interface Edit {
  target: number;
  op: number;
  a: number;
  b: number;
  value: () => unknown;
}

const edit: fc.Arbitrary<Edit> = fc.record({
  target: fc.nat(),
  op: fc.nat(),
  a: fc.nat(),
  b: fc.nat(),
  value,
});

/** One write: a few edits, or a special step. */
type Step =
  | { kind: "edits"; edits: Edit[]; freezeFirst: boolean }
  | { kind: "reload" }
  | { kind: "failed"; edits: Edit[]; freezeFirst: boolean }
  | { kind: "mutate"; target: number; a: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    arbitrary: fc.tuple(fc.array(edit, { minLength: 1, maxLength: 3 }), fc.boolean()).map((
      [edits, freezeFirst],
    ) => ({ kind: "edits" as const, edits, freezeFirst })),
    weight: 8,
  },
  { arbitrary: fc.constant({ kind: "reload" as const }), weight: 1 },
  {
    arbitrary: fc.tuple(fc.array(edit, { minLength: 1, maxLength: 2 }), fc.boolean()).map((
      [edits, freezeFirst],
    ) => ({ kind: "failed" as const, edits, freezeFirst })),
    weight: 1,
  },
  {
    arbitrary: fc.record({ kind: fc.constant("mutate" as const), target: fc.nat(), a: fc.nat() }),
    weight: 2,
  },
);

type PathStep = string | number;

function isPlain(x: unknown): x is Record<string, unknown> {
  if (typeof x !== "object" || x === null) return false;
  const p = Object.getPrototypeOf(x);
  return p === Object.prototype || p === null;
}

function isCollection(x: unknown): x is Array<Record<string, unknown> & { id: string }> {
  return Array.isArray(x) && x.length > 0 && x.every((e) => isPlain(e) && typeof e.id === "string");
}

/** Every record and collection in the state, with its path (depth first). */
function containers(state: unknown): Array<{ path: PathStep[]; node: unknown }> {
  const out: Array<{ path: PathStep[]; node: unknown }> = [];
  const walk = (x: unknown, path: PathStep[]) => {
    if (isPlain(x)) {
      out.push({ path, node: x });
      for (const k of Object.keys(x)) walk(x[k], [...path, k]);
    } else if (isCollection(x)) {
      out.push({ path, node: x });
      x.forEach((item, i) => walk(item, [...path, i]));
    }
  };
  walk(state, []);
  return out;
}

/** Every Map, Set, Date and Uint8Array in the state. */
function mutableLeaves(state: unknown): unknown[] {
  const out: unknown[] = [];
  const walk = (x: unknown) => {
    if (x instanceof Map || x instanceof Set || x instanceof Date || x instanceof Uint8Array) {
      out.push(x);
      if (x instanceof Map) { for (const [k, v] of x) walk(k), walk(v); }
      if (x instanceof Set) { for (const v of x) walk(v); }
    } else if (Array.isArray(x)) {
      x.forEach(walk);
    } else if (isPlain(x)) Object.values(x).forEach(walk);
  };
  walk(state);
  return out;
}

/** A copy of `state` with the node at `path` replaced by `fn(node)` (copy on write). */
function updateAt(state: unknown, path: PathStep[], fn: (node: any) => unknown): unknown {
  if (path.length === 0) return fn(state);
  const [head, ...rest] = path;
  if (Array.isArray(state)) {
    const copy = [...state];
    copy[head as number] = updateAt(state[head as number], rest, fn);
    return copy;
  }
  const copy = { ...(state as Record<string, unknown>) };
  Object.defineProperty(copy, head as string, {
    value: updateAt((state as Record<string, unknown>)[head as string], rest, fn),
    enumerable: true,
    writable: true,
    configurable: true,
  });
  return copy;
}

function withProp(obj: Record<string, unknown>, k: string, v: unknown): Record<string, unknown> {
  const copy = { ...obj };
  Object.defineProperty(copy, k, {
    value: v,
    enumerable: true,
    writable: true,
    configurable: true,
  });
  return copy;
}

function applyEdit(state: unknown, e: Edit): unknown {
  const all = containers(state);
  if (all.length === 0) return { a: e.value() }; // the root is a value: make it a record
  const { path, node } = all[e.target % all.length]!;
  if (isPlain(node)) {
    const keys = Object.keys(node);
    const k = NAMES[e.a % NAMES.length]!;
    switch (e.op % 4) {
      case 0:
      case 1: // set (a new value, maybe of another kind)
        return updateAt(state, path, (n) => withProp(n, k, e.value()));
      case 2: // delete (never the id of an item)
        if (keys.length === 0) return state;
        return updateAt(state, path, (n) => {
          const victim = keys[e.b % keys.length]!;
          if (victim === "id" && typeof n.id === "string") return n;
          const copy = { ...n };
          delete copy[victim];
          return copy;
        });
      default: // the record becomes a collection or a value
        return updateAt(
          state,
          path,
          () => (e.b % 2 === 0 ? [{ id: "p", data: e.value() }] : e.value()),
        );
    }
  }
  const list = node as Array<Record<string, unknown> & { id: string }>;
  const n = list.length;
  const unused = IDS.filter((id) => !list.some((x) => x.id === id));
  switch (e.op % 6) {
    case 0: { // insert anywhere
      if (unused.length === 0) return state;
      const item = { id: unused[e.a % unused.length]!, data: e.value() };
      return updateAt(state, path, (l) => l.toSpliced(e.b % (n + 1), 0, item));
    }
    case 1: // remove
      return updateAt(state, path, (l) => l.toSpliced(e.a % n, 1));
    case 2: { // move
      return updateAt(state, path, (l) => {
        const from = e.a % n;
        const moved = l.toSpliced(from, 1);
        return moved.toSpliced(e.b % n, 0, l[from]);
      });
    }
    case 3: { // reorder (a seeded shuffle), maybe with an insert and a removal
      return updateAt(state, path, (l) => {
        let seed = e.a + 1;
        const out = [...l];
        for (let i = out.length - 1; i > 0; i--) {
          seed = (seed * 1103515245 + 12345) % 2147483648;
          const j = seed % (i + 1);
          [out[i], out[j]] = [out[j], out[i]];
        }
        if (e.b % 3 === 1 && unused.length > 0) {
          out.splice(e.b % (n + 1), 0, { id: unused[0]!, data: 1 });
        }
        if (e.b % 3 === 2 && out.length > 1) out.splice(e.b % out.length, 1);
        return out;
      });
    }
    case 4: { // change one item's content
      return updateAt(state, [...path, e.a % n], (item) => withProp(item, "data", e.value()));
    }
    default: // the collection becomes a value or a record
      return updateAt(state, path, () => (e.b % 2 === 0 ? { was: "collection" } : e.value()));
  }
}

/** Asserts that every plain object and array in `x` is frozen. */
function assertDeepFrozen(x: unknown, path = "state", arrayLimit = Infinity): void {
  if (Array.isArray(x) || isPlain(x)) {
    // Arrays freeze leaves unfrozen may since have shrunk below the limit: exempt them all.
    const exempt = Array.isArray(x) && arrayLimit !== Infinity;
    assert.ok(exempt || Object.isFrozen(x), `${path} is frozen`);
    for (const [k, v] of Object.entries(x)) assertDeepFrozen(v, `${path}.${k}`, arrayLimit);
  }
}

async function freshRowCount(state: unknown): Promise<number> {
  const b = await openBench(MAX_VALUE);
  await b.put(state);
  const n = (await b.rows()).length;
  await b.close();
  return n;
}

describe("state codec model", () => {
  for (const limit of [undefined, 0]) {
    it(
      limit === undefined
        ? "reads back every state of random edit histories, with no stale key"
        : "does the same with every collection left unfrozen (freezeArrayLimit 0)",
      { timeout: 120_000 },
      async () => {
        await fc.assert(
          fc.asyncProperty(value, fc.array(step, { maxLength: 20 }), async (initial, steps) => {
            const b = await openBench(MAX_VALUE, limit);
            let codec: StateCodec = b.codec;
            try {
              let state: unknown = codec.freeze({ root: initial() });
              await write(state);
              for (const s of steps) {
                if (s.kind === "reload") {
                  codec = createStateCodec({ maxValueSize: MAX_VALUE, freezeArrayLimit: limit });
                  const read = await b.tenant.transact((tx) => codec.read(tx, b.prefix));
                  assert.ok(read.found);
                  state = codec.freeze(read.state);
                  b.prev = read;
                  continue;
                }
                if (s.kind === "mutate") {
                  const leaves = mutableLeaves(state);
                  if (leaves.length === 0) continue;
                  const x = leaves[s.target % leaves.length];
                  if (x instanceof Map) x.set(`k${s.a}`, s.a);
                  else if (x instanceof Set) x.add(s.a);
                  else if (x instanceof Date) x.setTime(s.a);
                  else if (x instanceof Uint8Array && x.length > 0) x[s.a % x.length] = s.a % 256;
                  await write(state);
                  continue;
                }
                let next = state;
                for (const e of s.edits) next = applyEdit(next, e);
                // The runtime may freeze a state before or after writing it (after is cheaper:
                // write leaves hints for freeze); both must work.
                if (s.freezeFirst) next = codec.freeze(next);
                if (s.kind === "failed") {
                  // An attempt that writes, then fails: nothing commits, and the retry (the
                  // same write again) must still write everything.
                  await assert.rejects(
                    b.tenant.transact((tx) => {
                      codec.write(tx, b.prefix, b.prev, next);
                      throw new Error("attempt failed");
                    }),
                    /attempt failed/,
                  );
                }
                state = next;
                await write(state);
                codec.freeze(state);
                assertDeepFrozen(state, "state", limit);
              }
            } finally {
              await b.close();
            }

            async function write(state: unknown) {
              const counts = zeroCounts();
              await b.tenant.transact((tx) =>
                codec.write(counting(tx, counts), b.prefix, b.prev, state)
              );
              b.prev = { found: true, state };
              const read = await b.get();
              assert.ok(read.found);
              const diff = difference(state, read.state);
              assert.equal(diff, undefined, `read back differs: ${diff}`);
              assert.equal(
                (await b.rows()).length,
                await freshRowCount(state),
                "no stale or missing key",
              );
              // Writing it again writes nothing.
              const again = zeroCounts();
              await b.tenant.transact((tx) =>
                codec.write(counting(tx, again), b.prefix, b.prev, state)
              );
              assert.deepEqual(
                again,
                zeroCounts(),
                `an identical state writes nothing: ${
                  JSON.stringify(state, (_k, v) =>
                    typeof v === "bigint"
                      ? `${v}n`
                      : v instanceof Map
                      ? [...v]
                      : v instanceof Set
                      ? [...v]
                      : v)
                }`,
              );
            }
          }),
          fcParams(150),
        );
      },
    );
  }
});

describe("collections left unfrozen (freezeArrayLimit)", () => {
  it("stay unfrozen, have frozen items, and are diffed by what changed", async () => {
    const b = await openBench(MAX_VALUE, 2);
    try {
      const items = Array.from({ length: 5 }, (_, i) => ({ id: `i${i}`, n: i }));
      const s1 = { items };
      await b.put(s1);
      b.codec.freeze(s1);
      assert.equal(Object.isFrozen(s1.items), false, "a long collection is left unfrozen");
      assert.ok(Object.isFrozen(s1.items[0]) && Object.isFrozen(s1), "its items and parents are");
      const s2 = {
        items: [...s1.items.slice(0, 2), { ...s1.items[2]!, n: 99 }, ...s1.items.slice(3)],
      };
      const { counts } = await b.put(s2);
      assert.ok(counts.sets <= 2, `one changed item writes little (${counts.sets} sets)`);
      b.codec.freeze(s2);
      s2.items.reverse(); // in place: detected through the copy the codec keeps
      await b.put(s2);
      const read = await b.get();
      assert.ok(read.found);
      assert.deepEqual((read.state as typeof s2).items.map((x) => x.id), [
        "i4",
        "i3",
        "i2",
        "i1",
        "i0",
      ]);
      const { counts: again } = await b.put(s2);
      assert.equal(
        again.sets + again.clears + again.clearRanges,
        0,
        "an identical state writes nothing",
      );
    } finally {
      await b.close();
    }
  });

  it("leave other arrays frozen values, and freeze what an untouched collection gains in place", async () => {
    const b = await openBench(MAX_VALUE, 2);
    try {
      const s1 = {
        items: Array.from({ length: 5 }, (_, i) => ({ id: `i${i}`, n: i })),
        nums: [1, 2, 3, 4, 5],
        n: 0,
      };
      await b.put(s1);
      b.codec.freeze(s1);
      // Only collections stay unfrozen: a long array of numbers is an immutable value, so
      // writes need not encode it again to learn whether it changed.
      assert.ok(Object.isFrozen(s1.nums));
      const codec = b.codec as unknown as { isMutable(x: unknown): boolean };
      assert.equal(codec.isMutable(s1.nums), false, "a frozen array is no mutable container");
      assert.equal(codec.isMutable(s1.items), true, "an unfrozen collection is one");
      // A write where the collection is untouched, then one after an item was pushed in place
      // before any freeze: the pushed item must still be frozen by the next freeze.
      const s2 = { ...s1, n: 1 };
      const { counts } = await b.put(s2);
      assert.deepEqual([counts.sets, counts.clears, counts.clearRanges], [1, 0, 0]);
      const pushed = { id: "i5", n: 5 };
      s2.items.push(pushed);
      await b.put(s2);
      b.codec.freeze(s2);
      assert.ok(Object.isFrozen(pushed), "the item pushed in place is frozen");
      const read = await b.get();
      assert.ok(read.found);
      assert.equal(difference(s2, read.state), undefined);
    } finally {
      await b.close();
    }
  });
});
