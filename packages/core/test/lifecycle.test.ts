// Core owns the life of a delivery: the attempt number, the complete headers of every copy,
// settle-once, the causal order of a returning retry copy, and the dead-letter view.
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { attemptOf, headerAttempt } from '../src/delivery/attempt.js';
import { RetryHolds } from '../src/delivery/causal-hold.js';
import { brokerDeadLetterMetadata, deadLetterHeaders, releaseHeaders, replayHeaders, retryHeaders } from '../src/delivery/copy-headers.js';
import { claimDecision, classifyFailure, decide } from '../src/delivery/policy.js';
import {
  BusClosedError,
  DeadLetterRequestedError,
  defineEvent,
  EventBus,
  type HandlerContext,
  NonRetryableError,
  RetryLaterError,
  ValidationError,
} from '../src/index.js';
import type { Delivery, OutgoingMessage, StoredDeadLetter, Transport } from '../src/transport/index.js';
import { encode, HeaderNames as H, publishEncoded } from '../src/transport/index.js';
import { basicCapabilities } from './fixtures.js';

const Ping = defineEvent({ type: 'ping', schema: z.object({ n: z.number() }) });

/** A promise and its `resolve`. */
function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

type Call = { how: 'ack' | 'retry' | 'dead-letter' | 'release'; headers?: Readonly<Record<string, string>>; delayMs?: number };

/** A transport whose deliveries the test hands over; every settle call is recorded, and may be held. */
class ScriptedTransport implements Transport {
  readonly name = 'scripted';
  readonly capabilities = basicCapabilities;
  onDelivery: ((d: Delivery) => void) | undefined;
  stored: StoredDeadLetter[] = [];
  replayed: Record<string, string>[] = [];
  async connect() {}
  async publish(batch: readonly OutgoingMessage[]) {
    return batch.map(() => ({ ok: true as const }));
  }
  async subscribe(_spec: unknown, onDelivery: (d: Delivery) => void) {
    this.onDelivery = onDelivery;
    return { stop: async () => {}, close: async () => {} };
  }
  async processDeadLetters(
    _t: unknown,
    scan: { select: (d: StoredDeadLetter) => Readonly<Record<string, string>> | undefined },
  ): Promise<readonly StoredDeadLetter[]> {
    const out: StoredDeadLetter[] = [];
    for (const d of this.stored) {
      const headers = scan.select(d);
      if (headers === undefined) continue;
      out.push(d);
      this.replayed.push({ ...headers });
    }
    return out;
  }
  health() {
    return { state: 'connected' as const, since: 0 };
  }
  async close() {}

  /**
   * Hands over a delivery of `Ping`. `settleWith` (default: resolve at once) decides when each
   * settle call resolves. Returns the recorded calls.
   */
  deliver(
    bus: EventBus,
    fields: { id?: string; headers?: Record<string, string>; redeliveries?: number },
    settleWith: (call: Call) => Promise<void> = async () => {},
  ): Call[] {
    const m = encoded(bus, fields.id ?? 'm1');
    const calls: Call[] = [];
    const record = (call: Call) => {
      calls.push(call);
      return settleWith(call);
    };
    const d: Delivery = {
      headers: { ...m.headers, ...fields.headers },
      body: m.body,
      redeliveries: fields.redeliveries ?? 0,
      position: 'p@1',
      ack: () => record({ how: 'ack' }),
      retry: (delayMs, headers) => record({ how: 'retry', delayMs, headers }),
      deadLetter: (headers) => record({ how: 'dead-letter', headers }),
      release: (headers) => record({ how: 'release', headers }),
    };
    this.onDelivery?.(d);
    return calls;
  }
}

/** The wire form of a `Ping` with id `id`, as the bus publishes it. */
function encoded(bus: EventBus, id: string): OutgoingMessage {
  return encode(bus, Ping, { n: 1 }, { id });
}

