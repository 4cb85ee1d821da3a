// Fault suite, Redis Streams transport — on a redis-server of our own (AOF, appendfsync always,
// a password), behind our TCP proxy, so killing, pausing and CLIENT KILL touch no shared broker.
// Effects and the idempotency store live in the shared Redis (BUSBAR_REDIS_URL / :6379).
// The scenarios are the shared ones (lib/run.ts); Redis has no broker-specific fault of its own.
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { brokerForTests, type ResolvedBroker } from '../brokers/resolve.js';
import { OwnRedis } from './lib/brokers.js';
import { TcpProxy } from './lib/proxy.js';
import { runFaults } from './lib/run.js';
import { deleteKeys, transportAvailable } from './lib/scenario.js';

const KEY_PREFIX = 'busbar-faults';
const effectsBroker: ResolvedBroker | undefined = await brokerForTests('redis');
const available = effectsBroker !== undefined && (await transportAvailable('redis-streams'));
if (effectsBroker && !available)
  console.warn('[faults] SKIPPING redis-streams faults: @busbar/redis-streams does not export RedisStreamsTransport');

let own: OwnRedis | undefined;
let proxy: TcpProxy | undefined;
let admin: Redis | undefined;

/** What setUp started (a broker fault before it, or after tearDown, is a bug of the suite). */
function started<T>(x: T | undefined, what: string): T {
  if (x === undefined) throw new Error(`faults[redis-streams]: ${what} is not running`);
  return x;
}

runFaults({
  name: 'redis-streams',
  available,
  effectsUrl: effectsBroker?.url,
  setUp: async () => {
    const password = `pw-${randomBytes(12).toString('hex')}`;
    const server = await OwnRedis.start(password);
    own = server;
    const link = await TcpProxy.start({ targetPort: server.port });
    proxy = link;
    const raw = server.client();
    admin = raw;
    const { encodeFields, groupKeys } = await import('@busbar/redis-streams');
    return {
      name: 'redis-streams',
      proxy: link,
      secret: password,
      spec: (via, extra = {}) => ({
        kind: 'redis-streams',
        options: {
          url: via === 'proxy' ? `redis://:${password}@127.0.0.1:${link.port}` : server.url,
          keyPrefix: KEY_PREFIX,
          reconnect: { initialMs: 50, maxMs: 500 },
          ...extra,
        },
      }),
      // As a user configures it: reconnect backoff, health checks and blocking reads at their defaults.
      defaultSpec: (via) => ({
        kind: 'redis-streams',
        options: { url: via === 'proxy' ? `redis://:${password}@127.0.0.1:${link.port}` : server.url, keyPrefix: KEY_PREFIX },
      }),
      // A stable consumer name lets a restarted consumer resume its own pending entries at once;
      // claimIdleMs bounds how long an entry of a vanished consumer waits.
      consumerOptions: { consumerName: 'faults-consumer', claimIdleMs: 5000, claimIntervalMs: 500, blockMs: 500, retryPollMs: 200 },
      rawWrite: async (topic, m) => {
        await raw.xadd(`${KEY_PREFIX}:{${topic}}`, '*', ...encodeFields(m.headers, m.body));
      },
      breakDeadLetters: async (topic, group) => {
        const { dlq } = groupKeys(KEY_PREFIX, topic, group);
        const saved = `${dlq}:saved`;
        if (await raw.exists(dlq)) await raw.rename(dlq, saved);
        await raw.set(dlq, 'not a stream'); // XADD to it fails with WRONGTYPE
        return async () => {
          await raw.del(dlq);
          if (await raw.exists(saved)) await raw.rename(saved, dlq);
        };
      },
      cleanup: async (namespace) => {
        await deleteKeys(raw, `${KEY_PREFIX}:{${namespace}.*`);
      },
      wrongCredentialsSpec: (pw) => ({
        kind: 'redis-streams',
        options: { url: `redis://:${pw}@127.0.0.1:${server.port}`, keyPrefix: KEY_PREFIX },
      }),
    };
  },
  tearDown: async () => {
    await admin?.quit().catch(() => {});
    await proxy?.close();
    await own?.stop();
    await effectsBroker?.stop();
  },
  restart: {
    how: 'kill -9, 5 s down, restart of redis-server on the same AOF',
    title: '2. broker restarted (kill -9 of our redis-server, AOF appendfsync always)',
    restart: async () => {
      await started(own, 'our redis-server').restart(5000);
    },
  },
  dropConnections: {
    how: 'CLIENT KILL TYPE normal',
    title: '3. connections killed by the broker (CLIENT KILL TYPE normal)',
    drop: async () => Number(await started(admin, 'the admin client').call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')),
  },
  pause: {
    pause: () => started(own, 'our redis-server').pause(),
    resume: () => started(own, 'our redis-server').resume(),
  },
});
