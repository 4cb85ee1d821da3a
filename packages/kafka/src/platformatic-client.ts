/**
 * The {@link KafkaClient} seam implemented with `@platformatic/kafka` 2.x. The only file that
 * imports it.
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
 *   its own timer, rejoin on rebalance); the fetch loop is this file's (`consumer.fetch`), so that
 *   batches can be resolved partially, refetched, paused per partition and marked stale after a
 *   rebalance, as the seam requires. Offsets are committed with `OffsetCommit` carrying metadata
 *   (the library's `commit()` sends none).
 * @internal
 */
import {
  Admin,
  type BaseOptions,
  type ClusterMetadata,
  ConnectionPool,
  Consumer,
  type ConsumerOptions,
  type GroupAssignment,
  type KafkaRecord,
  kGetApi,
  kGetConnection,
  murmur2,
  type SASLOptions as PltSASLOptions,
  Producer,
  type ProducerOptions,
  stringSerializer,
} from '@platformatic/kafka';
import type { SASLOptions } from 'kafkajs';
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
  errorChain,
  GroupNotEmptyError,
  REJECTED_ERRORS,
  RequestTimedOutError,
  SerialSends,
  toBuffer,
} from './client-common.js';

/** Settings of the `@platformatic/kafka` client (resolved transport options). */
export type PlatformaticClientSettings = ClientSettings;

class StaleBatchError extends Error {
  constructor() {
    super('the consumer group is rebalancing; the batch is stale');
    this.name = 'StaleBatchError';
  }
}

function hasApiId(error: unknown, ids: ReadonlySet<string> | string): boolean {
  for (const e of errorChain(error)) {
    if (typeof e.apiId !== 'string') continue;
    if (typeof ids === 'string' ? e.apiId === ids : ids.has(e.apiId)) return true;
  }
  return false;
}

/** Whether the broker refused the request (it was not appended; retrying cannot help). */
function isRejection(error: unknown): boolean {
  return hasApiId(error, REJECTED_ERRORS);
}

