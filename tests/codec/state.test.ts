// deno-lint-ignore-file no-explicit-any
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { CodecError, openMemoryBackend, openTenant, ValidationError } from "../../mod.ts";
import { concatBytes, strinc } from "../../lib/bytes.ts";
import { createStateCodec, KEY_BUDGET_BYTES } from "../../lib/codec/state.ts";
import { MAX_NESTING } from "../../lib/codec/value.ts";
import { pack } from "../../lib/tuple.ts";
import { counting, difference, openBench, zeroCounts } from "./_support.ts";

/** Asserts that what is stored reads back (with a codec without caches) as `expected`. */
async function assertStored(bench: Awaited<ReturnType<typeof openBench>>, expected: unknown) {
  const read = await bench.get();
  assert.ok(read.found, "a state is stored");
  assert.equal(difference(expected, read.state), undefined);
}

/** Row count of `state` written fresh (the layout a diff must end up with, key for key). */
async function freshRowCount(state: unknown, maxValueSize = 100_000): Promise<number> {
  const b = await openBench(maxValueSize);
  await b.put(state);
  const n = (await b.rows()).length;
  await b.close();
  return n;
}

/** Writes each state in turn (as diffs), checking after each what a fresh codec reads. */
async function walk(states: unknown[], maxValueSize = 100_000) {
  const b = await openBench(maxValueSize);
  for (const [i, s] of states.entries()) {
    await b.put(b.codec.freeze(s));
    const read = await b.get();
    assert.ok(read.found, `state ${i} is stored`);
    assert.equal(difference(s, read.state), undefined, `state ${i}`);
    // The diff leaves exactly the rows of a fresh write: nothing lost, nothing left over.
    assert.equal((await b.rows()).length, await freshRowCount(s, maxValueSize), `state ${i}`);
  }
  // A codec without caches diffs from what it read, back to the first state.
  const codec = createStateCodec({ maxValueSize });
  const stored = await b.tenant.transact((tx) => codec.read(tx, b.prefix));
  await b.tenant.transact((tx) => codec.write(tx, b.prefix, stored, states[0]));
  assert.equal(difference(states[0], (await b.get() as any).state), undefined, "back to 0");
  assert.equal((await b.rows()).length, await freshRowCount(states[0], maxValueSize));
  await b.close();
}

describe("createStateCodec", () => {
  it("validates its options, naming the field", () => {
    assert.throws(
      () => createStateCodec({ maxValueSize: 10 }),
      (e) => e instanceof ValidationError && /options\.maxValueSize/.test(e.message),
    );
    assert.throws(
      () => createStateCodec({ maxValueSize: 1000, extra: 1 } as never),
      (e) => e instanceof ValidationError && /options\.extra/.test(e.message),
    );
  });
});

