/**
 * The Transport SPI: the small interface a broker implements (import it from
 * `@busbar/core/transport`; the guide is `docs/transport-guide.md`). Core owns the life of a
 * delivery — validation, envelopes, attempt numbers, the complete headers of every copy, the retry
 * policy, dead-letter metadata, idempotency, batching, the breaker, settle-once and the causal
 * order of outcomes; a transport only moves bytes: how to append durably, how a group consumes,
 * how to acknowledge, how to hold a copy back for a delay, where dead letters go and how to
 * reconnect.
 *
 * Contract summary (each method documents its part):
 * - `publish` appends a batch and resolves per message only once the broker holds it as durably as
 *   it can (`capabilities.durability` says how durably).
 * - `subscribe` resolves once the group's starting position is fixed: nothing published after it
 *   resolves can be missed by the group.
 * - Every {@link Delivery} handed to the consumer callback is settled exactly once by core, through
 *   `ack`, `retry`, `deadLetter` or `release`; until it is, the transport counts it as in flight and
 *   never has more than `concurrency` in flight per subscription. Copies (retry, dead letter,
 *   release, replay) are written with exactly the headers core passes.
 * - A delivery reports what the broker knows (`redeliveries`, position); core computes the rest.
 * - Retries, dead letters and replays reach **only the group that failed**.
 * - All methods are safe to call concurrently.
 */
import type { BusError } from './errors.js';
import type { Logger } from './logger.js';

/** A message as it crosses the SPI: CloudEvents attributes in headers, data as bytes. */
export interface WireMessage {
  /** Headers: the `ce_*` attributes (see `HeaderNames`) plus user headers. Values are strings. */
  readonly headers: Readonly<Record<string, string>>;
  /**
   * The event data, byte-for-byte. It may be a view into a larger shared buffer (core cuts small
   * bodies from a pool): read it through `byteOffset` / `byteLength`, never through `.buffer` alone.
   */
  readonly body: Uint8Array;
}

/** A message to append. */
export interface OutgoingMessage extends WireMessage {
  /** The broker-level destination name (already namespaced and validated by core). */
  readonly topic: string;
  /** The CloudEvents id (also in headers), for logging and correlation. */
  readonly id: string;
  /** Partition / ordering key, if any. */
  readonly key?: string | undefined;
}

/** Per-message result of {@link Transport.publish}. */
export type PublishOutcome = { readonly ok: true } | { readonly ok: false; readonly error: Error };

/** Where a group consumes from. */
export interface SubscriptionSpec {
  /** Broker-level destination name of the event (namespaced). */
  readonly topic: string;
  /**
   * Consumer group name as the user gave it (validated by core). Broker object names derived from
   * it must include `topic`, which carries the namespace, e.g. `<topic>.<group>`.
   */
  readonly group: string;
  /** Maximum deliveries in flight for this subscription (prefetch). */
  readonly concurrency: number;
  /** Where a group that does not exist yet starts. `'latest'` unless the user asked otherwise. */
  readonly startFrom: 'latest' | 'earliest';
  /** Whether deliveries with the same key must be handed over one at a time, in order. */
  readonly orderedByKey: boolean;
}

/**
 * One received message, as the broker handed it over. Core owns the rest of its life: it computes
 * the attempt, decodes, runs the handler, decides the outcome, builds the **complete** headers of
 * every copy the transport is asked to write, and settles the delivery **exactly once** through
 * `ack`, `retry`, `deadLetter` or `release` (a transport needs no double-settle guard). A settle
 * method resolves once the broker has recorded the outcome; if it rejects, core logs it and the
 * message will be redelivered (at-least-once).
 *
 * Causal order is core's too: a retry copy (same `ce_id`, attempt n+1) that comes back before the
 * `retry` of attempt n resolved is held by core until it has, so a transport hands copies over as
 * soon as the broker gives them (no hold of its own).
 */
