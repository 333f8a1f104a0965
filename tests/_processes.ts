/**
 * Child processes for the multi-process tests and benchmarks: spawn a script under Deno or
 * Bun, read its JSON lines (each stamped with its arrival time), send it commands, kill it.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** The runtimes a child can run under. */
export type Runtime = "deno" | "bun";

/** The absolute path of `name` on `PATH`, if there is one. */
export function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** Why multi-process runs cannot happen here, or `undefined` when both runtimes are found. */
export function missingRuntimes(): string | undefined {
  const missing = (["deno", "bun"] as const).filter((r) => findOnPath(r) === undefined);
  return missing.length === 0
    ? undefined
    : `${missing.join(" and ")} not found on PATH (run under npx -p deno@2.9.6 -p bun@1.4.4)`;
}

/** One JSON line from a child, with the parent's `performance.now()` when it arrived. */
export interface Message {
  /** The parsed line. */
  data: Record<string, unknown>;
  /** Arrival time in the parent. */
  at: number;
}

/** The path of a script next to this file (e.g. `"storage/sqlite_child.ts"`). */
export function testScript(relative: string): string {
  return fileURLToPath(new URL(relative, import.meta.url));
}

/** A running child script. */
export class Child {
  readonly #proc: ChildProcess;
  readonly #messages: Message[] = [];
  #waiter: (() => void) | undefined;
  #stdout = "";
  /** Set once the process has exited and its output is fully read. */
  #ended = false;
  /** Set once the process has exited (its output may still be arriving). */
  #exited = false;
  /** Resolves once the process has exited and its pipes are closed. */
  readonly closed: Promise<number | null>;

  /**
   * Starts `script` (an absolute path) with `args` under `runtime`; with `netns`, inside that
   * network namespace (`ip netns exec`, which execs the runtime: the pid is the runtime's).
   */
  constructor(
    readonly runtime: Runtime,
    script: string,
    scriptArgs: string[],
    options: { netns?: string } = {},
  ) {
    const exe = findOnPath(runtime);
    if (exe === undefined) throw new Error(`${runtime} not found on PATH`);
    const args = runtime === "deno"
      ? ["run", "-A", script, ...scriptArgs]
      : [script, ...scriptArgs];
    const command = options.netns === undefined
      ? [exe, ...args]
      : [findOnPath("ip") ?? "ip", "netns", "exec", options.netns, exe, ...args];
    this.#proc = spawn(command[0]!, command.slice(1), {
      stdio: ["pipe", "pipe", "inherit"],
      env: { ...process.env, NO_COLOR: "1" },
    });
    this.#proc.on("exit", () => this.#exited = true);
    this.closed = new Promise((resolve) =>
      this.#proc.on("close", (code) => {
        this.#ended = true;
        resolve(code);
      })
    );
    this.#proc.stdout!.setEncoding("utf8");
    this.#proc.stdout!.on("data", (chunk: string) => {
      this.#stdout += chunk;
      let nl: number;
      while ((nl = this.#stdout.indexOf("\n")) >= 0) {
        const line = this.#stdout.slice(0, nl).trim();
        this.#stdout = this.#stdout.slice(nl + 1);
        if (line === "") continue;
        this.#messages.push({ data: JSON.parse(line), at: performance.now() });
      }
      this.#waiter?.();
    });
    this.#proc.on("close", () => this.#waiter?.());
  }

  /**
   * The first message (oldest first) that `match` accepts, removed from the buffer; waits for
   * it until `ms` have passed, then rejects naming `what`.
   */
  async next(
    match: (data: Record<string, unknown>) => boolean,
    ms: number,
    what: string,
  ): Promise<Message> {
    const end = performance.now() + ms;
    for (;;) {
      const i = this.#messages.findIndex((m) => match(m.data));
      if (i >= 0) return this.#messages.splice(i, 1)[0]!;
      // Only once its output is fully read: the last lines may arrive after the exit.
      if (this.#ended) {
        throw new Error(`${this.runtime} child exited (${this.#proc.exitCode}) before ${what}`);
      }
      const left = end - performance.now();
      if (left <= 0) throw new Error(`${this.runtime} child: no ${what} after ${ms} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, left);
        function done() {
          clearTimeout(timer);
          resolve();
        }
        this.#waiter = done;
      });
      this.#waiter = undefined;
    }
  }

  /** Sends one command line to the child's stdin. */
  send(line: string): void {
    this.#proc.stdin!.write(line + "\n");
  }

  /** Kills the child (SIGKILL) if it still runs, and waits until it has gone. */
  async kill(): Promise<void> {
    this.signal("SIGKILL");
    this.#proc.stdin?.destroy();
    await this.closed;
  }

  /**
   * Sends a signal (e.g. `"SIGSTOP"`, `"SIGCONT"`) if the child still runs. Through
   * `process.kill`: Deno's `ChildProcess.kill` records the first signal as the exit signal and
   * refuses to send any other (a SIGSTOPped child could never be continued or killed).
   */
  signal(sig: "SIGSTOP" | "SIGCONT" | "SIGTERM" | "SIGKILL"): void {
    if (this.#exited || this.#ended || this.#proc.pid === undefined) return;
    try {
      process.kill(this.#proc.pid, sig);
    } catch {
      // It exited between the check and the signal.
    }
  }

  /** The OS process id. */
  get pid(): number {
    return this.#proc.pid ?? 0;
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.#ended || this.#exited;
  }
}

/** A `storage/sqlite_child.ts` child on the database at `dbPath`. */
export function sqliteChild(
  runtime: Runtime,
  dbPath: string,
  mode: string,
  params: unknown,
): Child {
  return new Child(runtime, testScript("./storage/sqlite_child.ts"), [
    dbPath,
    mode,
    JSON.stringify(params),
  ]);
}