/** Waits until `calls` has `n` entries (settles happen on later microtasks / ticks). */
async function settled(calls: Call[], n = 1): Promise<Call[]> {
  for (let i = 0; i < 1000 && calls.length < n; i++) await new Promise((r) => setImmediate(r));
  expect(calls).toHaveLength(n);
  return calls;
}

describe('attempt numbers (core computes them)', () => {
  it('is the attempt header (1 when absent or invalid) plus the broker redeliveries', () => {
    expect(headerAttempt({})).toBe(1);
    expect(headerAttempt({ [H.attempt]: '3' })).toBe(3);
    for (const bad of ['0', '-2', '1.5', 'x', '']) expect(headerAttempt({ [H.attempt]: bad })).toBe(1);
    expect(attemptOf({ headers: {}, redeliveries: 0 })).toBe(1);
    expect(attemptOf({ headers: { [H.attempt]: '2' }, redeliveries: 3 })).toBe(5);
    expect(attemptOf({ headers: { [H.attempt]: '2' }, redeliveries: -1 })).toBe(2);
    expect(attemptOf({ headers: { [H.attempt]: '2' }, redeliveries: 0.5 })).toBe(2);
  });
});

describe('copy headers (pure)', () => {
  const original = { [H.id]: 'm1', [H.type]: 'ping', 'x-user': 'u' };

  it('retry: the original headers, the next attempt, the first failure kept or set now', () => {
    expect(retryHeaders(original, 2, 1000)).toEqual({ ...original, [H.attempt]: '2', [H.firstFailure]: '1000' });
    expect(retryHeaders({ ...original, [H.attempt]: '2', [H.firstFailure]: '500' }, 3, 1000)).toEqual({
      ...original,
      [H.attempt]: '3',
      [H.firstFailure]: '500',
    });
    expect(original).not.toHaveProperty(H.attempt); // the original is not changed
  });

  it('release: the original headers with the current attempt', () => {
    expect(releaseHeaders(original, 3)).toEqual({ ...original, [H.attempt]: '3' });
  });

  it('dead letter: the original headers plus the metadata', () => {
    const headers = deadLetterHeaders(
      { ...original, [H.firstFailure]: String(Date.UTC(2025, 0, 1)) },
      {
        reason: { kind: 'max-attempts', detail: '3 attempts failed' },
        error: '',
        attempts: 3,
        origin: 'ns.ping',
        position: 'p@7',
        group: 'g',
        nowMs: Date.UTC(2025, 0, 2),
      },
    );
    expect(headers).toEqual({
      ...original,
      [H.firstFailure]: String(Date.UTC(2025, 0, 1)),
      [H.deadLetterReason]: 'max-attempts',
      [H.deadLetterError]: '3 attempts failed',
      [H.deadLetterFirstFailure]: '2025-01-01T00:00:00.000Z',
      [H.deadLetterLastFailure]: '2025-01-02T00:00:00.000Z',
      [H.deadLetterAttempts]: '3',
      [H.deadLetterOrigin]: 'ns.ping',
      [H.deadLetterPosition]: 'p@7',
      [H.deadLetterGroup]: 'g',
    });
    const long = deadLetterHeaders(original, {
      reason: { kind: 'non-retryable', detail: 'd' },
      error: 'e'.repeat(3000),
      attempts: 1,
      origin: 'o',
      position: 'p',
      group: 'g',
      nowMs: 0,
    });
    expect(long[H.deadLetterError]).toHaveLength(2001);
    expect(long[H.deadLetterFirstFailure]).toBe('1970-01-01T00:00:00.000Z');
  });

  it('replay: dead-letter metadata and first failure removed, attempt reset, replay count raised', () => {
    const dl = { ...original, [H.attempt]: '5', [H.firstFailure]: '1', [H.deadLetterReason]: 'max-attempts', [H.replayCount]: '1' };
    expect(replayHeaders(dl)).toEqual({ ...original, [H.attempt]: '1', [H.replayCount]: '2' });
  });

  it('broker dead-lettered: metadata of its own, from the facts the broker recorded', () => {
    const meta = brokerDeadLetterMetadata(
      { ...original, [H.attempt]: '2' },
      { cause: 'delivery_limit', redeliveries: 20, from: 'ns.ping.g', at: '2025-03-04T05:06:07Z' },
      { topic: 'ns.ping', group: 'g' },
      'rabbitmq',
      0,
    );
    expect(meta).toEqual({
      [H.deadLetterReason]: 'broker-dead-lettered',
      [H.deadLetterError]:
        'rabbitmq dead-lettered the message from ns.ping.g (delivery_limit): it was redelivered too often without being settled',
      [H.deadLetterFirstFailure]: '2025-03-04T05:06:07.000Z',
      [H.deadLetterLastFailure]: '2025-03-04T05:06:07.000Z',
      [H.deadLetterAttempts]: '22',
      [H.deadLetterOrigin]: 'ns.ping',
      [H.deadLetterPosition]: 'ns.ping.g',
      [H.deadLetterGroup]: 'g',
    });
    const noTime = brokerDeadLetterMetadata(original, { cause: 'x', redeliveries: -3, from: 'q' }, { topic: 't', group: 'g' }, 'b', 0);
    expect([noTime[H.deadLetterAttempts], noTime[H.deadLetterFirstFailure]]).toEqual(['1', '1970-01-01T00:00:00.000Z']);
  });
});

