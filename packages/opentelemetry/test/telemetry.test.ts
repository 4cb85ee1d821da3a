/**
 * `@busbar/opentelemetry` on the memory transport, beyond the conformance cases: link mode, a
 * foreign producer's traceparent (binary and structured), a traceparent given with the publish,
 * no bus attached, traces / metrics off, the gauges, and the W3C codec.
 */

import { envelopeHeaders, type TelemetryKit, telemetryKit } from '@busbar/conformance';
import { defineEvent, EventBus, OutcomeSpy } from '@busbar/core';
import { MemoryBroker, MemoryTransport } from '@busbar/memory';
import {
  ATTR_BUSBAR_BREAKER_STATE,
  ATTR_BUSBAR_OUTCOME,
  ATTR_MESSAGING_CONSUMER_GROUP_NAME,
  ATTR_MESSAGING_SYSTEM,
  type BusbarTelemetry,
  formatTraceparent,
  METRIC_BREAKER_STATE,
  METRIC_GROUP_BACKLOG,
  METRIC_PENDING_PUBLISHES,
  METRIC_SENT_MESSAGES,
  parseTraceparent,
  SCHEMA_URL,
} from '@busbar/opentelemetry';
import { SpanKind, TraceFlags } from '@opentelemetry/api';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';

const Placed = defineEvent({ type: 'otel.placed', schema: z.object({ n: z.number() }) });
const FOREIGN_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const FOREIGN_SPAN = '00f067aa0ba902b7';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setup(options: Parameters<typeof telemetryKit>[0] = {}, attach = true) {
  const kit = telemetryKit(options);
  const broker = new MemoryBroker();
  const bus = new EventBus({ transport: new MemoryTransport({ broker }), interceptors: kit.telemetry.interceptors });
  if (attach) kit.telemetry.attach(bus);
  const spy = new OutcomeSpy(bus);
  cleanups.push(async () => {
    spy.dispose();
    await bus.close({ timeoutMs: 100 });
    await kit.shutdown();
  });
  return { kit, bus, broker, spy };
}

const consumer = (kit: TelemetryKit, n = 1) => kit.spans.waitFor((s) => s.kind === SpanKind.CONSUMER, n, 5_000, 'process spans');

describe('spans', () => {
  it("consumerContext 'link': process starts its own trace, linked to the producer", async () => {
    const { kit, bus, spy } = setup({ consumerContext: 'link' });
    await bus.subscribe(Placed, { group: 'g' }, () => {});
    const { id } = await bus.publish(Placed, { n: 1 });
    await spy.waitFor(id, { status: 'acked' });
    const [send] = await kit.spans.waitFor((s) => s.kind === SpanKind.PRODUCER, 1, 5_000, 'send');
    const [process] = await consumer(kit);
    expect(process?.parentSpanContext).toBeUndefined();
    expect(process?.spanContext().traceId).not.toBe(send?.spanContext().traceId);
    expect(process?.links.map((l) => l.context.spanId)).toEqual([send?.spanContext().spanId]);
  });

  it.each(['binary', 'structured'] as const)("a foreign producer's traceparent (%s) is the parent of process", async (mode) => {
    const { kit, bus, broker, spy } = setup();
    await bus.subscribe(Placed, { group: 'g' }, () => {});
    const id = `foreign-${mode}`;
    const traceparent = `00-${FOREIGN_TRACE}-${FOREIGN_SPAN}-01`;
    const headers = envelopeHeaders(Placed, id, { ce_traceparent: traceparent, ce_tracestate: 'vendor=x' });
    const body =
      mode === 'binary'
        ? new TextEncoder().encode('{"n":1}')
        : new TextEncoder().encode(
            JSON.stringify({
              specversion: '1.0',
              id,
              source: 'urn:foreign',
              type: Placed.type,
              datacontenttype: 'application/json',
              traceparent,
              tracestate: 'vendor=x',
              data: { n: 1 },
            }),
          );
    await broker
      .rawClient()
      .write(
        bus.topicOf(Placed),
        mode === 'binary' ? { headers, body } : { headers: { 'content-type': 'application/cloudevents+json; charset=utf-8' }, body },
      );
    await spy.waitFor(id, { status: 'acked' });
    const [process] = await consumer(kit);
    expect(process?.spanContext().traceId).toBe(FOREIGN_TRACE);
    expect(process?.parentSpanContext?.spanId).toBe(FOREIGN_SPAN);
    expect(process?.spanContext().traceState?.get('vendor')).toBe('x');
  });

  it('a traceparent given with the publish is the parent of send, and the message carries send', async () => {
    const { kit, bus, spy } = setup();
    let carried: string | undefined;
    await bus.subscribe(Placed, { group: 'g' }, (_d, ctx) => {
      carried = ctx.attributes.traceparent;
    });
    const { id } = await bus.publish(Placed, { n: 1 }, { traceparent: `00-${FOREIGN_TRACE}-${FOREIGN_SPAN}-01` });
    await spy.waitFor(id, { status: 'acked' });
    const [send] = await kit.spans.waitFor((s) => s.kind === SpanKind.PRODUCER, 1, 5_000, 'send');
    expect(send?.parentSpanContext?.spanId).toBe(FOREIGN_SPAN);
    expect(carried).toBe(`00-${FOREIGN_TRACE}-${send?.spanContext().spanId}-01`);
  });

  it('without attach, process ends with the handler (no outcome attribute)', async () => {
    const { kit, bus, spy } = setup({}, false);
    await bus.subscribe(Placed, { group: 'g' }, () => {});
    const { id } = await bus.publish(Placed, { n: 1 });
    await spy.waitFor(id, { status: 'acked' });
    const [process] = await consumer(kit);
    expect(process?.attributes[ATTR_BUSBAR_OUTCOME]).toBeUndefined();
    expect(process?.instrumentationScope.schemaUrl).toBe(SCHEMA_URL);
  });

  it('traces: false and metrics: false emit nothing, and the message still flows', async () => {
    const { kit, bus, spy } = setup({ traces: false, metrics: false });
    await bus.subscribe(Placed, { group: 'g' }, () => {});
    const { id } = await bus.publish(Placed, { n: 1 });
    await spy.waitFor(id, { status: 'acked' });
    expect(kit.spans.spans).toEqual([]);
    expect((await kit.metrics.snapshot()).points(METRIC_SENT_MESSAGES)).toEqual([]);
  });

  it('detaching ends the process spans still waiting for an outcome', async () => {
    const kit = telemetryKit();
    const bus = new EventBus({ transport: new MemoryTransport(), interceptors: kit.telemetry.interceptors });
    const detach = (kit.telemetry as BusbarTelemetry).attach(bus);
    cleanups.push(async () => {
      await bus.close({ timeoutMs: 100 });
      await kit.shutdown();
    });
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    let started!: () => void;
    const running = new Promise<void>((r) => {
      started = r;
    });
    await bus.subscribe(Placed, { group: 'g' }, async () => {
      started();
      await held;
    });
    await bus.publish(Placed, { n: 1 });
    await running;
    detach();
    const [process] = await consumer(kit);
    expect(process?.attributes[ATTR_BUSBAR_OUTCOME]).toBe('unknown');
    release();
  });
});

