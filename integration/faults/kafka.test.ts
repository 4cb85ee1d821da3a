// Fault suite, Kafka transport — on a Kafka broker of our own (integration/brokers/kafka/kafka.sh
// with its own ports and data dir, so killing and pausing it leaves the shared one alone). The
// broker has a second listener advertised at our TCP proxy's port: clients that bootstrap through
// the proxy keep talking through it. Effects and the idempotency store live in the shared Redis.

import { randomUUID } from 'node:crypto';
import { silentLogger } from '@busbar/core';
import { ConfigResourceTypes, Kafka, logLevel } from 'kafkajs';
import { expect, it } from 'vitest';
import { brokerForTests, brokersRequired, type ResolvedBroker } from '../brokers/resolve.js';
import { OwnKafka, run } from './lib/brokers.js';
import { TcpProxy } from './lib/proxy.js';
import { runFaults, type SharedScenario } from './lib/run.js';
import { createTransport, type FaultTarget, RUN_ID, transportAvailable } from './lib/scenario.js';

/**
 * The client the transport runs on: kafkajs by default; BUSBAR_FAULTS_KAFKA_CLIENT=platformatic
 * runs the suite on the opt-in `@platformatic/kafka` client (a CI stage of its own).
 */
const client = process.env.BUSBAR_FAULTS_KAFKA_CLIENT?.trim() || undefined;

/**
 * The shared scenarios where the client matters: what the client does on the network — its
 * connections, request timeouts and retries, producer sequence numbers, group membership, fetch
 * buffering, connect and authentication errors. A run on a second client runs these (plus the
 * Kafka-specific lost-produce-answer); the rest exercise core and the transport above the client
 * seam, identical for both clients (integration/faults/README.md says why, scenario by scenario).
 * BUSBAR_FAULTS_KAFKA_ALL_SCENARIOS=1 runs every scenario on the second client too.
 */
const CLIENT_SCENARIOS: readonly SharedScenario[] = [
  'consumer-kill',
  'broker-restart',
  'proxy-cut',
  'proxy-reset',
  'proxy-blackhole',
  'proxy-half-open',
  'blackhole-detection',
  'subscribe-link-reset',
  'broker-paused',
  'down-at-start',
  'slow-consumer',
  'secrets',
];
const secondClient = client !== undefined && client !== 'kafkajs' && process.env.BUSBAR_FAULTS_KAFKA_ALL_SCENARIOS !== '1';

const effectsBroker: ResolvedBroker | undefined = await brokerForTests('redis');
const java = await run('java', ['-version']).then(
  () => true,
  () => false,
);
if (!java) {
  const reason = 'java 17+ is needed to run a Kafka broker of our own';
  if (brokersRequired) throw new Error(`faults[kafka]: ${reason}`);
  console.warn(`[faults] SKIPPING kafka faults: ${reason}`);
}
const available = java && effectsBroker !== undefined && (await transportAvailable('kafka'));

let own: OwnKafka | undefined;
let proxy: TcpProxy | undefined;
let kafka: Kafka;
let cleanupRaw: () => Promise<void> = async () => {};

/** Our Kafka, once setUp started it (a broker fault before that is a bug of the suite). */
function ownKafka(): OwnKafka {
  if (!own) throw new Error('faults[kafka]: our Kafka is not running');
  return own;
}

