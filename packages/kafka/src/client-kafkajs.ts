/**
 * The {@link KafkaClient} seam implemented with kafkajs 2.x. The only file that imports kafkajs.
 * @internal
 */
import {
  type Admin,
  type Consumer,
  type EachBatchPayload,
  type ICustomPartitioner,
  type IHeaders,
  Kafka,
  type KafkaConfig,
  logLevel as KafkaLogLevel,
  type KafkaMessage,
  type LogEntry,
  Partitioners,
  type Producer,
} from 'kafkajs';
import type {
  CommittedOffset,
  ErrorKind,
  FetchedBatch,
  GroupConsumer,
  GroupConsumerConfig,
  GroupConsumerHandlers,
  IncomingRecord,
  KafkaClient,
  PartitionWatermarks,
  RecordProducer,
  TopicPartitionOffset,
  TopicRecords,
  TopicSpec,
} from './client.js';
import {
  type ClientSettings,
  classifyError,
  errorChain,
  GroupNotEmptyError,
  REJECTED_ERRORS,
  RequestTimedOutError,
  SerialSends,
  toBuffer,
} from './client-common.js';

/** Settings of the kafkajs client (resolved transport options). */
export interface KafkajsClientSettings extends ClientSettings {
  readonly logLevel: 'nothing' | 'error' | 'warn' | 'info' | 'debug';
}

const LEVELS = {
  nothing: KafkaLogLevel.NOTHING,
  error: KafkaLogLevel.ERROR,
  warn: KafkaLogLevel.WARN,
  info: KafkaLogLevel.INFO,
  debug: KafkaLogLevel.DEBUG,
} as const;

/**
 * Retries `fn` on errors kafkajs marks retriable (leader not elected yet, stale metadata right
 * after a topic was created — common on Kafka 4 where metadata propagates asynchronously).
 */
async function retrying<T>(fn: () => Promise<T>, attempts = 8): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await fn();
    } catch (error) {
      const retriable = [...errorChain(error)].some((e) => e.retriable === true || e.type === 'UNKNOWN_TOPIC_OR_PARTITION');
      if (!retriable || n >= attempts) throw error;
      await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** n)));
    }
  }
}

/** Whether the broker refused the request (it was not appended; retrying cannot help). */
function isRejection(error: unknown): boolean {
  return [...errorChain(error)].some((e) => typeof e.type === 'string' && REJECTED_ERRORS.has(e.type));
}

function headersOf(raw: IHeaders | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const k in raw) {
    const v = raw[k];
    if (v === undefined) continue;
    const last = Array.isArray(v) ? v[v.length - 1] : v;
    if (last === undefined) continue;
    out[k] = typeof last === 'string' ? last : last.toString(); // UTF-8 (no argument: Buffer's fast path)
  }
  return out;
}

const EMPTY = new Uint8Array(0);

/**
 * kafkajs's default partitioner (murmur2 of the key; round-robin without a key), made stable per
 * record: a record keeps the partition it was first given for as long as the topic has it.
 *
 * kafkajs re-partitions a `sendBatch` on every internal retry (`producer/sendMessages`) and rolls
 * the partitions' sequence numbers back after a failed request. With round-robin, the retry put
 * *other* keyless records on a partition under the sequence number of a request that had failed on
 * the client but landed on the broker: the broker took the retry for a duplicate, acknowledged it
 * and never appended it — confirmed records lost after a connection reset. With the partition of
 * every record fixed, a retry resends exactly the batch it repeats.
 * @internal exported for its unit test
 */
export const StablePartitioner: ICustomPartitioner = () => {
  const pick = Partitioners.DefaultPartitioner();
  const chosen = new WeakMap<object, number>();
  return (args) => {
    const earlier = chosen.get(args.message);
    if (earlier !== undefined && earlier < args.partitionMetadata.length) return earlier;
    const partition = pick(args);
    chosen.set(args.message, partition);
    return partition;
  };
};

/**
 * One idempotent kafkajs producer, its sends serialised by {@link SerialSends}. kafkajs keeps a
 * socket open after a request on it timed out and retries on it; on a half-open link that never
 * ends. So the first request timeout breaks this producer: pending and later sends reject at once.
 */
class KafkajsProducer implements RecordProducer {
  private readonly sends = new SerialSends(isRejection);

