/**
 * The scenarios, written once against {@link FaultTarget}; each transport's file runs those whose
 * fault exists for it. Every scenario publishes a known set of messages with idempotency keys,
 * injects the fault, waits until every confirmed key is handled or dead-lettered, then records
 * and checks the figures (see ledger.ts).
 */
import { type BusError, type BusOptions, type EventBus, Headers } from '@busbar/core';
import type { Redis } from 'ioredis';
import { expect } from 'vitest';
import type { ConsumerConfig, ConsumerProcess, KillPoint } from './consumer.js';
import { effectKeys, type FaultRow, isRetryableBusError, type Ledger } from './ledger.js';
import { expectClean, type FaultTarget, Order, Progress, Scenario, sized, withTimeoutMs } from './scenario.js';

/** Shared resources of a fault file. */
export interface FaultEnv {
  /** Client of the effects Redis. */
  readonly effects: Redis;
  /** URL of the effects Redis (also the idempotency store). */
  readonly effectsUrl: string;
}

const PUBLISH_TIMEOUT_MS = 3000;
/** Core's documented default of `BusOptions.publishTimeoutMs` (a scenario run with the defaults). */
const BUS_DEFAULT_PUBLISH_TIMEOUT_MS = 10_000;
/** Slack over the publish timeout for "settles within its timeout" (timers on 2 busy cores). */
const SETTLE_SLACK_MS = 1500;

export interface StreamOptions {
  readonly from?: number;
  readonly count: number;
  readonly concurrency?: number;
  /** Pause between publishes of one worker (load shape, not synchronisation). */
  readonly paceMs?: number;
  readonly deadlineMs?: number;
  readonly keyPrefix?: string;
  readonly data?: (n: number) => { n: number; poison?: boolean; pad?: string };
  readonly progress?: Progress;
  readonly onError?: (error: Error, elapsedMs: number) => void;
  /**
   * Keeps the stream going past `count` while `control.open` (e.g. for as long as a fault lasts);
   * `control.issued` counts the messages started. `control.end` may be raised meanwhile.
   */
  readonly control?: StreamControl;
}

/** See {@link StreamOptions.control}. */
interface StreamControl {
  open: boolean;
  end: number;
  issued: number;
}

/** Publishes `count` messages (keys `<keyPrefix><n>`), each re-published with its key until confirmed. */
export async function publishStream(s: Scenario, bus: EventBus, o: StreamOptions): Promise<void> {
  const from = o.from ?? 0;
  const ctl: StreamControl = o.control ?? { open: false, end: from + o.count, issued: from };
  const deadline = Date.now() + (o.deadlineMs ?? 120_000);
  const unconfirmed: number[] = [];
  const worker = async () => {
    while (ctl.open || ctl.issued < ctl.end) {
      const n = ctl.issued++;
      const ok = await s.ledger.publishUntilConfirmed(
        bus,
        Order,
        o.data ? o.data(n) : { n },
        { idempotencyKey: `${o.keyPrefix ?? 'k'}${n}` },
        deadline,
        (e, ms) => {
          s.errors.push(`${e.name}: ${e.message}`);
          o.onError?.(e, ms);
        },
      );
      if (!ok) unconfirmed.push(n);
      o.progress?.inc();
      if (o.paceMs) await new Promise((r) => setTimeout(r, o.paceMs));
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.concurrency ?? 4, o.count) }, worker));
  if (unconfirmed.length > 0)
    throw new Error(`${unconfirmed.length} publishes never confirmed before the deadline: ${unconfirmed.slice(0, 10)}`);
}

/** One publish attempt that failed: its code, when it started and when it settled (epoch ms). */
export interface PublishFailure {
  readonly code: string;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly elapsedMs: number;
}

