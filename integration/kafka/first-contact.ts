/**
 * Issue 14 on Kafka ("first contact at run time"), registered after the Kafka-specific tests in
 * both conformance files (kafkajs and `client: 'platformatic'`):
 * - `ready()` means metadata was fetched; a dead port rejects with `BrokerUnavailableError` naming
 *   the endpoint and the cause; a publish never sent is `BrokerUnavailableError`, fast;
 * - nothing keeps the process alive after `close()`, also when the broker was never reachable;
 * - SASL/PLAIN: the right password connects, a wrong one is a final `AuthenticationError`;
 * - a silent link (the broker frozen with SIGSTOP: sockets stay open, nothing answers) leaves
 *   `'connected'` within 15 s with the defaults, and publishes then fail fast.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { AuthenticationError, BrokerUnavailableError, type ConnectionState, defineEvent, EventBus } from '@busbar/core';
import kafkajs from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { brokersRequired, type KafkaSaslListener } from '../brokers/resolve.js';
import type { TransportRegistry } from './kit.js';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const KAFKA_SH = join(here, '..', 'brokers', 'kafka', 'kafka.sh');
const PID_FILE = join(process.env.BUSBAR_KAFKA_DATA_DIR ?? join(here, '..', 'brokers', 'kafka', '.data'), 'kafka.pid');

const Ping = defineEvent({ type: 'kafka.ping', version: 1, schema: z.object({ n: z.number().int() }) });

const unique = (label: string) => `kf${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}${label}`;

/** The error `promise` rejects with (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a rejection, but it resolved');
}

/** Resolves with the time the bus reports a state for which `match` is true; rejects after `ms`. */
function stateReached(bus: EventBus, match: (s: ConnectionState) => boolean, ms: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const listener = (state: ConnectionState) => {
      if (!match(state)) return;
      clearTimeout(timer);
      bus.off('connection', listener);
      resolve(Date.now());
    };
    const timer = setTimeout(() => {
      bus.off('connection', listener);
      reject(new Error(`no matching connection state within ${ms} ms (now ${bus.health().transport.state})`));
    }, ms);
    bus.on('connection', listener);
  });
}

/** A child process: a bus on an unreachable port, `ready()` times out, `close()`; then it must exit by itself. */
const UNREACHABLE_EXIT = `
import { EventBus } from '@busbar/core';
import { KafkaTransport } from '@busbar/kafka';
const bus = new EventBus({ transport: new KafkaTransport(JSON.parse(process.argv[1])), namespace: 'exit', breaker: false });
const error = await bus.ready({ timeoutMs: 1000 }).then(() => undefined, (e) => e);
await bus.close();
console.log(JSON.stringify({ error: error?.name, closedAt: Date.now() }));
`;

