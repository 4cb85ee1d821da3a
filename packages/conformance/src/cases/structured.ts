/**
 * CloudEvents structured content mode: events written below the bus by a foreign producer (as Dapr
 * publishes by default: `content-type: application/cloudevents+json`, the JSON envelope as the
 * body) are read on every transport, and a bus in `contentMode: 'structured'` writes them. These
 * prove that each transport carries `content-type` and the body through unchanged, retry copies
 * included.
 */
import { type EventData, type HandlerContext, STRUCTURED_CONTENT_TYPE } from '@busbar/core';
import { HeaderNames } from '@busbar/core/transport';
import { expect } from 'vitest';
import { Order } from '../events.js';
import { Collector, deferred, envelopeHeaders, rawId, type Suite, utf8, within } from '../helpers.js';

type OrderData = EventData<typeof Order>;

/** A structured envelope of an `Order` written by a foreign producer (override any member). */
function envelopeOf(id: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  const e: Record<string, unknown> = {
    specversion: '1.0',
    id,
    source: 'urn:conformance:foreign',
    type: Order.type,
    time: new Date().toISOString(),
    datacontenttype: 'application/json',
    ...over,
  };
  for (const k of Object.keys(e)) if (e[k] === undefined) delete e[k];
  return e;
}

const STRUCTURED = 'application/cloudevents+json; charset=utf-8';

