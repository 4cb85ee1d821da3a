// Core's delivery path against a hand-driven Transport stub: when the handler runs, what the context
// offers, the lifecycle events, and the envelope the bus writes.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import {
  CapabilityError,
  ConfigError,
  type DeliveryInfo,
  type DeliveryOutcome,
  decodeMessage,
  defineEvent,
  EventBus,
  encodeJson,
  type HandlerContext,
  Headers,
  MemoryIdempotencyStore,
  PublishTimeoutError,
} from '../src/index.js';
import { encode } from '../src/transport/index.js';
import { HandTransport, Ping } from './fixtures.js';

const PingV2 = defineEvent({ type: 'ping', version: 2, schema: z.object({ n: z.number() }) });

afterEach(() => {
  vi.useRealTimers();
});

/** A promise and its `resolve` (`Promise.withResolvers` needs Node 22). */
function gate(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * The delivery path has two implementations (bus: `SubscriptionImpl.process`): a common path
 * without an async frame (no idempotency store, no handler timeout) and `processAsync` for
 * everything else. Every case runs on both; a handler timeout far beyond the case selects the
 * second.
 */
const MODES = [
  { path: 'common', extra: {} },
  { path: 'async', extra: { handlerTimeoutMs: 60_000 } },
] as const;

describe.each(MODES)('EventBus delivery path ($path path)', ({ extra }) => {
  it('runs the handler on a later microtask, never inside the transport callback', async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    const seen: string[] = [];
    await bus.subscribe(Ping, { ...extra, group: 'g' }, (d) => void seen.push(`handler ${d.n}`));
    const settled = t.deliver(bus, { n: 1 });
    seen.push('callback returned');
    expect(await settled).toBe('ack');
    expect(seen).toEqual(['callback returned', 'handler 1']);
  });

  it('starts the handlers of a burst of deliveries after the callbacks, in delivery order; a throwing one stops no other', async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    const seen: string[] = [];
    await bus.subscribe(Ping, { ...extra, group: 'g', concurrency: 4 }, (d) => {
      seen.push(`handler ${d.n}`);
      if (d.n === 2) throw new Error('sync failure');
    });
    const settled = [1, 2, 3].map((n) => t.deliver(bus, { n }, `m${n}`));
    seen.push('callbacks returned');
    expect(await Promise.all(settled)).toEqual(['ack', 'retry', 'ack']);
    expect(seen).toEqual(['callbacks returned', 'handler 1', 'handler 2', 'handler 3']);
    // A later burst starts on a microtask of its own.
    const again = t.deliver(bus, { n: 4 }, 'm4');
    seen.push('callback returned');
    expect(await again).toBe('ack');
    expect(seen.slice(4)).toEqual(['callback returned', 'handler 4']);
  });

  it('settles synchronous, asynchronous and thenable-returning handlers; a synchronous throw is a failure', async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    /** A thenable that is not a native promise. */
    class Later implements PromiseLike<string> {
      // biome-ignore lint/suspicious/noThenProperty: a non-native thenable, on purpose
      then<R1 = string, R2 = never>(ok?: ((v: string) => R1 | PromiseLike<R1>) | null): PromiseLike<R1 | R2> {
        setImmediate(() => ok?.('later'));
        return new Promise<R1 | R2>(() => {});
      }
    }
    const results: Record<number, unknown> = { 1: undefined, 2: Promise.resolve('x'), 3: new Later() };
    let thenableDone = false;
    await bus.subscribe(Ping, { ...extra, group: 'g' }, (d) => {
      if (d.n === 4) throw new Error('sync failure');
      if (d.n === 3) setImmediate(() => setImmediate(() => (thenableDone = true)));
      return results[d.n];
    });
    expect(await t.deliver(bus, { n: 1 })).toBe('ack');
    expect(await t.deliver(bus, { n: 2 })).toBe('ack');
    expect(await t.deliver(bus, { n: 3 })).toBe('ack');
    expect(thenableDone).toBe(false); // the thenable was awaited, not its side job
    expect(await t.deliver(bus, { n: 4 })).toBe('retry');
  });

  it('offers a context whose methods work when destructured, and a signal created on demand', async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    const checks: unknown[] = [];
    let calls = 0;
    await bus.subscribe(Ping, { ...extra, group: 'g', retry: { maxAttempts: 5 } }, async (_d, ctx: HandlerContext) => {
      calls++;
      const { id, attempt, maxAttempts, position, headers, extendLease, commitWithCompletion, retry, deadLetter } = ctx;
      checks.push([id, attempt, maxAttempts, position, { ...headers }]);
      await expect(extendLease(10)).rejects.toBeInstanceOf(CapabilityError);
      expect(() => commitWithCompletion(() => {})).toThrow(ConfigError);
      expect(ctx.signal.aborted).toBe(false);
      expect(ctx.signal).toBe(ctx.signal);
      if (calls === 1) retry({ delayMs: 5 });
      deadLetter('done with it');
    });
    expect(await t.deliver(bus, { n: 1 })).toBe('retry');
    expect(await t.deliver(bus, { n: 2 }, 'm2')).toBe('dead-letter');
    expect(checks).toEqual([
      ['m1', 1, 5, 'p@1', {}],
      ['m2', 1, 5, 'p@1', {}],
    ]);
  });

  it('emits delivered, outcome and published to listeners', async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    const events: unknown[] = [];
    bus.on('delivered', (info: DeliveryInfo) => events.push(['delivered', info.id, info.group, info.topic, info.attempt]));
    bus.on('outcome', (info: DeliveryInfo, o: DeliveryOutcome) => events.push(['outcome', info.id, info.idempotencyKey, o.status]));
    bus.on('published', (info) => events.push(['published', info.id, info.type, info.topic]));
    await bus.subscribe(Ping, { ...extra, group: 'g' }, () => {});
    await t.deliver(bus, { n: 1 });
    await bus.publish(Ping, { n: 2 }, { id: 'p1' });
    expect(events).toEqual([
      ['delivered', 'm1', 'g', 'ping', 1],
      ['outcome', 'm1', 'm1', 'acked'],
      ['published', 'p1', 'ping', 'ping'],
    ]);
  });

  it('reports a refused ack as settle-failed, logs a throwing outcome listener, and frees the slot either way', async () => {
    const t = new HandTransport();
    const errors: string[] = [];
    const logger = { debug() {}, info() {}, warn() {}, error: (_o: object, msg?: string) => void errors.push(msg ?? '') };
    const bus = new EventBus({ transport: t, logger });
    const outcomes: string[] = [];
    let throwInListener = false;
    bus.on('outcome', (_info: DeliveryInfo, o: DeliveryOutcome) => {
      outcomes.push(o.status);
      if (throwInListener) throw new Error('listener bug');
    });
    const sub = await bus.subscribe(Ping, { ...extra, group: 'g' }, async () => {});
    const m = encode(bus, Ping, { n: 1 }, { id: 'm1' });
    const refused = gate();
    t.onDelivery?.({
      headers: m.headers,
      body: m.body,
      redeliveries: 0,
      position: 'p@1',
      ack: async () => {
        refused.resolve();
        throw new Error('channel closed');
      },
      retry: async () => {},
      deadLetter: async () => {},
      release: async () => {},
    });
    expect(sub.inFlight).toBe(1);
    await refused.promise;
    await vi.waitFor(() => expect(outcomes).toEqual(['settle-failed']));
    expect(sub.inFlight).toBe(0);
    expect(errors).toEqual(['could not settle delivery; it will be redelivered']);

    throwInListener = true;
    expect(await t.deliver(bus, { n: 2 }, 'm2')).toBe('ack');
    await vi.waitFor(() => expect(errors).toContain('delivery processing failed'));
    expect(outcomes).toEqual(['settle-failed', 'acked']);
    expect(sub.inFlight).toBe(0);
  });

  it("makes ctx.attributes on first read as decoding has them, each delivery's own, one object per context", async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    const contexts: HandlerContext[] = [];
    await bus.subscribe(Ping, { ...extra, group: 'g', concurrency: 2 }, (_d, ctx) => void contexts.push(ctx));
    const full = encode(bus, Ping, { n: 1 }, { id: 'a1', idempotencyKey: 'k1', key: 'pk', traceparent: 'tp', tracestate: 'ts' });
    // Defaults: no time, dataschema, version, idempotency key or content type.
    const bare = {
      headers: { ce_id: 'a2', ce_source: 'urn:x', ce_specversion: '1.0', ce_type: 'ping', user: 'u' },
      body: encodeJson({ n: 2 }),
    };
    const settled = [full, bare].map(
      (m) =>
        new Promise<void>((resolve) =>
          t.onDelivery?.({
            headers: m.headers,
            body: m.body,
            redeliveries: 0,
            position: 'p@1',
            ack: async () => resolve(),
            retry: async () => {},
            deadLetter: async () => {},
            release: async () => {},
          }),
        ),
    );
    await Promise.all(settled);
    const limits = { maxPayloadBytes: 1 << 20, maxHeaderBytes: 1 << 16 };
    const expected = [full, bare].map((m) => {
      const r = decodeMessage(m, Ping, limits);
      return r.ok && r.attributes;
    });
    // Read after both were handled (and the second decoded after the first): each its own.
    expect(contexts.map((c) => c.attributes)).toEqual(expected);
    expect(contexts[1]?.attributes.dataschema).toBe('urn:busbar:ping:v1');
    expect(contexts[1]?.attributes.idempotencyKey).toBe('a2');
    expect(contexts[0]?.attributes).toBe(contexts[0]?.attributes);
    expect(contexts.map((c) => [c.id, c.idempotencyKey, { ...c.headers }])).toEqual([
      ['a1', 'k1', {}],
      ['a2', 'a2', { user: 'u' }],
    ]);
  });

  it('settles each of many interleaved deliveries by its own handler result, acks resolving out of order', async () => {
    // Deliveries finish in an order unrelated to their arrival: each handler, and each ack, waits
    // a time of its own, so the pooled callbacks pass from delivery to delivery mid-way.
    const ticks = (n: number) => new Promise<void>((r) => (n === 0 ? r() : setTimeout(r, n)));
    const fails = (n: number) => n % 3 === 0;
    // The common path, and the idempotency store's path (which ends in the same ack).
    for (const store of [undefined, new MemoryIdempotencyStore()]) {
      const t = new HandTransport();
      const bus = new EventBus({ transport: t, idempotency: store && { store } });
      const outcomes = new Map<string, string>();
      bus.on('outcome', (info: DeliveryInfo, o: DeliveryOutcome) => outcomes.set(`${info.id}/${info.idempotencyKey}`, o.status));
      await bus.subscribe(Ping, { ...extra, group: 'g', concurrency: 8 }, async (d) => {
        await ticks((d.n * 7) % 5);
        if (fails(d.n)) throw new Error(`fail ${d.n}`);
      });
      const results = new Map<string, string>();
      // As a transport with a prefetch of 8 does: a delivery is handed over when one settled.
      let next = 1;
      let pending = 60;
      const { promise: allSettled, resolve: settledAll } = gate();
      const deliverNext = () => {
        const n = next++;
        if (n > 60) return;
        const m = encode(bus, Ping, { n }, { id: `m${n}`, idempotencyKey: `k${n}` });
        const settle = (how: string) => async () => {
          await ticks((n * 3) % 4);
          results.set(`m${n}`, how);
          if (--pending === 0) settledAll();
          deliverNext();
        };
        t.onDelivery?.({
          headers: m.headers,
          body: m.body,
          redeliveries: 0,
          position: `p@${n}`,
          ack: settle('ack'),
          retry: settle('retry'),
          deadLetter: settle('dead-letter'),
          release: settle('release'),
        });
      };
      for (let i = 0; i < 8; i++) deliverNext();
      await allSettled;
      for (let n = 1; n <= 60; n++) expect(results.get(`m${n}`)).toBe(fails(n) ? 'retry' : 'ack');
      await vi.waitFor(() => expect(outcomes.size).toBe(60));
      for (let n = 1; n <= 60; n++) expect(outcomes.get(`m${n}/k${n}`)).toBe(fails(n) ? 'retried' : 'acked');
      await bus.close();
    }
  });

  it('close resolves as soon as the running handlers finish, long before its deadline', async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    const g = gate();
    let started = false;
    const sub = await bus.subscribe(Ping, { ...extra, group: 'g' }, async () => {
      started = true;
      await g.promise;
    });
    const settled = t.deliver(bus, { n: 1 });
    await vi.waitFor(() => expect(started).toBe(true));
    const closing = sub.close({ timeoutMs: 600_000 }); // were it to wait for the deadline, the test would time out
    g.resolve();
    await closing;
    expect(await settled).toBe('ack');
    expect(sub.inFlight).toBe(0);
  });

  it('close waits for running handlers, and releases those still running at its deadline', async () => {
    const t = new HandTransport();
    const bus = new EventBus({ transport: t });
    const gates = new Map([
      [1, gate()],
      [2, gate()],
    ]);
    const started: number[] = [];
    const sub = await bus.subscribe(Ping, { ...extra, group: 'g', concurrency: 2 }, async (d) => {
      started.push(d.n);
      await gates.get(d.n)?.promise;
    });
    const first = t.deliver(bus, { n: 1 }, 'm1');
    const second = t.deliver(bus, { n: 2 }, 'm2');
    await vi.waitFor(() => expect(started).toEqual([1, 2]));
    let closed = false;
    const closing = sub.close({ timeoutMs: 200 }).then(() => (closed = true));
    gates.get(1)?.resolve();
    expect(await first).toBe('ack');
    await new Promise((r) => setImmediate(r));
    expect(closed).toBe(false); // the second handler still runs
    expect(sub.inFlight).toBe(1);
    await closing; // its deadline passed: released
    expect(await second).toBe('release');
    gates.get(2)?.resolve();
    await new Promise((r) => setImmediate(r));
    expect(t.settled).toEqual(['ack', 'release']); // the late handler's success does not ack a released delivery
    expect(sub.inFlight).toBe(0);
  });
});