  constructor(
    private readonly producer: Producer,
    private readonly ackTimeoutMs: number,
  ) {
    producer.on(producer.events.REQUEST_TIMEOUT, (e) => {
      this.sends.breakWith(new RequestTimedOutError(`request ${e.payload.apiName} to ${e.payload.broker} timed out`));
    });
  }

  send(batches: readonly TopicRecords[]): Promise<void> {
    return this.sends.run(() => this.sendBatch(batches));
  }

  private async sendBatch(batches: readonly TopicRecords[]): Promise<void> {
    await this.producer.sendBatch({
      acks: -1,
      timeout: this.ackTimeoutMs,
      topicMessages: batches.map((b) => ({
        topic: b.topic,
        // kafkajs only reads the headers object (the record encoder walks its keys).
        messages: b.records.map((r) => ({ key: r.key ?? null, value: toBuffer(r.value), headers: r.headers })),
      })),
    });
  }

  async close(): Promise<void> {
    this.sends.breakWith(new Error('the producer was closed'));
    await this.producer.disconnect();
  }
}

/**
 * A group member on a kafkajs consumer. kafkajs keeps a socket open after a request on it timed out
 * (it only rejects the request, `network/requestQueue`), so a half-open link (the peer gone
 * without FIN/RST) would be retried on forever. After a request timeout the member is replaced by
 * a new kafkajs consumer (new connections, rejoin from the committed offsets); the old one is
 * disconnected in the background.
 */
class KafkajsGroupConsumer implements GroupConsumer {
  private consumer: Consumer;
  private handlers: GroupConsumerHandlers | undefined;
  private closed = false;
  private restarting: Promise<void> | undefined;
  private readonly retired: Promise<void>[] = [];
  private closing: Promise<void> | undefined;

  constructor(
    private readonly kafka: Kafka,
    private readonly config: GroupConsumerConfig,
    private readonly settings: KafkajsClientSettings,
  ) {
    this.consumer = this.spawn();
  }

  private spawn(): Consumer {
    const { config, settings } = this;
    return this.kafka.consumer({
      groupId: config.groupId,
      sessionTimeout: config.sessionTimeoutMs,
      heartbeatInterval: config.heartbeatIntervalMs,
      rebalanceTimeout: config.rebalanceTimeoutMs,
      maxWaitTimeInMs: config.maxWaitTimeMs,
      allowAutoTopicCreation: false,
      retry: {
        retries: settings.requestRetries,
        initialRetryTime: 100,
        maxRetryTime: settings.maxRetryTimeMs,
        restartOnFailure: async () => true,
      },
    });
  }

  async start(handlers: GroupConsumerHandlers): Promise<void> {
    await this.run(this.consumer, handlers);
    // Replaced only once started: before the first join, kafkajs's own crash/restart and the
    // subscribe timeout apply.
    this.handlers = handlers;
  }

  /** Connects, subscribes and runs `c`; resolves after its first group join. */
  private async run(c: Consumer, handlers: GroupConsumerHandlers): Promise<void> {
    let joined!: () => void;
    let failed!: (e: Error) => void;
    const firstJoin = new Promise<void>((resolve, reject) => {
      joined = resolve;
      failed = reject;
    });
    firstJoin.catch(() => {});
    c.on(c.events.GROUP_JOIN, (e) => {
      if (c !== this.consumer) return;
      const assignment = new Map<string, number[]>();
      for (const [topic, partitions] of Object.entries(e.payload.memberAssignment)) assignment.set(topic, [...partitions]);
      handlers.onAssignment(assignment);
      joined();
    });
    c.on(c.events.CRASH, (e) => {
      if (c !== this.consumer) return;
      handlers.onCrash(e.payload.error, e.payload.restart);
      if (!e.payload.restart) failed(e.payload.error);
    });
    c.on(c.events.REQUEST_TIMEOUT, (e) => {
      if (c !== this.consumer || this.closed) return;
      const { apiName, broker } = e.payload;
      this.restart(new Error(`request ${apiName} to ${broker} timed out; replacing the consumer's connections`));
    });
    await c.connect();
    for (const t of this.config.topics) await c.subscribe({ topics: [t.name], fromBeginning: t.fromBeginning });
    await c.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: this.config.partitionsConsumedConcurrently,
      eachBatch: (p) => handlers.onBatch(toBatch(p, () => c === this.consumer && !this.closed)),
    });
    await firstJoin;
  }

  /** Replaces the kafkajs consumer by a new one (new connections); once at a time. */
  private restart(reason: Error): void {
    const handlers = this.handlers;
    if (this.restarting || this.closed || !handlers) return;
    this.restarting = (async () => {
      handlers.onCrash(reason, true);
      for (let n = 1; !this.closed; n++) {
        const old = this.consumer;
        const next = this.spawn();
        this.consumer = next;
        this.retired.push(old.disconnect().catch(() => {}));
        try {
          await this.run(next, handlers);
          return;
        } catch (error) {
          if (this.closed) return;
          handlers.onCrash(error as Error, true);
          await new Promise((r) => setTimeout(r, Math.min(this.settings.maxRetryTimeMs, 100 * 2 ** n)));
        }
      }
    })().finally(() => {
      this.restarting = undefined;
    });
  }

  async commit(offsets: readonly TopicPartitionOffset[]): Promise<void> {
    if (offsets.length === 0) return;
    await this.consumer.commitOffsets(
      offsets.map((o) => ({ topic: o.topic, partition: o.partition, offset: o.offset, metadata: o.metadata ?? null })),
    );
  }

  pauseTopics(topics: readonly string[]): void {
    try {
      this.consumer.pause(topics.map((topic) => ({ topic })));
    } catch {
      // not running (crashed / closing): nothing is fetched anyway
    }
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      await this.consumer.disconnect();
      await Promise.all(this.retired);
    })();
    return this.closing;
  }
}

