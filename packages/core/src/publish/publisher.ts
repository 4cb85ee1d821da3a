/**
 * The publish path of a bus: encode (validation included) → breaker → batcher → transport. Also
 * the one sanctioned path for messages encoded earlier and published later (the outbox, the
 * bench): `encode` / `publishEncoded` of `@busbar/core/transport`.
 */
import { BusClosedError } from '../errors.js';
import type { EventDefinition, EventInput } from '../event.js';
import { HeaderNames as Headers } from '../headers.js';
import { type PublishCall, type PublishInterceptor, runPublishChain } from '../interceptors.js';
import { checkEvent, checkPublishOptions } from '../option-checks.js';
import type { PublishOptions } from '../options.js';
import type { ConnectionWatch } from '../readiness.js';
import type { CircuitBreaker } from '../resilience.js';
import type { OutgoingMessage } from '../spi.js';
import type { PublishBatcher } from './batcher.js';
import type { MessageEncoder } from './encode.js';

/** What `publish` resolves with. */
export interface PublishReceipt {
  /** The message id (CloudEvents `id`). */
  readonly id: string;
  /** The idempotency key it carries. */
  readonly idempotencyKey: string;
  /** The broker-level destination it was published to (namespace applied). */
  readonly topic: string;
}

const NO_OPTIONS: PublishOptions = Object.freeze({});

/** Publishes the messages of one bus. */
export class Publisher {
  /** Publishes are refused (the bus is closing or closed). */
  private stopped = false;

  /**
   * @param connection - the transport's connection as the bus sees it: a publish is handed to the
   *   transport only while it is usable, waits (within its timeout) during the first connection, and
   *   fails fast otherwise (see `send`).
   */
  constructor(
    readonly encoder: MessageEncoder,
    private readonly batcher: PublishBatcher,
    private readonly breaker: CircuitBreaker | undefined,
    private readonly connection: ConnectionWatch,
    private readonly publishTimeoutMs: number,
    interceptors?: readonly PublishInterceptor[],
  ) {
    if (interceptors !== undefined && interceptors.length > 0) this.interceptors = [...interceptors];
  }

  /** `BusOptions.interceptors.publish`; `undefined` when none (the plain path, nothing added). */
  private readonly interceptors: readonly PublishInterceptor[] | undefined;
  /** The end of the interceptor chain: the plain publish of the call it is given. */
  private readonly publishCall = (call: PublishCall): Promise<PublishReceipt> =>
    this.direct(call.event, call.data as EventInput<EventDefinition>, call.options ?? NO_OPTIONS);

  /** Publishes waiting for the transport. */
  get pendingCount(): number {
    return this.batcher.pendingCount;
  }

  /** See `EventBus.publish`. */
  publish<E extends EventDefinition>(event: E, data: EventInput<E>, options: PublishOptions = NO_OPTIONS): Promise<PublishReceipt> {
    if (this.interceptors === undefined) return this.direct(event, data, options);
    try {
      if (this.stopped) throw new BusClosedError();
      checkEvent(event, 'publish(event, data)');
    } catch (error) {
      return Promise.reject(error);
    }
    const call: PublishCall = { event, data, options, topic: this.encoder.topicOf(event) };
    return runPublishChain(this.interceptors, 0, call, this.publishCall);
  }

