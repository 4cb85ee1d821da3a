/**
 * Per-batch machinery that keeps the per-message cost of the transport low: socket writes coalesced
 * per event-loop turn, one promise per publish call for its confirms, and acknowledgements coalesced
 * per turn.
 */
import type { PublishOutcome } from '@busbar/core';
import type { Channel, ChannelModel, Message } from 'amqplib';

/** The part of a socket {@link WriteCoalescer} uses. */
interface CorkableSocket {
  cork(): void;
  uncork(): void;
  readonly destroyed: boolean;
  readonly writableNeedDrain: boolean;
  prependOnceListener(event: 'drain', listener: () => void): unknown;
}

/** amqplib's connection object behind a channel model or a channel (both keep it as `connection`). */
type Connected = { readonly connection?: { readonly stream?: Partial<CorkableSocket> } };

const coalescers = new WeakMap<object, WriteCoalescer>();

/** The {@link WriteCoalescer} of the connection `owner` (a `ChannelModel` or a channel) belongs to. */
export function writesOf(owner: ChannelModel | Channel): WriteCoalescer {
  const connection = (owner as unknown as Connected).connection;
  if (connection === undefined) return new WriteCoalescer(undefined);
  let writes = coalescers.get(connection);
  if (writes === undefined) {
    const stream = connection.stream;
    const corkable =
      stream &&
      typeof stream.cork === 'function' &&
      typeof stream.uncork === 'function' &&
      typeof stream.prependOnceListener === 'function';
    writes = new WriteCoalescer(corkable ? (stream as CorkableSocket) : undefined);
    coalescers.set(connection, writes);
  }
  return writes;
}

/**
 * Coalesces the socket writes of one connection into few `writev` calls.
 *
 * amqplib writes every frame to the socket on its own — one system call per published message and
 * per acknowledgement, which on loopback also runs the receiving side's TCP stack: it was the
 * largest single cost of a publish. Its muxer moves frames from the channels to the socket on
 * `setImmediate`; {@link hold} corks the socket and uncorks it in the check phase *after* the one
 * in which the muxer flushes what was written in the same turn (two `setImmediate` hops, so it
 * does not matter whether `hold` is called before or after the frames are written). A `hold` while
 * the socket is already corked extends the hold by one more cycle once the current one flushed, so
 * frames written just before a release are not sent one by one. If the socket's buffer filled up,
 * the muxer continues on `drain`: the socket is corked again first, so a large batch still goes
 * out in writes of up to the socket's high-water mark rather than one per frame.
 *
 * Order is untouched (corking only delays writes); the socket is flushed at least every second
 * event-loop turn, and heartbeats written meanwhile go out with the batch.
 */
export class WriteCoalescer {
  private held = false;
  /** `hold` was called again while held: cork once more after the release. */
  private again = false;
  private rearmed = false;

  /** `socket`: the connection's socket; `undefined` makes every call a no-op. */
  constructor(private readonly socket: CorkableSocket | undefined) {}

  /** Corks the socket until the frames written in this turn were flushed (idempotent while held). */
  readonly hold = (): void => {
    const socket = this.socket;
    if (this.held) {
      this.again = true;
      return;
    }
    if (socket === undefined || socket.destroyed) return;
    this.held = true;
    socket.cork();
    setImmediate(this.afterMuxer);
  };

  private readonly afterMuxer = (): void => {
    setImmediate(this.release);
  };

  private readonly release = (): void => {
    const socket = this.socket as CorkableSocket;
    this.held = false;
    socket.uncork();
    if (this.again) {
      this.again = false;
      this.hold();
    }
    if (socket.writableNeedDrain && !this.rearmed && !socket.destroyed) {
      this.rearmed = true;
      // Runs before amqplib's muxer's own `drain` listener, which then writes into a corked socket.
      socket.prependOnceListener('drain', this.onDrain);
    }
  };

  private readonly onDrain = (): void => {
    this.rearmed = false;
    this.hold();
  };
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
 * Acknowledgements of one consumer channel, written once per event-loop turn: the acknowledged
 * deliveries at the head of the channel's unacknowledged ones with one `basic.ack(multiple)`, the
 * others one by one — in one socket write either way.
 *
 * At-least-once is kept: `multiple` covers exactly the deliveries below the tag that the broker
 * still counts as unacknowledged, so it is sent only when **every** one of them was acknowledged
 * here. Every delivery of the channel is recorded on arrival ({@link delivered}) — also the ones
 * buffered and not yet handed to core — and leaves the record only when its ack or nack is written.
 * Nacks are written at once: they are never delayed behind the acks, and an ack of a later tag
 * cannot cover them (the broker no longer counts them when it reads the ack).
 */
export class AckWindow {
  /** Tags delivered and not yet acked or nacked towards the broker, ascending; the message once acked here. */
  private readonly open = new Map<number, Message | null>();
  private lastTag = 0;
  /** Delivery tags arrived in ascending order (always, on a channel with one consumer); `multiple` is used only then. */
  private ascending = true;
  private pending: Message[] = [];
  private round: { promise: Promise<void>; resolve: () => void; reject: (error: Error) => void } | undefined;
  private closedError: Error | undefined;

  constructor(
    private readonly ch: Channel,
    private readonly writes: WriteCoalescer,
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
  ack(msg: Message, closedError: () => Error): Promise<void> {
    if (this.closedError) return Promise.reject(closedError());
    const tag = msg.fields.deliveryTag;
    if (this.open.has(tag)) this.open.set(tag, msg);
    this.pending.push(msg);
    if (this.round === undefined) {
      let resolve!: () => void;
      let reject!: (error: Error) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.round = { promise, resolve, reject };
      process.nextTick(this.flush, closedError);
    }
    return this.round.promise;
  }

  /** Rejects `msg` back to the queue at once (throws when the channel is closed). */
  nack(msg: Message): void {
    this.open.delete(msg.fields.deliveryTag);
    this.ch.nack(msg, false, true);
  }

  /** The channel closed: acks not yet written fail, later ones fail at once. */
  close(error: Error): void {
    this.closedError ??= error;
    this.open.clear();
  }

  private readonly flush = (closedError: () => Error): void => {
    const round = this.round;
    const pending = this.pending;
    this.round = undefined;
    this.pending = [];
    if (round === undefined) return;
    if (this.closedError) {
      round.reject(closedError());
      return;
    }
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
      this.close(closedError());
      round.reject(closedError());
      return;
    }
    round.resolve();
  };
}