/** Retriable errors right after a topic was created (metadata propagates asynchronously on Kafka 4). */
async function retrying<T>(fn: () => Promise<T>, attempts = 8): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await fn();
    } catch (error) {
      const retriable = [...errorChain(error)].some((e) => e.canRetry === true || e.apiId === 'UNKNOWN_TOPIC_OR_PARTITION');
      if (!retriable || n >= attempts) throw error;
      await delay(Math.min(1000, 50 * 2 ** n));
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

const EMPTY = Buffer.alloc(0);

function saslOf(sasl: SASLOptions): PltSASLOptions {
  const s = sasl as unknown as Record<string, unknown>;
  const mechanism = String(s.mechanism).toUpperCase();
  if (mechanism === 'OAUTHBEARER') {
    const provider = s.oauthBearerProvider as (() => Promise<{ value: string }>) | undefined;
    return { mechanism: 'OAUTHBEARER', token: async () => (provider ? (await provider()).value : '') } as unknown as PltSASLOptions;
  }
  if (mechanism !== 'PLAIN' && mechanism !== 'SCRAM-SHA-256' && mechanism !== 'SCRAM-SHA-512')
    throw new Error(`SASL mechanism ${mechanism} is not supported by the platformatic client`);
  return { mechanism, username: s.username as string, password: s.password as string } as PltSASLOptions;
}

function baseOptions(s: PlatformaticClientSettings): BaseOptions {
  const o: BaseOptions = {
    clientId: s.clientId,
    bootstrapBrokers: [...s.brokers],
    connectTimeout: s.connectionTimeoutMs,
    requestTimeout: s.requestTimeoutMs,
    retries: s.requestRetries,
    retryDelay: (_client, _op, attempt) => Math.min(s.maxRetryTimeMs, 100 * 2 ** Math.max(0, attempt - 1)),
    autocreateTopics: false,
  };
  if (s.ssl !== undefined && s.ssl !== false) o.tls = (s.ssl === true ? {} : s.ssl) as BaseOptions['tls'];
  if (s.sasl !== undefined) o.sasl = saslOf(s.sasl);
  return o;
}

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

/** A request timed out: the connection it used is presumed dead (half-open, black-holed). */
function isRequestTimeout(error: unknown): boolean {
  return [...errorChain(error)].some((e) => e.name === 'TimeoutError' || e.message === 'Request timed out');
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

type RawConsumer = Consumer<Buffer, Buffer, Buffer, Buffer>;

/** Fetch state of one assigned partition in one generation. */
interface PartitionState {
  readonly topic: string;
  readonly partition: number;
  readonly fromBeginning: boolean;
  /** Next offset to fetch; undefined until loaded from the committed offsets. */
  position: bigint | undefined;
  /** Records fetched and not yet resolved (handed again in the next batch). */
  buffer: IncomingRecord[];
  paused: boolean;
}

function headersOf(raw: readonly (readonly [Buffer | null, Buffer | null])[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of raw) {
    if (k === null) continue;
    out[k.toString('utf8')] = v === null ? '' : v.toString('utf8');
  }
  return out;
}

function toIncoming(offset: bigint, r: KafkaRecord): IncomingRecord {
  return {
    offset: offset.toString(),
    key: r.key === null ? undefined : r.key.toString('utf8'),
    value: r.value ?? EMPTY,
    headers: headersOf(r.headers),
  };
}

/**
 * A group member: the library's `Consumer` keeps the membership (heartbeats on its own timer,
 * rejoins on rebalance); this class runs the fetch loop. Each join starts a new generation: the
 * partitions' positions are reloaded from the committed offsets and batches of the previous one
 * report `isActive() === false`. If the library gives up on the membership (an `error` event, a
 * stalled heartbeat), the consumer is replaced by a new one (new connections, rejoin).
 */
class PlatformaticGroupConsumer implements GroupConsumer {
  private consumer: RawConsumer;
  private handlers: GroupConsumerHandlers | undefined;
  private closed = false;
  private generation = 0;
  private parts = new Map<string, PartitionState>();
  private readonly pausedTopics = new Set<string>();
  private wakeup: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private restarting: Promise<void> | undefined;
  private readonly retired: Promise<void>[] = [];
  private closing: Promise<void> | undefined;
  private readonly fromBeginning: Map<string, boolean>;
  private coordinator: { consumer: RawConsumer; node: number } | undefined;
  /**
   * Fetches go over connections of their own: the broker answers one request per connection at
   * a time, so a commit or heartbeat queued behind a fetch long-poll would wait `maxWaitTimeMs`.
   */
  private readonly fetchPools = new WeakMap<RawConsumer, ConnectionPool>();

  constructor(
    private readonly config: GroupConsumerConfig,
    private readonly settings: PlatformaticClientSettings,
  ) {
    this.fromBeginning = new Map(config.topics.map((t) => [t.name, t.fromBeginning]));
    this.consumer = this.spawn();
  }

  private spawn(): RawConsumer {
    const c = this.config;
    const options: ConsumerOptions<Buffer, Buffer, Buffer, Buffer> = {
      ...baseOptions(this.settings),
      groupId: c.groupId,
      sessionTimeout: c.sessionTimeoutMs,
      heartbeatInterval: c.heartbeatIntervalMs,
      rebalanceTimeout: c.rebalanceTimeoutMs,
      maxWaitTime: c.maxWaitTimeMs,
      autocommit: false,
    };
    const consumer = new Consumer(options);
    const { clientId, connectTimeout, requestTimeout, tls, sasl } = options;
    const connection: ConstructorParameters<typeof ConnectionPool>[1] = { connectTimeout, requestTimeout };
    if (tls) connection.tls = tls;
    if (sasl) connection.sasl = sasl;
    this.fetchPools.set(consumer, new ConnectionPool(clientId, connection));
    return consumer;
  }

  /** Closes `c` and its fetch connections. */
  private async dispose(c: RawConsumer, force: boolean): Promise<void> {
    try {
      await c.close(force).catch(() => c.close(true));
    } finally {
      await this.fetchPools
        .get(c)
        ?.close()
        .catch(() => {});
    }
  }

  async start(handlers: GroupConsumerHandlers): Promise<void> {
    await this.join(this.consumer, handlers);
    this.handlers = handlers;
    this.loop ??= this.run();
  }

  /** Subscribes `c` and joins the group; resolves after the first join. */
  private async join(c: RawConsumer, handlers: GroupConsumerHandlers): Promise<void> {
    c.on('consumer:group:join', (payload) => {
      if (c !== this.consumer || this.closed) return;
      this.assign(payload.assignments ?? c.assignments ?? [], handlers);
    });
    c.on('consumer:group:rebalance', () => {
      if (c === this.consumer) this.stale();
    });
    c.on('error', (error: Error) => {
      if (c !== this.consumer || this.closed) return;
      this.restart(error);
    });
    c.on('consumer:heartbeat:stalled', (payload) => {
      if (c !== this.consumer || this.closed) return;
      this.restart(payload.lastError ?? new Error(`heartbeats stalled for ${payload.stalledFor} ms`));
    });
    c.topics.trackAll(...this.config.topics.map((t) => t.name));
    await c.joinGroup({
      sessionTimeout: this.config.sessionTimeoutMs,
      heartbeatInterval: this.config.heartbeatIntervalMs,
      rebalanceTimeout: this.config.rebalanceTimeoutMs,
    });
  }

  /** A new assignment: a new generation of partition states. */
  private assign(assignments: readonly GroupAssignment[], handlers: GroupConsumerHandlers): void {
    this.generation++;
    const parts = new Map<string, PartitionState>();
    const map = new Map<string, number[]>();
    for (const a of assignments) {
      map.set(a.topic, [...a.partitions]);
      for (const partition of a.partitions) {
        parts.set(`${a.topic}\0${partition}`, {
          topic: a.topic,
          partition,
          fromBeginning: this.fromBeginning.get(a.topic) ?? true,
          position: undefined,
          buffer: [],
          paused: this.pausedTopics.has(a.topic),
        });
      }
    }
    this.parts = parts;
    handlers.onAssignment(map);
    this.wake();
  }

  /** The current generation is over (rebalance, restart, close): its batches become inactive. */
  private stale(): void {
    this.generation++;
    this.parts = new Map();
    this.wake();
  }

  private wake(): void {
    const w = this.wakeup;
    this.wakeup = undefined;
    w?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.wakeup === done) self.wakeup = undefined;
        resolve();
      }
      this.wakeup = done;
    });
  }

  /** The fetch loop: fetch the unpaused partitions, process their batches, repeat. */
  private async run(): Promise<void> {
    let failures = 0;
    while (!this.closed) {
      const gen = this.generation;
      const parts = this.parts;
      try {
        const unknown = [...parts.values()].filter((p) => p.position === undefined);
        if (unknown.length > 0) await this.loadPositions(unknown);
        if (gen !== this.generation || this.closed) continue;
        const ready = [...parts.values()].filter((p) => !p.paused);
        const toFetch = ready.filter((p) => p.buffer.length === 0);
        if (ready.length === 0) {
          await this.sleep(this.config.maxWaitTimeMs);
          continue;
        }
        if (toFetch.length > 0) await this.fetchInto(toFetch, gen, ready.length > toFetch.length);
        if (gen !== this.generation || this.closed) continue;
        const moved = await this.processRound(parts, gen);
        // No batch resolved or paused anything and nothing new was fetched: do not spin.
        if (!moved && toFetch.length === 0) await this.sleep(Math.min(50, this.config.maxWaitTimeMs));
        failures = 0;
      } catch (error) {
        if (this.closed) return;
        failures++;
        this.consumer.clearMetadata();
        this.handlers?.onCrash(error as Error, true);
        await this.sleep(Math.min(this.settings.maxRetryTimeMs, 100 * 2 ** Math.min(failures, 6)));
      }
    }
  }

  /** Positions from the committed offsets; without one, the topic's start or end. */
  private async loadPositions(unknown: readonly PartitionState[]): Promise<void> {
    const byTopic = new Map<string, PartitionState[]>();
    for (const p of unknown) byTopic.set(p.topic, [...(byTopic.get(p.topic) ?? []), p]);
    const committed = await this.consumer.listCommittedOffsets({
      topics: [...byTopic].map(([topic, ps]) => ({ topic, partitions: ps.map((p) => p.partition) })),
    });
    const missing: PartitionState[] = [];
    for (const p of unknown) {
      const offset = committed.get(p.topic)?.[p.partition];
      if (offset !== undefined && offset >= 0n) p.position = offset;
      else missing.push(p);
    }
    for (const fromBeginning of [true, false]) {
      const ps = missing.filter((p) => p.fromBeginning === fromBeginning);
      if (ps.length === 0) continue;
      const partitions: Record<string, number[]> = {};
      for (const p of ps) partitions[p.topic] = [...(partitions[p.topic] ?? []), p.partition];
      const offsets = await this.consumer.listOffsets({
        topics: Object.keys(partitions),
        partitions,
        timestamp: fromBeginning ? -2n : -1n,
      });
      for (const p of ps) {
        const offset = offsets.get(p.topic)?.[p.partition];
        if (offset === undefined || offset < 0n)
          throw new Error(`no ${fromBeginning ? 'start' : 'end'} offset for ${p.topic}/${p.partition}`);
        p.position = offset;
      }
    }
  }

  /** One fetch per leader for `parts`; records land in their buffers. */
  private async fetchInto(parts: readonly PartitionState[], gen: number, haveBuffered: boolean): Promise<void> {
    const c = this.consumer;
    const topics = [...new Set(parts.map((p) => p.topic))];
    const metadata: ClusterMetadata = await c.metadata({ topics });
    const byNode = new Map<number, PartitionState[]>();
    for (const p of parts) {
      const leader = metadata.topics.get(p.topic)?.partitions[p.partition]?.leader;
      if (leader === undefined || leader < 0) throw new Error(`no leader for ${p.topic}/${p.partition}`);
      byNode.set(leader, [...(byNode.get(leader) ?? []), p]);
    }
    // Records already buffered elsewhere: do not long-poll for the others.
    const maxWaitTime = haveBuffered ? 0 : this.config.maxWaitTimeMs;
    await Promise.all(
      [...byNode].map(async ([node, ps]) => {
        const requested = new Map<string, PartitionState>();
        const byTopic = new Map<string, PartitionState[]>();
        for (const p of ps) {
          const id = metadata.topics.get(p.topic)?.id as string;
          requested.set(`${id}\0${p.partition}`, p);
          byTopic.set(id, [...(byTopic.get(id) ?? []), p]);
        }
        let response: Awaited<ReturnType<RawConsumer['fetch']>>;
        try {
          response = await c.fetch({
            node,
            maxWaitTime,
            connectionPool: this.fetchPools.get(c) as ConnectionPool,
            topics: [...byTopic].map(([topicId, tps]) => ({
              topicId,
              partitions: tps.map((p) => ({
                partition: p.partition,
                fetchOffset: p.position as bigint,
                currentLeaderEpoch: -1,
                lastFetchedEpoch: -1,
                partitionMaxBytes: 1_048_576,
              })),
            })),
          });
        } catch (error) {
          if (gen === this.generation && this.outOfRange(error, requested)) return;
          throw error;
        }
        if (gen !== this.generation) return;
        for (const t of response.responses) {
          for (const pr of t.partitions) {
            const p = requested.get(`${t.topicId}\0${pr.partitionIndex}`);
            if (!p || p.position === undefined || !pr.records) continue;
            const from = p.position;
            let next = from;
            for (const batch of pr.records) {
              const last = batch.firstOffset + BigInt(batch.lastOffsetDelta);
              if (last + 1n > next) next = last + 1n;
              if (batch.attributes & 0x20) continue; // control batch
              for (const r of batch.records) {
                const offset = batch.firstOffset + BigInt(r.offsetDelta);
                if (offset >= from) p.buffer.push(toIncoming(offset, r));
              }
            }
            // Only control records: step over them.
            if (p.buffer.length === 0) p.position = next;
          }
        }
      }),
    );
  }

  /** OFFSET_OUT_OF_RANGE: reset those partitions to their start (or end); true when handled. */
  private outOfRange(error: unknown, requested: ReadonlyMap<string, PartitionState>): boolean {
    if (!hasApiId(error, 'OFFSET_OUT_OF_RANGE')) return false;
    const response = (
      error as {
        response?: {
          responses?: {
            topicId: string;
            partitions: { partitionIndex: number; errorCode: number; logStartOffset: bigint; highWatermark: bigint }[];
          }[];
        };
      }
    ).response;
    if (!response?.responses) return false;
    let handled = false;
    for (const t of response.responses)
      for (const pr of t.partitions) {
        if (pr.errorCode !== 1) continue;
        const p = requested.get(`${t.topicId}\0${pr.partitionIndex}`);
        if (!p) continue;
        const reset = p.fromBeginning ? pr.logStartOffset : pr.highWatermark;
        if (reset < 0n) return false;
        p.position = reset;
        p.buffer = [];
        handled = true;
      }
    return handled;
  }

  /** Hands the buffered records of every unpaused partition to `onBatch`, a few partitions at once. */
  private async processRound(parts: ReadonlyMap<string, PartitionState>, gen: number): Promise<boolean> {
    const handlers = this.handlers;
    if (!handlers) return false;
    const queue = [...parts.values()].filter((p) => !p.paused && p.buffer.length > 0);
    const width = Math.max(1, Math.min(this.config.partitionsConsumedConcurrently, queue.length));
    const active = () => gen === this.generation && !this.closed;
    const worker = async () => {
      for (let p = queue.shift(); p && active(); p = queue.shift()) {
        const state = p;
        const records = state.buffer;
        let resolved: bigint | undefined;
        const batch: FetchedBatch = {
          topic: state.topic,
          partition: state.partition,
          records,
          resolve: (offset) => {
            const o = BigInt(offset);
            if (resolved === undefined || o > resolved) resolved = o;
          },
          heartbeat: async () => {
            if (!active()) throw new StaleBatchError();
          },
          isActive: active,
          pause: () => {
            state.paused = true;
            return () => {
              if (!state.paused) return;
              state.paused = false;
              this.wake();
            };
          },
        };
        let progressed = false;
        try {
          await handlers.onBatch(batch);
        } catch (error) {
          // A batch of a generation that is over: the rejection is the expected way out.
          if (active()) throw error;
        } finally {
          if (resolved !== undefined && gen === this.generation) {
            const after = resolved;
            state.position = after + 1n;
            state.buffer = records.filter((r) => BigInt(r.offset) > after);
            progressed = true;
          }
          if (progressed || state.paused) moved++;
        }
      }
    };
    let moved = 0;
    await Promise.all(Array.from({ length: width }, worker));
    return moved > 0;
  }

  /** Replaces the library consumer by a new one (new connections, rejoin); once at a time. */
  private restart(reason: Error): void {
    const handlers = this.handlers;
    if (this.restarting || this.closed || !handlers) return;
    this.restarting = (async () => {
      handlers.onCrash(reason, true);
      for (let n = 1; !this.closed; n++) {
        const old = this.consumer;
        const next = this.spawn();
        this.consumer = next;
        this.stale();
        this.retired.push(this.dispose(old, true).catch(() => {}));
        try {
          await this.join(next, handlers);
          return;
        } catch (error) {
          if (this.closed) return;
          handlers.onCrash(error as Error, true);
          await delay(Math.min(this.settings.maxRetryTimeMs, 100 * 2 ** n));
        }
      }
    })().finally(() => {
      this.restarting = undefined;
    });
  }

  async commit(offsets: readonly TopicPartitionOffset[]): Promise<void> {
    if (offsets.length === 0) return;
    const c = this.consumer;
    if (!c.memberId) throw new StaleBatchError();
    const topics = new Map<
      string,
      {
        name: string;
        partitions: { partitionIndex: number; committedOffset: bigint; committedLeaderEpoch: number; committedMetadata: string | null }[];
      }
    >();
    for (const o of offsets) {
      let t = topics.get(o.topic);
      if (!t) {
        t = { name: o.topic, partitions: [] };
        topics.set(o.topic, t);
      }
      t.partitions.push({
        partitionIndex: o.partition,
        committedOffset: BigInt(o.offset),
        committedLeaderEpoch: -1,
        committedMetadata: o.metadata ?? null,
      });
    }
    // The coordinator is looked up once (FindCoordinator is a round trip) and again after a failure.
    const coordinator = this.coordinator?.consumer === c ? this.coordinator.node : await c.findGroupCoordinator();
    this.coordinator = { consumer: c, node: coordinator };
    try {
      const metadata = await c.metadata({ topics: [] });
      const broker = metadata.brokers.get(coordinator);
      if (!broker) throw new Error(`group coordinator ${coordinator} not in the cluster metadata`);
      await offsetCommit(c, broker, c.groupId, c.generationId, c.memberId, [...topics.values()]);
    } catch (error) {
      this.coordinator = undefined;
      throw error;
    }
  }

  pauseTopics(topics: readonly string[]): void {
    for (const t of topics) this.pausedTopics.add(t);
    for (const p of this.parts.values()) if (this.pausedTopics.has(p.topic)) p.paused = true;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      this.stale();
      await this.loop?.catch(() => {});
      await this.restarting;
      await this.dispose(this.consumer, false);
      await Promise.all(this.retired);
    })();
    return this.closing;
  }
}

