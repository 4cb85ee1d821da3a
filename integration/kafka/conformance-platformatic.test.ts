/**
 * The shared conformance suite and the Kafka-specific tests on a real Kafka broker, with the
 * transport on the `@platformatic/kafka` client (`client: 'platformatic'`). Same shape as
 * conformance.test.ts; the raw client below the bus stays kafkajs (an independent producer and
 * observer). Its Kafka-specific tests run exactly as in conformance.test.ts, the broker kill test
 * included (only on kafka.sh's local broker, always under CI).
 */
import { runConformance } from '@busbar/conformance';
import { defineEvent, EventBus } from '@busbar/core';
import { Partitioners } from 'kafkajs';
import { afterAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
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

describe.skipIf(!broker)('kafka (platformatic client)', () => {
  const registry = new TransportRegistry(brokers, { client: 'platformatic' });
  runConformance({
    name: 'kafka-platformatic',
    createTransport: () => registry.create(),
    createRawClient: () => createRawClient(brokers),
    cleanup: (namespace) => registry.cleanup(namespace),
  });
  kafkaSpecificTests(registry, brokers, broker?.via ?? 'env');
  firstContactTests(registry, brokers, broker?.via ?? 'env', sasl);

  it('puts every key on the partition kafkajs (and the Java client) would choose', async () => {
    const Keyed = defineEvent({ type: 'kafka.keyed', version: 1, schema: z.object({ key: z.string() }) });
    const ns = `kp${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
    const bus = new EventBus({ transport: registry.create({ numPartitions: 5 }), namespace: ns });
    const keys = Array.from({ length: 40 }, (_, i) => `key-${i}-${'x'.repeat(i % 7)}`);
    const seen = new Map<string, number>();
    let all!: () => void;
    const done = new Promise<void>((r) => {
      all = r;
    });
    try {
      await bus.subscribe(Keyed, { group: 'g', concurrency: 8 }, async (data, ctx) => {
        seen.set(data.key, Number(ctx.position.split('/').slice(-2, -1)[0]));
        if (seen.size === keys.length) all();
      });
      await Promise.all(keys.map((key) => bus.publish(Keyed, { key }, { key })));
      await done;
      const pick = Partitioners.DefaultPartitioner();
      const partitionMetadata = Array.from({ length: 5 }, (_, partitionId) => ({
        partitionId,
        leader: 0,
        replicas: [0],
        isr: [0],
        partitionErrorCode: 0,
      }));
      for (const key of keys)
        expect(seen.get(key), key).toBe(pick({ topic: bus.topicOf(Keyed), partitionMetadata, message: { key, value: null } }));
      expect(new Set(seen.values()).size).toBeGreaterThan(1);
    } finally {
      await bus.close();
      await registry.cleanup(ns);
    }
  });
});
