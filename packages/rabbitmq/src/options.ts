import { readBusbarEnv } from '@busbar/core';
import { type BackoffOptions, ConfigError, redact } from '@busbar/core/transport';
import type { SocketOptions } from 'amqplib';

/** Reconnection policy after a lost connection (or a failed first connect). */
export interface ReconnectOptions {
  /**
   * Backoff between connection attempts (core's exponential backoff with full jitter).
   * @defaultValue `{ initialMs: 100, multiplier: 2, maxMs: 10000, minMs: 50 }`
   */
  backoff?: BackoffOptions;
  /**
   * How long `publish`, `subscribe` and `processDeadLetters` wait for the connection to come back
   * (within the publish signal) before failing with `BrokerUnavailableError`. `0` fails at once.
   * @defaultValue 5000
   */
  waitForConnectionMs?: number;
}

/** Options of {@link RabbitMqTransport}. */
export interface RabbitMqOptions {
  /**
   * `amqp://` or `amqps://` URL (user, password, host, port, vhost, query parameters as amqplib
   * accepts them). The password never appears in errors or logs.
   * @defaultValue `BUSBAR_RABBITMQ_URL`, else `amqp://localhost:5672`
   */
  url?: string;
  /** Socket / TLS options passed to amqplib as is (CA, client certificate, `servername` …). @defaultValue none */
  socketOptions?: SocketOptions;
  /**
   * AMQP heartbeat interval, seconds (`0` disables). Ignored when the URL sets `heartbeat`. A link
   * that goes silent (black-holed, half-open) is noticed after two missed intervals — between 2 and
   * 3 intervals (8–12 s with the default) — and the transport leaves `connected`. RabbitMQ takes the
   * smaller of this and its own `heartbeat` setting.
   * @defaultValue 4
   */
  heartbeatSeconds?: number;
  /**
   * How long one connection attempt may take, TCP connect and AMQP handshake together (amqplib's
   * socket `timeout`; `socketOptions.timeout` wins). Bounds an attempt against a host that accepts
   * the connection and then never answers. @defaultValue 5000
   */
  connectTimeoutMs?: number;
  /** Type of every queue this transport declares. @defaultValue 'quorum' */
  queueType?: 'quorum' | 'classic';
  /**
   * `'declare'`: declare exchanges and queues idempotently. `'verify'`: only check they exist with
   * the expected arguments and fail with `TopologyError` otherwise (for brokers whose topology is
   * managed elsewhere). @defaultValue 'declare'
   */
  topology?: 'declare' | 'verify';
  /**
   * Retry delay tiers, ms, ascending. A requested delay is rounded **up** to the next tier; the
   * largest tier is `capabilities.maxRetryDelayMs`. One delay queue per (group, tier) is declared
   * the first time a retry needs it.
   * @defaultValue `[10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 900000, 3600000]`
   */
  delayTiersMs?: readonly number[];
  /**
   * Quorum queues only: `x-delivery-limit` of the group queues — after this many redeliveries of one
   * copy without a settle (consumer crashes, lost connections) RabbitMQ moves it to the group's
   * dead-letter queue. Handler failures never count (each retry is a fresh copy). `false` disables.
   * @defaultValue 20
   */
  deliveryLimit?: number | false;
  /** Reconnection policy. @defaultValue see {@link ReconnectOptions} */
  reconnect?: ReconnectOptions;
  /** `connection_name` client property, shown in the management UI and `rabbitmqctl list_connections`. @defaultValue 'busbar' */
  connectionName?: string;
}

/** Default retry delay tiers, ms. */
export const DEFAULT_DELAY_TIERS_MS: readonly number[] = [
  10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
];

/** Default AMQP heartbeat, seconds: a silent link is noticed within 8–12 s. */
export const DEFAULT_HEARTBEAT_SECONDS = 4;

/** Options after defaults and validation. */
export interface ResolvedOptions {
  readonly url: string;
  /** Where the transport connects, credential-free: `amqp://user:***@host:port[/vhost]`. */
  readonly endpoint: string;
  /** The vhost the URL names (`/` by default), for messages. */
  readonly vhost: string;
  readonly socketOptions: SocketOptions;
  readonly queueType: 'quorum' | 'classic';
  readonly topology: 'declare' | 'verify';
  readonly delayTiersMs: readonly number[];
  readonly deliveryLimit: number | undefined;
  readonly backoff: BackoffOptions;
  readonly waitForConnectionMs: number;
}