describe('EventBus envelope', () => {
  it('stamps ce_time with the current millisecond on every publish', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const bus = new EventBus({ transport: new HandTransport() });
    vi.setSystemTime(Date.UTC(2030, 0, 1, 12, 0, 0, 0));
    const a = encode(bus, Ping, { n: 1 });
    const b = encode(bus, Ping, { n: 2 });
    vi.setSystemTime(Date.UTC(2030, 0, 1, 12, 0, 0, 1));
    const c = encode(bus, Ping, { n: 3 });
    vi.setSystemTime(Date.UTC(2031, 5, 2, 3, 4, 5, 6));
    const d = encode(bus, Ping, { n: 4 });
    expect([a, b, c, d].map((m) => m.headers[Headers.time])).toEqual([
      '2030-01-01T12:00:00.000Z',
      '2030-01-01T12:00:00.000Z',
      '2030-01-01T12:00:00.001Z',
      '2031-06-02T03:04:05.006Z',
    ]);
  });

  it("writes each event's topic, dataschema and version (namespaced), and the body as JSON", () => {
    const bus = new EventBus({ transport: new HandTransport(), namespace: 'tenant1' });
    for (const [event, version] of [
      [Ping, 1],
      [PingV2, 2],
      [Ping, 1],
    ] as const) {
      const m = encode(bus, event, { n: version });
      expect(m.topic).toBe('tenant1.ping');
      expect(m.headers[Headers.dataschema]).toBe(`urn:busbar:ping:v${version}`);
      expect(m.headers[Headers.eventVersion]).toBe(String(version));
      expect(new TextDecoder().decode(m.body)).toBe(`{"n":${version}}`);
      expect([...m.body]).toEqual([...new TextEncoder().encode(`{"n":${version}}`)]);
    }
    const bytes = encodeJson({ a: 'é' });
    expect(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8')).toBe('{"a":"é"}');
    expect(encodeJson(undefined)).toEqual(new Uint8Array(0)); // as TextEncoder did: no JSON text, no bytes
  });
});

