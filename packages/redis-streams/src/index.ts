/**
 * `@busbar/redis-streams`: the Busbar transport on Redis Streams and the Redis idempotency store.
 */
export { BODY_FIELD, decodeFields, encodeFields, HEADERS_FIELD } from './codec.js';
export { RedisIdempotencyStore, type RedisIdempotencyStoreOptions } from './idempotency.js';
export { type GroupKeys, groupKeys, streamKey } from './keys.js';
export type { HealthCheckOptions, ReconnectOptions, RedisStreamsOptions, RetentionPolicy } from './options.js';
export { REDIS_STREAMS_CAPABILITIES, RedisStreamsTransport } from './transport.js';
