/**
 * What a thrown value says, for error texts. Never throws: handlers may throw anything, and an
 * object without a prototype (no `toString`), an error whose `message` getter throws or a revoked
 * proxy must not make recording the failure fail too (the message would be retried for ever).
 *
 * @module
 */

/** `e.message` for an `Error`, `String(e)` otherwise, or a fallback when even that throws. */
export function errorMessage(e: unknown): string {
  try {
    if (e instanceof Error) {
      const message = e.message;
      return typeof message === "string" ? message : String(message);
    }
    return String(e);
  } catch {
    try {
      return `a thrown ${Object.prototype.toString.call(e)} that cannot be printed`;
    } catch {
      return "a thrown value that cannot be printed";
    }
  }
}

/** `e.code` when it is a string, without letting a throwing getter through. */
export function errorCode(e: unknown): string | undefined {
  try {
    const code = (e as { code?: unknown } | null | undefined)?.code;
    return typeof code === "string" ? code : undefined;
  } catch {
    return undefined;
  }
}