export function structuredCases(suite: Suite): void {
  const T = suite.timeoutMs;

  suite.test('a structured event with "data" is read from its envelope, and a retry of it keeps the envelope', async (c) => {
    const bus = await c.bus();
    const spy = c.spy(bus);
    const raw = await c.raw();
    const seen: { attempt: number; data: OrderData; ctx: HandlerContext }[] = [];
    const done = deferred();
    await bus.subscribe(Order, { group: 'g', retry: { maxAttempts: 3 } }, (data, ctx) => {
      seen.push({ attempt: ctx.attempt, data, ctx });
      if (ctx.attempt === 1) throw new Error('first attempt fails');
      done.resolve();
    });
    const id = rawId('structured-data');
    const body = utf8(
      JSON.stringify(envelopeOf(id, { idempotencykey: `key-${id}`, traceparent: '00-abc-def-01', data: { n: 7, key: 'k' } })),
    );
    await raw.write(bus.topicOf(Order), { headers: { 'content-type': STRUCTURED, 'x-tenant': 'acme' }, body });
    await spy.waitFor(id, { status: 'acked', timeoutMs: T });
    await within(done.promise, T, 'attempt 2 of the structured event');
    expect(seen.map((s) => s.attempt)).toEqual([1, 2]);
    for (const s of seen) {
      expect(s.data).toEqual({ n: 7, key: 'k' });
      expect(s.ctx.id).toBe(id);
      expect(s.ctx.idempotencyKey).toBe(`key-${id}`);
      expect(s.ctx.headers['x-tenant']).toBe('acme');
      expect(s.ctx.attributes).toMatchObject({
        id,
        source: 'urn:conformance:foreign',
        type: Order.type,
        specversion: '1.0',
        datacontenttype: 'application/json',
        traceparent: '00-abc-def-01',
      });
    }
  });

  suite.test('a structured event with "data_base64" is decoded per its datacontenttype', async (c) => {
    const bus = await c.bus();
    const raw = await c.raw();
    const got = deferred<{ data: OrderData; ctx: HandlerContext }>();
    await bus.subscribe(Order, { group: 'g' }, (data, ctx) => {
      got.resolve({ data, ctx });
    });
    const id = rawId('structured-b64');
    const payload = Buffer.from(JSON.stringify({ n: 8, pad: 'zażółć ✓' }), 'utf8').toString('base64');
    const body = utf8(JSON.stringify(envelopeOf(id, { data_base64: payload })));
    await raw.write(bus.topicOf(Order), { headers: { 'content-type': 'Application/CloudEvents+JSON' }, body });
    const { data, ctx } = await within(got.promise, T, 'the structured event');
    expect(data).toEqual({ n: 8, pad: 'zażółć ✓' });
    expect(ctx.id).toBe(id);
  });

  suite.test('a structured event that also carries ce_ headers is read from its envelope', async (c) => {
    const bus = await c.bus();
    const raw = await c.raw();
    const got = deferred<{ data: OrderData; ctx: HandlerContext }>();
    await bus.subscribe(Order, { group: 'g' }, (data, ctx) => {
      got.resolve({ data, ctx });
    });
    const id = rawId('structured-hdr');
    // Headers that disagree with the envelope: taken as binary, the envelope itself would be
    // validated as the data and dead-lettered as schema-invalid.
    const headers = {
      ...envelopeHeaders(Order, `header-${id}`, { [HeaderNames.source]: 'urn:conformance:header' }),
      'content-type': STRUCTURED,
    };
    const body = utf8(JSON.stringify(envelopeOf(id, { data: { n: 9 } })));
    await raw.write(bus.topicOf(Order), { headers, body });
    const { data, ctx } = await within(got.promise, T, 'the structured event');
    expect(data).toEqual({ n: 9 });
    expect(ctx.id).toBe(id);
    expect(ctx.attributes.source).toBe('urn:conformance:foreign');
  });

  suite.test(
    'an invalid structured envelope is dead-lettered naming the attribute; a binary one names it as the broker spells it',
    async (c) => {
      const bus = await c.bus();
      const spy = c.spy(bus);
      const raw = await c.raw();
      const handled = new Collector();
      await bus.subscribe(Order, { group: 'g' }, (_d, ctx) => {
        handled.add(ctx.id);
      });
      const topic = bus.topicOf(Order);
      const id = rawId('structured-bad');
      const body = utf8(JSON.stringify(envelopeOf(id, { specversion: '0.3', data: { n: 1 } })));
      await raw.write(topic, { headers: { 'content-type': STRUCTURED }, body });
      const binaryId = rawId('binary-bad');
      const noSource = envelopeHeaders(Order, binaryId);
      delete noSource[HeaderNames.source];
      await raw.write(topic, { headers: noSource, body: utf8('{"n":2}') });
      const bad = await spy.waitFor(id, { status: 'dead-lettered', timeoutMs: T });
      expect(bad.outcome).toMatchObject({
        status: 'dead-lettered',
        reason: { kind: 'invalid-envelope', detail: expect.stringContaining('"specversion" of the structured CloudEvent') },
      });
      const prefix = bus.transport.attributePrefix ?? 'ce_';
      const binary = await spy.waitFor(binaryId, { status: 'dead-lettered', timeoutMs: T });
      expect(binary.outcome).toMatchObject({ reason: { kind: 'invalid-envelope', detail: `missing attribute ${prefix}source` } });
      const ok = await bus.publish(Order, { n: 3 });
      await handled.waitForAll([ok.id], T, 'a valid message after the invalid ones');
      const list = await bus.deadLetters(Order, 'g').list();
      const dl = list.find((d) => d.id === id);
      expect(dl, `dead letter ${id} (have ${list.map((d) => d.id).join(', ')})`).toBeDefined();
      expect(Buffer.from(dl?.body ?? new Uint8Array()).equals(Buffer.from(body))).toBe(true);
      expect(dl?.headers['content-type']?.toLowerCase()).toContain('application/cloudevents+json');
      expect(handled.ids()).toEqual([ok.id]);
    },
  );

  suite.test("contentMode 'structured' publishes the JSON envelope, which a raw client sees and the bus reads back", async (c) => {
    const bus = await c.bus({ contentMode: 'structured' });
    const topic = bus.topicOf(Order);
    const probe = await c.observe(topic);
    const got = deferred<{ data: OrderData; ctx: HandlerContext }>();
    await bus.subscribe(Order, { group: 'g' }, (data, ctx) => {
      got.resolve({ data, ctx });
    });
    const receipt = await bus.publish(Order, { n: 10, key: 'k' }, { key: 'k', headers: { 'x-tenant': 'acme' }, idempotencyKey: 'idem-10' });
    const wire = await probe.waitFor(receipt.id, T);
    expect(wire.headers['content-type']).toBe(STRUCTURED_CONTENT_TYPE);
    expect(wire.headers['x-tenant']).toBe('acme');
    const envelope = JSON.parse(new TextDecoder().decode(wire.body)) as Record<string, unknown>;
    expect(envelope).toMatchObject({
      specversion: '1.0',
      id: receipt.id,
      source: 'urn:busbar:conformance',
      type: Order.type,
      datacontenttype: 'application/json',
      idempotencykey: 'idem-10',
      partitionkey: 'k',
      data: { n: 10, key: 'k' },
    });
    expect(typeof envelope.time).toBe('string');
    const { data, ctx } = await within(got.promise, T, 'the structured event');
    expect(data).toEqual({ n: 10, key: 'k' });
    expect(ctx.id).toBe(receipt.id);
    expect(ctx.idempotencyKey).toBe('idem-10');
    expect(ctx.attributes.partitionKey).toBe('k');
  });
}
