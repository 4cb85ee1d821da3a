/**
 * The record of one delivery while core runs it (see delivery/subscription.ts), and the pooled
 * promise callbacks of its common path.
 */
import type { DeadLetterRequestedError, RetryLaterError } from '../errors.js';
import type { Delivery } from '../spi.js';
import type { DeliveryContext } from './context.js';

/** One delivery from hand-over to settlement. */
export interface Running {
  delivery: Delivery;
  /** The attempt number (core's, see `attemptOf`). */
  attempt: number;
  /** Created on first use (reading `ctx.signal`, a handler timeout): most handlers never need one. */
  controller: AbortController | undefined;
  /** Core asked the transport to settle it (settle-once: nothing else is asked afterwards). */
  settled: boolean;
  /** The idempotency claim's token, while held. */
  token: string | undefined;
  /** Effects registered with `ctx.commitWithCompletion`. */
  effects: ((tx: never) => void)[] | undefined;
  /**
   * The last `ctx.retry()` / `ctx.deadLetter()` of the handler: it wins over what the handler then
   * returns or throws (a `try/catch` in the handler may have swallowed it).
   */
  request: RetryLaterError | DeadLetterRequestedError | undefined;
  /** Neighbours in the subscription's list of running deliveries (see `SubscriptionImpl.untrack`). */
  prev: Running | undefined;
  next: Running | undefined;
  /** The handler's context, once decoded (see `SubscriptionImpl.process`). */
  ctx: DeliveryContext | undefined;
  /** The decoded data, until the handler is called. */
  data: unknown;
  /** The ack was asked for (the settlement callbacks now report on it). */
  acking: boolean;
  /** When the handler was called for (epoch ms), for the outcome's `durationMs`. */
  started: number;
  /** Common path: the next delivery whose handler is due on the same microtask. */
  nextStart: Running | undefined;
}

/** A new record for `delivery` at `attempt`, every field present (one hidden class for all). */
export function running(delivery: Delivery, attempt: number, prev: Running | undefined): Running {
  return {
    delivery,
    attempt,
    controller: undefined,
    settled: false,
    token: undefined,
    effects: undefined,
    request: undefined,
    prev,
    next: undefined,
    ctx: undefined,
    data: undefined,
    acking: false,
    started: 0,
    nextStart: undefined,
  };
}

/**
 * The promise callbacks of one delivery on the common path (see `SubscriptionImpl.continuation`):
 * `r` is the delivery they serve now, `undefined` while the pair waits in the pool.
 */
export interface Continuation {
  r: Running | undefined;
  /** The next pair in the pool. */
  nextSpare: Continuation | undefined;
  readonly onFulfilled: () => void;
  readonly onRejected: (error: unknown) => void;
}
