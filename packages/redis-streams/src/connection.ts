/**
 * The connections to Redis: the command connection (connect, reconnect, state, liveness, close) and
 * the dedicated connections of the subscriptions, opened with the same settings.
 */
import {
  BrokerUnavailableError,
  backoffDelay,
  ConnectionStateCell,
  describeError,
  type Logger,
  redact,
  silentLogger,
  type TransportContext,
  type TransportHealth,
} from '@busbar/core/transport';
import { Redis, type RedisOptions } from 'ioredis';
import type { ResolvedOptions } from './options.js';

/** Replies refusing our credentials: more telling than the "Connection is closed" that follows them. */
const AUTH_ERROR = /\b(WRONGPASS|NOAUTH|NOPERM)\b/;

/** @internal What the publisher, the subscriptions and the dead-letter scan need of the connections. */
export interface Connections {
  /** The command connection, or `BrokerUnavailableError` when it is not ready. */
  ready(): Redis;
  /** A new connection to the same server, not connected yet (`overrides` win over the user's options). */
  open(overrides: RedisOptions): Redis;
  /** PINGs the command connection now; drops it (ioredis reconnects) when it stays silent. */
  probe(why: string): Promise<void>;
  /** The logger of the bus (silent before `connect`). */
  readonly logger: Logger;
}

/**
 * @internal The command connection and its state. No offline queue: a command while Redis is
 * unreachable fails at once (`BrokerUnavailableError`). Commands already in flight when the
 * connection drops are sent again after the reconnect (settle scripts are idempotent: each checks
 * the entry is still this consumer's).
 */
export class RedisConnection implements Connections {
  private client: Redis | undefined;
  private context: TransportContext | undefined;
  /** State, `connection` events and the last credential-free error. */
  private readonly state = new ConnectionStateCell();
  private closed = false;
  private probing = false;
  private healthTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: ResolvedOptions) {}

  get logger(): Logger {
    return this.context?.logger ?? silentLogger;
  }

  /** ioredis `retryStrategy`: exponential backoff with full jitter, never giving up. */
  private retryStrategy = (times: number): number => {
    const { initialMs, maxMs } = this.options.settings.reconnect;
    return backoffDelay(times + 1, { initialMs, maxMs, minMs: initialMs });
  };

  open(overrides: RedisOptions): Redis {
    const conn = new Redis(this.options.url, {
      retryStrategy: this.retryStrategy,
      ...this.options.redisOptions,
      ...overrides,
      lazyConnect: true,
    });
    conn.on('error', (error: unknown) => {
      this.logger.debug({ err: describeError(error) }, 'redis connection error');
    });
    return conn;
  }

  /** Opens the command connection; when Redis is down it keeps reconnecting in the background instead of throwing. */
  async connect(context: TransportContext): Promise<void> {
    if (this.client) return;
    this.context = context;
    this.state.attach(context);
    const client = this.open({ enableOfflineQueue: false, connectionName: 'busbar:main' });
    this.client = client;
    client.on('ready', () => this.state.set('connected'));
    client.on('reconnecting', () => this.state.set('reconnecting'));
    client.on('close', () => {
      if (!this.closed) this.state.set('reconnecting');
    });
    client.on('end', () => this.state.set(this.closed ? 'closed' : 'disconnected'));
    client.on('error', (error: unknown) => this.noteError(error));
    this.state.set('connecting');
    try {
      await client.connect();
    } catch (error) {
      // ioredis keeps reconnecting (retryStrategy); publishes fail with BrokerUnavailableError meanwhile.
      this.noteError(error);
      this.logger.warn({ err: this.state.detail }, 'redis is not reachable yet; reconnecting in the background');
    }
    const { intervalMs } = this.options.settings.healthCheck;
    if (intervalMs > 0) {
      this.healthTimer = setInterval(() => void this.probe('periodic'), intervalMs);
      this.healthTimer.unref();
    }
  }

  /**
   * Remembers the last error (credential-free). An authentication refusal (`WRONGPASS`, `NOAUTH`) is
   * kept over the generic "Connection is closed" ioredis reports after it, until the next `ready`.
   */
  private noteError(error: unknown): void {
    const text = redact(describeError(error));
    const last = this.state.detail; // undefined while connected
    if (last !== undefined && AUTH_ERROR.test(last) && !AUTH_ERROR.test(text)) return;
    this.state.fail(text);
  }

  /**
   * Liveness of the command connection: PING with a deadline of `healthCheck.timeoutMs`; silence
   * on a connection that claims to be ready means a dead (half-open) link: drop it so ioredis
   * reconnects (and re-sends the commands still waiting for a reply).
   */
  async probe(why: string): Promise<void> {
    const client = this.client;
    if (!client || this.closed || this.probing || client.status !== 'ready') return;
    this.probing = true;
    try {
      const { timeoutMs } = this.options.settings.healthCheck;
      if (await answersPing(client, timeoutMs)) return;
      if (this.closed || client.status !== 'ready') return;
      const detail = `no reply to PING within ${timeoutMs} ms (${why}): connection presumed dead, reconnecting`;
      this.state.fail(detail);
      this.logger.warn({ err: detail }, 'redis command connection is silent; reconnecting');
      client.disconnect(true);
    } finally {
      this.probing = false;
    }
  }

  ready(): Redis {
    const client = this.client;
    if (!client) throw new BrokerUnavailableError('redis transport is not connected (call connect first)');
    if (this.closed) throw new BrokerUnavailableError('redis transport is closed');
    if (client.status !== 'ready') {
      const detail = this.state.detail;
      throw new BrokerUnavailableError(`redis is not reachable (connection ${client.status})${detail ? `: ${detail}` : ''}`);
    }
    return client;
  }

  /** Connection state of the command connection and its last error (credential-free). */
  health(): TransportHealth {
    return this.state.health();
  }

  /** Closes the command connection. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.healthTimer);
    const client = this.client;
    if (client) {
      if (client.status === 'ready') await client.quit().catch(() => client.disconnect());
      else client.disconnect();
    }
    this.state.set('closed');
  }
}

/**
 * @internal PINGs `conn` and tells whether it answered within `timeoutMs`. Any reply counts, an error
 * reply or a rejection by ioredis (connection already closing) included: only silence is reported.
 */
export async function answersPing(conn: Redis, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const silent = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  try {
    return await Promise.race([
      conn.ping().then(
        () => true,
        () => true,
      ),
      silent,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * @internal Settles like `command`, and calls `onSilent` whenever the command has been waiting for
 * longer than `deadlineMs` on a connection that claims to be ready (a half-open link answers nothing
 * and reports no error). The clock restarts at every `ready` (ioredis re-sends unfulfilled commands
 * after a reconnect) and after each `onSilent`.
 */
export function withDeadline<T>(conn: Redis, command: Promise<T>, deadlineMs: number, onSilent: () => void): Promise<T> {
  let since = Date.now();
  const onReady = () => {
    since = Date.now();
  };
  conn.on('ready', onReady);
  let timer: NodeJS.Timeout;
  const check = () => {
    const left = since + deadlineMs - Date.now();
    if (conn.status !== 'ready') {
      timer = setTimeout(check, deadlineMs);
    } else if (left > 0) {
      timer = setTimeout(check, left);
    } else {
      since = Date.now();
      onSilent();
      timer = setTimeout(check, deadlineMs);
    }
  };
  timer = setTimeout(check, deadlineMs);
  return command.finally(() => {
    clearTimeout(timer);
    conn.off('ready', onReady);
  });
}
