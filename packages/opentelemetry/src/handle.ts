/**
 * The handle interceptor: one `process {destination}` CONSUMER span per handler run — a child of
 * the producer's context the message carries (or linked to it, `consumerContext: 'link'`), active
 * while the handler runs so the handler's own spans are its children — and the consumer metrics.
 * Without a producer context (or with `'link'`) the span starts a new trace.
 * The span ends with the delivery's outcome (see open-spans.ts).
 */
import type { HandleInterceptor } from '@busbar/core';
import { type Attributes, context, type Link, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { errorType } from './instruments.js';
import { deliveryKey } from './open-spans.js';
import {
  ATTR_BUSBAR_ATTEMPT,
  ATTR_CLOUDEVENTS_EVENT_ID,
  ATTR_CLOUDEVENTS_EVENT_TYPE,
  ATTR_ERROR_TYPE,
  ATTR_MESSAGING_DESTINATION_PARTITION_ID,
  ATTR_MESSAGING_KAFKA_OFFSET,
  ATTR_MESSAGING_MESSAGE_ID,
} from './semconv.js';
import type { Shared } from './shared.js';
import { parseTraceparent } from './trace-context.js';

/** Kafka's position is `<topic>/<partition>/<offset>`. */
const KAFKA_POSITION = /\/(\d+)\/(\d+)$/;

export function handleInterceptor(shared: Shared, attachedBuses: () => number): HandleInterceptor {
  const { tracer, instruments, attributes, open } = shared;
  return (call, next) => {
    const system = shared.systemFor(call.transport);
    const base = attributes.process(system, call.topic, call.group);
    const started = performance.now();
    let record: ((error: unknown) => void) | undefined;
    if (instruments !== undefined) {
      instruments.consumed.add(base);
      instruments.inFlight.add(base);
      record = (error) => {
        instruments.inFlight.add(base, -1);
        const attrs = error === undefined ? base : attributes.withError(base, errorType(error));
        instruments.processDuration.record((performance.now() - started) / 1000, attrs);
      };
    }
    if (tracer === undefined) {
      if (record === undefined) return next();
      const done = record;
      return next().then(
        () => done(undefined),
        (error: unknown) => {
          done(error);
          throw error;
        },
      );
    }
    const ce = call.attributes;
    const producer = parseTraceparent(ce.traceparent, ce.tracestate);
    // Never the ambient context of the delivery: that is whatever async context the broker client
    // (or, on memory, the publisher) happened to run in — not this message's.
    let parent = ROOT_CONTEXT;
    let links: Link[] | undefined;
    if (producer !== undefined) {
      if (shared.consumerContext === 'parent') parent = trace.setSpanContext(parent, producer);
      else links = [{ context: producer }];
    }
    const spanAttributes: Attributes = {
      ...base,
      [ATTR_MESSAGING_MESSAGE_ID]: call.id,
      [ATTR_CLOUDEVENTS_EVENT_ID]: call.id,
      [ATTR_CLOUDEVENTS_EVENT_TYPE]: ce.type,
      [ATTR_BUSBAR_ATTEMPT]: call.attempt,
    };
    if (system === 'kafka') {
      const m = KAFKA_POSITION.exec(call.position);
      if (m !== null) {
        spanAttributes[ATTR_MESSAGING_DESTINATION_PARTITION_ID] = m[1];
        spanAttributes[ATTR_MESSAGING_KAFKA_OFFSET] = Number(m[2]);
      }
    }
    const span = tracer.startSpan(`process ${call.topic}`, { kind: SpanKind.CONSUMER, attributes: spanAttributes, links }, parent);
    // Without a bus attached nobody reports the outcome: the span ends with the handler.
    const key = attachedBuses() > 0 ? deliveryKey(call.topic, call.group, call.id, call.attempt) : undefined;
    if (key !== undefined) open.open(key, span);
    return context.with(trace.setSpan(parent, span), next).then(
      () => {
        record?.(undefined);
        if (key === undefined) span.end();
        else open.handled(key, span);
      },
      (error: unknown) => {
        record?.(error);
        span.setAttribute(ATTR_ERROR_TYPE, errorType(error));
        if (error instanceof Error) span.recordException(error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
        if (key === undefined) span.end();
        else open.handled(key, span);
        throw error;
      },
    );
  };
}
