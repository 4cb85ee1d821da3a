import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import {
  BrokerUnavailableError,
  ConfigError,
  type ConnectionState,
  checkBrokerName,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  describeError,
  type Logger,
  type OutgoingMessage,
  type PublishOutcome,
  PublishRejectedError,
  readBusbarEnv,
  redact,
  type StoredDeadLetter,
  type SubscriptionSpec,
  silentLogger,
  type Transport,
  type TransportCapabilities,
  type TransportContext,
  type TransportHealth,
  type TransportSubscription,
} from '@busbar/core';
import { Redis, type RedisOptions, ReplyError } from 'ioredis';
import { BODY_FIELD, decodeFields, encodeBody, encodeFields, encodeHeaders, HEADERS_FIELD } from './codec.js';
import { groupKeys, streamKey } from './keys.js';
import { answersPing } from './liveness.js';
import type { RedisStreamsOptions, RetentionPolicy } from './options.js';
import { APPEND, REPLAY, TRIM_ACKED } from './scripts.js';
import { RedisStreamSubscription } from './subscription.js';

/** What the Redis Streams transport can do. */
export const REDIS_STREAMS_CAPABILITIES: TransportCapabilities = {
  durability: 'configurable',
  orderedByKey: false,
  newGroupFromEarliest: true,
  balancedAssignment: false,
  leaseExtension: true,
  maxRetryDelayMs: 365 * 24 * 3_600_000,
  maxNameLength: 512,
  namePattern: /^[A-Za-z0-9._-]+$/,
};

/** Redis errors a later attempt may get past (the server is loading, read-only, out of memory …). */
const TRANSIENT = /^(OOM|LOADING|READONLY|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|NOREPLICAS)/;
/** Replies refusing our credentials: more telling than the "Connection is closed" that follows them. */
const AUTH_ERROR = /\b(WRONGPASS|NOAUTH|NOPERM)\b/;

/** Most messages appended by one `APPEND` script (it blocks Redis while it runs). */
const APPEND_MAX = 500;

/** Options of the publish's abort listener (one object for every publish). */
const ONCE = Object.freeze({ once: true } as const);

/** The outcome of every message that was appended (shared: it carries nothing of its own). */
const PUBLISHED: PublishOutcome = Object.freeze({ ok: true });

/** The outcome of a message whose `XADD` failed. */
function failedXadd(m: OutgoingMessage, error: unknown): PublishOutcome {
  const message = `XADD of ${m.id} to ${m.topic} failed: ${describeError(error)}`;
  // Only a reply of the server can reject a message; anything else (ioredis's "Stream isn't
  // writeable", "Connection is closed" while a dead link is dropped …) is the link's fault.
  const rejected = error instanceof ReplyError && !TRANSIENT.test((error as Error).message);
  return { ok: false, error: rejected ? new PublishRejectedError(message) : new BrokerUnavailableError(message) };
}

/** @internal Settings the subscriptions share. */
export interface ResolvedSettings {
  readonly keyPrefix: string;
  readonly claimIdleMs: number;
  readonly claimIntervalMs: number;
  readonly blockMs: number;
  readonly retryPollMs: number;
  readonly retention: RetentionPolicy;
  readonly reconnect: { readonly initialMs: number; readonly maxMs: number };
  readonly healthCheck: { readonly intervalMs: number; readonly timeoutMs: number };
}

/**
 * Busbar transport on Redis Streams (ioredis).
 *
 * - One stream per event type, `<prefix>:{<topic>}`; an entry is two fields, `_headers` (JSON) and
 *   `body` (see `codec.ts`). `publish` appends a batch with one `APPEND` script per stream (an `XADD`
 *   per message inside Redis) and resolves each message on its own reply (durable as the server's
 *   AOF settings make it — see the README).
 * - A group is a Redis consumer group; each subscription reads with `XREADGROUP … BLOCK` on its own
 *   connection, at most `concurrency` deliveries unsettled by core, and acknowledges what core
 *   settled during one event-loop turn with one `XACK` per stream (the next read does not wait for
 *   its reply; at most another `concurrency` may wait for one).
 * - Entries left pending by a crashed consumer are claimed after `claimIdleMs` (`XAUTOCLAIM`); the
 *   attempt number adds Redis's delivery count to the attempt carried in the headers.
 * - Retries wait in a per-group sorted set and move, when due, to the group's own retry stream;
 *   dead letters go to the group's dead-letter stream. Both are single Lua scripts.
 */
