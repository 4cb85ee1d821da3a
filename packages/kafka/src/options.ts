import { readBusbarEnv } from '@busbar/core';
import { type BackoffOptions, ConfigError } from '@busbar/core/transport';
import type { SASLOptions } from 'kafkajs';

/** How the transport names its Kafka objects. Every name is checked against Kafka's limits. */
export interface KafkaNaming {
  /** Topic of an event (`topic` is core's namespaced destination, e.g. `shop.order.placed`). @defaultValue identity */
  topic(topic: string): string;
  /** Consumer group id of a subscription group. @defaultValue `<topic>.<group>` */
  groupId(topic: string, group: string): string;
  /** The group's retry topic. @defaultValue `<topic>.<group>.retry` */
  retryTopic(topic: string, group: string): string;
  /** The group's dead-letter topic. @defaultValue `<topic>.<group>.dlq` */
  deadLetterTopic(topic: string, group: string): string;
  /** Consumer group holding dead-letter replay progress. @defaultValue `<topic>.<group>.dlq-replay` */
  replayGroupId(topic: string, group: string): string;
}

/** Default {@link KafkaNaming}. */
export const defaultNaming: KafkaNaming = {
  topic: (topic) => topic,
  groupId: (topic, group) => `${topic}.${group}`,
  retryTopic: (topic, group) => `${topic}.${group}.retry`,
  deadLetterTopic: (topic, group) => `${topic}.${group}.dlq`,
  replayGroupId: (topic, group) => `${topic}.${group}.dlq-replay`,
};

/** Options of {@link KafkaTransport}. */
export interface KafkaTransportOptions {
  /** Bootstrap brokers, `host:port`. @defaultValue `BUSBAR_KAFKA_BROKERS` (comma-separated), else `['localhost:9092']` */
  brokers?: readonly string[] | string;
  /** Client id sent to the brokers (quotas, logs). @defaultValue 'busbar' */
  clientId?: string;
  /** TLS: `true` or Node `tls.connect` options. @defaultValue none (plaintext) */
  ssl?: boolean | Record<string, unknown>;
  /** SASL (plain, scram-sha-256/512, aws, oauthbearer). Credentials never appear in logs or errors. @defaultValue none */
  sasl?: SASLOptions;
  /** Object naming. @defaultValue {@link defaultNaming} */
  naming?: Partial<KafkaNaming>;
  /**
   * Partitions of the topics the transport creates (event topics and retry topics). More
   * partitions = more parallelism per group; order holds per key. @defaultValue 3
   */
  numPartitions?: number;
  /** Partitions of dead-letter topics (1 keeps dead letters in one oldest-first order). @defaultValue 1 */
  deadLetterPartitions?: number;
  /**
   * Replication factor of created topics. 1 suits a single test broker only; production: 3
   * (with `min.insync.replicas` 2 in `topicConfig` or on the brokers). @defaultValue 1
   */
  replicationFactor?: number;
  /** Extra topic configuration of created topics, e.g. `{ 'min.insync.replicas': '2' }`. @defaultValue none */
  topicConfig?: Readonly<Record<string, string>>;
  /** Consumer session timeout, ms (the broker bounds it by `group.min/max.session.timeout.ms`). @defaultValue 30000 */
  sessionTimeoutMs?: number;
  /** Consumer heartbeat interval, ms (about a third of the session timeout). @defaultValue 3000 */
  heartbeatIntervalMs?: number;
  /** How long the group waits for members to rejoin during a rebalance, ms. @defaultValue 60000 */
  rebalanceTimeoutMs?: number;
  /** Longest a fetch waits for data at the broker, ms (also bounds pause/resume and shutdown latency). @defaultValue 500 */
  maxWaitTimeMs?: number;
  /**
   * Partitions of one subscription processed at once. @defaultValue `min(concurrency, 2 × numPartitions)`
   * (main + retry topic)
   */
  partitionsConsumedConcurrently?: number;
  /**
   * How long opening one broker socket (TCP, and TLS if on) may take, ms; a broker that does not
   * answer in time counts as unreachable for that request (the client's `connectionTimeout`).
   * Not to be confused with {@link KafkaTransportOptions.connectTimeoutMs}. @defaultValue 3000
   */
  socketConnectTimeoutMs?: number;
  /**
   * @deprecated Renamed {@link KafkaTransportOptions.socketConnectTimeoutMs} (same meaning and
   * default); still accepted. Giving both with different values is a `ConfigError`.
   */
  connectionTimeoutMs?: number;
  /** Timeout of one request, ms. @defaultValue 30000 */
  requestTimeoutMs?: number;
  /**
   * Longest one connection attempt may take before it counts as failed, ms (`connect()` returns
   * after the first attempt, or after this). A failed attempt is not final: health reports
   * `reconnecting` with the cause and the transport keeps reconnecting in the background
   * (publishes fail fast with `BrokerUnavailableError` meanwhile); the bus's `ready({ timeoutMs })`
   * waits for `connected`. @defaultValue 10000
   */
  connectTimeoutMs?: number;
  /**
   * While connected, a metadata request to the cluster every this many ms (the health check):
   * a silent link (black-holed, half-open, broker frozen) is noticed by the check that gets no
   * answer within {@link KafkaTransportOptions.healthCheckTimeoutMs}; the transport then reports
   * `reconnecting`, fails pending and new publishes with `BrokerUnavailableError` and reconnects on
   * new sockets. With the defaults a silent link leaves `connected` within 10 s. 0 turns it off
   * (a silent link is then noticed by the first request that times out, `requestTimeoutMs`).
   * @defaultValue 5000
   */
  healthCheckIntervalMs?: number;
  /** How long the health check waits for the cluster's answer, ms. @defaultValue 5000 */
  healthCheckTimeoutMs?: number;
  /** Client-level retries of one request (metadata, produce …) before it fails. @defaultValue 5 */
  requestRetries?: number;
  /** Longest wait between two client-level retries, ms. @defaultValue 1000 */
  maxRetryTimeMs?: number;
  /** Broker-side wait for all in-sync replicas to acknowledge a produce (acks = all), ms. @defaultValue 30000 */
  ackTimeoutMs?: number;
  /** Backoff of the background reconnect loop. @defaultValue `{ initialMs: 200, maxMs: 5000 }` */
  reconnectBackoff?: BackoffOptions;
  /**
   * Largest estimated size of one produce request, bytes; bigger publish batches are split (Kafka
   * limits a record batch to `max.message.bytes`, 1 MiB by default). @defaultValue 900000
   */
  maxRequestBytes?: number;
  /** How long subscribing waits for the group join, ms. @defaultValue 60000 */
  subscribeTimeoutMs?: number;
  /** How long reading the dead letters may take, ms. @defaultValue 60000 */
  deadLetterScanTimeoutMs?: number;
  /** kafkajs log level, mapped into the bus's (redacting) logger (the platformatic client logs nothing). @defaultValue 'warn' */
  logLevel?: 'nothing' | 'error' | 'warn' | 'info' | 'debug';
  /**
   * The Kafka client library under the transport. `'kafkajs'`: kafkajs 2.x. `'platformatic'`:
   * `@platformatic/kafka` (actively maintained, markedly less CPU per message; SASL PLAIN,
   * SCRAM and OAUTHBEARER only). Both keep the same guarantees (idempotent producer, acks = all,
   * offsets committed after processing). Opt-in for now. @defaultValue 'kafkajs'
   */
  client?: 'kafkajs' | 'platformatic';
}

