/**
 * The requests behind the `@platformatic/kafka` group consumer's own fetch loop
 * (`client-platformatic-consumer.ts`): starting positions, one fetch per leader into the
 * partitions' buffers, the out-of-range reset, and `OffsetCommit` with metadata. Functions over
 * the library's consumer; they keep no state of their own.
 * @internal
 */
import { type ClusterMetadata, type ConnectionPool, type Consumer, type KafkaRecord, kGetApi, kGetConnection } from '@platformatic/kafka';
import type { IncomingRecord } from './client.js';
import { hasApiId } from './client-platformatic-base.js';

/** The library consumer, raw bytes in and out. */
export type RawConsumer = Consumer<Buffer, Buffer, Buffer, Buffer>;

/** Fetch state of one assigned partition in one generation. */
export interface PartitionState {
  readonly topic: string;
  readonly partition: number;
  readonly fromBeginning: boolean;
  /** Next offset to fetch; undefined until loaded from the committed offsets. */
  position: bigint | undefined;
  /** Records fetched and not yet resolved (handed again in the next batch). */
  buffer: IncomingRecord[];
  paused: boolean;
}

const EMPTY = Buffer.alloc(0);

function headersOf(raw: readonly (readonly [Buffer | null, Buffer | null])[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of raw) {
    if (k === null) continue;
    out[k.toString('utf8')] = v === null ? '' : v.toString('utf8');
  }
  return out;
}

function toIncoming(offset: bigint, r: KafkaRecord): IncomingRecord {
  return {
    offset: offset.toString(),
    key: r.key === null ? undefined : r.key.toString('utf8'),
    value: r.value ?? EMPTY,
    headers: headersOf(r.headers),
  };
}

/** Positions from the committed offsets; without one, the topic's start or end. */
export async function loadPositions(consumer: RawConsumer, unknown: readonly PartitionState[]): Promise<void> {
  const byTopic = new Map<string, PartitionState[]>();
  for (const p of unknown) byTopic.set(p.topic, [...(byTopic.get(p.topic) ?? []), p]);
  const committed = await consumer.listCommittedOffsets({
    topics: [...byTopic].map(([topic, ps]) => ({ topic, partitions: ps.map((p) => p.partition) })),
  });
  const missing: PartitionState[] = [];
  for (const p of unknown) {
    const offset = committed.get(p.topic)?.[p.partition];
    if (offset !== undefined && offset >= 0n) p.position = offset;
    else missing.push(p);
  }
  for (const fromBeginning of [true, false]) {
    const ps = missing.filter((p) => p.fromBeginning === fromBeginning);
    if (ps.length === 0) continue;
    const partitions: Record<string, number[]> = {};
    for (const p of ps) partitions[p.topic] = [...(partitions[p.topic] ?? []), p.partition];
    const offsets = await consumer.listOffsets({
      topics: Object.keys(partitions),
      partitions,
      timestamp: fromBeginning ? -2n : -1n,
    });
    for (const p of ps) {
      const offset = offsets.get(p.topic)?.[p.partition];
      if (offset === undefined || offset < 0n)
        throw new Error(`no ${fromBeginning ? 'start' : 'end'} offset for ${p.topic}/${p.partition}`);
      p.position = offset;
    }
  }
}

