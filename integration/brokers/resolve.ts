/**
 * How the integration tests find a broker — a thin layer over `@busbar/test-brokers`
 * (packages/test-brokers), which the benchmark shares. In order:
 * 1. the environment variable (`BUSBAR_RABBITMQ_URL`, `BUSBAR_REDIS_URL`, `BUSBAR_KAFKA_BROKERS`);
 * 2. testcontainers, where a Docker engine answers;
 * 3. the default local address (RabbitMQ :5672, Redis :6379, Kafka :`BUSBAR_KAFKA_PORT`, 9092 by
 *    default — the Kafka one started by `integration/brokers/kafka/kafka.sh start`), if it accepts a
 *    TCP connection;
 * 4. otherwise the broker is missing: the suite is skipped with a visible reason — except under
 *    `CI=true` or `BUSBAR_REQUIRE_BROKERS=1`, where a missing broker fails the run.
 *
 * Kafka's credential tests also need a SASL/PLAIN listener ({@link kafkaSaslForTests}): kafka.sh's,
 * verified with a SASL handshake when the local broker is reused, or `BUSBAR_KAFKA_SASL_BROKERS`.
 */
import {
  type BrokerKind,
  brokersRequired,
  type KafkaSaslListener,
  resolveKafkaSasl,
  type Resolution as SharedResolution,
  type ResolvedBroker as SharedResolvedBroker,
  resolveBroker as sharedResolveBroker,
} from '@busbar/test-brokers';

export { type BrokerKind, brokersRequired, canConnect, type KafkaSaslListener } from '@busbar/test-brokers';

type TestVia = 'env' | 'testcontainers' | 'localhost';

/** A broker found for a test file. */
export type ResolvedBroker = SharedResolvedBroker<TestVia>;

/** The outcome of {@link resolveBroker}. */
export type Resolution = SharedResolution<TestVia>;

/** Finds a broker of `kind` (see the module comment for the order); the tests never start one. */
export function resolveBroker(kind: BrokerKind): Promise<Resolution> {
  return sharedResolveBroker(kind, { log: (m) => console.warn(`[busbar] ${m}`) });
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

/**
 * The SASL/PLAIN listener of the Kafka `broker` for the credential tests (see `resolveKafkaSasl` in
 * @busbar/test-brokers): returns it, or `undefined` (those tests skip, the reason printed) — or
 * throws under CI / BUSBAR_REQUIRE_BROKERS, where a reused Kafka without the listener fails the run.
 */
export async function kafkaSaslForTests(broker: ResolvedBroker | undefined): Promise<KafkaSaslListener | undefined> {
  if (!broker) return undefined;
  const r = await resolveKafkaSasl(broker.url, broker.via);
  if (r.ok) return r.listener;
  if (brokersRequired) throw new Error(`Kafka SASL listener required but missing — ${r.reason}`);
  console.warn(`[busbar] SKIPPING the Kafka SASL credential tests: ${r.reason}`);
  return undefined;
}
