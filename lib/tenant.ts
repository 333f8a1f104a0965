/**
 * Tenants: named, isolated subspaces of a backend. Everything of a tenant lives under its key
 * prefix (FoundationDB's directory layer on that engine); tenants never see each other's keys.
 *
 * @module
 */

import * as v from "valibot";
import { ValidationError } from "./errors.ts";
import { scopeTransaction } from "./storage/subspace.ts";
import type { Backend, Transaction, TransactOptions } from "./storage/types.ts";
import { parse } from "./validate.ts";

/** Root directory under which dgen keeps every tenant. */
const ROOT = "dgen";

const segment = v.pipe(
  v.string(),
  v.minLength(1, "Expected non-empty path segments (no leading, trailing or double '/')"),
  v.maxLength(200, "Expected path segments of at most 200 characters"),
  v.check(
    (s) => ![...s].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f),
    "Expected no control characters",
  ),
);

/**
 * A named, isolated subspace of a backend. Keys passed to {@link Tenant.transact}'s
 * transaction are relative to the tenant.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, openTenant, type Tenant } from "../mod.ts";
 * const backend = openMemoryBackend();
 * const tenant: Tenant = await openTenant(backend, "acme/prod");
 * const key = new TextEncoder().encode("hits");
 * await tenant.transact((tx) => tx.add(key, 1));
 * console.log(tenant.name, tenant.backend.kind); // "acme/prod" "memory"
 * await backend.close();
 * ```
 */
export interface Tenant {
  /** The tenant's name, e.g. `"acme/prod"`. */
  readonly name: string;
  /** The backend it lives in. */
  readonly backend: Backend;
  /** The absolute key prefix of the tenant in the backend. */
  readonly prefix: Uint8Array;
  /**
   * Runs `fn` in a transaction confined to this tenant (see `Backend.transact`): keys are
   * relative to the tenant's prefix.
   */
  transact<T>(fn: (tx: Transaction) => T | Promise<T>, options?: TransactOptions): Promise<T>;
}

/** A {@link Tenant}, as handed out by openTenant or sandboxOpen (for argument checks). */
export const tenantSchema: v.GenericSchema<Tenant> = v.custom<Tenant>(
  (t) =>
    typeof t === "object" && t !== null && typeof (t as Tenant).name === "string" &&
    typeof (t as Tenant).transact === "function" && (t as Tenant).prefix instanceof Uint8Array &&
    typeof (t as Tenant).backend === "object" && (t as Tenant).backend !== null &&
    typeof (t as Tenant).backend.transact === "function" &&
    typeof (t as Tenant).backend.limits?.maxKeySize === "number",
  "Expected a Tenant (from openTenant or sandboxOpen)",
);

/** Throws a ValidationError naming `backend` unless it is a {@link Backend}. */
export function checkBackend(backend: unknown): asserts backend is Backend {
  const b = backend as Partial<Backend> | null;
  if (
    b === null || typeof b !== "object" || typeof b.transact !== "function" ||
    typeof b.openSubspace !== "function"
  ) {
    throw new ValidationError([{
      path: "backend",
      message: "Expected a Backend (from openMemoryBackend, openSqliteBackend, …)",
    }]);
  }
}

/**
 * Opens the tenant `name` of `backend`. A name is a path of one or more segments separated by
 * `/` (e.g. `"acme/prod"`); each segment is a non-empty string without control characters.
 *
 * @example
 * ```ts
 * import { openMemoryBackend, openTenant } from "../mod.ts";
 * const backend = openMemoryBackend();
 * const tenant = await openTenant(backend, "acme/prod");
 * await tenant.transact((tx) => tx.set(new Uint8Array([1]), new Uint8Array([2])));
 * await backend.close();
 * ```
 */
export async function openTenant(backend: Backend, name: string): Promise<Tenant> {
  checkBackend(backend);
  parse(v.string(), name, "name");
  const path = name.split("/");
  path.forEach((s, i) => parse(segment, s, `name (segment ${i + 1} of "${name}")`));
  const prefix = await backend.openSubspace([ROOT, ...path]);
  return {
    name,
    backend,
    prefix,
    transact: (fn, options) => backend.transact((tx) => fn(scopeTransaction(tx, prefix)), options),
  };
}
