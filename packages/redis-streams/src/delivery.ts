/**
 * One delivery handed to core: the decoded message, where it came from, how often Redis handed it
 * out before (`redeliveries`), and its settle methods, which go to the subscription through a
 * narrow {@link Settler}. Core computes the attempt, builds the headers of every copy and settles
 * each delivery once.
 */
import { type Delivery, HeaderNames, type WireMessage } from '@busbar/core/transport';

/** @internal What a delivery asks of its subscription. */
export interface Settler {
  ack(d: RedisDelivery): Promise<void>;
  retry(d: RedisDelivery, delayMs: number, headers: Readonly<Record<string, string>>): Promise<void>;
  deadLetter(d: RedisDelivery, headers: Readonly<Record<string, string>>): Promise<void>;
  release(d: RedisDelivery): Promise<void>;
  extendLease(d: RedisDelivery, ms: number): Promise<void>;
}

/** @internal One stream entry as read from Redis. */
export interface Entry {
  readonly stream: string;
  readonly id: string;
  /** `null` when the entry was deleted while pending. */
  readonly fields: Buffer[] | null;
  /** Redis's delivery count (1 for a first delivery). */
  deliveryCount: number;
}

/** @internal An `XREADGROUP` reply, bulk strings as Buffers. */
export type ReadReply = [Buffer, [Buffer, Buffer[] | null][]][] | null;

/**
 * One delivery handed to core: the decoded message and where it came from. Its settle methods
 * delegate to the subscription (methods on the prototype, not closures per delivery).
 */
export class RedisDelivery implements Delivery {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Uint8Array;
  /** Redis's delivery count − 1: how often this entry was handed out before (claimed, re-read). */
  readonly redeliveries: number;
  readonly position: string;
  readonly key: string | undefined;
  /** Stream the entry was read from. */
  readonly stream: string;
  /** Stream entry id. */
  readonly id: string;
  /** Redis's delivery count when it was read. */
  readonly deliveryCount: number;
  /** Key of the in-flight table (see `slotOf`). */
  readonly slot: string;
  /** Set once core settled it: a lease is no longer extended. */
  settled = false;
  /** Lease re-claim timer, when `extendLease` asked for more than `claimIdleMs`. */
  timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly sub: Settler,
    e: Entry,
    slot: string,
    message: WireMessage,
  ) {
    this.headers = message.headers;
    this.body = message.body;
    this.redeliveries = Math.max(0, e.deliveryCount - 1);
    this.position = `${e.stream}/${e.id}`;
    this.key = message.headers[HeaderNames.partitionKey];
    this.stream = e.stream;
    this.id = e.id;
    this.deliveryCount = e.deliveryCount;
    this.slot = slot;
  }

  ack(): Promise<void> {
    return this.sub.ack(this);
  }

  retry(delayMs: number, headers: Readonly<Record<string, string>>): Promise<void> {
    return this.sub.retry(this, delayMs, headers);
  }

  deadLetter(headers: Readonly<Record<string, string>>): Promise<void> {
    return this.sub.deadLetter(this, headers);
  }

  /** Gives the entry back natively (left pending, claimable at once): the copy's headers are not needed. */
  release(_headers: Readonly<Record<string, string>>): Promise<void> {
    return this.sub.release(this);
  }

  extendLease(ms: number): Promise<void> {
    return this.sub.extendLease(this, ms);
  }
}

/** @internal The entries of an `XREADGROUP` reply, with `deliveryCount` each. */
export function parseRead(reply: ReadReply, deliveryCount: number): Entry[] {
  const out: Entry[] = [];
  for (const [streamBuf, rows] of reply ?? []) {
    const stream = streamBuf.toString();
    for (const [id, fields] of rows) out.push({ stream, id: id.toString(), fields, deliveryCount });
  }
  return out;
}
