/**
 * Finds brokers the way the integration tests do, through `@busbar/test-brokers` (its module
 * comment has the order: environment, testcontainers, local default port), plus one step of the
 * bench's own: for Kafka, the project's broker is started with `integration/brokers/kafka/kafka.sh
 * start` when nothing listens yet (java and mvn needed). A broker still missing is the caller's to
 * skip with the reason (the bench never fails for a missing broker unless `BUSBAR_REQUIRE_BROKERS=1`).
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type BrokerKind, type Resolution, resolveBroker } from '@busbar/test-brokers';

/** The repository root (packages/bench/dist → ../../..). */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Finds a broker of `kind`, starting the project's Kafka if needed; `log` gets progress and warnings. */
export function findBroker(kind: BrokerKind, log: (m: string) => void): Promise<Resolution> {
  return resolveBroker(kind, { startKafka: true, log: (m) => log(`bench: ${m}`) });
}
