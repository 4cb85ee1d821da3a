/**
 * The shared conformance suite on a real Kafka broker (see integration/brokers/resolve.ts for how
 * the broker is found: BUSBAR_KAFKA_BROKERS, testcontainers, or kafka.sh's local broker), followed
 * by the Kafka-specific tests — in this one file so they run after the suite, never beside it (the
 * last one kills and restarts the local broker).
 */
import { runConformance } from '@busbar/conformance';
import { afterAll, describe } from 'vitest';
import { brokerForTests, kafkaSaslForTests } from '../brokers/resolve.js';
import { firstContactTests } from './first-contact.js';
import { kafkaSpecificTests } from './kafka-specific.js';
import { createRawClient, TransportRegistry } from './kit.js';

const broker = await brokerForTests('kafka');
const brokers = broker?.url ?? '';
const sasl = await kafkaSaslForTests(broker);

afterAll(async () => {
  await broker?.stop();
});

describe.skipIf(!broker)('kafka', () => {
  const registry = new TransportRegistry(brokers);
  runConformance({
    name: 'kafka',
    createTransport: () => registry.create(),
    createRawClient: () => createRawClient(brokers),
    cleanup: (namespace) => registry.cleanup(namespace),
  });
  kafkaSpecificTests(registry, brokers, broker?.via ?? 'env');
  firstContactTests(registry, brokers, broker?.via ?? 'env', sasl);
});
