/**
 * Interim value encoding and whole-value state codec, used by the runtime until the structured
 * state codec lands. To be removed then.
 *
 * @module
 */

import { Encoder } from "cbor-x";
import { concatBytes, strinc } from "../bytes.ts";
import { CodecError } from "../errors.ts";
import type { ReadTransaction, Transaction } from "../storage/types.ts";
import { pack } from "../tuple.ts";
import type { StateCodec, StoredState, WriteStats } from "./types.ts";

const cbor = new Encoder({ useRecords: false, structuredClone: true });

/** Encodes a value to bytes. */
export function encodeValue(value: unknown, path = "value"): Uint8Array {
  check(value, path, new Set());
  return cbor.encode(value);
}

/** Decodes bytes made by {@link encodeValue}; `where` names the key in errors. */
export function decodeValue(bytes: Uint8Array, where = "value"): unknown {
  try {
    return cbor.decode(bytes);
  } catch (e) {
    throw new CodecError("Stored bytes cannot be decoded", where, { cause: e });
  }
}

function check(x: unknown, path: string, seen: Set<object>): void {
  if (typeof x === "function") throw new CodecError("Functions cannot be stored", path);
  if (typeof x === "symbol") throw new CodecError("Symbols cannot be stored", path);
  if (x === null || typeof x !== "object") return;
  if (seen.has(x)) throw new CodecError("Cycles cannot be stored", path);
  if (x instanceof Date || x instanceof Uint8Array) return;
  seen.add(x);
  if (Array.isArray(x)) x.forEach((item, i) => check(item, `${path}[${i}]`, seen));
  else if (x instanceof Map) {
    for (const [k, v] of x) {
      check(v, `${path}.get(${String(k)})`, seen);
    }
  } else if (x instanceof Set) { for (const v of x) check(v, `${path}.<set>`, seen); }
  else {
    const proto = Object.getPrototypeOf(x);
    if (proto !== Object.prototype && proto !== null) {
      throw new CodecError(
        `Instances of ${x.constructor?.name ?? "a class"} cannot be stored`,
        path,
      );
    }
    for (const [k, v] of Object.entries(x)) check(v, `${path}.${k}`, seen);
  }
  seen.delete(x);
}

/** A state codec storing the whole state as one chunked value. */
export function createInterimCodec(options: { maxValueSize: number }): StateCodec {
  const chunk = options.maxValueSize;
  return {
    async read(tx: ReadTransaction, prefix: Uint8Array): Promise<StoredState> {
      const rows = await tx.getRange(prefix, strinc(prefix));
      if (rows.length === 0) return { found: false };
      const bytes = concatBytes(...rows.map((r) => r.value));
      return { found: true, state: decodeValue(bytes, "state") };
    },
    write(tx: Transaction, prefix: Uint8Array, prev: StoredState, next: unknown): WriteStats {
      const bytes = encodeValue(next, "state");
      if (prev.found && prev.state === next) {
        return { keysWritten: 0, keysCleared: 0, bytesWritten: 0 };
      }
      tx.clearRange(prefix, strinc(prefix));
      let n = 0;
      let written = 0;
      for (let i = 0; i < Math.max(1, bytes.length); i += chunk) {
        const key = concatBytes(prefix, pack([n++]));
        const part = bytes.subarray(i, i + chunk);
        tx.set(key, part);
        written += key.length + part.length;
      }
      return { keysWritten: n, keysCleared: 1, bytesWritten: written };
    },
    clear(tx: Transaction, prefix: Uint8Array): void {
      tx.clearRange(prefix, strinc(prefix));
    },
    freeze<T>(state: T): T {
      return state;
    },
  };
}
