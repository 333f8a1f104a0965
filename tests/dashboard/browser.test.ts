/**
 * The dashboard page in headless Chromium (Debian's `chromium`, driven by playwright-core).
 * Skipped, with the reason printed, where /usr/bin/chromium is missing.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  defineServer,
  lock,
  noreply,
  openMemoryBackend,
  openTenant,
  reply,
  start,
} from "../../mod.ts";
import { serveDashboardWith } from "../../lib/dashboard/serve.ts";
import { Counter } from "../server/_defs.ts";

/** The page's document, as the functions run in the browser see it (tests have no DOM lib). */
declare const document: {
  querySelector(selector: string): { textContent: string | null } | null;
  querySelectorAll(selector: string): { length: number };
  getAnimations(): Array<{ playState: string }>;
};

const CHROMIUM = "/usr/bin/chromium";
const SKIP = existsSync(CHROMIUM)
  ? false
  : `${CHROMIUM} is missing (install it with: apt-get update && apt-get install -y chromium)`;
if (SKIP) console.log(`dashboard browser test skipped: ${SKIP}`);

const XSS = `<img src=x onerror=alert(1)>`;
const ARTIFACTS = new URL("../../test-artifacts/", import.meta.url);

interface Board {
  count: number;
  note: string;
  tags: Set<string>;
  scores: Map<string, number>;
  total: bigint;
  updated: Date;
  raw: Uint8Array;
  missing: undefined;
  ratio: number;
}

function boardServer() {
  const gate = Promise.withResolvers<void>();
  const def = defineServer({
    name: "board",
    init: (): Board => ({
      count: 0,
      note: `hello ${XSS}`,
      tags: new Set(["alpha", "beta"]),
      scores: new Map([["ada", 3], ["linus", 2]]),
      total: 12345678901234567890n,
      updated: new Date("2026-11-20T09:30:00Z"),
      raw: new Uint8Array([0xde, 0xad, 0xbe, 0xef]),
      missing: undefined,
      ratio: NaN,
    }),
    handleCall: {
      publish: (_: undefined, _from, s: Board) => lock({ ...s, note: "publishing…" }),
    },
    handleCast: {
      bump: (by: number, s: Board) => noreply({ ...s, count: s.count + by }),
      fail: (_: undefined, _s: Board): never => {
        throw new Error("this message always fails");
      },
    },
    handleLocked: async (_event, s: Board) => {
      await gate.promise;
      return reply("published", { ...s, note: "published" });
    },
  });
  return { def, gate };
}

