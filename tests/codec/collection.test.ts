import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  freshKeys,
  longestIncreasing,
  MAX_INDEX_KEY_LENGTH,
  planKeys,
} from "../../lib/codec/collection.ts";
import { unpack } from "../../lib/tuple.ts";
import { strinc } from "../../lib/bytes.ts";
import type { Transaction } from "../../mod.ts";
import { fcParams } from "../_helpers.ts";
import { counting, difference, openBench, type TxCounts, zeroCounts } from "./_support.ts";

/** Length of a longest strictly increasing subsequence (ignoring -1), by the O(n²) method. */
function lisLength(seq: number[]): number {
  const best = seq.map(() => 0);
  let max = 0;
  for (let i = 0; i < seq.length; i++) {
    if (seq[i]! < 0) continue;
    best[i] = 1;
    for (let j = 0; j < i; j++) {
      if (seq[j]! >= 0 && seq[j]! < seq[i]! && best[j]! + 1 > best[i]!) best[i] = best[j]! + 1;
    }
    max = Math.max(max, best[i]!);
  }
  return max;
}

/** Plans keys for turning `prevIds` (with `prevKeys`) into `nextIds`, as the codec does. */
function plan(prevIds: string[], prevKeys: readonly string[], nextIds: string[]) {
  const lim = Math.min(prevIds.length, nextIds.length);
  let p = 0;
  while (p < lim && prevIds[p] === nextIds[p]) p++;
  let s = 0;
  while (s < lim - p && prevIds[prevIds.length - 1 - s] === nextIds[nextIds.length - 1 - s]) s++;
  const sources = nextIds.slice(p, nextIds.length - s).map((id) => {
    const i = prevIds.indexOf(id);
    return i >= p && i < prevIds.length - s ? i : -1;
  });
  return planKeys(prevKeys, nextIds.length, p, s, sources).keys;
}

function assertAscending(keys: readonly string[]): void {
  for (let i = 1; i < keys.length; i++) {
    assert.ok(keys[i - 1]! < keys[i]!, `keys ascend: ${keys[i - 1]} < ${keys[i]}`);
  }
}

