// The broker's log retention (`retention: 'all' | 'unacked'`), its queues under a large backlog,
// and the copies it hands out.
import {
  ConfigError,
  type Delivery,
  HeaderNames as Headers,
  type OutgoingMessage,
  type SubscriptionSpec,
  silentLogger,
} from '@busbar/core/transport';
import { MemoryBroker, MemoryTransport } from '@busbar/memory';
import { describe, expect, it } from 'vitest';
import { Deque } from '../src/deque.js';
import { collector, Placed, setup } from './helpers.js';

const spec = (group: string, over: Partial<SubscriptionSpec> = {}): SubscriptionSpec => ({
  topic: 't',
  group,
  concurrency: 1,
  startFrom: 'latest',
  orderedByKey: false,
  ...over,
});
const message = (id: string): OutgoingMessage => ({ topic: 't', id, headers: { [Headers.id]: id }, body: new Uint8Array([1, 2, 3]) });
const signal = () => new AbortController().signal;
const ids = (ds: readonly Delivery[]) => ds.map((d) => d.headers[Headers.id]);

async function connected(options: ConstructorParameters<typeof MemoryTransport>[0] = {}) {
  const transport = new MemoryTransport(options);
  await transport.connect({ logger: silentLogger, emit: () => {} });
  return transport;
}

describe('MemoryBroker retention', () => {
  it("keeps every message by default ('all'): a late 'earliest' group reads all of them", async () => {
    const t = await connected();
    expect(t.broker.retention).toBe('all');
    const g = collector<Delivery>();
    await t.subscribe(spec('g', { concurrency: 2 }), (d) => g.push(d));
    await t.publish([message('m1'), message('m2')], signal());
    for (const d of await g.count(2)) await d.ack();
    expect(t.broker.logLength('t')).toBe(2);
    const late = collector<Delivery>();
    await t.subscribe(spec('late', { startFrom: 'earliest', concurrency: 2 }), (d) => late.push(d));
    expect(ids(await late.count(2))).toEqual(['m1', 'm2']);
  });

  it("'unacked' drops a message once every group settled it, and never before", async () => {
    const t = await connected({ retention: 'unacked' });
    const g = collector<Delivery>();
    const h = collector<Delivery>();
    await t.subscribe(spec('g', { concurrency: 3 }), (d) => g.push(d));
    await t.subscribe(spec('h', { concurrency: 3 }), (d) => h.push(d));
    await t.publish([message('m1'), message('m2'), message('m3')], signal());
    const [g1, g2, g3] = await g.count(3);
    const [h1, h2, h3] = await h.count(3);
    await g1!.ack();
    await g2!.deadLetter({ ...g2!.headers, [Headers.deadLetterReason]: 'handler-requested' });
    expect(t.broker.logLength('t')).toBe(3); // group h has settled nothing yet
    await h2!.ack();
    expect(t.broker.logLength('t')).toBe(3); // m1 (the head) is still h's
    await h1!.retry(0, { ...h1!.headers, [Headers.attempt]: '2' });
    const [, , , h1again] = await h.count(4);
    expect([h1again!.headers[Headers.id], h1again!.headers[Headers.attempt]]).toEqual(['m1', '2']);
    expect(t.broker.logLength('t')).toBe(3); // a retried message is still pending
    await h1again!.ack();
    expect(t.broker.logLength('t')).toBe(1); // m1 and m2 are done everywhere; m3 is not
    const late = collector<Delivery>();
    await t.subscribe(spec('late', { startFrom: 'earliest' }), (d) => late.push(d));
    expect(ids(await late.count(1))).toEqual(['m3']);
    await g3!.ack();
    await h3!.ack();
    expect(t.broker.logLength('t')).toBe(1); // the late group still has m3 in flight
    await late.items[0]!.ack();
    expect(t.broker.logLength('t')).toBe(0);

    // Dead letters do not need the log: the replay still delivers the original bytes.
    const [replayed] = await t.processDeadLetters({ topic: 't', group: 'g' }, { limit: 10, dryRun: false, select: (s) => s.headers });
    expect(replayed?.headers[Headers.id]).toBe('m2');
    const [, , , again] = await g.count(4);
    expect([again!.headers[Headers.id], [...again!.body]]).toEqual(['m2', [1, 2, 3]]);
    await again!.ack();
    expect(t.broker.logLength('t')).toBe(0);
  });

  it("'unacked' keeps everything while a topic has no group, for the first 'earliest' group", async () => {
    const t = await connected({ retention: 'unacked' });
    await t.publish([message('m1'), message('m2')], signal());
    expect(t.broker.logLength('t')).toBe(2);
    const first = collector<Delivery>();
    await t.subscribe(spec('first', { startFrom: 'earliest', concurrency: 2 }), (d) => first.push(d));
    const [d1, d2] = await first.count(2);
    expect(ids([d1!, d2!])).toEqual(['m1', 'm2']);
    await d1!.ack();
    expect(t.broker.logLength('t')).toBe(1);
    await d2!.ack();
    expect(t.broker.logLength('t')).toBe(0);
  });

  it('an unsettled delivery of a closed subscription keeps its message in the log for the group', async () => {
    const t = await connected({ retention: 'unacked' });
    const first = collector<Delivery>();
    const sub = await t.subscribe(spec('g'), (d) => first.push(d));
    await t.publish([message('m1')], signal());
    await first.count(1);
    await sub.stop();
    await sub.close(); // m1 goes back to the group, unsettled
    expect(t.broker.logLength('t')).toBe(1);
    const second = collector<Delivery>();
    await t.subscribe(spec('g'), (d) => second.push(d));
    const [d] = await second.count(1);
    await d!.ack();
    expect(t.broker.logLength('t')).toBe(0);
  });

  it('refuses a bad retention, or one given to a transport that shares a broker', () => {
    expect(() => new MemoryBroker({ retention: 'some' as never })).toThrow(ConfigError);
    expect(() => new MemoryTransport({ broker: new MemoryBroker(), retention: 'unacked' })).toThrow(ConfigError);
    expect(new MemoryTransport({ retention: 'unacked' }).broker.retention).toBe('unacked');
  });

  it("keeps a long run's log bounded through the bus with 'unacked'", async () => {
    const broker = new MemoryBroker({ retention: 'unacked' });
    const { bus, transport, spy } = setup({ broker });
    await bus.subscribe(Placed, { group: 'g', concurrency: 8 }, () => {});
    const receipts = [];
    for (let n = 0; n < 200; n++) receipts.push(await bus.publish(Placed, { n }));
    await transport.idle();
    expect(spy.outcomes.filter((r) => r.outcome.status === 'acked')).toHaveLength(200);
    expect(broker.logLength(bus.topicOf(Placed))).toBe(0);
  });
});

