/**
 * Test kit for the Redis Streams integration tests: a registry of the transports a test file
 * creates (with test settings) and of the namespaces it cleans up (cleanup and leftovers by
 * `SCAN`), a raw client written with plain ioredis as a foreign producer/consumer would be, and
 * waits on ids and events (no sleeps).
 *
 * The raw client writes and reads the documented entry layout on its own (it does not use the
 * transport's codec), so the conformance cases prove interoperability, not self-consistency.
 */
import type { RawBrokerClient, RawProbe } from '@busbar/conformance';
import type { WireMessage } from '@busbar/core';
import { type RedisStreamsOptions, RedisStreamsTransport } from '@busbar/redis-streams';
import { Redis } from 'ioredis';
import { ProbeInbox } from '../brokers/probe-inbox.js';

/** Default key prefix of the transport and the idempotency store. */
export const PREFIX = 'busbar';

/** The stream key of a topic, spelled out here (not imported) so the wire layout is tested. */
export const streamOf = (topic: string): string => `${PREFIX}:{${topic}}`;

/**
 * Writes a message the way any Redis producer would, in the documented layout: `XADD` with the
 * field `_headers` (every header as one JSON object of strings), then `body` (the bytes).
 */
export async function rawWrite(redis: Redis, topic: string, message: WireMessage): Promise<void> {
  await redis.xadd(streamOf(topic), '*', '_headers', JSON.stringify(message.headers), 'body', Buffer.from(message.body));
}

/**
 * Writes a message in the earlier layout (still read): one field per header (a header named `body`
 * or starting with `\` gets a leading `\`), then `body`.
 */
export async function rawWriteLegacy(redis: Redis, topic: string, message: WireMessage): Promise<void> {
  const fields: (string | Buffer)[] = [];
  for (const [k, v] of Object.entries(message.headers)) fields.push(k === 'body' || k.startsWith('\\') ? `\\${k}` : k, v);
  fields.push('body', Buffer.from(message.body));
  await redis.xadd(streamOf(topic), '*', ...fields);
}

/** Reads an entry's flat field list back into a message (the documented layout, or the earlier one). */
export function rawDecode(fields: Buffer[]): WireMessage {
  let headers: Record<string, string> = {};
  let body = new Uint8Array(0);
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = (fields[i] as Buffer).toString();
    const value = fields[i + 1] as Buffer;
    if (name === 'body') body = new Uint8Array(value);
    else if (name === '_headers') headers = { ...headers, ...(JSON.parse(value.toString()) as Record<string, string>) };
    else headers[name.startsWith('\\') ? name.slice(1) : name] = value.toString();
  }
  return { headers, body };
}

/** A probe: its own connection, `XREAD BLOCK` from the stream's last id at the time it opened. */
async function observe(url: string, topic: string): Promise<RawProbe> {
  const conn = new Redis(url, { maxRetriesPerRequest: null });
  conn.on('error', () => {});
  const key = streamOf(topic);
  const last = (await conn.xrevrange(key, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';
  const inbox = new ProbeInbox(`on ${key}`);
  let closed = false;
  const loop = (async () => {
    let cursor = last;
    while (!closed) {
      const reply = (await conn.callBuffer('XREAD', 'COUNT', 100, 'BLOCK', 500, 'STREAMS', key, cursor).catch(() => null)) as
        | [Buffer, [Buffer, Buffer[]][]][]
        | null;
      for (const [, rows] of reply ?? []) {
        for (const [id, fields] of rows) {
          cursor = id.toString();
          const m = rawDecode(fields);
          inbox.add(m.headers.ce_id, m);
        }
      }
    }
  })();
  return {
    waitFor: (id: string, timeoutMs: number): Promise<WireMessage> => inbox.waitFor(id, timeoutMs),
    async close() {
      closed = true;
      await loop;
      conn.disconnect();
    },
  };
}

/** A raw ioredis client for the conformance suite: `XADD` to write, `XREAD BLOCK` probes to observe. */
export async function createRawClient(url: string): Promise<RawBrokerClient> {
  const conn = new Redis(url);
  conn.on('error', () => {});
  const probes = new Set<RawProbe>();
  return {
    write: (topic, message) => rawWrite(conn, topic, message),
    async observe(topic) {
      const probe = await observe(url, topic);
      probes.add(probe);
      return probe;
    },
    async close() {
      await Promise.allSettled([...probes].map((p) => p.close()));
      conn.disconnect();
    },
  };
}

/** Every key of a namespace: its streams and side keys, and its idempotency keys (by `SCAN`). */
async function keysOf(redis: Redis, namespace: string): Promise<string[]> {
  const out: string[] = [];
  for (const pattern of [`${PREFIX}:{${namespace}*`, `${PREFIX}:idem:{${namespace}*`]) {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 500);
      cursor = next;
      out.push(...keys);
    } while (cursor !== '0');
  }
  return out;
}

