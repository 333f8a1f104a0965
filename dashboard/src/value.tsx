/// <reference lib="dom" />
/**
 * A state value in dgen's lossless display form (see `toDisplay` in lib/inspect.ts), drawn as
 * a collapsible tree. Everything is rendered as text nodes: a string holding HTML shows as that
 * HTML's source.
 */
import { type Signal, useSignal } from "@preact/signals";
import type { ComponentChildren } from "preact";

/** A display-form value, classified. */
type Shape =
  | { kind: "string"; text: string }
  | { kind: "number" | "bigint" | "boolean" | "null" | "undefined" | "date"; text: string }
  | { kind: "bytes"; hex: string }
  | { kind: "array" | "set"; items: unknown[] }
  | { kind: "object"; entries: [string, unknown][] }
  | { kind: "map"; entries: [unknown, unknown][] };

const TAGS = new Set([
  "$map",
  "$set",
  "$bigint",
  "$bytes",
  "$date",
  "$undefined",
  "$number",
  "$object",
]);

function classify(v: unknown): Shape {
  if (v === null) return { kind: "null", text: "null" };
  if (typeof v === "string") return { kind: "string", text: v };
  if (typeof v === "number") return { kind: "number", text: String(v) };
  if (typeof v === "boolean") return { kind: "boolean", text: String(v) };
  if (Array.isArray(v)) return { kind: "array", items: v };
  if (typeof v !== "object") return { kind: "string", text: String(v) };
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o);
  const tag = keys.length === 1 && TAGS.has(keys[0]!) ? keys[0]! : null;
  const body = tag === null ? undefined : o[tag];
  switch (tag) {
    case "$map":
      return { kind: "map", entries: Array.isArray(body) ? body as [unknown, unknown][] : [] };
    case "$set":
      return { kind: "set", items: Array.isArray(body) ? body : [] };
    case "$bigint":
      return { kind: "bigint", text: `${String(body)}n` };
    case "$bytes":
      return { kind: "bytes", hex: String(body) };
    case "$date":
      return { kind: "date", text: String(body) };
    case "$undefined":
      return { kind: "undefined", text: "undefined" };
    case "$number":
      return { kind: "number", text: String(body) };
    case "$object":
      // The wrapped object is taken literally: its one `$` key is data, not a tag.
      return {
        kind: "object",
        entries: Object.entries(typeof body === "object" && body !== null ? body : {}),
      };
    default:
      return { kind: "object", entries: Object.entries(o) };
  }
}

const PREVIEW_BUDGET = 64;
const STRING_LIMIT = 240;
const CHILD_LIMIT = 100;
const BYTES_SHOWN = 24;

/** A one-line summary of a value, at most about `budget` characters. */
export function preview(v: unknown, budget = PREVIEW_BUDGET): string {
  const s = classify(v);
  switch (s.kind) {
    case "string":
      return JSON.stringify(s.text.length > budget ? s.text.slice(0, budget) + "…" : s.text);
    case "bytes":
      return `Uint8Array(${s.hex.length / 2})`;
    case "date":
      return s.text;
    case "array":
    case "set":
      return `${s.kind === "set" ? `Set(${s.items.length}) ` : ""}[${
        join(s.items.map((i) => () => preview(i, 16)), budget)
      }]`;
    case "object":
      return `{${join(s.entries.map(([k, i]) => () => `${k}: ${preview(i, 16)}`), budget)}}`;
    case "map":
      return `Map(${s.entries.length}) {${
        join(s.entries.map(([k, i]) => () => `${preview(k, 12)} ⇒ ${preview(i, 12)}`), budget)
      }}`;
    default:
      return s.text;
  }
}

function join(parts: (() => string)[], budget: number): string {
  let out = "";
  for (let i = 0; i < parts.length; i++) {
    const next = parts[i]!();
    if (out.length + next.length > budget && i > 0) return `${out}, …`;
    out += (i === 0 ? "" : ", ") + next;
  }
  return out;
}

/** A long string, cut with a toggle to show all of it. */
function Text({ text }: { text: string }) {
  const full = useSignal(false);
  const long = text.length > STRING_LIMIT;
  return (
    <span class="v-str">
      “{long && !full.value ? text.slice(0, STRING_LIMIT) : text}”
      {long && (
        <button type="button" class="v-more" onClick={() => full.value = !full.value}>
          {full.value ? "less" : `+${(text.length - STRING_LIMIT).toLocaleString()} chars`}
        </button>
      )}
    </span>
  );
}

function Bytes({ hex }: { hex: string }) {
  const n = hex.length / 2;
  const shown = hex.slice(0, BYTES_SHOWN * 2).replace(/(..)(?!$)/g, "$1 ");
  return (
    <span class="v-bytes" title={`${n} bytes`}>
      <span class="v-label">Uint8Array({n})</span> {shown}
      {n > BYTES_SHOWN ? " …" : ""}
    </span>
  );
}

