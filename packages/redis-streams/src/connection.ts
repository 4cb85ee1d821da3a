/**
 * The connections to Redis: the command connection (connect, handshake, state, liveness, close) and
 * the dedicated connections of the subscriptions, opened with the same settings.
 */
import {
  AuthenticationError,
  BrokerUnavailableError,
  type BusError,
  backoffDelay,
  ConnectionStateCell,
  isBusError,
  type Logger,
  redact,
  silentLogger,
  TopologyError,
  type TransportContext,
  type TransportHealth,
} from '@busbar/core/transport';
import { Redis, type RedisOptions, ReplyError } from 'ioredis';
import type { ResolvedOptions } from './options.js';

/** Replies refusing our credentials or permissions: final, reconnecting cannot help. */
const REFUSAL = /\b(WRONGPASS|NOAUTH|NOPERM)\b/;
/** What ioredis says when a command meets a closed connection: less telling than why it closed. */
const CLOSED = /Connection is closed|Stream isn't writeable|Command aborted due to connection close/;

/** @internal Whether `error` is Redis refusing our credentials or permissions (`WRONGPASS`, `NOAUTH`, `NOPERM`). */
export function isRefusal(error: unknown): boolean {
  return error instanceof Error && REFUSAL.test(error.message);
}

/**
 * @internal The message of `error`, credential-free (`connect ECONNREFUSED 127.0.0.1:6999`); a
 * reply that is not Redis's protocol says so (a Redis URL pointing at another server's port).
 */
export function messageOf(error: unknown): string {
  const text = redact(error instanceof Error ? error.message : String(error));
  if (!text.startsWith('Protocol error')) return text;
  return `the server does not speak the Redis protocol — is this port a Redis server? (${text.replace(/\s*Please report this\.?/, '')})`;
}

/**
 * @internal A credential-free copy of a client error, to keep as a `cause`: its name, redacted
 * message and network fields (`code`, `syscall`, `address`, `port`). ioredis attaches the arguments
 * of the failed command to a reply error — for `AUTH`, the password — so the original is never kept.
 */
export function scrub(error: unknown): Error {
  if (isBusError(error)) return error;
  const copy = new Error(messageOf(error));
  if (!(error instanceof Error)) return copy;
  copy.name = error.name;
  const from = error as unknown as Record<string, unknown>;
  const to = copy as unknown as Record<string, unknown>;
  for (const key of ['code', 'errno', 'syscall', 'address', 'port']) {
    const value = from[key];
    if (typeof value === 'string' || typeof value === 'number') to[key] = value;
  }
  return copy;
}

/** @internal What the publisher, the subscriptions and the dead-letter scan need of the connections. */
export interface Connections {
  /** Where the transport connects, credentials redacted (`redis://app:***@10.0.0.5:6379`). */
  readonly endpoint: string;
  /** The final error (credentials or permissions refused), once there is one: nothing reconnects after it. */
  readonly failure: BusError | undefined;
  /** The command connection when it is connected; else throws the final error or a `BrokerUnavailableError`. */
  ready(): Redis;
  /**
   * The command connection once it is connected, waiting up to `timeoutMs` for a reconnect;
   * rejects with the final error, or `BrokerUnavailableError` (endpoint and last cause) when the
   * time is up or the transport closes.
   */
  whenReady(timeoutMs: number): Promise<Redis>;
  /** A new connection to the same server, not connected yet (`overrides` win over the user's options). */
  open(overrides: RedisOptions): Redis;
  /** PINGs the command connection now; drops it (ioredis reconnects) when it stays silent. */
  probe(why: string): Promise<void>;
  /**
   * `error` as a `BusError` for a public method (`doing`: what failed, e.g. "XGROUP CREATE of
   * busbar:{a.b}"): a refusal is an `AuthenticationError`, `WRONGTYPE` a `TopologyError`, anything
   * else a retryable `BrokerUnavailableError` naming the endpoint and the cause.
   */
  toBusError(error: unknown, doing: string): BusError;
  /** Reports `error` of any connection of the transport; a refusal makes the transport fail for good. */
  noteError(error: unknown): void;
  /** The logger of the bus (silent before `connect`). */
  readonly logger: Logger;
}

/**
 * @internal The command connection and its state. No offline queue: a command while Redis is
 * unreachable fails at once (`BrokerUnavailableError`). Commands already in flight when the
 * connection drops are sent again after the reconnect (settle scripts are idempotent: each checks
 * the entry is still this consumer's).
 *
 * `'connected'` means Redis answered a `PING` on this connection (ioredis's `ready` alone follows
 * an `INFO` that a user may disable, and says nothing after a reconnect through a proxy that
 * accepts and stays silent). Refused credentials or permissions (`WRONGPASS`, `NOAUTH`, `NOPERM`
 * during the handshake) move to `'failed'` and stop every reconnect.
 */
