/**
 * Type-level tests: types flow from a definition to `ServerRef`. These lines are checked by
 * `deno check` (part of the test command); `@ts-expect-error` fails the check if the line
 * below it type-checks, so a wrong name or argument type must stay a compile error.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { defineServer, lock, noreply, reply, type ServerRef, stop } from "../../mod.ts";

const Shop = defineServer({
  name: "shop",
  init: (owner: string) => ({ owner, items: [] as string[] }),
  handleCall: {
    count: (_: undefined, _from, s: { owner: string; items: string[] }) => reply(s.items.length, s),
    add: (item: string, _from, s: { owner: string; items: string[] }) =>
      reply({ added: item, total: s.items.length + 1 }, { ...s, items: [...s.items, item] }),
    slow: (_: undefined, _from, s: { owner: string; items: string[] }) => lock(s),
    close: (_: undefined, _from, s: { owner: string; items: string[] }) => stop("closed", s),
  },
  handleCast: {
    drop: (item: string, s: { owner: string; items: string[] }) =>
      noreply({ ...s, items: s.items.filter((i) => i !== item) }),
  },
  handleInfo: (_tick: { at: number }, s: { owner: string; items: string[] }) => noreply(s),
  handleLocked: (_event, s: { owner: string; items: string[] }) => reply("late", s),
});

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true
  : false;
function expectType<T extends true>(_: T): void {}

// Never called: only type-checked.
async function typeChecks(ref: ServerRef<typeof Shop>): Promise<void> {
  const n = await ref.call("count");
  expectType<Equal<typeof n, number>>(true);
  const added = await ref.call("add", "apple", { timeout: 100 });
  expectType<Equal<typeof added, { added: string; total: number }>>(true);
  const slow = await ref.call("slow");
  expectType<Equal<typeof slow, unknown>>(true); // a call that may lock replies from handleLocked
  await ref.cast("drop", "apple");
  await ref.castMany([["drop", "a"], ["drop", "b"]]);
  await ref.send({ at: 1 });
  const p = await ref.priorityCall("count");
  expectType<Equal<typeof p, number>>(true);

  // @ts-expect-error: no such call
  await ref.call("nope");
  // @ts-expect-error: wrong argument type
  await ref.call("add", 5);
  // @ts-expect-error: missing required argument
  await ref.call("add");
  // @ts-expect-error: casts are not calls
  await ref.call("drop", "x");
  // @ts-expect-error: calls are not casts
  await ref.cast("count");
  // @ts-expect-error: wrong info type
  await ref.send("tick");
  // @ts-expect-error: wrong cast argument in castMany
  await ref.castMany([["drop", 1]]);
}

describe("types flow from definitions", () => {
  it("keeps the definition's handlers at run time", () => {
    assert.equal(typeof typeChecks, "function");
    assert.deepEqual(Object.keys(Shop.handleCall!), ["count", "add", "slow", "close"]);
  });
});