describe('MemoryBroker queues and copies', () => {
  it('hands over a large backlog in order (one member, then several)', async () => {
    const t = await connected();
    const got: string[] = [];
    const sub = await t.subscribe(spec('g', { concurrency: 7 }), (d) => {
      got.push(d.headers[Headers.id] as string);
      void d.ack();
    });
    await sub.stop(); // the group keeps receiving while no member is connected
    const n = 5000;
    const batch = Array.from({ length: n }, (_, i) => message(`m${i}`));
    await t.publish(batch, signal());
    const done = collector<string>();
    await t.subscribe(spec('g', { concurrency: 3 }), (d) => {
      done.push(d.headers[Headers.id] as string);
      // Settle some at once and some later, so deliveries interleave with settlements.
      if (done.items.length % 2 === 0) void d.ack();
      else setImmediate(() => void d.ack());
    });
    const all = await done.count(n);
    expect(got).toEqual([]);
    expect(all).toEqual(batch.map((m) => m.id));
    await t.idle();
  });

  it('gives each delivery its own headers and bytes: a consumer mutating them changes nothing else', async () => {
    const t = await connected();
    const g = collector<Delivery>();
    const h = collector<Delivery>();
    await t.subscribe(spec('g'), (d) => g.push(d));
    await t.subscribe(spec('h'), (d) => h.push(d));
    await t.publish([message('m1')], signal());
    const [first] = await g.count(1);
    (first!.headers as Record<string, string>)['x-mutated'] = 'yes';
    first!.body[0] = 99;
    await first!.release(first!.headers);
    const [, again] = await g.count(2);
    const [other] = await h.count(1);
    for (const d of [again!, other!]) {
      expect(d.headers['x-mutated']).toBeUndefined();
      expect([...d.body]).toEqual([1, 2, 3]);
    }
    await again!.ack();
    await other!.ack();
  });
});

