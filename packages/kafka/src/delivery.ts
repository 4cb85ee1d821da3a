/**
 * One hand-over of a record to core, and the narrow object through which it settles.
 * @internal
 */
import type { Delivery } from '@busbar/core/transport';
import type { IncomingRecord } from './client.js';
import type { PartitionTrack } from './offsets.js';

/** What a delivery's settle calls do, implemented by its subscription. */
export interface Settler {
  ack(d: KafkaDelivery): Promise<void>;
  retry(d: KafkaDelivery, delayMs: number, headers: Readonly<Record<string, string>>): Promise<void>;
  deadLetter(d: KafkaDelivery, headers: Readonly<Record<string, string>>): Promise<void>;
  release(d: KafkaDelivery): Promise<void>;
}

/**
 * One hand-over of a record to core. A class rather than an object of closures: one allocation
 * per delivery; the settle logic is the subscription's, reached through its {@link Settler}. Core
 * settles each delivery exactly once, so there is no guard here.
 *
 * What core is told (it computes the attempt from them):
 * - a record's first hand-over: the record's headers (the transport's due-time header removed)
 *   and 0 redeliveries — or, for a record an ordered subscription had retried in place before a
 *   restart, the hand-over count restored from the offset-commit metadata, minus 1;
 * - a record handed over again in place after `retry` (ordered subscriptions): exactly the headers
 *   core passed to `retry` (they carry the next attempt) and 0 redeliveries;
 * - a record handed over again after `release` or a failed settle: the same headers and
 *   redeliveries as before (same attempt).
 */
export class KafkaDelivery implements Delivery {
  readonly body: Uint8Array;
  readonly key: string | undefined;

  constructor(
    private readonly settler: Settler,
    readonly rec: IncomingRecord,
    readonly track: PartitionTrack,
    readonly offset: bigint,
    readonly headers: Readonly<Record<string, string>>,
    readonly redeliveries: number,
    /**
     * How many times this record has been handed over at its offset, this one included (1 the
     * first time); kept in the offset-commit metadata for in-place retries (ordered subscriptions).
     */
    readonly handOver: number,
    /** The key this delivery holds in the gate (ordered subscriptions). */
    readonly gateKey: string | undefined,
  ) {
    this.body = rec.value;
    this.key = rec.key;
  }

  get position(): string {
    return `${this.track.topic}/${this.track.partition}/${this.rec.offset}`;
  }

  ack(): Promise<void> {
    return this.settler.ack(this);
  }

  retry(delayMs: number, headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settler.retry(this, delayMs, headers);
  }

  deadLetter(headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settler.deadLetter(this, headers);
  }

  /** Gives the record back natively (handed over again later, unchanged): the copy's `headers` are not needed. */
  release(_headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settler.release(this);
  }
}
