import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { toStructured } from '../src/delivery/structured.js';
import { decodeMessage, defineEvent, encodeJson, HeaderNames, PayloadTooLargeError, STRUCTURED_CONTENT_TYPE } from '../src/index.js';

const V2 = defineEvent({
  type: 'user.created',
  version: 2,
  schema: z.object({ id: z.string(), email: z.string(), name: z.string() }),
  upcasters: { 1: (v1) => ({ ...(v1 as object), name: 'unknown' }) },
});
const limits = { maxPayloadBytes: 4096, maxHeaderBytes: 4096 };
const bytes = (s: string) => new TextEncoder().encode(s);
const DATA = { id: '1', email: 'a@b', name: 'A' };

function envelope(over: Record<string, unknown> = {}): Record<string, unknown> {
  const e: Record<string, unknown> = {
    specversion: '1.0',
    id: 's1',
    source: 'urn:dapr',
    type: 'user.created',
    time: '2026-12-06T06:00:00Z',
    datacontenttype: 'application/json',
    eventversion: '2',
    data: DATA,
    ...over,
  };
  for (const k of Object.keys(e)) if (e[k] === undefined) delete e[k];
  return e;
}

function structured(e: unknown, headers: Record<string, string> = {}, contentType = 'application/cloudevents+json') {
  return { headers: { 'content-type': contentType, ...headers }, body: bytes(JSON.stringify(e)) };
}

function reasonOf(message: { headers: Record<string, string>; body: Uint8Array }) {
  const r = decodeMessage(message, V2, limits);
  expect(r.ok, 'expected a dead letter').toBe(false);
  return r.ok ? undefined : r.reason;
}