export class RedisConnection implements Connections {
  readonly endpoint: string;
  private client: Redis | undefined;
  private context: TransportContext | undefined;
  /** State, `connection` events, `since` and the last credential-free cause. */
  private readonly state = new ConnectionStateCell();
  private closed = false;
  private probing = false;
  private healthTimer: NodeJS.Timeout | undefined;
  private final: BusError | undefined;
  /** The last cause of not being connected (kept over a later "Connection is closed"). */
  private lastCause: BusError | undefined;
  /** Every connection opened and not ended yet (ended at once when the transport fails). */
  private readonly opened = new Set<Redis>();
  /** Told when the command connection is found silent and dropped (the publisher fails what waits on it). */
  private readonly linkLostListeners = new Set<(why: string) => void>();
  /** Called on every change of state (and at close): `whenReady` waits with it. */
  private readonly watchers = new Set<() => void>();

  constructor(private readonly options: ResolvedOptions) {
    this.endpoint = redact(options.url);
  }

  get logger(): Logger {
    return this.context?.logger ?? silentLogger;
  }

  /** Calls `listener` whenever the command connection is found silent and dropped. */
  onLinkLost(listener: (why: string) => void): void {
    this.linkLostListeners.add(listener);
  }

  get failure(): BusError | undefined {
    return this.final;
  }

  /** ioredis `retryStrategy`: exponential backoff with full jitter; never gives up unless refused or closed. */
  private retryStrategy = (times: number): number | null => {
    if (this.final !== undefined) return null;
    const { initialMs, maxMs } = this.options.settings.reconnect;
    return backoffDelay(times + 1, { initialMs, maxMs, minMs: initialMs });
  };

  open(overrides: RedisOptions): Redis {
    const conn = new Redis(this.options.url, {
      retryStrategy: this.retryStrategy,
      // `disconnect` ends the socket and destroys it after this long if it is still open: a dead
      // link never closes by itself, and a timer left behind would keep the process alive.
      disconnectTimeout: 0,
      ...this.options.redisOptions,
      ...overrides,
      lazyConnect: true,
    });
    this.opened.add(conn);
    conn.on('end', () => this.opened.delete(conn));
    conn.on('error', (error: unknown) => {
      this.logger.debug({ endpoint: this.endpoint, err: messageOf(error) }, 'redis connection error');
      if (isRefusal(error)) this.refused(error);
    });
    this.watchHandshake(conn);
    return conn;
  }

