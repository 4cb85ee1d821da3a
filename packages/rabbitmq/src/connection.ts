/**
 * The AMQP connection: connect, health, reconnect with backoff + jitter, channels, close.
 *
 * One connection per transport. Everything that lives on it (the publish channel, the record of
 * what was declared, the consumer channels) is told through a {@link ConnectionListener} when a
 * connection comes up or goes away; nothing else reaches into this class.
 */
import {
  BrokerUnavailableError,
  backoffDelay,
  ConfigError,
  ConnectionStateCell,
  describeError,
  type Logger,
  silentLogger,
  type TransportContext,
  type TransportHealth,
} from '@busbar/core/transport';
import { type Channel, type ChannelModel, connect } from 'amqplib';
import type { ResolvedOptions } from './options.js';

/** What the rest of the transport is told about the connection's life. */
export interface ConnectionListener {
  /**
   * A connection is up (the first one or a new one after a reconnect): per-connection state starts
   * over and consumers resume. Called before the `connected` state is reported.
   */
  opened(): void;
  /** The connection went away by itself (not called for {@link Connection.close}). */
  lost(): void;
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
 * The transport's one AMQP connection and its state (`connecting` → `connected` ⇄ `reconnecting` /
 * `disconnected` → `closed`), kept in core's `ConnectionStateCell`, which reports each change. A
 * lost connection is re-established with core's backoff (full jitter), forever, until
 * {@link shutdown}.
 */
export class Connection {
  /** Core's redacting logger once {@link start} ran. */
  logger: Logger = silentLogger;
  private started = false;
  private model: ChannelModel | undefined;
  /** State, last error (credential-free), the `connection` events and `health()`. */
  private readonly state = new ConnectionStateCell();
  private closing = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectAttempt = 0;
  private readonly connectWaiters = new Set<() => void>();

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

  /**
   * Connects once; if the broker is unreachable, reports `reconnecting` and keeps trying in the
   * background (resolves either way). @throws ConfigError when called twice
   */
  async start(context: TransportContext): Promise<void> {
    if (this.started) throw new ConfigError('RabbitMqTransport.connect was called twice; one instance belongs to one bus');
    this.started = true;
    this.logger = context.logger;
    this.state.attach(context);
    this.state.set('connecting');
    try {
      await this.open();
    } catch (error) {
      const detail = describeError(error);
      this.logger.warn({ err: detail, url: this.options.safeUrl }, 'RabbitMQ unreachable; reconnecting in the background');
      this.state.set('reconnecting', detail);
      this.scheduleReconnect();
    }
  }

  /** The state, with the last connection error while not connected. */
  health(): TransportHealth {
    return this.state.health();
  }

  private async open(): Promise<void> {
    const conn = await connect(this.options.url, this.options.socketOptions);
    if (this.closing) {
      await conn.close().catch(() => {});
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
    this.model = conn;
    this.reconnectAttempt = 0;
    this.listener.opened();
    this.state.set('connected');
    this.logger.info({ url: this.options.safeUrl }, 'connected to RabbitMQ');
    for (const w of this.connectWaiters) w();
    this.connectWaiters.clear();
  }

  private onClosed(conn: ChannelModel, error: unknown): void {
    if (this.model !== conn) return;
    this.model = undefined;
    this.listener.lost();
    if (this.closing) return;
    const detail = error ? describeError(error) : 'connection closed';
    this.logger.warn({ err: detail }, 'RabbitMQ connection lost; reconnecting');
    this.state.set('reconnecting', detail);
    this.scheduleReconnect();
  }

  private scheduleReconnect(): void {
    if (this.closing || this.reconnectTimer) return;
    this.reconnectAttempt++;
    const delay = backoffDelay(this.reconnectAttempt, this.options.backoff);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this.closing) return;
      this.open().catch((error: unknown) => {
        const detail = describeError(error);
        this.logger.warn({ err: detail, attempt: this.reconnectAttempt }, 'RabbitMQ reconnect failed');
        this.state.fail(detail);
        if (this.reconnectAttempt >= 3) this.state.set('disconnected');
        this.scheduleReconnect();
      });
    }, delay);
  }

  /**
   * The live connection, waiting for a reconnect up to `waitForConnectionMs` (and `signal`).
   * @throws BrokerUnavailableError when closed, or not connected in time
   */
  async live(signal?: AbortSignal): Promise<ChannelModel> {
    if (this.closing) throw new BrokerUnavailableError('the RabbitMQ transport is closed');
    if (this.model) return this.model;
    const waitMs = this.options.waitForConnectionMs;
    const unavailable = () => {
      const detail = this.state.detail;
      return new BrokerUnavailableError(`RabbitMQ at ${this.options.safeUrl} is not connected${detail ? ` (${detail})` : ''}`);
    };
    if (waitMs === 0) throw unavailable();
    let done!: () => void;
    let timer: NodeJS.Timeout | undefined;
    const wait = new Promise<void>((resolve, reject) => {
      done = resolve;
      timer = setTimeout(() => reject(unavailable()), waitMs);
      this.connectWaiters.add(done);
    });
    try {
      await raceSignal(wait, signal, unavailable);
    } finally {
      clearTimeout(timer);
      this.connectWaiters.delete(done);
    }
    if (!this.model || this.closing) throw unavailable();
    return this.model;
  }

  /** A new channel on the live connection with an error listener (a channel error never crashes). */
  async channel(signal?: AbortSignal): Promise<Channel> {
    const conn = await this.live(signal);
    const ch = await conn.createChannel();
    ch.on('error', (error: unknown) => this.logger.warn({ err: describeError(error) }, 'RabbitMQ channel error'));
    return ch;
  }

  /**
   * First step of closing: no more reconnects, waiters for a connection fail. Returns false when
   * already called. The connection itself stays open for {@link close}.
   */
  shutdown(): boolean {
    if (this.closing) return false;
    this.closing = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    for (const w of this.connectWaiters) w();
    this.connectWaiters.clear();
    return true;
  }

  /** Closes the connection (after {@link shutdown} and after the channels on it) and reports `closed`. */
  async close(): Promise<void> {
    const conn = this.model;
    this.model = undefined;
    if (conn) await conn.close().catch(() => {});
    this.state.set('closed');
  }
}
