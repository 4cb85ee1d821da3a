// Missing or mistyped options fail loudly (issue 14, point 5): every option a JavaScript caller
// can get wrong is a ConfigError naming the option, before anything reaches the transport.
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, defineEvent, EventBus, type Transport } from '../src/index.js';
import type { OutgoingMessage, SubscriptionSpec } from '../src/transport/index.js';
import { basicCapabilities } from './fixtures.js';

const Ping = defineEvent({ type: 'ping', schema: z.object({ n: z.number() }) });

/** A connected transport that records what reached it. */
class RecordingTransport implements Transport {
  readonly name = 'recording';
  readonly endpoint = 'recording';
  readonly capabilities = { ...basicCapabilities, orderedByKey: true, newGroupFromEarliest: true };
  readonly subscribed: SubscriptionSpec[] = [];
  readonly published: OutgoingMessage[] = [];
  async connect() {}
  async publish(batch: readonly OutgoingMessage[]) {
    this.published.push(...batch);
    return batch.map(() => ({ ok: true as const }));
  }
  async subscribe(spec: SubscriptionSpec) {
    this.subscribed.push(spec);
    return { stop: async () => {}, close: async () => {} };
  }
  async processDeadLetters() {
    return [];
  }
  health() {
    return { state: 'connected' as const, since: 0 };
  }
  async close() {}
}

const buses: EventBus[] = [];
afterEach(async () => {
  await Promise.all(buses.splice(0).map((b) => b.close()));
});

function setup(): { t: RecordingTransport; bus: EventBus } {
  const t = new RecordingTransport();
  const bus = new EventBus({ transport: t });
  buses.push(bus);
  return { t, bus };
}

/** The ConfigError `p` rejects with (fails the test when it resolves or rejects otherwise). */
async function configError(p: Promise<unknown>): Promise<ConfigError> {
  const error = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  return error as ConfigError;
}

const handler = async () => {};

describe('subscribe: a ConfigError naming the option', () => {
  it('refuses a missing group instead of creating a group named "undefined"', async () => {
    const { t, bus } = setup();
    const e = await configError(bus.subscribe(Ping, {} as never, handler));
    expect(e.message).toContain('options.group is required');
    expect(t.subscribed).toEqual([]);
  });

  const cases: [string, Record<string, unknown>, string][] = [
    ['a group that is not a string', { group: 42 }, 'options.group'],
    ['a concurrency that is a string', { group: 'g', concurrency: '4' }, 'options.concurrency'],
    ['a concurrency of 0', { group: 'g', concurrency: 0 }, 'options.concurrency'],
    ['a fractional concurrency', { group: 'g', concurrency: 1.5 }, 'options.concurrency'],
    ['a retry that is a number', { group: 'g', retry: 3 }, 'options.retry'],
    ['a retry.maxAttempts that is a string', { group: 'g', retry: { maxAttempts: '3' } }, 'options.retry.maxAttempts'],
    ['a retry.backoff.initialMs below 0', { group: 'g', retry: { backoff: { initialMs: -1 } } }, 'options.retry.backoff.initialMs'],
    ['a retry.backoff.jitter unknown', { group: 'g', retry: { backoff: { jitter: 'half' } } }, 'options.retry.backoff.jitter'],
    ['a handlerTimeoutMs that is a string', { group: 'g', handlerTimeoutMs: '100' }, 'options.handlerTimeoutMs'],
    ['a handlerTimeoutMs of 0', { group: 'g', handlerTimeoutMs: 0 }, 'options.handlerTimeoutMs'],
    ['a startFrom misspelled', { group: 'g', startFrom: 'beginning' }, 'options.startFrom'],
    ['an ordering misspelled', { group: 'g', ordering: 'keyed' }, 'options.ordering'],
    ['a signal that is not an AbortSignal', { group: 'g', signal: { aborted: false } }, 'options.signal'],
    ['upcasters that are not functions', { group: 'g', upcasters: { 1: 'x' } }, 'options.upcasters[1]'],
    ['an idempotent that is a string', { group: 'g', idempotent: 'yes' }, 'options.idempotent'],
  ];
  for (const [what, options, name] of cases) {
    it(`refuses ${what}`, async () => {
      const { t, bus } = setup();
      const e = await configError(bus.subscribe(Ping, options as never, handler));
      expect(e.message).toContain(name);
      expect(t.subscribed).toEqual([]);
    });
  }

  it('refuses options that are not an object, a handler that is not a function and a first argument that is not an event', async () => {
    const { t, bus } = setup();
    expect((await configError(bus.subscribe(Ping, handler as never, handler))).message).toContain('options must be an object');
    expect((await configError(bus.subscribe(Ping, { group: 'g' }, 'h' as never))).message).toContain('handler must be a function');
    expect((await configError(bus.subscribe(Ping, { group: 'g' }, undefined as never))).message).toContain('handler');
    expect((await configError(bus.subscribe('ping' as never, { group: 'g' }, handler))).message).toContain('event definition');
    expect((await configError(bus.subscribe({ type: 'ping' } as never, { group: 'g' }, handler))).message).toContain('defineEvent');
    expect(t.subscribed).toEqual([]);
  });

  it('still accepts every valid option', async () => {
    const { t, bus } = setup();
    const controller = new AbortController();
    await bus.subscribe(
      Ping,
      {
        group: 'g',
        concurrency: 3,
        retry: { maxAttempts: 2, backoff: { initialMs: 5, multiplier: 2, maxMs: 50, minMs: 1, jitter: 'none' } },
        signal: controller.signal,
        startFrom: 'earliest',
        ordering: 'key',
        handlerTimeoutMs: 100,
        upcasters: { 1: (x) => x },
        idempotent: false,
      },
      handler,
    );
    expect(t.subscribed).toHaveLength(1);
    controller.abort();
  });
});