describe("state codec: reads and writes", () => {
  it("reports nothing stored under an empty prefix", async () => {
    const b = await openBench();
    assert.deepEqual(await b.get(), { found: false });
    await b.close();
  });

  it("stores records one key per property, recursively", async () => {
    const b = await openBench();
    const { stats } = await b.put(b.codec.freeze({ a: 1, b: { c: "x", d: { e: null } } }));
    // format key, root record, a, b record, c, d record, e
    assert.equal(stats.keysWritten, 7);
    assert.equal((await b.rows()).length, 7);
    await assertStored(b, { a: 1, b: { c: "x", d: { e: null } } });
    await b.close();
  });

  it("writes a change between 0 and -0, at the root and in a record", async () => {
    const b = await openBench();
    for (const s of [0, -0, { n: -0 }, { n: 0 }, { n: -0 }, 0, -0]) {
      await b.put(b.codec.freeze(s));
      await assertStored(b, s);
    }
    await b.close();
  });

  it("writes nothing for an identical state, the same objects or equal copies", async () => {
    const b = await openBench();
    const make = () => ({
      n: 1,
      list: [1, 2, 3],
      items: [{ id: "a", at: new Date(5), tags: new Set(["x"]) }, {
        id: "b",
        m: new Map([[1, 2]]),
      }],
      bytes: Uint8Array.of(1, 2),
      deep: { deeper: { big: 2n ** 80n, neg: -0 } },
    });
    const s = b.codec.freeze(make());
    await b.put(s);
    const same = await b.put(s);
    assert.deepEqual(same.stats, { keysWritten: 0, keysCleared: 0, bytesWritten: 0 });
    assert.deepEqual(same.counts, zeroCounts());
    const copy = await b.put(b.codec.freeze(make()));
    assert.deepEqual(copy.counts, zeroCounts());
    const again = await b.put(b.codec.freeze(make()));
    assert.deepEqual(again.counts, zeroCounts());
    await assertStored(b, make());
    await b.close();
  });

  it("rewrites a subtree whose kind changes, leaving no key of the old one", async () => {
    const b = await openBench();
    const kinds = [
      { x: { a: 1, b: { c: 2 } } }, // record
      { x: [{ id: "p", v: 1 }, { id: "q", v: { w: 2 } }] }, // collection
      { x: "value" }, // value
      { x: [] }, // an empty array is a value
      { x: [{ id: "r" }] }, // collection again
      { x: { a: [{ id: "s" }] } }, // record holding a collection
      { x: [1, 2] }, // value array
      { x: [{ id: "t" }, { noId: 1 }] }, // not every item has an id: a value
      { x: [{ id: "t" }, { id: 5 }] }, // non-string id: a value
      { x: new Map([["a", 1]]) },
      { x: { a: 1 } },
    ];
    for (const s of kinds) {
      const state = b.codec.freeze(s);
      const { counts } = await b.put(state);
      assert.ok(counts.sets > 0, `writes something for ${JSON.stringify(s)}`);
      await assertStored(b, s);
      assert.equal((await b.rows()).length, await freshRowCount(s));
    }
    await b.close();
  });

  it("clears removed properties and items, subtrees included", async () => {
    const b = await openBench();
    const s1 = b.codec.freeze({
      keep: 1,
      gone: { deep: { deeper: [{ id: "a", x: { y: 1 } }] } },
      items: [{ id: "a", sub: { z: [{ id: "in", q: 1 }] } }, { id: "b" }, { id: "c" }],
    });
    await b.put(s1);
    const s2 = b.codec.freeze({ keep: 1, items: [s1.items[1]] });
    const { stats } = await b.put(s2);
    assert.equal(stats.keysWritten, 0);
    assert.equal(stats.keysCleared, 5); // gone, 2 order keys, 2 item subtrees
    await assertStored(b, s2);
    assert.equal((await b.rows()).length, await freshRowCount(s2));
    await b.close();
  });

  it("keeps a record's properties, __proto__ and odd names included", async () => {
    const b = await openBench();
    const s = JSON.parse('{"__proto__": {"a": 1}, "": 2, "a\\u0000b": 3, "ü": 4, "1": 5}');
    await b.put(b.codec.freeze(s));
    const read = await b.get();
    assert.ok(read.found);
    assert.equal(Object.getPrototypeOf(read.state), Object.prototype);
    assert.ok(Object.hasOwn(read.state as object, "__proto__"));
    assert.equal(difference(s, read.state), undefined);
    await b.close();
  });

  it("stores any value at the root", async () => {
    for (const s of [undefined, null, 0, -0, NaN, "s", 1n, new Map([[1, 1]]), [], [{ id: "a" }]]) {
      const b = await openBench();
      await b.put(s);
      await assertStored(b, s);
      await b.close();
    }
  });

  it("chunks values larger than the value limit, and drops chunks no longer needed", async () => {
    const b = await openBench(100);
    const sizes = [10, 1000, 250, 5000, 10, 99, 100, 101, 0];
    for (const n of sizes) {
      const s = b.codec.freeze({ blob: "z".repeat(n), n });
      const { stats } = await b.put(s);
      assert.ok(stats.keysWritten >= 1);
      await assertStored(b, s);
      const rows = await b.rows();
      assert.equal(rows.length, await freshRowCount(s, 100), `rows after a ${n}-byte value`);
      for (const [, value] of rows) assert.ok(value.length / 2 <= 100, "every value fits");
    }
    await b.close();
  });

  it("clear removes the whole state", async () => {
    const b = await openBench();
    await b.put(b.codec.freeze({ a: [{ id: "x" }] }));
    await b.tenant.transact((tx) => b.codec.clear(tx, b.prefix));
    assert.deepEqual(await b.get(), { found: false });
    await b.close();
  });

  it("applies several writes in one transaction", async () => {
    const b = await openBench();
    const s0 = b.codec.freeze({ items: [{ id: "a", m: new Map([[1, 1]]) }] });
    await b.put(s0);
    const s1 = b.codec.freeze({ items: [{ id: "b" }, ...s0.items] });
    s0.items[0]!.m.set(2, 2); // in place: the next write must see it
    const s2 = b.codec.freeze({ items: [...s1.items, { id: "c" }].reverse() });
    await b.tenant.transact((tx) => {
      b.codec.write(tx, b.prefix, { found: true, state: s0 }, s1);
      b.codec.write(tx, b.prefix, { found: true, state: s1 }, s2);
    });
    await assertStored(b, s2);
    await b.close();
  });

  it("keeps keys short: long names and ids make their object a value", async () => {
    const b = await openBench();
    const long = "n".repeat(2000);
    let deep: any = { leaf: 1 };
    for (let i = 0; i < 300; i++) deep = { ["level-" + "x".repeat(10)]: deep };
    const states = [
      { rec: { [long]: 1, short: 2 } },
      { coll: [{ id: long }, { id: "b" }] },
      { deep },
      { ok: { [long.slice(0, 100)]: 1 } },
    ];
    for (const s of states) {
      const state = b.codec.freeze(s);
      await b.put(state);
      await assertStored(b, s);
      const rows = await b.tenant.transact((tx) => tx.getRange(b.prefix, strinc(b.prefix)));
      for (const r of rows) {
        assert.ok(r.key.length <= b.prefix.length + KEY_BUDGET_BYTES, "key within the budget");
      }
    }
    // The long name made its record a value (one key), the short one did not.
    await b.put(b.codec.freeze({ rec: { [long]: 1, short: 2 } }));
    assert.equal((await b.rows()).length, 3); // format, root, rec as one value
    await b.close();
  });
});

