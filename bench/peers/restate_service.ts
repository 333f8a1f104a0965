/**
 * The Restate service that `restate.ts` starts: a virtual object `Counter` (one per key) written
 * with the Restate TypeScript SDK, served with the SDK's fetch handler by `Deno.serve` or
 * `Bun.serve` (the SDK's Node server needs Node 22+; this machine has Node 20). Plain HTTP/1.1,
 * so the deployment is registered with `use_http_11` and the SDK runs in request-response mode.
 *
 * Usage: `deno run -A bench/peers/restate_service.ts --port=9080 --sdk=<path of the SDK's
 * dist/fetch.js>` (or `bun …`). Prints `listening <port>` once it serves.
 *
 * The SDK is imported from `bench/.peers/restate/` at run time (it is installed by the bench,
 * not by the project), so the few SDK types used here are declared below; that keeps this file
 * type-checked with the rest of `bench/` whether or not the peer is installed.
 */

import process from "node:process";
import { pathToFileURL } from "node:url";

/** The state API of a virtual object's handler context (SDK `ObjectContext`). */
interface ObjectContext {
  get<T>(name: string): Promise<T | null>;
  set<T>(name: string, value: T): void;
}

/** The part of `@restatedev/restate-sdk/fetch` used here. */
interface RestateFetchSdk {
  object(definition: { name: string; handlers: Record<string, unknown> }): unknown;
  handlers: { object: { shared<F>(handler: F): F } };
  createEndpointHandler(options: { services: unknown[] }): (request: Request) => Promise<Response>;
}

function flag(name: string): string {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (arg === undefined) throw new Error(`missing --${name}=…`);
  return arg.slice(name.length + 3);
}

const port = Number(flag("port"));
const restate = await import(pathToFileURL(flag("sdk")).href) as RestateFetchSdk;

/** What a user would write: read the count from the object's state, add one, store, return. */
const counter = restate.object({
  name: "Counter",
  handlers: {
    increment: async (ctx: ObjectContext): Promise<number> => {
      const next = ((await ctx.get<number>("count")) ?? 0) + 1;
      ctx.set("count", next);
      return next;
    },
    get: restate.handlers.object.shared(async (ctx: ObjectContext): Promise<number> => {
      return (await ctx.get<number>("count")) ?? 0;
    }),
  },
});

const handler = restate.createEndpointHandler({ services: [counter] });

interface BunServe {
  serve(options: { port: number; hostname: string; fetch: typeof handler }): unknown;
}
const bun = (globalThis as { Bun?: BunServe }).Bun;
if (bun !== undefined) {
  bun.serve({ port, hostname: "127.0.0.1", fetch: handler });
  console.log(`listening ${port}`);
} else {
  Deno.serve({
    port,
    hostname: "127.0.0.1",
    onListen: () => console.log(`listening ${port}`),
  }, handler);
}
