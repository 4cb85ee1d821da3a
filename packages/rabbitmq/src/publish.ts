/**
 * Publishing: one confirm channel per transport, the batches core hands over written into its
 * confirm window in call order, and the copies the transport writes itself (retries, dead letters,
 * releases, replays) straight into a queue.
 */
import {
  BrokerUnavailableError,
  describeError,
  type OutgoingMessage,
  type PublishOutcome,
  PublishRejectedError,
} from '@busbar/core/transport';
import type { ChannelModel, ConfirmChannel, Message, Options } from 'amqplib';
import { type Connection, closeChannel, raceSignal } from './connection.js';
import type { Topology } from './topology.js';
import { PublishHeaderTables } from './wire.js';
import { type WriteCoalescer, writesOf } from './write-coalescer.js';

/**
 * Publish calls core may keep in flight (`capabilities.orderedPublishCalls`): every call writes on
 * the one confirm channel, in call order (see `publish`), and RabbitMQ handles a channel's frames
 * in the order written, so overlapping calls keep publish order. 16 lets a steady flow of publishes
 * go out while earlier ones await their confirms (each call is a synchronous run's publishes, or
 * what queued while all 16 were busy).
 */
export const ORDERED_PUBLISH_CALLS = 16;

/** The confirm channel publishes go through, and what the transport tracks about it. */
interface PublishLink {
  readonly ch: ConfirmChannel;
  /**
   * Messages RabbitMQ returned (unroutable) whose confirm has not arrived yet, counted by
   * {@link returnKey}. RabbitMQ sends `basic.return` before the message's `basic.ack`, so the
   * confirm callback finds its return here; with nothing returned (the normal case) the callback
   * checks only that this map is empty.
   */
  readonly returned: Map<string, number>;
  /** Socket write coalescing of the connection the channel belongs to. */
  readonly writes: WriteCoalescer;
  /** The channel closed (possibly before it became the current link). */
  closed: boolean;
}

function returnKey(exchange: string, routingKey: string, messageId: unknown): string {
  return `${exchange}\u0000${routingKey}\u0000${typeof messageId === 'string' ? messageId : ''}`;
}

/** Consumes one recorded return of `key`; false if there is none. */
function takeReturn(returned: Map<string, number>, key: string): boolean {
  const n = returned.get(key);
  if (n === undefined) return false;
  if (n <= 1) returned.delete(key);
  else returned.set(key, n - 1);
  return true;
}

function where(exchange: string, routingKey: string): string {
  return exchange === '' ? `queue "${routingKey}"` : `exchange "${exchange}"`;
}

function unroutable(exchange: string, routingKey: string): PublishRejectedError {
  return exchange === ''
    ? new PublishRejectedError(`${where(exchange, routingKey)} does not exist; RabbitMQ returned the message unroutable`)
    : new PublishRejectedError(
        `no queue is bound to ${where(exchange, routingKey)}; RabbitMQ returned the message unroutable (subscribe a group first)`,
      );
}

const OK: PublishOutcome = Object.freeze({ ok: true });

/**
 * The confirms of one publish call: an outcome per message and a single promise for the whole
 * batch (rather than a promise per message).
 */
export class ConfirmBatch {
  readonly outcomes: PublishOutcome[];
  /** Resolves with {@link outcomes} once every message has one. */
  readonly done: Promise<readonly PublishOutcome[]>;
  private remaining: number;
  private resolve!: (outcomes: readonly PublishOutcome[]) => void;

  /** @param onDurable told of each message confirmed, as its confirm arrives (see `Transport.publish`). */
  constructor(
    size: number,
    private readonly onDurable?: (index: number) => void,
  ) {
    this.outcomes = new Array<PublishOutcome>(size);
    this.remaining = size;
    this.done = new Promise((resolve) => {
      this.resolve = resolve;
    });
    if (size === 0) this.resolve(this.outcomes);
  }

  /** Message `i` is durable. */
  ok(i: number): void {
    if (this.outcomes[i] !== undefined) return;
    this.onDurable?.(i);
    this.set(i, OK);
  }

  /** Message `i` failed. */
  fail(i: number, error: Error): void {
    this.set(i, { ok: false, error });
  }