describe("state codec: mutable containers", () => {
  it("writes a Map, Set, Date or bytes changed in place, and nothing when unchanged", async () => {
    const b = await openBench();
    const s = b.codec.freeze({
      m: new Map<string, number>(),
      set: new Set<number>(),
      d: new Date(0),
      bytes: new Uint8Array(4),
      nested: { list: [new Map<string, number>()] },
      items: [{ id: "a", when: new Date(1) }],
    });
    await b.put(s);
    const steps: Array<() => void> = [
      () => s.m.set("k", 1),
      () => s.set.add(1),
      () => s.d.setTime(99),
      () => s.bytes[2] = 7,
      () => s.nested.list[0]!.set("x", 2),
      () => s.items[0]!.when.setTime(12345),
    ];
    for (const mutate of steps) {
      mutate();
      const { counts } = await b.put(s);
      assert.equal(counts.sets, 1, "one key rewritten");
      await assertStored(b, s);
      const { counts: none } = await b.put(s);
      assert.deepEqual(none, zeroCounts(), "unchanged: nothing written");
    }
    await b.close();
  });

  it("rewrites a Map mutated in place by an attempt whose transaction did not commit", async () => {
    const b = await openBench();
    const s = b.codec.freeze({ m: new Map([["a", 1]]) });
    await b.put(s);
    s.m.set("a", 2);
    await assert.rejects(
      b.tenant.transact((tx) => {
        b.codec.write(tx, b.prefix, b.prev, s);
        throw new Error("handler failed after the write");
      }),
      /handler failed/,
    );
    // The retry sees the same (already mutated) objects: it must still write them.
    const { counts } = await b.put(s);
    assert.equal(counts.sets, 1);
    await assertStored(b, s);
    await b.close();
  });

  it("diffs a collection right after an attempt that changed other items and did not commit", async () => {
    // The copy the codec keeps of a collection moves to the next array on an edit in place;
    // an attempt that fails must not leave the retry diffing against its edit.
    for (const freezeArrayLimit of [Infinity, 2]) {
      const b = await openBench(100_000, freezeArrayLimit);
      const s0 = b.codec.freeze({ items: ["a", "b", "c", "d"].map((id) => ({ id, n: 0 })) });
      await b.put(s0);
      const failed = [...s0.items];
      failed[1] = { id: "b", n: 1 };
      await assert.rejects(
        b.tenant.transact((tx) => {
          b.codec.write(tx, b.prefix, b.prev, { items: failed });
          throw new Error("attempt failed");
        }),
        /attempt failed/,
      );
      const retried = [...s0.items];
      retried[2] = { id: "c", n: 2 };
      const s1 = b.codec.freeze({ items: retried });
      const first = await b.put(s1);
      assert.equal(first.counts.sets, 1, "the retry writes its own change only");
      await assertStored(b, s1);
      // And from there, edit after edit, each one key.
      let state = s1;
      for (let i = 0; i < 6; i++) {
        const items = [...state.items];
        items[i % 4] = { ...items[i % 4]!, n: items[i % 4]!.n + 10 };
        const next = b.codec.freeze({ items });
        const { counts } = await b.put(next);
        assert.equal(counts.sets, 1, `edit ${i}: one key`);
        await assertStored(b, next);
        state = next;
      }
      await b.close();
    }
  });

  it("writes nothing more after a failed attempt placed an equal copy of a Map", async () => {
    // A retried handler builds a new Map equal to the stored one: its bytes are already
    // stored, but only the attempt that commits may vouch for them (found by the model test).
    const b = await openBench();
    const s = b.codec.freeze({ items: [{ id: "r", m: new Map([["a", 1]]) }] });
    await b.put(s);
    const next = b.codec.freeze({ items: [{ id: "r", m: new Map([["a", 1]]), n: 1 }] });
    await assert.rejects(
      b.tenant.transact((tx) => {
        b.codec.write(tx, b.prefix, b.prev, next);
        throw new Error("handler failed after the write");
      }),
      /handler failed/,
    );
    await b.put(next);
    await assertStored(b, next);
    const { counts } = await b.put(next);
    assert.deepEqual(counts, zeroCounts(), "an identical state writes nothing");
    await b.close();
  });

  it("keeps one object shared by two stores apart", async () => {
    // The same frozen array (a shared constant) sits at the same path in two tenants, with
    // different index keys in each; each store must still be diffed against its own keys.
    const backend = openMemoryBackend();
    const ta = await openTenant(backend, "a");
    const tb = await openTenant(backend, "b");
    const codec = createStateCodec({ maxValueSize: 1000 });
    const prefix = pack(["s"]);
    const shared = codec.freeze([{ id: "x" }, { id: "y" }, { id: "z" }]);
    const map = new Map([["k", 1]]);
    const a0 = codec.freeze({ items: [{ id: "z" }, { id: "y" }, { id: "x" }, { id: "w" }], map });
    await ta.transact((tx) => codec.write(tx, prefix, { found: false }, a0));
    const a1 = codec.freeze({ items: shared, map });
    await ta.transact((tx) => codec.write(tx, prefix, { found: true, state: a0 }, a1));
    await tb.transact((tx) => codec.write(tx, prefix, { found: false }, a1));
    map.set("k", 2);
    const a2 = codec.freeze({ items: [shared[2]!, shared[0]!, { id: "v" }], map });
    await tb.transact((tx) => codec.write(tx, prefix, { found: true, state: a1 }, a2));
    await ta.transact((tx) => codec.write(tx, prefix, { found: true, state: a1 }, a2));
    for (const t of [ta, tb]) {
      const read = await t.transact((tx) =>
        createStateCodec({ maxValueSize: 1000 }).read(tx, prefix)
      );
      assert.ok(read.found);
      assert.equal(difference(a2, read.state), undefined, t.name);
    }
    await backend.close();
  });

  it("keeps apart an object placed in two stores over equal ones", async () => {
    // The object takes its stored bytes from the equal one it replaces in each store; mutated
    // afterwards, it must be rewritten in both.
    const backend = openMemoryBackend();
    const stores = [await openTenant(backend, "a"), await openTenant(backend, "b")];
    const codec = createStateCodec({ maxValueSize: 1000 });
    const prefix = pack(["s"]);
    const shared = new Map([["k", 1]]);
    const next = codec.freeze({ m: shared });
    for (const t of stores) {
      const first = codec.freeze({ m: new Map([["k", 1]]) });
      await t.transact((tx) => codec.write(tx, prefix, { found: false }, first));
      await t.transact((tx) => codec.write(tx, prefix, { found: true, state: first }, next));
    }
    shared.set("k", 2);
    for (const t of stores) {
      await t.transact((tx) => codec.write(tx, prefix, { found: true, state: next }, next));
    }
    for (const t of stores) {
      const read = await t.transact((tx) =>
        createStateCodec({ maxValueSize: 1000 }).read(tx, prefix)
      );
      assert.ok(read.found);
      assert.equal(difference(next, read.state), undefined, t.name);
    }
    await backend.close();
  });

  it("diffs correctly against a state read by another codec (no caches)", async () => {
    const b = await openBench();
    const s0 = b.codec.freeze({
      items: [{ id: "a" }, { id: "b" }, { id: "c" }],
      m: new Map([[1, 1]]),
    });
    await b.put(s0);
    const other = createStateCodec({ maxValueSize: 100_000 });
    const read = await b.get(other);
    assert.ok(read.found);
    const r = other.freeze(read.state as typeof s0);
    const s1 = other.freeze({ items: [r.items[2]!, { id: "d" }, r.items[0]!], m: r.m });
    r.m.set(2, 2);
    await b.tenant.transact((tx) => other.write(tx, b.prefix, read, s1));
    await assertStored(b, s1);
    await b.close();
  });
});

