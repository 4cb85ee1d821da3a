/**
 * `@busbar/core`: typed events, the `EventBus`, the Transport SPI every broker implements, and the
 * resilience patterns (timeouts, retries with backoff + jitter, circuit breaker, fan-out) the bus is
 * built on.
 */
export * from './batcher.js';
export * from './bus.js';
export * from './env.js';
export * from './envelope.js';
export * from './errors.js';
export * from './event.js';
export * from './from-env.js';
export * from './headers.js';
export * from './idempotency.js';
export * from './logger.js';
export * from './naming.js';
export * from './resilience.js';
export type * from './spi.js';
export * from './testing.js';
