/** Property tests of the byte helpers the backends share (fast-check; seed printed on failure). */

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  addLittleEndian,
  binaryStringToBytes,
  bytesToBinaryString,
  compareBytes,
  fixedBytes,
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

  it("turn bytes into order-preserving binary strings, looked up for fixed arrays", () => {
    const bytes = fc.uint8Array({ maxLength: 40 });
    fc.assert(
      fc.property(bytes, bytes, fc.boolean(), (a, b, fix) => {
        const copyA = a.slice();
        if (fix) assert.equal(fixedBytes(a), a);
        const [sa, sb] = [bytesToBinaryString(a), bytesToBinaryString(b)];
        // Each code unit is one byte, in order, and the strings order as the bytes do.
        assert.deepEqual(binaryStringToBytes(sa), copyA);
        assert.equal(sa.length, a.length);
        assert.equal(sa < sb ? -1 : sa > sb ? 1 : 0, Math.sign(compareBytes(a, b)));
        // A view of a fixed array, or an equal array, is converted, not looked up.
        assert.equal(bytesToBinaryString(a.subarray(1)), sa.slice(1));
        assert.equal(bytesToBinaryString(copyA), sa);
      }),
      fcParams(2000),
    );
    // Longer than one conversion chunk (8,192 bytes).
    const long = Uint8Array.from({ length: 20_000 }, (_, i) => (i * 7) & 0xff);
    assert.deepEqual(binaryStringToBytes(bytesToBinaryString(long)), long);
    assert.deepEqual(binaryStringToBytes(bytesToBinaryString(fixedBytes(long))), long);
  });
});
