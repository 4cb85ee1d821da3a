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
  isBusError,
  type Logger,
  SlotGate,
  type SlotWaiter,
  type SubscriptionSpec,
  type TransportSubscription,
} from '@busbar/core/transport';
import type { Channel, ConsumeMessage } from 'amqplib';
import { AckWindow } from './ack-window.js';
import { closeChannel } from './connection.js';
import { type ConsumerLink, type CopyWriter, type DeliveryHost, RabbitDelivery, safely } from './delivery.js';
import type { GroupNames } from './topology.js';
import { deliveryCount, fromAmqp } from './wire.js';
import { writesOf } from './write-coalescer.js';

/** Attempts of {@link RabbitSubscription.start} before a lost connection fails `subscribe`. */
export const START_ATTEMPTS = 5;

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
  /**
   * Resolves once a connection is up (waiting for a reconnect within the transport's
   * `waitForConnectionMs`). @throws BusError when there is none in time, or the state is final
   */
  live(): Promise<void>;
  /** Declares the group's exchange and queues. */
  ensureGroup(names: GroupNames): Promise<void>;
  /** The group's objects may have been deleted under us: declare them again next time. */
  forgetGroup(names: GroupNames): void;
  /** The subscription closed: the transport no longer resumes it. */
  closed(sub: RabbitSubscription): void;
}

/** A consumer channel, with the deliveries that arrived on it and wait for a slot. */
interface ConsumerChannel extends ConsumerLink {
  readonly waiting: Set<SlotWaiter>;
}

/**
 * One group consumption on its own channel. Prefetch = `concurrency` keeps the broker from sending
 * more; the {@link SlotGate} keeps core from being handed more, also right after a new channel
 * was opened while deliveries of the old one are still settling (those arriving meanwhile wait for
 * a slot, in arrival order).
 */
