/**
 * The error taxonomy of dgen. Every error dgen throws extends {@link DGenError} and carries a
 * stable `code` that callers can switch on; messages are for humans and may change.
 *
 * @module
 */

import { errorMessage } from "./describe.ts";

/**
 * Options accepted by every dgen error constructor.
 *
 * @example
 * ```ts
 * import { BackendUnavailableError, type DGenErrorOptions } from "./errors.ts";
 * const options: DGenErrorOptions = { cause: new Error("disk full") };
 * const e = new BackendUnavailableError("SQLite cannot be opened", options);
 * console.log(e.cause === options.cause); // true
 * ```
 */
export interface DGenErrorOptions {
  /** The underlying error, if any. */
  cause?: unknown;
}

/**
 * Base class of every error dgen throws.
 *
 * @example
 * ```ts
 * import { DGenError } from "./errors.ts";
 * try {
 *   throw new DGenError("internal", "Something broke");
 * } catch (e) {
 *   if (e instanceof DGenError) console.log(e.code); // "internal"
 * }
 * ```
 */
export class DGenError extends Error {
  /** Stable, machine-readable code of this error. */
  readonly code: string;

  /**
   * Creates the error.
   *
   * @param code Stable code of the error.
   * @param message Human-readable explanation.
   * @param options The cause, if any.
   */
  constructor(code: string, message: string, options?: DGenErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.name = new.target.name;
  }
}

/**
 * A `call` did not get its reply in time. The handler may still run later, as with
 * `gen_server`.
 *
 * @example
 * ```ts
 * import { CallTimeoutError } from "./errors.ts";
 * const e = new CallTimeoutError("Call 'value' to 'counter' timed out after 5000 ms");
 * console.log(e.code); // "call_timeout"
 * ```
 */
export class CallTimeoutError extends DGenError {
  /**
   * Creates the error.
   * @param message What timed out.
   * @param options The cause, if any.
   */
  constructor(message: string, options?: DGenErrorOptions) {
    super("call_timeout", message, options);
  }
}

/**
 * A message failed too many times and was moved to the dead-letter list; a caller waiting on it
 * receives this error.
 *
 * @example
 * ```ts
 * import { DeadLetterError } from "./errors.ts";
 * const e = new DeadLetterError("Message 'boom' was dead-lettered after 3 attempts", 3);
 * console.log(e.attempts); // 3
 * ```
 */
export class DeadLetterError extends DGenError {
  /** How many times the message was attempted. */
  readonly attempts: number;
  /**
   * Creates the error.
   *
   * @param message What was dead-lettered.
   * @param attempts Attempts made before dead-lettering.
   * @param options The cause (the last failure), if known.
   */
  constructor(message: string, attempts: number, options?: DGenErrorOptions) {
    super("dead_letter", message, options);
    this.attempts = attempts;
  }
}

/**
 * One problem found while validating input.
 *
 * @example
 * ```ts
 * import { ValidationError, type ValidationIssue } from "./errors.ts";
 * const issue: ValidationIssue = { path: "options.port", message: "Expected an integer" };
 * const e = new ValidationError([issue]);
 * console.log(e.issues[0]?.path); // "options.port"
 * ```
 */
export interface ValidationIssue {
  /** Dotted path of the offending field, e.g. `options.batchSize`. */
  path: string;
  /** What was expected and what was received. */
  message: string;
}

/**
 * Input to a public function was invalid. The message names the field and what was expected.
 *
 * @example
 * ```ts
 * import { ValidationError } from "./errors.ts";
 * const e = new ValidationError([{ path: "options.path", message: "Expected a non-empty string" }]);
 * console.log(e.message); // "Invalid options.path: Expected a non-empty string"
 * ```
 */
export class ValidationError extends DGenError {
  /** Every issue found, first one first. */
  readonly issues: readonly ValidationIssue[];
  /**
   * Creates the error.
   * @param issues The problems found (at least one).
   * @param options The cause, if any.
   */
  constructor(issues: readonly ValidationIssue[], options?: DGenErrorOptions) {
    super(
      "validation",
      issues.map((i) => `Invalid ${i.path}: ${i.message}`).join("; ") || "Invalid input",
      options,
    );
    this.issues = issues;
  }
}

/**
 * A value cannot be encoded (unsupported type, cycle) or stored bytes cannot be decoded.
 * `path` names the place in the value, or the storage key, at fault.
 *
 * @example
 * ```ts
 * import { CodecError } from "./errors.ts";
 * const e = new CodecError("Functions cannot be stored", "state.handler");
 * console.log(e.path); // "state.handler"
 * ```
 */
