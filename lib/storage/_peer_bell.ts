/**
 * Cross-process wake-ups for the SQLite backend over UDP on loopback: every process that has
 * the database open binds a socket on 127.0.0.1 and registers its port as a file in
 * `<db>-peers/`; after each commit a process sends one datagram to every other registered
 * port. Measured here, a datagram reaches the other process in tens of microseconds, where a
 * file-change event takes a millisecond or more (and Bun's `fs.watch` drops events that come
 * close together). It is only a bell: receivers re-read what they watch, and the notify file
 * and the safety poll still catch anything a lost datagram would miss.
 *
 * Registrations are kept alive by heartbeats: each process touches its file about every
 * second (recreating it if another process pruned it), and a file is pruned when it has not
 * been touched for STALE_MS, or for DEAD_STALE_MS when its pid is not alive here. A pid alone
 * cannot tell: a process in another PID namespace (containers sharing a volume) looks dead,
 * and a pid of that namespace may name a live process of this one.
 *
 * @module
 */

type Dgram = typeof import("node:dgram");
type Fs = typeof import("node:fs");
type Socket = import("node:dgram").Socket;
/** The interval timers of `node:timers` (their handles can be unref'd on both runtimes). */
export type IntervalTimers = Pick<typeof import("node:timers"), "setInterval" | "clearInterval">;

const RING = new Uint8Array([1]);
/** How stale the list of registered processes may be when the directory changed, ms. */
const REFRESH_MS = 5;
/** The list is read again at least this often even when the directory did not change, ms. */
const RESCAN_MS = 1000;
/** How often a process touches its registration file, ms. */
export const HEARTBEAT_MS = 1000;
/** A registration not touched for this long is pruned, whatever its pid, ms. */
export const STALE_MS = 5000;
/** A registration whose pid is not alive here is pruned once not touched for this long, ms. */
export const DEAD_STALE_MS = 2000;

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
  /** When the list was last read (performance.now()). */
  #scannedAt = -Infinity;
  #heartbeat: ReturnType<IntervalTimers["setInterval"]> | undefined;
  #timers: IntervalTimers | undefined;
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
   * The registration's heartbeat runs on `timers`, unref'd.
   */
  static async open(
    dgram: Dgram,
    fs: Fs,
    timers: IntervalTimers,
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
    if (bell.#file !== undefined) {
      bell.#timers = timers;
      bell.#heartbeat = timers.setInterval(() => bell.#beat(), HEARTBEAT_MS);
      // The heartbeat alone must not keep the process alive.
      bell.#heartbeat.unref();
    }
    return bell;
  }

  /** Touches the registration file; recreates it if another process pruned it. */
  #beat(): void {
    const file = this.#file;
    if (file === undefined || this.#closed) return;
    const now = new Date();
    try {
      this.#fs.utimesSync(file, now, now);
    } catch {
      try {
        this.#fs.mkdirSync(this.#dir, { recursive: true });
        this.#fs.writeFileSync(file, "");
      } catch { /* the next beat tries again */ }
    }
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
   * REFRESH_MS: a process that opens the database is noticed within that), and at least every
   * RESCAN_MS (a process that died leaves the directory as it was); prunes stale
   * registrations.
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
    if (stamp === this.#dirStamp && now - this.#scannedAt < RESCAN_MS) return;
    this.#dirStamp = stamp;
    this.#scannedAt = now;
    const wall = Date.now();
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
      if (this.#stale(name, pid, wall)) {
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

  /**
   * Whether another process's registration `name` is stale: not touched by its heartbeat for
   * STALE_MS, or for DEAD_STALE_MS with a pid that is not alive here. A file that cannot be
   * read is left alone (it was just pruned, or is being recreated).
   */
  #stale(name: string, pid: number, wall: number): boolean {
    let age: number;
    try {
      age = wall - this.#fs.statSync(`${this.#dir}/${name}`).mtimeMs;
    } catch {
      return false;
    }
    if (age > STALE_MS) return true;
    return age > DEAD_STALE_MS && pid !== this.#pid && !this.#alive(pid);
  }

  /** Unregisters, stops the heartbeat and closes the socket. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#heartbeat !== undefined) this.#timers?.clearInterval(this.#heartbeat);
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
