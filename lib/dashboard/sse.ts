/**
 * Server-Sent Events framing (the `text/event-stream` format of the HTML standard).
 *
 * @module
 */

const encoder = new TextEncoder();

/**
 * One event: `event: <name>` and one `data:` line of JSON. `JSON.stringify` escapes CR and LF
 * inside strings, so the payload is always a single line and needs no splitting.
 */
export function sseEvent(name: string, payload: unknown): Uint8Array {
  return encoder.encode(`event: ${name}\ndata: ${JSON.stringify(payload)}\n\n`);
}

/** A comment line: ignored by `EventSource`, but keeps proxies and idle timeouts at bay. */
export function sseComment(text: string): Uint8Array {
  return encoder.encode(`: ${text.replace(/[\r\n]/g, " ")}\n\n`);
}

/** How long `EventSource` waits before reconnecting after the stream drops, ms. */
export function sseRetry(ms: number): Uint8Array {
  return encoder.encode(`retry: ${Math.max(0, Math.round(ms))}\n\n`);
}