  private set(i: number, outcome: PublishOutcome): void {
    if (this.outcomes[i] !== undefined) return;
    this.outcomes[i] = outcome;
    if (--this.remaining === 0) this.resolve(this.outcomes);
  }
}

/**
 * The publish side of the transport: the confirm channel (opened on first use, again after it or
 * the connection closed) and everything written on it.
 */
export class Publisher {
  private publishChannel: Promise<PublishLink> | undefined;
  /** The publish channel once open (saves an await per publish call). */
  private publishLink: PublishLink | undefined;
  /** Publish options and header tables reused from message to message (see {@link write}). */
  private readonly publishProps: Options.Publish = {
    persistent: true,
    mandatory: true,
    headers: undefined,
    contentType: undefined,
    messageId: undefined,
    timestamp: undefined,
  };
  private readonly headerTables = new PublishHeaderTables();
  /**
   * Set while a publish call writes after having waited (see {@link inWriteOrder}): later calls
   * write after it, so overlapping calls keep their order on the channel.
   */
  private writing: Promise<void> | undefined;

  constructor(
    private readonly connection: Pick<Connection, 'live' | 'logger'>,
    private readonly topology: Pick<Topology, 'exchangeReady' | 'ensureExchange' | 'forgetAll'>,
  ) {}

  /** The connection is gone: the channel with it. */
  reset(): void {
    this.publishChannel = undefined;
    this.publishLink = undefined;
  }

  /** Closes the publish channel. */
  async close(): Promise<void> {
    const pub = this.publishChannel;
    this.reset();
    if (pub) await pub.then((link) => closeChannel(link.ch)).catch(() => {});
  }

  /**
   * Opens the publish channel on a new connection, before the transport reports `connected`: a
   * connection counts as working only once a channel on it opened.
   */
  async prepare(conn: ChannelModel): Promise<void> {
    this.reset();
    const opening = this.openLink(conn);
    this.track(opening);
    await opening;
  }

  private getPublishChannel(signal?: AbortSignal): Promise<PublishLink> {
    if (this.publishChannel) return this.publishChannel;
    const created = this.connection.live(signal).then((conn) => this.openLink(conn));
    this.track(created);
    return created;
  }

  /** Makes `created` the publish channel (forgotten again if it fails to open). */
  private track(created: Promise<PublishLink>): void {
    this.publishChannel = created;
    created.then(
      (link) => {
        if (this.publishChannel !== created) return;
        if (link.closed) this.publishChannel = undefined;
        else this.publishLink = link;
      },
      () => {
        if (this.publishChannel === created) this.publishChannel = undefined;
      },
    );
  }

  /** A confirm channel on `conn`, with its listeners. @throws BrokerUnavailableError */
  private async openLink(conn: ChannelModel): Promise<PublishLink> {
    let ch: ConfirmChannel;
    try {
      ch = await conn.createConfirmChannel();
    } catch (error) {
      throw new BrokerUnavailableError(`could not open the RabbitMQ publish channel: ${describeError(error)}`, { cause: error });
    }
    const link: PublishLink = { ch, returned: new Map(), writes: writesOf(conn), closed: false };
    ch.on('error', (error: unknown) => {
      this.connection.logger.warn({ err: describeError(error) }, 'RabbitMQ publish channel error');
      // A 404 (exchange or queue deleted under us) invalidates what we believed declared.
      this.topology.forgetAll();
    });
    ch.on('close', () => {
      // amqplib has failed every unconfirmed message by now ('channel closed').
      link.returned.clear();
      link.closed = true;
      if (this.publishLink === link) {
        this.publishChannel = undefined;
        this.publishLink = undefined;
      }
    });
    ch.on('return', (msg: Message) => {
      const key = returnKey(msg.fields.exchange, msg.fields.routingKey, msg.properties.messageId);
      link.returned.set(key, (link.returned.get(key) ?? 0) + 1);
    });
    return link;
  }

