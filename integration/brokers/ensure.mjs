#!/usr/bin/env node
// Run by `pnpm test` before vitest: starts what the suites need that the project owns itself —
// the real Apache Kafka broker (integration/brokers/kafka/kafka.sh) unless BUSBAR_KAFKA_BROKERS
// points elsewhere. RabbitMQ and Redis are system services (see README); a missing one makes its
// suite skip with a reason, or fail under CI=true.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const required = process.env.CI === 'true' || process.env.BUSBAR_REQUIRE_BROKERS === '1';

if (process.env.BUSBAR_KAFKA_BROKERS) {
  console.log(`[busbar] Kafka: using BUSBAR_KAFKA_BROKERS=${process.env.BUSBAR_KAFKA_BROKERS}`);
} else if (process.env.BUSBAR_SKIP_KAFKA_START === '1') {
  console.log('[busbar] Kafka: BUSBAR_SKIP_KAFKA_START=1, not starting it');
} else {
  const java = spawnSync('java', ['-version'], { stdio: 'ignore' });
  const mvn = spawnSync('mvn', ['-v'], { stdio: 'ignore' });
  if (java.status !== 0 || mvn.status !== 0) {
    const msg = '[busbar] Kafka: java 17+ and mvn are needed to start the project Kafka broker';
    if (required) {
      console.error(`${msg}; CI requires every broker.`);
      process.exit(1);
    }
    console.warn(`${msg}; Kafka tests will be skipped.`);
  } else {
    const r = spawnSync('bash', [join(here, 'kafka', 'kafka.sh'), 'start'], { stdio: 'inherit' });
    if (r.status !== 0) {
      console.error('[busbar] Kafka failed to start');
      if (required) process.exit(1);
    }
  }
}
