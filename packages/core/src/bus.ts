/**
 * `EventBus`: the application's door — a facade that wires the publish path (publish/), the
 * delivery path (delivery/), the dead letters (dead-letters.ts) and the lifecycle events over one
 * {@link Transport}.
 */
import { hostname } from 'node:os';
import { EventEmitter } from 'eventemitter3';
import type { BusEvents } from './bus-events.js';
import { type DeadLetterQueue, deadLetterQueue } from './dead-letters.js';
import type { Handler } from './delivery/context.js';
import { type Subscription, type SubscriptionHost, SubscriptionImpl } from './delivery/subscription.js';
import { BusClosedError, CapabilityError, ConfigError, describeError } from './errors.js';
import type { EventDefinition, EventInput } from './event.js';
import { namespaceFromEnv } from './from-env.js';
import { HeaderNames } from './headers.js';
import { type HandleInterceptor, interceptHandler } from './interceptors.js';
import { redactingLogger, silentLogger } from './logger.js';
import { validateGroup, validateNamespace } from './naming.js';
import { checkBusOptions, checkEvent, checkNumber, checkSubscribeArguments } from './option-checks.js';
import type { BusOptions, PublishOptions, RetryPolicy, SubscribeOptions } from './options.js';
import { PublishBatcher } from './publish/batcher.js';
import { MessageEncoder } from './publish/encode.js';
import { Publisher, type PublishReceipt, registerPublisher } from './publish/publisher.js';
import { ConnectionWatch, type ReadyOptions } from './readiness.js';
import { type BreakerState, CircuitBreaker, systemClock } from './resilience.js';
import type { GroupDescription, Transport, TransportHealth } from './spi.js';

/** Health report. */
export interface BusHealth {
  readonly status: 'up' | 'degraded' | 'down';
  readonly transport: TransportHealth;
  readonly breaker: BreakerState | 'disabled';
  readonly pendingPublishes: number;
  readonly subscriptions: number;
}

/** A listener of the lifecycle event `K` (see {@link BusEvents}). */
export type BusListener<K extends keyof BusEvents> = (...args: BusEvents[K]) => void;

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
 * - Lifecycle events (`on` / `off` / `once`, see {@link BusEvents}) are the seams for metrics and
 *   tracing.
 */
export class EventBus {
  /** The transport (for capabilities and health). */
  readonly transport: Transport;
  readonly #events = new EventEmitter<BusEvents>();
  readonly #breaker: CircuitBreaker | undefined;
  readonly #publisher: Publisher;
  readonly #encoder: MessageEncoder;
  readonly #host: SubscriptionHost;
  readonly #retry: RetryPolicy | undefined;
  readonly #closeTimeoutMs: number;
  readonly #subscriptions = new Set<SubscriptionImpl>();
  readonly #connecting: Promise<void>;
  readonly #watch: ConnectionWatch;
  readonly #handleInterceptors: readonly HandleInterceptor[] | undefined;
  #state: 'open' | 'closing' | 'closed' = 'open';
  #closing: Promise<void> | undefined;

