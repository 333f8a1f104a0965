/**
 * Several OS processes serve one server on a shared backend (a SQLite file; a PostgreSQL
 * schema, each process with its own connections, over the loopback and then with every process
 * in a network namespace of its own, reaching the database over its own veth link as a
 * separate host would): three consuming processes (Deno and Bun) and a client process;
 * consumers are SIGKILLed at random and restarted while the client casts and calls (and, on
 * PostgreSQL, the database is restarted with `pg_ctl restart -m immediate` midway). Afterwards every acknowledged cast was applied
 * exactly once, every call reply fits the sequential history, no lock is held and the queue is
 * empty. Random choices come from a printed seed (`DGEN_SEED` replays one).
 */
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { type Backend, openSqliteBackend, openTenant, readServerView } from "../../mod.ts";
import {
  dropTestSchema,
  openTestPostgres,
  postgresRestartSkip,
  postgresUrl,
  restartPostgres,
  testSchemaName,
  withAdmin,
} from "../storage/_postgres.ts";
import { Child, missingRuntimes, type Runtime, testScript } from "../_processes.ts";
import { bridgeHost, type Hosts, makeHosts, netnsSkip } from "../_netns.ts";
import { tempDbPath } from "./_backends.ts";
import { waitFor } from "../_helpers.ts";
import { prng } from "../../lib/storage/faults.ts";

const skip = missingRuntimes();
if (netnsSkip !== undefined && postgresRestartSkip === undefined) {
  console.log(`multi-process test on network-namespace hosts skipped: ${netnsSkip}`);
}
const SCRIPT = testScript("./server/mp_child.ts");
const CASTS = Number(process.env.DGEN_MP_CASTS ?? 2000);
const CALLS = Number(process.env.DGEN_MP_CALLS ?? 500);

/** What the checker needs from a finished run. */
export interface History {
  ackedCasts: Set<string>;
  okCalls: Map<string, number>;
  invoked: Set<string>;
}

/** Checks the final Tally state against the client's history; returns a summary. */
export function checkTally(log: string[], count: number, h: History): string {
  assert.equal(count, log.length, "count equals the number of applied messages");
  const seen = new Set<string>();
  for (const id of log) {
    assert.ok(!seen.has(id), `message ${id} applied twice`);
    assert.ok(h.invoked.has(id), `message ${id} applied but never sent`);
    seen.add(id);
  }
  for (const id of h.ackedCasts) assert.ok(seen.has(id), `acknowledged cast ${id} lost`);
  for (const [id, r] of h.okCalls) {
    assert.equal(log[r - 1], id, `call ${id} replied ${r}, but position ${r} holds ${log[r - 1]}`);
  }
  return `${log.length} applied, ${h.ackedCasts.size} acked casts, ${h.okCalls.size} ok calls`;
}

interface Engine {
  name: string;
  skip?: string;
  /**
   * The child's backend spec, how to open it here to check the end state, and the network
   * namespace of each child (consumers, then the client), if they run on hosts of their own.
   */
  prepare(): {
    spec: Record<string, unknown>;
    open(): Promise<Backend>;
    cleanup(): Promise<void>;
    hosts?: Hosts;
  };
  /** Something to do to the database midway (a restart), if any. */
  disrupt?(): Promise<void>;
}

const engines: Engine[] = [
  {
    name: "SQLite",
    prepare() {
      const path = tempDbPath("mp");
      return {
        spec: { kind: "sqlite", path },
        open: () => openSqliteBackend({ path }),
        cleanup: () => Promise.resolve(),
      };
    },
  },
  {
    name: "PostgreSQL",
    skip: postgresRestartSkip,
    prepare() {
      const schema = testSchemaName();
      return {
        spec: { kind: "postgres", url: postgresUrl, schema },
        open: () => openTestPostgres({ schema, keepSchema: true }),
        cleanup: () => dropTestSchema(schema),
      };
    },
    disrupt: () => restartPostgres(),
  },
  {
    name: "PostgreSQL, each process a host of its own (network namespaces)",
    skip: postgresRestartSkip ?? netnsSkip,
    prepare() {
      const schema = testSchemaName();
      const url = new URL(postgresUrl!);
      url.hostname = bridgeHost!;
      const hosts = makeHosts(4);
      return {
        spec: { kind: "postgres", url: url.href, schema },
        open: () => openTestPostgres({ schema, keepSchema: true }),
        cleanup: async () => {
          hosts.remove();
          await dropTestSchema(schema);
        },
        hosts,
      };
    },
    disrupt: () => restartPostgres(),
  },
];