function Rows(
  { count, shown, children, class: className = "v-rows" }: {
    count: number;
    shown: Signal<number>;
    children: ComponentChildren;
    class?: string;
  },
) {
  return (
    <ul class={className}>
      {children}
      {count > shown.value && (
        <li>
          <button type="button" class="v-more" onClick={() => shown.value += CHILD_LIMIT * 5}>
            show {Math.min(count - shown.value, CHILD_LIMIT * 5).toLocaleString()} more of{" "}
            {count.toLocaleString()}
          </button>
        </li>
      )}
    </ul>
  );
}

/** A collection: inline when empty, else a `<details>` that starts open near the root. */
function Tree(
  { name, label, value, count, depth, rows }: {
    name?: ComponentChildren;
    label: string;
    value: unknown;
    count: number;
    depth: number;
    rows: (limit: number) => ComponentChildren;
  },
) {
  const shown = useSignal(CHILD_LIMIT);
  if (count === 0) {
    return (
      <>
        {name}
        <span class="v-label v-empty">{label}</span>
      </>
    );
  }
  // The root object is the state itself: its fields are listed without a fold of their own.
  if (depth === 0 && name === undefined && label.startsWith("{")) {
    return <Rows class="v-rows v-root" count={count} shown={shown}>{rows(shown.value)}</Rows>;
  }
  return (
    <details class="v-tree" open={depth < 2}>
      <summary>
        {name}
        <span class="v-label">{label}</span>
        <span class="v-preview">{preview(value)}</span>
      </summary>
      <Rows count={count} shown={shown}>{rows(shown.value)}</Rows>
    </details>
  );
}

function isCollection(s: Shape): boolean {
  return s.kind === "array" || s.kind === "set" || s.kind === "object" || s.kind === "map";
}

/** A value that is not a collection. */
function Leaf({ s }: { s: Shape }) {
  switch (s.kind) {
    case "string":
      return <Text text={s.text} />;
    case "bytes":
      return <Bytes hex={s.hex} />;
    case "date":
      return (
        <span class="v-date" title={new Date(s.text).toString()}>
          <span class="v-label">Date</span> {s.text}
        </span>
      );
    case "array":
    case "set":
    case "object":
    case "map":
      return null;
    default:
      return <span class={`v-${s.kind}`}>{s.text}</span>;
  }
}

/** A map key: drawn in full when scalar, summarized when it is itself a collection. */
function MapKey({ value }: { value: unknown }) {
  const s = classify(value);
  return (
    <span class="v-mapkey">
      {isCollection(s) ? <span class="v-preview">{preview(value, 32)}</span> : <Leaf s={s} />}
      <span class="v-arrow">⇒</span>
    </span>
  );
}

/**
 * Draws a display-form value; `name` (a field name, an index, a map key) goes before it, inside
 * the fold's summary for collections so that their rows line up under the name.
 */
export function Value(
  { value, depth = 0, name }: { value: unknown; depth?: number; name?: ComponentChildren },
) {
  const s = classify(value);
  const d = depth + 1;
  switch (s.kind) {
    case "array":
    case "set":
      return (
        <Tree
          name={name}
          label={s.kind === "set" ? `Set(${s.items.length})` : `Array(${s.items.length})`}
          value={value}
          count={s.items.length}
          depth={depth}
          rows={(limit) =>
            s.items.slice(0, limit).map((item, i) => (
              <li key={i}>
                <Value
                  value={item}
                  depth={d}
                  name={s.kind === "array" ? <span class="v-index">{i}</span> : undefined}
                />
              </li>
            ))}
        />
      );
    case "object":
      return (
        <Tree
          name={name}
          label={s.entries.length === 0 ? "{}" : `{${s.entries.length}}`}
          value={value}
          count={s.entries.length}
          depth={depth}
          rows={(limit) =>
            s.entries.slice(0, limit).map(([k, item]) => (
              <li key={k}>
                <Value value={item} depth={d} name={<span class="v-key">{k}</span>} />
              </li>
            ))}
        />
      );
    case "map":
      return (
        <Tree
          name={name}
          label={`Map(${s.entries.length})`}
          value={value}
          count={s.entries.length}
          depth={depth}
          rows={(limit) =>
            s.entries.slice(0, limit).map(([k, item], i) => (
              <li key={i}>
                <Value value={item} depth={d} name={<MapKey value={k} />} />
              </li>
            ))}
        />
      );
    default:
      return (
        <>
          {name}
          <Leaf s={s} />
        </>
      );
  }
}
