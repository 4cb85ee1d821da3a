import { randomFillSync } from 'node:crypto';
import { hostname } from 'node:os';
import { EventEmitter } from 'eventemitter3';
import { type BatchingOptions, PublishBatcher } from './batcher.js';
import { attributesOf, type DecodedMessage, decodeInto, NO_UPCASTERS, NO_USER_HEADERS } from './decode.js';
import { attemptOf } from './delivery/attempt.js';
import { RetryHolds } from './delivery/causal-hold.js';
import {
  brokerDeadLetterMetadata,
  deadLetterHeaders,
  releaseHeaders,
  replayHeaders,
  retryHeaders,
  truncate,
} from './delivery/copy-headers.js';
import {
  type DeadLetterReason,
  type DeadLetterReasonKind,
  type DecodeLimits,
  dataSchemaUri,
  type EnvelopeAttributes,
  encodeJson,
} from './envelope.js';
import {
  BusClosedError,
  CapabilityError,
  ConfigError,
  DeadLetterFailedError,
  describeError,
  NonRetryableError,
  PayloadTooLargeError,
  ValidationError,
} from './errors.js';
import type { EventData, EventDefinition, EventInput, Upcasters } from './event.js';
import { HeaderNames as Headers, JSON_CONTENT_TYPE, RESERVED_HEADER_PREFIX, SPEC_VERSION } from './headers.js';
import type { IdempotencyStore } from './idempotency.js';
import { type Logger, redactingLogger, silentLogger } from './logger.js';
import { topicName, validateGroup, validateNamespace } from './naming.js';
import {
  type BackoffOptions,
  type BreakerState,
  backoffDelay,
  CircuitBreaker,
  type CircuitBreakerOptions,
  type Clock,
  type RandomSource,
  systemClock,
} from './resilience.js';
import type {
  ConnectionState,
  DeadLetterTarget,
  Delivery,
  OutgoingMessage,
  StoredDeadLetter,
  Transport,
  TransportHealth,
  TransportSubscription,
} from './spi.js';

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
  /** Prefix of every broker object (tenant / environment). @defaultValue none */
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

/** What `publish` resolves with. */
export interface PublishReceipt {
  /** The message id (CloudEvents `id`). */
  readonly id: string;
  /** The idempotency key it carries. */
  readonly idempotencyKey: string;
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
  /** Ask for a retry after `delayMs` (default: the policy's backoff). Counts as a failed attempt. */
  retry(options?: { delayMs?: number; reason?: string }): never;
  /** Send the message to the dead letters now with `reason`. */
  deadLetter(reason: string): never;
  /**
   * Register an effect that commits atomically with the idempotency store's completion mark
   * (exactly once per key and group). `tx` is the store's transaction type (a Redis `MULTI` for the
   * Redis store). @throws ConfigError without an idempotency store.
   */
  commitWithCompletion<TTx = unknown>(effect: (tx: TTx) => void): void;
}

/** A handler. Resolve → ack; throw → retry per policy (or dead letter). */
export type Handler<E extends EventDefinition> = (data: EventData<E>, ctx: HandlerContext) => unknown;

/** Outcome of one delivery, a discriminated union on `status`. */
export type DeliveryOutcome =
  | { readonly status: 'acked'; readonly durationMs: number }
  | { readonly status: 'duplicate' }
  | { readonly status: 'retried'; readonly delayMs: number; readonly error: string }
  | { readonly status: 'dead-lettered'; readonly reason: DeadLetterReason }
  | { readonly status: 'released' }
  | { readonly status: 'settle-failed'; readonly error: string };

/** Common fields of lifecycle events about a delivery. */
export interface DeliveryInfo {
  readonly id: string;
  readonly type: string;
  readonly topic: string;
  readonly group: string;
  readonly attempt: number;
  readonly idempotencyKey: string | undefined;
}

/** Lifecycle events (`bus.on(name, listener)`): seams for metrics and tracing. */
export interface BusEvents {
  /** A publish was confirmed durable by the transport. */
  published: [info: { id: string; type: string; topic: string }];
  /** A delivery reached the bus (before decoding). */
  delivered: [info: DeliveryInfo];
  /** A delivery was settled; `outcome.status` says how. */
  outcome: [info: DeliveryInfo, outcome: DeliveryOutcome];
  /** Transport connection state changed. */
  connection: [state: ConnectionState, detail: string | undefined];
  /** Circuit breaker state changed. */
  breaker: [state: BreakerState];
}

/** A dead letter as read back through {@link DeadLetterQueue}. */
export interface DeadLetterView {
  /** Original message id. */
  readonly id: string;
  /** Why it was dead-lettered. */
  readonly reason: DeadLetterReason;
  /** Credential-free error description. */
  readonly error: string;
  /** Attempts made. */
  readonly attempts: number;
  /** RFC 3339 times. */
  readonly firstFailure: string;
  readonly lastFailure: string;
  /** Original destination and position. */
  readonly origin: string;
  readonly position: string;
  /** Group that failed. */
  readonly group: string;
  /** All headers as stored. */
  readonly headers: Readonly<Record<string, string>>;
  /** The original body, byte-for-byte. */
  readonly body: Uint8Array;
  /** Broker handle. */
  readonly handle: string;
}

/** Options of {@link DeadLetterQueue.replay}. */
export interface ReplayOptions {
  /** Only dead letters this accepts are replayed. @defaultValue all */
  filter?: (deadLetter: DeadLetterView) => boolean;
  /** Replay at most this many. @defaultValue 1000 */
  limit?: number;
  /** Report what would be replayed; change nothing. @defaultValue false */
  dryRun?: boolean;
}

/** Dead letters of one event and group. */
export interface DeadLetterQueue {
  /** Reads up to `limit` dead letters (oldest first) without changing them. */
  list(options?: { limit?: number }): Promise<DeadLetterView[]>;
  /** Re-delivers the selected dead letters to their group only, attempt count reset. */
  replay(options?: ReplayOptions): Promise<DeadLetterView[]>;
}

/** A running subscription. */
export interface Subscription {
  /** Group name. */
  readonly group: string;
  /** Handlers running now. */
  readonly inFlight: number;
  /** Stops intake, waits for in-flight handlers up to `timeoutMs`, releases the rest. */
  close(options?: { timeoutMs?: number }): Promise<void>;
  /** Resolves when the subscription has closed (by `close`, its signal or the bus). */
  readonly closed: Promise<void>;
}

