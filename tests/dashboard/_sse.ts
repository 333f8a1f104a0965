/** An event-stream client for tests: reads a `text/event-stream` response and parses it. */

/** One parsed event. */
export interface SseEvent {
  /** The `event:` field (`"message"` when absent). */
  event: string;
  /** The `data:` lines joined by newlines. */
  data: string;
  /** When it arrived (performance.now()). */
  at: number;
}

/** Reads an event stream in the background; `close` ends it. */
export class SseClient {
  readonly events: SseEvent[] = [];
  readonly comments: string[] = [];
  readonly retries: number[] = [];
  /** Set when the server ended the stream. */
  ended = false;
  readonly #abort: AbortController;
  readonly #pump: Promise<void>;

  private constructor(readonly response: Response, abort: AbortController) {
    this.#abort = abort;
    this.#pump = this.#read(response.body!);
  }

  /** Opens `url` (throws unless the answer is a 200 event stream). */
  static async open(url: string, init: RequestInit = {}): Promise<SseClient> {
    const abort = new AbortController();
    const response = await fetch(url, { ...init, signal: abort.signal });
    if (response.status !== 200) {
      const body = await response.text();
      throw new Error(`GET ${url}: ${response.status} ${body}`);
    }
    return new SseClient(response, abort);
  }

  async #read(body: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    const reader = body.getReader();
    let buffer = "";
    let event = "message";
    let data: string[] = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl: number;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).replace(/\r$/, "");
          buffer = buffer.slice(nl + 1);
          if (line === "") {
            if (data.length > 0) {
              this.events.push({ event, data: data.join("\n"), at: performance.now() });
            }
            event = "message";
            data = [];
          } else if (line.startsWith(":")) this.comments.push(line.slice(1).trim());
          else {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event = value;
            else if (field === "data") data.push(value);
            else if (field === "retry") this.retries.push(Number(value));
          }
        }
      }
      this.ended = true;
    } catch {
      // Aborted by close().
    } finally {
      reader.releaseLock();
    }
  }

  /** Parsed payloads of the events named `name`, in arrival order. */
  payloads<T = unknown>(name: string): T[] {
    return this.events.filter((e) => e.event === name).map((e) => JSON.parse(e.data) as T);
  }

  /** Disconnects and waits for the reader to stop. */
  async close(): Promise<void> {
    this.#abort.abort();
    await this.#pump;
    await this.response.body?.cancel().catch(() => {});
  }
}
