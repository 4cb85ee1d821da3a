/**
 * Retries, dead letters, schema evolution, hostile input and idempotency. These hold the bus's
 * semantics (core) against each transport's mechanics: delays held by the broker, per-group
 * retries and dead letters, byte-exact dead-letter bodies, replay to one group only.
 */
import {
  backoffDelay,
  type DeadLetterView,
  type HandlerContext,
  MemoryIdempotencyStore,
  type PublishReceipt,
  type RecordedOutcome,
  seededRandom,
} from '@busbar/core';
import { HeaderNames } from '@busbar/core/transport';
import { expect } from 'vitest';
import { Order, UserV1, UserV2 } from '../events.js';
import { type CaseContext, Collector, deadLettered, envelopeHeaders, isTerminal, rawId, type Suite, utf8 } from '../helpers.js';

const decoder = new TextDecoder();

/** The dead letter of `id` in `list`, failing clearly when absent. */
function findDeadLetter(list: readonly DeadLetterView[], id: string): DeadLetterView {
  const found = list.find((d) => d.id === id);
  expect(found, `dead letter ${id} (have ${list.map((d) => d.id).join(', ') || 'none'})`).toBeDefined();
  return found as DeadLetterView;
}

/** Waits for one valid message to be handled after hostile ones: the consumer kept going. */
async function keepsConsuming(c: CaseContext, publish: () => Promise<PublishReceipt>, handled: Collector): Promise<void> {
  const ok = await publish();
  await handled.waitForAll([ok.id], c.timeoutMs, 'a valid message after bad ones');
}

