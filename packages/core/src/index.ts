/**
 * `@busbar/core`: the application API — typed events, the `EventBus`, its options, lifecycle
 * events and dead letters, the errors it throws, idempotency stores, the resilience patterns
 * (timeouts, retries with backoff + jitter, circuit breaker) and test helpers.
 *
 * Transport authors import `@busbar/core/transport` (the SPI and the kit); the names still
 * re-exported from `./deprecated.js` move there.
 */

export { type BusHealth, type BusListener, EventBus } from './bus.js';
export type { BusEvents, DeliveryInfo, DeliveryOutcome } from './bus-events.js';
export type { DeadLetterQueue, DeadLetterView, ReplayOptions } from './dead-letters.js';
export type { Handler, HandlerContext } from './delivery/context.js';
export type { Subscription } from './delivery/subscription.js';
export * from './env.js';
export * from './envelope.js';
export * from './errors.js';
export * from './event.js';
export * from './from-env.js';
export {
  type HeaderKey,
  HeaderNames,
  Headers,
  JSON_CONTENT_TYPE,
  RESERVED_HEADER_PREFIX,
  SPEC_VERSION,
  STRUCTURED_CONTENT_TYPE,
} from './headers.js';
export * from './idempotency.js';
export type { HandleCall, HandleInterceptor, Interceptors, PublishCall, PublishInterceptor } from './interceptors.js';
export * from './logger.js';
export { topicName, validateGroup, validateNamespace } from './naming.js';
export type { BusOptions, IdempotencyOptions, PublishOptions, RetryPolicy, SubscribeOptions } from './options.js';
export type { BatchingOptions } from './publish/batcher.js';
export type { PublishReceipt } from './publish/publisher.js';
export { DEFAULT_READY_TIMEOUT_MS, type ReadyOptions } from './readiness.js';
export * from './resilience.js';
export type {
  ConnectionState,
  GroupDescription,
  Transport,
  TransportCapabilities,
  TransportEvent,
  TransportHealth,
  WireMessage,
} from './spi.js';
export * from './testing.js';
