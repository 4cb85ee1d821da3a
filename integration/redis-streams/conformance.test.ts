/**
 * The shared conformance suite on the real Redis (found by `brokerForTests('redis')`). The raw
 * client is plain ioredis: `XADD` to write below the bus, `XREAD BLOCK` on its own connection to
 * observe; cleanup deletes the case's keys by `SCAN`.
 */
import { runConformance } from '@busbar/conformance';
import { RedisStreamsTransport } from '@busbar/redis-streams';
import { Redis } from 'ioredis';
import { afterAll, describe } from 'vitest';
import { brokerForTests } from '../brokers/resolve.js';
import { deleteNamespace, rawObserve, rawWrite } from './helpers.js';

const broker = await brokerForTests('redis');

describe.skipIf(!broker)('redis-streams', () => {
  const url = broker?.url ?? '';
  const admin = new Redis(url, { lazyConnect: true });
  admin.on('error', () => {});
  afterAll(async () => {
    admin.disconnect();
    await broker?.stop();
  });

  runConformance({
    name: 'redis-streams',
    createTransport: () => new RedisStreamsTransport({ url, claimIdleMs: 5_000, claimIntervalMs: 500, retryPollMs: 200 }),
    createRawClient: async () => {
      const conn = new Redis(url);
      conn.on('error', () => {});
      const probes = new Set<{ close(): Promise<void> }>();
      return {
        write: (topic, message) => rawWrite(conn, topic, message),
        observe: async (topic) => {
          const probe = await rawObserve(url, topic);
          probes.add(probe);
          return probe;
        },
        close: async () => {
          await Promise.allSettled([...probes].map((p) => p.close()));
          conn.disconnect();
        },
      };
    },
    cleanup: async (namespace) => {
      await deleteNamespace(admin, namespace);
    },
    deliveryTimeoutMs: 15_000,
  });
});