/** Deletes every key of a namespace: its streams and side keys, and its idempotency keys. */
export async function deleteNamespace(redis: Redis, namespace: string): Promise<number> {
  const keys = await keysOf(redis, namespace);
  return keys.length === 0 ? 0 : redis.unlink(...keys);
}

/**
 * Every transport created through {@link TransportRegistry.create} and every namespace cleaned up
 * through {@link TransportRegistry.cleanup}; `close` closes the registry's own admin connection.
 */
export class TransportRegistry {
  private readonly transports = new Set<RedisStreamsTransport>();
  private readonly namespaces = new Set<string>();
  private admin: Redis | undefined;

  constructor(
    private readonly url: string,
    private readonly defaults: RedisStreamsOptions = {},
  ) {}

  /** A new transport for tests (fast claims and retry moves). */
  create(extra: RedisStreamsOptions = {}): RedisStreamsTransport {
    const t = new RedisStreamsTransport({
      url: this.url,
      claimIdleMs: 5_000,
      claimIntervalMs: 500,
      retryPollMs: 200,
      ...this.defaults,
      ...extra,
    });
    this.transports.add(t);
    return t;
  }

  private connection(): Redis {
    if (this.admin === undefined) {
      this.admin = new Redis(this.url);
      this.admin.on('error', () => {});
    }
    return this.admin;
  }

  /** Deletes every key of `namespace` (streams, side keys, idempotency keys). */
  async cleanup(namespace: string): Promise<void> {
    this.namespaces.add(namespace);
    await deleteNamespace(this.connection(), namespace);
  }

  /** Keys that still exist in the namespaces cleaned up so far whose name starts with `prefix`. */
  async leftovers(prefix = ''): Promise<string[]> {
    const left: string[] = [];
    for (const namespace of this.namespaces) {
      if (namespace.startsWith(prefix)) left.push(...(await keysOf(this.connection(), namespace)));
    }
    return left;
  }

  /** Closes every transport it created (idempotent) and its admin connection. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.transports].map((t) => t.close()));
    this.admin?.disconnect();
    this.admin = undefined;
  }
}

/** Records ids and resolves waits when a count is reached — no polling, no sleeps. */
export class IdSet {
  readonly counts = new Map<string, number>();
  private readonly waiters = new Set<{ n: number; resolve: () => void }>();
  private readonly idWaiters = new Set<{ id: string; resolve: () => void }>();
  total = 0;

  add(id: string): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    this.total++;
    for (const w of this.waiters) {
      if (this.counts.size >= w.n) {
        this.waiters.delete(w);
        w.resolve();
      }
    }
    for (const w of this.idWaiters) {
      if (w.id === id) {
        this.idWaiters.delete(w);
        w.resolve();
      }
    }
  }

  /** Resolves once `id` was added; rejects after `timeoutMs`. */
  waitForId(id: string, timeoutMs: number, label: string): Promise<void> {
    if (this.counts.has(id)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = {
        id,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.idWaiters.delete(w);
        reject(new Error(`${label}: ${id} not seen within ${timeoutMs} ms`));
      }, timeoutMs);
      this.idWaiters.add(w);
    });
  }

  get size(): number {
    return this.counts.size;
  }

  /** Resolves once `n` distinct ids were added; rejects after `timeoutMs`. */
  waitFor(n: number, timeoutMs: number, label: string): Promise<void> {
    if (this.counts.size >= n) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = {
        n,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(new Error(`${label}: ${this.counts.size}/${n} distinct ids within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.add(w);
    });
  }
}

/** Resolves with the first value `emitter` emits for `event` that satisfies `match`; rejects after `timeoutMs`. */
export function once<T extends unknown[]>(
  on: (listener: (...args: T) => void) => () => void,
  match: (...args: T) => boolean,
  timeoutMs: number,
  label: string,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label}`));
    }, timeoutMs);
    const off = on((...args) => {
      if (!match(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}
