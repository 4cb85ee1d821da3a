// `bus.ready()` means connected (issue 14, point 1): it resolves only on the transport's
// `'connected'`, rejects at once on `'failed'`, and after `timeoutMs` with a
// `BrokerUnavailableError` naming the transport, its endpoint and the last cause.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import {
  AuthenticationError,
  BrokerUnavailableError,
  BusClosedError,
  CircuitOpenError,
  ConfigError,
  DEFAULT_READY_TIMEOUT_MS,
  defineEvent,
  EventBus,
  PublishTimeoutError,
  type TransportHealth,
} from '../src/index.js';
import { ConnectionStateCell, type OutgoingMessage, type Transport, type TransportContext } from '../src/transport/index.js';
import { basicCapabilities } from './fixtures.js';

const ENDPOINT = 'amqp://guest:***@127.0.0.1:5999';
const Ping = defineEvent({ type: 'ping', schema: z.object({ n: z.number() }) });

/** A transport whose connection state the test drives through a kit `ConnectionStateCell`. */
class ScriptedConnection implements Transport {
  readonly name = 'scripted';
  readonly endpoint: string | undefined = ENDPOINT;
  readonly capabilities = basicCapabilities;
  readonly cell = new ConnectionStateCell();
  connectWith: () => Promise<void> = async () => {};
  /** Messages handed to `publish`. */
  readonly published: OutgoingMessage[] = [];
  /** Set: `publish` waits for it (or for its signal). */
  hold: Promise<void> | undefined;
  subscribeWith: () => Promise<void> = async () => {};
  async connect(context: TransportContext) {
    this.cell.attach(context);
    this.cell.set('connecting');
    await this.connectWith();
  }
  async publish(batch: readonly OutgoingMessage[]) {
    this.published.push(...batch);
    if (this.hold) await this.hold;
    return batch.map(() => ({ ok: true as const }));
  }
  async subscribe() {
    await this.subscribeWith();
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
function busOn(transport: Transport, options: Partial<ConstructorParameters<typeof EventBus>[0]> = {}): EventBus {
  const bus = new EventBus({ transport, breaker: false, ...options });
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

describe('publishing while not connected (issue 14, points 1 and 7)', () => {
  /** A bus on a transport that connected, then lost its link. */
  async function disconnected(options: Partial<ConstructorParameters<typeof EventBus>[0]> = {}) {
    const t = new ScriptedConnection();
    const bus = busOn(t, options);
    t.cell.set('connected');
    await bus.ready({ timeoutMs: 1000 });
    t.cell.set('reconnecting', new BrokerUnavailableError('connect ECONNREFUSED 127.0.0.1:5999'));
    return { t, bus };
  }

  it('fails fast with BrokerUnavailableError naming the endpoint and the cause while reconnecting, without opening the breaker', async () => {
    const states: string[] = [];
    const { t, bus } = await disconnected({ breaker: { failureThreshold: 2, onStateChange: (s) => states.push(s) } });
    for (let i = 0; i < 5; i++) {
      const r = await outcome(bus.publish(Ping, { n: i }, { timeoutMs: 5000 }));
      expect(r.error).toBeInstanceOf(BrokerUnavailableError);
      expect(r.ms).toBeLessThan(200);
      const message = (r.error as Error).message;
      expect(message).toContain(ENDPOINT);
      expect(message).toContain('reconnecting');
      expect(message).toContain('ECONNREFUSED 127.0.0.1:5999');
      expect((r.error as Error).cause).toBe(t.cell.cause);
    }
    expect(t.published).toHaveLength(0);
    // Not an I/O failure: the breaker stays closed and publishing works again once reconnected.
    expect(states).toEqual([]);
    expect(bus.health().breaker).toBe('closed');
    t.cell.set('connected');
    await bus.publish(Ping, { n: 9 });
    expect(t.published).toHaveLength(1);
  });

  it('fails fast while disconnected too', async () => {
    const { t, bus } = await disconnected();
    t.cell.set('disconnected');
    const r = await outcome(bus.publish(Ping, { n: 1 }));
    expect(r.error).toBeInstanceOf(BrokerUnavailableError);
    expect((r.error as Error).message).toContain('disconnected');
  });

  it('rejects with the final error at once when failed, publish and subscribe alike', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    await Promise.resolve();
    const denied = new AuthenticationError('WRONGPASS invalid username-password pair');
    t.cell.failed(denied);
    expect((await outcome(bus.publish(Ping, { n: 1 }))).error).toBe(denied);
    expect((await outcome(bus.subscribe(Ping, { group: 'g' }, async () => {}))).error).toBe(denied);
    expect(t.published).toHaveLength(0);
  });

  it('waits during the first connection and sends once connected', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    const p = bus.publish(Ping, { n: 1 }, { timeoutMs: 5000 });
    await new Promise((r) => setTimeout(r, 30));
    expect(t.published).toHaveLength(0);
    t.cell.set('connected');
    await p;
    expect(t.published).toHaveLength(1);
  });

  it('a publish never handed over during the first connection rejects with BrokerUnavailableError after its timeout, not PublishTimeoutError', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    const r = await outcome(bus.publish(Ping, { n: 1 }, { timeoutMs: 120 }));
    expect(r.error).toBeInstanceOf(BrokerUnavailableError);
    expect(r.error).not.toBeInstanceOf(PublishTimeoutError);
    expect(r.ms).toBeGreaterThanOrEqual(110);
    expect((r.error as Error).message).toContain(ENDPOINT);
    expect((r.error as Error).message).toContain('not sent');
    expect(t.published).toHaveLength(0);
  });

  it('a publish waiting for the first connection fails as soon as the attempt fails', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    const p = outcome(bus.publish(Ping, { n: 1 }, { timeoutMs: 5000 }));
    await new Promise((r) => setTimeout(r, 20));
    t.cell.set('reconnecting', 'connect ECONNREFUSED 127.0.0.1:5999');
    const r = await p;
    expect(r.error).toBeInstanceOf(BrokerUnavailableError);
    expect(r.ms).toBeLessThan(1000);
    expect((r.error as Error).message).toContain('ECONNREFUSED 127.0.0.1:5999');
  });