describe("state codec: refusals", () => {
  class Widget {
    size = 1;
  }
  const handler = () => "hi";
  const cyclicRecord: any = { a: { b: {} } };
  cyclicRecord.a.b.back = cyclicRecord.a;
  const cyclicValue: any[] = [1, 2];
  cyclicValue.push({ up: cyclicValue });
  /** `x` with an enumerable property `x` whose getter throws. */
  const throwing = (x: object = {}) =>
    Object.defineProperty(x, "x", {
      get() {
        throw new Error("boom");
      },
      enumerable: true,
    });
  const revoked = () => {
    const r = Proxy.revocable({}, {});
    r.revoke();
    return r.proxy;
  };
  const threw = /Reading this value threw.*revoked|no keys/;
  // Refused as a getter before it is called (it would be stored once and kept live).
  const getter = /A getter \(accessor property 'x'\) cannot be stored/;
  const cases: Array<[string, (s: any) => unknown, RegExp, string]> = [
    ["a getter that throws", (s) => ({ ...s, g: throwing({ ok: 1 }) }), getter, "state.g.x"],
    [
      "a getter that throws in a new item",
      (s) => ({ ...s, items: [...s.items, throwing({ id: "d" })] }),
      getter,
      "state.items[3].x",
    ],
    [
      "a getter that throws in a Map",
      (s) => ({ ...s, m: new Map([["k", throwing()]]) }),
      getter,
      'state.m.get("k").x',
    ],
    ["a revoked Proxy", (s) => ({ ...s, p: revoked() }), threw, "state.p"],
    [
      "a revoked Proxy in an array value",
      (s) => ({ ...s, v: [1, revoked()] }),
      threw,
      "state.v[1]",
    ],
    ["a revoked Proxy as the state", () => revoked(), threw, "state"],
    [
      "a Proxy whose ownKeys trap throws",
      (s) => ({
        ...s,
        q: new Proxy({}, {
          ownKeys() {
            throw new Error("no keys");
          },
        }),
      }),
      threw,
      "state.q",
    ],
    [
      "a function",
      (s) => ({ ...s, items: [...s.items.slice(0, 3), { id: "z", handler }] }),
      /function/,
      "state.items[3].handler",
    ],
    ["a symbol", (s) => ({ ...s, sym: Symbol("x") }), /symbol/, "state.sym"],
    ["a class instance", (s) => ({ ...s, deep: { w: new Widget() } }), /Widget/, "state.deep.w"],
    ["a cycle of records", (s) => ({ ...s, c: cyclicRecord }), /cycle/, "state.c.a.b.back"],
    ["a cycle in a value", (s) => ({ ...s, v: cyclicValue }), /cycle/, "state.v[2].up"],
    ["a symbol-keyed property", (s) => ({ ...s, [Symbol("k")]: 1 }), /symbol/i, "state"],
    [
      "an unpaired surrogate in an id",
      (s) => ({ ...s, items: [{ id: "\ud800" }] }),
      /surrogate/,
      "state.items[0].id",
    ],
    [
      "a function in a Map",
      (s) => ({ ...s, m: new Map([["k", handler]]) }),
      /function/,
      'state.m.get("k")',
    ],
  ];
  for (const [what, make, message, path] of cases) {
    it(`refuses ${what}, naming ${path}, and writes nothing`, async () => {
      const b = await openBench();
      const s0 = b.codec.freeze({ items: [{ id: "a" }, { id: "b" }, { id: "c" }], n: 1 });
      await b.put(s0);
      const before = await b.rows();
      const counts = zeroCounts();
      const next = make(s0);
      await assert.rejects(
        b.tenant.transact((tx) => b.codec.write(counting(tx, counts), b.prefix, b.prev, next)),
        (e) =>
          e instanceof CodecError && e.code === "codec" && message.test(e.message) &&
          e.path === path,
      );
      assert.deepEqual(counts, zeroCounts());
      assert.deepEqual(await b.rows(), before);
      // A fresh write of it is refused the same way.
      const fresh = await openBench();
      await assert.rejects(fresh.put(next), (e) => e instanceof CodecError && e.path === path);
      assert.deepEqual(await fresh.rows(), []);
      await fresh.close();
      await b.close();
    });
  }

  it("keeps what a value threw while being read as the CodecError's cause", async () => {
    const b = await openBench();
    const error = new TypeError("boom");
    const state = {
      g: new Proxy({}, {
        ownKeys() {
          throw error;
        },
      }),
    };
    await assert.rejects(
      b.put(state),
      (e) => e instanceof CodecError && e.path === "state.g" && e.cause === error,
    );
    await b.close();
  });
});

