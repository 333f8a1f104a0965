/** Property tests of the byte helpers the backends share (fast-check; seed printed on failure). */

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  addLittleEndian,
  int64LE,
  readInt64LE,
  readInt64LENumber,
  versionstampBytes,
} from "../lib/bytes.ts";
import { fcParams } from "./_helpers.ts";

/** The definition: zero-extend to 8 bytes, read as a signed little-endian 64-bit integer. */
function int64Reference(bytes: Uint8Array): bigint {
  let n = 0n;
  for (let i = Math.min(bytes.length, 8) - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]!);
  return BigInt.asIntN(64, n);
}

describe("byte helpers", () => {
  it("read little-endian integers of 0 to 10 bytes as bigint and as number", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 10 }), (bytes) => {
        const expected = int64Reference(bytes);
        assert.equal(readInt64LE(bytes), expected);
        assert.equal(readInt64LENumber(bytes), Number(expected));
      }),
      fcParams(2000),
    );
    assert.equal(readInt64LE(undefined), 0n);
    assert.equal(readInt64LENumber(undefined), 0);
  });

  it("round-trip int64LE, and add like FoundationDB (wrapping at 64 bits)", () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
        fc.bigInt({
          min: -(2n ** 63n),
          max: 2n ** 63n - 1n,
        }),
        (a, b) => {
          assert.equal(readInt64LE(int64LE(a)), a);
          assert.equal(
            readInt64LE(addLittleEndian(int64LE(a), int64LE(b))),
            BigInt.asIntN(64, a + b),
          );
        },
      ),
      fcParams(1000),
    );
  });

  it("lay versionstamps out big-endian: byte order is counter, then index, order", () => {
    const pair = fc.tuple(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.nat(0xffff));
    fc.assert(
      fc.property(pair, pair, ([c1, i1], [c2, i2]) => {
        const a = versionstampBytes(c1, i1);
        const b = versionstampBytes(c2, i2);
        const hex = (x: Uint8Array) =>
          Array.from(x, (v) => v.toString(16).padStart(2, "0")).join("");
        assert.equal(a.length, 10);
        assert.equal(BigInt("0x" + hex(a.subarray(0, 8))), BigInt(c1));
        assert.equal(a[8]! * 256 + a[9]!, i1);
        const order = c1 - c2 || i1 - i2;
        const [ha, hb] = [hex(a), hex(b)];
        assert.equal(ha < hb ? -1 : ha > hb ? 1 : 0, Math.sign(order));
      }),
      fcParams(2000),
    );
  });
});
