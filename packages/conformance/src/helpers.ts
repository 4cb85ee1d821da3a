/**
 * Building blocks of the conformance cases: a per-case context (run-unique namespace, buses, raw
 * clients and spies that are all torn down after the case), a {@link Collector} that records
 * received ids and resolves when a set is complete, and small event-driven wait helpers. Nothing
 * here sleeps: every wait resolves on an event and is bounded by a deadline.
 */
import {
  type BusOptions,
  dataSchemaUri,
  EventBus,
  type EventBus as EventBusType,
  type EventDefinition,
  JSON_CONTENT_TYPE,
  OutcomeSpy,
  type RecordedOutcome,
  SPEC_VERSION,
  TimeoutError,
  withTimeout,
} from '@busbar/core';
import { HeaderNames } from '@busbar/core/transport';
import { afterEach, it, type TestContext } from 'vitest';
import type { ConformanceTarget, RawBrokerClient, RawProbe } from './target.js';

/** Fast retries so failure cases finish quickly on every broker. */
export const FAST_BACKOFF = { initialMs: 20, maxMs: 50, minMs: 10 } as const;

/** Settings shared by every case of one `runConformance` call. */
export interface Suite {
  readonly target: ConformanceTarget;
  /** How long one wait for deliveries may take, ms (`target.deliveryTimeoutMs`). */
  readonly timeoutMs: number;
  /** Vitest timeout of one case: several bounded waits plus setup. */
  readonly caseTimeoutMs: number;
  /** `target.scale`. */
  readonly scale: number;
  /** `max(min, round(n × scale))`: scaled sizes that stay meaningful. */
  scaled(n: number, min: number): number;
  /** Registers one case (a vitest `it`) that receives a fresh {@link CaseContext}. */
  test(name: string, fn: (c: CaseContext) => Promise<void>): void;
}

const RUN_ID = `${Date.now().toString(36).slice(-5)}${Math.floor(Math.random() * 36 ** 3)
  .toString(36)
  .padStart(3, '0')}`;
let caseSeq = 0;

/** Creates the suite settings and registers the `afterEach` that tears each case down. */
export function createSuite(target: ConformanceTarget): Suite {
  const timeoutMs = target.deliveryTimeoutMs ?? 20_000;
  const scale = target.scale ?? 1;
  const caseTimeoutMs = timeoutMs * 4 + 30_000;
  let current: CaseContext | undefined;
  afterEach(async () => {
    const c = current;
    current = undefined;
    await c?.dispose();
  }, timeoutMs + 30_000);
  const suite: Suite = {
    target,
    timeoutMs,
    caseTimeoutMs,
    scale,
    scaled: (n, min) => Math.max(min, Math.round(n * scale)),
    test(name, fn) {
      it(
        name,
        async (t) => {
          current = new CaseContext(suite, t);
          await fn(current);
        },
        caseTimeoutMs,
      );
    },
  };
  return suite;
}

/** Bus overrides a case may pass (the namespace and transport are the context's). */
export type BusOverrides = Partial<Omit<BusOptions, 'transport' | 'namespace'>>;

/**
 * Everything one case creates. The namespace is unique per run and case; `dispose` (run by the
 * suite's `afterEach`) closes every bus, probe, raw client and spy, then calls `target.cleanup`.
 */
export class CaseContext {
  /** Run-unique namespace of this case, e.g. `cfm3k2a9x7`. */
  readonly namespace: string;
  private readonly buses: EventBus[] = [];
  private readonly raws: RawBrokerClient[] = [];
  private readonly probes: RawProbe[] = [];
  private readonly spies: OutcomeSpy[] = [];

  constructor(
    readonly suite: Suite,
    readonly test: TestContext,
  ) {
    this.namespace = `cf${RUN_ID}x${++caseSeq}`;
  }

  /** `suite.timeoutMs`. */
  get timeoutMs(): number {
    return this.suite.timeoutMs;
  }

  /** A new connected bus (own transport) in this case's namespace. */
  async bus(overrides: BusOverrides = {}): Promise<EventBusType> {
    const target = this.suite.target;
    const bus = new EventBus({
      source: 'urn:busbar:conformance',
      publishTimeoutMs: 15_000,
      closeTimeoutMs: 2_000,
      ...target.busOptions,
      ...overrides,
      retry: { maxAttempts: 5, backoff: { ...FAST_BACKOFF }, ...target.busOptions?.retry, ...overrides.retry },
      namespace: this.namespace,
      transport: target.createTransport(),
    });
    this.buses.push(bus);
    await within(bus.ready(), this.timeoutMs, 'bus.ready()');
    return bus;
  }

