/**
 * Server definitions: the value made by {@link defineServer} (init, handler maps, optional
 * schemas) and the results handlers return, built by {@link reply}, {@link noreply},
 * {@link lock} and {@link stop}.
 *
 * @module
 */

import * as v from "valibot";
import { ValidationError } from "../errors.ts";
import type { Transaction } from "../storage/types.ts";
import type { Tenant } from "../tenant.ts";
import { type AnySchema, toIssues } from "../validate.ts";

const RESULT = Symbol.for("dgen.result");

/**
 * Runs after the transaction that produced it commits, with the committed state; the only
 * place for side effects. Returning `"halt"` skips the remaining actions.
 *
 * @example
 * ```ts
 * import { type Action, defineServer, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * const announce: Action<number> = (n) => console.log(`committed ${n}`);
 * const bump = (_: undefined, _from: unknown, n: number) => reply(n + 1, n + 1, [announce]);
 * const Counter = defineServer({ name: "counter", init: () => 0, handleCall: { bump } });
 * const ref = await start(Counter, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * await ref.call("bump"); // "committed 1"
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export type Action<S> = (committedState: S) => unknown;

/**
 * A handler's decision to reply to a call and continue with `state`.
 *
 * @example
 * ```ts
 * import { reply, type ReplyResult } from "../../mod.ts";
 * const result: ReplyResult<string, number> = reply("ok", 1);
 * console.log(result.kind, result.value, result.state); // "reply" "ok" 1
 * ```
 */
export interface ReplyResult<R, S> {
  /** @internal Marks values built by the result helpers. */
  readonly [RESULT]: true;
  /** Discriminant. */
  readonly kind: "reply";
  /** The reply sent to the caller. */
  readonly value: R;
  /** The next state. */
  readonly state: S;
  /** Actions to run after commit. */
  readonly actions: readonly Action<S>[];
}

/**
 * A handler's decision to continue with `state` without replying.
 *
 * @example
 * ```ts
 * import { noreply, type NoreplyResult } from "../../mod.ts";
 * const result: NoreplyResult<string[]> = noreply(["a", "b"]);
 * console.log(result.kind, result.state, result.actions.length); // "noreply" ["a", "b"] 0
 * ```
 */
export interface NoreplyResult<S> {
  /** @internal Marks values built by the result helpers. */
  readonly [RESULT]: true;
  /** Discriminant. */
  readonly kind: "noreply";
  /** The next state. */
  readonly state: S;
  /** Actions to run after commit. */
  readonly actions: readonly Action<S>[];
}

/**
 * A handler's decision to commit `state`, take the lock and continue in `handleLocked`.
 *
 * @example
 * ```ts
 * import { lock, type LockResult } from "../../mod.ts";
 * const result: LockResult<{ busy: boolean }> = lock({ busy: true });
 * console.log(result.kind, result.state); // "lock" { busy: true }
 * ```
 */
export interface LockResult<S> {
  /** @internal Marks values built by the result helpers. */
  readonly [RESULT]: true;
  /** Discriminant. */
  readonly kind: "lock";
  /** The state to commit before `handleLocked` runs. */
  readonly state: S;
}

/**
 * A handler's decision to commit `state` and stop the instance that ran it.
 *
 * @example
 * ```ts
 * import { stop, type StopResult } from "../../mod.ts";
 * const result: StopResult<number> = stop("shutdown", 3);
 * console.log(result.kind, result.reason, result.state); // "stop" "shutdown" 3
 * ```
 */
export interface StopResult<S> {
  /** @internal Marks values built by the result helpers. */
  readonly [RESULT]: true;
  /** Discriminant. */
  readonly kind: "stop";
  /** Why the instance stops; a waiting caller gets a `ServerStoppedError` naming it. */
  readonly reason: string;
  /** The state to commit. */
  readonly state: S;
  /** Actions to run after commit. */
  readonly actions: readonly Action<S>[];
}

/**
 * Anything a handler may return.
 *
 * @example
 * ```ts
 * import { type HandlerResult, noreply, stop } from "../../mod.ts";
 * const tick = (n: number): HandlerResult<number> => n >= 3 ? stop("done", n) : noreply(n + 1);
 * console.log(tick(0).kind, tick(3).kind); // "noreply" "stop"
 * ```
 */
