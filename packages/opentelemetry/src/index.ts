/**
 * `@busbar/opentelemetry`: OpenTelemetry traces and metrics for a Busbar `EventBus`, following the
 * messaging semantic conventions. Depends on `@opentelemetry/api` only (a peer dependency): bring
 * your own SDK, exporters and context manager.
 */
export type { BacklogOptions, TelemetryOptions } from './options.js';
export * from './semconv.js';
export { type BusbarTelemetry, busbarTelemetry, INSTRUMENTATION_NAME, INSTRUMENTATION_VERSION } from './telemetry.js';
export { formatTraceparent, parseTraceparent } from './trace-context.js';