export interface Delivery extends WireMessage {
  /**
   * How many times the broker has already handed out this same copy before this hand-over (0 the
   * first time): RabbitMQ quorum `x-delivery-count`, Redis XPENDING delivery count − 1, or a count
   * the transport restored from broker-side state (Kafka: in-place retry counts kept in
   * offset-commit metadata, minus 1). A broker with no count reports 0. It must survive consumer
   * restarts as far as the broker's count does.
   *
   * Core computes the attempt number as `HeaderNames.attempt` (1 when absent or invalid) +
   * `redeliveries`; a transport never parses or computes attempt numbers.
   */
  readonly redeliveries: number;
  /** Human-readable broker position (partition/offset, stream entry id, delivery tag …). */
  readonly position: string;
  /** The partition / ordering key, if the broker has one. */
  readonly key?: string | undefined;
  /** Acknowledge: the group is done with this message. */
  ack(): Promise<void>;
  /**
   * Redeliver to **this group only** after at least `delayMs`, held by the broker (not by a
   * sleeping process holding an unacknowledged message): write the body byte-for-byte with
   * exactly `headers` to the group's retry path, then acknowledge the original. `headers` are
   * complete (built by core: the original headers, the next attempt, the first-failure time …):
   * no merging, no attempt arithmetic in the transport. Must not duplicate into other groups.
   */
  retry(delayMs: number, headers: Readonly<Record<string, string>>): Promise<void>;
  /**
   * Write the body byte-for-byte with exactly `headers` (complete: the original headers plus the
   * dead-letter metadata, built by core) to the group's dead-letter destination, then acknowledge
   * the original. If the write fails this rejects and the original is left unacknowledged.
   */
  deadLetter(headers: Readonly<Record<string, string>>): Promise<void>;
  /**
   * Give the message back without counting a failure (used on shutdown): it will be delivered
   * again, to this or another member of the group. `headers` are the complete headers of a copy
   * (the original ones with the current attempt), for a transport that gives back by writing a
   * copy (RabbitMQ); a transport that gives back natively (nack-requeue, leave pending, re-seek)
   * ignores them.
   */
  release(headers: Readonly<Record<string, string>>): Promise<void>;
  /**
   * Extend the lease/visibility of this delivery by `ms`, where the broker has one
   * (`capabilities.leaseExtension`); otherwise absent.
   */
  extendLease?(ms: number): Promise<void>;
}

/** A running group consumption. */
export interface TransportSubscription {
  /**
   * Stop taking new deliveries. Resolves once no further delivery will be handed to the callback.
   * Deliveries already handed over are still settled by core afterwards (ack/retry/deadLetter/release).
   */
  stop(): Promise<void>;
  /** Release resources after in-flight deliveries were settled. Idempotent. */
  close(): Promise<void>;
}

/** A stored dead letter, as read back for inspection and replay. */
export interface StoredDeadLetter extends WireMessage {
  /** Broker-specific handle of the dead letter (entry id, offset …). */
  readonly handle: string;
  /**
   * Set for a message the **broker** moved to the dead letters by itself (RabbitMQ
   * `x-delivery-limit`), which therefore carries no dead-letter metadata of core's: the raw facts
   * the broker recorded. Core builds the dead-letter view from them, with the reason kind
   * `'broker-dead-lettered'`. Absent for dead letters core wrote.
   */
  readonly brokerDeadLettered?: BrokerDeadLettered;
}

/** What the broker recorded about a message it dead-lettered by itself (see {@link StoredDeadLetter}). */
export interface BrokerDeadLettered {
  /** The broker's reason, as it gave it (RabbitMQ `x-first-death-reason`, e.g. `delivery_limit`). */
  readonly cause: string;
  /** How often the broker had handed the message out (RabbitMQ: the `x-death` count / delivery count). */
  readonly redeliveries: number;
  /** Where it was dead-lettered from (RabbitMQ: the queue in `x-death`). */
  readonly from: string;
  /** RFC 3339 time the broker dead-lettered it, when it recorded one. */
  readonly at?: string;
}

/** Selects dead letters of one (topic, group). */
export interface DeadLetterTarget {
  readonly topic: string;
  readonly group: string;
}

/** Options of {@link Transport.processDeadLetters}. */
export interface DeadLetterScan {
  /** Stop after this many dead letters were *selected*. */
  readonly limit: number;
  /** Only report what would be replayed; change nothing. */
  readonly dryRun: boolean;
  /**
   * Called for each dead letter in order; returns the complete headers to replay it with (built
   * by core: dead-letter headers stripped, attempt reset, replay count raised) or `undefined` to
   * keep it. The transport writes the body with exactly these headers.
   */
  readonly select: (deadLetter: StoredDeadLetter) => Readonly<Record<string, string>> | undefined;
}

/**
 * Connection state a transport reports (through {@link TransportContext.emit} and
 * {@link Transport.health}):
 * - `'connecting'`: the first connection attempt is under way (nothing has worked yet);
 * - `'connected'`: a **working** connection — the broker answered (RabbitMQ: connection and
 *   channel open; Redis: `PING` answered; Kafka: metadata fetched). Report it only then: core's
 *   `bus.ready()` resolves on it;
 * - `'reconnecting'`: a connection was lost or an attempt failed; the transport retries with backoff;
 * - `'disconnected'`: not connected and not trying (before `connect`);
 * - `'failed'`: a **final** error — authentication or authorization refused, or a configuration
 *   the broker refuses for good. The transport stops reconnecting; every publish and subscribe
 *   rejects at once with that error (`cause`); only `'closed'` follows;
 * - `'closed'`: `close()` was called.
 */