describe('EventBus message ids', () => {
  it('makes random version 4 UUIDs (RFC 4122 variant, lower case), all distinct, with every header set in full', () => {
    const bus = new EventBus({ transport: new HandTransport() });
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    const ids = new Set<string>();
    const hex = new Set<string>();
    // 20k ids: several refills of the random buffer.
    for (let i = 0; i < 20_000; i++) {
      const m = encode(bus, Ping, { n: i });
      expect(m.id).toMatch(uuid);
      expect(m.headers[Headers.id]).toBe(m.id);
      expect(m.headers[Headers.idempotencyKey]).toBe(m.id);
      ids.add(m.id);
      for (const c of m.id.replaceAll('-', '')) hex.add(c);
    }
    expect(ids.size).toBe(20_000);
    expect(hex.size).toBe(16);
    const m = encode(bus, Ping, { n: 1 });
    expect(Object.keys(m.headers).sort()).toEqual(
      [
        Headers.id,
        Headers.source,
        Headers.specversion,
        Headers.type,
        Headers.time,
        Headers.contentType,
        Headers.dataschema,
        Headers.eventVersion,
        Headers.idempotencyKey,
      ].sort(),
    );
    const withUser = encode(bus, Ping, { n: 1 }, { headers: { 'x-a': '1' }, key: 'k', id: 'given' });
    expect(withUser.headers).toMatchObject({ 'x-a': '1', [Headers.id]: 'given', [Headers.partitionKey]: 'k', [Headers.type]: 'ping' });
    expect(Object.keys(withUser.headers)).toHaveLength(11);
  });
});

