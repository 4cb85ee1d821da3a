/**
 * One message handed to core, and how it is settled: an ack on its consumer channel, or a copy
 * written with a confirm (retry, dead letter, release) before the original is acknowledged.
 *
 * Core owns the rest of a delivery's life (see `Delivery` in `@busbar/core/transport`): it computes
 * the attempt from the headers and `redeliveries`, builds the complete headers of every copy, settles
 * each delivery exactly once and holds a retry copy that comes back before its retry settled. A
 * delivery here only moves bytes.
 */
import { type Delivery, HeaderNames } from '@busbar/core/transport';
import type { Channel, ConsumeMessage } from 'amqplib';
import type { AckWindow } from './ack-window.js';
import type { GroupNames } from './topology.js';

/** A consumer channel of a subscription and its acknowledgements. */
export interface ConsumerLink {
  readonly ch: Channel;
  readonly acks: AckWindow;
}

/** Where a delivery writes the copies that settle it. */
export interface CopyWriter {
  /** Publishes a copy straight into `queue` (default exchange) and waits for its confirm. */
  sendToQueue(queue: string, body: Uint8Array, headers: Readonly<Record<string, string>>): Promise<void>;
  /** `queue` may have been deleted under us: declare it again before its next use. */
  forgetQueue(queue: string): void;
  /** Declares the group's delay queue for `delayMs` (rounded up to a tier) and returns its name. */
  delayQueue(names: GroupNames, delayMs: number): Promise<string>;
}

/** What a delivery needs from the subscription it came from. */
export interface DeliveryHost {
  /** The group's broker objects. */
  readonly names: GroupNames;
  /** Where copies go. */
  readonly copies: CopyWriter;
  /** Whether `link` is still the subscription's channel (false once it closed). */
  current(link: ConsumerLink): boolean;
  /** The delivery was settled, whatever the outcome: its slot is free. */
  settled(): void;
  /** The error of an ack that cannot be written because the channel closed. */
  channelGone(): Error;
}

/** Runs `fn`, ignoring the error amqplib throws once a channel is closed. */
export function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // the channel is gone; RabbitMQ requeues what was unacknowledged
  }
}

/**
 * One message handed to core. A class rather than an object of closures: a delivery costs one
 * allocation (plus its headers and body), and `position` is built only when read.
 */
export class RabbitDelivery implements Delivery {
  readonly body: Uint8Array;
  readonly key: string | undefined;

  /**
   * @param redeliveries - how often RabbitMQ handed this copy out before: the quorum queue's
   *   `x-delivery-count`; on a classic queue (no count) 1 when flagged `redelivered`, else 0.
   */
  constructor(
    private readonly host: DeliveryHost,
    private readonly link: ConsumerLink,
    private readonly msg: ConsumeMessage,
    readonly headers: Record<string, string>,
    readonly redeliveries: number,
  ) {
    // A copy (from Node's buffer pool: cheaper than `new Uint8Array(content)`), so a delivery
    // does not keep amqplib's whole socket read buffer alive while it is in flight.
    this.body = Buffer.from(msg.content);
    this.key = headers[HeaderNames.partitionKey];
  }

  get position(): string {
    return `${this.host.names.queue}#${this.msg.fields.deliveryTag}`;
  }

  ack(): Promise<void> {
    const host = this.host;
    return this.settling(host.current(this.link) ? this.link.acks.ack(this.msg) : Promise.reject(host.channelGone()));
  }

  /** The copy goes to the group's delay queue of the tier `delayMs` rounds up to (0: straight back to the group queue). */
  retry(delayMs: number, headers: Readonly<Record<string, string>>): Promise<void> {
    const host = this.host;
    const op =
      delayMs <= 0 ? this.copy(host.names.queue, headers) : host.copies.delayQueue(host.names, delayMs).then((q) => this.copy(q, headers));
    return this.settling(op);
  }

  deadLetter(headers: Readonly<Record<string, string>>): Promise<void> {
    return this.settling(this.copy(this.host.names.dlq, headers));
  }

  /**
   * A copy with `headers` (same attempt) goes to the back of the group queue, so giving a message
   * back on shutdown does not count as a failed delivery (a requeue would raise x-delivery-count).
   */
  release(headers: Readonly<Record<string, string>>): Promise<void> {
    // On failure `copy` has already requeued the original (or the channel is gone, which requeues
    // it too): the message comes back either way.
    return this.settling(this.copy(this.host.names.queue, headers).catch(() => {}));
  }

  /** Frees the delivery's slot once `op` is over, whatever its outcome. */
  private settling(op: Promise<void>): Promise<void> {
    const host = this.host;
    return op.then(
      () => host.settled(),
      (error: unknown) => {
        host.settled();
        throw error;
      },
    );
  }

  /** Publishes a copy to `queue` with a confirm, then acknowledges the original. */
  private async copy(queue: string, headers: Readonly<Record<string, string>>): Promise<void> {
    const host = this.host;
    try {
      await host.copies.sendToQueue(queue, this.body, headers);
    } catch (error) {
      // The copy did not land: give the original back so it is redelivered now rather than
      // staying unacknowledged until the channel closes; re-declare the target next time.
      host.copies.forgetQueue(queue);
      if (host.current(this.link)) safely(() => this.link.acks.nack(this.msg));
      throw error;
    }
    if (!host.current(this.link)) throw host.channelGone();
    await this.link.acks.ack(this.msg);
  }
}
