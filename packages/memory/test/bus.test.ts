// The memory transport driven through the real EventBus: the semantics users rely on in unit tests.
import { AsyncLocalStorage } from 'node:async_hooks';
import { EventBus, Headers, OutcomeSpy } from '@busbar/core';
import { encode } from '@busbar/core/transport';
import { ManualClock, MemoryBroker, MemoryTransport } from '@busbar/memory';
import { describe, expect, it } from 'vitest';
import { collector, deferred, Placed, setup } from './helpers.js';

const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe('memory transport through the EventBus', () => {
  it('round-trips a publish to a subscriber with its headers, key and attempt', async () => {
    const { bus, transport, spy } = setup();
    const states: string[] = [];
    bus.on('connection', (state) => states.push(state));
    await bus.ready();
    expect(states).toEqual(['connected']);
    const got = deferred<{ n: number; headers: Record<string, string>; attempt: number; key: string | undefined }>();
    await bus.subscribe(Placed, { group: 'g' }, (data, ctx) =>
      got.resolve({ n: data.n, headers: { ...ctx.headers }, attempt: ctx.attempt, key: ctx.attributes.partitionKey }),
    );
    const { id } = await bus.publish(Placed, { n: 42 }, { key: 'k1', headers: { 'x-tenant': 't1' } });
    expect(await got.promise).toEqual({ n: 42, headers: { 'x-tenant': 't1' }, attempt: 1, key: 'k1' });
    await spy.waitFor(id, { status: 'acked' });
    expect(transport.health().state).toBe('connected');
    await bus.close();
    expect(transport.health().state).toBe('closed');
  });

  it('lets members of one group compete, round-robin, each message handled once', async () => {
    const { bus, transport } = setup();
    const a: number[] = [];
    const b: number[] = [];
    await bus.subscribe(Placed, { group: 'g' }, (d) => void a.push(d.n));
    await bus.subscribe(Placed, { group: 'g' }, (d) => void b.push(d.n));
    for (let n = 0; n < 10; n++) await bus.publish(Placed, { n });
    await transport.idle();
    expect(a.length).toBeGreaterThan(0);
    expect(b.length).toBeGreaterThan(0);
    expect([...a, ...b].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('gives every group every message', async () => {
    const { bus, transport } = setup();
    const a: number[] = [];
    const b: number[] = [];
    await bus.subscribe(Placed, { group: 'a' }, (d) => void a.push(d.n));
    await bus.subscribe(Placed, { group: 'b' }, (d) => void b.push(d.n));
    for (let n = 0; n < 5; n++) await bus.publish(Placed, { n });
    await transport.idle();
    expect(a).toEqual([0, 1, 2, 3, 4]);
    expect(b).toEqual([0, 1, 2, 3, 4]);
  });

  it('keeps a group receiving while no member is connected; new groups start at latest or earliest', async () => {
    const broker = new MemoryBroker();
    const first = setup({ broker });
    const sub = await first.bus.subscribe(Placed, { group: 'g' }, () => {});
    await sub.close();
    for (let n = 1; n <= 3; n++) await first.bus.publish(Placed, { n });
    await first.bus.close();

    // A second "process" on the same broker.
    const second = setup({ broker });
    const got: number[] = [];
    const late: number[] = [];
    const early: number[] = [];
    await second.bus.subscribe(Placed, { group: 'g' }, (d) => void got.push(d.n));
    await second.bus.subscribe(Placed, { group: 'late' }, (d) => void late.push(d.n));
    await second.bus.subscribe(Placed, { group: 'early', startFrom: 'earliest' }, (d) => void early.push(d.n));
    await second.transport.idle();
    expect(got).toEqual([1, 2, 3]);
    expect(late).toEqual([]);
    expect(early).toEqual([1, 2, 3]);

    await second.bus.publish(Placed, { n: 4 });
    await second.transport.idle();
    expect(got).toEqual([1, 2, 3, 4]);
    expect(late).toEqual([4]);
    expect(early).toEqual([1, 2, 3, 4]);
  });

  it('retries after the scheduled delay on a ManualClock, to the failing group only', async () => {
    const clock = new ManualClock(1_000);
    const { bus, transport, spy } = setup({ clock, retry: { maxAttempts: 3, backoff: { initialMs: 100, jitter: 'none' } } });
    const attemptsAt: number[] = [];
    let other = 0;
    await bus.subscribe(Placed, { group: 'failing' }, (_d, ctx) => {
      attemptsAt.push(clock.now());
      if (ctx.attempt < 3) throw new Error(`boom ${ctx.attempt}`);
    });
    await bus.subscribe(Placed, { group: 'other' }, () => void other++);
    const { id } = await bus.publish(Placed, { n: 1 });

    const retried = (attempt: number) =>
      spy.waitUntil((r) => r.info.id === id && r.info.attempt === attempt && r.outcome.status === 'retried');
    for (const attempt of [1, 2]) {
      const r = await retried(attempt);
      const delayMs = r.outcome.status === 'retried' ? r.outcome.delayMs : Number.NaN;
      expect(delayMs).toBe(100 * 2 ** (attempt - 1));
      // Not redelivered before the delay has elapsed on the clock.
      clock.advance(delayMs - 1);
      await transport.idle();
      expect(attemptsAt).toHaveLength(attempt);
      clock.advance(1);
    }
    await spy.waitFor(id, { status: 'acked', group: 'failing' });
    expect(attemptsAt[1]! - attemptsAt[0]!).toBeGreaterThanOrEqual(100);
    expect(attemptsAt[2]! - attemptsAt[1]!).toBeGreaterThanOrEqual(200);
    await transport.idle();
    expect(other).toBe(1);
  });

  it('dead-letters to the failing group, body intact, and replays to that group only', async () => {
    const { bus, transport, spy } = setup();
    let reject = true;
    const attempts: number[] = [];
    let other = 0;
    await bus.subscribe(Placed, { group: 'a' }, (_d, ctx) => {
      attempts.push(ctx.attempt);
      if (reject) ctx.deadLetter('not today');
    });
    await bus.subscribe(Placed, { group: 'b' }, () => void other++);
    const { id } = await bus.publish(Placed, { n: 7 });
    await spy.waitFor(id, { status: 'dead-lettered', group: 'a' });
    await spy.waitFor(id, { status: 'acked', group: 'b' });

    const dlq = bus.deadLetters(Placed, 'a');
    const [dl, ...rest] = await dlq.list();
    expect(rest).toEqual([]);
    expect(dl?.id).toBe(id);
    expect(dl?.group).toBe('a');
    expect(dl?.reason).toEqual({ kind: 'handler-requested', detail: 'not today' });
    expect(text(dl!.body)).toBe('{"n":7}');
    expect(await bus.deadLetters(Placed, 'b').list()).toEqual([]);

    expect(await dlq.replay({ dryRun: true })).toHaveLength(1);
    expect(await dlq.list()).toHaveLength(1);

    reject = false;
    expect(await dlq.replay()).toHaveLength(1);
    await spy.waitUntil((r) => r.info.id === id && r.info.group === 'a' && r.outcome.status === 'acked');
    await transport.idle();
    expect(attempts).toEqual([1, 1]);
    expect(other).toBe(1);
    expect(await dlq.list()).toEqual([]);
  });

  it('keeps per-key order under concurrency, a retried message blocking its key until settled', async () => {
    const clock = new ManualClock();
    const { bus, transport, spy } = setup({ clock, retry: { maxAttempts: 3, backoff: { initialMs: 50, jitter: 'none' } } });
    const done: Record<string, number[]> = { k0: [], k1: [], k2: [] };
    const active = new Map<string, number>();
    let maxSameKey = 0;
    let total = 0;
    let maxTotal = 0;
    await bus.subscribe(Placed, { group: 'o', concurrency: 8, ordering: 'key' }, async (d, ctx) => {
      const key = ctx.attributes.partitionKey ?? '';
      active.set(key, (active.get(key) ?? 0) + 1);
      maxSameKey = Math.max(maxSameKey, active.get(key) ?? 0);
      maxTotal = Math.max(maxTotal, ++total);
      try {
        for (let i = 0; i < (d.n * 7) % 5; i++) await new Promise((r) => setImmediate(r));
        if (d.n === 3 && ctx.attempt === 1) throw new Error('fail once');
        done[key]?.push(d.n);
      } finally {
        active.set(key, (active.get(key) ?? 0) - 1);
        total--;
      }
    });
    const ids: string[] = [];
    for (let n = 0; n < 30; n++) ids.push((await bus.publish(Placed, { n }, { key: `k${n % 3}` })).id);

    await spy.waitFor(ids[3]!, { status: 'retried' });
    await transport.idle();
    expect(done.k0).toEqual([0]); // 6, 9, … wait behind the delayed retry of 3
    expect(done.k1).toHaveLength(10);
    clock.advance(50);
    await transport.idle();
    const expected = (k: number) => Array.from({ length: 10 }, (_, i) => i * 3 + k);
    expect(done).toEqual({ k0: expected(0), k1: expected(1), k2: expected(2) });
    expect(maxSameKey).toBe(1);
    expect(maxTotal).toBeGreaterThan(1);
  });

  it('redelivers to another member what a closing member released, attempt unchanged', async () => {
    const broker = new MemoryBroker();
    const a = setup({ broker });
    const b = setup({ broker });
    const started = deferred();
    const subA = await a.bus.subscribe(Placed, { group: 'g' }, async (_d, ctx) => {
      started.resolve();
      await new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason)));
    });
    const { id } = await a.bus.publish(Placed, { n: 1 });
    await started.promise;
    const got = collector<number>();
    await b.bus.subscribe(Placed, { group: 'g' }, (_d, ctx) => got.push(ctx.attempt));
    await subA.close({ timeoutMs: 10 });
    await a.spy.waitFor(id, { status: 'released' });
    expect(await got.count(1)).toEqual([1]);
    await b.spy.waitFor(id, { status: 'acked' });
  });

  it('idle() waits for in-flight handlers and their outcomes; includeDelayed also waits for retries', async () => {
    const clock = new ManualClock();
    const { bus, transport, spy } = setup({ clock, retry: { maxAttempts: 2, backoff: { initialMs: 10, jitter: 'none' } } });
    const handled: number[] = [];
    await bus.subscribe(Placed, { group: 'g', concurrency: 2 }, async (d, ctx) => {
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
      if (d.n === 0 && ctx.attempt === 1) throw new Error('once');
      handled.push(d.n);
    });
    for (let n = 0; n < 5; n++) await bus.publish(Placed, { n });
    await transport.idle();
    expect(handled.sort()).toEqual([1, 2, 3, 4]);
    expect(spy.outcomes.filter((r) => r.outcome.status === 'acked')).toHaveLength(4);

    let delayedDone = false;
    const all = transport.idle({ includeDelayed: true }).then(() => {
      delayedDone = true;
    });
    await transport.idle();
    expect(delayedDone).toBe(false);
    clock.advance(10);
    await all;
    expect(handled).toContain(0);
  });

  it('carries the attempt in a header so it survives a restart', async () => {
    const { bus, transport, spy } = setup();
    const attempts: number[] = [];
    await bus.subscribe(Placed, { group: 'g' }, (_d, ctx) => {
      attempts.push(ctx.attempt);
    });
    const topic = bus.topicOf(Placed);
    const valid = encode(bus, Placed, { n: 1 });
    await transport.raw.write(topic, { headers: { ...valid.headers, [Headers.attempt]: '4' }, body: valid.body });
    await spy.waitFor(valid.id, { status: 'acked' });
    expect(attempts).toEqual([4]);
  });

  it('describes each group of a topic from the broker state: backlog, in flight, retrying, dead letters', async () => {
    const clock = new ManualClock(1_000);
    const { bus, spy } = setup({ clock });
    const started = deferred();
    const gate = deferred();
    await bus.subscribe(Placed, { group: 'g' }, async (d, ctx) => {
      if (d.n === 1) ctx.deadLetter('poison');
      if (d.n === 2) ctx.retry({ delayMs: 60_000 });
      if (d.n === 3) {
        started.resolve();
        await gate.promise;
      }
    });
    await bus.subscribe(Placed, { group: 'idle' }, () => {});
    expect(await bus.describeGroups(Placed)).toEqual([
      { group: 'g', backlog: 0, inFlight: 0, retrying: 0, deadLetters: 0 },
      { group: 'idle', backlog: 0, inFlight: 0, retrying: 0, deadLetters: 0 },
    ]);
    const ids: string[] = [];
    for (let n = 1; n <= 5; n++) ids.push((await bus.publish(Placed, { n })).id);
    await spy.waitFor(ids[4]!, { status: 'acked', group: 'idle' });
    await started.promise;
    const [g, idle, ...rest] = await bus.describeGroups(Placed);
    expect(rest).toEqual([]);
    expect(g).toEqual({ group: 'g', backlog: 2, inFlight: 1, retrying: 1, deadLetters: 1 });
    expect(idle).toEqual({ group: 'idle', backlog: 0, inFlight: 0, retrying: 0, deadLetters: 0 });
    gate.resolve();
    await spy.waitFor(ids[4]!, { status: 'acked', group: 'g' });
    expect((await bus.describeGroups(Placed))[0]).toEqual({ group: 'g', backlog: 0, inFlight: 0, retrying: 1, deadLetters: 1 });
  });

  it('runs publish and handle interceptors end to end: trace context set on publish is seen by the handler', async () => {
    const transport = new MemoryTransport({ broker: new MemoryBroker() });
    const als = new AsyncLocalStorage<string>();
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const bus = new EventBus({
      transport,
      interceptors: {
        publish: [(call, next) => next({ ...call, options: { ...call.options, traceparent } })],
        handle: [(call, next) => als.run(call.attributes.traceparent ?? 'none', next)],
      },
    });
    const spy = new OutcomeSpy(bus);
    const seen: unknown[] = [];
    await bus.subscribe(Placed, { group: 'g' }, async (d) => {
      await Promise.resolve();
      seen.push([d.n, als.getStore()]);
    });
    const { id } = await bus.publish(Placed, { n: 1 });
    await spy.waitFor(id, { status: 'acked' });
    expect(seen).toEqual([[1, traceparent]]);
    await bus.close();
  });
});
