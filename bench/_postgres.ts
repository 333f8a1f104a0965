/** The PostgreSQL server the PostgreSQL benchmarks use, and their bare baseline. */

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

/** The slice of an `npm:postgres` client the bare baseline uses. */
interface BareSql {
  unsafe(
    query: string,
    parameters?: unknown[],
    options?: { prepare?: boolean },
  ): Promise<Array<Record<string, unknown>>>;
}

/**
 * The bare baseline: one serializable single-row read-modify-write on `table` (a
 * `(k int primary key, v bigint)` table holding row 1), written directly against `npm:postgres`
 * with one connection: `BEGIN SERIALIZABLE` and the `SELECT` in one round trip, the `UPDATE` and
 * `COMMIT` in a second, as the dgen backend pipelines a read-modify-write.
 */
export async function bareRmw(sql: BareSql, table: string): Promise<void> {
  const [, [row]] = await Promise.all([
    sql.unsafe("begin isolation level serializable"),
    sql.unsafe(`select v from ${table} where k = $1`, [1], { prepare: true }),
  ]);
  await Promise.all([
    sql.unsafe(`update ${table} set v = $2 where k = $1`, [1, Number(row!.v) + 1], {
      prepare: true,
    }),
    sql.unsafe("commit"),
  ]);
}
