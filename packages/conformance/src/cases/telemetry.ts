/**
 * Traces and metrics through `@busbar/opentelemetry`, with an in-memory SDK (telemetry-kit.ts): the
 * context a message carries (`ce_traceparent` / `ce_tracestate`) must survive every transport's
 * wire, retry path, dead letters and replay, and the counters must agree with the outcomes the bus
 * reported. Each case builds its own providers; the only global is the `AsyncLocalStorage` context
 * manager (registered once).
 */
import type { EventBus, RecordedOutcome } from '@busbar/core';
import {
  ATTR_BUSBAR_ATTEMPT,
  ATTR_BUSBAR_DEAD_LETTER_REASON,
  ATTR_BUSBAR_OUTCOME,
  ATTR_ERROR_TYPE,
  ATTR_MESSAGING_CONSUMER_GROUP_NAME,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_DESTINATION_PARTITION_ID,
  ATTR_MESSAGING_KAFKA_OFFSET,
  ATTR_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_SYSTEM,
  METRIC_CONSUMED_MESSAGES,
  METRIC_DEAD_LETTERS,
  METRIC_OPERATION_DURATION,
  METRIC_OUTCOMES,
  METRIC_PROCESS_DURATION,
  METRIC_RETRIES,
  METRIC_SENT_MESSAGES,
  messagingSystemOf,
  parseTraceparent,
} from '@busbar/opentelemetry';
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { expect } from 'vitest';
import { Order } from '../events.js';
import { type CaseContext, deadLettered, isTerminal, type Suite } from '../helpers.js';
import { type TelemetryKit, telemetryKit } from '../telemetry-kit.js';

const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;
const idOf = (s: ReadableSpan) => s.spanContext().spanId;
const traceOf = (s: ReadableSpan) => s.spanContext().traceId;

/** A connected bus with the kit's interceptors, attached to the kit. */
async function instrumentedBus(c: CaseContext, kit: TelemetryKit, overrides: Parameters<CaseContext['bus']>[0] = {}): Promise<EventBus> {
  const bus = await c.bus({ ...overrides, interceptors: kit.telemetry.interceptors });
  kit.telemetry.attach(bus);
  return bus;
}

/** Runs `fn` with a fresh kit, shut down afterwards. */
async function withKit(fn: (kit: TelemetryKit) => Promise<void>): Promise<void> {
  const kit = telemetryKit();
  try {
    await fn(kit);
  } finally {
    await kit.shutdown();
  }
}

