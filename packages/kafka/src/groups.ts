/**
 * `describeGroups`: the lag of a topic's consumer groups, from broker state only (group list,
 * committed offsets, partition watermarks — no member joins, nothing is fetched or committed).
 *
 * The groups: every consumer group of the cluster whose id is `naming.groupId(topic, <group>)` and
 * that has committed an offset on the event topic (any process; the transport commits a new
 * group's starting offsets before its first member runs), plus the groups this transport
 * subscribed to. With a custom `naming.groupId` that does not embed the group as a plain part of
 * the id, only the latter.
 *
 * For each group:
 * - `backlog`: Σ over the event topic's partitions of high watermark − committed offset (the
 *   committed-offset lag: records handed out but not yet committed count too — the transport
 *   commits only the settled prefix of a partition). Absent when a partition has no committed
 *   offset.
 * - `retrying`: the same lag on the group's retry topic (copies waiting for their due time).
 * - `deadLetters`: records of the group's dead-letter topic not yet walked by `processDeadLetters`
 *   (high watermark − the replay group's committed offset, or − the low watermark).
 * - `inFlight`: absent — Kafka does not know what a member fetched but did not commit.
 * @internal
 */
import type { GroupDescription } from '@busbar/core/transport';
import type { KafkaClient, PartitionWatermarks } from './client.js';
import type { GroupNames } from './topology.js';

/** What `describeGroups` needs from the transport. */
export interface GroupsDeps {
  readonly client: KafkaClient;
  /** `naming.groupId`. */
  groupId(topic: string, group: string): string;
  /** The checked names of a group (throws `ConfigError` for a name Kafka refuses). */
  names(topic: string, group: string): GroupNames;
  /** Groups this transport subscribed to on `topic`. */
  known(topic: string): Iterable<string>;
}

/** A group's lag on one topic: Σ high − max(committed, low); `committed` says on how many partitions it has committed. */
interface Lag {
  readonly total: number;
  readonly committed: number;
  readonly partitions: number;
}

async function lag(client: KafkaClient, groupId: string, topic: string, marks: readonly PartitionWatermarks[]): Promise<Lag> {
  const offsets = await client.committedOffsets(groupId, topic);
  let total = 0n;
  let committed = 0;
  for (const w of marks) {
    const c = offsets.find((x) => x.partition === w.partition);
    const at = c === undefined ? -1n : BigInt(c.offset);
    if (at >= 0n) committed++;
    const low = BigInt(w.low);
    const from = at < low ? low : at;
    const high = BigInt(w.high);
    if (high > from) total += high - from;
  }
  return { total: Number(total), committed, partitions: marks.length };
}

/** The group part of `id` if it is `groupId(topic, <group>)` (see the module comment). */
function groupOf(deps: GroupsDeps, topic: string, id: string): string | undefined {
  const marker = '\u0000';
  const probe = deps.groupId(topic, marker);
  const at = probe.indexOf(marker);
  if (at < 0) return undefined;
  const prefix = probe.slice(0, at);
  const suffix = probe.slice(at + marker.length);
  if (id.length <= prefix.length + suffix.length || !id.startsWith(prefix) || !id.endsWith(suffix)) return undefined;
  const group = id.slice(prefix.length, id.length - suffix.length);
  return deps.groupId(topic, group) === id ? group : undefined;
}

/** Describes the groups of `topic` (Kafka topic `kafkaTopic`); see the module comment. */
export async function describeGroups(deps: GroupsDeps, topic: string, kafkaTopic: string): Promise<GroupDescription[]> {
  const { client } = deps;
  const [ids, topics] = await Promise.all([client.listGroups(), client.listTopics()]);
  if (!topics.includes(kafkaTopic)) return [];
  const known = new Set(deps.known(topic));
  const candidates = new Set(known);
  for (const id of ids) {
    const group = groupOf(deps, topic, id);
    if (group !== undefined) candidates.add(group);
  }
  const existing = new Set(topics);
  const marks = new Map<string, Promise<PartitionWatermarks[]>>();
  const watermarks = (t: string) => {
    const m = marks.get(t) ?? client.watermarks(t);
    marks.set(t, m);
    return m;
  };
  const described = await Promise.all(
    [...candidates].map(async (group): Promise<GroupDescription | undefined> => {
      let names: GroupNames;
      try {
        names = deps.names(topic, group);
      } catch {
        return undefined; // not a name this transport could have made
      }
      const main = await lag(client, names.groupId, names.topic, await watermarks(names.topic));
      // Not a group of this topic unless it committed on it (a replay group, another topic's group).
      if (main.committed === 0 && !known.has(group)) return undefined;
      const [retrying, deadLetters] = await Promise.all([
        existing.has(names.retryTopic) ? lag(client, names.groupId, names.retryTopic, await watermarks(names.retryTopic)) : undefined,
        existing.has(names.deadLetterTopic)
          ? lag(client, names.replayGroupId, names.deadLetterTopic, await watermarks(names.deadLetterTopic))
          : undefined,
      ]);
      const out = { group, retrying: retrying?.total ?? 0, deadLetters: deadLetters?.total ?? 0 };
      return main.committed < main.partitions ? out : { ...out, backlog: main.total };
    }),
  );
  return described.filter((d): d is GroupDescription => d !== undefined);
}