export class RabbitSubscription implements TransportSubscription {
  private link: ConsumerChannel | undefined;
  private consumerTag: string | undefined;
  private stopped = false;
  private closed = false;
  /** Deliveries handed to core and not settled yet, at most `concurrency`. */
  private readonly gate: SlotGate;
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
    this.gate = new SlotGate(spec.concurrency);
    this.deliveryHost = {
      names,
      copies: host.copies,
      current: (link) => this.link === link,
      settled: () => this.gate.release(),
      channelGone: this.channelGone,
    };
  }

  private readonly channelGone = (): Error =>
    new BrokerUnavailableError(`the channel of ${this.names.queue} closed; RabbitMQ will redeliver the message`);

  /**
   * Declares the group's topology and starts consuming. A connection or channel lost meanwhile
   * (amqplib's "Channel ended, no reply will be forthcoming" during `basic.consume` or a
   * declaration) is ridden out: it waits for the reconnect and starts again, up to
   * {@link START_ATTEMPTS} times. Rejects only with a `BusError`: a final one (`TopologyError`,
   * `AuthenticationError` …) at once, a retryable `BrokerUnavailableError` (with the last `cause`)
   * when the connection did not come back.
   */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.consume();
        return;
      } catch (error) {
        if (isBusError(error) && !error.retryable) throw error;
        if (this.stopped) throw new BrokerUnavailableError(`the subscription to ${this.names.queue} was closed while starting`);
        if (attempt >= START_ATTEMPTS)
          throw isBusError(error)
            ? error
            : new BrokerUnavailableError(`could not start consuming ${this.names.queue}: ${describeError(error)}`, { cause: error });
        this.host.logger.info({ err: describeError(error), queue: this.names.queue, attempt }, 'RabbitMQ subscribe interrupted; retrying');
        this.host.forgetGroup(this.names);
        await new Promise<void>((resolve) => setTimeout(resolve, backoffDelay(attempt, this.host.backoff)));
        await this.host.live();
      }
    }
  }

  private consume(): Promise<void> {
    if (this.starting) return this.starting;
    if (this.link) return Promise.resolve();
    this.starting = (async () => {
      await this.host.ensureGroup(this.names);
      const ch = await this.host.channel();
      const link: ConsumerChannel = { ch, acks: new AckWindow(ch, writesOf(ch), this.channelGone), waiting: new Set() };
      try {
        ch.on('close', () => this.onChannelClosed(link));
        await ch.prefetch(this.spec.concurrency);
        if (this.stopped) {
          await closeChannel(ch);
          return;
        }
        this.link = link;
        const { consumerTag } = await ch.consume(this.names.queue, (msg) => this.onMessage(link, msg), { noAck: false });
        this.consumerTag = consumerTag;
        this.resumeAttempt = 0;
      } catch (error) {
        if (this.link === link) this.link = undefined;
        await closeChannel(ch);
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

  private onChannelClosed(link: ConsumerChannel): void {
    link.acks.close();
    const current = this.link === link;
    if (current) {
      this.link = undefined;
      this.consumerTag = undefined;
    }
    // Deliveries waiting for a slot were never handed over; the broker redelivers them.
    for (const w of [...link.waiting]) this.gate.cancel(w);
    if (!current || this.stopped) return;
    this.host.logger.warn({ queue: this.names.queue }, 'RabbitMQ consumer channel closed');
    // If the connection is still up (channel-level error, or the queue was deleted), resume here;
    // otherwise the transport resumes every subscription once it has reconnected.
    if (this.host.connected()) this.resume(backoffDelay(++this.resumeAttempt, this.host.backoff));
  }

  private onMessage(link: ConsumerChannel, msg: ConsumeMessage | null): void {
    if (msg === null) {
      // Cancelled by the broker (queue deleted, node down): start over on a fresh channel.
      this.host.logger.warn({ queue: this.names.queue }, 'RabbitMQ cancelled the consumer');
      this.host.forgetGroup(this.names);
      if (this.link === link) {
        this.onChannelClosed(link);
        void closeChannel(link.ch);
      }
      return;
    }
    // Every delivery is recorded before anything else: a coalesced ack must never cover it unseen.
    link.acks.delivered(msg);
    if (this.stopped) {
      safely(() => link.acks.nack(msg));
      return;
    }
    const gate = this.gate;
    if (gate.waiting === 0 && gate.tryAcquire()) this.dispatch(link, msg);
    else this.waitForSlot(link, msg);
  }

  /** Queues `msg` until a slot is free; given back if the subscription stops first, dropped if its channel closes. */
  private waitForSlot(link: ConsumerChannel, msg: ConsumeMessage): void {
    const waiter: SlotWaiter = {
      key: undefined,
      done: (granted) => {
        link.waiting.delete(waiter);
        if (granted && !this.stopped) {
          this.dispatch(link, msg);
          return;
        }
        if (granted) this.gate.release();
        // Stopped: give it back, as onMessage does. Channel closed: RabbitMQ redelivers it.
        if (this.link === link) safely(() => link.acks.nack(msg));
      },
    };
    link.waiting.add(waiter);
    this.gate.enqueue(waiter);
  }

  /** Hands `msg` to core; the caller holds a slot for it. */
  private dispatch(link: ConsumerLink, msg: ConsumeMessage): void {
    const raw = msg.properties.headers;
    const headers = fromAmqp(raw, msg.properties.contentType);
    // Quorum queues count redeliveries; a classic queue only flags one (counted as one).
    const redeliveries = this.host.quorum ? deliveryCount(raw) : msg.fields.redelivered ? 1 : 0;
    this.onDelivery(new RabbitDelivery(this.deliveryHost, link, msg, headers, redeliveries));
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
    // Deliveries waiting for a slot go back to the queue.
    this.gate.cancelAll();
  }

  /** @inheritDoc */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.stop();
    this.closed = true;
    const link = this.link;
    this.link = undefined;
    if (link) await closeChannel(link.ch);
    this.host.closed(this);
  }
}
