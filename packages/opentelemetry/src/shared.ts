/** What the interceptors and the bus listeners of one {@link busbarTelemetry} share. */
import type { Tracer } from '@opentelemetry/api';
import type { AttributeCache, Instruments } from './instruments.js';
import type { OpenSpans } from './open-spans.js';
import { messagingSystemOf } from './semconv.js';

export interface Shared {
  /** `undefined` with `traces: false`. */
  readonly tracer: Tracer | undefined;
  /** `undefined` with `metrics: false`. */
  readonly instruments: Instruments | undefined;
  readonly attributes: AttributeCache;
  readonly consumerContext: 'parent' | 'link';
  /** `process` spans waiting for their delivery's outcome. */
  readonly open: OpenSpans;
  /** `messaging.system` for a call on `transport` (`undefined`: a publish call, which does not name it). */
  systemFor(transport: string | undefined): string;
}

/**
 * `messaging.system` resolution: the option, else the call's transport, else the transport of the
 * first bus attached (a publish call does not name its transport), else `busbar`.
 */
export class SystemNames {
  #attached: string | undefined;
  constructor(private readonly fixed: string | undefined) {}

  attached(transportName: string): void {
    this.#attached ??= messagingSystemOf(transportName);
  }

  of(transport: string | undefined): string {
    if (this.fixed !== undefined) return this.fixed;
    if (transport !== undefined) return messagingSystemOf(transport);
    return this.#attached ?? 'busbar';
  }
}
