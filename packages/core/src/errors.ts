import { redact } from './logger.js';

/**
 * Stable machine-readable codes of every error Busbar throws. Match on `error.code`, not on
 * `instanceof`, when errors may cross package copies.
 */
export type BusErrorCode =
  | 'PUBLISH_TIMEOUT'
  | 'BROKER_UNAVAILABLE'
  | 'AUTHENTICATION'
  | 'CIRCUIT_OPEN'
  | 'VALIDATION'
  | 'PAYLOAD_TOO_LARGE'
  | 'BUS_CLOSED'
  | 'CAPABILITY'
  | 'CONFIG'
  | 'TOPOLOGY'
  | 'PUBLISH_REJECTED'
  | 'BACKPRESSURE'
  | 'NON_RETRYABLE'
  | 'RETRY_LATER'
  | 'DEAD_LETTER_REQUESTED'
  | 'TIMEOUT'
  | 'DEAD_LETTER_FAILED';

/** Options shared by every {@link BusError}. */
export interface BusErrorOptions {
  /** The underlying error, kept for diagnosis. Its message is not copied into ours. */
  cause?: unknown;
  /** Override whether retrying the same operation can help. */
  retryable?: boolean;
}

/**
 * Base class of every error Busbar throws.
 *
 * - `name` is the class name, `code` a stable {@link BusErrorCode};
 * - `retryable` says whether repeating the same call may succeed (a timeout: yes; an invalid
 *   payload: never);
 * - messages are passed through {@link redact}, so a connection URL with a password never
 *   appears in them.
 */
export class BusError extends Error {
  /** Stable code for programmatic handling. */
  readonly code: BusErrorCode;
  /** Whether retrying the same operation can help. */
  readonly retryable: boolean;

  constructor(code: BusErrorCode, message: string, retryable: boolean, options: BusErrorOptions = {}) {
    super(redact(message), options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable ?? retryable;
  }
}

/**
 * A publish did not settle within its `timeoutMs`. The outcome is **unknown**: the broker may
 * have stored the message. Re-publish with the same idempotency key; consumers with an
 * idempotency store then apply its effect at most once.
 */
export class PublishTimeoutError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('PUBLISH_TIMEOUT', message, true, options);
  }
}

/** The broker cannot be reached (connection refused, lost, or not yet re-established). */
export class BrokerUnavailableError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('BROKER_UNAVAILABLE', message, true, options);
  }
}

/**
 * The broker refused the credentials or the permissions for good: RabbitMQ `ACCESS_REFUSED`
 * (connection.open / vhost), Redis `WRONGPASS` / `NOAUTH` / `NOPERM`, Kafka SASL authentication
 * or topic / group authorization failed. Never retryable: the transport stops reconnecting and
 * reports the state `'failed'`; `bus.ready()`, publishes and subscribes reject with it at once.
 */
export class AuthenticationError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('AUTHENTICATION', message, false, options);
  }
}

/**
 * The circuit breaker in front of the broker is open after repeated failures: the call was
 * refused without any I/O. It half-opens after its recovery timeout.
 */
export class CircuitOpenError extends BusError {
  /** Epoch milliseconds at which the breaker will let a trial call through. */
  readonly retryAt: number;
  constructor(message: string, retryAt: number, options: BusErrorOptions = {}) {
    super('CIRCUIT_OPEN', message, true, options);
    this.retryAt = retryAt;
  }
}

/** One problem found while validating a payload or an option. */
export interface ValidationIssue {
  /** Path into the validated value, e.g. `['user', 'email']`. */
  path: readonly PropertyKey[];
  /** Human-readable description of the problem. */
  message: string;
}

/** A payload failed its event schema, or an option / header / name is invalid. Never retryable. */
export class ValidationError extends BusError {
  /** The individual problems, when known. */
  readonly issues: readonly ValidationIssue[];
  constructor(message: string, issues: readonly ValidationIssue[] = [], options: BusErrorOptions = {}) {
    super('VALIDATION', message, false, options);
    this.issues = issues;
  }
}

