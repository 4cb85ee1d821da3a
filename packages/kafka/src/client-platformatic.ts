/**
 * The {@link KafkaClient} seam implemented with `@platformatic/kafka` 2.x. With
 * `client-platformatic-base.ts`, `-consumer.ts` and `-fetch.ts`, the only files that import it.
 *
 * - Producer: idempotent, acks = all. The library assigns every record its partition and its
 *   sequence number once per `send`, before its internal retries, and resends exactly the same
 *   request (same records, partitions, producer id and sequences) on a retry; after a send that
 *   failed it takes a new producer id for the next one. Sends are still serialised here and a
 *   producer whose send ended with an unknown outcome is retired (the transport replaces it), as
 *   with kafkajs.
 * - Request timeouts: the library destroys a connection on which a request timed out and opens a
 *   new one for the retry, so a half-open socket never lingers.
 * - Group consumer: the library's `Consumer` runs the group membership (join/sync, heartbeats on
 *   its own timer, rejoin on rebalance); the fetch loop is `client-platformatic-consumer.ts`'s (`consumer.fetch`), so that
 *   batches can be resolved partially, refetched, paused per partition and marked stale after a
 *   rebalance, as the seam requires. Offsets are committed with `OffsetCommit` carrying metadata
 *   (the library's `commit()` sends none).
 * @internal
 */
import { Admin, murmur2, Producer, type ProducerOptions, stringSerializer } from '@platformatic/kafka';
import type {
  CommittedOffset,
  ErrorKind,
  GroupConsumer,
  GroupConsumerConfig,
  KafkaClient,
  PartitionWatermarks,
  RecordProducer,
  TopicPartitionOffset,
  TopicRecords,
  TopicSpec,
} from './client.js';
import { classifyError, GroupNotEmptyError, isAuthFailure, RequestTimedOutError, SerialSends, toBuffer } from './client-common.js';
import {
  baseOptions,
  delay,
  hasApiId,
  isRejection,
  isRequestTimeout,
  type PlatformaticClientSettings,
  retrying,
} from './client-platformatic-base.js';
import { PlatformaticGroupConsumer } from './client-platformatic-consumer.js';

export type { PlatformaticClientSettings } from './client-platformatic-base.js';

/**
 * Partition choice compatible with the Java client and kafkajs: murmur2 of the key (positive
 * 31 bits) modulo the partition count; records without a key go round-robin per topic. The
 * library applies the modulo and keeps the chosen partition across its internal retries.
 */
function partitioner(): (message: { topic: string }, key: Buffer | undefined) => number {
  const next = new Map<string, number>();
  return (message, key) => {
    // An empty key is a key (kafkajs and the Java client hash it too); only a missing one is not.
    if (key !== undefined) return murmur2(key) & 0x7fffffff;
    const n = next.get(message.topic) ?? 0;
    next.set(message.topic, (n + 1) & 0x3fffffff);
    return n;
  };
}

/**
 * One idempotent producer, its sends serialised by {@link SerialSends} (as with kafkajs). The first
 * request timeout breaks it at once: the pending send rejects promptly (the library would retry on
 * a new connection, up to `requestRetries` times `requestTimeoutMs`).
 */
class PlatformaticProducer implements RecordProducer {
  private readonly sends = new SerialSends(isRejection);
  private producer!: Producer<string | undefined, Buffer, string, string>;

  attach(producer: Producer<string | undefined, Buffer, string, string>): void {
    this.producer = producer;
  }

  /** Called by the library before it retries a request after `error`. */
  retried(error: unknown): void {
    if (isRequestTimeout(error)) this.sends.breakWith(new RequestTimedOutError(`a produce request timed out: ${(error as Error).message}`));
  }

  send(batches: readonly TopicRecords[]): Promise<void> {
    return this.sends.run(async () => {
      const messages = [];
      for (const b of batches)
        for (const r of b.records) messages.push({ topic: b.topic, key: r.key, value: toBuffer(r.value), headers: r.headers });
      await this.producer.send({ messages });
    });
  }

