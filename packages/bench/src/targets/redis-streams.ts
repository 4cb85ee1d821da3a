/**
 * Redis Streams: Busbar's `RedisStreamsTransport` against ioredis used by hand — XADD awaited,
 * XADD pipelined, and an XREADGROUP + batched XACK loop — and BullMQ as the library people reach
 * for (a job queue, not like-for-like).
 */
import { spawnSync } from 'node:child_process';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { type Ceiling, type Consumer, type Impl, publishOnly, type Target } from '../impl.js';
import { ceHeaders, type Payload } from '../payload.js';
import { versionOf } from '../versions.js';
import { busbarOr, loadTransport } from './common.js';

/** Deletes every key whose name contains `fragment` (SCAN, not KEYS). */
async function deleteKeysContaining(url: string, fragment: string): Promise<void> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 2 });
  await r.connect();
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `*${fragment}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}

/** ioredis by hand: XADD (awaited / pipelined), XREADGROUP COUNT=concurrency + one XACK per batch. */
class RawRedis implements Impl {
  readonly description =
    'ioredis: XADD awaited / pipelined (MULTI-less pipeline of 500); XREADGROUP COUNT=concurrency, handlers in parallel, one XACK per batch';
  private pub: Redis | undefined;
  private readonly key: string;

  constructor(
    readonly label: string,
    private readonly url: string,
    runId: string,
    private readonly withHeaders = false,
  ) {
    this.key = `bench-${runId}:raw:${label}`;
  }

  private fields(p: Payload): string[] {
    const f = ['d', JSON.stringify(p)];
    if (this.withHeaders) for (const [k, v] of Object.entries(ceHeaders())) f.push(k, v);
    return f;
  }

  async open(): Promise<void> {
    this.pub = new Redis(this.url, { maxRetriesPerRequest: 2 });
    await this.pub.xgroup('CREATE', this.key, 'g', '$', 'MKSTREAM');
  }

  async publish(p: Payload): Promise<void> {
    await (this.pub as Redis).xadd(this.key, '*', ...this.fields(p));
  }

  async publishBatch(ps: Payload[]): Promise<void> {
    const pipe = (this.pub as Redis).pipeline();
    for (const p of ps) pipe.xadd(this.key, '*', ...this.fields(p));
    const res = await pipe.exec();
    for (const [err] of res ?? []) if (err) throw err;
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    // Messages of the publish-only scenarios are not this consumer's: start after them.
    await (this.pub as Redis).xtrim(this.key, 'MAXLEN', 0);
    await (this.pub as Redis).xgroup('SETID', this.key, 'g', '$');
    const sub = new Redis(this.url, { maxRetriesPerRequest: 2 });
    let running = true;
    const loop = (async () => {
      while (running) {
        const res = (await sub.xreadgroup('GROUP', 'g', 'c1', 'COUNT', concurrency, 'BLOCK', 100, 'STREAMS', this.key, '>')) as
          | [string, [string, string[]][]][]
          | null;
        const entries = res?.[0]?.[1] ?? [];
        if (entries.length === 0) continue;
        const ids: string[] = [];
        await Promise.all(
          entries.map(async ([id, fields]) => {
            await handler(JSON.parse(fields[1] as string) as Payload);
            ids.push(id);
          }),
        );
        await sub.xack(this.key, 'g', ...ids);
        for (let i = 0; i < ids.length; i++) settled();
      }
    })();
    return {
      stop: async () => {
        running = false;
        await loop;
        sub.disconnect();
      },
    };
  }

  async close(): Promise<void> {
    try {
      await this.pub?.del(this.key);
    } finally {
      this.pub?.disconnect();
    }
  }
}

/** BullMQ: Queue.add (awaited) / addBulk, Worker with `concurrency`. A job queue: not like-for-like. */
class BullImpl implements Impl {
  readonly label = 'bullmq';
  readonly peer = true;
  readonly description = 'BullMQ Queue.add / addBulk and a Worker (a job queue with job state: not like-for-like)';
  readonly caveat = 'a job queue, not an event bus: per-job state (a hash per job, several round trips per job)';
  private queue: Queue | undefined;
  private readonly name: string;

  constructor(
    private readonly url: string,
    runId: string,
  ) {
    this.name = `bench-${runId}-bull`;
  }

  private conn() {
    const u = new URL(this.url);
    return {
      host: u.hostname,
      port: Number(u.port || 6379),
      ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
      maxRetriesPerRequest: null,
    };
  }

  async open(): Promise<void> {
    this.queue = new Queue(this.name, { connection: this.conn(), defaultJobOptions: { removeOnComplete: true, removeOnFail: true } });
    await this.queue.waitUntilReady();
  }

  async publish(p: Payload): Promise<void> {
    await (this.queue as Queue).add('m', p);
  }

  async publishBatch(ps: Payload[]): Promise<void> {
    await (this.queue as Queue).addBulk(ps.map((data) => ({ name: 'm', data })));
  }

  async consume(concurrency: number, handler: (p: Payload) => Promise<void>, settled: () => void): Promise<Consumer> {
    await (this.queue as Queue).drain(true); // jobs of the publish-only scenarios are not this consumer's
    const worker = new Worker(this.name, async (job) => handler(job.data as Payload), {
      connection: this.conn(),
      concurrency,
      autorun: true,
    });
    worker.on('completed', () => settled());
    await worker.waitUntilReady();
    return { stop: () => worker.close() };
  }

  async close(): Promise<void> {
    try {
      await this.queue?.obliterate({ force: true });
    } finally {
      await this.queue?.close();
    }
  }
}

/** Builds the Redis Streams target. */
export async function createTarget(url: string, via: string, runId: string, full: boolean): Promise<Target> {
  const ctor = await loadTransport<{ url: string }>('@busbar/redis-streams', 'RedisStreamsTransport');
  const probe = new Redis(url, { maxRetriesPerRequest: 2 });
  const info = await probe.info('server');
  probe.disconnect();
  const redisVersion = /redis_version:(\S+)/.exec(info)?.[1] ?? '?';
  const u = new URL(url);
  return {
    name: 'redis-streams',
    broker: `Redis ${redisVersion} at ${u.hostname}:${u.port || 6379} via ${via}`,
    versions: { redis: redisVersion, bullmq: versionOf('bullmq') },
    counts: full
      ? { s1: 20_000, s2: 100_000, s3: 100_000, s4Seconds: 10, s6: 2_000 }
      : { s1: 5_000, s2: 30_000, s3: 30_000, s4Seconds: 2, s6: 1_000 },
    busbar: (bytes) =>
      busbarOr(
        ctor,
        { url },
        `bench-${runId}-r${bytes}`,
        (ns) => deleteKeysContaining(url, ns),
        'Busbar EventBus over RedisStreamsTransport (XADD per batch, XREADGROUP, XACK)',
      ),
    raw: (instance, bytes) => new RawRedis(instance === 1 ? 'raw' : 'raw-2', url, `${runId}-${bytes}`),
    peers: (bytes) => [
      publishOnly(
        'raw+ce-headers',
        'ioredis as raw, plus the 9 CloudEvents headers as stream fields (diagnostic)',
        new RawRedis('rawh', url, `${runId}-${bytes}`, true),
      ),
      new BullImpl(url, runId),
    ],
    ceiling: async (id) => {
      const key = `bench-${id}:ceiling`;
      const value = 'x'.repeat(256);
      const args = ['-h', u.hostname, '-p', u.port || '6379', '-n', '200000', '-P', '500', '-c', '4', '-q', 'XADD', key, '*', 'd', value];
      const r = spawnSync('redis-benchmark', args, { encoding: 'utf8', timeout: 120_000 });
      await deleteKeysContaining(url, `bench-${id}:ceiling`);
      if (r.status !== 0) return undefined;
      const m = /([\d.]+) requests per second/.exec(r.stdout);
      if (!m) return undefined;
      return {
        tool: 'redis-benchmark',
        what: 'XADD of 256 B, pipeline 500, 4 connections, 200k',
        msgPerSec: Number(m[1]),
        busbarScenario: 's2',
      } satisfies Ceiling;
    },
    dispose: async () => {},
  };
}
