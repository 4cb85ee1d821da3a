/**
 * Broker profiles of the memory transport (`new MemoryTransport({ like: 'rabbitmq' })`): the
 * declared semantics of each broker transport — its capabilities, what it refuses at publish, how
 * it rounds retry delays, its size and name limits — reproduced in memory, so a unit test on memory
 * fails where the application would fail on that broker.
 *
 * The figures mirror the transports' defaults (`packages/rabbitmq`, `packages/redis-streams`,
 * `packages/kafka`) and the brokers' default configuration; a test of this package keeps them in
 * step with the transports' own capabilities.
 */
import { type Clock, PublishRejectedError, type TransportCapabilities } from '@busbar/core/transport';

/** Which broker a {@link MemoryTransport} behaves like. `'memory'`: no broker's limits (the default). */
export type MemoryProfileName = 'memory' | 'rabbitmq' | 'redis-streams' | 'kafka';

/** A broker profile: what the memory transport reproduces of one broker transport. */
export interface MemoryProfile {
  readonly name: MemoryProfileName;
  /** Capabilities as that transport declares them (durability stays `'memory'`: nothing survives the process). */
  readonly capabilities: Omit<TransportCapabilities, 'durability' | 'maxRetryDelayMs'>;
  /** Longest retry delay, ms (RabbitMQ: the largest delay tier). */
  readonly maxRetryDelayMs: number;
  /**
   * Retry delay tiers, ms, ascending: a retry is held for the smallest tier ≥ its delay (RabbitMQ's
   * per-tier TTL queues). Absent: held for exactly the delay.
   */
  readonly delayTiersMs?: readonly number[];
  /**
   * Whether a publish to a topic no group has ever subscribed to is refused (RabbitMQ: a
   * `mandatory` publish to an exchange with no queue bound comes back unroutable). Elsewhere the
   * message is kept in the topic's log for groups that start from `'earliest'`.
   */
  readonly refusesUnroutable: boolean;
  /** Largest message (body + header names and values) the broker accepts, bytes, and the setting that says so. */
  readonly maxMessageBytes?: { readonly bytes: number; readonly setting: string };
  /** The broker object names the transport derives for a group (checked at subscribe), with what each is. */
  groupObjects(topic: string, group: string, maxRetryDelayMs: number): readonly (readonly [name: string, what: string])[];
  /** How the broker's binding spells an attribute header (see `Transport.attributePrefix`). */
  readonly attributePrefix?: string;
}

/** The RabbitMQ transport's default retry delay tiers, ms (`DEFAULT_DELAY_TIERS_MS` of `@busbar/rabbitmq`). */
export const RABBITMQ_DELAY_TIERS_MS: readonly number[] = [
  10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
];

const MEMORY: MemoryProfile = {
  name: 'memory',
  capabilities: {
    orderedByKey: true,
    newGroupFromEarliest: true,
    balancedAssignment: true,
    leaseExtension: false,
    maxNameLength: 255,
    namePattern: /^[\w.\-:|]+$/,
  },
  maxRetryDelayMs: 86_400_000,
  refusesUnroutable: false,
  groupObjects: (topic, group) => [[`${topic}.${group}`, 'group queue']],
};

const RABBITMQ: MemoryProfile = {
  name: 'rabbitmq',
  capabilities: {
    orderedByKey: false,
    newGroupFromEarliest: false,
    balancedAssignment: true,
    leaseExtension: false,
    maxNameLength: 255,
    namePattern: /^(?!amq\.)[A-Za-z0-9._:-]+$/,
  },
  maxRetryDelayMs: RABBITMQ_DELAY_TIERS_MS[RABBITMQ_DELAY_TIERS_MS.length - 1] as number,
  delayTiersMs: RABBITMQ_DELAY_TIERS_MS,
  refusesUnroutable: true,
  // RabbitMQ 3.13's default `max_message_size` (128 MiB).
  maxMessageBytes: { bytes: 134_217_728, setting: 'RabbitMQ max_message_size' },
  groupObjects: (topic, group, maxDelay) => {
    const queue = `${topic}:${group}`;
    return [
      [topic, 'RabbitMQ exchange name'],
      [queue, 'RabbitMQ queue name'],
      [`${queue}:dlq`, 'RabbitMQ dead-letter queue name'],
      [`${queue}:delay:${maxDelay}`, 'RabbitMQ delay queue name'],
    ];
  },
  attributePrefix: 'cloudEvents_',
};