  async close(): Promise<void> {
    const wasBroken = this.sends.isBroken;
    this.sends.breakWith(new Error('the producer was closed'));
    // A broken producer may still retry a request in the background: do not wait for it.
    await this.producer.close(wasBroken);
  }
}

/**
 * `@platformatic/kafka` declares Node ≥ 22.22 and calls `Promise.withResolvers` (ES2024, Node 22);
 * this package supports Node ≥ 20.19, so on an older Node the standard behaviour is supplied
 * (only when missing, only once this client is chosen).
 */
function ensureWithResolvers(): void {
  const P = Promise as unknown as { withResolvers?: () => unknown };
  if (typeof P.withResolvers === 'function') return;
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers<T>(this: PromiseConstructor) {
      let resolve!: (v: T | PromiseLike<T>) => void;
      let reject!: (e: unknown) => void;
      const promise = new this<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}

/** `@platformatic/kafka` implementation of {@link KafkaClient}. */
export class PlatformaticClient implements KafkaClient {
  private admin: Admin;
  /** The admin of {@link connect}'s first contact and of {@link probe}: no client-level retries. */
  private prober: Admin;
  private connects = 0;

  constructor(private readonly settings: PlatformaticClientSettings) {
    ensureWithResolvers();
    this.admin = new Admin(baseOptions(settings));
    this.prober = this.newProber();
  }

  private newProber(): Admin {
    return new Admin({ ...baseOptions(this.settings), retries: 0 });
  }

  /**
   * A later call replaces the admin clients (new connections). The first contact (connection,
   * SASL, metadata) runs without retries, so that each refused attempt reaches the transport.
   */
  async connect(): Promise<void> {
    if (this.connects++ > 0) {
      const old = [this.admin, this.prober];
      this.admin = new Admin(baseOptions(this.settings));
      this.prober = this.newProber();
      for (const a of old) void a.close().catch(() => {});
    }
    await this.prober.metadata({ topics: [], forceUpdate: true });
    await this.admin.metadata({ topics: [] });
  }

  async probe(): Promise<void> {
    await this.prober.metadata({ topics: [], forceUpdate: true });
  }

  async createProducer(): Promise<RecordProducer> {
    const wrapper = new PlatformaticProducer();
    const base = baseOptions(this.settings);
    const retryDelay = base.retryDelay as (client: object, op: string, attempt: number, retries: number, error: Error) => number;
    const options: ProducerOptions<string | undefined, Buffer, string, string> = {
      ...base,
      retryDelay: (client, op, attempt, retries, error) => {
        wrapper.retried(error);
        return retryDelay(client, op, attempt, retries, error);
      },
      idempotent: true,
      acks: -1,
      timeout: this.settings.ackTimeoutMs,
      partitioner: partitioner(),
      serializers: {
        key: (k) => (k === undefined ? undefined : Buffer.from(k)),
        headerKey: stringSerializer,
        headerValue: stringSerializer,
      },
    };
    const producer = new Producer(options);
    try {
      await producer.initIdempotentProducer({ acks: -1 });
    } catch (error) {
      await producer.close(true).catch(() => {});
      throw error;
    }
    wrapper.attach(producer);
    return wrapper;
  }

  async createTopics(specs: readonly TopicSpec[]): Promise<void> {
    for (const s of specs) {
      try {
        await retrying(() =>
          this.admin.createTopics({
            topics: [s.name],
            partitions: s.numPartitions,
            replicas: s.replicationFactor,
            configs: Object.entries(s.config ?? {}).map(([name, value]) => ({ name, value })),
          }),
        );
      } catch (error) {
        if (!hasApiId(error, 'TOPIC_ALREADY_EXISTS')) throw error;
      }
    }
    if (specs.length === 0) return;
    // Wait for every partition's leader (like kafkajs's waitForLeaders).
    const names = specs.map((s) => s.name);
    for (let n = 1; ; n++) {
      try {
        const md = await this.admin.metadata({ topics: names, forceUpdate: true });
        const ready = names.every((t) => {
          const topic = md.topics.get(t);
          return topic !== undefined && topic.partitions.length > 0 && topic.partitions.every((p) => p.leader >= 0);
        });
        if (ready) return;
      } catch (error) {
        if (n >= 20 || isAuthFailure(error)) throw error;
      }
      if (n >= 20) throw new Error(`topics ${names.join(', ')} have no leaders yet`);
      await delay(Math.min(500, 25 * 2 ** n));
    }
  }

  listTopics(): Promise<string[]> {
    return retrying(() => this.admin.listTopics());
  }

  async deleteTopics(names: readonly string[]): Promise<void> {
    if (names.length > 0) await this.admin.deleteTopics({ topics: [...names] });
  }

  private async partitionsOf(topic: string): Promise<number[]> {
    const md = await this.admin.metadata({ topics: [topic] });
    const t = md.topics.get(topic);
    if (!t) throw new Error(`unknown topic ${topic}`);
    return Array.from({ length: t.partitionsCount }, (_, i) => i);
  }

  async watermarks(topic: string): Promise<PartitionWatermarks[]> {
    return retrying(async () => {
      const partitions = await this.partitionsOf(topic);
      const at = async (timestamp: bigint) => {
        const res = await this.admin.listOffsets({
          topics: [{ name: topic, partitions: partitions.map((partitionIndex) => ({ partitionIndex, timestamp })) }],
        });
        const out = new Map<number, bigint>();
        for (const t of res) for (const p of t.partitions) out.set(p.partitionIndex, p.offset);
        return out;
      };
      const [low, high] = await Promise.all([at(-2n), at(-1n)]);
      return partitions.map((partition) => ({
        partition,
        low: String(low.get(partition) ?? 0n),
        high: String(high.get(partition) ?? 0n),
      }));
    });
  }

  async listGroups(): Promise<string[]> {
    const groups = await retrying(() => this.admin.listGroups());
    return [...groups.keys()];
  }

  async committedOffsets(groupId: string, topic: string): Promise<CommittedOffset[]> {
    return retrying(async () => {
      const partitions = await this.partitionsOf(topic);
      const groups = await this.admin.listConsumerGroupOffsets({
        groups: [{ groupId, topics: [{ name: topic, partitionIndexes: partitions }] }],
      });
      const found = new Map<number, { offset: bigint; metadata: string | null }>();
      for (const g of groups)
        for (const t of g.topics)
          if (t.name === topic)
            for (const p of t.partitions) found.set(p.partitionIndex, { offset: p.committedOffset, metadata: p.metadata ?? null });
      return partitions.map((partition) => {
        const f = found.get(partition);
        return { partition, offset: f ? String(f.offset) : '-1', metadata: f?.metadata ?? undefined };
      });
    });
  }

  async initGroupOffsets(groupId: string, offsets: readonly TopicPartitionOffset[]): Promise<void> {
    if (offsets.length === 0) return;
    const described = await retrying(() => this.admin.describeGroups({ groups: [groupId] }));
    const state = String(described.get(groupId)?.state ?? 'Dead');
    if (!['empty', 'dead', ''].includes(state.toLowerCase())) throw new GroupNotEmptyError(groupId, state);
    const topics = new Map<string, { name: string; partitionOffsets: { partition: number; offset: bigint }[] }>();
    for (const o of offsets) {
      let t = topics.get(o.topic);
      if (!t) {
        t = { name: o.topic, partitionOffsets: [] };
        topics.set(o.topic, t);
      }
      t.partitionOffsets.push({ partition: o.partition, offset: BigInt(o.offset) });
    }
    try {
      await this.admin.alterConsumerGroupOffsets({ groupId, topics: [...topics.values()] });
    } catch (error) {
      // A member joined meanwhile: the broker refuses a commit without its generation.
      if (hasApiId(error, new Set(['UNKNOWN_MEMBER_ID', 'ILLEGAL_GENERATION', 'REBALANCE_IN_PROGRESS'])))
        throw new GroupNotEmptyError(groupId, 'member joined');
      throw error;
    }
  }

  createGroupConsumer(config: GroupConsumerConfig): GroupConsumer {
    return new PlatformaticGroupConsumer(config, this.settings);
  }

  classify(error: unknown): ErrorKind {
    return classifyError(error);
  }

  async close(): Promise<void> {
    await Promise.all([this.admin.close(), this.prober.close()]);
  }
}