describe('RetryHolds', () => {
  it('holds a copy of (id, attempt) only while the retry that wrote it is settling', async () => {
    const holds = new RetryHolds();
    expect(holds.holdFor('m1', 2)).toBeUndefined();
    const retry = deferred();
    holds.retrying('m1', 2, retry.promise);
    holds.retrying(undefined, 2, retry.promise); // no id: nothing to hold
    expect(holds.holdFor('m1', 2)).toBe(retry.promise);
    expect(holds.holdFor('m1', 3)).toBeUndefined();
    expect(holds.holdFor('m2', 2)).toBeUndefined();
    expect(holds.holdFor('m1', 1)).toBeUndefined();
    expect(holds.size).toBe(1);
    retry.resolve();
    await retry.promise;
    expect(holds.holdFor('m1', 2)).toBeUndefined();
    expect(holds.size).toBe(0);
  });
});

describe('EventBus delivery lifecycle', () => {
  it('computes the attempt from header + redeliveries and hands the transport complete retry headers', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t, clock: { now: () => 4242, setTimer: () => () => {} } });
    const attempts: number[] = [];
    await bus.subscribe(Ping, { group: 'g', retry: { maxAttempts: 10 } }, (_d, ctx: HandlerContext) => {
      attempts.push(ctx.attempt);
      throw new Error('boom');
    });
    const [call] = await settled(t.deliver(bus, { headers: { [H.attempt]: '2', 'x-user': 'u' }, redeliveries: 1 }));
    expect(attempts).toEqual([3]);
    expect(call?.how).toBe('retry');
    expect(call?.headers).toMatchObject({ [H.id]: 'm1', 'x-user': 'u', [H.attempt]: '4', [H.firstFailure]: '4242' });
    // complete: every original header is there
    expect(Object.keys(call?.headers ?? {}).sort()).toEqual(
      [...Object.keys(encoded(bus, 'm1').headers), 'x-user', H.attempt, H.firstFailure].sort(),
    );
  });

  it('hands the transport complete dead-letter headers at the last attempt', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t });
    await bus.subscribe(Ping, { group: 'g', retry: { maxAttempts: 2 } }, () => {
      throw new Error('still broken');
    });
    const [call] = await settled(t.deliver(bus, { headers: { [H.attempt]: '2', [H.firstFailure]: '1000' } }));
    expect(call?.how).toBe('dead-letter');
    expect(call?.headers).toMatchObject({
      [H.id]: 'm1',
      [H.attempt]: '2',
      [H.deadLetterReason]: 'max-attempts',
      [H.deadLetterAttempts]: '2',
      [H.deadLetterGroup]: 'g',
      [H.deadLetterOrigin]: 'ping',
      [H.deadLetterPosition]: 'p@1',
      [H.deadLetterFirstFailure]: new Date(1000).toISOString(),
    });
    expect(call?.headers?.[H.deadLetterError]).toMatch(/2 attempts failed; last: Error: still broken/);
  });

  it('settles once: a handler finishing after close released its delivery settles nothing more', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t });
    const running = deferred();
    const finish = deferred();
    const sub = await bus.subscribe(Ping, { group: 'g' }, async () => {
      running.resolve();
      await finish.promise;
    });
    const calls = t.deliver(bus, { headers: { [H.attempt]: '3' } });
    await running.promise;
    await sub.close({ timeoutMs: 1 });
    expect(calls).toEqual([{ how: 'release', headers: expect.objectContaining({ [H.id]: 'm1', [H.attempt]: '3' }) }]);
    finish.resolve();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(calls.map((c) => c.how)).toEqual(['release']);
  });

  it('close past its timeout logs which handlers it released: event type, group and message ids', async () => {
    const t = new ScriptedTransport();
    const lines: { level: string; obj: Record<string, unknown>; msg: string | undefined }[] = [];
    const log = (level: string) => (obj: object, msg?: string) => lines.push({ level, obj: obj as Record<string, unknown>, msg });
    const bus = new EventBus({ transport: t, logger: { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') } });
    const running = deferred();
    const finish = deferred();
    let started = 0;
    await bus.subscribe(Ping, { group: 'billing', concurrency: 2 }, async () => {
      if (++started === 2) running.resolve();
      await finish.promise;
    });
    t.deliver(bus, { id: 'stuck-1' });
    t.deliver(bus, { id: 'stuck-2', headers: { [H.attempt]: '2' } });
    await running.promise;
    await bus.close({ timeoutMs: 5 });
    const released = lines.filter((l) => l.level === 'warn' && l.msg?.includes('released'));
    expect(released).toHaveLength(1);
    const [line] = released;
    expect(line?.msg).toContain('2 handler(s) of ping in group billing');
    expect(line?.msg).toContain('stuck-1, stuck-2');
    expect(line?.obj).toMatchObject({
      type: 'ping',
      group: 'billing',
      timeoutMs: 5,
      released: [
        { id: 'stuck-1', attempt: 1, position: 'p@1' },
        { id: 'stuck-2', attempt: 2, position: 'p@1' },
      ],
    });
    finish.resolve();
  });

  it('close within its timeout logs no release', async () => {
    const t = new ScriptedTransport();
    const warnings: string[] = [];
    const bus = new EventBus({
      transport: t,
      logger: { debug() {}, info() {}, warn: (_o, m) => warnings.push(m ?? ''), error() {} },
    });
    await bus.subscribe(Ping, { group: 'g' }, async () => {});
    const calls = t.deliver(bus, {});
    await settled(calls);
    await bus.close({ timeoutMs: 1000 });
    expect(warnings.filter((w) => w.includes('released'))).toEqual([]);
  });

  it('holds a returning retry copy until the retry of the attempt before it settled', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t });
    const events: string[] = [];
    bus.on('delivered', (i) => events.push(`delivered ${i.id}#${i.attempt}`));
    bus.on('outcome', (i, o) => events.push(`${o.status} ${i.id}#${i.attempt}`));
    await bus.subscribe(Ping, { group: 'g', concurrency: 2, retry: { maxAttempts: 5 } }, (_d, ctx) => {
      events.push(`handler ${ctx.id}#${ctx.attempt}`);
      if (ctx.attempt === 1) throw new Error('first try fails');
    });
    const confirm = deferred();
    const first = t.deliver(bus, {}, (c) => (c.how === 'retry' ? confirm.promise : Promise.resolve()));
    const [retry] = await settled(first);
    // The copy the retry wrote comes back before the retry's write was confirmed.
    const copy = t.deliver(bus, { headers: retry?.headers ?? {} });
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(copy).toEqual([]);
    expect(events).toEqual(['delivered m1#1', 'handler m1#1']);
    // Another message's copy at the same attempt is not held.
    const other = t.deliver(bus, { id: 'm9', headers: { [H.attempt]: '2' } });
    await settled(other);
    confirm.resolve();
    await settled(copy);
    expect(events.filter((e) => e.includes('m1'))).toEqual([
      'delivered m1#1',
      'handler m1#1',
      'retried m1#1',
      'delivered m1#2',
      'handler m1#2',
      'acked m1#2',
    ]);
  });

  it('lists a broker-dead-lettered message with a reason of its own, an unknown reason as unknown', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t, clock: { now: () => Date.UTC(2025, 5, 1), setTimer: () => () => {} } });
    const m = encoded(bus, 'b1');
    t.stored = [
      {
        handle: 'h1',
        headers: { ...m.headers, [H.attempt]: '2' },
        body: m.body,
        brokerDeadLettered: { cause: 'delivery_limit', redeliveries: 3, from: 'ping.g' },
      },
      {
        handle: 'h2',
        headers: { ...m.headers, [H.id]: 'u1', [H.deadLetterReason]: 'from-the-future', [H.deadLetterError]: 'x' },
        body: m.body,
      },
    ];
    const [broker, unknown] = await bus.deadLetters(Ping, 'g').list();
    expect(broker).toMatchObject({
      id: 'b1',
      reason: {
        kind: 'broker-dead-lettered',
        detail: expect.stringMatching(/scripted dead-lettered the message from ping\.g \(delivery_limit\)/),
      },
      attempts: 5,
      firstFailure: '2025-06-01T00:00:00.000Z',
      origin: 'ping',
      position: 'ping.g',
      group: 'g',
      handle: 'h1',
    });
    expect(broker?.headers[H.deadLetterReason]).toBe('broker-dead-lettered');
    expect(unknown?.reason).toEqual({ kind: 'unknown', detail: 'unknown reason "from-the-future": x' });
    // Replay headers are built from the stored headers: no dead-letter metadata, attempt reset.
    await bus.deadLetters(Ping, 'g').replay();
    expect(t.replayed[0]).toEqual({ ...m.headers, [H.attempt]: '1', [H.replayCount]: '1' });
  });
});

