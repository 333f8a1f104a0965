/**
 * Benchmark of the PostgreSQL backend (a script, not a test): `deno task bench:postgres`, or
 * `bun bench/postgres.ts`. Uses the server named by `DGEN_PG_URL`, or starts the private one
 * with `.ci/postgres.sh start`. Prints a table, then one JSON line.
 *
 * Measured in one run, on one schema created for the run and dropped after it:
 * - single-key read-modify-write (read a counter, write it + 1), sequential, through the
 *   backend, beside the same transaction through npm:postgres directly (SERIALIZABLE, the
 *   same two pipelined round trips) and a bare one-statement upsert (one round trip);
 * - the same read-modify-write from concurrent clients on one key (conflicts and retries),
 *   beside concurrent atomic adds on one key (which never conflict);
 * - versionstamped commits from concurrent clients (they go one at a time through the stamp
 *   lock), beside plain blind writes from the same clients;
 * - what the notification every write sends (for watches) costs: a bare upsert with and
 *   without `pg_notify`, from one and from 16 clients.
 *
 * The cases of each comparison run in alternating rounds, so that load from other processes
 * falls on them alike. Settings (environment): BENCH_OPS (operations per case, default 2000).
 */

import process from "node:process";
import { type Backend, int64LE, openPostgresBackend, readInt64LE } from "../mod.ts";
import { bareRmw, serverUrl } from "./_postgres.ts";
import { percentile } from "./_stats.ts";

const OPS = Number(process.env.BENCH_OPS ?? 2000);
const ROUNDS = 5;
const CLIENTS = [1, 4, 16];

interface Row {
  case: string;
  clients: number;
  ops: number;
  /** Commits per second. */
  rate: number;
  p50: number;
  p99: number;
  /** Transaction bodies run again after a conflict, per commit. */
  retries: number;
}

/** One case of a comparison: `op` runs one operation and returns how many bodies ran. */
interface Case {
  name: string;
  clients: number;
  op: (client: number, i: number) => Promise<number>;
}

/**
 * Runs the cases of one comparison in alternating rounds (ROUNDS rounds of OPS / ROUNDS
 * operations each), so that the load other processes put on the machine falls on all of them
 * alike rather than on whichever ran first.
 */
async function compare(cases: Case[]): Promise<Row[]> {
  const stats = cases.map(() => ({ latencies: [] as number[], bodies: 0, seconds: 0, ops: 0 }));
  const perRound = Math.ceil(OPS / ROUNDS);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [n, c] of cases.entries()) {
      const st = stats[n]!;
      let next = 0;
      const start = performance.now();
      await Promise.all(Array.from({ length: c.clients }, async (_, client) => {
        for (let i = next++; i < perRound; i = next++) {
          const t = performance.now();
          const runs = await c.op(client, round * perRound + i);
          st.bodies += runs;
          st.latencies.push(performance.now() - t);
        }
      }));
      st.seconds += (performance.now() - start) / 1000;
      st.ops += perRound;
    }
  }
  return cases.map((c, n) => {
    const st = stats[n]!;
    st.latencies.sort((a, b) => a - b);
    const row: Row = {
      case: c.name,
      clients: c.clients,
      ops: st.ops,
      rate: Math.round(st.ops / st.seconds),
      p50: +percentile(st.latencies, 0.5).toFixed(2),
      p99: +percentile(st.latencies, 0.99).toFixed(2),
      retries: +((st.bodies - st.ops) / st.ops).toFixed(3),
    };
    console.error(`  ${row.case} ×${row.clients}: ${row.rate}/s`);
    return row;
  });
}

/** One transaction through the backend; resolves with how many times its body ran. */
async function counted(
  b: Backend,
  body: (tx: Parameters<Parameters<Backend["transact"]>[0]>[0]) => void | Promise<void>,
): Promise<number> {
  let runs = 0;
  await b.transact(async (tx) => {
    runs++;
    await body(tx);
  });
  return runs;
}

const enc = new TextEncoder();
const k = (s: string) => enc.encode(s);

