/**
 * Redis-specific fault tests on the real Redis: a consumer process killed with SIGKILL mid-handler,
 * a persistent redis-server killed and restarted, and the consumer connection killed with
 * CLIENT KILL mid-stream. Every wait is event-driven and bounded.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { type ConnectionState, defineEvent, EventBus, OutcomeSpy } from '@busbar/core';
import { RedisIdempotencyStore, RedisStreamsTransport } from '@busbar/redis-streams';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { brokerForTests } from '../brokers/resolve.js';
import { deleteNamespace, IdSet, once, streamOf } from './kit.js';

const broker = await brokerForTests('redis');
const FAST = { initialMs: 50, maxMs: 200, minMs: 20 };
const ns = (tag: string) => `rs${tag}${randomUUID().replaceAll('-', '').slice(0, 10)}`;

const Job = defineEvent({ type: 'crash.job', schema: z.object({ n: z.number(), slow: z.boolean() }) });
const Tick = defineEvent({ type: 'fault.tick', schema: z.object({ n: z.number() }) });

/** Lines of a child's stdout, parsed as JSON, as an event source. */
function jsonLines(child: ChildProcess) {
  const listeners = new Set<(o: Record<string, unknown>) => void>();
  const seen: Record<string, unknown>[] = [];
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    seen.push(o);
    for (const l of listeners) l(o);
  });
  return {
    seen,
    on: (l: (o: Record<string, unknown>) => void) => {
      listeners.add(l);
      return () => void listeners.delete(l);
    },
  };
}

/** Resolves once `child` exited. */
function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

