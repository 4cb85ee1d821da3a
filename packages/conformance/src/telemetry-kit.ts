/**
 * The OpenTelemetry SDK pieces the trace and metrics cases use, in memory: a span processor that
 * records ended spans and lets a case await them, a metric reader a case collects on demand, and
 * `@busbar/opentelemetry` wired to both. The providers are the kit's own (nothing global), except
 * the context manager: `AsyncLocalStorage`, registered once per process if none is.
 */
import { type BusbarTelemetry, busbarTelemetry, type TelemetryOptions } from '@busbar/opentelemetry';
import { type Attributes, context, type Tracer } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  type DataPoint,
  type DataPointType,
  type Histogram,
  MeterProvider,
  MetricReader,
  type ResourceMetrics,
} from '@opentelemetry/sdk-metrics';
import { type ReadableSpan, type SpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { deferred, within } from './helpers.js';

let contextManager: AsyncLocalStorageContextManager | undefined;

/** Registers an `AsyncLocalStorage` context manager globally unless one already is. */
export function ensureContextManager(): void {
  if (contextManager !== undefined) return;
  const manager = new AsyncLocalStorageContextManager().enable();
  if (context.setGlobalContextManager(manager)) contextManager = manager;
  else manager.disable();
}

/** Records ended spans; a case awaits the ones it expects. */
export class SpanRecorder implements SpanProcessor {
  readonly spans: ReadableSpan[] = [];
  readonly #waiters = new Set<() => void>();

  onStart(): void {}

  onEnd(span: ReadableSpan): void {
    this.spans.push(span);
    for (const w of this.#waiters) w();
  }

  forceFlush(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }

  /** Resolves with the ended spans `match` accepts once there are `count` of them. */
  async waitFor(match: (s: ReadableSpan) => boolean, count: number, ms: number, label: string): Promise<ReadableSpan[]> {
    const found = () => this.spans.filter(match);
    if (found().length >= count) return found();
    const d = deferred();
    const check = () => {
      if (found().length >= count) d.resolve();
    };
    this.#waiters.add(check);
    try {
      await within(d.promise, ms, `${label} (${found().length} of ${count} spans ended)`);
    } finally {
      this.#waiters.delete(check);
    }
    return found();
  }
}

/** A metric reader collected on demand (cumulative). */
export class MetricsProbe extends MetricReader {
  protected override onForceFlush(): Promise<void> {
    return Promise.resolve();
  }

  protected override onShutdown(): Promise<void> {
    return Promise.resolve();
  }

  /** Collects now. */
  async snapshot(): Promise<MetricsSnapshot> {
    const { resourceMetrics, errors } = await this.collect();
    if (errors.length > 0) throw new AggregateError(errors, 'metric collection failed');
    return new MetricsSnapshot(resourceMetrics);
  }
}

/** One collection, with lookups by instrument name and attributes. */
export class MetricsSnapshot {
  constructor(readonly resourceMetrics: ResourceMetrics) {}

  /** The data points of instrument `name` whose attributes include every entry of `where`. */
  points(name: string, where: Attributes = {}): DataPoint<unknown>[] {
    const out: DataPoint<unknown>[] = [];
    for (const scope of this.resourceMetrics.scopeMetrics) {
      for (const metric of scope.metrics) {
        if (metric.descriptor.name !== name) continue;
        for (const p of metric.dataPoints as DataPoint<unknown>[]) {
          if (Object.entries(where).every(([k, v]) => p.attributes[k] === v)) out.push(p);
        }
      }
    }
    return out;
  }

  /** Sum of a counter's (or gauge's) values over the matching points. */
  sum(name: string, where: Attributes = {}): number {
    return this.points(name, where).reduce((n, p) => n + (typeof p.value === 'number' ? p.value : 0), 0);
  }

  /** Number of recordings of a histogram over the matching points. */
  count(name: string, where: Attributes = {}): number {
    return this.points(name, where).reduce((n, p) => n + (p.value as Histogram).count, 0);
  }

  /** The instrument's unit (`undefined` when it reported nothing). */
  unit(name: string): string | undefined {
    for (const scope of this.resourceMetrics.scopeMetrics) {
      for (const metric of scope.metrics) {
        if (metric.descriptor.name === name) return metric.descriptor.unit;
      }
    }
    return undefined;
  }

  /** The data point type of the instrument (`undefined` when it reported nothing). */
  type(name: string): DataPointType | undefined {
    for (const scope of this.resourceMetrics.scopeMetrics) {
      for (const metric of scope.metrics) {
        if (metric.descriptor.name === name) return metric.dataPointType;
      }
    }
    return undefined;
  }
}

/** An in-memory SDK with `@busbar/opentelemetry` wired to it. */
export interface TelemetryKit {
  readonly spans: SpanRecorder;
  readonly metrics: MetricsProbe;
  readonly tracerProvider: TracerProvider;
  readonly meterProvider: MeterProvider;
  readonly telemetry: BusbarTelemetry;
  /** A tracer for the case's own spans (a "request" around a publish, a span inside a handler). */
  readonly tracer: Tracer;
  shutdown(): Promise<void>;
}

/** Creates a {@link TelemetryKit} (registering the context manager if needed). */
export function telemetryKit(options: Omit<TelemetryOptions, 'tracerProvider' | 'meterProvider'> = {}): TelemetryKit {
  ensureContextManager();
  const spans = new SpanRecorder();
  const metrics = new MetricsProbe();
  const tracerProvider = new TracerProvider({ spanProcessors: [spans] });
  const meterProvider = new MeterProvider({ readers: [metrics] });
  const telemetry = busbarTelemetry({ ...options, tracerProvider, meterProvider });
  return {
    spans,
    metrics,
    tracerProvider,
    meterProvider,
    telemetry,
    tracer: tracerProvider.getTracer('conformance'),
    shutdown: async () => {
      await Promise.allSettled([tracerProvider.shutdown(), meterProvider.shutdown()]);
    },
  };
}