  /** An {@link OutcomeSpy} on `bus`, disposed after the case. */
  spy(bus: EventBusType): OutcomeSpy {
    const spy = new OutcomeSpy(bus);
    this.spies.push(spy);
    return spy;
  }

  /** A raw client below the bus, closed after the case. */
  async raw(): Promise<RawBrokerClient> {
    const raw = await within(this.suite.target.createRawClient(), this.timeoutMs, 'createRawClient()');
    this.raws.push(raw);
    return raw;
  }

  /** A raw probe on `topic` (opened with a fresh raw client), closed after the case. */
  async observe(topic: string): Promise<RawProbe> {
    const raw = await this.raw();
    const probe = await within(raw.observe(topic), this.timeoutMs, `observe(${topic})`);
    this.probes.push(probe);
    return probe;
  }

  /** Reports duplicate deliveries (allowed: delivery is at-least-once) without failing. */
  reportDuplicates(label: string, duplicates: number): void {
    if (duplicates <= 0) return;
    const message = `[conformance ${this.suite.target.name}] ${label}: ${duplicates} duplicate deliveries (at-least-once)`;
    console.info(message);
    void this.test.annotate(message, 'notice').catch(() => {});
  }

  /** Closes everything the case created, then removes its broker objects. */
  async dispose(): Promise<void> {
    for (const s of this.spies) s.dispose();
    await Promise.allSettled(this.probes.map((p) => within(p.close(), this.timeoutMs, 'probe.close()')));
    await Promise.allSettled(this.raws.map((r) => within(r.close(), this.timeoutMs, 'raw.close()')));
    await Promise.allSettled(this.buses.map((b) => within(b.close({ timeoutMs: 1_000 }), this.timeoutMs, 'bus.close()')));
    await within(this.suite.target.cleanup(this.namespace), this.timeoutMs * 2, `cleanup(${this.namespace})`);
  }
}

/** `promise`, or a `TimeoutError` naming `label` after `ms`. */
export function within<T>(promise: Promise<T>, ms: number, label: string): Promise<T> {
  return withTimeout(() => promise, { ms, label });
}

/** A promise with its resolve/reject exposed. */
export interface Deferred<T> {
  readonly promise: Promise<T>;
  resolve(value: T): void;
  reject(error: unknown): void;
  readonly settled: boolean;
}

/** Creates a {@link Deferred}. */
export function deferred<T = void>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  let settled = false;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  return {
    promise,
    resolve: (v) => {
      settled = true;
      resolve(v);
    },
    reject: (e) => {
      settled = true;
      reject(e);
    },
    get settled() {
      return settled;
    },
  };
}

/** A counter whose value can be awaited: `await counter.reach(n, ms, label)`. */
export class Counter {
  private n = 0;
  private readonly waiters = new Set<{ at: number; d: Deferred<void> }>();

  get value(): number {
    return this.n;
  }

  inc(by = 1): void {
    this.n += by;
    for (const w of this.waiters) {
      if (this.n >= w.at) {
        this.waiters.delete(w);
        w.d.resolve();
      }
    }
  }

  reach(at: number, ms: number, label: string): Promise<void> {
    if (this.n >= at) return Promise.resolve();
    const w = { at, d: deferred() };
    this.waiters.add(w);
    return within(w.d.promise, ms, `${label} (reached ${this.n} of ${at})`).finally(() => this.waiters.delete(w));
  }
}

interface CollectorWaiter {
  readonly missing?: Set<string>;
  readonly size?: number;
  readonly d: Deferred<void>;
}

/**
 * Records received message ids (with how often each arrived) and lets a case await a set of ids
 * or a number of distinct ids, with a deadline.
 */
export class Collector {
  private readonly counts = new Map<string, number>();
  private readonly waiters = new Set<CollectorWaiter>();
  /** Every id in arrival order (duplicates included). */
  readonly arrivals: string[] = [];

  /** Records one arrival of `id`. */
  add(id: string): void {
    this.arrivals.push(id);
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    for (const w of this.waiters) {
      w.missing?.delete(id);
      if ((w.missing && w.missing.size === 0) || (w.size !== undefined && this.counts.size >= w.size)) {
        this.waiters.delete(w);
        w.d.resolve();
      }
    }
  }

