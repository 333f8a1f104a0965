import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { buildDashboard } from "../../dashboard/build.ts";

describe("dashboard bundle", () => {
  it("is what dashboard/src builds to (run `deno task build:dashboard` after editing it)", async () => {
    const built = await buildDashboard();
    for (const [name, text] of Object.entries(built)) {
      const committed = await readFile(
        new URL(`../../dashboard/dist/${name}`, import.meta.url),
        "utf8",
      );
      assert.ok(
        committed === text,
        `dashboard/dist/${name} differs from a fresh build of dashboard/src ` +
          `(${committed.length} vs ${text.length} bytes): run \`deno task build:dashboard\``,
      );
    }
  });
});
