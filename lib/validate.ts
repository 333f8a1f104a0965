/**
 * Input validation at dgen's public boundary: valibot schemas, and one function that turns
 * valibot's issues into a {@link ValidationError} naming each offending field.
 *
 * @module
 */

import * as v from "valibot";
import { ValidationError, type ValidationIssue } from "./errors.ts";

/**
 * A valibot schema, as user definitions pass them (structurally typed so dgen's public types do
 * not expose valibot's internals).
 *
 * @example
 * ```ts
 * import * as v from "valibot";
 * import type { AnySchema } from "../mod.ts";
 * const state: AnySchema = v.pipe(v.number(), v.minValue(0));
 * console.log(state.kind, state.type); // "schema" "number"
 * ```
 */
export interface AnySchema {
  /** valibot's marker of schemas. */
  readonly kind: "schema";
  /** The schema type, e.g. `"number"`. */
  readonly type: string;
  /** The Standard Schema interface valibot implements. */
  readonly "~standard": unknown;
}

/** Validates `input` against a user-supplied schema. */
export function safeParseUser(
  schema: AnySchema,
  input: unknown,
): v.SafeParseResult<v.GenericSchema> {
  return v.safeParse(schema as unknown as v.GenericSchema, input);
}

function issuePath(root: string, issue: v.BaseIssue<unknown>): string {
  let path = root;
  for (const item of issue.path ?? []) {
    const key = (item as { key?: unknown }).key;
    path += typeof key === "number" ? `[${key}]` : `.${String(key)}`;
  }
  return path;
}

function describeValue(x: unknown): string {
  if (typeof x === "string") return JSON.stringify(x.length > 40 ? x.slice(0, 40) + "…" : x);
  if (typeof x === "bigint") return `${x}n`;
  if (x === null || typeof x !== "object") return String(x);
  if (Array.isArray(x)) return "an array";
  return x.constructor?.name && x.constructor !== Object ? `a ${x.constructor.name}` : "an object";
}

/** Converts valibot issues into dgen's issue list, rooted at `root` (e.g. `"options"`). */
export function toIssues(root: string, issues: readonly v.BaseIssue<unknown>[]): ValidationIssue[] {
  return issues.map((issue) => {
    // A strict object's extra key (a non-object input is a schema issue of the same type).
    if (issue.expected === "never") {
      return { path: issuePath(root, issue), message: "Unknown field" };
    }
    // A custom check's own message says what was expected (its `expected` is "unknown").
    const expected = issue.type === "custom"
      ? issue.message
      : issue.expected
      ? `Expected ${issue.expected}`
      : issue.message;
    const message = issue.kind === "schema"
      ? `${expected}, received ${describeValue(issue.input)}`
      : `${issue.message}`;
    return { path: issuePath(root, issue), message };
  });
}

/**
 * Parses `input` with `schema`; throws {@link ValidationError} naming the fields at fault
 * (rooted at `root`), or returns the typed output.
 */
export function parse<S extends v.GenericSchema<unknown, unknown>>(
  schema: S,
  input: unknown,
  root: string,
): v.InferOutput<S> {
  const result = v.safeParse(schema, input);
  if (result.success) return result.output as v.InferOutput<S>;
  throw new ValidationError(toIssues(root, result.issues));
}

/** Whether `x` is a plain object (made by `{}` or `Object.create(null)`). */
export function isPlainObject(x: unknown): x is Record<string, unknown> {
  if (x === null || typeof x !== "object") return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}
