/**
 * The runtime corner for HTTP: serves a Web-standard `fetch` handler with `Deno.serve` or
 * `Bun.serve`, and reads the dashboard's bundled assets. Everything above it speaks only
 * `Request`, `Response` and `ReadableStream`.
 *
 * @module
 */

import { readFile } from "node:fs/promises";
import { DGenError } from "../errors.ts";

/** What {@link serveHttp} needs. */
export interface ServeHttpOptions {
  /** Interface to listen on. */
  hostname: string;
  /** Port; 0 picks a free one. */
  port: number;
  /** The Web-standard handler. */
  fetch(request: Request): Response | Promise<Response>;
}

/** A listening HTTP server. */
export interface HttpServer {
  /** The interface it listens on. */
  readonly hostname: string;
  /** The port it listens on (the one picked when 0 was asked). */
  readonly port: number;
  /**
   * Stops listening and closes every connection; settles within about a second, and the port
   * is free when it has. Responses still streaming should have been ended by the handler's
   * owner first: Deno then gets up to {@link CLOSE_GRACE_MS} to write what they had queued
   * (a client that stopped reading would otherwise hold it open for ever) and answers new
   * requests meanwhile with 503 `closing`; Bun cuts them at once. Idempotent.
   */
  close(): Promise<void>;
}

interface DenoServer {
  readonly addr: { hostname: string; port: number };
  readonly finished: Promise<void>;
}

interface DenoLike {
  serve(
    options: { hostname: string; port: number; signal: AbortSignal; onListen(): void },
    handler: (
      request: Request,
      info: { completed: Promise<void> },
    ) => Response | Promise<Response>,
  ): DenoServer;
}

interface BunServer {
  readonly hostname: string;
  readonly port: number;
  stop(closeActiveConnections?: boolean): Promise<void>;
}

interface BunLike {
  serve(options: {
    hostname: string;
    port: number;
    idleTimeout: number;
    fetch(request: Request): Response | Promise<Response>;
  }): BunServer;
}

/**
 * Seconds without traffic after which Bun closes a connection. Bun's default (10 s) would cut
 * a quiet event stream; its heartbeats keep it well inside this, while dead idle sockets are
 * still reaped.
 */
const BUN_IDLE_TIMEOUT = 60;

/**
 * How long Deno's close waits for the responses in flight to be written out before it cuts
 * their connections, ms. Deno's own graceful `shutdown()` waits without bound for a client
 * that stopped reading (and cannot be cut once begun), so close uses the serve `signal`
 * instead: an abort stops the server without waiting.
 */
export const CLOSE_GRACE_MS = 1_000;

/** Serves `options.fetch` on `hostname:port` with the runtime's own HTTP server. */
export function serveHttp(options: ServeHttpOptions): Promise<HttpServer> {
  const g = globalThis as { Deno?: DenoLike; Bun?: BunLike };
  const where = `${options.hostname}:${options.port}`;
  try {
    if (g.Bun !== undefined) {
      const server = g.Bun.serve({
        hostname: options.hostname,
        port: options.port,
        idleTimeout: BUN_IDLE_TIMEOUT,
        fetch: options.fetch,
      });
      return Promise.resolve({
        hostname: options.hostname,
        port: server.port,
        close: () => server.stop(true),
      });
    }
    if (g.Deno !== undefined) {
      const stop = new AbortController();
      /** Responses being sent, each settling when it has been written out or has failed. */
      const sending = new Set<Promise<void>>();
      let closing: Promise<void> | undefined;
      let finished = false;
      const server = g.Deno.serve(
        { hostname: options.hostname, port: options.port, signal: stop.signal, onListen: () => {} },
        (request, info) => {
          if (closing !== undefined) {
            return new Response(
              JSON.stringify({ error: "closing", message: "This server is closing" }) + "\n",
              {
                status: 503,
                headers: { "content-type": "application/json; charset=utf-8", connection: "close" },
              },
            );
          }
          const sent = info.completed.catch(() => {});
          sending.add(sent);
          sent.then(() => sending.delete(sent));
          return options.fetch(request);
        },
      );
      server.finished.then(() => finished = true, () => finished = true);
      return Promise.resolve({
        hostname: options.hostname,
        port: server.addr.port,
        close: () =>
          closing ??= (async () => {
            let timer: ReturnType<typeof setTimeout> | undefined;
            const grace = new Promise<void>((resolve) =>
              timer = setTimeout(resolve, CLOSE_GRACE_MS)
            );
            await Promise.race([Promise.all([...sending]), grace]);
            clearTimeout(timer);
            // Aborting a server that has already ended throws (in the signal's listener).
            if (!finished) stop.abort();
            await server.finished;
          })(),
      });
    }
  } catch (e) {
    return Promise.reject(
      new DGenError("listen_failed", `Cannot listen on ${where}: ${(e as Error).message}`, {
        cause: e,
      }),
    );
  }
  return Promise.reject(
    new DGenError("unsupported_runtime", "Serving HTTP needs Deno (Deno.serve) or Bun (Bun.serve)"),
  );
}

/** Reads a UTF-8 file shipped next to the code (the dashboard's prebuilt bundle). */
export async function readTextAsset(url: URL): Promise<string> {
  return await readFile(url, "utf8");
}