/** An encoded payload is larger than `maxPayloadBytes`; rejected before any I/O. */
export class PayloadTooLargeError extends BusError {
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number) {
    super('PAYLOAD_TOO_LARGE', `payload of ${size} bytes exceeds the limit of ${limit} bytes`, false);
    this.size = size;
    this.limit = limit;
  }
}

/** The bus (or the subscription) is closing or closed. */
export class BusClosedError extends BusError {
  constructor(message = 'the bus is closed') {
    super('BUS_CLOSED', message, false);
  }
}

/** The transport cannot do what was asked (e.g. ordering per key, reading history for a new group). */
export class CapabilityError extends BusError {
  /** The capability that is missing. */
  readonly capability: string;
  constructor(capability: string, message: string) {
    super('CAPABILITY', message, false);
    this.capability = capability;
  }
}

/** Invalid configuration (bad URL, unknown transport name, name too long for the broker …). */
export class ConfigError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('CONFIG', message, false, options);
  }
}

/** In verify-only mode, the broker's topology does not match what Busbar needs. */
export class TopologyError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('TOPOLOGY', message, false, options);
  }
}

/** The broker refused the message (nack, unroutable, record too large …). */
export class PublishRejectedError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('PUBLISH_REJECTED', message, false, options);
  }
}

/** More than `maxPendingPublishes` publishes are outstanding and the overflow policy is `reject`. */
export class BackpressureError extends BusError {
  constructor(limit: number) {
    super('BACKPRESSURE', `more than ${limit} publishes are pending`, true);
  }
}

/** A generic operation timed out ({@link withTimeout}). */
export class TimeoutError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('TIMEOUT', message, true, options);
  }
}

/**
 * Throw from a handler when retrying can never help (e.g. the referenced entity does not
 * exist). The message is dead-lettered at once with reason `non-retryable`.
 */
export class NonRetryableError extends BusError {
  constructor(message: string, options: BusErrorOptions = {}) {
    super('NON_RETRYABLE', message, false, options);
  }
}

/**
 * A handler asks for a retry: thrown by `ctx.retry()`, or thrown by the handler itself. The
 * delivery counts as a failed attempt and is retried after `delayMs` (default: the policy's
 * backoff), or dead-lettered with reason `max-attempts` once the attempts are used up.
 *
 * `ctx.retry()` also records the request on the context: a handler whose own `try/catch`
 * swallows this error still gets the retry (and a warning is logged).
 */
export class RetryLaterError extends BusError {
  /** The delay asked for, ms; `undefined`: the policy's backoff. */
  readonly delayMs: number | undefined;
  constructor(message = 'handler requested a retry', options: BusErrorOptions & { delayMs?: number } = {}) {
    super('RETRY_LATER', message, true, options);
    this.delayMs = options.delayMs;
  }
}

/**
 * A handler asks for its message to go to the dead letters now, with reason
 * `handler-requested`: thrown by `ctx.deadLetter(reason)` (the message is the reason), or thrown
 * by the handler itself.
 *
 * `ctx.deadLetter()` also records the request on the context: a handler whose own `try/catch`
 * swallows this error is still dead-lettered (and a warning is logged).
 */
export class DeadLetterRequestedError extends BusError {
  /** The reason as the handler gave it (the dead letter's detail). */
  readonly reason: string;
  constructor(reason: string, options: BusErrorOptions = {}) {
    super('DEAD_LETTER_REQUESTED', reason, false, options);
    this.reason = reason;
  }
}

/**
 * Writing a dead letter failed. The original message is **not** acknowledged (it will be
 * delivered again); both errors are kept: `cause` is the dead-letter write error and
 * `handlerError` the failure that led to dead-lettering.
 */
export class DeadLetterFailedError extends BusError {
  readonly handlerError: unknown;
  constructor(message: string, handlerError: unknown, cause: unknown) {
    super('DEAD_LETTER_FAILED', message, true, { cause });
    this.handlerError = handlerError;
  }
}

/** Whether `err` is a Busbar error (works across duplicated package copies). */
export function isBusError(err: unknown): err is BusError {
  return (
    err instanceof BusError || (typeof err === 'object' && err !== null && 'code' in err && 'retryable' in err && err instanceof Error)
  );
}

/** A short, credential-free description of any thrown value. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return redact(`${err.name}: ${err.message}`);
  return redact(String(err));
}