export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected' | 'failed' | 'closed';

/**
 * What {@link Transport.health} returns (and `bus.health().transport`). Later additions extend
 * this shape; they never change the meaning of these fields.
 */
export interface TransportHealth {
  /** The current state. */
  readonly state: ConnectionState;
  /** Epoch ms of the last change of `state`. */
  readonly since: number;
  /**
   * The last error, credential-free, present while not `'connected'`: the final error in
   * `'failed'`, else the last failed attempt (e.g. `BrokerUnavailableError` whose message names
   * `ECONNREFUSED 127.0.0.1:5999`).
   */
  readonly cause?: BusError;
  /** `cause.message` (credential-free), kept for compatibility. */
  readonly detail?: string;
}

/** What the broker can do natively; core fills in the rest or refuses at configuration time. */
export interface TransportCapabilities {
  /**
   * What a resolved publish means — how much of a failure the message survives once `publish`
   * resolved for it:
   * - `'disk'`: the broker persisted it on one node (the fsync policy is the broker's); it survives
   *   a broker restart, not the loss of that node's disk. The RabbitMQ transport reports it
   *   (publisher confirms of persistent messages; a quorum queue replicates too, which it does not claim).
   * - `'replicated'`: a quorum / all in-sync replicas acknowledged it; it survives the loss of a
   *   minority of nodes (as many as `min.insync.replicas` allows). The Kafka transport reports it
   *   (`acks: -1`).
   * - `'memory'`: a process holds it in memory only; it is lost when that process (or broker)
   *   stops. The in-memory transport reports it.
   * - `'configurable'`: depends on how the broker is configured, which the transport cannot see
   *   (Redis: `appendonly` / `appendfsync`, replicas and `WAIT`); read the transport's docs and the
   *   broker's configuration to know which of the above applies. The Redis Streams transport reports it.
   */
  readonly durability: 'disk' | 'replicated' | 'memory' | 'configurable';
  /** Deliveries with the same key reach a group in publish order (and `orderedByKey` works). */
  readonly orderedByKey: boolean;
  /** A group that does not exist yet can start from the earliest retained message. */
  readonly newGroupFromEarliest: boolean;
  /** Members of one group are each given a share of the messages (round-robin-like). */
  readonly balancedAssignment: boolean;
  /** Deliveries support {@link Delivery.extendLease}. */
  readonly leaseExtension: boolean;
  /** Longest retry delay the broker can hold, in ms (core caps delays to it). */
  readonly maxRetryDelayMs: number;
  /**
   * How many {@link Transport.publish} calls may be in flight at once without losing publish
   * order: the messages of a call made later are appended after those of every call made earlier
   * (e.g. one AMQP channel, where frames are processed in the order written). Core uses it as the
   * default of `batching.maxInFlightBatches`. Absent or 1: calls may overtake each other (or the
   * transport does not say), so core keeps one call in flight.
   *
   * A transport that sets it must keep the order itself, also when a call has to wait before
   * writing (connecting, declaring, a full buffer): later calls wait for it. What it does not
   * promise is that a failed message stops later ones: when a message of one call fails (rejected,
   * or outcome unknown), messages of the same and of later calls already written may still land,
   * exactly as the later messages of one batch do — see `batching.maxInFlightBatches`.
   */
  readonly orderedPublishCalls?: number;
  /** Maximum length of a broker object name, in bytes. */
  readonly maxNameLength: number;
  /** Characters allowed in a broker object name. */
  readonly namePattern: RegExp;
}

/** Lifecycle signal a transport emits through its context. */
export interface TransportEvent {
  readonly kind: 'connection';
  /** The new state. */
  readonly state: ConnectionState;
  /** `cause.message`, credential-free. */
  readonly detail?: string;
  /** The last error while not connected (the final one in `'failed'`), credential-free. */
  readonly cause?: BusError;
}

/**
 * What the broker can tell about one consumer group of a topic ({@link Transport.describeGroups}).
 * Counts are the broker's own at the moment it answered (they move while you read them); a field
 * is absent where this broker cannot tell — never a guessed 0.
 */
export interface GroupDescription {
  /** The group's name (as given to `subscribe`). */
  readonly group: string;
  /** Messages waiting for the group, not yet handed out (Kafka: committed-offset lag over the partitions). */
  readonly backlog?: number;
  /** Messages handed out to a consumer of the group and not settled yet. */
  readonly inFlight?: number;
  /** Messages of the group waiting in its retry path for their delay to pass. */
  readonly retrying?: number;
  /** Messages in the group's dead letters. */
  readonly deadLetters?: number;
}