describe.skipIf(!broker)('redis-streams faults', () => {
  const url = broker?.url ?? '';
  const admin = new Redis(url);
  admin.on('error', () => {});
  const children = new Set<ChildProcess>();
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL'); // in case a case died before its finally
    admin.disconnect();
    await broker?.stop();
  });

  it('a consumer process killed with SIGKILL mid-handler: its messages are reclaimed and handled once', async () => {
    const namespace = ns('k');
    const group = 'workers';
    const child = spawn(process.execPath, [fileURLToPath(new URL('./fixtures/consumer.mjs', import.meta.url))], {
      env: { ...process.env, REDIS_URL: url, NAMESPACE: namespace, GROUP: group, CONSUMER: `child-${namespace}` },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.add(child);
    const store = new RedisIdempotencyStore({ client: admin });
    const bus = new EventBus({
      transport: new RedisStreamsTransport({ url, claimIdleMs: 1_000, claimIntervalMs: 200 }),
      namespace,
      idempotency: { store, leaseMs: 5_000 },
      retry: { maxAttempts: 20, backoff: FAST },
    });
    try {
      const lines = jsonLines(child);
      await once(lines.on, (o) => o.event === 'ready', 15_000, 'child ready');
      const slow = new Set<string>();
      const fast = new Set<string>();
      for (let n = 0; n < 10; n++) {
        const { id } = await bus.publish(Job, { n, slow: n % 3 !== 0 });
        (n % 3 !== 0 ? slow : fast).add(id);
      }
      // The child completes the fast ones and hangs in the slow ones: wait for exactly that state.
      const childState = () => ({
        started: new Set(lines.seen.filter((o) => o.event === 'start' && o.slow === true).map((o) => o.id)),
        acked: new Set(lines.seen.filter((o) => o.event === 'outcome' && o.status === 'acked').map((o) => o.id)),
      });
      const ready = () => {
        const s = childState();
        return [...slow].every((id) => s.started.has(id)) && [...fast].every((id) => s.acked.has(id));
      };
      if (!ready()) await once(lines.on, () => ready(), 15_000, 'child holding the slow jobs');
      child.kill('SIGKILL');
      await exited(child);

      const handled = new IdSet();
      const attempts = new Map<string, number>();
      const spy = new OutcomeSpy(bus);
      await bus.subscribe(Job, { group, concurrency: 10 }, (_data, ctx) => {
        handled.add(ctx.id);
        attempts.set(ctx.id, ctx.attempt);
        ctx.commitWithCompletion<ReturnType<Redis['multi']>>((tx) => tx.incr(`${namespace}:effects`));
      });
      await Promise.all([...slow].map((id) => spy.waitFor(id, { status: 'acked', timeoutMs: 20_000 })));
      spy.dispose();

      expect(new Set(handled.counts.keys())).toEqual(slow); // fast ones were acked by the child: not again
      expect([...handled.counts.values()].every((c) => c === 1)).toBe(true);
      for (const id of slow) expect(attempts.get(id)).toBeGreaterThanOrEqual(2); // Redis's delivery count
      expect(Number(await admin.get(`${namespace}:effects`))).toBe(10); // 4 by the child + 6 reclaimed, once each
      expect((await admin.xpending(streamOf(`${namespace}.${Job.type}`), group))[0]).toBe(0);
    } finally {
      child.kill('SIGKILL');
      await bus.close();
      await admin.del(`${namespace}:effects`);
      await deleteNamespace(admin, namespace);
    }
  });

  it('a persistent redis-server killed with SIGKILL and restarted: nothing acknowledged-published is lost', async () => {
    const namespace = ns('p');
    const port = 6390 + Math.floor(Math.random() * 500);
    const dir = mkdtempSync(join(tmpdir(), 'busbar-redis-'));
    const start = async () => {
      const server = spawn(
        'redis-server',
        ['--port', String(port), '--bind', '127.0.0.1', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir, '--save', ''],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      children.add(server);
      const ready = new Promise<void>((resolve, reject) => {
        createInterface({ input: server.stdout as NodeJS.ReadableStream }).on('line', (l) => {
          if (l.includes('Ready to accept connections')) resolve();
        });
        server.once('exit', (code) => reject(new Error(`redis-server exited early (${code})`)));
      });
      await ready;
      return server;
    };
    let server = await start();
    const serverUrl = `redis://127.0.0.1:${port}`;
    const bus = new EventBus({
      transport: new RedisStreamsTransport({ url: serverUrl, reconnect: { initialMs: 20, maxMs: 300 } }),
      namespace,
      breaker: false,
      retry: { backoff: FAST },
    });
    const states: ConnectionState[] = [];
    bus.on('connection', (s) => states.push(s));
    try {
      const received = new IdSet();
      await bus.subscribe(Tick, { group: 'g', concurrency: 8 }, (_d, ctx) => {
        received.add(ctx.id);
      });
      const N = 300;
      const published = await Promise.all(Array.from({ length: N }, (_, n) => bus.publish(Tick, { n })));
      server.kill('SIGKILL');
      await exited(server);
      if (!states.includes('reconnecting')) {
        await once(
          (l) => {
            bus.on('connection', l);
            return () => void bus.off('connection', l);
          },
          (s) => s === 'reconnecting',
          5_000,
          'reconnecting',
        );
      }
      await expect(bus.publish(Tick, { n: -1 }, { timeoutMs: 2_000 })).rejects.toMatchObject({ code: 'BROKER_UNAVAILABLE' });

      server = await start();
      await received.waitFor(N, 20_000, 'deliveries after the restart');
      expect(new Set(received.counts.keys())).toEqual(new Set(published.map((p) => p.id)));
      const check = new Redis(serverUrl);
      try {
        expect(await check.xlen(streamOf(`${namespace}.${Tick.type}`))).toBe(N);
      } finally {
        check.disconnect();
      }
      expect(bus.health().transport.state).toBe('connected');
      const after = await bus.publish(Tick, { n: N });
      await received.waitFor(N + 1, 10_000, 'a publish after the restart');
      expect(received.counts.has(after.id)).toBe(true);
    } finally {
      try {
        await Promise.race([bus.close(), new Promise((r) => setTimeout(r, 15_000))]);
      } finally {
        server.kill('SIGKILL');
        await exited(server);
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });

  it('CLIENT KILL of the consumer connection mid-stream: consumption resumes and nothing is lost', async () => {
    const namespace = ns('c');
    const consumer = `ck-${namespace}`;
    const bus = new EventBus({
      transport: new RedisStreamsTransport({ url, consumerName: consumer, reconnect: { initialMs: 20, maxMs: 300 } }),
      namespace,
      retry: { backoff: FAST },
    });
    const kill = async () => {
      const list = (await admin.call('CLIENT', 'LIST')) as string;
      const line = list.split('\n').find((l) => l.includes(` name=busbar:sub:${consumer} `));
      const id = line?.match(/^id=(\d+)/)?.[1];
      expect(id, 'the consumer connection is visible in CLIENT LIST').toBeDefined();
      await admin.call('CLIENT', 'KILL', 'ID', id as string);
    };
    try {
      const runs = new IdSet();
      const received = new IdSet(); // acknowledged
      bus.on('outcome', (info, outcome) => {
        if (outcome.status === 'acked') received.add(info.id);
      });
      await bus.subscribe(Tick, { group: 'g', concurrency: 4 }, async (_d, ctx) => {
        await admin.incr(`${namespace}:work`); // a real round trip per message
        runs.add(ctx.id);
      });
      const ids: string[] = [];
      const publish = async (from: number, n: number) => {
        const r = await Promise.all(Array.from({ length: n }, (_, i) => bus.publish(Tick, { n: from + i })));
        ids.push(...r.map((x) => x.id));
      };
      await publish(0, 100);
      await received.waitFor(50, 15_000, 'first deliveries');
      await kill();
      await publish(100, 100);
      await received.waitFor(150, 15_000, 'deliveries after the first kill');
      await kill();
      await publish(200, 100);
      await received.waitFor(300, 15_000, 'deliveries after the second kill');
      expect(new Set(received.counts.keys())).toEqual(new Set(ids));
      expect(runs.total).toBe(300); // and none handled twice
      expect((await admin.xpending(streamOf(`${namespace}.${Tick.type}`), 'g'))[0]).toBe(0);
    } finally {
      await bus.close();
      await admin.del(`${namespace}:work`);
      await deleteNamespace(admin, namespace);
    }
  });
});
