import { describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  listServers,
  openMemoryBackend,
  openTenant,
  readServerView,
  start,
  toDisplay,
  watchTenant,
} from "../mod.ts";
import { Counter } from "./server/_defs.ts";
import { deadline, runtime, waitFor } from "./_helpers.ts";

describe("tenant read model", () => {
  it("shows lossless display forms of values JSON cannot hold", () => {
    const shown = toDisplay({
      m: new Map([[1, "a"]]),
      s: new Set([1n]),
      d: new Date(0),
      b: new Uint8Array([255, 1]),
      u: undefined,
      n: [NaN, -0, Infinity],
      tricky: { $map: 1 },
    });
    assert.deepEqual(shown, {
      m: { $map: [[1, "a"]] },
      s: { $set: [{ $bigint: "1" }] },
      d: { $date: "1970-01-01T00:00:00.000Z" },
      b: { $bytes: "ff01" },
      u: { $undefined: true },
      n: [{ $number: "NaN" }, { $number: "-0" }, { $number: "Infinity" }],
      tricky: { $object: { $map: 1 } },
    });
    assert.equal(JSON.parse(JSON.stringify(shown)).m.$map[0][1], "a");
  });

  it("lists servers and reads a view of each", async () => {
    const backend = openMemoryBackend();
    const tenant = await openTenant(backend, "view");
    const a = await start(Counter, [3], { tenant, id: "a" });
    const sender = await start(Counter, [], { tenant, id: "b", consume: false });
    await sender.cast("bump", 1);
    await sender.cast("bump", 2);
    assert.deepEqual(await listServers(tenant), ["a", "b"]);
    const va = await readServerView(tenant, "a");
    assert.equal(va?.state, 3);
    assert.equal(va?.instances.length, 1);
    assert.equal(va?.instances[0]?.consuming, true);
    assert.equal(va?.instances[0]?.instance, a.instance);
    assert.equal(va?.instances[0]?.runtime, runtime);
    assert.ok(Number.isInteger(va?.instances[0]?.pid));
    const vb = await readServerView(tenant, "b");
    assert.equal(vb?.queue.length, 2);
    assert.deepEqual(vb?.queue.head.map((m) => [m.kind, m.name, m.arg]), [["cast", "bump", 1], [
      "cast",
      "bump",
      2,
    ]]);
    assert.equal(vb?.lock, null);
    assert.equal(await readServerView(tenant, "nope"), undefined);
    await a.stop();
    await sender.stop();
    await backend.close();
  });

  it("reports which servers changed, and nothing for an unchanged write", async () => {
    const backend = openMemoryBackend();
    const tenant = await openTenant(backend, "feed");
    const a = await start(Counter, [], { tenant, id: "a" });
    const b = await start(Counter, [], { tenant, id: "b" });
    const batches: string[][] = [];
    const abort = new AbortController();
    const done = watchTenant(tenant, (ids) => {
      batches.push(ids);
    }, abort.signal);
    await waitFor(() => batches.length === 1, 2000, "no initial batch");
    assert.deepEqual(batches[0]!.sort(), ["a", "b"]);
    await b.call("add", 5);
    await waitFor(() => batches.length === 2, 2000, "change not reported");
    assert.deepEqual(batches[1], ["b"]);
    await b.call("value"); // writes nothing
    await a.call("add", 1);
    await waitFor(() => batches.length === 3, 2000, "change not reported");
    assert.deepEqual(batches[2], ["a"], "the unchanged call on b reported nothing");
    abort.abort();
    await done;
    await a.stop();
    await b.stop();
    await backend.close();
  });
  it("stops watching when aborted while onChange runs", async () => {
    const backend = openMemoryBackend();
    const tenant = await openTenant(backend, "abort");
    const a = await start(Counter, [], { tenant, id: "a" });
    const abort = new AbortController();
    const gate = Promise.withResolvers<void>();
    let calls = 0;
    const done = watchTenant(tenant, async () => {
      calls++;
      await gate.promise;
    }, abort.signal);
    await waitFor(() => calls === 1, 2000, "no initial batch");
    abort.abort();
    gate.resolve();
    await deadline(done, 2000, "watchTenant kept waiting for a change after abort");
    assert.equal(calls, 1);
    await a.stop();
    await backend.close();
  });
  it("reports an empty first batch for an empty tenant", async () => {
    const backend = openMemoryBackend();
    const tenant = await openTenant(backend, "empty");
    const batches: string[][] = [];
    const abort = new AbortController();
    const done = watchTenant(tenant, (ids) => {
      batches.push(ids);
    }, abort.signal);
    await waitFor(() => batches.length === 1, 2000, "no initial batch");
    assert.deepEqual(batches[0], []);
    const a = await start(Counter, [], { tenant, id: "a" });
    await waitFor(() => batches.length === 2, 2000, "creation not reported");
    assert.deepEqual(batches[1], ["a"]);
    abort.abort();
    await done;
    await a.stop();
    await backend.close();
  });
});
