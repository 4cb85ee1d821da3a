/**
 * The `@platformatic/kafka` group member behind {@link GroupConsumer}: the library's `Consumer`
 * keeps the membership (join/sync, heartbeats on its own timer, rejoin on rebalance); this file
 * runs the fetch loop, so that batches can be resolved partially, refetched, paused per partition
 * and marked stale after a rebalance, as the seam requires.
 * @internal
 */
import { ConnectionPool, Consumer, type ConsumerOptions, type GroupAssignment } from '@platformatic/kafka';
import type { FetchedBatch, GroupConsumer, GroupConsumerConfig, GroupConsumerHandlers, TopicPartitionOffset } from './client.js';
import { baseOptions, delay, type PlatformaticClientSettings, StaleBatchError } from './client-platformatic-base.js';
import { fetchInto, loadPositions, offsetCommit, type PartitionState, type RawConsumer } from './client-platformatic-fetch.js';

/**
 * A group member: the library's `Consumer` keeps the membership (heartbeats on its own timer,
 * rejoins on rebalance); this class runs the fetch loop. Each join starts a new generation: the
 * partitions' positions are reloaded from the committed offsets and batches of the previous one
 * report `isActive() === false`. If the library gives up on the membership (an `error` event, a
 * stalled heartbeat), the consumer is replaced by a new one (new connections, rejoin).
 */
export class PlatformaticGroupConsumer implements GroupConsumer {
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
        if (unknown.length > 0) await loadPositions(this.consumer, unknown);
        if (gen !== this.generation || this.closed) continue;
        const ready = [...parts.values()].filter((p) => !p.paused);
        const toFetch = ready.filter((p) => p.buffer.length === 0);
        if (ready.length === 0) {
          await this.sleep(this.config.maxWaitTimeMs);
          continue;
        }
        if (toFetch.length > 0) {
          const c = this.consumer;
          // Records already buffered elsewhere: do not long-poll for the others.
          const maxWaitTime = ready.length > toFetch.length ? 0 : this.config.maxWaitTimeMs;
          await fetchInto(c, this.fetchPools.get(c) as ConnectionPool, toFetch, maxWaitTime, () => gen === this.generation);
        }
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
