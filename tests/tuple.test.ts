import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import * as fdbTuple from "fdb-tuple";
import { compareBytes } from "../lib/bytes.ts";
import {
  compareTuples,
  pack,
  packAfter,
  packWithVersionstamp,
  type Tuple,
  type TupleItem,
  unpack,
  Versionstamp,
} from "../lib/tuple.ts";
import { fcParams } from "./_helpers.ts";

/** Elements whose decode is identical to what was encoded. */
const leaf: fc.Arbitrary<TupleItem> = fc.oneof(
  fc.constant(null),
  fc.uint8Array({ maxLength: 8 }),
  fc.string({ unit: "binary", maxLength: 8 }),
  fc.string({ unit: fc.constantFrom("\u0000", "a", "\u00ff", "\uffff"), maxLength: 4 }),
  fc.maxSafeInteger(),
  fc.integer({ min: -300, max: 300 }),
  fc.bigInt({ min: -(2n ** 200n), max: 2n ** 200n }).filter((n) =>
    !Number.isSafeInteger(Number(n)) || n > 2n ** 53n || n < -(2n ** 53n)
  ),
  fc.double({ noDefaultInfinity: false }).filter((x) =>
    !Number.isSafeInteger(x) || Object.is(x, -0)
  ),
  fc.boolean(),
  fc.uint8Array({ minLength: 12, maxLength: 12 })
    .filter((b) => b.subarray(0, 10).some((x) => x !== 0xff))
    .map((b) => new Versionstamp(b)),
);
const item: fc.Arbitrary<TupleItem> = fc.letrec((tie) => ({
  item: fc.oneof({ depthSize: "small" }, leaf, fc.array(tie("item"), { maxLength: 3 })),
})).item as fc.Arbitrary<TupleItem>;
const tuple: fc.Arbitrary<Tuple> = fc.array(item, { maxLength: 5 });

/** Converts our elements to fdb-tuple's, for the differential check. */
function toFdb(t: TupleItem): fdbTuple.TupleItem {
  if (t instanceof Versionstamp) return { type: "versionstamp", value: Buffer.from(t.bytes) };
  if (t instanceof Uint8Array) return Buffer.from(t);
  if (Array.isArray(t)) return t.map(toFdb);
  if (typeof t === "number" && !Number.isSafeInteger(t) || Object.is(t, -0)) {
    return { type: "double", value: t as number };
  }
  return t as fdbTuple.TupleItem;
}

function normalize(t: unknown): unknown {
  if (t instanceof Versionstamp) return { stamp: [...t.bytes] };
  if (t instanceof Uint8Array) return { bytes: [...t] };
  if (Array.isArray(t)) return t.map(normalize);
  if (typeof t === "number" && Number.isNaN(t)) return "NaN";
  return t;
}

describe("tuple encoding", () => {
  it("decodes what it encodes", () => {
    fc.assert(
      fc.property(tuple, (t) => {
        assert.deepEqual(normalize(unpack(pack(t))), normalize(t));
      }),
      fcParams(500),
    );
  });

  it("orders encodings as it orders tuples", () => {
    fc.assert(
      fc.property(tuple, tuple, (a, b) => {
        const byTuple = Math.sign(compareTuples(a, b));
        const byBytes = Math.sign(compareBytes(pack(a), pack(b)));
        // Distinct NaN payloads aside, equal tuples have equal bytes and vice versa.
        assert.equal(byBytes, byTuple);
      }),
      fcParams(1000),
    );
  });

  it("is byte-identical to FoundationDB's tuple layer (fdb-tuple)", () => {
    fc.assert(
      fc.property(tuple, (t) => {
        assert.deepEqual([...pack(t)], [...fdbTuple.pack(t.map(toFdb))]);
      }),
      fcParams(500),
    );
  });

  it("encodes integer boundaries like FoundationDB", () => {
    for (const n of [0, 1, -1, 255, 256, -255, -256, 2 ** 53 - 1, -(2 ** 53 - 1)]) {
      assert.deepEqual([...pack([n])], [...fdbTuple.pack([n])], `n=${n}`);
    }
    for (const n of [2n ** 64n - 1n, 2n ** 64n, -(2n ** 64n), -(2n ** 64n) + 1n, 2n ** 63n]) {
      assert.deepEqual([...pack([n])], [...fdbTuple.pack([n])], `n=${n}`);
      assert.equal(unpack(pack([n]))[0], n);
    }
  });

  it("encodes integers around every byte-length boundary like FoundationDB", () => {
    // Integers of up to four bytes take a path without bigint arithmetic; wider ones do not.
    for (let bits = 0; bits <= 40; bits++) {
      for (const base of [2 ** bits - 1, 2 ** bits, 2 ** bits + 1]) {
        for (const n of base === 0 ? [0] : [base, -base]) {
          const expected = [...fdbTuple.pack([n])];
          assert.deepEqual([...pack([n])], expected, `n=${n}`);
          assert.deepEqual([...pack([BigInt(n)])], expected, `n=${n}n`);
          assert.equal(unpack(pack([n]))[0], n);
        }
      }
    }
  });

  it("packs after a prefix, into arrays of their own", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), tuple, tuple, (prefix, a, b) => {
        const first = packAfter(prefix, a);
        const second = packAfter(prefix, b);
        const alone = pack(a);
        assert.deepEqual([...first], [...prefix, ...alone]);
        // Each result owns its bytes: a later pack does not change an earlier result.
        assert.deepEqual([...second], [...prefix, ...pack(b)]);
        assert.deepEqual([...first.subarray(prefix.length)], [...alone]);
      }),
      fcParams(300),
    );
    const big = pack(["x".repeat(100_000)]);
    assert.equal(big.length, 100_002);
    assert.deepEqual([...pack(["y"])], [0x02, 0x79, 0x00]);
  });

  it("orders integers across the fixed and arbitrary-length encodings", () => {
    const ns = [
      -(2n ** 100n),
      -(2n ** 64n),
      -(2n ** 64n) + 1n,
      -1n,
      0n,
      1n,
      2n ** 64n - 1n,
      2n ** 64n,
      2n ** 100n,
    ];
    for (let i = 1; i < ns.length; i++) {
      assert.ok(compareBytes(pack([ns[i - 1]!]), pack([ns[i]!])) < 0, `${ns[i - 1]} < ${ns[i]}`);
    }
  });

  it("places an incomplete versionstamp and reports its offset", () => {
    const { bytes, offset } = packWithVersionstamp(["q", Versionstamp.incomplete(7)]);
    assert.equal(offset, 4); // 0x02 "q" 0x00, then the 0x33 type code
    assert.deepEqual([...bytes.subarray(offset, offset + 10)], new Array(10).fill(0xff));
    assert.throws(() => pack([Versionstamp.incomplete()]), /packWithVersionstamp/);
    assert.throws(() => packWithVersionstamp(["no stamp"]), /no incomplete/);
  });

  it("rejects unsupported elements and malformed bytes", () => {
    assert.throws(() => pack([{} as never]), /Unsupported tuple element/);
    assert.throws(() => pack([undefined as never]), /Unsupported/);
    assert.throws(() => unpack(new Uint8Array([0x15])), /Truncated/);
    assert.throws(() => unpack(new Uint8Array([0x99])), /Unknown tuple type code 0x99/);
  });
});
