/**
 * `@busbar/conformance`: the one suite every Busbar transport runs. Call {@link runConformance}
 * from a vitest test file with a {@link ConformanceTarget}; it registers every case under
 * `conformance[<name>]`. Nothing is skipped: where a transport declares it lacks a capability, the
 * case proves the declared limit instead (e.g. `CapabilityError` at subscribe).
 */
import { describe } from 'vitest';
import { basicCases } from './cases/basic.js';
import { failureCases } from './cases/failures.js';
import { groupCases } from './cases/groups.js';
import { lifecycleCases } from './cases/lifecycle.js';
import { structuredCases } from './cases/structured.js';
import { telemetryCases } from './cases/telemetry.js';
import { createSuite } from './helpers.js';
import type { ConformanceTarget } from './target.js';

export { Order, Rich, topicEvent, UserV1, UserV2 } from './events.js';
export { CaseContext, Collector, Counter, deferred, envelopeHeaders, FAST_BACKOFF, pool, within } from './helpers.js';
export type { ConformanceTarget, RawBrokerClient, RawProbe } from './target.js';
export {
  ensureContextManager,
  MetricsProbe,
  MetricsSnapshot,
  SpanRecorder,
  type TelemetryKit,
  telemetryKit,
} from './telemetry-kit.js';

/**
 * Registers the conformance cases for `target` (vitest `describe`/`it`). Each case runs in its
 * own run-unique namespace and calls `target.cleanup(namespace)` afterwards.
 */
export function runConformance(target: ConformanceTarget): void {
  describe(`conformance[${target.name}]`, () => {
    const suite = createSuite(target);
    describe('pub/sub', () => basicCases(suite));
    describe('consumer groups', () => groupCases(suite));
    describe('retries, dead letters and idempotency', () => failureCases(suite));
    describe('lifecycle and validation', () => lifecycleCases(suite));
    describe('CloudEvents structured mode', () => structuredCases(suite));
    describe('OpenTelemetry traces and metrics', () => telemetryCases(suite));
  });
}