/** Health report. */
export interface BusHealth {
  readonly status: 'up' | 'degraded' | 'down';
  readonly transport: TransportHealth;
  readonly breaker: BreakerState | 'disabled';
  readonly pendingPublishes: number;
  readonly subscriptions: number;
}

const RESOLVED = Promise.resolve();
const NO_OPTIONS: PublishOptions = Object.freeze({});
const ack = (d: Delivery) => d.ack();

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as { then?: unknown }).then === 'function'
  );
}

/** `ctx.retry` (shared by every context: it needs nothing from the delivery). */
function requestRetry(options: { delayMs?: number; reason?: string } = {}): never {
  throw new RetryRequest(options.delayMs, options.reason ?? 'handler requested a retry');
}

/** `ctx.deadLetter`. */
function requestDeadLetter(reason: string): never {
  throw new DeadLetterRequest(reason);
}

/**
 * The handler's context. A class with its per-delivery parts as accessors on the prototype: an
 * object literal with a getter of its own gets a map of its own, which costs ~4 µs per delivery on
 * Node 20 (more than the rest of the delivery) and makes every access to it megamorphic. What most
 * handlers never read (`attributes`, `signal`, `position`, `extendLease`, `commitWithCompletion`)
 * is made on first read, not per delivery.
 */
class DeliveryContext implements HandlerContext {
  readonly id: string;
  readonly attempt: number;
  readonly retry = requestRetry;
  readonly deadLetter = requestDeadLetter;
  readonly #running: Running;
  readonly #sub: SubscriptionImpl;
  #extendLease: ((ms: number) => Promise<void>) | undefined;
  #commit: (<TTx = unknown>(effect: (tx: TTx) => void) => void) | undefined;
  #attributes: EnvelopeAttributes | undefined;

  constructor(
    id: string,
    readonly idempotencyKey: string,
    readonly maxAttempts: number,
    readonly headers: Readonly<Record<string, string>>,
    running: Running,
    sub: SubscriptionImpl,
  ) {
    this.id = id;
    this.attempt = running.attempt;
    this.#running = running;
    this.#sub = sub;
  }

  /**
   * Made on first read, from the delivery's headers (as decoding had them): an object of 12
   * fields, the largest part of a context, that most handlers never read.
   */
  get attributes(): EnvelopeAttributes {
    this.#attributes ??= attributesOf(this.#running.delivery.headers);
    return this.#attributes;
  }

  get position(): string {
    return this.#running.delivery.position;
  }

  /** Created when first read (an `AbortController` costs several µs): most handlers never read it. */
  get signal(): AbortSignal {
    const r = this.#running;
    r.controller ??= new AbortController();
    return r.controller.signal;
  }

  /** A function of its own (handlers may destructure it), made on first read. */
  get extendLease(): (ms: number) => Promise<void> {
    this.#extendLease ??= (ms) => this.#sub.extendLease(this.#running, this.idempotencyKey, ms);
    return this.#extendLease;
  }

  /** A function of its own (handlers may destructure it), made on first read. */
  get commitWithCompletion(): <TTx = unknown>(effect: (tx: TTx) => void) => void {
    this.#commit ??= (effect) => this.#sub.addEffect(this.#running, effect as (tx: never) => void);
    return this.#commit;
  }
}

class RetryRequest {
  constructor(
    readonly delayMs: number | undefined,
    readonly reason: string,
  ) {}
}
class DeadLetterRequest {
  constructor(readonly reason: string) {}
}

const HEADER_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

/**
 * The event bus: typed publish / subscribe over any {@link Transport}.
 *
 * - `publish` resolves only when the transport reports the message durable (see the transport's
 *   `capabilities.durability`), and rejects with a typed error otherwise. It is safe to call
 *   concurrently; concurrent publishes are coalesced into batches automatically.
 * - Delivery is **at-least-once**: a message is acknowledged only after its handler resolved; a
 *   crash redelivers it. Use idempotency keys (and an idempotency store) for effects that must
 *   happen once.
 * - Failed handlers are retried per policy, the delay held by the broker, for the failing group
 *   only; exhausted or hopeless messages go to that group's dead letters with their reason.
 */
export class EventBus extends EventEmitter<BusEvents> {
  /** The transport (for capabilities and health). */
  readonly transport: Transport;
  private readonly logger: Logger;
  private readonly source: string;
  private readonly namespace: string | undefined;
  private readonly random: RandomSource;
  private readonly publishTimeoutMs: number;
  private readonly maxPayloadBytes: number;
  private readonly maxHeaderBytes: number;
  private readonly breaker: CircuitBreaker | undefined;
  private readonly batcher: PublishBatcher;
  private readonly subscriptions = new Set<SubscriptionImpl>();
  private readonly connecting: Promise<void>;
  /** `connecting` resolved: publishes need not wait a microtask for it. */
  private connected = false;
  /** Per event definition: its topic, `dataschema` and version header (computed once, not per publish). */
  private readonly eventMeta = new WeakMap<EventDefinition, EventMeta>();
  private readonly internalsView: BusInternals;
  private state: 'open' | 'closing' | 'closed' = 'open';
  private closing: Promise<void> | undefined;

