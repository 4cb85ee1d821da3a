import { randomUUID } from 'node:crypto';
import { type ClaimResult, ConfigError, type IdempotencyStore, LeaseLostError, readBusbarEnv, redact } from '@busbar/core';
import { type ChainableCommander, Redis, type RedisOptions } from 'ioredis';
import { Script } from './scripts.js';

/** Options of {@link RedisIdempotencyStore}. */
export interface RedisIdempotencyStoreOptions {
  /**
   * An ioredis client to use (not closed by the store). Atomic completions run on up to
   * `maxConnections` duplicates of it (`WATCH` is per connection).
   * @defaultValue a client of `url`
   */
  client?: Redis;
  /** Used when no `client` is given. @defaultValue `BUSBAR_REDIS_URL`, else `redis://localhost:6379` */
  url?: string;
  /** ioredis options of the store's own client (TLS, ACL …). @defaultValue `{}` */
  redisOptions?: RedisOptions;
  /** Key prefix; a key is `<prefix>:{<scope>}:<key>`. @defaultValue 'busbar:idem' */
  keyPrefix?: string;
  /** Connections used at once for `complete` (each runs one WATCH/MULTI/EXEC). @defaultValue 4 */
  maxConnections?: number;
}

const DONE = 'done';

const CLAIM = new Script(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == '${DONE}' then return 2 end
return 3
`);
const RELEASE = new Script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`);
const EXTEND = new Script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`);

/**
 * {@link IdempotencyStore} on Redis, usable with any transport. A key is a string holding either a
 * claim token (in progress, expiring after the lease) or `done` (completed, expiring after the TTL).
 *
 * - `claim`: `SET key token NX PX lease` (one Lua script, which also tells "completed" from "in progress").
 * - `complete`: `WATCH key`, check the token still holds, then `MULTI`, the handler's effects (ioredis
 *   commands queued on the `tx` it receives), `SET key done PX ttl`, `EXEC` — the effects commit
 *   exactly when the mark does; a lost lease (`EXEC` aborted or token gone) rejects with
 *   `LeaseLostError` and applies nothing.
 * - `release` / `extend`: compare-and-delete / compare-and-`PEXPIRE` scripts.
 *
 * Effects must only queue commands on `tx` (`tx.incr('k')`), on keys of the same slot as the
 * idempotency key when you use Redis Cluster. Redis does not roll back a transaction whose queued
 * command fails at run time (e.g. `WRONGTYPE`): the mark is then set, and `complete` rejects to
 * report it.
 */
export class RedisIdempotencyStore implements IdempotencyStore<ChainableCommander> {
  private readonly client: Redis;
  private readonly owned: boolean;
  private readonly prefix: string;
  private readonly maxConnections: number;
  private readonly idle: Redis[] = [];
  private readonly all = new Set<Redis>();
  private readonly waiters: ((c: Redis) => void)[] = [];

  constructor(options: RedisIdempotencyStoreOptions = {}) {
    this.prefix = options.keyPrefix ?? 'busbar:idem';
    this.maxConnections = options.maxConnections ?? 4;
    if (!Number.isInteger(this.maxConnections) || this.maxConnections < 1) throw new ConfigError('maxConnections must be an integer ≥ 1');
    if (options.client) {
      this.client = options.client;
      this.owned = false;
    } else {
      const url = options.url ?? readBusbarEnv().redisUrl;
      if (!/^rediss?:\/\//i.test(url)) throw new ConfigError(`Redis URL must start with redis:// or rediss://, got "${redact(url)}"`);
      this.client = new Redis(url, { ...options.redisOptions });
      this.client.on('error', () => {});
      this.owned = true;
    }
  }

  /** The Redis key of (scope, key). */
  keyOf(scope: string, key: string): string {
    return `${this.prefix}:{${scope}}:${key}`;
  }

  async claim(scope: string, key: string, leaseMs: number): Promise<ClaimResult> {
    const token = `t:${randomUUID()}`;
    const r = Number(await CLAIM.run(this.client, [this.keyOf(scope, key)], [token, Math.max(1, Math.round(leaseMs))]));
    if (r === 1) return { status: 'acquired', token };
    return r === 2 ? { status: 'completed' } : { status: 'in-progress' };
  }

  async complete(
    scope: string,
    key: string,
    token: string,
    ttlMs: number,
    effects: readonly ((tx: ChainableCommander) => void)[],
  ): Promise<void> {
    const k = this.keyOf(scope, key);
    const conn = await this.acquire();
    let healthy = true;
    try {
      await conn.watch(k);
      if ((await conn.get(k)) !== token) {
        await conn.unwatch();
        throw new LeaseLostError(scope, key);
      }
      const tx = conn.multi();
      try {
        for (const effect of effects) effect(tx);
      } catch (error) {
        tx.discard();
        await conn.unwatch();
        throw error;
      }
      tx.set(k, DONE, 'PX', Math.max(1, Math.round(ttlMs)));
      const replies = await tx.exec();
      if (replies === null) throw new LeaseLostError(scope, key);
      const failed = replies.find(([error]) => error);
      if (failed?.[0]) throw new Error(`an effect failed inside the completion transaction (the mark was set): ${failed[0].message}`);
    } catch (error) {
      if (!(error instanceof LeaseLostError) && !(error instanceof Error && error.message.startsWith('an effect failed'))) healthy = false;
      throw error;
    } finally {
      this.giveBack(conn, healthy);
    }
  }

  async release(scope: string, key: string, token: string): Promise<void> {
    await RELEASE.run(this.client, [this.keyOf(scope, key)], [token]);
  }

  async extend(scope: string, key: string, token: string, leaseMs: number): Promise<void> {
    const r = Number(await EXTEND.run(this.client, [this.keyOf(scope, key)], [token, Math.max(1, Math.round(leaseMs))]));
    if (r !== 1) throw new LeaseLostError(scope, key);
  }

  /** Closes the store's connections (and its client, if it created it). */
  async close(): Promise<void> {
    for (const c of this.all) c.disconnect();
    this.all.clear();
    this.idle.length = 0;
    if (this.owned) await this.client.quit().catch(() => this.client.disconnect());
  }

  private async acquire(): Promise<Redis> {
    const idle = this.idle.pop();
    if (idle) return idle;
    if (this.all.size < this.maxConnections) {
      const conn = this.client.duplicate({ enableOfflineQueue: true });
      conn.on('error', () => {});
      this.all.add(conn);
      return conn;
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private giveBack(conn: Redis, healthy: boolean): void {
    if (!healthy) {
      this.all.delete(conn);
      conn.disconnect();
      if (this.waiters.length > 0) void this.acquire().then((c) => this.giveBack(c, true));
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter) waiter(conn);
    else this.idle.push(conn);
  }
}
