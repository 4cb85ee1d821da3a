import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigError, decodeMessage, defineEvent, encodeJson, Headers } from '../src/index.js';

const V2 = defineEvent({
  type: 'user.created',
  version: 2,
  schema: z.object({ id: z.string(), email: z.string(), name: z.string() }),
  upcasters: { 1: (v1) => ({ ...(v1 as object), name: 'unknown' }) },
});
const limits = { maxPayloadBytes: 1024, maxHeaderBytes: 4096 };

function headers(over: Record<string, string | undefined> = {}): Record<string, string> {
  const h: Record<string, string | undefined> = {
    [Headers.id]: 'm1',
    [Headers.source]: 'urn:test',
    [Headers.specversion]: '1.0',
    [Headers.type]: 'user.created',
    [Headers.contentType]: 'application/json',
    [Headers.eventVersion]: '2',
    ...over,
  };
  return Object.fromEntries(Object.entries(h).filter(([, v]) => v !== undefined)) as Record<string, string>;
}
const bytes = (s: string) => new TextEncoder().encode(s);

describe('decodeMessage', () => {
  it('decodes a valid message, defaulting the idempotency key to the id', () => {
    const r = decodeMessage(
      { headers: { ...headers(), 'x-tenant': 'a' }, body: encodeJson({ id: '1', email: 'a@b', name: 'A' }) },
      V2,
      limits,
    );
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.data).toEqual({ id: '1', email: 'a@b', name: 'A' });
    expect(r.attributes.idempotencyKey).toBe('m1');
    expect(r.userHeaders).toEqual({ 'x-tenant': 'a' });
  });

  it('upcasts an older version', () => {
    const r = decodeMessage({ headers: headers({ [Headers.eventVersion]: '1' }), body: encodeJson({ id: '1', email: 'a@b' }) }, V2, limits);
    expect(r.ok && r.data).toEqual({ id: '1', email: 'a@b', name: 'unknown' });
  });

  it.each([
    ['not JSON', 'not json', 'undecodable'],
    ['truncated JSON', '{"id":"1","em', 'undecodable'],
    ['__proto__ key', '{"id":"1","email":"a","name":"b","__proto__":{"polluted":true}}', 'undecodable'],
    ['constructor.prototype', '{"constructor":{"prototype":{"polluted":true}}}', 'undecodable'],
    ['schema-invalid data', '{"id":1}', 'schema-invalid'],
  ])('dead-letters %s with reason %s', (_name, body, kind) => {
    const r = decodeMessage({ headers: headers(), body: bytes(body) }, V2, limits);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason.kind).toBe(kind);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it.each([
    ['missing id', { [Headers.id]: undefined }, /ce_id/],
    ['missing source', { [Headers.source]: undefined }, /ce_source/],
    ['wrong specversion', { [Headers.specversion]: '0.3' }, /specversion/],
    ['other type', { [Headers.type]: 'order.placed' }, /order\.placed/],
    ['non-JSON content type', { [Headers.contentType]: 'text/plain' }, /text\/plain/],
    ['bad version', { [Headers.eventVersion]: 'two' }, /eventversion/],
  ])('rejects an envelope with %s as invalid-envelope naming the problem', (_n, over, detail) => {
    const r = decodeMessage({ headers: headers(over), body: encodeJson({ id: '1', email: 'a', name: 'b' }) }, V2, limits);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.reason.kind).toBe('invalid-envelope');
      expect(r.reason.detail).toMatch(detail);
    }
  });

  it('rejects oversize bodies and headers', () => {
    const big = decodeMessage({ headers: headers(), body: new Uint8Array(2048) }, V2, limits);
    expect(!big.ok && big.reason.kind).toBe('payload-too-large');
    const hdr = decodeMessage({ headers: { ...headers(), huge: 'x'.repeat(5000) }, body: encodeJson({}) }, V2, limits);
    expect(!hdr.ok && hdr.reason.kind).toBe('invalid-envelope');
  });

  it('refuses a newer version and a version without upcaster', () => {
    const newer = decodeMessage({ headers: headers({ [Headers.eventVersion]: '3' }), body: encodeJson({}) }, V2, limits);
    expect(!newer.ok && newer.reason.kind).toBe('unsupported-version');
    const V3 = defineEvent({ type: 'user.created', version: 3, schema: z.object({}) });
    const gap = decodeMessage({ headers: headers({ [Headers.eventVersion]: '2' }), body: encodeJson({}) }, V3, limits);
    expect(!gap.ok && gap.reason.kind).toBe('unsupported-version');
  });

  it('reports an upcaster that throws', () => {
    const E = defineEvent({
      type: 'user.created',
      version: 2,
      schema: z.object({}),
      upcasters: {
        1: () => {
          throw new Error('boom');
        },
      },
    });
    const r = decodeMessage({ headers: headers({ [Headers.eventVersion]: '1' }), body: encodeJson({}) }, E, limits);
    expect(!r.ok && r.reason.kind).toBe('upcast-failed');
  });

  it.each([
    ['an escaped __proto__ key', '{"id":"1","email":"a","name":"b","\\u005f_proto__":{"polluted":true}}'],
    ['an escaped constructor key', '{"constr\\u0075ctor":{"prototype":{"polluted":true}}}'],
    ['a __proto__ key after whitespace', '{"id":"1", "__proto__" :{"polluted":true}}'],
  ])('dead-letters %s as undecodable', (_name, body) => {
    const r = decodeMessage({ headers: headers(), body: bytes(body) }, V2, limits);
    expect(!r.ok && r.reason.kind).toBe('undecodable');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('accepts escapes, and the key names in values, and a second byte-order mark', () => {
    const escaped = decodeMessage(
      { headers: headers(), body: bytes('{"id":"1","email":"caf\\u00e9","name":"constructor __proto__"}') },
      V2,
      limits,
    );
    expect(escaped.ok && escaped.data).toEqual({ id: '1', email: 'café', name: 'constructor __proto__' });
    // TextDecoder strips one BOM; secure-json-parse strips another, as before.
    const bom = decodeMessage({ headers: headers(), body: bytes('\uFEFF\uFEFF{"id":"1","email":"a","name":"b"}') }, V2, limits);
    expect(bom.ok && bom.data).toEqual({ id: '1', email: 'a', name: 'b' });
  });

  it('reads own string headers only: inherited or non-string values are not attributes', () => {
    const inherited = Object.assign(Object.create({ [Headers.id]: 'inherited', 'x-inherited': 'y' }), headers({ [Headers.id]: undefined }));
    const r1 = decodeMessage({ headers: inherited, body: encodeJson({ id: '1', email: 'a', name: 'b' }) }, V2, limits);
    expect(!r1.ok && r1.reason.detail).toMatch(/missing attribute ce_id/);
    const nonString = { ...headers(), [Headers.id]: 5 as unknown as string };
    const r2 = decodeMessage({ headers: nonString, body: encodeJson({ id: '1', email: 'a', name: 'b' }) }, V2, limits);
    expect(!r2.ok && r2.reason.detail).toMatch(/missing attribute ce_id/);
    const withUser = { ...headers(), [Headers.time]: 't', [Headers.traceparent]: 'tp', 'x-a': '1', 'x-inherited': 'own' };
    const r3 = decodeMessage({ headers: withUser, body: encodeJson({ id: '1', email: 'a', name: 'b' }) }, V2, limits);
    expect(r3.ok && { ...r3.userHeaders }).toEqual({ 'x-a': '1', 'x-inherited': 'own' });
    expect(r3.ok && [r3.attributes.time, r3.attributes.traceparent, r3.attributes.dataschema]).toEqual([
      't',
      'tp',
      'urn:busbar:user.created:v2',
    ]);
  });

  it('reads the same headers from plain, prototype-less and dictionary-mode objects, never keys enumerable on Object.prototype', () => {
    const withUser = { ...headers(), 'x-a': '1', 'x-b': '2' };
    const nullProto = Object.assign(Object.create(null) as Record<string, string>, withUser);
    const dictionary: Record<string, string> = { ...withUser, 'x-gone': '3' };
    delete dictionary['x-gone']; // a delete turns the object into a dictionary
    const body = encodeJson({ id: '1', email: 'a', name: 'b' });
    const seen = [withUser, nullProto, dictionary].map((h) => {
      const r = decodeMessage({ headers: h, body }, V2, limits);
      return r.ok && [r.attributes.id, { ...r.userHeaders }];
    });
    expect(seen).toEqual(Array(3).fill(['m1', { 'x-a': '1', 'x-b': '2' }]));
    // An enumerable key on Object.prototype (prototype pollution) shows up in for-in, not as a header.
    const proto = Object.prototype as Record<string, unknown>;
    proto['x-polluted'] = 'p';
    try {
      const r = decodeMessage({ headers: { ...headers(), [Headers.id]: undefined as unknown as string }, body }, V2, limits);
      expect(!r.ok && r.reason.detail).toMatch(/missing attribute ce_id/);
      const r2 = decodeMessage({ headers: withUser, body }, V2, limits);
      expect(r2.ok && { ...r2.userHeaders }).toEqual({ 'x-a': '1', 'x-b': '2' });
    } finally {
      delete proto['x-polluted'];
    }
  });

  it('gives a message without user headers an empty, frozen, prototype-less set; a __proto__ header is a plain key', () => {
    const none = decodeMessage({ headers: headers(), body: encodeJson({ id: '1', email: 'a', name: 'b' }) }, V2, limits);
    expect(none.ok && Object.keys(none.userHeaders)).toEqual([]);
    expect(none.ok && Object.isFrozen(none.userHeaders) && Object.getPrototypeOf(none.userHeaders)).toBe(null);
    const proto = JSON.parse(`{"__proto__": "p", "x-a": "1"}`) as Record<string, string>;
    const r = decodeMessage({ headers: { ...headers(), ...proto }, body: encodeJson({ id: '1', email: 'a', name: 'b' }) }, V2, limits);
    expect(r.ok && Object.getPrototypeOf(r.userHeaders)).toBe(null);
    expect(r.ok && Object.entries(r.userHeaders)).toEqual([
      ['__proto__', 'p'],
      ['x-a', '1'],
    ]);
  });

  it("keeps each message's attributes when an upcaster decodes another message meanwhile", () => {
    const inner = {
      headers: { ...headers({ [Headers.id]: 'inner', [Headers.time]: 'ti' }), 'x-b': '2' },
      body: encodeJson({ id: '2', email: 'b', name: 'c' }),
    };
    let innerResult: ReturnType<typeof decodeMessage> | undefined;
    const Nested = defineEvent({
      type: 'user.created',
      version: 2,
      schema: z.object({ id: z.string(), email: z.string(), name: z.string() }),
      upcasters: {
        1: (v1) => {
          innerResult = decodeMessage(inner, V2, limits);
          return { ...(v1 as object), name: 'n' };
        },
      },
    });
    const outer = {
      headers: { ...headers({ [Headers.eventVersion]: '1', [Headers.time]: 'to', [Headers.idempotencyKey]: 'k' }), 'x-a': '1' },
      body: encodeJson({ id: '1', email: 'a' }),
    };
    const r = decodeMessage(outer, Nested, limits);
    expect(r.ok && [r.attributes.id, r.attributes.time, r.attributes.idempotencyKey, { ...r.userHeaders }]).toEqual([
      'm1',
      'to',
      'k',
      { 'x-a': '1' },
    ]);
    expect(innerResult?.ok && [innerResult.attributes.id, innerResult.attributes.time, { ...innerResult.userHeaders }]).toEqual([
      'inner',
      'ti',
      { 'x-b': '2' },
    ]);
  });

  it('rejects invalid UTF-8 as undecodable', () => {
    const r = decodeMessage({ headers: headers(), body: new Uint8Array([0xff, 0xfe, 0x00]) }, V2, limits);
    expect(!r.ok && r.reason.kind).toBe('undecodable');
  });
});

