/**
 * The shared conformance suite on a real RabbitMQ (found by `brokerForTests('rabbitmq')`), then the
 * RabbitMQ-specific tests and the first-contact tests of issue 14 (first-contact.ts) — in one file
 * so they run after the suite, never beside it (some of them force-close connections). The raw client is plain amqplib speaking the CloudEvents AMQP binding;
 * cleanup deletes the queues and exchanges the case's transports (and raw clients) declared.
 */
import { runConformance } from '@busbar/conformance';
import type { RabbitMqTransport } from '@busbar/rabbitmq';
import { afterAll, describe, expect, it } from 'vitest';
import { describeGroupsScenario } from '../brokers/groups-scenario.js';
import { brokerForTests } from '../brokers/resolve.js';
import { firstContactTests } from './first-contact.js';
import { createRawClient, TransportRegistry } from './kit.js';
import { rabbitmqSpecificTests } from './rabbitmq-specific.js';

const broker = await brokerForTests('rabbitmq');
const url = broker?.url ?? '';

describe.skipIf(!broker)('rabbitmq', () => {
  const registry = new TransportRegistry(url);
  const started = performance.now();

  afterAll(async () => {
    console.info(`[rabbitmq] suite wall time ${((performance.now() - started) / 1000).toFixed(1)} s`);
    await broker?.stop();
  });

  runConformance({
    name: 'rabbitmq',
    createTransport: () => registry.create(),
    createRawClient: () => createRawClient(url, registry),
    cleanup: (namespace) => registry.cleanup(namespace),
    deliveryTimeoutMs: 15_000,
  });

  it('describeGroups: queue depth as backlog, delay queues as retrying, the dead-letter queue', async () => {
    const ns = `rgroups${Date.now().toString(36)}`;
    try {
      const { described, observed, named } = await describeGroupsScenario(registry.create(), ns, {
        observer: registry.create(),
        named: (observer, topic, group) => (observer as RabbitMqTransport).describeGroups(topic, [group, 'never-subscribed']),
      });
      expect(described.inFlight).toBeUndefined(); // AMQP counts only ready messages
      // AMQP cannot list queues: another process describes only the groups it is told about.
      expect(observed).toEqual([]);
      expect(named).toEqual([described]);
    } finally {
      await registry.cleanup(ns);
    }
  });

  rabbitmqSpecificTests(url, registry);
  firstContactTests(url, registry);

  it('hygiene: no queue or exchange declared by this file is left on the broker', async () => {
    expect(await registry.leftovers('')).toEqual([]);
  });
});
