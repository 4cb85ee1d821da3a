/**
 * First contact at run time (issue 14) on the real Redis: `ready()` resolves only once Redis
 * answered (not on a dead port, not on a port where something else listens); refused credentials
 * and permissions are final (`AuthenticationError`, state `'failed'`, no reconnect); a connection
 * killed by the server during `subscribe` never surfaces a raw ioredis error; a black-holed link
 * leaves `'connected'` within 15 s with the default settings and publishes then fail fast; errors
 * name the redacted URL and the cause; after `close()` nothing keeps the process alive.
 *
 * The test ACL users are created here (`busbar-test-<random>`) and deleted afterwards; the default
 * user is never touched. The link is broken through a TCP proxy of our own (`proxy.ts`) and by
 * `CLIENT KILL` on the real server — no mocks.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AuthenticationError, BrokerUnavailableError, type ConnectionState, defineEvent, EventBus } from '@busbar/core';
import { RedisStreamsTransport } from '@busbar/redis-streams';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { brokerForTests, canConnect } from '../brokers/resolve.js';
import { deleteNamespace, IdSet, once } from './kit.js';
import { type ProxyLink, RedisProxy } from './proxy.js';

const broker = await brokerForTests('redis');
const ns = (tag: string) => `rs${tag}${randomUUID().replaceAll('-', '').slice(0, 10)}`;
const Tick = defineEvent({ type: 'contact.tick', schema: z.object({ n: z.number() }) });
const FAST = { initialMs: 20, maxMs: 100 };

/** A rejection of `p` (fails the test when `p` resolves). */
async function rejection(p: Promise<unknown>): Promise<Error & { code?: string; retryable?: boolean }> {
  try {
    await p;
  } catch (error) {
    return error as Error & { code?: string; retryable?: boolean };
  }
  throw new Error('expected a rejection, got a resolution');
}

/** Listens to a bus's connection events. */
const onConnection = (bus: EventBus) => (l: (state: ConnectionState) => void) => {
  bus.on('connection', l);
  return () => void bus.off('connection', l);
};

