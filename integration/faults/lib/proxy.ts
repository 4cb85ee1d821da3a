/**
 * A small TCP proxy of our own (node:net) between a client and a broker, to break the link on
 * purpose. This machine's kernel has no netem and there is no toxiproxy; this is the portable tool.
 *
 * Modes apply to new connections **and** to links already open, and can be switched mid-stream:
 *
 * - `pass`      — forward both ways (a black-holed link resumes: nothing buffered is dropped, as
 *                 after a healed partition where TCP retransmits);
 * - `blackhole` — accept, never answer: bytes in either direction are held back (reads paused),
 *                 the sockets stay open, so neither side sees an error — only silence;
 * - `refuse`    — new connections are reset at once (the broker "is down"); open links are reset.
 *
 * One-shot actions on the links open now:
 *
 * - `cut()`      — close both sides with a FIN (`end` + `destroy`);
 * - `reset()`    — close both sides with an RST (`socket.resetAndDestroy()`);
 * - `halfOpen()` — close the broker side only and keep the client side open, swallowing whatever
 *                  the client sends and never answering: the broker has forgotten the client, the
 *                  client still believes it is connected.
 *
 * And one armed action: `loseResponse(match)` forwards the next client chunk that `match`es (a
 * request), swallows the broker's answer to it and then resets the link — the request reached the
 * broker, the client never learns its outcome. `disarm()` takes it back if it has not fired.
 */
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';

/** What the proxy does with traffic. */
export type ProxyMode = 'pass' | 'blackhole' | 'refuse';

interface Link {
  readonly client: Socket;
  readonly upstream: Socket;
  /** The broker side was dropped by `halfOpen()`; the client side is a zombie. */
  zombie: boolean;
  /** A request matched by `loseResponse` went up this link: the next broker bytes are swallowed and the link reset. */
  losing?: () => void;
}

interface LoseResponse {
  readonly match: (chunk: Buffer) => boolean;
  /** Matching chunks still to let through before the one whose answer is lost. */
  skip: number;
  readonly lost: () => void;
}

/** Options of {@link TcpProxy.start}. */
export interface TcpProxyOptions {
  /** Broker host. @defaultValue '127.0.0.1' */
  targetHost?: string;
  /** Broker port. */
  targetPort: number;
  /** Port to listen on (`0`: any free port). @defaultValue 0 */
  listenPort?: number;
  /** Mode at start. @defaultValue 'pass' */
  mode?: ProxyMode;
}

/** Counters of a {@link TcpProxy}. */
export interface ProxyStats {
  /** Connections accepted since start. */
  accepted: number;
  /** Links open now. */
  open: number;
  /** Bytes forwarded client → broker / broker → client. */
  bytesUp: number;
  bytesDown: number;
  /** Chunks (reads) received from clients: roughly the requests they sent. */
  chunksUp: number;
}

