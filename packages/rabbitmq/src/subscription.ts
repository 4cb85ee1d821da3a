/**
 * One group consumption: its own channel on the group queue, prefetch = concurrency, resumed by
 * itself after a lost channel or a cancelled consumer, and by the transport after a reconnect.
 */
import {
  type BackoffOptions,
  BrokerUnavailableError,
  backoffDelay,
  type Delivery,
  describeError,
  Headers,
  type Logger,
  type SubscriptionSpec,
  type TransportSubscription,
} from '@busbar/core';
import type { Channel, ConsumeMessage } from 'amqplib';
import { type ConsumerLink, type CopyWriter, type DeliveryHost, RabbitDelivery, safely } from './delivery.js';
import { AckWindow, writesOf } from './flow.js';
import type { GroupNames } from './topology.js';
import { deliveryCount, fromAmqp, headerAttempt } from './wire.js';

/** What a subscription needs from the rest of the transport. */
export interface ConsumerHost {
  /** Core's logger (read when used: it is set when the transport connects). */
  readonly logger: Logger;
  /** Backoff between attempts to resume consumption. */
  readonly backoff: BackoffOptions;
  /** Quorum queues count redeliveries in `x-delivery-count`; classic ones only flag them. */
  readonly quorum: boolean;
  /** Where deliveries write their copies. */
  readonly copies: CopyWriter;
  /** Whether the connection is up (else the transport resumes the subscription once it is). */
  connected(): boolean;
  /** A new channel on the live connection. */
  channel(): Promise<Channel>;
  /** Declares the group's exchange and queues. */
  ensureGroup(names: GroupNames): Promise<void>;
  /** The group's objects may have been deleted under us: declare them again next time. */
  forgetGroup(names: GroupNames): void;
  /** The subscription closed: the transport no longer resumes it. */
  closed(sub: RabbitSubscription): void;
}

/** One group consumption on its own channel. */
export class RabbitSubscription implements TransportSubscription {
  private link: ConsumerLink | undefined;
  private consumerTag: string | undefined;
  private stopped = false;
  private closed = false;
  private inFlight = 0;
  /**
   * Retry copies this subscription is still publishing (`<ce_id>|<attempt>`): the copy can come
   * back from a short delay tier before its publisher saw the confirm. Its delivery waits until the
   * retry has settled (and core recorded the `retried` outcome), so outcomes stay in causal order.
   */
  private readonly producing = new Map<string, Promise<void>>();
  private buffer: { link: ConsumerLink; msg: ConsumeMessage }[] = [];
  private resumeTimer: NodeJS.Timeout | undefined;
  private resumeAttempt = 0;
  private starting: Promise<void> | undefined;
  /** What this subscription's deliveries see of it. */
  private readonly deliveryHost: DeliveryHost;

  constructor(
    private readonly host: ConsumerHost,
    private readonly spec: SubscriptionSpec,
    private readonly names: GroupNames,
    private readonly onDelivery: (delivery: Delivery) => void,
  ) {
    this.deliveryHost = {
      names,
      copies: host.copies,
      producing: this.producing,
      current: (link) => this.link === link,
      settled: () => {
        this.inFlight--;
        this.pump();
      },
      channelGone: this.channelGone,
    };
  }

  private readonly channelGone = (): Error =>
    new BrokerUnavailableError(`the channel of ${this.names.queue} closed; RabbitMQ will redeliver the message`);

  /** Declares the group's topology and starts consuming. Rejects if the first attempt fails. */
  async start(): Promise<void> {
    await this.consume();
  }