/** Options with defaults applied. @internal */
export interface ResolvedOptions {
  readonly brokers: readonly string[];
  readonly clientId: string;
  readonly ssl: boolean | Record<string, unknown> | undefined;
  readonly sasl: SASLOptions | undefined;
  readonly naming: KafkaNaming;
  readonly numPartitions: number;
  readonly deadLetterPartitions: number;
  readonly replicationFactor: number;
  readonly topicConfig: Readonly<Record<string, string>>;
  readonly sessionTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly rebalanceTimeoutMs: number;
  readonly maxWaitTimeMs: number;
  readonly partitionsConsumedConcurrently: number | undefined;
  readonly socketConnectTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly healthCheckIntervalMs: number;
  readonly healthCheckTimeoutMs: number;
  readonly requestRetries: number;
  readonly maxRetryTimeMs: number;
  readonly ackTimeoutMs: number;
  readonly reconnectBackoff: BackoffOptions;
  readonly maxRequestBytes: number;
  readonly subscribeTimeoutMs: number;
  readonly deadLetterScanTimeoutMs: number;
  readonly logLevel: 'nothing' | 'error' | 'warn' | 'info' | 'debug';
  readonly client: 'kafkajs' | 'platformatic';
}

function int(value: number | undefined, fallback: number, name: string, min: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min) throw new ConfigError(`KafkaTransport option ${name} must be an integer ≥ ${min}, got ${v}`);
  return v;
}

