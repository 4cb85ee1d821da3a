import {
  type BackoffOptions,
  BrokerUnavailableError,
  BusClosedError,
  backoffDelay,
  ConfigError,
  type ConnectionState,
  checkBrokerName,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  describeError,
  isBusError,
  type Logger,
  type OutgoingMessage,
  type PublishOutcome,
  PublishRejectedError,
  type StoredDeadLetter,
  type SubscriptionSpec,
  silentLogger,
  type Transport,
  type TransportCapabilities,
  type TransportContext,
  type TransportHealth,
  type TransportSubscription,
} from '@busbar/core';
import type { KafkaClient, OutgoingRecord, RecordProducer, TopicPartitionOffset, TopicRecords, TopicSpec } from './client.js';
import type { ClientSettings } from './client-common.js';
import { scanDeadLetters } from './dead-letters.js';
import { KafkajsClient } from './kafkajs-client.js';
import { type KafkaTransportOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { KafkaSubscription, type SubscriptionNames } from './subscription.js';

/** Kafka's limits on topic names: 249 characters of `[a-zA-Z0-9._-]`. */
const KAFKA_CAPABILITIES: TransportCapabilities = {
  durability: 'replicated',
  orderedByKey: true,
  newGroupFromEarliest: true,
  balancedAssignment: false,
  leaseExtension: false,
  maxRetryDelayMs: 24 * 60 * 60 * 1000,
  maxNameLength: 249,
  namePattern: /^[a-zA-Z0-9._-]+$/,
};

/** Rough size of a record on the wire, for splitting produce requests. */
function recordBytes(key: string | undefined, value: Uint8Array, headers: Readonly<Record<string, string>>): number {
  let n = value.byteLength + (key?.length ?? 0) * 3 + 70;
  for (const k in headers) n += k.length + (headers[k] as string).length * 3 + 10;
  return n;
}

/** Checked Kafka topic names kept per core topic at most (one per event type in practice). */
const MAX_TOPIC_NAMES = 1000;

function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/**
 * Busbar transport for Apache Kafka (kafkajs behind the {@link KafkaClient} seam).
 *
 * - One topic per event type (created by the transport), records keyed by the message key and
 *   partitioned by murmur2, so order holds per key.
 * - Publishing: one idempotent producer, acks = all; each core batch becomes one `sendBatch`
 *   (split only above `maxRequestBytes`).
 * - Consuming: consumer group `<topic>.<group>` over the event topic and the group's retry topic;
 *   offsets committed only for the settled prefix of each partition.
 * - Retries: the group's retry topic `<topic>.<group>.retry`, each copy due at its
 *   `ce_busbarretryat`; dead letters: `<topic>.<group>.dlq`.
 *
 * See the package README for guarantees and production settings.
 */
export class KafkaTransport implements Transport {
  /** Transport name. */
  readonly name = 'kafka';
  /** What Kafka does natively. */
  readonly capabilities: TransportCapabilities = KAFKA_CAPABILITIES;
  private readonly options: ResolvedOptions;
  private client: KafkaClient | undefined;
  private producer: RecordProducer | undefined;
  private logger: Logger = silentLogger;
  private context: TransportContext | undefined;
  private state: ConnectionState = 'disconnected';
  private detail: string | undefined;
  private attempt: Promise<void> | undefined;
  private reconnectLoop: Promise<void> | undefined;
  private readonly topics = new Map<string, Promise<void>>();
  /** Core topic → its checked Kafka topic name (`naming.topic` + `checkBrokerName`, once per topic). */
  private readonly topicNames = new Map<string, string>();
  private readonly subscriptions = new Set<KafkaSubscription>();
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly wakeups = new Set<() => void>();

  /** @throws ConfigError for options that can never work. */
  constructor(options: KafkaTransportOptions = {}) {
    this.options = resolveOptions(options);
  }

  /**
   * Builds the client. Override to swap the client library (see `client.ts`). `@platformatic/kafka`
   * is an optional peer dependency, loaded only when `client: 'platformatic'` is chosen. @internal
   */
  protected createClient(logger: Logger): KafkaClient | Promise<KafkaClient> {
    const o = this.options;
    if (o.client === 'platformatic') return loadPlatformaticClient(o, logger);
    return new KafkajsClient({ ...clientSettings(o, logger), logLevel: o.logLevel });
  }

  async connect(context: TransportContext): Promise<void> {
    if (this.closed) throw new BusClosedError('the Kafka transport is closed');
    if (this.client) return;
    const made = this.createClient(context.logger);
    const client = made instanceof Promise ? await made : made;
    if (this.client || this.closed) {
      // A concurrent connect (or close) won while the client library loaded.
      await client.close().catch(() => {});
      if (this.closed) throw new BusClosedError('the Kafka transport is closed');
      return;
    }
    this.context = context;
    this.logger = context.logger;
    this.client = client;
    this.setState('connecting');
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.tryConnect(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new BrokerUnavailableError(`no answer from ${this.brokerList()} within ${this.options.connectTimeoutMs} ms`)),
            this.options.connectTimeoutMs,
          );
        }),
      ]);
    } catch (error) {
      this.lostConnection(error);
    } finally {
      clearTimeout(timer);
    }
  }

  /** One connection attempt (shared by concurrent callers): admin + a fresh producer, or a probe. */
  private tryConnect(): Promise<void> {
    this.attempt ??= (async () => {
      const client = this.requireClient();
      try {
        if (this.producer) {
          await client.probe();
        } else {
          await client.connect();
          const producer = await client.createProducer();
          if (this.closed) {
            await producer.close().catch(() => {});
            return;
          }
          this.producer = producer;
        }
        this.setState('connected');
      } finally {
        this.attempt = undefined;
      }
    })();
    return this.attempt;
  }

  /** Marks the connection lost and starts the background reconnect loop (once). */
  private lostConnection(error: unknown): void {
    if (this.closed) return;
    const detail = describeError(error);
    if (this.state !== 'reconnecting')
      this.logger.warn({ transport: 'kafka', err: detail }, 'Kafka unreachable; reconnecting in the background');
    this.setState('reconnecting', detail);
    this.reconnectLoop ??= (async () => {
      const backoff: BackoffOptions = this.options.reconnectBackoff;
      for (let n = 1; !this.closed && this.state !== 'connected'; n++) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, backoffDelay(n, backoff));
          function done() {
            clearTimeout(timer);
            resolve();
          }
          this.wakeups.add(done);
        });
        this.wakeups.clear();
        if (this.closed) break;
        try {
          await this.tryConnect();
        } catch (e) {
          this.setState('reconnecting', describeError(e));
        }
      }
    })().finally(() => {
      this.reconnectLoop = undefined;
    });
  }

  private setState(state: ConnectionState, detail?: string): void {
    const changed = state !== this.state;
    this.state = state;
    this.detail = detail;
    if (changed) {
      if (state === 'connected') this.logger.info({ transport: 'kafka', brokers: this.brokerList() }, 'Kafka connected');
      this.context?.emit({ kind: 'connection', state, ...(detail === undefined ? {} : { detail }) });
    }
  }

  private brokerList(): string {
    return this.options.brokers.join(',');
  }

  private requireClient(): KafkaClient {
    if (!this.client) throw new BrokerUnavailableError('the Kafka transport is not connected (call connect first)');
    return this.client;
  }

  private unavailable(): BrokerUnavailableError {
    if (this.closed) return new BrokerUnavailableError('the Kafka transport is closed');
    return new BrokerUnavailableError(`Kafka (${this.brokerList()}) is ${this.state}${this.detail ? `: ${this.detail}` : ''}`);
  }

  /** Maps a client error to a Busbar error; a connection-level failure also triggers reconnecting. */
  private mapError(error: unknown, what: string): Error {
    if (isBusError(error)) return error;
    const client = this.requireClient();
    const kind = client.classify(error);
    if (kind === 'rejected') return new PublishRejectedError(`Kafka rejected ${what}: ${describeError(error)}`, { cause: error });
    return new BrokerUnavailableError(`${what} failed: ${describeError(error)}`, { cause: error });
  }

  private topicSpec(name: string, partitions: number): TopicSpec {
    return { name, numPartitions: partitions, replicationFactor: this.options.replicationFactor, config: this.options.topicConfig };
  }

  /** Creates missing topics (each name once per transport, retried after a failure). */
  private async ensureTopics(specs: readonly TopicSpec[]): Promise<void> {
    const client = this.requireClient();
    const missing = specs.filter((s) => !this.topics.has(s.name));
    if (missing.length > 0) {
      const created = client.createTopics(missing);
      for (const s of missing) {
        const p = created.catch((error: unknown) => {
          this.topics.delete(s.name);
          throw this.mapError(error, `creating topic ${s.name}`);
        });
        p.catch(() => {});
        this.topics.set(s.name, p);
      }
    }
    await Promise.all(specs.map((s) => this.topics.get(s.name)));
  }

  /**
   * Sends with the current producer; a failure of unknown outcome replaces the producer. So does a
   * send still pending when `signal` aborts (core's publish deadline): kafkajs keeps a timed-out
   * request's socket open and retries on it, so a half-open link would otherwise never recover.
   */
  private async send(batches: readonly TopicRecords[], signal?: AbortSignal): Promise<void> {
    const producer = this.producer;
    if (this.state !== 'connected' || !producer) throw this.unavailable();
    if (signal?.aborted) throw signal.reason;
    const drop = (error: unknown) => {
      // kafkajs rolls the idempotent sequence back after a failed request; a request that did land
      // would make the next batch look like its duplicate. A new producer id rules that out.
      if (this.producer !== producer) return; // replaced already (and the loss reported)
      this.producer = undefined;
      void producer.close().catch(() => {});
      this.lostConnection(error);
    };
    const sent = producer.send(batches);
    sent.catch((error: unknown) => {
      if (this.requireClient().classify(error) !== 'rejected') drop(error);
    });
    try {
      await abortable(sent, signal);
    } catch (error) {
      if (signal?.aborted && error === signal.reason) {
        drop(new BrokerUnavailableError(`no answer from Kafka (${this.brokerList()}) before the publish deadline`));
        throw error;
      }
      throw this.mapError(error, `producing to ${batches.map((b) => b.topic).join(', ')}`);
    }
  }

  /** The Kafka topic of core topic `topic`, checked against Kafka's limits (throws `ConfigError`). */
  private kafkaTopic(topic: string): string {
    let name = this.topicNames.get(topic);
    if (name === undefined) {
      name = checkBrokerName(this.options.naming.topic(topic), this.capabilities, 'Kafka topic');
      if (this.topicNames.size >= MAX_TOPIC_NAMES) this.topicNames.clear();
      this.topicNames.set(topic, name);
    }
    return name;
  }

  async publish(batch: readonly OutgoingMessage[], signal: AbortSignal): Promise<readonly PublishOutcome[]> {
    if (this.closed || this.state !== 'connected') throw this.unavailable();
    const outcomes: PublishOutcome[] = batch.map(() => ({ ok: true }));
    /** Indexes of the messages to send, and their Kafka topics (same order). */
    const valid: number[] = [];
    const topicOf: string[] = [];
    batch.forEach((m, i) => {
      try {
        topicOf.push(this.kafkaTopic(m.topic));
        valid.push(i);
      } catch (error) {
        outcomes[i] = { ok: false, error: new PublishRejectedError(describeError(error), { cause: error }) };
      }
    });
    if (valid.length === 0) return outcomes;
    const names = [...new Set(topicOf)];
    await abortable(this.ensureTopics(names.map((n) => this.topicSpec(n, this.options.numPartitions))), signal);

    // Chunks of at most maxRequestBytes (Kafka caps one record batch at max.message.bytes), in order;
    // each entry is a position in `valid` / `topicOf`.
    const chunks: number[][] = [];
    let current: number[] = [];
    let bytes = 0;
    for (let v = 0; v < valid.length; v++) {
      const m = batch[valid[v] as number] as OutgoingMessage;
      const size = recordBytes(m.key, m.body, m.headers);
      if (current.length > 0 && bytes + size > this.options.maxRequestBytes) {
        chunks.push(current);
        current = [];
        bytes = 0;
      }
      current.push(v);
      bytes += size;
    }
    chunks.push(current);

    for (const [n, chunk] of chunks.entries()) {
      const byTopic = new Map<string, OutgoingRecord[]>();
      for (const v of chunk) {
        const m = batch[valid[v] as number] as OutgoingMessage;
        const topic = topicOf[v] as string;
        let list = byTopic.get(topic);
        if (!list) {
          list = [];
          byTopic.set(topic, list);
        }
        list.push({ key: m.key, value: m.body, headers: m.headers });
      }
      try {
        await this.send(
          [...byTopic].map(([topic, records]) => ({ topic, records })),
          signal,
        );
      } catch (error) {
        if (n === 0) throw error; // nothing of the batch was appended
        // Later chunks are not sent either, so a caller's retry cannot reorder a key.
        for (const later of chunks.slice(n)) for (const v of later) outcomes[valid[v] as number] = { ok: false, error: error as Error };
        break;
      }
    }
    return outcomes;
  }

  /** Appends one record (retry copies, dead letters). */
  private async produce(topic: string, record: OutgoingRecord): Promise<void> {
    await this.send([{ topic, records: [record] }]);
  }

  private names(topic: string, group: string): SubscriptionNames & { replayGroupId: string } {
    const n = this.options.naming;
    const caps = this.capabilities;
    return {
      topic: checkBrokerName(n.topic(topic), caps, 'Kafka topic'),
      retryTopic: checkBrokerName(n.retryTopic(topic, group), caps, 'Kafka retry topic'),
      deadLetterTopic: checkBrokerName(n.deadLetterTopic(topic, group), caps, 'Kafka dead-letter topic'),
      groupId: checkBrokerName(n.groupId(topic, group), caps, 'Kafka consumer group'),
      replayGroupId: checkBrokerName(n.replayGroupId(topic, group), caps, 'Kafka replay group'),
    };
  }

  /**
   * Fixes where a new group starts before any member runs: partitions without a committed offset
   * get the current high watermark (`'latest'`) or low watermark (`'earliest'`), committed. kafkajs
   * would otherwise resolve "latest" lazily at its first fetch, after `run()` returned — missing
   * what is published in between — and would not commit it until a message is processed.
   */
  private async fixStartingOffsets(groupId: string, topics: readonly { topic: string; from: 'latest' | 'earliest' }[]): Promise<void> {
    const client = this.requireClient();
    for (let attempt = 1; ; attempt++) {
      const unset: TopicPartitionOffset[] = [];
      for (const { topic, from } of topics) {
        const [committed, watermarks] = await Promise.all([client.committedOffsets(groupId, topic), client.watermarks(topic)]);
        for (const w of watermarks) {
          const c = committed.find((x) => x.partition === w.partition);
          if (c === undefined || BigInt(c.offset) < 0n)
            unset.push({ topic, partition: w.partition, offset: from === 'earliest' ? w.low : w.high });
        }
      }
      if (unset.length === 0) return;
      try {
        await client.initGroupOffsets(groupId, unset);
        return;
      } catch (error) {
        // Another member started the group meanwhile: look again (it has set them) — or give up.
        if (client.classify(error) !== 'group-not-empty') throw error;
        if (attempt >= 3) {
          this.logger.warn({ group: groupId }, 'group has members but no committed offsets; kafkajs resolves its start');
          return;
        }
      }
    }
  }

  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    if (this.closed) throw new BusClosedError('the Kafka transport is closed');
    const names = this.names(spec.topic, spec.group);
    if (this.state !== 'connected') throw this.unavailable();
    const o = this.options;
    try {
      await this.ensureTopics([
        this.topicSpec(names.topic, o.numPartitions),
        this.topicSpec(names.retryTopic, o.numPartitions),
        this.topicSpec(names.deadLetterTopic, o.deadLetterPartitions),
      ]);
      await this.fixStartingOffsets(names.groupId, [
        { topic: names.topic, from: spec.startFrom },
        { topic: names.retryTopic, from: 'earliest' },
      ]);
    } catch (error) {
      throw this.mapError(error, `preparing group ${names.groupId}`);
    }
    const sub = new KafkaSubscription(
      {
        client: this.requireClient(),
        options: o,
        logger: this.logger,
        produce: (topic, record) => this.produce(topic, record),
      },
      names,
      spec,
      onDelivery,
    );
    this.subscriptions.add(sub);
    try {
      await sub.start();
    } catch (error) {
      this.subscriptions.delete(sub);
      throw this.mapError(error, `joining group ${names.groupId}`);
    }
    return {
      stop: () => sub.stop(),
      close: async () => {
        try {
          await sub.close();
        } finally {
          this.subscriptions.delete(sub);
        }
      },
    };
  }

  async processDeadLetters(target: DeadLetterTarget, scan: DeadLetterScan): Promise<readonly StoredDeadLetter[]> {
    if (this.closed) throw new BusClosedError('the Kafka transport is closed');
    const names = this.names(target.topic, target.group);
    if (this.state !== 'connected') throw this.unavailable();
    try {
      return await scanDeadLetters(
        { client: this.requireClient(), options: this.options, logger: this.logger, send: (b) => this.send(b) },
        names,
        scan,
      );
    } catch (error) {
      throw this.mapError(error, `reading dead letters of ${names.groupId}`);
    }
  }

  health(): TransportHealth {
    return this.detail === undefined ? { state: this.state } : { state: this.state, detail: this.detail };
  }

  /** Disconnects consumers (leaving their groups), the producer and the admin client. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      for (const w of this.wakeups) w();
      await Promise.allSettled([...this.subscriptions].map((s) => s.close()));
      this.subscriptions.clear();
      await this.attempt?.catch(() => {});
      await this.producer?.close().catch(() => {});
      this.producer = undefined;
      await this.client?.close().catch(() => {});
      this.setState('closed');
    })();
    return this.closing;
  }
}

/** Loads the optional `@platformatic/kafka` client (and the library) on first use. */
async function loadPlatformaticClient(o: ResolvedOptions, logger: Logger): Promise<KafkaClient> {
  let mod: typeof import('./platformatic-client.js');
  try {
    mod = await import('./platformatic-client.js');
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === 'ERR_MODULE_NOT_FOUND' && String((error as Error).message).includes('@platformatic/kafka')) {
      throw new ConfigError(
        "client: 'platformatic' needs the optional peer dependency @platformatic/kafka (^2.12.1); install it next to @busbar/kafka",
        { cause: error },
      );
    }
    throw error;
  }
  return new mod.PlatformaticClient(clientSettings(o, logger));
}

/** The settings both clients take, from the resolved transport options. */
function clientSettings(o: ResolvedOptions, logger: Logger): ClientSettings {
  return {
    brokers: o.brokers,
    clientId: o.clientId,
    ssl: o.ssl,
    sasl: o.sasl,
    connectionTimeoutMs: o.connectionTimeoutMs,
    requestTimeoutMs: o.requestTimeoutMs,
    requestRetries: o.requestRetries,
    maxRetryTimeMs: o.maxRetryTimeMs,
    ackTimeoutMs: o.ackTimeoutMs,
    logger,
  };
}
