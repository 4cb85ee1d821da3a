/**
 * Reading dead letters back (`processDeadLetters`): a walk over the group's dead-letter queue with
 * `basic.get`, selected ones replayed into the group queue, the others given back.
 */
import {
  type BrokerDeadLettered,
  type DeadLetterScan,
  type DeadLetterTarget,
  HeaderNames,
  type StoredDeadLetter,
} from '@busbar/core/transport';
import type { Channel, Message } from 'amqplib';
import { closeChannel } from './connection.js';
import type { GroupNames } from './topology.js';
import { fromAmqp } from './wire.js';

/** What the dead-letter walk needs from the rest of the transport. */
export interface DeadLetterStore {
  /** The group's names, checked. */
  groupNamesOf(topic: string, group: string): GroupNames;
  /** Declares the group's exchange and queues. */
  ensureGroup(names: GroupNames): Promise<void>;
  /** A new channel on the live connection. */
  channel(): Promise<Channel>;
  /** Publishes a copy straight into `queue` and waits for its confirm. */
  sendToQueue(queue: string, body: Uint8Array, headers: Readonly<Record<string, string>>): Promise<void>;
  /** `x-delivery-limit` of the group queues (undefined when they have none). */
  readonly deliveryLimit: number | undefined;
}

/**
 * Walks the dead-letter queue of `target` from its head with unacknowledged `basic.get`s until
 * `scan.limit` dead letters were selected or the queue is empty. A selected one (not `dryRun`) is
 * published to the group queue with `scan.select`'s headers (confirmed), then acknowledged; the
 * ones kept are given back (`nack`) at the end of the walk, in the order they were read.
 */
export async function processDeadLetters(
  store: DeadLetterStore,
  target: DeadLetterTarget,
  scan: DeadLetterScan,
): Promise<readonly StoredDeadLetter[]> {
  const names = store.groupNamesOf(target.topic, target.group);
  // Replays go to the group queue, so it must exist (it does once the group has subscribed).
  await store.ensureGroup(names);
  const ch = await store.channel();
  const selected: StoredDeadLetter[] = [];
  const kept: Message[] = [];
  const replays: Promise<void>[] = [];
  let n = 0;
  try {
    while (selected.length < scan.limit) {
      const msg = await ch.get(names.dlq, { noAck: false });
      if (msg === false) break;
      n++;
      const headers = fromAmqp(msg.properties.headers, msg.properties.contentType);
      const broker =
        headers[HeaderNames.deadLetterReason] === undefined ? brokerDeadLettered(msg, names.queue, store.deliveryLimit) : undefined;
      const stored: StoredDeadLetter = {
        handle: `${names.dlq}#${n}`,
        headers,
        body: new Uint8Array(msg.content),
        ...(broker === undefined ? {} : { brokerDeadLettered: broker }),
      };
      const replacement = scan.select(stored);
      if (replacement === undefined || scan.dryRun) {
        kept.push(msg);
        if (replacement !== undefined) selected.push(stored);
        continue;
      }
      selected.push(stored);
      replays.push(
        store.sendToQueue(names.queue, stored.body, replacement).then(
          () => ch.ack(msg),
          (error: unknown) => {
            kept.push(msg);
            throw error;
          },
        ),
      );
    }
    const results = await Promise.allSettled(replays);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  } finally {
    // Kept (and failed) dead letters go back to the queue, in the order they were read.
    kept.sort((a, b) => a.fields.deliveryTag - b.fields.deliveryTag);
    for (const m of kept) {
      try {
        ch.nack(m, false, true);
      } catch {
        // channel already closed: the broker requeues unacknowledged messages itself
      }
    }
    await closeChannel(ch);
  }
  return selected;
}

/** A header value as text (amqplib hands over AMQP `longstr` values as strings or buffers). */
function text(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return undefined;
}

/** An AMQP timestamp (seconds; amqplib decodes it as `{ '!': 'timestamp', value }`) as RFC 3339. */
function timestamp(value: unknown): string | undefined {
  const seconds = typeof value === 'object' && value !== null ? (value as { value?: unknown }).value : value;
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds <= 0) return undefined;
  return new Date(seconds * 1000).toISOString();
}

/**
 * What RabbitMQ recorded about a message it dead-lettered by itself (`x-death`, `x-last-death-*`,
 * `x-first-death-*`), or `undefined` when it has no such record (a dead letter neither core nor
 * RabbitMQ wrote).
 *
 * The death that counts is the one out of the group queue (`delivery_limit`), else the latest
 * (`x-death` lists the latest first). Not `x-first-death-*` alone: a retry copy has already been
 * dead-lettered once before, by its delay queue (`expired`), on its way back into the group queue.
 *
 * RabbitMQ does not carry the delivery count into the dead-letter queue (the message arrives there
 * with a count of its own), so for `delivery_limit` the redeliveries are the group queue's limit:
 * the message was handed out `limit + 1` times, the last time after `limit` redeliveries. Any other
 * cause (a TTL or length limit set by a policy) involved no redelivery.
 */
export function brokerDeadLettered(msg: Message, groupQueue: string, deliveryLimit: number | undefined): BrokerDeadLettered | undefined {
  const raw = msg.properties.headers ?? {};
  const deaths = (Array.isArray(raw['x-death']) ? (raw['x-death'] as unknown[]) : []).filter(
    (d): d is Record<string, unknown> => typeof d === 'object' && d !== null,
  );
  const lastReason = text(raw['x-last-death-reason']) ?? text(raw['x-first-death-reason']);
  if (deaths.length === 0 && lastReason === undefined) return undefined;
  const death = deaths.find((d) => text(d.queue) === groupQueue && text(d.reason) === 'delivery_limit') ?? deaths[0];
  const cause = text(death?.reason) ?? lastReason ?? 'unknown';
  const from = text(death?.queue) ?? text(raw['x-last-death-queue']) ?? text(raw['x-first-death-queue']) ?? 'unknown';
  const at = timestamp(death?.time);
  const redeliveries = cause === 'delivery_limit' ? (deliveryLimit ?? 0) : 0;
  return at === undefined ? { cause, redeliveries, from } : { cause, redeliveries, from, at };
}
