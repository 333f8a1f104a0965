/**
 * The backends the server-runtime suite runs on. Each test file registers its scenarios once
 * per entry; a backend that cannot run here carries a skip reason that is printed.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import {
  type Backend,
  openMemoryBackend,
  openSqliteBackend,
  openTenant,
  type Tenant,
} from "../../mod.ts";
import { openTestPostgres, postgresSkip } from "../storage/_postgres.ts";
import { FDB_SKIP_REASON, openTestFoundationdb } from "../storage/_foundationdb.ts";

let root: string | undefined;
let files = 0;
/** A fresh SQLite file path in a directory removed after the test file. */
export function tempDbPath(name = "server"): string {
  if (root === undefined) {
    root = mkdtempSync(join(tmpdir(), "dgen-server-test-"));
    const made = root;
    after(() => rmSync(made, { recursive: true, force: true }));
  }
  return join(root, `${name}-${files++}.sqlite`);
}

/** A backend the suite runs on. */
export interface TestBackend {
  /** Name shown in test titles. */
  name: string;
  /** Opens a fresh, empty backend. */
  open(): Promise<Backend>;
  /** Why it cannot run here, if it cannot. */
  skip?: string;
}

/** Every backend of the server-runtime suite. */
export const backends: TestBackend[] = [
  { name: "memory", open: () => Promise.resolve(openMemoryBackend()) },
  { name: "sqlite", open: () => openSqliteBackend({ path: tempDbPath() }) },
  { name: "postgres", open: () => openTestPostgres(), skip: postgresSkip },
  { name: "foundationdb", open: () => openTestFoundationdb(), skip: FDB_SKIP_REASON },
];

let n = 0;
/** Opens a backend and a fresh tenant on it; `close` closes the backend. */
export async function fresh(b: TestBackend): Promise<{ backend: Backend; tenant: Tenant }> {
  const backend = await b.open();
  const tenant = await openTenant(backend, `test-${++n}`);
  return { backend, tenant };
}

// A skipped backend says why (node:test reports it only as skipped or ignored).
for (const b of backends) {
  if (b.skip !== undefined) console.log(`server suites on ${b.name} skipped: ${b.skip}`);
}
