import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { openMemoryBackend, ValidationError } from "../../mod.ts";
import { registerConformance } from "./conformance.ts";

registerConformance("memory", (o) => Promise.resolve(openMemoryBackend(o)), { optimistic: true });

describe("openMemoryBackend", () => {
  it("rejects unknown and mistyped options, naming the field", () => {
    assert.throws(
      () => openMemoryBackend({ nope: 1 } as never),
      (e) => e instanceof ValidationError && /options\.nope/.test(e.message),
    );
    assert.throws(
      () => openMemoryBackend({ limits: { maxValueSize: -1 } }),
      (e) => e instanceof ValidationError && /options\.limits\.maxValueSize/.test(e.message),
    );
  });

  it("rejects bad transact options, naming the field", async () => {
    const b = openMemoryBackend();
    await assert.rejects(
      b.transact(() => {}, { maxRetries: -1 }),
      (e) => e instanceof ValidationError && /options\.maxRetries/.test(e.message),
    );
    await b.close();
  });
});