for (const engine of engines) {
  describe(
    `several processes serving one server on ${engine.name}`,
    { skip: skip ?? engine.skip },
    () => {
      const children: Child[] = [];
      let hosts: Hosts | undefined;
      after(async () => {
        await Promise.all(children.map((c) => c.kill()));
        hosts?.remove();
      });

      it("applies every acknowledged message exactly once while consumers are killed", async () => {
        const seed = Number(process.env.DGEN_SEED ?? Date.now() % 1_000_000);
        console.log(`multi-process (${engine.name}) seed: ${seed} (replay with DGEN_SEED=${seed})`);
        const random = prng(seed);
        const db = engine.prepare();
        hosts = db.hosts;
        const spec = JSON.stringify({ ...db.spec, tenant: "mp" });
        const runtimes: Runtime[] = ["deno", "bun", "deno"];
        const consumers: Array<Child | undefined> = [];
        const startConsumer = async (i: number) => {
          const c = new Child(
            runtimes[i]!,
            SCRIPT,
            [spec, "consumer", JSON.stringify({ lockLease: 1000 })],
            { netns: db.hosts?.names[i] },
          );
          children.push(c);
          await c.next((d) => d.ready === true, 60_000, "consumer ready");
          consumers[i] = c;
        };
        await Promise.all(runtimes.map((_, i) => startConsumer(i)));
        const client = new Child(
          random() < 0.5 ? "deno" : "bun",
          SCRIPT,
          [
            spec,
            "client",
            JSON.stringify({
              casts: CASTS,
              calls: CALLS,
              concurrency: 8,
              prefix: "m",
              timeout: 120_000,
            }),
          ],
          { netns: db.hosts?.names[3] },
        );
        children.push(client);
        await client.next((d) => d.ready === true, 60_000, "client ready");
        if (db.hosts !== undefined) {
          // The database sees each process's connections come from that process's host.
          const seen = await withAdmin(async (sql) =>
            (await sql.unsafe(
              "select distinct host(client_addr) as a from pg_stat_activity where client_addr is not null",
            )).map((r) => r.a as string)
          );
          for (const address of db.hosts.addresses) {
            assert.ok(seen.includes(address), `no connection from ${address} (saw ${seen})`);
          }
        }

        // Nemesis: kill a random consumer every 0.2–0.8 s and restart it; disrupt the database
        // once, about a third of the way in.
        let kills = 0;
        let disrupted = false;
        let clientDone = false;
        let acked = 0;
        const nemesis = (async () => {
          while (!clientDone) {
            await new Promise((r) => setTimeout(r, 200 + random() * 600));
            if (clientDone) break;
            if (engine.disrupt && !disrupted && acked > (CASTS + CALLS) / 3) {
              disrupted = true;
              await engine.disrupt();
              continue;
            }
            const i = Math.floor(random() * runtimes.length);
            const victim = consumers[i];
            if (victim === undefined) continue;
            consumers[i] = undefined;
            await victim.kill();
            kills++;
            await startConsumer(i);
          }
        })();
        const h: History = { ackedCasts: new Set(), okCalls: new Map(), invoked: new Set() };
        let failures = 0;
        try {
          for (;;) {
            const m = await client.next(() => true, 180_000, "client progress");
            const d = m.data;
            if (d.done) break;
            if (typeof d.invoke === "string") h.invoked.add(d.id as string);
            else if (d.ok === "cast") (h.ackedCasts.add(d.id as string), acked++);
            else if (d.ok === "call") (h.okCalls.set(d.id as string, d.reply as number), acked++);
            else if (d.fail) failures++;
          }
        } finally {
          clientDone = true;
          await nemesis;
        }
        const backend = await db.open();
        try {
          const tenant = await openTenant(backend, "mp");
          const view = await waitFor(
            async () => {
              const v = await readServerView(tenant, "tally", { headLimit: 1 });
              return v && v.queue.length === 0 && v.lock === null ? v : undefined;
            },
            60_000,
            "queue not drained",
          );
          const state = view.state as { count: number; log: Array<{ id: string }> };
          const summary = checkTally(state.log.map((x) => x.id), state.count, h);
          console.log(
            `multi-process (${engine.name}): ${summary}, ${kills} kills${
              engine.disrupt ? `, database restarted: ${disrupted}` : ""
            }, ${failures} failed ops`,
          );
          assert.ok(kills >= 3, `the nemesis killed only ${kills} consumers`);
          if (engine.disrupt) assert.ok(disrupted, "the database was not restarted");
          assert.equal(h.ackedCasts.size + h.okCalls.size + failures, CASTS + CALLS);
        } finally {
          await backend.close();
          await db.cleanup();
        }
      });
    },
  );
}
