/**
 * Network namespaces as separate hosts for the multi-process tests: each host is a namespace
 * with its own network stack, wired by a veth pair to the bridge `.ci/postgres.sh` creates
 * (`dgen-br0`, 10.213.0.1/16, where the test PostgreSQL also listens). A process in such a
 * host reaches the database over a network link of its own, not the loopback.
 */

import { execFileSync } from "node:child_process";
import process from "node:process";
import { findOnPath } from "./_processes.ts";

/** The database's address on the bridge, when `.ci/postgres.sh` set one up. */
export const bridgeHost: string | undefined = process.env.DGEN_PG_BRIDGE_HOST || undefined;

function ip(...args: string[]): void {
  execFileSync(findOnPath("ip") ?? "ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** Makes one host and removes it again: the kernel may refuse namespaces or veth pairs. */
function probe(): string | undefined {
  try {
    makeHosts(1).remove();
    return undefined;
  } catch (e) {
    const stderr = (e as { stderr?: { toString(): string } }).stderr?.toString().trim();
    return `cannot make a network namespace with a veth pair here: ${stderr || e}`;
  }
}

/** Why hosts cannot be made here, or `undefined` when they can. */
export const netnsSkip: string | undefined = bridgeHost === undefined
  ? "DGEN_PG_BRIDGE_HOST is not set (.ci/postgres.sh sets it when it can create the bridge: root and ip)"
  : findOnPath("ip") === undefined
  ? "ip (iproute2) not found on PATH"
  : process.getuid?.() !== 0
  ? "creating network namespaces needs root"
  : probe();

/** Hosts made by {@link makeHosts}: their namespace names, and how to remove them. */
export interface Hosts {
  /** One namespace name per host, for `Child`'s `netns` option. */
  names: string[];
  /** Each host's address on the bridge. */
  addresses: string[];
  /** Deletes the veth pairs, then the namespaces. */
  remove(): void;
}

/**
 * Makes `count` hosts: namespaces `dgen-<pid>-<i>`, each with loopback up and a veth link to
 * the bridge, addressed 10.213.<i + 1>.<pid % 250 + 2>/16.
 */
export function makeHosts(count: number): Hosts {
  const tag = process.pid % 100_000;
  const names: string[] = [];
  const addresses: string[] = [];
  const links: string[] = [];
  const remove = () => {
    // The veth pairs first, synchronously (a namespace's own links go away with it only later,
    // in the kernel's background clean-up, and the next hosts may want the same names).
    const attempt = (...args: string[]) => {
      try {
        ip(...args);
      } catch {
        // Already gone.
      }
    };
    for (const link of links) attempt("link", "del", link);
    for (const name of names) attempt("netns", "del", name);
  };
  try {
    for (let i = 0; i < count; i++) {
      const name = `dgen-${tag}-${i}`;
      // Interface names have at most 15 characters.
      const outer = `dgo${tag}${i}`;
      const inner = `dgi${tag}${i}`;
      ip("netns", "add", name);
      names.push(name);
      ip("link", "add", outer, "type", "veth", "peer", "name", inner);
      links.push(outer);
      ip("link", "set", inner, "netns", name);
      ip("link", "set", outer, "master", "dgen-br0", "up");
      const address = `10.213.${i + 1}.${(tag % 250) + 2}`;
      ip("-n", name, "addr", "add", `${address}/16`, "dev", inner);
      addresses.push(address);
      ip("-n", name, "link", "set", inner, "up");
      ip("-n", name, "link", "set", "lo", "up");
    }
  } catch (e) {
    remove();
    throw e;
  }
  return { names, addresses, remove };
}
