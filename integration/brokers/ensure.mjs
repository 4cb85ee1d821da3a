#!/usr/bin/env node
// Run by `pnpm test` before vitest: starts what the suites need that the project owns itself —
// the real Apache Kafka broker (integration/brokers/kafka/kafka.sh) unless BUSBAR_KAFKA_BROKERS
// points elsewhere or a broker already answers on the local Kafka port (the suites then use it, as
// their lookup order says; kafka.sh would refuse a port another process holds). RabbitMQ and Redis
// are system services (see README); a missing one makes its suite skip with a reason, or fail
// under CI=true.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { canConnect, localBroker, brokersRequired as required, resolveKafkaSasl } from '@busbar/test-brokers';

const here = dirname(fileURLToPath(import.meta.url));
const kafka = localBroker('kafka');

/** Whether the pid file of this checkout's kafka.sh names a live process (its own broker). */
function ownBrokerRunning() {
  return spawnSync('bash', [join(here, 'kafka', 'kafka.sh'), 'status'], { stdio: 'ignore' }).status === 0;
}

if (process.env.BUSBAR_KAFKA_BROKERS) {
  console.log(`[busbar] Kafka: using BUSBAR_KAFKA_BROKERS=${process.env.BUSBAR_KAFKA_BROKERS}`);
} else if (!ownBrokerRunning() && (await canConnect(kafka.host, kafka.port))) {
  console.log(
    `[busbar] Kafka: a broker not started by this checkout already answers on ${kafka.host}:${kafka.port}; the suites use it (set BUSBAR_KAFKA_BROKERS or BUSBAR_KAFKA_PORT to choose another)`,
  );
  // The credential tests need its SASL/PLAIN listener (kafka.sh opens one); say so now, not mid-suite.
  const sasl = await resolveKafkaSasl(kafka.url, 'localhost');
  if (!sasl.ok) {
    if (required) {
      console.error(`[busbar] ${sasl.reason}; CI requires it.`);
      process.exit(1);
    }
    console.warn(`[busbar] ${sasl.reason}; the Kafka SASL credential tests will be skipped.`);
  }
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