/**
 * The credential-free form of a parsed URL: scheme, user (password as `***`), host, port (the
 * default one spelled out), vhost unless it is the default `/`. Built from the parts rather than by
 * redacting the text, so no spelling of a password (an unencoded `@`, a query parameter) can leak.
 */
export function endpointOf(url: URL): string {
  const port = url.port || (url.protocol === 'amqps:' ? '5671' : '5672');
  const user = url.username !== '' || url.password !== '' ? `${url.username}:***@` : '';
  const vhost = url.pathname.length > 1 ? url.pathname : '';
  return `${url.protocol}//${user}${url.hostname}:${port}${vhost}`;
}

/** Applies defaults and validates. @throws ConfigError */
export function resolveOptions(options: RabbitMqOptions): ResolvedOptions {
  const raw = options.url ?? readBusbarEnv().rabbitmqUrl;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(`RabbitMQ url "${redact(raw)}" is not a valid URL`);
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    throw new ConfigError(`RabbitMQ url must start with amqp:// or amqps://, got "${parsed.protocol}//"`);
  }
  const heartbeat = options.heartbeatSeconds ?? DEFAULT_HEARTBEAT_SECONDS;
  if (!Number.isInteger(heartbeat) || heartbeat < 0) throw new ConfigError(`heartbeatSeconds must be an integer ≥ 0, got ${heartbeat}`);
  if (!parsed.searchParams.has('heartbeat')) parsed.searchParams.set('heartbeat', String(heartbeat));
  const tiers = [...(options.delayTiersMs ?? DEFAULT_DELAY_TIERS_MS)];
  if (tiers.length === 0) throw new ConfigError('delayTiersMs must not be empty');
  tiers.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 1 || t > 2 ** 31 - 1)
      throw new ConfigError(`delayTiersMs[${i}] must be an integer ms in 1..2^31-1, got ${t}`);
    const prev = tiers[i - 1];
    if (prev !== undefined && prev >= t) throw new ConfigError('delayTiersMs must be strictly ascending');
  });
  const queueType = options.queueType ?? 'quorum';
  if (queueType !== 'quorum' && queueType !== 'classic') throw new ConfigError(`queueType must be 'quorum' or 'classic'`);
  const topology = options.topology ?? 'declare';
  if (topology !== 'declare' && topology !== 'verify') throw new ConfigError(`topology must be 'declare' or 'verify'`);
  const limit = options.deliveryLimit ?? 20;
  if (limit !== false && (!Number.isInteger(limit) || limit < 1)) throw new ConfigError(`deliveryLimit must be an integer ≥ 1 or false`);
  const waitForConnectionMs = options.reconnect?.waitForConnectionMs ?? 5000;
  if (!Number.isFinite(waitForConnectionMs) || waitForConnectionMs < 0) throw new ConfigError('reconnect.waitForConnectionMs must be ≥ 0');
  const connectTimeoutMs = options.connectTimeoutMs ?? 5000;
  if (!Number.isInteger(connectTimeoutMs) || connectTimeoutMs < 1)
    throw new ConfigError(`connectTimeoutMs must be an integer ≥ 1, got ${connectTimeoutMs}`);
  return {
    url: parsed.toString(),
    endpoint: endpointOf(parsed),
    vhost: parsed.pathname.length > 1 ? decodeURIComponent(parsed.pathname.slice(1)) : '/',
    socketOptions: {
      timeout: connectTimeoutMs,
      ...options.socketOptions,
      clientProperties: { connection_name: options.connectionName ?? 'busbar', ...options.socketOptions?.clientProperties },
    },
    queueType,
    topology,
    delayTiersMs: tiers,
    deliveryLimit: queueType === 'quorum' && limit !== false ? limit : undefined,
    backoff: { initialMs: 100, multiplier: 2, maxMs: 10_000, minMs: 50, ...options.reconnect?.backoff },
    waitForConnectionMs,
  };
}