  constructor(readonly options: BusOptions) {
    super();
    this.transport = options.transport;
    this.logger = redactingLogger(options.logger ?? silentLogger);
    this.source = options.source ?? `urn:busbar:${hostname()}`;
    this.namespace = options.namespace === undefined ? undefined : validateNamespace(options.namespace);
    this.random = options.random ?? Math.random;
    this.publishTimeoutMs = positive(options.publishTimeoutMs ?? 10_000, 'publishTimeoutMs');
    this.maxPayloadBytes = positive(options.maxPayloadBytes ?? 1024 * 1024, 'maxPayloadBytes');
    this.maxHeaderBytes = positive(options.maxHeaderBytes ?? 64 * 1024, 'maxHeaderBytes');
    this.breaker =
      options.breaker === false
        ? undefined
        : new CircuitBreaker({
            name: this.transport.name,
            ...options.breaker,
            onStateChange: (s) => {
              this.logger.warn({ breaker: s, transport: this.transport.name }, 'circuit breaker state changed');
              this.emit('breaker', s);
              if (options.breaker) options.breaker.onStateChange?.(s);
            },
          });
    this.batcher = new PublishBatcher({
      transport: this.transport,
      breaker: this.breaker,
      maxPending: positive(options.maxPendingPublishes ?? 10_000, 'maxPendingPublishes'),
      overflow: options.publishOverflow ?? 'wait',
      ...options.batching,
      maxInFlightBatches: options.batching?.maxInFlightBatches ?? this.transport.capabilities.orderedPublishCalls,
      onSent: (m) => {
        if (this.listenerCount('published') > 0) this.emit('published', { id: m.id, type: m.headers[Headers.type] ?? '', topic: m.topic });
      },
    });
    this.connecting = this.transport
      .connect({
        logger: this.logger,
        // Deferred: a transport may report its state before the constructor returned and
        // before anyone could call bus.on('connection').
        emit: (e) => queueMicrotask(() => this.emit('connection', e.state, e.detail)),
      })
      .catch((error: unknown) => {
        this.logger.error({ err: describeError(error) }, 'transport failed to connect');
        throw error;
      });
    // Avoid an unhandled rejection when nobody awaits `ready()`; errors surface on use.
    this.connecting.then(
      () => {
        this.connected = true;
      },
      () => {},
    );
    this.internalsView = Object.freeze({
      logger: this.logger,
      random: this.random,
      clock: options.clock ?? systemClock,
      maxPayloadBytes: this.maxPayloadBytes,
      maxHeaderBytes: this.maxHeaderBytes,
    });
  }

  /** Resolves once the transport connected (or rejects with its configuration error). */
  ready(): Promise<void> {
    return this.connecting;
  }

  /** The broker-level name of an event's destination (namespace applied). */
  topicOf(event: EventDefinition): string {
    return topicName(this.namespace, event.type);
  }

