/**
 * What every scenario shares: a run-unique namespace and effect prefix, the event, buses and child
 * consumers that are closed at the end, the ledger, waiting for every key to settle, the secret
 * scan, and cleanup of the topology and the effect keys.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type BusOptions, type DeadLetterView, defineEvent, EventBus, Headers, type Logger, type Transport } from '@busbar/core';
import type { Redis } from 'ioredis';
import { expect } from 'vitest';
import { z } from 'zod';
import { until } from './brokers.js';
import { type ConsumerConfig, ConsumerProcess, type TransportSpec } from './consumer.js';
import { effectKeys, type FaultRow, Ledger } from './ledger.js';
import type { TcpProxy } from './proxy.js';
import { SIZE } from './report.js';

/** Run id: one per test file run (namespaces and effect keys carry it). */
export const RUN_ID = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;

let scenarioSeq = 0;

/** CI size by default, full size with BUSBAR_FAULTS_FULL=1. */
export function sized(ci: number, full: number): number {
  return SIZE === 'full' ? full : ci;
}

/** The event every scenario publishes. `pad` makes payloads big where a scenario needs it. */
export const EVENT_TYPE = 'faults.order';
export const Order = defineEvent({
  type: EVENT_TYPE,
  schema: z.object({ n: z.number().int(), poison: z.boolean().optional(), pad: z.string().optional() }),
});

/** What a transport's fault file provides to the scenarios. */
export interface FaultTarget {
  readonly name: 'rabbitmq' | 'redis-streams' | 'kafka';
  /** Transport options for a bus on the direct link, or through the target's proxy. */
  spec(link: 'direct' | 'proxy', extra?: Record<string, unknown>): TransportSpec;
  /**
   * The transport as a user configures it: where it connects (URL / brokers, credentials), the
   * key prefix and the client choice — every timeout, heartbeat, keepalive, reconnect and session
   * setting at the transport's default. The scenarios that measure a default (the silent-link
   * detection bound) use it; {@link spec} may shorten timeouts to keep the other scenarios short.
   */
  defaultSpec(link: 'direct' | 'proxy'): TransportSpec;
  /** The proxy in front of the broker (`spec('proxy')` goes through it). */
  readonly proxy: TcpProxy;
  /** Options every child consumer of this transport gets (short claim/session timeouts …). */
  readonly consumerOptions?: Record<string, unknown>;
  /** Writes a message below the bus, with the broker's own client. */
  rawWrite(topic: string, message: { headers: Record<string, string>; body: Uint8Array }): Promise<void>;
  /**
   * Whether the dead-letter scenario first writes one dead letter (so the destination exists)
   * before breaking it. @defaultValue true
   */
  readonly warmUpDeadLetters?: boolean;
  /** Makes writing the group's dead letters fail; returns the repair. */
  breakDeadLetters(topic: string, group: string): Promise<() => Promise<void>>;
  /**
   * Diagnostics for a missing message: where the broker holds the message with CloudEvents id `id`
   * (e.g. partition/offset and the group's committed offset), or that it holds none.
   */
  locate?(topic: string, group: string, id: string): Promise<string>;
  /** Deletes every broker object of `namespace`. */
  cleanup(namespace: string): Promise<void>;
  /** The password in this target's URLs, if any (scanned for in every error, log and dead letter). */
  readonly secret?: string;
  /** A spec whose credentials are wrong (with a password that must not leak), if the broker has any. */
  wrongCredentialsSpec?(password: string): TransportSpec;
}

/** Per-scenario resources. */
export class Scenario {
  readonly namespace: string;
  readonly group = 'workers';
  readonly prefix: string;
  readonly ledger: Ledger;
  readonly topic: string;
  /** Log lines of the parent's buses, as JSON text. */
  readonly parentLogs: string[] = [];
  /** Error messages the parent saw (publish rejections …). */
  readonly errors: string[] = [];
  private readonly buses: EventBus[] = [];
  readonly consumers: ConsumerProcess[] = [];

