/**
 * The dashboard page: the committed bundle (`dashboard/dist/`) inlined into the HTML shell,
 * served with a Content-Security-Policy that allows exactly that script and style. Inlining
 * keeps the token (when one is set) needed only by the page's own requests, and the policy
 * means that even a rendering bug could not run injected script.
 *
 * @module
 */

import { DGenError } from "../errors.ts";
import { readTextAsset } from "../runtime/http.ts";
import type { Page } from "./handler.ts";

const ASSETS = {
  shell: new URL("../../dashboard/index.html", import.meta.url),
  script: new URL("../../dashboard/dist/app.js", import.meta.url),
  style: new URL("../../dashboard/dist/app.css", import.meta.url),
};

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  let binary = "";
  for (const b of new Uint8Array(digest)) binary += String.fromCharCode(b);
  return `'sha256-${btoa(binary)}'`;
}

/** Loads the page from the committed bundle. */
export async function loadPage(): Promise<Page> {
  let shell: string, script: string, style: string;
  try {
    [shell, script, style] = await Promise.all([
      readTextAsset(ASSETS.shell),
      readTextAsset(ASSETS.script),
      readTextAsset(ASSETS.style),
    ]);
  } catch (e) {
    throw new DGenError(
      "dashboard_assets",
      `The dashboard's bundle could not be read (${(e as Error).message}); ` +
        "rebuild it with `deno task build:dashboard`",
      { cause: e },
    );
  }
  // Inline content must not close its own element early.
  if (/<\/script/i.test(script) || /<\/style/i.test(style)) {
    throw new DGenError("dashboard_assets", "The dashboard bundle contains a closing tag");
  }
  const html = shell
    .replace("<!-- style -->", () => `<style>${style}</style>`)
    .replace("<!-- script -->", () => `<script type="module">${script}</script>`);
  const csp = [
    "default-src 'none'",
    `script-src ${await sha256(script)}`,
    `style-src ${await sha256(style)}`,
    "connect-src 'self'",
    "img-src data:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
  return { html, csp };
}
