/**
 * Socket write coalescing: the frames amqplib writes in one event-loop turn leave in few `writev`
 * calls (publishes and acknowledgements alike).
 */
import type { Channel, ChannelModel } from 'amqplib';

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
