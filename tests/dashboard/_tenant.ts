/** A tenant wrapper that counts what the dashboard asks of the backend. */
import type { Tenant, Transaction } from "../../mod.ts";

/** What {@link countingTenant} counts. */
export interface BackendLoad {
  /** Transaction attempts. */
  transactions: number;
  /** Watches made so far. */
  watchesMade: number;
  /** Watches that have neither fired nor been cancelled. */
  watchesOpen: number;
}

/** Wraps `tenant` so that every transaction and watch made through it is counted. */
export function countingTenant(tenant: Tenant): { tenant: Tenant; load: BackendLoad } {
  const load: BackendLoad = { transactions: 0, watchesMade: 0, watchesOpen: 0 };
  const wrap = (tx: Transaction): Transaction =>
    new Proxy(tx, {
      get(target, prop) {
        if (prop === "watch") {
          return (key: Uint8Array) => {
            const w = target.watch(key);
            load.watchesMade++;
            load.watchesOpen++;
            w.promise.finally(() => load.watchesOpen--).catch(() => {});
            return w;
          };
        }
        const v = Reflect.get(target, prop, target);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
  return {
    load,
    tenant: {
      name: tenant.name,
      backend: tenant.backend,
      prefix: tenant.prefix,
      transact: (fn, options) =>
        tenant.transact((tx) => {
          load.transactions++;
          return fn(wrap(tx));
        }, options),
    },
  };
}
