/**
 * One group consumption: hands records to core within the concurrency limit, keeps per-key order,
 * honours retry due times, and commits per partition only the contiguous prefix core has settled.
 * @internal
 */
import {
  type Delivery,
  describeError,
  type Logger,
  SlotGate,
  type SlotWaiter,
  type SubscriptionSpec,
  TimeoutError,
  type TransportSubscription,
} from '@busbar/core/transport';
import type { FetchedBatch, GroupConsumer, IncomingRecord, KafkaClient, OutgoingRecord } from './client.js';
import { KafkaDelivery, type Settler } from './delivery.js';
import { PartitionTrack, trackKey } from './offsets.js';
import type { ResolvedOptions } from './options.js';
import { deliveryHeaders, parseAttemptsMetadata, RETRY_AT_HEADER } from './wire.js';

/** Delay before a delivery whose settle failed (or that was released) is handed over again, ms. */
const REDELIVERY_DELAY_MS = 1000;

/** A record to hand over again (see {@link KafkaDelivery}). */
interface HandOver {
  readonly rec: IncomingRecord;
  readonly track: PartitionTrack;
  readonly offset: bigint;
  readonly headers: Readonly<Record<string, string>>;
  readonly redeliveries: number;
  readonly handOver: number;
  readonly gateKey: string | undefined;
}

/** Broker object names of one subscription. */
export interface SubscriptionNames {
  readonly topic: string;
  readonly retryTopic: string;
  readonly deadLetterTopic: string;
  readonly groupId: string;
}

/** What a subscription needs from its transport. */
export interface SubscriptionDeps {
  readonly client: KafkaClient;
  readonly options: ResolvedOptions;
  readonly logger: Logger;
  /** Appends one record durably (acks = all); rejects with a typed error. */
  produce(topic: string, record: OutgoingRecord): Promise<void>;
}

