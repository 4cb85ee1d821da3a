// `bus.ready()` means connected (issue 14, point 1): it resolves only on the transport's
// `'connected'`, rejects at once on `'failed'`, and after `timeoutMs` with a
// `BrokerUnavailableError` naming the transport, its endpoint and the last cause.
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  AuthenticationError,
  BrokerUnavailableError,
  BusClosedError,
  ConfigError,
  DEFAULT_READY_TIMEOUT_MS,
  EventBus,
  type TransportHealth,
} from '../src/index.js';
import { ConnectionStateCell, type OutgoingMessage, type Transport, type TransportContext } from '../src/transport/index.js';
import { basicCapabilities } from './fixtures.js';

const ENDPOINT = 'amqp://guest:***@127.0.0.1:5999';

/** A transport whose connection state the test drives through a kit `ConnectionStateCell`. */
class ScriptedConnection implements Transport {
  readonly name = 'scripted';
  readonly endpoint: string | undefined = ENDPOINT;
  readonly capabilities = basicCapabilities;
  readonly cell = new ConnectionStateCell();
  connectWith: () => Promise<void> = async () => {};
  async connect(context: TransportContext) {
    this.cell.attach(context);
    this.cell.set('connecting');
    await this.connectWith();
  }
  async publish(batch: readonly OutgoingMessage[]) {
    return batch.map(() => ({ ok: true as const }));
  }
  async subscribe() {
    return { stop: async () => {}, close: async () => {} };
  }
  async processDeadLetters() {
    return [];
  }
  health(): TransportHealth {
    return this.cell.health();
  }
  async close() {
    this.cell.set('closed');
  }
}

/** Settles `p` into a value to inspect, and when (ms after the call). */
async function outcome(p: Promise<unknown>): Promise<{ ok: boolean; error?: unknown; ms: number }> {
  const t0 = performance.now();
  try {
    await p;
    return { ok: true, ms: performance.now() - t0 };
  } catch (error) {
    return { ok: false, error, ms: performance.now() - t0 };
  }
}

const buses: EventBus[] = [];
function busOn(transport: Transport): EventBus {
  const bus = new EventBus({ transport, breaker: false });
  buses.push(bus);
  return bus;
}

afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(buses.splice(0).map((b) => b.close()));
});