export type HandlerResult<S, R = unknown> =
  | ReplyResult<R, S>
  | NoreplyResult<S>
  | LockResult<S>
  | StopResult<S>;

function checkActions(actions: unknown): void {
  if (actions === undefined) return;
  if (!Array.isArray(actions) || actions.some((a) => typeof a !== "function")) {
    throw new ValidationError([{ path: "actions", message: "Expected an array of functions" }]);
  }
}

/**
 * Replies `value` to the caller and continues with `state`; `actions` run after commit.
 *
 * @example
 * ```ts
 * import { reply } from "./definition.ts";
 * const result = reply("ok", 1);
 * console.log(result.kind, result.value, result.state); // "reply" "ok" 1
 * ```
 */
export function reply<R, S>(
  value: R,
  state: S,
  actions?: readonly Action<S>[],
): ReplyResult<R, S> {
  checkActions(actions);
  return { [RESULT]: true, kind: "reply", value, state, actions: actions ?? [] };
}

/**
 * Continues with `state` without replying; `actions` run after commit.
 *
 * @example
 * ```ts
 * import { noreply } from "./definition.ts";
 * console.log(noreply(5).state); // 5
 * ```
 */
export function noreply<S>(state: S, actions?: readonly Action<S>[]): NoreplyResult<S> {
  checkActions(actions);
  return { [RESULT]: true, kind: "noreply", state, actions: actions ?? [] };
}

/**
 * Commits `state`, takes the server's lock and runs `handleLocked` outside any transaction;
 * standard messages wait until it finishes.
 *
 * @example
 * ```ts
 * import { lock } from "./definition.ts";
 * console.log(lock({ busy: true }).kind); // "lock"
 * ```
 */
export function lock<S>(state: S): LockResult<S> {
  return { [RESULT]: true, kind: "lock", state };
}

/**
 * Commits `state` and stops the instance that ran the handler (the durable server lives on).
 *
 * @example
 * ```ts
 * import { stop } from "./definition.ts";
 * console.log(stop("done", 0).reason); // "done"
 * ```
 */
export function stop<S>(reason: string, state: S, actions?: readonly Action<S>[]): StopResult<S> {
  if (typeof reason !== "string") {
    throw new ValidationError([{ path: "reason", message: "Expected a string" }]);
  }
  checkActions(actions);
  return { [RESULT]: true, kind: "stop", reason, state, actions: actions ?? [] };
}

/** Whether `x` was built by one of the result helpers. */
export function isHandlerResult(x: unknown): x is HandlerResult<unknown> {
  return typeof x === "object" && x !== null && (x as Record<symbol, unknown>)[RESULT] === true;
}

/**
 * Identifies the caller of a call: passed to `handleCall`.
 *
 * @example
 * ```ts
 * import { defineServer, type From, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * const whoami = (_: undefined, from: From, state: null) => reply(from.instance, state);
 * const Echo = defineServer({ name: "echo", init: () => null, handleCall: { whoami } });
 * const ref = await start(Echo, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * console.log(await ref.call("whoami") === ref.instance); // true
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export interface From {
  /** The instance the call was made through. */
  readonly instance: string;
  /** Unique id of this call. */
  readonly callId: string;
}

/**
 * What every handler gets besides the message and the state.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * import type { HandlerContext } from "./definition.ts";
 * const where = (_: undefined, _f: unknown, n: number, ctx: HandlerContext) => reply(ctx.id, n);
 * const Named = defineServer({ name: "named", init: () => 0, handleCall: { where } });
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(Named, [], { tenant, id: "alice" });
 * console.log(await ref.call("where")); // "alice"
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
export interface HandlerContext {
  /** The tenant the server lives in. */
  readonly tenant: Tenant;
  /** The server id. */
  readonly id: string;
  /** The instance running the handler. */
  readonly instance: string;
  /** Aborted when the instance stops, or (in `handleLocked`) when the lock's lease is lost. */
  readonly signal: AbortSignal;
  /**
   * The transaction the handler runs in (tenant-scoped keys), to read and write other keys of
   * the tenant atomically with the state. Absent in `handleLocked`, which runs outside any
   * transaction. Keys starting with the tuple element `"s"`, `"servers"` or `"members"` belong
   * to dgen (see lib/server/keys.ts).
   */
  readonly tx?: Transaction;
  /**
   * In `handleLocked`: the lock's fencing token, strictly greater for every new lock of this
   * server; pass it to external systems so they can refuse a stale holder.
   */
  readonly fencingToken?: bigint;
}