  /** How often `id` arrived. */
  count(id: string): number {
    return this.counts.get(id) ?? 0;
  }

  has(id: string): boolean {
    return this.counts.has(id);
  }

  /** Distinct ids received. */
  get size(): number {
    return this.counts.size;
  }

  /** Distinct ids received. */
  ids(): string[] {
    return [...this.counts.keys()];
  }

  /** Arrivals beyond the first of each id. */
  get duplicates(): number {
    return this.arrivals.length - this.counts.size;
  }

  /** Ids of `expected` not received yet. */
  missing(expected: Iterable<string>): string[] {
    return [...expected].filter((id) => !this.counts.has(id));
  }

  /** Resolves once every id of `ids` arrived; rejects after `ms` naming how many are missing. */
  waitForAll(ids: Iterable<string>, ms: number, label: string): Promise<void> {
    const expected = [...ids];
    const missing = new Set(expected.filter((id) => !this.counts.has(id)));
    if (missing.size === 0) return Promise.resolve();
    const w: CollectorWaiter = { missing, d: deferred() };
    this.waiters.add(w);
    return this.bound(w, ms, () => {
      const sample = [...missing].slice(0, 3).join(', ');
      return `${label}: ${missing.size} of ${expected.length} ids not received within ${ms} ms (e.g. ${sample})`;
    });
  }

  /** Resolves once `n` distinct ids arrived. */
  waitForSize(n: number, ms: number, label: string): Promise<void> {
    if (this.counts.size >= n) return Promise.resolve();
    const w: CollectorWaiter = { size: n, d: deferred() };
    this.waiters.add(w);
    return this.bound(w, ms, () => `${label}: ${this.counts.size} of ${n} distinct ids received within ${ms} ms`);
  }

  private bound(w: CollectorWaiter, ms: number, describe: () => string): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      w.d.promise,
      new Promise<void>((_, reject) => {
        timer = setTimeout(() => {
          this.waiters.delete(w);
          reject(new TimeoutError(describe()));
        }, ms);
      }),
    ]).finally(() => clearTimeout(timer));
  }
}

/**
 * Runs `count` tasks with at most `workers` at once (each worker awaits its own tasks in order) and
 * returns their results in task order.
 */
export async function pool<T>(count: number, workers: number, task: (i: number) => Promise<T>): Promise<T[]> {
  const results = new Array<T>(count);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(workers, count) }, async () => {
      while (next < count) {
        const i = next++;
        results[i] = await task(i);
      }
    }),
  );
  return results;
}

/** Yields to the event loop `turns` times (lets pending I/O callbacks run); never a timed sleep. */
export async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
}

/** Valid CloudEvents headers for a message of `event`, written below the bus (override any). */
export function envelopeHeaders(event: EventDefinition, id: string, overrides: Record<string, string> = {}): Record<string, string> {
  return {
    [HeaderNames.id]: id,
    [HeaderNames.source]: 'urn:busbar:conformance-raw',
    [HeaderNames.specversion]: SPEC_VERSION,
    [HeaderNames.type]: event.type,
    [HeaderNames.time]: new Date().toISOString(),
    [HeaderNames.contentType]: JSON_CONTENT_TYPE,
    [HeaderNames.dataschema]: dataSchemaUri(event.type, event.version),
    [HeaderNames.eventVersion]: String(event.version),
    [HeaderNames.idempotencyKey]: id,
    ...overrides,
  };
}

/** UTF-8 bytes of `text`. */
export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** A fresh unique id for messages written below the bus. */
export function rawId(label: string): string {
  return `raw-${label}-${RUN_ID}-${Math.random().toString(36).slice(2, 10)}`;
}

/** Whether a recorded outcome is final for its delivery's group (no further delivery expected). */
export function isTerminal(r: RecordedOutcome): boolean {
  return r.outcome.status === 'acked' || r.outcome.status === 'duplicate' || r.outcome.status === 'dead-lettered';
}

/** Resolves once `spy` recorded a dead letter of `id` in `group`; returns its reason kind. */
export async function deadLettered(spy: OutcomeSpy, id: string, group: string, ms: number): Promise<string> {
  const r = await spy.waitFor(id, { status: 'dead-lettered', group, timeoutMs: ms });
  return r.outcome.status === 'dead-lettered' ? r.outcome.reason.kind : '';
}
