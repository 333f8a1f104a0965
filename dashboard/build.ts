/**
 * Builds the dashboard's bundle, `dashboard/dist/app.js` and `dashboard/dist/app.css`, from
 * `dashboard/src/` with esbuild (pinned in package.json). The bundle is committed so users
 * need no build step; `deno task build:dashboard` rewrites it, and a test rebuilds it and
 * compares it with the committed files.
 *
 * @module
 */

import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

/** The bundle's files, by name in `dashboard/dist/`. */
export interface Bundle {
  "app.js": string;
  "app.css": string;
}

const root = fileURLToPath(new URL("./", import.meta.url));

/** Builds the bundle in memory. */
export async function buildDashboard(): Promise<Bundle> {
  const common: esbuild.BuildOptions = {
    absWorkingDir: root,
    bundle: true,
    minify: true,
    write: false,
    outdir: "dist",
    platform: "browser",
    target: ["chrome120", "firefox120", "safari17"],
    logLevel: "silent",
  };
  try {
    const [js, css] = await Promise.all([
      esbuild.build({
        ...common,
        entryPoints: { app: "src/main.tsx" },
        format: "esm",
        jsx: "automatic",
        jsxImportSource: "preact",
      }),
      esbuild.build({ ...common, entryPoints: { app: "src/style.css" } }),
    ]);
    return { "app.js": js.outputFiles![0]!.text, "app.css": css.outputFiles![0]!.text };
  } finally {
    // esbuild runs a service process; stopping it lets the caller exit (and Deno's test
    // sanitizers see no leaked child process).
    await esbuild.stop();
  }
}

if (import.meta.main) {
  const bundle = await buildDashboard();
  for (const [name, text] of Object.entries(bundle)) {
    await writeFile(new URL(`./dist/${name}`, import.meta.url), text);
    console.log(`dashboard/dist/${name}: ${text.length.toLocaleString("en")} bytes`);
  }
}