runFaults({
  name: 'kafka',
  available,
  effectsUrl: effectsBroker?.url,
  hookTimeoutMs: 240_000,
  setUp: async () => {
    const broker = await OwnKafka.start();
    own = broker;
    const link = await TcpProxy.start({ targetPort: broker.proxyListenPort, listenPort: broker.proxyPort });
    proxy = link;
    kafka = new Kafka({ clientId: 'busbar-faults-raw', brokers: [broker.direct], logLevel: logLevel.NOTHING });
    const producer = kafka.producer({ allowAutoTopicCreation: false });
    await producer.connect();
    const admin = kafka.admin();
    await admin.connect();
    cleanupRaw = async () => {
      await producer.disconnect().catch(() => {});
      await admin.disconnect().catch(() => {});
    };
    return {
      name: 'kafka',
      proxy: link,
      spec: (via, extra = {}) => ({
        kind: 'kafka',
        options: {
          brokers: [via === 'proxy' ? link.address : broker.direct],
          clientId: 'busbar-faults',
          // Short timeouts so a silent (half-open, black-holed, paused) broker is noticed in seconds.
          requestTimeoutMs: 5000,
          socketConnectTimeoutMs: 2000,
          connectTimeoutMs: 5000,
          maxRetryTimeMs: 500,
          ackTimeoutMs: 5000,
          maxWaitTimeMs: 200,
          ...(client ? { client } : {}),
          ...extra,
        },
      }),
      // As a user configures it: the client's timeouts, heartbeats and session at their defaults.
      defaultSpec: (via) => ({
        kind: 'kafka',
        options: { brokers: [via === 'proxy' ? link.address : broker.direct], clientId: 'busbar-faults', ...(client ? { client } : {}) },
      }),
      // A killed member's partitions move after the session timeout (the test broker allows 1 s).
      consumerOptions: { sessionTimeoutMs: 3000, heartbeatIntervalMs: 500, rebalanceTimeoutMs: 10_000 },
      rawWrite: async (topic, m) => {
        await producer.send({ topic, acks: -1, messages: [{ value: Buffer.from(m.body), headers: { ...m.headers } }] });
      },
      breakDeadLetters: async (topic, group) => {
        const name = `${topic}.${group}.dlq`;
        // A record limit below any dead letter's size: the broker refuses the write (RecordTooLarge).
        await admin.alterConfigs({
          validateOnly: false,
          resources: [{ type: ConfigResourceTypes.TOPIC, name, configEntries: [{ name: 'max.message.bytes', value: '64' }] }],
        });
        return async () => {
          await admin.alterConfigs({ validateOnly: false, resources: [{ type: ConfigResourceTypes.TOPIC, name, configEntries: [] }] });
        };
      },
      locate: async (topic, group, id) => {
        const groupId = `${topic}.${group}`;
        const ends = await admin.fetchTopicOffsets(topic);
        const committed = (await admin.fetchOffsets({ groupId, topics: [topic] }))[0]?.partitions ?? [];
        const log = await readLog(topic, ends).catch((e: Error) => e);
        if (log instanceof Error) return `the log could not be read: ${log.message}`;
        const found = log.filter((r) => r.id === id).map((r) => `p${r.partition}@${r.offset}`);
        const offsets = ends.map(
          (p) => `p${p.partition}: high ${p.high}, committed ${committed.find((c) => c.partition === p.partition)?.offset ?? '?'}`,
        );
        return `${found.length ? `in the log at ${found.join(', ')}` : 'not in the log'}; ${offsets.join('; ')}`;
      },
      cleanup: async (namespace) => {
        const topics = (await admin.listTopics()).filter((t) => t.startsWith(`${namespace}.`));
        if (topics.length > 0) await admin.deleteTopics({ topics, timeout: 30_000 });
        const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(`${namespace}.`));
        if (groups.length > 0) await admin.deleteGroups(groups).catch(() => {});
      },
      wrongCredentialsSpec: (pw) => ({
        kind: 'kafka',
        options: {
          brokers: [broker.direct],
          sasl: { mechanism: 'plain', username: 'busbar-faults', password: pw },
          connectTimeoutMs: 3000,
          ...(client ? { client } : {}),
        },
      }),
    };
  },
  tearDown: async () => {
    await cleanupRaw();
    await proxy?.close();
    await own?.stop();
    await effectsBroker?.stop();
  },
  // A failed scenario may leave our broker dead or paused: start it again before the next one.
  beforeEachScenario: async () => {
    await ownKafka().ensureRunning();
  },
  restart: {
    how: 'kill -9 + kafka.sh start on the same log dir',
    title: '2. broker restarted (kill -9 of our Kafka, restarted on the same log dir)',
    restart: () => ownKafka().restart(),
  },
  pause: {
    pause: () => ownKafka().pause(),
    resume: () => ownKafka().resume(),
  },
  ...(secondClient ? { scenarios: CLIENT_SCENARIOS } : {}),
  specific: ({ target }) => {
    it('9. a produce that landed but whose answer was lost: the retry resends the same records, none is lost', () =>
      lostProduceAnswer(target()));
  },
});

/** Whether a TCP chunk starts a Kafka request frame with API key 0 (Produce). */
function isProduceRequest(chunk: Buffer): boolean {
  return chunk.length >= 8 && chunk.readInt32BE(0) === chunk.length - 4 && chunk.readInt16BE(4) === 0;
}

