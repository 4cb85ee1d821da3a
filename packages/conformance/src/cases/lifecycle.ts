/**
 * Lifecycle and validation: closed buses refuse work, close drains in-flight handlers, health
 * follows the connection, publish validates before any I/O, handler-directed outcomes
 * (dead letter, non-retryable, retry with delay, timeout) and lease extension.
 */
import { BusClosedError, CapabilityError, NonRetryableError, PayloadTooLargeError, ValidationError } from '@busbar/core';
import { expect } from 'vitest';
import { Order } from '../events.js';
import { Collector, deadLettered, deferred, type Suite, turns, within } from '../helpers.js';

export function lifecycleCases(suite: Suite): void {
  const T = suite.timeoutMs;

  suite.test('a closed bus rejects publish and subscribe with BusClosedError', async (c) => {
    const bus = await c.bus();
    await bus.close();
    await expect(bus.publish(Order, { n: 1 })).rejects.toBeInstanceOf(BusClosedError);
    await expect(bus.subscribe(Order, { group: 'g' }, () => {})).rejects.toBeInstanceOf(BusClosedError);
    await expect(bus.close()).resolves.toBeUndefined();
    expect(bus.health().status).toBe('down');
  });

  suite.test('close waits for in-flight handlers, which complete and are acknowledged', async (c) => {
    const bus = await c.bus({ closeTimeoutMs: T });
    const spy = c.spy(bus);
    const started = deferred();
    const gate = deferred();
    const order: string[] = [];
    await bus.subscribe(Order, { group: 'g' }, async () => {
      started.resolve();
      await gate.promise;
      order.push('handler-done');
    });
    const { id } = await bus.publish(Order, { n: 1 });
    await within(started.promise, T, 'handler start');
    const closing = bus.close().then(() => order.push('closed'));
    await turns(20);
    expect(order, 'close resolved while a handler was running').toEqual([]);
    gate.resolve();
    await within(closing, T, 'bus.close()');
    expect(order).toEqual(['handler-done', 'closed']);
    expect(spy.of(id).map((r) => r.outcome.status)).toEqual(['acked']);
    // Acknowledged: a new member of the group gets a later message but not this one again.
    const next = await c.bus();
    const got = new Collector();
    await next.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      got.add(ctx.id);
    });
    const sentinel = await next.publish(Order, { n: 2 });
    await got.waitForAll([sentinel.id], T, 'sentinel after close');
    expect(got.has(id)).toBe(false);
  });

  suite.test('close past its deadline aborts the handler and the message comes back to the group', async (c) => {
    const bus = await c.bus({ closeTimeoutMs: 100 });
    const spy = c.spy(bus);
    const started = deferred();
    let sawAbort = false;
    await bus.subscribe(Order, { group: 'g' }, async (_d, ctx) => {
      started.resolve();
      await new Promise<void>((resolve) => {
        const fallback = setTimeout(resolve, T);
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(fallback);
          sawAbort = true;
          resolve();
        });
      });
    });
    const { id } = await bus.publish(Order, { n: 1 });
    await within(started.promise, T, 'handler start');
    await within(bus.close(), T, 'bus.close() past its deadline');
    expect(sawAbort).toBe(true);
    expect(spy.of(id).map((r) => r.outcome.status)).toEqual(['released']);
    const next = await c.bus();
    const got = new Collector();
    const attempts: number[] = [];
    await next.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      attempts.push(ctx.attempt);
      got.add(ctx.id);
    });
    await got.waitForAll([id], T, 'released message redelivered to the group');
    expect(attempts[0], 'a release is not a failed attempt').toBe(1);
  });

  suite.test('health reports the connection: up when connected, down after close', async (c) => {
    const bus = await c.bus();
    if (bus.health().transport.state !== 'connected') {
      const connected = deferred();
      bus.on('connection', (s) => {
        if (s === 'connected') connected.resolve();
      });
      if (bus.health().transport.state !== 'connected') await within(connected.promise, T, 'connection state connected');
    }
    const up = bus.health();
    expect(up.status).toBe('up');
    expect(up.transport.state).toBe('connected');
    expect(up.breaker).not.toBe('open');
    expect(up.subscriptions).toBe(0);
    const sub = await bus.subscribe(Order, { group: 'g' }, () => {});
    expect(bus.health().subscriptions).toBe(1);
    await sub.close();
    await bus.close();
    const down = bus.health();
    expect(down.status).toBe('down');
    expect(['closed', 'disconnected']).toContain(down.transport.state);
    expect(down.pendingPublishes).toBe(0);
  });

  suite.test('publish rejects invalid data, oversize payloads and reserved headers before any I/O', async (c) => {
    const limit = 256;
    const bus = await c.bus({ maxPayloadBytes: limit });
    const got = new Collector();
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      got.add(ctx.id);
    });
    const invalid = { n: -1 } as { n: number };
    await expect(bus.publish(Order, invalid)).rejects.toBeInstanceOf(ValidationError);
    await expect(bus.publish(Order, { n: 'x' } as unknown as { n: number })).rejects.toMatchObject({
      code: 'VALIDATION',
      retryable: false,
    });
    const big = bus.publish(Order, { n: 1, pad: 'z'.repeat(limit) });
    await expect(big).rejects.toBeInstanceOf(PayloadTooLargeError);
    await expect(big).rejects.toMatchObject({ limit });
    for (const name of ['ce_id', 'ce_custom', 'content-type', 'Content-Type', 'bad name', '']) {
      await expect(bus.publish(Order, { n: 1 }, { headers: { [name]: 'v' } }), `header "${name}"`).rejects.toBeInstanceOf(ValidationError);
    }
    await expect(bus.publish(Order, { n: 1 }, { key: '' })).rejects.toBeInstanceOf(ValidationError);
    expect(bus.health().pendingPublishes).toBe(0);
    const sentinel = await bus.publish(Order, { n: 2 });
    await got.waitForAll([sentinel.id], T, 'sentinel after rejected publishes');
    expect(got.ids()).toEqual([sentinel.id]);
  });

  suite.test('ctx.deadLetter(reason) dead-letters at once as handler-requested', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    let calls = 0;
    await bus.subscribe(Order, { group: 'g', retry: { maxAttempts: 5 } }, (_d, ctx) => {
      calls++;
      ctx.deadLetter('customer record is gone');
    });
    const { id } = await bus.publish(Order, { n: 1 });
    expect(await deadLettered(spy, id, 'g', T)).toBe('handler-requested');
    const [dl] = await bus.deadLetters(Order, 'g').list();
    expect(dl?.id).toBe(id);
    expect(dl?.attempts).toBe(1);
    expect(dl?.reason.detail).toContain('customer record is gone');
    expect(calls).toBe(1);
  });

  suite.test('NonRetryableError dead-letters at once as non-retryable', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    let calls = 0;
    await bus.subscribe(Order, { group: 'g', retry: { maxAttempts: 5 } }, () => {
      calls++;
      throw new NonRetryableError('amount can never be negative here');
    });
    const { id } = await bus.publish(Order, { n: 1 });
    expect(await deadLettered(spy, id, 'g', T)).toBe('non-retryable');
    const [dl] = await bus.deadLetters(Order, 'g').list();
    expect(dl?.attempts).toBe(1);
    expect(dl?.error).toContain('amount can never be negative here');
    expect(calls).toBe(1);
    expect(spy.of(id).filter((r) => r.outcome.status === 'retried')).toEqual([]);
  });

  suite.test('ctx.retry({ delayMs }) redelivers after the delay with attempt 2', async (c) => {
    const delayMs = 80;
    const bus = await c.bus();
    const spy = c.spy(bus);
    const times: { attempt: number; at: number }[] = [];
    const seen: { headers: Record<string, string>; key: string }[] = [];
    await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
      times.push({ attempt: ctx.attempt, at: performance.now() });
      seen.push({ headers: { ...ctx.headers }, key: ctx.idempotencyKey });
      if (ctx.attempt === 1) ctx.retry({ delayMs, reason: 'try later' });
    });
    const { id } = await bus.publish(Order, { n: 1 }, { headers: { 'x-keep': 'me' }, idempotencyKey: 'retry-key' });
    await spy.waitFor(id, { status: 'acked', timeoutMs: T });
    expect(times.map((t) => t.attempt)).toEqual([1, 2]);
    expect(seen[1], 'a retry keeps user headers and the idempotency key').toEqual({ headers: { 'x-keep': 'me' }, key: 'retry-key' });
    // Reported once the retry copy is durably scheduled, which may come after the copy was handled.
    const retried = await spy.waitFor(id, { status: 'retried', timeoutMs: T });
    const scheduled = Math.min(delayMs, bus.transport.capabilities.maxRetryDelayMs);
    expect(retried?.outcome).toMatchObject({ status: 'retried', delayMs: scheduled });
    expect((times[1]?.at ?? 0) - (times[0]?.at ?? 0)).toBeGreaterThanOrEqual(scheduled - 5);
  });

  suite.test('handlerTimeoutMs aborts the handler signal and retries the message', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    let abortedReason: unknown;
    await bus.subscribe(Order, { group: 'g', handlerTimeoutMs: 100 }, async (_d, ctx) => {
      if (ctx.attempt > 1) return;
      await new Promise<void>((resolve) => {
        const fallback = setTimeout(resolve, T);
        ctx.signal.addEventListener('abort', () => {
          clearTimeout(fallback);
          abortedReason = ctx.signal.reason;
          resolve();
        });
      });
    });
    const { id } = await bus.publish(Order, { n: 1 });
    const acked = await spy.waitFor(id, { status: 'acked', timeoutMs: T });
    expect(acked.info.attempt).toBe(2);
    expect(abortedReason).toBeInstanceOf(Error);
    // Reported once the retry copy is durably scheduled, which may come after the copy was handled.
    const retried = await spy.waitFor(id, { status: 'retried', timeoutMs: T });
    expect(retried?.outcome.status === 'retried' && retried.outcome.error).toContain('handlerTimeoutMs');
  });

  suite.test('lease extension works where offered, else rejects with CapabilityError', async (c) => {
    const bus = await c.bus();
    const result = deferred<unknown>();
    await bus.subscribe(Order, { group: 'g' }, async (_d, ctx) => {
      result.resolve(
        await ctx.extendLease(1000).then(
          () => 'extended',
          (e: unknown) => e,
        ),
      );
    });
    await bus.publish(Order, { n: 1 });
    const outcome = await within(result.promise, T, 'handler calling extendLease');
    if (bus.transport.capabilities.leaseExtension) {
      expect(outcome).toBe('extended');
    } else {
      expect(outcome).toBeInstanceOf(CapabilityError);
      expect(outcome).toMatchObject({ capability: 'leaseExtension' });
    }
  });
}
