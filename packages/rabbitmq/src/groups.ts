/**
 * `describeGroups`: the depths of a group's queues, read with passive declarations
 * (`queue.declare passive`, amqplib's `checkQueue`) on a channel of its own — nothing is consumed,
 * declared or acknowledged.
 *
 * Limits of AMQP 0-9-1 (what the management HTTP API would add, this transport does not use):
 * - it cannot list queues or bindings, so the groups described are the ones this transport
 *   subscribed to on the topic, or the ones the caller names; a group whose queue does not exist
 *   is left out;
 * - `queue.declare-ok` counts only the messages ready for delivery, so `inFlight` (delivered, not
 *   acknowledged) is absent.
 *
 * For each group: `backlog` = ready messages in the group queue; `retrying` = messages in its delay
 * queues (every configured tier; a tier never used has no queue and counts 0); `deadLetters` =
 * messages in its dead-letter queue (a dead letter a `processDeadLetters` walk holds at that moment
 * is not counted).
 */
import type { GroupDescription } from '@busbar/core/transport';
import type { Channel } from 'amqplib';
import { closeChannel } from './connection.js';
import type { GroupNames } from './topology.js';

/** What `describeGroups` needs from the rest of the transport. */
export interface GroupInspector {
  /** A new channel on the live connection. */
  channel(): Promise<Channel>;
  /** The group's names, checked. */
  groupNamesOf(topic: string, group: string): GroupNames;
  /** The configured delay tiers (ms). */
  readonly delayTiersMs: readonly number[];
}

function isNotFound(error: unknown): boolean {
  return (error as { code?: unknown } | undefined)?.code === 404;
}

/**
 * Ready-message counts of queues through passive declarations. A missing queue (404) closes the
 * channel it was asked on; the next question opens a new one.
 */
class Depths {
  private ch: Channel | undefined;

  constructor(private readonly open: () => Promise<Channel>) {}

  /** Ready messages in `queue`, `undefined` when it does not exist. */
  async of(queue: string): Promise<number | undefined> {
    this.ch ??= await this.open();
    const ch = this.ch;
    try {
      return (await ch.checkQueue(queue)).messageCount;
    } catch (error) {
      if (!isNotFound(error)) throw error;
      if (this.ch === ch) this.ch = undefined;
      await closeChannel(ch);
      return undefined;
    }
  }

  async close(): Promise<void> {
    const ch = this.ch;
    this.ch = undefined;
    if (ch) await closeChannel(ch);
  }
}

/** @internal Describes `groups` of `topic` (see the module comment). */
export async function describeGroups(inspector: GroupInspector, topic: string, groups: Iterable<string>): Promise<GroupDescription[]> {
  const depths = new Depths(() => inspector.channel());
  const out: GroupDescription[] = [];
  try {
    for (const group of groups) {
      const names = inspector.groupNamesOf(topic, group);
      const backlog = await depths.of(names.queue);
      if (backlog === undefined) continue;
      let retrying = 0;
      for (const tier of inspector.delayTiersMs) retrying += (await depths.of(names.delay(tier))) ?? 0;
      const deadLetters = (await depths.of(names.dlq)) ?? 0;
      out.push({ group, backlog, retrying, deadLetters });
    }
  } finally {
    await depths.close();
  }
  return out;
}
