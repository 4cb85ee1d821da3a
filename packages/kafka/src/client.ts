/**
 * The transport's own seam in front of the Kafka client library. `KafkaTransport` talks only to
 * these interfaces; `kafkajs-client.ts` implements them with kafkajs. Another client
 * (`@platformatic/kafka`, `@confluentinc/kafka-javascript`'s KafkaJS-compatible API …) can be
 * swapped in by implementing them, without touching the transport's delivery logic.
 *
 * @internal Not a stable public API.
 */

/** A topic to create. */
export interface TopicSpec {
  readonly name: string;
  readonly numPartitions: number;
  readonly replicationFactor: number;
  /** Topic-level configuration entries (`retention.ms`, `min.insync.replicas` …). */
  readonly config?: Readonly<Record<string, string>>;
}

/** Low and high watermark of one partition (offsets as decimal strings). */
export interface PartitionWatermarks {
  readonly partition: number;
  /** First offset still stored. */
  readonly low: string;
  /** Offset the next record will get (log end offset). */
  readonly high: string;
}

/** A committed group offset; `'-1'` when the group has none for the partition. */
export interface CommittedOffset {
  readonly partition: number;
  readonly offset: string;
  /** The metadata string committed with the offset (Kafka's `OffsetCommit` metadata), if any. */
  readonly metadata?: string | undefined;
}

/** An offset of one topic partition. */
export interface TopicPartitionOffset {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  /** Metadata committed with the offset (the broker caps it: `offset.metadata.max.bytes`, 4096 by default). */
  readonly metadata?: string | undefined;
}

/** A record to produce. */
export interface OutgoingRecord {
  readonly key?: string | undefined;
  readonly value: Uint8Array;
  readonly headers: Readonly<Record<string, string>>;
}

/** Records for one topic. */
export interface TopicRecords {
  readonly topic: string;
  readonly records: readonly OutgoingRecord[];
}

/** A consumed record. */
export interface IncomingRecord {
  readonly offset: string;
  readonly key: string | undefined;
  readonly value: Uint8Array;
  /** Header values decoded as UTF-8; of repeated headers the last one wins. */
  readonly headers: Readonly<Record<string, string>>;
}

/** Records fetched from one partition, handed to {@link GroupConsumerHandlers.onBatch}. */
export interface FetchedBatch {
  readonly topic: string;
  readonly partition: number;
  /** The records in offset order (an array will do; an implementation may convert them lazily as they are iterated). */
  readonly records: Iterable<IncomingRecord>;
  /**
   * Marks the fetch position: the next fetch of this partition starts after `offset`. Not a
   * commit. Records not resolved when `onBatch` returns are fetched again.
   */
  resolve(offset: string): void;
  /** Heartbeats the group; rejects when the group is rebalancing (let it propagate). */
  heartbeat(): Promise<void>;
  /** False once the consumer is stopping or the batch went stale (seek, rebalance). */
  isActive(): boolean;
  /** Pauses fetching this partition; returns the function that resumes it. */
  pause(): () => void;
}

/** Callbacks of a running group consumer. */
export interface GroupConsumerHandlers {
  /** Processes one batch; a rejection makes the consumer rejoin / restart. */
  onBatch(batch: FetchedBatch): Promise<void>;
  /** The member's assignment after each (re)join: topic → partitions. */
  onAssignment(assignment: ReadonlyMap<string, readonly number[]>): void;
  /** The consumer crashed; `restarting` says whether the client restarts it by itself. */
  onCrash(error: Error, restarting: boolean): void;
}

/** Configuration of a group consumer. */
export interface GroupConsumerConfig {
  readonly groupId: string;
  /** Topics to subscribe and where a partition without committed offset starts. */
  readonly topics: readonly { readonly name: string; readonly fromBeginning: boolean }[];
  /** Partitions whose batches are processed at once. */
  readonly partitionsConsumedConcurrently: number;
  readonly sessionTimeoutMs: number;
  readonly heartbeatIntervalMs: number;
  readonly rebalanceTimeoutMs: number;
  readonly maxWaitTimeMs: number;
}

/**
 * A consumer-group member. After a request timeout (a silent, possibly half-open connection) it
 * replaces its connections and rejoins by itself, reporting it through
 * {@link GroupConsumerHandlers.onCrash} (`restarting: true`).
 */
export interface GroupConsumer {
  /** Connects, subscribes and starts fetching; resolves after the first group join. */
  start(handlers: GroupConsumerHandlers): Promise<void>;
  /** Commits group offsets (the offset of the next record to consume). */
  commit(offsets: readonly TopicPartitionOffset[]): Promise<void>;
  /** Pauses fetching the given topics (all their partitions). */
  pauseTopics(topics: readonly string[]): void;
  /** Stops fetching, leaves the group and disconnects. Idempotent. */
  close(): Promise<void>;
}

/** An (idempotent, acks = all) producer. */
export interface RecordProducer {
  /**
   * Appends the records in one request per broker; resolves once all in-sync replicas have them.
   * Rejects (promptly) once a request of this producer timed out: its connection is presumed dead
   * and the producer must be replaced.
   */
  send(batches: readonly TopicRecords[]): Promise<void>;
  /** Disconnects. */
  close(): Promise<void>;
}

/** How a failed client call should be reported. */
export type ErrorKind =
  /**
   * The cluster refused the credentials (SASL authentication failed, mechanism not enabled) or
   * the permissions (topic / group / cluster authorization failed): final, retrying cannot help.
   */
  | 'auth'
  /** The broker refused the request for good (record too large, invalid topic, not authorized …). */
  | 'rejected'
  /** The group still has members (offsets can only be set on an empty group). */
  | 'group-not-empty'
  /** Anything else: connection, timeout, leader change — the outcome may be unknown. */
  | 'unavailable';

/** The client seam. */
export interface KafkaClient {
  /**
   * Connects the admin connection. Called again after a connection loss: then it drops the old
   * connections and opens new ones (a half-open socket never recovers by itself).
   */
  connect(): Promise<void>;
  /**
   * Cheap round trip proving the cluster answers (a metadata request), without client-level
   * retries: it fails at the first refused or failed attempt, so the caller sees each cause.
   */
  probe(): Promise<void>;
  /** Creates and connects a new producer. */
  createProducer(): Promise<RecordProducer>;
  /** Creates the topics that do not exist yet (existing ones are left as they are). */
  createTopics(specs: readonly TopicSpec[]): Promise<void>;
  /** Topic names. */
  listTopics(): Promise<string[]>;
  /** Deletes topics. */
  deleteTopics(names: readonly string[]): Promise<void>;
  /** Watermarks of every partition of `topic`. */
  watermarks(topic: string): Promise<PartitionWatermarks[]>;
  /** Ids of the cluster's consumer groups (every group the brokers' coordinators know, any state). */
  listGroups(): Promise<string[]>;
  /** Committed offsets of `groupId` on `topic`. */
  committedOffsets(groupId: string, topic: string): Promise<CommittedOffset[]>;
  /**
   * Commits offsets for an *empty* group (one with no running member) before its first member
   * starts; fails with kind `'group-not-empty'` otherwise.
   */
  initGroupOffsets(groupId: string, offsets: readonly TopicPartitionOffset[]): Promise<void>;
  /** A new, unstarted group consumer. */
  createGroupConsumer(config: GroupConsumerConfig): GroupConsumer;
  /** Classifies an error thrown by any method above. */
  classify(error: unknown): ErrorKind;
  /** Disconnects the admin connection. */
  close(): Promise<void>;
}
