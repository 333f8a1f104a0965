/// <reference lib="dom" />
/**
 * The page's components. They are presentational: they read signals from the store and draw;
 * the only thing they change is what is shown (which tenant, what is expanded).
 */
import { type ReadonlySignal, useComputed } from "@preact/signals";
import type { ComponentChildren } from "preact";
import { ago, clock, duration, plural, shortId } from "./format.ts";
import {
  current,
  listProblem,
  now,
  type Section,
  select,
  type ServerModel,
  type Status,
  type TenantModel,
  tenantNames,
} from "./store.ts";
import type { InstanceView, QueuedView, ServerView } from "./types.ts";
import { preview, Value } from "./value.tsx";

const STATUS_TEXT: Record<Status, string> = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Connection lost — reconnecting…",
  offline: "Offline — retrying…",
};

/** The whole page. */
export function App() {
  const tenant = current.value;
  return (
    <div class="page">
      <Header />
      <main>
        {listProblem.value !== null && <p class="notice notice-bad">{listProblem.value}</p>}
        {tenant === null
          ? tenantNames.value !== null && <p class="notice">No tenants to show.</p>
          : <TenantView tenant={tenant} />}
      </main>
    </div>
  );
}

function Header() {
  const names = tenantNames.value ?? [];
  const shown = current.value;
  return (
    <header class="top">
      <div class="brand">
        <span class="brand-mark" aria-hidden="true">◆</span>
        <span class="brand-name">dgen</span>
        <span class="brand-sub">live dashboard</span>
      </div>
      {names.length > 1 && (
        <nav class="tabs" aria-label="Tenants">
          {names.map((name) => (
            <button
              type="button"
              key={name}
              class="tab"
              aria-current={shown?.name === name ? "page" : undefined}
              onClick={() => select(name)}
            >
              {name}
            </button>
          ))}
        </nav>
      )}
      {shown !== null && <StatusPill tenant={shown} />}
    </header>
  );
}

function StatusPill({ tenant }: { tenant: TenantModel }) {
  const status = tenant.status.value;
  return (
    <div class={`status status-${status}`} role="status" data-status={status}>
      <span class="status-dot" aria-hidden="true" />
      {STATUS_TEXT[status]}
    </div>
  );
}

function TenantView({ tenant }: { tenant: TenantModel }) {
  const ids = tenant.ids.value;
  const stale = tenant.status.value !== "live";
  return (
    <section class={stale ? "tenant stale" : "tenant"} data-tenant={tenant.name}>
      <div class="tenant-head">
        <h1 class="tenant-name">
          <span class="muted">tenant</span> {tenant.name}
        </h1>
        <Totals totals={tenant.totals} />
      </div>
      <Unreadable tenant={tenant} />
      {tenant.status.value === "connecting" && ids.length === 0
        ? <p class="notice">Loading…</p>
        : ids.length === 0
        ? <p class="notice">No servers in this tenant yet. Start one and it appears here.</p>
        : (
          <div class="grid">
            {ids.map((id) => {
              const model = tenant.servers.get(id);
              return model && <ServerCard key={id} server={model} tenant={tenant} />;
            })}
          </div>
        )}
    </section>
  );
}

/** Read failures of servers that have no card (their view was never read). */
function Unreadable({ tenant }: { tenant: TenantModel }) {
  const known = new Set(tenant.ids.value);
  const orphans = [...tenant.unreadable.value].filter(([id]) => !known.has(id));
  if (orphans.length === 0) return null;
  return (
    <div class="notice notice-bad" data-field="unreadable">
      {orphans.map(([id, message]) => (
        <p key={id} class="small">
          Could not read server <span class="mono">{id}</span>: {message}
        </p>
      ))}
    </div>
  );
}

function Totals({ totals }: { totals: TenantModel["totals"] }) {
  const t = totals.value;
  return (
    <dl class="totals">
      <Metric label="servers" value={t.servers} />
      <Metric label="queued" value={t.queued} tone={t.queued > 0 ? "busy" : undefined} />
      <Metric label="locked" value={t.locked} tone={t.locked > 0 ? "lock" : undefined} />
      <Metric
        label="dead letters"
        value={t.deadLetters}
        tone={t.deadLetters > 0 ? "bad" : undefined}
      />
      <Metric label="instances" value={t.instances} />
    </dl>
  );
}

function Metric(
  { label, value, tone, field }: { label: string; value: number; tone?: string; field?: string },
) {
  return (
    <div class={tone ? `metric tone-${tone}` : "metric"}>
      <dt>{label}</dt>
      <dd data-field={field}>{value.toLocaleString()}</dd>
    </div>
  );
}

/** Replays a soft highlight each time `rev` moves (remounting restarts the CSS animation). */
function Flash({ rev }: { rev: number }) {
  return rev === 0 ? null : <span key={rev} class="flash" aria-hidden="true" />;
}

function Part(
  { server, section, title, aside, children, field }: {
    server: ServerModel;
    section: Section;
    title: string;
    aside?: ComponentChildren;
    children: ComponentChildren;
    field: string;
  },
) {
  return (
    <div class={`part part-${section}`} data-field={field}>
      <Flash rev={server.revs.value[section]} />
      <div class="part-head">
        <h3>{title}</h3>
        {aside}
      </div>
      {children}
    </div>
  );
}

