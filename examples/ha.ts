/**
 * High availability: three processes serve one durable counter on a shared SQLite file; this
 * process calls it through a non-consuming instance, kills one server process midway, and the
 * calls keep working (another process takes over; nothing acknowledged is lost).
 *
 * Run: npx --yes deno@2.9.6 run -A examples/ha.ts   (or: bun examples/ha.ts)
 */
import { spawn } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { sandboxOpen, start } from "../mod.ts";
import { Counter } from "./counter.ts";

const self = fileURLToPath(import.meta.url);
const isDeno = "Deno" in globalThis;

if (process.argv[2] === "serve") {
  // A server process: consume the counter's queue until killed.
  const tenant = await sandboxOpen("ha", "counter");
  const ref = await start(Counter, [], { tenant });
  console.log(`[server ${process.pid}] serving instance ${ref.instance}`);
  process.on("SIGTERM", () => ref.stop());
  await ref.stopped;
  await tenant.backend.close();
} else {
  const servers = [0, 1, 2].map(() => {
    const args = isDeno ? ["run", "-A", self, "serve"] : [self, "serve"];
    const child = spawn(process.execPath, args, { stdio: ["ignore", "inherit", "inherit"] });
    return child;
  });
  const tenant = await sandboxOpen("ha", "counter");
  const client = await start(Counter, [], { tenant, consume: false });
  const before = await client.call("value", undefined, { timeout: 30_000 });
  console.log(`counter starts at ${before}`);
  let ok = 0;
  const t0 = performance.now();
  for (let i = 1; i <= 60; i++) {
    const started = performance.now();
    await client.call("increment", undefined, { timeout: 30_000 });
    ok++;
    if (i % 10 === 0) {
      console.log(`${ok} calls ok; last took ${(performance.now() - started).toFixed(1)} ms`);
    }
    if (i === 20) {
      const victim = servers[0]!;
      console.log(`killing server process ${victim.pid} (SIGKILL)`);
      victim.kill("SIGKILL");
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const after = await client.call("value");
  console.log(
    `counter ${before} -> ${after} (+${after - before}) in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s; every call answered although a server process died`,
  );
  for (const s of servers) s.kill("SIGTERM");
  await client.stop();
  await tenant.backend.close();
  process.exit(after - before === 60 ? 0 : 1);
}
