/**
 * The transport's link to the cluster: the client (admin connection) and the one idempotent
 * producer, the connection state reported to core, the background reconnect loop, and the sends
 * that replace a producer after a failure of unknown outcome.
 * @internal
 */
import {
  type BackoffOptions,
  BrokerUnavailableError,
  BusClosedError,
  backoffDelay,
  ConfigError,
  ConnectionStateCell,
  describeError,
  isBusError,
  type Logger,
  PublishRejectedError,
  silentLogger,
  type TransportContext,
  type TransportHealth,
} from '@busbar/core/transport';
import type { KafkaClient, RecordProducer, TopicRecords } from './client.js';
import type { ClientSettings } from './client-common.js';
import type { ResolvedOptions } from './options.js';

/** Builds the client library seam for a connection (the transport's overridable `createClient`). */
export type ClientFactory = (logger: Logger) => KafkaClient | Promise<KafkaClient>;

/** `promise`, rejected with `signal.reason` as soon as `signal` aborts. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/**
 * Connect, health, reconnect and close of one transport. `connect` never throws for an
 * unreachable cluster: it waits up to `connectTimeoutMs`, then reports `reconnecting` and keeps
 * trying in the background.
 */
export class KafkaConnection {
  private current: KafkaClient | undefined;
  private producer: RecordProducer | undefined;
  private log: Logger = silentLogger;
  /** State, `connection` events and health; logs reaching `connected`. */
  private readonly state = new ConnectionStateCell({
    onChange: (state) => {
      if (state === 'connected') this.log.info({ transport: 'kafka', brokers: this.brokerList() }, 'Kafka connected');
    },
  });
  private attempt: Promise<void> | undefined;
  private reconnectLoop: Promise<void> | undefined;
  private closed = false;
  private readonly wakeups = new Set<() => void>();

  constructor(
    private readonly options: ResolvedOptions,
    private readonly createClient: ClientFactory,
  ) {}

  /** The bus's (redacting) logger, once connected. */
  get logger(): Logger {
    return this.log;
  }

  /** Whether the transport is closing or closed. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Whether sends may be attempted now. */
  get isConnected(): boolean {
    return this.state.state === 'connected';
  }

  /** The client. @throws BrokerUnavailableError before the first `connect`. */
  get client(): KafkaClient {
    if (!this.current) throw new BrokerUnavailableError('the Kafka transport is not connected (call connect first)');
    return this.current;
  }