describe('bus.ready()', () => {
  it('rejects after timeoutMs with BrokerUnavailableError naming the transport, endpoint and last cause when the broker never answers', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    await Promise.resolve();
    t.cell.set('reconnecting', 'Error: connect ECONNREFUSED 127.0.0.1:5999');
    const r = await outcome(bus.ready({ timeoutMs: 150 }));
    expect(r.ok).toBe(false);
    expect(r.ms).toBeGreaterThanOrEqual(140);
    expect(r.error).toBeInstanceOf(BrokerUnavailableError);
    const error = r.error as BrokerUnavailableError;
    expect(error.retryable).toBe(true);
    expect(error.message).toContain('scripted');
    expect(error.message).toContain(ENDPOINT);
    expect(error.message).toContain('ECONNREFUSED 127.0.0.1:5999');
    expect(error.message).toContain('150 ms');
    expect(error.cause).toBe(t.cell.cause);
  });

  it('rejects at once with the final error when the transport reports failed', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    const ready = outcome(bus.ready({ timeoutMs: 5000 }));
    await Promise.resolve();
    const denied = new AuthenticationError('RabbitMQ refused the credentials of guest (ACCESS_REFUSED)');
    setTimeout(() => t.cell.failed(denied), 20);
    const r = await ready;
    expect(r.ok).toBe(false);
    expect(r.error).toBe(denied);
    expect(r.error).toBeInstanceOf(AuthenticationError);
    expect((r.error as AuthenticationError).code).toBe('AUTHENTICATION');
    expect((r.error as AuthenticationError).retryable).toBe(false);
    expect(r.ms).toBeLessThan(1000);
    // A later ready() rejects at once too, and health() shows it.
    const again = await outcome(bus.ready());
    expect(again.error).toBe(denied);
    expect(again.ms).toBeLessThan(100);
    const h = bus.health();
    expect(h.status).toBe('down');
    expect(h.transport).toMatchObject({ state: 'failed', cause: denied, detail: denied.message });
    expect(typeof h.transport.since).toBe('number');
  });

  it('resolves only once the transport reports connected', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    let resolved = false;
    const ready = bus.ready({ timeoutMs: 5000 }).then(() => {
      resolved = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(resolved).toBe(false);
    t.cell.set('reconnecting', 'ECONNREFUSED');
    await new Promise((r) => setTimeout(r, 20));
    expect(resolved).toBe(false);
    expect(bus.health()).toMatchObject({ status: 'degraded', transport: { state: 'reconnecting', detail: 'ECONNREFUSED' } });
    t.cell.set('connected');
    await ready;
    expect(resolved).toBe(true);
    expect(bus.health().transport).toEqual({ state: 'connected', since: t.cell.since });
    await bus.ready({ timeoutMs: 0 }); // already connected: resolves even with no time to wait
  });

  it('waits for connect() to resolve as well as for the connected state', async () => {
    const t = new ScriptedConnection();
    let finish!: () => void;
    t.connectWith = () => {
      t.cell.set('connected');
      return new Promise<void>((r) => {
        finish = r;
      });
    };
    const bus = busOn(t);
    let resolved = false;
    const ready = bus.ready({ timeoutMs: 5000 }).then(() => {
      resolved = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(resolved).toBe(false);
    finish();
    await ready;
    expect(resolved).toBe(true);
  });

  it('defaults to 10 000 ms', async () => {
    expect(DEFAULT_READY_TIMEOUT_MS).toBe(10_000);
    vi.useFakeTimers();
    const t = new ScriptedConnection();
    const bus = busOn(t);
    let settled: unknown;
    bus.ready().catch((e: unknown) => {
      settled = e;
    });
    await vi.advanceTimersByTimeAsync(9_990);
    expect(settled).toBeUndefined();
    await vi.advanceTimersByTimeAsync(20);
    expect(settled).toBeInstanceOf(BrokerUnavailableError);
    expect((settled as Error).message).toContain('10000 ms');
  });

  it('names the transport when it has no endpoint', async () => {
    const t = new ScriptedConnection();
    (t as { endpoint: string | undefined }).endpoint = undefined;
    const bus = busOn(t);
    const r = await outcome(bus.ready({ timeoutMs: 10 }));
    expect((r.error as Error).message).toMatch(/^scripted at scripted did not connect within 10 ms \(state connecting\)$/);
  });

  it('wraps a raw error of connect() as BrokerUnavailableError and passes a ConfigError through', async () => {
    const raw = new ScriptedConnection();
    const boom = new Error('getaddrinfo ENOTFOUND nowhere');
    raw.connectWith = async () => {
      throw boom;
    };
    const r = await outcome(busOn(raw).ready({ timeoutMs: 5000 }));
    expect(r.error).toBeInstanceOf(BrokerUnavailableError);
    expect((r.error as Error).message).toContain(ENDPOINT);
    expect((r.error as Error).message).toContain('ENOTFOUND nowhere');
    expect((r.error as Error).cause).toBe(boom);

    const bad = new ScriptedConnection();
    const config = new ConfigError('bad URL');
    bad.connectWith = async () => {
      throw config;
    };
    expect((await outcome(busOn(bad).ready())).error).toBe(config);
  });

  it('rejects pending and later calls with BusClosedError once the bus closes, leaving no timer behind', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    const pending = outcome(bus.ready({ timeoutMs: 60_000 }));
    await bus.close();
    const r = await pending;
    expect(r.error).toBeInstanceOf(BusClosedError);
    expect(r.ms).toBeLessThan(1000);
    expect((await outcome(bus.ready())).error).toBeInstanceOf(BusClosedError);
  });

  it('refuses a timeoutMs that is not a number ≥ 0 with ConfigError naming it', async () => {
    const bus = busOn(new ScriptedConnection());
    for (const timeoutMs of [-1, Number.NaN, '100', Number.POSITIVE_INFINITY]) {
      const r = await outcome(bus.ready({ timeoutMs } as never));
      expect(r.error).toBeInstanceOf(ConfigError);
      expect((r.error as Error).message).toContain('timeoutMs');
    }
  });

  it('reports the cause in the connection event and fills since for a transport that omits it', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    const seen: [string, string | undefined, unknown][] = [];
    bus.on('connection', (state, detail, cause) => seen.push([state, detail, cause]));
    await Promise.resolve();
    const refused = new BrokerUnavailableError('ECONNREFUSED 127.0.0.1:5999');
    t.cell.set('reconnecting', refused);
    await Promise.resolve();
    expect(seen).toContainEqual(['reconnecting', refused.message, refused]);

    const legacy = new ScriptedConnection();
    legacy.health = () => ({ state: 'reconnecting', detail: 'ECONNRESET' }) as unknown as TransportHealth;
    const h = busOn(legacy).health().transport;
    expect(h).toMatchObject({ state: 'reconnecting', detail: 'ECONNRESET' });
    expect(typeof h.since).toBe('number');
    expect(h.cause).toBeInstanceOf(BrokerUnavailableError);
  });
});
