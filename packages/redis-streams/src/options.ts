/**
 * The options of the transport (public, documented with their defaults) and their validation into
 * the settings the other parts of the package read.
 */
import { readBusbarEnv } from '@busbar/core';
import { ConfigError, redact } from '@busbar/core/transport';
import type { RedisOptions } from 'ioredis';

/** Retention of the event streams. */
export type RetentionPolicy =
  /** Keep every entry (default): the stream grows until you trim it yourself. */
  | { readonly trim: 'none' }
  /**
   * Periodically `XTRIM … MINID` below the oldest entry any group of the stream has still to read
   * or acknowledge. Entries are never dropped unconsumed by an existing group; a group created
   * later with `startFrom: 'earliest'` sees only what is left. With no group, nothing is trimmed.
   */
  | {
      readonly trim: 'acked';
      /** How often each subscription trims its stream, ms. @defaultValue 10000 */
      readonly intervalMs?: number;
    };

/** Reconnection backoff (exponential with jitter). */
export interface ReconnectOptions {
  /** First delay, ms. @defaultValue 50 */
  readonly initialMs?: number;
  /** Largest delay, ms. @defaultValue 5000 */
  readonly maxMs?: number;
}

/**
 * Liveness checks of the connections. A half-open link (the server or a middlebox forgot the
 * connection, the client still believes it is open) reports no error: only silence reveals it.
 */
export interface HealthCheckOptions {
  /**
   * How often the command connection is PINGed, ms (it is also PINGed at once when a publish is
   * aborted by its signal). `0` disables the periodic PING (not the one after an abort).
   * @defaultValue 5000
   */
  readonly intervalMs?: number;
  /**
   * Longest wait for a reply before the connection is declared dead and reconnected, ms: for a
   * PING, for a non-blocking command of a subscription, and beyond `blockMs` for a blocking read.
   * Keep it above the longest time your Redis takes to answer under load.
   * @defaultValue 2000
   */
  readonly timeoutMs?: number;
}

/** Options of {@link RedisStreamsTransport}. */
export interface RedisStreamsOptions {
  /**
   * `redis://[user:password@]host:port[/db]` or `rediss://…` (TLS). Credentials are never logged.
   * @defaultValue `BUSBAR_REDIS_URL`, else `redis://localhost:6379` (core's `readBusbarEnv`)
   */
  url?: string;
  /**
   * Passed to ioredis as is (TLS options, ACL `username`/`password`, timeouts …), over the URL.
   * The transport sets `lazyConnect`, `enableOfflineQueue` and `retryStrategy` itself unless given here.
   * @defaultValue `{}`
   */
  redisOptions?: RedisOptions;
  /** Prefix of every key. @defaultValue 'busbar' */
  keyPrefix?: string;
  /**
   * Visibility timeout: an entry left pending by a consumer for longer than this is claimed by a
   * live member of the group (`XAUTOCLAIM`). Keep it above your handlers' run time, or extend the
   * lease from the handler (`ctx.extendLease`). @defaultValue 30000
   */
  claimIdleMs?: number;
  /** How often a subscription looks for entries to claim, ms. @defaultValue 1000 */
  claimIntervalMs?: number;
  /** `BLOCK` time of one `XREADGROUP`, ms (also the longest a stop may wait). @defaultValue 1000 */
  blockMs?: number;
  /** Longest interval between two checks of the delayed retry set, ms. @defaultValue 1000 */
  retryPollMs?: number;
  /** Retention of the event streams. @defaultValue `{ trim: 'none' }` */
  retention?: RetentionPolicy;
  /**
   * Consumer name of this process's subscriptions. A stable name (e.g. the pod name) lets a
   * restarted process resume its own pending entries at once instead of after `claimIdleMs`.
   * @defaultValue `<hostname>-<pid>-<random>`, unique per subscription
   */
  consumerName?: string;
  /** Reconnection backoff. @defaultValue `{ initialMs: 50, maxMs: 5000 }` */
  reconnect?: ReconnectOptions;
  /** Liveness checks (half-open links). @defaultValue `{ intervalMs: 5000, timeoutMs: 2000 }` */
  healthCheck?: HealthCheckOptions;
  /**
   * Longest a `subscribe` waits for Redis when a connection drops while it sets up the group and
   * its consumer connection (it resumes after the reconnect), ms; past it, it rejects with
   * `BrokerUnavailableError`. A subscribe while not connected rejects at once. @defaultValue 10000
   */
  subscribeTimeoutMs?: number;
}

