/**
 * `@busbar/kafka`: the Busbar transport for Apache Kafka, built on kafkajs or, with
 * `client: 'platformatic'`, on `@platformatic/kafka` (both behind the transport's own client seam).
 * See the README for topics, retries, ordering and guarantees.
 */
export { defaultNaming, type KafkaNaming, type KafkaTransportOptions } from './options.js';
export { KafkaTransport } from './transport.js';
export { RETRY_AT_HEADER } from './wire.js';
