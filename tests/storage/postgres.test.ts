import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { openPostgresBackend, ValidationError } from "../../mod.ts";
import { registerConformance } from "./conformance.ts";
import { openTestPostgres, postgresSkip } from "./_postgres.ts";

registerConformance(
  "postgres",
  (o) => openTestPostgres(o),
  { optimistic: true, staleReadsConflict: false },
  postgresSkip,
);

describe("openPostgresBackend", () => {
  it("rejects missing, unknown and mistyped options, naming the field", async () => {
    await assert.rejects(
      openPostgresBackend({} as never),
      (e) => e instanceof ValidationError && /options\.url/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "mysql://x" }),
      (e) => e instanceof ValidationError && /options\.url/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "postgres://x", schema: "Bad-Name" }),
      (e) => e instanceof ValidationError && /options\.schema/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "postgres://x", limits: { maxKeySize: 10_000 } }),
      (e) => e instanceof ValidationError && /options\.limits\.maxKeySize/.test(e.message),
    );
    await assert.rejects(
      openPostgresBackend({ url: "postgres://x", nope: 1 } as never),
      (e) => e instanceof ValidationError && /options\.nope/.test(e.message),
    );
  });
});