describe("state codec: stored data it cannot read", () => {
  async function corrupt(
    edit: (
      rows: Array<{ key: Uint8Array; value: Uint8Array }>,
    ) => [Uint8Array, Uint8Array | undefined],
  ) {
    const b = await openBench();
    await b.put(b.codec.freeze({ a: 1, items: [{ id: "x", v: "s" }], blob: "q" }));
    const rows = await b.tenant.transact((tx) => tx.getRange(b.prefix, strinc(b.prefix)));
    const [key, value] = edit(rows);
    await b.tenant.transact((tx) => (value === undefined ? tx.clear(key) : tx.set(key, value)));
    return b;
  }

  const cases: Array<[string, Parameters<typeof corrupt>[0], RegExp]> = [
    ["an unknown format version", (rows) => [rows[0]!.key, Uint8Array.of(2)], /format version 2/],
    ["a missing format key", (rows) => [rows[0]!.key, undefined], /no format key/],
    [
      "undecodable value bytes",
      (rows) => [rows[2]!.key, Uint8Array.of(3, 0xff)],
      /not a valid value encoding/,
    ],
    ["an unknown node kind", (rows) => [rows[2]!.key, Uint8Array.of(9)], /unknown node kind 9/],
    [
      "a stray key",
      (rows) => [concatBytes(rows[2]!.key, pack(["stray"])), Uint8Array.of(3, 0)],
      /corrupt|outside/,
    ],
    ["an order entry without its item", (rows) => {
      const order = rows.find((r) => r.value.length === 1 && r.value[0] === "x".charCodeAt(0))!;
      return [order.key, new TextEncoder().encode("nope")];
    }, /no item for id "nope"/],
  ];
  for (const [what, edit, message] of cases) {
    it(`raises CodecError naming the key for ${what}`, async () => {
      const b = await corrupt(edit);
      await assert.rejects(
        b.get(),
        (e) => e instanceof CodecError && message.test(e.message) && e.path.length > 0,
      );
      await b.close();
    });
  }
});

