/**
 * Dead-letter inspection and replay over a group's dead-letter topic.
 *
 * Progress is the committed offset of a dedicated consumer group (`<topic>.<group>.dlq-replay`):
 * a scan reads from it up to the high watermark taken when the scan starts (never further, so it
 * cannot hang on a busy topic). A non-dry scan then
 * - produces every *selected* dead letter to the group's retry topic (due now, attempt reset by core),
 * - re-appends every *kept* one to the end of the dead-letter topic (so it is listed again next
 *   time, with a new handle), and
 * - commits the position after the last dead letter it looked at.
 * Everything below the committed offset has therefore been replayed or copied forward; nothing
 * kept is skipped. A crash between the produce and the commit replays (or copies) again:
 * at-least-once, like every other path. A dry run reads without producing or committing.
 * @internal
 */
import { type DeadLetterScan, describeError, type Logger, type StoredDeadLetter, TimeoutError } from '@busbar/core/transport';
import type { KafkaClient, OutgoingRecord, TopicRecords } from './client.js';
import type { ResolvedOptions } from './options.js';
import { RETRY_AT_HEADER } from './wire.js';

/** Names a scan works on. */
export interface DeadLetterNames {
  readonly deadLetterTopic: string;
  readonly retryTopic: string;
  readonly replayGroupId: string;
}

/** What a scan needs from the transport. */
export interface DeadLetterDeps {
  readonly client: KafkaClient;
  readonly options: ResolvedOptions;
  readonly logger: Logger;
  /** Appends records durably (acks = all). */
  send(batches: readonly TopicRecords[]): Promise<void>;
}

interface Range {
  readonly partition: number;
  readonly start: bigint;
  readonly end: bigint;
}

/** Walks the dead letters (see the module comment). */
export async function scanDeadLetters(deps: DeadLetterDeps, names: DeadLetterNames, scan: DeadLetterScan): Promise<StoredDeadLetter[]> {
  if (scan.limit <= 0) return [];
  const { client, options } = deps;
  const topics = await client.listTopics();
  if (!topics.includes(names.deadLetterTopic)) return [];
  const [watermarks, committed] = await Promise.all([
    client.watermarks(names.deadLetterTopic),
    client.committedOffsets(names.replayGroupId, names.deadLetterTopic),
  ]);
  const ranges: Range[] = [];
  for (const w of watermarks) {
    const low = BigInt(w.low);
    const c = committed.find((x) => x.partition === w.partition);
    const at = c === undefined ? -1n : BigInt(c.offset);
    const start = at < low ? low : at;
    const end = BigInt(w.high);
    if (start < end) ranges.push({ partition: w.partition, start, end });
  }
  if (ranges.length === 0) return [];

  const remaining = new Map(ranges.map((r) => [r.partition, r]));
  const positions = new Map<number, bigint>();
  const selected: StoredDeadLetter[] = [];
  const replays: OutgoingRecord[] = [];
  const kept: OutgoingRecord[] = [];
  let stopped = false;
  let finish!: () => void;
  let fail!: (e: unknown) => void;
  const finished = new Promise<void>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });

  const consumer = client.createGroupConsumer({
    groupId: names.replayGroupId,
    topics: [{ name: names.deadLetterTopic, fromBeginning: true }],
    partitionsConsumedConcurrently: 1,
    sessionTimeoutMs: options.sessionTimeoutMs,
    heartbeatIntervalMs: options.heartbeatIntervalMs,
    rebalanceTimeoutMs: options.rebalanceTimeoutMs,
    maxWaitTimeMs: options.maxWaitTimeMs,
  });
  const done = () => {
    stopped = true;
    finish();
  };

  let timer: NodeJS.Timeout | undefined;
  try {
    const started = consumer.start({
      onAssignment: () => {},
      onCrash: (error) => deps.logger.warn({ err: describeError(error) }, 'dead-letter reader crashed'),
      onBatch: async (batch) => {
        const range = remaining.get(batch.partition);
        if (stopped || !range) {
          batch.pause();
          return;
        }
        for (const rec of batch.records) {
          const offset = BigInt(rec.offset);
          if (offset < range.start) {
            batch.resolve(rec.offset);
            continue;
          }
          if (selected.length >= scan.limit) return done();
          const stored: StoredDeadLetter = { handle: `${batch.partition}:${rec.offset}`, headers: rec.headers, body: rec.value };
          let replayHeaders: Readonly<Record<string, string>> | undefined;
          try {
            replayHeaders = scan.select(stored);
          } catch (error) {
            stopped = true;
            fail(error);
            return;
          }
          if (replayHeaders) {
            selected.push(stored);
            replays.push({ key: rec.key, value: rec.value, headers: { ...replayHeaders, [RETRY_AT_HEADER]: String(Date.now()) } });
          } else {
            kept.push({ key: rec.key, value: rec.value, headers: rec.headers });
          }
          positions.set(batch.partition, offset + 1n);
          batch.resolve(rec.offset);
          if (offset + 1n >= range.end) {
            remaining.delete(batch.partition);
            batch.pause();
            if (remaining.size === 0) done();
            return;
          }
        }
      },
    });
    const timeoutMs = options.deadLetterScanTimeoutMs;
    await Promise.race([
      started.then(() => finished),
      finished,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(`reading ${names.deadLetterTopic} took longer than ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    stopped = true;
    if (!scan.dryRun && positions.size > 0) {
      const batches: TopicRecords[] = [];
      if (replays.length > 0) batches.push({ topic: names.retryTopic, records: replays });
      if (kept.length > 0) batches.push({ topic: names.deadLetterTopic, records: kept });
      if (batches.length > 0) await deps.send(batches);
      await consumer.commit(
        [...positions].map(([partition, offset]) => ({ topic: names.deadLetterTopic, partition, offset: offset.toString() })),
      );
    }
    return selected;
  } finally {
    stopped = true;
    clearTimeout(timer);
    await consumer.close().catch(() => {});
  }
}
