/**
 * How the integration tests and the benchmark find a broker, in order:
 * 1. the environment variable (`BUSBAR_RABBITMQ_URL`, `BUSBAR_REDIS_URL`, `BUSBAR_KAFKA_BROKERS`);
 * 2. testcontainers, where a Docker engine answers (and the `testcontainers` packages are installed);
 * 3. the default local address (RabbitMQ :5672, Redis :6379, Kafka :`BUSBAR_KAFKA_PORT`, 9092 by
 *    default — the project's own broker from `integration/brokers/kafka/kafka.sh start`), if it
 *    accepts a TCP connection;
 * 4. with `startKafka` (the bench): for Kafka, `kafka.sh start` when nothing listens yet (java 17+
 *    and mvn needed; not with `BUSBAR_SKIP_KAFKA_START=1`);
 * 5. otherwise the broker is missing: `{ ok: false, reason }`. What to do then is the caller's
 *    policy (the tests skip, or fail under {@link brokersRequired}; the bench skips the transport).
 *
 * The testcontainers packages are loaded by dynamic import only when a Docker engine is configured,
 * so nothing here needs them to build or to run without Docker.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** A broker kind. */
export type BrokerKind = 'rabbitmq' | 'redis' | 'kafka';

/** Where a resolved broker came from. `kafka.sh`: started by this resolution (`startKafka`). */
export type BrokerVia = 'env' | 'testcontainers' | 'localhost' | 'kafka.sh';

/** A resolved broker. */
export interface ResolvedBroker<V extends BrokerVia = BrokerVia> {
  /** Connection string: an amqp:// or redis:// URL, or comma-separated Kafka `host:port`s. */
  readonly url: string;
  /** Where it came from. */
  readonly via: V;
  /** Stops what this resolution started (a container); a broker started by kafka.sh is left running, as `pnpm test` leaves it. */
  stop(): Promise<void>;
}

/** The outcome of {@link resolveBroker}. */
export type Resolution<V extends BrokerVia = BrokerVia> = { ok: true; broker: ResolvedBroker<V> } | { ok: false; reason: string };

/** Options of {@link resolveBroker}. */
export interface ResolveOptions {
  /** Where warnings and progress go (testcontainers failures, starting kafka.sh). Default: `console.warn` with a `[busbar] ` prefix. */
  readonly log?: (message: string) => void;
  /** For Kafka: start the project's own broker with `integration/brokers/kafka/kafka.sh start` when nothing listens. Default false. */
  readonly startKafka?: boolean;
}

/** The environment variable naming each kind's broker. */
export const BROKER_ENV: Readonly<Record<BrokerKind, string>> = {
  rabbitmq: 'BUSBAR_RABBITMQ_URL',
  redis: 'BUSBAR_REDIS_URL',
  kafka: 'BUSBAR_KAFKA_BROKERS',
};

/** The default local address of each kind (Kafka: the port kafka.sh listens on, `BUSBAR_KAFKA_PORT`, 9092 by default). */
export function localBroker(kind: BrokerKind): { url: string; host: string; port: number } {
  if (kind === 'rabbitmq') return { url: 'amqp://guest:guest@localhost:5672', host: '127.0.0.1', port: 5672 };
  if (kind === 'redis') return { url: 'redis://localhost:6379', host: '127.0.0.1', port: 6379 };
  const port = Number(process.env.BUSBAR_KAFKA_PORT ?? 9092);
  return { url: `localhost:${port}`, host: '127.0.0.1', port };
}

/** Whether a missing broker must fail the run instead of skipping (`CI=true` or `BUSBAR_REQUIRE_BROKERS=1`). */
export const brokersRequired = process.env.CI === 'true' || process.env.BUSBAR_REQUIRE_BROKERS === '1';

/** The repository root (packages/test-brokers/dist → ../../..). */
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const KAFKA_SH = 'integration/brokers/kafka/kafka.sh';

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

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

// A specifier in a variable keeps TypeScript from resolving the optional testcontainers packages at
// build time; the few members used are typed below.
const optionalImport = (name: string) => import(name) as Promise<Record<string, unknown>>;

interface StartedContainer {
  stop(): Promise<unknown>;
  getHost(): string;
  getMappedPort(port: number): number;
  getAmqpUrl(): string;
  getConnectionUrl(): string;
}
interface ContainerSpec {
  start(): Promise<StartedContainer>;
  withKraft(): ContainerSpec;
}
type ContainerClass = new (image: string) => ContainerSpec;