describe('gauges', () => {
  it('pending publishes and breaker state are observed; backlog only when asked for', async () => {
    const { kit, bus } = setup();
    const m = await kit.metrics.snapshot();
    expect(m.sum(METRIC_PENDING_PUBLISHES, { [ATTR_MESSAGING_SYSTEM]: 'busbar.memory' })).toBe(0);
    expect(m.points(METRIC_BREAKER_STATE).map((p) => p.value)).toEqual([0]);
    expect(m.points(METRIC_GROUP_BACKLOG)).toEqual([]);
    expect(bus.health().breaker).toBe('closed');
    expect(ATTR_BUSBAR_BREAKER_STATE).toBe('busbar.breaker.state');
  });

  it("backlog: each group's waiting messages, polled at the interval", async () => {
    const { kit, bus } = setup({ backlog: { events: [Placed], intervalMs: 20 } });
    const sub = await bus.subscribe(Placed, { group: 'slow' }, () => {});
    await sub.close();
    await Promise.all([1, 2, 3].map((n) => bus.publish(Placed, { n })));
    expect((await bus.describeGroups(Placed)).find((g) => g.group === 'slow')?.backlog).toBe(3);
    // No event says a poll answered: read until the gauge shows the broker's answer (bounded).
    await vi.waitFor(
      async () => {
        const m = await kit.metrics.snapshot();
        expect(m.sum(METRIC_GROUP_BACKLOG, { [ATTR_MESSAGING_CONSUMER_GROUP_NAME]: 'slow' })).toBe(3);
      },
      { timeout: 5_000, interval: 20 },
    );
  });
});

describe('W3C trace context', () => {
  it('parses a valid traceparent and formats it back', () => {
    const sc = parseTraceparent(`00-${FOREIGN_TRACE}-${FOREIGN_SPAN}-01`, 'a=1,b=2');
    expect(sc).toMatchObject({ traceId: FOREIGN_TRACE, spanId: FOREIGN_SPAN, traceFlags: TraceFlags.SAMPLED, isRemote: true });
    expect(sc?.traceState?.serialize()).toBe('a=1,b=2');
    expect(sc && formatTraceparent(sc)).toBe(`00-${FOREIGN_TRACE}-${FOREIGN_SPAN}-01`);
  });

  it.each([
    ['absent', undefined],
    ['garbage', 'hello'],
    ['version ff', `ff-${FOREIGN_TRACE}-${FOREIGN_SPAN}-01`],
    ['zero trace id', `00-${'0'.repeat(32)}-${FOREIGN_SPAN}-01`],
    ['zero span id', `00-${FOREIGN_TRACE}-${'0'.repeat(16)}-01`],
    ['extra field on version 00', `00-${FOREIGN_TRACE}-${FOREIGN_SPAN}-01-extra`],
    ['upper case', `00-${FOREIGN_TRACE.toUpperCase()}-${FOREIGN_SPAN}-01`],
  ])('rejects %s', (_label, value) => {
    expect(parseTraceparent(value, undefined)).toBeUndefined();
  });
});
