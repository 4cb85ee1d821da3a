/**
 * What a handler receives beside the data ({@link HandlerContext}), and its implementation.
 */
import type { EnvelopeAttributes } from '../envelope.js';
import { DeadLetterRequestedError, RetryLaterError } from '../errors.js';
import type { EventData, EventDefinition } from '../event.js';
import { attributesOf } from './decode.js';
import type { Running } from './running.js';

/** What a handler receives beside the data. */
export interface HandlerContext {
  /** CloudEvents id. */
  readonly id: string;
  /** Idempotency key. */
  readonly idempotencyKey: string;
  /** 1-based attempt number of this delivery. */
  readonly attempt: number;
  /** The subscription's max attempts. */
  readonly maxAttempts: number;
  /**
   * User headers (without the `ce_*` attributes), in a prototype-less object; one shared frozen
   * empty object when the message has none.
   */
  readonly headers: Readonly<Record<string, string>>;
  /** All CloudEvents attributes. */
  readonly attributes: EnvelopeAttributes;
  /** Fires on shutdown past the close deadline, or at `handlerTimeoutMs`. */
  readonly signal: AbortSignal;
  /** Broker position (for logs). */
  readonly position: string;
  /**
   * Extend the broker lease / visibility (and the idempotency lease) by `ms`.
   * @throws CapabilityError where the transport has no leases (then none is needed: the message
   * stays with this consumer until settled).
   */
  extendLease(ms: number): Promise<void>;
  /**
   * Ask for a retry after `delayMs` (default: the policy's backoff). Counts as a failed attempt
   * (past the last one the message is dead-lettered with reason `max-attempts`). Throws
   * `RetryLaterError` to end the handler, and records the request: if the handler's own
   * `try/catch` swallows the error, the retry still happens (a warning is logged).
   */
  retry(options?: { delayMs?: number; reason?: string }): never;
  /**
   * Send the message to the dead letters now, with reason `handler-requested` and `reason` as its
   * detail. Throws `DeadLetterRequestedError` to end the handler, and records the request: if the
   * handler's own `try/catch` swallows the error, the message is still dead-lettered (a warning
   * is logged). The last request made wins over whatever the handler then returns or throws.
   */
  deadLetter(reason: string): never;
  /**
   * Register an effect that commits atomically with the idempotency store's completion mark
   * (exactly once per key and group). `tx` is the store's transaction type (a Redis `MULTI` for the
   * Redis store). @throws ConfigError without an idempotency store.
   */
  commitWithCompletion<TTx = unknown>(effect: (tx: TTx) => void): void;
}

/**
 * A handler. Resolve → ack; throw → retry per policy (or dead letter: `NonRetryableError`,
 * `ctx.deadLetter`).
 */
export type Handler<E extends EventDefinition> = (data: EventData<E>, ctx: HandlerContext) => unknown;

/** What a context needs from its subscription (the parts that touch the transport or the store). */
export interface ContextOwner {
  /** `ctx.extendLease`: the broker lease, then the idempotency lease. */
  extendLease(r: Running, key: string, ms: number): Promise<void>;
  /** `ctx.commitWithCompletion`. */
  addEffect(r: Running, effect: (tx: never) => void): void;
}

/**
 * The handler's context. A class with its per-delivery parts as accessors on the prototype: an
 * object literal with a getter of its own gets a map of its own, which costs more per delivery
 * than the rest of the delivery and makes every access to it megamorphic. What most handlers never
 * read (`attributes`, `signal`, `position`, `extendLease`, `commitWithCompletion`, `retry`,
 * `deadLetter`) is made on first read, not per delivery.
 */
export class DeliveryContext implements HandlerContext {
  readonly id: string;
  readonly attempt: number;
  readonly #running: Running;
  readonly #owner: ContextOwner;
  #extendLease: ((ms: number) => Promise<void>) | undefined;
  #commit: (<TTx = unknown>(effect: (tx: TTx) => void) => void) | undefined;
  #retry: ((options?: { delayMs?: number; reason?: string }) => never) | undefined;
  #deadLetter: ((reason: string) => never) | undefined;
  #attributes: EnvelopeAttributes | undefined;

  constructor(
    id: string,
    readonly idempotencyKey: string,
    readonly maxAttempts: number,
    readonly headers: Readonly<Record<string, string>>,
    running: Running,
    owner: ContextOwner,
  ) {
    this.id = id;
    this.attempt = running.attempt;
    this.#running = running;
    this.#owner = owner;
  }

  /**
   * Made on first read, from the delivery (as decoding read it): an object of 12
   * fields, the largest part of a context, that most handlers never read.
   */
  get attributes(): EnvelopeAttributes {
    this.#attributes ??= attributesOf(this.#running.delivery);
    return this.#attributes;
  }

  get position(): string {
    return this.#running.delivery.position;
  }

  /** Created when first read (an `AbortController` is costly): most handlers never read it. */
  get signal(): AbortSignal {
    const r = this.#running;
    r.controller ??= new AbortController();
    return r.controller.signal;
  }

  /** A function of its own (handlers may destructure it), made on first read. */
  get extendLease(): (ms: number) => Promise<void> {
    this.#extendLease ??= (ms) => this.#owner.extendLease(this.#running, this.idempotencyKey, ms);
    return this.#extendLease;
  }

  /** A function of its own (handlers may destructure it), made on first read. */
  get commitWithCompletion(): <TTx = unknown>(effect: (tx: TTx) => void) => void {
    this.#commit ??= (effect) => this.#owner.addEffect(this.#running, effect as (tx: never) => void);
    return this.#commit;
  }

  /** A function of its own (handlers may destructure it), made on first read; records the request. */
  get retry(): (options?: { delayMs?: number; reason?: string }) => never {
    this.#retry ??= (options = {}) => {
      const request = new RetryLaterError(options.reason ?? 'handler requested a retry', { delayMs: options.delayMs });
      this.#running.request = request;
      throw request;
    };
    return this.#retry;
  }

  /** A function of its own (handlers may destructure it), made on first read; records the request. */
  get deadLetter(): (reason: string) => never {
    this.#deadLetter ??= (reason) => {
      const request = new DeadLetterRequestedError(reason);
      this.#running.request = request;
      throw request;
    };
    return this.#deadLetter;
  }
}
