// The memory transport below the bus: SPI details, the raw client and the ManualClock.
import { EventBus, OutcomeSpy } from '@busbar/core';
import {
  BrokerUnavailableError,
  type Delivery,
  HeaderNames as Headers,
  type OutgoingMessage,
  type SubscriptionSpec,
  silentLogger,
  type TransportEvent,
} from '@busbar/core/transport';
import { ManualClock, MemoryTransport, memoryTransport } from '@busbar/memory';
import { describe, expect, it } from 'vitest';
import { collector, Placed } from './helpers.js';

const spec: SubscriptionSpec = { topic: 't', group: 'g', concurrency: 2, startFrom: 'latest', orderedByKey: false };
const message = (id: string): OutgoingMessage => ({ topic: 't', id, headers: { [Headers.id]: id }, body: new Uint8Array([1, 2, 3]) });
const signal = () => new AbortController().signal;

async function connected(transport = new MemoryTransport()) {
  const events: TransportEvent[] = [];
  await transport.connect({ logger: silentLogger, emit: (e) => events.push(e) });
  return { transport, events };
}

describe('MemoryTransport', () => {
  it('declares its capabilities and reports connection state', async () => {
    const t = memoryTransport({ maxRetryDelayMs: 5000 });
    expect(t.name).toBe('memory');
    expect(t.capabilities).toMatchObject({
      durability: 'memory',
      orderedByKey: true,
      newGroupFromEarliest: true,
      balancedAssignment: true,
      leaseExtension: false,
      maxRetryDelayMs: 5000,
      maxNameLength: 255,
    });
    expect(new MemoryTransport().capabilities.maxRetryDelayMs).toBe(86_400_000);
    expect(t.health().state).toBe('disconnected');
    await expect(t.publish([message('m')], signal())).rejects.toBeInstanceOf(BrokerUnavailableError);
    const { events } = await connected(t);
    expect(t.health().state).toBe('connected');
    await t.close();
    expect(t.health().state).toBe('closed');
    expect(events.map((e) => e.state)).toEqual(['connected', 'closed']);
  });

  it('rejects a publish whose signal is aborted, and copies the bytes it stores', async () => {
    const { transport } = await connected();
    const aborted = new AbortController();
    aborted.abort(new Error('stop'));
    await expect(transport.publish([message('m')], aborted.signal)).rejects.toThrow('stop');

    const got = collector<Delivery>();
    await transport.subscribe(spec, (d) => got.push(d));
    const m = message('m1');
    expect(await transport.publish([m], signal())).toEqual([{ ok: true }]);
    (m.body as Uint8Array)[0] = 99;
    const [d] = await got.count(1);
    expect([...d!.body]).toEqual([1, 2, 3]);
    expect(d!.extendLease).toBeUndefined();
    expect(d!.redeliveries).toBe(0);
    await d!.ack();
  });

  it('returns unsettled deliveries of a closed subscription to the group, in order', async () => {
    const { transport } = await connected();
    const first = collector<Delivery>();
    const sub1 = await transport.subscribe(spec, (d) => first.push(d));
    await transport.publish([message('m1'), message('m2'), message('m3')], signal());
    await first.count(2); // concurrency 2: m3 waits
    const second = collector<Delivery>();
    await transport.subscribe(spec, (d) => second.push(d));
    const [m3] = await second.count(1);
    expect(m3?.headers[Headers.id]).toBe('m3');
    await sub1.stop();
    await sub1.close();
    await expect(first.items[0]!.ack()).rejects.toThrow(/returned/);
    await m3!.ack();
    const all = await second.count(3);
    // Given back without counting: no attempt header written, no redelivery counted.
    expect(all.map((d) => [d.headers[Headers.id], d.headers[Headers.attempt], d.redeliveries])).toEqual([
      ['m3', undefined, 0],
      ['m1', undefined, 0],
      ['m2', undefined, 0],
    ]);
  });

  it('release puts a message back at the head as it was; retry writes exactly the given headers, for this group only', async () => {
    const clock = new ManualClock();
    const { transport } = await connected(new MemoryTransport({ clock }));
    const g = collector<Delivery>();
    const h = collector<Delivery>();
    await transport.subscribe({ ...spec, concurrency: 1 }, (d) => g.push(d));
    await transport.subscribe({ ...spec, group: 'h' }, (d) => h.push(d));
    await transport.publish([message('m1'), message('m2')], signal());
    const [d1] = await g.count(1);
    await d1!.release({ ...d1!.headers, [Headers.attempt]: '1', 'x-ignored': 'native release' });
    const [, again] = await g.count(2);
    expect(again?.headers).toEqual({ [Headers.id]: 'm1' });
    expect(again?.redeliveries).toBe(0);
    // Complete headers, as core builds them: stored as given (no merge with the original's).
    await again!.retry(30, { [Headers.id]: 'm1', [Headers.attempt]: '2', 'x-why': 'flaky' });
    const [, , m2] = await g.count(3);
    expect(m2?.headers[Headers.id]).toBe('m2');
    await m2!.ack();
    clock.advance(30);
    const [, , , retried] = await g.count(4);
    expect(retried?.headers).toEqual({ [Headers.id]: 'm1', [Headers.attempt]: '2', 'x-why': 'flaky' });
    expect(retried?.redeliveries).toBe(0);
    await retried!.deadLetter({ [Headers.id]: 'm1', [Headers.deadLetterReason]: 'handler-requested' });
    const stored = transport.broker.processDeadLetters({ topic: 't', group: 'g' }, { limit: 10, dryRun: true, select: () => ({}) });
    expect(stored.map((s) => s.headers)).toEqual([{ [Headers.id]: 'm1', [Headers.deadLetterReason]: 'handler-requested' }]);
    // Group h got each message once, first attempt: neither the release nor the retry reached it.
    expect((await h.count(2)).map((d) => [d.headers[Headers.id], d.headers[Headers.attempt]])).toEqual([
      ['m1', undefined],
      ['m2', undefined],
    ]);
    for (const d of h.items) await d.ack();
    await transport.idle({ includeDelayed: true });
    expect(h.items).toHaveLength(2);
  });

  it('lets a raw client observe bus publishes and write hostile bytes that get dead-lettered', async () => {
    const transport = new MemoryTransport();
    const bus = new EventBus({ transport });
    const spy = new OutcomeSpy(bus);
    try {
      const topic = bus.topicOf(Placed);
      const probe = await transport.raw.observe(topic);
      await bus.subscribe(Placed, { group: 'g' }, () => {});
      const { id } = await bus.publish(Placed, { n: 5 }, { headers: { 'x-a': '1' } });
      const seen = await probe.waitFor(id, 1000);
      expect(seen.headers['x-a']).toBe('1');
      expect(new TextDecoder().decode(seen.body)).toBe('{"n":5}');

      await transport.raw.write(topic, { headers: { ...seen.headers, [Headers.id]: 'raw-1' }, body: new Uint8Array([0xff, 0xfe]) });
      const r = await spy.waitFor('raw-1', { status: 'dead-lettered' });
      expect(r.outcome).toMatchObject({ reason: { kind: 'undecodable' } });
      const dls = await bus.deadLetters(Placed, 'g').list();
      expect(dls.map((d) => [...d.body])).toEqual([[0xff, 0xfe]]);
      await expect(probe.waitFor('never', 5)).rejects.toThrow(/did not see/);
      await probe.close();
    } finally {
      await bus.close();
    }
  });

  it('shares one broker between transports and deletes topics by prefix', async () => {
    const a = await connected();
    const b = await connected(new MemoryTransport({ broker: a.transport.broker }));
    const got = collector<Delivery>();
    await b.transport.subscribe(spec, (d) => got.push(d));
    await a.transport.publish([message('m1')], signal());
    const [d] = await got.count(1);
    await d!.ack();
    expect(a.transport.broker.deleteTopics('t')).toBe(1);
    expect(a.transport.broker.deleteTopics('t')).toBe(0);
  });
});

describe('ManualClock', () => {
  it('fires due timers in order, including ones set while firing, and supports cancel', () => {
    const clock = new ManualClock(100);
    const fired: string[] = [];
    clock.setTimer(() => fired.push(`b@${clock.now()}`), 20);
    clock.setTimer(() => {
      fired.push(`a@${clock.now()}`);
      clock.setTimer(() => fired.push(`c@${clock.now()}`), 5);
    }, 10);
    const cancel = clock.setTimer(() => fired.push('never'), 15);
    clock.setTimer(() => fired.push(`d@${clock.now()}`), 20);
    cancel();
    expect(clock.advance(9)).toBe(0);
    expect(clock.advance(16)).toBe(4);
    expect(fired).toEqual(['a@110', 'c@115', 'b@120', 'd@120']);
    expect(clock.now()).toBe(125);
    clock.setTimer(() => fired.push(`e@${clock.now()}`), 1000);
    expect(clock.pendingTimers).toBe(1);
    expect(clock.runAll()).toBe(1);
    expect(fired.at(-1)).toBe('e@1125');
    expect(() => clock.advance(-1)).toThrow(RangeError);
  });
});
