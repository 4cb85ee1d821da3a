/**
 * The transport: ties the connection, the publisher, the subscriptions and the dead letters
 * together and implements core's `Transport`.
 */
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import {
  checkBrokerName,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  type GroupDescription,
  type OutgoingMessage,
  type PublishOutcome,
  type StoredDeadLetter,
  type SubscriptionSpec,
  type Transport,
  type TransportCapabilities,
  type TransportContext,
  type TransportHealth,
  type TransportSubscription,
} from '@busbar/core/transport';
import { RedisConnection } from './connection.js';
import { scanDeadLetters } from './dead-letters.js';
import { describeGroups } from './groups.js';
import { type RedisStreamsOptions, type ResolvedSettings, resolveOptions } from './options.js';
import { Publisher } from './publish.js';
import { TRIM_ACKED } from './scripts.js';
import { RedisStreamSubscription } from './subscription.js';
import { groupKeys, streamKey } from './topology.js';

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

/**
 * Busbar transport on Redis Streams (ioredis).
 *
 * - One stream per event type, `<prefix>:{<topic>}`; an entry is two fields, `_headers` (JSON) and
 *   `body` (see `wire.ts`). `publish` appends a batch with one `APPEND` script per stream (an `XADD`
 *   per message inside Redis) and resolves each message on its own reply (durable as the server's
 *   AOF settings make it — see the README).
 * - A group is a Redis consumer group; each subscription reads with `XREADGROUP … BLOCK` on its own
 *   connection, at most `concurrency` deliveries unsettled by core, and acknowledges what core
 *   settled during one event-loop turn with one `XACK` per stream (the next read does not wait for
 *   its reply; at most another `concurrency` may wait for one).
 * - Entries left pending by a crashed consumer are claimed after `claimIdleMs` (`XAUTOCLAIM`); a
 *   delivery reports Redis's delivery count − 1 as its `redeliveries` (core adds it to the attempt
 *   carried in the headers).
 * - Core settles each delivery once and hands over the complete headers of every copy: a retry or
 *   dead letter is the body with exactly those headers.
 * - Retries wait in a per-group sorted set and move, when due, to the group's own retry stream;
 *   dead letters go to the group's dead-letter stream. Both are single Lua scripts.
 */
export class RedisStreamsTransport implements Transport {
  /** Transport name. */
  readonly name = 'redis-streams';
  /** See {@link REDIS_STREAMS_CAPABILITIES}. */
  readonly capabilities = REDIS_STREAMS_CAPABILITIES;
  /** Where it connects: the URL with its password redacted (`redis://app:***@10.0.0.5:6379`). */
  readonly endpoint: string;
  private readonly settings: ResolvedSettings;
  private readonly consumerBase: string | undefined;
  private readonly connection: RedisConnection;
  private readonly publisher: Publisher;
  private closed = false;
  private readonly subscriptions = new Set<RedisStreamSubscription>();
  private readonly consumerSeq = new Map<string, number>();

  constructor(options: RedisStreamsOptions = {}) {
    const resolved = resolveOptions(options);
    this.settings = resolved.settings;
    this.consumerBase = resolved.consumerBase;
    this.connection = new RedisConnection(resolved);
    this.endpoint = this.connection.endpoint;
    this.publisher = new Publisher(this.connection, this.settings.keyPrefix, this.capabilities);
    this.connection.onLinkLost((why) => this.publisher.linkLost(why));
  }

  /**
   * Opens the command connection and resolves after its first attempt. `'connected'` only once
   * Redis answered a `PING`; refused credentials or permissions → `'failed'` (`AuthenticationError`),
   * nothing reconnects; when Redis is down it keeps reconnecting in the background instead of throwing.
   */
  connect(context: TransportContext): Promise<void> {
    return this.connection.connect(context);
  }

  /**
   * Appends the batch: per stream, one `XADD` for a lone message, else one `APPEND` script per 500
   * messages (an `XADD` each inside Redis); each message resolves on its own reply.
   * `BrokerUnavailableError` while disconnected.
   */
  publish(batch: readonly OutgoingMessage[], signal: AbortSignal): Promise<readonly PublishOutcome[]> {
    return this.publisher.publish(batch, signal);
  }

  /**
   * Creates the group (once) on the event stream and the group's retry stream, then starts a member
   * on its own connection. Rejects at once while not connected (`BrokerUnavailableError`, or the
   * final `AuthenticationError`); a connection that drops meanwhile is waited for up to
   * `subscribeTimeoutMs`. Every rejection is a `BusError`.
   */
  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    checkBrokerName(spec.topic, this.capabilities, 'topic');
    checkBrokerName(spec.group, this.capabilities, 'group');
    const client = this.connection.ready();
    const keys = groupKeys(this.settings.keyPrefix, spec.topic, spec.group);
    const sub = new RedisStreamSubscription({
      connections: this.connection,
      client,
      settings: this.settings,
      spec,
      keys,
      consumer: this.consumerName(keys.stream, spec.group),
      logger: this.connection.logger,
      onDelivery,
      onClosed: (s) => this.subscriptions.delete(s),
    });
    try {
      await sub.start();
    } catch (error) {
      await sub.close().catch(() => {});
      throw this.connection.toBusError(error, `subscribe of group ${spec.group} to ${keys.stream}`);
    }
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
    const client = this.connection.ready();
    const keys = groupKeys(this.settings.keyPrefix, target.topic, target.group);
    try {
      return await scanDeadLetters(client, keys, scan);
    } catch (error) {
      throw this.connection.toBusError(error, `the dead letters of ${keys.dlq}`);
    }
  }

  /**
   * The consumer groups of `topic` (every group `XINFO GROUPS` lists on its stream, from any
   * process) with their backlog (`lag` on the stream and the group's retry stream), in-flight
   * entries (pending), retries waiting in the delayed set and dead letters (see `groups.ts`).
   * Reads broker state only. `[]` when nothing was ever published or subscribed on `topic`.
   */
  async describeGroups(topic: string): Promise<readonly GroupDescription[]> {
    const client = this.connection.ready();
    checkBrokerName(topic, this.capabilities, 'topic');
    try {
      return await describeGroups(client, this.settings.keyPrefix, topic);
    } catch (error) {
      throw this.connection.toBusError(error, `describing the groups of ${streamKey(this.settings.keyPrefix, topic)}`);
    }
  }

  /**
   * Trims the stream of `topic` below the oldest entry any of its groups has still to read or
   * acknowledge (`XTRIM MINID`). Runs on its own with `retention: { trim: 'acked' }`.
   * @returns the number of entries removed
   */
  async trimAcked(topic: string): Promise<number> {
    const client = this.connection.ready();
    const key = streamKey(this.settings.keyPrefix, checkBrokerName(topic, this.capabilities, 'topic'));
    try {
      return Number(await TRIM_ACKED.run(client, [key], []));
    } catch (error) {
      throw this.connection.toBusError(error, `XTRIM of ${key}`);
    }
  }

  /** Connection state of the command connection and its last error (credential-free). */
  health(): TransportHealth {
    return this.connection.health();
  }

  /** Closes every subscription, then the command connection. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    await Promise.allSettled([...this.subscriptions].map((s) => s.close()));
    this.closed = true;
    await this.connection.close();
  }
}