/**
 * A transactional handler's context: `tx` is always present.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, pack, reply, start } from "../../mod.ts";
 * import type { TxContext } from "./definition.ts";
 * const get = async (key: string, _f: unknown, n: number, ctx: TxContext) =>
 *   reply(await ctx.tx.get(pack([key])), n);
 * const Reader = defineServer({ name: "reader", init: () => 0, handleCall: { get } });
 * const ref = await start(Reader, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * await ref.tenant.transact((tx) => tx.set(pack(["motd"]), new Uint8Array([42])));
 * console.log(await ref.call("get", "motd")); // Uint8Array(1) [42]
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export interface TxContext extends HandlerContext {
  /** The transaction the handler runs in. */
  readonly tx: Transaction;
}

/**
 * The event `handleLocked` continues: the message that took the lock.
 *
 * @example
 * ```ts
 * import { defineServer, lock, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * import type { LockedEvent } from "./definition.ts";
 * const work = (_: undefined, _from: unknown, n: number) => lock(n);
 * const handleLocked = (event: LockedEvent, n: number) => reply(`${event.kind} ${event.name}`, n + 1);
 * const Slow = defineServer({ name: "slow", init: () => 0, handleCall: { work }, handleLocked });
 * const ref = await start(Slow, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * console.log(await ref.call("work")); // "call work"
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export type LockedEvent =
  | { readonly kind: "call"; readonly name: string; readonly arg: unknown; readonly from: From }
  | { readonly kind: "cast"; readonly name: string; readonly arg: unknown };

/**
 * A `handleCall` entry.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, reply, start } from "../../mod.ts";
 * import type { CallHandler } from "./definition.ts";
 * const add: CallHandler<number, number, number> = (by, _from, n) => reply(n + by, n + by);
 * const Counter = defineServer({ name: "counter", init: () => 0, handleCall: { add } });
 * const ref = await start(Counter, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * console.log(await ref.call("add", 5)); // 5
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
// deno-lint-ignore no-explicit-any
export type CallHandler<S = any, A = any, R = any> = (
  arg: A,
  from: From,
  state: S,
  ctx: TxContext,
) => HandlerResult<S, R> | Promise<HandlerResult<S, R>>;

/**
 * A `handleCast` entry.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, openMemoryBackend, openTenant, readServerView, start } from "../../mod.ts";
 * import type { CastHandler } from "./definition.ts";
 * const bump: CastHandler<number, number> = (by, n) => noreply(n + by);
 * const Counter = defineServer({ name: "counter", init: () => 0, handleCast: { bump } });
 * const ref = await start(Counter, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * await ref.priorityCast("bump", 2);
 * console.log((await readServerView(ref.tenant, "counter"))?.state); // 2
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
// deno-lint-ignore no-explicit-any
export type CastHandler<S = any, A = any> = (
  arg: A,
  state: S,
  ctx: TxContext,
) => HandlerResult<S, never> | Promise<HandlerResult<S, never>>;

/**
 * A message that was dead-lettered, as `handleDeadLetter` receives it.
 *
 * @example
 * ```ts
 * import { defineServer, openMemoryBackend, openTenant, start } from "../../mod.ts";
 * import type { DeadLetterMessage } from "./definition.ts";
 * const boom = () => Promise.reject(new Error("boom"));
 * const handleDeadLetter = (m: DeadLetterMessage, attempts: number) => console.log(m.name, attempts);
 * const Fragile = defineServer({ name: "fragile", init: () => 0, handleCall: { boom }, handleDeadLetter });
 * const tenant = await openTenant(openMemoryBackend(), "demo");
 * const ref = await start(Fragile, [], { tenant, deadLetterThreshold: 1 });
 * await ref.call("boom").catch((e) => console.log(e.code)); // "boom" 1, then "dead_letter"
 * await ref.stop();
 * await tenant.backend.close();
 * ```
 */