  /**
   * Writes one message on the confirm channel; its outcome lands in `confirms[i]`: ok on the
   * broker's ack, `PublishRejectedError` on nack or return (unroutable), `BrokerUnavailableError`
   * when the channel closed before the confirm (outcome unknown) or the write failed. Returns false
   * when the channel's buffer is full: wait for its `drain` before writing more.
   */
  private write(
    link: PublishLink,
    exchange: string,
    routingKey: string,
    body: Uint8Array,
    headers: Readonly<Record<string, string>>,
    timestamp: number,
    confirms: ConfirmBatch,
    i: number,
  ): boolean {
    // Reused options and headers table: amqplib reads them synchronously within `publish` (see
    // PublishHeaderTables), so each message overwrites what the previous one used.
    const tables = this.headerTables;
    const props = this.publishProps;
    props.headers = tables.map(headers);
    props.contentType = tables.contentType;
    const messageId = tables.messageId;
    props.messageId = messageId;
    props.timestamp = timestamp;
    const content = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    try {
      return link.ch.publish(exchange, routingKey, content, props, (err: unknown) => {
        if (err === null || err === undefined) {
          if (link.returned.size === 0 || !takeReturn(link.returned, returnKey(exchange, routingKey, messageId))) confirms.ok(i);
          else confirms.fail(i, unroutable(exchange, routingKey));
        } else if (err instanceof Error && err.message === 'message nacked') {
          confirms.fail(i, new PublishRejectedError(`RabbitMQ nacked the message on ${where(exchange, routingKey)} (a queue refused it)`));
        } else {
          confirms.fail(
            i,
            new BrokerUnavailableError(
              `the channel closed before RabbitMQ confirmed the message on ${where(exchange, routingKey)}; outcome unknown`,
              { cause: err },
            ),
          );
        }
      });
    } catch (error) {
      // amqplib registers the confirm callback only after a successful write.
      confirms.fail(
        i,
        error instanceof RangeError
          ? new PublishRejectedError(`message could not be encoded: ${describeError(error)}`, { cause: error })
          : new BrokerUnavailableError(`publish on ${where(exchange, routingKey)} failed: ${describeError(error)}`, { cause: error }),
      );
      return true;
    }
  }

