/**
 * The lifecycle events of a bus (`bus.on(name, listener)`) and what they carry: the seams for
 * metrics and tracing.
 */
import type { DeadLetterReason } from './envelope.js';
import type { BusError } from './errors.js';
import type { BreakerState } from './resilience.js';
import type { ConnectionState } from './spi.js';

/** Outcome of one delivery, a discriminated union on `status`. */
export type DeliveryOutcome =
  | { readonly status: 'acked'; readonly durationMs: number }
  | { readonly status: 'duplicate' }
  | { readonly status: 'retried'; readonly delayMs: number; readonly error: string }
  | { readonly status: 'dead-lettered'; readonly reason: DeadLetterReason }
  | { readonly status: 'released' }
  | { readonly status: 'settle-failed'; readonly error: string };

/** Common fields of lifecycle events about a delivery. */
export interface DeliveryInfo {
  readonly id: string;
  readonly type: string;
  readonly topic: string;
  readonly group: string;
  readonly attempt: number;
  readonly idempotencyKey: string | undefined;
}

/** Lifecycle events (`bus.on(name, listener)`): seams for metrics and tracing. */
export interface BusEvents {
  /** A publish was confirmed durable by the transport. */
  published: [info: { id: string; type: string; topic: string }];
  /** A delivery reached the bus (before decoding). */
  delivered: [info: DeliveryInfo];
  /** A delivery was settled; `outcome.status` says how. */
  outcome: [info: DeliveryInfo, outcome: DeliveryOutcome];
  /**
   * Transport connection state changed; `detail` / `cause`: the last error (credential-free) while
   * not connected — the final one in `'failed'`.
   */
  connection: [state: ConnectionState, detail: string | undefined, cause: BusError | undefined];
  /** Circuit breaker state changed. */
  breaker: [state: BreakerState];
}