export interface DeadLetterMessage {
  /** `"call"` or `"cast"`. */
  readonly kind: "call" | "cast";
  /** The message name. */
  readonly name: string;
  /** The message argument. */
  readonly arg: unknown;
}

/**
 * Schemas validating messages, replies and state; each optional. They validate only: the value
 * checked is the value used, and a schema's defaults and transforms (`v.optional(x, 1)`,
 * `v.transform`, `v.trim`) are not applied, since a handler's parameter type is also the call
 * site's type.
 *
 * @example
 * ```ts
 * import * as v from "valibot";
 * import { defineServer, noreply, openMemoryBackend, openTenant, start } from "../../mod.ts";
 * import type { ServerSchemas } from "./definition.ts";
 * const schemas: ServerSchemas = { cast: { bump: v.number() }, state: v.number() };
 * const bump = (by: number, n: number) => noreply(n + by);
 * const Counter = defineServer({ name: "counter", init: () => 0, handleCast: { bump }, schemas });
 * const ref = await start(Counter, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * await ref.cast("bump", "two" as never).catch((e) => console.log(e.code)); // "validation"
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export interface ServerSchemas {
  /** Per call name: the argument's schema. */
  readonly call?: Readonly<Record<string, AnySchema>>;
  /** Per cast name: the argument's schema. */
  readonly cast?: Readonly<Record<string, AnySchema>>;
  /** Schema of `send`'s info messages. */
  readonly info?: AnySchema;
  /** Per call name: the reply's schema (checked after the handler; a mismatch is a failure). */
  readonly reply?: Readonly<Record<string, AnySchema>>;
  /** Schema of the state (checked after every handler and on load). */
  readonly state?: AnySchema;
}

/**
 * What {@link defineServer} takes.
 *
 * @example
 * ```ts
 * import { defineServer, type ServerSpec } from "../../mod.ts";
 * type None = Record<never, never>;
 * const spec: ServerSpec<number, [from: number], None, None, never> = {
 *   name: "countdown",
 *   init: (from) => from,
 * };
 * console.log(defineServer(spec).name, await spec.init(10)); // "countdown" 10
 * ```
 */
export interface ServerSpec<
  S,
  Args extends readonly unknown[],
  // deno-lint-ignore no-explicit-any
  Calls extends Record<string, CallHandler<S, any, any>>,
  // deno-lint-ignore no-explicit-any
  Casts extends Record<string, CastHandler<S, any>>,
  I,
> {
  /** The server's name; the default server id. */
  readonly name: string;
  /** Builds the initial state from `start`'s arguments. Runs on every start. */
  readonly init: (...args: Args) => S | Promise<S>;
  // The intersections give handlers their contextual parameter types (`from`, `ctx`) while
  // `Calls`/`Casts` are inferred from the literal, so reply and argument types flow to refs.
  /** Call handlers by message name. */
  readonly handleCall?: Calls & Record<string, CallHandler<S>>;
  /** Cast handlers by message name. */
  readonly handleCast?: Casts & Record<string, CastHandler<S>>;
  /** Handles `send`'s info messages. */
  handleInfo?(
    info: I,
    state: S,
    ctx: TxContext,
  ): HandlerResult<S, never> | Promise<HandlerResult<S, never>>;
  /**
   * Continues a message whose handler returned `lock(state)`, outside any transaction; may be
   * slow and may have side effects, which must be idempotent (it runs again if its lease is
   * lost). Its result commits on top of the state current at that time (see the README).
   */
  readonly handleLocked?: (
    event: LockedEvent,
    state: S,
    ctx: HandlerContext,
  ) => HandlerResult<S> | Promise<HandlerResult<S>>;
  /** Runs (after commit) when a message is moved to the dead-letter list. */
  readonly handleDeadLetter?: (
    message: DeadLetterMessage,
    attempts: number,
    error: unknown,
  ) => void | Promise<void>;
  /** Optional valibot schemas. */
  readonly schemas?: ServerSchemas;
  /** Version of the state's shape. @default 1 */
  readonly version?: number;
  /** Converts a state written by an older `version` of this definition. */
  readonly migrate?: (fromVersion: number, oldState: unknown) => S | Promise<S>;
}

/**
 * A server definition, made by {@link defineServer}.
 *
 * @example
 * ```ts
 * import { defineServer, type ServerDefinition } from "../../mod.ts";
 * const Counter: ServerDefinition<number> = defineServer({ name: "counter", init: () => 0 });
 * console.log(Counter.name, Counter.version); // "counter" 1
 * ```
 */