/** `socketConnectTimeoutMs`, or its deprecated alias `connectionTimeoutMs`. */
function socketConnectTimeout(o: KafkaTransportOptions): number {
  const name =
    o.socketConnectTimeoutMs === undefined && o.connectionTimeoutMs !== undefined ? 'connectionTimeoutMs' : 'socketConnectTimeoutMs';
  if (o.socketConnectTimeoutMs !== undefined && o.connectionTimeoutMs !== undefined && o.socketConnectTimeoutMs !== o.connectionTimeoutMs)
    throw new ConfigError(
      'KafkaTransport options socketConnectTimeoutMs and connectionTimeoutMs (its deprecated alias) disagree; give socketConnectTimeoutMs only',
    );
  return int(o.socketConnectTimeoutMs ?? o.connectionTimeoutMs, 3000, name, 1);
}

const BROKER = /^[^\s,/@]+:\d{1,5}$/;

/** Applies defaults and validates. @throws ConfigError @internal */
export function resolveOptions(o: KafkaTransportOptions): ResolvedOptions {
  const raw = o.brokers ?? readBusbarEnv().kafkaBrokers;
  const brokers = (typeof raw === 'string' ? raw.split(',') : [...raw]).map((b) => b.trim()).filter(Boolean);
  if (brokers.length === 0) throw new ConfigError('KafkaTransport needs at least one broker (host:port)');
  for (const b of brokers) if (!BROKER.test(b)) throw new ConfigError(`Kafka broker "${b.slice(0, 100)}" is not host:port`);
  const sessionTimeoutMs = int(o.sessionTimeoutMs, 30_000, 'sessionTimeoutMs', 1);
  const heartbeatIntervalMs = int(o.heartbeatIntervalMs, Math.min(3000, Math.floor(sessionTimeoutMs / 3)), 'heartbeatIntervalMs', 1);
  if (heartbeatIntervalMs >= sessionTimeoutMs) throw new ConfigError('heartbeatIntervalMs must be lower than sessionTimeoutMs');
  const level = o.logLevel ?? 'warn';
  if (!['nothing', 'error', 'warn', 'info', 'debug'].includes(level)) throw new ConfigError(`unknown logLevel "${level}"`);
  const client = o.client ?? 'kafkajs';
  if (client !== 'kafkajs' && client !== 'platformatic') throw new ConfigError(`unknown client "${String(client).slice(0, 40)}"`);
  return {
    brokers,
    clientId: o.clientId ?? 'busbar',
    ssl: o.ssl,
    sasl: o.sasl,
    naming: { ...defaultNaming, ...o.naming },
    numPartitions: int(o.numPartitions, 3, 'numPartitions', 1),
    deadLetterPartitions: int(o.deadLetterPartitions, 1, 'deadLetterPartitions', 1),
    replicationFactor: int(o.replicationFactor, 1, 'replicationFactor', 1),
    topicConfig: { ...o.topicConfig },
    sessionTimeoutMs,
    heartbeatIntervalMs,
    rebalanceTimeoutMs: int(o.rebalanceTimeoutMs, 60_000, 'rebalanceTimeoutMs', 1),
    maxWaitTimeMs: int(o.maxWaitTimeMs, 500, 'maxWaitTimeMs', 1),
    partitionsConsumedConcurrently:
      o.partitionsConsumedConcurrently === undefined
        ? undefined
        : int(o.partitionsConsumedConcurrently, 1, 'partitionsConsumedConcurrently', 1),
    socketConnectTimeoutMs: socketConnectTimeout(o),
    requestTimeoutMs: int(o.requestTimeoutMs, 30_000, 'requestTimeoutMs', 1),
    connectTimeoutMs: int(o.connectTimeoutMs, 10_000, 'connectTimeoutMs', 1),
    healthCheckIntervalMs: int(o.healthCheckIntervalMs, 5000, 'healthCheckIntervalMs', 0),
    healthCheckTimeoutMs: int(o.healthCheckTimeoutMs, 5000, 'healthCheckTimeoutMs', 1),
    requestRetries: int(o.requestRetries, 5, 'requestRetries', 1),
    maxRetryTimeMs: int(o.maxRetryTimeMs, 1000, 'maxRetryTimeMs', 1),
    ackTimeoutMs: int(o.ackTimeoutMs, 30_000, 'ackTimeoutMs', 1),
    reconnectBackoff: { initialMs: 200, maxMs: 5000, ...o.reconnectBackoff },
    maxRequestBytes: int(o.maxRequestBytes, 900_000, 'maxRequestBytes', 1024),
    subscribeTimeoutMs: int(o.subscribeTimeoutMs, 60_000, 'subscribeTimeoutMs', 1),
    deadLetterScanTimeoutMs: int(o.deadLetterScanTimeoutMs, 60_000, 'deadLetterScanTimeoutMs', 1),
    logLevel: level,
    client,
  };
}