/** See the module comment. */
export class TcpProxy {
  private readonly links = new Set<Link>();
  private current: ProxyMode;
  private armed: LoseResponse | undefined;
  readonly stats: ProxyStats = { accepted: 0, open: 0, bytesUp: 0, bytesDown: 0, chunksUp: 0 };

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly targetHost: string,
    private readonly targetPort: number,
    mode: ProxyMode,
  ) {
    this.current = mode;
    server.on('connection', (client) => this.accept(client));
  }

  /** Starts listening on 127.0.0.1. */
  static async start(options: TcpProxyOptions): Promise<TcpProxy> {
    const server = createServer({ pauseOnConnect: true, noDelay: true });
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.listenPort ?? 0, '127.0.0.1', () => {
        server.off('error', reject);
        const address = server.address();
        if (address === null || typeof address === 'string') reject(new Error('proxy has no TCP address'));
        else resolve(address.port);
      });
    });
    return new TcpProxy(server, port, options.targetHost ?? '127.0.0.1', options.targetPort, options.mode ?? 'pass');
  }

  /** The current mode. */
  get mode(): ProxyMode {
    return this.current;
  }

  /** `host:port` of the proxy. */
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Switches the mode for new and open links (see the module comment). */
  setMode(mode: ProxyMode): void {
    this.current = mode;
    for (const link of this.links) {
      if (mode === 'refuse') this.resetLink(link);
      else this.applyFlow(link);
    }
  }

  /** Closes every open link on both sides with a FIN. New connections follow the mode. */
  cut(): number {
    const n = this.links.size;
    for (const link of [...this.links]) {
      link.client.end();
      link.upstream.end();
      link.client.destroy();
      link.upstream.destroy();
      this.links.delete(link);
    }
    this.stats.open = this.links.size;
    return n;
  }

  /** Closes every open link on both sides with an RST. */
  reset(): number {
    const n = this.links.size;
    for (const link of [...this.links]) this.resetLink(link);
    return n;
  }

  /**
   * Drops the broker side of every open link (FIN to the broker) and keeps the client side open
   * and silent. The zombie client sockets are destroyed by a later `cut`, `reset` or `close`.
   */
  halfOpen(): number {
    let n = 0;
    for (const link of this.links) {
      if (link.zombie) continue;
      link.zombie = true;
      link.client.unpipe(link.upstream);
      link.upstream.unpipe(link.client);
      link.upstream.destroy();
      // Swallow what the client sends from now on, so its writes succeed and it hears nothing.
      link.client.removeAllListeners('data');
      link.client.on('data', () => {});
      link.client.resume();
      n++;
    }
    return n;
  }

  /**
   * Arms a one-shot fault: the `skip + 1`-th client chunk (on any link) for which `match` is true is
   * forwarded to the broker; the broker's answer is swallowed and the link then reset on both
   * sides. Resolves once that has happened. `match` sees raw TCP chunks: it suits protocols whose
   * client writes a small request in one chunk (Kafka's framing: size, api key, version …).
   */
  loseResponse(match: (chunk: Buffer) => boolean, skip = 0): Promise<void> {
    if (this.armed) throw new Error('loseResponse is already armed');
    return new Promise((lost) => {
      this.armed = { match, skip, lost };
    });
  }

  /** Whether a {@link loseResponse} is armed and has not matched a request yet. */
  get isArmed(): boolean {
    return this.armed !== undefined;
  }

  /** Disarms a {@link loseResponse} that has not matched a request yet (its promise never resolves). */
  disarm(): void {
    this.armed = undefined;
  }

  /** Stops listening and destroys every link. */
  async close(): Promise<void> {
    for (const link of [...this.links]) {
      link.client.destroy();
      link.upstream.destroy();
    }
    this.links.clear();
    this.stats.open = 0;
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    this.stats.accepted++;
    if (this.current === 'refuse') {
      client.resetAndDestroy();
      return;
    }
    client.setNoDelay(true);
    const upstream = tcpConnect({ host: this.targetHost, port: this.targetPort, noDelay: true });
    upstream.pause();
    const link: Link = { client, upstream, zombie: false };
    this.links.add(link);
    this.stats.open = this.links.size;
    const drop = () => {
      if (!this.links.delete(link)) return;
      this.stats.open = this.links.size;
      if (link.zombie) return; // a half-open client side stays until cut/reset/close
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', () => {
      // Broker side failed: propagate as a reset to the client, like a real network would.
      if (link.zombie) return;
      if (this.links.delete(link)) {
        this.stats.open = this.links.size;
        client.resetAndDestroy();
      }
    });
    client.on('close', drop);
    upstream.on('close', () => {
      if (link.zombie) return;
      drop();
    });
    client.on('data', (chunk: Buffer) => {
      this.stats.bytesUp += chunk.length;
      this.stats.chunksUp++;
      const armed = this.armed;
      if (armed && !link.losing && armed.match(chunk) && armed.skip-- === 0) {
        this.armed = undefined;
        link.losing = armed.lost;
      }
      if (!upstream.write(chunk)) {
        client.pause();
        upstream.once('drain', () => this.applyFlow(link));
      }
    });
    upstream.on('data', (chunk: Buffer) => {
      const losing = link.losing;
      if (losing) {
        // The answer to the matched request (and whatever came with it) never reaches the client.
        this.resetLink(link);
        losing();
        return;
      }
      this.stats.bytesDown += chunk.length;
      if (!client.write(chunk)) {
        upstream.pause();
        client.once('drain', () => this.applyFlow(link));
      }
    });
    upstream.once('connect', () => this.applyFlow(link));
    // Bytes the client sent before the broker side connected stay in the client's paused buffer.
  }

  /** Resumes or pauses the link's reads according to the mode. */
  private applyFlow(link: Link): void {
    if (link.zombie || !this.links.has(link)) return;
    if (this.current === 'pass') {
      if (link.upstream.connecting) return; // resumed on 'connect'
      link.client.resume();
      link.upstream.resume();
    } else {
      link.client.pause();
      link.upstream.pause();
    }
  }

  private resetLink(link: Link): void {
    this.links.delete(link);
    this.stats.open = this.links.size;
    if (!link.client.destroyed) link.client.resetAndDestroy();
    if (!link.upstream.destroyed) link.upstream.resetAndDestroy();
  }
}
