/**
 * The options of the application API: of the bus, of a publish, of a subscription, and the retry
 * and idempotency policies. Every field documents its default.
 */

import type { Upcasters } from './event.js';
import type { IdempotencyStore } from './idempotency.js';
import type { Interceptors } from './interceptors.js';
import type { Logger } from './logger.js';
import type { BatchingOptions } from './publish/batcher.js';
import type { BackoffOptions, CircuitBreakerOptions, Clock, RandomSource } from './resilience.js';
import type { Transport } from './spi.js';

/** Retry policy of a subscription. */
export interface RetryPolicy {
  /** Total deliveries including the first; after the last failure the message is dead-lettered. @defaultValue 5 */
  maxAttempts?: number;
  /** Backoff between attempts (exponential, full jitter, capped). @defaultValue `{ initialMs: 200, multiplier: 2, maxMs: 30000, minMs: 10 }` */
  backoff?: BackoffOptions;
}

/** Idempotency configuration of the bus. */
export interface IdempotencyOptions {
  /** The store. Use a distributed one (Redis) when more than one process consumes. */
  store: IdempotencyStore<never>;
  /** How long a completed key is remembered, ms. @defaultValue 86400000 (24 h) */
  ttlMs?: number;
  /** How long a claim is held before another delivery may take the key, ms. @defaultValue 30000 */
  leaseMs?: number;
}

/** Options of {@link EventBus}. */
export interface BusOptions {
  /** The broker transport. */
  transport: Transport;
  /** CloudEvents `source` of published events. @defaultValue `urn:busbar:<hostname>` */
  source?: string;
  /** Prefix of every broker object (tenant / environment). @defaultValue `BUSBAR_NAMESPACE` when set, else none */
  namespace?: string;
  /** Logger (pino-compatible); credentials are redacted before it sees anything. @defaultValue silent */
  logger?: Logger;
  /** Random source for jitter. @defaultValue Math.random */
  random?: RandomSource;
  /** Time source for failure timestamps in retry and dead-letter headers. @defaultValue systemClock */
  clock?: Clock;
  /** Default `timeoutMs` of a publish. @defaultValue 10000 */
  publishTimeoutMs?: number;
  /** Largest encoded payload accepted on publish and on consume, bytes. @defaultValue 1048576 */
  maxPayloadBytes?: number;
  /** Largest total size of headers accepted, bytes. @defaultValue 65536 */
  maxHeaderBytes?: number;
  /** Publishes pending at once before `publishOverflow` applies. @defaultValue 10000 */
  maxPendingPublishes?: number;
  /** `'wait'` (within the publish timeout) or `'reject'` with `BackpressureError`. @defaultValue 'wait' */
  publishOverflow?: 'wait' | 'reject';
  /**
   * Auto-batching of concurrent publishes.
   * @defaultValue `{ maxBatchSize: 500, maxInFlightBatches: transport.capabilities.orderedPublishCalls ?? 1 }`
   */
  batching?: BatchingOptions;
  /** Circuit breaker around publishing, or `false` to disable. @defaultValue `{ failureThreshold: 5, recoveryTimeoutMs: 5000 }` */
  breaker?: CircuitBreakerOptions | false;
  /** Idempotent consumption. @defaultValue none (every delivery runs the handler) */
  idempotency?: IdempotencyOptions;
  /** Default retry policy of subscriptions. */
  retry?: RetryPolicy;
  /** How long `close()` waits for in-flight handlers before aborting them, ms. @defaultValue 10000 */
  closeTimeoutMs?: number;
  /**
   * CloudEvents content mode of published messages. `'binary'`: the body is the data, the
   * attributes travel as `ce_*` headers. `'structured'`: the body is the JSON event envelope
   * (`content-type: application/cloudevents+json`), for consumers that read only that form; the
   * `ce_*` headers are written too. Consumers read both modes whatever this says; turn structured
   * on only once every consumer runs a version that reads it. @defaultValue 'binary'
   */
  contentMode?: 'binary' | 'structured';
  /**
   * Code around every publish and every handler run (logging, tracing, metrics, custom policies):
   * see `PublishInterceptor` and `HandleInterceptor`. The first registered is the
   * outermost. With none registered the bus does no work for them. @defaultValue none
   */
  interceptors?: Interceptors;
}

/** Options of {@link EventBus.publish}. */
export interface PublishOptions {
  /** Partition / ordering key. Messages with one key keep their order where the transport promises it. */
  key?: string;
  /** Idempotency key; a consumer group with an idempotency store handles each key once. @defaultValue the message id */
  idempotencyKey?: string;
  /** User headers (string values; names may not start with `ce_` nor be `content-type`). */
  headers?: Record<string, string>;
  /** Reject with `PublishTimeoutError` after this many ms. @defaultValue `BusOptions.publishTimeoutMs` */
  timeoutMs?: number;
  /** Message id. @defaultValue a random UUID */
  id?: string;
  /** W3C trace context to propagate. */
  traceparent?: string;
  /** W3C trace state to propagate. */
  tracestate?: string;
}

/** Options of {@link EventBus.subscribe}. */
export interface SubscribeOptions {
  /** Consumer group: members compete, different groups each get every message. */
  group: string;
  /** Handlers running at once for this subscription (and prefetch). @defaultValue 1 */
  concurrency?: number;
  /** Retry policy. @defaultValue the bus's `retry`, else `{ maxAttempts: 5 }` */
  retry?: RetryPolicy;
  /** Aborting it closes the subscription. */
  signal?: AbortSignal;
  /** Where a *new* group starts. `'earliest'` needs `capabilities.newGroupFromEarliest`. @defaultValue 'latest' */
  startFrom?: 'latest' | 'earliest';
  /** `'key'`: one message per key at a time, in order (needs `capabilities.orderedByKey`). @defaultValue 'none' */
  ordering?: 'none' | 'key';
  /** Abort the handler's signal and count a failure after this many ms. @defaultValue none */
  handlerTimeoutMs?: number;
  /** Extra upcasters (merged over the event's own). */
  upcasters?: Upcasters;
  /** Use the bus's idempotency store for this subscription. @defaultValue true when one is configured */
  idempotent?: boolean;
}
