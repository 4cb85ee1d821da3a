/**
 * The AMQP connection: connect, health, reconnect with backoff + jitter, channels, close.
 *
 * One connection per transport. Everything that lives on it (the publish channel, the record of
 * what was declared, the consumer channels) is told through a {@link ConnectionListener} when a
 * connection comes up or goes away; nothing else reaches into this class.
 */
import {
  AuthenticationError,
  BrokerUnavailableError,
  type BusError,
  backoffDelay,
  ConfigError,
  ConnectionStateCell,
  describeError,
  isBusError,
  type Logger,
  redact,
  silentLogger,
  type TransportContext,
  type TransportHealth,
} from '@busbar/core/transport';
import { type Channel, type ChannelModel, connect, type SocketOptions } from 'amqplib';
import type { ResolvedOptions } from './options.js';

/** What the rest of the transport is told about the connection's life. */
export interface ConnectionListener {
  /**
   * A new connection is open but not reported yet: open what must work before the transport
   * counts as `connected` (the publish channel). A rejection fails this connection attempt.
   */
  prepare(conn: ChannelModel): Promise<void>;
  /**
   * A connection is up (the first one or a new one after a reconnect): per-connection state starts
   * over and consumers resume. Called before the `connected` state is reported.
   */
  opened(): void;
  /** The connection went away by itself (not called for {@link Connection.close}). */
  lost(): void;
}

/** The message of `error` (credential-free), without the `Error: ` prefix of `describeError`. */
export function reasonOf(error: unknown): string {
  return redact(error instanceof Error ? error.message : String(error));
}

/**
 * What a failed connection attempt means. RabbitMQ refuses the login with `403 ACCESS_REFUSED`
 * during the handshake, and `connection.open` of a vhost with `530 NOT_ALLOWED` (no permission on
 * the vhost, vhost missing, or its connection limit reached — amqplib reports all of these as
 * "Expected ConnectionOpenOk; got <ConnectionClose …>" without the broker's text): both are final
 * ({@link AuthenticationError}). Anything else (refused, reset, timed out, DNS …) is retryable.
 */
export function connectError(error: unknown, options: Pick<ResolvedOptions, 'endpoint' | 'vhost'>): BusError {
  if (isBusError(error)) return error;
  const reason = reasonOf(error);
  if (/ACCESS[-_]REFUSED|\b403\b/.test(reason))
    return new AuthenticationError(`RabbitMQ at ${options.endpoint} refused the login: ${reason}`, { cause: error });
  if (/Expected ConnectionOpenOk; got <ConnectionClose/.test(reason))
    return new AuthenticationError(
      `RabbitMQ at ${options.endpoint} refused access to vhost "${options.vhost}" (the user has no permission on it, or it does not exist)`,
      { cause: error },
    );
  return new BrokerUnavailableError(`RabbitMQ at ${options.endpoint} is unreachable: ${reason}`, { cause: error });
}

/**
 * Closes `ch` and resolves once it is closed; never rejects. amqplib settles `close()` only when
 * the broker's `channel.close-ok` arrives: when the connection dies in between (force-closed by an
 * operator, lost), that promise never settles although the channel emits `close`. Waiting for
 * either keeps a subscription's close (and so `bus.close()`) from hanging for ever.
 */
export function closeChannel(ch: Channel): Promise<void> {
  return new Promise<void>((resolve) => {
    ch.once('close', () => resolve());
    try {
      ch.close().then(
        () => resolve(),
        () => resolve(),
      );
    } catch {
      resolve();
    }
  });
}

/** Rejects with `onAbort()` when `signal` aborts first. */
export function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined, onAbort: () => Error): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(onAbort());
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(onAbort());
    signal.addEventListener('abort', abort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', abort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', abort);
        reject(e);
      },
    );
  });
}

/**
 * The transport's one AMQP connection and its state (`connecting` → `connected` ⇄ `reconnecting`
 * → `closed`, or `failed` for refused credentials), kept in core's
 * `ConnectionStateCell`, which reports each change. `connected` means a connection **and** the
 * publish channel are open. A lost connection is re-established with core's backoff (full jitter)
 * until {@link shutdown} — or until the broker refuses the login or the vhost, which is final.
 */