describe("fractional index planning", () => {
  it("marks a longest increasing subsequence", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: -1, max: 30 }), { maxLength: 40 }), (raw) => {
        // Distinct sources, as positions are.
        const seen = new Set<number>();
        const seq = raw.map((x) => (x >= 0 && !seen.has(x) && seen.add(x) ? x : -1));
        const marked = longestIncreasing(seq);
        const chosen = seq.filter((x, i) => marked[i] && x >= 0);
        assert.equal(chosen.length, marked.filter(Boolean).length, "only real sources marked");
        for (let i = 1; i < chosen.length; i++) assert.ok(chosen[i - 1]! < chosen[i]!);
        assert.equal(chosen.length, lisLength(seq));
      }),
      fcParams(),
    );
  });

  it("orders keys as the items, keeps every item that did not move, and keeps keys short", () => {
    const edit = fc.record({
      n: fc.integer({ min: 0, max: 30 }),
      perm: fc.array(fc.nat(), { maxLength: 40 }),
      removals: fc.array(fc.nat(), { maxLength: 5 }),
      inserts: fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 8 }),
    });
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 15 }), (edits) => {
        let ids: string[] = [];
        let keys: readonly string[] = [];
        let counter = 0;
        for (const e of edits) {
          let next = [...ids];
          for (const r of e.removals) if (next.length > 0) next.splice(r % next.length, 1);
          for (let i = 0; i < e.perm.length && next.length > 1; i += 2) {
            const a = e.perm[i]! % next.length;
            const b = (e.perm[i + 1] ?? 0) % next.length;
            [next[a], next[b]] = [next[b]!, next[a]!];
          }
          for (const [at] of e.inserts) next.splice(at % (next.length + 1), 0, `i${counter++}`);
          if (ids.length === 0) next = Array.from({ length: e.n }, () => `i${counter++}`);
          const nextKeys = ids.length === 0 ? freshKeys(next.length) : plan(ids, keys, next);
          assert.equal(nextKeys.length, next.length);
          assertAscending(nextKeys);
          for (const k of nextKeys) assert.ok(k.length <= MAX_INDEX_KEY_LENGTH);
          // Survivors in a longest increasing run of old positions keep their keys.
          const survivors = next.map((id) => ids.indexOf(id));
          const keptKeys = next.filter((id, j) => {
            const i = ids.indexOf(id);
            return i >= 0 && keys[i] === nextKeys[j];
          }).length;
          assert.equal(keptKeys, lisLength(survivors));
          ids = next;
          keys = nextKeys;
        }
      }),
      fcParams(),
    );
  });

  it("returns the old keys themselves when no item moved", () => {
    const keys = freshKeys(5);
    assert.equal(planKeys(keys, 5, 5, 0, []).keys, keys);
    assert.equal(planKeys(keys, 5, 2, 3, []).keys, keys);
  });

  it("never assigns a key longer than the bound, even under 3,000 inserts at one place", () => {
    let ids = ["first", "last"];
    let keys: readonly string[] = freshKeys(2);
    let longest = 0;
    let changed = 0;
    for (let i = 0; i < 3000; i++) {
      const next = [ids[0]!, `n${i}`, ...ids.slice(1)];
      const nextKeys = plan(ids, keys, next);
      assertAscending(nextKeys);
      for (const k of nextKeys) longest = Math.max(longest, k.length);
      changed += nextKeys.filter((k, j) => j === 1 || k !== keys[j === 0 ? 0 : j - 1]).length;
      ids = next;
      keys = nextKeys;
    }
    assert.ok(longest <= MAX_INDEX_KEY_LENGTH, `longest key ${longest}`);
    // Re-keying is amortized: on average only a few order keys change per insert.
    assert.ok(changed / 3000 < 8, `order keys rewritten per insert: ${changed / 3000}`);
  });
});

/** Wraps a tenant transaction to count what the codec writes. */
function countInto(counts: TxCounts) {
  return (tx: Transaction) => counting(tx, counts);
}

/** The fractional index keys stored for the collection at `state.items`. */
async function storedIndexKeys(bench: Awaited<ReturnType<typeof openBench>>): Promise<string[]> {
  const rows = await bench.tenant.transact((tx) => tx.getRange(bench.prefix, strinc(bench.prefix)));
  const out: string[] = [];
  for (const r of rows) {
    if (r.key.length <= bench.prefix.length) continue;
    const t = unpack(r.key.subarray(bench.prefix.length));
    if (t.length === 4 && t[0] === 1 && t[1] === "items" && t[2] === 0) out.push(t[3] as string);
  }
  return out;
}

