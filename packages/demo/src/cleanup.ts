/**
 * Deletes what one demo run declared on its broker — every object is named under the run's
 * namespace — so repeated runs leave nothing behind. The broker clients are the ones the transport
 * packages already bring; each is imported only for its own broker.
 */
import type { BusbarEnv, Transport } from '@busbar/core';

/** What was deleted, for the closing line (e.g. `7 queues and 1 exchange`). */
export type Deleted = string;

/** Deletes the broker objects of `namespace` that `transport` (already closed) declared. */
export async function deleteDemoObjects(env: BusbarEnv, transport: Transport, namespace: string): Promise<Deleted> {
  switch (env.transport) {
    case 'memory':
      return 'nothing (in-memory: gone with the process)';
    case 'rabbitmq':
      return deleteRabbit(
        env.rabbitmqUrl,
        transport as Transport & { declaredObjects(): { queues: readonly string[]; exchanges: readonly string[] } },
      );
    case 'kafka':
      return deleteKafka(env.kafkaBrokers, `${namespace}.`);
    case 'redis-streams':
      return deleteRedis(env.redisUrl, namespace);
  }
}

const plural = (n: number, one: string) => `${n} ${one}${n === 1 ? '' : 's'}`;

async function deleteRabbit(
  url: string,
  transport: { declaredObjects(): { queues: readonly string[]; exchanges: readonly string[] } },
): Promise<Deleted> {
  const { queues, exchanges } = transport.declaredObjects();
  const { connect } = await import('amqplib');
  const conn = await connect(url);
  try {
    const ch = await conn.createChannel();
    for (const q of queues) await ch.deleteQueue(q);
    for (const e of exchanges) await ch.deleteExchange(e);
    await ch.close();
  } finally {
    await conn.close().catch(() => {});
  }
  return `${plural(queues.length, 'queue')} and ${plural(exchanges.length, 'exchange')} on RabbitMQ`;
}

async function deleteKafka(brokers: readonly string[], prefix: string): Promise<Deleted> {
  const { Kafka, logLevel } = (await import('kafkajs')).default;
  const admin = new Kafka({ clientId: 'busbar-demo-cleanup', brokers: [...brokers], logLevel: logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    const groups = (await admin.listGroups()).groups.map((g) => g.groupId).filter((g) => g.startsWith(prefix));
    if (groups.length > 0) await admin.deleteGroups(groups);
    const topics = (await admin.listTopics()).filter((t) => t.startsWith(prefix));
    if (topics.length > 0) await admin.deleteTopics({ topics });
    return `${plural(topics.length, 'topic')} and ${plural(groups.length, 'consumer group')} on Kafka`;
  } finally {
    await admin.disconnect();
  }
}

async function deleteRedis(url: string, namespace: string): Promise<Deleted> {
  const { Redis } = await import('ioredis');
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 2 });
  await redis.connect();
  let deleted = 0;
  try {
    // The transport's keys are `busbar:{<topic>}…` (its default keyPrefix), topics `<namespace>.<type>`.
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `busbar:{${namespace}.*`, 'COUNT', 500);
      cursor = next;
      if (keys.length > 0) deleted += await redis.unlink(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
  return `${plural(deleted, 'key')} (streams, retry and dead-letter keys) on Redis`;
}
