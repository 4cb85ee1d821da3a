/**
 * One delivery handed to core: the decoded message, where it came from, and its settle methods,
 * which go to the subscription through a narrow {@link Settler}.
 */
import { type Delivery, Headers, type WireMessage } from '@busbar/core';

/** @internal What a delivery asks of its subscription. */
export interface Settler {
  ack(d: RedisDelivery): Promise<void>;
  retry(d: RedisDelivery, delayMs: number, extraHeaders: Readonly<Record<string, string>>): Promise<void>;
  deadLetter(d: RedisDelivery, deadLetterHeaders: Readonly<Record<string, string>>): Promise<void>;
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

/** @internal Attempt carried in the `Headers.attempt` header (1 when absent or invalid). */
export function headerAttempt(headers: Readonly<Record<string, string>>): number {
  const n = Number(headers[Headers.attempt]);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

/**
 * One delivery handed to core: the decoded message and where it came from. Its settle methods
 * delegate to the subscription (methods on the prototype, not closures per delivery).
 */
export class RedisDelivery implements Delivery {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Uint8Array;
  readonly attempt: number;
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
  settled = false;
  /** Lease re-claim timer, when `extendLease` asked for more than `claimIdleMs`. */
  timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly sub: Settler,
    e: Entry,
    slot: string,
    message: WireMessage,
    attempt: number,
  ) {
    this.headers = message.headers;
    this.body = message.body;
    this.attempt = attempt;
    this.position = `${e.stream}/${e.id}`;
    this.key = message.headers[Headers.partitionKey];
    this.stream = e.stream;
    this.id = e.id;
    this.deliveryCount = e.deliveryCount;
    this.slot = slot;
  }

  ack(): Promise<void> {
    return this.sub.ack(this);
  }

  retry(delayMs: number, extraHeaders: Readonly<Record<string, string>>): Promise<void> {
    return this.sub.retry(this, delayMs, extraHeaders);
  }

  deadLetter(deadLetterHeaders: Readonly<Record<string, string>>): Promise<void> {
    return this.sub.deadLetter(this, deadLetterHeaders);
  }

  release(): Promise<void> {
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