  /** Resolves once `ch` can take more writes (or closed). */
  private drained(ch: ConfirmChannel): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        ch.off('drain', done).off('close', done);
        resolve();
      };
      ch.on('drain', done).on('close', done);
    });
  }

  /**
   * Publishes a copy written by the transport itself (retry, dead letter, replay, release) straight
   * into `queue` through the default exchange, and waits for the broker's confirm.
   */
  async sendToQueue(queue: string, body: Uint8Array, headers: Readonly<Record<string, string>>): Promise<void> {
    const link = await this.getPublishChannel();
    const confirms = new ConfirmBatch(1);
    const written = this.write(link, '', queue, body, headers, Math.floor(Date.now() / 1000), confirms, 0);
    if (!written) await this.drained(link.ch);
    const [outcome] = await confirms.done;
    if (outcome && !outcome.ok) throw outcome.error;
  }

  /**
   * @inheritDoc
   *
   * Calls may overlap (`capabilities.orderedPublishCalls`): the messages of a call are written to
   * the channel after those of every earlier call, so RabbitMQ appends them in call order. A call
   * that can write at once (channel open, exchanges declared, no earlier call still writing)
   * writes synchronously; one that has to wait first (for the channel, a declaration, or the
   * channel's buffer to drain) makes every later call wait until it has written.
   */
  async publish(
    batch: readonly OutgoingMessage[],
    signal: AbortSignal,
    onDurable?: (index: number) => void,
  ): Promise<readonly PublishOutcome[]> {
    const aborted = () =>
      signal.reason instanceof Error ? signal.reason : new BrokerUnavailableError('publish aborted before RabbitMQ confirmed it');
    const confirms = new ConfirmBatch(batch.length, onDurable);
    const link = this.publishLink;
    if (this.writing === undefined && link !== undefined && this.declared(batch)) {
      // One frame needs no coalescing (and a lone awaited publish no extra event-loop turn).
      if (batch.length > 1) link.writes.hold();
      const next = this.writeFrom(link, batch, 0, confirms);
      if (next < batch.length) await this.inWriteOrder(() => this.writeRest(link, batch, next, confirms, signal, aborted));
    } else {
      await this.inWriteOrder(async () => {
        if (signal.aborted) throw aborted();
        const current = this.publishLink ?? (await raceSignal(this.getPublishChannel(signal), signal, aborted));
        const exchangeErrors = await this.declareExchanges(batch, signal, aborted);
        if (batch.length > 1) current.writes.hold();
        const next = this.writeFrom(current, batch, 0, confirms, exchangeErrors);
        if (next < batch.length) await this.writeRest(current, batch, next, confirms, signal, aborted, exchangeErrors);
      });
    }
    return raceSignal(confirms.done, signal, aborted);
  }

  /** Whether the exchange of every message of `batch` was declared on this connection. */
  private declared(batch: readonly OutgoingMessage[]): boolean {
    let lastTopic: string | undefined;
    for (const m of batch) {
      if (m.topic === lastTopic) continue;
      lastTopic = m.topic;
      if (!this.topology.exchangeReady(m.topic)) return false;
    }
    return true;
  }

  /** Declares the exchanges of `batch` not declared yet; returns the failed ones (their messages fail). */
  private async declareExchanges(
    batch: readonly OutgoingMessage[],
    signal: AbortSignal,
    aborted: () => Error,
  ): Promise<Map<string, Error> | undefined> {
    let declaring: Map<string, Promise<void>> | undefined;
    let lastTopic: string | undefined;
    for (const m of batch) {
      if (m.topic === lastTopic) continue;
      lastTopic = m.topic;
      if (this.topology.exchangeReady(m.topic) || declaring?.has(m.topic)) continue;
      declaring ??= new Map();
      declaring.set(m.topic, this.topology.ensureExchange(m.topic));
    }
    if (!declaring) return undefined;
    const failed = new Map<string, Error>();
    await raceSignal(
      Promise.all(
        [...declaring].map(([t, p]) =>
          p.catch((error: unknown) => {
            failed.set(t, error instanceof Error ? error : new Error(String(error)));
          }),
        ),
      ),
      signal,
      aborted,
    );
    return failed.size > 0 ? failed : undefined;
  }

  /**
   * Writes `batch` from message `from` on until the channel's buffer is full; returns the index of
   * the next message to write (`batch.length` when all were written).
   */
  private writeFrom(
    link: PublishLink,
    batch: readonly OutgoingMessage[],
    from: number,
    confirms: ConfirmBatch,
    exchangeErrors?: Map<string, Error>,
  ): number {
    const timestamp = Math.floor(Date.now() / 1000);
    for (let i = from; i < batch.length; i++) {
      const m = batch[i] as OutgoingMessage;
      const failed = exchangeErrors?.get(m.topic);
      if (failed) {
        confirms.fail(i, failed);
        continue;
      }
      if (!this.write(link, m.topic, m.topic, m.body, m.headers, timestamp, confirms, i)) return i + 1;
    }
    return batch.length;
  }

  /** Writes the rest of `batch` from `from` on, waiting for the channel's buffer to drain each time it filled. */
  private async writeRest(
    link: PublishLink,
    batch: readonly OutgoingMessage[],
    from: number,
    confirms: ConfirmBatch,
    signal: AbortSignal,
    aborted: () => Error,
    exchangeErrors?: Map<string, Error>,
  ): Promise<void> {
    let next = from;
    while (next < batch.length) {
      await raceSignal(this.drained(link.ch), signal, aborted);
      link.writes.hold();
      next = this.writeFrom(link, batch, next, confirms, exchangeErrors);
    }
  }

  /**
   * Runs `write` once every earlier publish call that had to wait has written; calls made while it
   * runs wait for it in turn (a FIFO: `write` runs after the previous holder finished, even if this
   * call was aborted meanwhile — `write` must then check its signal before writing).
   */
  private async inWriteOrder(write: () => Promise<void>): Promise<void> {
    const previous = this.writing;
    let release!: () => void;
    const mine = new Promise<void>((resolve) => {
      release = resolve;
    });
    this.writing = mine;
    try {
      if (previous) await previous;
      await write();
    } finally {
      if (this.writing === mine) this.writing = undefined;
      release();
    }
  }
}
