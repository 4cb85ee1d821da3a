/**
 * Test kit for the Kafka integration tests (the same shape as `integration/rabbitmq/kit.ts`): a
 * registry that builds the test file's transports (options tuned for a single local broker, the
 * client library chosen per file) and cleans up a namespace's topics and groups, and a raw client
 * written with plain kafkajs, below the bus, for the conformance suite.
 */
import type { RawBrokerClient, RawProbe } from '@busbar/conformance';
import type { WireMessage } from '@busbar/core';
import { KafkaTransport, type KafkaTransportOptions } from '@busbar/kafka';
import { type Admin, type Consumer, Kafka, logLevel, Partitioners, type Producer } from 'kafkajs';
import { ProbeInbox } from '../brokers/probe-inbox.js';

/** The transports of one test file, built with options tuned for a single local test broker. */
export class TransportRegistry {
  constructor(
    private readonly brokers: string,
    /** Options every transport of this registry gets (e.g. `{ client: 'platformatic' }`). */
    private readonly defaults: KafkaTransportOptions = {},
  ) {}

  /**
   * Options for tests: short group timeouts (the broker allows sessions down to 1 s), short polls,
   * fast reconnects; then the registry's defaults, then `extra`.
   */
  options(extra: KafkaTransportOptions = {}): KafkaTransportOptions {
    return {
      brokers: this.brokers,
      clientId: 'busbar-test',
      sessionTimeoutMs: 6000,
      heartbeatIntervalMs: 500,
      rebalanceTimeoutMs: 10_000,
      maxWaitTimeMs: 200,
      connectTimeoutMs: 5000,
      reconnectBackoff: { initialMs: 100, maxMs: 1000 },
      logLevel: 'nothing',
      ...this.defaults,
      ...extra,
    };
  }

  /** A new transport for tests. */
  create(extra: KafkaTransportOptions = {}): KafkaTransport {
    return new KafkaTransport(this.options(extra));
  }

  /** Deletes the topics and consumer groups of `namespace` (names `<namespace>.…`). */
  cleanup(namespace: string): Promise<void> {
    return cleanupNamespace(this.brokers, namespace);
  }
}

const PARTITIONS = 3;

function kafkaFor(brokers: string): Kafka {
  return new Kafka({ clientId: 'busbar-test-raw', brokers: brokers.split(','), logLevel: logLevel.NOTHING });
}

/**
 * Creates `topic` if missing. Right after a topic was created, Kafka 4 can answer kafkajs's
 * metadata request with UNKNOWN_TOPIC_OR_PARTITION (metadata propagates asynchronously): that is
 * retried a few times, as the transport's client seam does.
 */
async function ensureTopic(admin: Admin, topic: string): Promise<void> {
  for (let n = 1; ; n++) {
    try {
      const existing = await admin.listTopics();
      if (existing.includes(topic)) return;
      await admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }], waitForLeaders: true });
      return;
    } catch (error) {
      if (String((error as Error).message).includes('already exists')) return;
      const unknownTopic = (error as { type?: unknown }).type === 'UNKNOWN_TOPIC_OR_PARTITION';
      if (!unknownTopic || n >= 5) throw error;
      await new Promise<void>((r) => setTimeout(r, 100 * n)); // backoff between attempts only
    }
  }
}

function toWire(headers: Record<string, unknown> | undefined, value: Buffer | null): WireMessage {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers ?? {})) {
    const last = Array.isArray(v) ? v[v.length - 1] : v;
    if (last !== undefined) out[k] = Buffer.isBuffer(last) ? last.toString('utf8') : String(last);
  }
  return { headers: out, body: value ? new Uint8Array(value) : new Uint8Array(0) };
}

/** A raw kafkajs client: writes records as any producer would, observes a topic from its end. */
export async function createRawClient(brokers: string): Promise<RawBrokerClient> {
  const kafka = kafkaFor(brokers);
  const admin = kafka.admin();
  await admin.connect();
  let producer: Producer | undefined;
  const consumers = new Set<Consumer>();
  return {
    async write(topic, message) {
      await ensureTopic(admin, topic);
      if (!producer) {
        producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, allowAutoTopicCreation: false });
        await producer.connect();
      }
      await producer.send({
        topic,
        acks: -1,
        messages: [{ key: message.key ?? null, value: Buffer.from(message.body), headers: { ...message.headers } }],
      });
    },
    async observe(topic): Promise<RawProbe> {
      await ensureTopic(admin, topic);
      const ends = await admin.fetchTopicOffsets(topic);
      const inbox = new ProbeInbox(`on ${topic}`);
      const consumer = kafka.consumer({
        groupId: `${topic}.probe-${Math.random().toString(36).slice(2, 10)}`,
        maxWaitTimeInMs: 200,
        sessionTimeout: 6000,
        heartbeatInterval: 500,
      });
      consumers.add(consumer);
      // Start at the current end: seek (in memory) before the first fetch, at the group join.
      consumer.on(consumer.events.GROUP_JOIN, (e) => {
        for (const partition of e.payload.memberAssignment[topic] ?? []) {
          const end = ends.find((x) => x.partition === partition);
          if (end) consumer.seek({ topic, partition, offset: end.high });
        }
      });
      await consumer.connect();
      await consumer.subscribe({ topics: [topic], fromBeginning: true });
      await consumer.run({
        autoCommit: false,
        eachMessage: async ({ message }) => {
          const wire = toWire(message.headers, message.value);
          inbox.add(wire.headers.ce_id, wire);
        },
      });
      return {
        waitFor: (id, timeoutMs) => inbox.waitFor(id, timeoutMs),
        async close() {
          consumers.delete(consumer);
          await consumer.disconnect();
        },
      };
    },
    async close() {
      await Promise.allSettled([...consumers].map((c) => c.disconnect()));
      await producer?.disconnect();
      await admin.disconnect();
    },
  };
}

/** Deletes the topics and consumer groups of `namespace` (names `<namespace>.…`). */
async function cleanupNamespace(brokers: string, namespace: string): Promise<void> {
  const admin = kafkaFor(brokers).admin();
  await admin.connect();
  try {
    const prefix = `${namespace}.`;
    const { groups } = await admin.listGroups();
    const ours = groups.map((g) => g.groupId).filter((g) => g.startsWith(prefix));
    if (ours.length > 0) await admin.deleteGroups(ours).catch(() => {});
    const topics = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
    if (topics.length > 0) await admin.deleteTopics({ topics });
  } finally {
    await admin.disconnect();
  }
}
