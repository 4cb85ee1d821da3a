/**
 * Kafka: Busbar's `KafkaTransport` against kafkajs used by hand — an idempotent producer with
 * acks = all (`send` per message, and `send` of 500 messages as the hand batch) and an `eachBatch`
 * consumer running `concurrency` handlers at a time, offsets resolved per chunk and committed by
 * kafkajs' auto-commit — and @platformatic/kafka's producer beside it.
 */

import { spawnSync } from 'node:child_process';
import { type Admin, Kafka, type Consumer as KConsumer, logLevel, type Producer } from 'kafkajs';
import { BusbarImpl } from '../busbar.js';
import { type Ceiling, type Consumer, type Impl, publishOnly, type Target } from '../impl.js';
import { toolClasspath } from '../javatools.js';
import { ceHeaders, type Payload } from '../payload.js';
import { versionOf } from '../versions.js';
import { busbarOr, loadTransport } from './common.js';

/** Partitions of the raw topics: KafkaTransport's default `numPartitions` (`BUSBAR_BENCH_KAFKA_PARTITIONS` overrides). */
export const PARTITIONS = Number(process.env.BUSBAR_BENCH_KAFKA_PARTITIONS ?? 3);

/** Fetch max wait of the raw consumers: KafkaTransport's default `maxWaitTimeMs`. */
export const KAFKA_MAX_WAIT_MS = 500;

/**
 * kafkajs by hand. Publish-only scenarios write to one topic; while a consumer is attached,
 * publishes go to a second topic that one long-lived consumer group reads (a kafkajs group join
 * takes seconds, so it is joined once and kept across rounds).
 */
class RawKafka implements Impl {
  readonly description =
    `kafkajs idempotent producer, acks=-1 (send per message / send of 500), ${PARTITIONS} partitions; eachBatch consumer, ${PARTITIONS} partitions at once, concurrency ÷ ${PARTITIONS} handlers each`;
  /** kafkajs' idempotent producer serializes naive sends (~0.3–1k msg/s): cap rounds so they stay short. */
  readonly maxMessages = 4000;
  private producer: Producer | undefined;
  private consumer: KConsumer | undefined;
  private handler: ((p: Payload) => Promise<void>) | undefined;
  private settled: (() => void) | undefined;
  private concurrency = 1;
  private waiters: (() => void)[] = [];
  private readonly pubTopic: string;
  private readonly conTopic: string;

  constructor(
    readonly label: string,
    private readonly kafka: Kafka,
    private readonly admin: Admin,
    runId: string,
    private readonly withHeaders = false,
  ) {
    this.pubTopic = `bench-${runId}.raw.${label}.pub`;
    this.conTopic = `bench-${runId}.raw.${label}.con`;
  }

  private get topic(): string {
    return this.handler ? this.conTopic : this.pubTopic;
  }

  async open(): Promise<void> {
    await this.admin.createTopics({
      topics: [
        { topic: this.pubTopic, numPartitions: PARTITIONS, replicationFactor: 1 },
        { topic: this.conTopic, numPartitions: PARTITIONS, replicationFactor: 1 },
      ],
      waitForLeaders: true,
    });
    this.producer = this.kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
    await this.producer.connect();
  }

  async publish(p: Payload): Promise<void> {
    await (this.producer as Producer).send({ topic: this.topic, acks: -1, messages: [this.record(p)] });
  }

  async publishBatch(ps: Payload[]): Promise<void> {
    await (this.producer as Producer).send({ topic: this.topic, acks: -1, messages: ps.map((p) => this.record(p)) });
  }

  private record(p: Payload): { value: string; headers?: Record<string, string> } {
    return this.withHeaders ? { value: JSON.stringify(p), headers: ceHeaders() } : { value: JSON.stringify(p) };
  }

  private async ensureConsumer(): Promise<void> {
    if (this.consumer) return;
    const consumer = this.kafka.consumer({ groupId: `${this.conTopic}.g`, maxWaitTimeInMs: KAFKA_MAX_WAIT_MS });
    await consumer.connect();
    await consumer.subscribe({ topic: this.conTopic, fromBeginning: true });
    const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
    await consumer.run({
      partitionsConsumedConcurrently: PARTITIONS,
      eachBatchAutoResolve: false,
      eachBatch: async ({ batch, resolveOffset, heartbeat, isRunning, isStale }) => {
        const msgs = batch.messages;
        // Handlers may be held (scenarios 3 and 6 gate them): keep the group session alive meanwhile.
        const beat = setInterval(() => void heartbeat().catch(() => {}), 3000);
        try {
          for (let i = 0; i < msgs.length && isRunning() && !isStale(); ) {
            while (!this.handler) await new Promise<void>((r) => this.waiters.push(r));
            const handler = this.handler;
            // `concurrency` handlers across the partitions processed at once.
            const chunk = msgs.slice(i, i + Math.max(1, Math.ceil(this.concurrency / PARTITIONS)));
            await Promise.all(chunk.map((m) => handler(JSON.parse((m.value as Buffer).toString('utf8')) as Payload)));
            resolveOffset((chunk[chunk.length - 1] as { offset: string }).offset);
            for (let k = 0; k < chunk.length; k++) this.settled?.();
            i += chunk.length;
            await heartbeat();
          }
        } finally {
          clearInterval(beat);
        }
      },
    });
    await joined;
    this.consumer = consumer;
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    await this.ensureConsumer();
    this.concurrency = concurrency;
    this.settled = settled;
    this.handler = handler;
    for (const w of this.waiters.splice(0)) w();
    return {
      stop: async () => {
        this.handler = undefined;
        this.settled = undefined;
      },
    };
  }

