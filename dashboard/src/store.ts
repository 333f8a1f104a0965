/// <reference lib="dom" />
/**
 * The page's live data: one signal per piece of live data (each section of each server's view,
 * each tenant's connection status), `computed` for derived views, `batch` for updates that
 * touch several signals. Components only read these.
 */
import { batch, computed, effect, type ReadonlySignal, type Signal, signal } from "@preact/signals";
import type { RemovedPayload, ServerView, SnapshotPayload, UnreadablePayload } from "./types.ts";

/** The parts of a server's view that are highlighted separately when they change. */
export type Section = "state" | "queue" | "lock" | "deadLetters" | "instances";

/** A tenant's connection, as shown to the viewer. */
export type Status = "connecting" | "live" | "reconnecting" | "offline";

/** The live model of one server. */
export interface ServerModel {
  readonly id: string;
  readonly version: Signal<string>;
  readonly state: Signal<unknown>;
  readonly queue: Signal<ServerView["queue"]>;
  readonly lock: Signal<ServerView["lock"]>;
  readonly deadLetters: Signal<number>;
  readonly instances: Signal<ServerView["instances"]>;
  /** Per section, how many visible changes it has had (the highlight replays on each). */
  readonly revs: Signal<Readonly<Record<Section, number>>>;
  /** Fingerprints of the last view, per section (not live: only compared). */
  prints: Record<Section, string>;
}

/** The live model of one tenant. */
export interface TenantModel {
  readonly name: string;
  readonly status: Signal<Status>;
  /** Server ids, sorted. */
  readonly ids: Signal<readonly string[]>;
  /** Models by id; membership changes go through `ids`. */
  readonly servers: Map<string, ServerModel>;
  /** Servers whose last read failed, with why (a server may have no card yet). */
  readonly unreadable: Signal<ReadonlyMap<string, string>>;
  /** Server clock minus this page's clock, ms (lease countdowns use the server's clock). */
  readonly skew: Signal<number>;
  /** When the last event arrived (page clock). */
  readonly lastEvent: Signal<number>;
  /** Totals over every server. */
  readonly totals: ReadonlySignal<Totals>;
}

/** Totals of a tenant. */
export interface Totals {
  servers: number;
  queued: number;
  locked: number;
  deadLetters: number;
  instances: number;
}

/** The page's own URL parameters: the token, if the dashboard has one. */
const token = new URLSearchParams(location.search).get("token");

/** An API URL relative to the page, carrying the token (EventSource cannot send headers). */
export function apiUrl(path: string): string {
  return token === null ? path : `${path}?token=${encodeURIComponent(token)}`;
}

/** The page's clock, ticking for countdowns and "seen … ago". */
export const now: ReadonlySignal<number> = (() => {
  const s = signal(Date.now());
  setInterval(() => s.value = Date.now(), 250);
  return s;
})();

/** The tenant names served, once loaded. */
export const tenantNames = signal<readonly string[] | null>(null);
/** Why the tenant list could not be loaded, if it could not. */
export const listProblem = signal<string | null>(null);
/** The tenant shown, from the location hash. */
export const selectedName = signal<string | null>(null);

const tenantModels = new Map<string, TenantModel>();

/** The model of the tenant shown. */
export const current: ReadonlySignal<TenantModel | null> = computed(() => {
  const names = tenantNames.value;
  if (names === null || names.length === 0) return null;
  const wanted = selectedName.value;
  const name = wanted !== null && names.includes(wanted) ? wanted : names[0]!;
  return tenantModel(name);
});

function tenantModel(name: string): TenantModel {
  let model = tenantModels.get(name);
  if (model === undefined) {
    const ids = signal<readonly string[]>([]);
    const servers = new Map<string, ServerModel>();
    model = {
      name,
      status: signal<Status>("connecting"),
      ids,
      servers,
      unreadable: signal<ReadonlyMap<string, string>>(new Map()),
      skew: signal(0),
      lastEvent: signal(0),
      totals: computed(() => {
        const t: Totals = { servers: 0, queued: 0, locked: 0, deadLetters: 0, instances: 0 };
        for (const id of ids.value) {
          const s = servers.get(id);
          if (s === undefined) continue;
          t.servers++;
          t.queued += s.queue.value.length;
          t.locked += s.lock.value === null ? 0 : 1;
          t.deadLetters += s.deadLetters.value;
          t.instances += s.instances.value.length;
        }
        return t;
      }),
    };
    tenantModels.set(name, model);
  }
  return model;
}

/**
 * What a section looks like for the highlight: lease renewals and instance heartbeats move
 * timestamps every few seconds, which is not worth drawing the eye to.
 */
function fingerprints(view: ServerView): Record<Section, string> {
  return {
    state: JSON.stringify(view.state),
    queue: JSON.stringify(view.queue),
    lock: view.lock === null ? "" : `${view.lock.holder}\n${view.lock.since}\n${view.lock.message}`,
    deadLetters: String(view.deadLetters.length),
    instances: JSON.stringify(view.instances.map((i) => [i.instance, i.consuming])),
  };
}

const ZERO_REVS: Record<Section, number> = {
  state: 0,
  queue: 0,
  lock: 0,
  deadLetters: 0,
  instances: 0,
};

function newServer(view: ServerView): ServerModel {
  return {
    id: view.id,
    version: signal(view.version),
    state: signal(view.state),
    queue: signal(view.queue),
    lock: signal(view.lock),
    deadLetters: signal(view.deadLetters.length),
    instances: signal(view.instances),
    revs: signal(ZERO_REVS),
    prints: fingerprints(view),
  };
}

