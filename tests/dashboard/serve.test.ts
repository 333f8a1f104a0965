import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { connect } from "node:net";
import {
  type Backend,
  defineServer,
  lock,
  noreply,
  openMemoryBackend,
  openTenant,
  reply,
  serveDashboard,
  type ServerView,
  start,
  type Tenant,
  ValidationError,
} from "../../mod.ts";
import { DEFAULT_TUNING, FeedHub, type SnapshotPayload } from "../../lib/dashboard/feed.ts";
import {
  type Dashboard,
  dashboardCounters,
  loopbackHosts,
  serveDashboardWith,
} from "../../lib/dashboard/serve.ts";
import { CLOSE_GRACE_MS } from "../../lib/runtime/http.ts";
import { ServerKeys } from "../../lib/server/keys.ts";
import { decodePresence, encodeRecord, PRESENCE_TTL } from "../../lib/server/records.ts";
import { strinc } from "../../lib/bytes.ts";
import { Counter } from "../server/_defs.ts";
import { deadline, waitFor } from "../_helpers.ts";
import { SseClient } from "./_sse.ts";
import { countingTenant } from "./_tenant.ts";

/** Opens a memory backend with one tenant; `done` closes everything given to it, in order. */
async function setup(name = "acme/prod") {
  const backend: Backend = openMemoryBackend();
  const tenant: Tenant = await openTenant(backend, name);
  const closers: Array<() => Promise<unknown>> = [];
  return {
    backend,
    tenant,
    later(close: () => Promise<unknown>) {
      closers.unshift(close);
    },
    async done() {
      for (const close of closers) await close();
      await backend.close();
    },
  };
}

function eventsUrl(dash: Dashboard, tenant: string, query = ""): string {
  return new URL(`api/tenants/${encodeURIComponent(tenant)}/events${query}`, dash.url).href;
}

function snapshotOf(client: SseClient): SnapshotPayload | undefined {
  return client.payloads<SnapshotPayload>("snapshot")[0];
}

function serverEvents(client: SseClient, id: string): ServerView[] {
  return client.payloads<ServerView>("server").filter((v) => v.id === id);
}

/** Sends a raw HTTP/1.1 request (fetch cannot forge a Host header) and returns the status. */
function rawStatus(url: string, host: string): Promise<number> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    // URL leaves the default port out: "http://127.0.0.1:80/" has port "".
    const socket = connect(Number(port || 80), hostname, () => {
      socket.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
    });
    let text = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      text += chunk;
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      if (m) {
        socket.destroy();
        resolve(Number(m[1]));
      }
    });
    socket.on("error", reject);
  });
}

const Blob = defineServer({
  name: "blob",
  init: () => ({ n: 0, pad: "x".repeat(2_000_000) }),
  handleCast: {
    touch: (_: undefined, s: { n: number; pad: string }) => noreply({ ...s, n: s.n + 1 }),
  },
});