describe('MemoryBroker bytes', () => {
  it('keeps every body byte-for-byte across slabs, sizes, retries, dead letters and a late group, whatever consumers do to their copies', async () => {
    const t = await connected();
    const g = collector<Delivery>();
    await t.subscribe(spec('g', { concurrency: 1000 }), (d) => g.push(d));
    // Bodies of 0 B to 9 KiB (own buffers past 4 KiB) filling several 64 KiB slabs, each with a
    // pattern of its own; the publisher's buffer is overwritten right after the publish.
    const sizes = Array.from({ length: 300 }, (_, i) => (i % 37 === 0 ? 4097 + i * 17 : (i * 131) % 1500));
    const expected = sizes.map((n, i) => Uint8Array.from({ length: n }, (_, k) => (i * 7 + k) & 0xff));
    for (let i = 0; i < sizes.length; i++) {
      const body = Uint8Array.from(expected[i] as Uint8Array);
      await t.publish([{ topic: 't', id: `m${i}`, headers: { [Headers.id]: `m${i}` }, body }], signal());
      body.fill(0xee);
    }
    const first = (await g.count(sizes.length)).slice(0, sizes.length);
    const same = (d: Delivery) => {
      const i = Number((d.headers[Headers.id] as string).slice(1));
      expect(d.body.byteLength).toBe(sizes[i]);
      expect(Buffer.from(d.body.buffer, d.body.byteOffset, d.body.byteLength).equals(expected[i] as Uint8Array)).toBe(true);
    };
    for (const d of first) {
      same(d);
      d.body.fill(0x55);
    }
    // Retry the even ones, dead-letter every third, ack the rest; then read them all back.
    for (const [i, d] of first.entries()) {
      if (i % 2 === 0) await d.retry(0, { ...d.headers, [Headers.attempt]: '2' });
      else if (i % 3 === 0) await d.deadLetter({ ...d.headers, [Headers.deadLetterReason]: 'handler-requested' });
      else await d.ack();
    }
    const total = sizes.length + Math.ceil(sizes.length / 2);
    const retried = (await g.count(total)).slice(sizes.length, total);
    for (const d of retried) {
      same(d);
      await d.ack();
    }
    const dead = await t.processDeadLetters({ topic: 't', group: 'g' }, { limit: 1000, dryRun: true, select: () => ({}) });
    expect(dead.length).toBeGreaterThan(0);
    for (const d of dead) same(d as unknown as Delivery);
    const late = collector<Delivery>();
    await t.subscribe(spec('late', { startFrom: 'earliest', concurrency: 1000 }), (d) => late.push(d));
    for (const d of (await late.count(sizes.length)).slice(0, sizes.length)) {
      same(d);
      await d.ack();
    }
  });
});

describe('Deque', () => {
  it('behaves as a FIFO with front inserts and removals at an index, across compactions', () => {
    const q = new Deque<number>();
    const model: number[] = [];
    let next = 0;
    // Deterministic mix of operations; the model is a plain array.
    for (let step = 0; step < 6000; step++) {
      const op = (step * 7919) % 10;
      if (op < 5) {
        q.push(next);
        model.push(next++);
      } else if (op < 8) {
        expect(q.shift()).toBe(model.shift());
      } else if (op === 8) {
        q.unshift(next);
        model.unshift(next++);
      } else if (model.length > 2) {
        const i = step % model.length;
        if (step % 2 === 0) expect(q.removeAt(i)).toBe(model.splice(i, 1)[0]);
        else {
          q.insertAt(i, next);
          model.splice(i, 0, next++);
        }
      }
      if (q.length !== model.length) expect.fail(`length ${q.length} ≠ ${model.length} at step ${step}`);
    }
    expect(q.toArray()).toEqual(model);
    // A long run of shifts compacts the consumed prefix away without losing or reordering items.
    for (let i = 0; i < 5000; i++) {
      q.push(next);
      model.push(next++);
    }
    for (let i = 0; i < 4000; i++) expect(q.shift()).toBe(model.shift());
    expect(q.toArray()).toEqual(model);
    const pick = (x: number) => x > 100 && x % 7 === 0;
    expect(q.findIndex(pick)).toBe(model.findIndex(pick));
    expect(q.at(0)).toBe(model[0]);
    while (q.length > 0) q.shift();
    expect(q.shift()).toBeUndefined();
  });
});