export class Connection {
  /** Core's redacting logger once {@link start} ran. */
  logger: Logger = silentLogger;
  private started = false;
  private model: ChannelModel | undefined;
  /** State, since when, last error (credential-free), the `connection` events and `health()`. */
  private readonly state = new ConnectionStateCell();
  private closing = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectAttempt = 0;
  /** Resolved when a connection is up, the state is final, or the transport closes. */
  private readonly connectWaiters = new Set<() => void>();
  /** The connection attempt under way: aborted (its socket destroyed) by {@link shutdown}. */
  private attempt: { readonly abort: AbortController; readonly done: Promise<void> } | undefined;
  /** Epoch ms since which there has been no connection (the start, or the last loss). */
  private downSince = Date.now();

  constructor(
    private readonly options: ResolvedOptions,
    private readonly listener: ConnectionListener,
  ) {}

  /** Whether a connection is up right now. */
  get connected(): boolean {
    return this.model !== undefined;
  }

  /** Whether {@link shutdown} was called. */
  get closed(): boolean {
    return this.closing;
  }

  /** The final error once the broker refused the login or the vhost (state `failed`). */
  get finalError(): BusError | undefined {
    return this.state.state === 'failed' ? this.state.cause : undefined;
  }

  /**
   * Connects once; if the broker is unreachable, reports `reconnecting` and keeps trying in the
   * background; if it refuses the login or the vhost, reports `failed` and stops (resolves either
   * way: `bus.ready()` follows the state). @throws ConfigError when called twice
   */
  async start(context: TransportContext): Promise<void> {
    if (this.started) throw new ConfigError('RabbitMqTransport.connect was called twice; one instance belongs to one bus');
    this.started = true;
    this.logger = context.logger;
    this.state.attach(context);
    this.downSince = Date.now();
    this.state.set('connecting');
    await this.tryOpen();
  }

  /** The state, since when, and the last connection error while not connected. */
  health(): TransportHealth {
    return this.state.health();
  }

  /** One connection attempt; on failure records why and either schedules the next or stops for good. */
  private async tryOpen(): Promise<void> {
    const abort = new AbortController();
    const done = this.open(abort.signal);
    this.attempt = { abort, done: done.then(noop, noop) };
    try {
      await done;
    } catch (error) {
      if (this.closing) return;
      const cause = connectError(error, this.options);
      if (!cause.retryable) {
        this.logger.error({ err: cause.message }, 'RabbitMQ refused the connection for good; not reconnecting');
        this.state.failed(cause);
        this.wakeWaiters();
        return;
      }
      this.logger.warn({ err: cause.message, attempt: this.reconnectAttempt }, 'RabbitMQ connection attempt failed; reconnecting');
      this.state.set('reconnecting', cause);
      this.scheduleReconnect();
    } finally {
      this.attempt = undefined;
    }
  }

  private async open(signal: AbortSignal): Promise<void> {
    // amqplib hands its socket options to net.connect / tls.connect as they are, so `signal`
    // reaches the socket: aborting destroys it (and fails this attempt) at once.
    const socketOptions: SocketOptions & { signal: AbortSignal } = { ...this.options.socketOptions, signal };
    const conn = await connect(this.options.url, socketOptions);
    if (this.closing) {
      await conn.close().catch(noop);
      return;
    }
    conn.on('error', (error: unknown) => {
      this.logger.warn({ err: describeError(error) }, 'RabbitMQ connection error');
    });
    conn.on('close', (error?: unknown) => this.onClosed(conn, error));
    conn.on('blocked', (reason: unknown) =>
      this.logger.warn({ reason: String(reason) }, 'RabbitMQ blocked the connection (resource alarm)'),
    );
    conn.on('unblocked', () => this.logger.info({}, 'RabbitMQ unblocked the connection'));
    try {
      await this.listener.prepare(conn);
    } catch (error) {
      await conn.close().catch(noop);
      throw error;
    }
    if (this.closing) {
      await conn.close().catch(noop);
      return;
    }
    this.model = conn;
    this.reconnectAttempt = 0;
    this.listener.opened();
    this.state.set('connected');
    this.logger.info({ url: this.options.endpoint }, 'connected to RabbitMQ');
    this.wakeWaiters();
  }

