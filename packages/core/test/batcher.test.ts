// Unit tests of core's publish path against a scripted Transport stub. (The conformance and
// integration suites run against real brokers; this file only checks core's own logic.)
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  BackpressureError,
  BrokerUnavailableError,
  BusClosedError,
  CircuitOpenError,
  defineEvent,
  EventBus,
  PayloadTooLargeError,
  PublishRejectedError,
  PublishTimeoutError,
  type Transport,
  type TransportCapabilities,
  ValidationError,
} from '../src/index.js';
import type { OutgoingMessage } from '../src/transport/index.js';
import { basicCapabilities } from './fixtures.js';

const Ping = defineEvent({ type: 'ping', schema: z.object({ n: z.number() }) });

class ScriptedTransport implements Transport {
  readonly name = 'scripted';
  batches: OutgoingMessage[][] = [];
  private gates: { resolve: () => void; reject: (error: Error) => void }[] = [];
  hold = false;
  fail: ((m: OutgoingMessage) => Error | undefined) | undefined;
  down = false;
  constructor(readonly capabilities: TransportCapabilities = basicCapabilities) {}
  async connect() {}
  /** The `onDurable` of each call, in call order. */
  durableHooks: (((i: number) => void) | undefined)[] = [];
  async publish(batch: readonly OutgoingMessage[], signal: AbortSignal, onDurable?: (i: number) => void) {
    this.batches.push([...batch]);
    this.durableHooks.push(onDurable);
    if (this.down) throw new BrokerUnavailableError('connection refused to amqp://u:pw@h');
    if (this.hold) {
      await new Promise<void>((resolve, reject) => {
        this.gates.push({ resolve, reject });
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      });
    }
    return batch.map((m) => {
      const error = this.fail?.(m);
      return error ? { ok: false as const, error } : { ok: true as const };
    });
  }
  openGates() {
    for (const g of this.gates.splice(0)) g.resolve();
  }
  /** Fails the oldest call still held, as a whole. */
  failOldest(error: Error) {
    this.gates.shift()?.reject(error);
  }
  async subscribe(): Promise<never> {
    throw new Error('not used');
  }
  async processDeadLetters() {
    return [];
  }
  health() {
    return { state: 'connected' as const, since: 0 };
  }
  async close() {}
}

