/**
 * The publish path: one core batch becomes one produce request (records grouped by topic), split
 * only above `maxRequestBytes`, with one outcome per message.
 * @internal
 */
import { describeError, type OutgoingMessage, type PublishOutcome, PublishRejectedError } from '@busbar/core/transport';
import type { OutgoingRecord, TopicRecords } from './client.js';
import { abortable } from './connection.js';
import { recordBytes } from './wire.js';

/** What publishing needs from the transport. */
export interface PublishDeps {
  /** Largest estimated size of one produce request, bytes. */
  readonly maxRequestBytes: number;
  /** The checked Kafka topic of a core topic (throws `ConfigError`). */
  kafkaTopic(topic: string): string;
  /** Creates the event topics if missing. */
  ensureEventTopics(names: readonly string[]): Promise<void>;
  /** Sends with the transport's producer (acks = all). */
  send(batches: readonly TopicRecords[], signal: AbortSignal): Promise<void>;
}

/**
 * Publishes `batch`. A message whose topic name Kafka refuses gets its own failed outcome; if a
 * later chunk fails, it and every chunk after it fail (not sent, so a caller's retry cannot
 * reorder a key); if the first one fails, the whole call rejects (nothing was appended).
 */
export async function publishBatch(
  deps: PublishDeps,
  batch: readonly OutgoingMessage[],
  signal: AbortSignal,
): Promise<readonly PublishOutcome[]> {
  const outcomes: PublishOutcome[] = batch.map(() => ({ ok: true }));
  /** Indexes of the messages to send, and their Kafka topics (same order). */
  const valid: number[] = [];
  const topicOf: string[] = [];
  batch.forEach((m, i) => {
    try {
      topicOf.push(deps.kafkaTopic(m.topic));
      valid.push(i);
    } catch (error) {
      outcomes[i] = { ok: false, error: new PublishRejectedError(describeError(error), { cause: error }) };
    }
  });
  if (valid.length === 0) return outcomes;
  await abortable(deps.ensureEventTopics([...new Set(topicOf)]), signal);

  // Chunks of at most maxRequestBytes (Kafka caps one record batch at max.message.bytes), in order;
  // each entry is a position in `valid` / `topicOf`.
  const chunks: number[][] = [];
  let current: number[] = [];
  let bytes = 0;
  for (let v = 0; v < valid.length; v++) {
    const m = batch[valid[v] as number] as OutgoingMessage;
    const size = recordBytes(m.key, m.body, m.headers);
    if (current.length > 0 && bytes + size > deps.maxRequestBytes) {
      chunks.push(current);
      current = [];
      bytes = 0;
    }
    current.push(v);
    bytes += size;
  }
  chunks.push(current);

  for (const [n, chunk] of chunks.entries()) {
    const byTopic = new Map<string, OutgoingRecord[]>();
    for (const v of chunk) {
      const m = batch[valid[v] as number] as OutgoingMessage;
      const topic = topicOf[v] as string;
      let list = byTopic.get(topic);
      if (!list) {
        list = [];
        byTopic.set(topic, list);
      }
      list.push({ key: m.key, value: m.body, headers: m.headers });
    }
    try {
      await deps.send(
        [...byTopic].map(([topic, records]) => ({ topic, records })),
        signal,
      );
    } catch (error) {
      if (n === 0) throw error; // nothing of the batch was appended
      // Later chunks are not sent either, so a caller's retry cannot reorder a key.
      for (const later of chunks.slice(n)) for (const v of later) outcomes[valid[v] as number] = { ok: false, error: error as Error };
      break;
    }
  }
  return outcomes;
}
