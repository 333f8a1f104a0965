import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { CodecError } from "../../mod.ts";
import { fromHex } from "../../lib/bytes.ts";
import { ROOT_PATH } from "../../lib/codec/path.ts";
import { decodeValue, encode, encodeValue, MAX_NESTING } from "../../lib/codec/value.ts";
import { runtime } from "../_helpers.ts";
import { difference } from "./_support.ts";
import { describe as describeValue, SAMPLES } from "./fixtures/samples.ts";
import { sampleEncodings, stateRows } from "./fixtures/generate.ts";

interface Fixture {
  writtenBy: string;
  formatVersion: number;
  samples: Array<{ name: string; hex: string; value: unknown }>;
  states: { maxValueSize: number; steps: Array<Array<[string, string]>> };
}

const fixtureUrl = new URL("./fixtures/codec-v1.json", import.meta.url);
const fixture: Fixture = JSON.parse(readFileSync(fileURLToPath(fixtureUrl), "utf8"));

describe("value encoding", () => {
  for (const [name, make] of Object.entries(SAMPLES)) {
    it(`round-trips ${name} identically`, () => {
      const value = make();
      const { bytes } = encodeValue(value, ROOT_PATH);
      const back = decodeValue(bytes, "k").value;
      assert.equal(difference(value, back), undefined);
    });
  }

  it("reads back plain Uint8Arrays, not the decoder's Buffer", () => {
    const back = decodeValue(encodeValue(Uint8Array.of(1), ROOT_PATH).bytes, "k").value;
    assert.equal(Object.getPrototypeOf(back), Uint8Array.prototype);
  });

  it("keeps a __proto__ key an own property and leaves the prototype alone", () => {
    const v = JSON.parse('{"__proto__": {"polluted": true}}');
    const back = decodeValue(encodeValue(v, ROOT_PATH).bytes, "k").value as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(back), Object.prototype);
    assert.ok(Object.hasOwn(back, "__proto__"));
    assert.equal((back as { polluted?: unknown }).polluted, undefined);
  });

  it("flags values that hold mutable containers", () => {
    assert.equal(encodeValue([1, { a: "x" }], ROOT_PATH).mutable, false);
    for (const v of [new Map(), new Set(), new Date(0), new Uint8Array(1), [{ d: new Date(0) }]]) {
      assert.equal(encodeValue(v, ROOT_PATH).mutable, true);
    }
  });

  it("refuses what it cannot store, naming the path", () => {
    const revoked = () => {
      const r = Proxy.revocable({}, {});
      r.revoke();
      return r.proxy;
    };
    class Point {
      x = 1;
    }
    const cyclic: unknown[] = [1];
    cyclic.push({ back: cyclic });
    const cases: Array<[unknown, RegExp, string]> = [
      [{ f: () => 1 }, /function/, "state.f"],
      [[Symbol("s")], /symbol/, "state[0]"],
      [{ p: new Point() }, /Point/, "state.p"],
      [cyclic, /cycle/, "state[1].back"],
      [{ [Symbol("k")]: 1 }, /symbol/i, "state"],
      [{ s: "bad \ud800" }, /surrogate/, "state.s"],
      [{ ["bad \udc00"]: 1 }, /property name/, "state"],
      [[1, , 3], /Sparse/, "state"],
      [new Map([["k", () => 0]]), /function/, 'state.get("k")'],
      [new Set([1, new WeakMap()]), /WeakMap/, "state.values()[1]"],
      [new Int16Array(2), /Int16Array/, "state"],
      [Object.assign(Object.create(null), { e: new Error("x") }), /Error/, "state.e"],
      // A getter is refused before it is called (even one that would throw).
      [
        {
          a: [1, Object.defineProperty({}, "g", { get: () => JSON.parse("{"), enumerable: true })],
        },
        /A getter \(accessor property 'g'\)/,
        "state.a[1].g",
      ],
      // Values that throw while being read: a revoked Proxy, a throwing trap.
      [new Map([[1, revoked()]]), /Reading this value threw/, "state.get(1)"],
      [
        new Set([
          new Proxy([1, 2], {
            get(t, k) {
              if (k === "1") throw new TypeError("trap");
              return Reflect.get(t, k);
            },
          }),
        ]),
        /Reading this value threw/,
        "state.values()[0][1]",
      ],
    ];
    for (const [value, message, path] of cases) {
      assert.throws(
        () => encodeValue(value, ROOT_PATH),
        (e) => e instanceof CodecError && message.test(e.message) && e.path === path,
        `expected a CodecError at ${path}`,
      );
    }
  });

  it(`encodes ${MAX_NESTING} nested containers and refuses one more, naming it`, () => {
    for (const wrap of [(v: unknown) => [v], (v: unknown) => new Map([[1, v]])]) {
      let v: unknown = new Date(0); // a Date holds nothing: it does not count
      for (let i = 0; i < MAX_NESTING; i++) v = wrap(v);
      assert.equal(
        difference(v, decodeValue(encodeValue(v, ROOT_PATH).bytes, "k").value),
        undefined,
      );
      assert.throws(
        () => encode(wrap(v), "message"),
        (e) =>
          e instanceof CodecError && /Nested deeper/.test(e.message) &&
          e.path.startsWith("message") && e.path.split(/\[0\]|\.get\(1\)/).length === 501,
      );
    }
  });

  it("refuses bytes it did not write, naming the key", () => {
    for (
      const hex of [
        "", // nothing
        "ff", // a break with no container
        "d9dd0901", // an unknown tag
        "c11a00000001", // a standard epoch date (tag 1): never written by dgen
        "d9dd0161", // a date tag around a truncated string
        "8201", // an array announcing two elements, holding one
        "0001", // a value followed by more bytes
      ]
    ) {
      assert.throws(
        () => decodeValue(fromHex(hex), "key-name"),
        (e) => e instanceof CodecError && e.path === "key-name",
        `bytes ${hex} should not decode`,
      );
    }
  });
});

describe("cross-runtime fixture (codec-v1.json)", () => {
  it(`was written by a runtime and holds every sample (this is ${runtime})`, () => {
    assert.equal(fixture.formatVersion, 1);
    assert.deepEqual(fixture.samples.map((s) => s.name), Object.keys(SAMPLES));
  });

  it("encodes every sample to the fixture's bytes", () => {
    const mine = sampleEncodings();
    for (const s of fixture.samples) assert.equal(mine[s.name], s.hex, s.name);
  });

  it("decodes the fixture's bytes to the described values", () => {
    for (const s of fixture.samples) {
      const back = decodeValue(fromHex(s.hex), s.name).value;
      assert.deepEqual(describeValue(back), s.value, s.name);
      assert.equal(difference(SAMPLES[s.name]!(), back), undefined, s.name);
    }
  });

  it("lays out a history of states exactly as the fixture says", async () => {
    assert.deepEqual(await stateRows(), fixture.states.steps);
  });
});

describe("the other runtime, spawned", () => {
  const other = runtime === "deno" ? "bun" : "deno";
  const script = fileURLToPath(new URL("./fixtures/print_encodings.ts", import.meta.url));
  let available: string | undefined;
  try {
    execFileSync(other, ["--version"], { stdio: "ignore" });
  } catch {
    available = `${other} is not on PATH`;
  }
  it(`encodes every sample to the same bytes as ${runtime}`, { skip: available }, () => {
    const args = other === "deno" ? ["run", "-A", script] : [script];
    const out = execFileSync(other, args, {
      encoding: "utf8",
      env: { ...process.env, NO_COLOR: "1" },
    });
    assert.deepEqual(JSON.parse(out), sampleEncodings());
  });
});