function ServerCard({ server, tenant }: { server: ServerModel; tenant: TenantModel }) {
  const lock = server.lock.value;
  const queued = server.queue.value.length;
  const dead = server.deadLetters.value;
  const problem = tenant.unreadable.value.get(server.id);
  return (
    <article class={lock === null ? "card" : "card card-locked"} data-server={server.id}>
      <header class="card-head">
        <h2 class="server-id">{server.id}</h2>
        <div class="badges">
          {lock !== null && <span class="badge badge-lock">locked</span>}
          {queued > 0 && <span class="badge badge-busy">{plural(queued, "queued", "queued")}</span>}
          {dead > 0 && <span class="badge badge-bad">{plural(dead, "dead letter")}</span>}
        </div>
        <span class="version" title={`state version (versionstamp) ${server.version.value}`}>
          {commitVersion(server.version.value)}
        </span>
      </header>
      {problem !== undefined && (
        <p class="notice notice-bad" data-field="problem">
          Could not read this server: {problem}
        </p>
      )}
      <Part server={server} section="state" title="State" field="state">
        <div class={isScalar(server.state.value) ? "state state-scalar" : "state"}>
          <Value value={server.state.value} />
        </div>
      </Part>
      <div class="facts">
        <Part
          server={server}
          section="queue"
          title="Queue"
          field="queue"
          aside={<span class="count" data-field="queue-length">{queued.toLocaleString()}</span>}
        >
          <QueueHead queue={server.queue.value} />
        </Part>
        <Part
          server={server}
          section="deadLetters"
          title="Dead letters"
          field="dead-letters"
          aside={
            <span class={dead > 0 ? "count tone-bad" : "count"} data-field="dead-letter-count">
              {dead.toLocaleString()}
            </span>
          }
        >
          <p class="muted small">
            {dead === 0 ? "none" : "failed too often; requeue or purge with ref.deadLetters"}
          </p>
        </Part>
      </div>
      <Part server={server} section="lock" title="Lock" field="lock">
        {lock === null ? <p class="muted small">free</p> : <LockView lock={lock} tenant={tenant} />}
      </Part>
      <Part
        server={server}
        section="instances"
        title="Instances"
        field="instances"
        aside={<span class="count">{server.instances.value.length}</span>}
      >
        <Instances instances={server.instances.value} tenant={tenant} />
      </Part>
    </article>
  );
}

/** The commit version inside a versionstamp (its first 8 bytes), for a compact "v123". */
function commitVersion(stamp: string): string {
  if (!/^[0-9a-f]{16}/.test(stamp)) return "";
  return `v${BigInt(`0x${stamp.slice(0, 16)}`).toLocaleString()}`;
}

function isScalar(v: unknown): boolean {
  return v === null || typeof v !== "object" ||
    (Object.keys(v).length === 1 && /^\$(bigint|number|undefined|date)$/.test(Object.keys(v)[0]!));
}

function QueueHead({ queue }: { queue: ServerView["queue"] }) {
  if (queue.length === 0) return <p class="muted small">empty</p>;
  return (
    <ol class="queue">
      {queue.head.map((m: QueuedView, i) => (
        <li key={i}>
          <span class={`kind kind-${m.kind}`}>{m.kind}</span>
          <span class="msg-name">{m.name}</span>
          <span class="msg-arg">{preview(m.arg, 40)}</span>
          {m.attempts > 0 && (
            <span class="attempts tone-bad">{plural(m.attempts, "failed attempt")}</span>
          )}
        </li>
      ))}
      {queue.length > queue.head.length && (
        <li class="muted small">
          … and {(queue.length - queue.head.length).toLocaleString()} more
        </li>
      )}
    </ol>
  );
}

function LockView(
  { lock, tenant }: { lock: NonNullable<ServerView["lock"]>; tenant: TenantModel },
) {
  // Countdowns run on the server's clock (skew measured at the snapshot).
  const left = useComputed(() => lock.leaseUntil - (now.value + tenant.skew.value));
  const held = useComputed(() => now.value + tenant.skew.value - lock.since);
  const lease = Math.max(1, lock.leaseUntil - lock.since);
  return (
    <div class="lock">
      <p>
        <span class="msg-name">{lock.message}</span> running in{" "}
        <span class="mono" title={lock.holder}>{shortId(lock.holder)}</span> for{" "}
        <span class="mono">{duration(held.value)}</span>
      </p>
      <div class={left.value < 0 ? "lease lease-expired" : "lease"}>
        <div class="lease-bar">
          <LeaseFill left={left} lease={lease} />
        </div>
        <span class="lease-text" data-field="lease">
          {left.value >= 0
            ? `lease ${duration(left.value)} left`
            : `lease expired ${duration(-left.value)} ago — awaiting takeover`}
        </span>
      </div>
    </div>
  );
}

function LeaseFill({ left, lease }: { left: ReadonlySignal<number>; lease: number }) {
  const pct = Math.max(0, Math.min(100, (left.value / lease) * 100));
  return <div class="lease-fill" style={{ width: `${pct}%` }} />;
}

function Instances({ instances, tenant }: { instances: InstanceView[]; tenant: TenantModel }) {
  if (instances.length === 0) return <p class="muted small">none running</p>;
  return (
    <ul class="instances">
      {instances.map((i) => (
        <li key={i.instance}>
          <span
            class={i.consuming ? "dot dot-on" : "dot"}
            title={i.consuming ? "consuming" : "sending only"}
          />
          <span class="mono" title={i.instance}>{shortId(i.instance)}</span>
          <span class={i.consuming ? "role role-on" : "role"}>
            {i.consuming ? "consuming" : "sending only"}
          </span>
          <span class="muted small">{i.runtime} · pid {i.pid}</span>
          <Seen at={i.lastSeen} since={i.since} tenant={tenant} />
        </li>
      ))}
    </ul>
  );
}

function Seen({ at, since, tenant }: { at: number; since: number; tenant: TenantModel }) {
  const t = now.value + tenant.skew.value;
  return (
    <span class="seen muted small" title={`up since ${clock(since)}`}>
      seen {ago(at, t)}
    </span>
  );
}
