/**
 * Kafka-specific integration tests, registered after the conformance suite in the same file so
 * they run sequentially (the last one kills the shared local broker).
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { type BusError, ConfigError, defineEvent, EventBus, isBusError, type PublishReceipt } from '@busbar/core';
import { Kafka, logLevel } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { describeGroupsScenario } from '../brokers/groups-scenario.js';
import { brokersRequired } from '../brokers/resolve.js';
import type { TransportRegistry } from './kit.js';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const KAFKA_SH = join(here, '..', 'brokers', 'kafka', 'kafka.sh');
const PID_FILE = join(process.env.BUSBAR_KAFKA_DATA_DIR ?? join(here, '..', 'brokers', 'kafka', '.data'), 'kafka.pid');

const Step = defineEvent({
  type: 'kafka.step',
  version: 1,
  schema: z.object({ key: z.string(), seq: z.number().int() }),
});

const unique = (label: string) => `kt${Date.now().toString(36).slice(-5)}${Math.random().toString(36).slice(2, 6)}${label}`;

/** Resolves once `check()` is true, re-checking on every `tick` event; rejects after `ms`. */
function until(check: () => boolean, ms: number, label: string, tick: (cb: () => void) => () => void): Promise<void> {
  if (check()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const off = tick(() => {
      if (check()) {
        clearTimeout(timer);
        off();
        resolve();
      }
    });
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${ms} ms: ${label}`));
    }, ms);
  });
}

/** Resolves once process `pid` no longer exists (checked every 20 ms), or rejects after `ms`. */
async function processGone(pid: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    if (Date.now() > deadline) throw new Error(`process ${pid} still alive after SIGKILL`);
    await new Promise<void>((r) => setTimeout(r, 20));
  }
}

/** A tiny event emitter for "something changed" ticks. */
function ticker() {
  const listeners = new Set<() => void>();
  return {
    emit: () => {
      for (const l of [...listeners]) l();
    },
    on: (cb: () => void) => {
      listeners.add(cb);
      return () => listeners.delete(cb);
    },
  };
}

export function kafkaSpecificTests(registry: TransportRegistry, brokers: string, via: 'env' | 'testcontainers' | 'localhost'): void {
  describe('kafka-specific', () => {
    it('describeGroups: committed-offset lag as backlog, the retry topic lag as retrying, the dead letters not yet walked', async () => {
      const ns = unique('grp');
      try {
        const { described, observed } = await describeGroupsScenario(registry.create(), ns, {
          settleTimeoutMs: 30_000,
          observer: registry.create(),
        });
        expect(described.inFlight).toBeUndefined(); // Kafka cannot tell
        // Another process, which never subscribed, finds the group through the cluster's group list.
        expect(observed).toEqual([described]);
      } finally {
        await registry.cleanup(ns);
      }
    });

    it('keeps per-key order across partitions with concurrency > 1, and writes the CloudEvents Kafka binding', async () => {
      const ns = unique('ord');
      const bus = new EventBus({ transport: registry.create({ numPartitions: 4 }), namespace: ns });
      try {
        await bus.ready();
        const keys = Array.from({ length: 12 }, (_, k) => `key-${k}`);
        const perKey = 25;
        const seen = new Map<string, number[]>();
        const partitions = new Set<string>();
        let inFlight = 0;
        let maxInFlight = 0;
        let handled = 0;
        const tick = ticker();
        await bus.subscribe(Step, { group: 'g', concurrency: 8, ordering: 'key' }, async (data, ctx) => {
          inFlight++;
          maxInFlight = Math.max(maxInFlight, inFlight);
          partitions.add(ctx.position.split('/').slice(-2, -1)[0] ?? '');
          await new Promise<void>((r) => setImmediate(r));
          seen.set(data.key, [...(seen.get(data.key) ?? []), data.seq]);
          inFlight--;
          handled++;
          tick.emit();
        });
        await Promise.all(
          keys.map(async (key) => {
            for (let seq = 0; seq < perKey; seq++) await bus.publish(Step, { key, seq }, { key });
          }),
        );
        await until(() => handled >= keys.length * perKey, 30_000, 'every message handled', tick.on);
        for (const key of keys) expect(seen.get(key), key).toEqual(Array.from({ length: perKey }, (_, i) => i));
        expect(partitions.size, 'keys spread over several partitions').toBeGreaterThan(1);
        expect(maxInFlight, 'different keys were handled concurrently').toBeGreaterThan(1);
        expect(maxInFlight).toBeLessThanOrEqual(8);

        // The wire format, as a plain Kafka client sees it: ce_* headers, message key = ordering key.
        const kafka = new Kafka({ clientId: 'busbar-test-wire', brokers: brokers.split(','), logLevel: logLevel.NOTHING });
        const consumer = kafka.consumer({ groupId: `${ns}.wire`, maxWaitTimeInMs: 200 });
        await consumer.connect();
        await consumer.subscribe({ topics: [bus.topicOf(Step)], fromBeginning: true });
        const first = await new Promise<{ key: string; headers: Record<string, string> }>((resolve) => {
          void consumer.run({
            eachMessage: async ({ message }) => {
              const headers = Object.fromEntries(Object.entries(message.headers ?? {}).map(([k, v]) => [k, String(v)]));
              resolve({ key: message.key?.toString() ?? '', headers });
            },
          });
        });
        await consumer.disconnect();
        expect(first.headers.ce_specversion).toBe('1.0');
        expect(first.headers.ce_type).toBe(Step.type);
        expect(first.headers['content-type']).toBe('application/json');
        expect(first.key).toBe(first.headers.ce_partitionkey);
      } finally {
        await bus.close();
        await registry.cleanup(ns);
      }
    });

    it("ordering 'key': a record's attempt count survives a restart of the group (offset-commit metadata)", async () => {
      const ns = unique('att');
      const retry = { maxAttempts: 4, backoff: { initialMs: 20, maxMs: 40, minMs: 10 } };
      const attempts: number[] = [];
      const tick = ticker();
      let deadLettered = false;
      const start = async () => {
        const bus = new EventBus({ transport: registry.create(), namespace: ns });
        bus.on('outcome', (_info, outcome) => {
          if (outcome.status === 'dead-lettered') deadLettered = true;
          tick.emit();
        });
        await bus.subscribe(Step, { group: 'g', ordering: 'key', retry, startFrom: 'earliest' }, async (_data, ctx) => {
          attempts.push(ctx.attempt);
          tick.emit();
          throw new Error('still failing');
        });
        return bus;
      };
      const first = await start();
      let second: EventBus | undefined;
      try {
        await first.publish(Step, { key: 'k', seq: 1 }, { key: 'k' });
        await until(() => attempts.length >= 2, 30_000, 'two attempts by the first member', tick.on);
        await first.close(); // the record is retried in place; its next attempt is 3
        const before = attempts.length;
        second = await start();
        await until(() => deadLettered, 30_000, 'dead-lettered by the second member', tick.on);
        // The second member resumed the count where the first left it (never attempt 1 again).
        expect(attempts[before]).toBe(before + 1);
        expect(attempts).toEqual([1, 2, 3, 4]);
        const [letter] = await second.deadLetters(Step, 'g').list();
        expect(letter?.attempts).toBe(4);
      } finally {
        await first.close();
        await second?.close();
        await registry.cleanup(ns);
      }
    });

    // An unreachable broker (ready() rejects, health reconnecting, publish BrokerUnavailableError):
    // first-contact.ts, with the issue-14 contract.

    it('connectionTimeoutMs is a deprecated alias of socketConnectTimeoutMs; the two disagreeing is a ConfigError', () => {
      expect(() => registry.create({ connectionTimeoutMs: 200, socketConnectTimeoutMs: 300 })).toThrow(ConfigError);
      expect(() => registry.create({ connectionTimeoutMs: 300, socketConnectTimeoutMs: 300 })).not.toThrow();
      // The alias alone is validated (and reported) under its own name.
      expect(() => registry.create({ connectionTimeoutMs: 0 })).toThrow(/connectionTimeoutMs/);
      expect(() => registry.create({ socketConnectTimeoutMs: 0 })).toThrow(/socketConnectTimeoutMs/);
    });

    // Only a broker this project started (kafka.sh) may be killed; under CI that is always the case,
    // so the test runs there (and fails rather than skips if it is not).
    const canKill = via === 'localhost' && existsSync(PID_FILE) && existsSync(KAFKA_SH);
    it.skipIf(!canKill && !brokersRequired)(
      'recovers after the broker is killed (kill -9) and restarted on the same log dir; nothing acknowledged is lost; a subscribe cut off by the kill rejects with a retryable BusError',
      async () => {
        const ns = unique('kill');
        const consumerBus = new EventBus({ transport: registry.create(), namespace: ns, breaker: false });
        const publisherBus = new EventBus({ transport: registry.create(), namespace: ns, breaker: false, publishTimeoutMs: 3000 });
        const lateBus = new EventBus({ transport: registry.create(), namespace: ns, breaker: false });
        const received = new Set<string>();
        const tick = ticker();
        try {
          await Promise.all([consumerBus.ready(), publisherBus.ready(), lateBus.ready()]);
          await consumerBus.subscribe(Step, { group: 'g', concurrency: 4 }, (_d, ctx) => {
            received.add(ctx.id);
            tick.emit();
          });
          const acked: PublishReceipt[] = [];
          let failedDuringOutage = 0;
          const state = { phase: 'before' as 'before' | 'down' | 'after' };
          let afterOk = 0;
          let seq = 0;
          let stop = false;
          const publishing = (async () => {
            while (!stop) {
              try {
                const r = await publisherBus.publish(Step, { key: `k${seq % 5}`, seq: seq++ }, { key: `k${seq % 5}` });
                acked.push(r);
                if (state.phase === 'after') afterOk++;
              } catch {
                if (state.phase === 'down') failedDuringOutage++;
                await new Promise<void>((r) => setTimeout(r, 50)); // pacing of the publisher loop only
              }
              tick.emit();
            }
          })();
          await until(() => acked.length >= 50, 20_000, '50 publishes before the kill', tick.on);
          const pid = Number(readFileSync(PID_FILE, 'utf8').trim());
          expect(pid).toBeGreaterThan(0);
          state.phase = 'down';
          // A subscribe under way when the link drops (its topics and group join need the broker).
          const late = lateBus
            .subscribe(Step, { group: 'late' }, () => {})
            .then(
              () => 'subscribed' as const,
              (error: unknown) => error,
            );
          process.kill(pid, 'SIGKILL');
          await processGone(pid, 10_000);
          await run('bash', [KAFKA_SH, 'start'], { timeout: 120_000 });
          state.phase = 'after';
          const outcome = await late;
          // Either it got through after the restart, or it rejected with a retryable BusError (never a raw client error) …
          if (outcome !== 'subscribed') {
            expect(isBusError(outcome), String(outcome)).toBe(true);
            expect((outcome as BusError).retryable).toBe(true);
            // … and a plain retry succeeds once the broker is back.
            await lateBus.ready({ timeoutMs: 60_000 });
            await lateBus.subscribe(Step, { group: 'late' }, () => {});
          }
          console.info(
            `[kafka] subscribe during the kill: ${outcome === 'subscribed' ? 'subscribed' : `rejected (${(outcome as Error).name}), retried`}`,
          );
          await until(() => afterOk >= 50, 60_000, '50 publishes after the restart', tick.on);
          stop = true;
          await publishing;
          const ids = acked.map((r) => r.id);
          await until(() => ids.every((id) => received.has(id)), 60_000, 'every acknowledged message consumed', tick.on).catch(
            (e: unknown) => {
              const missing = ids.filter((id) => !received.has(id));
              throw new Error(`${(e as Error).message}; ${missing.length} of ${ids.length} missing`);
            },
          );
          console.info(
            `[kafka] kill -9: ${ids.length} acknowledged publishes all consumed; ${failedDuringOutage} failed during the outage`,
          );
        } finally {
          await Promise.allSettled([consumerBus.close(), publisherBus.close(), lateBus.close()]);
          await registry.cleanup(ns);
        }
      },
      240_000,
    );
  });
}
