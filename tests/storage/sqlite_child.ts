/**
 * A child process for the SQLite multi-process tests and the storage benchmark. Runs under Deno
 * (`deno run -A sqlite_child.ts …`) or Bun (`bun sqlite_child.ts …`).
 *
 * Usage: `sqlite_child.ts <db path> <mode> <JSON params>`. It prints one JSON object per line
 * on stdout: `{"ready":true}` once the backend is open, then what the mode reports. It reads
 * commands (one per line) on stdin: `go` starts the work where a mode waits for it.
 *
 * Modes:
 * - `increment` `{ key, count, concurrency, tag, log? }`: `count` read-modify-write increments
 *   of the 64-bit counter at `key` (get, then set; not an atomic add), `concurrency` at a time;
 *   each also appends a versionstamped log entry `log/<stamp><tag>` holding the value it wrote.
 *   Reports `{"done":true,"writes":[[stampHex, value], …]}`. With `log: false`, only the
 *   increments, and `{"done":true,"writes":[]}`.
 * - `watch` `{ key, rounds }`: for each round, watches `key` (reporting `{"armed":i}`), then
 *   reports `{"fired":i}` when the watch fires.
 * - `tenant` `{ tenant, count, tag }`: writes `count` keys in the tenant, then reads the whole
 *   tenant back and reports `{"done":true,"keys":n,"foreign":m}` (`m` values not its own tag).
 * - `open` `{ key }`: reports ready _before_ opening the file; on `go`, opens it (so that many
 *   processes open one new file at once), adds 1 to the counter at `key`, closes it and reports
 *   `{"done":true}`.
 */

import process from "node:process";
import { createInterface } from "node:readline";
import { openSqliteBackend, openTenant, readInt64LE } from "../../mod.ts";
import { int64LE, toHex } from "../../lib/bytes.ts";

const [path, mode, json] = process.argv.slice(2);
if (path === undefined || mode === undefined) {
  console.error("usage: sqlite_child.ts <db path> <mode> <JSON params>");
  process.exit(2);
}
const params = JSON.parse(json ?? "{}");
const enc = new TextEncoder();

/** Writes one line; resolves once it is handed to the OS (a large last line must not be cut). */
const say = (o: unknown) =>
  new Promise<void>((resolve) => process.stdout.write(JSON.stringify(o) + "\n", () => resolve()));

const commands = createInterface({ input: process.stdin });
const waiting: Array<(line: string) => void> = [];
commands.on("line", (line) => waiting.shift()?.(line.trim()));
const command = () => new Promise<string>((resolve) => waiting.push(resolve));

if (mode === "open") {
  await say({ ready: true });
  await command();
  const b = await openSqliteBackend({ path });
  await b.transact((tx) => tx.add(enc.encode(params.key), 1));
  await b.close();
  await say({ done: true });
  process.exit(0);
}

const backend = await openSqliteBackend({ path });

async function increment(): Promise<void> {
  const key = enc.encode(params.key);
  const tag = enc.encode(params.tag);
  const log = params.log !== false;
  const writes: Array<[string, number]> = [];
  let next = 0;
  const worker = async () => {
    while (next < params.count) {
      next++;
      let stamp!: Promise<Uint8Array>;
      const value = await backend.transact(async (tx) => {
        const n = readInt64LE(await tx.get(key)) + 1n;
        tx.set(key, int64LE(n));
        if (log) {
          tx.setVersionstampedKey(enc.encode("log/"), tag, int64LE(n));
          stamp = tx.getVersionstamp();
        }
        return n;
      });
      if (log) writes.push([toHex(await stamp), Number(value)]);
    }
  };
  await Promise.all(Array.from({ length: params.concurrency }, worker));
  await say({ done: true, writes });
}

async function watch(): Promise<void> {
  const key = enc.encode(params.key);
  for (let i = 0; i < params.rounds; i++) {
    const w = await backend.transact(async (tx) => {
      await tx.get(key);
      return tx.watch(key);
    });
    await say({ armed: i });
    const fired = await w.promise;
    await say({ fired: i, ok: fired });
  }
  await say({ done: true });
}

async function tenant(): Promise<void> {
  const t = await openTenant(backend, params.tenant);
  const tag = enc.encode(params.tag);
  for (let i = 0; i < params.count; i += 10) {
    await t.transact((tx) => {
      for (let j = i; j < Math.min(i + 10, params.count); j++) tx.set(enc.encode(`k${j}`), tag);
    });
  }
  const rows = await t.transact((tx) => tx.getRange(new Uint8Array([0]), new Uint8Array()));
  const own = new TextDecoder().decode(tag);
  const foreign = rows.filter((r) => new TextDecoder().decode(r.value) !== own).length;
  await say({ done: true, keys: rows.length, foreign });
}

await say({ ready: true, runtime: "Bun" in globalThis ? "bun" : "deno", pid: process.pid });
if (mode !== "watch") {
  const c = await command();
  if (c !== "go") throw new Error(`Expected "go", got "${c}"`);
}
if (mode === "increment") await increment();
else if (mode === "watch") await watch();
else if (mode === "tenant") await tenant();
else throw new Error(`Unknown mode ${mode}`);
await backend.close();
commands.close();
process.exit(0);
