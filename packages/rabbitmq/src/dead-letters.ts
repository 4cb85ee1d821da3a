/**
 * Reading dead letters back (`processDeadLetters`): a walk over the group's dead-letter queue with
 * `basic.get`, selected ones replayed into the group queue, the others given back.
 */
import { DEAD_LETTER_HEADERS, type DeadLetterScan, type DeadLetterTarget, Headers, type StoredDeadLetter } from '@busbar/core';
import type { Channel, Message } from 'amqplib';
import type { GroupNames } from './topology.js';
import { deliveryCount, fromAmqp, headerAttempt } from './wire.js';

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
      const stored: StoredDeadLetter = {
        handle: `${names.dlq}#${n}`,
        headers: deadLetterHeaders(msg, names, target),
        body: new Uint8Array(msg.content),
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
    await ch.close().catch(() => {});
  }
  return selected;
}

/** Headers of a stored dead letter; synthesizes core's metadata for ones the broker dead-lettered. */
function deadLetterHeaders(msg: Message, names: GroupNames, target: DeadLetterTarget): Record<string, string> {
  const headers = fromAmqp(msg.properties.headers, msg.properties.contentType);
  if (headers[Headers.deadLetterReason] !== undefined) return headers;
  // Moved here by RabbitMQ itself (x-delivery-limit): the consumer crashed or lost its connection
  // with this message too many times.
  const raw = msg.properties.headers ?? {};
  const reason = String(raw['x-first-death-reason'] ?? raw['x-last-death-reason'] ?? 'unknown');
  const now = new Date().toISOString();
  const synthesized: Record<string, string> = {
    [Headers.deadLetterReason]: 'max-attempts',
    [Headers.deadLetterError]: `RabbitMQ dead-lettered the message from ${names.queue} (${reason}): it was redelivered too often without being settled`,
    [Headers.deadLetterFirstFailure]: now,
    [Headers.deadLetterLastFailure]: now,
    [Headers.deadLetterAttempts]: String(headerAttempt(headers) + deliveryCount(raw)),
    [Headers.deadLetterOrigin]: target.topic,
    [Headers.deadLetterPosition]: names.queue,
    [Headers.deadLetterGroup]: target.group,
  };
  for (const k of DEAD_LETTER_HEADERS) if (synthesized[k] !== undefined) headers[k] = synthesized[k] as string;
  return headers;
}
