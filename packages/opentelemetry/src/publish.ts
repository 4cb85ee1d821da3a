/**
 * The publish interceptor: one `send {destination}` PRODUCER span per publish, whose context the
 * message carries (`PublishOptions.traceparent` / `tracestate` → `ce_traceparent` /
 * `ce_tracestate`), and the producer metrics.
 */
import type { PublishInterceptor } from '@busbar/core';
import { context, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { errorType } from './instruments.js';
import { ATTR_CLOUDEVENTS_EVENT_ID, ATTR_CLOUDEVENTS_EVENT_TYPE, ATTR_ERROR_TYPE, ATTR_MESSAGING_MESSAGE_ID } from './semconv.js';
import type { Shared } from './shared.js';
import { formatTraceparent, parseTraceparent } from './trace-context.js';

export function publishInterceptor(shared: Shared): PublishInterceptor {
  const { tracer, instruments, attributes } = shared;
  return (call, next) => {
    const system = shared.systemFor(undefined);
    const base = attributes.send(system, call.topic);
    const started = performance.now();
    const record =
      instruments === undefined
        ? undefined
        : (error: unknown) => {
            const attrs = error === undefined ? base : attributes.withError(base, errorType(error));
            instruments.sent.add(attrs);
            instruments.operationDuration.record((performance.now() - started) / 1000, attrs);
          };
    if (tracer === undefined) {
      if (record === undefined) return next();
      return next().then(
        (receipt) => {
          record(undefined);
          return receipt;
        },
        (error: unknown) => {
          record(error);
          throw error;
        },
      );
    }
    // A traceparent given with the publish (a foreign producer's, a relayed message's) is the parent.
    let parent = context.active();
    const given = parseTraceparent(call.options.traceparent, call.options.tracestate);
    if (given !== undefined) parent = trace.setSpanContext(parent, given);
    const span = tracer.startSpan(
      `send ${call.topic}`,
      { kind: SpanKind.PRODUCER, attributes: { ...base, [ATTR_CLOUDEVENTS_EVENT_TYPE]: call.event.type } },
      parent,
    );
    const sc = span.spanContext();
    const options = trace.isSpanContextValid(sc)
      ? { ...call.options, traceparent: formatTraceparent(sc), tracestate: sc.traceState?.serialize() || call.options.tracestate }
      : call.options;
    const active = trace.setSpan(parent, span);
    return context
      .with(active, () => next({ ...call, options }))
      .then(
        (receipt) => {
          span.setAttribute(ATTR_MESSAGING_MESSAGE_ID, receipt.id);
          span.setAttribute(ATTR_CLOUDEVENTS_EVENT_ID, receipt.id);
          span.end();
          record?.(undefined);
          return receipt;
        },
        (error: unknown) => {
          const type = errorType(error);
          span.setAttribute(ATTR_ERROR_TYPE, type);
          span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
          span.end();
          record?.(error);
          throw error;
        },
      );
  };
}
