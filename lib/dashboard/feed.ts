/**
 * The dashboard's live feeds: one per tenant with connected clients, shared by all of them.
 * A feed runs one {@link watchTenant} loop (one backend watch), re-reads only the servers that
 * changed, coalesces bursts, drops writes that change nothing visible, and fans the resulting
 * events out to its clients. The last client leaving stops the feed and frees its watch and
 * timers.
 *
 * @module
 */

import { readServerView, type ServerView, watchTenant } from "../inspect.ts";
import type { Tenant } from "../tenant.ts";
import { sseComment, sseEvent } from "./sse.ts";
import { errorMessage } from "../describe.ts";
import { PRESENCE_TTL } from "../server/records.ts";

/** Knobs of the feeds (internal: tests shorten them). */
export interface FeedTuning {
  /** Minimum time between two re-reads of a tenant's changed servers, ms. */
  coalesceMs: number;
  /** Interval of the comment heartbeat on every stream, ms. */
  heartbeatMs: number;
  /** Server views read at once when many servers changed. */
  readConcurrency: number;
  /**
   * Shortest time between two events of one server whose only change is its instances'
   * heartbeats (`lastSeen`), ms: heartbeats are shown every few seconds, not as a stream.
   */
  presenceMs: number;
}

/** The defaults: a busy server shows at most 5 updates a second, each within about 200 ms. */
export const DEFAULT_TUNING: FeedTuning = {
  coalesceMs: 200,
  // The contract promises one at least every 5 s; timers run late on a busy machine.
  heartbeatMs: 4_000,
  readConcurrency: 16,
  presenceMs: 5_000,
};

/** Live resources of a dashboard, for tests that check nothing leaks. */
export interface DashboardCounters {
  /** Open event streams. */
  streams: number;
  /** Running tenant feeds. */
  feeds: number;
  /** Running watch loops (each holds one backend watch while it waits). */
  watches: number;
  /** Pending timers (heartbeats and coalescing pauses). */
  timers: number;
}

/** One connected client of a feed, as the stream layer presents it. */
export interface FeedClient {
  /** Delivers one SSE frame. */
  send(frame: Uint8Array): void;
  /** Ends the client's stream (the feed failed, or the dashboard is closing). */
  end(): void;
}

/** Payload of the `snapshot` event. */
export interface SnapshotPayload {
  /** The tenant's name. */
  tenant: string;
  /** The server's clock when the snapshot was sent, ms since the epoch (for lease countdowns). */
  now: number;
  /** Every server of the tenant, in id order. */
  servers: ServerView[];
}

const PER_SERVER_READ_FAILED = "unreadable";

/** The feed of one tenant. Made and dropped by {@link FeedHub}. */
class TenantFeed {
  readonly #tenant: Tenant;
  readonly #tuning: FeedTuning;
  readonly #counters: DashboardCounters;
  /** Clients, and whether each has had its snapshot yet. */
  readonly #clients = new Map<FeedClient, { snapshotSent: boolean }>();
  /**
   * The last view of each server, with what the next one is compared against: its JSON
   * without the instances' heartbeats (`quiet`), the heartbeats, and when an event last went
   * out for it.
   */
  readonly #views = new Map<
    string,
    { view: ServerView; quiet: string; seen: string; sentAt: number }
  >();
  /** Servers whose last read failed, with the reason (sent after the snapshot). */
  readonly #unreadable = new Map<string, string>();
  readonly #abort = new AbortController();
  readonly #heartbeat: ReturnType<typeof setInterval>;
  #ready = false;
  #stopped = false;
  #lastFlush = -Infinity;
  /** Runs the change batches one after another (watchTenant's, and the expiries' below). */
  #tail: Promise<void> = Promise.resolve();
  /**
   * Re-reads the servers whose oldest instance presence expires next: an instance that died
   * without stopping writes nothing, so no change marker would ever drop it from the views.
   */
  #expiry: { timer: ReturnType<typeof setTimeout>; at: number } | undefined;
  /** Settles when the watch loop has ended. */
  readonly done: Promise<void>;

