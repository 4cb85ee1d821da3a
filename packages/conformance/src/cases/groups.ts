/**
 * Consumer groups: competing members, independent groups, durable group positions, new groups
 * reading history, publish durability as seen by a separate client, and subscribe's
 * "starting position fixed" promise.
 */
import { CapabilityError, type PublishReceipt } from '@busbar/core';
import { HeaderNames } from '@busbar/core/transport';
import { expect } from 'vitest';
import { Order } from '../events.js';
import { Collector, type Suite } from '../helpers.js';

export function groupCases(suite: Suite): void {
  const T = suite.timeoutMs;

  suite.test('members of one group compete: each message is handled once by one member', async (c) => {
    const members = 3;
    const count = suite.scaled(300, 60);
    const buses = await Promise.all(Array.from({ length: members }, () => c.bus()));
    const all = new Collector();
    const perMember = Array.from({ length: members }, () => new Collector());
    await Promise.all(
      buses.map((bus, m) =>
        bus.subscribe(Order, { group: 'g', concurrency: 4 }, (_d, ctx) => {
          perMember[m]?.add(ctx.id);
          all.add(ctx.id);
        }),
      ),
    );
    const publisher = await c.bus();
    const receipts = await Promise.all(Array.from({ length: count }, (_, n) => publisher.publish(Order, { n }, { key: `k${n}` })));
    const ids = receipts.map((r) => r.id);
    await all.waitForAll(ids, T, 'competing consumers');
    // A clean run (no failures, no restarts): every id handled exactly once by the whole group.
    const counts = ids.map((id) => all.count(id)).filter((n) => n !== 1);
    expect(counts, 'ids handled more than once in a clean run').toEqual([]);
    expect(all.size).toBe(count);
    if (buses[0]?.transport.capabilities.balancedAssignment) {
      perMember.forEach((col, m) => {
        expect(col.size, `member ${m} got a share`).toBeGreaterThanOrEqual(1);
      });
    }
    console.info(`[conformance ${suite.target.name}] competing consumers shares: ${perMember.map((col) => col.size).join('/')}`);
  });

  suite.test('two groups each get every message', async (c) => {
    const count = suite.scaled(200, 40);
    const [busA, busB] = await Promise.all([c.bus(), c.bus()]);
    const a = new Collector();
    const b = new Collector();
    await busA.subscribe(Order, { group: 'a', concurrency: 4 }, (_d, ctx) => {
      a.add(ctx.id);
    });
    await busB.subscribe(Order, { group: 'b', concurrency: 4 }, (_d, ctx) => {
      b.add(ctx.id);
    });
    const receipts = await Promise.all(Array.from({ length: count }, (_, n) => busA.publish(Order, { n })));
    const ids = receipts.map((r) => r.id);
    await Promise.all([a.waitForAll(ids, T, 'group a'), b.waitForAll(ids, T, 'group b')]);
    c.reportDuplicates('two groups', a.duplicates + b.duplicates);
  });

  suite.test('a group keeps receiving while it has no live subscriber', async (c) => {
    const count = suite.scaled(50, 10);
    const bus = await c.bus();
    const sub = await bus.subscribe(Order, { group: 'g' }, () => {});
    await sub.close();
    const receipts = await Promise.all(Array.from({ length: count }, (_, n) => bus.publish(Order, { n })));
    // Resubscribe from another connection, as a restarted process would.
    const later = await c.bus();
    const got = new Collector();
    await later.subscribe(Order, { group: 'g', concurrency: 4 }, (_d, ctx) => {
      got.add(ctx.id);
    });
    await got.waitForAll(
      receipts.map((r) => r.id),
      T,
      'messages published while the group had no subscriber',
    );
  });

  suite.test('a new group reads old messages from the earliest (or CapabilityError where not offered)', async (c) => {
    const bus = await c.bus();
    if (!bus.transport.capabilities.newGroupFromEarliest) {
      const attempt = bus.subscribe(Order, { group: 'late', startFrom: 'earliest' }, () => {});
      await expect(attempt).rejects.toBeInstanceOf(CapabilityError);
      await expect(attempt).rejects.toMatchObject({ capability: 'newGroupFromEarliest', code: 'CAPABILITY' });
      return;
    }
    const count = suite.scaled(30, 10);
    const old = await Promise.all(Array.from({ length: count }, (_, n) => bus.publish(Order, { n })));
    const earliest = new Collector();
    const latest = new Collector();
    await bus.subscribe(Order, { group: 'late', startFrom: 'earliest', concurrency: 4 }, (_d, ctx) => {
      earliest.add(ctx.id);
    });
    await bus.subscribe(Order, { group: 'fresh', startFrom: 'latest' }, (_d, ctx) => {
      latest.add(ctx.id);
    });
    const sentinel = await bus.publish(Order, { n: count });
    await earliest.waitForAll([...old.map((r) => r.id), sentinel.id], T, 'earliest group reading history');
    await latest.waitForAll([sentinel.id], T, 'latest group sentinel');
    expect(old.filter((r) => latest.has(r.id)).length, 'a latest group must not read history').toBe(0);
  });

  suite.test('after publish resolves, a separate raw client sees the message', async (c) => {
    const bus = await c.bus();
    const probe = await c.observe(bus.topicOf(Order));
    for (let n = 0; n < 5; n++) {
      const receipt = await bus.publish(Order, { n }, { headers: { 'x-n': String(n) } });
      const wire = await probe.waitFor(receipt.id, T);
      expect(wire.headers['x-n']).toBe(String(n));
      expect(JSON.parse(new TextDecoder().decode(wire.body))).toEqual({ n });
    }
    // Resolved means held by the broker: closing the publisher right away loses nothing.
    const last = await bus.publish(Order, { n: 5 });
    await bus.close();
    const wire = await probe.waitFor(last.id, T);
    expect(wire.headers[HeaderNames.id]).toBe(last.id);
  });

  suite.test('after subscribe resolves, nothing published later is missed', async (c) => {
    const bus = await c.bus();
    const rounds = 5;
    await Promise.all(
      Array.from({ length: rounds }, async (_, i) => {
        const got = new Collector();
        await bus.subscribe(Order, { group: `fresh-${i}` }, (_d, ctx) => {
          got.add(ctx.id);
        });
        const receipts: PublishReceipt[] = [await bus.publish(Order, { n: i })];
        receipts.push(await bus.publish(Order, { n: i + 100 }));
        await got.waitForAll(
          receipts.map((r) => r.id),
          T,
          `group fresh-${i}`,
        );
      }),
    );
  });
}