export interface ServerDefinition<
  S = unknown,
  Args extends readonly unknown[] = readonly unknown[],
  // deno-lint-ignore no-explicit-any
  Calls extends Record<string, CallHandler<S, any, any>> = Record<string, CallHandler<S>>,
  // deno-lint-ignore no-explicit-any
  Casts extends Record<string, CastHandler<S, any>> = Record<string, CastHandler<S>>,
  I = unknown,
> extends ServerSpec<S, Args, Calls, Casts, I> {
  /** @internal Marks values made by defineServer. */
  readonly [DEFINITION]: true;
  /** The state version (defaults applied). */
  readonly version: number;
  /** Carries the definition's types to `ServerRef`; never set at run time. */
  readonly "~types"?: {
    readonly state: S;
    readonly args: Args;
    readonly calls: Calls;
    readonly casts: Casts;
    readonly info: I;
  };
}

const DEFINITION = Symbol.for("dgen.definition");

const nameSchema = v.pipe(v.string(), v.minLength(1, "Expected a non-empty string"));
const handlerMap = v.optional(
  v.record(v.string(), v.function("Expected a function")),
);
const specSchema = v.object({
  name: nameSchema,
  init: v.function("Expected a function"),
  handleCall: handlerMap,
  handleCast: handlerMap,
  handleInfo: v.optional(v.function("Expected a function")),
  handleLocked: v.optional(v.function("Expected a function")),
  handleDeadLetter: v.optional(v.function("Expected a function")),
  schemas: v.optional(v.object({
    call: v.optional(v.record(v.string(), v.any())),
    cast: v.optional(v.record(v.string(), v.any())),
    info: v.optional(v.any()),
    reply: v.optional(v.record(v.string(), v.any())),
    state: v.optional(v.any()),
  })),
  version: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1))),
  migrate: v.optional(v.function("Expected a function")),
});

function isSchema(x: unknown): boolean {
  return typeof x === "object" && x !== null && (x as { kind?: unknown }).kind === "schema" &&
    typeof (x as { "~run"?: unknown })["~run"] === "function";
}

/**
 * Defines a durable server: `init` plus handlers for calls, casts and info, optional schemas
 * and a state version with `migrate`. Types flow from the definition to `ServerRef`: a call's
 * reply type is its handler's reply type, and a wrong message name or argument type is a
 * compile error.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, reply } from "../../mod.ts";
 * export const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: {
 *     increment: (_arg: undefined, _from, n: number) => reply("ok", n + 1),
 *     value: (_arg: undefined, _from, n: number) => reply(n, n),
 *   },
 *   handleCast: {
 *     bump: (by: number, n: number) => noreply(n + by),
 *   },
 * });
 * ```
 */
export function defineServer<
  S,
  Args extends readonly unknown[] = [],
  // deno-lint-ignore no-explicit-any
  Calls extends Record<string, CallHandler<S, any, any>> = Record<never, never>,
  // deno-lint-ignore no-explicit-any
  Casts extends Record<string, CastHandler<S, any>> = Record<never, never>,
  I = never,
>(spec: ServerSpec<S, Args, Calls, Casts, I>): ServerDefinition<S, Args, Calls, Casts, I> {
  const checked = v.safeParse(specSchema, spec);
  if (!checked.success) {
    throw new ValidationError(toIssues("spec", checked.issues));
  }
  const schemas = spec.schemas ?? {};
  for (const group of ["call", "cast", "reply"] as const) {
    for (const [name, schema] of Object.entries(schemas[group] ?? {})) {
      if (!isSchema(schema)) {
        throw new ValidationError([{
          path: `spec.schemas.${group}.${name}`,
          message: "Expected a valibot schema",
        }]);
      }
    }
  }
  for (const key of ["info", "state"] as const) {
    if (schemas[key] !== undefined && !isSchema(schemas[key])) {
      throw new ValidationError([{
        path: `spec.schemas.${key}`,
        message: "Expected a valibot schema",
      }]);
    }
  }
  if ((spec.version ?? 1) > 1 && spec.migrate === undefined) {
    throw new ValidationError([{
      path: "spec.migrate",
      message: "Expected a migrate function when version is greater than 1",
    }]);
  }
  return Object.freeze({ ...spec, [DEFINITION]: true as const, version: spec.version ?? 1 });
}

