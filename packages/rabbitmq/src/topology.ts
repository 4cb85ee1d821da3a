/**
 * Names and arguments of the broker objects the transport uses (documented in the README).
 *
 * - exchange `<topic>` (durable, type `topic`): where an event is published; routing key = topic;
 * - queue `<topic>:<group>`: the group's queue, bound to the exchange with `#`;
 * - queue `<topic>:<group>:delay:<ms>`: one per retry tier, TTL = tier, dead-letters back into the
 *   group's queue through the default exchange;
 * - queue `<topic>:<group>:dlq`: the group's dead letters.
 *
 * `:` cannot occur in an event type, a namespace or a group, so these names never collide.
 */
import type { ResolvedOptions } from './options.js';

/** Broker object names of one (topic, group). */
export interface GroupNames {
  /** The exchange events of `topic` are published to. */
  readonly exchange: string;
  /** The group's queue. */
  readonly queue: string;
  /** The group's dead-letter queue. */
  readonly dlq: string;
  /** The group's delay queue of one tier. */
  delay(tierMs: number): string;
}

/** Names of the objects of `topic` as consumed by `group`. */
export function groupNames(topic: string, group: string): GroupNames {
  const queue = `${topic}:${group}`;
  return { exchange: topic, queue, dlq: `${queue}:dlq`, delay: (tierMs) => `${queue}:delay:${tierMs}` };
}

/** Binding key of every group queue on its exchange (every routing key). */
export const BINDING_KEY = '#';

/** Exchange type of event exchanges. */
export const EXCHANGE_TYPE = 'topic';

type Args = Record<string, string | number>;

function typeArgs(o: ResolvedOptions): Args {
  return { 'x-queue-type': o.queueType };
}

/** Dead-lettering arguments towards `target` through the default exchange. */
function deadLetterTo(target: string, o: ResolvedOptions): Args {
  const args: Args = { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': target };
  if (o.queueType === 'quorum') {
    // At-least-once dead-lettering: the message leaves the source only once the target confirmed
    // it. RabbitMQ requires `reject-publish` overflow on the source for this strategy.
    args['x-dead-letter-strategy'] = 'at-least-once';
    args['x-overflow'] = 'reject-publish';
  }
  return args;
}

/** Arguments of a group queue. */
export function groupQueueArgs(names: GroupNames, o: ResolvedOptions): Args {
  if (o.deliveryLimit === undefined) return typeArgs(o);
  return { ...typeArgs(o), 'x-delivery-limit': o.deliveryLimit, ...deadLetterTo(names.dlq, o) };
}

/** Arguments of a group's dead-letter queue. */
export function dlqArgs(o: ResolvedOptions): Args {
  return typeArgs(o);
}

/** Arguments of a group's delay queue of one tier. */
export function delayQueueArgs(names: GroupNames, tierMs: number, o: ResolvedOptions): Args {
  return { ...typeArgs(o), 'x-message-ttl': tierMs, ...deadLetterTo(names.queue, o) };
}

/** The smallest tier ≥ `delayMs` (the largest tier when none is). */
export function tierFor(delayMs: number, tiers: readonly number[]): number {
  for (const t of tiers) if (t >= delayMs) return t;
  return tiers[tiers.length - 1] as number;
}