export class CodecError extends DGenError {
  /** The value path or storage key at fault. */
  readonly path: string;
  /**
   * Creates the error.
   * @param message What went wrong.
   * @param path Where.
   * @param options The cause, if any.
   */
  constructor(message: string, path: string, options?: DGenErrorOptions) {
    super("codec", `${message} (at ${path})`, options);
    this.path = path;
  }
}

/**
 * Options of {@link BackendUnavailableError}.
 *
 * @example
 * ```ts
 * import { BackendUnavailableError, type BackendUnavailableOptions } from "./errors.ts";
 * const options: BackendUnavailableOptions = { closed: true };
 * console.log(new BackendUnavailableError("The backend is closed", options).closed); // true
 * ```
 */
export interface BackendUnavailableOptions extends DGenErrorOptions {
  /** The backend was closed by its `close()`: it will not come back. @default false */
  closed?: boolean;
}

/**
 * A storage backend cannot be used: its native library is missing, or it is closed.
 * An instance whose backend was closed stops (its `stopped` resolves with "backend closed").
 *
 * @example
 * ```ts
 * import { BackendUnavailableError } from "./errors.ts";
 * const e = new BackendUnavailableError("The backend is closed", { closed: true });
 * console.log(e.code, e.closed); // "backend_unavailable" true
 * ```
 */
export class BackendUnavailableError extends DGenError {
  /** The backend was closed by its `close()` (not merely out of reach): it will not come back. */
  readonly closed: boolean;

  /**
   * Creates the error.
   * @param message What is missing and how to get it.
   * @param options The cause, if any, and whether the backend was closed.
   */
  constructor(message: string, options?: BackendUnavailableOptions) {
    super("backend_unavailable", message, options);
    this.closed = options?.closed ?? false;
  }
}

/**
 * The instance a request was made through has been stopped, or the server was killed.
 *
 * @example
 * ```ts
 * import { ServerStoppedError } from "./errors.ts";
 * console.log(new ServerStoppedError("Instance stopped").code); // "server_stopped"
 * ```
 */
export class ServerStoppedError extends DGenError {
  /**
   * Creates the error.
   * @param message What stopped.
   * @param options The cause, if any.
   */
  constructor(message: string, options?: DGenErrorOptions) {
    super("server_stopped", message, options);
  }
}

/**
 * The server does not exist: it was never started in this tenant, or it was killed. Sending to
 * it (a call or cast through an instance of a killed server) rejects with this.
 *
 * @example
 * ```ts
 * import { ServerGoneError } from "./errors.ts";
 * console.log(new ServerGoneError("counter").code); // "server_gone"
 * ```
 */
export class ServerGoneError extends DGenError {
  /**
   * Creates the error.
   *
   * @param id The server id.
   */
  constructor(id: string) {
    super("server_gone", `Server '${id}' does not exist (it was killed, or never started)`);
  }
}

/**
 * A definition's `migrate` failed (threw or rejected) converting a stored state written by an
 * older version; nothing was written. The original error is the `cause`.
 *
 * @example
 * ```ts
 * import { MigrationError } from "./errors.ts";
 * const e = new MigrationError("counter", "counter", 1, 2, new Error("no field 'n'"));
 * console.log(e.code, e.fromVersion, e.toVersion); // "migration" 1 2
 * ```
 */
export class MigrationError extends DGenError {
  /** The version that wrote the stored state. */
  readonly fromVersion: number;
  /** The definition's version, which `migrate` was converting to. */
  readonly toVersion: number;
  /**
   * Creates the error.
   *
   * @param id The server id.
   * @param name The definition's name.
   * @param fromVersion The stored state's version.
   * @param toVersion The definition's version.
   * @param cause What `migrate` threw.
   */
  constructor(id: string, name: string, fromVersion: number, toVersion: number, cause: unknown) {
    super(
      "migration",
      `migrate of '${name}' failed converting the state of server '${id}' from version ${fromVersion} to ${toVersion}: ${
        errorMessage(cause)
      }`,
      { cause },
    );
    this.fromVersion = fromVersion;
    this.toVersion = toVersion;
  }
}

/**
 * A lock holder lost its lease (another consumer took over); its write-back was refused.
 *
 * @example
 * ```ts
 * import { LockLostError } from "./errors.ts";
 * console.log(new LockLostError("Lease expired").code); // "lock_lost"
 * ```
 */
export class LockLostError extends DGenError {
  /**
   * Creates the error.
   * @param message What was lost.
   * @param options The cause, if any.
   */
  constructor(message: string, options?: DGenErrorOptions) {
    super("lock_lost", message, options);
  }
}