  /**
   * Publishes `data` as `event`. Validates against the schema and size limit before any I/O
   * (`ValidationError`, `PayloadTooLargeError`), then resolves once the transport reports the
   * message durable. Rejects with `PublishTimeoutError` (outcome unknown: re-publish with the same
   * idempotency key), `BrokerUnavailableError`, `CircuitOpenError`, `PublishRejectedError`,
   * `BackpressureError` or `BusClosedError`.
   */
  publish<E extends EventDefinition>(event: E, data: EventInput<E>, options: PublishOptions = NO_OPTIONS): Promise<PublishReceipt> {
    // Not an async function: this runs once per message, and a chain of plain promises costs less
    // than an async function's suspension. Every failure still rejects; nothing throws.
    let message: OutgoingMessage;
    try {
      if (this.state !== 'open') throw new BusClosedError();
      message = this.encode(event, data, options);
      this.breaker?.assertNotOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    const receipt: PublishReceipt = { id: message.id, idempotencyKey: message.headers[Headers.idempotencyKey] as string };
    const timeoutMs = options.timeoutMs ?? this.publishTimeoutMs;
    // The batcher's promise resolves with the receipt itself: no `.then(() => receipt)` (a closure,
    // a promise and a reaction) per publish.
    return this.connected
      ? this.batcher.publish(message, timeoutMs, receipt)
      : this.connecting.then(() => this.batcher.publish(message, timeoutMs, receipt));
  }

  /** Builds the outgoing message without sending it (validation included). */
  encode<E extends EventDefinition>(event: E, data: EventInput<E>, options: PublishOptions = {}): OutgoingMessage {
    const parsed = event.schema.safeParse(data);
    if (!parsed.success) {
      throw new ValidationError(
        `payload for "${event.type}" does not match its schema`,
        parsed.error.issues.map((i) => ({ path: i.path, message: i.message })),
      );
    }
    const body = encodeJson(parsed.data);
    if (body.byteLength > this.maxPayloadBytes) throw new PayloadTooLargeError(body.byteLength, this.maxPayloadBytes);
    const id = options.id ?? uuidV4();
    const user = options.headers;
    let userHeaders: Record<string, string> | undefined;
    if (user !== undefined) {
      userHeaders = {};
      let headerBytes = 0;
      for (const k of Object.keys(user)) {
        const v = user[k];
        if (!HEADER_NAME.test(k) || k.startsWith(RESERVED_HEADER_PREFIX) || k.toLowerCase() === Headers.contentType) {
          throw new ValidationError(`header name "${k.slice(0, 60)}" is invalid or reserved`);
        }
        if (typeof v !== 'string') throw new ValidationError(`header "${k}" must be a string`);
        headerBytes += k.length + v.length;
        userHeaders[k] = v;
      }
      if (headerBytes > this.maxHeaderBytes / 2) throw new ValidationError(`user headers exceed ${this.maxHeaderBytes / 2} bytes`);
    }
    if (options.key !== undefined && (typeof options.key !== 'string' || options.key.length === 0 || options.key.length > 1024)) {
      throw new ValidationError('key must be a non-empty string of at most 1024 characters');
    }
    const idempotencyKey = options.idempotencyKey ?? id;
    if (typeof idempotencyKey !== 'string' || idempotencyKey.length === 0 || idempotencyKey.length > 512) {
      throw new ValidationError('idempotencyKey must be a non-empty string of at most 512 characters');
    }
    const meta = this.metaOf(event);
    let headers: Record<string, string>;
    if (userHeaders === undefined) {
      // One literal (the `Headers` names spelled out): an object of exactly these 9 fields in one
      // allocation, where adding them one by one regrows its property store twice.
      headers = {
        ce_id: id,
        ce_source: this.source,
        ce_specversion: SPEC_VERSION,
        ce_type: event.type,
        ce_time: isoNow(),
        'content-type': JSON_CONTENT_TYPE,
        ce_dataschema: meta.dataschema,
        ce_eventversion: meta.version,
        ce_idempotencykey: idempotencyKey,
      };
    } else {
      headers = userHeaders;
      headers[Headers.id] = id;
      headers[Headers.source] = this.source;
      headers[Headers.specversion] = SPEC_VERSION;
      headers[Headers.type] = event.type;
      headers[Headers.time] = isoNow();
      headers[Headers.contentType] = JSON_CONTENT_TYPE;
      headers[Headers.dataschema] = meta.dataschema;
      headers[Headers.eventVersion] = meta.version;
      headers[Headers.idempotencyKey] = idempotencyKey;
    }
    if (options.key !== undefined) headers[Headers.partitionKey] = options.key;
    if (options.traceparent) headers[Headers.traceparent] = options.traceparent;
    if (options.tracestate) headers[Headers.tracestate] = options.tracestate;
    return { topic: meta.topic, id, key: options.key, headers, body };
  }

  /** Topic, `dataschema` and version header of `event`, computed on its first publish. */
  private metaOf(event: EventDefinition): EventMeta {
    let meta = this.eventMeta.get(event);
    if (meta === undefined || meta.type !== event.type || meta.versionNumber !== event.version) {
      meta = {
        type: event.type,
        versionNumber: event.version,
        topic: this.topicOf(event),
        dataschema: dataSchemaUri(event.type, event.version),
        version: String(event.version),
      };
      this.eventMeta.set(event, meta);
    }
    return meta;
  }

  /**
   * Subscribes `handler` to `event` as a member of `options.group`. Resolves once the group's
   * starting position is fixed: nothing published after it resolves is missed by the group.
   * @throws CapabilityError for `ordering: 'key'` / `startFrom: 'earliest'` the transport lacks.
   */
  async subscribe<E extends EventDefinition>(event: E, options: SubscribeOptions, handler: Handler<E>): Promise<Subscription> {
    if (this.state !== 'open') throw new BusClosedError();
    validateGroup(options.group);
    const caps = this.transport.capabilities;
    const ordering = options.ordering ?? 'none';
    const startFrom = options.startFrom ?? 'latest';
    if (ordering === 'key' && !caps.orderedByKey) {
      throw new CapabilityError('orderedByKey', `transport ${this.transport.name} cannot keep per-key order for a group`);
    }
    if (startFrom === 'earliest' && !caps.newGroupFromEarliest) {
      throw new CapabilityError(
        'newGroupFromEarliest',
        `transport ${this.transport.name} cannot start a new group at the earliest message`,
      );
    }
    const concurrency = options.concurrency ?? 1;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 10_000) {
      throw new ConfigError(`concurrency must be an integer in 1..10000, got ${concurrency}`);
    }
    const retry = { ...this.options.retry, ...options.retry };
    const maxAttempts = retry.maxAttempts ?? 5;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1) throw new ConfigError(`retry.maxAttempts must be an integer ≥ 1`);
    if (options.signal?.aborted) throw new BusClosedError('the subscription signal is already aborted');
    await this.connecting;
    const sub = new SubscriptionImpl(this, event, options, handler as Handler<EventDefinition>, {
      topic: this.topicOf(event),
      concurrency,
      maxAttempts,
      backoff: retry.backoff ?? {},
      ordering,
      startFrom,
    });
    await sub.start();
    this.subscriptions.add(sub);
    void sub.closed.then(() => this.subscriptions.delete(sub));
    if (this.state !== 'open') {
      await sub.close();
      throw new BusClosedError();
    }
    return sub;
  }

  /** The dead letters of `event` for `group`, to list and replay. */
  deadLetters(event: EventDefinition, group: string): DeadLetterQueue {
    validateGroup(group);
    const target = { topic: this.topicOf(event), group };
    const scan = async (options: ReplayOptions, dryRun: boolean): Promise<DeadLetterView[]> => {
      const chosen: DeadLetterView[] = [];
      const limit = options.limit ?? 1000;
      await this.connecting;
      await this.transport.processDeadLetters(target, {
        limit,
        dryRun,
        select: (stored) => {
          const view = toDeadLetterView(stored, target, this.transport.name, this.internalsView.clock.now());
          if (options.filter && !options.filter(view)) return undefined;
          chosen.push(view);
          return replayHeaders(stored.headers);
        },
      });
      return chosen;
    };
    return {
      list: (o = {}) => scan({ limit: o.limit ?? 1000 }, true),
      replay: (o = {}) => scan(o, o.dryRun ?? false),
    };
  }

  /** Health: transport connection state, breaker state, pending publishes. */
  health(): BusHealth {
    const transport = this.transport.health();
    const breaker = this.breaker?.state ?? 'disabled';
    const status =
      this.state !== 'open' || transport.state === 'closed'
        ? 'down'
        : transport.state === 'connected' && breaker === 'closed'
          ? 'up'
          : transport.state === 'disconnected'
            ? 'down'
            : 'degraded';
    return { status, transport, breaker, pendingPublishes: this.batcher.pendingCount, subscriptions: this.subscriptions.size };
  }

  /**
   * Graceful shutdown: refuses new publishes and subscriptions, stops every subscription's intake,
   * waits for in-flight handlers up to `timeoutMs` (then aborts their signals and releases their
   * messages for redelivery), waits for pending publishes to settle, then closes the transport.
   * Idempotent.
   */
  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closing) return this.closing;
    this.state = 'closing';
    const timeoutMs = options.timeoutMs ?? this.options.closeTimeoutMs ?? 10_000;
    this.closing = (async () => {
      await Promise.allSettled([...this.subscriptions].map((s) => s.close({ timeoutMs })));
      await this.batcher.drain();
      try {
        await this.transport.close();
      } finally {
        this.state = 'closed';
      }
    })();
    return this.closing;
  }

  /** @internal */
  get internals(): BusInternals {
    return this.internalsView;
  }
}

/** @internal What subscriptions read from their bus. */
interface BusInternals {
  readonly logger: Logger;
  readonly random: RandomSource;
  readonly clock: Clock;
  readonly maxPayloadBytes: number;
  readonly maxHeaderBytes: number;
}

interface EventMeta {
  readonly type: string;
  readonly versionNumber: number;
  readonly topic: string;
  readonly dataschema: string;
  readonly version: string;
}

