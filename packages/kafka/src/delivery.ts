/**
 * One hand-over of a record to core, and the narrow object through which it settles.
 * @internal
 */
import type { Delivery } from '@busbar/core';
import type { IncomingRecord, OutgoingRecord } from './client.js';
import type { PartitionTrack } from './offsets.js';
import { deliveryHeaders } from './wire.js';

/** What a delivery's settle calls do, implemented by its subscription. */
export interface Settler {
  ack(d: KafkaDelivery): Promise<void>;
  retry(d: KafkaDelivery, delayMs: number, extraHeaders: Readonly<Record<string, string>>): Promise<void>;
  deadLetter(d: KafkaDelivery, deadLetterHeaders: Readonly<Record<string, string>>): Promise<void>;
  release(d: KafkaDelivery): Promise<void>;
}

/**
 * One hand-over of a record to core. A class rather than an object of closures: one allocation
 * per delivery; the settle logic is the subscription's, reached through its {@link Settler}. The first settle call wins;
 * later ones resolve without effect.
 */
export class KafkaDelivery implements Delivery {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Uint8Array;
  readonly key: string | undefined;
  private settled = false;

  constructor(
    private readonly settler: Settler,
    readonly rec: IncomingRecord,
    readonly track: PartitionTrack,
    readonly offset: bigint,
    readonly attempt: number,
    /** Headers added by earlier in-place retries (ordered subscriptions). */
    readonly extra: Readonly<Record<string, string>>,
    /** The key this delivery holds in the gate (ordered subscriptions). */
    readonly gateKey: string | undefined,
  ) {
    this.headers = deliveryHeaders(rec, attempt, extra);
    this.body = rec.value;
    this.key = rec.key;
  }

  get position(): string {
    return `${this.track.topic}/${this.track.partition}/${this.rec.offset}`;
  }

  /** A copy to produce elsewhere (retry copy, dead letter): same key and value, headers merged. */
  copy(more: Readonly<Record<string, string>>): OutgoingRecord {
    return { key: this.rec.key, value: this.rec.value, headers: { ...this.headers, ...more } };
  }

  ack(): Promise<void> {
    if (this.settled) return Promise.resolve();
    this.settled = true;
    return this.settler.ack(this);
  }

  retry(delayMs: number, extraHeaders: Readonly<Record<string, string>>): Promise<void> {
    if (this.settled) return Promise.resolve();
    this.settled = true;
    return this.settler.retry(this, delayMs, extraHeaders);
  }

  deadLetter(deadLetterHeaders: Readonly<Record<string, string>>): Promise<void> {
    if (this.settled) return Promise.resolve();
    this.settled = true;
    return this.settler.deadLetter(this, deadLetterHeaders);
  }

  release(): Promise<void> {
    if (this.settled) return Promise.resolve();
    this.settled = true;
    return this.settler.release(this);
  }
}