/** A kafkajs message as the seam's record (header values decoded as UTF-8). */
function toRecord(m: KafkaMessage): IncomingRecord {
  return {
    offset: m.offset,
    key: m.key === null || m.key === undefined ? undefined : m.key.toString(),
    value: m.value ?? EMPTY,
    headers: headersOf(m.headers),
  };
}

/**
 * The batch's records, converted one by one as they are iterated: a consumer at its concurrency
 * limit walks a fetched batch slowly, and records converted up front would all live (and be
 * copied by every young-generation GC) until the walk reaches them.
 */
class LazyRecords implements Iterable<IncomingRecord> {
  constructor(private readonly messages: readonly KafkaMessage[]) {}

  [Symbol.iterator](): Iterator<IncomingRecord> {
    const messages = this.messages;
    let i = 0;
    return {
      next: (): IteratorResult<IncomingRecord> =>
        i < messages.length ? { done: false, value: toRecord(messages[i++] as KafkaMessage) } : { done: true, value: undefined },
    };
  }
}

function toBatch(p: EachBatchPayload, current: () => boolean): FetchedBatch {
  return {
    topic: p.batch.topic,
    partition: p.batch.partition,
    records: new LazyRecords(p.batch.messages),
    resolve: (offset) => p.resolveOffset(offset),
    heartbeat: () => p.heartbeat(),
    isActive: () => current() && p.isRunning() && !p.isStale(),
    pause: () => p.pause(),
  };
}

/** kafkajs implementation of {@link KafkaClient}. */
export class KafkajsClient implements KafkaClient {
  private readonly kafka: Kafka;
  /** The same cluster without client-level retries (kafkajs applies the connection retries per `Kafka` instance). */
  private readonly kafkaOnce: Kafka;
  private admin: Admin;
  /** The admin of {@link connect}'s first contact and of {@link probe}: no client-level retries. */
  private prober: Admin;
  private adminStale = false;
  private connects = 0;
  private adminConnecting: Promise<void> | undefined;

  constructor(private readonly settings: KafkajsClientSettings) {
    const logger = settings.logger;
    const config: KafkaConfig = {
      clientId: settings.clientId,
      brokers: [...settings.brokers],
      connectionTimeout: settings.socketConnectTimeoutMs,
      requestTimeout: settings.requestTimeoutMs,
      retry: { retries: settings.requestRetries, initialRetryTime: 100, maxRetryTime: settings.maxRetryTimeMs },
      logLevel: LEVELS[settings.logLevel],
      logCreator:
        () =>
        ({ namespace, level, log }: LogEntry) => {
          const { message, timestamp: _t, ...extra } = log;
          const obj = { kafkajs: namespace, ...extra };
          if (level === KafkaLogLevel.ERROR) logger.error(obj, message);
          else if (level === KafkaLogLevel.WARN) logger.warn(obj, message);
          else if (level === KafkaLogLevel.INFO) logger.info(obj, message);
          else logger.debug(obj, message);
        },
    };
    if (settings.ssl !== undefined) config.ssl = settings.ssl as KafkaConfig['ssl'];
    if (settings.sasl !== undefined) config.sasl = settings.sasl;
    this.kafka = new Kafka(config);
    this.kafkaOnce = new Kafka({ ...config, retry: { retries: 0 } });
    this.admin = this.newAdmin();
    this.prober = this.kafkaOnce.admin({ retry: { retries: 0 } });
  }

