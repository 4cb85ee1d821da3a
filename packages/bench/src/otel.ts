/**
 * The `busbar-otel` subject's instrumentation: `@busbar/opentelemetry` on the OpenTelemetry SDK as
 * production runs it — a `BatchSpanProcessor`, an `AsyncLocalStorage` context manager, a
 * `MeterProvider` with a reader — minus the network: the span exporter drops every batch, the
 * reader is never collected (instruments still aggregate every recording). What it measures is the
 * cost per message of tracing and metrics inside the process.
 */
import { busbarTelemetry } from '@busbar/opentelemetry';
import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { BatchSpanProcessor, type ReadableSpan, type SpanExporter, TracerProvider } from '@opentelemetry/sdk-trace';
import type { Instrumentation } from './busbar.js';

/** Drops every span (success, at once). */
class DroppingExporter implements SpanExporter {
  export(_spans: ReadableSpan[], done: (result: { code: 0 }) => void): void {
    done({ code: 0 });
  }
  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

/** A reader nobody collects. */
class IdleReader extends MetricReader {
  protected override onForceFlush(): Promise<void> {
    return Promise.resolve();
  }
  protected override onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

let registered = false;

/** A fresh SDK + `busbarTelemetry` for one subject (the context manager is registered once). */
export function otelInstrumentation(): Instrumentation {
  if (!registered) {
    registered = context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  }
  const tracerProvider = new TracerProvider({ spanProcessors: [new BatchSpanProcessor({ exporter: new DroppingExporter() })] });
  const meterProvider = new MeterProvider({ readers: [new IdleReader()] });
  return busbarTelemetry({ tracerProvider, meterProvider });
}