describe("collections through the codec", () => {
  it(
    "keep index keys at most 4 characters over 10,000 appends, then 10,000 prepends",
    { timeout: 120_000 },
    async () => {
      // Bound: after N appends to an empty collection the longest key has 1 + d characters,
      // d the least integer with 62 + 62^2 + … + 62^d ≥ N; 10,000 > 62 + 62² = 3,906 gives
      // d = 3. Prepends walk down from the first key the same way.
      // (States are not frozen here: the codec does not need it, and JavaScriptCore's
      // Object.freeze costs about 0.4 µs per element of a large array, minutes in all.)
      const b = await openBench();
      let items: ReadonlyArray<{ id: string }> = [];
      let state = b.codec.freeze({ items: [{ id: "seed" }] });
      await b.put(state);
      items = state.items;
      let perWrite = 0;
      for (let i = 0; i < 10_000; i++) {
        items = [...items, { id: `a${i}` }];
        state = { items: items as { id: string }[] };
        const { counts } = await b.put(state);
        perWrite = Math.max(perWrite, counts.sets + counts.clears + counts.clearRanges);
      }
      let keys = await storedIndexKeys(b);
      assert.equal(keys.length, 10_001);
      assert.ok(Math.max(...keys.map((k) => k.length)) <= 4, "appends: keys of at most 4 chars");
      for (let i = 0; i < 10_000; i++) {
        items = [{ id: `p${i}` }, ...items];
        state = { items: items as { id: string }[] };
        const { counts } = await b.put(state);
        perWrite = Math.max(perWrite, counts.sets + counts.clears + counts.clearRanges);
      }
      keys = await storedIndexKeys(b);
      assert.equal(keys.length, 20_001);
      assert.ok(Math.max(...keys.map((k) => k.length)) <= 4, "prepends: keys of at most 4 chars");
      // Each append or prepend wrote the same few keys: order key, item node, its id.
      assert.equal(perWrite, 3);
      const read = await b.get();
      assert.ok(read.found);
      assert.equal(difference(state, read.state), undefined);
      await b.close();
    },
  );

  it("re-keys windows under repeated inserts at hot spots, keeping order exact", async () => {
    const b = await openBench();
    let items: Array<{ id: string; v: number }> = [{ id: "first", v: 0 }, { id: "last", v: 0 }];
    let state = b.codec.freeze({ items });
    await b.put(state);
    let rekeyed = 0;
    let seed = 7;
    const random = (n: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
    for (let i = 0; i < 1500; i++) {
      // Three hot spots (after the first item, the middle, before the last), so that windows
      // grow both ways; now and then an item moves or goes.
      const spots = [1, items.length >> 1, items.length - 1];
      items = items.toSpliced(spots[i % 3]!, 0, { id: `n${i}`, v: i });
      if (i % 7 === 6) {
        const from = random(items.length);
        const moved = items[from]!;
        items = items.toSpliced(from, 1).toSpliced(random(items.length), 0, moved);
      }
      if (i % 10 === 9) items = items.toSpliced(random(items.length), 1);
      state = b.codec.freeze({ items });
      const { counts } = await b.put(state);
      if (counts.clears > 1) rekeyed++;
      if (i % 100 === 99) {
        const keys = await storedIndexKeys(b);
        assert.equal(keys.length, items.length);
        for (let k = 1; k < keys.length; k++) assert.ok(keys[k - 1]! < keys[k]!);
        assert.ok(Math.max(...keys.map((k) => k.length)) <= MAX_INDEX_KEY_LENGTH);
        const read = await b.get();
        assert.ok(read.found);
        assert.equal(difference(state, read.state), undefined);
      }
    }
    assert.ok(rekeyed > 0, "some inserts re-keyed a window");
    await b.close();
  });

  it("change one item of a 10,000-item collection with as many keys and bytes as of a 10-item one", async () => {
    const costs: Record<string, unknown[]> = {};
    for (const n of [10, 10_000]) {
      const b = await openBench();
      const make = (i: number) => ({ id: `item-${String(i).padStart(6, "0")}`, qty: 0, name: "x" });
      let state = b.codec.freeze({
        title: "big",
        items: Array.from({ length: n }, (_, i) => make(i)),
      });
      await b.put(state);
      const rows: unknown[] = [];
      // Change one field, move one item, insert one, remove one: each costs a constant.
      const edits: Array<(s: typeof state) => typeof state> = [
        (s) => ({ ...s, items: s.items.with(n >> 1, { ...s.items[n >> 1]!, qty: 7 }) }),
        (s) => ({ ...s, items: [s.items[n - 1]!, ...s.items.slice(0, n - 1)] }),
        (s) => ({ ...s, items: s.items.toSpliced(n >> 2, 0, make(n + 1)) }),
        (s) => ({ ...s, items: s.items.toSpliced(n >> 2, 1) }),
      ];
      for (const edit of edits) {
        state = b.codec.freeze(edit(state));
        const { counts } = await b.put(state);
        rows.push(counts);
      }
      costs[n] = rows;
      const read = await b.get();
      assert.ok(read.found);
      assert.equal(difference(state, read.state), undefined);
      await b.close();
    }
    // Bytes differ only by the length of index keys (longer in the bigger collection).
    const strip = (c: unknown) => ({ ...(c as TxCounts), setBytes: 0 });
    assert.deepEqual(costs[10_000]!.map(strip), costs[10]!.map(strip));
    assert.deepEqual(costs[10]![0] as TxCounts, {
      sets: 1,
      setBytes: (costs[10]![0] as TxCounts).setBytes,
      clears: 0,
      clearRanges: 0,
    });
    assert.equal((costs[10_000]![0] as TxCounts).setBytes, (costs[10]![0] as TxCounts).setBytes);
    for (let i = 0; i < 4; i++) {
      const big = (costs[10_000]![i] as TxCounts).setBytes;
      const small = (costs[10]![i] as TxCounts).setBytes;
      assert.ok(big <= small + 8, `edit ${i}: ${big} bytes vs ${small}`);
    }
  });

  it("diff a collection returned frozen (moved from the old state, or frozen by the handler) item by item", async () => {
    // The codec copies frozen arrays before scanning them where the engine reads them slowly
    // (V8) and keeps that copy as its record of what it stored: every step below must still
    // write only the changed item, and the state must read back whole.
    const b = await openBench();
    type Item = { id: string; qty: number };
    type S = { active: Item[]; archive: Item[] };
    const make = (i: number, qty = 0): Item => ({ id: `item-${i}`, qty });
    let state: S = b.codec.freeze({
      active: Array.from({ length: 50 }, (_, i) => make(i)),
      archive: [],
    });
    await b.put(state);
    const oneItem = { sets: 1, clears: 0, clearRanges: 0 };
    const counted = (c: TxCounts) => ({
      sets: c.sets,
      clears: c.clears,
      clearRanges: c.clearRanges,
    });
    const edits: Array<[string, (s: S) => S, typeof oneItem | undefined]> = [
      // The frozen array moves to another node: written there afresh, cleared here.
      ["move", (s) => ({ active: [], archive: s.active }), undefined],
      ["edit the moved array", (s) => {
        const archive = [...s.archive];
        archive[7] = make(7, 1);
        return { ...s, archive };
      }, oneItem],
      ["return it frozen", (s) => {
        const archive = [...s.archive];
        archive[30] = make(30, 2);
        return { ...s, archive: Object.freeze(archive) as Item[] };
      }, oneItem],
      ["edit after the frozen one", (s) => {
        const archive = [...s.archive];
        archive[30] = make(30, 3);
        archive[49] = make(49, 1);
        return { ...s, archive };
      }, { sets: 2, clears: 0, clearRanges: 0 }],
      [
        "same array, frozen again",
        (s) => ({ ...s, archive: Object.freeze([...s.archive]) as Item[] }),
        {
          sets: 0,
          clears: 0,
          clearRanges: 0,
        },
      ],
    ];
    for (const [name, edit, expected] of edits) {
      state = b.codec.freeze(edit(state));
      const { counts } = await b.put(state);
      if (expected !== undefined) assert.deepEqual(counted(counts), expected, name);
      const read = await b.get();
      assert.ok(read.found);
      assert.equal(difference(state, read.state), undefined, name);
    }
    assert.deepEqual(state.archive.map((x) => x.qty).filter((q) => q > 0), [1, 3, 1]);
    await b.close();
  });

  it("change one property of a 10,000-property record with one key", async () => {
    const b = await openBench();
    const state = b.codec.freeze(
      Object.fromEntries(Array.from({ length: 10_000 }, (_, i) => [`k${i}`, i])),
    );
    await b.put(state);
    const counts = zeroCounts();
    const next = b.codec.freeze({ ...state, k5000: -1 });
    await b.tenant.transact((tx) => b.codec.write(countInto(counts)(tx), b.prefix, b.prev, next));
    assert.equal(counts.sets, 1);
    assert.equal(counts.clears + counts.clearRanges, 0);
    await b.close();
  });
});
