/**
 * The one place that builds dgen's keys inside a tenant. Everything of server `id` lives
 * under `("s", id)`, its change marker included (so a message's commit touches one region
 * of the key space, and there is no tenant-wide hot key); the index of servers lives under
 * `("servers", id)`, with a membership counter bumped only when servers come and go.
 *
 * | key (tuple, relative to the tenant)   | value                                          |
 * |---------------------------------------|------------------------------------------------|
 * | `("servers", id)`                     | server index entry (creation time)             |
 * | `("members")`                         | bumped when a server is created or killed      |
 * | `("s", id, "chg")`                    | versionstamp of the server's last change       |
 * | `("s", id, "meta")`                   | meta: state version, creation time             |
 * | `("s", id, "st", …)`                  | the state, laid out by the state codec          |
 * | `("s", id, "sv")`                     | versionstamp of the last state write           |
 * | `("s", id, "q", stamp)`               | queued message (12-byte stamp: commit, index)  |
 * | `("s", id, "qn")`                     | queue length (atomic add)                      |
 * | `("s", id, "lock")`                   | lock record with the in-progress message       |
 * | `("s", id, "fence")`                  | last fencing token (kept by a kill)            |
 * | `("s", id, "dl", stamp)`              | dead letters                                   |
 * | `("s", id, "dln")`                    | dead-letter count (atomic add)                 |
 * | `("s", id, "r", callId, …)`           | reply slot of a queued call                    |
 * | `("s", id, "req", requestId)`         | enqueue record (idempotent retries)            |
 * | `("s", id, "in", instance)`           | presence of an instance                        |
 *
 * @module
 */

import * as v from "valibot";
import { concatBytes, fixedBytes, strinc } from "../bytes.ts";
import { pack, packAfter } from "../tuple.ts";

/** A server id: a non-empty string of at most 1,000 characters (checked where ids come in). */
export const serverIdSchema = v.pipe(
  v.string(),
  v.minLength(1, "Expected a non-empty string"),
  v.maxLength(1000),
);

/** Keys of one server, all relative to its tenant. */
export class ServerKeys {
  /** Prefix of everything of the server. */
  readonly root: Uint8Array;
  /** Server index entry. */
  readonly index: Uint8Array;
  /** Change marker: the versionstamp of the last commit that changed what tools show. */
  readonly change: Uint8Array;
  /** Membership counter of the tenant (bumped when a server is created or killed). */
  readonly membership: Uint8Array;
  /** Meta record. */
  readonly meta: Uint8Array;
  /** State subspace prefix (for the codec). */
  readonly state: Uint8Array;
  /** Versionstamp of the last state write. */
  readonly stateVersion: Uint8Array;
  /** Queue prefix; entries are `queue ‖ 10-byte stamp ‖ 2-byte index`. */
  readonly queue: Uint8Array;
  /** End of the queue range. */
  readonly queueEnd: Uint8Array;
  /** Queue length counter. */
  readonly queueLength: Uint8Array;
  /** Lock record. */
  readonly lock: Uint8Array;
  /** Last fencing token. */
  readonly fence: Uint8Array;
  /** Dead-letter prefix. */
  readonly deadLetters: Uint8Array;
  /** End of the dead-letter range. */
  readonly deadLettersEnd: Uint8Array;
  /** Dead-letter counter. */
  readonly deadLetterCount: Uint8Array;
  /** Reply-slot prefix. */
  readonly replies: Uint8Array;
  /** Enqueue-record prefix. */
  readonly requests: Uint8Array;
  /** Presence prefix. */
  readonly instances: Uint8Array;

  /**
   * Builds the keys of server `id`.
   *
   * @param id The server id.
   * @param prefix Prepended to every key: the tenant's prefix to get absolute keys (the
   *   runtime uses the backend directly, saving a copy per operation), or empty for keys
   *   relative to the tenant.
   */
  constructor(readonly id: string, readonly prefix: Uint8Array = new Uint8Array(0)) {
    this.root = packAfter(prefix, ["s", id]);
    this.index = packAfter(prefix, ["servers", id]);
    this.membership = concatBytes(prefix, MEMBERSHIP);
    const sub = (name: string) => packAfter(this.root, [name]);
    this.change = sub("chg");
    this.meta = sub("meta");
    this.state = sub("st");
    this.stateVersion = sub("sv");
    this.queue = VERSIONSTAMP_TYPE(sub("q"));
    this.queueEnd = strinc(sub("q"));
    this.queueLength = sub("qn");
    this.lock = sub("lock");
    this.fence = sub("fence");
    this.deadLetters = VERSIONSTAMP_TYPE(sub("dl"));
    this.deadLettersEnd = strinc(sub("dl"));
    this.deadLetterCount = sub("dln");
    this.replies = sub("r");
    this.requests = sub("req");
    this.instances = sub("in");
    // Passed to the backend on every call and never written into: their binary strings are
    // looked up, not converted (see fixedBytes). The tenant's prefix is not ours to mark.
    for (const [name, key] of Object.entries(this)) {
      if (name !== "prefix" && key instanceof Uint8Array) fixedBytes(key);
    }
  }

  /** Reply slot of call `callId` (chunked values live under it). */
  reply(callId: string): Uint8Array {
    return packAfter(this.replies, [callId]);
  }

  /** Enqueue record of request `requestId`. */
  request(requestId: string): Uint8Array {
    return packAfter(this.requests, [requestId]);
  }

  /** Presence record of `instance`. */
  instance(instance: string): Uint8Array {
    return packAfter(this.instances, [instance]);
  }

  /** The 2-byte user version after the stamp of message `n` of one commit. */
  static entrySuffix(n: number): Uint8Array {
    return new Uint8Array([n >> 8, n & 0xff]);
  }
}

/** The tenant's membership counter (relative key). */
export const MEMBERSHIP = pack(["members"]);

/** Prefix of the server index. */
export const SERVER_INDEX = pack(["servers"]);

/**
 * Appends the versionstamp type code (0x33) to a prefix, so `prefix ‖ 10-byte stamp ‖ 2-byte
 * user version` is a tuple element. dgen writes the 2-byte user version as part of the suffix.
 */
function VERSIONSTAMP_TYPE(prefix: Uint8Array): Uint8Array {
  return concatBytes(prefix, new Uint8Array([0x33]));
}
