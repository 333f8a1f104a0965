// deno-lint-ignore-file no-explicit-any
/**
 * Values that would lose something when stored while the writer kept it: a getter (stored as
 * the value it returned once, kept live by the writer), a non-enumerable property (not stored,
 * kept), properties of an array other than its elements (not stored, kept). Each is refused
 * with a `CodecError` naming its path, and nothing is written, on the memory and SQLite
 * backends; a server's writing instance and a fresh one then agree on the state.
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type Backend,
  CodecError,
  DeadLetterError,
  defineServer,
  DGenError,
  openMemoryBackend,
  openSqliteBackend,
  openTenant,
  reply,
  start,
} from "../../mod.ts";
import { toHex } from "../../lib/bytes.ts";
import { createStateCodec } from "../../lib/codec/state.ts";
import type { StoredState } from "../../lib/codec/types.ts";
import { encode } from "../../lib/codec/value.ts";
import { pack, subtreeEnd } from "../../lib/tuple.ts";
import { difference } from "./_support.ts";

let dir: string | undefined;
let files = 0;
function sqlitePath(): string {
  if (dir === undefined) {
    const made = dir = mkdtempSync(join(tmpdir(), "dgen-codec-unstored-"));
    after(() => rmSync(made, { recursive: true, force: true }));
  }
  return join(dir, `unstored-${files++}.sqlite`);
}

const backends: Array<{ name: string; open(): Promise<Backend> }> = [
  { name: "memory", open: () => Promise.resolve(openMemoryBackend()) },
  { name: "sqlite", open: () => openSqliteBackend({ path: sqlitePath() }) },
];

const getter = (name: string) => new RegExp(`A getter \\(accessor property '${name}'\\)`);
const nonEnumerable = (name: string) =>
  new RegExp(`A non-enumerable property \\('${name}'\\) cannot be stored`);
const arrayProperty = (name: string) =>
  new RegExp(`An array with a property other than its elements \\('${name}'\\)`);

let ticks = 0;
const withGetter = <T extends object>(o: T, name: string): T =>
  Object.defineProperty(o, name, { get: () => ++ticks, enumerable: true });
const hidden = <T extends object>(o: T, name: string): T =>
  Object.defineProperty(o, name, { value: "s3" }); // not enumerable, by default

type S = { n: number; items: Array<{ id: string }>; tags: string[] };
/** The kinds of value, each as a change of a stored state `s`. */
const cases: Array<[string, (s: S) => unknown, RegExp, string]> = [
  ["a getter on the state", (s) => withGetter({ ...s }, "ticks"), getter("ticks"), "state.ticks"],
  [
    "a getter in a new record",
    (s) => ({ ...s, owner: withGetter({ a: 1 }, "name") }),
    getter("name"),
    "state.owner.name",
  ],
  [
    "a getter in a new collection item",
    (s) => ({ ...s, items: [...s.items, withGetter({ id: "c" }, "v")] }),
    getter("v"),
    "state.items[2].v",
  ],
  [
    "a getter in a value (an object in a Map)",
    (s) => ({ ...s, m: new Map([["k", withGetter({}, "v")]]) }),
    getter("v"),
    'state.m.get("k").v',
  ],
  [
    "a setter without a getter",
    (s) => ({ ...s, o: Object.defineProperty({}, "w", { set() {}, enumerable: true }) }),
    /A setter \(accessor property 'w' without a getter\)/,
    "state.o.w",
  ],
  [
    "a non-enumerable property on the state",
    (s) => hidden({ ...s }, "secret"),
    nonEnumerable("secret"),
    "state.secret",
  ],
  [
    "a non-enumerable property in a value (an object in an array)",
    (s) => ({ ...s, v: [1, hidden({ a: 1 }, "h")] }),
    nonEnumerable("h"),
    "state.v[1].h",
  ],
  [
    "a property on an array value",
    (s) => ({ ...s, tags: Object.assign(["x"], { owner: "alice" }) }),
    arrayProperty("owner"),
    "state.tags.owner",
  ],
  [
    "a non-enumerable property on an array value",
    (s) => ({ ...s, tags: hidden(["x"], "meta") }),
    arrayProperty("meta"),
    "state.tags.meta",
  ],
  [
    "a symbol-keyed property on an array value",
    (s) => ({ ...s, tags: Object.assign(["x"], { [Symbol("k")]: 1 }) }),
    /symbols cannot be stored/,
    "state.tags",
  ],
  [
    "a property on a new collection",
    (s) => ({ ...s, more: Object.assign([{ id: "p" }, { id: "q" }], { total: 2 }) }),
    arrayProperty("total"),
    "state.more.total",
  ],
  [
    "a property on an array as the state",
    () => Object.assign([1, 2], { tag: "t" }),
    arrayProperty("tag"),
    "state.tag",
  ],
  [
    "a property on a collection as the state",
    () => Object.assign([{ id: "a" }], { tag: "t" }),
    arrayProperty("tag"),
    "state.tag",
  ],
  [
    "a property on an array in a Map",
    (s) => ({ ...s, m: new Map([["k", Object.assign([1], { tag: "t" })]]) }),
    arrayProperty("tag"),
    'state.m.get("k").tag',
  ],
];