export function telemetryCases(suite: Suite): void {
  const T = suite.timeoutMs;

  suite.test('trace: one trace from publish to process in two groups; handler spans are children of process', (c) =>
    withKit(async (kit) => {
      const bus = await instrumentedBus(c, kit);
      const spy = c.spy(bus);
      const topic = bus.topicOf(Order);
      for (const group of ['a', 'b']) {
        await bus.subscribe(Order, { group }, () => {
          kit.tracer.startSpan(`user ${group}`).end();
        });
      }
      const request = kit.tracer.startSpan('request');
      const { id } = await context.with(trace.setSpan(context.active(), request), () => bus.publish(Order, { n: 1 }));
      request.end();
      await spy.waitFor(id, { status: 'acked', group: 'a', timeoutMs: T });
      await spy.waitFor(id, { status: 'acked', group: 'b', timeoutMs: T });
      const all = await kit.spans.waitFor(
        (s) => traceOf(s) === request.spanContext().traceId,
        6,
        T,
        'request, send, 2 × process, 2 × user',
      );

      const send = all.filter((s) => s.kind === SpanKind.PRODUCER);
      expect(send.map((s) => s.name)).toEqual([`send ${topic}`]);
      const [producer] = send as [ReadableSpan];
      expect(parentOf(producer)).toBe(request.spanContext().spanId);
      expect(producer.attributes).toMatchObject({
        [ATTR_MESSAGING_SYSTEM]: messagingSystemOf(bus.transport.name),
        [ATTR_MESSAGING_DESTINATION_NAME]: topic,
        [ATTR_MESSAGING_OPERATION_TYPE]: 'send',
        [ATTR_MESSAGING_MESSAGE_ID]: id,
      });

      const processes = all.filter((s) => s.kind === SpanKind.CONSUMER);
      expect(processes.map((s) => s.attributes[ATTR_MESSAGING_CONSUMER_GROUP_NAME]).sort()).toEqual(['a', 'b']);
      for (const p of processes) {
        const group = p.attributes[ATTR_MESSAGING_CONSUMER_GROUP_NAME];
        expect(p.name).toBe(`process ${topic}`);
        expect(parentOf(p), `process ${group} is a child of send`).toBe(idOf(producer));
        expect(p.attributes).toMatchObject({
          [ATTR_MESSAGING_SYSTEM]: messagingSystemOf(bus.transport.name),
          [ATTR_MESSAGING_DESTINATION_NAME]: topic,
          [ATTR_MESSAGING_OPERATION_TYPE]: 'process',
          [ATTR_MESSAGING_MESSAGE_ID]: id,
          [ATTR_BUSBAR_ATTEMPT]: 1,
          [ATTR_BUSBAR_OUTCOME]: 'acked',
        });
        if (bus.transport.name === 'kafka') {
          expect(p.attributes[ATTR_MESSAGING_DESTINATION_PARTITION_ID], 'Kafka partition').toMatch(/^\d+$/);
          expect(p.attributes[ATTR_MESSAGING_KAFKA_OFFSET], 'Kafka offset').toBeTypeOf('number');
        }
        const user = all.find((s) => s.name === `user ${group}`);
        expect(user && parentOf(user), `user span of ${group} is a child of its process span`).toBe(idOf(p));
      }
    }),
  );

  suite.test('trace: retry → dead letter → replay keep the publisher trace', (c) =>
    withKit(async (kit) => {
      const bus = await instrumentedBus(c, kit, { retry: { maxAttempts: 2 } });
      const spy = c.spy(bus);
      let healthy = false;
      await bus.subscribe(Order, { group: 'g' }, () => {
        if (!healthy) throw new TypeError('not yet');
      });
      const { id } = await bus.publish(Order, { n: 1 });
      expect(await deadLettered(spy, id, 'g', T)).toBe('max-attempts');
      const [stored] = (await bus.deadLetters(Order, 'g').list()).filter((d) => d.id === id);
      healthy = true;
      const replayed = await bus.deadLetters(Order, 'g').replay({ filter: (d) => d.id === id });
      expect(replayed.map((d) => d.id)).toEqual([id]);
      await spy.waitFor(id, { status: 'acked', group: 'g', timeoutMs: T });

      const [producer] = await kit.spans.waitFor((s) => s.kind === SpanKind.PRODUCER, 1, T, 'send');
      const processes = await kit.spans.waitFor(
        (s) => s.kind === SpanKind.CONSUMER && s.attributes[ATTR_MESSAGING_MESSAGE_ID] === id,
        3,
        T,
        'process: attempt 1, attempt 2, replay',
      );
      const sendSpan = producer as ReadableSpan;
      expect(processes.map((p) => p.attributes[ATTR_BUSBAR_OUTCOME])).toEqual(['retried', 'dead-lettered', 'acked']);
      for (const p of processes) {
        expect(traceOf(p)).toBe(traceOf(sendSpan));
        expect(parentOf(p)).toBe(idOf(sendSpan));
      }
      const [first, last] = processes as [ReadableSpan, ReadableSpan];
      expect(first.attributes[ATTR_BUSBAR_ATTEMPT]).toBe(1);
      expect(last.attributes[ATTR_BUSBAR_ATTEMPT]).toBe(2);
      expect(last.attributes[ATTR_BUSBAR_DEAD_LETTER_REASON]).toBe('max-attempts');
      for (const failed of [first, last]) {
        expect(failed.status.code).toBe(SpanStatusCode.ERROR);
        expect(failed.attributes[ATTR_ERROR_TYPE]).toBe('TypeError');
      }
      // The dead letter itself carries the publisher's context (a tool reading it continues the trace).
      const carried = parseTraceparent(stored?.headers.ce_traceparent, stored?.headers.ce_tracestate);
      expect(carried?.traceId).toBe(traceOf(sendSpan));
      expect(carried?.spanId).toBe(idOf(sendSpan));
    }),
  );

  suite.test('metrics: counters equal the outcomes an OutcomeSpy saw', (c) =>
    withKit(async (kit) => {
      const bus = await instrumentedBus(c, kit, { retry: { maxAttempts: 2 } });
      const spy = c.spy(bus);
      const topic = bus.topicOf(Order);
      let runs = 0;
      // n % 3: 0 always fails (retried, then dead-lettered), 1 fails once (retried, then acked), 2 acks.
      await bus.subscribe(Order, { group: 'g', concurrency: 4 }, (data, ctx) => {
        runs++;
        if (data.n % 3 === 0 || (data.n % 3 === 1 && ctx.attempt === 1)) throw new Error(`fails ${data.n}`);
      });
      const count = 6;
      const receipts = await Promise.all(Array.from({ length: count }, (_, n) => bus.publish(Order, { n })));
      const ours = new Set(receipts.map((r) => r.id));
      const mine = (r: RecordedOutcome) => ours.has(r.info.id) && r.info.group === 'g';
      for (const r of receipts)
        await spy.waitUntil((o) => mine(o) && o.info.id === r.id && isTerminal(o), { timeoutMs: T, label: `terminal ${r.id}` });
      // 'retried' is reported once the copy is durably scheduled, possibly after the copy ran.
      await spy.waitUntil(() => spy.outcomes.filter((o) => mine(o) && o.outcome.status === 'retried').length >= 4, {
        timeoutMs: T,
        label: '4 retried outcomes',
      });
      const seen = (status: string) => spy.outcomes.filter((o) => mine(o) && o.outcome.status === status).length;
      const m = await kit.metrics.snapshot();
      const system = messagingSystemOf(bus.transport.name);
      const dest = { [ATTR_MESSAGING_SYSTEM]: system, [ATTR_MESSAGING_DESTINATION_NAME]: topic };
      const group = { ...dest, [ATTR_MESSAGING_CONSUMER_GROUP_NAME]: 'g' };

      expect(m.sum(METRIC_SENT_MESSAGES, dest)).toBe(count);
      expect(m.points(METRIC_SENT_MESSAGES, dest).filter((p) => p.attributes[ATTR_ERROR_TYPE] !== undefined)).toEqual([]);
      expect(m.count(METRIC_OPERATION_DURATION, dest)).toBe(count);
      expect(m.unit(METRIC_OPERATION_DURATION)).toBe('s');
      expect(m.sum(METRIC_CONSUMED_MESSAGES, group)).toBe(runs);
      expect(m.count(METRIC_PROCESS_DURATION, group)).toBe(runs);
      expect(m.count(METRIC_PROCESS_DURATION, { ...group, [ATTR_ERROR_TYPE]: 'Error' })).toBe(seen('retried') + seen('dead-lettered'));
      for (const status of ['acked', 'retried', 'dead-lettered', 'duplicate'] as const) {
        expect(m.sum(METRIC_OUTCOMES, { ...group, [ATTR_BUSBAR_OUTCOME]: status }), `outcomes{${status}}`).toBe(seen(status));
      }
      expect(seen('acked')).toBeGreaterThanOrEqual(4);
      expect(seen('dead-lettered')).toBeGreaterThanOrEqual(2);
      expect(m.sum(METRIC_RETRIES, group)).toBe(seen('retried'));
      expect(m.sum(METRIC_DEAD_LETTERS, { ...group, [ATTR_BUSBAR_DEAD_LETTER_REASON]: 'max-attempts' })).toBe(seen('dead-lettered'));
    }),
  );
}