describe('EventBus publish deadlines', () => {
  it('keeps each publish deadline after idle periods and holds no timer once closed', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    const t = new HandTransport();
    const bus = new EventBus({ transport: t, breaker: false, publishTimeoutMs: 100 });
    await bus.publish(Ping, { n: 1 }); // settled at t = 0: the deadline timer idles
    await vi.advanceTimersByTimeAsync(50);
    t.hold = true;
    let outcome: unknown;
    const late = bus.publish(Ping, { n: 2 }).then(
      () => 'resolved',
      (e: unknown) => e,
    );
    void late.then((o) => {
      outcome = o;
    });
    await vi.advanceTimersByTimeAsync(99); // t = 149: one millisecond before its deadline
    expect(outcome).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(await late).toBeInstanceOf(PublishTimeoutError);
    await bus.close();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('lets the process exit while idle (the deadline timer does not keep it alive)', async () => {
    const core = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const script = `
      const { EventBus, defineEvent } = await import(${JSON.stringify(core)});
      const { z } = await import('zod');
      const E = defineEvent({ type: 'e', schema: z.object({ n: z.number() }) });
      const transport = {
        name: 't', capabilities: { durability: 'memory', orderedByKey: false, newGroupFromEarliest: false, balancedAssignment: false,
          leaseExtension: false, maxRetryDelayMs: 1, maxNameLength: 255, namePattern: /^[a-z.]+$/ },
        async connect() {}, async publish(b) { return b.map(() => ({ ok: true })); },
        async subscribe() { throw new Error('unused'); }, async processDeadLetters() { return []; },
        health() { return { state: 'connected', since: 0 }; }, async close() {},
      };
      const bus = new EventBus({ transport, publishTimeoutMs: 60000 });
      await bus.publish(E, { n: 1 });
      process.stdout.write('published');
    `;
    const started = Date.now();
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      timeout: 25_000,
    });
    expect(stdout).toBe('published');
    expect(Date.now() - started).toBeLessThan(20_000);
  }, 30_000);
});
