/**
 * The transport's Kafka objects: names (checked against Kafka's limits), topic creation, and the
 * starting offsets of a new consumer group.
 * @internal
 */
import { checkBrokerName, type Logger, type TransportCapabilities } from '@busbar/core/transport';
import type { KafkaClient, TopicPartitionOffset, TopicSpec } from './client.js';
import type { ResolvedOptions } from './options.js';
import type { SubscriptionNames } from './subscription.js';

/** Checked Kafka topic names kept per core topic at most (one per event type in practice). */
const MAX_TOPIC_NAMES = 1000;

/** Every broker object name of one subscription group. */
export interface GroupNames extends SubscriptionNames {
  readonly replayGroupId: string;
}

/** What the topology needs from the connection. */
export interface TopologyDeps {
  readonly options: ResolvedOptions;
  readonly capabilities: TransportCapabilities;
  /** The connected client (throws before `connect`). */
  client(): KafkaClient;
  /** Maps a client error to a Busbar error. */
  mapError(error: unknown, what: string): Error;
  logger(): Logger;
}

/** Names and creates topics; fixes where a new group starts. */
export class KafkaTopology {
  private readonly topics = new Map<string, Promise<void>>();
  /** Core topic → its checked Kafka topic name (`naming.topic` + `checkBrokerName`, once per topic). */
  private readonly topicNames = new Map<string, string>();

  constructor(private readonly deps: TopologyDeps) {}

  /** The Kafka topic of core topic `topic`, checked against Kafka's limits (throws `ConfigError`). */
  kafkaTopic(topic: string): string {
    let name = this.topicNames.get(topic);
    if (name === undefined) {
      name = checkBrokerName(this.deps.options.naming.topic(topic), this.deps.capabilities, 'Kafka topic');
      if (this.topicNames.size >= MAX_TOPIC_NAMES) this.topicNames.clear();
      this.topicNames.set(topic, name);
    }
    return name;
  }

  /** The names of group `group` on core topic `topic` (throws `ConfigError` for a name Kafka refuses). */
  names(topic: string, group: string): GroupNames {
    const n = this.deps.options.naming;
    const caps = this.deps.capabilities;
    return {
      topic: checkBrokerName(n.topic(topic), caps, 'Kafka topic'),
      retryTopic: checkBrokerName(n.retryTopic(topic, group), caps, 'Kafka retry topic'),
      deadLetterTopic: checkBrokerName(n.deadLetterTopic(topic, group), caps, 'Kafka dead-letter topic'),
      groupId: checkBrokerName(n.groupId(topic, group), caps, 'Kafka consumer group'),
      replayGroupId: checkBrokerName(n.replayGroupId(topic, group), caps, 'Kafka replay group'),
    };
  }

  private topicSpec(name: string, partitions: number): TopicSpec {
    const o = this.deps.options;
    return { name, numPartitions: partitions, replicationFactor: o.replicationFactor, config: o.topicConfig };
  }

  /** Creates the event topics `names` if missing. */
  ensureEventTopics(names: readonly string[]): Promise<void> {
    return this.ensureTopics(names.map((n) => this.topicSpec(n, this.deps.options.numPartitions)));
  }

  /** Creates missing topics (each name once per transport, retried after a failure). */
  private async ensureTopics(specs: readonly TopicSpec[]): Promise<void> {
    const client = this.deps.client();
    const missing = specs.filter((s) => !this.topics.has(s.name));
    if (missing.length > 0) {
      const created = client.createTopics(missing);
      for (const s of missing) {
        const p = created.catch((error: unknown) => {
          this.topics.delete(s.name);
          throw this.deps.mapError(error, `creating topic ${s.name}`);
        });
        p.catch(() => {});
        this.topics.set(s.name, p);
      }
    }
    await Promise.all(specs.map((s) => this.topics.get(s.name)));
  }

  /** Creates a group's three topics and fixes where the new group starts. */
  async prepareGroup(names: GroupNames, startFrom: 'latest' | 'earliest'): Promise<void> {
    const o = this.deps.options;
    await this.ensureTopics([
      this.topicSpec(names.topic, o.numPartitions),
      this.topicSpec(names.retryTopic, o.numPartitions),
      this.topicSpec(names.deadLetterTopic, o.deadLetterPartitions),
    ]);
    await this.fixStartingOffsets(names.groupId, [
      { topic: names.topic, from: startFrom },
      { topic: names.retryTopic, from: 'earliest' },
    ]);
  }

  /**
   * Fixes where a new group starts before any member runs: partitions without a committed offset
   * get the current high watermark (`'latest'`) or low watermark (`'earliest'`), committed. kafkajs
   * would otherwise resolve "latest" lazily at its first fetch, after `run()` returned — missing
   * what is published in between — and would not commit it until a message is processed.
   */
  private async fixStartingOffsets(groupId: string, topics: readonly { topic: string; from: 'latest' | 'earliest' }[]): Promise<void> {
    const client = this.deps.client();
    for (let attempt = 1; ; attempt++) {
      const unset: TopicPartitionOffset[] = [];
      for (const { topic, from } of topics) {
        const [committed, watermarks] = await Promise.all([client.committedOffsets(groupId, topic), client.watermarks(topic)]);
        for (const w of watermarks) {
          const c = committed.find((x) => x.partition === w.partition);
          if (c === undefined || BigInt(c.offset) < 0n)
            unset.push({ topic, partition: w.partition, offset: from === 'earliest' ? w.low : w.high });
        }
      }
      if (unset.length === 0) return;
      try {
        await client.initGroupOffsets(groupId, unset);
        return;
      } catch (error) {
        // Another member started the group meanwhile: look again (it has set them) — or give up.
        if (client.classify(error) !== 'group-not-empty') throw error;
        if (attempt >= 3) {
          this.deps.logger().warn({ group: groupId }, 'group has members but no committed offsets; kafkajs resolves its start');
          return;
        }
      }
    }
  }
}