describe('delivery policy (pure)', () => {
  const settings = {
    maxAttempts: 3,
    backoff: { initialMs: 100, multiplier: 2, maxMs: 1000, minMs: 0 },
    maxRetryDelayMs: 150,
    random: () => 1,
  };

  it('classifies what a handler threw', () => {
    expect(classifyFailure(new DeadLetterRequestedError('bad data'))).toEqual({
      kind: 'dead-letter',
      reason: { kind: 'handler-requested', detail: 'bad data' },
    });
    expect(classifyFailure(new NonRetryableError('gone'))).toEqual({
      kind: 'dead-letter',
      reason: { kind: 'non-retryable', detail: 'NonRetryableError: gone' },
    });
    expect(classifyFailure(new RetryLaterError('later', { delayMs: 7 }))).toEqual({ kind: 'retry', detail: 'Error: later', delayMs: 7 });
    expect(classifyFailure(new TypeError('oops'))).toEqual({ kind: 'retry', detail: 'TypeError: oops', delayMs: undefined });
    expect(classifyFailure('a string')).toEqual({ kind: 'retry', detail: 'a string', delayMs: undefined });
  });

  it('retries with the requested delay or the backoff, capped; dead-letters past the last attempt', () => {
    expect(decide({ kind: 'retry', detail: 'x', delayMs: 40 }, 1, settings)).toEqual({ action: 'retry', delayMs: 40, detail: 'x' });
    expect(decide({ kind: 'retry', detail: 'x', delayMs: -5 }, 1, settings)).toEqual({ action: 'retry', delayMs: 0, detail: 'x' });
    expect(decide({ kind: 'retry', detail: 'x', delayMs: 9999 }, 1, settings)).toEqual({ action: 'retry', delayMs: 150, detail: 'x' });
    // backoff for attempt 1 with full jitter at random() = 1: the initial delay
    expect(decide({ kind: 'retry', detail: 'x', delayMs: undefined }, 1, settings)).toEqual({ action: 'retry', delayMs: 100, detail: 'x' });
    expect(decide({ kind: 'retry', detail: 'x', delayMs: 1 }, 3, settings)).toEqual({
      action: 'dead-letter',
      reason: { kind: 'max-attempts', detail: '3 attempts failed; last: x' },
    });
    const reason = { kind: 'schema-invalid', detail: 'n: expected number' } as const;
    expect(decide({ kind: 'dead-letter', reason }, 1, settings)).toEqual({ action: 'dead-letter', reason });
  });

  it('turns an idempotency claim into run, duplicate or a retry', () => {
    expect(claimDecision({ status: 'acquired', token: 't1' }, 'k')).toEqual({ action: 'run', token: 't1' });
    expect(claimDecision({ status: 'completed' }, 'k')).toEqual({ action: 'duplicate' });
    const busy = claimDecision({ status: 'in-progress' }, 'k');
    expect(busy).toMatchObject({
      action: 'retry',
      failure: { kind: 'retry', detail: 'Error: idempotency key k is being handled elsewhere' },
    });
  });
});