  /**
   * Drops a connection that is open (TCP) but not ready within `connectTimeout` (ioredis's
   * timeout covers only the TCP connect): a handshake that stays silent — a black-holed link after
   * a reconnect — would otherwise never end, and never reconnect.
   */
  private watchHandshake(conn: Redis): void {
    const limitMs = this.options.redisOptions.connectTimeout ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    conn.on('connect', () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (conn.status !== 'connect' || this.closed) return;
        this.noteError(new Error(`no reply to the handshake within ${limitMs} ms`));
        conn.disconnect(true);
      }, limitMs);
      timer.unref();
    });
    const stop = () => clearTimeout(timer);
    conn.on('ready', stop);
    conn.on('close', stop);
  }

  /**
   * Starts the command connection and resolves after its first attempt — connected, refused, or
   * not reachable yet. When Redis is down it keeps reconnecting in the background instead of
   * throwing; `health()` and the `connection` events say how it goes.
   */
  async connect(context: TransportContext): Promise<void> {
    if (this.client) return;
    this.context = context;
    this.state.attach(context);
    const client = this.open({ enableOfflineQueue: false, connectionName: 'busbar:main' });
    this.client = client;
    let first: (() => void) | undefined;
    const attempted = new Promise<void>((resolve) => {
      first = resolve;
    });
    const settleFirst = () => {
      first?.();
      first = undefined;
    };
    client.on('ready', () => {
      void this.handshake(client).finally(settleFirst);
    });
    client.on('close', () => {
      if (!this.closed && this.final === undefined) {
        if (this.lastCause === undefined) this.noteError(new Error('the connection was closed (by the server or the network)'));
        this.setState('reconnecting');
      }
      settleFirst();
    });
    client.on('end', () => {
      if (this.final === undefined) this.setState(this.closed ? 'closed' : 'disconnected');
      settleFirst();
    });
    client.on('error', (error: unknown) => this.noteError(error));
    client.on('connect', () => {
      if (this.lastCause === undefined) this.noteError(new Error('TCP connected, no reply to the handshake yet'));
    });
    this.setState('connecting');
    client.connect().catch((error: unknown) => {
      this.noteError(error);
      settleFirst();
    });
    await attempted;
    if (this.state.state !== 'connected' && this.final === undefined && !this.closed) {
      this.logger.warn(
        { endpoint: this.endpoint, err: this.lastCause?.message },
        'redis is not reachable yet; reconnecting in the background',
      );
    }
    const { intervalMs } = this.options.settings.healthCheck;
    if (intervalMs > 0 && !this.closed) {
      this.healthTimer = setInterval(() => void this.probe('periodic'), intervalMs);
      this.healthTimer.unref();
    }
  }

  /**
   * After ioredis's `ready`: `'connected'` once Redis answers a `PING` within
   * `healthCheck.timeoutMs`; a refusal fails the transport; silence or anything but `PONG` (not
   * Redis on that port) drops the connection and reconnects.
   */
  private async handshake(client: Redis): Promise<void> {
    const { timeoutMs } = this.options.settings.healthCheck;
    const reply = await pingReply(client, timeoutMs);
    if (client !== this.client || this.closed || this.final !== undefined || client.status !== 'ready') return;
    if (reply === 'PONG') {
      this.setState('connected');
      return;
    }
    if (isRefusal(reply)) {
      this.refused(reply);
      return;
    }
    this.noteError(reply === SILENT ? new Error(`no reply to PING within ${timeoutMs} ms`) : reply);
    this.setState('reconnecting');
    client.disconnect(true);
  }

  /**
   * Remembers the last cause (credential-free). A refusal fails the transport; "Connection is
   * closed" does not replace a more telling earlier cause (`ECONNREFUSED …`, `WRONGPASS …`).
   */
  noteError(error: unknown): void {
    if (this.closed || this.final !== undefined) return;
    if (isRefusal(error)) {
      this.refused(error);
      return;
    }
    const text = messageOf(error);
    if (this.lastCause !== undefined && CLOSED.test(text)) return;
    this.lastCause = new BrokerUnavailableError(`redis at ${this.endpoint}: ${text}`, { cause: scrub(error) });
    this.state.fail(this.lastCause);
  }

  /** Credentials or permissions refused: `'failed'` for good; every connection ends, nothing reconnects. */
  private refused(error: unknown): void {
    if (this.closed || this.final !== undefined) return;
    const text = messageOf(error);
    this.final = new AuthenticationError(`redis at ${this.endpoint} refused the connection: ${text}`, { cause: scrub(error) });
    this.lastCause = this.final;
    this.state.failed(this.final);
    this.notify();
    this.logger.error({ endpoint: this.endpoint, err: text }, 'redis refused the credentials or permissions; not reconnecting');
    clearInterval(this.healthTimer);
    for (const conn of this.opened) end(conn);
  }

  private setState(state: 'connecting' | 'connected' | 'reconnecting' | 'disconnected' | 'closed'): void {
    if (this.final !== undefined) return;
    if (state === 'connected') this.lastCause = undefined;
    this.state.set(state);
    this.notify();
  }

  private notify(): void {
    for (const watcher of [...this.watchers]) watcher();
  }

  /**
   * Liveness of the command connection: PING with a deadline of `healthCheck.timeoutMs`; silence
   * on a connection that claims to be ready means a dead (half-open, black-holed) link: it leaves
   * `'connected'` at once and is dropped so ioredis reconnects (and re-sends the commands still
   * waiting for a reply).
   */
  async probe(why: string): Promise<void> {
    const client = this.client;
    if (!client || this.closed || this.probing || this.state.state !== 'connected' || client.status !== 'ready') return;
    this.probing = true;
    try {
      const { timeoutMs } = this.options.settings.healthCheck;
      if ((await pingReply(client, timeoutMs)) !== SILENT) return;
      if (this.closed || client.status !== 'ready' || this.final !== undefined) return;
      const detail = `no reply to PING within ${timeoutMs} ms (${why}): connection presumed dead, reconnecting`;
      this.noteError(new Error(detail));
      this.setState('reconnecting');
      this.logger.warn({ endpoint: this.endpoint, err: detail }, 'redis command connection is silent; reconnecting');
      client.disconnect(true);
      for (const listener of this.linkLostListeners) listener(`no reply to PING within ${timeoutMs} ms`);
    } finally {
      this.probing = false;
    }
  }

  ready(): Redis {
    if (this.final !== undefined) throw this.final;
    const client = this.client;
    if (!client) throw new BrokerUnavailableError(`redis transport (${this.endpoint}) is not connected (call connect first)`);
    if (this.closed) throw new BrokerUnavailableError(`redis transport (${this.endpoint}) is closed`);
    if (this.state.state !== 'connected' || client.status !== 'ready') throw this.unavailable();
    return client;
  }

  /** `BrokerUnavailableError` naming the endpoint, the state and the last cause. */
  private unavailable(): BrokerUnavailableError {
    const cause = this.lastCause;
    const why = cause ? `: ${cause.message.replace(`redis at ${this.endpoint}: `, '')}` : '';
    return new BrokerUnavailableError(`redis at ${this.endpoint} is not reachable (${this.state.state})${why}`, {
      cause: cause?.cause ?? cause,
    });
  }

  whenReady(timeoutMs: number): Promise<Redis> {
    try {
      return Promise.resolve(this.ready());
    } catch (error) {
      if (this.final !== undefined || this.closed || !this.client) return Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      const done = (outcome: () => void) => {
        clearTimeout(timer);
        this.watchers.delete(check);
        outcome();
      };
      const check = () => {
        if (this.final !== undefined) return done(() => reject(this.final));
        if (this.closed) return done(() => reject(new BrokerUnavailableError(`redis transport (${this.endpoint}) is closed`)));
        const client = this.client;
        if (client && this.state.state === 'connected' && client.status === 'ready') done(() => resolve(client));
      };
      const timer = setTimeout(() => done(() => reject(this.unavailable())), timeoutMs);
      timer.unref();
      this.watchers.add(check);
    });
  }

  toBusError(error: unknown, doing: string): BusError {
    if (isBusError(error)) return error;
    const text = messageOf(error);
    if (isRefusal(error)) {
      return new AuthenticationError(`redis at ${this.endpoint} refused ${doing}: ${text}`, { cause: scrub(error) });
    }
    if (error instanceof ReplyError && text.startsWith('WRONGTYPE')) {
      return new TopologyError(`redis at ${this.endpoint}: ${doing} failed: ${text}`, { cause: scrub(error) });
    }
    const last = CLOSED.test(text) && this.lastCause ? ` (${this.lastCause.message.replace(`redis at ${this.endpoint}: `, '')})` : '';
    return new BrokerUnavailableError(`redis at ${this.endpoint}: ${doing} failed: ${text}${last}`, { cause: scrub(error) });
  }

  /** Connection state of the command connection, since when, and its last cause (credential-free). */
  health(): TransportHealth {
    return this.state.health();
  }

  /** Closes the command connection (every other connection was closed by its owner). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.healthTimer);
    this.notify();
    const client = this.client;
    if (client) await quit(client, this.options.settings.healthCheck.timeoutMs);
    this.state.set('closed');
  }
}

/** What {@link pingReply} returns when Redis stayed silent. */
const SILENT: unique symbol = Symbol('silent');

