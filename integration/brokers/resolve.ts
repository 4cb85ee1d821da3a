/**
 * How tests (and the benchmark) find a broker, in order:
 * 1. the environment variable (`BUSBAR_RABBITMQ_URL`, `BUSBAR_REDIS_URL`, `BUSBAR_KAFKA_BROKERS`);
 * 2. testcontainers, where a Docker engine answers;
 * 3. the default local address (RabbitMQ :5672, Redis :6379, Kafka :9092 — the Kafka one started by
 *    `integration/brokers/kafka/kafka.sh start`), if it accepts a TCP connection;
 * 4. otherwise the broker is missing: the suite is skipped with a visible reason — except under
 *    `CI=true` or `BUSBAR_REQUIRE_BROKERS=1`, where a missing broker fails the run.
 */
import { connect } from 'node:net';

export type BrokerKind = 'rabbitmq' | 'redis' | 'kafka';

export interface ResolvedBroker {
  /** Connection string: an amqp:// or redis:// URL, or comma-separated Kafka `host:port`s. */
  readonly url: string;
  /** Where it came from. */
  readonly via: 'env' | 'testcontainers' | 'localhost';
  /** Stops what this resolution started (a container). */
  stop(): Promise<void>;
}

export type Resolution = { ok: true; broker: ResolvedBroker } | { ok: false; reason: string };

const ENV: Record<BrokerKind, string> = {
  rabbitmq: 'BUSBAR_RABBITMQ_URL',
  redis: 'BUSBAR_REDIS_URL',
  kafka: 'BUSBAR_KAFKA_BROKERS',
};

const kafkaPort = Number(process.env.BUSBAR_KAFKA_PORT ?? 9092);

const LOCAL: Record<BrokerKind, { url: string; host: string; port: number }> = {
  rabbitmq: { url: 'amqp://guest:guest@localhost:5672', host: '127.0.0.1', port: 5672 },
  redis: { url: 'redis://localhost:6379', host: '127.0.0.1', port: 6379 },
  // The project's own broker (kafka.sh) listens on BUSBAR_KAFKA_PORT, 9092 by default.
  kafka: { url: `localhost:${kafkaPort}`, host: '127.0.0.1', port: kafkaPort },
};

/** Whether a missing broker must fail the run instead of skipping. */
export const brokersRequired = process.env.CI === 'true' || process.env.BUSBAR_REQUIRE_BROKERS === '1';

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

async function dockerAnswers(): Promise<boolean> {
  if (process.env.DOCKER_HOST) return true;
  const { existsSync } = await import('node:fs');
  return existsSync('/var/run/docker.sock') && (await canDockerPing());
}

async function canDockerPing(): Promise<boolean> {
  try {
    const { getContainerRuntimeClient } = await import('testcontainers');
    await getContainerRuntimeClient();
    return true;
  } catch {
    return false;
  }
}

async function viaTestcontainers(kind: BrokerKind): Promise<ResolvedBroker> {
  if (kind === 'rabbitmq') {
    const { RabbitMQContainer } = await import('@testcontainers/rabbitmq');
    const c = await new RabbitMQContainer('rabbitmq:3.13-management').start();
    return { url: c.getAmqpUrl(), via: 'testcontainers', stop: async () => void (await c.stop()) };
  }
  if (kind === 'redis') {
    const { RedisContainer } = await import('@testcontainers/redis');
    const c = await new RedisContainer('redis:7').start();
    return { url: c.getConnectionUrl(), via: 'testcontainers', stop: async () => void (await c.stop()) };
  }
  const { KafkaContainer } = await import('@testcontainers/kafka');
  const c = await new KafkaContainer('confluentinc/cp-kafka:7.7.1').withKraft().start();
  return { url: `${c.getHost()}:${c.getMappedPort(9093)}`, via: 'testcontainers', stop: async () => void (await c.stop()) };
}

/** Finds a broker of `kind` (see the module comment for the order). */
export async function resolveBroker(kind: BrokerKind): Promise<Resolution> {
  const fromEnv = process.env[ENV[kind]]?.trim();
  if (fromEnv) return { ok: true, broker: { url: fromEnv, via: 'env', stop: async () => {} } };
  if (await dockerAnswers()) {
    try {
      return { ok: true, broker: await viaTestcontainers(kind) };
    } catch (e) {
      // fall through to localhost
      console.warn(`[busbar] testcontainers could not start ${kind}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  const local = LOCAL[kind];
  if (await canConnect(local.host, local.port)) {
    return { ok: true, broker: { url: local.url, via: 'localhost', stop: async () => {} } };
  }
  const hint = kind === 'kafka' ? ' (start it with: bash integration/brokers/kafka/kafka.sh start)' : '';
  return {
    ok: false,
    reason: `${kind}: ${ENV[kind]} is not set, no Docker engine answers, and nothing listens on ${local.host}:${local.port}${hint}`,
  };
}

/**
 * Resolves a broker at module load for a test file: returns it, or `undefined` (suite to be
 * skipped, with the reason printed) — or throws under CI / BUSBAR_REQUIRE_BROKERS.
 */
export async function brokerForTests(kind: BrokerKind): Promise<ResolvedBroker | undefined> {
  const r = await resolveBroker(kind);
  if (r.ok) return r.broker;
  if (brokersRequired) throw new Error(`broker required but missing — ${r.reason}`);
  console.warn(`[busbar] SKIPPING ${kind} tests: ${r.reason}`);
  return undefined;
}