  it('publishes queued behind a call in flight fail with BrokerUnavailableError when the link drops, never handed over', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    t.cell.set('connected');
    await bus.ready();
    let release!: () => void;
    t.hold = new Promise<void>((r) => {
      release = r;
    });
    const first = outcome(bus.publish(Ping, { n: 0 }, { timeoutMs: 5000 }));
    await new Promise((r) => setImmediate(r));
    const queued = outcome(bus.publish(Ping, { n: 1 }, { timeoutMs: 5000 }));
    await new Promise((r) => setImmediate(r));
    expect(t.published).toHaveLength(1);
    t.cell.set('reconnecting', 'ECONNRESET');
    release();
    expect((await first).ok).toBe(true); // it was confirmed
    const r = await queued;
    expect(r.error).toBeInstanceOf(BrokerUnavailableError);
    expect((r.error as Error).message).toContain('ECONNRESET');
    expect(t.published).toHaveLength(1);
  });

  it('still opens the breaker on real transport failures while connected', async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t, { breaker: { failureThreshold: 2 } });
    t.cell.set('connected');
    await bus.ready();
    t.publish = async () => {
      throw new BrokerUnavailableError('channel closed');
    };
    for (let i = 0; i < 2; i++) expect((await outcome(bus.publish(Ping, { n: i }))).error).toBeInstanceOf(BrokerUnavailableError);
    expect((await outcome(bus.publish(Ping, { n: 3 }))).error).toBeInstanceOf(CircuitOpenError);
  });

  it("wraps a raw error of the transport's subscribe as a retryable BrokerUnavailableError with cause", async () => {
    const t = new ScriptedConnection();
    const bus = busOn(t);
    t.cell.set('connected');
    const raw = new Error('Channel ended, no reply will be forthcoming');
    t.subscribeWith = async () => {
      throw raw;
    };
    const r = await outcome(bus.subscribe(Ping, { group: 'g' }, async () => {}));
    expect(r.error).toBeInstanceOf(BrokerUnavailableError);
    expect((r.error as BrokerUnavailableError).retryable).toBe(true);
    expect((r.error as Error).cause).toBe(raw);
    expect((r.error as Error).message).toContain('Channel ended');
    expect((r.error as Error).message).toContain(ENDPOINT);
  });

  it('a subscribe while reconnecting is not refused: it is handed to the transport, which rides out the reconnect', async () => {
    const { t, bus } = await disconnected();
    let handedOver!: () => void;
    const handed = new Promise<void>((r) => {
      handedOver = r;
    });
    let reconnected!: () => void;
    // As a transport does: it waits (within its own bound) for the link to come back.
    t.subscribeWith = () =>
      new Promise<void>((resolve) => {
        reconnected = resolve;
        handedOver();
      });
    let settled = false;
    const pending = outcome(bus.subscribe(Ping, { group: 'g' }, async () => {})).finally(() => {
      settled = true;
    });
    await handed;
    expect(settled).toBe(false);
    expect(bus.health().transport.state).toBe('reconnecting');
    t.cell.set('connected');
    reconnected();
    const r = await pending;
    expect(r.error).toBeUndefined();
    expect(r.ok).toBe(true);
    expect(bus.health().subscriptions).toBe(1);
  });
});

describe('after close() no handle of core is left (issue 14, point 3)', () => {
  it('a process whose broker never answered exits once the bus closed, its ready() and publishes rejected', async () => {
    const core = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const script = `
      const { EventBus, defineEvent } = await import(${JSON.stringify(core)});
      const { z } = await import('zod');
      const E = defineEvent({ type: 'e', schema: z.object({ n: z.number() }) });
      const transport = {
        name: 't', endpoint: 'nowhere:1', capabilities: { durability: 'memory', orderedByKey: false, newGroupFromEarliest: false,
          balancedAssignment: false, leaseExtension: false, maxRetryDelayMs: 1, maxNameLength: 255, namePattern: /^[a-z.]+$/ },
        async connect() {}, async publish() { throw new Error('never called'); },
        async subscribe() { throw new Error('unused'); }, async processDeadLetters() { return []; },
        health() { return { state: 'connecting', since: 0 }; }, async close() {},
      };
      const bus = new EventBus({ transport });
      const seen = [];
      const waits = [
        bus.ready({ timeoutMs: 60000 }).catch((e) => seen.push('ready ' + e.name)),
        bus.publish(E, { n: 1 }, { timeoutMs: 60000 }).catch((e) => seen.push('publish ' + e.name)),
      ];
      await new Promise((r) => setTimeout(r, 50));
      await bus.close();
      await Promise.all(waits);
      process.stdout.write(seen.sort().join(','));
    `;
    const started = Date.now();
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      timeout: 30_000,
    });
    expect(stdout).toBe('publish BusClosedError,ready BusClosedError');
    expect(Date.now() - started).toBeLessThan(10_000); // not the 60 s of the waits' timers
  });
});
