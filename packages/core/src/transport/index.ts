/**
 * `@busbar/core/transport`: the door for transport authors (see `docs/transport-guide.md`).
 *
 * - The Transport SPI ({@link Transport}, {@link Delivery} …): the contract a broker implements.
 *   Core owns the life of a delivery — attempts, the complete headers of every copy, settle-once,
 *   causal order — and a transport only moves bytes.
 * - The wire format's header names ({@link HeaderNames}) and constants.
 * - The errors a transport throws, and `describeError` for credential-free details.
 * - Helpers every transport needs: {@link backoffDelay} for reconnects, {@link checkBrokerName}
 *   for derived broker object names.
 * - The one sanctioned path for already-encoded messages: {@link encode} now, {@link publishEncoded}
 *   later (an outbox; the bench measures encoding alone).
 * - Core internals for tooling (a transport needs none of them): `PublishBatcher`, `replayHeaders`.
 * - The kit: {@link SlotGate} (in-flight and per-key slots), {@link TickCoalescer} (one broker
 *   command per event-loop turn), {@link ConnectionStateCell} (state, events and health).
 *
 * Applications import `@busbar/core`; nothing here is needed to publish or subscribe.
 */

export { replayHeaders } from '../delivery/copy-headers.js';
export {
  AuthenticationError,
  BrokerUnavailableError,
  BusClosedError,
  BusError,
  type BusErrorCode,
  type BusErrorOptions,
  CapabilityError,
  ConfigError,
  describeError,
  isBusError,
  PublishRejectedError,
  TimeoutError,
  TopologyError,
} from '../errors.js';
export {
  DEAD_LETTER_HEADERS,
  type HeaderKey,
  HeaderNames,
  JSON_CONTENT_TYPE,
  RESERVED_HEADER_PREFIX,
  SPEC_VERSION,
} from '../headers.js';
export { type Logger, redact, redactingLogger, silentLogger } from '../logger.js';
export { checkBrokerName } from '../naming.js';
export { type BatcherOptions, type BatchingOptions, PublishBatcher } from '../publish/batcher.js';
export {
  encode,
  type PublishEncodedOptions,
  type PublishReceipt,
  publishEncoded,
} from '../publish/publisher.js';
export { type BackoffOptions, backoffDelay, type Clock, type RandomSource, systemClock } from '../resilience.js';
export type * from '../spi.js';
export { ConnectionStateCell, type ConnectionStateCellOptions } from './connection-state.js';
export { SlotGate, type SlotWaiter } from './slot-gate.js';
export { TickCoalescer, type TickCoalescerOptions, type TickSchedule } from './tick-coalescer.js';
