#!/usr/bin/env node

// Readiness probe + smoke test for the local Kafka broker started by kafka.sh.
//
// 1. Waits (up to BUSBAR_KAFKA_SMOKE_TIMEOUT_MS) until the broker answers
//    metadata requests and reports at least one registered broker.
// 2. With kafkajs: creates a unique topic, produces one message with an
//    idempotent producer and acks=-1, reads the end offsets, consumes the
//    message through a fresh consumer group (fromBeginning) and commits its
//    offset, checks the committed offset, deletes the group and the topic.
//
// That exercises, with whatever versions kafkajs negotiates via ApiVersions:
// Metadata, CreateTopics, InitProducerId, Produce, ListOffsets,
// FindCoordinator, JoinGroup, SyncGroup, Fetch, OffsetCommit, Heartbeat,
// OffsetFetch, LeaveGroup, DeleteGroups and DeleteTopics. Kafka 4.x dropped
// many old protocol versions (KIP-896); if kafkajs ever picked one of those
// the broker would answer UNSUPPORTED_VERSION and this script would fail.
// The versions actually used are printed on success ("apis: ...").
//
// Env:
//   BUSBAR_KAFKA_SMOKE_BROKERS    comma-separated host:port list (default 127.0.0.1:9092;
//                                 falls back to BUSBAR_KAFKA_BROKERS)
//   BUSBAR_KAFKA_SMOKE_TIMEOUT_MS overall deadline in ms (default 90000)
//   BUSBAR_KAFKA_SMOKE_WAIT_ONLY  "1": only wait for readiness, skip the smoke test
//   BUSBAR_KAFKA_SMOKE_SASL_BROKERS  if set: the SASL/PLAIN listener, checked too — the user
//                                 BUSBAR_KAFKA_SMOKE_SASL_USER / _PASSWORD lists topics there,
//                                 and a wrong password is refused (SASL authentication failed)
//   BUSBAR_KAFKAJS_FROM           optional directory from which to resolve 'kafkajs'
//                                 (e.g. a scratch dir) instead of the repo's node_modules
// Exit code 0 on success, 1 on failure/timeout (error printed to stderr).

import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import path from 'node:path';

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1';

const started = Date.now();
const timeoutMs = Number(process.env.BUSBAR_KAFKA_SMOKE_TIMEOUT_MS || 90000);
const deadline = started + timeoutMs;
const brokers = (process.env.BUSBAR_KAFKA_SMOKE_BROKERS || process.env.BUSBAR_KAFKA_BROKERS || '127.0.0.1:9092')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const waitOnly = process.env.BUSBAR_KAFKA_SMOKE_WAIT_ONLY === '1';

