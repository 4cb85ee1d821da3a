/**
 * `@busbar/redis-streams`: the Busbar transport on Redis Streams and the Redis idempotency store.
 */

export { RedisIdempotencyStore, type RedisIdempotencyStoreOptions } from './idempotency.js';
export type { HealthCheckOptions, ReconnectOptions, RedisStreamsOptions, RetentionPolicy } from './options.js';
export { type GroupKeys, groupKeys, streamKey } from './topology.js';
export { REDIS_STREAMS_CAPABILITIES, RedisStreamsTransport } from './transport.js';
export { BODY_FIELD, decodeFields, encodeFields, HEADERS_FIELD } from './wire.js';
