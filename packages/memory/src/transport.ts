import {
  BrokerUnavailableError,
  type Clock,
  ConfigError,
  ConnectionStateCell,
  checkBrokerName,
  type DeadLetterScan,
  type DeadLetterTarget,
  type Delivery,
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
  /** Longest retry delay held, ms (core caps delays to it). @defaultValue 86400000 (24 h) */
  maxRetryDelayMs?: number;
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

  /** @param options - see {@link MemoryTransportOptions}; all optional. */
  constructor(options: MemoryTransportOptions = {}) {
    if (options.broker && options.retention !== undefined) {
      throw new ConfigError('MemoryTransport: give `retention` to the shared MemoryBroker, not to the transport');
    }
    this.broker = options.broker ?? new MemoryBroker({ retention: options.retention });
    this.clock = options.clock ?? systemClock;
    this.capabilities = Object.freeze({
      durability: 'memory',
      orderedByKey: true,
      newGroupFromEarliest: true,
      balancedAssignment: true,
      leaseExtension: false,
      maxRetryDelayMs: options.maxRetryDelayMs ?? 86_400_000,
      maxNameLength: 255,
      namePattern: /^[\w.\-:|]+$/,
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
      for (const m of batch) this.broker.append(m.topic, m);
    } catch (error) {
      return Promise.reject(error);
    }
    return allOk(batch.length);
  }

  /** Joins `spec.group` on `spec.topic`; the group's position is fixed when this resolves. */
  async subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription> {
    this.assertConnected();
    checkBrokerName(`${spec.topic}.${spec.group}`, this.capabilities, 'group queue');
    const member = this.broker.join(spec, onDelivery, this.clock);
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

  private assertConnected(): void {
    const state = this.connection.state;
    if (state !== 'connected') throw new BrokerUnavailableError(`memory transport is ${state}`);
  }
}

/** Creates a {@link MemoryTransport}. */
export function memoryTransport(options?: MemoryTransportOptions): MemoryTransport {
  return new MemoryTransport(options);
}