  private newAdmin(): Admin {
    const admin = this.kafka.admin({ retry: { retries: this.settings.requestRetries, maxRetryTime: this.settings.maxRetryTimeMs } });
    // kafkajs keeps a socket open after a request on it timed out (a half-open connection would
    // never recover): replace the admin at the next (re)connect.
    admin.on(admin.events.REQUEST_TIMEOUT, () => {
      if (this.admin === admin) this.adminStale = true;
    });
    return admin;
  }

  /** Replaces the admin client by a new one (new connections); the old one disconnects in the background. */
  private async replaceAdmin(old: Admin): Promise<void> {
    if (this.admin === old) {
      this.admin = this.newAdmin();
      this.adminStale = false;
      this.adminConnecting = undefined;
      void old.disconnect().catch(() => {});
    }
    this.adminConnecting ??= this.admin.connect().catch((error: unknown) => {
      this.adminConnecting = undefined;
      throw error;
    });
    await this.adminConnecting;
  }

  /**
   * Runs an admin call; if it failed on a dead connection (a timed-out request, or a broker
   * object kafkajs left half-initialised after a timed-out connect), once more on a new admin.
   */
  private async withAdmin<T>(fn: (admin: Admin) => Promise<T>): Promise<T> {
    const admin = this.admin;
    try {
      return await fn(admin);
    } catch (error) {
      const dead = [...errorChain(error)].some((e) => e.name === 'KafkaJSRequestTimeoutError' || e.message === 'Broker not connected');
      if (!dead) throw error;
      await this.replaceAdmin(admin);
      return fn(this.admin);
    }
  }

  /**
   * Connects the admin client. A later call (a reconnect after a connection loss) uses a new one
   * (new connections): kafkajs keeps a socket open after a request on it timed out, so a half-open
   * connection would never recover.
   */
  async connect(): Promise<void> {
    const again = this.connects++ > 0;
    if (again) {
      const old = this.prober;
      this.prober = this.kafkaOnce.admin({ retry: { retries: 0 } });
      void old.disconnect().catch(() => {});
    }
    // First contact without retries, so that each refused attempt reaches the transport (which
    // retries with its own backoff and reports the cause): connection, SASL, then metadata.
    await this.prober.connect();
    await this.prober.describeCluster();
    if (this.adminStale || again) await this.replaceAdmin(this.admin);
    else await this.admin.connect();
  }

  async probe(): Promise<void> {
    await this.prober.describeCluster();
  }

  async createProducer(): Promise<RecordProducer> {
    const producer = this.kafka.producer({
      idempotent: true,
      // kafkajs: an idempotent producer needs maxInFlightRequests 1 to keep order per partition.
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: StablePartitioner,
      retry: { retries: this.settings.requestRetries, initialRetryTime: 100, maxRetryTime: this.settings.maxRetryTimeMs },
    });
    await producer.connect();
    return new KafkajsProducer(producer, this.settings.ackTimeoutMs);
  }

  async createTopics(specs: readonly TopicSpec[]): Promise<void> {
    if (specs.length === 0) return;
    try {
      await retrying(() =>
        this.withAdmin((a) =>
          a.createTopics({
            waitForLeaders: true,
            topics: specs.map((s) => ({
              topic: s.name,
              numPartitions: s.numPartitions,
              replicationFactor: s.replicationFactor,
              configEntries: Object.entries(s.config ?? {}).map(([name, value]) => ({ name, value })),
            })),
          }),
        ),
      );
    } catch (error) {
      // Created concurrently by someone else: fine.
      const types = [...errorChain(error)].map((e) => e.type).filter((t) => typeof t === 'string');
      if (types.length > 0 && types.every((t) => t === 'TOPIC_ALREADY_EXISTS')) return;
      throw error;
    }
  }

