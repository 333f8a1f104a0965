/**
 * Benchmark of the state codec (SPEC §11, "state size"): the cost of changing one item of a
 * collection of 10, 1,000 and 10,000 items, written as a codec diff, beside the hand-written
 * alternative (load the whole JSON state, change it, write it back in one SQLite transaction).
 *
 * Run: `deno task bench:codec` (or `bun bench/codec.ts`). Prints a table, then one JSON line.
 * Options (environment): `BENCH_SECONDS` (time per measurement, default 1.5).
 *
 * Every update replaces one item with a changed copy (`qty` + 1), as a handler returning a new
 * state would, and is measured end to end: build the state, write it, commit, freeze it (in
 * that order, as the runtime should: `write` leaves `freeze` hints, see docs/state-codec.md).
 *
 * Where: memory backend (the codec and the reference store, no I/O); SQLite through
 * `lib/storage/sqlite.ts` when that backend exists; and, always, the codec's writes applied to a
 * plain `node:sqlite` key-value table (WAL, `synchronous=FULL`, one `BEGIN IMMEDIATE`
 * transaction per update), which is what a SQLite backend does at least.
 */

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { DatabaseSync } from "node:sqlite";
import { openMemoryBackend, openTenant, type Transaction } from "../mod.ts";
import { createStateCodec } from "../lib/codec/state.ts";
import type { StateCodec, StoredState } from "../lib/codec/types.ts";
import type { Backend } from "../lib/storage/types.ts";
import { pack } from "../lib/tuple.ts";

const SIZES = [10, 1_000, 10_000];
const SECONDS = Number(process.env.BENCH_SECONDS ?? "1.5");
const runtime = "Bun" in globalThis
  ? `bun ${(globalThis as { Bun?: { version: string } }).Bun?.version}`
  : `deno ${(globalThis as { Deno?: { version: { deno: string } } }).Deno?.version.deno}`;

interface Item {
  id: string;
  name: string;
  qty: number;
  price: number;
  tags: string[];
}
interface State {
  title: string;
  owner: { name: string; since: number };
  items: Item[];
}

function makeState(n: number): State {
  return {
    title: `cart of ${n}`,
    owner: { name: "ada", since: 1_700_000_000_000 },
    items: Array.from({ length: n }, (_, i) => ({
      id: `item-${String(i).padStart(6, "0")}`,
      name: `Product number ${i}`,
      qty: 1,
      price: 9.99 + i,
      tags: ["a", "b"],
    })),
  };
}

/**
 * The update every measurement makes: one item (cycling through them) gets `qty + 1`. The
 * array is copied with a spread and one element assigned: on frozen arrays that is the fast
 * idiom on V8, where `with`, `slice` and `toSpliced` take a slow generic path (see
 * docs/state-codec.md).
 */
function change(s: State, i: number): State {
  const n = s.items.length;
  const k = (((i * 7919) % n) + n) % n;
  const item = s.items[k]!;
  const items = [...s.items];
  items[k] = { ...item, qty: item.qty + 1 };
  return { ...s, items };
}

interface Row {
  setup: string;
  items: number;
  updates: number;
  usPerUpdate: number;
  p50us: number;
  p90us: number;
  keysPerUpdate: number;
  bytesPerUpdate: number;
}

/** Runs `update` repeatedly for about SECONDS seconds (at least 20 times). */
async function measure(
  setup: string,
  items: number,
  update: (i: number) => Promise<{ keys: number; bytes: number }> | { keys: number; bytes: number },
): Promise<Row> {
  for (let i = 0; i < 5; i++) await update(-1 - i); // warm up
  const times: number[] = [];
  let keys = 0;
  let bytes = 0;
  const end = performance.now() + SECONDS * 1000;
  for (let i = 0; times.length < 20 || performance.now() < end; i++) {
    const t = performance.now();
    const r = await update(i);
    times.push(performance.now() - t);
    keys += r.keys;
    bytes += r.bytes;
  }
  times.sort((a, b) => a - b);
  const total = times.reduce((a, b) => a + b, 0);
  const q = (p: number) => times[Math.min(times.length - 1, Math.floor(p * times.length))]! * 1000;
  return {
    setup,
    items,
    updates: times.length,
    usPerUpdate: (total / times.length) * 1000,
    p50us: q(0.5),
    p90us: q(0.9),
    keysPerUpdate: keys / times.length,
    bytesPerUpdate: bytes / times.length,
  };
}

/** Counts the keys and bytes a write asks for. */
function countingTx(tx: Transaction, c: { keys: number; bytes: number }): Transaction {
  return {
    ...tx,
    get: (k) => tx.get(k),
    getRange: (b, e, o) => tx.getRange(b, e, o),
    snapshot: tx.snapshot,
    set(k, v) {
      c.keys++;
      c.bytes += k.length + v.length;
      tx.set(k, v);
    },
    clear(k) {
      c.keys++;
      tx.clear(k);
    },
    clearRange(b, e) {
      c.keys++;
      tx.clearRange(b, e);
    },
    getVersionstamp: () => tx.getVersionstamp(),
  };
}

