/**
 * Issue 14 on RabbitMQ — first contact at run time, with the mistakes a new user makes: nothing
 * listening on the port, a wrong password, a user without permission on the vhost, a connection
 * dropped while subscribing, a black-holed link, a process that must exit after `close()`.
 * Registered by conformance.test.ts after the RabbitMQ-specific tests (one of them force-closes a
 * connection). Users are created with `rabbitmqctl` and deleted afterwards; silent links go through
 * the fault suite's TCP proxy (a real socket that stops forwarding, no mocks).
 */
import { execFile } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  AuthenticationError,
  BrokerUnavailableError,
  type BusOptions,
  defineEvent,
  EventBus,
  type Subscription,
  withTimeout,
} from '@busbar/core';
import type { RabbitMqOptions } from '@busbar/rabbitmq';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { TcpProxy } from '../faults/lib/proxy.js';
import { channelsOfConnections, consumersOf, rabbitmqctl, rabbitmqctlAvailable, type TransportRegistry } from './kit.js';

const run = promisify(execFile);
const Ping = defineEvent({ type: 'rmq.first', schema: z.object({ n: z.number().int() }) });
const RUN = `rfc${Date.now().toString(36).slice(-5)}`;
/** A port nothing listens on (checked by the first test: the connection must be refused). */
const DEAD_PORT = 5999;
const T = 15_000;
let seq = 0;

/** Resolves with what `start` reports through `done`, bounded. */
function until<T>(label: string, ms: number, start: (done: (v: T) => void) => void): Promise<T> {
  return withTimeout(() => new Promise<T>((resolve) => start(resolve)), { ms, label });
}