/** @internal PINGs `conn`: its reply (`'PONG'`), the error it rejected with, or {@link SILENT} after `timeoutMs`. */
async function pingReply(conn: Redis, timeoutMs: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const silent = new Promise<typeof SILENT>((resolve) => {
    timer = setTimeout(() => resolve(SILENT), timeoutMs);
  });
  try {
    return await Promise.race([
      conn.ping().then(
        (reply) => reply,
        (error: unknown) => error,
      ),
      silent,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * @internal PINGs `conn` and tells whether it answered within `timeoutMs`. Any reply counts, an error
 * reply or a rejection by ioredis (connection already closing) included: only silence is reported.
 */
export async function answersPing(conn: Redis, timeoutMs: number): Promise<boolean> {
  return (await pingReply(conn, timeoutMs)) !== SILENT;
}

/** @internal Ends `conn` for good without waiting: no reconnect, no timer or socket left behind. */
export function end(conn: Redis): void {
  if (conn.status === 'end') return;
  conn.disconnect();
}

/**
 * @internal Closes `conn`: `QUIT` when it is ready (bounded by `timeoutMs`: a dead link never
 * answers), then ends it; no timer or socket is left behind.
 */
export async function quit(conn: Redis, timeoutMs: number): Promise<void> {
  if (conn.status === 'ready') {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      conn.quit().catch(() => {}),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }
  end(conn);
}

/**
 * @internal Settles like `command`, and calls `onSilent` whenever the command has been waiting for
 * longer than `deadlineMs` on a connection that claims to be ready (a half-open link answers nothing
 * and reports no error). The clock restarts at every `ready` (ioredis re-sends unfulfilled commands
 * after a reconnect) and after each `onSilent`. Its timer never keeps the process alive.
 */
export function withDeadline<T>(conn: Redis, command: Promise<T>, deadlineMs: number, onSilent: () => void): Promise<T> {
  let since = Date.now();
  const onReady = () => {
    since = Date.now();
  };
  conn.on('ready', onReady);
  let timer: NodeJS.Timeout;
  const arm = (ms: number) => {
    timer = setTimeout(check, ms);
    timer.unref();
  };
  const check = () => {
    const left = since + deadlineMs - Date.now();
    if (conn.status !== 'ready') {
      arm(deadlineMs);
    } else if (left > 0) {
      arm(left);
    } else {
      since = Date.now();
      onSilent();
      arm(deadlineMs);
    }
  };
  arm(deadlineMs);
  return command.finally(() => {
    clearTimeout(timer);
    conn.off('ready', onReady);
  });
}
