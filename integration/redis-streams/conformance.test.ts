/**
 * The shared conformance suite on the real Redis (found by `brokerForTests('redis')`). The raw
 * client is plain ioredis: `XADD` to write below the bus, `XREAD BLOCK` on its own connection to
 * observe; cleanup deletes the case's keys by `SCAN`.
 */
import { runConformance } from '@busbar/conformance';
import { afterAll, describe, expect, it } from 'vitest';
import { describeGroupsScenario } from '../brokers/groups-scenario.js';
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

  it('describeGroups: XINFO GROUPS lag as backlog, pending as in flight, the delayed set, the dead-letter stream', async () => {
    const ns = `rsgroups${Date.now().toString(36)}`;
    try {
      const { described, observed } = await describeGroupsScenario(registry.create(), ns, { observer: registry.create() });
      expect(described.inFlight).toBe(0);
      // Another process, which never subscribed, finds the group through XINFO GROUPS.
      expect(observed).toEqual([described]);
    } finally {
      await registry.cleanup(ns);
    }
  });

  it('hygiene: no key of a namespace this file cleaned up is left (or written again) in Redis', async () => {
    expect(await registry.leftovers()).toEqual([]);
  });
});