describe("dashboard page in headless Chromium", { skip: SKIP }, () => {
  it("shows servers live, the lock, dead letters, and renders state as text", {
    timeout: 120_000,
  }, async () => {
    const { chromium } = await import("playwright-core");
    const backend = openMemoryBackend();
    const prod = await openTenant(backend, "acme/prod");
    const staging = await openTenant(backend, "acme/staging");
    const board = boardServer();
    const errors = console.error;
    console.error = () => {}; // the failing cast logs on purpose
    const profile = await mkdtemp(join(tmpdir(), "dgen-chromium-"));
    const token = "browser-test-token";
    const tuning = { retryMs: 300 };
    let dash = await serveDashboardWith({ tenants: [prod, staging], token }, tuning);
    const port = Number(new URL(dash.url).port);
    const ref = await start(board.def, [], {
      tenant: prod,
      deadLetterThreshold: 1,
      lockLease: 8000,
    });
    const sender = await start(board.def, [], { tenant: prod, consume: false });
    const stagingRef = await start(board.def, [], { tenant: staging, id: "staging-board" });
    const counter = await start(Counter, [1234], { tenant: prod, id: "counter" });
    const visits = await start(Counter, [], { tenant: prod, id: "visits", consume: false });
    // Casts to a server nobody consumes: they wait in its queue.
    await visits.cast("bump", 3);
    await visits.cast("bump", 5);
    const refs = [ref, sender, stagingRef, counter, visits];
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1360, height: 900 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
    });
    try {
      const page = context.pages()[0] ?? await context.newPage();
      const dialogs: string[] = [];
      const pageErrors: string[] = [];
      const consoleErrors: string[] = [];
      page.on("dialog", (d) => {
        dialogs.push(d.message());
        void d.dismiss();
      });
      page.on("pageerror", (e) => pageErrors.push(e.message));
      page.on("console", (m) => {
        if (m.type() === "error") consoleErrors.push(m.text());
      });
      await page.goto(dash.url);
      const card = page.locator('[data-server="board"]');
      const state = card.locator('[data-field="state"]');
      await card.waitFor({ timeout: 10_000 });
      await page.locator('[data-status="live"]').waitFor({ timeout: 10_000 });

      // The state tree: the display tags are drawn as what they are.
      const stateText = await state.innerText();
      for (const shown of ["Set(2)", "Map(2)", "12345678901234567890n", "NaN", "undefined"]) {
        assert.ok(stateText.includes(shown), `state shows ${shown}: ${stateText}`);
      }
      assert.ok(stateText.includes("de ad be ef"), "bytes are shown in hex");
      assert.ok(stateText.includes("2026-11-20T09:30:00.000Z"), "dates are shown");

      // User data is text: the HTML in the state string shows as source and creates nothing.
      assert.ok(stateText.includes(XSS), `the note shows as text: ${stateText}`);
      assert.equal(await page.locator("img").count(), 0, "an img element was created");

      // A cast shows within a second.
      await ref.cast("bump", 41);
      const castAt = Date.now();
      await page.waitForFunction(
        () =>
          document.querySelector('[data-server="board"] [data-field="state"]')?.textContent
            ?.includes("41"),
        null,
        { timeout: 1000, polling: 20 },
      );
      const shownAfter = Date.now() - castAt;

      // The lock shows while handleLocked runs, with its lease counting down.
      const published = ref.call("publish", undefined, { timeout: 30_000 });
      const lockPart = card.locator('[data-field="lock"]');
      await lockPart.getByText("publish", { exact: true }).waitFor({ timeout: 5000 });
      const lease1 = await lockPart.locator('[data-field="lease"]').innerText();
      assert.match(lease1, /lease .* left/);
      await card.locator(".badge-lock").waitFor({ timeout: 5000 });
      // Messages queue behind the lock; a second, sending-only instance is listed.
      await sender.cast("bump", 1);
      await sender.cast("bump", 2);
      await card.locator('[data-field="queue-length"]').getByText("2", { exact: true })
        .waitFor({ timeout: 5000 });
      await card.getByText("sending only").first().waitFor({ timeout: 5000 });
      await page.waitForFunction(
        (before) =>
          document.querySelector('[data-server="board"] [data-field="lease"]')?.textContent !==
            before,
        lease1,
        { timeout: 5000 },
      );
      // Let the change highlights (and, after a scheme switch, colour transitions) finish,
      // for a calm picture; the lease bar and the live dot move all the time.
      const calm = () =>
        page.waitForFunction(
          () =>
            !document.getAnimations().some((a) => {
              const named = a as unknown as { animationName?: string; transitionProperty?: string };
              return a.playState === "running" && named.animationName !== "breathe" &&
                named.transitionProperty !== "width";
            }),
          null,
          { timeout: 5000 },
        );
      await calm();
      await mkdir(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: new URL("dashboard.png", ARTIFACTS).pathname });
      await page.emulateMedia({ colorScheme: "dark" });
      await calm();
      await page.screenshot({ path: new URL("dashboard-dark.png", ARTIFACTS).pathname });
      await page.emulateMedia({ colorScheme: "light" });
      board.gate.resolve();
      assert.equal(await published, "published");
      await lockPart.getByText("free").waitFor({ timeout: 5000 });

      // A dead letter shows in the count.
      await ref.cast("fail");
      await card.locator('[data-field="dead-letter-count"]').getByText("1", { exact: true })
        .waitFor({ timeout: 5000 });

      // The other tenant (its name has a '/' that travels percent-encoded).
      await page.getByRole("button", { name: "acme/staging" }).click();
      await page.locator('[data-server="staging-board"]').waitFor({ timeout: 5000 });
      await page.getByRole("button", { name: "acme/prod" }).click();
      await card.waitFor({ timeout: 5000 });

      assert.deepEqual(dialogs, [], "a dialog opened");
      assert.deepEqual(pageErrors, [], "the page threw");
      assert.deepEqual(consoleErrors, [], "the page logged errors (a CSP violation?)");
      assert.equal(await page.locator("img").count(), 0, "an img element was created");
      assert.equal(await page.evaluate(() => document.querySelectorAll("img").length), 0);

      // A lost connection shows, and the page recovers when the dashboard is back.
      await dash.close();
      await page.locator('[data-status="live"]').waitFor({ state: "detached", timeout: 5000 });
      const lost = await page.locator("[data-status]").getAttribute("data-status");
      assert.ok(lost === "reconnecting" || lost === "offline", `status ${lost}`);
      dash = await serveDashboardWith({ tenants: [prod, staging], token, port }, tuning);
      await page.locator('[data-status="live"]').waitFor({ timeout: 10_000 });
      await ref.cast("bump", 100);
      await page.waitForFunction(
        () =>
          document.querySelector('[data-server="board"] [data-field="state"]')?.textContent
            ?.includes("144"),
        null,
        { timeout: 5000 },
      );
      console.log(`dashboard browser test: a cast showed on the page after ${shownAfter} ms`);
    } finally {
      board.gate.resolve();
      await context.close();
      await rm(profile, { recursive: true, force: true });
      for (const r of refs) await r.stop();
      await dash.close();
      await backend.close();
      console.error = errors;
    }
  });
});