/** `OffsetCommit` with metadata, on the library's connection to the coordinator. */
function offsetCommit(
  c: RawConsumer,
  broker: unknown,
  groupId: string,
  generationId: number,
  memberId: string,
  topics: unknown[],
): Promise<void> {
  type Cb<T> = (error: Error | null, value?: T) => void;
  const internal = c as unknown as {
    [kGetConnection](broker: unknown, cb: Cb<unknown>): void;
    [kGetApi](name: string, cb: Cb<(...args: unknown[]) => void>): void;
  };
  return new Promise((resolve, reject) => {
    internal[kGetConnection](broker, (error, connection) => {
      if (error) return reject(error);
      internal[kGetApi]('OffsetCommit', (error2, api) => {
        if (error2 || !api) return reject(error2 ?? new Error('OffsetCommit unsupported'));
        api(connection, groupId, generationId, memberId, null, topics, (error3: Error | null) => (error3 ? reject(error3) : resolve()));
      });
    });
  });
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
  private connects = 0;

  constructor(private readonly settings: PlatformaticClientSettings) {
    ensureWithResolvers();
    this.admin = new Admin(baseOptions(settings));
  }

  /** A later call replaces the admin client (new connections). */
  async connect(): Promise<void> {
    if (this.connects++ > 0) {
      const old = this.admin;
      this.admin = new Admin(baseOptions(this.settings));
      void old.close().catch(() => {});
    }
    await this.admin.metadata({ topics: [] });
  }

  async probe(): Promise<void> {
    await this.admin.metadata({ topics: [], forceUpdate: true });
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
        if (n >= 20) throw error;
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
    for (const e of errorChain(error)) {
      if (typeof e.apiId === 'string' && REJECTED_ERRORS.has(e.apiId)) return 'rejected';
      if (e.name === 'GroupNotEmptyError') return 'group-not-empty';
    }
    return 'unavailable';
  }

  async close(): Promise<void> {
    await this.admin.close();
  }
}