/** Publish failures seen during a fault: typed, retryable, within the timeout. */
export class FailureLog {
  readonly byCode: Record<string, number> = {};
  readonly slow: string[] = [];
  readonly untyped: string[] = [];
  /** Every failure, in the order they settled. */
  readonly all: PublishFailure[] = [];
  private readonly waiters = new Set<{ match: (f: PublishFailure) => boolean; resolve: (f: PublishFailure) => void }>();
  private timeoutSeen: (() => void) | undefined;
  readonly timedOut = new Promise<void>((r) => {
    this.timeoutSeen = r;
  });
  /** @param timeoutMs the publishing bus's publish timeout (a failure must settle within it + slack) */
  constructor(private readonly timeoutMs = PUBLISH_TIMEOUT_MS) {}
  record = (e: Error, elapsedMs: number): void => {
    const code = (e as Partial<BusError>).code ?? `untyped:${e.name}`;
    this.byCode[code] = (this.byCode[code] ?? 0) + 1;
    if (!isRetryableBusError(e)) this.untyped.push(`${code}: ${e.message}`);
    if (elapsedMs > this.timeoutMs + SETTLE_SLACK_MS) this.slow.push(`${code} after ${elapsedMs} ms`);
    if (code === 'PUBLISH_TIMEOUT') this.timeoutSeen?.();
    const endedAt = Date.now();
    const failure: PublishFailure = { code, startedAt: endedAt - elapsedMs, endedAt, elapsedMs };
    this.all.push(failure);
    for (const w of [...this.waiters]) {
      if (w.match(failure)) {
        this.waiters.delete(w);
        w.resolve(failure);
      }
    }
  };
  /** The first failure (already seen or future) matching `match`; rejects after `timeoutMs`. */
  waitFor(match: (f: PublishFailure) => boolean, timeoutMs: number, label: string): Promise<PublishFailure> {
    const seen = this.all.find(match);
    if (seen) return Promise.resolve(seen);
    let waiter: { match: (f: PublishFailure) => boolean; resolve: (f: PublishFailure) => void } | undefined;
    const found = new Promise<PublishFailure>((resolve) => {
      waiter = { match, resolve };
      this.waiters.add(waiter);
    });
    return withTimeoutMs(found, timeoutMs).catch((e: Error) => {
      if (waiter) this.waiters.delete(waiter);
      throw new Error(`${label}: ${e.message}`);
    });
  }
  expectTypedAndTimely(): void {
    expect(this.untyped, 'every publish failure is a typed, retryable Busbar error').toEqual([]);
    expect(this.slow, `every publish settles within its timeout (+${SETTLE_SLACK_MS} ms)`).toEqual([]);
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Consumer killed (kill -9) mid-handler, after the effect, after the commit — fresh consumer each cycle.

export async function consumerKilled(t: FaultTarget, env: FaultEnv): Promise<void> {
  const s = new Scenario(t, env.effects, env.effectsUrl, 'consumer-kill');
  try {
    const cycles = sized(21, 60);
    const total = cycles * 2 + 10;
    const points: KillPoint[] = ['mid-handler', 'after-effect', 'after-commit'];
    const kills: Record<KillPoint, number> = { 'mid-handler': 0, 'after-effect': 0, 'after-commit': 0 };
    const bus = await s.bus(t.spec('direct'));
    for (let i = 0; i < cycles; i++) {
      const point = points[i % points.length] as KillPoint;
      const c = await s.consumer({ kill: { point, after: i % 2 } });
      if (i === 0) await publishStream(s, bus, { count: total, concurrency: 16 });
      await c.killAtPoint(45_000);
      kills[point]++;
    }
    const survivor = await s.consumer({ concurrency: 4 });
    await s.waitSettled(120_000);
    await survivor.close();
    s.ledger.notes.cycles = cycles;
    s.ledger.notes.kills = kills;
    const row = await s.finish(bus);
    expectClean(row);
    expect(row.published).toBe(total);
    expect(row.handled).toBe(total);
    expect(row.deadLettered).toBe(0);
    // A plain effect re-runs exactly when a run died between the effect and the mark.
    expect(row.plainReruns).toBe(kills['after-effect']);
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------------------
// 2 / 3 / 3b. A fault under load: publisher and subscriber keep running across it.

/** What {@link LoadFault.inject} may look at while the fault lasts. */
export interface LoadContext {
  /** The publishing bus (in this process). */
  readonly bus: EventBus;
  /** The consumer (a child process), on the same link. */
  readonly consumer: ConsumerProcess;
  /** The scenario's ledger (a fault that measures something sets e.g. `detectionMs`). */
  readonly ledger: Ledger;
}

/** Options of {@link faultUnderLoad}. */
export interface LoadFault {
  /** Scenario name in the report. */
  readonly name: string;
  /** Which link the publisher and the consumer use. */
  readonly link: 'direct' | 'proxy';
  /**
   * Run publisher and consumer with the transport's defaults ({@link FaultTarget.defaultSpec}, no
   * consumer tuning) and the bus's default publish timeout, instead of the suite's short ones.
   * @defaultValue false
   */
  readonly defaults?: boolean;
  /** Options of the publishing bus beyond the scenario's (e.g. `breaker: false`). */
  readonly busOptions?: Partial<Omit<BusOptions, 'transport'>>;
  /** Injects the fault (and ends it) once a share of the messages is confirmed. */
  inject(failures: FailureLog, ctx: LoadContext): Promise<Record<string, unknown> | undefined>;
  /** The fault's own checks, once the row is written and the shared ones passed. */
  verify?(row: FaultRow): void;
  /** At least one publish must end in `PublishTimeoutError` (the link was silent). */
  readonly expectTimeout?: boolean;
  /** Messages, CI / full size. */
  readonly size?: readonly [number, number];
  /** Consumer settings (e.g. a slower handler, so a backlog sits in the broker at the fault). */
  readonly consumer?: Partial<ConsumerConfig>;
  /** How long the whole publish stream may take, fault included, ms. @defaultValue 90000 */
  readonly deadlineMs?: number;
}

export async function faultUnderLoad(t: FaultTarget, env: FaultEnv, fault: LoadFault): Promise<void> {
  const s = new Scenario(t, env.effects, env.effectsUrl, fault.name);
  try {
    const n = sized(...(fault.size ?? [150, 1500]));
    const publishTimeoutMs = fault.defaults ? BUS_DEFAULT_PUBLISH_TIMEOUT_MS : PUBLISH_TIMEOUT_MS;
    const bus = await s.bus(fault.defaults ? t.defaultSpec(fault.link) : t.spec(fault.link), {
      // `undefined` leaves the bus at its default.
      publishTimeoutMs: fault.defaults ? undefined : PUBLISH_TIMEOUT_MS,
      breaker: { failureThreshold: 5, recoveryTimeoutMs: 500 },
      ...fault.busOptions,
    });
    const consumer = await s.consumer(
      { concurrency: 4, ...(fault.defaults ? { transport: t.defaultSpec(fault.link) } : {}), ...fault.consumer },
      fault.link,
    );
    const progress = new Progress();
    const failures = new FailureLog(publishTimeoutMs);
    // The publishers keep publishing for as long as the fault lasts, then n/3 more (at least n in all).
    const control: StreamControl = { open: true, end: n, issued: 0 };
    const publishing = publishStream(s, bus, {
      count: n,
      concurrency: 4,
      paceMs: 10,
      progress,
      onError: failures.record,
      deadlineMs: fault.deadlineMs ?? 90_000,
      control,
    });
    // Awaited below; if the fault itself throws first, its rejection must not surface later as an
    // unhandled error blamed on whichever scenario runs then.
    publishing.catch(() => {});
    await progress.reach(Math.floor(n / 3), 60_000, 'confirmed publishes');
    // Confirmed but not yet handled when the fault hits: what the broker must keep.
    s.ledger.notes.backlogAtFault = progress.count - (await s.effects.hlen(effectKeys(s.prefix).atomic));
    const t0 = Date.now();
    const issuedBefore = control.issued;
    let notes: Record<string, unknown> | undefined;
    try {
      notes = await fault.inject(failures, { bus, consumer, ledger: s.ledger });
    } finally {
      control.end = Math.max(n, control.issued + Math.floor(n / 3));
      control.open = false;
    }
    s.ledger.notes.faultMs = Date.now() - t0;
    s.ledger.notes.publishesStartedDuringFault = control.issued - issuedBefore;
    Object.assign(s.ledger.notes, notes ?? {});
    await publishing;
    await s.waitSettled(60_000);
    expect(consumer.alive, 'the same consumer process kept running across the fault').toBe(true);
    await consumer.close();
    s.ledger.notes.publishFailures = failures.byCode;
    const row = await s.finish(bus);
    expectClean(row);
    expect(row.published).toBe(control.issued);
    expect(row.handled).toBe(control.issued);
    failures.expectTypedAndTimely();
    if (fault.expectTimeout)
      expect(failures.byCode.PUBLISH_TIMEOUT ?? 0, 'a silent link surfaces as PublishTimeoutError').toBeGreaterThan(0);
    expect(s.secretHits()).toEqual([]);
    fault.verify?.(row);
  } finally {
    await s.close();
  }
}

/** The proxy faults, as {@link LoadFault}s. */
export function proxyFaults(t: FaultTarget): LoadFault[] {
  const holdUntilTimeout = async (failures: FailureLog) => {
    // Hold the fault until a publish has timed out (proof the silence was noticed), at most 20 s.
    await withTimeoutMs(failures.timedOut, 20_000).catch(() => {});
  };
  return [
    {
      name: 'proxy-cut',
      link: 'proxy',
      inject: async () => ({ linksCut: t.proxy.cut() }),
    },
    {
      name: 'proxy-reset',
      link: 'proxy',
      inject: async () => ({ linksReset: t.proxy.reset() }),
    },
    {
      name: 'proxy-blackhole',
      link: 'proxy',
      expectTimeout: true,
      inject: async (failures) => {
        t.proxy.setMode('blackhole');
        await holdUntilTimeout(failures);
        t.proxy.setMode('pass');
        return undefined;
      },
    },
    {
      name: 'proxy-half-open',
      link: 'proxy',
      expectTimeout: true,
      // Nothing ends a half-open link but the client noticing the silence (heartbeats, request
      // timeouts): it must do so well within this.
      deadlineMs: 45_000,
      inject: async (failures) => {
        const n = t.proxy.halfOpen();
        await holdUntilTimeout(failures);
        return { linksHalfOpened: n };
      },
    },
  ];
}

/** Broker paused with SIGSTOP for ~10 s, then SIGCONT. */
export function pausedBroker(pause: () => void, resume: () => void): LoadFault {
  return {
    name: 'broker-paused',
    link: 'direct',
    expectTimeout: true,
    inject: async (failures) => {
      pause();
      try {
        // The pause lasts ~10 s (the fault's length, not synchronisation) and at least until a
        // publish timed out.
        await Promise.all([
          new Promise((r) => setTimeout(r, sized(10_000, 10_000))),
          withTimeoutMs(failures.timedOut, 20_000).catch(() => {}),
        ]);
      } finally {
        resume();
      }
      return { pausedMs: sized(10_000, 10_000) };
    },
  };
}

/** Broker restarted (durable state), publishers and subscribers running. */
export function restartedBroker(restart: () => Promise<void>, how: string): LoadFault {
  return {
    name: 'broker-restart',
    link: 'direct',
    size: [150, 1500],
    consumer: { handlerDelayMs: 20 },
    inject: async () => {
      const t0 = Date.now();
      await restart();
      return { restart: how, restartMs: Date.now() - t0 };
    },
  };
}

/** Connections dropped by the broker (rabbitmqctl close_all_connections, Redis CLIENT KILL). */
export function droppedConnections(drop: () => Promise<number | undefined>, how: string): LoadFault {
  return {
    name: 'connections-killed',
    link: 'direct',
    inject: async () => ({ how, closed: await drop() }),
  };
}

// ---------------------------------------------------------------------------------------------
// 4. Broker down at start: ready() rejects naming the endpoint, publishes fail fast, and the bus
// recovers once the broker is up (the breaker, if refusals opened it, half-opens and closes).

export async function brokerDownAtStart(t: FaultTarget, env: FaultEnv): Promise<void> {
  const s = new Scenario(t, env.effects, env.effectsUrl, 'down-at-start');
  try {
    const consumer = await s.consumer({}, 'direct'); // the group exists; only the publisher's broker is "down"
    t.proxy.setMode('refuse');
    const timeoutMs = 2000;
    const bus = await s.bus(t.spec('proxy'), { publishTimeoutMs: timeoutMs, breaker: { failureThreshold: 3, recoveryTimeoutMs: 1000 } });
    const breaker: string[] = [];
    bus.on('breaker', (state) => breaker.push(state));
    // ready() means connected (issue 14): with the broker down it rejects after its timeout with
    // a BrokerUnavailableError naming the endpoint and the cause.
    const t0 = Date.now();
    const readyTimeoutMs = 3000;
    const notReady = await withTimeoutMs(
      bus.ready({ timeoutMs: readyTimeoutMs }).then(
        () => undefined,
        (e: unknown) => e,
      ),
      15_000,
    );
    const readyMs = Date.now() - t0;
    expect((notReady as Partial<BusError> | undefined)?.code, 'ready() rejects while the broker is down').toBe('BROKER_UNAVAILABLE');
    expect(readyMs, 'ready() rejects at its timeout').toBeLessThanOrEqual(readyTimeoutMs + SETTLE_SLACK_MS);
    expect((notReady as Error).message, 'ready() names where it tried').toContain(`127.0.0.1:`);
    const down: { code: string; ms: number }[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await s.ledger.publishOnce(bus, Order, { n: i }, { idempotencyKey: `down-${i}` });
      expect(r.ok, 'a publish to a broker that is down must fail').toBe(false);
      if (!r.ok) {
        s.errors.push(`${r.error.name}: ${r.error.message}`);
        down.push({ code: (r.error as Partial<BusError>).code ?? r.error.name, ms: r.elapsedMs });
      }
    }
    s.ledger.notes.whileDown = down;
    s.ledger.notes.readyMs = readyMs;
    for (const d of down) {
      expect(['BROKER_UNAVAILABLE', 'CIRCUIT_OPEN'], `error while down: ${d.code}`).toContain(d.code);
      expect(d.ms, 'fails fast, within its timeout').toBeLessThanOrEqual(timeoutMs + SETTLE_SLACK_MS);
    }
    // A publish refused because the transport is not connected fails fast by itself (no I/O) and
    // does not count against the breaker; publishes that did reach a dead link do, and then the
    // breaker must open and, after the broker is back, half-open and close.
    const breakerOpened = breaker.includes('open');
    if (breakerOpened) expect(down.at(-1)?.code).toBe('CIRCUIT_OPEN');
    else for (const d of down) expect(d.code, 'refused by the connection state').toBe('BROKER_UNAVAILABLE');
    t.proxy.setMode('pass');
    const upAt = Date.now();
    for (let i = 0; i < 6; i++) {
      const ok = await s.ledger.publishUntilConfirmed(bus, Order, { n: i }, { idempotencyKey: `down-${i}` }, Date.now() + 60_000, (e) =>
        s.errors.push(`${e.name}: ${e.message}`),
      );
      expect(ok).toBe(true);
    }
    s.ledger.notes.recoveryMs = Date.now() - upAt;
    s.ledger.notes.breaker = breaker;
    if (breakerOpened) {
      expect(breaker).toContain('half-open');
      expect(breaker.at(-1)).toBe('closed');
    } else expect(breaker, 'the breaker never opened, so it never changed').toEqual([]);
    await s.waitSettled(60_000);
    await consumer.close();
    const row = await s.finish(bus);
    expectClean(row);
    expect(row.published).toBe(6);
    expect(s.secretHits()).toEqual([]);
  } finally {
    t.proxy.setMode('pass');
    await s.close();
  }
}

// ---------------------------------------------------------------------------------------------
// 5. Slow consumer / backpressure.

export async function slowConsumer(t: FaultTarget, env: FaultEnv): Promise<void> {
  const s = new Scenario(t, env.effects, env.effectsUrl, 'slow-consumer');
  try {
    const n = sized(400, 4000);
    const concurrency = 4;
    const handlerDelayMs = 200; // ≈ 20 messages/s with 4 in flight: the bursts come ≥ 10× faster
    const pad = 'x'.repeat(32 * 1024);
    const consumer = await s.consumer({ concurrency, handlerDelayMs });
    const bus = await s.bus(t.spec('direct'), { publishTimeoutMs: 30_000 });
    const baseline = await consumer.stats();
    const t0 = Date.now();
    await publishStream(s, bus, { count: n, concurrency: 64, data: (i) => ({ n: i, pad }) });
    const burstMs = Date.now() - t0;
    const atN = await consumer.stats();
    await publishStream(s, bus, { from: n, count: n, concurrency: 64, data: (i) => ({ n: i, pad }) });
    const at2N = await consumer.stats();
    const backlogAtN = n - atN.handled;
    const backlogAt2N = 2 * n - at2N.handled;

    // A publisher over its pending limit: 'reject' → BackpressureError; 'wait' → all confirmed.
    const rejecting = await s.bus(t.spec('direct'), { maxPendingPublishes: 4, publishOverflow: 'reject', publishTimeoutMs: 30_000 });
    const rejected = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        s.ledger.publishOnce(rejecting, Order, { n: 100_000 + i }, { idempotencyKey: `bp-reject-${i}` }),
      ),
    );
    const backpressure = rejected.filter((r) => !r.ok && (r.error as Partial<BusError>).code === 'BACKPRESSURE').length;
    const waiting = await s.bus(t.spec('direct'), { maxPendingPublishes: 4, publishOverflow: 'wait', publishTimeoutMs: 30_000 });
    const waited = await Promise.all(
      Array.from({ length: 40 }, (_, i) => s.ledger.publishOnce(waiting, Order, { n: 200_000 + i }, { idempotencyKey: `bp-wait-${i}` })),
    );

    await consumer.setHandlerDelay(0); // drain the backlog quickly
    await s.waitSettled(180_000);
    const end = await consumer.stats();
    await consumer.close();
    const mb = (b: number) => Math.round((b / 1024 / 1024) * 10) / 10;
    Object.assign(s.ledger.notes, {
      concurrency,
      maxInFlight: end.maxInFlight,
      burstMsgPerS: Math.round((n / Math.max(1, burstMs)) * 1000),
      handlerMsgPerS: Math.round((concurrency * 1000) / handlerDelayMs),
      heapMB: { baseline: mb(baseline.heapUsed), atN: mb(atN.heapUsed), at2N: mb(at2N.heapUsed) },
      externalMB: { baseline: mb(baseline.external), atN: mb(atN.external), at2N: mb(at2N.external) },
      backlog: { atN: backlogAtN, at2N: backlogAt2N },
      backpressure: { rejected: backpressure, waitedAndConfirmed: waited.filter((r) => r.ok).length },
    });
    const row = await s.finish(bus);
    expectClean(row);
    expect(row.handled).toBe(row.published);
    expect(end.maxInFlight, 'concurrency never exceeded').toBeLessThanOrEqual(concurrency);
    expect(backlogAt2N, 'the second burst did build a bigger backlog').toBeGreaterThan(backlogAtN);
    // Memory (heap + Buffers) does not grow with the backlog the broker holds: buffering the extra
    // backlog would cost at least (backlogAt2N − backlogAtN) × 32 KiB; allow half of that (bounded
    // prefetch / fetch buffers vary between samples by a few MiB).
    const extraBytes = (backlogAt2N - backlogAtN) * pad.length;
    const used = (x: { heapUsed: number; external: number }) => x.heapUsed + x.external;
    expect(used(at2N) - used(atN), 'memory growth between backlog N and 2N').toBeLessThan(extraBytes / 2);
    expect(backpressure, "publishOverflow 'reject' refuses with BackpressureError").toBeGreaterThan(0);
    expect(rejected.every((r) => r.ok || (r.error as Partial<BusError>).code === 'BACKPRESSURE')).toBe(true);
    expect(
      waited.every((r) => r.ok),
      "publishOverflow 'wait' confirms every publish",
    ).toBe(true);
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------------------
// 6. Hostile and broken input written below the bus.

interface Hostile {
  readonly name: string;
  readonly headers?: Record<string, string | undefined>;
  readonly body?: Uint8Array | string;
  /** Expected dead-letter reason kind and a pattern its detail must match (naming the problem). */
  readonly kind: string;
  readonly detail: RegExp;
}

export async function hostileInput(t: FaultTarget, env: FaultEnv): Promise<void> {
  const s = new Scenario(t, env.effects, env.effectsUrl, 'hostile-input');
  try {
    const maxPayloadBytes = 64 * 1024;
    const maxHeaderBytes = 16 * 1024; // below AMQP clients' 64 KiB header-table limit
    const consumer = await s.consumer({ maxPayloadBytes, maxHeaderBytes });
    const bus = await s.bus(t.spec('direct'), { maxPayloadBytes, maxHeaderBytes });
    // Dead-letter reasons spell an attribute as the transport's binding does (AMQP: cloudEvents_id).
    const attr = (name: string) => new RegExp(`${(bus.transport.attributePrefix ?? 'ce_').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}${name}`);
    const cases: Hostile[] = [
      { name: 'not-json', body: 'this is not JSON', kind: 'undecodable', detail: /JSON/ },
      { name: 'truncated-json', body: '{"n": 1, "pad": "abc', kind: 'undecodable', detail: /JSON/ },
      { name: 'not-utf8', body: new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), kind: 'undecodable', detail: /UTF-8/ },
      { name: 'schema-invalid', body: '{"n":"seven"}', kind: 'schema-invalid', detail: /\bn\b/ },
      { name: 'proto-key', body: '{"n":1,"__proto__":{"polluted":"yes"}}', kind: 'undecodable', detail: /proto/i },
      {
        name: 'constructor-key',
        body: '{"n":1,"constructor":{"prototype":{"polluted":"yes"}}}',
        kind: 'undecodable',
        detail: /constructor|proto/i,
      },
      { name: 'missing-id', headers: { ce_id: undefined }, kind: 'invalid-envelope', detail: attr('id') },
      { name: 'missing-source', headers: { ce_source: undefined }, kind: 'invalid-envelope', detail: attr('source') },
      { name: 'wrong-specversion', headers: { ce_specversion: '0.3' }, kind: 'invalid-envelope', detail: /specversion/ },
      { name: 'unknown-type', headers: { ce_type: 'faults.unknown' }, kind: 'invalid-envelope', detail: attr('type') },
      { name: 'binary-type', headers: { ce_type: 'faults.\u0000\u0001\u0002order' }, kind: 'invalid-envelope', detail: attr('type') },
      { name: 'wrong-content-type', headers: { 'content-type': 'text/plain' }, kind: 'invalid-envelope', detail: /content-type/ },
      { name: 'bad-version', headers: { ce_eventversion: 'one' }, kind: 'invalid-envelope', detail: /eventversion/ },
      { name: 'newer-version', headers: { ce_eventversion: '99' }, kind: 'unsupported-version', detail: /version 99/ },
      {
        name: 'over-size',
        body: JSON.stringify({ n: 1, pad: 'x'.repeat(maxPayloadBytes + 10) }),
        kind: 'payload-too-large',
        detail: /exceeds/,
      },
      { name: 'huge-headers', headers: { 'x-huge': 'h'.repeat(20 * 1024) }, kind: 'invalid-envelope', detail: /headers exceed/ },
      {
        name: 'many-headers',
        headers: Object.fromEntries(Array.from({ length: 600 }, (_, i) => [`x-h${i}`, 'v'.repeat(24)])),
        kind: 'invalid-envelope',
        detail: /headers exceed/,
      },
    ];
    // Valid messages before and after the hostile ones: the consumer keeps consuming.
    await publishStream(s, bus, { count: 5, keyPrefix: 'before-' });
    const idOf = new Map<string, string>();
    for (const c of cases) {
      const id = `hostile-${c.name}-${crypto.randomUUID()}`;
      const key = `hostile-${c.name}`;
      const headers: Record<string, string> = {
        ce_id: id,
        ce_source: 'urn:busbar:faults:raw',
        ce_specversion: '1.0',
        ce_type: Order.type,
        ce_time: new Date().toISOString(),
        'content-type': 'application/json',
        ce_eventversion: '1',
        ce_idempotencykey: key,
      };
      for (const [k, v] of Object.entries(c.headers ?? {})) {
        if (v === undefined) delete headers[k];
        else headers[k] = v;
      }
      const body = c.body === undefined ? '{"n":1}' : c.body;
      await t.rawWrite(s.topic, { headers, body: typeof body === 'string' ? new TextEncoder().encode(body) : body });
      s.ledger.recordRaw(id, key);
      idOf.set(key, id);
    }
    // A valid message with a binary user header is not hostile: it is handled.
    const binId = `raw-binary-header-${crypto.randomUUID()}`;
    await t.rawWrite(s.topic, {
      headers: {
        ce_id: binId,
        ce_source: 'urn:busbar:faults:raw',
        ce_specversion: '1.0',
        ce_type: Order.type,
        'content-type': 'application/json',
        ce_idempotencykey: 'raw-binary-header',
        'x-binary': '\u0000\u0001\u00ff\ufffd',
      },
      body: new TextEncoder().encode('{"n":2}'),
    });
    s.ledger.recordRaw(binId, 'raw-binary-header');
    await publishStream(s, bus, { count: 5, keyPrefix: 'after-' });

    await s.waitSettled(90_000, bus);
    const stats = await consumer.stats();
    await consumer.close();

    const dls = await s.deadLetters(bus);
    const byId = new Map(dls.map((d) => [d.headers[Headers.id] ?? '', d]));
    const byKey = new Map(dls.map((d) => [d.headers[Headers.idempotencyKey] ?? '', d]));
    const mismatches: string[] = [];
    for (const c of cases) {
      const d = byKey.get(`hostile-${c.name}`) ?? byId.get(idOf.get(`hostile-${c.name}`) ?? '');
      if (!d) {
        mismatches.push(`${c.name}: not dead-lettered`);
        continue;
      }
      if (d.reason.kind !== c.kind || !c.detail.test(d.reason.detail)) {
        mismatches.push(`${c.name}: got ${d.reason.kind} "${d.reason.detail.slice(0, 160)}", want ${c.kind} ${c.detail}`);
      }
    }
    s.ledger.notes.hostile = cases.length;
    s.ledger.notes.reasons = Object.fromEntries(
      cases.map((c) => {
        const d = byKey.get(`hostile-${c.name}`) ?? byId.get(idOf.get(`hostile-${c.name}`) ?? '');
        return [c.name, d ? `${d.reason.kind}: ${d.reason.detail.slice(0, 120)}` : 'MISSING'];
      }),
    );
    s.ledger.notes.polluted = stats.polluted;
    const row = await s.finish(bus);
    expect(mismatches).toEqual([]);
    expect(stats.polluted, 'no prototype polluted in the consumer').toEqual([]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expectClean(row);
    expect(row.deadLettered).toBe(cases.length);
    expect(row.handled).toBe(11); // 5 before, 5 after, the binary-header one
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------------------
// 7. Dead-letter destination failing: the message is not acknowledged, comes back, both errors reported.

export async function deadLetterFailing(t: FaultTarget, env: FaultEnv): Promise<void> {
  const s = new Scenario(t, env.effects, env.effectsUrl, 'dead-letter-failing');
  let repair: (() => Promise<void>) | undefined;
  try {
    const consumer = await s.consumer({ concurrency: 2 });
    const bus = await s.bus(t.spec('direct'));
    // Make sure the group's dead-letter destination exists (a first dead letter), then break it.
    const warmUp = t.warmUpDeadLetters ?? true;
    if (warmUp) {
      await publishStream(s, bus, { count: 1, keyPrefix: 'poison-warmup-', data: (n) => ({ n, poison: true }) });
      await consumer.waitFor((m) => m.t === 'outcome' && m.outcome.status === 'dead-lettered', 30_000, 'the warm-up dead letter');
    }
    repair = await t.breakDeadLetters(s.topic, s.group);
    const poisonKey = 'poison-0';
    await publishStream(s, bus, { count: 1, keyPrefix: 'poison-', data: (n) => ({ n, poison: true }) });
    await publishStream(s, bus, { count: 10, keyPrefix: 'good-' });
    // It comes back: at least two failed dead-letter attempts of the same key.
    const failedSettles = () =>
      consumer.outcomes().filter((o) => o.info.idempotencyKey === poisonKey && o.outcome.status === 'settle-failed');
    await consumer.waitFor(
      (m) =>
        m.t === 'outcome' && m.info.idempotencyKey === poisonKey && m.outcome.status === 'settle-failed' && failedSettles().length >= 2,
      60_000,
      'the poison message to fail its dead-letter write twice',
    );
    const failure = failedSettles()[0]?.outcome.error as string;
    const logged = consumer.logs().find((l) => l.level === 'error' && JSON.stringify(l).includes('dead-letter write failed'));
    await repair();
    repair = undefined;
    await consumer.waitFor(
      (m) => m.t === 'outcome' && m.info.idempotencyKey === poisonKey && m.outcome.status === 'dead-lettered',
      60_000,
      'the poison message to be dead-lettered once the destination works',
    );
    await s.waitSettled(60_000, bus);
    await consumer.close();
    s.ledger.notes.failedDeadLetterWrites = failedSettles().length;
    s.ledger.notes.reported = failure?.slice(0, 300);
    const row = await s.finish(bus);
    expectClean(row);
    expect(row.deadLettered).toBe(warmUp ? 2 : 1);
    expect(row.handled).toBe(10);
    // Both errors: the dead-letter write failure and the handler's reason.
    expect(failure).toMatch(/dead-letter write failed/);
    expect(failure).toMatch(/poison message/);
    expect(logged, 'the failure is logged with both errors').toBeDefined();
    expect(JSON.stringify(logged)).toMatch(/poison message/);
  } finally {
    if (repair) await repair().catch(() => {});
    await s.close();
  }
}

// ---------------------------------------------------------------------------------------------
// 8. Secrets: no password in any error, log line or dead letter.

export async function secrets(t: FaultTarget, env: FaultEnv): Promise<void> {
  const s = new Scenario(t, env.effects, env.effectsUrl, 'secrets');
  try {
    const consumer = await s.consumer({ concurrency: 2 });
    const bus = await s.bus(t.spec('direct'));
    await publishStream(s, bus, { count: 10 });
    await publishStream(s, bus, { count: 2, keyPrefix: 'poison-', data: (n) => ({ n, poison: true }) });
    await s.waitSettled(60_000, bus);
    await consumer.close();
    // Wrong credentials: the failure is reported, the password is not.
    const probe = `Wr0ng-${crypto.randomUUID()}`;
    const wrong: string[] = [];
    if (t.wrongCredentialsSpec) {
      const bad = await s.bus(t.wrongCredentialsSpec(probe), { publishTimeoutMs: 3000 });
      await withTimeoutMs(bad.ready(), 15_000).catch((e: Error) => wrong.push(`${e.name}: ${e.message}`));
      const r = await s.ledger.publishOnce(bad, Order, { n: -1 }, { idempotencyKey: 'wrong-credentials' });
      expect(r.ok, 'a publish with wrong credentials fails').toBe(false);
      if (!r.ok)
        wrong.push(
          `${r.error.name}: ${r.error.message}`,
          JSON.stringify(r.error.cause ?? null, Object.getOwnPropertyNames(r.error.cause ?? {})),
        );
      wrong.push(JSON.stringify(bad.health()));
      s.errors.push(...wrong);
    }
    s.ledger.notes.wrongCredentials = wrong.slice(0, 2).map((w) => w.slice(0, 200));
    s.ledger.notes.wrongPasswordHits = s.secretHits(probe).length;
    const row = await s.finish(bus);
    expectClean(row);
    expect(row.deadLettered).toBe(2);
    expect(s.secretHits(probe), 'the wrong password appears nowhere').toEqual([]);
    expect(s.secretHits(), 'the real password appears nowhere').toEqual([]);
  } finally {
    await s.close();
  }
}

/** For tests that need a consumer-process type. */
export type { ConsumerProcess };
