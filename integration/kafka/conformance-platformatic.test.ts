/**
 * The shared conformance suite and the Kafka-specific tests on a real Kafka broker, with the
 * transport on the `@platformatic/kafka` client (`client: 'platformatic'`). Same shape as
 * conformance.test.ts; the raw client below the bus stays kafkajs (an independent producer and
 * observer). The broker kill test runs only where this file started the broker itself
 * (BUSBAR_KAFKA_KILL_TEST=1 with kafka.sh's local broker), so it never kills a broker shared
 * with another run.
 */
import { runConformance } from '@busbar/conformance';
import { afterAll, describe } from 'vitest';
import { brokerForTests } from '../brokers/resolve.js';
import { kafkaSpecificTests } from './kafka-specific.js';
import { cleanupNamespace, createRawClient, testTransport, useTestClient } from './kafka-test-kit.js';

useTestClient('platformatic');

const broker = await brokerForTests('kafka');
const brokers = broker?.url ?? '';

afterAll(async () => {
  await broker?.stop();
});

describe.skipIf(!broker)('kafka (platformatic client)', () => {
  runConformance({
    name: 'kafka-platformatic',
    createTransport: () => testTransport(brokers),
    createRawClient: () => createRawClient(brokers),
    cleanup: (namespace) => cleanupNamespace(brokers, namespace),
  });
  const via = broker?.via ?? 'env';
  kafkaSpecificTests(brokers, via === 'localhost' && process.env.BUSBAR_KAFKA_KILL_TEST !== '1' ? 'env' : via);
});