/** The error `promise` rejects with (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<Error> {
  const result = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(result instanceof Error)) throw new Error(`expected a rejection, got ${String(result)}`);
  return result;
}

export function firstContactTests(url: string, registry: TransportRegistry): void {
  describe('rabbitmq first contact (issue 14)', () => {
    const buses: EventBus[] = [];
    const namespaces: string[] = [];
    const ctlReady = rabbitmqctlAvailable();
    const broker = new URL(url);
    const brokerHost = broker.hostname === 'localhost' ? '127.0.0.1' : broker.hostname;
    const brokerPort = Number(broker.port || 5672);
    const vhost = decodeURIComponent(broker.pathname.slice(1)) || '/';

    afterEach(async () => {
      await Promise.allSettled(buses.splice(0).map((b) => b.close({ timeoutMs: 500 })));
      await Promise.all(namespaces.splice(0).map((ns) => registry.cleanup(ns)));
    });

    const namespace = (): string => {
      const ns = `${RUN}x${++seq}`;
      namespaces.push(ns);
      return ns;
    };
    const track = (b: EventBus): EventBus => {
      buses.push(b);
      return b;
    };
    const newBus = (ns: string, transport: RabbitMqOptions = {}, options: Partial<BusOptions> = {}): EventBus =>
      track(new EventBus({ namespace: ns, transport: registry.create(transport), closeTimeoutMs: 1000, breaker: false, ...options }));
    /** The broker URL with other credentials and/or another port (the proxy's). */
    const urlWith = (user: string | undefined, password: string | undefined, port = brokerPort): string => {
      const u = new URL(url);
      u.hostname = brokerHost;
      u.port = String(port);
      if (user !== undefined) u.username = user;
      if (password !== undefined) u.password = encodeURIComponent(password);
      return u.toString();
    };

    it('ready() rejects after its timeout naming the endpoint and ECONNREFUSED; no spelling of the password leaks', async () => {
      // An unencoded `@` in the password: the URL parser takes the last `@` as the separator.
      const password = 'hunter2@x';
      const transport = registry.create({
        url: `amqp://guest:${password}@127.0.0.1:${DEAD_PORT}`,
        reconnect: { backoff: { initialMs: 50, maxMs: 200 }, waitForConnectionMs: 1000 },
      });
      expect(transport.endpoint).toBe(`amqp://guest:***@127.0.0.1:${DEAD_PORT}`);
      const b = track(new EventBus({ namespace: namespace(), transport, breaker: false }));
      const started = performance.now();
      const err = await rejection(b.ready({ timeoutMs: 1500 }));
      const elapsed = performance.now() - started;
      expect(err).toBeInstanceOf(BrokerUnavailableError);
      expect(err.message).toContain(`amqp://guest:***@127.0.0.1:${DEAD_PORT}`);
      expect(err.message).toContain(`ECONNREFUSED 127.0.0.1:${DEAD_PORT}`);
      expect(elapsed).toBeGreaterThanOrEqual(1400);
      expect(elapsed).toBeLessThan(5000);
      const health = b.health().transport;
      expect(health.state).toBe('reconnecting');
      expect(health.cause).toBeInstanceOf(BrokerUnavailableError);
      expect(health.cause?.message).toContain('ECONNREFUSED');
      expect(health.since).toBeLessThanOrEqual(Date.now());
      // Down for longer than waitForConnectionMs: a publish fails at once, naming where and why.
      const publishStarted = performance.now();
      const publishErr = await rejection(b.publish(Ping, { n: 1 }));
      expect(performance.now() - publishStarted).toBeLessThan(500);
      expect(publishErr).toBeInstanceOf(BrokerUnavailableError);
      expect(publishErr.message).toContain(`127.0.0.1:${DEAD_PORT}`);
      expect(publishErr.message).toContain('ECONNREFUSED');
      const seen = JSON.stringify({ e: err.message, h: health, hm: health.cause?.message, p: publishErr.message, d: health.detail });
      for (const spelling of ['hunter2', encodeURIComponent(password), 'x@127']) expect(seen).not.toContain(spelling);
    });

    it('ready() resolves on the real broker once the connection and the publish channel are open', async (t) => {
      const ns = namespace();
      const name = `busbar-ready-${ns}`;
      const b = newBus(ns, { connectionName: name });
      await b.ready({ timeoutMs: 1500 });
      const health = b.health().transport;
      expect(health.state).toBe('connected');
      expect(health.cause).toBeUndefined();
      if (!(await ctlReady)) t.skip('rabbitmqctl cannot reach the broker (remote broker)');
      // `connected` was reported with a channel open on the connection (the publish channel).
      expect(await channelsOfConnections(name)).toEqual([1]);
    });

    it('a wrong password and a user without permission on the vhost: AuthenticationError at once, state failed, no reconnect loop', async (t) => {
      if (!(await ctlReady)) t.skip('rabbitmqctl cannot reach the broker (remote broker)');
      const user = `busbar_${RUN}_auth`;
      const password = 'right-pw-1';
      await rabbitmqctl('add_user', user, password);
      // Counts the connection attempts: every attempt is one TCP connection through the proxy.
      const proxy = await TcpProxy.start({ targetHost: brokerHost, targetPort: brokerPort });
      try {
        const cases = [
          { label: 'no permission on the vhost', pw: password, text: `vhost "${vhost}"` },
          { label: 'wrong password', pw: 'wrong-pw-2', text: 'ACCESS_REFUSED' },
        ];
        for (const c of cases) {
          const acceptedBefore = proxy.stats.accepted;
          const b = newBus(namespace(), {
            url: urlWith(user, c.pw, proxy.port),
            reconnect: { backoff: { initialMs: 50, maxMs: 200 }, waitForConnectionMs: 5000 },
          });
          const started = performance.now();
          const err = await rejection(b.ready({ timeoutMs: 8000 }));
          expect(performance.now() - started, c.label).toBeLessThan(3000);
          expect(err, c.label).toBeInstanceOf(AuthenticationError);
          expect((err as AuthenticationError).retryable).toBe(false);
          expect(err.message, c.label).toContain(`127.0.0.1:${proxy.port}`);
          expect(err.message, c.label).toContain(c.text);
          const health = b.health().transport;
          expect(health.state, c.label).toBe('failed');
          expect(health.cause, c.label).toBe(err);
          // Publishes and subscribes reject at once with the same error; ready() too.
          const publishStarted = performance.now();
          for (const later of [
            await rejection(b.publish(Ping, { n: 1 })),
            await rejection(b.subscribe(Ping, { group: 'g' }, () => {})),
            await rejection(b.ready()),
          ]) {
            expect(later, c.label).toBeInstanceOf(AuthenticationError);
            expect(later.message, c.label).toBe(err.message);
          }
          expect(performance.now() - publishStarted).toBeLessThan(500);
          // No reconnect loop: with a 50–200 ms backoff a loop would make several attempts in this
          // window (an absence can only be observed over time).
          await new Promise((r) => setTimeout(r, 1000));
          expect(proxy.stats.accepted - acceptedBefore, c.label).toBe(1);
          expect(b.health().transport.state).toBe('failed');
          const seen = JSON.stringify({ m: err.message, h: health, d: health.detail });
          expect(seen).not.toContain(c.pw);
        }
        // Control: once permitted, the same user and password connect — the refusal was the permission.
        await rabbitmqctl('set_permissions', '-p', vhost, user, '.*', '.*', '.*');
        const ok = newBus(namespace(), { url: urlWith(user, password, proxy.port) });
        await ok.ready({ timeoutMs: 5000 });
        expect(ok.health().transport.state).toBe('connected');
      } finally {
        await Promise.allSettled(buses.splice(0).map((b) => b.close({ timeoutMs: 500 })));
        await proxy.close();
        await rabbitmqctl('delete_user', user);
      }
    });

    it('the connection closed by the broker during subscribe: every subscribe resolves (no raw amqplib error) and consumes after the reconnect', async (t) => {
      if (!(await ctlReady)) t.skip('rabbitmqctl cannot reach the broker (remote broker)');
      const ns = namespace();
      const name = `busbar-subdrop-${ns}`;
      const b = newBus(ns, { connectionName: name, queueType: 'classic' });
      await b.ready();
      const handled = new Set<number>();
      let onHandled: () => void = () => {};
      const handler = (d: { n: number }) => {
        handled.add(d.n);
        onHandled();
      };
      // The group's objects are declared once: every later subscribe is channel.open, basic.qos and
      // basic.consume, so the forced close lands in one of those.
      await b.subscribe(Ping, { group: 'g' }, handler);
      const queue = `${b.topicOf(Ping)}:g`;
      const pids = (await rabbitmqctl('list_connections', 'pid', 'client_properties', '-q', '--no-table-headers'))
        .split('\n')
        .filter((line) => line.includes(`{"connection_name","${name}"}`))
        .map((line) => line.split('\t')[0] ?? '');
      expect(pids).toHaveLength(1);
      let inFlight = 0;
      let lost = false;
      let droppedDuringSubscribe = false;
      const back = until<void>('the reconnect', T, (done) => {
        b.on('connection', (state) => {
          if (state === 'reconnecting') {
            lost = true;
            if (inFlight > 0) droppedDuringSubscribe = true;
          }
          if (state === 'connected' && lost) done();
        });
      });
      const outcomes: unknown[] = [];
      /** Subscriptions of the loop still open; the oldest are closed (not awaited) beyond 50. */
      const open: Subscription[] = [];
      const closing: Promise<void>[] = [];
      let stopAt = Number.POSITIVE_INFINITY;
      let stopped = false;
      // Subscribes back to back, so one is always in flight, until a few resolved after the
      // reconnect. Only the last 50 stay open: a connection has at most 2047 channels, and this
      // loop makes a subscribe every few ms.
      const subscribing = (async () => {
        while (!stopped && outcomes.length < stopAt) {
          inFlight++;
          try {
            open.push(await b.subscribe(Ping, { group: 'g' }, handler));
            outcomes.push('ok');
            if (open.length > 50) closing.push((open.shift() as Subscription).close());
          } catch (e) {
            outcomes.push(e);
          } finally {
            inFlight--;
          }
        }
      })();
      try {
        await rabbitmqctl('close_connection', pids[0] as string, 'busbar test: dropped during subscribe');
        await back;
        stopAt = outcomes.length + 3;
        await withTimeout(() => subscribing, { ms: T, label: 'the subscribes after the reconnect' });
      } finally {
        stopped = true;
      }
      // Bounded: a close that never settles (a channel close the broker never confirmed because the
      // connection died meanwhile) must fail here, not hang the test and the bus's close.
      await withTimeout(() => Promise.all(closing), { ms: T, label: 'the closes of the older subscriptions' });
      const failures = outcomes.filter((o) => o !== 'ok');
      expect(failures.map((e) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e)))).toEqual([]);
      expect(droppedDuringSubscribe).toBe(true);
      const subscriptions = open.length + 1;
      console.info(`[rabbitmq] dropped during subscribe: ${outcomes.length} subscribes, all resolved; ${subscriptions} left open`);
      // Every subscription consumes again: the broker counts each as a consumer of the group queue
      // (no event tells the test when the broker has registered them: poll, bounded).
      await withTimeout(
        async () => {
          while ((await consumersOf(queue)) !== subscriptions) await new Promise((r) => setTimeout(r, 250));
        },
        { ms: T, label: `${subscriptions} consumers on ${queue}` },
      );
      const got = until<void>('a message after the reconnect', T, (done) => {
        onHandled = () => handled.has(7) && done();
      });
      await b.publish(Ping, { n: 7 });
      await got;
    });

    it('a black-holed link leaves connected within 15 s with the default heartbeat; publishes then fail with BrokerUnavailableError', async () => {
      const proxy = await TcpProxy.start({ targetHost: brokerHost, targetPort: brokerPort });
      try {
        const ns = namespace();
        // Defaults except the reconnect backoff of the test registry: heartbeat, connect timeout, wait.
        const b = newBus(ns, { url: urlWith(undefined, undefined, proxy.port) });
        await b.ready();
        await b.subscribe(Ping, { group: 'g' }, () => {});
        const left = until<string>('leaving connected', 20_000, (done) => {
          b.on('connection', (state) => state !== 'connected' && done(state));
        });
        const silentAt = performance.now();
        proxy.setMode('blackhole');
        const state = await left;
        const detectedMs = performance.now() - silentAt;
        console.info(`[rabbitmq] black-holed link noticed after ${(detectedMs / 1000).toFixed(1)} s (→ ${state})`);
        expect(detectedMs).toBeLessThanOrEqual(15_000);
        expect(b.health().transport.cause).toBeInstanceOf(BrokerUnavailableError);
        // Not connected: the publish is never sent and fails with BrokerUnavailableError within the
        // reconnect wait (5 s), well before the publish timeout (10 s) — never PublishTimeoutError.
        const publishStarted = performance.now();
        const err = await rejection(b.publish(Ping, { n: 1 }));
        expect(err).toBeInstanceOf(BrokerUnavailableError);
        expect(err.message).toContain(`127.0.0.1:${proxy.port}`);
        expect(performance.now() - publishStarted).toBeLessThan(7000);
        proxy.setMode('pass');
        await b.ready({ timeoutMs: T });
      } finally {
        await Promise.allSettled(buses.splice(0).map((b) => b.close({ timeoutMs: 500 })));
        await proxy.close();
      }
    });

    it('a process whose broker was never reachable exits at once after close() (refused, and a silent listener)', async () => {
      const held = new Set<Socket>();
      const silent = createServer((s) => {
        held.add(s);
        s.on('error', () => {});
      });
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const silentPort = (silent.address() as { port: number }).port;
      try {
        const fixture = fileURLToPath(new URL('./fixtures/never-reachable.mjs', import.meta.url));
        for (const [label, target] of [
          ['refused', `amqp://guest:guest@127.0.0.1:${DEAD_PORT}`],
          ['silent', `amqp://guest:guest@127.0.0.1:${silentPort}`],
        ] as const) {
          const { stdout } = await run(process.execPath, [fixture, target], { timeout: 20_000 });
          const out = JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}') as {
            error?: { name: string; message: string };
            state: string;
            livedAfterCloseMs: number;
          };
          expect(out.error?.name, label).toBe('BrokerUnavailableError');
          expect(out.state, label).toBe('closed');
          // Nothing kept the process alive: no socket (the silent listener's attempt is aborted
          // rather than left to its 5 s connect timeout), no timer, no reconnect loop.
          expect(out.livedAfterCloseMs, label).toBeLessThan(1000);
        }
      } finally {
        for (const s of held) s.destroy();
        await new Promise<void>((resolve) => silent.close(() => resolve()));
      }
    });
  });
}
