/**
 * Publish/subscribe basics, after Watermill's universal pub/sub tests: round trip, volume,
 * many topics, redelivery on error, concurrency limit, subscribers coming and going, per-key
 * order, closing with publishes in flight, topic isolation and abort signals.
 */
import {
  BusClosedError,
  CapabilityError,
  type EventData,
  type HandlerContext,
  isBusError,
  type PublishReceipt,
  type Subscription,
} from '@busbar/core';
import { HeaderNames } from '@busbar/core/transport';
import { expect } from 'vitest';
import { Order, Rich, topicEvent } from '../events.js';
import { Collector, Counter, deferred, pool, type Suite, turns, within } from '../helpers.js';

type OrderData = EventData<typeof Order>;

export function basicCases(suite: Suite): void {
  const T = suite.timeoutMs;

  suite.test('round trip keeps the payload bytes, headers and context', async (c) => {
    const bus = await c.bus();
    const topic = bus.topicOf(Rich);
    const probe = await c.observe(topic);
    const got = deferred<{ data: EventData<typeof Rich>; ctx: HandlerContext }>();
    await bus.subscribe(Rich, { group: 'g' }, (data, ctx) => {
      got.resolve({ data, ctx });
    });
    const data = {
      n: 42,
      text: 'zażółć gęślą jaźń ✓ 😀 "quoted" \\ back',
      tags: ['a', 'b', ''],
      nested: { ok: true, ratio: 0.125, list: [1, -2, 3.5] },
    };
    const headers = { 'x-tenant': 'acme', 'x-request-id': 'req-123', 'x-note': 'spaces and: punctuation' };
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const receipt = await bus.publish(Rich, data, { headers, idempotencyKey: 'idem-round-trip', key: 'k-1', traceparent });
    expect(receipt.idempotencyKey).toBe('idem-round-trip');

    const wire = await probe.waitFor(receipt.id, T);
    expect(new TextDecoder().decode(wire.body)).toBe(JSON.stringify(data));
    expect(wire.headers[HeaderNames.id]).toBe(receipt.id);
    expect(wire.headers[HeaderNames.type]).toBe(Rich.type);
    expect(wire.headers[HeaderNames.specversion]).toBe('1.0');
    for (const [k, v] of Object.entries(headers)) expect(wire.headers[k]).toBe(v);

    const { data: received, ctx } = await within(got.promise, T, 'handler call');
    expect(received).toEqual(data);
    expect(ctx.id).toBe(receipt.id);
    expect(ctx.idempotencyKey).toBe('idem-round-trip');
    expect(ctx.attempt).toBe(1);
    expect(ctx.headers).toEqual(headers);
    expect(ctx.attributes.type).toBe(Rich.type);
    expect(ctx.attributes.source).toBe('urn:busbar:conformance');
    expect(ctx.attributes.eventVersion).toBe(1);
    expect(ctx.attributes.partitionKey).toBe('k-1');
    expect(ctx.attributes.traceparent).toBe(traceparent);
    expect(ctx.signal.aborted).toBe(false);
  });

  suite.test('many concurrent publishers lose nothing', async (c) => {
    const total = suite.scaled(5000, 500);
    const publishers = Math.min(50, total);
    const bus = await c.bus();
    const received = new Collector();
    await bus.subscribe(Order, { group: 'g', concurrency: 32 }, (_d, ctx) => {
      received.add(ctx.id);
    });
    const receipts = await pool(total, publishers, (n) => bus.publish(Order, { n }));
    const ids = receipts.map((r) => r.id);
    expect(new Set(ids).size).toBe(total);
    await received.waitForAll(ids, T, 'messages from concurrent publishers');
    c.reportDuplicates('concurrent publishers', received.duplicates);
  });

  suite.test('many topics at once: each subscriber gets exactly its own topic', async (c) => {
    const topics = 20;
    const perTopic = suite.scaled(100, 20);
    const bus = await c.bus();
    const collectors = Array.from({ length: topics }, () => new Collector());
    const foreign: string[] = [];
    await Promise.all(
      collectors.map((col, t) =>
        bus.subscribe(topicEvent(t), { group: 'g', concurrency: 8 }, (data, ctx) => {
          if (data.topic !== t) foreign.push(`${ctx.id} (topic ${data.topic} on ${t})`);
          col.add(ctx.id);
        }),
      ),
    );
    const published = await Promise.all(
      collectors.map((_, t) => Promise.all(Array.from({ length: perTopic }, (_x, n) => bus.publish(topicEvent(t), { topic: t, n })))),
    );
    await Promise.all(collectors.map((col, t) => col.waitForAll(published[t]?.map((r) => r.id) ?? [], T, `topic ${t}`)));
    expect(foreign).toEqual([]);
    collectors.forEach((col, t) => {
      const own = new Set(published[t]?.map((r) => r.id));
      expect(col.ids().filter((id) => !own.has(id))).toEqual([]);
    });
    c.reportDuplicates(
      'many topics',
      collectors.reduce((s, col) => s + col.duplicates, 0),
    );
  });

  suite.test('a handler error redelivers the message until it succeeds', async (c) => {
    const total = suite.scaled(100, 20);
    const failing = Math.ceil(total / 2);
    const bus = await c.bus();
    const spy = c.spy(bus);
    const acked = new Collector();
    const attemptsSeen = new Map<string, number[]>();
    await bus.subscribe(Order, { group: 'g', concurrency: 8, retry: { maxAttempts: 5 } }, (data, ctx) => {
      attemptsSeen.set(ctx.id, [...(attemptsSeen.get(ctx.id) ?? []), ctx.attempt]);
      if (data.n < failing && ctx.attempt === 1) throw new Error(`first delivery of ${data.n} fails`);
      acked.add(ctx.id);
    });
    const receipts = await Promise.all(Array.from({ length: total }, (_, n) => bus.publish(Order, { n })));
    await acked.waitForAll(
      receipts.map((r) => r.id),
      T,
      'messages after redelivery',
    );
    for (const [n, r] of receipts.entries()) {
      const attempts = attemptsSeen.get(r.id) ?? [];
      if (n < failing) {
        expect(attempts[0], `message ${n}`).toBe(1);
        expect(Math.max(...attempts), `message ${n} was redelivered`).toBeGreaterThanOrEqual(2);
        // The 'retried' outcome is reported once the retry copy is durably scheduled; the copy can
        // be delivered and handled before that report arrives, so it is awaited, not assumed.
        await spy.waitFor(r.id, { status: 'retried', timeoutMs: T }).catch((e: Error) => {
          throw new Error(`message ${n}: ${e.message}; its outcomes: ${JSON.stringify(spy.of(r.id).map((o) => o.outcome))}`);
        });
      } else {
        expect(attempts[0], `message ${n}`).toBe(1);
      }
    }
    expect(spy.outcomes.filter((o) => o.outcome.status === 'dead-lettered')).toEqual([]);
  });

  suite.test('in-flight handlers never exceed the concurrency limit (and reach it)', async (c) => {
    const concurrency = 8;
    const total = concurrency * suite.scaled(12, 6);
    const bus = await c.bus();
    const done = new Collector();
    let inFlight = 0;
    let maxInFlight = 0;
    let reachedLimit = 0;
    let waiting: (() => void)[] = [];
    await bus.subscribe(Order, { group: 'g', concurrency }, async (_d, ctx) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      // Every handler waits until the limit is reached (bounded, so the tail of the run completes).
      const released = new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        waiting.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      if (inFlight >= concurrency) {
        reachedLimit++;
        // Hold the full window a few event-loop turns: a transport over-delivering now shows up
        // as in-flight above the limit.
        const release = waiting;
        waiting = [];
        void turns(10).then(() => {
          for (const r of release) r();
        });
      }
      await released;
      inFlight--;
      done.add(ctx.id);
    });
    const receipts = await Promise.all(Array.from({ length: total }, (_, n) => bus.publish(Order, { n })));
    await done.waitForAll(
      receipts.map((r) => r.id),
      T,
      'messages under a concurrency limit',
    );
    expect(maxInFlight).toBeLessThanOrEqual(concurrency);
    expect(reachedLimit, 'the limit was reached at least once').toBeGreaterThanOrEqual(1);
  });

  suite.test('subscribers repeatedly closed and reopened lose nothing', async (c) => {
    const total = suite.scaled(5000, 500);
    const chunk = Math.max(25, Math.floor(total / 10));
    const bus = await c.bus();
    const received = new Collector();
    const handler = (_d: OrderData, ctx: HandlerContext) => {
      received.add(ctx.id);
    };
    let sub = await bus.subscribe(Order, { group: 'g', concurrency: 16 }, handler);
    const publishing = pool(total, 20, (n) => bus.publish(Order, { n }));
    publishing.catch(() => {});
    let cycles = 0;
    for (;;) {
      await received.waitForSize(Math.min(total, received.size + chunk), T, `cycle ${cycles}`);
      await sub.close();
      cycles++;
      if (received.size >= total) break;
      // Every third cycle the subscriber comes back on a new connection (a new bus).
      const next = cycles % 3 === 0 ? await c.bus() : bus;
      sub = await next.subscribe(Order, { group: 'g', concurrency: 16 }, handler);
    }
    const ids = (await publishing).map((r) => r.id);
    expect(received.missing(ids)).toEqual([]);
    expect(cycles).toBeGreaterThanOrEqual(2);
    c.reportDuplicates('reopened subscribers', received.duplicates);
  });

  suite.test('subscribe/close storms leave a fresh subscriber getting every new message', async (c) => {
    const count = suite.scaled(100, 30);
    const [bus1, bus2] = await Promise.all([c.bus(), c.bus()]);
    const seen = new Collector();
    const handler = (_d: OrderData, ctx: HandlerContext) => {
      seen.add(ctx.id);
    };
    const anchor = await bus1.subscribe(Order, { group: 'g' }, handler);
    // Messages published during the storm belong to the group whoever is connected.
    const during = Promise.all(Array.from({ length: count }, (_, n) => bus2.publish(Order, { n })));
    for (let round = 0; round < 3; round++) {
      const subs = await Promise.all(
        Array.from({ length: 4 }, (_, i) => (i % 2 ? bus1 : bus2).subscribe(Order, { group: 'g', concurrency: 2 }, handler)),
      );
      await Promise.all([
        ...subs.map((s) => s.close()),
        ...Array.from({ length: 2 }, async (_, i) => {
          const s = await (i % 2 ? bus2 : bus1).subscribe(Order, { group: 'g' }, handler);
          await s.close();
        }),
      ]);
    }
    await anchor.close();
    const freshBus = await c.bus();
    const fresh = new Collector();
    await freshBus.subscribe(Order, { group: 'g', concurrency: 4 }, (d, ctx) => {
      fresh.add(ctx.id);
      handler(d, ctx);
    });
    const after = await Promise.all(Array.from({ length: count }, (_, n) => bus2.publish(Order, { n: count + n })));
    await fresh.waitForAll(
      after.map((r) => r.id),
      T,
      'fresh subscriber after storms',
    );
    await seen.waitForAll(
      (await during).map((r) => r.id),
      T,
      'messages published during the storms',
    );
    c.reportDuplicates('storms', seen.duplicates);
  });

  suite.test('after failing subscribers close, a healthy one gets every message', async (c) => {
    const count = suite.scaled(50, 20);
    const bus = await c.bus();
    const failures = new Counter();
    const retry = { maxAttempts: 1000 };
    const failingSubs = await Promise.all(
      Array.from({ length: 3 }, () =>
        bus.subscribe(Order, { group: 'g', concurrency: 4, retry }, () => {
          failures.inc();
          throw new Error('this subscriber fails everything');
        }),
      ),
    );
    const receipts = await Promise.all(Array.from({ length: count }, (_, n) => bus.publish(Order, { n })));
    await failures.reach(count, T, 'failing subscribers to fail every message once');
    await Promise.all(failingSubs.map((s) => s.close()));
    const healthyBus = await c.bus();
    const spy = c.spy(healthyBus);
    const ok = new Collector();
    await healthyBus.subscribe(Order, { group: 'g', concurrency: 8, retry }, (_d, ctx) => {
      ok.add(ctx.id);
    });
    await ok.waitForAll(
      receipts.map((r) => r.id),
      T,
      'healthy subscriber',
    );
    expect(spy.outcomes.filter((o) => o.outcome.status === 'dead-lettered')).toEqual([]);
    c.reportDuplicates('healthy after failing', ok.duplicates);
  });

  suite.test('per-key order under concurrency and retries (or CapabilityError where not offered)', async (c) => {
    const bus = await c.bus();
    if (!bus.transport.capabilities.orderedByKey) {
      const attempt = bus.subscribe(Order, { group: 'g', ordering: 'key' }, () => {});
      await expect(attempt).rejects.toBeInstanceOf(CapabilityError);
      await expect(attempt).rejects.toMatchObject({ capability: 'orderedByKey', code: 'CAPABILITY' });
      return;
    }
    const keys = Array.from({ length: 16 }, (_, k) => `key-${k}`);
    const perKey = suite.scaled(50, 10);
    // The group exists but is idle while the backlog is written, so the consumer then faces
    // every key at once with a window (concurrency 32) wider than the number of keys.
    const creating = await bus.subscribe(Order, { group: 'g' }, () => {});
    await creating.close();
    const receipts = (
      await Promise.all(
        keys.map(async (key) => {
          const out: PublishReceipt[] = [];
          for (let seq = 0; seq < perKey; seq++) out.push(await bus.publish(Order, { n: seq, key, seq }, { key }));
          return out;
        }),
      )
    ).flat();
    const handled = new Collector();
    const successOrder = new Map<string, number[]>();
    const inFlightPerKey = new Map<string, number>();
    let overlaps = 0;
    let failed = 0;
    await bus.subscribe(Order, { group: 'g', concurrency: 32, ordering: 'key', retry: { maxAttempts: 5 } }, async (data, ctx) => {
      const key = data.key ?? '';
      const now = (inFlightPerKey.get(key) ?? 0) + 1;
      inFlightPerKey.set(key, now);
      if (now > 1) overlaps++;
      await turns(2);
      inFlightPerKey.set(key, (inFlightPerKey.get(key) ?? 1) - 1);
      // Some messages fail once: their retry must still come before the key's later messages.
      if ((data.seq ?? 0) % 7 === 3 && ctx.attempt === 1) {
        failed++;
        throw new Error('first attempt fails');
      }
      successOrder.set(key, [...(successOrder.get(key) ?? []), data.seq ?? -1]);
      handled.add(ctx.id);
    });
    await handled.waitForAll(
      receipts.map((r) => r.id),
      T,
      'ordered messages',
    );
    expect(failed).toBeGreaterThan(0);
    expect(overlaps, 'two handlers ran at once for one key').toBe(0);
    for (const key of keys) {
      const firstSuccess: number[] = [];
      for (const seq of successOrder.get(key) ?? []) if (!firstSuccess.includes(seq)) firstSuccess.push(seq);
      expect(firstSuccess, `order of ${key}`).toEqual(Array.from({ length: perKey }, (_, i) => i));
    }
    c.reportDuplicates('ordered', handled.duplicates);
  });

  suite.test('closing with publishes in flight settles every one; resolved ones are delivered', async (c) => {
    const total = suite.scaled(10_000, 1000);
    const consumer = await c.bus();
    const delivered = new Collector();
    await consumer.subscribe(Order, { group: 'g', concurrency: 64 }, (_d, ctx) => {
      delivered.add(ctx.id);
    });
    const publisher = await c.bus();
    const before: Promise<PublishReceipt>[] = [];
    for (let n = 0; n < total / 2; n++) before.push(publisher.publish(Order, { n }));
    const closing = publisher.close();
    const after: Promise<PublishReceipt>[] = [];
    for (let n = Math.ceil(total / 2); n < total; n++) after.push(publisher.publish(Order, { n }));
    const [settledBefore, settledAfter] = await within(
      Promise.all([Promise.allSettled(before), Promise.allSettled(after)]),
      T * 2,
      'every publish promise to settle',
    );
    await within(closing, T, 'publisher.close()');
    const resolved: string[] = [];
    const badErrors: unknown[] = [];
    for (const s of settledBefore) {
      if (s.status === 'fulfilled') resolved.push(s.value.id);
      else if (!isBusError(s.reason)) badErrors.push(s.reason);
    }
    expect(badErrors).toEqual([]);
    for (const s of settledAfter) {
      expect(s.status).toBe('rejected');
      if (s.status === 'rejected') expect(s.reason).toBeInstanceOf(BusClosedError);
    }
    await delivered.waitForAll(resolved, T, 'resolved publishes');
    console.info(
      `[conformance ${suite.target.name}] close with ${before.length} publishes in flight: ${resolved.length} resolved, ${before.length - resolved.length} rejected`,
    );
  });

  suite.test('topics are isolated: a subscriber of B gets nothing published to A', async (c) => {
    const A = topicEvent(0);
    const B = topicEvent(1);
    const bus = await c.bus();
    const onA = new Collector();
    const onB = new Collector();
    await bus.subscribe(A, { group: 'g' }, (_d, ctx) => {
      onA.add(ctx.id);
    });
    await bus.subscribe(B, { group: 'g' }, (_d, ctx) => {
      onB.add(ctx.id);
    });
    const count = suite.scaled(20, 10);
    const toA = await Promise.all(Array.from({ length: count }, (_, n) => bus.publish(A, { topic: 0, n })));
    await onA.waitForAll(
      toA.map((r) => r.id),
      T,
      'messages on A',
    );
    const sentinel = await bus.publish(B, { topic: 1, n: 0 });
    await onB.waitForAll([sentinel.id], T, 'sentinel on B');
    expect(onB.ids()).toEqual([sentinel.id]);
    expect(onA.has(sentinel.id)).toBe(false);
  });

  suite.test('an abort signal closes the subscription cleanly; the group keeps its later messages', async (c) => {
    const bus = await c.bus();
    const controller = new AbortController();
    const first = new Collector();
    let closed = false;
    let afterClose = 0;
    const sub: Subscription = await bus.subscribe(Order, { group: 'g', signal: controller.signal }, (_d, ctx) => {
      if (closed) afterClose++;
      first.add(ctx.id);
    });
    const m1 = await bus.publish(Order, { n: 1 });
    await first.waitForAll([m1.id], T, 'message before abort');
    controller.abort();
    await within(sub.closed, T, 'sub.closed after abort');
    closed = true;
    const later = await Promise.all(Array.from({ length: 5 }, (_, n) => bus.publish(Order, { n: 10 + n })));
    await expect(bus.subscribe(Order, { group: 'g', signal: controller.signal }, () => {})).rejects.toBeInstanceOf(BusClosedError);
    const second = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      second.add(ctx.id);
    });
    await second.waitForAll(
      later.map((r) => r.id),
      T,
      'messages published after abort, on resubscribe',
    );
    expect(afterClose).toBe(0);
    expect(later.filter((r) => first.has(r.id))).toEqual([]);
  });

  suite.test('a signal aborted while subscribe is in flight still closes the subscription', async (c) => {
    const bus = await c.bus();
    const controller = new AbortController();
    const aborted = new Collector();
    const pending = bus.subscribe(Order, { group: 'g', signal: controller.signal }, (_d, ctx) => {
      aborted.add(ctx.id);
    });
    controller.abort();
    const outcome = await pending.then(
      (sub) => within(sub.closed, T, 'sub.closed of a subscription aborted while subscribing').then(() => 'closed'),
      (error: unknown) => error,
    );
    if (outcome !== 'closed') expect(outcome).toBeInstanceOf(BusClosedError);
    const live = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      live.add(ctx.id);
    });
    const receipts = await Promise.all(Array.from({ length: 6 }, (_, n) => bus.publish(Order, { n })));
    await live.waitForAll(
      receipts.map((r) => r.id),
      T,
      'live member',
    );
    expect(aborted.size, 'the aborted subscription handled messages').toBe(0);
  });
}