  async close(): Promise<void> {
    const bounded = (p: Promise<unknown> | undefined) =>
      Promise.race([Promise.resolve(p).catch(() => {}), new Promise((r) => setTimeout(r, 15_000).unref())]);
    try {
      await bounded(this.consumer?.disconnect());
      await bounded(this.producer?.disconnect());
    } finally {
      await this.admin.deleteTopics({ topics: [this.pubTopic, this.conTopic] }).catch(() => {});
      await this.admin.deleteGroups([`${this.conTopic}.g`]).catch(() => {});
    }
  }
}

/** Builds the Kafka target. */
export async function createTarget(url: string, via: string, runId: string, full: boolean): Promise<Target> {
  const brokers = url.split(',').map((s) => s.trim());
  const ctor = await loadTransport<{ brokers: string[]; client?: 'kafkajs' | 'platformatic' }>('@busbar/kafka', 'KafkaTransport');
  const kafka = new Kafka({ clientId: `busbar-bench-${runId}`, brokers, logLevel: logLevel.NOTHING });
  const admin = kafka.admin();
  await admin.connect();
  const cluster = await admin.describeCluster();
  const peers = (await import('./kafka-peers.js')) as typeof import('./kafka-peers.js');
  const deleteNamespace = async (ns: string) => {
    const topics = (await admin.listTopics()).filter((t) => t.includes(ns));
    if (topics.length > 0) await admin.deleteTopics({ topics });
    const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.includes(ns));
    if (groups.length > 0) await admin.deleteGroups(groups).catch(() => {});
  };
  return {
    name: 'kafka',
    broker: `Kafka (${cluster.brokers.length} broker${cluster.brokers.length === 1 ? '' : 's'}) at ${brokers.join(',')} via ${via}`,
    versions: { '@platformatic/kafka': versionOf('@platformatic/kafka') },
    counts: full
      ? { s1: 3_000, s2: 40_000, s3: 40_000, s4Seconds: 10, s6: 2_000 }
      : { s1: 1_000, s2: 15_000, s3: 15_000, s4Seconds: 2, s6: 1_000 },
    busbar: (bytes) =>
      busbarOr(
        ctor,
        { brokers },
        `bench-${runId}-k${bytes}`,
        deleteNamespace,
        'Busbar EventBus over KafkaTransport (idempotent producer, acks=all)',
      ),
    raw: (instance, bytes) => new RawKafka(instance === 1 ? 'raw' : 'raw-2', kafka, admin, `${runId}-${bytes}`),
    peers: (bytes) => [
      // The same bus over KafkaTransport's opt-in @platformatic/kafka client (not a peer: Busbar itself).
      typeof ctor === 'string'
        ? { label: 'busbar-plt', skip: ctor }
        : new BusbarImpl({
            label: 'busbar-plt',
            transport: () => new ctor({ brokers, client: 'platformatic' }),
            namespace: `bench-${runId}-kp${bytes}`,
            cleanup: deleteNamespace,
            description:
              "Busbar EventBus over KafkaTransport with client: 'platformatic' (@platformatic/kafka; idempotent producer, acks=all)",
          }),
      publishOnly(
        'raw+ce-headers',
        'kafkajs as raw, plus the 9 CloudEvents headers Busbar sends (diagnostic)',
        new RawKafka('rawh', kafka, admin, `${runId}-${bytes}`, true),
      ),
      ...peers.kafkaPeers(brokers, `${runId}-${bytes}`, admin),
    ],
    ceiling: async (id) => {
      // kafka-producer-perf-test (org.apache.kafka.tools.ProducerPerformance) of the broker's Kafka version.
      const cp = toolClasspath('kafka-tools-4.1.1', 'org.apache.kafka:kafka-tools:4.1.1', (m) => process.stderr.write(`\n${m}\n`));
      if (!cp) return undefined;
      const topic = `bench-${id}.ceiling`;
      await admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS, replicationFactor: 1 }], waitForLeaders: true });
      try {
        const r = spawnSync(
          'java',
          [
            '-Xmx512m',
            '-cp',
            cp,
            'org.apache.kafka.tools.ProducerPerformance',
            '--topic',
            topic,
            '--num-records',
            String(full ? 1_000_000 : 300_000),
            '--record-size',
            '256',
            '--throughput',
            '-1',
            '--producer-props',
            `bootstrap.servers=${brokers.join(',')}`,
            'acks=all',
            'enable.idempotence=true',
          ],
          { encoding: 'utf8', timeout: 300_000 },
        );
        const m = /records sent, ([\d.]+) records\/sec/.exec(r.stdout ?? '');
        if (!m) throw new Error(`ProducerPerformance: ${(r.stderr || r.stdout || `exit ${r.status}`).slice(0, 300)}`);
        return {
          tool: 'kafka-producer-perf-test 4.1.1',
          what: `256 B records, acks=all, idempotent, ${PARTITIONS} partitions, default batching (linger 5 ms)`,
          msgPerSec: Number(m[1]),
          busbarScenario: 's2',
        } satisfies Ceiling;
      } finally {
        await admin.deleteTopics({ topics: [topic] }).catch(() => {});
      }
    },
    dispose: async () => {
      await admin.disconnect();
    },
  };
}
