/**
 * Redis-specific behaviour on the real Redis: the idempotency store (atomic effect exactly once,
 * lease loss, usable with another transport), where retries wait (the failing group's delayed set,
 * attempt carried across a restart), and the opt-in `acked` retention.
 */
import { randomUUID } from 'node:crypto';
import { defineEvent, EventBus, LeaseLostError, OutcomeSpy, PublishRejectedError, silentLogger } from '@busbar/core';
import type { Delivery, OutgoingMessage } from '@busbar/core/transport';
import { MemoryBroker, MemoryTransport } from '@busbar/memory';
import { RedisIdempotencyStore, RedisStreamsTransport } from '@busbar/redis-streams';
import { type ChainableCommander, Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { brokerForTests } from '../brokers/resolve.js';
import { deleteNamespace, IdSet, rawDecode, rawWriteLegacy, streamOf } from './kit.js';

const broker = await brokerForTests('redis');
const FAST = { initialMs: 20, maxMs: 50, minMs: 10 };
/** Deliveries a transport hands over, awaited one at a time (no polling, no sleeps). */
class DeliveryInbox {
  private readonly queue: Delivery[] = [];
  private waiter: ((d: Delivery) => void) | undefined;

  add(d: Delivery): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    if (waiter) waiter(d);
    else this.queue.push(d);
  }

  /** The next delivery; rejects after `timeoutMs`. */
  next(timeoutMs: number): Promise<Delivery> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`no delivery within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (d) => {
        clearTimeout(timer);
        resolve(d);
      };
    });
  }
}

const ns = (tag: string) => `rs${tag}${randomUUID().replaceAll('-', '').slice(0, 10)}`;
const Paid = defineEvent({ type: 'order.paid', schema: z.object({ order: z.string() }) });

describe.skipIf(!broker)('redis-streams specifics', () => {
  const url = broker?.url ?? '';
  const admin = new Redis(url);
  admin.on('error', () => {});
  afterAll(async () => {
    admin.disconnect();
    await broker?.stop();
  });

  it('configuration errors are ConfigErrors without credentials; an unreachable Redis fails publishes fast', async () => {
    expect(() => new RedisStreamsTransport({ url: 'http://app:s3cret@localhost:6379' })).toThrow(/redis:\/\//);
    try {
      new RedisStreamsTransport({ url: 'http://app:s3cret@localhost:6379' });
    } catch (error) {
      expect((error as Error).name).toBe('ConfigError');
      expect((error as Error).message).not.toContain('s3cret');
    }
    const closedPort = 1; // nothing listens on port 1
    const bus = new EventBus({
      transport: new RedisStreamsTransport({ url: `redis://app:s3cret@127.0.0.1:${closedPort}`, reconnect: { initialMs: 20, maxMs: 100 } }),
      namespace: ns('u'),
    });
    try {
      await expect(bus.ready({ timeoutMs: 500 })).rejects.toMatchObject({ code: 'BROKER_UNAVAILABLE' });
      const error = await bus.publish(Paid, { order: 'x' }, { timeoutMs: 2_000 }).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(error).toMatchObject({ code: 'BROKER_UNAVAILABLE' });
      expect(error?.message).not.toContain('s3cret');
      expect(['connecting', 'reconnecting', 'disconnected']).toContain(bus.health().transport.state);
      expect(JSON.stringify(bus.health())).not.toContain('s3cret');
    } finally {
      await bus.close();
    }
  });

  it('RedisIdempotencyStore: claim / complete with an atomic effect / duplicate / lost lease', async () => {
    const scope = `${ns('i')}|g`;
    const counter = `${scope}:counter`;
    const store = new RedisIdempotencyStore({ client: admin });
    try {
      const first = await store.claim(scope, 'k1', 5_000);
      expect(first.status).toBe('acquired');
      expect((await store.claim(scope, 'k1', 5_000)).status).toBe('in-progress');
      if (first.status !== 'acquired') throw new Error('unreachable');
      await store.complete(scope, 'k1', first.token, 60_000, [(tx) => void tx.incr(counter)]);
      expect(await admin.get(counter)).toBe('1');
      expect(await admin.get(store.keyOf(scope, 'k1'))).toBe('done');
      expect((await store.claim(scope, 'k1', 5_000)).status).toBe('completed');

      // Lease lost: another holder took the key; the effect must not apply.
      const a = await store.claim(scope, 'k2', 5_000);
      if (a.status !== 'acquired') throw new Error('expected acquired');
      await admin.del(store.keyOf(scope, 'k2')); // as if the lease had expired
      const b = await store.claim(scope, 'k2', 5_000);
      expect(b.status).toBe('acquired');
      await expect(store.complete(scope, 'k2', a.token, 60_000, [(tx) => void tx.incr(counter)])).rejects.toBeInstanceOf(LeaseLostError);
      await expect(store.extend(scope, 'k2', a.token, 5_000)).rejects.toBeInstanceOf(LeaseLostError);
      await store.release(scope, 'k2', a.token); // not the holder: a no-op
      expect(await admin.get(store.keyOf(scope, 'k2'))).not.toBeNull();
      if (b.status !== 'acquired') throw new Error('expected acquired');
      await store.extend(scope, 'k2', b.token, 10_000);
      expect(await admin.pttl(store.keyOf(scope, 'k2'))).toBeGreaterThan(5_000);
      await store.release(scope, 'k2', b.token);
      expect(await admin.get(store.keyOf(scope, 'k2'))).toBeNull();
      expect(await admin.get(counter)).toBe('1');
    } finally {
      await store.close();
      await admin.del(counter, store.keyOf(scope, 'k1'), store.keyOf(scope, 'k2'));
    }
  });

  for (const kind of ['redis-streams', 'memory'] as const) {
    it(`an effect committed with the completion mark happens once per idempotency key (${kind} transport)`, async () => {
      const namespace = ns('e');
      const counter = `${namespace}:paid`;
      const store = new RedisIdempotencyStore({ url });
      const transport = kind === 'memory' ? new MemoryTransport({ broker: new MemoryBroker() }) : new RedisStreamsTransport({ url });
      const bus = new EventBus({ transport, namespace, idempotency: { store }, retry: { backoff: FAST } });
      const spy = new OutcomeSpy(bus);
      try {
        let runs = 0;
        await bus.subscribe(Paid, { group: 'billing', concurrency: 3 }, (_d, ctx) => {
          runs++;
          ctx.commitWithCompletion<ChainableCommander>((tx) => void tx.incr(counter));
        });
        const receipts = [];
        for (let i = 0; i < 3; i++) receipts.push(await bus.publish(Paid, { order: 'o-1' }, { idempotencyKey: 'order-o-1' }));
        const outcomes = await Promise.all(
          receipts.map((r) =>
            spy.waitUntil((o) => o.info.id === r.id && (o.outcome.status === 'acked' || o.outcome.status === 'duplicate'), {
              timeoutMs: 15_000,
            }),
          ),
        );
        expect(outcomes.filter((o) => o.outcome.status === 'acked')).toHaveLength(1);
        expect(await admin.get(counter)).toBe('1');
        expect(runs).toBeLessThanOrEqual(3);
      } finally {
        spy.dispose();
        await bus.close();
        await store.close();
        await admin.del(counter);
        await deleteNamespace(admin, namespace);
      }
    });
  }

  it('a retry waits in the failing group’s delayed set, reaches only that group, and keeps its attempt across a restart', async () => {
    const namespace = ns('r');
    const topic = `${namespace}.${Paid.type}`;
    const stream = streamOf(topic);
    const mk = () =>
      new EventBus({
        transport: new RedisStreamsTransport({ url, retryPollMs: 100 }),
        namespace,
        retry: { maxAttempts: 5, backoff: FAST },
      });
    const bus1 = mk();
    const spy1 = new OutcomeSpy(bus1);
    let bus2: EventBus | undefined;
    try {
      const other = new IdSet();
      await bus1.subscribe(Paid, { group: 'audit' }, (_d, ctx) => void other.add(ctx.id));
      const failing = await bus1.subscribe(Paid, { group: 'billing' }, (_d, ctx) => ctx.retry({ delayMs: 60_000, reason: 'later' }));
      const { id } = await bus1.publish(Paid, { order: 'o-2' });
      await spy1.waitFor(id, { status: 'retried', group: 'billing', timeoutMs: 10_000 });
      await other.waitFor(1, 10_000, 'audit delivery');

      // Held by Redis: one member in billing's delayed set, carrying attempt 2; nothing pending.
      const delayed = `${stream}:billing:delayed`;
      const [member, score] = await admin.zrangeBuffer(delayed, 0, -1, 'WITHSCORES');
      expect(await admin.zcard(delayed)).toBe(1);
      expect(Number(score?.toString())).toBeGreaterThan(Date.now() + 30_000);
      expect(member?.toString('latin1')).toContain('ce_busbarattempt');
      expect((await admin.xpending(stream, 'billing'))[0]).toBe(0);
      await failing.close();

      // Make it due now (as time would), then a new process consumes it as attempt 2.
      await admin.zadd(delayed, 0, member as Buffer);
      expect(await admin.zcard(delayed)).toBe(1);
      await bus1.close();
      bus2 = mk();
      const spy2 = new OutcomeSpy(bus2);
      const attempts: number[] = [];
      await bus2.subscribe(Paid, { group: 'billing' }, (_d, ctx) => void attempts.push(ctx.attempt));
      await spy2.waitFor(id, { status: 'acked', timeoutMs: 10_000 });
      spy2.dispose();
      expect(attempts).toEqual([2]);
      expect(await admin.xlen(`${stream}:billing:retry`)).toBe(0); // acked retry copies are deleted
      expect(other.total).toBe(1); // the audit group never saw the retry
      expect(await admin.exists(`${stream}:audit:delayed`, `${stream}:audit:retry`)).toBeLessThanOrEqual(1);
      expect(await admin.zcard(`${stream}:audit:delayed`)).toBe(0);
    } finally {
      spy1.dispose();
      await bus1.close();
      await bus2?.close();
      await deleteNamespace(admin, namespace);
    }
  });

  it('dead letters land in the group’s dlq stream byte-for-byte and replay through the core API', async () => {
    const namespace = ns('d');
    const stream = streamOf(`${namespace}.${Paid.type}`);
    const bus = new EventBus({ transport: new RedisStreamsTransport({ url }), namespace, retry: { backoff: FAST } });
    const spy = new OutcomeSpy(bus);
    try {
      let fail = true;
      const handled = new IdSet();
      await bus.subscribe(Paid, { group: 'billing' }, (_d, ctx) => {
        if (fail) ctx.deadLetter('bad order');
        handled.add(ctx.id);
      });
      const { id } = await bus.publish(Paid, { order: 'o-3' });
      await spy.waitFor(id, { status: 'dead-lettered', timeoutMs: 10_000 });
      const rows = (await admin.callBuffer('XRANGE', `${stream}:billing:dlq`, '-', '+')) as [Buffer, Buffer[]][];
      expect(rows).toHaveLength(1);
      const dl = rawDecode((rows[0] as [Buffer, Buffer[]])[1]);
      expect(Buffer.from(dl.body).toString()).toBe(JSON.stringify({ order: 'o-3' }));
      expect(dl.headers).toMatchObject({ ce_id: id, ce_busbardlreason: 'handler-requested', ce_busbardlgroup: 'billing' });
      fail = false;
      const replayed = await bus.deadLetters(Paid, 'billing').replay();
      expect(replayed.map((d) => d.id)).toEqual([id]);
      await handled.waitFor(1, 10_000, 'replayed delivery');
      expect(await admin.xlen(`${stream}:billing:dlq`)).toBe(0);
    } finally {
      spy.dispose();
      await bus.close();
      await deleteNamespace(admin, namespace);
    }
  });

  it('SPI: redeliveries = Redis delivery count − 1; release counts nothing; retry and dead letter write exactly the headers given', async () => {
    const namespace = ns('s');
    const topic = `${namespace}.${Paid.type}`;
    const stream = streamOf(topic);
    const spec = { topic, group: 'g', concurrency: 4, startFrom: 'earliest', orderedByKey: false } as const;
    const options = { url, claimIdleMs: 300, claimIntervalMs: 50, retryPollMs: 50 };
    const context = { logger: silentLogger, emit: () => {} };
    const t1 = new RedisStreamsTransport(options);
    const t2 = new RedisStreamsTransport(options);
    await t1.connect(context);
    await t2.connect(context);
    try {
      const body = new Uint8Array([0x7b, 0xff, 0x00, 0x7d]);
      const original = { ce_id: 'm1', ce_busbarattempt: '5', 'x-original': 'yes' };
      const [published] = await t1.publish([{ topic, id: 'm1', headers: original, body }], new AbortController().signal);
      expect(published?.ok).toBe(true);
      const first = new DeliveryInbox();
      const sub1 = await t1.subscribe(spec, (d) => first.add(d));
      const d1 = await first.next(10_000);
      expect(d1.redeliveries).toBe(0);
      expect(d1).not.toHaveProperty('attempt'); // core computes the attempt; the transport reports counts only
      expect(d1.headers).toEqual(original);
      // A release gives the entry back natively (the copy headers are not written) without counting.
      await d1.release({ 'x-not-written': '1' });
      const d2 = await first.next(10_000);
      expect([d2.position, d2.redeliveries, d2.headers]).toEqual([d1.position, 0, original]);
      // Left pending by a member that went away: claimed by another member after claimIdleMs, counted.
      await sub1.close();
      const second = new DeliveryInbox();
      await t2.subscribe(spec, (d) => second.add(d));
      const d3 = await second.next(10_000);
      expect([d3.position, d3.redeliveries]).toEqual([d1.position, 1]);
      // The retry copy carries exactly the headers given: nothing merged from the original, no attempt arithmetic.
      const retryHeaders = { ce_id: 'm1', 'x-retry': 'only these' };
      await d3.retry(0, retryHeaders);
      const d4 = await second.next(10_000);
      expect(d4.position).toMatch(/:g:retry\//);
      expect([d4.headers, [...d4.body], d4.redeliveries]).toEqual([retryHeaders, [...body], 0]);
      const deadHeaders = { ce_id: 'm1', ce_busbardlreason: 'handler-requested', 'x-dead': 'exactly' };
      await d4.deadLetter(deadHeaders);
      const rows = (await admin.callBuffer('XRANGE', `${stream}:g:dlq`, '-', '+')) as [Buffer, Buffer[]][];
      expect(rows.map(([, fields]) => rawDecode(fields)).map((m) => [m.headers, [...m.body]])).toEqual([[deadHeaders, [...body]]]);
      expect((await admin.xpending(stream, 'g'))[0]).toBe(0);
      expect((await admin.xpending(`${stream}:g:retry`, 'g'))[0]).toBe(0);
    } finally {
      await Promise.allSettled([t1.close(), t2.close()]);
      await deleteNamespace(admin, namespace);
    }
  });

  it('publish: one APPEND per stream; each message has its own outcome; bodies byte-for-byte, header values exact', async () => {
    const namespace = ns('p');
    const transport = new RedisStreamsTransport({ url });
    await transport.connect({ logger: silentLogger, emit: () => {} });
    try {
      const [a, b, bad] = ['a', 'b', 'bad'].map((t) => `${namespace}.${t}`) as [string, string, string];
      await admin.set(streamOf(bad), 'not a stream'); // XADD to it fails with WRONGTYPE
      const json = new TextEncoder().encode('{"ü":"✓"}');
      const bodies = [new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), new Uint8Array(0), json]; // not UTF-8, empty, UTF-8
      const batch: OutgoingMessage[] = [
        ...bodies.map((body, i) => ({ topic: a, id: `a${i}`, headers: { ce_id: `a${i}`, 'x-i': String(i) }, body })),
        { topic: bad, id: 'bad0', headers: { ce_id: 'bad0' }, body: json },
        { topic: b, id: 'b0', headers: { ce_id: 'b0', 'x-odd': '\u0000\n"\\ \ud800 ✓' }, body: json },
        { topic: bad, id: 'bad1', headers: { ce_id: 'bad1' }, body: json },
      ];
      const outcomes = await transport.publish(batch, new AbortController().signal);
      expect(outcomes.map((o) => o.ok)).toEqual([true, true, true, false, true, false]);
      for (const i of [3, 5]) {
        const outcome = outcomes[i];
        expect(outcome?.ok === false && outcome.error).toBeInstanceOf(PublishRejectedError);
        expect(outcome?.ok === false && outcome.error.message).toMatch(/WRONGTYPE/);
      }
      const read = async (topic: string) =>
        ((await admin.callBuffer('XRANGE', streamOf(topic), '-', '+')) as [Buffer, Buffer[]][]).map(([, fields]) => rawDecode(fields));
      const onA = await read(a);
      expect(onA.map((m) => m.headers)).toEqual([0, 1, 2].map((i) => ({ ce_id: `a${i}`, 'x-i': String(i) })));
      expect(onA.map((m) => [...m.body])).toEqual(bodies.map((body) => [...body]));
      const onB = await read(b);
      expect(onB.map((m) => m.headers)).toEqual([{ ce_id: 'b0', 'x-odd': '\u0000\n"\\ \ud800 ✓' }]);
    } finally {
      await transport.close();
      await deleteNamespace(admin, namespace);
    }
  });

  it('wire layout: an entry is `_headers` (JSON) + `body`; entries of the earlier one-field-per-header layout are still read', async () => {
    const namespace = ns('w');
    const topic = `${namespace}.${Paid.type}`;
    const stream = streamOf(topic);
    const bus = new EventBus({ transport: new RedisStreamsTransport({ url, retryPollMs: 100 }), namespace, retry: { backoff: FAST } });
    const spy = new OutcomeSpy(bus);
    try {
      const seen = new Map<string, { headers: Record<string, string>; order: string; attempt: number }>();
      await bus.subscribe(Paid, { group: 'billing', concurrency: 8 }, (d, ctx) => {
        seen.set(ctx.id, { headers: { ...ctx.headers }, order: d.order, attempt: ctx.attempt });
      });

      // What a publish writes: exactly two fields, readable with XRANGE.
      const { id } = await bus.publish(Paid, { order: 'o-w' }, { headers: { tenant: 'acme', body: 'not the body' } });
      const rows = (await admin.callBuffer('XRANGE', stream, '-', '+')) as [Buffer, Buffer[]][];
      const fields = (rows[0] as [Buffer, Buffer[]])[1];
      expect(fields.map((f, i) => (i % 2 === 0 ? f.toString() : undefined)).filter(Boolean)).toEqual(['_headers', 'body']);
      expect(JSON.parse((fields[1] as Buffer).toString())).toMatchObject({
        ce_id: id,
        ce_type: Paid.type,
        tenant: 'acme',
        body: 'not the body',
      });
      expect((fields[3] as Buffer).toString()).toBe(JSON.stringify({ order: 'o-w' }));
      await spy.waitFor(id, { status: 'acked', timeoutMs: 10_000 });
      expect(seen.get(id)?.headers).toEqual({ tenant: 'acme', body: 'not the body' });

      // Entries written by an earlier version: on the event stream and on the group's retry stream.
      const legacy = (order: string, extra: Record<string, string> = {}) => {
        const legacyId = randomUUID();
        const headers: Record<string, string> = {
          ce_id: legacyId,
          ce_source: 'urn:test',
          ce_specversion: '1.0',
          ce_type: Paid.type,
          'content-type': 'application/json',
          ce_idempotencykey: legacyId,
          ...extra,
        };
        return { id: legacyId, message: { headers, body: new TextEncoder().encode(JSON.stringify({ order })) } };
      };
      const onStream = legacy('o-legacy', { body: 'a header named body', '\\odd': 'x', 'x-bin': '\u0001\u00ff\ufffd' });
      await rawWriteLegacy(admin, topic, onStream.message);
      const onRetry = legacy('o-legacy-retry', { ce_busbarattempt: '3' });
      const retryFields: string[] = [];
      for (const [k, v] of Object.entries(onRetry.message.headers)) retryFields.push(k, v);
      await admin.xadd(`${stream}:billing:retry`, '*', ...retryFields, 'body', Buffer.from(onRetry.message.body));

      await spy.waitFor(onStream.id, { status: 'acked', timeoutMs: 10_000 });
      await spy.waitFor(onRetry.id, { status: 'acked', timeoutMs: 10_000 });
      expect(seen.get(onStream.id)).toEqual({
        headers: { body: 'a header named body', '\\odd': 'x', 'x-bin': '\u0001\u00ff\ufffd' },
        order: 'o-legacy',
        attempt: 1,
      });
      expect(seen.get(onRetry.id)).toMatchObject({ order: 'o-legacy-retry', attempt: 3 });
      expect(await admin.xlen(`${stream}:billing:retry`)).toBe(0); // acknowledged retry entries are deleted
      expect((await admin.xpending(stream, 'billing'))[0]).toBe(0);
    } finally {
      spy.dispose();
      await bus.close();
      await deleteNamespace(admin, namespace);
    }
  });

  it('a settled delivery frees its slot before its XACK replies: at most `concurrency` handlers, at most 2 × `concurrency` pending', async () => {
    const namespace = ns('c');
    const topic = `${namespace}.${Paid.type}`;
    const stream = streamOf(topic);
    const concurrency = 4;
    const total = 60;
    const transport = new RedisStreamsTransport({ url });
    const bus = new EventBus({ transport, namespace, retry: { backoff: FAST } });
    try {
      // A backlog, so that every read can be full.
      await bus.subscribe(Paid, { group: 'g', concurrency }, () => {}).then((s) => s.close());
      await Promise.all(Array.from({ length: total }, (_, i) => bus.publish(Paid, { order: `o-${i}` })));
      // Fault injection on the real client: every XACK reaches Redis 30 ms late, so settled
      // deliveries stay pending in Redis for a while (their slots are what this test is about).
      const client = (transport as unknown as { connection: { client: Redis } }).connection.client;
      const call = client.call.bind(client) as (...args: unknown[]) => Promise<unknown>;
      (client as unknown as { call: typeof call }).call = (...args) =>
        args[0] === 'XACK' ? new Promise((resolve) => setTimeout(resolve, 30)).then(() => call(...args)) : call(...args);
      const seen = new IdSet();
      let running = 0;
      let maxRunning = 0;
      let maxPending = 0;
      await bus.subscribe(Paid, { group: 'g', concurrency }, async (_d, ctx) => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        try {
          // Entries the group read and Redis has no acknowledgement for (handled here, or XACK on its way).
          const [pending] = (await admin.xpending(stream, 'g')) as [number];
          maxPending = Math.max(maxPending, pending);
        } finally {
          running--;
        }
        seen.add(ctx.id);
      });
      await seen.waitFor(total, 30_000, 'consumer');
      expect(maxRunning).toBe(concurrency);
      // The next read went out while the previous batch's XACK was delayed (not after it) …
      expect(maxPending).toBeGreaterThan(concurrency);
      // … but no more than `concurrency` settled deliveries wait for their XACK reply.
      expect(maxPending).toBeLessThanOrEqual(2 * concurrency);
      expect(seen.total).toBe(total); // nothing delivered twice
    } finally {
      await bus.close();
      await deleteNamespace(admin, namespace);
    }
  });

  it("retention 'acked' trims only below what every group has read and acknowledged (XTRIM MINID)", async () => {
    const namespace = ns('t');
    const topic = `${namespace}.${Paid.type}`;
    const stream = streamOf(topic);
    const transport = new RedisStreamsTransport({ url, retention: { trim: 'acked', intervalMs: 60_000 } });
    const bus = new EventBus({ transport, namespace, retry: { backoff: FAST } });
    try {
      const fast = new IdSet();
      await bus.subscribe(Paid, { group: 'fast' }, (_d, ctx) => void fast.add(ctx.id));
      const lagging = await bus.subscribe(Paid, { group: 'lagging' }, () => {});
      await lagging.close(); // the group exists and has read nothing
      for (let i = 0; i < 10; i++) await bus.publish(Paid, { order: `o-${i}` });
      await fast.waitFor(10, 10_000, 'fast group');
      expect(await transport.trimAcked(topic)).toBe(0); // 'lagging' still has all 10 to read
      expect(await admin.xlen(stream)).toBe(10);

      const spy = new OutcomeSpy(bus);
      let held: (() => void) | undefined;
      const release = new Promise<void>((r) => {
        held = r;
      });
      let first = true;
      await bus.subscribe(Paid, { group: 'lagging', concurrency: 10 }, async () => {
        if (first) {
          first = false;
          await release; // keep the oldest entry pending
        }
      });
      await spy.waitUntil(
        (o) =>
          o.info.group === 'lagging' && o.outcome.status === 'acked' && spy.outcomes.filter((x) => x.info.group === 'lagging').length === 9,
        { timeoutMs: 10_000 },
      );
      expect(await transport.trimAcked(topic)).toBe(0); // the oldest one is still pending
      held?.();
      await spy.waitUntil(() => spy.outcomes.filter((x) => x.info.group === 'lagging' && x.outcome.status === 'acked').length === 10, {
        timeoutMs: 10_000,
      });
      spy.dispose();
      expect(await transport.trimAcked(topic)).toBe(10);
      expect(await admin.xlen(stream)).toBe(0);
    } finally {
      await bus.close();
      await deleteNamespace(admin, namespace);
    }
  });
});
