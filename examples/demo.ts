/**
 * Storage demo (until the server runtime lands): a durable-style counter incremented by
 * concurrent transactions on the in-memory reference backend, with a watch.
 *
 * Run: npx --yes deno@2.9.6 task demo
 */
import { openMemoryBackend, openTenant, readInt64LE } from "../mod.ts";

const backend = openMemoryBackend();
const tenant = await openTenant(backend, "demo");
const key = new TextEncoder().encode("hits");

const watch = await tenant.transact((tx) => tx.watch(key));
watch.promise.then((fired) => console.log("watch fired:", fired));

await Promise.all(Array.from({ length: 100 }, () => tenant.transact((tx) => tx.add(key, 1))));
console.log("hits =", readInt64LE(await tenant.transact((tx) => tx.get(key))));
await backend.close();
