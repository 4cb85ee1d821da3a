/**
 * Shared pieces of the Redis Streams integration tests: the raw client (plain ioredis, below the
 * bus) and namespace cleanup by SCAN.
 */
import type { WireMessage } from '@busbar/core';
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
export async function rawObserve(url: string, topic: string) {
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

/** Deletes every key of a namespace: its streams and side keys, and its idempotency keys. */
export async function deleteNamespace(redis: Redis, namespace: string): Promise<number> {
  let deleted = 0;
  for (const pattern of [`${PREFIX}:{${namespace}*`, `${PREFIX}:idem:{${namespace}*`]) {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 500);
      cursor = next;
      if (keys.length > 0) deleted += await redis.unlink(...keys);
    } while (cursor !== '0');
  }
  return deleted;
}

/** Records ids and resolves waits when a count is reached — no polling, no sleeps. */
export class IdSet {
  readonly counts = new Map<string, number>();
  private readonly waiters = new Set<{ n: number; resolve: () => void }>();
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