/** The codec over a backend: one transaction per update. */
async function codecOnBackend(setup: string, backend: Backend, n: number): Promise<Row> {
  const tenant = await openTenant(backend, "bench");
  const codec = createStateCodec({ maxValueSize: backend.limits.maxValueSize });
  const prefix = pack(["state", n]);
  let state = makeState(n);
  let prev: StoredState = { found: false };
  await tenant.transact((tx) => codec.write(tx, prefix, prev, state));
  state = codec.freeze(state);
  prev = { found: true, state };
  return await measure(setup, n, async (i) => {
    const next = change(state, i);
    const c = { keys: 0, bytes: 0 };
    await tenant.transact((tx) => codec.write(countingTx(tx, c), prefix, prev, next));
    state = codec.freeze(next);
    prev = { found: true, state };
    return c;
  });
}

/**
 * The codec's own CPU: build, freeze and diff the state, with a transaction that drops writes.
 *
 * Variants (10,000 items, last in the run: on V8 a frozen array slowed every later scan):
 * - `"after a frozen array"`: one update first returns its collection frozen already (as a
 *   handler that moves an array of the old state, or freezes its own, does): the row shows
 *   whether that one write slowed the updates after it.
 * - `"other field"`: each update changes `owner.since` and leaves the collection alone: the
 *   row shows what an untouched collection costs a write (on Bun, where long collections stay
 *   unfrozen, the codec must still look for changes made in place).
 */
async function codecCpuOnly(
  n: number,
  variant?: "after a frozen array" | "other field",
): Promise<Row> {
  const codec = createStateCodec({ maxValueSize: 100_000 });
  const c = { keys: 0, bytes: 0 };
  const tx = {
    set(k: Uint8Array, v: Uint8Array) {
      c.keys++;
      c.bytes += k.length + v.length;
    },
    clear() {
      c.keys++;
    },
    clearRange() {
      c.keys++;
    },
    getVersionstamp: () => Promise.resolve(new Uint8Array(10)),
  } as unknown as Transaction;
  const prefix = pack(["state", n]);
  let state = makeState(n);
  codec.write(tx, prefix, { found: false }, state);
  state = codec.freeze(state);
  if (variant === "after a frozen array") {
    const next = change(state, 0);
    Object.freeze(next.items);
    codec.write(tx, prefix, { found: true, state }, next);
    state = codec.freeze(next);
  }
  const update = variant === "other field"
    ? (s: State, i: number): State => ({ ...s, owner: { ...s.owner, since: i } })
    : change;
  const setup = variant === undefined ? "codec CPU only (no storage)" : `codec CPU, ${variant}`;
  return await measure(setup, n, (i) => {
    const next = update(state, i);
    c.keys = 0;
    c.bytes = 0;
    codec.write(tx, prefix, { found: true, state }, next);
    state = codec.freeze(next);
    return { keys: c.keys, bytes: c.bytes };
  });
}

function openDb(path: string): DatabaseSync {
  const db = new DatabaseSync(path);
  db.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
  return db;
}

/** The codec's writes applied to a plain SQLite key-value table, one transaction per update. */
async function codecOnRawSqlite(path: string, n: number): Promise<Row> {
  const db = openDb(path);
  db.exec("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID");
  const put = db.prepare("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)");
  const del = db.prepare("DELETE FROM kv WHERE key = ?");
  const delRange = db.prepare("DELETE FROM kv WHERE key >= ? AND key < ?");
  const codec: StateCodec = createStateCodec({ maxValueSize: 100_000 });
  const c = { keys: 0, bytes: 0 };
  // Only what `write` uses; the commit below settles the versionstamp.
  let stamp = Promise.withResolvers<Uint8Array>();
  const tx = {
    set(k: Uint8Array, v: Uint8Array) {
      c.keys++;
      c.bytes += k.length + v.length;
      put.run(k, v);
    },
    clear(k: Uint8Array) {
      c.keys++;
      del.run(k);
    },
    clearRange(b: Uint8Array, e: Uint8Array) {
      c.keys++;
      delRange.run(b, e);
    },
    getVersionstamp: () => stamp.promise,
  } as unknown as Transaction;
  const prefix = pack(["state", n]);
  let state = makeState(n);
  const commit = (prev: StoredState, next: State) => {
    stamp = Promise.withResolvers<Uint8Array>();
    db.exec("BEGIN IMMEDIATE");
    try {
      codec.write(tx, prefix, prev, next);
      db.exec("COMMIT");
      stamp.resolve(new Uint8Array(10));
    } catch (e) {
      db.exec("ROLLBACK");
      stamp.reject(e);
      throw e;
    }
  };
  commit({ found: false }, state);
  state = codec.freeze(state);
  const row = await measure("codec, node:sqlite kv table", n, (i) => {
    const next = change(state, i);
    c.keys = 0;
    c.bytes = 0;
    commit({ found: true, state }, next);
    state = codec.freeze(next);
    return { keys: c.keys, bytes: c.bytes };
  });
  db.close();
  return row;
}

