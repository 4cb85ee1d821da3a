import {
  BrokerUnavailableError,
  type BusError,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  type GroupDescription,
  isBusError,
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
import { Connection, reasonOf } from './connection.js';
import { type DeadLetterStore, processDeadLetters } from './dead-letters.js';
import type { CopyWriter } from './delivery.js';
import { describeGroups, type GroupInspector } from './groups.js';
import { type RabbitMqOptions, type ResolvedOptions, resolveOptions } from './options.js';
import { ORDERED_PUBLISH_CALLS, Publisher } from './publish.js';
import { type ConsumerHost, RabbitSubscription } from './subscription.js';
import { type DeclaredObjects, Topology } from './topology.js';
import { AMQP_CE_PREFIX } from './wire.js';

/** RabbitMQ names: up to 255 bytes; we never derive names starting with the reserved `amq.`. */
const NAME_PATTERN = /^(?!amq\.)[A-Za-z0-9._:-]+$/;

/**
 * Busbar transport for RabbitMQ (AMQP 0-9-1, amqplib). See the package README for the topology,
 * the guarantees and what survives a broker restart.
 *
 * - `publish` writes persistent messages with `mandatory` on one confirm channel: a batch is
 *   written into the confirm window at once (in few socket writes) and each message gets its own
 *   outcome from its ack/nack; an unroutable message (no queue bound) fails with
 *   `PublishRejectedError` (see `publish.ts`).
 * - Each subscription consumes its group queue on its own channel with prefetch = concurrency and
 *   acknowledges after core settled the delivery; the acks of one event-loop turn are coalesced
 *   (see `subscription.ts`, `delivery.ts`).
 * - Retries go through per-group delay queues (fixed tiers, TTL + dead-lettering back into the group
 *   queue), dead letters into a per-group dead-letter queue; both are written with confirms before
 *   the original is acknowledged (see `topology.ts`, `dead-letters.ts`).
 * - The connection is re-established with backoff + jitter; subscriptions resume by themselves
 *   (see `connection.ts`).
 *
 * This class only ties the parts together; they talk to each other through the narrow objects it
 * builds here, not through methods of the transport.
 */
export class RabbitMqTransport implements Transport {
  /** @inheritDoc */
  readonly name = 'rabbitmq';
  /** @inheritDoc — `amqp://user:***@host:port[/vhost]`, built from the URL's parts (no password). */
  readonly endpoint: string;
  /**
   * How the CloudEvents AMQP binding spells an attribute header on this broker: `cloudEvents_`
   * (what this transport writes; `cloudEvents:` is accepted on consume). Core names attributes in
   * dead-letter reasons with it (`missing attribute cloudEvents_id`) — `Transport.attributePrefix`
   * once core has it (issue 14 point 8).
   */
  readonly attributePrefix = AMQP_CE_PREFIX;
  /** @inheritDoc */
  readonly capabilities: TransportCapabilities;
  private readonly options: ResolvedOptions;
  private readonly connection: Connection;
  private readonly topology: Topology;
  private readonly publisher: Publisher;
  private readonly subscriptions = new Set<RabbitSubscription>();
  /** What subscriptions see of the transport. */
  private readonly consumerHost: ConsumerHost;
  /** What the dead-letter walk sees of the transport. */
  private readonly deadLetterStore: DeadLetterStore;
  /** What `describeGroups` sees of the transport. */
  private readonly groupInspector: GroupInspector;
  /** Groups this instance subscribed to, by topic (AMQP cannot list them: see `groups.ts`). */
  private readonly knownGroups = new Map<string, Set<string>>();

  constructor(options: RabbitMqOptions = {}) {
    this.options = resolveOptions(options);
    this.endpoint = this.options.endpoint;
    this.capabilities = {
      durability: 'disk',
      orderedByKey: false,
      newGroupFromEarliest: false,
      balancedAssignment: true,
      leaseExtension: false,
      maxRetryDelayMs: this.options.delayTiersMs[this.options.delayTiersMs.length - 1] as number,
      orderedPublishCalls: ORDERED_PUBLISH_CALLS,
      maxNameLength: 255,
      namePattern: NAME_PATTERN,
    };
    const connection: Connection = new Connection(this.options, {
      prepare: (conn): Promise<void> => publisher.prepare(conn),
      opened: () => {
        topology.forgetAll();
        for (const sub of this.subscriptions) sub.resume(0);
      },
      lost: () => {
        publisher.reset();
        topology.forgetAll();
      },
    });
    const channel = () => connection.channel();
    const topology = new Topology(this.options, this.capabilities, channel);
    const publisher: Publisher = new Publisher(connection, topology);
    this.connection = connection;
    this.topology = topology;
    this.publisher = publisher;
    const copies: CopyWriter = {
      sendToQueue: (queue, body, headers) => publisher.sendToQueue(queue, body, headers),
      forgetQueue: (queue) => topology.forgetQueue(queue),
      delayQueue: (names, delayMs) => topology.delayQueue(names, delayMs),
    };
    this.consumerHost = {
      get logger() {
        return connection.logger;
      },
      backoff: this.options.backoff,
      quorum: this.options.queueType === 'quorum',
      copies,
      connected: () => connection.connected,
      channel,
      live: () => connection.live().then(() => {}),
      ensureGroup: (names) => topology.ensureGroup(names),
      forgetGroup: (names) => topology.forgetGroup(names),
      closed: (sub) => this.subscriptions.delete(sub),
    };
    this.deadLetterStore = {
      groupNamesOf: (topic, group) => topology.groupNamesOf(topic, group),
      ensureGroup: (names) => topology.ensureGroup(names),
      channel,
      sendToQueue: copies.sendToQueue,
      deliveryLimit: this.options.deliveryLimit,
    };
    this.groupInspector = {
      channel,
      groupNamesOf: (topic, group) => topology.groupNamesOf(topic, group),
      delayTiersMs: this.options.delayTiersMs,
    };
  }

  /** Exchanges and queues this instance declared so far (names only). */
  declaredObjects(): DeclaredObjects {
    return this.topology.declaredObjects();
  }

  /** @inheritDoc */
  connect(context: TransportContext): Promise<void> {
    return this.connection.start(context);
  }

  /** @inheritDoc */
  health(): TransportHealth {
    return this.connection.health();
  }

  /**
   * @inheritDoc
   *
   * Calls may overlap (`capabilities.orderedPublishCalls`): the messages of a call are written to
   * the channel after those of every earlier call, so RabbitMQ appends them in call order.
   */
  publish(batch: readonly OutgoingMessage[], signal: AbortSignal, onDurable?: (index: number) => void): Promise<readonly PublishOutcome[]> {
    const final = this.connection.finalError;
    if (final) return Promise.reject(final);
    return this.publisher.publish(batch, signal, onDurable).catch((error: unknown) => {
      throw this.busError(error, 'publish');
    });
  }

  /**
   * @inheritDoc
   *
   * A connection lost while subscribing (declaring, or during `basic.consume`) is ridden out: the
   * subscription waits for the reconnect and starts again (see `RabbitSubscription.start`).
   */
  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    if (this.connection.closed) throw new BrokerUnavailableError(`the RabbitMQ transport (${this.endpoint}) is closed`);
    const final = this.connection.finalError;
    if (final) throw final;
    const names = this.topology.groupNamesOf(spec.topic, spec.group);
    const known = this.knownGroups.get(spec.topic) ?? new Set<string>();
    this.knownGroups.set(spec.topic, known.add(spec.group));
    const sub = new RabbitSubscription(this.consumerHost, spec, names, onDelivery);
    try {
      await sub.start();
    } catch (error) {
      await sub.close().catch(() => {});
      throw this.busError(error, `subscribe to ${names.queue}`);
    }
    this.subscriptions.add(sub);
    return sub;
  }

  /** @inheritDoc */
  processDeadLetters(target: DeadLetterTarget, scan: DeadLetterScan): Promise<readonly StoredDeadLetter[]> {
    return processDeadLetters(this.deadLetterStore, target, scan).catch((error: unknown) => {
      throw this.busError(error, 'the dead-letter walk');
    });
  }

  /**
   * The depths of the queues of `topic`'s groups, read with passive declarations on a channel of
   * its own (nothing consumed): `backlog` = ready messages in the group queue, `retrying` = messages
   * in its delay queues, `deadLetters` = messages in its dead-letter queue. `inFlight` is absent:
   * AMQP counts only ready messages.
   *
   * AMQP cannot list queues, so the groups described are `groups` when given, else the groups this
   * instance subscribed to on `topic` (also closed ones); a group whose queue does not exist is left
   * out. See `groups.ts`.
   */
  async describeGroups(topic: string, groups?: readonly string[]): Promise<readonly GroupDescription[]> {
    const final = this.connection.finalError;
    if (final) throw final;
    try {
      return await describeGroups(this.groupInspector, topic, groups ?? this.knownGroups.get(topic) ?? []);
    } catch (error) {
      throw this.busError(error, `describing the groups of ${topic}`);
    }
  }

  /** `error` as a `BusError`: a raw client error becomes a retryable `BrokerUnavailableError` naming the endpoint. */
  private busError(error: unknown, what: string): BusError {
    if (isBusError(error)) return error;
    return new BrokerUnavailableError(`${what} on RabbitMQ at ${this.endpoint} failed: ${reasonOf(error)}`, { cause: error });
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    if (!this.connection.shutdown()) return;
    await Promise.allSettled([...this.subscriptions].map((s) => s.close()));
    await this.publisher.close();
    await this.connection.close();
  }
}
