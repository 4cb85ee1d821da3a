import {
  BrokerUnavailableError,
  type Clock,
  ConfigError,
  ConnectionStateCell,
  checkBrokerName,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
  type GroupDescription,
  type OutgoingMessage,
  type PublishOutcome,
  type StoredDeadLetter,
  type SubscriptionSpec,
  systemClock,
  type Transport,
  type TransportCapabilities,
  type TransportContext,
  type TransportHealth,
  type TransportSubscription,
} from '@busbar/core/transport';
import { type IdleOptions, MemoryBroker, type MemoryMember, type MemoryRawClient, type MemoryRetention } from './broker.js';
import { MEMORY_PROFILES, type MemoryProfile, type MemoryProfileName, messageBytes, retryClock, tooLarge, unroutable } from './profiles.js';

/** Options of {@link MemoryTransport}. */
export interface MemoryTransportOptions {
  /**
   * The in-memory broker. Pass one broker to several transports (several buses) to model several
   * processes sharing a broker. @defaultValue a new {@link MemoryBroker} for this transport
   */
  broker?: MemoryBroker;
  /**
   * What each topic's log keeps for groups created later with `startFrom: 'earliest'`: `'all'`, or
   * `'unacked'` (a message leaves the log once every group of its topic settled it). Applies to the
   * broker this transport creates; to share a broker, give the broker the option instead
   * (`new MemoryBroker({ retention })`) — setting both is a `ConfigError`. See
   * {@link MemoryBrokerOptions.retention}. @defaultValue 'all'
   */
  retention?: MemoryRetention;
  /**
   * Time source of retry delays. Pass a `ManualClock` to make delays elapse only on
   * `clock.advance(ms)`. @defaultValue `systemClock` (real, unref'd timers)
   */
  clock?: Clock;
  /** Longest retry delay held, ms (core caps delays to it). @defaultValue the profile's: 86400000 (24 h) for `'memory'` */
  maxRetryDelayMs?: number;
  /**
   * Behave like this broker's transport: its capabilities, what it refuses at publish (RabbitMQ:
   * a topic no group subscribed to yet), its retry delay tiers, maximum retry delay, size and name
   * limits (see the README's table). @defaultValue 'memory' (no broker's limits)
   */
  like?: MemoryProfileName;
  /** With `like: 'rabbitmq'`: the retry delay tiers, ms, ascending (as `RabbitMqOptions.delayTiersMs`). @defaultValue the RabbitMQ transport's */
  delayTiersMs?: readonly number[];
}

const OK: PublishOutcome = Object.freeze({ ok: true });
/** Settled results of an all-ok publish, per batch size: read-only, so one serves every batch of its size. */
const ALL_OK: Promise<readonly PublishOutcome[]>[] = [];
const allOk = (n: number): Promise<readonly PublishOutcome[]> => {
  if (n > 1024) return Promise.resolve(new Array<PublishOutcome>(n).fill(OK));
  let p = ALL_OK[n];
  if (p === undefined) {
    p = Promise.resolve(Object.freeze(new Array<PublishOutcome>(n).fill(OK)));
    ALL_OK[n] = p;
  }
  return p;
};

/**
 * In-memory {@link Transport} with the observable semantics of the broker transports: durable
 * groups, competing members (round-robin), per-group retries after a delay, per-group dead letters
 * and replay, per-key ordering, redelivery of anything unsettled. Deterministic for unit tests:
 * {@link MemoryTransport.idle} and a `ManualClock`. Nothing survives the process.
 */
export class MemoryTransport implements Transport {
  /** `'memory'`. */
  readonly name = 'memory';
  /** `'memory'`: where it "connects", for messages. */
  readonly endpoint = 'memory';
  /** Everything on, durability `'memory'`, no lease extension (a message stays with its member until settled). */
  readonly capabilities: TransportCapabilities;
  /** The broker this transport appends to and consumes from. */
  readonly broker: MemoryBroker;
  private readonly clock: Clock;
  private readonly connection = new ConnectionStateCell();
  private readonly members = new Set<MemoryMember>();
  private rawClient: MemoryRawClient | undefined;
  /** Topic names already checked against the naming rules (a topic is checked once, not per message). */
  private readonly checkedTopics = new Set<string>();
  private readonly profile: MemoryProfile;
  private readonly delayTiersMs: readonly number[] | undefined;
  /** `'cloudEvents_'` with `like: 'rabbitmq'` (see `Transport.attributePrefix`). */
  readonly attributePrefix: string | undefined;

  /** @param options - see {@link MemoryTransportOptions}; all optional. */
  constructor(options: MemoryTransportOptions = {}) {
    if (options.broker && options.retention !== undefined) {
      throw new ConfigError('MemoryTransport: give `retention` to the shared MemoryBroker, not to the transport');
    }
    this.broker = options.broker ?? new MemoryBroker({ retention: options.retention });
    this.clock = options.clock ?? systemClock;
    const like = options.like ?? 'memory';
    const profile = Object.hasOwn(MEMORY_PROFILES, like) ? MEMORY_PROFILES[like] : undefined;
    if (profile === undefined) throw new ConfigError(`MemoryTransport: like must be one of ${Object.keys(MEMORY_PROFILES).join(', ')}`);
    if (options.delayTiersMs !== undefined && profile.delayTiersMs === undefined) {
      throw new ConfigError(`MemoryTransport: delayTiersMs applies to like: 'rabbitmq' only`);
    }
    this.profile = profile;
    this.delayTiersMs = options.delayTiersMs ?? profile.delayTiersMs;
    this.attributePrefix = profile.attributePrefix;
    const tiers = this.delayTiersMs;
    this.capabilities = Object.freeze({
      durability: 'memory',
      ...profile.capabilities,
      maxRetryDelayMs: options.maxRetryDelayMs ?? (tiers ? (tiers[tiers.length - 1] as number) : profile.maxRetryDelayMs),
    });
  }