/** The hand-written alternative: whole JSON state, read, changed, rewritten, per update. */
async function jsonBaseline(path: string, n: number): Promise<Row> {
  const db = openDb(path);
  db.exec("CREATE TABLE state (id INTEGER PRIMARY KEY, json TEXT NOT NULL)");
  db.prepare("INSERT INTO state (id, json) VALUES (1, ?)").run(JSON.stringify(makeState(n)));
  const load = db.prepare("SELECT json FROM state WHERE id = 1");
  const save = db.prepare("UPDATE state SET json = ? WHERE id = 1");
  const row = await measure("JSON rewrite, node:sqlite", n, (i) => {
    db.exec("BEGIN IMMEDIATE");
    const json = (load.get() as { json: string }).json;
    const next = JSON.stringify(change(JSON.parse(json) as State, i));
    save.run(next);
    db.exec("COMMIT");
    return { keys: 1, bytes: next.length };
  });
  db.close();
  return row;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "dgen-bench-codec-"));
  const sqliteModule = new URL("../lib/storage/sqlite.ts", import.meta.url);
  const haveSqliteBackend = existsSync(sqliteModule);
  const rows: Row[] = [];
  try {
    for (const n of SIZES) {
      rows.push(await codecCpuOnly(n));
      const memory = openMemoryBackend();
      rows.push(await codecOnBackend("codec, memory backend", memory, n));
      await memory.close();
      if (haveSqliteBackend) {
        const mod = await import(sqliteModule.href) as {
          openSqliteBackend(o: { path: string }): Backend | Promise<Backend>;
        };
        const backend = await mod.openSqliteBackend({ path: join(dir, `backend-${n}.sqlite`) });
        rows.push(await codecOnBackend("codec, SQLite backend", backend, n));
        await backend.close();
      }
      rows.push(await codecOnRawSqlite(join(dir, `kv-${n}.sqlite`), n));
      rows.push(await jsonBaseline(join(dir, `json-${n}.sqlite`), n));
    }
    // Last: on the engines where it matters, a frozen array slows every scan after it.
    rows.push(await codecCpuOnly(10_000, "other field"));
    rows.push(await codecCpuOnly(10_000, "after a frozen array"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }

  const pad = (s: string, w: number) => s.padEnd(w);
  const num = (x: number, w: number, d = 0) => x.toFixed(d).padStart(w);
  console.log(
    `State codec: change one item of an n-item collection (${runtime}, ${SECONDS}s per row)`,
  );
  if (!haveSqliteBackend) {
    console.log(
      "lib/storage/sqlite.ts is not in this tree: the codec on SQLite is measured through a " +
        "plain node:sqlite key-value table instead.",
    );
  }
  console.log(
    `${pad("setup", 30)} ${"items".padStart(6)} ${"updates".padStart(8)} ${
      "µs/update".padStart(10)
    } ${"p50 µs".padStart(8)} ${"p90 µs".padStart(8)} ${"keys".padStart(6)} ${"bytes".padStart(9)}`,
  );
  for (const r of rows) {
    console.log(
      `${pad(r.setup, 30)} ${num(r.items, 6)} ${num(r.updates, 8)} ${num(r.usPerUpdate, 10, 1)} ${
        num(r.p50us, 8, 1)
      } ${num(r.p90us, 8, 1)} ${num(r.keysPerUpdate, 6, 1)} ${num(r.bytesPerUpdate, 9)}`,
    );
  }
  const ratio = (setup: string, field: "usPerUpdate" | "p50us") => {
    const big = rows.find((r) => r.setup === setup && r.items === 10_000);
    const small = rows.find((r) => r.setup === setup && r.items === 10);
    return big && small ? big[field] / small[field] : undefined;
  };
  const setups = [...new Set(rows.filter((r) => r.items === 10).map((r) => r.setup))];
  const ratios = Object.fromEntries(
    setups.map((s) => [s, { mean: ratio(s, "usPerUpdate"), p50: ratio(s, "p50us") }]),
  );
  console.log("time per update, 10,000 items / 10 items (mean, p50):");
  for (const [s, x] of Object.entries(ratios)) {
    console.log(`  ${pad(s, 30)} ${x.mean?.toFixed(2)}×  ${x.p50?.toFixed(2)}×`);
  }
  const after = rows.find((r) => r.setup === "codec CPU, after a frozen array")!;
  const before = rows.find((r) => r.setup === "codec CPU only (no storage)" && r.items === 10_000)!;
  const afterFrozen = after.usPerUpdate / before.usPerUpdate;
  const otherField = rows.find((r) => r.setup === "codec CPU, other field")!;
  console.log(
    `10,000 items, codec CPU after a frozen array / before: ${afterFrozen.toFixed(2)}× (mean)`,
  );
  console.log(
    `10,000 items, codec CPU changing another field / changing an item: ${
      (otherField.usPerUpdate / before.usPerUpdate).toFixed(2)
    }× (mean)`,
  );
  console.log(
    JSON.stringify({
      bench: "codec",
      afterFrozenToBefore: afterFrozen,
      otherFieldToItem: otherField.usPerUpdate / before.usPerUpdate,
      runtime,
      seconds: SECONDS,
      sqliteBackend: haveSqliteBackend,
      rows,
      ratio10kTo10: ratios,
    }),
  );
}

await main();
