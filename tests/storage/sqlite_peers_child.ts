/**
 * A child process for `sqlite_peers.test.ts`. Runs under Deno (`deno run -A …`) or Bun.
 *
 * Usage: `sqlite_peers_child.ts <db path>`. Opens the backend (through whatever path it is
 * given: a symbolic link, say) and prints one JSON object per line on stdout:
 * `{"ready":true,"pid":n}` once open. Commands on stdin, one per line:
 * - `write <key> <value>`: one write transaction setting `key` to the text `value`; reports
 *   `{"wrote":"<value>","counter":c}`, `c` the commit counter of its versionstamp;
 * - `exit`: closes the backend and exits. So does the end of stdin.
 */

import process from "node:process";
import { createInterface } from "node:readline";
import { openSqliteBackend } from "../../mod.ts";

const [path] = process.argv.slice(2);
if (path === undefined) {
  console.error("usage: sqlite_peers_child.ts <db path>");
  process.exit(2);
}
const enc = new TextEncoder();
const say = (o: unknown) =>
  new Promise<void>((resolve) => process.stdout.write(JSON.stringify(o) + "\n", () => resolve()));

const backend = await openSqliteBackend({ path, synchronous: "normal" });
const lines = createInterface({ input: process.stdin });
let work = Promise.resolve();
const exit = () =>
  work.then(async () => {
    await backend.close();
    process.exit(0);
  });
lines.on("close", exit);
lines.on("line", (line) => {
  const [command, key, value] = line.trim().split(" ");
  if (command === "exit") return void exit();
  if (command !== "write" || key === undefined || value === undefined) return;
  work = work.then(async () => {
    let stamp!: Promise<Uint8Array>;
    await backend.transact((tx) => {
      tx.set(enc.encode(key), enc.encode(value));
      stamp = tx.getVersionstamp();
    });
    const s = await stamp;
    const counter = Number(new DataView(s.buffer, s.byteOffset, 8).getBigUint64(0));
    await say({ wrote: value, counter });
  });
});
await say({ ready: true, pid: process.pid });