/** A running group consumption of the main topic and the group's retry topic. */
export class KafkaSubscription implements TransportSubscription {
  /** In-flight deliveries (`concurrency`) and, for ordered subscriptions, one delivery per key. */
  private readonly gate: SlotGate;
  private readonly consumer: GroupConsumer;
  private readonly tracks = new Map<string, PartitionTrack>();
  private readonly finalCommits: PartitionTrack[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private stopping = false;
  private activeBatches = 0;
  private batchesIdle: (() => void)[] = [];
  private flushChain: Promise<void> = Promise.resolve();
  private pendingFlush: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;
  /** How this subscription's deliveries settle (the only way they reach it). */
  private readonly settler: Settler = {
    ack: (d) => this.settleAck(d),
    retry: (d, delayMs, headers) => this.settleRetry(d, delayMs, headers),
    deadLetter: (d, headers) => this.settleDeadLetter(d, headers),
    release: (d) => this.settleRelease(d),
  };

  constructor(
    private readonly deps: SubscriptionDeps,
    private readonly names: SubscriptionNames,
    private readonly spec: SubscriptionSpec,
    private readonly onDelivery: (delivery: Delivery) => void,
  ) {
    this.gate = new SlotGate(spec.concurrency);
    const o = deps.options;
    this.consumer = deps.client.createGroupConsumer({
      groupId: names.groupId,
      topics: [
        { name: names.topic, fromBeginning: spec.startFrom === 'earliest' },
        { name: names.retryTopic, fromBeginning: true },
      ],
      partitionsConsumedConcurrently: o.partitionsConsumedConcurrently ?? Math.max(1, Math.min(spec.concurrency, 2 * o.numPartitions)),
      sessionTimeoutMs: o.sessionTimeoutMs,
      heartbeatIntervalMs: o.heartbeatIntervalMs,
      rebalanceTimeoutMs: o.rebalanceTimeoutMs,
      maxWaitTimeMs: o.maxWaitTimeMs,
    });
  }

  /** Joins the group; resolves after the first join (the starting offsets were committed before). */
  async start(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeoutMs = this.deps.options.subscribeTimeoutMs;
    try {
      await Promise.race([
        this.consumer.start({
          onBatch: (b) => this.onBatch(b),
          onAssignment: (a) => this.onAssignment(a),
          onCrash: (error, restarting) =>
            this.deps.logger.warn(
              { group: this.names.groupId, err: describeError(error), restarting },
              'kafka consumer crashed; the client restarts it',
            ),
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new TimeoutError(`joining consumer group ${this.names.groupId} took longer than ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } catch (error) {
      this.stopping = true;
      await this.consumer.close().catch(() => {});
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  stop(): Promise<void> {
    this.stopped ??= (async () => {
      this.stopping = true;
      this.gate.cancelAll();
      for (const t of this.timers) clearTimeout(t);
      this.timers.clear();
      this.consumer.pauseTopics([this.names.topic, this.names.retryTopic]);
      if (this.activeBatches > 0) await new Promise<void>((r) => this.batchesIdle.push(r));
    })();
    return this.stopped;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.stop();
      try {
        await this.flush();
      } catch (error) {
        this.deps.logger.warn({ group: this.names.groupId, err: describeError(error) }, 'final offset commit failed');
      }
      await this.consumer.close();
    })();
    return this.closing;
  }

  private onAssignment(assignment: ReadonlyMap<string, readonly number[]>): void {
    const keep = new Set<string>();
    for (const [topic, partitions] of assignment) for (const p of partitions) keep.add(trackKey(topic, p));
    for (const [k, track] of this.tracks) {
      if (keep.has(k)) {
        track.committed = undefined; // recommit: a commit during the rebalance may not have landed
      } else {
        this.tracks.delete(k);
        if (track.needsCommit) this.finalCommits.push(track);
      }
    }
    this.deps.logger.debug({ group: this.names.groupId, assignment: Object.fromEntries(assignment) }, 'kafka group assignment');
    this.flush().catch((error: unknown) =>
      this.deps.logger.warn({ group: this.names.groupId, err: describeError(error) }, 'offset commit after rebalance failed'),
    );
  }

  private async onBatch(batch: FetchedBatch): Promise<void> {
    this.activeBatches++;
    try {
      await this.processBatch(batch);
    } finally {
      this.activeBatches--;
      if (this.activeBatches === 0) for (const r of this.batchesIdle.splice(0)) r();
    }
  }

  /**
   * Hands the batch's records to core within the concurrency limit. Runs synchronously while slots
   * are free; at the limit (or while a key is busy) it waits for a slot, heartbeating the group
   * meanwhile. Offsets are resolved before every wait and on return (kafkajs reads them only at
   * its next fetch), and `isActive()` is asked again after every wait: neither can change while
   * the loop runs synchronously.
   */
  private async processBatch(batch: FetchedBatch): Promise<void> {
    const k = trackKey(batch.topic, batch.partition);
    let track = this.tracks.get(k);
    if (!track) {
      track = new PartitionTrack(batch.topic, batch.partition);
      this.tracks.set(k, track);
    }
    const fromRetry = batch.topic === this.names.retryTopic;
    if (this.spec.orderedByKey && !fromRetry && track.restored === undefined) track.restored = await this.restoreAttempts(track);
    /** Offset of the last record handed over (or skipped as handed before) and not resolved yet. */
    let unresolved: string | undefined;
    const resolvePending = () => {
      if (unresolved !== undefined) batch.resolve(unresolved);
      unresolved = undefined;
    };
    // Heartbeats while this batch waits for a slot: one interval per batch, started at its first
    // wait. A failed heartbeat (rebalance) ends the wait and is thrown.
    let beat: NodeJS.Timeout | undefined;
    let beatError: unknown;
    let waiter: SlotWaiter | undefined;
    const heartbeating = () => {
      resolvePending();
      beat ??= setInterval(
        () =>
          void batch.heartbeat().catch((error: unknown) => {
            beatError ??= error;
            if (waiter) this.gate.cancel(waiter);
          }),
        Math.max(100, Math.floor(this.deps.options.heartbeatIntervalMs / 2)),
      );
    };
    try {
      if (this.stopping || !batch.isActive()) return;
      for (const rec of batch.records) {
        if (this.stopping) return;
        const offset = BigInt(rec.offset);
        if (track.nextHand !== undefined && offset < track.nextHand) {
          unresolved = rec.offset; // fetched again after a rejoin; already handed over
          continue;
        }
        if (fromRetry) {
          const due = Number(rec.headers[RETRY_AT_HEADER]);
          const wait = Number.isFinite(due) ? due - Date.now() : 0;
          if (wait > 0) {
            // Not due yet: stop fetching this retry partition until it is (records behind it wait too).
            const resume = batch.pause();
            const timer = setTimeout(
              () => {
                this.timers.delete(timer);
                if (!this.stopping) resume();
              },
              Math.min(wait, 2 ** 31 - 1),
            );
            this.timers.add(timer);
            return;
          }
          // Due. A copy fetched before its producer's retry() resolved is held by core, not here.
        }
        const gateKey = this.spec.orderedByKey ? rec.key : undefined;
        if (!this.gate.tryAcquire(gateKey)) {
          // At the concurrency limit (or the key is busy): hold this partition's fetch, keep heartbeating.
          heartbeating();
          const granted = await new Promise<boolean>((done) => {
            waiter = { key: gateKey, done };
            this.gate.enqueue(waiter);
          });
          waiter = undefined;
          if (beatError !== undefined) {
            if (granted) this.gate.release(gateKey);
            throw beatError;
          }
          if (!granted) return;
          if (this.stopping || !batch.isActive()) {
            this.gate.release(gateKey);
            return;
          }
          if (track.nextHand !== undefined && offset < track.nextHand) {
            // Handed over meanwhile by a batch of a replaced consumer (same partition, fetched again).
            this.gate.release(gateKey);
            unresolved = rec.offset;
            continue;
          }
        }
        track.handed(offset);
        unresolved = rec.offset;
        // An ordered subscription's record retried in place before a restart: its hand-over count,
        // restored from the committed metadata, is reported as redeliveries (count − 1).
        const handOver = fromRetry ? 1 : (track.restored?.get(offset) ?? 1);
        this.hand(rec, track, offset, deliveryHeaders(rec), handOver - 1, handOver, gateKey);
      }
    } finally {
      clearInterval(beat);
      resolvePending();
    }
  }

  /**
   * Hands one record to core (see {@link KafkaDelivery} for `headers`, `redeliveries` and
   * `handOver`). The delivery holds a concurrency slot and, for ordered subscriptions, its key
   * (`gateKey`) until settled.
   */
  private hand(
    rec: IncomingRecord,
    track: PartitionTrack,
    offset: bigint,
    headers: Readonly<Record<string, string>>,
    redeliveries: number,
    handOver: number,
    gateKey: string | undefined,
  ): void {
    this.onDelivery(new KafkaDelivery(this.settler, rec, track, offset, headers, redeliveries, handOver, gateKey));
  }

  /** {@link KafkaDelivery.ack}: the record is done; resolves after the commit covering it was attempted. */
  private settleAck(d: KafkaDelivery): Promise<void> {
    d.track.done(d.offset);
    this.gate.release(d.gateKey);
    return this.flush(); // shared by every ack settled while the previous commit runs
  }

  /** {@link KafkaDelivery.retry}: `headers` are core's, complete (the next attempt included). */
  private async settleRetry(d: KafkaDelivery, delayMs: number, headers: Readonly<Record<string, string>>): Promise<void> {
    if (this.spec.orderedByKey) {
      // Blocking in-partition retry: the key's later records wait, so order holds. The record is
      // handed over again with exactly core's headers (they carry the attempt), and its next
      // hand-over count goes into the offset commit's metadata, so it survives a restart.
      d.track.retrying(d.offset, d.handOver + 1);
      this.flush().catch((error: unknown) =>
        this.deps.logger.warn(
          { group: this.names.groupId, err: describeError(error) },
          'committing the attempt count failed; will retry with the next commit',
        ),
      );
      this.again(d, Math.max(0, delayMs), headers, 0, d.handOver + 1);
      return;
    }
    // Exactly core's headers, plus the transport's own due time (stripped again on the way back).
    const record: OutgoingRecord = {
      key: d.rec.key,
      value: d.rec.value,
      headers: { ...headers, [RETRY_AT_HEADER]: String(Date.now() + Math.max(0, delayMs)) },
    };
    await this.deps.produce(this.names.retryTopic, record).catch((error: unknown) => this.failed(d, error));
    this.completeInBackground(d);
  }

  /** {@link KafkaDelivery.deadLetter}: `headers` are core's, complete (original + dead-letter metadata). */
  private async settleDeadLetter(d: KafkaDelivery, headers: Readonly<Record<string, string>>): Promise<void> {
    const record: OutgoingRecord = { key: d.rec.key, value: d.rec.value, headers };
    await this.deps.produce(this.names.deadLetterTopic, record).catch((error: unknown) => this.failed(d, error));
    this.completeInBackground(d);
  }

  /** {@link KafkaDelivery.release}: given back natively (handed over again later, as it was). */
  private async settleRelease(d: KafkaDelivery): Promise<void> {
    this.again(d, REDELIVERY_DELAY_MS, d.headers, d.redeliveries, d.handOver);
  }

  /** After a retry copy / dead letter is durable: the outcome is recorded; commit in the background. */
  private completeInBackground(d: KafkaDelivery): void {
    d.track.done(d.offset);
    this.gate.release(d.gateKey);
    this.flush().catch((error: unknown) =>
      this.deps.logger.warn({ group: this.names.groupId, err: describeError(error) }, 'offset commit failed; will retry with the next one'),
    );
  }

  /** Hands the same record over again later; an ordered subscription keeps the key meanwhile. */
  private again(
    d: KafkaDelivery,
    delayMs: number,
    headers: Readonly<Record<string, string>>,
    redeliveries: number,
    handOver: number,
  ): void {
    this.gate.releaseSlot();
    const next: HandOver = { rec: d.rec, track: d.track, offset: d.offset, headers, redeliveries, handOver, gateKey: d.gateKey };
    if (!this.later(delayMs, next)) this.gate.releaseKey(d.gateKey);
  }

  /** A settle's write failed: the record comes back later, as it was; rethrows. */
  private failed(d: KafkaDelivery, error: unknown): never {
    this.again(d, REDELIVERY_DELAY_MS, d.headers, d.redeliveries, d.handOver);
    throw error;
  }

  /**
   * Hands `h` over after `delayMs` (its offset stays uncommitted meanwhile). Returns false when
   * the subscription is stopping: the record is then redelivered by Kafka after a restart.
   */
  private later(delayMs: number, h: HandOver): boolean {
    if (this.stopping) return false;
    const timer = setTimeout(
      async () => {
        this.timers.delete(timer);
        const current = this.tracks.get(trackKey(h.track.topic, h.track.partition)) === h.track;
        // The key (if any) is still held by this record: wait for a slot only (`stop` cancels the wait).
        const ok = !this.stopping && current && (await this.gate.acquire());
        if (!ok) {
          this.gate.releaseKey(h.gateKey);
          return;
        }
        if (this.stopping) {
          this.gate.release(h.gateKey);
          return;
        }
        this.hand(h.rec, h.track, h.offset, h.headers, h.redeliveries, h.handOver, h.gateKey);
      },
      Math.min(delayMs, 2 ** 31 - 1),
    );
    this.timers.add(timer);
    return true;
  }

  /**
   * Commits every partition's settled prefix. Calls while a commit runs share the next one, so
   * commits coalesce under load.
   */
  private flush(): Promise<void> {
    if (this.pendingFlush) return this.pendingFlush;
    const next = this.flushChain.then(() => {
      this.pendingFlush = undefined;
      return this.commitNow();
    });
    this.pendingFlush = next;
    this.flushChain = next.catch(() => {});
    return next;
  }

  /** Attempt counts committed with the partition's offset by an earlier member (ordered subscriptions). */
  private async restoreAttempts(track: PartitionTrack): Promise<Map<bigint, number>> {
    try {
      const rows = await this.deps.client.committedOffsets(this.names.groupId, track.topic);
      return parseAttemptsMetadata(rows.find((r) => r.partition === track.partition)?.metadata);
    } catch (error) {
      this.deps.logger.warn(
        { group: this.names.groupId, partition: track.partition, err: describeError(error) },
        'reading the committed attempt counts failed; records retried before restart on this partition start again at attempt 1',
      );
      return new Map();
    }
  }

  private async commitNow(): Promise<void> {
    const tracks = [...this.finalCommits.splice(0), ...[...this.tracks.values()].filter((t) => t.needsCommit)];
    if (tracks.length === 0) return;
    const offsets = tracks.map((t) => ({
      topic: t.topic,
      partition: t.partition,
      offset: (t.commitOffset as bigint).toString(),
      metadata: t.commitMetadata(),
    }));
    for (const t of tracks) t.attemptsDirty = false;
    try {
      await this.consumer.commit(offsets);
    } catch (error) {
      for (const t of tracks) {
        if (t.attempts.size > 0) t.attemptsDirty = true;
        if (this.tracks.get(trackKey(t.topic, t.partition)) !== t) this.finalCommits.push(t);
      }
      throw error;
    }
    tracks.forEach((t, i) => {
      const value = BigInt((offsets[i] as { offset: string }).offset);
      if (t.committed === undefined || value > t.committed) t.committed = value;
    });
  }
}