/**
 * A storage-level failure of one transaction attempt. `retryable` errors are retried by the
 * backend's transaction loop; `maybeCommitted` means the attempt may have been applied even
 * though it reported failure (FoundationDB's `commit_unknown_result`).
 *
 * @example
 * ```ts
 * import { TransactionError } from "./errors.ts";
 * const e = new TransactionError("conflict", "Read conflict", { retryable: true });
 * console.log(e.retryable, e.maybeCommitted); // true false
 * ```
 */
export class TransactionError extends DGenError {
  /** Whether running the transaction again may succeed. */
  readonly retryable: boolean;
  /** Whether the failed attempt may nevertheless have committed. */
  readonly maybeCommitted: boolean;
  /**
   * Creates the error.
   *
   * @param code `conflict`, `commit_unknown_result`, `transaction_timeout`,
   *   `transaction_too_large`, `key_too_large`, `value_too_large`, `retries_exhausted`, …
   * @param message What went wrong.
   * @param options Retry classification and cause.
   */
  constructor(
    code: string,
    message: string,
    options?: DGenErrorOptions & { retryable?: boolean; maybeCommitted?: boolean },
  ) {
    super(code, message, options);
    this.retryable = options?.retryable ?? false;
    this.maybeCommitted = options?.maybeCommitted ?? false;
  }
}

/**
 * Another transaction committed a write to something this one read; nothing was applied.
 * Retryable.
 *
 * @example
 * ```ts
 * import { ConflictError } from "./errors.ts";
 * console.log(new ConflictError().retryable); // true
 * ```
 */
export class ConflictError extends TransactionError {
  /**
   * Creates the error.
   * @param message Details of the conflict.
   * @param options The cause, if any.
   */
  constructor(
    message = "Transaction conflicted with a concurrent commit",
    options?: DGenErrorOptions,
  ) {
    super("conflict", message, { ...options, retryable: true });
  }
}

/**
 * The commit's outcome is unknown: it may or may not have been applied. Retryable, so
 * transaction bodies must be idempotent (as with FoundationDB's `commit_unknown_result`).
 *
 * @example
 * ```ts
 * import { CommitUnknownResultError } from "./errors.ts";
 * const e = new CommitUnknownResultError();
 * console.log(e.retryable, e.maybeCommitted); // true true
 * ```
 */
export class CommitUnknownResultError extends TransactionError {
  /**
   * Creates the error.
   * @param message Details.
   * @param options The cause, if any.
   */
  constructor(
    message = "Commit result unknown: it may have been applied",
    options?: DGenErrorOptions,
  ) {
    super("commit_unknown_result", message, { ...options, retryable: true, maybeCommitted: true });
  }
}

/**
 * A size or duration limit of the backend was exceeded; nothing was applied. Not retryable.
 *
 * @example
 * ```ts
 * import { LimitExceededError } from "./errors.ts";
 * const e = new LimitExceededError("value_too_large", "Value of 200000 bytes exceeds 100000");
 * console.log(e.code); // "value_too_large"
 * ```
 */
export class LimitExceededError extends TransactionError {
  /**
   * Creates the error.
   *
   * @param code `key_too_large`, `value_too_large`, `transaction_too_large` or
   *   `transaction_timeout`.
   * @param message Which limit, the size seen and the limit.
   * @param options The cause, if any.
   */
  constructor(code: string, message: string, options?: DGenErrorOptions) {
    super(code, message, { ...options, retryable: false });
  }
}

/**
 * A transaction kept failing with retryable errors until its retry budget ran out. `cause` is
 * the last failure; `maybeCommitted` is copied from it.
 *
 * @example
 * ```ts
 * import { ConflictError, RetriesExhaustedError } from "./errors.ts";
 * const e = new RetriesExhaustedError(10, new ConflictError());
 * console.log(e.code, e.attempts); // "retries_exhausted" 11
 * ```
 */
export class RetriesExhaustedError extends TransactionError {
  /** Attempts made, the first included. */
  readonly attempts: number;
  /**
   * Creates the error.
   * @param retries Retries allowed.
   * @param last The last failure.
   */
  constructor(retries: number, last: unknown) {
    super(
      "retries_exhausted",
      `Transaction failed after ${retries + 1} attempts: ${errorMessage(last)}`,
      {
        cause: last,
        retryable: false,
        maybeCommitted: last instanceof TransactionError && last.maybeCommitted,
      },
    );
    this.attempts = retries + 1;
  }
}
