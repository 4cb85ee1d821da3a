/**
 * A small TCP proxy (node:net) between the transport and the real Redis, to break the link at a
 * chosen moment — not a mock: every byte still goes to Redis and back.
 *
 * - `pass` forwards both ways; `blackhole` stops reading both ways (bytes are held, sockets stay
 *   open: neither side sees an error, only silence; `pass` again lets the held bytes through);
 *   `refuse` destroys new connections at once (Redis "is down").
 * - {@link RedisProxy.interceptNext} holds the next client → Redis chunk that matches, runs an
 *   action (e.g. `CLIENT KILL` of that link's server-side client), then forwards the chunk if the
 *   link is still open: a kill at an exact point of the protocol, from the server side.
 */
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';

/** One proxied connection. */
export interface ProxyLink {
  readonly client: Socket;
  readonly upstream: Socket;
  /** This link's address as Redis sees it (`addr=` in `CLIENT LIST`). */
  readonly addr: string;
}

interface Intercept {
  readonly match: (chunk: Buffer) => boolean;
  readonly action: (link: ProxyLink) => Promise<void>;
  readonly done: (error?: unknown) => void;
}

/** See the module comment. */
export class RedisProxy {
  private readonly links = new Set<ProxyLink>();
  private mode: 'pass' | 'blackhole' | 'refuse' = 'pass';
  private intercept: Intercept | undefined;
  /** Connections accepted since start. */
  accepted = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** Starts a proxy on a free port of 127.0.0.1 forwarding to `targetHost:targetPort`. */
  static async start(targetHost: string, targetPort: number): Promise<RedisProxy> {
    let proxy: RedisProxy | undefined;
    const server = createServer((client) => proxy?.accept(client, targetHost, targetPort));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy: no port');
    proxy = new RedisProxy(server, address.port);
    return proxy;
  }

  private accept(client: Socket, host: string, port: number): void {
    this.accepted++;
    if (this.mode === 'refuse') {
      client.destroy();
      return;
    }
    const upstream = tcpConnect({ host, port });
    let link: ProxyLink | undefined;
    const drop = () => {
      client.destroy();
      upstream.destroy();
      if (link) this.links.delete(link);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pause();
    upstream.once('connect', () => {
      link = { client, upstream, addr: `${upstream.localAddress}:${upstream.localPort}` };
      this.links.add(link);
      const current = link;
      client.on('data', (chunk: Buffer) => this.up(current, chunk));
      upstream.on('data', (chunk: Buffer) => client.write(chunk));
      if (this.mode === 'pass') client.resume();
      else upstream.pause();
    });
  }

  private up(link: ProxyLink, chunk: Buffer): void {
    const intercept = this.intercept;
    if (intercept === undefined || !intercept.match(chunk)) {
      link.upstream.write(chunk);
      return;
    }
    this.intercept = undefined;
    link.client.pause();
    intercept.action(link).then(
      () => {
        if (!link.upstream.destroyed) link.upstream.write(chunk);
        if (this.mode === 'pass') link.client.resume();
        intercept.done();
      },
      (error: unknown) => intercept.done(error),
    );
  }

  /**
   * Holds the next client → Redis chunk that `match`es, runs `action` on its link, then forwards
   * the chunk (when the link is still open). Resolves once the action ran.
   */
  interceptNext(match: (chunk: Buffer) => boolean, action: (link: ProxyLink) => Promise<void>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.intercept = { match, action, done: (error) => (error === undefined ? resolve() : reject(error)) };
    });
  }

  /** Forwards both ways (again): held bytes flow. */
  pass(): void {
    this.mode = 'pass';
    for (const l of this.links) {
      l.client.resume();
      l.upstream.resume();
    }
  }

  /** Stops reading both ways on every link, open or new: silence, no error. */
  blackhole(): void {
    this.mode = 'blackhole';
    for (const l of this.links) {
      l.client.pause();
      l.upstream.pause();
    }
  }

  /** New connections are destroyed at once (open links are left as they are). */
  refuse(): void {
    this.mode = 'refuse';
  }

  /** Links open now. */
  get open(): number {
    return this.links.size;
  }

  /** Closes the proxy and every link. */
  async close(): Promise<void> {
    for (const l of this.links) {
      l.client.destroy();
      l.upstream.destroy();
    }
    this.links.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
