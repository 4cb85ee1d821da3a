/**
 * The acknowledgements of one consumer channel, coalesced per event-loop turn with core's
 * `TickCoalescer`.
 */
import { TickCoalescer } from '@busbar/core/transport';
import type { Channel, Message } from 'amqplib';
import type { WriteCoalescer } from './write-coalescer.js';

/**
 * Acknowledgements of one consumer channel, written once per event-loop turn: the acknowledged
 * deliveries at the head of the channel's unacknowledged ones with one `basic.ack(multiple)`, the
 * others one by one — in one socket write either way.
 *
 * At-least-once is kept: `multiple` covers exactly the deliveries below the tag that the broker
 * still counts as unacknowledged, so it is sent only when **every** one of them was acknowledged
 * here. Every delivery of the channel is recorded on arrival ({@link delivered}) — also the ones
 * not yet handed to core — and leaves the record only when its ack or nack is written.
 * Nacks are written at once: they are never delayed behind the acks, and an ack of a later tag
 * cannot cover them (the broker no longer counts them when it reads the ack).
 */
export class AckWindow {
  /** Tags delivered and not yet acked or nacked towards the broker, ascending; the message once acked here. */
  private readonly open = new Map<number, Message | null>();
  private lastTag = 0;
  /** Delivery tags arrived in ascending order (always, on a channel with one consumer); `multiple` is used only then. */
  private ascending = true;
  /** The acks of this turn; one round per turn (`process.nextTick`: before the turn's I/O). */
  private readonly acks = new TickCoalescer<Message>((pending) => this.flush(pending), { schedule: 'next-tick' });
  private closed = false;

  /** `closedError`: the error of an ack that cannot be written because the channel closed (RabbitMQ redelivers). */
  constructor(
    private readonly ch: Channel,
    private readonly writes: WriteCoalescer,
    private readonly closedError: () => Error,
  ) {}

  /** Records a delivery of the channel; call for every delivery, first thing. */
  delivered(msg: Message): void {
    const tag = msg.fields.deliveryTag;
    if (tag <= this.lastTag) this.ascending = false;
    this.lastTag = tag;
    this.open.set(tag, null);
  }

  /**
   * Acknowledges `msg` with the next write of this turn. Resolves once the ack was handed to amqplib;
   * rejects with `closedError` when the channel closed first (RabbitMQ redelivers the message).
   */
  ack(msg: Message): Promise<void> {
    if (this.closed) return Promise.reject(this.closedError());
    const tag = msg.fields.deliveryTag;
    if (this.open.has(tag)) this.open.set(tag, msg);
    return this.acks.add(msg);
  }

  /** Rejects `msg` back to the queue at once (throws when the channel is closed). */
  nack(msg: Message): void {
    this.open.delete(msg.fields.deliveryTag);
    this.ch.nack(msg, false, true);
  }

  /** The channel closed: acks not yet written fail, later ones fail at once. */
  close(): void {
    this.closed = true;
    this.open.clear();
  }

  private flush(pending: Message[]): void {
    if (this.closed) throw this.closedError();
    try {
      if (pending.length > 1) this.writes.hold();
      let covered = 0;
      if (this.ascending) {
        let upTo: Message | null = null;
        let count = 0;
        for (const [tag, acked] of this.open) {
          if (acked === null) break;
          this.open.delete(tag);
          upTo = acked;
          count++;
        }
        if (upTo !== null) {
          this.ch.ack(upTo, count > 1);
          covered = upTo.fields.deliveryTag;
        }
      }
      for (const msg of pending) {
        const tag = msg.fields.deliveryTag;
        if (tag <= covered) continue; // in the acknowledged head written above
        this.open.delete(tag);
        this.ch.ack(msg, false);
      }
    } catch {
      // amqplib throws once the channel is closed (before its close event reached us): the broker
      // requeues whatever this channel left unacknowledged.
      this.close();
      throw this.closedError();
    }
  }
}
