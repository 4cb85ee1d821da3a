/**
 * Finds brokers the way the integration tests do (integration/brokers/resolve.ts), in order:
 * 1. the environment variable (`BUSBAR_RABBITMQ_URL`, `BUSBAR_REDIS_URL`, `BUSBAR_KAFKA_BROKERS`);
 * 2. testcontainers, where a Docker engine answers (and the `testcontainers` packages resolve);
 * 3. the default local address — for Kafka, the project's own broker, started with
 *    `integration/brokers/kafka/kafka.sh start` when nothing listens yet (java and mvn needed);
 * 4. otherwise the transport is skipped with the reason (the bench never fails for a missing broker
 *    unless `BUSBAR_REQUIRE_BROKERS=1`).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A broker kind. */
export type BrokerKind = 'rabbitmq' | 'redis' | 'kafka';

/** A resolved broker. */
export interface FoundBroker {
  /** amqp:// or redis:// URL, or comma-separated Kafka `host:port`s. */
  readonly url: string;
  /** Where it came from. */
  readonly via: 'env' | 'testcontainers' | 'localhost' | 'kafka.sh';
  /** Stops what this resolution started (a container); the Kafka script's broker is left running like `pnpm test` leaves it. */
  stop(): Promise<void>;
}

/** The outcome of {@link findBroker}. */
export type Found = { ok: true; broker: FoundBroker } | { ok: false; reason: string };

const ENV: Record<BrokerKind, string> = { rabbitmq: 'BUSBAR_RABBITMQ_URL', redis: 'BUSBAR_REDIS_URL', kafka: 'BUSBAR_KAFKA_BROKERS' };
const LOCAL: Record<BrokerKind, { url: string; host: string; port: number }> = {
  rabbitmq: { url: 'amqp://guest:guest@localhost:5672', host: '127.0.0.1', port: 5672 },
  redis: { url: 'redis://localhost:6379', host: '127.0.0.1', port: 6379 },
  kafka: { url: '127.0.0.1:9092', host: '127.0.0.1', port: 9092 },
};

/** The repository root (packages/bench/dist → ../../..). */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Resolves TCP reachability of host:port within `timeoutMs`. */
export function canConnect(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

type Dyn = (name: string) => Promise<Record<string, unknown>>;
const dynImport: Dyn = (name) => import(name) as Promise<Record<string, unknown>>;

async function viaTestcontainers(kind: BrokerKind): Promise<FoundBroker | undefined> {
  if (!process.env.DOCKER_HOST && !existsSync('/var/run/docker.sock')) return undefined;
  try {
    const tc = await dynImport('testcontainers');
    await (tc.getContainerRuntimeClient as () => Promise<unknown>)();
    type Started = {
      stop(): Promise<unknown>;
      getHost(): string;
      getMappedPort(p: number): number;
      getAmqpUrl?(): string;
      getConnectionUrl?(): string;
    };
    type Ctor = new (image: string) => { start(): Promise<Started>; withKraft?(): { start(): Promise<Started> } };
    if (kind === 'rabbitmq') {
      const C = (await dynImport('@testcontainers/rabbitmq')).RabbitMQContainer as Ctor;
      const c = await new C('rabbitmq:3.13-management').start();
      return { url: c.getAmqpUrl?.() ?? '', via: 'testcontainers', stop: async () => void (await c.stop()) };
    }
    if (kind === 'redis') {
      const C = (await dynImport('@testcontainers/redis')).RedisContainer as Ctor;
      const c = await new C('redis:7').start();
      return { url: c.getConnectionUrl?.() ?? '', via: 'testcontainers', stop: async () => void (await c.stop()) };
    }
    const C = (await dynImport('@testcontainers/kafka')).KafkaContainer as Ctor;
    const c = await (new C('confluentinc/cp-kafka:7.7.1').withKraft?.() ?? new C('confluentinc/cp-kafka:7.7.1')).start();
    return { url: `${c.getHost()}:${c.getMappedPort(9093)}`, via: 'testcontainers', stop: async () => void (await c.stop()) };
  } catch {
    return undefined;
  }
}

/** Finds a broker of `kind` (see the module comment for the order). */
export async function findBroker(kind: BrokerKind, log: (m: string) => void): Promise<Found> {
  const fromEnv = process.env[ENV[kind]]?.trim();
  if (fromEnv) return { ok: true, broker: { url: fromEnv, via: 'env', stop: async () => {} } };
  const tc = await viaTestcontainers(kind);
  if (tc) return { ok: true, broker: tc };
  const local = LOCAL[kind];
  if (await canConnect(local.host, local.port)) return { ok: true, broker: { url: local.url, via: 'localhost', stop: async () => {} } };
  if (kind === 'kafka' && process.env.BUSBAR_SKIP_KAFKA_START !== '1') {
    const script = join(repoRoot, 'integration', 'brokers', 'kafka', 'kafka.sh');
    const java = spawnSync('java', ['-version'], { stdio: 'ignore' }).status === 0;
    const mvn = spawnSync('mvn', ['-v'], { stdio: 'ignore' }).status === 0;
    if (existsSync(script) && java && mvn) {
      log('bench: starting the project Kafka broker (integration/brokers/kafka/kafka.sh start) …');
      const r = spawnSync('bash', [script, 'start'], { stdio: ['ignore', 'ignore', 'inherit'] });
      if (r.status === 0 && (await canConnect(local.host, local.port))) {
        return { ok: true, broker: { url: local.url, via: 'kafka.sh', stop: async () => {} } };
      }
      return { ok: false, reason: `kafka: kafka.sh start failed (exit ${r.status})` };
    }
  }
  const hint = kind === 'kafka' ? ' (and java 17+ / mvn are missing to start integration/brokers/kafka/kafka.sh)' : '';
  return {
    ok: false,
    reason: `${kind}: ${ENV[kind]} is not set, no Docker engine answers, and nothing listens on ${local.host}:${local.port}${hint}`,
  };
}
