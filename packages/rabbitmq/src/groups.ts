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
 * Ready messages in `queue` through a passive declaration on a channel of its own (a missing
 * queue, 404, closes the channel it was asked on); `undefined` when the queue does not exist.
 */
async function depthOf(inspector: GroupInspector, queue: string): Promise<number | undefined> {
  const ch = await inspector.channel();
  try {
    return (await ch.checkQueue(queue)).messageCount;
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw error;
  } finally {
    await closeChannel(ch);
  }
}

/**
 * @internal Describes `groups` of `topic` (see the module comment): one group after the other, the
 * queues of a group at once (2 + the number of delay tiers short-lived channels).
 */
export async function describeGroups(inspector: GroupInspector, topic: string, groups: Iterable<string>): Promise<GroupDescription[]> {
  const out: GroupDescription[] = [];
  for (const group of groups) {
    const names = inspector.groupNamesOf(topic, group);
    const [backlog, deadLetters, ...delayed] = await Promise.all(
      [names.queue, names.dlq, ...inspector.delayTiersMs.map((tier) => names.delay(tier))].map((q) => depthOf(inspector, q)),
    );
    if (backlog === undefined) continue;
    const retrying = delayed.reduce<number>((sum, d) => sum + (d ?? 0), 0);
    out.push({ group, backlog, retrying, deadLetters: deadLetters ?? 0 });
  }
  return out;
}
