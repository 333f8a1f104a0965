/**
 * The seed's counter, on the embedded default (SQLite in `.dgen/demo.sqlite`). Run it twice:
 * the count carries over, because the state lives in the database, not in the process.
 *
 * Run: npx --yes deno@2.9.6 run -A examples/counter.ts
 */
import { defineServer, noreply, reply, sandboxOpen, start } from "../mod.ts";

export const Counter = defineServer({
  name: "counter",
  init: () => 0,
  handleCall: {
    increment: (_arg: undefined, _from, n: number) => reply("ok", n + 1),
    value: (_arg: undefined, _from, n: number) => reply(n, n),
  },
  handleCast: {
    bump: (by: number, n: number) => noreply(n + by),
  },
});

if (import.meta.main) {
  const tenant = await sandboxOpen("demo", "counter");
  const c = await start(Counter, [], { tenant });
  await c.call("increment");
  await c.call("increment");
  await c.cast("bump", 10);
  console.log("counter =", await c.call("value")); // 12 more on every run
  await c.stop(); // this instance stops; the server lives on
  const c2 = await start(Counter, [], { tenant });
  console.log("after restart =", await c2.call("value")); // the same: the state persisted
  await c2.stop();
  await tenant.backend.close();
}
