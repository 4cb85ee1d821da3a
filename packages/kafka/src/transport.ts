import type {
  DeadLetterScan,
  DeadLetterTarget,
  Delivery,
  GroupDescription,
  Logger,
  OutgoingMessage,
  PublishOutcome,
  StoredDeadLetter,
  SubscriptionSpec,
  Transport,
  TransportCapabilities,
  TransportContext,
  TransportHealth,
  TransportSubscription,
} from '@busbar/core/transport';
import { BusClosedError } from '@busbar/core/transport';
import type { KafkaClient, OutgoingRecord } from './client.js';
import { KafkajsClient } from './client-kafkajs.js';
import { clientSettings, KafkaConnection, loadPlatformaticClient } from './connection.js';
import { scanDeadLetters } from './dead-letters.js';
import { describeGroups } from './groups.js';
import { type KafkaTransportOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { publishBatch } from './publish.js';
import { KafkaSubscription } from './subscription.js';
import { KafkaTopology } from './topology.js';

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
  /** Where the transport connects, for messages: `kafka <brokers>` (no credentials). */
  readonly endpoint: string;
  private readonly options: ResolvedOptions;
  private readonly connection: KafkaConnection;
  private readonly topology: KafkaTopology;
  private readonly subscriptions = new Set<KafkaSubscription>();
  /** Groups this instance subscribed to, by core topic (described even before they committed). */
  private readonly knownGroups = new Map<string, Set<string>>();
  private closing: Promise<void> | undefined;

  /** @throws ConfigError for options that can never work. */
  constructor(options: KafkaTransportOptions = {}) {
    this.options = resolveOptions(options);
    const connection = new KafkaConnection(this.options, (logger) => this.createClient(logger));
    this.connection = connection;
    this.endpoint = connection.endpoint;
    this.topology = new KafkaTopology({
      options: this.options,
      capabilities: this.capabilities,
      client: () => connection.client,
      mapError: (error, what) => connection.mapError(error, what),
      logger: () => connection.logger,
    });
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

  connect(context: TransportContext): Promise<void> {
    return this.connection.connect(context);
  }

  publish(batch: readonly OutgoingMessage[], signal: AbortSignal): Promise<readonly PublishOutcome[]> {
    const c = this.connection;
    if (c.isClosed || !c.isConnected) return Promise.reject(c.unavailable());
    return publishBatch(
      {
        maxRequestBytes: this.options.maxRequestBytes,
        kafkaTopic: (topic) => this.topology.kafkaTopic(topic),
        ensureEventTopics: (names) => this.topology.ensureEventTopics(names),
        send: (batches, s) => c.send(batches, s),
      },
      batch,
      signal,
    );
  }

  /** Appends one record (retry copies, dead letters). */
  private async produce(topic: string, record: OutgoingRecord): Promise<void> {
    await this.connection.send([{ topic, records: [record] }]);
  }

  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    const c = this.connection;
    if (c.isClosed) throw new BusClosedError('the Kafka transport is closed');
    const names = this.topology.names(spec.topic, spec.group);
    if (!c.isConnected) throw c.unavailable();
    const known = this.knownGroups.get(spec.topic) ?? new Set<string>();
    this.knownGroups.set(spec.topic, known.add(spec.group));
    try {
      await this.topology.prepareGroup(names, spec.startFrom);
    } catch (error) {
      throw c.mapError(error, `preparing group ${names.groupId}`);
    }
    const sub = new KafkaSubscription(
      {
        client: c.client,
        options: this.options,
        logger: c.logger,
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
      throw c.mapError(error, `joining group ${names.groupId}`);
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
    const c = this.connection;
    if (c.isClosed) throw new BusClosedError('the Kafka transport is closed');
    const names = this.topology.names(target.topic, target.group);
    if (!c.isConnected) throw c.unavailable();
    try {
      return await scanDeadLetters({ client: c.client, options: this.options, logger: c.logger, send: (b) => c.send(b) }, names, scan);
    } catch (error) {
      throw c.mapError(error, `reading dead letters of ${names.groupId}`);
    }
  }

  /**
   * The consumer groups of `topic` with their committed-offset lag (`backlog`), the lag on their
   * retry topic (`retrying`) and the dead letters not yet walked (`deadLetters`), from the group
   * list, committed offsets and watermarks only (no member joins). `inFlight` is absent. The
   * groups: those of the cluster named `naming.groupId(topic, <group>)` that committed on the
   * topic, and those this instance subscribed to. See `groups.ts`.
   */
  async describeGroups(topic: string): Promise<readonly GroupDescription[]> {
    const c = this.connection;
    if (c.isClosed) throw new BusClosedError('the Kafka transport is closed');
    const kafkaTopic = this.topology.kafkaTopic(topic);
    if (!c.isConnected) throw c.unavailable();
    const naming = this.options.naming;
    try {
      return await describeGroups(
        {
          client: c.client,
          groupId: (t, g) => naming.groupId(t, g),
          names: (t, g) => this.topology.names(t, g),
          known: (t) => this.knownGroups.get(t) ?? [],
        },
        topic,
        kafkaTopic,
      );
    } catch (error) {
      throw c.mapError(error, `describing the groups of ${kafkaTopic}`);
    }
  }

  health(): TransportHealth {
    return this.connection.health();
  }

  /** Disconnects consumers (leaving their groups), the producer and the admin client. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.connection.beginClose();
      await Promise.allSettled([...this.subscriptions].map((s) => s.close()));
      this.subscriptions.clear();
      await this.connection.close();
    })();
    return this.closing;
  }
}