  private wakeWaiters(): void {
    for (const w of this.connectWaiters) w();
    this.connectWaiters.clear();
  }

  private onClosed(conn: ChannelModel, error: unknown): void {
    if (this.model !== conn) return;
    this.model = undefined;
    this.downSince = Date.now();
    this.listener.lost();
    if (this.closing) return;
    const cause = new BrokerUnavailableError(
      `RabbitMQ connection to ${this.options.endpoint} lost: ${error ? reasonOf(error) : 'closed by the broker'}`,
      { cause: error },
    );
    this.logger.warn({ err: cause.message }, 'RabbitMQ connection lost; reconnecting');
    this.state.set('reconnecting', cause);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closing || this.reconnectTimer || this.state.state === 'failed') return;
    this.reconnectAttempt++;
    const delay = backoffDelay(this.reconnectAttempt, this.options.backoff);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.closing || this.state.state === 'failed') return;
      void this.tryOpen();
    }, delay);
  }

  /** Why the connection is not usable now, naming the endpoint and the last error. */
  private unavailable(): BusError {
    const final = this.finalError;
    if (final) return final;
    if (this.closing) return new BrokerUnavailableError(`the RabbitMQ transport (${this.options.endpoint}) is closed`);
    const cause = this.state.cause;
    return new BrokerUnavailableError(
      `RabbitMQ at ${this.options.endpoint} is not connected (${this.state.state}${cause ? `: ${cause.message}` : ''})`,
      cause === undefined ? {} : { cause },
    );
  }

  /**
   * The live connection. While there is none, waits for the reconnect — but only within
   * `waitForConnectionMs` of the connection going away (or of the start): once an outage has lasted
   * that long, calls fail at once instead of each waiting again.
   * @throws BusError — `BrokerUnavailableError` when closed or not connected in time, the final
   * `AuthenticationError` once the broker refused the login or vhost
   */
  async live(signal?: AbortSignal): Promise<ChannelModel> {
    if (this.model && !this.closing) return this.model;
    const waitMs = Math.min(this.options.waitForConnectionMs, this.downSince + this.options.waitForConnectionMs - Date.now());
    if (this.closing || this.state.state === 'failed' || waitMs <= 0) throw this.unavailable();
    let done!: () => void;
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<void>((resolve, reject) => {
      done = resolve;
      timer = setTimeout(() => reject(this.unavailable()), waitMs);
      this.connectWaiters.add(done);
    });
    try {
      await raceSignal(wait, signal, () => this.unavailable());
    } finally {
      clearTimeout(timer);
      this.connectWaiters.delete(done);
    }
    if (!this.model || this.closing) throw this.unavailable();
    return this.model;
  }

  /**
   * A new channel on the live connection with an error listener (a channel error never crashes).
   * @throws BusError — as {@link live}; `BrokerUnavailableError` when the connection dies meanwhile
   */
  async channel(signal?: AbortSignal): Promise<Channel> {
    const conn = await this.live(signal);
    let ch: Channel;
    try {
      ch = await conn.createChannel();
    } catch (error) {
      throw new BrokerUnavailableError(`could not open a channel to RabbitMQ at ${this.options.endpoint}: ${reasonOf(error)}`, {
        cause: error,
      });
    }
    ch.on('error', (error: unknown) => this.logger.warn({ err: describeError(error) }, 'RabbitMQ channel error'));
    return ch;
  }

  /**
   * First step of closing: no more reconnects, an attempt under way is aborted (its socket
   * destroyed), waiters for a connection fail. Returns false when already called. An open
   * connection stays open for {@link close}.
   */
  shutdown(): boolean {
    if (this.closing) return false;
    this.closing = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.attempt?.abort.abort();
    this.wakeWaiters();
    return true;
  }

  /**
   * Closes the connection (after {@link shutdown} and after the channels on it) and reports
   * `closed`; waits for an aborted attempt to let go of its socket, so no handle is left open.
   */
  async close(): Promise<void> {
    await this.attempt?.done;
    const conn = this.model;
    this.model = undefined;
    if (conn) await conn.close().catch(noop);
    this.state.set('closed');
  }
}

function noop(): void {}
