/**
 * Busbar with OpenTelemetry, runnable: `pnpm --filter @busbar/example-otel start` (after
 * `pnpm build`), then `curl http://127.0.0.1:9464/metrics`. It publishes an order every second;
 * one in five fails its first attempt (a retry), one in ten is dead-lettered, so every counter moves.
 *
 * - Metrics: the OpenTelemetry SDK's `MeterProvider` with the Prometheus exporter as its reader,
 *   served by our own HTTP server (`PORT`, default 9464; 0 picks a free port).
 * - Traces: a `TracerProvider` whose spans go to the exporter you pass (the console with
 *   `OTEL_EXAMPLE_CONSOLE_SPANS=1`); put your OTLP exporter there.
 * - The transport comes from the environment (`BUSBAR_TRANSPORT`, memory by default; install the
 *   transport package you select).
 */
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { defineEvent, EventBus, NonRetryableError, transportFromEnv } from '@busbar/core';
import { busbarTelemetry } from '@busbar/opentelemetry';
import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { ConsoleSpanExporter, SimpleSpanProcessor, type SpanExporter, type SpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { z } from 'zod';

/** The example's event. */
export const OrderPlaced = defineEvent({ type: 'example.order-placed', schema: z.object({ n: z.number().int() }) });

/** Options of {@link startExample}. */
export interface ExampleOptions {
  /** Port of the `/metrics` endpoint (0: a free one). @defaultValue 9464 */
  readonly port?: number;
  /** Where spans go. @defaultValue none (spans are made, sampled and dropped) */
  readonly spanExporter?: SpanExporter;
}

/** A running example. */
export interface RunningExample {
  /** `http://127.0.0.1:<port>/metrics`. */
  readonly url: string;
  readonly bus: EventBus;
  /** Stops the server, the bus and the providers. */
  close(): Promise<void>;
}

/** Starts the bus, its telemetry and the `/metrics` endpoint. */
export async function startExample(options: ExampleOptions = {}): Promise<RunningExample> {
  // The context manager carries the active span into handlers (a span opened there is a child of
  // the message's `process` span).
  const manager = new AsyncLocalStorageContextManager().enable();
  if (!context.setGlobalContextManager(manager)) manager.disable(); // one is registered already
  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const meterProvider = new MeterProvider({ readers: [prometheus] });
  const spanProcessors: SpanProcessor[] = options.spanExporter ? [new SimpleSpanProcessor({ exporter: options.spanExporter })] : [];
  const tracerProvider = new TracerProvider({ spanProcessors });
  const telemetry = busbarTelemetry({ tracerProvider, meterProvider, backlog: { events: [OrderPlaced], intervalMs: 5_000 } });

  const bus = new EventBus({
    transport: await transportFromEnv(),
    interceptors: telemetry.interceptors,
    retry: { maxAttempts: 3, backoff: { initialMs: 50, maxMs: 200 } },
  });
  telemetry.attach(bus);
  await bus.subscribe(OrderPlaced, { group: 'billing' }, ({ n }, ctx) => {
    if (n % 10 === 0) throw new NonRetryableError(`order ${n} cannot be billed`);
    if (n % 5 === 0 && ctx.attempt === 1) throw new Error(`order ${n}: payment service busy`);
  });

  const server = createServer((request, response) => {
    if (request.url?.startsWith('/metrics')) prometheus.getMetricsRequestHandler(request, response);
    else response.writeHead(404).end();
  });
  server.listen(options.port ?? 9464, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/metrics`,
    bus,
    close: async () => {
      server.close();
      await bus.close();
      await Promise.allSettled([meterProvider.shutdown(), tracerProvider.shutdown()]);
    },
  };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const example = await startExample({
    port: Number(process.env.PORT ?? 9464),
    ...(process.env.OTEL_EXAMPLE_CONSOLE_SPANS === '1' ? { spanExporter: new ConsoleSpanExporter() } : {}),
  });
  console.log(`metrics on ${example.url} — Ctrl-C stops`);
  let n = 0;
  const timer = setInterval(() => {
    example.bus.publish(OrderPlaced, { n: ++n }).catch((error: unknown) => console.error('publish failed:', error));
  }, 1_000);
  process.once('SIGINT', () => {
    clearInterval(timer);
    void example.close();
  });
}