/** Whether `x` was made by {@link defineServer}. */
export function isDefinition(x: unknown): x is ServerDefinition {
  return typeof x === "object" && x !== null && (x as Record<symbol, unknown>)[DEFINITION] === true;
}

// ---- Types that flow from a definition to ServerRef ----

/**
 * Any server definition.
 *
 * @example
 * ```ts
 * import { type AnyServerDefinition, defineServer } from "../../mod.ts";
 * const label = (def: AnyServerDefinition) => `${def.name} v${def.version}`;
 * const Counter = defineServer({ name: "counter", init: () => 0 });
 * console.log(label(Counter)); // "counter v1"
 * ```
 */
// deno-lint-ignore no-explicit-any
export type AnyServerDefinition = ServerDefinition<any, any, any, any, any>;

/**
 * The types a definition carries (see `ServerDefinition["~types"]`).
 *
 * @example
 * ```ts
 * import { defineServer, type TypesOf } from "../../mod.ts";
 * const Greeter = defineServer({ name: "greeter", init: (greeting: string) => ({ greeting }) });
 * type Types = TypesOf<typeof Greeter>;
 * const args: Types["args"] = ["hello"];
 * const state: Types["state"] = { greeting: "hi" };
 * console.log(args, state); // ["hello"] { greeting: "hi" }
 * ```
 */
export type TypesOf<D extends AnyServerDefinition> = NonNullable<D["~types"]>;
/**
 * The state type of a definition.
 *
 * @example
 * ```ts
 * import { defineServer, type StateOf } from "../../mod.ts";
 * const Cart = defineServer({ name: "cart", init: () => ({ items: [] as string[] }) });
 * const state: StateOf<typeof Cart> = { items: ["apple"] };
 * console.log(state.items.length); // 1
 * ```
 */
export type StateOf<D extends AnyServerDefinition> = TypesOf<D>["state"];
/**
 * The `init` argument tuple of a definition.
 *
 * @example
 * ```ts
 * import { defineServer, type InitArgsOf } from "../../mod.ts";
 * const Echo = defineServer({ name: "echo", init: (s: string, times: number) => s.repeat(times) });
 * const args: InitArgsOf<typeof Echo> = ["ho", 3];
 * console.log(await Echo.init(...args)); // "hohoho"
 * ```
 */
export type InitArgsOf<D extends AnyServerDefinition> = TypesOf<D>["args"];
/**
 * The call handler map of a definition.
 *
 * @example
 * ```ts
 * import { type CallsOf, defineServer, reply } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { value: (_: undefined, _from, n: number) => reply(n, n) },
 * });
 * const calls: CallsOf<typeof Counter> = Counter.handleCall!;
 * console.log(Object.keys(calls)); // ["value"]
 * ```
 */
export type CallsOf<D extends AnyServerDefinition> = TypesOf<D>["calls"];
/**
 * The cast handler map of a definition.
 *
 * @example
 * ```ts
 * import { type CastsOf, defineServer, noreply } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCast: { bump: (by: number, n: number) => noreply(n + by) },
 * });
 * const casts: CastsOf<typeof Counter> = Counter.handleCast!;
 * console.log(Object.keys(casts)); // ["bump"]
 * ```
 */
export type CastsOf<D extends AnyServerDefinition> = TypesOf<D>["casts"];
/**
 * The info message type of a definition.
 *
 * @example
 * ```ts
 * import { defineServer, noreply, openMemoryBackend, openTenant, readServerView, start } from "../../mod.ts";
 * import type { InfoOf } from "./definition.ts";
 * const handleInfo = (info: { tick: number }) => noreply(info.tick);
 * const Clock = defineServer({ name: "clock", init: () => 0, handleInfo });
 * const ref = await start(Clock, [], { tenant: await openTenant(openMemoryBackend(), "demo") });
 * const info: InfoOf<typeof Clock> = { tick: 5 };
 * await ref.send(info);
 * console.log((await readServerView(ref.tenant, "clock"))?.state); // 5
 * await ref.stop();
 * await ref.tenant.backend.close();
 * ```
 */