export function failureCases(suite: Suite): void {
  const T = suite.timeoutMs;

  suite.test('retry gaps are at least the scheduled (seeded, jittered) delays', async (c) => {
    const backoff = { initialMs: 40, multiplier: 2, maxMs: 300, minMs: 20 };
    const maxAttempts = 4;
    const bus = await c.bus({ random: seededRandom(42) });
    const spy = c.spy(bus);
    const times: { attempt: number; at: number }[] = [];
    await bus.subscribe(Order, { group: 'g', retry: { maxAttempts, backoff } }, (_d, ctx) => {
      times.push({ attempt: ctx.attempt, at: performance.now() });
      if (ctx.attempt < maxAttempts) throw new Error(`attempt ${ctx.attempt} fails`);
    });
    const { id } = await bus.publish(Order, { n: 1 });
    await spy.waitFor(id, { status: 'acked', timeoutMs: T });
    expect(times.map((t) => t.attempt)).toEqual([1, 2, 3, 4]);
    const retries = () => spy.of(id).filter((r) => r.outcome.status === 'retried');
    // Each 'retried' is reported once its copy is durably scheduled, possibly after the copy ran.
    await spy.waitUntil(() => retries().length >= maxAttempts - 1, { timeoutMs: T, label: `${maxAttempts - 1} retried outcomes` });
    const delays = retries().flatMap((r) => (r.outcome.status === 'retried' ? [r.outcome.delayMs] : []));
    const rng = seededRandom(42);
    const cap = bus.transport.capabilities.maxRetryDelayMs;
    const expected = [1, 2, 3].map((retry) => Math.min(cap, backoffDelay(retry, backoff, rng)));
    expect(delays).toEqual(expected);
    for (let i = 0; i < delays.length; i++) {
      const gap = (times[i + 1]?.at ?? 0) - (times[i]?.at ?? 0);
      expect(gap, `gap before attempt ${i + 2} (scheduled ${delays[i]} ms)`).toBeGreaterThanOrEqual((delays[i] ?? 0) - 5);
    }
  });

  suite.test('exhausted attempts dead-letter the message with its original bytes', async (c) => {
    const maxAttempts = 3;
    const bus = await c.bus();
    const spy = c.spy(bus);
    const attempts = new Map<string, number[]>();
    await bus.subscribe(Order, { group: 'g', concurrency: 4, retry: { maxAttempts } }, (_d, ctx) => {
      attempts.set(ctx.id, [...(attempts.get(ctx.id) ?? []), ctx.attempt]);
      throw new Error('always fails');
    });
    const payloads = [{ n: 1 }, { n: 2, key: 'ünïcode ✓', pad: 'x'.repeat(300) }, { n: 3, seq: 7 }];
    const receipts = await Promise.all(payloads.map((p, i) => bus.publish(Order, p, { headers: { 'x-i': String(i) } })));
    for (const r of receipts) expect(await deadLettered(spy, r.id, 'g', T)).toBe('max-attempts');
    const list = await bus.deadLetters(Order, 'g').list();
    receipts.forEach((r, i) => {
      const dl = findDeadLetter(list, r.id);
      expect(dl.reason.kind).toBe('max-attempts');
      expect(dl.attempts).toBe(maxAttempts);
      expect(dl.group).toBe('g');
      expect(dl.origin).toBe(bus.topicOf(Order));
      expect(dl.error).toContain('always fails');
      expect(Date.parse(dl.firstFailure)).toBeLessThanOrEqual(Date.parse(dl.lastFailure));
      expect(decoder.decode(dl.body)).toBe(JSON.stringify(payloads[i]));
      expect(dl.headers['x-i'], 'user headers kept on the dead letter').toBe(String(i));
      expect(dl.headers[HeaderNames.type]).toBe(Order.type);
      expect([...new Set(attempts.get(r.id))].sort()).toEqual([1, 2, 3]);
    });
  });

  suite.test('retries and dead letters reach only the failing group', async (c) => {
    const count = suite.scaled(20, 8);
    const bus = await c.bus();
    const spy = c.spy(bus);
    const b = new Collector();
    let bRetries = 0;
    await bus.subscribe(Order, { group: 'a', concurrency: 4, retry: { maxAttempts: 3 } }, () => {
      throw new Error('group a fails everything');
    });
    await bus.subscribe(Order, { group: 'b', concurrency: 4 }, (_d, ctx) => {
      if (ctx.attempt > 1) bRetries++;
      b.add(ctx.id);
    });
    const receipts = await Promise.all(Array.from({ length: count }, (_, n) => bus.publish(Order, { n })));
    for (const r of receipts) await deadLettered(spy, r.id, 'a', T);
    // All of a's retries are done; a sentinel through b flushes anything that might still arrive.
    const sentinel = await bus.publish(Order, { n: count });
    await b.waitForAll([...receipts.map((r) => r.id), sentinel.id], T, 'group b');
    expect(bRetries).toBe(0);
    expect(receipts.map((r) => b.count(r.id)).filter((n) => n !== 1)).toEqual([]);
    expect(spy.outcomes.filter((o) => o.info.group === 'b' && o.outcome.status !== 'acked')).toEqual([]);
    expect(await bus.deadLetters(Order, 'b').list()).toEqual([]);
    // The sentinel is dead-lettered by a too, possibly before this list: count our messages only.
    const ours = new Set(receipts.map((r) => r.id));
    const aDead = (await bus.deadLetters(Order, 'a').list({ limit: count * 4 })).filter((d) => ours.has(d.id));
    expect([...new Set(aDead.map((d) => d.id))].sort()).toEqual([...ours].sort());
  });

  suite.test('schema-invalid data written below the bus is dead-lettered without retries', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    const raw = await c.raw();
    const handled = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      handled.add(ctx.id);
    });
    const id = rawId('schema');
    const body = utf8('{"n":"not a number"}');
    await raw.write(bus.topicOf(Order), { headers: envelopeHeaders(Order, id), body });
    expect(await deadLettered(spy, id, 'g', T)).toBe('schema-invalid');
    await keepsConsuming(c, () => bus.publish(Order, { n: 1 }), handled);
    expect(handled.has(id)).toBe(false);
    expect(spy.of(id).filter((o) => o.outcome.status === 'retried')).toEqual([]);
    const dl = findDeadLetter(await bus.deadLetters(Order, 'g').list(), id);
    expect(dl.reason.kind).toBe('schema-invalid');
    expect(dl.reason.detail).toContain('n');
    expect(dl.attempts).toBe(1);
    expect([...dl.body]).toEqual([...body]);
  });

  suite.test('an older schema version is upcast and handled', async (c) => {
    const consumer = await c.bus();
    const producer = await c.bus();
    const got = new Map<string, { data: unknown; version: number }>();
    const handled = new Collector();
    await consumer.subscribe(UserV2, { group: 'g' }, (data, ctx) => {
      got.set(ctx.id, { data, version: ctx.attributes.eventVersion });
      handled.add(ctx.id);
    });
    const v1 = await producer.publish(UserV1, { name: 'Ada Lovelace King' });
    const v2 = await producer.publish(UserV2, { first: 'Grace', last: 'Hopper' });
    await handled.waitForAll([v1.id, v2.id], T, 'v1 and v2 messages');
    expect(got.get(v1.id)).toEqual({ data: { first: 'Ada', last: 'Lovelace King' }, version: 1 });
    expect(got.get(v2.id)).toEqual({ data: { first: 'Grace', last: 'Hopper' }, version: 2 });
  });

  suite.test('a newer schema version than the consumer knows is dead-lettered as unsupported', async (c) => {
    const consumer = await c.bus();
    const producer = await c.bus();
    const spy = c.spy(consumer);
    const handled = new Collector();
    await consumer.subscribe(UserV1, { group: 'g' }, (_d, ctx) => {
      handled.add(ctx.id);
    });
    const v2 = await producer.publish(UserV2, { first: 'Grace', last: 'Hopper' });
    expect(await deadLettered(spy, v2.id, 'g', T)).toBe('unsupported-version');
    await keepsConsuming(c, () => producer.publish(UserV1, { name: 'Ada' }), handled);
    expect(handled.has(v2.id)).toBe(false);
  });

  suite.test('undecodable bytes are dead-lettered and the consumer keeps consuming', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    const raw = await c.raw();
    const handled = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      handled.add(ctx.id);
    });
    const bad = [
      { id: rawId('utf8'), body: new Uint8Array([0xff, 0xfe, 0x00, 0x7b, 0xc3]) },
      { id: rawId('json'), body: utf8('{"n":1') },
      { id: rawId('empty'), body: new Uint8Array(0) },
    ];
    for (const m of bad) await raw.write(bus.topicOf(Order), { headers: envelopeHeaders(Order, m.id), body: m.body });
    for (const m of bad) expect(await deadLettered(spy, m.id, 'g', T), m.id).toBe('undecodable');
    await keepsConsuming(c, () => bus.publish(Order, { n: 2 }), handled);
    const list = await bus.deadLetters(Order, 'g').list();
    for (const m of bad) {
      const dl = findDeadLetter(list, m.id);
      expect(dl.attempts).toBe(1);
      expect([...dl.body]).toEqual([...m.body]);
      expect(handled.has(m.id)).toBe(false);
    }
  });

  suite.test('prototype-polluting JSON is dead-lettered as undecodable and pollutes nothing', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    const raw = await c.raw();
    const handled = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      handled.add(ctx.id);
    });
    const bodies = [
      '{"__proto__":{"polluted":true}}',
      '{"constructor":{"prototype":{"polluted":true}}}',
      '{"n":1,"pad":"x","nested":{"__proto__":{"polluted":true}}}',
    ];
    const ids = bodies.map(() => rawId('proto'));
    for (const [i, body] of bodies.entries()) {
      await raw.write(bus.topicOf(Order), { headers: envelopeHeaders(Order, ids[i] as string), body: utf8(body) });
    }
    for (const id of ids) expect(await deadLettered(spy, id, 'g', T)).toBe('undecodable');
    await keepsConsuming(c, () => bus.publish(Order, { n: 3 }), handled);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.hasOwn(Object.prototype, 'polluted')).toBe(false);
    for (const id of ids) expect(handled.has(id)).toBe(false);
  });

  suite.test('an invalid envelope (missing id, wrong specversion, type or content type) is dead-lettered', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    const raw = await c.raw();
    const handled = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      handled.add(ctx.id);
    });
    const topic = bus.topicOf(Order);
    const body = utf8('{"n":1}');
    const noId = envelopeHeaders(Order, 'unused', { 'x-case': 'missing-id' });
    delete noId[HeaderNames.id];
    await raw.write(topic, { headers: noId, body });
    const cases: { id: string; overrides: Record<string, string> }[] = [
      { id: rawId('spec'), overrides: { [HeaderNames.specversion]: '0.3' } },
      { id: rawId('type'), overrides: { [HeaderNames.type]: 'cf.something-else' } },
      { id: rawId('ctype'), overrides: { [HeaderNames.contentType]: 'text/plain' } },
    ];
    for (const k of cases) await raw.write(topic, { headers: envelopeHeaders(Order, k.id, k.overrides), body });
    for (const k of cases) expect(await deadLettered(spy, k.id, 'g', T), JSON.stringify(k.overrides)).toBe('invalid-envelope');
    const missing = await spy.waitUntil((r) => r.info.id === '' && r.outcome.status === 'dead-lettered', {
      timeoutMs: T,
      label: 'dead letter of the message without ce_id',
    });
    expect(missing.outcome.status === 'dead-lettered' && missing.outcome.reason.kind).toBe('invalid-envelope');
    await keepsConsuming(c, () => bus.publish(Order, { n: 4 }), handled);
    const list = await bus.deadLetters(Order, 'g').list();
    expect(list.length).toBe(cases.length + 1);
    for (const dl of list) {
      expect(dl.reason.kind).toBe('invalid-envelope');
      expect(dl.attempts).toBe(1);
    }
    expect(list.some((dl) => dl.headers['x-case'] === 'missing-id')).toBe(true);
    expect(handled.size).toBe(1);
  });

  suite.test('a body over maxPayloadBytes is dead-lettered as payload-too-large', async (c) => {
    const limit = 1024;
    const bus = await c.bus({ maxPayloadBytes: limit });
    const spy = c.spy(bus);
    const raw = await c.raw();
    const handled = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      handled.add(ctx.id);
    });
    const id = rawId('big');
    const body = utf8(JSON.stringify({ n: 1, pad: 'y'.repeat(limit * 3) }));
    await raw.write(bus.topicOf(Order), { headers: envelopeHeaders(Order, id), body });
    expect(await deadLettered(spy, id, 'g', T)).toBe('payload-too-large');
    await keepsConsuming(c, () => bus.publish(Order, { n: 5 }), handled);
    const dl = findDeadLetter(await bus.deadLetters(Order, 'g').list(), id);
    expect(dl.attempts).toBe(1);
    expect(dl.body.byteLength).toBe(body.byteLength);
    expect(handled.has(id)).toBe(false);
  });

  suite.test('replay brings dead letters back to their group only; dryRun, filter and limit hold', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    let fixed = false;
    const a = new Collector();
    const b = new Collector();
    await bus.subscribe(Order, { group: 'a', retry: { maxAttempts: 2 } }, (_d, ctx) => {
      if (!fixed) throw new Error('not fixed yet');
      a.add(ctx.id);
    });
    await bus.subscribe(Order, { group: 'b' }, (_d, ctx) => {
      b.add(ctx.id);
    });
    const receipts = await Promise.all([0, 1, 2].map((n) => bus.publish(Order, { n })));
    const ids = receipts.map((r) => r.id);
    for (const id of ids) await deadLettered(spy, id, 'a', T);
    await b.waitForAll(ids, T, 'group b');
    const dlq = bus.deadLetters(Order, 'a');
    expect((await dlq.list()).map((d) => d.id).sort()).toEqual([...ids].sort());

    fixed = true;
    const dry = await dlq.replay({ dryRun: true });
    expect(dry.map((d) => d.id).sort()).toEqual([...ids].sort());
    expect((await dlq.replay({ dryRun: true, filter: (d) => d.id === ids[0] })).map((d) => d.id)).toEqual([ids[0]]);
    expect((await dlq.list()).length, 'dryRun changed nothing').toBe(3);

    const first = await dlq.replay({ filter: (d) => d.id !== ids[2], limit: 1 });
    expect(first.length).toBe(1);
    const replayedId = first[0]?.id as string;
    expect([ids[0], ids[1]]).toContain(replayedId);
    expect(first[0]?.reason.kind).toBe('max-attempts');
    await a.waitForAll([replayedId], T, 'replayed dead letter in group a');
    const ackedReplay = await spy.waitUntil((r) => r.info.id === replayedId && r.info.group === 'a' && r.outcome.status === 'acked', {
      timeoutMs: T,
    });
    expect(ackedReplay.info.attempt, 'replay resets the attempt count').toBe(1);
    expect((await dlq.list()).map((d) => d.id).sort()).toEqual(ids.filter((id) => id !== replayedId).sort());

    const rest = await dlq.replay();
    expect(rest.map((d) => d.id).sort()).toEqual(ids.filter((id) => id !== replayedId).sort());
    await a.waitForAll(ids, T, 'every replayed dead letter in group a');
    expect(await dlq.list()).toEqual([]);

    // Group b never sees a replay: a sentinel after the replays arrives, the old ids stay at one.
    const sentinel = await bus.publish(Order, { n: 99 });
    await b.waitForAll([sentinel.id], T, 'sentinel in group b');
    expect(ids.map((id) => b.count(id))).toEqual([1, 1, 1]);
    expect(ids.map((id) => a.count(id))).toEqual([1, 1, 1]);
  });

  suite.test('duplicates with one idempotency key have one effect per group', async (c) => {
    const store = new MemoryIdempotencyStore();
    const [m1, m2, publisher] = await Promise.all([c.bus({ idempotency: { store } }), c.bus({ idempotency: { store } }), c.bus()]);
    const outcomes: RecordedOutcome[] = [];
    const final = new Collector();
    for (const m of [m1, m2]) {
      m.on('outcome', (info, outcome) => {
        outcomes.push({ info, outcome });
        if (isTerminal({ info, outcome })) final.add(`${info.group}|${info.id}`);
      });
    }
    const runs = new Map<string, number>();
    const committed = new Map<string, number>();
    const handler = (group: string) => (_d: unknown, ctx: HandlerContext) => {
      const k = `${group}:${ctx.idempotencyKey}`;
      runs.set(k, (runs.get(k) ?? 0) + 1);
      ctx.commitWithCompletion(() => committed.set(k, (committed.get(k) ?? 0) + 1));
    };
    const retry = { maxAttempts: 50 };
    await m1.subscribe(Order, { group: 'g', concurrency: 4, retry }, handler('g'));
    await m2.subscribe(Order, { group: 'g', concurrency: 4, retry }, handler('g'));
    await m1.subscribe(Order, { group: 'other', concurrency: 4, retry }, handler('other'));
    const settledIn = (receipts: PublishReceipt[]) =>
      final.waitForAll(
        receipts.flatMap((r) => [`g|${r.id}`, `other|${r.id}`]),
        T,
        'final outcomes of every copy in both groups',
      );
    const concurrent = await Promise.all([
      publisher.publish(Order, { n: 1 }, { idempotencyKey: 'order-42' }),
      publisher.publish(Order, { n: 1 }, { idempotencyKey: 'order-42' }),
      publisher.publish(Order, { n: 1 }, { idempotencyKey: 'order-42' }),
      publisher.publish(Order, { n: 2 }, { idempotencyKey: 'order-43' }),
    ]);
    await settledIn(concurrent);
    // A late duplicate, after the key completed, is acknowledged without running the handler.
    const late = await publisher.publish(Order, { n: 1 }, { idempotencyKey: 'order-42' });
    await settledIn([late]);
    expect(outcomes.filter((r) => r.outcome.status === 'dead-lettered')).toEqual([]);
    for (const g of ['g', 'other']) {
      expect(runs.get(`${g}:order-42`), `handler runs of order-42 in ${g}`).toBe(1);
      expect(committed.get(`${g}:order-42`), `committed effects of order-42 in ${g}`).toBe(1);
      expect(runs.get(`${g}:order-43`)).toBe(1);
      expect(committed.get(`${g}:order-43`)).toBe(1);
    }
    expect(outcomes.some((r) => r.info.id === late.id && r.outcome.status === 'duplicate')).toBe(true);
  });
}
