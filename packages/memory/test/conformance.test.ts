/**
 * Runs the shared conformance suite on the in-memory transport. All buses of a case share one
 * `MemoryBroker` (several "processes" on one broker); the raw client writes and observes below
 * the bus on that broker.
 */

import { runConformance } from '@busbar/conformance';
import { MemoryBroker, MemoryTransport } from '@busbar/memory';

const broker = new MemoryBroker();

runConformance({
  name: 'memory',
  createTransport: () => new MemoryTransport({ broker }),
  createRawClient: async () => broker.rawClient(),
  cleanup: async (namespace) => {
    broker.deleteTopics(`${namespace}.`);
  },
  deliveryTimeoutMs: 10_000,
});
