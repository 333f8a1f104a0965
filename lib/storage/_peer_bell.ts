/**
 * Cross-process wake-ups for the SQLite backend over UDP on loopback: every process that has
 * the database open binds a socket on 127.0.0.1 and registers its port as a file in
 * `<db>-peers/`; after each commit a process sends one datagram to every other registered
 * port. Measured here, a datagram reaches the other process in tens of microseconds, where a
 * file-change event takes a millisecond or more (and Bun's `fs.watch` drops events that come
 * close together). It is only a bell: receivers re-read what they watch, and the notify file
 * and the safety poll still catch anything a lost datagram would miss.
 *
 * @module
 */

type Dgram = typeof import("node:dgram");
type Fs = typeof import("node:fs");
type Socket = import("node:dgram").Socket;

const RING = new Uint8Array([1]);
/** How stale the list of registered processes may be, ms. */
const REFRESH_MS = 5;

/** Loopback UDP bell of one process for one database file. */
export class PeerBell {
  readonly #fs: Fs;
  readonly #dir: string;
  readonly #pid: number;
  readonly #alive: (pid: number) => boolean;
  #socket: Socket | undefined;
  #port = 0;
  #file: string | undefined;
  #peers: number[] = [];
  /** Other registered processes without a UDP bell (port 0). */
  #deaf = 0;
  #dirStamp = -1;
  #closed = false;

  private constructor(fs: Fs, dir: string, pid: number, alive: (pid: number) => boolean) {
    this.#fs = fs;
    this.#dir = dir;
    this.#pid = pid;
    this.#alive = alive;
  }

  /**
   * Binds the socket and registers this process (as port 0 where UDP is not available: the
   * others then signal it through the notify file). `onRing` runs for each datagram received.
   */
  static async open(
    dgram: Dgram,
    fs: Fs,
    dir: string,
    pid: number,
    alive: (pid: number) => boolean,
    onRing: () => void,
  ): Promise<PeerBell> {
    const bell = new PeerBell(fs, dir, pid, alive);
    try {
      const socket = dgram.createSocket("udp4");
      // The bell alone must not keep the process alive. Deno honours unref() only when it comes
      // before bind() (after it, a bound socket kept the process running: checked on 2.9.6).
      socket.unref();
      await new Promise<void>((resolve, reject) => {
        socket.once("error", reject);
        socket.bind(0, "127.0.0.1", () => {
          socket.off("error", reject);
          resolve();
        });
      });
      socket.on("message", onRing);
      socket.on("error", () => {}); // a send to a peer that just left; harmless
      socket.unref();
      bell.#socket = socket;
      bell.#port = (socket.address() as { port: number }).port;
    } catch {
      bell.#socket = undefined;
      bell.#port = 0;
    }
    try {
      fs.mkdirSync(dir, { recursive: true });
      bell.#file = `${dir}/${bell.#port}.${pid}`;
      fs.writeFileSync(bell.#file, "");
    } catch {
      // Unregistered: others cannot know this process, so it must not skip the notify file
      // (see fileNeeded).
      bell.#file = undefined;
    }
    return bell;
  }

  /** Whether any other process has the database open. */
  get alone(): boolean {
    this.#refresh();
    return this.#file !== undefined && this.#peers.length === 0 && this.#deaf === 0;
  }

  /**
   * Whether this process listens on a UDP port. A process without one registers as port 0,
   * and two such backends of one process share a registration file, so neither sees the other.
   */
  get listening(): boolean {
    return this.#port !== 0;
  }

  /** Rings every other registered process. */
  ring(): void {
    const socket = this.#socket;
    if (socket === undefined || this.#closed) return;
    this.#refresh();
    for (const port of this.#peers) {
      try {
        socket.send(RING, port, "127.0.0.1");
      } catch {
        // Best effort: the notify file carries the same news.
      }
    }
  }

  /** When the directory was last looked at (performance.now()). */
  #lookedAt = -Infinity;

  /**
   * Re-reads the registered ports when the directory changed (looked at most every
   * REFRESH_MS: a process that opens the database is noticed within that); drops dead
   * processes' files.
   */
  #refresh(): void {
    const now = performance.now();
    if (now - this.#lookedAt < REFRESH_MS) return;
    this.#lookedAt = now;
    let stamp: number;
    try {
      stamp = this.#fs.statSync(this.#dir).mtimeMs;
    } catch {
      this.#peers = [];
      this.#deaf = 0;
      return;
    }
    if (stamp === this.#dirStamp) return;
    this.#dirStamp = stamp;
    const peers: number[] = [];
    let deaf = 0;
    let names: string[];
    try {
      names = this.#fs.readdirSync(this.#dir);
    } catch {
      names = [];
    }
    for (const name of names) {
      const m = /^(\d+)\.(\d+)$/.exec(name);
      if (m === null) continue;
      const port = Number(m[1]);
      const pid = Number(m[2]);
      if (port === this.#port && pid === this.#pid) continue;
      if (pid !== this.#pid && !this.#alive(pid)) {
        try {
          this.#fs.unlinkSync(`${this.#dir}/${name}`);
        } catch { /* another process pruned it */ }
        continue;
      }
      if (port === 0) deaf++;
      else peers.push(port);
    }
    this.#peers = peers;
    this.#deaf = deaf;
  }

  /** Unregisters and closes the socket. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#file !== undefined) {
      try {
        this.#fs.unlinkSync(this.#file);
      } catch { /* already gone */ }
    }
    try {
      this.#socket?.close();
    } catch { /* already closed */ }
  }
}