  /** Builds the client and connects (see the class comment). Later calls return at once. */
  async connect(context: TransportContext): Promise<void> {
    if (this.closed) throw new BusClosedError('the Kafka transport is closed');
    if (this.current) return;
    const made = this.createClient(context.logger);
    const client = made instanceof Promise ? await made : made;
    if (this.current || this.closed) {
      // A concurrent connect (or close) won while the client library loaded.
      await client.close().catch(() => {});
      if (this.closed) throw new BusClosedError('the Kafka transport is closed');
      return;
    }
    this.state.attach(context);
    this.log = context.logger;
    this.current = client;
    this.state.set('connecting');
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.tryConnect(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new BrokerUnavailableError(`no answer from ${this.brokerList()} within ${this.options.connectTimeoutMs} ms`)),
            this.options.connectTimeoutMs,
          );
        }),
      ]);
    } catch (error) {
      this.lostConnection(error);
    } finally {
      clearTimeout(timer);
    }
  }

  /** One connection attempt (shared by concurrent callers): admin + a fresh producer, or a probe. */
  private tryConnect(): Promise<void> {
    this.attempt ??= (async () => {
      const client = this.client;
      try {
        if (this.producer) {
          await client.probe();
        } else {
          await client.connect();
          const producer = await client.createProducer();
          if (this.closed) {
            await producer.close().catch(() => {});
            return;
          }
          this.producer = producer;
        }
        this.state.set('connected');
      } finally {
        this.attempt = undefined;
      }
    })();
    return this.attempt;
  }

  /** Marks the connection lost and starts the background reconnect loop (once). */
  private lostConnection(error: unknown): void {
    if (this.closed) return;
    const detail = describeError(error);
    if (this.state.state !== 'reconnecting')
      this.log.warn({ transport: 'kafka', err: detail }, 'Kafka unreachable; reconnecting in the background');
    this.state.set('reconnecting', detail);
    this.reconnectLoop ??= (async () => {
      const backoff: BackoffOptions = this.options.reconnectBackoff;
      for (let n = 1; !this.closed && this.state.state !== 'connected'; n++) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, backoffDelay(n, backoff));
          function done() {
            clearTimeout(timer);
            resolve();
          }
          this.wakeups.add(done);
        });
        this.wakeups.clear();
        if (this.closed) break;
        try {
          await this.tryConnect();
        } catch (e) {
          this.state.set('reconnecting', describeError(e));
        }
      }
    })().finally(() => {
      this.reconnectLoop = undefined;
    });
  }

  private brokerList(): string {
    return this.options.brokers.join(',');
  }

  /** The error for a call made while not connected (or closed). */
  unavailable(): BrokerUnavailableError {
    if (this.closed) return new BrokerUnavailableError('the Kafka transport is closed');
    const { state, detail } = this.state;
    return new BrokerUnavailableError(`Kafka (${this.brokerList()}) is ${state}${detail ? `: ${detail}` : ''}`);
  }

  /** Maps a client error to a Busbar error (`PublishRejectedError` for a refusal, else `BrokerUnavailableError`). */
  mapError(error: unknown, what: string): Error {
    if (isBusError(error)) return error;
    const kind = this.client.classify(error);
    if (kind === 'rejected') return new PublishRejectedError(`Kafka rejected ${what}: ${describeError(error)}`, { cause: error });
    return new BrokerUnavailableError(`${what} failed: ${describeError(error)}`, { cause: error });
  }

  /**
   * Sends with the current producer; a failure of unknown outcome replaces the producer. So does a
   * send still pending when `signal` aborts (core's publish deadline): kafkajs keeps a timed-out
   * request's socket open and retries on it, so a half-open link would otherwise never recover.
   */
  async send(batches: readonly TopicRecords[], signal?: AbortSignal): Promise<void> {
    const producer = this.producer;
    if (this.state.state !== 'connected' || !producer) throw this.unavailable();
    if (signal?.aborted) throw signal.reason;
    const drop = (error: unknown) => {
      // kafkajs rolls the idempotent sequence back after a failed request; a request that did land
      // would make the next batch look like its duplicate. A new producer id rules that out.
      if (this.producer !== producer) return; // replaced already (and the loss reported)
      this.producer = undefined;
      void producer.close().catch(() => {});
      this.lostConnection(error);
    };
    const sent = producer.send(batches);
    sent.catch((error: unknown) => {
      if (this.client.classify(error) !== 'rejected') drop(error);
    });
    try {
      await abortable(sent, signal);
    } catch (error) {
      if (signal?.aborted && error === signal.reason) {
        drop(new BrokerUnavailableError(`no answer from Kafka (${this.brokerList()}) before the publish deadline`));
        throw error;
      }
      throw this.mapError(error, `producing to ${batches.map((b) => b.topic).join(', ')}`);
    }
  }

  health(): TransportHealth {
    return this.state.health();
  }

  /** First step of closing: no new work, the reconnect loop ends. */
  beginClose(): void {
    this.closed = true;
    for (const w of this.wakeups) w();
  }

  /** Last step of closing (after the subscriptions closed): the producer and the admin client. */
  async close(): Promise<void> {
    this.beginClose();
    await this.attempt?.catch(() => {});
    await this.producer?.close().catch(() => {});
    this.producer = undefined;
    await this.current?.close().catch(() => {});
    this.state.set('closed');
  }
}

/** Loads the optional `@platformatic/kafka` client (and the library) on first use. */
export async function loadPlatformaticClient(o: ResolvedOptions, logger: Logger): Promise<KafkaClient> {
  let mod: typeof import('./client-platformatic.js');
  try {
    mod = await import('./client-platformatic.js');
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === 'ERR_MODULE_NOT_FOUND' && String((error as Error).message).includes('@platformatic/kafka')) {
      throw new ConfigError(
        "client: 'platformatic' needs the optional peer dependency @platformatic/kafka (^2.12.1); install it next to @busbar/kafka",
        { cause: error },
      );
    }
    throw error;
  }
  return new mod.PlatformaticClient(clientSettings(o, logger));
}

/** The settings both clients take, from the resolved transport options. */
export function clientSettings(o: ResolvedOptions, logger: Logger): ClientSettings {
  return {
    brokers: o.brokers,
    clientId: o.clientId,
    ssl: o.ssl,
    sasl: o.sasl,
    socketConnectTimeoutMs: o.socketConnectTimeoutMs,
    requestTimeoutMs: o.requestTimeoutMs,
    requestRetries: o.requestRetries,
    maxRetryTimeMs: o.maxRetryTimeMs,
    ackTimeoutMs: o.ackTimeoutMs,
    logger,
  };
}