  private consume(): Promise<void> {
    if (this.starting) return this.starting;
    this.starting = (async () => {
      await this.host.ensureGroup(this.names);
      const ch = await this.host.channel();
      const link: ConsumerLink = { ch, acks: new AckWindow(ch, writesOf(ch)) };
      try {
        ch.on('close', () => this.onChannelClosed(link));
        await ch.prefetch(this.spec.concurrency);
        if (this.stopped) {
          await ch.close().catch(() => {});
          return;
        }
        this.link = link;
        const { consumerTag } = await ch.consume(this.names.queue, (msg) => this.onMessage(link, msg), { noAck: false });
        this.consumerTag = consumerTag;
        this.resumeAttempt = 0;
      } catch (error) {
        if (this.link === link) this.link = undefined;
        await ch.close().catch(() => {});
        throw error;
      }
    })().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** Re-establishes consumption after `delayMs` (after a reconnect or a lost channel). */
  resume(delayMs: number): void {
    if (this.stopped || this.link || this.resumeTimer) return;
    this.resumeTimer = setTimeout(() => {
      this.resumeTimer = undefined;
      if (this.stopped || this.link || !this.host.connected()) return;
      this.consume().then(
        () => this.host.logger.info({ queue: this.names.queue }, 'RabbitMQ subscription resumed'),
        (error: unknown) => {
          this.host.logger.warn({ err: describeError(error), queue: this.names.queue }, 'RabbitMQ subscription could not resume; retrying');
          this.host.forgetGroup(this.names);
          this.resumeAttempt++;
          if (this.host.connected()) this.resume(backoffDelay(this.resumeAttempt, this.host.backoff));
        },
      );
    }, delayMs);
  }

  private onChannelClosed(link: ConsumerLink): void {
    link.acks.close(this.channelGone());
    if (this.link !== link) return;
    this.link = undefined;
    this.consumerTag = undefined;
    // Buffered messages were never handed over; the broker redelivers them.
    this.buffer = this.buffer.filter((b) => b.link !== link);
    if (this.stopped) return;
    this.host.logger.warn({ queue: this.names.queue }, 'RabbitMQ consumer channel closed');
    // If the connection is still up (channel-level error, or the queue was deleted), resume here;
    // otherwise the transport resumes every subscription once it has reconnected.
    if (this.host.connected()) this.resume(backoffDelay(++this.resumeAttempt, this.host.backoff));
  }

  private onMessage(link: ConsumerLink, msg: ConsumeMessage | null): void {
    if (msg === null) {
      // Cancelled by the broker (queue deleted, node down): start over on a fresh channel.
      this.host.logger.warn({ queue: this.names.queue }, 'RabbitMQ cancelled the consumer');
      this.host.forgetGroup(this.names);
      if (this.link === link) {
        this.onChannelClosed(link);
        void link.ch.close().catch(() => {});
      }
      return;
    }
    // Every delivery is recorded before anything else: a coalesced ack must never cover it unseen.
    link.acks.delivered(msg);
    if (this.stopped) {
      safely(() => link.acks.nack(msg));
      return;
    }
    if (this.inFlight >= this.spec.concurrency) {
      this.buffer.push({ link, msg });
      return;
    }
    this.dispatch(link, msg);
  }

  private pump(): void {
    while (!this.stopped && this.inFlight < this.spec.concurrency && this.buffer.length > 0) {
      const next = this.buffer.shift() as { link: ConsumerLink; msg: ConsumeMessage };
      this.dispatch(next.link, next.msg);
    }
  }

  private dispatch(link: ConsumerLink, msg: ConsumeMessage): void {
    this.inFlight++;
    const raw = msg.properties.headers;
    const headers = fromAmqp(raw, msg.properties.contentType);
    const redeliveries = this.host.quorum ? deliveryCount(raw) : msg.fields.redelivered ? 1 : 0;
    const delivery = new RabbitDelivery(this.deliveryHost, link, msg, headers, headerAttempt(headers) + redeliveries);
    const retrying = delivery.attempt > 1 ? this.producing.get(`${headers[Headers.id]}|${delivery.attempt}`) : undefined;
    if (retrying === undefined) this.onDelivery(delivery);
    else
      void retrying
        .then(() => new Promise<void>((r) => setImmediate(r)))
        .then(() => {
          if (this.link === link && !this.stopped) {
            this.onDelivery(delivery);
            return;
          }
          // Stopped (give it back, as onMessage does) or the channel closed (RabbitMQ redelivers).
          if (this.link === link) safely(() => link.acks.nack(msg));
          this.deliveryHost.settled();
        });
  }

  /** @inheritDoc */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.resumeTimer);
    this.resumeTimer = undefined;
    await this.starting?.catch(() => {});
    const link = this.link;
    if (link && this.consumerTag) await link.ch.cancel(this.consumerTag).catch(() => {});
    for (const b of this.buffer.splice(0)) safely(() => b.link.acks.nack(b.msg));
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.stop();
    this.closed = true;
    const link = this.link;
    this.link = undefined;
    if (link) await link.ch.close().catch(() => {});
    this.host.closed(this);
  }
}
