/**
 * One group consumption: hands records to core within the concurrency limit, keeps per-key order,
 * honours retry due times, and commits per partition only the contiguous prefix core has settled.
 * @internal
 */
import {
  type Delivery,
  describeError,
  Headers,
  type Logger,
  type SubscriptionSpec,
  TimeoutError,
  type TransportSubscription,
} from '@busbar/core';
import type { FetchedBatch, GroupConsumer, IncomingRecord, KafkaClient, OutgoingRecord } from './client.js';
import type { ResolvedOptions } from './options.js';

/** Header carrying when a retry copy becomes due (epoch ms); internal to the transport. */
export const RETRY_AT_HEADER = 'ce_busbarretryat';

/** Delay before a delivery whose settle failed (or that was released) is handed over again, ms. */
const REDELIVERY_DELAY_MS = 1000;

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

/**
 * Counts in-flight deliveries (slots) and busy keys. A waiter asks for a slot and, unless it
 * already holds it, its key; waiters are granted in arrival order where they can proceed.
 */
class Gate {
  private inFlight = 0;
  private readonly busy = new Set<string>();
  private readonly waiters: { key: string | undefined; done: (granted: boolean) => void }[] = [];

  constructor(private readonly limit: number) {}

  /** Takes a slot and (if given) the key, or nothing. */
  tryAcquire(key: string | undefined): boolean {
    if (this.inFlight >= this.limit || (key !== undefined && this.busy.has(key))) return false;
    this.inFlight++;
    if (key !== undefined) this.busy.add(key);
    return true;
  }

  /** Gives back a slot and (if given) the key. */
  release(key: string | undefined): void {
    this.inFlight--;
    if (key !== undefined) this.busy.delete(key);
    this.pump();
  }

  /** Gives back a key held without a slot. */
  releaseKey(key: string | undefined): void {
    if (key === undefined) return;
    this.busy.delete(key);
    this.pump();
  }

  /** Resolves `true` once acquired (slot + key), `false` after `ms` or on cancel. */
  wait(key: string | undefined, ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const waiter = {
        key,
        done: (granted: boolean) => {
          clearTimeout(timer);
          resolve(granted);
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve(false);
      }, ms);
      this.waiters.push(waiter);
      this.pump();
    });
  }

  /** Acquires (slot + key) waiting in `step` ms rounds; `false` once `cancelled()` says so. */
  async acquire(key: string | undefined, step: number, between: () => Promise<boolean>): Promise<boolean> {
    while (!this.tryAcquire(key)) {
      if (await this.wait(key, step)) return true;
      if (!(await between())) return false;
    }
    return true;
  }

  cancelAll(): void {
    for (const w of this.waiters.splice(0)) w.done(false);
  }

  private pump(): void {
    for (let i = 0; i < this.waiters.length && this.inFlight < this.limit; ) {
      const w = this.waiters[i] as (typeof this.waiters)[number];
      if (this.tryAcquire(w.key)) {
        this.waiters.splice(i, 1);
        w.done(true);
      } else i++;
    }
  }
}

/** Prefix of the offset-commit metadata that carries attempt counts of ordered subscriptions. */
const ATTEMPTS_METADATA = 'busbar-attempts:';
/** Attempt counts kept in one commit's metadata at most (Kafka caps metadata at 4096 bytes by default). */
const MAX_ATTEMPTS_IN_METADATA = 100;

/** `busbar-attempts:<offset>=<next attempt>,…` → map (unknown or malformed metadata: empty). */
export function parseAttemptsMetadata(metadata: string | undefined): Map<bigint, number> {
  const out = new Map<bigint, number>();
  if (!metadata?.startsWith(ATTEMPTS_METADATA)) return out;
  for (const part of metadata.slice(ATTEMPTS_METADATA.length).split(',')) {
    const m = /^(\d{1,19})=(\d{1,9})$/.exec(part);
    if (m) out.set(BigInt(m[1] as string), Number(m[2]));
  }
  return out;
}