describe('EventBus publish path', () => {
  it('coalesces publishes issued during a round trip into the next batch, keeping per-message results', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t, breaker: false });
    t.hold = true;
    t.fail = (m) => (new TextDecoder().decode(m.body) === '{"n":13}' ? new PublishRejectedError('nack') : undefined);
    const first = bus.publish(Ping, { n: 0 });
    await new Promise((r) => setImmediate(r));
    const rest = Array.from({ length: 99 }, (_, i) => bus.publish(Ping, { n: i + 1 }));
    await new Promise((r) => setImmediate(r));
    expect(t.batches.map((b) => b.length)).toEqual([1]);
    t.hold = false;
    t.openGates();
    const results = await Promise.allSettled([first, ...rest]);
    expect(t.batches.map((b) => b.length)).toEqual([1, 99]);
    const rejected = results.filter((r) => r.status === 'rejected');
    expect(rejected).toHaveLength(1);
    expect((rejected[0] as PromiseRejectedResult).reason).toBeInstanceOf(PublishRejectedError);
  });

  it("keeps the transport's orderedPublishCalls calls in flight by default (one per synchronous run); maxInFlightBatches overrides it", async () => {
    const turn = () => new Promise<void>((r) => setImmediate(r));
    const run = async (t: ScriptedTransport, bus: EventBus) => {
      t.hold = true;
      const all: Promise<unknown>[] = [];
      // Five turns of two publishes each, while every call is held.
      for (let i = 0; i < 5; i++) {
        all.push(bus.publish(Ping, { n: 2 * i }), bus.publish(Ping, { n: 2 * i + 1 }));
        await turn();
      }
      const inFlight = t.batches.map((b) => b.length);
      t.hold = false;
      t.openGates();
      await Promise.all(all);
      // Handed to the transport in publish order, whatever the number of calls.
      expect(t.batches.flat().map((m) => JSON.parse(new TextDecoder().decode(m.body)).n)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      return inFlight;
    };
    const pipelined = { ...basicCapabilities, orderedPublishCalls: 3 };
    const a = new ScriptedTransport(pipelined);
    expect(await run(a, new EventBus({ transport: a, breaker: false }))).toEqual([2, 2, 2]);
    expect(a.batches.map((b) => b.length)).toEqual([2, 2, 2, 4]);
    const b = new ScriptedTransport();
    expect(await run(b, new EventBus({ transport: b, breaker: false }))).toEqual([2]);
    const c = new ScriptedTransport(pipelined);
    expect(await run(c, new EventBus({ transport: c, breaker: false, batching: { maxInFlightBatches: 1 } }))).toEqual([2]);
  });

  it('a call that fails as a whole fails only its own publishes; the calls in flight after it still settle', async () => {
    const t = new ScriptedTransport({ ...basicCapabilities, orderedPublishCalls: 2 });
    const bus = new EventBus({ transport: t, breaker: false });
    t.hold = true;
    const first = bus.publish(Ping, { n: 1 });
    await new Promise((r) => setImmediate(r));
    const second = bus.publish(Ping, { n: 2 });
    await new Promise((r) => setImmediate(r));
    expect(t.batches.map((b) => b.length)).toEqual([1, 1]);
    t.failOldest(new BrokerUnavailableError('channel closed; outcome unknown'));
    await expect(first).rejects.toBeInstanceOf(BrokerUnavailableError);
    t.openGates();
    await expect(second).resolves.toMatchObject({ id: expect.any(String) });
  });

  it('releases a publisher as soon as the transport reports its message durable, not when the whole call resolves', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t, breaker: false });
    const published: string[] = [];
    bus.on('published', (e) => published.push(e.id));
    const settled: string[] = [];
    const track = <T>(p: Promise<T>, name: string) =>
      p.then((r) => {
        settled.push(name);
        return r;
      });
    t.hold = true;
    const a = track(bus.publish(Ping, { n: 1 }), 'a');
    const b = track(bus.publish(Ping, { n: 2 }), 'b');
    await new Promise((r) => setImmediate(r));
    expect(t.batches.map((x) => x.length)).toEqual([2]);
    const onDurable = t.durableHooks[0];
    expect(onDurable).toBeTypeOf('function');
    onDurable?.(1); // the second message's confirm arrives first
    await new Promise((r) => setImmediate(r));
    expect(settled).toEqual(['b']);
    onDurable?.(1); // told twice: still one outcome, one event
    t.openGates(); // the call resolves with both outcomes
    const [ra, rb] = await Promise.all([a, b]);
    expect(settled).toEqual(['b', 'a']);
    expect(published.sort()).toEqual([ra.id, rb.id].sort());
    // A lone publish (nothing to release early) gets no callback.
    t.hold = false;
    await bus.publish(Ping, { n: 3 });
    expect(t.durableHooks).toHaveLength(2);
    expect(t.durableHooks[1]).toBeUndefined();
  });

  it('validates before any I/O', async () => {
    const t = new ScriptedTransport();
    const bus = new EventBus({ transport: t, maxPayloadBytes: 64 });
    await expect(bus.publish(Ping, { n: 'x' } as never)).rejects.toBeInstanceOf(ValidationError);
    const Big = defineEvent({ type: 'big', schema: z.object({ s: z.string() }) });
    await expect(bus.publish(Big, { s: 'x'.repeat(100) })).rejects.toBeInstanceOf(PayloadTooLargeError);
    await expect(bus.publish(Ping, { n: 1 }, { headers: { ce_id: 'x' } })).rejects.toBeInstanceOf(ValidationError);
    await expect(bus.publish(Ping, { n: 1 }, { headers: { 'content-type': 'x' } })).rejects.toBeInstanceOf(ValidationError);
    expect(t.batches).toHaveLength(0);
  });

  it('times out with PublishTimeoutError (outcome unknown) and never hangs', async () => {
    const t = new ScriptedTransport();
    t.hold = true;
    const bus = new EventBus({ transport: t, breaker: false });
    await expect(bus.publish(Ping, { n: 1 }, { timeoutMs: 30 })).rejects.toBeInstanceOf(PublishTimeoutError);
  });

  it('rejects past the pending limit with BackpressureError when configured to', async () => {
    const t = new ScriptedTransport();
    t.hold = true;
    const bus = new EventBus({ transport: t, breaker: false, maxPendingPublishes: 2, publishOverflow: 'reject' });
    const a = bus.publish(Ping, { n: 1 });
    const b = bus.publish(Ping, { n: 2 });
    await expect(bus.publish(Ping, { n: 3 })).rejects.toBeInstanceOf(BackpressureError);
    t.openGates();
    t.hold = false;
    t.openGates();
    await a;
    t.openGates();
    await b;
  });

  it('waits for capacity under the default overflow policy', async () => {
    const t = new ScriptedTransport();
    t.hold = true;
    const bus = new EventBus({ transport: t, breaker: false, maxPendingPublishes: 1 });
    const a = bus.publish(Ping, { n: 1 });
    const b = bus.publish(Ping, { n: 2 });
    await new Promise((r) => setImmediate(r));
    expect(bus.health().pendingPublishes).toBe(1);
    t.hold = false;
    t.openGates();
    await Promise.all([a, b]);
    expect(t.batches.flat()).toHaveLength(2);
  });

  it('opens the breaker on a dead broker so publishes fail fast without I/O', async () => {
    const t = new ScriptedTransport();
    t.down = true;
    const bus = new EventBus({ transport: t, breaker: { failureThreshold: 2, recoveryTimeoutMs: 60_000 } });
    await expect(bus.publish(Ping, { n: 1 })).rejects.toBeInstanceOf(BrokerUnavailableError);
    const err = await bus.publish(Ping, { n: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BrokerUnavailableError);
    expect(String((err as Error).message)).not.toContain('pw@');
    const calls = t.batches.length;
    await expect(bus.publish(Ping, { n: 3 })).rejects.toBeInstanceOf(CircuitOpenError);
    expect(t.batches.length).toBe(calls);
    expect(bus.health().breaker).toBe('open');
  });

  it('half-opens after the recovery timeout and closes again once the broker is back', async () => {
    const t = new ScriptedTransport();
    t.down = true;
    let now = 0;
    const clock = { now: () => now, setTimer: () => () => {} };
    const bus = new EventBus({ transport: t, breaker: { failureThreshold: 1, recoveryTimeoutMs: 1000, clock } });
    await expect(bus.publish(Ping, { n: 1 })).rejects.toBeInstanceOf(BrokerUnavailableError);
    await expect(bus.publish(Ping, { n: 2 })).rejects.toBeInstanceOf(CircuitOpenError);
    t.down = false;
    now += 1000;
    expect(bus.health().breaker).toBe('half-open');
    await expect(bus.publish(Ping, { n: 3 })).resolves.toMatchObject({ id: expect.any(String) });
    expect(bus.health().breaker).toBe('closed');
  });

  it('rejects publish and subscribe after close with BusClosedError', async () => {
    const bus = new EventBus({ transport: new ScriptedTransport() });
    await bus.close();
    await expect(bus.publish(Ping, { n: 1 })).rejects.toBeInstanceOf(BusClosedError);
    await expect(bus.subscribe(Ping, { group: 'g' }, () => {})).rejects.toBeInstanceOf(BusClosedError);
    expect(bus.health().status).toBe('down');
  });
});