export type InfoOf<D extends AnyServerDefinition> = TypesOf<D>["info"];

/**
 * Names of the calls a definition handles.
 *
 * @example
 * ```ts
 * import { type CallName, defineServer, reply } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { value: (_: undefined, _from, n: number) => reply(n, n) },
 * });
 * const name: CallName<typeof Counter> = "value";
 * // @ts-expect-error: Counter has no call "reset"
 * const wrong: CallName<typeof Counter> = "reset";
 * console.log(name, wrong); // "value" "reset"
 * ```
 */
export type CallName<D extends AnyServerDefinition> = keyof CallsOf<D> & string;
/**
 * Names of the casts a definition handles.
 *
 * @example
 * ```ts
 * import { type CastName, defineServer, noreply } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCast: { bump: (by: number, n: number) => noreply(n + by) },
 * });
 * const names: CastName<typeof Counter>[] = ["bump"];
 * console.log(names); // ["bump"]
 * ```
 */
export type CastName<D extends AnyServerDefinition> = keyof CastsOf<D> & string;
/**
 * The argument type of call `K`.
 *
 * @example
 * ```ts
 * import { type CallArg, defineServer, reply } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { add: (by: number, _from, n: number) => reply(n + by, n + by) },
 * });
 * const arg: CallArg<typeof Counter, "add"> = 5;
 * console.log(arg); // 5
 * ```
 */
export type CallArg<D extends AnyServerDefinition, K extends CallName<D>> = Parameters<
  CallsOf<D>[K]
>[0];
/**
 * The argument type of cast `K`.
 *
 * @example
 * ```ts
 * import { type CastArg, defineServer, noreply } from "../../mod.ts";
 * const post = (msg: { from: string; text: string }, log: string[]) => noreply([...log, msg.text]);
 * const Chat = defineServer({ name: "chat", init: () => [] as string[], handleCast: { post } });
 * const arg: CastArg<typeof Chat, "post"> = { from: "ada", text: "hi" };
 * console.log(arg.text); // "hi"
 * ```
 */
export type CastArg<D extends AnyServerDefinition, K extends CastName<D>> = Parameters<
  CastsOf<D>[K]
>[0];
/**
 * The reply type of call `K`: what its handler passes to `reply`. A handler that may `lock`
 * replies from `handleLocked`, whose reply type is not known: `unknown` then.
 *
 * @example
 * ```ts
 * import { type CallReply, defineServer, reply } from "../../mod.ts";
 * const Counter = defineServer({
 *   name: "counter",
 *   init: () => 0,
 *   handleCall: { value: (_: undefined, _from, n: number) => reply(`n=${n}`, n) },
 * });
 * const answer: CallReply<typeof Counter, "value"> = "n=3";
 * console.log(answer); // "n=3"
 * ```
 */
export type CallReply<D extends AnyServerDefinition, K extends CallName<D>> = ReplyOf<
  Awaited<ReturnType<CallsOf<D>[K]>>
>;
/**
 * The reply type carried by a handler result type `R` (`unknown` if it may lock).
 *
 * @example
 * ```ts
 * import { type NoreplyResult, type ReplyOf, type ReplyResult } from "../../mod.ts";
 * const reply: ReplyOf<ReplyResult<string, number> | NoreplyResult<number>> = "ok";
 * // @ts-expect-error: the reply is a string
 * const wrong: ReplyOf<ReplyResult<string, number>> = 1;
 * console.log(reply, wrong); // "ok" 1
 * ```
 */
export type ReplyOf<R> = [Extract<R, { kind: "lock" }>] extends [never]
  ? Extract<R, { kind: "reply" }> extends { value: infer V } ? V : never
  : unknown;

/**
 * Argument list of a message: optional when its type admits `undefined`.
 *
 * @example
 * ```ts
 * import type { MessageArgs } from "../../mod.ts";
 * const none: MessageArgs<number | undefined, { timeout?: number }> = [];
 * const both: MessageArgs<string, { timeout?: number }> = ["hello", { timeout: 100 }];
 * console.log(none.length, both.length); // 0 2
 * ```
 */
export type MessageArgs<A, O> = undefined extends A ? [arg?: A, options?: O]
  : [arg: A, options?: O];
