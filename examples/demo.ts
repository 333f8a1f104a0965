/**
 * The main demo: the seed's counter as a durable server on the embedded default (SQLite, in
 * `.dgen/demo.sqlite`), watched live on the embedded dashboard. It keeps some activity going so the page has something to show: casts every
 * moment, now and then a checkpoint that holds the lock while slow work runs (messages queue
 * behind it), and now and then a message that always fails and ends up dead-lettered. A second
 * instance only sends (it does not consume), as a web process would.
 *
 * Run: npx --yes deno@2.9.6 task demo   then open the printed URL; Ctrl+C stops it.
 */
import process from "node:process";
import {
  defineServer,
  lock,
  noreply,
  reply,
  sandboxOpen,
  serveDashboard,
  start,
  type Tenant,
} from "../mod.ts";

/** The demo's tenant (its backend is closed on exit). */
async function openDemoTenant(): Promise<Tenant> {
  return await sandboxOpen("demo", "counter");
}

/** Resolves after `ms`, or as soon as `signal` aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** The seed's counter, plus a slow checkpoint (a lock) and a message that always fails. */
const Counter = defineServer({
  name: "counter",
  init: () => 0,
  handleCall: {
    increment: (_arg: undefined, _from, n: number) => reply("ok", n + 1),
    value: (_arg: undefined, _from, n: number) => reply(n, n),
    // Slow work runs in handleLocked, outside any transaction; standard messages wait.
    checkpoint: (_arg: undefined, _from, n: number) => lock(n),
  },
  handleCast: {
    bump: (by: number, n: number) => noreply(n + by),
    glitch: (_arg: undefined, _n: number): never => {
      throw new Error("this message always fails");
    },
  },
  handleLocked: async (_event, n: number, ctx) => {
    await sleep(3000 + Math.random() * 2000, ctx.signal); // "uploading a checkpoint"
    return reply(`checkpoint at ${n}`, n);
  },
  handleDeadLetter: (message, attempts) => {
    console.log(`dead letter: '${message.name}' failed ${attempts} times`);
  },
});

interface Traffic {
  total: bigint;
  byKind: Map<string, number>;
  sources: Set<string>;
  last: Date | null;
}

/** Traffic statistics, to show how the dashboard draws Map, Set, BigInt and Date values. */
const Stats = defineServer({
  name: "traffic",
  init: (): Traffic => ({ total: 0n, byKind: new Map(), sources: new Set(), last: null }),
  handleCast: {
    record: ({ kind, source }: { kind: string; source: string }, s: Traffic) => {
      const next: Traffic = {
        total: s.total + 1n,
        byKind: new Map(s.byKind).set(kind, (s.byKind.get(kind) ?? 0) + 1),
        sources: new Set(s.sources).add(source),
        last: new Date(),
      };
      return noreply(next);
    },
  },
});

const tenant = await openDemoTenant();
const counter = await start(Counter, [], { tenant, deadLetterThreshold: 3, lockLease: 8000 });
const sender = await start(Counter, [], { tenant, consume: false });
const traffic = await start(Stats, [], { tenant });
const dashboard = await serveDashboard({ tenants: [tenant] });

console.log(`counter is ${await counter.call("value")}`);
console.log(`dashboard: ${dashboard.url}`);
console.log("Ctrl+C to stop");

const stopping = new AbortController();
const inFlight = new Set<Promise<unknown>>();

/** Runs `task` every `ms` (with jitter) until the demo stops. */
function every(ms: number, task: () => Promise<unknown>): Promise<void> {
  return (async () => {
    while (!stopping.signal.aborted) {
      await sleep(ms * (0.6 + Math.random() * 0.8), stopping.signal);
      if (stopping.signal.aborted) return;
      const p = task().catch((e) => {
        if (!stopping.signal.aborted) console.error(`demo: ${(e as Error).message}`);
      });
      inFlight.add(p);
      p.finally(() => inFlight.delete(p));
    }
  })();
}

const kinds = ["page", "api", "webhook"];
const loops = [
  every(800, async () => {
    await sender.cast("bump", 1 + Math.floor(Math.random() * 3));
    const kind = kinds[Math.floor(Math.random() * kinds.length)]!;
    await traffic.cast("record", { kind, source: `10.0.0.${1 + Math.floor(Math.random() * 6)}` });
  }),
  every(2500, () => counter.call("increment")),
  every(15_000, async () => {
    console.log(await sender.call("checkpoint", undefined, { timeout: 60_000 }));
  }),
  every(25_000, async () => {
    await sender.cast("glitch");
    // Keep the dead-letter list short across long runs.
    if ((await counter.deadLetters.list()).length > 5) await counter.deadLetters.purge();
  }),
];

let shuttingDown = false;
async function shutdown(signal: string): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  console.log(`\n${signal}: stopping`);
  process.off("SIGINT", onSigint);
  process.off("SIGTERM", onSigterm);
  stopping.abort();
  await Promise.all(loops);
  // A checkpoint may be mid-flight: stopping the instances ends it (its lock lease then lets
  // the next run retry it).
  await dashboard.close();
  await sender.stop();
  await counter.stop();
  await traffic.stop();
  await Promise.allSettled([...inFlight]);
  await tenant.backend.close();
  console.log("stopped");
}
const onSigint = () => void shutdown("SIGINT");
const onSigterm = () => void shutdown("SIGTERM");
process.on("SIGINT", onSigint);
process.on("SIGTERM", onSigterm);
