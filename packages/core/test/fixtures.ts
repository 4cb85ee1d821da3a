/** Shared pieces of the core unit tests' hand-written transports. */
import type { Transport, TransportCapabilities } from '../src/index.js';

/** Capabilities of a minimal in-process test transport (nothing optional supported). */
export const basicCapabilities: TransportCapabilities = {
  durability: 'memory',
  orderedByKey: false,
  newGroupFromEarliest: false,
  balancedAssignment: false,
  leaseExtension: false,
  maxRetryDelayMs: 1000,
  maxNameLength: 255,
  namePattern: /^[\w.-]+$/,
};

/** A transport that is connected at once and accepts every publish (nothing is delivered). */
export function connectedTransport(): Transport {
  return {
    name: 'connected',
    endpoint: 'connected',
    capabilities: basicCapabilities,
    async connect() {},
    async publish(batch) {
      return batch.map(() => ({ ok: true as const }));
    },
    async subscribe() {
      return { stop: async () => {}, close: async () => {} };
    },
    async processDeadLetters() {
      return [];
    },
    health: () => ({ state: 'connected', since: 0 }),
    async close() {},
  };
}