for (const b of backends) {
  describe(`state codec on ${b.name}: what would be lost is refused`, () => {
    async function open() {
      const backend = await b.open();
      const tenant = await openTenant(backend, "codec");
      const codec = createStateCodec({ maxValueSize: backend.limits.maxValueSize });
      const prefix = pack(["server", "s"]);
      const rows = async () =>
        (await tenant.transact((tx) => tx.getRange(prefix, subtreeEnd(prefix)))).map((r) =>
          toHex(r.key) + "=" + toHex(r.value)
        );
      const write = (prev: StoredState, next: unknown) =>
        tenant.transact((tx) => codec.write(tx, prefix, prev, next));
      return { backend, tenant, codec, prefix, rows, write };
    }

    for (const [what, make, message, path] of cases) {
      it(`refuses ${what}, naming ${path}, and writes nothing`, async () => {
        const t = await open();
        const s0 = t.codec.freeze({ n: 1, items: [{ id: "a" }, { id: "b" }], tags: ["x"] });
        await t.write({ found: false }, s0);
        const before = await t.rows();
        const refused = (e: unknown) =>
          e instanceof CodecError && e.code === "codec" && message.test(e.message) &&
          e.path === path;
        const next = make(s0);
        await assert.rejects(t.write({ found: true, state: s0 }, next), refused);
        assert.deepEqual(await t.rows(), before);
        // Written whole (no stored state to diff against), it is refused the same way.
        await t.tenant.transact((tx) => t.codec.clear(tx, t.prefix));
        await assert.rejects(t.write({ found: false }, next), refused);
        assert.deepEqual(await t.rows(), []);
        await t.backend.close();
      });
    }

    it("does not look for an array's properties in a collection diffed against the stored one (documented)", async () => {
      const t = await open();
      const s0 = t.codec.freeze({ n: 1, items: [{ id: "a" }, { id: "b" }] });
      await t.write({ found: false }, s0);
      // Listing an array's keys costs far more than the diff's identity scan: not done there.
      const next = { ...s0, items: Object.assign([...s0.items, { id: "c" }], { owner: "x" }) };
      await t.write({ found: true, state: s0 }, next);
      const read = await t.tenant.transact((tx) =>
        createStateCodec({ maxValueSize: t.backend.limits.maxValueSize }).read(tx, t.prefix)
      );
      assert.ok(read.found);
      assert.equal(
        difference(read.state, { n: 1, items: [{ id: "a" }, { id: "b" }, { id: "c" }] }),
        undefined,
      );
      await t.backend.close();
    });
  });
}

