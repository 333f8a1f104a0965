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
   * Stops listening and closes idle connections. Responses still streaming must have been
   * ended by the handler's owner first, or this waits for them (Deno) or cuts them (Bun).
   */
  close(): Promise<void>;
}

interface DenoServer {
  readonly addr: { hostname: string; port: number };
  readonly finished: Promise<void>;
  shutdown(): Promise<void>;
}

interface DenoLike {
  serve(
    options: { hostname: string; port: number; onListen(): void },
    handler: (request: Request) => Response | Promise<Response>,
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
      const server = g.Deno.serve(
        { hostname: options.hostname, port: options.port, onListen: () => {} },
        options.fetch,
      );
      return Promise.resolve({
        hostname: options.hostname,
        port: server.addr.port,
        close: async () => {
          await server.shutdown();
          await server.finished;
        },
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
