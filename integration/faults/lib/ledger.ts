/**
 * Accounting of one scenario, in the vocabulary of RabbitMQ's Jepsen checker:
 *
 * - **lost**: an idempotency key with a confirmed publish that was neither handled (its atomic
 *   effect exists) nor dead-lettered;
 * - **recovered**: a publish *attempt* whose outcome was unknown (it rejected with a timeout or a
 *   lost connection) and whose message was delivered anyway;
 * - **unexpected**: a delivered message id, or a handled key, that nobody published;
 * - **duplicated**: an atomic effect applied more than once for one key (must be 0).
 *
 * Plus the honest limit of at-least-once: **plain re-runs** (a plain effect applied more than once,
 * which happens only when a run died between the effect and the completion mark) and **late runs**
 * (a handler that started for a key already completed — must be 0).
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { BusError, DeadLetterView, EventBus, EventDefinition, EventInput, PublishOptions } from '@busbar/core';
import { Headers } from '@busbar/core';
import type { Redis } from 'ioredis';
import { ROWS_FILE } from './report.js';

/** How a publish attempt ended. */
export type AttemptStatus = 'confirmed' | 'unknown' | 'refused' | 'raw';

interface Attempt {
  readonly key: string;
  status: AttemptStatus;
  code?: string;
  elapsedMs: number;
}

/** The figures of one scenario × transport. */
export interface FaultRow {
  scenario: string;
  transport: string;
  /** Idempotency keys with at least one confirmed publish, plus messages written raw below the bus. */
  published: number;
  /** Keys whose atomic effect exists. */
  handled: number;
  /** Keys (or raw ids) found in the group's dead letters. */
  deadLettered: number;
  lost: number;
  recovered: number;
  unexpected: number;
  /** Extra atomic effects beyond one per key (must be 0). */
  duplicateEffects: number;
  /** Extra plain effects beyond one per key (the crash window; reported, allowed). */
  plainReruns: number;
  /** Handler runs for a key that had already completed (must be 0). */
  lateRuns: number;
  /** Publish attempts whose outcome was unknown / definitely refused. */
  unknownOutcomes: number;
  refused: number;
  /** Wall time of the scenario, ms. */
  timeMs: number;
  /**
   * Silent-link detection (`blackhole-detection` only): ms from the link going silent until both
   * the publishing bus and the consumer left `'connected'`; `null` when one never did within the
   * scenario's bound. The two sides and the first fast `BrokerUnavailableError` are in `notes.detection`.
   */
  detectionMs?: number | null;
  /** Scenario-specific observations (cycles, heap, error kinds …). */
  notes: Record<string, unknown>;
}

/** Effect keys of a scenario (see fixtures/consumer.mjs). */
export function effectKeys(prefix: string) {
  return {
    atomic: `${prefix}:atomic`,
    plain: `${prefix}:plain`,
    late: `${prefix}:late`,
    delivered: `${prefix}:delivered`,
  };
}

/** Whether an error from `publish` leaves the outcome unknown (vs. definitely not stored). */
export function isUnknownOutcome(error: unknown): boolean {
  if (!(error instanceof Error)) return true;
  const code = (error as Partial<BusError>).code;
  // Refused before any I/O or by the broker itself: the message is known not to be stored.
  const definite = ['CIRCUIT_OPEN', 'VALIDATION', 'PAYLOAD_TOO_LARGE', 'BUS_CLOSED', 'BACKPRESSURE', 'PUBLISH_REJECTED'];
  return !(code && definite.includes(code));
}

/** Records publish attempts and computes the figures. */
export class Ledger {
  private readonly attempts = new Map<string, Attempt>();
  private readonly started = Date.now();
  readonly notes: Record<string, unknown> = {};
  /** See {@link FaultRow.detectionMs}; left undefined by scenarios that do not measure it. */
  detectionMs: number | null | undefined;
  /** Error codes seen on publish, counted. */
  readonly errorCodes: Record<string, number> = {};

  constructor(
    readonly scenario: string,
    readonly transport: string,
  ) {}