describe('publish: a ConfigError naming the option', () => {
  const cases: [string, unknown, string][] = [
    ['options that are a number', 5, 'publish options'],
    ['a timeoutMs that is a string', { timeoutMs: '100' }, 'publish options.timeoutMs'],
    ['a timeoutMs of 0', { timeoutMs: 0 }, 'publish options.timeoutMs'],
    ['an id that is a number', { id: 7 }, 'publish options.id'],
    ['an empty id', { id: '' }, 'publish options.id'],
    ['a traceparent that is an object', { traceparent: {} }, 'publish options.traceparent'],
    ['headers that are a string', { headers: 'a=b' }, 'publish options.headers'],
  ];
  for (const [what, options, name] of cases) {
    it(`refuses ${what}`, async () => {
      const { t, bus } = setup();
      const e = await configError(bus.publish(Ping, { n: 1 }, options as never));
      expect(e.message).toContain(name);
      expect(t.published).toEqual([]);
    });
  }

  it('refuses a first argument that is not an event', async () => {
    const { t, bus } = setup();
    expect((await configError(bus.publish('ping' as never, { n: 1 } as never))).message).toContain('publish(event, data)');
    expect((await configError(bus.publish(undefined as never, { n: 1 } as never))).message).toContain('defineEvent');
    expect(t.published).toEqual([]);
  });
});

describe('dead letters: a ConfigError naming the option', () => {
  it('refuses a mistyped limit, filter or dryRun, and a group that is not a string', async () => {
    const { bus } = setup();
    const dlq = bus.deadLetters(Ping, 'g');
    expect((await configError(dlq.list({ limit: '5' } as never))).message).toContain('options.limit');
    expect((await configError(dlq.list(null as never))).message).toContain('list options');
    expect((await configError(dlq.replay({ limit: 0 }))).message).toContain('options.limit');
    expect((await configError(dlq.replay({ filter: 'all' } as never))).message).toContain('options.filter');
    expect((await configError(dlq.replay({ dryRun: 'yes' } as never))).message).toContain('options.dryRun');
    expect(() => bus.deadLetters(Ping, undefined as never)).toThrow(ConfigError);
    expect(() => bus.deadLetters('ping' as never, 'g')).toThrow(/defineEvent/);
    expect(await dlq.list({ limit: 5 })).toEqual([]);
  });
});

describe('EventBus options: a ConfigError naming the option', () => {
  const t = new RecordingTransport();
  const cases: [string, unknown, string][] = [
    ['no options', undefined, 'EventBus options'],
    ['no transport', {}, 'transport is required'],
    ['a transport without publish', { transport: { ...t, connect: t.connect, publish: undefined } }, 'transport.publish'],
    ['a namespace that is a number', { transport: t, namespace: 5 }, 'namespace'],
    ['an empty source', { transport: t, source: '' }, 'source'],
    ['a logger without error', { transport: t, logger: { info() {}, warn() {}, debug() {} } }, 'logger.error'],
    ['a publishTimeoutMs that is a string', { transport: t, publishTimeoutMs: '100' }, 'publishTimeoutMs'],
    ['a publishOverflow misspelled', { transport: t, publishOverflow: 'drop' }, 'publishOverflow'],
    ['a batching.maxBatchSize of 0', { transport: t, batching: { maxBatchSize: 0 } }, 'batching.maxBatchSize'],
    ['a breaker that is true', { transport: t, breaker: true }, 'breaker'],
    ['a breaker.failureThreshold that is a string', { transport: t, breaker: { failureThreshold: '5' } }, 'breaker.failureThreshold'],
    ['an idempotency without store', { transport: t, idempotency: {} }, 'idempotency.store'],
    ['a retry.maxAttempts of 0', { transport: t, retry: { maxAttempts: 0 } }, 'retry.maxAttempts'],
    ['a closeTimeoutMs below 0', { transport: t, closeTimeoutMs: -5 }, 'closeTimeoutMs'],
    ['a random that is a number', { transport: t, random: 0.5 }, 'random'],
    ['a clock without now', { transport: t, clock: { setTimer: () => () => {} } }, 'clock'],
  ];
  for (const [what, options, name] of cases) {
    it(`refuses ${what}`, () => {
      let error: unknown;
      try {
        buses.push(new EventBus(options as never));
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toContain(name);
    });
  }

  it('refuses a close timeoutMs that is not a number', async () => {
    const { bus } = setup();
    expect(() => bus.close({ timeoutMs: 'soon' } as never)).toThrow(/close\(\{ timeoutMs \}\)/);
    await bus.close();
  });
});
