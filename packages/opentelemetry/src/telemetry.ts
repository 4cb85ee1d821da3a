/**
 * `busbarTelemetry(options)`: the interceptors to register with a bus, and `attach(bus)` for what
 * only the bus's lifecycle events and health tell (outcomes, breaker, pending publishes, backlog).
 */
import { createRequire } from 'node:module';
import type { EventBus, HandleInterceptor, PublishInterceptor } from '@busbar/core';
import { metrics, trace } from '@opentelemetry/api';
import { BusGauges } from './gauges.js';
import { handleInterceptor } from './handle.js';
import { AttributeCache, createInstruments } from './instruments.js';
import { OpenSpans } from './open-spans.js';
import type { TelemetryOptions } from './options.js';
import { publishInterceptor } from './publish.js';
import { SCHEMA_URL } from './semconv.js';
import { type Shared, SystemNames } from './shared.js';

/** The instrumentation scope name of the tracer and the meter. */
export const INSTRUMENTATION_NAME = '@busbar/opentelemetry';
/** This package's version (the instrumentation scope version). */
export const INSTRUMENTATION_VERSION: string = (createRequire(import.meta.url)('../package.json') as { version: string }).version;

/** What {@link busbarTelemetry} returns. */
export interface BusbarTelemetry {
  /** Register with the bus: `new EventBus({ transport, interceptors: telemetry.interceptors })`. */
  readonly interceptors: { readonly publish: readonly PublishInterceptor[]; readonly handle: readonly HandleInterceptor[] };
  /**
   * Listens to `bus`'s lifecycle events (delivery outcomes, breaker changes), observes its pending
   * publishes and breaker state, and polls its groups' backlog when `options.backlog` asks for it.
   * Without it the spans and the publish/process metrics still work, but a `process` span ends
   * with its handler (no `busbar.delivery.outcome`) and the outcome counters stay empty. Returns a
   * function that detaches again (idempotent); `bus.close()` needs no detach first.
   */
  attach(bus: EventBus): () => void;
}

/**
 * OpenTelemetry traces and metrics for Busbar, following the messaging semantic conventions
 * (version `SEMCONV_VERSION`, the tracer's and meter's `schemaUrl`). One instance may serve several
 * buses.
 *
 * ```ts
 * const telemetry = busbarTelemetry();
 * const bus = new EventBus({ transport, interceptors: telemetry.interceptors });
 * telemetry.attach(bus);
 * ```
 */
export function busbarTelemetry(options: TelemetryOptions = {}): BusbarTelemetry {
  const scope = { schemaUrl: SCHEMA_URL };
  const tracer =
    options.traces === false
      ? undefined
      : (options.tracerProvider ?? trace.getTracerProvider()).getTracer(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION, scope);
  const meter =
    options.metrics === false
      ? undefined
      : (options.meterProvider ?? metrics.getMeterProvider()).getMeter(INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION, scope);
  const instruments = meter === undefined ? undefined : createInstruments(meter);
  const systems = new SystemNames(options.messagingSystem);
  const outcomeTimeoutMs = options.outcomeTimeoutMs ?? 30_000;
  if (!Number.isFinite(outcomeTimeoutMs) || outcomeTimeoutMs <= 0)
    throw new RangeError(`outcomeTimeoutMs must be a positive number, got ${outcomeTimeoutMs}`);
  const consumerContext = options.consumerContext ?? 'parent';
  if (consumerContext !== 'parent' && consumerContext !== 'link')
    throw new RangeError(`consumerContext must be 'parent' or 'link', got ${String(consumerContext)}`);
  const shared: Shared = {
    tracer,
    instruments,
    attributes: new AttributeCache(),
    consumerContext,
    open: new OpenSpans(outcomeTimeoutMs),
    systemFor: (transport) => systems.of(transport),
  };
  const attached = new Set<EventBus>();
  const gauges = meter === undefined ? undefined : new BusGauges(meter, options.backlog, (bus) => systems.of(bus.transport.name));

  return {
    interceptors: Object.freeze({
      publish: Object.freeze([publishInterceptor(shared)]),
      handle: Object.freeze([handleInterceptor(shared, () => attached.size)]),
    }),
    attach(bus) {
      if (attached.has(bus)) return () => {};
      attached.add(bus);
      systems.attached(bus.transport.name);
      const system = systems.of(bus.transport.name);
      const onOutcome = (info: Parameters<typeof shared.open.settle>[0], outcome: Parameters<typeof shared.open.settle>[1]) => {
        shared.open.settle(info, outcome);
        if (instruments === undefined) return;
        const cache = shared.attributes;
        const base = cache.process(system, info.topic, info.group);
        const reason = outcome.status === 'dead-lettered' ? outcome.reason.kind : undefined;
        instruments.outcomes.add(cache.withOutcome(base, outcome.status, reason));
        if (outcome.status === 'retried') instruments.retries.add(base);
        else if (reason !== undefined) instruments.deadLetters.add(cache.withReason(base, reason));
        else if (outcome.status === 'duplicate') instruments.duplicates.add(base);
      };
      bus.on('outcome', onOutcome);
      const stopGauges = gauges?.watch(bus);
      let detached = false;
      return () => {
        if (detached) return;
        detached = true;
        bus.off('outcome', onOutcome);
        stopGauges?.();
        attached.delete(bus);
        if (attached.size === 0) shared.open.endAll();
      };
    },
  };
}
