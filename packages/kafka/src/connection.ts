/**
 * The transport's link to the cluster: the client (admin connection) and the one idempotent
 * producer, the connection state reported to core, the background reconnect loop, and the sends
 * that replace a producer after a failure of unknown outcome.
 * @internal
 */
import {
  AuthenticationError,
  type BackoffOptions,
  BrokerUnavailableError,
  BusClosedError,
  type BusError,
  backoffDelay,
  ConfigError,
  ConnectionStateCell,
  describeError,
  isBusError,
  type Logger,
  PublishRejectedError,
  redact,
  silentLogger,
  type TransportContext,
  type TransportHealth,
} from '@busbar/core/transport';
import type { KafkaClient, RecordProducer, TopicRecords } from './client.js';
import { type ClientSettings, errorChain } from './client-common.js';
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
 * Connect, health, reconnect and close of one transport.
 *
 * - `'connected'` only once the cluster answered a metadata request (and the producer is ready).
 * - `connect` never throws for an unreachable cluster: it returns after the first attempt (at most
 *   `connectTimeoutMs`), reports `reconnecting` with the cause and keeps trying in the background.
 * - Refused credentials or permissions at connection time are final: state `'failed'` with an
 *   `AuthenticationError`, the reconnect loop stops, every call rejects with that error.
 * - While connected, a metadata request every `healthCheckIntervalMs` must be answered within
 *   `healthCheckTimeoutMs`; otherwise the link counts as lost (silent, half-open): the producer is
 *   dropped (pending sends fail at once) and the transport reconnects on new sockets.
 */
export class KafkaConnection {
  /** Where the transport connects, for messages: `kafka <brokers>` (no credentials). */
  readonly endpoint: string;
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
  private healthTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly wakeups = new Set<() => void>();

  constructor(
    private readonly options: ResolvedOptions,
    private readonly createClient: ClientFactory,
  ) {
    this.endpoint = `kafka ${redact(this.brokerList())}`;
  }

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
    if (!this.current) throw new BrokerUnavailableError(`the Kafka transport (${this.endpoint}) is not connected (call connect first)`);
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
            () => reject(new BrokerUnavailableError(`no answer from Kafka (${this.endpoint}) within ${this.options.connectTimeoutMs} ms`)),
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

  /**
   * One connection attempt (shared by concurrent callers): admin (first contact, metadata) and a
   * fresh producer, or only a metadata round trip when the producer is still there.
   */
  private tryConnect(): Promise<void> {
    this.attempt ??= (async () => {
      const client = this.client;
      try {
        if (this.producer) {
          await client.probe();
        } else {
          await client.connect();
          const producer = await client.createProducer();
          if (this.closed || this.state.state === 'failed') {
            await producer.close().catch(() => {});
            return;
          }
          this.producer = producer;
        }
        if (this.closed) return;
        if (this.state.set('connected')) this.scheduleHealthCheck();
      } finally {
        this.attempt = undefined;
      }
    })();
    return this.attempt;
  }

  /** The error a failed attempt or request is reported with: the endpoint and the cause. */
  private linkError(error: unknown): BusError {
    if (isBusError(error)) return error;
    if (this.current?.classify(error) === 'auth') return this.authError(error);
    return new BrokerUnavailableError(`Kafka (${this.endpoint}) unreachable: ${causeText(error)}`, { cause: error });
  }

  private authError(error: unknown, what?: string): AuthenticationError {
    const where = what ? `${what}: ` : '';
    return new AuthenticationError(`Kafka (${this.endpoint}) refused ${where}${causeText(error)}`, { cause: error });
  }