/**
 * The regression of a loss seen under link resets. kafkajs retries a failed `sendBatch` itself,
 * re-partitioning it (round-robin without a key) with the partitions' sequence numbers rolled
 * back. When the failed request had in fact landed, the retry's records sat on other partitions:
 * the broker now held partition p at sequence s + 1 while the client still counted s for it, so the
 * next record sent to p carried sequence s, matched the landed batch, and was acknowledged as a
 * duplicate without being appended. Here the proxy lets a produce request through, swallows its
 * answer and resets the link; every record confirmed afterwards must be in the log.
 */
async function lostProduceAnswer(target: FaultTarget): Promise<void> {
  const proxy = target.proxy;
  const transport = await createTransport(target.spec('proxy'));
  const topic = `faults-${RUN_ID}-lost-answer`;
  const message = (n: number) => {
    const id = randomUUID();
    return { topic, id, body: Buffer.from(JSON.stringify({ n })), headers: { ce_id: id, ce_type: topic } };
  };
  const signal = new AbortController().signal;
  const confirmed: string[] = [];
  const send = async (batch: ReturnType<typeof message>[]) => {
    const outcomes = await transport.publish(batch, signal);
    batch.forEach((m, i) => {
      if (outcomes[i]?.ok) confirmed.push(m.id);
    });
    return outcomes;
  };
  let n = 0;
  try {
    await transport.connect({ logger: silentLogger, emit: () => {} });
    // Creates the topic (3 partitions) and loads its metadata before the fault.
    expect(await send([message(n++)])).toEqual([{ ok: true }]);
    for (let round = 0; round < 3; round++) {
      const lost = proxy.loseResponse(isProduceRequest);
      // Two keyless records: on two of the three partitions, moved by a re-partitioning retry.
      await send([message(n++), message(n++)]);
      await lost; // the fault did happen
      // Then single records round-robin over every partition, twice.
      for (let i = 0; i < 6; i++) await send([message(n++)]);
    }
    expect(confirmed.length).toBeGreaterThanOrEqual(19);
    const inLog = await idsInLog(topic);
    expect(confirmed.filter((id) => !inLog.has(id))).toEqual([]);
  } finally {
    await transport.close();
    await admin()
      .then((a) => a.deleteTopics({ topics: [topic] }).finally(() => a.disconnect()))
      .catch(() => {});
  }
}

async function admin() {
  const a = kafka.admin();
  await a.connect();
  return a;
}

/** The `ce_id`s of every record in `topic`, read straight from the broker (not through the proxy). */
async function idsInLog(topic: string): Promise<Set<string>> {
  const a = await admin();
  const ends = await a.fetchTopicOffsets(topic).finally(() => a.disconnect());
  const ids = new Set<string>();
  for (const r of await readLog(topic, ends)) if (r.id !== undefined) ids.add(r.id);
  return ids;
}

/** Every record of `topic` up to the given high watermarks (`ce_id`, partition, offset), read with a throw-away group. */
async function readLog(
  topic: string,
  ends: readonly { partition: number; low: string; high: string }[],
): Promise<{ id: string | undefined; partition: number; offset: string }[]> {
  const remaining = new Set(ends.filter((p) => Number(p.high) > Number(p.low)).map((p) => p.partition));
  const records: { id: string | undefined; partition: number; offset: string }[] = [];
  const reader = kafka.consumer({ groupId: `busbar-faults-read-${randomUUID()}`, maxWaitTimeInMs: 100 });
  await reader.connect();
  try {
    await reader.subscribe({ topic, fromBeginning: true });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`reading ${topic} took over 20 s`)), 20_000);
      if (remaining.size === 0) {
        clearTimeout(timer);
        resolve();
        return;
      }
      void reader.run({
        eachMessage: async ({ partition, message }) => {
          records.push({ id: message.headers?.ce_id?.toString(), partition, offset: message.offset });
          const high = Number(ends.find((p) => p.partition === partition)?.high ?? 0);
          if (Number(message.offset) + 1 >= high) remaining.delete(partition);
          if (remaining.size === 0) {
            clearTimeout(timer);
            resolve();
          }
        },
      });
    });
  } finally {
    await reader.disconnect().catch(() => {});
  }
  return records;
}
