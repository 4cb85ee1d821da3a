/**
 * `@busbar/rabbitmq`: the Busbar transport for RabbitMQ (amqplib). Topology, options and guarantees
 * are documented in the package README.
 */
export { DEFAULT_DELAY_TIERS_MS, type RabbitMqOptions, type ReconnectOptions } from './options.js';
export { BINDING_KEY, type DeclaredObjects, EXCHANGE_TYPE, type GroupNames, groupNames, tierFor } from './topology.js';
export { RabbitMqTransport } from './transport.js';
export { AMQP_CE_PREFIX, AMQP_CE_PREFIX_LEGACY, fromAmqp, toAmqp } from './wire.js';