/** Handed-over offsets of one partition and what may be committed. */
class PartitionTrack {
  /** Handed-over offsets not yet part of the committable prefix, ascending; `head` is the first. */
  private pending: bigint[] = [];
  private head = 0;
  /** Settled offsets still behind an unsettled one. */
  private readonly settledAhead = new Set<bigint>();
  /**
   * Ordered subscriptions: the next attempt of records retried in place, committed as offset
   * metadata so that a restart (another member, a crash) resumes the count instead of starting at 1.
   */
  readonly attempts = new Map<bigint, number>();
  /** Attempt counts read from the committed metadata when this member got the partition. */
  restored: Map<bigint, number> | undefined;
  /** `attempts` changed since the last commit. */
  attemptsDirty = false;
  /** Offset after the last record handed over (records below it are never handed again). */
  nextHand: bigint | undefined;
  /** Offset to commit: every record below it is settled. */
  committable: bigint | undefined;
  /** Last offset committed by this member. */
  committed: bigint | undefined;

  constructor(
    readonly topic: string,
    readonly partition: number,
  ) {}

  handed(offset: bigint): void {
    this.pending.push(offset);
    this.nextHand = offset + 1n;
  }

  /** Ordered retry in place: `offset` comes back as attempt `next`. */
  retrying(offset: bigint, next: number): void {
    this.attempts.set(offset, next);
    this.attemptsDirty = true;
  }

  done(offset: bigint): void {
    if (this.attempts.delete(offset)) this.attemptsDirty = true;
    this.restored?.delete(offset);
    if (this.head >= this.pending.length) return;
    const first = this.pending[this.head] as bigint;
    if (offset < first) return; // settled before (already in the committable prefix)
    if (offset !== first) {
      this.settledAhead.add(offset);
      return;
    }
    this.committable = offset + 1n;
    this.head++;
    for (let next = this.pending[this.head]; next !== undefined && this.settledAhead.delete(next); next = this.pending[this.head]) {
      this.committable = next + 1n;
      this.head++;
    }
    if (this.head === this.pending.length) {
      this.pending = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending = this.pending.slice(this.head);
      this.head = 0;
    }
  }

  get needsCommit(): boolean {
    if (this.attemptsDirty) return this.commitOffset !== undefined;
    return this.committable !== undefined && (this.committed === undefined || this.committable > this.committed);
  }

  /** Offset to commit: after the settled prefix, else the first record handed over (nothing below it is pending). */
  get commitOffset(): bigint | undefined {
    return this.committable ?? this.pending[this.head];
  }

  /** Metadata for the next commit: the attempt counts of records at or after the commit offset. */
  commitMetadata(): string | undefined {
    if (this.attempts.size === 0) return undefined;
    const from = this.commitOffset ?? 0n;
    const parts: string[] = [];
    for (const [offset, next] of this.attempts) {
      if (offset >= from && parts.length < MAX_ATTEMPTS_IN_METADATA) parts.push(`${offset}=${next}`);
    }
    return parts.length > 0 ? `${ATTEMPTS_METADATA}${parts.join(',')}` : undefined;
  }
}

const trackKey = (topic: string, partition: number) => `${partition}|${topic}`;