/** A TCP server that is not Redis: greets every connection like RabbitMQ (`AMQP` + version) and closes it. */
async function notRedis(): Promise<{ port: number; server: Server }> {
  const server = createServer((socket) => {
    socket.on('error', () => {});
    socket.end(Buffer.from([0x41, 0x4d, 0x51, 0x50, 0, 0, 9, 1]));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return { port: address.port, server };
}

describe.skipIf(!broker)('redis-streams: first contact', () => {
  const url = broker?.url ?? '';
  const target = new URL(url);
  const redisHost = target.hostname;
  const redisPort = Number(target.port || 6379);
  const admin = new Redis(url);
  admin.on('error', () => {});
  const users = new Set<string>();

  /** Creates an ACL user of this test (deleted in afterAll). */
  const aclUser = async (rules: string[]): Promise<{ name: string; password: string }> => {
    const name = `busbar-test-${randomUUID().slice(0, 8)}`;
    const password = `pw-${randomUUID()}`;
    users.add(name);
    await admin.call('ACL', 'SETUSER', name, 'on', `>${password}`, ...rules);
    return { name, password };
  };
  const urlFor = (user: string, password: string, port = redisPort) =>
    `redis://${encodeURIComponent(user)}:${encodeURIComponent(password)}@${redisHost}:${port}`;

  /** `CLIENT KILL ID` of the server-side client of a proxied link (looked up by its address). */
  const killLink = async (link: ProxyLink): Promise<void> => {
    const list = (await admin.call('CLIENT', 'LIST')) as string;
    const line = list.split('\n').find((l) => l.includes(` addr=${link.addr} `));
    const id = line?.match(/^id=(\d+)/)?.[1];
    if (id === undefined) throw new Error(`no client at ${link.addr} in CLIENT LIST`);
    expect(Number(await admin.call('CLIENT', 'KILL', 'ID', id))).toBe(1);
  };

  afterAll(async () => {
    for (const name of users) await admin.call('ACL', 'DELUSER', name).catch(() => {});
    admin.disconnect();
    await broker?.stop();
  });

  it('ready() rejects on a dead port and where something else listens (naming endpoint and cause); resolves on Redis', async () => {
    // Nothing listens on 6999: ECONNREFUSED, named with the endpoint (password redacted).
    const dead = new EventBus({ transport: new RedisStreamsTransport({ url: 'redis://app:s3cret@127.0.0.1:6999' }) });
    const deadStates: ConnectionState[] = [];
    dead.on('connection', (s) => deadStates.push(s));
    try {
      const started = Date.now();
      const error = await rejection(dead.ready({ timeoutMs: 1_500 }));
      expect(Date.now() - started).toBeGreaterThanOrEqual(1_400);
      expect(error).toBeInstanceOf(BrokerUnavailableError);
      expect(error.message).toContain('redis://app:***@127.0.0.1:6999');
      expect(error.message).toContain('ECONNREFUSED 127.0.0.1:6999');
      expect(error.message).not.toContain('s3cret');
      const health = dead.health().transport;
      expect(health.state).toBe('reconnecting');
      expect(health.cause?.message).toContain('ECONNREFUSED 127.0.0.1:6999');
      expect(deadStates).not.toContain('connected');
      // A publish never sent names where and why, and is not a PublishTimeoutError.
      const published = await rejection(dead.publish(Tick, { n: 1 }, { timeoutMs: 1_000 }));
      expect(published).toMatchObject({ code: 'BROKER_UNAVAILABLE' });
      expect(published.message).toContain('redis://app:***@127.0.0.1:6999');
      expect(published.message).toContain('ECONNREFUSED 127.0.0.1:6999');
      expect(published.message).not.toContain('s3cret');
    } finally {
      await dead.close();
    }

    // A Redis URL pointing at a port where something else answers — RabbitMQ's, when it runs here;
    // else a server of our own that greets like RabbitMQ: never 'connected'.
    const rabbit = (await canConnect('127.0.0.1', 5672)) ? undefined : await notRedis();
    const port = rabbit?.port ?? 5672;
    const wrong = new EventBus({ transport: new RedisStreamsTransport({ url: `redis://127.0.0.1:${port}`, reconnect: FAST }) });
    const wrongStates: ConnectionState[] = [];
    wrong.on('connection', (s) => wrongStates.push(s));
    try {
      const error = await rejection(wrong.ready({ timeoutMs: 1_500 }));
      expect(error).toBeInstanceOf(BrokerUnavailableError);
      expect(error.message).toContain(`redis://127.0.0.1:${port}`);
      expect(error.message).toMatch(/last error: .+/);
      expect(wrongStates).not.toContain('connected');
      expect(wrong.health().transport.state).not.toBe('connected');
    } finally {
      await wrong.close();
      rabbit?.server.close();
    }

    // The real Redis: resolves, and the transport says where it is connected.
    const transport = new RedisStreamsTransport({ url });
    const good = new EventBus({ transport });
    try {
      await good.ready({ timeoutMs: 1_500 });
      expect(good.health().transport).toMatchObject({ state: 'connected' });
      expect(good.health().transport.cause).toBeUndefined();
      expect(transport.endpoint).toBe(url);
    } finally {
      await good.close();
    }
  });

  it('a wrong password (WRONGPASS) is final: AuthenticationError at once, state failed, no reconnect, publish and subscribe reject with it', async () => {
    const user = await aclUser(['~*', '&*', '+@all']);
    const bus = new EventBus({
      transport: new RedisStreamsTransport({ url: urlFor(user.name, 'wrong-password'), reconnect: FAST }),
      namespace: ns('a'),
    });
    const states: ConnectionState[] = [];
    bus.on('connection', (s) => states.push(s));
    try {
      const started = Date.now();
      const error = await rejection(bus.ready({ timeoutMs: 5_000 }));
      expect(Date.now() - started).toBeLessThan(2_000); // at once, not after the timeout
      expect(error).toBeInstanceOf(AuthenticationError);
      expect(error).toMatchObject({ code: 'AUTHENTICATION', retryable: false });
      expect(error.message).toContain('WRONGPASS');
      expect(error.message).toContain(`redis://${user.name}:***@`);
      expect(error.message).not.toContain('wrong-password');
      expect(JSON.stringify(error.cause ?? {})).not.toContain('wrong-password');
      const health = bus.health();
      expect(health.transport.state).toBe('failed');
      expect(health.transport.cause).toBe(error);
      expect(health.status).toBe('down');
      // Nothing reconnects: the server sees no further attempt of this user (ACL LOG counts
      // failed AUTHs per user) while a reconnect loop at 20–100 ms would make several.
      const attempts = async () => {
        const log = (await admin.call('ACL', 'LOG')) as unknown[][];
        let n = 0;
        for (const entry of log) {
          const o: Record<string, unknown> = {};
          for (let i = 0; i + 1 < entry.length; i += 2) o[String(entry[i])] = entry[i + 1];
          if (o.username === user.name && o.reason === 'auth') n += Number(o.count);
        }
        return n;
      };
      const before = await attempts();
      expect(before).toBeGreaterThanOrEqual(1);
      await new Promise((r) => setTimeout(r, 1_000)); // observing absence: nothing to await
      expect(await attempts()).toBe(before);
      expect(states.filter((s) => s === 'reconnecting' || s === 'connecting').length).toBeLessThanOrEqual(1);
      await expect(bus.ready()).rejects.toBe(error);
      await expect(bus.publish(Tick, { n: 1 })).rejects.toMatchObject({ code: 'AUTHENTICATION' });
      await expect(bus.subscribe(Tick, { group: 'g' }, () => {})).rejects.toMatchObject({ code: 'AUTHENTICATION' });
    } finally {
      await bus.close();
    }
  });

  it('a user without permissions (NOPERM) is final too; a key outside its permissions fails that publish only', async () => {
    const none = await aclUser(['~*', '-@all']);
    const bus = new EventBus({ transport: new RedisStreamsTransport({ url: urlFor(none.name, none.password), reconnect: FAST }) });
    try {
      const error = await rejection(bus.ready({ timeoutMs: 5_000 }));
      expect(error).toMatchObject({ name: 'AuthenticationError', code: 'AUTHENTICATION', retryable: false });
      expect(error.message).toContain('NOPERM');
      expect(bus.health().transport.state).toBe('failed');
      await expect(bus.publish(Tick, { n: 1 })).rejects.toMatchObject({ code: 'AUTHENTICATION' });
    } finally {
      await bus.close();
    }

    // Every command, but only keys of another prefix: connected; a publish to a busbar key is refused.
    const keys = await aclUser(['~elsewhere:*', '+@all']);
    const partial = new EventBus({ transport: new RedisStreamsTransport({ url: urlFor(keys.name, keys.password) }), breaker: false });
    try {
      await partial.ready({ timeoutMs: 5_000 });
      const error = await rejection(partial.publish(Tick, { n: 1 }));
      expect(error).toMatchObject({ code: 'AUTHENTICATION', retryable: false });
      expect(error.message).toContain('NOPERM');
      expect(partial.health().transport.state).toBe('connected');
    } finally {
      await partial.close();
    }
  });

  it('no password where the server requires one (NOAUTH) is final: a redis-server of our own with requirepass', async () => {
    const port = 7390 + Math.floor(Math.random() * 500);
    const server = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--requirepass', `pw-${randomUUID()}`, '--save', '', '--appendonly', 'no'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
    try {
      await new Promise<void>((resolve, reject) => {
        createInterface({ input: server.stdout }).on('line', (l) => {
          if (l.includes('Ready to accept connections')) resolve();
        });
        server.once('exit', (code) => reject(new Error(`redis-server exited early (${code})`)));
      });
      const bus = new EventBus({ transport: new RedisStreamsTransport({ url: `redis://127.0.0.1:${port}`, reconnect: FAST }) });
      try {
        const error = await rejection(bus.ready({ timeoutMs: 5_000 }));
        expect(error).toMatchObject({ name: 'AuthenticationError', code: 'AUTHENTICATION', retryable: false });
        expect(error.message).toContain('NOAUTH');
        expect(error.message).toContain(`redis://127.0.0.1:${port}`);
        expect(bus.health().transport.state).toBe('failed');
      } finally {
        await bus.close();
      }
    } finally {
      server.kill('SIGKILL');
      await exited;
    }
  });

  it('subscribe never rejects with a raw ioredis error: connections killed by the server during subscribe are resumed, or a BusError', async () => {
    const proxy = await RedisProxy.start(redisHost, redisPort);
    const namespace = ns('k');
    const bus = new EventBus({
      transport: new RedisStreamsTransport({ url: `redis://127.0.0.1:${proxy.port}`, reconnect: FAST, subscribeTimeoutMs: 1_500 }),
      namespace,
    });
    try {
      await bus.ready({ timeoutMs: 5_000 });
      const received = new Map<string, IdSet>();
      const subscribe = (group: string) => {
        const set = new IdSet();
        received.set(group, set);
        return bus.subscribe(Tick, { group }, (_d, ctx) => {
          set.add(ctx.id);
        });
      };

      // 1. The subscription's own connection, killed by the server while it introduces itself.
      const subKilled = proxy.interceptNext((chunk) => chunk.includes('busbar:sub:'), killLink);
      const first = subscribe('g1');
      await subKilled;
      await first;

      // 2. The command connection, killed by the server while XGROUP CREATE is on its way.
      const mainKilled = proxy.interceptNext((chunk) => chunk.includes('XGROUP'), killLink);
      const second = subscribe('g2');
      await mainKilled;
      await second;

      const { id } = await bus.publish(Tick, { n: 1 });
      await received.get('g1')?.waitFor(1, 10_000, 'g1 after its connection was killed');
      await received.get('g2')?.waitFor(1, 10_000, 'g2 after the command connection was killed');
      expect(received.get('g1')?.counts.has(id)).toBe(true);
      expect(received.get('g2')?.counts.has(id)).toBe(true);

      // 3. Killed, and Redis stays unreachable past subscribeTimeoutMs: a retryable BusError naming where and why.
      const gone = proxy.interceptNext(
        (chunk) => chunk.includes('busbar:sub:'),
        async (link) => {
          proxy.refuse();
          await killLink(link);
        },
      );
      const error = await rejection(subscribe('g3'));
      await gone;
      expect(error).toBeInstanceOf(BrokerUnavailableError);
      expect(error).toMatchObject({ code: 'BROKER_UNAVAILABLE', retryable: true });
      expect(error.message).toContain(`redis://127.0.0.1:${proxy.port}`);
      expect(error.cause).toBeDefined();
    } finally {
      proxy.pass();
      await bus.close();
      await proxy.close();
      await deleteNamespace(admin, namespace);
    }
  });

  it('a black-holed link leaves connected within 15 s with the defaults; publishes then fail fast; it recovers', async () => {
    const proxy = await RedisProxy.start(redisHost, redisPort);
    const namespace = ns('b');
    // Default liveness settings on purpose (only the reconnect backoff is shortened).
    const bus = new EventBus({
      transport: new RedisStreamsTransport({ url: `redis://127.0.0.1:${proxy.port}`, reconnect: FAST }),
      namespace,
      breaker: false,
    });
    try {
      await bus.ready({ timeoutMs: 5_000 });
      const received = new IdSet();
      await bus.subscribe(Tick, { group: 'g' }, (_d, ctx) => {
        received.add(ctx.id);
      });
      const before = await bus.publish(Tick, { n: 0 });
      await received.waitFor(1, 10_000, 'before the black hole');
      expect(received.counts.has(before.id)).toBe(true);

      proxy.blackhole();
      const silentAt = Date.now();
      // In flight when the link went silent: fails when the silence is noticed, not at its 60 s timeout.
      const inFlight = rejection(bus.publish(Tick, { n: -1 }, { timeoutMs: 60_000 }));
      await once(onConnection(bus), (s) => s !== 'connected', 15_000, 'leaving connected after the link went silent');
      const detectedMs = Date.now() - silentAt;
      expect(detectedMs).toBeLessThanOrEqual(15_000);
      expect(bus.health().transport.cause?.message).toMatch(/no reply to PING/);
      const lost = await inFlight;
      expect(lost).toMatchObject({ code: 'PUBLISH_TIMEOUT' }); // outcome unknown: it may have landed
      expect(lost.message).toMatch(/went silent/);
      expect(Date.now() - silentAt).toBeLessThan(16_000);

      const started = Date.now();
      const error = await rejection(bus.publish(Tick, { n: 1 }, { timeoutMs: 10_000 }));
      expect(error).toMatchObject({ code: 'BROKER_UNAVAILABLE' });
      expect(Date.now() - started).toBeLessThan(1_000);

      proxy.pass();
      await bus.ready({ timeoutMs: 30_000 });
      const after = await bus.publish(Tick, { n: 2 });
      await received.waitForId(after.id, 30_000, 'a publish after the link came back');
      console.info(`[redis-streams] black hole noticed after ${detectedMs} ms (default healthCheck)`);
    } finally {
      proxy.pass();
      await bus.close();
      await proxy.close();
      await deleteNamespace(admin, namespace);
    }
  });

  it('after close() nothing keeps the process alive, also when Redis was never reachable', async () => {
    const child = spawn(process.execPath, [fileURLToPath(new URL('./fixtures/unreachable.mjs', import.meta.url))], {
      env: { ...process.env, REDIS_URL: 'redis://app:s3cret@127.0.0.1:6999', READY_MS: '500' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const lines: Record<string, unknown>[] = [];
    createInterface({ input: child.stdout }).on('line', (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
    const exit = await new Promise<{ code: number | null; at: number }>((resolve) => {
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve({ code, at: Date.now() });
      });
    });
    const closed = lines.find((l) => l.event === 'closed');
    expect(closed, JSON.stringify(lines)).toBeDefined();
    expect(exit.code).toBe(0);
    expect(exit.at - Number(closed?.at)).toBeLessThan(1_000);
    const ready = lines.find((l) => l.event === 'ready')?.error as Record<string, string>;
    const published = lines.find((l) => l.event === 'publish')?.error as Record<string, string>;
    for (const e of [ready, published]) {
      expect(e.code).toBe('BROKER_UNAVAILABLE');
      expect(e.message).toContain('redis://app:***@127.0.0.1:6999');
      expect(e.message).toContain('ECONNREFUSED 127.0.0.1:6999');
      expect(e.message).not.toContain('s3cret');
    }
  });
});
