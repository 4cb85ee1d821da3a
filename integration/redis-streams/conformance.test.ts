/**
 * The shared conformance suite on the real Redis (found by `brokerForTests('redis')`). The raw
 * client is plain ioredis: `XADD` to write below the bus, `XREAD BLOCK` on its own connection to
 * observe; cleanup deletes the case's keys by `SCAN`.
 */
import { runConformance } from '@busbar/conformance';
import { afterAll, describe, expect, it } from 'vitest';
import { brokerForTests } from '../brokers/resolve.js';
import { createRawClient, TransportRegistry } from './kit.js';

const broker = await brokerForTests('redis');
const url = broker?.url ?? '';

describe.skipIf(!broker)('redis-streams', () => {
  const registry = new TransportRegistry(url);

  afterAll(async () => {
    await registry.close();
    await broker?.stop();
  });

  runConformance({
    name: 'redis-streams',
    createTransport: () => registry.create(),
    createRawClient: () => createRawClient(url),
    cleanup: (namespace) => registry.cleanup(namespace),
    deliveryTimeoutMs: 15_000,
  });

  it('hygiene: no key of a namespace this file cleaned up is left (or written again) in Redis', async () => {
    expect(await registry.leftovers()).toEqual([]);
  });
});
