/**
 * A child process of the multi-process server tests. Arguments: a backend spec (JSON:
 * `{"kind":"sqlite","path":…}` or `{"kind":"postgres","url":…}`), a role and its parameters
 * (JSON). Prints one JSON object per line.
 *
 * - `consumer`: starts a consuming instance of Tally and stays up (prints `ready`).
 * - `client`: starts a sending instance and runs `casts` casts and `calls` calls with ids
 *   `<prefix><n>`, `concurrency` at a time, printing each outcome (`ok`, `fail` with the error
 *   code); then `done`.
 */
import process from "node:process";
import {
  type Backend,
  openPostgresBackend,
  openSqliteBackend,
  openTenant,
  start,
} from "../../mod.ts";
import { Tally } from "./_tally.ts";

const [specJson, role, paramsJson] = process.argv.slice(2);
const spec = JSON.parse(specJson!) as {
  kind: string;
  path?: string;
  url?: string;
  schema?: string;
  tenant?: string;
};
const params = JSON.parse(paramsJson ?? "{}");

function out(line: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify(line) + "\n");
}

async function open(): Promise<Backend> {
  if (spec.kind === "sqlite") return await openSqliteBackend({ path: spec.path! });
  if (spec.kind === "postgres") {
    return await openPostgresBackend({ url: spec.url!, schema: spec.schema! });
  }
  throw new Error(`unknown backend ${spec.kind}`);
}

const backend = await open();
const tenant = await openTenant(backend, spec.tenant ?? "mp");

if (role === "consumer") {
  const ref = await start(Tally, [], {
    tenant,
    lockLease: params.lockLease ?? 2000,
    batchSize: params.batchSize ?? 1,
  });
  out({ ready: true, instance: ref.instance, pid: process.pid });
  const reason = await ref.stopped;
  out({ stopped: reason });
  await backend.close();
} else if (role === "client") {
  const ref = await start(Tally, [], { tenant, consume: false });
  out({ ready: true, instance: ref.instance, pid: process.pid });
  const prefix: string = params.prefix ?? "op";
  const ops: Array<{ kind: "cast" | "call"; id: string }> = [];
  const total = params.casts + params.calls;
  // Interleave calls evenly among casts.
  for (let i = 0, c = 0; i < total; i++) {
    const isCall = c < params.calls && (i * params.calls) / total >= c;
    if (isCall) c++;
    ops.push({ kind: isCall ? "call" : "cast", id: `${prefix}${i}` });
  }
  let next = 0;
  const worker = async () => {
    while (next < ops.length) {
      const op = ops[next++]!;
      out({ invoke: op.kind, id: op.id });
      try {
        if (op.kind === "cast") {
          await ref.cast("rec", op.id);
          out({ ok: "cast", id: op.id });
        } else {
          const r = await ref.call("rec", op.id, { timeout: params.timeout ?? 30_000 });
          out({ ok: "call", id: op.id, reply: r });
        }
      } catch (e) {
        out({
          fail: op.kind,
          id: op.id,
          code: (e as { code?: string }).code ?? "error",
          message: String(e),
        });
      }
    }
  };
  await Promise.all(Array.from({ length: params.concurrency ?? 4 }, worker));
  out({ done: true });
  await ref.stop();
  await backend.close();
}
