/**
 * `serveDashboard`: the embedded live dashboard, served from the same process.
 *
 * @module
 */

import * as v from "valibot";
import { ValidationError } from "../errors.ts";
import { serveHttp } from "../runtime/http.ts";
import { type Tenant, tenantSchema } from "../tenant.ts";
import { parse } from "../validate.ts";
import { type DashboardCounters, DEFAULT_TUNING, FeedHub, type FeedTuning } from "./feed.ts";
import { createHandler, type HandlerConfig } from "./handler.ts";
import { loadPage } from "./page.ts";

/**
 * Options of {@link serveDashboard}.
 *
 * @example
 * ```ts
 * import { type DashboardOptions, openMemoryBackend, openTenant, serveDashboard } from "../../mod.ts";
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const options: DashboardOptions = { tenants: [tenant], token: "s3cret" };
 * const dashboard = await serveDashboard(options);
 * console.log(new URL(dashboard.url).searchParams.get("token")); // "s3cret"
 * await dashboard.close();
 * await tenant.backend.close();
 * ```
 */
export interface DashboardOptions {
  /** The tenants to show (at least one; names must be distinct). */
  tenants: Tenant[];
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number;
  /** Interface to listen on. @default "127.0.0.1" */
  hostname?: string;
  /**
   * A secret every request must carry, as `Authorization: Bearer <token>` or `?token=<token>`
   * (the page passes it on from its own URL). Printable ASCII without spaces.
   * @default no token
   */
  token?: string;
}

/**
 * A running dashboard.
 *
 * @example
 * ```ts
 * import { type Dashboard, openMemoryBackend, openTenant, serveDashboard } from "../../mod.ts";
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const dashboard: Dashboard = await serveDashboard({ tenants: [tenant] });
 * const page = await fetch(dashboard.url);
 * console.log(page.status, dashboard.url.startsWith("http://127.0.0.1:")); // 200 true
 * await page.body?.cancel();
 * await dashboard.close();
 * await tenant.backend.close();
 * ```
 */
export interface Dashboard {
  /** Where to open it; carries `?token=…` when a token is set. */
  readonly url: string;
  /**
   * Ends every event stream, stops every feed and stops listening. Returns within about a
   * second even while a client has stopped reading, and the port is free then. Idempotent.
   */
  close(): Promise<void>;
}

const optionsSchema = v.strictObject({
  tenants: v.pipe(v.array(tenantSchema), v.minLength(1, "Expected at least one tenant")),
  port: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(65535)), 0),
  hostname: v.optional(
    v.pipe(v.string(), v.minLength(1, "Expected a host name or IP address")),
    "127.0.0.1",
  ),
  token: v.optional(
    v.pipe(
      v.string(),
      v.minLength(1, "Expected a non-empty token"),
      v.regex(/^[\x21-\x7e]+$/, "Expected printable ASCII without spaces"),
    ),
  ),
});

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|\[::1\]|localhost)$/i;

/**
 * Host header values a loopback dashboard answers to: its loopback names with its port, and
 * on port 80 also without it (browsers and curl leave the default port out of `Host`).
 */
export function loopbackHosts(hostname: string, port: number): Set<string> {
  const names = [
    "127.0.0.1",
    "localhost",
    "[::1]",
    urlHost(hostname),
  ].map((n) => n.toLowerCase());
  const hosts = names.map((n) => `${n}:${port}`);
  if (port === 80) hosts.push(...names);
  return new Set(hosts);
}

/** `hostname` as it appears in a URL or `Host`: an IPv6 address in brackets, once. */
function urlHost(hostname: string): string {
  return hostname.includes(":") && !hostname.startsWith("[") ? `[${hostname}]` : hostname;
}

const INTERNALS: unique symbol = Symbol("dgen.dashboardInternals");

/**
 * Serves the live dashboard: a page showing each tenant's servers (state, queue, lock, dead
 * letters, instances) that updates as they change, fed by Server-Sent Events. Loopback only
 * unless `hostname` says otherwise; see `docs/dashboard.md` for the HTTP contract.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, openTenant, serveDashboard } from "../../mod.ts";
 * const backend = openMemoryBackend();
 * const tenant = await openTenant(backend, "demo");
 * const dashboard = await serveDashboard({ tenants: [tenant] });
 * console.log(`Dashboard at ${dashboard.url}`);
 * await dashboard.close();
 * await backend.close();
 * ```
 */
export function serveDashboard(options: DashboardOptions): Promise<Dashboard> {
  return serveDashboardWith(options, {});
}

/** {@link serveDashboard} with internal tuning (tests shorten the heartbeat and window). */
export async function serveDashboardWith(
  options: DashboardOptions,
  tuning: Partial<FeedTuning> & { retryMs?: number; maxBuffered?: number },
): Promise<Dashboard> {
  const opts = parse(optionsSchema, options, "options");
  const tenants = new Map<string, Tenant>();
  opts.tenants.forEach((t, i) => {
    if (tenants.has(t.name)) {
      const first = opts.tenants.findIndex((u) => u.name === t.name);
      throw new ValidationError([{
        path: `options.tenants[${i}]`,
        message: `Expected distinct tenant names; "${t.name}" is also options.tenants[${first}]`,
      }]);
    }
    tenants.set(t.name, t);
  });
  const page = await loadPage();
  const hub = new FeedHub({ ...DEFAULT_TUNING, ...tuning });
  const config: HandlerConfig = {
    tenants,
    token: opts.token,
    allowedHosts: null,
    page,
    hub,
    retryMs: tuning.retryMs ?? 2_000,
    maxBuffered: tuning.maxBuffered ?? 8 * 1024 * 1024,
  };
  const http = await serveHttp({
    // The listener takes a bare IPv6 address; "[::1]" is accepted as the URL form of "::1".
    hostname: opts.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: opts.port,
    fetch: createHandler(config),
  });
  // The port is known only now; until this line no request can have been accepted.
  if (LOOPBACK.test(opts.hostname)) config.allowedHosts = loopbackHosts(opts.hostname, http.port);
  const host = urlHost(opts.hostname);
  const query = opts.token === undefined ? "" : `?token=${encodeURIComponent(opts.token)}`;
  let closing: Promise<void> | undefined;
  const dashboard = {
    url: `http://${host}:${http.port}/${query}`,
    close() {
      closing ??= (async () => {
        await hub.close();
        await http.close();
      })();
      return closing;
    },
    [INTERNALS]: hub.counters,
  };
  return dashboard;
}

/** The live resource counters of a dashboard (tests check that nothing leaks). */
export function dashboardCounters(dashboard: Dashboard): Readonly<DashboardCounters> {
  return (dashboard as unknown as { [INTERNALS]: DashboardCounters })[INTERNALS];
}