function parseAttempt(value: string | undefined): number {
  const n = Number(value);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

/** A running group consumption of the main topic and the group's retry topic. */
export class KafkaSubscription implements TransportSubscription {
  private readonly gate: Gate;
  private readonly consumer: GroupConsumer;
  private readonly tracks = new Map<string, PartitionTrack>();
  private readonly finalCommits: PartitionTrack[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Retry copies this member is still producing (`<ce_id>|<attempt>`): their settle has not resolved yet. */
  private readonly producing = new Map<string, Promise<void>>();
  private stopping = false;
  private activeBatches = 0;
  private batchesIdle: (() => void)[] = [];
  private flushChain: Promise<void> = Promise.resolve();
  private pendingFlush: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;

  constructor(
    private readonly deps: SubscriptionDeps,
    private readonly names: SubscriptionNames,
    private readonly spec: SubscriptionSpec,
    private readonly onDelivery: (delivery: Delivery) => void,
  ) {
    this.gate = new Gate(spec.concurrency);
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

  private async processBatch(batch: FetchedBatch): Promise<void> {
    const k = trackKey(batch.topic, batch.partition);
    let track = this.tracks.get(k);
    if (!track) {
      track = new PartitionTrack(batch.topic, batch.partition);
      this.tracks.set(k, track);
    }
    const fromRetry = batch.topic === this.names.retryTopic;
    if (this.spec.orderedByKey && !fromRetry && track.restored === undefined) track.restored = await this.restoreAttempts(track);
    const heartbeatMs = Math.max(100, Math.floor(this.deps.options.heartbeatIntervalMs / 2));
    for (const rec of batch.records) {
      if (this.stopping || !batch.isActive()) return;
      const offset = BigInt(rec.offset);
      if (track.nextHand !== undefined && offset < track.nextHand) {
        batch.resolve(rec.offset); // fetched again after a rejoin; already handed over
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
      }
      if (fromRetry) {
        // A copy can be fetched before its producer saw the acknowledgement: let that retry()
        // resolve (and core record the outcome) first, so outcomes stay in causal order.
        const pending = this.producing.get(`${rec.headers[Headers.id]}|${rec.headers[Headers.attempt]}`);
        if (pending) {
          await pending.catch(() => {});
          await new Promise<void>((r) => setImmediate(r));
        }
      }
      const gateKey = this.spec.orderedByKey ? rec.key : undefined;
      // At the concurrency limit (or the key is busy): hold this partition's fetch, keep heartbeating.
      const acquired = await this.gate.acquire(gateKey, heartbeatMs, async () => {
        if (this.stopping || !batch.isActive()) return false;
        await batch.heartbeat();
        return true;
      });
      if (!acquired) return;
      if (this.stopping || !batch.isActive()) {
        this.gate.release(gateKey);
        return;
      }
      if (track.nextHand !== undefined && offset < track.nextHand) {
        // Handed over meanwhile by a batch of a replaced consumer (same partition, fetched again).
        this.gate.release(gateKey);
        batch.resolve(rec.offset);
        continue;
      }
      track.handed(offset);
      batch.resolve(rec.offset);
      const attempt = fromRetry ? parseAttempt(rec.headers[Headers.attempt]) : (track.restored?.get(offset) ?? 1);
      this.hand(rec, track, attempt, {}, gateKey);
    }
  }

  /**
   * Hands one record to core. The delivery holds a concurrency slot and, for ordered
   * subscriptions, its key (`gateKey`) until settled.
   */
  private hand(
    rec: IncomingRecord,
    track: PartitionTrack,
    attempt: number,
    extra: Readonly<Record<string, string>>,
    gateKey: string | undefined,
  ): void {
    const offset = BigInt(rec.offset);
    // A fresh object per delivery (core and copies may add to it); no `delete`, which would turn it
    // into a slow dictionary-mode object.
    let headers: Record<string, string>;
    if (rec.headers[RETRY_AT_HEADER] === undefined) headers = { ...rec.headers, ...extra };
    else {
      headers = {};
      for (const k in rec.headers) if (k !== RETRY_AT_HEADER) headers[k] = rec.headers[k] as string;
      Object.assign(headers, extra);
    }
    if (attempt > 1 || extra[Headers.attempt] !== undefined) headers[Headers.attempt] = String(attempt);
    let settled = false;
    const once = (op: () => Promise<void>): Promise<void> => {
      if (settled) return Promise.resolve();
      settled = true;
      return op();
    };
    const complete = async () => {
      track.done(offset);
      this.gate.release(gateKey);
      await this.flush();
    };
    /** After a retry copy / dead letter is durable: the outcome is recorded; commit in the background. */
    const completeInBackground = () => {
      track.done(offset);
      this.gate.release(gateKey);
      this.flush().catch((error: unknown) =>
        this.deps.logger.warn(
          { group: this.names.groupId, err: describeError(error) },
          'offset commit failed; will retry with the next one',
        ),
      );
    };
    /** Hand the same record over again later; an ordered subscription keeps the key meanwhile. */
    const again = (delayMs: number, nextAttempt: number, nextExtra: Readonly<Record<string, string>>) => {
      this.gate.release(undefined);
      if (!this.later(delayMs, rec, track, nextAttempt, nextExtra, gateKey)) this.gate.releaseKey(gateKey);
    };
    const failed = (error: unknown): never => {
      again(REDELIVERY_DELAY_MS, attempt, extra);
      throw error;
    };
    const copy = (more: Readonly<Record<string, string>>): OutgoingRecord => ({
      key: rec.key,
      value: rec.value,
      headers: { ...headers, ...more },
    });
    const delivery: Delivery = {
      headers,
      body: rec.value,
      attempt,
      position: `${track.topic}/${track.partition}/${rec.offset}`,
      key: rec.key,
      ack: () => once(complete),
      retry: (delayMs, extraHeaders) =>
        once(async () => {
          if (this.spec.orderedByKey) {
            // Blocking in-partition retry: the key's later records wait, so order holds. The next
            // attempt number goes into the offset commit's metadata, so it survives a restart.
            track.retrying(offset, attempt + 1);
            this.flush().catch((error: unknown) =>
              this.deps.logger.warn(
                { group: this.names.groupId, err: describeError(error) },
                'committing the attempt count failed; will retry with the next commit',
              ),
            );
            again(Math.max(0, delayMs), attempt + 1, { ...extra, ...extraHeaders });
            return;
          }
          const record = copy({
            ...extraHeaders,
            [Headers.attempt]: String(attempt + 1),
            [RETRY_AT_HEADER]: String(Date.now() + Math.max(0, delayMs)),
          });
          const k = `${record.headers[Headers.id]}|${attempt + 1}`;
          const producing = this.deps.produce(this.names.retryTopic, record);
          this.producing.set(k, producing);
          try {
            await producing.catch(failed);
          } finally {
            this.producing.delete(k);
          }
          completeInBackground();
        }),
      deadLetter: (deadLetterHeaders) =>
        once(async () => {
          await this.deps.produce(this.names.deadLetterTopic, copy(deadLetterHeaders)).catch(failed);
          completeInBackground();
        }),
      release: () =>
        once(async () => {
          again(REDELIVERY_DELAY_MS, attempt, extra);
        }),
    };
    this.onDelivery(delivery);
  }

  /**
   * Hands `rec` over again after `delayMs` (its offset stays uncommitted meanwhile). Returns false
   * when the subscription is stopping: the record is then redelivered by Kafka after a restart.
   */
  private later(
    delayMs: number,
    rec: IncomingRecord,
    track: PartitionTrack,
    attempt: number,
    extra: Readonly<Record<string, string>>,
    gateKey: string | undefined,
  ): boolean {
    if (this.stopping) return false;
    const timer = setTimeout(
      async () => {
        this.timers.delete(timer);
        const current = this.tracks.get(trackKey(track.topic, track.partition)) === track;
        // The key (if any) is still held by this record: wait for a slot only.
        const ok = !this.stopping && current && (await this.gate.acquire(undefined, REDELIVERY_DELAY_MS, async () => !this.stopping));
        if (!ok) {
          this.gate.releaseKey(gateKey);
          return;
        }
        if (this.stopping) {
          this.gate.release(gateKey);
          return;
        }
        this.hand(rec, track, attempt, extra, gateKey);
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