/** The two delivery paths (see delivery.test.ts): a far handler timeout selects the async one. */
const MODES = [
  { path: 'common', extra: {} },
  { path: 'async', extra: { handlerTimeoutMs: 60_000 } },
] as const;

describe.each(MODES)('handler requests ($path path)', ({ extra }) => {
  function setup() {
    const t = new ScriptedTransport();
    const warnings: unknown[] = [];
    const logger = { debug() {}, info() {}, error() {}, warn: (o: object, msg?: string) => void warnings.push([msg, o]) };
    const bus = new EventBus({ transport: t, logger });
    return { t, bus, warnings };
  }

  it('ctx.retry() and ctx.deadLetter() throw Error subclasses', async () => {
    const { t, bus } = setup();
    const thrown: unknown[] = [];
    await bus.subscribe(Ping, { ...extra, group: 'g' }, (_d, ctx) => {
      try {
        if (ctx.id === 'm1') ctx.retry({ delayMs: 5, reason: 'not yet' });
        ctx.deadLetter('never');
      } catch (error) {
        thrown.push(error);
        throw error;
      }
    });
    expect((await settled(t.deliver(bus, { id: 'm1' })))[0]).toMatchObject({ how: 'retry', delayMs: 5 });
    expect((await settled(t.deliver(bus, { id: 'm2' })))[0]?.how).toBe('dead-letter');
    expect(thrown[0]).toBeInstanceOf(RetryLaterError);
    expect(thrown[0]).toBeInstanceOf(Error);
    expect(thrown[0]).toMatchObject({ name: 'RetryLaterError', code: 'RETRY_LATER', message: 'not yet', delayMs: 5 });
    expect(thrown[1]).toBeInstanceOf(DeadLetterRequestedError);
    expect(thrown[1]).toMatchObject({ name: 'DeadLetterRequestedError', code: 'DEAD_LETTER_REQUESTED', reason: 'never' });
  });

  it('a catch-all handler that swallows them still gets the retry / the dead letter, with a warning', async () => {
    const { t, bus, warnings } = setup();
    const outcomes: unknown[] = [];
    bus.on('outcome', (i, o) => outcomes.push([i.id, o.status, o.status === 'dead-lettered' ? o.reason : undefined]));
    await bus.subscribe(Ping, { ...extra, group: 'g' }, async (_d, ctx) => {
      try {
        if (ctx.id === 'r1') ctx.retry({ delayMs: 3 });
        else ctx.deadLetter('poison');
      } catch {
        // a handler that catches everything
      }
      return 'looks fine';
    });
    const [retry] = await settled(t.deliver(bus, { id: 'r1' }));
    const [dead] = await settled(t.deliver(bus, { id: 'd1' }));
    expect(retry).toMatchObject({ how: 'retry', delayMs: 3 });
    expect(dead?.how).toBe('dead-letter');
    expect(dead?.headers?.[H.deadLetterReason]).toBe('handler-requested');
    expect(dead?.headers?.[H.deadLetterError]).toBe('poison');
    expect(outcomes).toEqual([
      ['r1', 'retried', undefined],
      ['d1', 'dead-lettered', { kind: 'handler-requested', detail: 'poison' }],
    ]);
    expect(warnings.map((w) => (w as [string])[0])).toEqual([
      expect.stringMatching(/swallowed its ctx.retry\(\) \/ ctx.deadLetter\(\) request/),
      expect.stringMatching(/swallowed/),
      'dead-lettering message',
    ]);
  });

  it('the last request wins over a different error the handler then throws', async () => {
    const { t, bus } = setup();
    await bus.subscribe(Ping, { ...extra, group: 'g' }, (_d, ctx) => {
      try {
        ctx.deadLetter('first a dead letter');
      } catch {}
      throw new Error('then something else');
    });
    const [call] = await settled(t.deliver(bus, {}));
    expect(call?.how).toBe('dead-letter');
    expect(call?.headers?.[H.deadLetterError]).toBe('first a dead letter');
  });

  it('a handler may throw RetryLaterError / DeadLetterRequestedError itself', async () => {
    const { t, bus } = setup();
    await bus.subscribe(Ping, { ...extra, group: 'g' }, (_d, ctx) => {
      if (ctx.id === 'm1') throw new RetryLaterError('busy', { delayMs: 9 });
      throw new DeadLetterRequestedError('bad');
    });
    expect((await settled(t.deliver(bus, { id: 'm1' })))[0]).toMatchObject({ how: 'retry', delayMs: 9 });
    expect((await settled(t.deliver(bus, { id: 'm2' })))[0]?.headers?.[H.deadLetterReason]).toBe('handler-requested');
  });
});