  /** `publish` past the interceptors. */
  private direct<E extends EventDefinition>(event: E, data: EventInput<E>, options: PublishOptions): Promise<PublishReceipt> {
    // Not an async function: this runs once per message, and a chain of plain promises costs less
    // than an async function's suspension. Every failure still rejects; nothing throws.
    let message: OutgoingMessage;
    try {
      if (this.stopped) throw new BusClosedError();
      if (typeof (event as Partial<EventDefinition> | undefined)?.schema?.safeParse !== 'function')
        checkEvent(event, 'publish(event, data)');
      if (options !== NO_OPTIONS) checkPublishOptions(options);
      message = this.encoder.encode(event, data, options);
      this.assertConnectable(message);
      this.breaker?.assertNotOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.send(message, options.timeoutMs ?? this.publishTimeoutMs);
  }

  /** Publishes a message {@link MessageEncoder.encode} made earlier, as `publish` would have. */
  publishEncoded(message: OutgoingMessage, timeoutMs = this.publishTimeoutMs): Promise<PublishReceipt> {
    try {
      if (this.stopped) throw new BusClosedError();
      this.assertConnectable(message);
      this.breaker?.assertNotOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.send(message, timeoutMs);
  }

  /** Refuses every later publish (`BusClosedError`). */
  stop(): void {
    this.stopped = true;
  }

  /** Resolves once every pending publish settled. */
  drain(): Promise<void> {
    return this.batcher.drain();
  }

  /**
   * Fails fast (throws) unless the transport is connected or still making its first connection:
   * `'reconnecting'` / `'disconnected'` / `'closed'` → `BrokerUnavailableError` naming the endpoint
   * and the last cause; `'failed'` → its final error. No I/O was made, so the breaker does not count
   * it (a disconnection must not leave the breaker open after the reconnect).
   */
  private assertConnectable(message: OutgoingMessage): void {
    const connection = this.connection;
    if (connection.usable || connection.firstConnecting) return;
    const refusal = connection.refusal(`publish of ${message.id} to ${message.topic} not sent`);
    if (refusal !== undefined) throw refusal;
  }

  private send(message: OutgoingMessage, timeoutMs: number): Promise<PublishReceipt> {
    const receipt: PublishReceipt = {
      id: message.id,
      idempotencyKey: message.headers[Headers.idempotencyKey] as string,
      topic: message.topic,
    };
    // The batcher's promise resolves with the receipt itself: no `.then(() => receipt)` (a closure,
    // a promise and a reaction) per publish.
    if (this.connection.usable) return this.batcher.publish(message, timeoutMs, receipt);
    // The first connection is being made: wait for it within the publish's own timeout. A publish
    // never handed over fails with BrokerUnavailableError, never PublishTimeoutError.
    const deadline = Date.now() + timeoutMs;
    return this.connection
      .whenUsable(`publish of ${message.id} to ${message.topic} not sent`, timeoutMs)
      .then(() => this.batcher.publish(message, Math.max(1, deadline - Date.now()), receipt));
  }
}

/** The publisher of each bus, for {@link publisherOf} (the bus does not expose it). */
const publishers = new WeakMap<object, Publisher>();

/** @internal Called by the bus's constructor. */
export function registerPublisher(bus: object, publisher: Publisher): void {
  publishers.set(bus, publisher);
}

/** @internal The publisher of `bus`. @throws TypeError for anything that is not an `EventBus`. */
export function publisherOf(bus: object): Publisher {
  const publisher = publishers.get(bus);
  if (publisher === undefined) throw new TypeError('not an EventBus');
  return publisher;
}

/** Options of {@link publishEncoded}. */
export interface PublishEncodedOptions {
  /** Reject with `PublishTimeoutError` after this many ms. @defaultValue `BusOptions.publishTimeoutMs` */
  readonly timeoutMs?: number;
}

/**
 * Validates and encodes `data` as `event` exactly as `bus.publish` would (schema, size limits,
 * CloudEvents headers, a new id unless `options.id`), without sending it: for a message that is
 * published later with {@link publishEncoded} (an outbox stores it meanwhile). Throws
 * `ValidationError` / `PayloadTooLargeError`.
 */
export function encode<E extends EventDefinition>(
  bus: object,
  event: E,
  data: EventInput<E>,
  options: Omit<PublishOptions, 'timeoutMs'> = NO_OPTIONS,
): OutgoingMessage {
  return publisherOf(bus).encoder.encode(event, data, options);
}

/**
 * Publishes a message {@link encode} made earlier (possibly in another process, from storage), as
 * `bus.publish` would: breaker, batching, the pending limit, the timeout, and the same receipt and
 * errors. The message is sent as it is — headers and body are not validated again — so it must
 * come from `encode` unchanged.
 */
export function publishEncoded(bus: object, message: OutgoingMessage, options: PublishEncodedOptions = {}): Promise<PublishReceipt> {
  return publisherOf(bus).publishEncoded(message, options.timeoutMs);
}
