/** Options of {@link busbarTelemetry}. Every field documents its default. */
import type { EventDefinition } from '@busbar/core';
import type { MeterProvider, TracerProvider } from '@opentelemetry/api';

/** Backlog polling (see {@link TelemetryOptions.backlog}). */
export interface BacklogOptions {
  /** The events whose groups are described (`bus.describeGroups(event)`), one destination each. */
  readonly events: readonly EventDefinition[];
  /** How often the groups are described, ms. @defaultValue 15000 */
  readonly intervalMs?: number;
}

/** Options of {@link busbarTelemetry}. */
export interface TelemetryOptions {
  /** Where spans go. @defaultValue the global tracer provider (`trace.getTracerProvider()`) */
  readonly tracerProvider?: TracerProvider;
  /** Where metrics go. @defaultValue the global meter provider (`metrics.getMeterProvider()`) */
  readonly meterProvider?: MeterProvider;
  /** Emit spans. @defaultValue true */
  readonly traces?: boolean;
  /** Emit metrics. @defaultValue true */
  readonly metrics?: boolean;
  /**
   * How a `process` span relates to the producer's context carried in the message
   * (`ce_traceparent` / `ce_tracestate`): `'parent'` makes it a child (one trace from publish to
   * every consumer), `'link'` starts it in the consumer's current context (a new trace when there
   * is none) with a link to the producer's. @defaultValue 'parent'
   */
  readonly consumerContext?: 'parent' | 'link';
  /**
   * `messaging.system` of the spans and metrics. @defaultValue from the transport's name:
   * `rabbitmq`, `kafka`, `redis.streams` (Redis Streams), `busbar.memory` (memory), else the name
   */
  readonly messagingSystem?: string;
  /**
   * Poll `bus.describeGroups(event)` for these events and report each group's backlog, in-flight,
   * retrying and dead-letter counts as gauges (where the transport can tell). @defaultValue none:
   * nothing is polled
   */
  readonly backlog?: BacklogOptions;
  /**
   * How long a `process` span waits for its delivery's `outcome` event after the handler returned
   * before it ends without one (outcome `unknown`), ms. @defaultValue 30000
   */
  readonly outcomeTimeoutMs?: number;
}