  constructor(
    readonly target: FaultTarget,
    readonly effects: Redis,
    readonly effectsUrl: string,
    readonly name: string,
  ) {
    const short = name.replace(/[^a-z0-9]/g, '').slice(0, 12);
    const seq = ++scenarioSeq;
    this.namespace = `flt-${RUN_ID}-${seq}-${short}`;
    this.prefix = `busbar-faults:${RUN_ID}:${seq}:${target.name}:${name}`;
    this.ledger = new Ledger(name, target.name);
    this.topic = `${this.namespace}.${EVENT_TYPE}`;
  }

  /** A logger that keeps every line (for the secret scan). */
  logger(): Logger {
    const keep = (level: string) => (obj: object, msg?: string) => this.parentLogs.push(JSON.stringify({ level, obj, msg }));
    return { debug: keep('debug'), info: keep('info'), warn: keep('warn'), error: keep('error') };
  }

  /** A bus in this process (publisher, dead-letter reader), closed at the end. */
  async bus(spec: TransportSpec, options: Partial<Omit<BusOptions, 'transport'>> = {}): Promise<EventBus> {
    const bus = new EventBus({
      transport: await createTransport(spec),
      namespace: this.namespace,
      logger: this.logger(),
      publishTimeoutMs: 3000,
      closeTimeoutMs: 5000,
      ...options,
    });
    this.buses.push(bus);
    return bus;
  }

  /** A child consumer of this scenario's group, closed (or killed) at the end. */
  async consumer(overrides: Partial<ConsumerConfig> = {}, link: 'direct' | 'proxy' = 'direct'): Promise<ConsumerProcess> {
    const base = this.target.spec(link, this.target.consumerOptions);
    const proc = await ConsumerProcess.start({
      transport: base,
      namespace: this.namespace,
      eventType: EVENT_TYPE,
      group: this.group,
      effectsUrl: this.effectsUrl,
      prefix: this.prefix,
      concurrency: 1,
      leaseMs: 3000,
      ...overrides,
    });
    this.consumers.push(proc);
    return proc;
  }

  /** The group's dead letters, read back through the bus. */
  async deadLetters(bus: EventBus): Promise<DeadLetterView[]> {
    return bus.deadLetters(Order, this.group).list({ limit: 100_000 });
  }

  /**
   * Waits until every confirmed (or raw-written) key is handled, or dead-lettered when `bus` is
   * given (its dead letters are read back from the broker about once a second).
   */
  async waitSettled(timeoutMs: number, bus?: EventBus): Promise<void> {
    let missing: string[] = [];
    let dlKeys = new Set<string>();
    let polls = 0;
    try {
      await until(
        async () => {
          missing = await this.ledger.missing(this.effects, this.prefix, dlKeys);
          if (missing.length > 0 && bus && polls++ % 5 === 0) {
            dlKeys = new Set((await this.deadLetters(bus)).map((d) => d.headers[Headers.idempotencyKey] ?? d.id));
            missing = await this.ledger.missing(this.effects, this.prefix, dlKeys);
          }
          return missing.length === 0;
        },
        timeoutMs,
        'every published key to be handled or dead-lettered',
        200,
      );
    } catch (e) {
      const detail = await Promise.all(
        missing.slice(0, 5).map(async (k) => {
          const d = await this.ledger.describe(this.effects, this.prefix, k);
          if (!this.target.locate) return d;
          const where = await Promise.all(
            this.ledger
              .attemptIds(k)
              .map((id) => this.target.locate?.(this.topic, this.group, id).catch((x: unknown) => `locate failed: ${String(x)}`)),
          );
          return `${d} broker: ${where.join(' | ')}`;
        }),
      );
      throw new Error(`${(e as Error).message}; still missing ${missing.length}: ${detail.join('; ')}`);
    }
  }

  /** Computes and records the row (dead letters read through `bus`). */
  async finish(bus: EventBus): Promise<FaultRow> {
    const dls = await this.deadLetters(bus);
    this.scanDeadLetters(dls);
    if (this.target.secret) this.ledger.notes.secretScan = { lines: this.scannedLines(), hits: this.secretHits().length };
    return this.ledger.settle(this.effects, this.prefix, dls);
  }

  private dlText: string[] = [];
  private scanDeadLetters(dls: readonly DeadLetterView[]): void {
    for (const d of dls) this.dlText.push(JSON.stringify(d.headers), Buffer.from(d.body).toString('latin1'));
  }

