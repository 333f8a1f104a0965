/** Text formatting for the page: durations, relative times, ids. */

/** A duration: "0.4 s", "12 s", "3 min 05 s", "2 h 03 min", "4 d 2 h". */
export function duration(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.floor(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** How long ago `at` was, seen at `now`: "just now", "4 s ago", "3 min 05 s ago". */
export function ago(at: number, now: number): string {
  const d = now - at;
  if (d < 1500) return "just now";
  // Whole seconds: a tenth-of-a-second counter on every instance would flicker.
  if (d < 60_000) return `${Math.floor(d / 1000)} s ago`;
  return `${duration(d)} ago`;
}

/** A wall-clock time, to the second, in the viewer's locale. */
export function clock(at: number): string {
  return new Date(at).toLocaleTimeString(undefined, { hour12: false });
}

/**
 * The distinguishing tail of a time-ordered id (dgen's instance ids start with the time and
 * end with random characters).
 */
export function shortId(id: string): string {
  return id.length > 10 ? `…${id.slice(-7)}` : id;
}

/** "1 item", "3 items". */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}