const log = (msg) => process.stdout.write(`[kafka-smoke] ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const remaining = () => deadline - Date.now();

async function loadKafkajs() {
  const from = process.env.BUSBAR_KAFKAJS_FROM;
  try {
    if (from) {
      const require = createRequire(path.join(path.resolve(from), 'noop.js'));
      return require('kafkajs');
    }
    const mod = await import('kafkajs');
    return mod.default ?? mod;
  } catch (err) {
    process.stderr.write(
      `[kafka-smoke] cannot load kafkajs (${err.code || err.message}).\n` +
        `  Run 'pnpm install' at the repo root (kafkajs is a root devDependency),\n` +
        `  or point BUSBAR_KAFKAJS_FROM at a directory with node_modules/kafkajs.\n`,
    );
    process.exit(1);
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms}ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const { Kafka, logLevel } = await loadKafkajs();

// kafkajs WARN+ log lines, prefixed so they are recognisable in kafka.sh
// output. On a freshly formatted broker the first InitProducerId answers
// COORDINATOR_LOAD_IN_PROGRESS while the broker obtains its first block of
// producer ids from the controller, and kafkajs logs that (retriable, retried)
// response at ERROR level; such known-transient responses are only counted.
const TRANSIENT = [
  "The coordinator is loading and hence can't process requests",
  'The group coordinator is not available',
  'The coordinator is not available',
  'There is no leader for this topic-partition',
];
let transientErrors = 0;
const logCreator =
  () =>
  ({ namespace, label, log: entry }) => {
    const { message, ...extra } = entry;
    if (namespace === 'Connection' && TRANSIENT.some((t) => String(extra.error ?? '').startsWith(t))) {
      transientErrors += 1;
      return;
    }
    process.stderr.write(`[kafka-smoke] kafkajs ${label} ${namespace}: ${message} ${JSON.stringify(extra)}\n`);
  };

async function waitForBroker() {
  // Silent client: connection refused while the JVM boots is expected.
  const kafka = new Kafka({
    clientId: 'busbar-kafka-wait',
    brokers,
    logLevel: logLevel.NOTHING,
    connectionTimeout: 2000,
    requestTimeout: 5000,
    retry: { retries: 0 },
  });
  let lastErr;
  let attempts = 0;
  while (remaining() > 0) {
    attempts += 1;
    const admin = kafka.admin({ retry: { retries: 0 } });
    try {
      await withTimeout(admin.connect(), Math.max(1, Math.min(5000, remaining())), 'admin.connect');
      const cluster = await withTimeout(admin.describeCluster(), Math.max(1, Math.min(5000, remaining())), 'describeCluster');
      if (cluster.brokers.length > 0 && cluster.controller !== null && cluster.controller !== undefined && cluster.controller >= 0) {
        await withTimeout(admin.listTopics(), Math.max(1, Math.min(5000, remaining())), 'listTopics');
        // FindCoordinator (via DescribeGroups): the first one creates
        // __consumer_offsets and loads the group coordinator. Until it
        // answers, consumer groups cannot work, so the broker is not ready.
        await withTimeout(admin.describeGroups(['busbar-readiness-probe']), Math.max(1, Math.min(5000, remaining())), 'describeGroups');
        await admin.disconnect().catch(() => {});
        return { attempts, cluster };
      }
      lastErr = new Error(`metadata has no usable broker/controller yet: ${JSON.stringify(cluster)}`);
    } catch (err) {
      lastErr = err;
    }
    await admin.disconnect().catch(() => {});
    await sleep(Math.min(250, Math.max(0, remaining())));
  }
  throw new Error(
    `broker at ${brokers.join(',')} not ready within ${timeoutMs}ms (${attempts} attempts); last error: ${lastErr?.message ?? lastErr}`,
  );
}

/** The SASL/PLAIN listener authenticates its user and refuses a wrong password. */
async function checkSasl(saslBrokers) {
  const username = process.env.BUSBAR_KAFKA_SMOKE_SASL_USER || 'busbar';
  const password = process.env.BUSBAR_KAFKA_SMOKE_SASL_PASSWORD || 'busbar-secret';
  const adminWith = (pw) =>
    new Kafka({
      clientId: 'busbar-kafka-sasl-check',
      brokers: saslBrokers,
      logLevel: logLevel.NOTHING,
      connectionTimeout: 3000,
      requestTimeout: 5000,
      retry: { retries: 0 },
      sasl: { mechanism: 'plain', username, password: pw },
    }).admin({ retry: { retries: 0 } });
  const good = adminWith(password);
  try {
    await withTimeout(good.connect(), Math.max(1, Math.min(10000, remaining())), 'SASL admin.connect');
    await withTimeout(good.listTopics(), Math.max(1, Math.min(10000, remaining())), 'SASL listTopics');
  } finally {
    await good.disconnect().catch(() => {});
  }
  const bad = adminWith(`${password}-wrong`);
  let refused;
  try {
    await withTimeout(bad.connect(), Math.max(1, Math.min(10000, remaining())), 'SASL admin.connect (wrong password)');
  } catch (err) {
    refused = err;
  } finally {
    await bad.disconnect().catch(() => {});
  }
  if (refused?.name !== 'KafkaJSSASLAuthenticationError')
    throw new Error(`the SASL listener ${saslBrokers.join(',')} did not refuse a wrong password (${refused?.message ?? 'it connected'})`);
}

async function smoke() {
  const apis = new Map(); // apiName -> Set(version)
  const record = ({ payload }) => {
    if (!apis.has(payload.apiName)) apis.set(payload.apiName, new Set());
    apis.get(payload.apiName).add(payload.apiVersion);
  };

  const kafka = new Kafka({
    clientId: 'busbar-kafka-smoke',
    brokers,
    logLevel: logLevel.WARN,
    logCreator,
    connectionTimeout: 3000,
    requestTimeout: 10000,
    retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 1000 },
  });

  const suffix = `${Date.now()}-${randomBytes(4).toString('hex')}`;
  const topic = `busbar-smoke-${suffix}`;
  const groupId = `busbar-smoke-${suffix}`;
  const payload = `hello-${suffix}`;

  const admin = kafka.admin();
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
    // kafkajs requires unlimited retries for an idempotent producer (it warns
    // otherwise); the overall smoke deadline still bounds the run.
    retry: { retries: Number.MAX_SAFE_INTEGER, initialRetryTime: 100, maxRetryTime: 1000 },
  });
  const consumer = kafka.consumer({
    groupId,
    allowAutoTopicCreation: false,
    sessionTimeout: 10000,
    rebalanceTimeout: 10000,
    heartbeatInterval: 200,
    // kafkajs heartbeats from its fetch loop, not from a background thread:
    // a long-poll Fetch (maxWaitTimeInMs, default 5 s) delays the next
    // Heartbeat, so sessionTimeout must stay well above maxWaitTimeInMs.
    maxWaitTimeInMs: 100,
  });
  for (const c of [admin, producer, consumer]) c.on(c.events.REQUEST, record);

  let topicCreated = false;
  try {
    await admin.connect();
    const created = await admin.createTopics({
      topics: [{ topic, numPartitions: 1, replicationFactor: 1 }],
      waitForLeaders: true,
    });
    if (!created) throw new Error(`createTopics(${topic}) returned false (topic already existed?)`);
    topicCreated = true;

    await producer.connect();
    const [meta] = await producer.send({
      topic,
      acks: -1,
      messages: [{ key: 'smoke', value: payload, headers: { 'busbar-smoke': '1' } }],
    });
    if (meta.errorCode !== 0) throw new Error(`produce error code ${meta.errorCode}`);

    const offsets = await admin.fetchTopicOffsets(topic);
    const high = offsets.find((o) => o.partition === 0)?.high;
    if (high !== '1') throw new Error(`expected high watermark 1 after one produce, got ${JSON.stringify(offsets)}`);

    await consumer.connect();
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    let resolveGot;
    let rejectGot;
    const got = new Promise((res, rej) => {
      resolveGot = res;
      rejectGot = rej;
    });
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ topic: t, partition, message }) => {
        try {
          const value = message.value?.toString();
          if (value !== payload) throw new Error(`consumed unexpected value ${JSON.stringify(value)}`);
          if (message.headers?.['busbar-smoke']?.toString() !== '1') throw new Error('header lost');
          const next = (BigInt(message.offset) + 1n).toString();
          await consumer.commitOffsets([{ topic: t, partition, offset: next }]);
          resolveGot(next);
        } catch (err) {
          rejectGot(err);
        }
      },
    });
    await withTimeout(got, Math.max(1, remaining()), 'consume + commit through consumer group');
    // Stay in the group until at least one Heartbeat has been answered.
    const hbDeadline = Date.now() + Math.min(5000, remaining());
    while (!apis.has('Heartbeat') && Date.now() < hbDeadline) await sleep(50);
    if (!apis.has('Heartbeat')) throw new Error('no Heartbeat request was sent within 5s of joining the group');

    const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
    const committedOffset = committed[0]?.partitions.find((p) => p.partition === 0)?.offset;
    if (committedOffset !== '1') throw new Error(`expected committed offset 1, got ${JSON.stringify(committed)}`);

    await consumer.disconnect(); // LeaveGroup
    await producer.disconnect();
    await admin.deleteGroups([groupId]);
    await admin.deleteTopics({ topics: [topic], timeout: 10000 });
    topicCreated = false;
  } finally {
    await consumer.disconnect().catch(() => {});
    await producer.disconnect().catch(() => {});
    if (topicCreated) await admin.deleteTopics({ topics: [topic] }).catch(() => {});
    await admin.disconnect().catch(() => {});
  }

  return [...apis.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, versions]) => `${name} v${[...versions].sort((a, b) => a - b).join('/')}`)
    .join(', ');
}

try {
  const { attempts, cluster } = await waitForBroker();
  log(
    `broker answering metadata after ${((Date.now() - started) / 1000).toFixed(1)}s ` +
      `(${attempts} attempt(s); clusterId=${cluster.clusterId}, controller=${cluster.controller}, brokers=${cluster.brokers.map((b) => `${b.nodeId}@${b.host}:${b.port}`).join(',')})`,
  );
  const saslBrokers = (process.env.BUSBAR_KAFKA_SMOKE_SASL_BROKERS || '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (saslBrokers.length > 0) {
    await checkSasl(saslBrokers);
    log(`SASL/PLAIN listener ${saslBrokers.join(',')}: the test user authenticates, a wrong password is refused`);
  }
  if (!waitOnly) {
    const t0 = Date.now();
    const apis = await withTimeout(smoke(), Math.max(1, remaining()), 'smoke test');
    log(
      `smoke test passed in ${((Date.now() - t0) / 1000).toFixed(1)}s (create topic, idempotent produce acks=-1, list offsets, group consume + commit + heartbeat, delete group + topic)`,
    );
    log(`apis: ${apis}`);
    if (transientErrors > 0) log(`(${transientErrors} transient coordinator-loading response(s) were retried by kafkajs)`);
  }
  process.exit(0);
} catch (err) {
  process.stderr.write(`[kafka-smoke] FAILED: ${err?.stack ?? err}\n`);
  if (err?.type) process.stderr.write(`[kafka-smoke] kafkajs error type=${err.type} code=${err.code}\n`);
  process.exit(1);
}