/** Starts a container of `kind`: it, and its connection string. */
async function startContainer(kind: BrokerKind): Promise<{ container: StartedContainer; url: string }> {
  if (kind === 'rabbitmq') {
    const C = (await optionalImport('@testcontainers/rabbitmq')).RabbitMQContainer as ContainerClass;
    const container = await new C('rabbitmq:3.13-management').start();
    return { container, url: container.getAmqpUrl() };
  }
  if (kind === 'redis') {
    const C = (await optionalImport('@testcontainers/redis')).RedisContainer as ContainerClass;
    const container = await new C('redis:7').start();
    return { container, url: container.getConnectionUrl() };
  }
  const C = (await optionalImport('@testcontainers/kafka')).KafkaContainer as ContainerClass;
  const container = await new C('confluentinc/cp-kafka:7.7.1').withKraft().start();
  return { container, url: `${container.getHost()}:${container.getMappedPort(9093)}` };
}

async function viaTestcontainers(kind: BrokerKind, log: (m: string) => void): Promise<ResolvedBroker<'testcontainers'> | undefined> {
  if (!process.env.DOCKER_HOST && !existsSync('/var/run/docker.sock')) return undefined;
  let tc: Record<string, unknown>;
  try {
    tc = await optionalImport('testcontainers');
  } catch (e) {
    log(`a Docker engine is configured but testcontainers cannot be loaded (${errorText(e)}); not using it for ${kind}`);
    return undefined;
  }
  try {
    await (tc.getContainerRuntimeClient as () => Promise<unknown>)();
  } catch {
    return undefined; // no Docker engine answers
  }
  try {
    const { container, url } = await startContainer(kind);
    return { url, via: 'testcontainers', stop: async () => void (await container.stop()) };
  } catch (e) {
    log(`testcontainers could not start ${kind}: ${errorText(e)}`);
    return undefined;
  }
}

/**
 * Starts the project's own Kafka (kafka.sh): the broker, or `failed` (it was started and did not
 * come up), or `notStarted` (why it could not be tried).
 */
async function startProjectKafka(
  log: (m: string) => void,
): Promise<{ broker: ResolvedBroker<'kafka.sh'> } | { failed: string } | { notStarted: string }> {
  if (process.env.BUSBAR_SKIP_KAFKA_START === '1') return { notStarted: `BUSBAR_SKIP_KAFKA_START=1, so ${KAFKA_SH} was not started` };
  const script = join(repoRoot, KAFKA_SH);
  if (!existsSync(script)) return { notStarted: `${KAFKA_SH} is missing` };
  const java = spawnSync('java', ['-version'], { stdio: 'ignore' }).status === 0;
  const mvn = spawnSync('mvn', ['-v'], { stdio: 'ignore' }).status === 0;
  if (!java || !mvn) return { notStarted: `and java 17+ / mvn are missing to start ${KAFKA_SH}` };
  log(`starting the project Kafka broker (${KAFKA_SH} start) …`);
  const r = spawnSync('bash', [script, 'start'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const local = localBroker('kafka');
  if (r.status === 0 && (await canConnect(local.host, local.port))) {
    return { broker: { url: local.url, via: 'kafka.sh', stop: async () => {} } };
  }
  return { failed: `kafka.sh start failed (exit ${r.status})` };
}

/** Finds a broker of `kind` (see the module comment for the order). */
export function resolveBroker(
  kind: BrokerKind,
  options?: ResolveOptions & { readonly startKafka?: false },
): Promise<Resolution<Exclude<BrokerVia, 'kafka.sh'>>>;
export function resolveBroker(kind: BrokerKind, options: ResolveOptions): Promise<Resolution>;
export async function resolveBroker(kind: BrokerKind, options: ResolveOptions = {}): Promise<Resolution> {
  const log = options.log ?? ((m: string) => console.warn(`[busbar] ${m}`));
  const env = BROKER_ENV[kind];
  const fromEnv = process.env[env]?.trim();
  if (fromEnv) return { ok: true, broker: { url: fromEnv, via: 'env', stop: async () => {} } };
  const tc = await viaTestcontainers(kind, log);
  if (tc) return { ok: true, broker: tc };
  const local = localBroker(kind);
  if (await canConnect(local.host, local.port)) {
    return { ok: true, broker: { url: local.url, via: 'localhost', stop: async () => {} } };
  }
  let hint = '';
  if (kind === 'kafka') {
    if (options.startKafka) {
      const started = await startProjectKafka(log);
      if ('broker' in started) return { ok: true, broker: started.broker };
      if ('failed' in started) return { ok: false, reason: `kafka: ${started.failed}` };
      hint = ` (${started.notStarted})`;
    } else {
      hint = ` (start it with: bash ${KAFKA_SH} start)`;
    }
  }
  return {
    ok: false,
    reason: `${kind}: ${env} is not set, no Docker engine answers, and nothing listens on ${local.host}:${local.port}${hint}`,
  };
}

export {
  type KafkaSaslListener,
  type KafkaSaslResolution,
  kafkaSaslPort,
  offersSaslPlain,
  resolveKafkaSasl,
} from './kafka-sasl.js';