/** Random bytes for {@link uuidV4}, drawn from the CSPRNG 4 KiB at a time; each byte is used once. */
const uuidRandom = Buffer.alloc(4096);
let uuidRandomUsed = uuidRandom.length;
/** Where {@link uuidV4} formats an id (the dashes stay in place). */
const uuidText = Buffer.from('00000000-0000-4000-8000-000000000000', 'latin1');
const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');
/** Offsets in `uuidText` of the 16 bytes' first hex digit. */
const UUID_DIGIT_AT = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/**
 * A random (version 4) UUID, as `crypto.randomUUID()` makes it — 122 bits from the CSPRNG, in the
 * same lower-case form — but formatted in a reused buffer into one flat string: Node's builds it
 * from ~20 concatenated pieces (~600 bytes of garbage per id, as much as the rest of a header set).
 */
function uuidV4(): string {
  if (uuidRandomUsed + 16 > uuidRandom.length) {
    randomFillSync(uuidRandom);
    uuidRandomUsed = 0;
  }
  const r = uuidRandom;
  const o = uuidRandomUsed;
  uuidRandomUsed += 16;
  r[o + 6] = ((r[o + 6] as number) & 0x0f) | 0x40; // version 4
  r[o + 8] = ((r[o + 8] as number) & 0x3f) | 0x80; // RFC 4122 variant
  for (let i = 0; i < 16; i++) {
    const b = r[o + i] as number;
    const at = UUID_DIGIT_AT[i] as number;
    uuidText[at] = HEX_DIGITS[b >> 4] as number;
    uuidText[at + 1] = HEX_DIGITS[b & 0x0f] as number;
  }
  return uuidText.toString('latin1', 0, 36);
}

let isoMs = Number.NaN;
let isoText = '';

/** `new Date().toISOString()`, formatted once per millisecond (it costs more than the rest of a header set). */
function isoNow(): string {
  const ms = Date.now();
  if (ms !== isoMs) {
    isoMs = ms;
    isoText = new Date(ms).toISOString();
  }
  return isoText;
}

interface ResolvedSubscription {
  topic: string;
  concurrency: number;
  maxAttempts: number;
  backoff: BackoffOptions;
  ordering: 'none' | 'key';
  startFrom: 'latest' | 'earliest';
}

interface Running {
  delivery: Delivery;
  /** The attempt number (core's, see `attemptOf`). */
  attempt: number;
  /** Created on first use (reading `ctx.signal`, a handler timeout): most handlers never need one. */
  controller: AbortController | undefined;
  settled: boolean;
  /** The idempotency claim's token, while held. */
  token: string | undefined;
  /** Effects registered with `ctx.commitWithCompletion`. */
  effects: ((tx: never) => void)[] | undefined;
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

/**
 * The promise callbacks of one delivery on the common path (see `SubscriptionImpl.continuation`):
 * `r` is the delivery they serve now, `undefined` while the pair waits in the pool.
 */
interface Continuation {
  r: Running | undefined;
  /** The next pair in the pool. */
  nextSpare: Continuation | undefined;
  readonly onFulfilled: () => void;
  readonly onRejected: (error: unknown) => void;
}

/**
 * Where `SubscriptionImpl.process` has each delivery decoded (`decodeInto` fills it, synchronously,
 * and `process` copies it out at once): one object for every subscription, not one per delivery.
 */
const decoded: DecodedMessage = { data: undefined, id: '', idempotencyKey: '', userHeaders: NO_USER_HEADERS, attributes: undefined };

class SubscriptionImpl implements Subscription {
  private transportSub: TransportSubscription | undefined;
  /**
   * Deliveries running now, oldest first: a list linked through the `Running` records rather than a
   * `Set`, whose add and delete per delivery allocate (its table is rebuilt as entries come and go).
   */
  private first: Running | undefined;
  private last: Running | undefined;
  private runningCount = 0;
  /** Set by `close` while it waits for the running deliveries to finish; called when none is left. */
  private drained: (() => void) | undefined;
  private closing: Promise<void> | undefined;
  private resolveClosed!: () => void;
  readonly closed = new Promise<void>((r) => {
    this.resolveClosed = r;
  });
  private readonly store: IdempotencyOptions | undefined;
  private readonly scope: string;
  private readonly limits: DecodeLimits;
  /**
   * Common path: deliveries whose handlers are due, oldest first, linked through
   * `Running.nextStart`. The first one of a synchronous burst of deliveries queues one microtask
   * ({@link startHandlers}) that starts them all, in delivery order.
   */
  private startsHead: Running | undefined;
  private startsTail: Running | undefined;
  /**
   * Common path: promise callback pairs no delivery uses now (see {@link continuation}), linked
   * through `nextSpare` (an array's store would be reallocated as the pool empties and refills).
   */
  private spare: Continuation | undefined;
  private readonly upcasters: Upcasters;
  /** Retries still settling, whose copies must wait (causal order of outcomes). */
  private readonly holds = new RetryHolds();
  private readonly startHandlers = (): void => {
    let r = this.startsHead;
    this.startsHead = this.startsTail = undefined;
    while (r) {
      const next = r.nextStart;
      r.nextStart = undefined;
      try {
        this.runHandler(r);
      } catch (error) {
        this.crashed(r, error);
      }
      r = next;
    }
  };

  constructor(
    private readonly bus: EventBus,
    private readonly event: EventDefinition,
    private readonly options: SubscribeOptions,
    private readonly handler: Handler<EventDefinition>,
    private readonly resolved: ResolvedSubscription,
  ) {
    this.store = options.idempotent === false ? undefined : bus.options.idempotency;
    this.scope = `${resolved.topic}|${options.group}`;
    const { maxPayloadBytes, maxHeaderBytes } = bus.internals;
    this.limits = { maxPayloadBytes, maxHeaderBytes };
    this.upcasters = options.upcasters ?? NO_UPCASTERS;
  }

  get group(): string {
    return this.options.group;
  }

  get inFlight(): number {
    return this.runningCount;
  }