describe("state codec: freeze", () => {
  it("deep-freezes plain objects and arrays so in-place mutation throws", () => {
    const codec = createStateCodec({ maxValueSize: 1000 });
    const s = codec.freeze({
      a: { b: [1, { c: 2 }] },
      items: [{ id: "x", tags: ["t"] }],
      m: new Map(),
    });
    assert.throws(() => {
      (s.a.b[1] as any).c = 3;
    }, TypeError);
    assert.throws(() => (s.items[0]!.tags as any).push("u"), TypeError);
    assert.throws(() => {
      (s as any).z = 1;
    }, TypeError);
    s.m.set(1, 1); // Maps stay usable: the codec diffs them by content
    assert.equal(s.m.size, 1);
  });

  it("skips subtrees that are already frozen", () => {
    const codec = createStateCodec({ maxValueSize: 1000 });
    const inner = { mutable: true };
    const frozen = Object.freeze({ inner });
    const s = codec.freeze({ frozen, other: { x: 1 } });
    assert.ok(Object.isFrozen(s.other));
    assert.ok(!Object.isFrozen(inner), "an already-frozen subtree is not walked");
  });

  it("freezes every new part of a state written before it is frozen", async () => {
    const b = await openBench();
    const s0 = b.codec.freeze({ items: [{ id: "a" }, { id: "b" }, { id: "c" }] });
    await b.put(s0);
    const s1: { items: any[] } = {
      items: [s0.items[0]!, { id: "new", deep: { list: [{ x: 1 }] } }, {
        ...s0.items[2]!,
        v: { w: 1 },
      }],
    };
    await b.put(s1); // write first: the codec leaves hints for freeze
    b.codec.freeze(s1);
    for (
      const x of [
        s1,
        s1.items,
        s1.items[1],
        s1.items[1]!.deep,
        s1.items[1]!.deep!.list,
        s1.items[1]!.deep!.list[0],
        s1.items[2],
        s1.items[2]!.v,
      ]
    ) {
      assert.ok(Object.isFrozen(x));
    }
    await b.close();
  });

  it("returns its argument and accepts any value", () => {
    const codec = createStateCodec({ maxValueSize: 1000 });
    for (const v of [1, "s", null, undefined, new Date(0)]) assert.equal(codec.freeze(v), v);
    const cyclic: any = { a: {} };
    cyclic.a.b = cyclic;
    assert.equal(codec.freeze(cyclic), cyclic);
  });
});