  listTopics(): Promise<string[]> {
    return retrying(() => this.withAdmin((a) => a.listTopics()));
  }

  async deleteTopics(names: readonly string[]): Promise<void> {
    if (names.length > 0) await this.withAdmin((a) => a.deleteTopics({ topics: [...names] }));
  }

  async watermarks(topic: string): Promise<PartitionWatermarks[]> {
    let rows: Awaited<ReturnType<Admin['fetchTopicOffsets']>>;
    try {
      rows = await retrying(() => this.withAdmin((a) => a.fetchTopicOffsets(topic)));
    } catch (error) {
      // kafkajs 2.2.4 asks for the offsets of the partitions its cached metadata lists; when that
      // lists the topic without partitions (seen under load right after many topics were created:
      // Kafka 4 propagates metadata asynchronously) it destructures an empty answer (TypeError) and
      // refreshes that cache only when it expires (5 min). A throw-away admin starts from fresh metadata.
      if (!(error instanceof TypeError)) throw error;
      this.settings.logger.debug({ topic, err: error.message }, 'kafkajs had no partition metadata for the topic; asking again');
      rows = await retrying(async () => {
        const fresh = this.kafka.admin({ retry: { retries: this.settings.requestRetries, maxRetryTime: this.settings.maxRetryTimeMs } });
        try {
          await fresh.connect();
          return await fresh.fetchTopicOffsets(topic);
        } catch (e) {
          // still no partitions: retry (after a backoff) like a stale-metadata error
          throw e instanceof TypeError ? Object.assign(new Error(`no partition metadata for topic ${topic} yet`), { retriable: true }) : e;
        } finally {
          await fresh.disconnect().catch(() => {});
        }
      });
    }
    return rows.map((r) => ({ partition: r.partition, low: r.low, high: r.high })).sort((a, b) => a.partition - b.partition);
  }

  async listGroups(): Promise<string[]> {
    const { groups } = await retrying(() => this.withAdmin((a) => a.listGroups()));
    return groups.map((g) => g.groupId);
  }

  async committedOffsets(groupId: string, topic: string): Promise<CommittedOffset[]> {
    const rows = await retrying(() => this.withAdmin((a) => a.fetchOffsets({ groupId, topics: [topic] })));
    return (rows.find((r) => r.topic === topic)?.partitions ?? []).map((p) => ({
      partition: p.partition,
      offset: p.offset,
      metadata: p.metadata ?? undefined,
    }));
  }

  /**
   * kafkajs's `admin.setOffsets` runs a throw-away consumer that waits for a full fetch long-poll
   * (5 s, not configurable). This does the same with a short poll: join as a paused member,
   * commit, leave.
   */
  async initGroupOffsets(groupId: string, offsets: readonly TopicPartitionOffset[]): Promise<void> {
    if (offsets.length === 0) return;
    const described = await retrying(() => this.withAdmin((a) => a.describeGroups([groupId])));
    const state = described.groups[0]?.state ?? 'Dead';
    if (state !== 'Empty' && state !== 'Dead' && String(state) !== '') throw new GroupNotEmptyError(groupId, state);
    const topics = [...new Set(offsets.map((o) => o.topic))];
    const consumer = this.kafka.consumer({
      groupId,
      maxWaitTimeInMs: 50,
      allowAutoTopicCreation: false,
      retry: { retries: this.settings.requestRetries, maxRetryTime: this.settings.maxRetryTimeMs, restartOnFailure: async () => false },
    });
    consumer.on(consumer.events.GROUP_JOIN, () => consumer.pause(topics.map((topic) => ({ topic }))));
    try {
      await consumer.connect();
      await consumer.subscribe({ topics, fromBeginning: true });
      await consumer.run({ autoCommit: false, eachBatchAutoResolve: false, eachBatch: async () => {} });
      await consumer.commitOffsets(offsets.map((o) => ({ topic: o.topic, partition: o.partition, offset: o.offset })));
    } finally {
      await consumer.disconnect().catch(() => {});
    }
  }

  createGroupConsumer(config: GroupConsumerConfig): GroupConsumer {
    return new KafkajsGroupConsumer(this.kafka, config, this.settings);
  }

  classify(error: unknown): ErrorKind {
    return classifyError(error);
  }

  async close(): Promise<void> {
    await Promise.all([this.admin.disconnect(), this.prober.disconnect()]);
  }
}