describe('decodeMessage: structured CloudEvents', () => {
  it('reads attributes from the envelope and the data from "data"', () => {
    const r = decodeMessage(
      structured(envelope({ idempotencykey: 'k1', partitionkey: 'p1', traceparent: 'tp', dataschema: 'urn:x' }), { 'x-tenant': 'a' }),
      V2,
      limits,
    );
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.data).toEqual(DATA);
    expect(r.userHeaders).toEqual({ 'x-tenant': 'a' });
    expect(r.attributes).toMatchObject({
      id: 's1',
      source: 'urn:dapr',
      type: 'user.created',
      specversion: '1.0',
      time: '2026-12-06T06:00:00Z',
      datacontenttype: 'application/json',
      dataschema: 'urn:x',
      eventVersion: 2,
      idempotencyKey: 'k1',
      partitionKey: 'p1',
      traceparent: 'tp',
    });
  });

  it.each([
    'application/cloudevents+json',
    'application/cloudevents+json; charset=utf-8',
    'Application/CloudEvents+JSON;charset=UTF-8',
    'application/cloudevents+json ; charset="utf-8"',
  ])('recognises content-type %s', (ct) => {
    const r = decodeMessage(structured(envelope(), {}, ct), V2, limits);
    expect(r.ok && r.attributes.id).toBe('s1');
  });

  it('decodes data_base64 per datacontenttype, and upcasts an older version', () => {
    const b64 = Buffer.from(JSON.stringify({ id: '1', email: 'a@b' })).toString('base64');
    const r = decodeMessage(structured(envelope({ data: undefined, data_base64: b64, eventversion: 1 })), V2, limits);
    expect(r.ok && r.data).toEqual({ id: '1', email: 'a@b', name: 'unknown' });
  });

  it('takes the envelope over ce_ headers the message also carries', () => {
    const wrong = {
      [HeaderNames.id]: 'header-id',
      [HeaderNames.source]: 'urn:header',
      [HeaderNames.specversion]: '1.0',
      [HeaderNames.type]: 'user.created',
      [HeaderNames.eventVersion]: '1',
      [HeaderNames.idempotencyKey]: 'header-key',
    };
    const r = decodeMessage(structured(envelope(), wrong), V2, limits);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    // Taken as binary, the whole envelope would have been validated as the data (schema-invalid).
    expect(r.data).toEqual(DATA);
    expect(r.attributes).toMatchObject({ id: 's1', source: 'urn:dapr', eventVersion: 2, idempotencyKey: 's1' });
    expect(r.userHeaders).toEqual({});
  });

  it.each([
    ['missing id', { id: undefined }, '"id" of the structured CloudEvent'],
    ['missing source', { source: undefined }, '"source"'],
    ['wrong specversion', { specversion: '0.3' }, '"specversion" of the structured CloudEvent must be 1.0'],
    ['missing type', { type: undefined }, '"type"'],
    ['another type', { type: 'order.placed' }, '"type" of the structured CloudEvent is "order.placed"'],
    ['id not a string', { id: 7 }, 'attribute "id" must be a string, got number'],
    ['extension an object', { partitionkey: { a: 1 } }, 'attribute "partitionkey" must be a string, number or boolean'],
    [
      'non-JSON datacontenttype',
      { datacontenttype: 'text/plain', data: 'hi' },
      '"datacontenttype" of the structured CloudEvent "text/plain" is not JSON',
    ],
    ['bad eventversion', { eventversion: 'two' }, '"eventversion" of the structured CloudEvent "two"'],
    ['data and data_base64', { data_base64: 'e30=' }, 'both "data" and "data_base64"'],
    ['bad base64', { data: undefined, data_base64: 'not base64!' }, '"data_base64" is not valid base64'],
  ])('dead-letters an envelope with %s as invalid-envelope naming the attribute', (_name, over, detail) => {
    const reason = reasonOf(structured(envelope(over)));
    expect(reason?.kind).toBe('invalid-envelope');
    expect(reason?.detail).toContain(detail);
  });

  it.each([
    ['not JSON', bytes('{"id":'), 'not acceptable JSON'],
    ['an array', bytes('[1,2]'), 'not a JSON object'],
    ['invalid UTF-8', new Uint8Array([0x7b, 0xff, 0x7d]), 'not valid UTF-8'],
    ['a __proto__ key', bytes(`{"specversion":"1.0","id":"x","__proto__":{"polluted":true}}`), 'not acceptable JSON'],
  ])('dead-letters a body that is %s as invalid-envelope', (_name, body, detail) => {
    const reason = reasonOf({ headers: { 'content-type': 'application/cloudevents+json' }, body });
    expect(reason?.kind).toBe('invalid-envelope');
    expect(reason?.detail).toContain(detail);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('judges the data like a binary body: schema, undecodable base64 payload, no data at all', () => {
    expect(reasonOf(structured(envelope({ data: { id: 1 } })))?.kind).toBe('schema-invalid');
    const notJson = Buffer.from('plain text').toString('base64');
    expect(reasonOf(structured(envelope({ data: undefined, data_base64: notJson })))).toMatchObject({
      kind: 'undecodable',
      detail: expect.stringContaining('data_base64'),
    });
    expect(reasonOf(structured(envelope({ data: undefined })))?.kind).toBe('schema-invalid');
  });

  it('refuses batched mode and other event formats by name', () => {
    for (const ct of ['application/cloudevents-batch+json', 'application/cloudevents+avro']) {
      const reason = reasonOf(structured([envelope()], {}, ct));
      expect(reason?.kind).toBe('invalid-envelope');
      expect(reason?.detail).toContain(ct);
    }
  });

  it('reads binary messages exactly as before, including a JSON-suffixed content type', () => {
    const headers = {
      [HeaderNames.id]: 'b1',
      [HeaderNames.source]: 'urn:b',
      [HeaderNames.specversion]: '1.0',
      [HeaderNames.type]: 'user.created',
      [HeaderNames.eventVersion]: '2',
    };
    for (const ct of [undefined, 'application/json', 'application/vnd.acme+json; charset=utf-8']) {
      const h = ct === undefined ? headers : { ...headers, 'content-type': ct };
      const r = decodeMessage({ headers: h, body: encodeJson(DATA) }, V2, limits);
      expect(r.ok && r.attributes.id).toBe('b1');
    }
    const missing = reasonOf({ headers: { ...headers, [HeaderNames.id]: '' }, body: encodeJson(DATA) });
    expect(missing?.detail).toBe('missing attribute ce_id');
  });
});

describe('toStructured', () => {
  const binary = {
    topic: 't',
    id: 'm1',
    key: 'k',
    headers: {
      [HeaderNames.id]: 'm1',
      [HeaderNames.source]: 'urn:s',
      [HeaderNames.specversion]: '1.0',
      [HeaderNames.type]: 'user.created',
      [HeaderNames.contentType]: 'application/json',
      [HeaderNames.eventVersion]: '2',
      [HeaderNames.partitionKey]: 'k',
      'x-tenant': 'a',
    },
    body: encodeJson(DATA),
  };

  it('writes the JSON envelope, keeps the ce_ headers, and decodes back to the same attributes and data', () => {
    const m = toStructured(binary, 4096);
    expect(m.headers['content-type']).toBe(STRUCTURED_CONTENT_TYPE);
    expect(m.headers[HeaderNames.id]).toBe('m1');
    expect(m.headers['x-tenant']).toBe('a');
    expect(m.key).toBe('k');
    const e = JSON.parse(new TextDecoder().decode(m.body));
    expect(e).toEqual({
      id: 'm1',
      source: 'urn:s',
      specversion: '1.0',
      type: 'user.created',
      datacontenttype: 'application/json',
      eventversion: '2',
      partitionkey: 'k',
      data: DATA,
    });
    const r = decodeMessage(m, V2, limits);
    expect(r.ok && r.data).toEqual(DATA);
    expect(r.ok && r.attributes.partitionKey).toBe('k');
  });

  it('refuses an envelope over maxPayloadBytes', () => {
    expect(() => toStructured(binary, binary.body.byteLength + 10)).toThrow(PayloadTooLargeError);
  });
});