/** @internal Settings the connection, the publisher and the subscriptions share. */
export interface ResolvedSettings {
  readonly keyPrefix: string;
  readonly claimIdleMs: number;
  readonly claimIntervalMs: number;
  readonly blockMs: number;
  readonly retryPollMs: number;
  readonly retention: RetentionPolicy;
  readonly reconnect: { readonly initialMs: number; readonly maxMs: number };
  readonly healthCheck: { readonly intervalMs: number; readonly timeoutMs: number };
  readonly subscribeTimeoutMs: number;
}

/** @internal The options, validated (`ConfigError`) and with their defaults. */
export interface ResolvedOptions {
  readonly url: string;
  readonly redisOptions: RedisOptions;
  /** `consumerName`, when given. */
  readonly consumerBase: string | undefined;
  readonly settings: ResolvedSettings;
}

/** @internal Validates `options` and fills in the defaults; throws `ConfigError` (credential-free). */
export function resolveOptions(options: RedisStreamsOptions): ResolvedOptions {
  const url = options.url ?? readBusbarEnv().redisUrl;
  if (!/^rediss?:\/\//i.test(url)) throw new ConfigError(`Redis URL must start with redis:// or rediss://, got "${redact(url)}"`);
  try {
    new URL(url);
  } catch (error) {
    throw new ConfigError(`invalid Redis URL "${redact(url)}"`, { cause: error });
  }
  const positive = (n: number, name: string) => {
    if (!Number.isFinite(n) || n <= 0) throw new ConfigError(`${name} must be a positive number, got ${n}`);
    return n;
  };
  const nonNegative = (n: number, name: string) => {
    if (!Number.isFinite(n) || n < 0) throw new ConfigError(`${name} must be a number >= 0, got ${n}`);
    return n;
  };
  const keyPrefix = options.keyPrefix ?? 'busbar';
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(keyPrefix)) throw new ConfigError(`keyPrefix "${keyPrefix}" must match [A-Za-z0-9._:-]{1,64}`);
  const retention = options.retention ?? { trim: 'none' };
  if (retention.trim !== 'none' && retention.trim !== 'acked') throw new ConfigError(`retention.trim must be 'none' or 'acked'`);
  return {
    url,
    redisOptions: options.redisOptions ?? {},
    consumerBase: options.consumerName,
    settings: {
      keyPrefix,
      claimIdleMs: positive(options.claimIdleMs ?? 30_000, 'claimIdleMs'),
      claimIntervalMs: positive(options.claimIntervalMs ?? 1_000, 'claimIntervalMs'),
      blockMs: positive(options.blockMs ?? 1_000, 'blockMs'),
      retryPollMs: positive(options.retryPollMs ?? 1_000, 'retryPollMs'),
      retention,
      reconnect: {
        initialMs: positive(options.reconnect?.initialMs ?? 50, 'reconnect.initialMs'),
        maxMs: positive(options.reconnect?.maxMs ?? 5_000, 'reconnect.maxMs'),
      },
      healthCheck: {
        intervalMs: nonNegative(options.healthCheck?.intervalMs ?? 5_000, 'healthCheck.intervalMs'),
        timeoutMs: positive(options.healthCheck?.timeoutMs ?? 2_000, 'healthCheck.timeoutMs'),
      },
      subscribeTimeoutMs: positive(options.subscribeTimeoutMs ?? 10_000, 'subscribeTimeoutMs'),
    },
  };
}
