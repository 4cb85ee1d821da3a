/** Kafka peers: @platformatic/kafka (producer and consumer) with the same durability as the raw baseline. */
import { Consumer as PConsumer, Producer as PProducer, stringDeserializers, stringSerializers } from '@platformatic/kafka';
import type { Admin } from 'kafkajs';
import type { Consumer, Impl } from '../impl.js';
import type { Payload } from '../payload.js';
import { KAFKA_MAX_WAIT_MS, PARTITIONS } from './kafka.js';

/**
 * @platformatic/kafka: idempotent producer, acks = -1 (send per message / send of 500); a consumer
 * stream with at most `concurrency` handlers running (paused past it), autocommit. Topics as in
 * the raw baseline: a publish topic, and a consume topic read by one long-lived group.
 */
class PlatformaticKafka implements Impl {
  readonly label = '@platformatic/kafka';
  readonly peer = true;
  /** Naive sends run ~0.6k msg/s: cap rounds so they stay short. */
  readonly maxMessages = 4000;
  readonly description = '@platformatic/kafka idempotent producer, acks=-1; consumer stream with concurrency limit, autocommit';
  private producer: PProducer<string, string, string, string> | undefined;
  private consumer: PConsumer<string, string, string, string> | undefined;
  private stream:
    | { pause(): void; resume(): void; on(e: 'data', fn: (m: { value: string }) => void): void; close(): Promise<void> }
    | undefined;
  private handler: ((p: Payload) => Promise<void>) | undefined;
  private settled: (() => void) | undefined;
  private concurrency = 1;
  private running = 0;
  private readonly held: string[] = [];
  private readonly pubTopic: string;
  private readonly conTopic: string;

  constructor(
    private readonly brokers: string[],
    private readonly admin: Admin,
    runId: string,
  ) {
    this.pubTopic = `bench-${runId}.platformatic.pub`;
    this.conTopic = `bench-${runId}.platformatic.con`;
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
    this.producer = new PProducer({
      clientId: 'busbar-bench-platformatic',
      bootstrapBrokers: this.brokers,
      serializers: stringSerializers,
      idempotent: true,
      acks: -1,
      autocreateTopics: false,
    });
  }

  async publish(p: Payload): Promise<void> {
    await this.producer?.send({ messages: [{ topic: this.topic, value: JSON.stringify(p) }] });
  }

  async publishBatch(ps: Payload[]): Promise<void> {
    const topic = this.topic;
    await this.producer?.send({ messages: ps.map((p) => ({ topic, value: JSON.stringify(p) })) });
  }

  private pump(): void {
    while (this.handler && this.running < this.concurrency && this.held.length > 0) {
      const value = this.held.shift() as string;
      this.running++;
      const handler = this.handler;
      handler(JSON.parse(value) as Payload).then(() => {
        this.running--;
        this.settled?.();
        this.pump();
      });
    }
    if (this.held.length === 0) this.stream?.resume();
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    this.concurrency = concurrency;
    this.settled = settled;
    this.handler = handler;
    if (!this.consumer) {
      this.consumer = new PConsumer({
        clientId: 'busbar-bench-platformatic',
        groupId: `${this.conTopic}.g`,
        bootstrapBrokers: this.brokers,
        deserializers: stringDeserializers,
        maxWaitTime: KAFKA_MAX_WAIT_MS,
      });
      const stream = (await this.consumer.consume({
        topics: [this.conTopic],
        mode: 'committed',
        fallbackMode: 'earliest',
        autocommit: 100,
      })) as unknown as NonNullable<PlatformaticKafka['stream']>;
      stream.on('data', (m) => {
        this.held.push(m.value);
        if (this.held.length >= this.concurrency) stream.pause();
        this.pump();
      });
      this.stream = stream;
    }
    this.pump();
    return {
      stop: async () => {
        this.handler = undefined;
        this.settled = undefined;
      },
    };
  }

  async close(): Promise<void> {
    const bounded = (p: Promise<unknown> | undefined) =>
      Promise.race([Promise.resolve(p).catch(() => {}), new Promise((r) => setTimeout(r, 10_000).unref())]);
    try {
      await bounded(this.stream?.close());
      await bounded(this.consumer?.close(true));
      await bounded(this.producer?.close());
    } finally {
      await this.admin.deleteTopics({ topics: [this.pubTopic, this.conTopic] }).catch(() => {});
      await this.admin.deleteGroups([`${this.conTopic}.g`]).catch(() => {});
    }
  }
}

/**
 * @platformatic/kafka uses `Promise.withResolvers` (Node 22+); this project supports Node ≥ 20.19,
 * so the bench supplies the standard polyfill when it is missing.
 */
function polyfillWithResolvers(): void {
  const P = Promise as unknown as { withResolvers?: () => unknown };
  if (typeof P.withResolvers === 'function') return;
  P.withResolvers = () => {
    let resolve!: (v: unknown) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

/** The Kafka peers, or why each is not measured. */
export function kafkaPeers(brokers: string[], runId: string, admin: Admin): (Impl | { label: string; skip: string })[] {
  polyfillWithResolvers();
  return [new PlatformaticKafka(brokers, admin, runId)];
}