/** One fetch per leader for `parts` (long-polling up to `maxWaitTime` ms); records land in their buffers while `isCurrent()`. */
export async function fetchInto(
  c: RawConsumer,
  pool: ConnectionPool,
  parts: readonly PartitionState[],
  maxWaitTime: number,
  isCurrent: () => boolean,
): Promise<void> {
  const topics = [...new Set(parts.map((p) => p.topic))];
  const metadata: ClusterMetadata = await c.metadata({ topics });
  const byNode = new Map<number, PartitionState[]>();
  for (const p of parts) {
    const leader = metadata.topics.get(p.topic)?.partitions[p.partition]?.leader;
    if (leader === undefined || leader < 0) throw new Error(`no leader for ${p.topic}/${p.partition}`);
    byNode.set(leader, [...(byNode.get(leader) ?? []), p]);
  }
  await Promise.all(
    [...byNode].map(async ([node, ps]) => {
      const requested = new Map<string, PartitionState>();
      const byTopic = new Map<string, PartitionState[]>();
      for (const p of ps) {
        const id = metadata.topics.get(p.topic)?.id as string;
        requested.set(`${id}\0${p.partition}`, p);
        byTopic.set(id, [...(byTopic.get(id) ?? []), p]);
      }
      let response: Awaited<ReturnType<RawConsumer['fetch']>>;
      try {
        response = await c.fetch({
          node,
          maxWaitTime,
          connectionPool: pool,
          topics: [...byTopic].map(([topicId, tps]) => ({
            topicId,
            partitions: tps.map((p) => ({
              partition: p.partition,
              fetchOffset: p.position as bigint,
              currentLeaderEpoch: -1,
              lastFetchedEpoch: -1,
              partitionMaxBytes: 1_048_576,
            })),
          })),
        });
      } catch (error) {
        if (isCurrent() && outOfRange(error, requested)) return;
        throw error;
      }
      if (!isCurrent()) return;
      for (const t of response.responses) {
        for (const pr of t.partitions) {
          const p = requested.get(`${t.topicId}\0${pr.partitionIndex}`);
          if (!p || p.position === undefined || !pr.records) continue;
          const from = p.position;
          let next = from;
          for (const batch of pr.records) {
            const last = batch.firstOffset + BigInt(batch.lastOffsetDelta);
            if (last + 1n > next) next = last + 1n;
            if (batch.attributes & 0x20) continue; // control batch
            for (const r of batch.records) {
              const offset = batch.firstOffset + BigInt(r.offsetDelta);
              if (offset >= from) p.buffer.push(toIncoming(offset, r));
            }
          }
          // Only control records: step over them.
          if (p.buffer.length === 0) p.position = next;
        }
      }
    }),
  );
}

/** OFFSET_OUT_OF_RANGE: reset those partitions to their start (or end); true when handled. */
function outOfRange(error: unknown, requested: ReadonlyMap<string, PartitionState>): boolean {
  if (!hasApiId(error, 'OFFSET_OUT_OF_RANGE')) return false;
  const response = (
    error as {
      response?: {
        responses?: {
          topicId: string;
          partitions: { partitionIndex: number; errorCode: number; logStartOffset: bigint; highWatermark: bigint }[];
        }[];
      };
    }
  ).response;
  if (!response?.responses) return false;
  let handled = false;
  for (const t of response.responses)
    for (const pr of t.partitions) {
      if (pr.errorCode !== 1) continue;
      const p = requested.get(`${t.topicId}\0${pr.partitionIndex}`);
      if (!p) continue;
      const reset = p.fromBeginning ? pr.logStartOffset : pr.highWatermark;
      if (reset < 0n) return false;
      p.position = reset;
      p.buffer = [];
      handled = true;
    }
  return handled;
}

/** `OffsetCommit` with metadata, on the library's connection to the coordinator. */
export function offsetCommit(
  c: RawConsumer,
  broker: unknown,
  groupId: string,
  generationId: number,
  memberId: string,
  topics: unknown[],
): Promise<void> {
  type Cb<T> = (error: Error | null, value?: T) => void;
  const internal = c as unknown as {
    [kGetConnection](broker: unknown, cb: Cb<unknown>): void;
    [kGetApi](name: string, cb: Cb<(...args: unknown[]) => void>): void;
  };
  return new Promise((resolve, reject) => {
    internal[kGetConnection](broker, (error, connection) => {
      if (error) return reject(error);
      internal[kGetApi]('OffsetCommit', (error2, api) => {
        if (error2 || !api) return reject(error2 ?? new Error('OffsetCommit unsupported'));
        api(connection, groupId, generationId, memberId, null, topics, (error3: Error | null) => (error3 ? reject(error3) : resolve()));
      });
    });
  });
}