async function main(): Promise<void> {
  const url = serverUrl();
  const { default: postgres } = await import("postgres");
  const schema = `bench_${Date.now().toString(36)}`;
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  const bare = postgres(url, { max: 1, onnotice: () => {}, fetch_types: false });
  const pool = postgres(url, { max: 16, onnotice: () => {}, fetch_types: false });
  const backend = await openPostgresBackend({ url, schema, maxConnections: 16 });
  const rows: Row[] = [];
  const [version] = await admin.unsafe("show server_version");
  const [sync] = await admin.unsafe("show synchronous_commit");
  try {
    await admin.unsafe(
      `create table "${schema}".bare (k int primary key, v bigint not null); insert into "${schema}".bare values (1, 0)`,
    );
    // Warm up connections and prepared statements.
    for (let i = 0; i < 50; i++) {
      await backend.transact(async (tx) => tx.set(k("warm"), (await tx.get(k("warm"))) ?? k("0")));
    }

    // Sequential read-modify-write and blind write: the backend beside npm:postgres alone.
    rows.push(
      ...await compare([
        {
          name: "rmw: bare npm:postgres (BEGIN SERIALIZABLE; SELECT; UPDATE; COMMIT)",
          clients: 1,
          op: async () => {
            await bareRmw(bare, `"${schema}".bare`);
            return 1;
          },
        },
        {
          name: "rmw: dgen backend (get + set)",
          clients: 1,
          op: () =>
            counted(backend, async (tx) => {
              const n = readInt64LE(await tx.get(k("rmw")));
              tx.set(k("rmw"), int64LE(n + 1n));
            }),
        },
        {
          name: "upsert: bare npm:postgres (one statement, autocommit)",
          clients: 1,
          op: async (_c, i) => {
            await bare.unsafe(
              `insert into "${schema}".bare values (1, $1) on conflict (k) do update set v = excluded.v`,
              [i],
              { prepare: true },
            );
            return 1;
          },
        },
        {
          name: "set: dgen backend (blind write)",
          clients: 1,
          op: (_c, i) => counted(backend, (tx) => tx.set(k("blind"), int64LE(i))),
        },
      ]),
    );

    // Contention on one key: read-modify-write conflicts, adds do not.
    for (const c of CLIENTS.slice(1)) {
      rows.push(
        ...await compare([
          {
            name: "rmw one key: dgen backend",
            clients: c,
            op: () =>
              counted(backend, async (tx) => {
                const n = readInt64LE(await tx.get(k(`hot${c}`)));
                tx.set(k(`hot${c}`), int64LE(n + 1n));
              }),
          },
          {
            name: "add one key: dgen backend",
            clients: c,
            op: () => counted(backend, (tx) => tx.add(k(`adds${c}`), 1)),
          },
        ]),
      );
    }

    // What notifications cost: every write of the backend sends one (for watches), and
    // PostgreSQL serializes the commits of transactions that notify.
    for (const c of [1, 16]) {
      rows.push(
        ...await compare([false, true].map((notify) => ({
          name: `upsert own row: bare npm:postgres${notify ? " + pg_notify" : ""}`,
          clients: c,
          op: async (client: number, i: number) => {
            await pool.unsafe(
              notify
                ? `with w as (insert into "${schema}".bare values ($1, $2) on conflict (k) do update set v = excluded.v returning k) select pg_notify('bench', k::text) from w`
                : `insert into "${schema}".bare values ($1, $2) on conflict (k) do update set v = excluded.v`,
              [100 + client, i],
              { prepare: true },
            );
            return 1;
          },
        }))),
      );
    }

    // Versionstamped commits go one at a time through the stamp lock; plain writes do not.
    for (const c of CLIENTS) {
      rows.push(
        ...await compare([
          {
            name: "stamped key: dgen backend",
            clients: c,
            op: (client, i) =>
              counted(backend, (tx) =>
                tx.setVersionstampedKey(
                  k(`q${c}/`),
                  new Uint8Array([client, i >> 8, i & 255]),
                  k("m"),
                )),
          },
          {
            name: "set own key: dgen backend",
            clients: c,
            op: (client, i) => counted(backend, (tx) => tx.set(k(`own${c}/${client}`), int64LE(i))),
          },
        ]),
      );
    }

    // The counters must be exact: this is also a check of the runs above.
    const expected = BigInt(Math.ceil(OPS / ROUNDS) * ROUNDS);
    const hot = readInt64LE(await backend.transact((tx) => tx.get(k("rmw"))));
    if (hot !== expected) throw new Error(`rmw counter ${hot}, expected ${expected}`);
    for (const c of CLIENTS.slice(1)) {
      for (const name of [`adds${c}`, `hot${c}`]) {
        const n = readInt64LE(await backend.transact((tx) => tx.get(k(name))));
        if (n !== expected) throw new Error(`${name} counter ${n}, expected ${expected}`);
      }
    }
  } finally {
    await backend.close();
    await admin.unsafe(`drop schema if exists "${schema}" cascade`);
    await bare.end();
    await pool.end();
    await admin.end();
  }

  const bareRate = rows[0]!.rate;
  const runtime = "Bun" in globalThis
    ? `bun ${process.versions.bun}`
    : `deno ${process.versions.deno}`;
  console.log(
    `\nPostgreSQL ${version!.server_version} (synchronous_commit=${
      sync!.synchronous_commit
    }), ${runtime}, ${OPS} operations per case\n`,
  );
  const header = [
    "case",
    "clients",
    "commits/s",
    "p50 ms",
    "p99 ms",
    "retries/commit",
    "vs bare rmw",
  ];
  const table = rows.map((r) => [
    r.case,
    String(r.clients),
    String(r.rate),
    r.p50.toFixed(2),
    r.p99.toFixed(2),
    r.retries.toFixed(2),
    (r.rate / bareRate).toFixed(2) + "x",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const t of table) console.log(line(t));
  console.log(
    JSON.stringify({
      bench: "postgres",
      runtime,
      server: version!.server_version,
      synchronous_commit: sync!.synchronous_commit,
      ops: OPS,
      rows,
    }),
  );
}

await main();
