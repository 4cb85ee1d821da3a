// Fault suite, Redis Streams transport — on a redis-server of our own (AOF, appendfsync always,
// a password), behind our TCP proxy, so killing, pausing and CLIENT KILL touch no shared broker.
// Effects and the idempotency store live in the shared Redis (BUSBAR_REDIS_URL / :6379).
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { brokerForTests, type ResolvedBroker } from '../brokers/resolve.js';
import { OwnRedis } from './lib/brokers.js';
import { TcpProxy } from './lib/proxy.js';
import { deleteKeys, type FaultTarget, transportAvailable } from './lib/scenario.js';
import {
  brokerDownAtStart,
  consumerKilled,
  deadLetterFailing,
  droppedConnections,
  type FaultEnv,
  faultUnderLoad,
  hostileInput,
  pausedBroker,
  proxyFaults,
  restartedBroker,
  secrets,
  slowConsumer,
} from './lib/scenarios.js';

const KEY_PREFIX = 'busbar-faults';
const effectsBroker: ResolvedBroker | undefined = await brokerForTests('redis');
const available = effectsBroker !== undefined && (await transportAvailable('redis-streams'));
if (effectsBroker && !available)
  console.warn('[faults] SKIPPING redis-streams faults: @busbar/redis-streams does not export RedisStreamsTransport');

let own: OwnRedis;
let proxy: TcpProxy;
let admin: Redis;
let env: FaultEnv;
let target: FaultTarget;

beforeAll(async () => {
  if (!available || !effectsBroker) return;
  const password = `pw-${randomBytes(12).toString('hex')}`;
  own = await OwnRedis.start(password);
  proxy = await TcpProxy.start({ targetPort: own.port });
  admin = own.client();
  const { Redis: IORedis } = await import('ioredis');
  const effects = new IORedis(effectsBroker.url, { maxRetriesPerRequest: 3 });
  env = { effects, effectsUrl: effectsBroker.url };
  const { encodeFields, groupKeys } = await import('@busbar/redis-streams');
  target = {
    name: 'redis-streams',
    proxy,
    secret: password,
    spec: (link, extra = {}) => ({
      kind: 'redis-streams',
      options: {
        url: link === 'proxy' ? `redis://:${password}@127.0.0.1:${proxy.port}` : own.url,
        keyPrefix: KEY_PREFIX,
        reconnect: { initialMs: 50, maxMs: 500 },
        ...extra,
      },
    }),
    // A stable consumer name lets a restarted consumer resume its own pending entries at once;
    // claimIdleMs bounds how long an entry of a vanished consumer waits.
    consumerOptions: { consumerName: 'faults-consumer', claimIdleMs: 5000, claimIntervalMs: 500, blockMs: 500, retryPollMs: 200 },
    rawWrite: async (topic, m) => {
      await admin.xadd(`${KEY_PREFIX}:{${topic}}`, '*', ...encodeFields(m.headers, m.body));
    },
    breakDeadLetters: async (topic, group) => {
      const { dlq } = groupKeys(KEY_PREFIX, topic, group);
      const saved = `${dlq}:saved`;
      if (await admin.exists(dlq)) await admin.rename(dlq, saved);
      await admin.set(dlq, 'not a stream'); // XADD to it fails with WRONGTYPE
      return async () => {
        await admin.del(dlq);
        if (await admin.exists(saved)) await admin.rename(saved, dlq);
      };
    },
    cleanup: async (namespace) => {
      await deleteKeys(admin, `${KEY_PREFIX}:{${namespace}.*`);
    },
    wrongCredentialsSpec: (pw) => ({
      kind: 'redis-streams',
      options: { url: `redis://:${pw}@127.0.0.1:${own.port}`, keyPrefix: KEY_PREFIX },
    }),
  };
}, 60_000);

afterAll(async () => {
  if (!available) return;
  await admin?.quit().catch(() => {});
  await proxy?.close();
  await own?.stop();
  await env?.effects.quit().catch(() => {});
  await effectsBroker?.stop();
});

describe.skipIf(!available)('faults[redis-streams]', () => {
  it('1. consumer killed (kill -9) mid-handler / after the effect / after the commit', () => consumerKilled(target, env));
  it('2. broker restarted (kill -9 of our redis-server, AOF appendfsync always)', () =>
    faultUnderLoad(
      target,
      env,
      restartedBroker(() => own.restart(5000), 'kill -9, 5 s down, restart of redis-server on the same AOF'),
    ));
  it('3. connections killed by the broker (CLIENT KILL TYPE normal)', () =>
    faultUnderLoad(
      target,
      env,
      droppedConnections(
        async () => Number(await admin.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')),
        'CLIENT KILL TYPE normal',
      ),
    ));
  for (const fault of proxyFaultsLazy()) {
    it(`3. link fault through the proxy: ${fault}`, () => {
      const f = proxyFaults(target).find((x) => x.name === fault);
      if (!f) throw new Error(`no fault ${fault}`);
      return faultUnderLoad(target, env, f);
    });
  }
  it('3b. broker paused (SIGSTOP ~10 s, SIGCONT)', () =>
    faultUnderLoad(
      target,
      env,
      pausedBroker(
        () => own.pause(),
        () => own.resume(),
      ),
    ));
  it('4. broker down at start: fails fast, breaker opens, half-opens, recovers', () => brokerDownAtStart(target, env));
  it('5. slow consumer: heap flat from backlog N to 2N, concurrency kept, publisher backpressure', () => slowConsumer(target, env));
  it('6. hostile input written below the bus is dead-lettered with its reason', () => hostileInput(target, env));
  it('7. dead-letter destination failing: not acknowledged, comes back, both errors reported', () => deadLetterFailing(target, env));
  it('8. secrets appear in no error, log line or dead letter', () => secrets(target, env));
});

/** Names of the proxy faults (known before `target` exists). */
function proxyFaultsLazy(): string[] {
  return ['proxy-cut', 'proxy-reset', 'proxy-blackhole', 'proxy-half-open'];
}