export function firstContactTests(
  registry: TransportRegistry,
  brokers: string,
  via: 'env' | 'testcontainers' | 'localhost',
  sasl: KafkaSaslListener | undefined,
): void {
  describe('first contact (issue 14)', () => {
    it('ready() rejects for a dead port with BrokerUnavailableError naming the endpoint and the cause; resolves once metadata was fetched', async () => {
      const dead = new EventBus({
        transport: registry.create({ brokers: '127.0.0.1:1', socketConnectTimeoutMs: 1000 }),
        namespace: unique('dead'),
        breaker: false,
      });
      try {
        expect(dead.transport.endpoint).toBe('kafka 127.0.0.1:1');
        const started = Date.now();
        const error = await rejection(dead.ready({ timeoutMs: 2000 }));
        expect(Date.now() - started).toBeLessThan(4000);
        expect(error).toBeInstanceOf(BrokerUnavailableError);
        expect(error.message).toContain('kafka 127.0.0.1:1');
        expect(error.message).toMatch(/ECONNREFUSED 127\.0\.0\.1:1\b/);
        const health = dead.health().transport;
        expect(health.state).toBe('reconnecting');
        expect(health.cause).toBeInstanceOf(BrokerUnavailableError);
        expect(health.since).toBeGreaterThan(0);
        // A publish never sent for lack of a connection: BrokerUnavailableError at once, naming the endpoint.
        const publishing = Date.now();
        const refused = await rejection(dead.publish(Ping, { n: 1 }));
        expect(refused).toBeInstanceOf(BrokerUnavailableError);
        expect(refused.message).toContain('127.0.0.1:1');
        expect(Date.now() - publishing).toBeLessThan(1000);
        // Subscribing: a BusError too, never a raw client error.
        expect(await rejection(dead.subscribe(Ping, { group: 'g' }, () => {}))).toBeInstanceOf(BrokerUnavailableError);
      } finally {
        await dead.close();
      }

      const live = new EventBus({ transport: registry.create(), namespace: unique('live'), breaker: false });
      try {
        await live.ready({ timeoutMs: 10_000 });
        expect(live.health().transport.state).toBe('connected');
        expect(live.health().transport.cause).toBeUndefined();
      } finally {
        await live.close();
      }
    });

    it('nothing keeps the process alive after close(), also when the broker was never reachable', async () => {
      const options = registry.options({ brokers: '127.0.0.1:1', socketConnectTimeoutMs: 1000 });
      const started = Date.now();
      // execFile's timeout kills a process that does not exit by itself: the test then fails.
      const { stdout } = await run(process.execPath, ['--input-type=module', '-e', UNREACHABLE_EXIT, JSON.stringify(options)], {
        cwd: join(here, '..'),
        timeout: 15_000,
      });
      const exitedAt = Date.now();
      const report = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as { error?: string; closedAt?: number };
      expect(report.error).toBe('BrokerUnavailableError');
      expect(report.closedAt).toBeGreaterThan(started);
      // From close() to the process's end: no timer or socket left to wait for.
      expect(exitedAt - (report.closedAt ?? 0)).toBeLessThan(3000);
    });

    // The credential tests need the broker's SASL/PLAIN listener (kafka.sh opens one; the lookup
    // verifies it and fails under CI when a reused broker lacks it).
    it.skipIf(!sasl)('SASL/PLAIN: the right password connects; a wrong one is a final AuthenticationError at once', async () => {
      const listener = sasl as KafkaSaslListener;
      const ns = unique('sasl');
      const good = new EventBus({
        transport: registry.create({
          brokers: listener.brokers,
          sasl: { mechanism: 'plain', username: listener.username, password: listener.password },
        }),
        namespace: ns,
        breaker: false,
      });
      const wrongPassword = `${listener.password}-wrong`;
      const bad = new EventBus({
        transport: registry.create({
          brokers: listener.brokers,
          sasl: { mechanism: 'plain', username: listener.username, password: wrongPassword },
        }),
        namespace: ns,
        breaker: false,
      });
      try {
        await good.ready({ timeoutMs: 10_000 });
        await good.publish(Ping, { n: 1 });
        expect(good.health().transport.state).toBe('connected');

        const states: ConnectionState[] = [];
        bad.on('connection', (state) => states.push(state));
        const started = Date.now();
        const error = await rejection(bad.ready({ timeoutMs: 10_000 }));
        expect(Date.now() - started).toBeLessThan(5000);
        expect(error).toBeInstanceOf(AuthenticationError);
        expect((error as AuthenticationError).retryable).toBe(false);
        expect(error.message).toContain(listener.brokers);
        expect(error.message).not.toContain(wrongPassword);
        const health = bad.health();
        expect(health.transport.state).toBe('failed');
        expect(health.transport.cause).toBeInstanceOf(AuthenticationError);
        expect(health.status).toBe('down');
        // Final: publish and subscribe reject at once with the same error; no reconnect follows.
        expect(await rejection(bad.publish(Ping, { n: 2 }))).toBeInstanceOf(AuthenticationError);
        expect(await rejection(bad.subscribe(Ping, { group: 'g' }, () => {}))).toBeInstanceOf(AuthenticationError);
        expect(await rejection(bad.ready({ timeoutMs: 10_000 }))).toBeInstanceOf(AuthenticationError);
        const since = health.transport.since;
        expect(bad.health().transport.since).toBe(since);
        expect(states.filter((s) => s === 'reconnecting' || s === 'connected')).toEqual([]);
      } finally {
        await Promise.allSettled([good.close(), bad.close()]);
        await registry.cleanup(ns);
      }
    });

    // Refused permissions: a DENY ACL for the SASL user on this test's topics (kafka.sh runs the
    // StandardAuthorizer; PLAINTEXT's User:ANONYMOUS is a super user), removed afterwards.
    it.skipIf(!sasl)(
      'a refused permission (topic authorization) is an AuthenticationError for that call; the transport stays connected',
      async () => {
        const listener = sasl as KafkaSaslListener;
        const ns = unique('authz');
        const { Kafka, logLevel, AclResourceTypes, ResourcePatternTypes, AclOperationTypes, AclPermissionTypes } = kafkajs;
        const admin = new Kafka({ clientId: 'busbar-test-acl', brokers: brokers.split(','), logLevel: logLevel.NOTHING }).admin();
        const acl = {
          resourceType: AclResourceTypes.TOPIC,
          resourceName: `${ns}.`,
          resourcePatternType: ResourcePatternTypes.PREFIXED,
          principal: `User:${listener.username}`,
          host: '*',
          operation: AclOperationTypes.ALL,
          permissionType: AclPermissionTypes.DENY,
        };
        await admin.connect();
        const bus = new EventBus({
          transport: registry.create({
            brokers: listener.brokers,
            sasl: { mechanism: 'plain', username: listener.username, password: listener.password },
          }),
          namespace: ns,
          breaker: false,
        });
        try {
          await admin.createAcls({ acl: [acl] }).catch((error: unknown) => {
            throw new Error(`cannot add an ACL (a broker without kafka.sh's authorizer? restart it): ${String(error)}`);
          });
          await bus.ready({ timeoutMs: 10_000 });
          const publishing = Date.now();
          const refused = await rejection(bus.publish(Ping, { n: 1 }));
          expect(refused).toBeInstanceOf(AuthenticationError);
          expect(refused.message).toMatch(/authoriz/i);
          expect(Date.now() - publishing).toBeLessThan(5000);
          expect(await rejection(bus.subscribe(Ping, { group: 'g' }, () => {}))).toBeInstanceOf(AuthenticationError);
          // One topic refused is not the connection refused.
          expect(bus.health().transport.state).toBe('connected');
        } finally {
          await bus.close();
          await admin.deleteAcls({ filters: [acl] }).catch(() => {});
          await admin.disconnect();
          await registry.cleanup(ns);
        }
      },
    );

    // Freezing the broker needs a broker this project started (kafka.sh); under CI that is always
    // the case, so the test runs there (and fails rather than skips if it is not).
    const canFreeze = via === 'localhost' && existsSync(PID_FILE) && existsSync(KAFKA_SH);
    it.skipIf(!canFreeze && !brokersRequired)(
      'a silent link (broker frozen) leaves connected within 15 s with the defaults; publishes then fail fast; it recovers',
      async () => {
        const ns = unique('silent');
        // The registry's test options, but the health check and request timeouts at their defaults.
        const bus = new EventBus({ transport: registry.create(), namespace: ns, breaker: false });
        const pid = Number(readFileSync(PID_FILE, 'utf8').trim());
        expect(pid).toBeGreaterThan(0);
        let frozen = false;
        try {
          await bus.ready({ timeoutMs: 10_000 });
          await bus.publish(Ping, { n: 1 });
          const left = stateReached(bus, (s) => s !== 'connected', 20_000);
          process.kill(pid, 'SIGSTOP');
          frozen = true;
          const silentSince = Date.now();
          const leftAt = await left;
          const detectedMs = leftAt - silentSince;
          console.info(`[kafka] silent link noticed after ${detectedMs} ms`);
          expect(detectedMs).toBeLessThanOrEqual(15_000);
          expect(bus.health().transport.cause).toBeInstanceOf(BrokerUnavailableError);
          const publishing = Date.now();
          expect(await rejection(bus.publish(Ping, { n: 2 }))).toBeInstanceOf(BrokerUnavailableError);
          expect(Date.now() - publishing).toBeLessThan(1000);
          const back = stateReached(bus, (s) => s === 'connected', 60_000);
          process.kill(pid, 'SIGCONT');
          frozen = false;
          await back;
          await bus.publish(Ping, { n: 3 });
        } finally {
          if (frozen) process.kill(pid, 'SIGCONT');
          await bus.close();
          await registry.cleanup(ns);
        }
      },
      120_000,
    );
  });
}