  /**
   * Publishes once through `bus`, recording the attempt. Never throws for broker errors: returns
   * the error (typed) instead, so a scenario can assert on it.
   */
  async publishOnce<E extends EventDefinition>(
    bus: EventBus,
    event: E,
    data: EventInput<E>,
    options: PublishOptions & { idempotencyKey: string },
  ): Promise<{ ok: true; id: string } | { ok: false; id: string; error: Error; elapsedMs: number }> {
    const id = options.id ?? crypto.randomUUID();
    const attempt: Attempt = { key: options.idempotencyKey, status: 'unknown', elapsedMs: 0 };
    this.attempts.set(id, attempt);
    const t0 = Date.now();
    try {
      await bus.publish(event, data, { ...options, id });
      attempt.status = 'confirmed';
      attempt.elapsedMs = Date.now() - t0;
      return { ok: true, id };
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      attempt.elapsedMs = Date.now() - t0;
      attempt.status = isUnknownOutcome(error) ? 'unknown' : 'refused';
      const code = (error as Partial<BusError>).code ?? error.name;
      attempt.code = code;
      this.errorCodes[code] = (this.errorCodes[code] ?? 0) + 1;
      return { ok: false, id, error, elapsedMs: attempt.elapsedMs };
    }
  }

  /**
   * Publishes with the same idempotency key until one attempt is confirmed or `deadline` passes,
   * as an application would: the outcome of a failed attempt may be unknown, the key makes the
   * re-publish safe. `onError` sees every failure (e.g. to assert it was typed and timely).
   */
  async publishUntilConfirmed<E extends EventDefinition>(
    bus: EventBus,
    event: E,
    data: EventInput<E>,
    options: PublishOptions & { idempotencyKey: string },
    deadline: number,
    onError?: (error: Error, elapsedMs: number) => void,
  ): Promise<boolean> {
    for (let backoff = 50; Date.now() < deadline; backoff = Math.min(backoff * 2, 1000)) {
      const r = await this.publishOnce(bus, event, data, options);
      if (r.ok) return true;
      onError?.(r.error, r.elapsedMs);
      const retryAt = (r.error as { retryAt?: number }).retryAt;
      // Backoff between application retries (not test synchronisation).
      await new Promise((res) => setTimeout(res, Math.max(backoff, typeof retryAt === 'number' ? retryAt - Date.now() : 0)));
    }
    return false;
  }

  /** Registers a message written below the bus (raw client) so its delivery is not "unexpected". */
  recordRaw(id: string, key: string): void {
    this.attempts.set(id, { key, status: 'raw', elapsedMs: 0 });
  }

  /** Idempotency keys with a confirmed attempt. */
  confirmedKeys(): Set<string> {
    const out = new Set<string>();
    for (const a of this.attempts.values()) if (a.status === 'confirmed') out.add(a.key);
    return out;
  }

  /** Keys expected to end handled or dead-lettered: confirmed or raw. */
  expectedKeys(): Set<string> {
    const out = new Set<string>();
    for (const a of this.attempts.values()) if (a.status === 'confirmed' || a.status === 'raw') out.add(a.key);
    return out;
  }

  /** Every attempted key (whatever the outcome). */
  attemptedKeys(): Set<string> {
    return new Set([...this.attempts.values()].map((a) => a.key));
  }