  private scannedLines(): number {
    return this.allText().length;
  }

  private allText(): string[] {
    const childLines = this.consumers.flatMap((c) => [...c.messages.map((m) => JSON.stringify(m)), c.stderr]);
    return [...this.parentLogs, ...this.errors, ...this.dlText, ...childLines];
  }

  /** Lines containing the target's secret (must be none). */
  secretHits(secret = this.target.secret): string[] {
    if (!secret) return [];
    return this.allText().filter((line) => line.includes(secret));
  }

  /** Kills consumers, closes buses, deletes the topology and the effect keys. */
  async close(): Promise<void> {
    const debugDir = process.env.BUSBAR_FAULTS_DEBUG_DIR;
    if (debugDir) {
      mkdirSync(debugDir, { recursive: true });
      writeFileSync(join(debugDir, `${this.target.name}-${this.name}.log`), `${this.allText().join('\n')}\n`);
    }
    await Promise.allSettled(this.consumers.map((c) => c.close(8000)));
    await Promise.allSettled(this.buses.map((b) => withTimeoutMs(b.close({ timeoutMs: 3000 }), 15_000)));
    this.target.proxy.disarm();
    this.target.proxy.setMode('pass');
    this.target.proxy.cut();
    await this.target.cleanup(this.namespace).catch((e) => console.warn(`[faults] cleanup of ${this.namespace} failed: ${String(e)}`));
    await deleteKeys(this.effects, `${this.prefix}:*`);
  }
}

/** Asserts the figures every scenario must meet. */
export function expectClean(row: FaultRow): void {
  expect({ lost: row.lost, unexpected: row.unexpected, duplicateEffects: row.duplicateEffects, lateRuns: row.lateRuns }).toEqual({
    lost: 0,
    unexpected: 0,
    duplicateEffects: 0,
    lateRuns: 0,
  });
}

const PACKAGES: Record<TransportSpec['kind'], readonly [string, string]> = {
  rabbitmq: ['@busbar/rabbitmq', 'RabbitMqTransport'],
  'redis-streams': ['@busbar/redis-streams', 'RedisStreamsTransport'],
  kafka: ['@busbar/kafka', 'KafkaTransport'],
};

/** Whether the built package of a transport exports its class (the suite skips a transport that has not landed). */
export async function transportAvailable(kind: TransportSpec['kind']): Promise<boolean> {
  const [pkg, cls] = PACKAGES[kind];
  try {
    const mod = (await import(pkg)) as Record<string, unknown>;
    return typeof mod[cls] === 'function';
  } catch {
    return false;
  }
}

/** Builds a transport from a spec (the same way the child consumer does). */
export async function createTransport(spec: TransportSpec): Promise<Transport> {
  const [pkg, cls] = PACKAGES[spec.kind];
  const mod = (await import(pkg)) as Record<string, unknown>;
  const Ctor = mod[cls] as (new (options: unknown) => Transport) | undefined;
  if (typeof Ctor !== 'function') throw new Error(`${pkg} does not export ${cls}`);
  return new Ctor(spec.options);
}

/** Deletes keys matching `pattern` (SCAN, never KEYS). */
export async function deleteKeys(redis: Redis, pattern: string): Promise<number> {
  let cursor = '0';
  let n = 0;
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) n += await redis.del(...keys);
  } while (cursor !== '0');
  return n;
}

/** Rejects after `ms` (a bound on cleanup steps that could hang on a broken link). */
export function withTimeoutMs<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]);
}

/** A counter others can await (`await c.reach(10)`), instead of sleeping. */
export class Progress {
  private value = 0;
  private readonly waiters: { n: number; resolve: () => void }[] = [];
  get count(): number {
    return this.value;
  }
  inc(): void {
    this.value++;
    for (const w of [...this.waiters]) {
      if (this.value >= w.n) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }
  reach(n: number, timeoutMs: number, label: string): Promise<void> {
    if (this.value >= n) return Promise.resolve();
    return withTimeoutMs(new Promise<void>((resolve) => this.waiters.push({ n, resolve })), timeoutMs).catch(() => {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${label} to reach ${n} (at ${this.value})`);
    });
  }
}

/** Effect keys of a scenario (re-exported for files that inspect them). */
export { effectKeys };
