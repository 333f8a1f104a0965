/**
 * A child process that opens a SQLite backend, starts a non-consuming instance of a counter,
 * casts to it and calls nothing else: it never stops the instance or closes the backend. It
 * prints `{"done":true}` and must then exit on its own (SPEC §4: a non-consuming instance does
 * not keep the process alive). Usage: `exit_child.ts <db path>`.
 */

import process from "node:process";
import { openSqliteBackend, openTenant, start } from "../../mod.ts";
import { Counter } from "../server/_defs.ts";

const backend = await openSqliteBackend({ path: process.argv[2]! });
const counter = await start(Counter, [], {
  tenant: await openTenant(backend, "t"),
  consume: false,
});
await counter.cast("bump", 1);
process.stdout.write(JSON.stringify({ done: true }) + "\n");
