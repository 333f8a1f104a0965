// The Cloudflare Worker and SQLite-backed Durable Object that `durable_objects.ts` runs in
// workerd through miniflare: the counter a user would write, called over RPC from the Worker.
// Plain JavaScript because workerd loads this file as is (and `cloudflare:workers` exists only
// inside workerd).
import { DurableObject } from "cloudflare:workers";

/** One counter per object, in the object's own SQLite database. */
export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec(
      "CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
    );
  }

  /**
   * Adds one and returns the new value. The statement is its own implicit transaction, and the
   * runtime's output gate holds the reply until that write is committed.
   */
  increment() {
    return this.ctx.storage.sql.exec(
      "INSERT INTO counter (id, value) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET value = value + 1 RETURNING value",
    ).one().value;
  }

  /** The current value (0 before the first increment). */
  value() {
    const rows = this.ctx.storage.sql.exec("SELECT value FROM counter WHERE id = 1").toArray();
    return rows.length === 0 ? 0 : rows[0].value;
  }
}

/** Runs `warmup` untimed then `n` timed increments on `stub`, checking each reply. */
async function loop(stub, n, warmup) {
  let last = await stub.increment();
  const first = last;
  const check = (value) => {
    if (value !== last + 1) throw new Error(`counter replied ${value} after ${last}`);
    last = value;
  };
  for (let i = 1; i < warmup; i++) check(await stub.increment());
  // workerd's clocks tick in whole milliseconds (Date.now and performance.now alike), so the
  // per-operation latencies are multiples of 1 ms; the total over n operations is accurate.
  const latenciesMs = new Array(n);
  const start = performance.now();
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const value = await stub.increment();
    latenciesMs[i] = performance.now() - t;
    check(value);
  }
  const totalMs = performance.now() - start;
  return { first, last, totalMs, latenciesMs };
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const stub = env.COUNTER.getByName(url.searchParams.get("name") ?? "counter");
    try {
      switch (url.pathname) {
        case "/increment":
          return new Response(String(await stub.increment()));
        case "/value":
          return new Response(String(await stub.value()));
        case "/loop": {
          const n = Number(url.searchParams.get("n"));
          const warmup = Number(url.searchParams.get("warmup") ?? "0");
          return Response.json(await loop(stub, n, warmup));
        }
        default:
          return new Response("not found", { status: 404 });
      }
    } catch (e) {
      return new Response(String(e?.stack ?? e), { status: 500 });
    }
  },
};