describe("state codec: names and ids that extend another with a NUL", () => {
  // "a" packs as 02 61 00 and "a\0" as 02 61 00 ff 00: the first is a prefix of the second, so
  // a node's subtree is [node, node ‖ ff), not [node, strinc(node)).

  it("keeps record properties 'a', 'a\\0' and 'a\\0x' apart, nested, removed and re-added", async () => {
    await walk([
      { a: 1, "a\0": 2 },
      { "a\0": 2 }, // removing "a" kept "a\0"
      { a: { k: 1 }, "a\0": 2, "a\0x": { k: 3 } },
      { a: { k: 1, "k\0": { z: 1 } }, "a\0x": { k: 3 } }, // removing "a\0" kept "a\0x"
      { "a\0x": { k: 3 } }, // removing record "a" kept "a\0x"
      { a: { k: 1 }, "a\0x": 5, "a\0": { k: { "": 1, "\0": 2 } } },
      { a: 7, "a\0x": 5, "a\0": { k: { "\0": 2 } } }, // a record became a value
      { n: { a: { b: 1 }, "a\0": { b: 2 }, "a\0\0": [1] } },
      { n: { "a\0": { b: 2 }, "a\0\0": [1] } },
      { n: { a: { b: 1 }, "a\0\0": [1] } },
      { "": 1, "\0": 2, "\0\0": 3 },
      { "\0": 2 },
    ]);
  });

  it("keeps a chunked value at 'a' from clearing 'a\\0' when it shrinks", async () => {
    const long = "x".repeat(500);
    await walk([
      { a: long, "a\0": { k: 1 } },
      { a: 1, "a\0": { k: 1 } }, // the chunks of "a" go, "a\0" stays
      { a: long, "a\0": long },
      { a: "short", "a\0": long },
    ], 64);
  });

  it("keeps collection items with ids '', '\\0', 'a' and 'a\\0' apart", async () => {
    const items = (...ids: string[]) => ids.map((id, i) => ({ id, x: i, sub: { y: id } }));
    await walk([
      { items: items("", "\0", "a", "a\0") },
      { items: items("\0", "a", "a\0") }, // removing "" kept "\0"
      { items: items("\0", "a\0") }, // removing "a" kept "a\0"
      { items: items("", "\0", "a", "a\0", "a\0\0") }, // re-added
      { items: items("a\0\0", "a", "", "a\0", "\0") }, // moved
      { items: [{ id: "", v: [1] }, { id: "\0", v: { w: 1 } }, { id: "a" }, { id: "a\0" }] },
      { items: [{ id: "\0", v: { w: 1 } }, { id: "a\0" }] },
      { items: items("", "\0") },
    ]);
  });

  it("keeps the states under prefixes 's' and 's\\0' apart", async () => {
    const backend = openMemoryBackend();
    const tenant = await openTenant(backend, "codec");
    const codec = createStateCodec({ maxValueSize: 100_000 });
    const p1 = pack(["server", "s"]);
    const p2 = pack(["server", "s\0"]);
    const read = (p: Uint8Array) => tenant.transact((tx) => codec.read(tx, p));
    await tenant.transact((tx) => codec.write(tx, p2, { found: false }, { n: 2 }));
    await tenant.transact((tx) => codec.write(tx, p1, { found: false }, { n: 1 }));
    assert.deepEqual(await read(p1), { found: true, state: { n: 1 } });
    assert.deepEqual(await read(p2), { found: true, state: { n: 2 } });
    await tenant.transact((tx) => codec.clear(tx, p1));
    assert.deepEqual(await read(p1), { found: false });
    assert.deepEqual(await read(p2), { found: true, state: { n: 2 } });
    await backend.close();
  });
});

