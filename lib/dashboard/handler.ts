/**
 * The dashboard's HTTP side as one Web-standard handler (`Request` in, `Response` out): the
 * page, the tenant list and each tenant's event stream, behind an optional token and, on
 * loopback, a Host check against DNS rebinding.
 *
 * @module
 */

import type { Tenant } from "../tenant.ts";
import { type FeedClient, type FeedHub } from "./feed.ts";
import { sseRetry } from "./sse.ts";

/** The page as served: its HTML and the Content-Security-Policy that goes with it. */
export interface Page {
  /** The whole document, scripts and styles inline. */
  html: string;
  /** The policy allowing exactly the inline script and style of `html`. */
  csp: string;
}

/** What the handler serves. */
export interface HandlerConfig {
  /** Tenants by name. */
  tenants: ReadonlyMap<string, Tenant>;
  /** Required token, if any. */
  token?: string;
  /** Host header values accepted (lowercase `host:port`); null accepts any. */
  allowedHosts: ReadonlySet<string> | null;
  /** The page. */
  page: Page;
  /** The feeds. */
  hub: FeedHub;
  /** Milliseconds EventSource waits before reconnecting. */
  retryMs: number;
  /** Bytes a client may leave unread before its stream is ended (it reconnects afresh). */
  maxBuffered: number;
}

const COMMON_HEADERS = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};

/** A JSON error body `{ error, message }` with the given status. */
function problem(
  status: number,
  error: string,
  message: string,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify({ error, message }) + "\n", {
    status,
    headers: { ...COMMON_HEADERS, "content-type": "application/json; charset=utf-8", ...headers },
  });
}

function json(value: unknown): Response {
  return new Response(JSON.stringify(value) + "\n", {
    headers: { ...COMMON_HEADERS, "content-type": "application/json; charset=utf-8" },
  });
}

const encoder = new TextEncoder();

/** Compares in time independent of where the strings differ, so the token cannot be probed. */
function sameSecret(given: string, expected: string): boolean {
  const a = encoder.encode(given);
  const b = encoder.encode(expected);
  let diff = a.length ^ b.length;
  for (let i = 0; i < b.length; i++) diff |= (a[i % (a.length || 1)] ?? 0) ^ b[i]!;
  return diff === 0;
}

/**
 * The token a request presents: a Bearer `Authorization` header, else `?token=`. Another
 * scheme (a reverse proxy's Basic credentials, which the browser then sends on every request,
 * EventSource included) is not a token and does not hide the query's.
 */
function presentedToken(request: Request, url: URL): string | null {
  const auth = request.headers.get("authorization");
  if (auth !== null && /^Bearer(?:[ \t]|$)/i.test(auth)) {
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(auth);
    return m === null ? "" : m[1]!;
  }
  return url.searchParams.get("token");
}

const EVENTS_ROUTE = /^\/api\/tenants\/([^/]*)\/events$/;

/** Builds the handler. */
export function createHandler(config: HandlerConfig): (request: Request) => Response {
  return (request) => {
    const url = new URL(request.url);
    if (config.allowedHosts !== null) {
      const host = (request.headers.get("host") ?? url.host).toLowerCase();
      if (!config.allowedHosts.has(host)) {
        return problem(
          403,
          "forbidden_host",
          `Host '${host}' is not this dashboard's address (a loopback dashboard answers only to ` +
            `its own host names, against DNS rebinding)`,
        );
      }
    }
    if (config.token !== undefined) {
      const given = presentedToken(request, url);
      if (given === null || !sameSecret(given, config.token)) {
        return problem(
          401,
          "unauthorized",
          given === null
            ? "This dashboard needs a token: 'Authorization: Bearer <token>' or '?token=<token>'"
            : "Wrong token",
          { "www-authenticate": 'Bearer realm="dgen dashboard"' },
        );
      }
    }
    const path = url.pathname;
    const route = path === "/"
      ? "page"
      : path === "/api/tenants"
      ? "tenants"
      : EVENTS_ROUTE.test(path)
      ? "events"
      : undefined;
    if (route === undefined) {
      const hint = path.startsWith("/api/tenants/")
        ? " (a tenant name in a path is percent-encoded: 'acme/prod' is 'acme%2Fprod')"
        : "";
      return problem(404, "not_found", `No route ${path}${hint}`);
    }
    if (request.method !== "GET") {
      return problem(405, "method_not_allowed", `${request.method} ${path}: only GET is served`, {
        allow: "GET",
      });
    }
    if (route === "page") {
      return new Response(config.page.html, {
        headers: {
          ...COMMON_HEADERS,
          "content-type": "text/html; charset=utf-8",
          "content-security-policy": config.page.csp,
          "x-frame-options": "DENY",
        },
      });
    }
    if (route === "tenants") return json([...config.tenants.keys()]);
    const encoded = EVENTS_ROUTE.exec(path)![1]!;
    let name: string;
    try {
      name = decodeURIComponent(encoded);
    } catch {
      return problem(400, "bad_request", `Malformed percent-encoding in tenant name '${encoded}'`);
    }
    const tenant = config.tenants.get(name);
    if (tenant === undefined) {
      return problem(404, "unknown_tenant", `Unknown tenant ${JSON.stringify(name)}`);
    }
    return eventStream(tenant, config);
  };
}

/**
 * The `text/event-stream` response of one client. It ends when the client goes away (Deno and
 * Bun then cancel the body), when the client stops reading for too long, or when the dashboard
 * closes; each way removes the client from its feed exactly once.
 */
function eventStream(tenant: Tenant, config: HandlerConfig): Response {
  const { hub } = config;
  let open = true;
  let leave: (() => void) | undefined;
  const finish = () => {
    if (!open) return;
    open = false;
    hub.counters.streams--;
    leave?.();
  };
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      hub.counters.streams++;
      controller.enqueue(sseRetry(config.retryMs));
      const client: FeedClient = {
        send(frame) {
          if (!open) return;
          // desiredSize is minus the bytes still queued (the high-water mark is 0): a client
          // that stopped reading is dropped rather than buffered without bound.
          if (-(controller.desiredSize ?? 0) > config.maxBuffered) return client.end();
          try {
            controller.enqueue(frame);
          } catch {
            // The runtime closed the stream under us: this client is gone. Never throw into
            // the feed, which is delivering the same frame to other clients.
            client.end();
          }
        },
        end() {
          if (!open) return;
          finish();
          try {
            controller.close();
          } catch {
            // Already closed or errored by the runtime: nothing left to end.
          }
        },
      };
      leave = hub.subscribe(tenant, client);
    },
    cancel: finish,
  }, new ByteLengthQueuingStrategy({ highWaterMark: 0 }));
  return new Response(body, {
    headers: {
      ...COMMON_HEADERS,
      "content-type": "text/event-stream; charset=utf-8",
      // Tells buffering proxies (nginx) to pass events through as they come.
      "x-accel-buffering": "no",
    },
  });
}