export class RedisStreamsTransport implements Transport {
  /** Transport name. */
  readonly name = 'redis-streams';
  /** See {@link REDIS_STREAMS_CAPABILITIES}. */
  readonly capabilities = REDIS_STREAMS_CAPABILITIES;
  private readonly settings: ResolvedSettings;
  private readonly url: string;
  private readonly redisOptions: RedisOptions;
  private readonly consumerBase: string | undefined;
  private client: Redis | undefined;
  private context: TransportContext | undefined;
  private state: ConnectionState = 'disconnected';
  private lastError: string | undefined;
  private closed = false;
  private readonly subscriptions = new Set<RedisStreamSubscription>();
  private readonly consumerSeq = new Map<string, number>();
  private readonly streamKeys = new Map<string, string>();
  private probing = false;
  private healthTimer: NodeJS.Timeout | undefined;

  constructor(options: RedisStreamsOptions = {}) {
    this.url = options.url ?? readBusbarEnv().redisUrl;
    if (!/^rediss?:\/\//i.test(this.url))
      throw new ConfigError(`Redis URL must start with redis:// or rediss://, got "${redact(this.url)}"`);
    try {
      new URL(this.url);
    } catch (error) {
      throw new ConfigError(`invalid Redis URL "${redact(this.url)}"`, { cause: error });
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
    this.settings = {
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
    };
    this.redisOptions = options.redisOptions ?? {};
    this.consumerBase = options.consumerName;
  }

  private get logger(): Logger {
    return this.context?.logger ?? silentLogger;
  }

  /** ioredis `retryStrategy`: exponential backoff with full jitter, never giving up. */
  private retryStrategy = (times: number): number => {
    const { initialMs, maxMs } = this.settings.reconnect;
    const cap = Math.min(maxMs, initialMs * 2 ** Math.min(times, 16));
    return Math.round(initialMs + Math.random() * Math.max(0, cap - initialMs));
  };

  /** @internal Options of a new connection (`overrides` win over the user's options). */
  connectionOptions(overrides: RedisOptions): RedisOptions {
    return {
      retryStrategy: this.retryStrategy,
      ...this.redisOptions,
      ...overrides,
      lazyConnect: true,
    };
  }

  /** @internal A new connection to the same server. */
  newConnection(overrides: RedisOptions): Redis {
    const conn = new Redis(this.url, this.connectionOptions(overrides));
    conn.on('error', (error: unknown) => {
      this.logger.debug({ err: describeError(error) }, 'redis connection error');
    });
    return conn;
  }

  /** Opens the command connection; when Redis is down it keeps reconnecting in the background instead of throwing. */
  async connect(context: TransportContext): Promise<void> {
    if (this.client) return;
    this.context = context;
    // No offline queue: a publish while Redis is unreachable fails at once (BrokerUnavailableError).
    // Commands already in flight when the connection drops are sent again after the reconnect
    // (settle scripts are idempotent: each checks the entry is still this consumer's).
    const client = this.newConnection({ enableOfflineQueue: false, connectionName: 'busbar:main' });
    this.client = client;
    client.on('ready', () => this.setState('connected'));
    client.on('reconnecting', () => this.setState('reconnecting'));
    client.on('close', () => {
      if (!this.closed) this.setState('reconnecting');
    });
    client.on('end', () => this.setState(this.closed ? 'closed' : 'disconnected'));
    client.on('error', (error: unknown) => this.noteError(error));
    this.setState('connecting');
    try {
      await client.connect();
    } catch (error) {
      // ioredis keeps reconnecting (retryStrategy); publishes fail with BrokerUnavailableError meanwhile.
      this.noteError(error);
      this.logger.warn({ err: this.lastError }, 'redis is not reachable yet; reconnecting in the background');
    }
    if (this.settings.healthCheck.intervalMs > 0) {
      this.healthTimer = setInterval(() => void this.probe('periodic'), this.settings.healthCheck.intervalMs);
      this.healthTimer.unref();
    }
  }

  /**
   * Remembers the last error (credential-free). An authentication refusal (`WRONGPASS`, `NOAUTH`) is
   * kept over the generic "Connection is closed" ioredis reports after it, until the next `ready`.
   */
  private noteError(error: unknown): void {
    const text = redact(describeError(error));
    if (this.lastError !== undefined && AUTH_ERROR.test(this.lastError) && !AUTH_ERROR.test(text) && this.state !== 'connected') return;
    this.lastError = text;
  }

  /**
   * Liveness of the command connection: PING with a deadline of `healthCheck.timeoutMs`; silence
   * on a connection that claims to be ready means a dead (half-open) link: drop it so ioredis
   * reconnects (and re-sends the commands still waiting for a reply).
   */
  private async probe(why: string): Promise<void> {
    const client = this.client;
    if (!client || this.closed || this.probing || client.status !== 'ready') return;
    this.probing = true;
    try {
      const { timeoutMs } = this.settings.healthCheck;
      if (await answersPing(client, timeoutMs)) return;
      if (this.closed || client.status !== 'ready') return;
      this.lastError = `no reply to PING within ${timeoutMs} ms (${why}): connection presumed dead, reconnecting`;
      this.logger.warn({ err: this.lastError }, 'redis command connection is silent; reconnecting');
      client.disconnect(true);
    } finally {
      this.probing = false;
    }
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    if (state === 'connected') this.lastError = undefined;
    this.state = state;
    const detail = state === 'reconnecting' || state === 'disconnected' ? this.lastError : undefined;
    this.context?.emit({ kind: 'connection', state, ...(detail === undefined ? {} : { detail }) });
  }

  /** @internal The command connection, or BrokerUnavailableError when it is not ready. */
  ready(): Redis {
    const client = this.client;
    if (!client) throw new BrokerUnavailableError('redis transport is not connected (call connect first)');
    if (this.closed) throw new BrokerUnavailableError('redis transport is closed');
    if (client.status !== 'ready') {
      throw new BrokerUnavailableError(
        `redis is not reachable (connection ${client.status})${this.lastError ? `: ${this.lastError}` : ''}`,
      );
    }
    return client;
  }

  /** The stream key of `topic` (validated once per topic). */
  private streamOf(topic: string): string {
    let key = this.streamKeys.get(topic);
    if (key === undefined) {
      key = streamKey(this.settings.keyPrefix, checkBrokerName(topic, this.capabilities, 'topic'));
      if (this.streamKeys.size >= 10_000) this.streamKeys.clear();
      this.streamKeys.set(topic, key);
    }
    return key;
  }

  /**
   * Appends the batch: per stream, one `XADD` for a lone message, else one `APPEND` script per 500
   * messages (an `XADD` each inside Redis); each message resolves on its own reply.
   * `BrokerUnavailableError` while disconnected.
   */
  publish(batch: readonly OutgoingMessage[], signal: AbortSignal): Promise<readonly PublishOutcome[]> {
    if (signal.aborted) return Promise.reject(new BrokerUnavailableError('publish aborted before it was sent'));
    let client: Redis;
    try {
      client = this.ready();
    } catch (error) {
      return Promise.reject(error);
    }
    const outcomes: PublishOutcome[] = new Array(batch.length);
    let appended: Promise<void>;
    const lone = batch.length === 1 ? batch[0] : undefined;
    if (lone !== undefined) {
      appended = this.appendOne(client, lone, 0, outcomes);
    } else {
      const all: Promise<void>[] = [];
      for (const [key, indexes] of this.byStream(batch)) {
        for (let from = 0; from < indexes.length; from += APPEND_MAX) {
          const chunk = indexes.length <= APPEND_MAX ? indexes : indexes.slice(from, from + APPEND_MAX);
          all.push(this.append(client, key, batch, chunk, outcomes));
        }
      }
      appended = all.length === 1 ? (all[0] as Promise<void>) : Promise.all(all).then(() => undefined);
    }
    // `append` never rejects (it records failures as outcomes): only the signal can end the wait early.
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        reject(new BrokerUnavailableError('publish aborted while waiting for redis'));
        // A publish that outlived its deadline may sit on a dead (half-open) link: check it.
        void this.probe('after a publish timed out');
      };
      signal.addEventListener('abort', onAbort, ONCE);
      appended.then(
        () => {
          signal.removeEventListener('abort', onAbort);
          resolve(outcomes);
        },
        (error: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(error);
        },
      );
    });
  }

  /** Appends the lone message `m` (index `i`) with a plain `XADD` and records its outcome. */
  private async appendOne(client: Redis, m: OutgoingMessage, i: number, outcomes: PublishOutcome[]): Promise<void> {
    const key = this.streamOf(m.topic); // an invalid topic rejects the publish, as for a batch
    try {
      await client.xadd(key, '*', HEADERS_FIELD, encodeHeaders(m.headers), BODY_FIELD, encodeBody(m.body));
      outcomes[i] = PUBLISHED;
    } catch (error) {
      outcomes[i] = failedXadd(m, error);
    }
  }

  /** The batch's message indexes by stream key, in batch order (one stream: no grouping work). */
  private byStream(batch: readonly OutgoingMessage[]): Map<string, number[]> {
    const groups = new Map<string, number[]>();
    const first = batch[0];
    if (first === undefined) return groups;
    if (batch.every((m) => m.topic === first.topic)) {
      groups.set(
        this.streamOf(first.topic),
        Array.from({ length: batch.length }, (_, i) => i),
      );
      return groups;
    }
    batch.forEach((m, i) => {
      const key = this.streamOf(m.topic);
      const indexes = groups.get(key);
      if (indexes) indexes.push(i);
      else groups.set(key, [i]);
    });
    return groups;
  }

  /**
   * Appends the messages `indexes` of `batch` to stream `key` and records their outcomes: a failure
   * of the whole command fails each of them.
   */
  private async append(
    client: Redis,
    key: string,
    batch: readonly OutgoingMessage[],
    indexes: readonly number[],
    outcomes: PublishOutcome[],
  ): Promise<void> {
    if (indexes.length === 1) return this.appendOne(client, batch[indexes[0] as number] as OutgoingMessage, indexes[0] as number, outcomes);
    try {
      const args: (string | Buffer)[] = new Array(indexes.length * 2);
      for (let j = 0; j < indexes.length; j++) {
        const m = batch[indexes[j] as number] as OutgoingMessage;
        args[2 * j] = encodeHeaders(m.headers);
        args[2 * j + 1] = encodeBody(m.body);
      }
      const replies = await APPEND.run(client, [key], args);
      if (!Array.isArray(replies) || replies.length !== indexes.length) {
        throw new BrokerUnavailableError(`unexpected reply of redis to an append of ${indexes.length} messages`);
      }
      for (let j = 0; j < indexes.length; j++) {
        const i = indexes[j] as number;
        const reply: unknown = replies[j];
        outcomes[i] = reply instanceof Error ? failedXadd(batch[i] as OutgoingMessage, reply) : PUBLISHED;
      }
    } catch (error) {
      for (const i of indexes) outcomes[i] = failedXadd(batch[i] as OutgoingMessage, error);
    }
  }

  /** Creates the group (once) on the event stream and the group's retry stream, then starts a member on its own connection. */
  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    checkBrokerName(spec.topic, this.capabilities, 'topic');
    checkBrokerName(spec.group, this.capabilities, 'group');
    const client = this.ready();
    const keys = groupKeys(this.settings.keyPrefix, spec.topic, spec.group);
    const sub = new RedisStreamSubscription({
      transport: this,
      client,
      settings: this.settings,
      spec,
      keys,
      consumer: this.consumerName(keys.stream, spec.group),
      logger: this.logger,
      onDelivery,
      onClosed: (s) => this.subscriptions.delete(s),
    });
    await sub.start();
    this.subscriptions.add(sub);
    return sub;
  }

  private consumerName(stream: string, group: string): string {
    if (this.consumerBase === undefined) return `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`;
    const id = `${stream}\u0000${group}`;
    const n = (this.consumerSeq.get(id) ?? 0) + 1;
    this.consumerSeq.set(id, n);
    return n === 1 ? this.consumerBase : `${this.consumerBase}-${n}`;
  }

  /** Walks the group's dlq stream oldest first; each selected dead letter moves atomically to the group's retry stream. */
  async processDeadLetters(target: DeadLetterTarget, scan: DeadLetterScan): Promise<readonly StoredDeadLetter[]> {
    const client = this.ready();
    const keys = groupKeys(this.settings.keyPrefix, target.topic, target.group);
    const selected: StoredDeadLetter[] = [];
    let from = '-';
    while (selected.length < scan.limit) {
      const page = (await client.callBuffer('XRANGE', keys.dlq, from, '+', 'COUNT', 100)) as [Buffer, Buffer[]][];
      if (page.length === 0) break;
      for (const [idBuf, fields] of page) {
        const handle = idBuf.toString();
        const stored: StoredDeadLetter = { ...decodeFields(fields), handle };
        const headers = scan.select(stored);
        if (headers === undefined) continue;
        selected.push(stored);
        if (!scan.dryRun) {
          await REPLAY.run(client, [keys.dlq, keys.retry], [handle, ...encodeFields(headers, stored.body)]);
        }
        if (selected.length >= scan.limit) break;
      }
      const last = page[page.length - 1]?.[0].toString() as string;
      from = `(${last}`;
    }
    return selected;
  }

  /**
   * Trims the stream of `topic` below the oldest entry any of its groups has still to read or
   * acknowledge (`XTRIM MINID`). Runs on its own with `retention: { trim: 'acked' }`.
   * @returns the number of entries removed
   */
  async trimAcked(topic: string): Promise<number> {
    const client = this.ready();
    return Number(
      await TRIM_ACKED.run(client, [streamKey(this.settings.keyPrefix, checkBrokerName(topic, this.capabilities, 'topic'))], []),
    );
  }

  /** Connection state of the command connection and its last error (credential-free). */
  health(): TransportHealth {
    return this.lastError && this.state !== 'connected' ? { state: this.state, detail: this.lastError } : { state: this.state };
  }

  /** Closes every subscription, then the command connection. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.allSettled([...this.subscriptions].map((s) => s.close()));
    this.closed = true;
    clearInterval(this.healthTimer);
    const client = this.client;
    if (!client) {
      this.setState('closed');
      return;
    }
    if (client.status === 'ready') await client.quit().catch(() => client.disconnect());
    else client.disconnect();
    this.setState('closed');
  }
}