describe('EventBus surface', () => {
  it('exposes on/off/once but no emit, options, encode or internals', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t });
    for (const member of ['emit', 'options', 'encode', 'internals', 'listenerCount', 'removeAllListeners']) {
      expect(member in bus, member).toBe(false);
    }
    const seen: string[] = [];
    const listener = (state: string) => seen.push(state);
    bus.on('breaker', listener).once('breaker', (s) => seen.push(`once ${s}`));
    bus.off('breaker', listener);
    expect(bus.on('connection', () => {})).toBe(bus);
    await bus.close();
  });

  it('encode validates now; publishEncoded publishes later with the same receipt and errors', async () => {
    const published: OutgoingMessage[] = [];
    const t = new ScriptedTransport();
    t.publish = async (batch) => {
      published.push(...batch);
      return batch.map(() => ({ ok: true as const }));
    };
    const bus = new EventBus({ transport: t });
    expect(() => encode(bus, Ping, { n: 'x' } as never)).toThrow(ValidationError);
    const message = encode(bus, Ping, { n: 3 }, { id: 'later-1', idempotencyKey: 'k-1' });
    expect(published).toEqual([]);
    const stored = JSON.parse(JSON.stringify({ ...message, body: [...message.body] }));
    const receipt = await publishEncoded(bus, { ...stored, body: Uint8Array.from(stored.body) });
    expect(receipt).toEqual({ id: 'later-1', idempotencyKey: 'k-1', topic: 'ping' });
    expect(published.map((m) => [m.id, m.headers[H.id], new TextDecoder().decode(m.body)])).toEqual([['later-1', 'later-1', '{"n":3}']]);
    expect(() => encode({}, Ping, { n: 1 })).toThrow(TypeError);
    await bus.close();
    await expect(publishEncoded(bus, message)).rejects.toBeInstanceOf(BusClosedError);
  });
});