  /** @throws ConfigError naming the option a JavaScript caller got wrong (see `BusOptions`). */
  constructor(options: BusOptions) {
    checkBusOptions(options);
    const transport = options.transport;
    this.transport = transport;
    const logger = redactingLogger(options.logger ?? silentLogger);
    this.#retry = options.retry;
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 10_000;
    const events = this.#events;
    const maxPayloadBytes = positive(options.maxPayloadBytes ?? 1024 * 1024, 'maxPayloadBytes');
    const maxHeaderBytes = positive(options.maxHeaderBytes ?? 64 * 1024, 'maxHeaderBytes');
    const publishTimeoutMs = positive(options.publishTimeoutMs ?? 10_000, 'publishTimeoutMs');
    this.#encoder = new MessageEncoder({
      source: options.source ?? `urn:busbar:${hostname()}`,
      namespace: options.namespace === undefined ? namespaceFromEnv() : validateNamespace(options.namespace),
      maxPayloadBytes,
      maxHeaderBytes,
      structured: contentMode(options.contentMode),
    });
    this.#breaker =
      options.breaker === false
        ? undefined
        : new CircuitBreaker({
            name: transport.name,
            ...options.breaker,
            onStateChange: (s) => {
              logger.warn({ breaker: s, transport: transport.name }, 'circuit breaker state changed');
              events.emit('breaker', s);
              if (options.breaker) options.breaker.onStateChange?.(s);
            },
          });
    const watch = new ConnectionWatch(transport);
    this.#watch = watch;
    const batcher = new PublishBatcher({
      transport,
      breaker: this.#breaker,
      refuse: () => (watch.usable ? undefined : watch.refusal('publish not sent')),
      maxPending: positive(options.maxPendingPublishes ?? 10_000, 'maxPendingPublishes'),
      overflow: options.publishOverflow ?? 'wait',
      ...options.batching,
      maxInFlightBatches: options.batching?.maxInFlightBatches ?? transport.capabilities.orderedPublishCalls,
      onSent: (m) => {
        if (events.listenerCount('published') > 0) {
          events.emit('published', { id: m.id, type: m.headers[HeaderNames.type] ?? '', topic: m.topic });
        }
      },
    });
    this.#connecting = transport
      .connect({
        logger,
        emit: (e) => {
          watch.onEvent(e);
          // Deferred: a transport may report its state before the constructor returned and
          // before anyone could call bus.on('connection').
          queueMicrotask(() => events.emit('connection', e.state, e.detail, e.cause));
        },
      })
      .catch((error: unknown) => {
        logger.error({ err: describeError(error) }, 'transport failed to connect');
        throw watch.wrap(error, 'failed to connect');
      });
    watch.follow(this.#connecting);
    // Avoid an unhandled rejection when nobody awaits `ready()`; errors surface on use.
    this.#connecting.catch(() => {});
    this.#publisher = new Publisher(this.#encoder, batcher, this.#breaker, watch, publishTimeoutMs, options.interceptors?.publish);
    const handleInterceptors = options.interceptors?.handle;
    this.#handleInterceptors = handleInterceptors && handleInterceptors.length > 0 ? [...handleInterceptors] : undefined;
    registerPublisher(this, this.#publisher);
    this.#host = Object.freeze({
      transport,
      logger,
      random: options.random ?? Math.random,
      clock: options.clock ?? systemClock,
      limits: Object.freeze({ maxPayloadBytes, maxHeaderBytes }),
      idempotency: options.idempotency,
      closeTimeoutMs: this.#closeTimeoutMs,
      events,
    });
  }

  /** Listens to a lifecycle event (see {@link BusEvents}). */
  on<K extends keyof BusEvents>(event: K, listener: BusListener<K>): this {
    this.#events.on(event, listener as never);
    return this;
  }

  /** Listens to the next occurrence of a lifecycle event only. */
  once<K extends keyof BusEvents>(event: K, listener: BusListener<K>): this {
    this.#events.once(event, listener as never);
    return this;
  }

  /** Stops `listener` listening to `event` (every listener of `event` when none is given). */
  off<K extends keyof BusEvents>(event: K, listener?: BusListener<K>): this {
    this.#events.off(event, listener as never);
    return this;
  }

  /**
   * Resolves once the transport has a **working** connection (state `'connected'`: RabbitMQ
   * connection and channel open, Redis answering `PING`, Kafka metadata fetched).
   *
   * Rejects at once with the final error when the transport reports `'failed'` (e.g.
   * `AuthenticationError` for refused credentials) or its configuration can never work
   * (`ConfigError`); with `BrokerUnavailableError` when it is still not connected after
   * `timeoutMs` — its message names the transport, its (redacted) endpoint and the last cause, e.g.
   * `rabbitmq at amqp://guest:***@127.0.0.1:5999 did not connect within 10000 ms (state
   * reconnecting); last error: … ECONNREFUSED 127.0.0.1:5999`; with `BusClosedError` once the bus
   * is closing. The transport keeps trying after a timeout: a later `ready()` may resolve.
   * @param options.timeoutMs - @defaultValue 10000
   */
  ready(options: ReadyOptions = {}): Promise<void> {
    if (this.#state !== 'open') return Promise.reject(new BusClosedError());
    return this.#watch.ready(options);
  }

  /** The broker-level name of an event's destination (namespace applied). */
  topicOf(event: EventDefinition): string {
    return this.#encoder.topicOf(event);
  }

  /**
   * Publishes `data` as `event`. Validates against the schema and size limit before any I/O
   * (`ValidationError`, `PayloadTooLargeError`), then resolves once the transport reports the
   * message durable. Rejects with `PublishTimeoutError` (outcome unknown: re-publish with the same
   * idempotency key), `BrokerUnavailableError`, `CircuitOpenError`, `PublishRejectedError`,
   * `BackpressureError` or `BusClosedError`.
   */
  publish<E extends EventDefinition>(event: E, data: EventInput<E>, options?: PublishOptions): Promise<PublishReceipt> {
    return this.#publisher.publish(event, data, options);
  }

  /**
   * Subscribes `handler` to `event` as a member of `options.group`. Resolves once the group's
   * starting position is fixed: nothing published after it resolves is missed by the group.
   * While the transport is `'reconnecting'` the call is not refused (unlike a publish): the
   * transport rides out the reconnect within its own bound, then resolves, or rejects with a
   * retryable `BrokerUnavailableError` with `cause`. While `'failed'` it rejects at once with the
   * final error.
   * @throws CapabilityError for `ordering: 'key'` / `startFrom: 'earliest'` the transport lacks.
   * @throws ConfigError naming the option for a missing group, a mistyped option, a handler that is
   *   not a function or a first argument that is not an event definition.
   */
  async subscribe<E extends EventDefinition>(event: E, options: SubscribeOptions, handler: Handler<E>): Promise<Subscription> {
    checkSubscribeArguments(event, options, handler);
    if (this.#state !== 'open') throw new BusClosedError();
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
    const retry = { ...this.#retry, ...options.retry };
    const maxAttempts = retry.maxAttempts ?? 5;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1) throw new ConfigError(`retry.maxAttempts must be an integer ≥ 1`);
    if (options.signal?.aborted) throw new BusClosedError('the subscription signal is already aborted');
    if (this.#watch.state === 'failed') throw this.#watch.refusal(`subscribe of group ${options.group}`);
    try {
      await this.#connecting;
    } catch (error) {
      throw this.#watch.wrap(error, 'failed to connect');
    }
    const topic = this.topicOf(event);
    // With handle interceptors the subscription runs the wrapped handler: its delivery paths (and
    // their cost without interceptors) stay as they are.
    const run = interceptHandler(this.#handleInterceptors, handler as Handler<EventDefinition>, {
      event,
      group: options.group,
      topic,
      transport: this.transport.name,
    });
    const sub = new SubscriptionImpl(this.#host, event, options, run, {
      topic,
      concurrency,
      maxAttempts,
      backoff: retry.backoff ?? {},
      maxRetryDelayMs: caps.maxRetryDelayMs,
      ordering,
      startFrom,
    });
    try {
      await sub.start();
    } catch (error) {
      // Every error of a public method is a BusError: a raw client error (the link dropped during
      // the broker's consume call …) is wrapped as a retryable BrokerUnavailableError with `cause`.
      throw this.#watch.wrap(error, `could not subscribe group ${options.group}`);
    }
    this.#subscriptions.add(sub);
    void sub.closed.then(() => this.#subscriptions.delete(sub));
    if (this.#state !== 'open') {
      await sub.close();
      throw new BusClosedError();
    }
    return sub;
  }

  /** The dead letters of `event` for `group`, to list and replay. */
  deadLetters(event: EventDefinition, group: string): DeadLetterQueue {
    checkEvent(event, 'deadLetters(event, group)');
    validateGroup(group);
    const host = this.#host;
    return deadLetterQueue(
      { transport: this.transport, connected: () => this.#connecting, now: () => host.clock.now() },
      { topic: this.topicOf(event), group },
    );
  }

  /**
   * The consumer groups the broker knows on `event`'s topic, with what it can tell about each:
   * `backlog` (waiting, not handed out yet), `inFlight` (handed out, not settled), `retrying`
   * (waiting in the retry path) and `deadLetters`; a field is absent where the broker cannot tell
   * (see the transport's README). Asks the broker each time it is called (nothing is polled in the
   * background): call it at the interval you need.
   * @throws CapabilityError (as a rejection) when the transport cannot describe its groups.
   */
  async describeGroups(event: EventDefinition): Promise<readonly GroupDescription[]> {
    checkEvent(event, 'describeGroups(event)');
    if (this.#state !== 'open') throw new BusClosedError();
    const transport = this.transport;
    if (typeof transport.describeGroups !== 'function') {
      throw new CapabilityError('describeGroups', `transport ${transport.name} cannot describe its consumer groups`);
    }
    try {
      await this.#connecting;
      return await transport.describeGroups(this.topicOf(event));
    } catch (error) {
      throw this.#watch.wrap(error, `could not describe the groups of ${this.topicOf(event)}`);
    }
  }

  /**
   * Health: the transport's connection (`{ state, since, cause?, detail? }`, see `TransportHealth`),
   * the breaker's state, pending publishes and subscriptions. `status` is `'up'` when connected with
   * the breaker closed, `'down'` when closed, disconnected or failed, else `'degraded'`.
   */
  health(): BusHealth {
    const transport = this.#watch.health();
    const breaker = this.#breaker?.state ?? 'disabled';
    const status =
      this.#state !== 'open' || transport.state === 'closed'
        ? 'down'
        : transport.state === 'connected' && breaker === 'closed'
          ? 'up'
          : transport.state === 'disconnected' || transport.state === 'failed'
            ? 'down'
            : 'degraded';
    return { status, transport, breaker, pendingPublishes: this.#publisher.pendingCount, subscriptions: this.#subscriptions.size };
  }

  /**
   * Graceful shutdown: refuses new publishes and subscriptions, stops every subscription's intake,
   * waits for in-flight handlers up to `timeoutMs` (then aborts their signals and releases their
   * messages for redelivery), waits for pending publishes to settle, then closes the transport.
   * Idempotent.
   */
  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#closing) return this.#closing;
    checkNumber(options.timeoutMs, 'close({ timeoutMs })', { min: 0 });
    this.#state = 'closing';
    this.#publisher.stop();
    this.#watch.close();
    const timeoutMs = options.timeoutMs ?? this.#closeTimeoutMs;
    this.#closing = (async () => {
      await Promise.allSettled([...this.#subscriptions].map((s) => s.close({ timeoutMs })));
      await this.#publisher.drain();
      try {
        await this.transport.close();
      } finally {
        this.#state = 'closed';
      }
    })();
    return this.#closing;
  }
}

function positive(n: number, name: string): number {
  if (!Number.isFinite(n) || n <= 0) throw new ConfigError(`${name} must be a positive number, got ${n}`);
  return n;
}

/** Whether `BusOptions.contentMode` asks for structured mode (a `ConfigError` for anything unknown). */
function contentMode(mode: unknown): boolean {
  if (mode === undefined || mode === 'binary') return false;
  if (mode === 'structured') return true;
  throw new ConfigError(`contentMode must be 'binary' or 'structured', got ${JSON.stringify(mode)}`);
}