  /** A raw client of {@link MemoryTransport.broker}: write below the bus, observe a topic. */
  get raw(): MemoryRawClient {
    this.rawClient ??= this.broker.rawClient();
    return this.rawClient;
  }

  /**
   * Marks the transport connected and reports it, on a microtask: a listener attached to the bus
   * right after `new EventBus(…)` still sees the `connection` event.
   */
  async connect(context: TransportContext): Promise<void> {
    this.connection.attach(context);
    await Promise.resolve();
    if (this.connection.state === 'closed') throw new BrokerUnavailableError('memory transport is closed');
    this.connection.set('connected');
  }

  /** Appends the batch (bodies copied); every outcome is ok. Rejects if `signal` is aborted or the transport is not connected. */
  publish(batch: readonly OutgoingMessage[], signal: AbortSignal): Promise<readonly PublishOutcome[]> {
    // Not an async function (this runs once per batch, often of one message); it still only rejects, never throws.
    try {
      this.assertConnected();
      signal.throwIfAborted();
      for (const m of batch) {
        if (this.checkedTopics.has(m.topic)) continue;
        checkBrokerName(m.topic, this.capabilities, 'topic');
        if (this.checkedTopics.size < 10_000) this.checkedTopics.add(m.topic);
      }
      if (this.profile.refusesUnroutable || this.profile.maxMessageBytes) return Promise.resolve(this.appendRefusing(batch));
      for (const m of batch) this.broker.append(m.topic, m);
    } catch (error) {
      return Promise.reject(error);
    }
    return allOk(batch.length);
  }

  /** Joins `spec.group` on `spec.topic`; the group's position is fixed when this resolves. */
  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    this.assertConnected();
    for (const [name, what] of this.profile.groupObjects(spec.topic, spec.group, this.capabilities.maxRetryDelayMs)) {
      checkBrokerName(name, this.capabilities, what);
    }
    const clock =
      this.delayTiersMs === undefined && this.capabilities.maxRetryDelayMs <= 2 ** 31 - 1
        ? this.clock
        : retryClock(this.clock, this.delayTiersMs);
    // A message stays with its member until settled, so a lease never runs out: extending one is a no-op.
    const deliver = this.capabilities.leaseExtension ? (d: Delivery) => onDelivery(withLease(d)) : onDelivery;
    const member = this.broker.join(spec, deliver, clock);
    this.members.add(member);
    return {
      stop: async () => member.stop(),
      close: async () => {
        member.close();
        this.members.delete(member);
      },
    };
  }

  /** Walks the group's dead letters oldest first and re-enqueues the selected ones to that group only (unless `dryRun`). */
  async processDeadLetters(target: DeadLetterTarget, scan: DeadLetterScan): Promise<readonly StoredDeadLetter[]> {
    this.assertConnected();
    return this.broker.processDeadLetters(target, scan);
  }

  /** The groups of `topic` with every count (`backlog`, `inFlight`, `retrying`, `deadLetters`) from the broker's state. */
  async describeGroups(topic: string): Promise<readonly GroupDescription[]> {
    this.assertConnected();
    return this.broker.describeGroups(topic);
  }

  /** `'disconnected'` before `connect`, `'connected'` (on the microtask after `connect`), then `'closed'`. */
  health(): TransportHealth {
    return this.connection.health();
  }

  /** Closes this transport's subscriptions (unsettled deliveries go back to their groups). Idempotent. */
  async close(): Promise<void> {
    if (this.connection.state === 'closed') return;
    for (const m of this.members) m.close();
    this.members.clear();
    await this.rawClient?.close();
    this.connection.set('closed');
  }

  /** See {@link MemoryBroker.idle} (covers every transport sharing the broker). */
  idle(options?: IdleOptions): Promise<void> {
    return this.broker.idle(options);
  }

  /** Appends what the profile's broker accepts; a refused message gets the broker's error as its outcome. */
  private appendRefusing(batch: readonly OutgoingMessage[]): PublishOutcome[] {
    const limit = this.profile.maxMessageBytes;
    return batch.map((m): PublishOutcome => {
      if (this.profile.refusesUnroutable && this.broker.routes(m.topic) === 0) return { ok: false, error: unroutable(m.topic) };
      const bytes = limit ? messageBytes(m.headers, m.body) : 0;
      if (limit && bytes > limit.bytes) return { ok: false, error: tooLarge(bytes, limit) };
      this.broker.append(m.topic, m);
      return OK;
    });
  }

  private assertConnected(): void {
    const state = this.connection.state;
    if (state !== 'connected') throw new BrokerUnavailableError(`memory transport is ${state}`);
  }
}

const extended = (): Promise<void> => Promise.resolve();

function withLease(d: Delivery): Delivery {
  (d as { extendLease?: (ms: number) => Promise<void> }).extendLease = extended;
  return d;
}

/** Creates a {@link MemoryTransport}. */
export function memoryTransport(options?: MemoryTransportOptions): MemoryTransport {
  return new MemoryTransport(options);
}