describe('encodeJson', () => {
  it('cuts independent views: each body keeps its bytes while later ones are encoded, across pools and sizes', () => {
    const texts: string[] = [];
    const bodies: Uint8Array[] = [];
    // ~300 KiB in all: several pools, multi-byte text, and texts past the pooled size.
    for (let i = 0; i < 600; i++) {
      const value = i % 50 === 0 ? { big: 'é'.repeat(3000 + i) } : { i, s: `x€${'y'.repeat(i % 300)}😀` };
      texts.push(JSON.stringify(value));
      bodies.push(encodeJson(value));
    }
    const decoder = new TextDecoder();
    bodies.forEach((b, i) => {
      expect(decoder.decode(b)).toBe(texts[i]);
      expect(b.byteLength).toBe(Buffer.byteLength(texts[i] as string));
    });
    for (let i = 1; i < bodies.length; i++) {
      const a = bodies[i - 1] as Uint8Array;
      const b = bodies[i] as Uint8Array;
      if (a.buffer === b.buffer) expect(b.byteOffset).toBeGreaterThanOrEqual(a.byteOffset + a.byteLength);
    }
  });
});

describe('defineEvent', () => {
  it('validates the type, version and upcasters', () => {
    expect(() => defineEvent({ type: 'Bad Type', schema: z.object({}) })).toThrow(ConfigError);
    expect(() => defineEvent({ type: 'ok', version: 0, schema: z.object({}) })).toThrow(ConfigError);
    expect(() => defineEvent({ type: 'ok', version: 2, schema: z.object({}), upcasters: { 2: (x) => x } })).toThrow(ConfigError);
    expect(defineEvent({ type: 'ok.v', schema: z.object({}) }).version).toBe(1);
  });
});