/** A raw socket that asks for the tenant's event stream and never reads it. */
function stalledClient(dash: Dashboard) {
  const { port } = new URL(dash.url);
  const socket = connect(Number(port), "127.0.0.1", () => {
    socket.write(`GET /api/tenants/acme%2Fprod/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
  });
  socket.on("error", () => {});
  socket.pause();
  return socket;
}

/**
 * A client stops reading while 2 MB views are sent to it (its stream still open, or already
 * dropped for it); then the dashboard must close within a bounded time and free its port.
 */
async function closeWithStalledClient(dropped: boolean): Promise<void> {
  const t = await setup();
  const blob = await start(Blob, [], { tenant: t.tenant });
  t.later(() => blob.stop());
  const dash = await serveDashboardWith({ tenants: [t.tenant] }, {
    coalesceMs: 20,
    maxBuffered: dropped ? 4_000_000 : 64_000_000,
  });
  const counters = dashboardCounters(dash);
  // A reading client of the same feed: when it has a view, so has the stalled client's queue.
  const reader = await SseClient.open(eventsUrl(dash, "acme/prod"));
  t.later(() => reader.close());
  await waitFor(() => snapshotOf(reader), 5000, "no snapshot");
  const socket = stalledClient(dash);
  try {
    await waitFor(() => counters.streams === 2, 5000, "the stalled stream did not open");
    // 16 MB or more queued: more than the kernel's socket buffers take.
    for (let n = 1; n <= 8 || (dropped && counters.streams > 1); n++) {
      assert.ok(n <= 40, "a client that reads nothing is still buffered for");
      await blob.cast("touch");
      await waitFor(
        () => serverEvents(reader, blob.id).some((v) => (v.state as { n: number }).n === n),
        5000,
        `the reader did not see change ${n}`,
      );
    }
    assert.equal(counters.streams, dropped ? 1 : 2, "the stalled client's stream");
    const started = performance.now();
    await deadline(
      dash.close(),
      CLOSE_GRACE_MS + 3000,
      "close() hung on a client that stopped reading",
    );
    const took = performance.now() - started;
    assert.deepEqual({ ...counters }, { streams: 0, feeds: 0, watches: 0, timers: 0 });
    // The port is free again at once.
    const port = Number(new URL(dash.url).port);
    const again = await serveDashboard({ tenants: [t.tenant], port });
    assert.equal(new URL(again.url).port, String(port));
    const page = await fetch(again.url);
    assert.equal(page.status, 200);
    await page.body?.cancel();
    await again.close();
    assert.ok(took < CLOSE_GRACE_MS + 3000, `close() took ${Math.round(took)} ms`);
  } finally {
    // On a close() that hangs, this is what lets it return (and the test run end).
    socket.destroy();
  }
  await t.done();
}

/** The stored presence record of `instance` (with its key), for decodePresence. */
async function presenceOf(
  tenant: Awaited<ReturnType<typeof openTenant>>,
  keys: ServerKeys,
  instance: string,
): Promise<[Uint8Array, Uint8Array]> {
  const key = keys.instance(instance);
  const value = await tenant.transact((tx) => tx.get(key));
  return [value!, key];
}

describe("dashboard HTTP and event stream", () => {
  it("starts every stream with a snapshot of every server", async () => {
    const t = await setup();
    const a = await start(Counter, [3], { tenant: t.tenant, id: "a" });
    t.later(() => a.stop());
    const b = await start(Counter, [], { tenant: t.tenant, id: "b", consume: false });
    t.later(() => b.stop());
    await b.cast("bump", 2);
    const dash = await serveDashboard({ tenants: [t.tenant] });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    assert.match(client.response.headers.get("content-type")!, /^text\/event-stream/);
    await waitFor(() => client.events.length > 0, 5000, "no first event");
    assert.equal(client.events[0]!.event, "snapshot", "the first event is the snapshot");
    const snap = snapshotOf(client)!;
    assert.equal(snap.tenant, "acme/prod");
    assert.equal(typeof snap.now, "number");
    assert.deepEqual(snap.servers.map((s) => s.id), ["a", "b"]);
    const [va, vb] = snap.servers;
    assert.equal(va!.state, 3);
    assert.equal(va!.lock, null);
    assert.deepEqual(va!.deadLetters, { length: 0 });
    assert.deepEqual(va!.instances.map((i) => [i.instance, i.consuming]), [[a.instance, true]]);
    assert.deepEqual(vb!.queue, {
      length: 1,
      head: [{ kind: "cast", name: "bump", arg: 2, attempts: 0 }],
    });
    assert.deepEqual(vb!.instances.map((i) => i.consuming), [false]);
    assert.match(va!.version, /^[0-9a-f]+$/);
    assert.deepEqual(client.retries.length, 1, "the stream sets EventSource's retry delay");
    await t.done();
  });

  it("sends a server event with the new state soon after a cast", async () => {
    const t = await setup();
    const a = await start(Counter, [], { tenant: t.tenant, id: "a" });
    t.later(() => a.stop());
    const dash = await serveDashboard({ tenants: [t.tenant] });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    const sent = performance.now();
    await a.cast("bump", 5);
    const ev = await waitFor(
      () => client.events.find((e) => e.event === "server" && JSON.parse(e.data).state === 5),
      5000,
      "no server event with the new state",
    );
    // The page promises updates within a second; on this loaded 2-core machine the stream
    // alone must beat that comfortably.
    assert.ok(ev.at - sent < 1000, `the change took ${Math.round(ev.at - sent)} ms to arrive`);
    await t.done();
  });

  it("sends nothing when nothing visible changed", async () => {
    const t = await setup();
    const a = await start(Counter, [1], { tenant: t.tenant, id: "a" });
    t.later(() => a.stop());
    const b = await start(Counter, [], { tenant: t.tenant, id: "b" });
    t.later(() => b.stop());
    const dash = await serveDashboardWith({ tenants: [t.tenant] }, { coalesceMs: 10 });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    // A call that leaves the state as it was writes nothing at all.
    assert.equal(await a.call("add", 0), 1);
    // A change reported for a server whose view is the same (the feed re-reads it) is dropped.
    const keys = new ServerKeys("a");
    await t.tenant.transact((tx) => {
      tx.setVersionstampedValue(keys.change, new Uint8Array());
    });
    await b.call("add", 7); // the sentinel: its event comes after any event for a would have
    await waitFor(() => serverEvents(client, "b").length > 0, 5000, "no event for b");
    assert.deepEqual(serverEvents(client, "a"), [], "an unchanged server produced an event");
    await t.done();
  });

  it("reflects instance heartbeats every few seconds at most, not as a stream of events", async () => {
    const t = await setup();
    const a = await start(Counter, [1], { tenant: t.tenant, id: "a" });
    t.later(() => a.stop());
    const b = await start(Counter, [], { tenant: t.tenant, id: "b" });
    t.later(() => b.stop());
    const dash = await serveDashboardWith({ tenants: [t.tenant] }, {
      coalesceMs: 10,
      presenceMs: 60_000,
    });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    // Ten heartbeats of a's instance, as #beat writes them: lastSeen moves, a change is marked.
    const keys = new ServerKeys("a");
    const key = keys.instance(a.instance);
    let lastSeen = 0;
    for (let i = 0; i < 10; i++) {
      await t.tenant.transact(async (tx) => {
        const p = decodePresence((await tx.get(key))!, key);
        lastSeen = p.lastSeen + 1_000;
        tx.set(key, encodeRecord({ ...p, lastSeen }));
        tx.setVersionstampedValue(keys.change, new Uint8Array());
      });
    }
    await b.call("add", 7); // the sentinel: its event comes after any event for a would have
    await waitFor(() => serverEvents(client, "b").length > 0, 5000, "no event for b");
    assert.deepEqual(serverEvents(client, "a"), [], "heartbeats alone produced events");
    // A visible change goes out at once, with the latest heartbeat.
    await a.call("add", 1);
    await waitFor(() => serverEvents(client, "a").length > 0, 5000, "no event for a");
    const ev = serverEvents(client, "a")[0]!;
    assert.equal(ev.state, 2);
    assert.equal(ev.instances.find((i) => i.instance === a.instance)?.lastSeen, lastSeen);
    await t.done();
  });

  it("drops an instance that died without stopping once its presence expires", async () => {
    const t = await setup();
    const a = await start(Counter, [], { tenant: t.tenant, id: "a" });
    const keys = new ServerKeys("a");
    const ghost = decodePresence(...await presenceOf(t.tenant, keys, a.instance));
    await a.stop(); // the server stays, with no instance (none beats to mark changes)
    const dash = await serveDashboardWith({ tenants: [t.tenant] }, { coalesceMs: 10 });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    // An instance killed long ago but for one second: its last heartbeat is about to expire,
    // and it writes nothing more (before: it stayed on the page, and in every new client's
    // snapshot, until some other change to the server).
    ghost.lastSeen = Date.now() - PRESENCE_TTL + 1_000;
    await t.tenant.transact((tx) => {
      tx.set(keys.instance(ghost.instance), encodeRecord(ghost));
      tx.setVersionstampedValue(keys.change, new Uint8Array());
    });
    const instancesOf = (ev: ServerView) => ev.instances.map((i) => i.instance);
    await waitFor(
      () => serverEvents(client, "a").some((ev) => instancesOf(ev).includes(ghost.instance)),
      5000,
      "the instance never showed",
    );
    await waitFor(
      () => instancesOf(serverEvents(client, "a").at(-1)!).length === 0,
      5000,
      "the expired instance stayed",
    );
    const late = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => late.close());
    await waitFor(() => snapshotOf(late), 5000, "no snapshot for a new client");
    assert.deepEqual(instancesOf(snapshotOf(late)!.servers.find((v) => v.id === "a")!), []);
    await t.done();
  });

  it("reports a killed server as removed", async () => {
    const t = await setup();
    const a = await start(Counter, [], { tenant: t.tenant, id: "a" });
    const dash = await serveDashboard({ tenants: [t.tenant] });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    await a.kill();
    const removed = await waitFor(
      () => client.payloads<{ id: string }>("removed")[0],
      5000,
      "no removed event",
    );
    assert.deepEqual(removed, { id: "a" });
    await t.done();
  });

  it("reports a server whose stored state cannot be decoded, and recovers when it can", async () => {
    const t = await setup();
    const a = await start(Counter, [1], { tenant: t.tenant, id: "a", consume: false });
    t.later(() => a.stop());
    const keys = new ServerKeys("a");
    const corrupt = (bytes: Uint8Array) =>
      t.tenant.transact(async (tx) => {
        const [row] = await tx.getRange(keys.state, strinc(keys.state));
        tx.set(row!.key, bytes);
        tx.setVersionstampedValue(keys.change, new Uint8Array());
      });
    const good = await t.tenant.transact(async (tx) =>
      (await tx.getRange(keys.state, strinc(keys.state)))[0]!.value
    );
    await corrupt(new Uint8Array([0xff]));
    const dash = await serveDashboard({ tenants: [t.tenant] });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    const problem = await waitFor(
      () => client.payloads<{ id: string; message: string }>("unreadable")[0],
      5000,
      "no unreadable event",
    );
    assert.equal(problem.id, "a");
    assert.match(problem.message, /format version|not a valid value encoding|cannot be decoded/);
    assert.deepEqual(snapshotOf(client)!.servers, [], "the snapshot came first, without it");
    await corrupt(good);
    const view = await waitFor(() => serverEvents(client, "a")[0], 5000, "no event once readable");
    assert.equal(view.state, 1);
    // Broken again, then repaired to the very same view: the repair is still announced.
    await corrupt(new Uint8Array([0xff]));
    await waitFor(() => client.payloads("unreadable").length === 2, 5000, "no second report");
    await corrupt(good);
    await waitFor(() => serverEvents(client, "a").length === 2, 5000, "the repair was not sent");
    assert.deepEqual(serverEvents(client, "a")[1], view);
    await t.done();
  });

  it("coalesces a burst of changes into a few events", async () => {
    const t = await setup();
    const a = await start(Counter, [], { tenant: t.tenant, id: "a" });
    t.later(() => a.stop());
    const dash = await serveDashboardWith({ tenants: [t.tenant] }, { coalesceMs: 250 });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    const began = performance.now();
    for (let i = 0; i < 100; i++) await a.cast("bump", 1);
    const took = performance.now() - began;
    await waitFor(
      () => serverEvents(client, "a").some((v) => v.state === 100),
      5000,
      "the final state never arrived",
    );
    const events = serverEvents(client, "a").length;
    // 100 enqueues and 100 dequeues: at most one event per window, plus the edges.
    const bound = Math.ceil(took / 250) + 3;
    assert.ok(events <= bound, `${events} events for 200 changes in ${Math.round(took)} ms`);
    assert.ok(events < 50, `${events} events for 200 changes`);
    await t.done();
  });

  it("re-reads only the servers that changed", async () => {
    const t = await setup();
    const refs = [];
    for (let i = 0; i < 40; i++) {
      const ref = await start(Counter, [], {
        tenant: t.tenant,
        id: `s${String(i).padStart(2, "0")}`,
      });
      refs.push(ref);
      t.later(() => ref.stop());
    }
    const counted = countingTenant(t.tenant);
    const dash = await serveDashboard({ tenants: [counted.tenant] });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    assert.equal(snapshotOf(client)!.servers.length, 40);
    const before = counted.load.transactions;
    await refs[7]!.call("add", 1);
    await waitFor(() => serverEvents(client, "s07").length > 0, 5000, "no event for s07");
    const used = counted.load.transactions - before;
    // One change-counter read per watch firing and one view read per changed server; a full
    // re-read would be 40 transactions.
    assert.ok(used <= 6, `${used} transactions for one changed server of 40`);
    await t.done();
  });

  it("shares one feed per tenant among its clients and frees its watches with the last", async () => {
    const t = await setup();
    const a = await start(Counter, [], { tenant: t.tenant, id: "a" });
    t.later(() => a.stop());
    const counted = countingTenant(t.tenant);
    const dash = await serveDashboard({ tenants: [counted.tenant] });
    t.later(() => dash.close());
    const counters = dashboardCounters(dash);
    const clients = await Promise.all(
      Array.from({ length: 10 }, () => SseClient.open(eventsUrl(dash, "acme/prod"))),
    );
    await waitFor(
      () => clients.every((c) => snapshotOf(c)),
      5000,
      "not every client got a snapshot",
    );
    assert.equal(counters.streams, 10);
    assert.equal(counters.feeds, 1);
    assert.equal(counters.watches, 1);
    // One watch on the tenant's membership and one per server, whatever the number of clients.
    assert.ok(counted.load.watchesOpen <= 2, `${counted.load.watchesOpen} backend watches open`);
    await a.cast("bump", 1);
    await waitFor(
      () => clients.every((c) => serverEvents(c, "a").some((v) => v.state === 1)),
      5000,
      "not every client saw the change",
    );
    for (const c of clients) await c.close();
    await waitFor(
      () => counters.streams === 0 && counters.watches === 0 && counted.load.watchesOpen === 0,
      5000,
      `resources left: ${JSON.stringify(counters)}, backend watches ${counted.load.watchesOpen}`,
    );
    await t.done();
  });

  it("leaves no stream, watch or timer behind after 100 connects and disconnects", async () => {
    const t = await setup();
    const a = await start(Counter, [], { tenant: t.tenant, id: "a" });
    t.later(() => a.stop());
    const counted = countingTenant(t.tenant);
    const dash = await serveDashboard({ tenants: [counted.tenant] });
    t.later(() => dash.close());
    const counters = dashboardCounters(dash);
    for (let round = 0; round < 10; round++) {
      const clients = await Promise.all(
        Array.from({ length: 10 }, () => SseClient.open(eventsUrl(dash, "acme/prod"))),
      );
      await waitFor(() => clients.every((c) => snapshotOf(c)), 5000, "no snapshot");
      await Promise.all(clients.map((c) => c.close()));
    }
    await waitFor(
      () =>
        counters.streams === 0 && counters.feeds === 0 && counters.watches === 0 &&
        counters.timers === 0,
      5000,
      `resources left: ${JSON.stringify(counters)}`,
    );
    assert.equal(counted.load.watchesOpen, 0, "a backend watch is still open");
    await t.done();
  });

  it("drops a client that stops reading instead of buffering for it without bound", async () => {
    const t = await setup();
    const blob = await start(Blob, [], { tenant: t.tenant });
    t.later(() => blob.stop());
    const dash = await serveDashboardWith({ tenants: [t.tenant] }, {
      coalesceMs: 20,
      maxBuffered: 4_000_000,
    });
    t.later(() => dash.close());
    const counters = dashboardCounters(dash);
    // A raw socket that never reads (fetch clients read ahead into memory on their own).
    const { port } = new URL(dash.url);
    const socket = connect(Number(port), "127.0.0.1", () => {
      socket.write(
        `GET /api/tenants/acme%2Fprod/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`,
      );
    });
    socket.on("error", () => {});
    socket.pause();
    await waitFor(() => counters.streams === 1, 5000, "the stream did not open");
    // Each change sends a 2 MB view; the socket's buffers fill, then the stream's queue grows.
    // Changes are paced a window apart so that each one is sent, not coalesced away.
    const end = performance.now() + 20_000;
    while (counters.streams > 0 && performance.now() < end) {
      await blob.cast("touch");
      await new Promise((r) => setTimeout(r, 40));
    }
    assert.equal(counters.streams, 0, "a client that reads nothing is still buffered for");
    socket.destroy();
    await t.done();
  });

  it("ends every stream when the dashboard closes", async () => {
    const t = await setup();
    const dash = await serveDashboard({ tenants: [t.tenant] });
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    await waitFor(() => snapshotOf(client), 5000, "no snapshot");
    assert.deepEqual(snapshotOf(client)!.servers, [], "an empty tenant has an empty snapshot");
    await deadline(dash.close(), 5000, "close hung on an open stream");
    await waitFor(() => client.ended, 5000, "the stream did not end");
    const counters = dashboardCounters(dash);
    assert.deepEqual({ ...counters }, { streams: 0, feeds: 0, watches: 0, timers: 0 });
    await client.close();
    await t.done();
  });

  it("closes within a bounded time while a client has stopped reading its stream", async () => {
    await closeWithStalledClient(false);
  });

  it("closes within a bounded time after dropping a client that stopped reading", async () => {
    await closeWithStalledClient(true);
  });

  it("starts no feed for a stream opened once closing has begun", async () => {
    const t = await setup();
    const hub = new FeedHub(DEFAULT_TUNING);
    await hub.close();
    let ended = 0;
    const leave = hub.subscribe(t.tenant, { send() {}, end: () => ended++ });
    assert.equal(ended, 1, "the late client is ended at once");
    assert.deepEqual({ ...hub.counters }, { streams: 0, feeds: 0, watches: 0, timers: 0 });
    leave();
    await t.done();
  });

  it("sends heartbeat comments", async () => {
    const t = await setup();
    const dash = await serveDashboardWith({ tenants: [t.tenant] }, { heartbeatMs: 40 });
    t.later(() => dash.close());
    const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
    t.later(() => client.close());
    await waitFor(() => client.comments.length >= 3, 5000, "no heartbeats");
    assert.deepEqual(client.payloads("message"), [], "heartbeats are comments, not events");
    await t.done();
  });

  it("shows the lock and the dead-letter count", async () => {
    const gate = Promise.withResolvers<void>();
    const Job = defineServer({
      name: "job",
      init: () => ({ runs: 0 }),
      handleCall: {
        work: (_: undefined, _from, s: { runs: number }) => lock({ runs: s.runs + 1 }),
      },
      handleCast: {
        fail: (_: undefined, _s: { runs: number }) => {
          throw new Error("always fails");
        },
        ok: (_: undefined, s: { runs: number }) => noreply(s),
      },
      handleLocked: async (_event, s: { runs: number }) => {
        await gate.promise;
        return reply("done", s);
      },
    });
    const t = await setup();
    const errors = console.error;
    console.error = () => {};
    try {
      const job = await start(Job, [], { tenant: t.tenant, deadLetterThreshold: 1 });
      t.later(() => job.stop());
      const dash = await serveDashboard({ tenants: [t.tenant] });
      t.later(() => dash.close());
      const client = await SseClient.open(eventsUrl(dash, "acme/prod"));
      t.later(() => client.close());
      await waitFor(() => snapshotOf(client), 5000, "no snapshot");
      const done = job.call("work");
      const locked = await waitFor(
        () => serverEvents(client, "job").find((v) => v.lock !== null),
        5000,
        "the lock never showed",
      );
      assert.equal(locked.lock!.holder, job.instance);
      assert.equal(locked.lock!.message, "work");
      assert.ok(locked.lock!.leaseUntil > locked.lock!.since);
      gate.resolve();
      assert.equal(await done, "done");
      await waitFor(
        () => serverEvents(client, "job").at(-1)?.lock === null,
        5000,
        "the lock release never showed",
      );
      await job.cast("fail");
      await waitFor(
        () => serverEvents(client, "job").some((v) => v.deadLetters.length === 1),
        5000,
        "the dead letter never showed",
      );
    } finally {
      console.error = errors;
    }
    await t.done();
  });

  it("answers bad requests with clear errors", async () => {
    const t = await setup();
    const dash = await serveDashboard({ tenants: [t.tenant] });
    t.later(() => dash.close());
    const get = async (path: string, init?: RequestInit) => {
      const res = await fetch(new URL(path, dash.url), init);
      const body = res.headers.get("content-type")?.startsWith("application/json")
        ? await res.json()
        : await res.text();
      return { status: res.status, body, res };
    };
    const tenants = await get("api/tenants");
    assert.equal(tenants.status, 200);
    assert.deepEqual(tenants.body, ["acme/prod"]);
    const unknown = await get("api/tenants/nope/events");
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error, "unknown_tenant");
    assert.match(unknown.body.message, /nope/);
    const unencoded = await get("api/tenants/acme/prod/events");
    assert.equal(unencoded.status, 404);
    assert.match(unencoded.body.message, /percent-encoded/);
    const malformed = await get("api/tenants/%E0%A4%A/events");
    assert.equal(malformed.status, 400);
    assert.equal(malformed.body.error, "bad_request");
    assert.match(malformed.body.message, /percent-encoding/);
    const post = await get("api/tenants", { method: "POST", body: "x" });
    assert.equal(post.status, 405);
    assert.equal(post.res.headers.get("allow"), "GET");
    const route = await get("nothing/here");
    assert.equal(route.status, 404);
    assert.equal(route.body.error, "not_found");
    await t.done();
  });

  it("refuses requests without the right token, by header or query", async () => {
    const t = await setup();
    const dash = await serveDashboard({ tenants: [t.tenant], token: "s3cret-token" });
    t.later(() => dash.close());
    assert.match(dash.url, /\?token=s3cret-token$/, "the printed URL opens the page");
    const base = new URL(dash.url);
    base.search = "";
    for (const path of ["", "api/tenants", "api/tenants/acme%2Fprod/events", "no/route"]) {
      const url = new URL(path, base).href;
      const none = await fetch(url);
      await none.body?.cancel();
      assert.equal(none.status, 401, `no token on /${path}`);
      assert.match(none.headers.get("www-authenticate") ?? "", /^Bearer/);
      const wrong = await fetch(url, { headers: { authorization: "Bearer s3cret-tokem" } });
      await wrong.body?.cancel();
      assert.equal(wrong.status, 401, `wrong token on /${path}`);
      const wrongQuery = await fetch(`${url}?token=s3cret`);
      await wrongQuery.body?.cancel();
      assert.equal(wrongQuery.status, 401, `wrong query token on /${path}`);
    }
    const byHeader = await fetch(new URL("api/tenants", base), {
      headers: { authorization: "Bearer s3cret-token" },
    });
    assert.equal(byHeader.status, 200);
    assert.deepEqual(await byHeader.json(), ["acme/prod"]);
    const page = await fetch(dash.url);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<div id="app">/);
    const byQuery = await SseClient.open(eventsUrl(dash, "acme/prod", "?token=s3cret-token"));
    await waitFor(() => snapshotOf(byQuery), 5000, "no snapshot with the query token");
    await byQuery.close();
    const byHeaderStream = await SseClient.open(eventsUrl(dash, "acme/prod"), {
      headers: { authorization: "Bearer s3cret-token" },
    });
    await waitFor(() => snapshotOf(byHeaderStream), 5000, "no snapshot with the header token");
    await byHeaderStream.close();
    // Behind a proxy with Basic auth the browser sends its credentials on every request: the
    // query token still counts (before: 401 'Wrong token'); a wrong one still does not.
    const basic = { authorization: "Basic dXNlcjpwYXNz" };
    const behindProxy = await fetch(`${new URL("api/tenants", base)}?token=s3cret-token`, {
      headers: basic,
    });
    assert.equal(behindProxy.status, 200);
    await behindProxy.body?.cancel();
    const wrongBehindProxy = await fetch(`${new URL("api/tenants", base)}?token=s3cret`, {
      headers: basic,
    });
    assert.equal(wrongBehindProxy.status, 401);
    await wrongBehindProxy.body?.cancel();
    await t.done();
  });

  it("serves the page with a policy that allows only its own inline script", async () => {
    const t = await setup();
    const dash = await serveDashboard({ tenants: [t.tenant] });
    t.later(() => dash.close());
    const res = await fetch(dash.url);
    const html = await res.text();
    assert.match(res.headers.get("content-type")!, /^text\/html/);
    const csp = res.headers.get("content-security-policy")!;
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/=]+'(;|$)/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    const script = /<script type="module">([\s\S]*)<\/script>/.exec(html)![1]!;
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(script));
    const b64 = btoa(String.fromCharCode(...new Uint8Array(digest)));
    assert.ok(csp.includes(`'sha256-${b64}'`), "the policy's hash is the inline script's");
    await t.done();
  });

  it("answers only to its own host names on loopback (DNS rebinding)", async () => {
    const t = await setup();
    const dash = await serveDashboard({ tenants: [t.tenant] });
    t.later(() => dash.close());
    const port = new URL(dash.url).port;
    assert.equal(await rawStatus(dash.url, `127.0.0.1:${port}`), 200);
    assert.equal(await rawStatus(dash.url, `localhost:${port}`), 200);
    assert.equal(await rawStatus(dash.url, `evil.example:${port}`), 403);
    assert.equal(await rawStatus(dash.url, "127.0.0.1"), 403, "a bare host is port 80's");
    await t.done();
  });

  it("accepts the bare host names on port 80, where clients leave the port out of Host", () => {
    const on80 = loopbackHosts("127.0.0.1", 80);
    for (const host of ["127.0.0.1", "localhost", "[::1]", "127.0.0.1:80", "localhost:80"]) {
      assert.ok(on80.has(host), `${host} on port 80`);
    }
    assert.ok(!on80.has("evil.example") && !on80.has("evil.example:80"));
    const on8080 = loopbackHosts("127.0.0.1", 8080);
    for (const host of ["127.0.0.1", "localhost", "[::1]", "localhost:80"]) {
      assert.ok(!on8080.has(host), `${host} on port 8080`);
    }
    assert.ok(on8080.has("localhost:8080"));
    assert.deepEqual(
      [...loopbackHosts("127.0.0.2", 80)].sort(),
      [
        "127.0.0.1",
        "127.0.0.1:80",
        "127.0.0.2",
        "127.0.0.2:80",
        "[::1]",
        "[::1]:80",
        "localhost",
        "localhost:80",
      ],
    );
  });

  it("brackets an IPv6 loopback hostname once, given with or without brackets", () => {
    for (const hostname of ["::1", "[::1]"]) {
      const hosts = loopbackHosts(hostname, 8080);
      assert.ok(hosts.has("[::1]:8080"), hostname);
      assert.ok(![...hosts].some((h) => h.startsWith("[[")), [...hosts].join());
    }
  });

  it("answers browsers and curl on port 80 (when port 80 can be bound)", async () => {
    const t = await setup();
    let dash: Dashboard;
    try {
      dash = await serveDashboard({ tenants: [t.tenant], port: 80 });
    } catch (e) {
      console.log(`port 80 test skipped: cannot listen on 127.0.0.1:80: ${(e as Error).message}`);
      await t.done();
      return;
    }
    t.later(() => dash.close());
    for (const host of ["127.0.0.1", "localhost", "[::1]", "localhost:80"]) {
      assert.equal(await rawStatus(dash.url, host), 200, host);
    }
    assert.equal(await rawStatus(dash.url, "evil.example"), 403);
    const page = await fetch(dash.url);
    assert.equal(page.status, 200, "fetch, which sends Host: 127.0.0.1");
    await page.body?.cancel();
    await t.done();
  });

  it("validates its options", async () => {
    const t = await setup();
    const other = await openTenant(t.backend, "acme/prod");
    const cases: Array<[unknown, RegExp]> = [
      [{ tenants: [] }, /options\.tenants: Expected at least one tenant/],
      [{}, /options\.tenants/],
      [{ tenants: [{}] }, /options\.tenants\[0\]: Expected a Tenant/],
      [{ tenants: [t.tenant, other] }, /options\.tenants\[1\]: Expected distinct tenant names/],
      [{ tenants: [t.tenant], port: -1 }, /options\.port/],
      [{ tenants: [t.tenant], port: 1.5 }, /options\.port/],
      [{ tenants: [t.tenant], hostname: "" }, /options\.hostname/],
      [{ tenants: [t.tenant], token: "has space" }, /options\.token/],
      [{ tenants: [t.tenant], token: "" }, /options\.token/],
      [{ tenants: [t.tenant], tokn: "x" }, /options\.tokn: Unknown field/],
    ];
    for (const [options, message] of cases) {
      await assert.rejects(
        serveDashboard(options as never),
        (e) => e instanceof ValidationError && message.test(e.message),
        JSON.stringify(options, (_k, v) => v === t.tenant || v === other ? "<tenant>" : v),
      );
    }
    await t.done();
  });
});
