/**
 * Run as a child process by foundationdb.test.ts. Mode `import` (the default) imports
 * `mod.ts` and reports which modules of npm:foundationdb (and its addon loader) had been
 * evaluated, then opens a FoundationDB backend, which must load them, and reports again.
 * Mode `open` (with an optional `--api=N`) reports the outcome of opening a backend. Prints
 * one JSON line.
 */

import { createRequire } from "node:module";
import process from "node:process";

const require = createRequire(import.meta.url);
const loaded = () =>
  Object.keys(require.cache).filter((k) =>
    /node_modules[\\/](foundationdb|node-gyp-build)[\\/]/.test(k)
  );

const mod = await import("../../mod.ts");
if (process.argv.includes("open")) {
  const api = process.argv.find((a) => a.startsWith("--api="))?.slice(6);
  await mod.openFoundationdbBackend({
    openTimeout: 2000,
    ...(api === undefined ? {} : { apiVersion: Number(api) }),
  }).then(
    async (b) => {
      await b.close();
      console.log(JSON.stringify({ opened: true }));
    },
    (e: Error) => {
      const cause = e.cause as { code?: unknown } | undefined;
      console.log(JSON.stringify({
        name: e.name,
        message: e.message,
        cause: cause === undefined ? null : { class: cause.constructor.name, code: cause.code },
      }));
    },
  );
} else {
  const afterImport = loaded();
  await mod.openFoundationdbBackend({ openTimeout: 2000 }).then((b) => b.close(), () => {});
  console.log(JSON.stringify({ afterImport, afterOpen: loaded() }));
}