  /**
   * Computes the figures from the effects in Redis and the dead letters read back from the
   * broker, and appends the row to the run's report.
   */
  async settle(effects: Redis, prefix: string, deadLetters: readonly DeadLetterView[]): Promise<FaultRow> {
    const k = effectKeys(prefix);
    const [atomic, plain, late, delivered] = await Promise.all([
      effects.hgetall(k.atomic),
      effects.hgetall(k.plain),
      effects.hgetall(k.late),
      effects.smembers(k.delivered),
    ]);
    const handledKeys = new Set(Object.keys(atomic).filter((key) => Number(atomic[key]) >= 1));
    const dlKeys = new Set(deadLetters.map((d) => d.headers[Headers.idempotencyKey] ?? d.id ?? d.handle));
    const attempted = this.attemptedKeys();
    const confirmed = this.confirmedKeys();
    const expected = this.expectedKeys();

    let lost = 0;
    for (const key of expected) if (!handledKeys.has(key) && !dlKeys.has(key)) lost++;
    const deliveredIds = new Set(delivered);
    let recovered = 0;
    for (const [id, a] of this.attempts) if (a.status === 'unknown' && deliveredIds.has(id)) recovered++;
    let unexpected = 0;
    for (const id of deliveredIds) if (!this.attempts.has(id)) unexpected++;
    for (const key of handledKeys) if (!attempted.has(key)) unexpected++;
    for (const key of dlKeys) if (!attempted.has(key)) unexpected++;
    const extra = (h: Record<string, string>) => Object.values(h).reduce((sum, v) => sum + Math.max(0, Number(v) - 1), 0);
    const row: FaultRow = {
      scenario: this.scenario,
      transport: this.transport,
      published: expected.size,
      handled: handledKeys.size,
      deadLettered: dlKeys.size,
      lost,
      recovered,
      unexpected,
      duplicateEffects: extra(atomic),
      plainReruns: extra(plain),
      lateRuns: Object.values(late).reduce((s, v) => s + Number(v), 0),
      unknownOutcomes: [...this.attempts.values()].filter((a) => a.status === 'unknown').length,
      refused: [...this.attempts.values()].filter((a) => a.status === 'refused').length,
      timeMs: Date.now() - this.started,
      ...(this.detectionMs !== undefined ? { detectionMs: this.detectionMs } : {}),
      notes: {
        ...this.notes,
        ...(Object.keys(this.errorCodes).length ? { publishErrors: this.errorCodes } : {}),
        ...(expected.size > confirmed.size ? { writtenRaw: expected.size - confirmed.size } : {}),
      },
    };
    appendRow(row);
    return row;
  }

  /** The publish attempts of `key`: id, status, error code, and whether a consumer saw the id. */
  async describe(effects: Redis, prefix: string, key: string): Promise<string> {
    const delivered = new Set(await effects.smembers(effectKeys(prefix).delivered));
    const parts: string[] = [];
    for (const [id, a] of this.attempts) {
      if (a.key !== key) continue;
      parts.push(`${id.slice(0, 8)}:${a.status}${a.code ? `(${a.code})` : ''}${delivered.has(id) ? ':delivered' : ':never-delivered'}`);
    }
    return `${key} [${parts.join(', ')}]`;
  }

  /** Message ids of the attempts of `key`. */
  attemptIds(key: string): string[] {
    return [...this.attempts].filter(([, a]) => a.key === key).map(([id]) => id);
  }

  /** Keys still missing (confirmed or raw, neither handled nor in `deadLetteredKeys`). */
  async missing(effects: Redis, prefix: string, deadLetteredKeys: ReadonlySet<string> = new Set()): Promise<string[]> {
    const atomic = await effects.hgetall(effectKeys(prefix).atomic);
    return [...this.expectedKeys()].filter((key) => !(Number(atomic[key] ?? 0) >= 1) && !deadLetteredKeys.has(key));
  }
}

/** Appends a row to the run's rows file (aggregated into reports/faults.json at the end). */
export function appendRow(row: FaultRow): void {
  mkdirSync(dirname(ROWS_FILE), { recursive: true });
  appendFileSync(ROWS_FILE, `${JSON.stringify(row)}\n`);
  // Also on the test's own output, so a single file's figures are visible as it runs.
  console.log(
    `[faults] ${row.transport} / ${row.scenario}: published=${row.published} handled=${row.handled} dead-lettered=${row.deadLettered} ` +
      `lost=${row.lost} recovered=${row.recovered} unexpected=${row.unexpected} dup=${row.duplicateEffects} ` +
      `plain-reruns=${row.plainReruns} late=${row.lateRuns} time=${(row.timeMs / 1000).toFixed(1)}s` +
      (row.detectionMs !== undefined ? ` detection=${row.detectionMs === null ? 'never' : `${row.detectionMs}ms`}` : ''),
  );
}

/** Whether a value is a typed, retryable Busbar error. */
export function isRetryableBusError(error: unknown): boolean {
  return error instanceof Error && typeof (error as Partial<BusError>).code === 'string' && (error as Partial<BusError>).retryable === true;
}