const REDIS_STREAMS: MemoryProfile = {
  name: 'redis-streams',
  capabilities: {
    orderedByKey: false,
    newGroupFromEarliest: true,
    balancedAssignment: false,
    leaseExtension: true,
    maxNameLength: 512,
    namePattern: /^[A-Za-z0-9._-]+$/,
  },
  maxRetryDelayMs: 365 * 24 * 3_600_000,
  refusesUnroutable: false,
  // Redis's default `proto-max-bulk-len` (512 MiB), the largest value of one stream field.
  maxMessageBytes: { bytes: 536_870_912, setting: 'Redis proto-max-bulk-len' },
  groupObjects: (topic, group) => [
    [topic, 'topic'],
    [group, 'group'],
  ],
};

const KAFKA: MemoryProfile = {
  name: 'kafka',
  capabilities: {
    orderedByKey: true,
    newGroupFromEarliest: true,
    balancedAssignment: false,
    leaseExtension: false,
    maxNameLength: 249,
    namePattern: /^[a-zA-Z0-9._-]+$/,
  },
  maxRetryDelayMs: 24 * 60 * 60 * 1000,
  refusesUnroutable: false,
  // Kafka's default `message.max.bytes` (1 MiB + 12): the largest record batch a broker accepts.
  maxMessageBytes: { bytes: 1_048_588, setting: 'Kafka message.max.bytes' },
  groupObjects: (topic, group) => [
    [topic, 'Kafka topic'],
    [`${topic}.${group}.retry`, 'Kafka retry topic'],
    [`${topic}.${group}.dlq`, 'Kafka dead-letter topic'],
    [`${topic}.${group}`, 'Kafka consumer group'],
    [`${topic}.${group}.dlq-replay`, 'Kafka replay group'],
  ],
};

/** The profiles by name. */
export const MEMORY_PROFILES: Readonly<Record<MemoryProfileName, MemoryProfile>> = Object.freeze({
  memory: MEMORY,
  rabbitmq: RABBITMQ,
  'redis-streams': REDIS_STREAMS,
  kafka: KAFKA,
});

/** The smallest tier ≥ `delayMs` (the largest tier when none is), as the RabbitMQ transport rounds. */
export function tierFor(delayMs: number, tiers: readonly number[]): number {
  for (const t of tiers) if (t >= delayMs) return t;
  return tiers[tiers.length - 1] as number;
}

/** Longest delay one `setTimeout` can hold (2³¹ − 1 ms); longer ones are held in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * The clock a group member holds its retries with: delays rounded up to `tiers` (when given), and
 * delays beyond what one timer can hold (Redis: up to a year) held in steps instead of firing at
 * once.
 */
export function retryClock(clock: Clock, tiers: readonly number[] | undefined): Clock {
  const hold = (fn: () => void, ms: number): (() => void) => {
    if (!(ms > MAX_TIMER_MS)) return clock.setTimer(fn, ms);
    let cancel = clock.setTimer(() => {
      cancel = hold(fn, ms - MAX_TIMER_MS);
    }, MAX_TIMER_MS);
    return () => cancel();
  };
  return {
    now: () => clock.now(),
    setTimer: (fn, ms) => hold(fn, tiers === undefined ? ms : tierFor(ms, tiers)),
  };
}

/** Bytes a broker counts for a message: body, header names and values (UTF-16 units as an estimate of UTF-8 bytes). */
export function messageBytes(headers: Readonly<Record<string, string>>, body: Uint8Array): number {
  let n = body.byteLength;
  for (const k of Object.keys(headers)) n += k.length + (headers[k]?.length ?? 0);
  return n;
}

/** RabbitMQ's refusal of a publish to an exchange with no queue bound, as `@busbar/rabbitmq` reports it. */
export function unroutable(topic: string): PublishRejectedError {
  return new PublishRejectedError(
    `no queue is bound to exchange "${topic}"; RabbitMQ returned the message unroutable (subscribe a group first)`,
  );
}

/** A publish larger than the profile's broker accepts. */
export function tooLarge(bytes: number, limit: { readonly bytes: number; readonly setting: string }): PublishRejectedError {
  return new PublishRejectedError(`message of ${bytes} bytes exceeds ${limit.setting} (${limit.bytes} bytes)`);
}
