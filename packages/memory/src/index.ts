/**
 * `@busbar/memory`: an in-memory Busbar transport with the observable semantics of the broker
 * transports (durable groups, competing members, per-group retries and dead letters, per-key
 * ordering), deterministic for unit tests (`idle()`, `ManualClock`).
 */
export {
  type IdleOptions,
  MemoryBroker,
  type MemoryBrokerOptions,
  type MemoryMember,
  type MemoryProbe,
  type MemoryRawClient,
  type MemoryRetention,
  type RawMessage,
} from './broker.js';
export { ManualClock } from './clock.js';
export { MEMORY_PROFILES, type MemoryProfile, type MemoryProfileName, RABBITMQ_DELAY_TIERS_MS } from './profiles.js';
export { MemoryTransport, type MemoryTransportOptions, memoryTransport } from './transport.js';