  /**
   * Marks the connection lost and starts the background reconnect loop (once) — or, for refused
   * credentials, moves to the final state `'failed'`.
   */
  private lostConnection(error: unknown): void {
    if (this.closed || this.state.state === 'failed') return;
    const cause = this.linkError(error);
    if (cause instanceof AuthenticationError) {
      this.failFinally(cause);
      return;
    }
    this.stopHealthCheck();
    if (this.state.state !== 'reconnecting')
      this.log.warn({ transport: 'kafka', err: cause.message }, 'Kafka unreachable; reconnecting in the background');
    this.state.set('reconnecting', cause);
    this.reconnectLoop ??= (async () => {
      const backoff: BackoffOptions = this.options.reconnectBackoff;
      for (let n = 1; !this.closed && this.state.state !== 'connected' && this.state.state !== 'failed'; n++) {
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
          const next = this.linkError(e);
          if (next instanceof AuthenticationError) this.failFinally(next);
          else this.state.set('reconnecting', next);
        }
      }
    })().finally(() => {
      this.reconnectLoop = undefined;
    });
  }

  /** The final state: refused credentials. The reconnect loop ends, the producer goes. */
  private failFinally(error: AuthenticationError): void {
    this.stopHealthCheck();
    this.log.error({ transport: 'kafka', err: error.message }, 'Kafka refused the credentials; not reconnecting');
    this.state.failed(error);
    const producer = this.producer;
    this.producer = undefined;
    void producer?.close().catch(() => {});
    for (const w of this.wakeups) w();
  }

  /** Schedules the next health check (see the class comment); its timer never keeps the process alive. */
  private scheduleHealthCheck(): void {
    const every = this.options.healthCheckIntervalMs;
    if (every <= 0 || this.closed) return;
    clearTimeout(this.healthTimer);
    this.healthTimer = setTimeout(() => void this.healthCheck(), every);
    this.healthTimer.unref();
  }

  private stopHealthCheck(): void {
    clearTimeout(this.healthTimer);
    this.healthTimer = undefined;
  }

  /** One metadata round trip; no answer within `healthCheckTimeoutMs` is a lost link. */
  private async healthCheck(): Promise<void> {
    this.healthTimer = undefined;
    const client = this.current;
    if (this.closed || !client || this.state.state !== 'connected') return;
    const waitMs = this.options.healthCheckTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        client.probe(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new BrokerUnavailableError(`Kafka (${this.endpoint}) did not answer a metadata request within ${waitMs} ms (health check)`),
              ),
            waitMs,
          );
        }),
      ]);
    } catch (error) {
      if (this.closed || this.state.state !== 'connected') return;
      this.dropProducer();
      this.lostConnection(error);
      return;
    } finally {
      clearTimeout(timer);
    }
    if (this.state.state === 'connected') this.scheduleHealthCheck();
  }

  /** Retires the producer (its pending sends reject at once); the next connect makes a new one. */
  private dropProducer(): void {
    const producer = this.producer;
    this.producer = undefined;
    void producer?.close().catch(() => {});
  }

  private brokerList(): string {
    return this.options.brokers.join(',');
  }

  /** The error for a call made while not connected (or closed): the final error once `'failed'`. */
  unavailable(): BusError {
    if (this.closed) return new BrokerUnavailableError(`the Kafka transport (${this.endpoint}) is closed`);
    const { state, cause } = this.state;
    if (state === 'failed' && cause) return cause;
    return new BrokerUnavailableError(`Kafka (${this.endpoint}) is ${state}${cause ? `: ${cause.message}` : ''}`, cause ? { cause } : {});
  }

  /**
   * Maps a client error to a Busbar error: `AuthenticationError` for refused credentials (then the
   * transport is `'failed'`) or permissions, `PublishRejectedError` for a refusal, else
   * `BrokerUnavailableError` naming the endpoint.
   */
  mapError(error: unknown, what: string): BusError {
    if (isBusError(error)) return error;
    const kind = this.current?.classify(error) ?? 'unavailable';
    if (kind === 'auth') {
      const refused = this.authError(error, what);
      if (isSaslFailure(error)) this.failFinally(refused);
      return refused;
    }
    if (kind === 'rejected')
      return new PublishRejectedError(`Kafka (${this.endpoint}) rejected ${what}: ${causeText(error)}`, { cause: error });
    return new BrokerUnavailableError(`${what} failed (Kafka ${this.endpoint}): ${causeText(error)}`, { cause: error });
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
      const kind = this.client.classify(error);
      if (kind !== 'rejected' && kind !== 'auth') drop(error);
    });
    try {
      await abortable(sent, signal);
    } catch (error) {
      if (signal?.aborted && error === signal.reason) {
        drop(new BrokerUnavailableError(`no answer from Kafka (${this.endpoint}) before the publish deadline`));
        throw error;
      }
      throw this.mapError(error, `producing to ${batches.map((b) => b.topic).join(', ')}`);
    }
  }

  health(): TransportHealth {
    return this.state.health();
  }

  /** First step of closing: no new work, the reconnect loop and the health check end. */
  beginClose(): void {
    this.closed = true;
    this.stopHealthCheck();
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

/**
 * A client error, credential-free, with its root cause when that says more (the clients wrap the
 * socket error `connect ECONNREFUSED 127.0.0.1:9092` or the broker's SASL answer in
 * "retries exceeded" / "cannot connect to any broker" errors).
 */
export function causeText(error: unknown): string {
  const top = describeError(error);
  let root: Record<string, unknown> | undefined;
  for (const e of errorChain(error)) if (typeof e.message === 'string' && e.message !== '') root = e;
  const rootMessage = root && root !== error ? String(root.message) : undefined;
  return rootMessage && !top.includes(rootMessage) ? `${top} (${redact(rootMessage)})` : top;
}

/** Whether `error` is a refused SASL authentication (final for the whole connection), not a refused permission. */
function isSaslFailure(error: unknown): boolean {
  for (const e of errorChain(error)) {
    if (e.type === 'SASL_AUTHENTICATION_FAILED' || e.apiId === 'SASL_AUTHENTICATION_FAILED') return true;
    if (e.name === 'KafkaJSSASLAuthenticationError' || e.code === 'PLT_KFK_AUTHENTICATION') return true;
  }
  return false;
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