  constructor(
    tenant: Tenant,
    tuning: FeedTuning,
    counters: DashboardCounters,
    onFailure: (feed: TenantFeed) => void,
  ) {
    this.#tenant = tenant;
    this.#tuning = tuning;
    this.#counters = counters;
    counters.feeds++;
    counters.timers++;
    this.#heartbeat = setInterval(
      () => this.#broadcast(sseComment("heartbeat")),
      tuning.heartbeatMs,
    );
    counters.watches++;
    this.done = watchTenant(tenant, (ids) => this.#serial(ids), this.#abort.signal)
      .catch((e) => {
        if (this.#abort.signal.aborted) return;
        console.error(`dgen dashboard: the feed of tenant '${tenant.name}' failed:`, e);
        onFailure(this);
      })
      .finally(() => counters.watches--);
  }

  get size(): number {
    return this.#clients.size;
  }

  add(client: FeedClient): void {
    const entry = { snapshotSent: false };
    this.#clients.set(client, entry);
    if (this.#ready) this.#sendSnapshot(client, entry);
  }

  /** Removes `client`; true when the feed has no clients left. */
  remove(client: FeedClient): boolean {
    this.#clients.delete(client);
    return this.#clients.size === 0;
  }

  /** Ends every client's stream (each then leaves through `remove`). */
  endAll(): void {
    for (const client of [...this.#clients.keys()]) client.end();
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#abort.abort();
    clearInterval(this.#heartbeat);
    this.#counters.timers--;
    this.#counters.feeds--;
    this.#clearExpiry();
  }

  /** Runs `#onChange(ids)` after the batches before it. */
  #serial(ids: string[]): Promise<void> {
    const run = this.#tail.then(() => this.#onChange(ids));
    this.#tail = run.catch(() => {});
    return run;
  }

  /** Sets the expiry timer for the earliest presence expiry among the views (if earlier). */
  #scheduleExpiry(): void {
    let at = Infinity;
    for (const { view } of this.#views.values()) {
      for (const i of view.instances) at = Math.min(at, i.lastSeen + PRESENCE_TTL);
    }
    if (at === Infinity || this.#stopped) return this.#clearExpiry();
    if (this.#expiry !== undefined && this.#expiry.at === at) return;
    this.#clearExpiry();
    this.#counters.timers++;
    // A little after, so that the read finds it expired by its own clock too.
    const timer = setTimeout(() => {
      this.#expiry = undefined;
      this.#counters.timers--;
      const now = Date.now();
      const ids = [...this.#views.values()]
        .filter(({ view }) => view.instances.some((i) => i.lastSeen + PRESENCE_TTL <= now))
        .map(({ view }) => view.id);
      // #onChange reports a server it cannot read itself; nothing else is expected to throw,
      // and the next change reads those servers again anyway.
      if (ids.length > 0) this.#serial(ids).catch(() => {});
      else this.#scheduleExpiry();
    }, Math.max(0, at - Date.now()) + 50);
    this.#expiry = { timer, at };
  }

  #clearExpiry(): void {
    if (this.#expiry === undefined) return;
    clearTimeout(this.#expiry.timer);
    this.#expiry = undefined;
    this.#counters.timers--;
  }

  async #onChange(ids: string[]): Promise<void> {
    // Throttle: watchTenant waits for this before it reads the change markers again, so a
    // busy tenant costs at most one marker read and one batch of view reads per window.
    const wait = this.#lastFlush + this.#tuning.coalesceMs - performance.now();
    if (wait > 0) await this.#pause(wait);
    if (this.#abort.signal.aborted) return;
    const frames: Uint8Array[] = [];
    const read = await this.#readViews(ids);
    this.#lastFlush = performance.now();
    if (this.#abort.signal.aborted) return;
    for (const [id, result] of read) {
      if ("error" in result) {
        if (this.#unreadable.get(id) === result.error) continue;
        this.#unreadable.set(id, result.error);
        frames.push(sseEvent(PER_SERVER_READ_FAILED, { id, message: result.error }));
        continue;
      }
      // A client showing a read failure must hear that it is over, even if the view is as before.
      const recovered = this.#unreadable.delete(id);
      const view = result.view;
      if (view === undefined) {
        if (this.#views.delete(id) || recovered) frames.push(sseEvent("removed", { id }));
        continue;
      }
      const quiet = JSON.stringify({
        ...view,
        instances: view.instances.map(({ lastSeen: _, ...rest }) => rest),
      });
      const seen = view.instances.map((i) => i.lastSeen).join(",");
      const last = this.#views.get(id);
      const now = performance.now();
      if (!recovered && last !== undefined && last.quiet === quiet) {
        if (last.seen === seen) continue; // nothing visible changed
        if (now - last.sentAt < this.#tuning.presenceMs) {
          // Heartbeats only: kept for new clients' snapshots, sent with a later change.
          this.#views.set(id, { view, quiet, seen, sentAt: last.sentAt });
          continue;
        }
      }
      this.#views.set(id, { view, quiet, seen, sentAt: now });
      frames.push(sseEvent("server", view));
    }
    this.#ready = true;
    this.#scheduleExpiry();
    for (const [client, entry] of this.#clients) {
      if (!entry.snapshotSent) this.#sendSnapshot(client, entry);
      else for (const frame of frames) client.send(frame);
    }
  }

  async #readViews(
    ids: string[],
  ): Promise<Map<string, { view: ServerView | undefined } | { error: string }>> {
    const out = new Map<string, { view: ServerView | undefined } | { error: string }>();
    let next = 0;
    const worker = async () => {
      while (next < ids.length) {
        const id = ids[next++]!;
        try {
          out.set(id, { view: await readServerView(this.#tenant, id) });
        } catch (e) {
          out.set(id, { error: errorMessage(e) });
        }
      }
    };
    const workers = Math.min(this.#tuning.readConcurrency, ids.length);
    await Promise.all(Array.from({ length: workers }, worker));
    // Keep the order watchTenant reported (id order on the first read).
    return new Map(ids.filter((id) => out.has(id)).map((id) => [id, out.get(id)!]));
  }

  #sendSnapshot(client: FeedClient, entry: { snapshotSent: boolean }): void {
    entry.snapshotSent = true;
    const servers = [...this.#views.values()].map((v) => v.view)
      .sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    const payload: SnapshotPayload = { tenant: this.#tenant.name, now: Date.now(), servers };
    client.send(sseEvent("snapshot", payload));
    for (const [id, message] of this.#unreadable) {
      client.send(sseEvent(PER_SERVER_READ_FAILED, { id, message }));
    }
  }

  #broadcast(frame: Uint8Array): void {
    for (const client of [...this.#clients.keys()]) client.send(frame);
  }

  /** Waits `ms`, or less if the feed stops meanwhile. */
  #pause(ms: number): Promise<void> {
    const signal = this.#abort.signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      this.#counters.timers++;
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        this.#counters.timers--;
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}

/** The feeds of one dashboard, keyed by tenant name. */
export class FeedHub {
  readonly #tuning: FeedTuning;
  readonly counters: DashboardCounters = { streams: 0, feeds: 0, watches: 0, timers: 0 };
  readonly #feeds = new Map<string, TenantFeed>();
  /** Watch loops of stopped feeds that have not ended yet. */
  readonly #ending = new Set<Promise<void>>();
  #closed = false;

  constructor(tuning: FeedTuning) {
    this.#tuning = tuning;
  }

  /** Adds `client` to the tenant's feed (starting it); returns the function that removes it. */
  subscribe(tenant: Tenant, client: FeedClient): () => void {
    if (this.#closed) {
      // A request that arrived while the dashboard closes: no feed is started for it.
      client.end();
      return () => {};
    }
    let feed = this.#feeds.get(tenant.name);
    if (feed === undefined) {
      feed = new TenantFeed(tenant, this.#tuning, this.counters, (failed) => {
        // Its clients reconnect (EventSource retries) and start a fresh feed.
        if (this.#feeds.get(tenant.name) === failed) this.#feeds.delete(tenant.name);
        failed.endAll();
        this.#retire(failed);
      });
      this.#feeds.set(tenant.name, feed);
    }
    const joined = feed;
    joined.add(client);
    return () => {
      if (!joined.remove(client)) return;
      if (this.#feeds.get(tenant.name) === joined) this.#feeds.delete(tenant.name);
      this.#retire(joined);
    };
  }

  #retire(feed: TenantFeed): void {
    feed.stop();
    const done = feed.done;
    this.#ending.add(done);
    done.finally(() => this.#ending.delete(done));
  }

  /**
   * Ends every stream and waits until every watch loop has ended. Streams opened afterwards
   * end at once.
   */
  async close(): Promise<void> {
    this.#closed = true;
    for (const feed of [...this.#feeds.values()]) feed.endAll();
    for (const feed of [...this.#feeds.values()]) this.#retire(feed);
    this.#feeds.clear();
    await Promise.all([...this.#ending]);
  }
}