/** Applies a full view to a server's model; call inside `batch`. */
function applyView(model: ServerModel, view: ServerView): void {
  const prints = fingerprints(view);
  const revs = { ...model.revs.value };
  let changed = false;
  for (const section of Object.keys(prints) as Section[]) {
    if (prints[section] !== model.prints[section]) {
      revs[section]++;
      changed = true;
    }
  }
  model.prints = prints;
  model.version.value = view.version;
  model.state.value = view.state;
  model.queue.value = view.queue;
  model.lock.value = view.lock;
  model.deadLetters.value = view.deadLetters.length;
  model.instances.value = view.instances;
  if (changed) model.revs.value = revs;
}

function sortedIds(servers: Map<string, ServerModel>): string[] {
  return [...servers.keys()].sort((a, b) => a < b ? -1 : a > b ? 1 : 0);
}

function onSnapshot(tenant: TenantModel, payload: SnapshotPayload): void {
  batch(() => {
    const seen = new Set<string>();
    for (const view of payload.servers) {
      seen.add(view.id);
      const existing = tenant.servers.get(view.id);
      // Keep models across reconnects, so expanded trees stay expanded.
      if (existing === undefined) tenant.servers.set(view.id, newServer(view));
      else applyView(existing, view);
    }
    for (const id of [...tenant.servers.keys()]) if (!seen.has(id)) tenant.servers.delete(id);
    tenant.ids.value = sortedIds(tenant.servers);
    tenant.unreadable.value = new Map();
    tenant.skew.value = payload.now - Date.now();
    tenant.status.value = "live";
    tenant.lastEvent.value = Date.now();
  });
}

function onServer(tenant: TenantModel, view: ServerView): void {
  batch(() => {
    const existing = tenant.servers.get(view.id);
    if (existing === undefined) {
      tenant.servers.set(view.id, newServer(view));
      tenant.ids.value = sortedIds(tenant.servers);
    } else {
      applyView(existing, view);
    }
    readable(tenant, view.id);
    tenant.lastEvent.value = Date.now();
  });
}

function onRemoved(tenant: TenantModel, { id }: RemovedPayload): void {
  batch(() => {
    if (tenant.servers.delete(id)) tenant.ids.value = sortedIds(tenant.servers);
    readable(tenant, id);
    tenant.lastEvent.value = Date.now();
  });
}

function onUnreadable(tenant: TenantModel, { id, message }: UnreadablePayload): void {
  tenant.unreadable.value = new Map(tenant.unreadable.value).set(id, message);
}

/** Forgets a read failure of `id` (it was read, or removed); call inside `batch`. */
function readable(tenant: TenantModel, id: string): void {
  if (!tenant.unreadable.value.has(id)) return;
  const next = new Map(tenant.unreadable.value);
  next.delete(id);
  tenant.unreadable.value = next;
}

/**
 * Follows a tenant's event stream until the returned function is called. EventSource
 * reconnects by itself after a dropped stream; when it gives up (an HTTP error, or the
 * dashboard restarting), a fresh one is opened with a growing delay.
 */
function follow(tenant: TenantModel): () => void {
  let source: EventSource | null = null;
  let retry: ReturnType<typeof setTimeout> | undefined;
  let delay = 1000;
  let stopped = false;
  const open = () => {
    const es = new EventSource(apiUrl(`api/tenants/${encodeURIComponent(tenant.name)}/events`));
    source = es;
    const on = <T>(name: string, apply: (tenant: TenantModel, payload: T) => void) =>
      es.addEventListener(name, (e) => {
        delay = 1000;
        apply(tenant, JSON.parse((e as MessageEvent<string>).data) as T);
      });
    on<SnapshotPayload>("snapshot", onSnapshot);
    on<ServerView>("server", onServer);
    on<RemovedPayload>("removed", onRemoved);
    on<UnreadablePayload>("unreadable", onUnreadable);
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        tenant.status.value = "offline";
        es.close();
        retry = setTimeout(() => !stopped && open(), delay);
        delay = Math.min(delay * 2, 15_000);
      } else {
        tenant.status.value = "reconnecting";
      }
    };
  };
  tenant.status.value = "connecting";
  open();
  return () => {
    stopped = true;
    clearTimeout(retry);
    source?.close();
  };
}

/** Loads the tenant list (retrying while the dashboard is unreachable). */
async function loadTenants(): Promise<void> {
  for (let delay = 1000;; delay = Math.min(delay * 2, 15_000)) {
    try {
      const res = await fetch(apiUrl("api/tenants"));
      if (res.status === 401) {
        listProblem.value =
          "This dashboard needs a token: open the URL printed by serveDashboard " +
          "(it ends in ?token=…).";
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const names = (await res.json()) as string[];
      batch(() => {
        listProblem.value = null;
        tenantNames.value = names;
      });
      return;
    } catch (e) {
      listProblem.value = `Cannot reach the dashboard (${(e as Error).message}); retrying…`;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

function readHash(): void {
  const raw = location.hash.slice(1);
  try {
    selectedName.value = raw === "" ? null : decodeURIComponent(raw);
  } catch {
    selectedName.value = null;
  }
}

/** Shows tenant `name` (and remembers it in the location hash). */
export function select(name: string): void {
  location.hash = encodeURIComponent(name);
}

/** Starts the page's data flow. */
export function startStore(): void {
  readHash();
  addEventListener("hashchange", readHash);
  void loadTenants();
  // One stream at a time: browsers allow only six HTTP/1.1 connections per host.
  effect(() => {
    const tenant = current.value;
    if (tenant !== null) return follow(tenant);
  });
  effect(() => {
    const tenant = current.value;
    document.title = tenant === null ? "dgen dashboard" : `${tenant.name} · dgen dashboard`;
  });
}