  async start(): Promise<void> {
    this.transportSub = await this.bus.transport.subscribe(
      {
        topic: this.resolved.topic,
        group: this.options.group,
        concurrency: this.resolved.concurrency,
        startFrom: this.resolved.startFrom,
        orderedByKey: this.resolved.ordering === 'key',
      },
      (d) => this.onDelivery(d),
    );
    this.options.signal?.addEventListener('abort', () => void this.close(), { once: true });
    // The signal may have fired while the transport was subscribing (the listener was not there yet).
    if (this.options.signal?.aborted) void this.close();
  }

  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closing) return this.closing;
    const timeoutMs = options.timeoutMs ?? this.bus.options.closeTimeoutMs ?? 10_000;
    this.closing = (async () => {
      try {
        await this.transportSub?.stop();
        const all =
          this.runningCount === 0
            ? RESOLVED
            : new Promise<void>((resolve) => {
                this.drained = resolve;
              });
        let timer: NodeJS.Timeout | undefined;
        const timedOut = await Promise.race([
          all.then(() => false),
          new Promise<boolean>((r) => {
            timer = setTimeout(() => r(true), timeoutMs);
          }),
        ]);
        clearTimeout(timer);
        if (timedOut) {
          for (const r of this.runningNow()) {
            r.controller ??= new AbortController();
            r.controller.abort(new BusClosedError('subscription closed before the handler finished'));
            await this.settle(r, { status: 'released' }, (d) => d.release(releaseHeaders(d.headers, r.attempt)), undefined);
          }
        }
        await this.transportSub?.close();
      } finally {
        this.resolveClosed();
      }
    })();
    return this.closing;
  }

  private info(r: Running, idempotencyKey?: string): DeliveryInfo {
    return {
      id: r.delivery.headers[Headers.id] ?? '',
      type: this.event.type,
      topic: this.resolved.topic,
      group: this.options.group,
      attempt: r.attempt,
      idempotencyKey,
    };
  }

  private onDelivery(delivery: Delivery): void {
    const running: Running = {
      delivery,
      attempt: attemptOf(delivery),
      controller: undefined,
      settled: false,
      token: undefined,
      effects: undefined,
      prev: this.last,
      next: undefined,
      ctx: undefined,
      data: undefined,
      acking: false,
      started: 0,
      nextStart: undefined,
    };
    if (this.last) this.last.next = running;
    else this.first = running;
    this.last = running;
    this.runningCount++;
    const hold = running.attempt > 1 ? this.holds.holdFor(delivery.headers[Headers.id], running.attempt) : undefined;
    if (hold === undefined) this.process(running);
    else void hold.then(() => this.processHeld(running));
  }

  /** A retry copy that was held until the retry that wrote it settled (see {@link RetryHolds}). */
  private processHeld(r: Running): void {
    if (r.settled)
      this.untrack(r); // released on close while held: the message comes back
    else this.process(r);
  }

  /** Takes a finished delivery off the running list (once, by the path that ended it). */
  private untrack(r: Running): void {
    if (r.prev) r.prev.next = r.next;
    else this.first = r.next;
    if (r.next) r.next.prev = r.prev;
    else this.last = r.prev;
    r.prev = r.next = undefined;
    if (--this.runningCount === 0 && this.drained) {
      const drained = this.drained;
      this.drained = undefined;
      drained();
    }
  }

  private logCrash(error: unknown): void {
    this.bus.internals.logger.error({ err: describeError(error), group: this.options.group }, 'delivery processing failed');
  }

  /** An unexpected failure while processing a delivery: logged; the delivery, unsettled, comes back. */
  private crashed(r: Running, error: unknown): void {
    try {
      this.logCrash(error);
    } finally {
      this.untrack(r);
    }
  }

  /** The deliveries running now, oldest first (a copy: settling them changes the list). */
  private runningNow(): Running[] {
    const out: Running[] = [];
    for (let r = this.first; r; r = r.next) out.push(r);
    return out;
  }

  /** Settles a delivery once; a later settle attempt (e.g. after a release on close) is ignored. */
  private async settle(
    r: Running,
    outcome: DeliveryOutcome,
    op: (delivery: Delivery) => Promise<void>,
    idempotencyKey: string | undefined,
  ): Promise<boolean> {
    if (r.settled) return false;
    r.settled = true;
    try {
      await op(r.delivery);
    } catch (error) {
      this.settleFailed(r, error, outcome.status, idempotencyKey);
      return false;
    }
    if (this.bus.listenerCount('outcome') > 0) this.bus.emit('outcome', this.info(r, idempotencyKey), outcome);
    return true;
  }

  /** Logs and reports a settlement the transport refused (the message will be redelivered). */
  private settleFailed(r: Running, error: unknown, wanted: DeliveryOutcome['status'], idempotencyKey: string | undefined): void {
    const info = this.info(r, idempotencyKey);
    const failed: DeliveryOutcome = { status: 'settle-failed', error: describeError(error) };
    this.bus.internals.logger.error({ ...info, err: failed.error, wanted }, 'could not settle delivery; it will be redelivered');
    this.bus.emit('outcome', info, failed);
  }

  private async deadLetter(r: Running, reason: DeadLetterReason, handlerError: unknown, key: string | undefined): Promise<void> {
    const d = r.delivery;
    const headers = deadLetterHeaders(d.headers, {
      reason,
      error: reason.detail,
      attempts: r.attempt,
      origin: this.resolved.topic,
      position: d.position,
      group: this.options.group,
      nowMs: this.bus.internals.clock.now(),
    });
    this.bus.internals.logger.warn({ ...this.info(r, key), reason: reason.kind, detail: reason.detail }, 'dead-lettering message');
    await this.settle(
      r,
      { status: 'dead-lettered', reason },
      async () => {
        try {
          await r.delivery.deadLetter(headers);
        } catch (error) {
          throw new DeadLetterFailedError(
            `dead-letter write failed: ${describeError(error)}; handler failure: ${reason.detail}`,
            handlerError,
            error,
          );
        }
      },
      key,
    );
  }

  /** `ctx.extendLease`: the broker lease, then the idempotency lease. */
  async extendLease(r: Running, key: string, ms: number): Promise<void> {
    const d = r.delivery;
    if (!d.extendLease) {
      throw new CapabilityError('leaseExtension', `transport ${this.bus.transport.name} has no leases to extend`);
    }
    await d.extendLease(ms);
    const store = this.store;
    if (store && r.token && store.store.extend) await store.store.extend(this.scope, key, r.token, ms);
  }

  /** `ctx.commitWithCompletion`. */
  addEffect(r: Running, effect: (tx: never) => void): void {
    if (!this.store) throw new ConfigError('commitWithCompletion needs an idempotency store (BusOptions.idempotency)');
    r.effects ??= [];
    r.effects.push(effect);
  }

  /**
   * Runs one delivery to its settlement, taking it off the running list when done. Never throws:
   * an unexpected failure is logged and the delivery, left unsettled, comes back (at-least-once).
   *
   * The common case (decoded, no idempotency store, no handler timeout) is a chain of three
   * promise reactions (handler start, handler result, ack) whose state lives in `r`: one reaction
   * per burst of deliveries starts their handlers, then one pair of callbacks, taken from a pool
   * ({@link continuation}), serves both the handler's result and the ack. An async function costs
   * a suspended frame with its whole register file plus, per `await`, a promise and its resume
   * closures. Everything else runs in {@link processAsync}, which ends in the same ack
   * ({@link ackDelivery}).
   */
  private process(r: Running): void {
    const d = r.delivery;
    const bus = this.bus;
    let failure: DeadLetterReason | undefined;
    try {
      if (bus.listenerCount('delivered') > 0) bus.emit('delivered', this.info(r));
      failure = decodeInto(d, this.event, this.limits, this.upcasters, decoded, false);
    } catch (error) {
      this.crashed(r, error);
      return;
    }
    if (failure !== undefined) {
      void this.processAsync(r, failure);
      return;
    }
    r.data = decoded.data;
    r.ctx = new DeliveryContext(decoded.id, decoded.idempotencyKey, this.resolved.maxAttempts, decoded.userHeaders, r, this);
    decoded.data = undefined; // `decoded` holds no message between deliveries
    decoded.userHeaders = NO_USER_HEADERS;
    if (this.store || this.options.handlerTimeoutMs !== undefined) {
      void this.processAsync(r, undefined);
      return;
    }
    r.started = Date.now();
    // The handler runs on a later microtask, never inside the transport's delivery callback.
    if (this.startsTail) this.startsTail.nextStart = r;
    else {
      this.startsHead = r;
      RESOLVED.then(this.startHandlers);
    }
    this.startsTail = r;
  }

  /** Common path, on a later microtask (see {@link startHandlers}): runs the handler. */
  private runHandler(r: Running): void {
    const data = r.data;
    r.data = undefined;
    let result: unknown;
    try {
      result = this.handler(data, r.ctx as DeliveryContext);
    } catch (error) {
      this.fastHandlerFailed(r, error);
      return;
    }
    if (!isThenable(result)) {
      this.ackDelivery(r, undefined);
      return;
    }
    const k = this.continuation(r);
    // `Promise.resolve` returns a native promise as it is, and makes any other thenable safe to
    // chain: either way each callback is called at most once, which the pool relies on.
    Promise.resolve(result).then(k.onFulfilled, k.onRejected);
  }

  /**
   * A pair of promise callbacks for `r`, from the pool. A pair goes back to the pool only once
   * neither callback is still registered anywhere ({@link resume}), so the pool holds at most as
   * many pairs as deliveries ran at once, and a delivery costs no closures of its own.
   */
  private continuation(r: Running): Continuation {
    let k = this.spare;
    if (k !== undefined) {
      this.spare = k.nextSpare;
      k.nextSpare = undefined;
    } else {
      const c: Continuation = {
        r: undefined,
        nextSpare: undefined,
        onFulfilled: () => this.resume(c, false, undefined),
        onRejected: (error: unknown) => this.resume(c, true, error),
      };
      k = c;
    }
    k.r = r;
    return k;
  }

  /** Common path: the handler's result, then the ack's, arrived. */
  private resume(k: Continuation, rejected: boolean, error: unknown): void {
    const r = k.r as Running;
    k.r = undefined;
    let chained = false;
    if (r.acking) {
      if (rejected) this.ackFailed(r, error);
      else this.acked(r);
    } else if (rejected) this.fastHandlerFailed(r, error);
    else chained = this.ackDelivery(r, k);
    if (!chained) {
      k.nextSpare = this.spare;
      this.spare = k;
    }
  }

  /**
   * The handler succeeded: acks `r`, then reports the outcome and takes `r` off the running list
   * (`settle(r, acked, ack, key)`, without its async frame). Both paths end here. Returns whether
   * `k` (or a pair from the pool, without `k`) now waits for the ack.
   */
  private ackDelivery(r: Running, k: Continuation | undefined): boolean {
    if (r.settled) {
      this.untrack(r); // released on close while running: the message comes back
      return false;
    }
    r.settled = true;
    r.acking = true;
    let acking: Promise<void>;
    try {
      acking = Promise.resolve(r.delivery.ack());
    } catch (error) {
      this.ackFailed(r, error);
      return false;
    }
    if (k === undefined) k = this.continuation(r);
    else k.r = r;
    acking.then(k.onFulfilled, k.onRejected);
    return true;
  }

  /** Acked; report the outcome to listeners. */
  private acked(r: Running): void {
    try {
      const bus = this.bus;
      if (bus.listenerCount('outcome') > 0) {
        bus.emit('outcome', this.info(r, r.ctx?.idempotencyKey), { status: 'acked', durationMs: Date.now() - r.started });
      }
    } catch (error) {
      this.crashed(r, error);
      return;
    }
    this.untrack(r);
  }

  /** The transport refused the ack. */
  private ackFailed(r: Running, error: unknown): void {
    try {
      this.settleFailed(r, error, 'acked', r.ctx?.idempotencyKey);
    } catch (e) {
      this.crashed(r, e);
      return;
    }
    this.untrack(r);
  }

  /** Common path: the handler threw or rejected. */
  private fastHandlerFailed(r: Running, error: unknown): void {
    this.handlerFailed(r, error, (r.ctx as DeliveryContext).idempotencyKey).then(
      () => this.untrack(r),
      (e: unknown) => this.crashed(r, e),
    );
  }

  /**
   * {@link process} for a delivery that failed to decode (`failure`), or runs with an idempotency
   * store or a handler timeout.
   */
  private async processAsync(r: Running, failure: DeadLetterReason | undefined): Promise<void> {
    /** Set once {@link ackDelivery} took the delivery over (it takes it off the running list). */
    let acking = false;
    try {
      if (failure !== undefined) {
        await this.deadLetter(r, failure, undefined, undefined);
        return;
      }
      const ctx = r.ctx as DeliveryContext;
      const data = r.data;
      r.data = undefined;
      const key = ctx.idempotencyKey;
      const store = this.store;
      if (store) {
        let claim: Awaited<ReturnType<IdempotencyStore['claim']>>;
        try {
          claim = await store.store.claim(this.scope, key, store.leaseMs ?? 30_000);
        } catch (error) {
          await this.retryOrDeadLetter(r, error, undefined, key);
          return;
        }
        if (claim.status === 'completed') {
          await this.settle(r, { status: 'duplicate' }, ack, key);
          return;
        }
        if (claim.status === 'in-progress') {
          await this.retryOrDeadLetter(r, new Error(`idempotency key ${key} is being handled elsewhere`), undefined, key);
          return;
        }
        r.token = claim.token;
      }

      r.started = Date.now();
      try {
        // The handler runs on a later microtask, never inside the transport's delivery callback.
        await RESOLVED;
        const result: unknown = this.handler(data, ctx);
        const timeoutMs = this.options.handlerTimeoutMs;
        if (timeoutMs !== undefined) await this.withTimeout(r, result, timeoutMs);
        else if (isThenable(result)) await result;
      } catch (error) {
        await this.handlerFailed(r, error, key);
        return;
      }
      if (r.settled) return; // released on close while running: the message comes back
      const token = r.token;
      if (store && token) {
        try {
          await store.store.complete(this.scope, key, token, store.ttlMs ?? 86_400_000, r.effects ?? []);
        } catch (error) {
          await this.retryOrDeadLetter(r, error, undefined, key);
          return;
        }
        if (r.settled) return;
      }
      acking = true;
      this.ackDelivery(r, undefined);
    } catch (error) {
      this.logCrash(error);
    } finally {
      if (!acking) this.untrack(r);
    }
  }

  /**
   * Awaits the handler's result for at most `ms`, then aborts its signal and rejects. Apart from
   * `process` so that its closure does not make `process` allocate a context per delivery.
   */
  private async withTimeout(r: Running, result: unknown, ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        result,
        new Promise((_, reject) => {
          timer = setTimeout(() => {
            const err = new Error(`handler exceeded handlerTimeoutMs (${ms} ms)`);
            r.controller ??= new AbortController();
            r.controller.abort(err);
            reject(err);
          }, ms);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The handler threw (or timed out): release the idempotency claim, then retry or dead-letter. */
  private async handlerFailed(r: Running, error: unknown, key: string): Promise<void> {
    const store = this.store;
    const token = r.token;
    if (store && token) await store.store.release(this.scope, key, token).catch(() => {});
    if (r.settled) return;
    if (error instanceof DeadLetterRequest) {
      await this.deadLetter(r, { kind: 'handler-requested', detail: truncate(error.reason, 2000) }, error, key);
    } else if (error instanceof NonRetryableError) {
      await this.deadLetter(r, { kind: 'non-retryable', detail: describeError(error) }, error, key);
    } else if (error instanceof RetryRequest) {
      await this.retryOrDeadLetter(r, new Error(error.reason), error.delayMs, key);
    } else {
      await this.retryOrDeadLetter(r, error, undefined, key);
    }
  }

  private async retryOrDeadLetter(r: Running, error: unknown, requestedDelay: number | undefined, key: string | undefined): Promise<void> {
    const d = r.delivery;
    const detail = describeError(error);
    const attempt = r.attempt;
    if (attempt >= this.resolved.maxAttempts) {
      await this.deadLetter(r, { kind: 'max-attempts', detail: `${attempt} attempts failed; last: ${detail}` }, error, key);
      return;
    }
    const cap = this.bus.transport.capabilities.maxRetryDelayMs;
    const delayMs = Math.min(cap, Math.max(0, requestedDelay ?? backoffDelay(attempt, this.resolved.backoff, this.bus.internals.random)));
    const headers = retryHeaders(d.headers, attempt + 1, this.bus.internals.clock.now());
    const settled = this.settle(r, { status: 'retried', delayMs, error: detail }, () => d.retry(delayMs, headers), key);
    // Registered before the transport can have written the copy (its write is asynchronous): the
    // copy (same id, next attempt) waits in `onDelivery` until this retry settled.
    this.holds.retrying(d.headers[Headers.id], attempt + 1, settled);
    await settled;
  }
}

function positive(n: number, name: string): number {
  if (!Number.isFinite(n) || n <= 0) throw new ConfigError(`${name} must be a positive number, got ${n}`);
  return n;
}

const REASON_KINDS: ReadonlySet<string> = new Set<DeadLetterReasonKind>([
  'max-attempts',
  'non-retryable',
  'handler-requested',
  'schema-invalid',
  'undecodable',
  'invalid-envelope',
  'payload-too-large',
  'unsupported-version',
  'upcast-failed',
  'broker-dead-lettered',
]);

/**
 * The view of a stored dead letter. A message the broker dead-lettered by itself gets the metadata
 * core builds from the broker's facts (reason `'broker-dead-lettered'`); a reason this version
 * does not know is reported as `'unknown'`.
 */
function toDeadLetterView(stored: StoredDeadLetter, target: DeadLetterTarget, transport: string, nowMs: number): DeadLetterView {
  const broker = stored.brokerDeadLettered;
  const h = broker ? { ...stored.headers, ...brokerDeadLetterMetadata(stored.headers, broker, target, transport, nowMs) } : stored.headers;
  const kind = h[Headers.deadLetterReason] ?? '';
  const error = h[Headers.deadLetterError] ?? '';
  return {
    id: h[Headers.id] ?? '',
    reason: (REASON_KINDS.has(kind)
      ? { kind, detail: error }
      : { kind: 'unknown', detail: `unknown reason "${kind}": ${error}` }) as DeadLetterReason,
    error,
    attempts: Number(h[Headers.deadLetterAttempts] ?? 0),
    firstFailure: h[Headers.deadLetterFirstFailure] ?? '',
    lastFailure: h[Headers.deadLetterLastFailure] ?? '',
    origin: h[Headers.deadLetterOrigin] ?? '',
    position: h[Headers.deadLetterPosition] ?? '',
    group: h[Headers.deadLetterGroup] ?? '',
    headers: h,
    body: stored.body,
    handle: stored.handle,
  };
}

export { replayHeaders };
