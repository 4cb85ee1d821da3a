/**
 * The shared conformance suite on the memory transport in each broker profile (`like`): a profile
 * must hold every case the broker's own transport holds, with that broker's declared limits
 * (RabbitMQ: no `startFrom: 'earliest'`, no ordering by key, tiered delays; Redis Streams: no
 * ordering by key, lease extension; Kafka: its name rules and message size).
 */

import { runConformance } from '@busbar/conformance';
import { MemoryBroker, type MemoryProfileName, MemoryTransport } from '@busbar/memory';

for (const like of ['rabbitmq', 'redis-streams', 'kafka'] as const satisfies readonly MemoryProfileName[]) {
  const broker = new MemoryBroker();
  runConformance({
    name: `memory like ${like}`,
    createTransport: () => new MemoryTransport({ broker, like }),
    createRawClient: async () => broker.rawClient(),
    cleanup: async (namespace) => {
      broker.deleteTopics(`${namespace}.`);
    },
    deliveryTimeoutMs: 10_000,
  });
}