describe("state codec: nesting limit", () => {
  const wrap: Record<string, (v: unknown) => unknown> = {
    record: (v) => ({ k: v }),
    items: (v) => [v],
    item: (v) => ({ id: "a", k: v }),
    array: (v) => [v],
    map: (v) => new Map([["k", v]]),
    set: (v) => new Set([v]),
  };
  const step: Record<string, string> = {
    record: ".k",
    items: "[0]",
    item: ".k",
    array: "[0]",
    map: '.get("k")',
    set: ".values()[0]",
  };
  /**
   * A state of `total` nested containers (the state itself, a record, then containers of
   * `kind`) around the number 1, and the path of the innermost container.
   */
  function nested(kind: string, total: number): { state: unknown; innermost: string } {
    const kinds = ["record"];
    if (kind === "collection") {
      if ((total - 1) % 2 === 1) kinds.push("record");
      while (kinds.length < total) kinds.push("items", "item");
    } else if (kind === "mixed") {
      while (kinds.length < total) kinds.push(kinds.length % 2 === 1 ? "array" : "record");
    } else {
      while (kinds.length < total) kinds.push(kind);
    }
    let state: unknown = 1;
    for (let i = kinds.length - 1; i >= 0; i--) state = wrap[kinds[i]!]!(state);
    const innermost = "state" + kinds.slice(0, -1).map((k) => step[k]).join("");
    return { state, innermost };
  }

  for (const kind of ["record", "collection", "array", "mixed", "map", "set"]) {
    const what = kind === "mixed" ? "arrays and objects in a value" : `${kind}s`;
    it(`stores ${MAX_NESTING} nested containers (${what}) and reads them back`, async () => {
      const { state } = nested(kind, MAX_NESTING);
      const b = await openBench();
      await b.put(b.codec.freeze({ k: 0 }));
      await b.put(state); // a diff over a record
      await assertStored(b, state);
      const fresh = await openBench();
      await fresh.put(state);
      await assertStored(fresh, state);
      await fresh.put(fresh.codec.freeze({ k: 0 }));
      await assertStored(fresh, { k: 0 });
      await fresh.close();
      await b.close();
    });

    it(`refuses ${MAX_NESTING + 1} (${what}), naming the innermost, and writes nothing`, async () => {
      const { state, innermost } = nested(kind, MAX_NESTING + 1);
      const refused = (e: unknown) =>
        e instanceof CodecError && /Nested deeper than the 500 containers/.test(e.message) &&
        e.path === innermost;
      const fresh = await openBench();
      await assert.rejects(fresh.put(state), refused);
      assert.deepEqual(await fresh.rows(), []);
      await fresh.close();
      const b = await openBench();
      await b.put(b.codec.freeze({ k: { k: 0 } }));
      const before = await b.rows();
      const counts = zeroCounts();
      await assert.rejects(
        b.tenant.transact((tx) => b.codec.write(counting(tx, counts), b.prefix, b.prev, state)),
        refused,
      );
      assert.deepEqual(counts, zeroCounts());
      assert.deepEqual(await b.rows(), before);
      await b.close();
    });
  }
});

describe("state codec: arrays of objects with duplicate ids", () => {
  // SPEC §7: a collection's items have unique string ids; anything else is a value.
  const abc = [{ id: "a", n: 1 }, { id: "b", n: 2 }, { id: "c", n: 3 }];

  it("stores such an array whole, as a value, and reads it back", async () => {
    const state = { items: [{ id: "q", n: 1 }, { id: "q", n: 2, deep: { x: [1] } }] };
    const b = await openBench();
    await b.put(b.codec.freeze(state));
    assert.equal((await b.rows()).length, 3); // format, root record, items as one value
    await assertStored(b, state);
    await b.close();
  });

  it("turns a collection into a value and back as ids stop and start being unique", async () => {
    await walk([
      { items: abc },
      { items: [...abc, { id: "b", n: 4 }] }, // a new item with a kept item's id
      { items: abc },
      { items: [abc[2], { id: "a", n: 5 }, abc[0]] }, // among moved items
      { items: [abc[2], abc[0]] },
      { items: [abc[2], abc[0], abc[2]] }, // the same item twice
      {
        items: [{ id: "x" }, { id: "x" }],
        nested: [{ id: "i", list: [{ id: "y" }, { id: "y" }] }],
      },
      {
        items: [{ id: "x" }, { id: "z" }],
        nested: [{ id: "i", list: [{ id: "y" }, { id: "w" }] }],
      },
      { nested: [{ id: "i", list: [{ id: "w" }, { id: "w", v: 1 }] }] },
    ]);
  });
});