describe("value encoding (messages, replies): what would be lost is refused", () => {
  it("refuses a getter, a non-enumerable property and an array's other properties", () => {
    const values: Array<[unknown, RegExp, string]> = [
      [withGetter({ a: 1 }, "g"), getter("g"), "message.g"],
      [{ deep: [withGetter({}, "g")] }, getter("g"), "message.deep[0].g"],
      [hidden({ a: 1 }, "h"), nonEnumerable("h"), "message.h"],
      [
        Object.assign(Object.create(null), { o: hidden({}, "h") }),
        nonEnumerable("h"),
        "message.o.h",
      ],
      [{ a: Object.assign([1, 2], { owner: "x" }) }, arrayProperty("owner"), "message.a.owner"],
      [new Set([Object.assign([], { n: 0 })]), arrayProperty("n"), "message.values()[0].n"],
      // A `__proto__` key takes another route through the encoder.
      [
        withGetter(JSON.parse('{"__proto__": 1}'), "g"),
        getter("g"),
        "message.g",
      ],
    ];
    for (const [value, message, path] of values) {
      assert.throws(
        () => encode(value, "message"),
        (e) => e instanceof CodecError && message.test(e.message) && e.path === path,
        `expected a CodecError at ${path}`,
      );
    }
    // Data, including an index property set by assignment and the array's own length, passes.
    const ok = [1, 2];
    ok[2] = 3;
    encode({ ok, o: { a: 1 } }, "message");
  });

  it("looks for an array's properties up to 1,000 elements only (documented)", () => {
    const numbers = (n: number) => Object.assign(Array.from({ length: n }, (_, i) => i), { o: 1 });
    assert.throws(() => encode(numbers(1000), "message"), CodecError);
    // Longer arrays cost 2-5 times their encoding to list: the property is dropped, unchecked.
    encode(numbers(1001), "message");
  });
});

/** A server whose `set` call returns a state with each kind of value. */
const makers: Record<string, (s: any) => unknown> = {
  getter: (s) => withGetter({ ...s }, "ticks"),
  nonEnumerable: (s) => hidden({ ...s }, "secret"),
  arrayProperty: (s) => ({ ...s, tags: Object.assign([...s.tags, "y"], { owner: "alice" }) }),
  collectionProperty: (s) => ({ ...s, more: Object.assign([{ id: "a" }], { owner: "alice" }) }),
};
const Keeper = defineServer({
  name: "keeper",
  init: () => ({ n: 0, tags: ["x"] }),
  handleCall: {
    set: (kind: string, _f, s: any) => reply("ok", makers[kind]!(s) as any),
    view: (_: undefined, _f, s: any) =>
      reply(JSON.stringify({ ...s, ticks: s.ticks, secret: s.secret, owner: s.tags.owner }), s),
  },
});

for (const b of backends) {
  describe(`a server on ${b.name}: what would be lost is refused`, () => {
    for (const kind of Object.keys(makers)) {
      it(`refuses a state with ${kind}; the writing instance and a fresh one agree`, async () => {
        const backend = await b.open();
        const tenant = await openTenant(backend, "t");
        const ref = await start(Keeper, [], { tenant, id: kind, deadLetterThreshold: 1 });
        const error = console.error;
        console.error = () => {};
        try {
          await assert.rejects(
            ref.call("set", kind, { timeout: 10_000 }),
            (e) =>
              e instanceof DeadLetterError && e.cause instanceof DGenError &&
              e.cause.code === "codec",
          );
        } finally {
          console.error = error;
        }
        const fresh = await start(Keeper, [], { tenant, id: kind, consume: false, cache: false });
        const seen = await ref.call("view");
        assert.equal(seen, JSON.stringify({ n: 0, tags: ["x"] }));
        assert.equal(await fresh.call("view"), seen);
        // A message holding the same kind of value is refused before it is queued.
        await assert.rejects(
          ref.call("view", makers[kind]!({ n: 0, tags: ["x"] }) as any),
          (e) => e instanceof DGenError && /cannot be stored/.test(e.message),
        );
        await fresh.stop();
        await ref.stop();
        await backend.close();
      });
    }
  });
}