/** What core hands a transport at `connect`. */
export interface TransportContext {
  /** Redacting logger. */
  readonly logger: Logger;
  /** Report lifecycle changes (connection state). */
  emit(event: TransportEvent): void;
}

/** The broker seam. One instance is owned by one `EventBus`. */
export interface Transport {
  /** Short name used in logs and test names, e.g. `rabbitmq`. */
  readonly name: string;
  /**
   * Where the transport connects, for messages — **already redacted** (`redact()` of the kit):
   * e.g. `amqp://guest:***@127.0.0.1:5672`, `redis://127.0.0.1:6379`,
   * `kafka 127.0.0.1:9092,127.0.0.1:9093`, `memory`. Every bundled transport sets it; core falls
   * back to `name` for a transport that does not (yet).
   */
  readonly endpoint?: string;
  /** What the broker can do natively. */
  readonly capabilities: TransportCapabilities;
  /**
   * How this transport's protocol binding spells a CloudEvents attribute carried as a header in
   * binary content mode: the prefix before the attribute name. Core uses it only to name
   * attributes in dead-letter reasons as they appear on this broker (`missing attribute
   * cloudEvents_id`): the prefix the transport writes. Optional: absent means `'ce_'` (the Kafka
   * binding, core's canonical form). The AMQP binding (v1.0.2+): `'cloudEvents_'`.
   */
  readonly attributePrefix?: string;
  /**
   * Connect (or start connecting). Must not throw when the broker is merely down: the transport
   * keeps reconnecting with backoff and fails publishes with `BrokerUnavailableError` meanwhile.
   * Throws `ConfigError` for configuration that can never work.
   *
   * Report the state honestly through `context.emit` (the kit's `ConnectionStateCell` does it):
   * `'connected'` only once the broker answered, `'failed'` (with an `AuthenticationError` …) for
   * a final error — then stop reconnecting. `bus.ready()` waits for `'connected'` and rejects on
   * `'failed'`; a silent (black-holed) link must leave `'connected'` within 15 s with the defaults.
   */
  connect(context: TransportContext): Promise<void>;
  /**
   * Append a batch durably. Resolves with one outcome per message, in order, once each is durable
   * or has failed; rejects only for a failure of the whole batch. Must honour `signal` (stop
   * waiting, never leave the caller hanging). Errors: `BrokerUnavailableError` (not connected),
   * `PublishRejectedError` (nack, unroutable), anything else is treated as unknown outcome.
   *
   * `onDurable`, when given, may be called once for a message as soon as the broker holds it
   * (its confirm arrived), before the call resolves: core then releases that message's publisher
   * at once instead of when the last message of the batch is confirmed, so a publisher that
   * publishes again joins the next call while this one still waits for its other confirms. The
   * returned outcomes must still include that message (as ok). Optional: a transport whose
   * results arrive all at once (one reply per batch) has nothing to gain from it.
   */
  publish(batch: readonly OutgoingMessage[], signal: AbortSignal, onDurable?: (index: number) => void): Promise<readonly PublishOutcome[]>;
  /**
   * Start consuming `spec.topic` as `spec.group`. Resolves once the group's starting position is
   * fixed. `onDelivery` is called with at most `spec.concurrency` unsettled deliveries at a time; it
   * never throws and core always settles each delivery. Core calls it also while the state is
   * `'reconnecting'`: wait for the reconnect within a bound of the transport's (also when the link
   * drops during the call), then resolve, or reject with a retryable `BrokerUnavailableError` with
   * `cause` — never with a raw client error.
   */
  subscribe(spec: SubscriptionSpec, onDelivery: (delivery: Delivery) => void): Promise<TransportSubscription>;
  /**
   * Walk the dead letters of one (topic, group) oldest first, and re-deliver the selected ones to
   * that group only (removing them from the dead letters), unless `dryRun`. Returns the selected
   * ones.
   */
  processDeadLetters(target: DeadLetterTarget, scan: DeadLetterScan): Promise<readonly StoredDeadLetter[]>;
  /**
   * Optional: the consumer groups the broker knows on `topic` (the broker-level name), each with
   * the counts it can tell (see {@link GroupDescription}); an empty list when it knows none. Called
   * only when asked (`bus.describeGroups`, a metrics reader polling at its interval), never on a
   * hot path: it may cost a few broker round trips. Must not change any state (no group is created,
   * no offset committed). A transport without it makes `bus.describeGroups` reject with
   * `CapabilityError`. Errors: `BrokerUnavailableError` (not connected).
   */
  describeGroups?(topic: string): Promise<readonly GroupDescription[]>;
  /** Current connection state, since when, and the last error (see {@link TransportHealth}). */
  health(): TransportHealth;
  /** Close connections. Called by core after subscriptions were drained and publishes settled. */
  close(): Promise<void>;
}
