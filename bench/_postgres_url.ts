/** The PostgreSQL server the PostgreSQL benchmarks use. */

import process from "node:process";
import { spawnSync } from "node:child_process";

/** `DGEN_PG_URL` if set, else the URL of the private server `.ci/postgres.sh start` starts. */
export function serverUrl(): string {
  if (process.env.DGEN_PG_URL) return process.env.DGEN_PG_URL;
  const started = spawnSync("bash", [".ci/postgres.sh", "start"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  if (started.status !== 0) throw new Error("Could not start PostgreSQL (.ci/postgres.sh start)");
  const url = /DGEN_PG_URL='([^']+)'/.exec(started.stdout)?.[1];
  if (!url) throw new Error("postgres.sh printed no DGEN_PG_URL");
  return url;
}
