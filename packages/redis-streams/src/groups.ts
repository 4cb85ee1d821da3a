/**
 * `describeGroups`: what Redis can tell about the consumer groups of a topic, read from broker
 * state only (no read, claim or acknowledgement of any entry).
 *
 * The groups are those `XINFO GROUPS` lists on the topic's stream — every group that ever
 * subscribed, from any process. For each:
 * - `backlog`: the `lag` of the group on the shared stream plus its `lag` on the group's retry
 *   stream (due retries and replayed dead letters wait there). Absent when Redis cannot tell:
 *   `lag` needs Redis ≥ 7.0 and is `nil` while deleted entries (`XDEL`) lie beyond the group's
 *   last-delivered id, or after the group's position was set by hand (`XGROUP SETID` without
 *   `ENTRIESREAD`).
 * - `inFlight`: the group's pending entries (handed out, not acknowledged) on both streams.
 * - `retrying`: the size of the group's delayed set (`ZCARD`): retries waiting for their due time.
 * - `deadLetters`: the length of the group's dead-letter stream (`XLEN`).
 */
import type { GroupDescription } from '@busbar/core/transport';
import type { Redis } from 'ioredis';
import { groupKeys, streamKey } from './topology.js';

/** One entry of `XINFO GROUPS`. */
interface GroupInfo {
  readonly name: string;
  readonly pending: number;
  /** `undefined` when Redis cannot tell (or is older than 7.0). */
  readonly lag: number | undefined;
}

/** `XINFO GROUPS` of `key`, or `[]` when the stream does not exist. */
async function groupsOf(client: Redis, key: string): Promise<GroupInfo[]> {
  let reply: unknown;
  try {
    reply = await client.call('XINFO', 'GROUPS', key);
  } catch (error) {
    if (error instanceof Error && /no such key/i.test(error.message)) return [];
    throw error;
  }
  return (reply as unknown[][]).map(parseGroup);
}

/** A flat `[field, value, …]` reply of one group. */
function parseGroup(flat: unknown[]): GroupInfo {
  const fields = new Map<string, unknown>();
  for (let i = 0; i + 1 < flat.length; i += 2) fields.set(String(flat[i]), flat[i + 1]);
  const lag = fields.get('lag');
  return {
    name: String(fields.get('name')),
    pending: Number(fields.get('pending') ?? 0),
    lag: lag === null || lag === undefined ? undefined : Number(lag),
  };
}

/** @internal Describes the groups of `topic` (see the module comment). */
export async function describeGroups(client: Redis, prefix: string, topic: string): Promise<GroupDescription[]> {
  const groups = await groupsOf(client, streamKey(prefix, topic));
  return Promise.all(
    groups.map(async (g): Promise<GroupDescription> => {
      const keys = groupKeys(prefix, topic, g.name);
      const [retryGroups, retrying, deadLetters] = await Promise.all([
        groupsOf(client, keys.retry),
        client.zcard(keys.delayed),
        client.xlen(keys.dlq),
      ]);
      const onRetry = retryGroups.find((r) => r.name === g.name);
      const retryLag = onRetry === undefined ? 0 : onRetry.lag;
      const backlog = g.lag === undefined || retryLag === undefined ? undefined : g.lag + retryLag;
      const inFlight = g.pending + (onRetry?.pending ?? 0);
      return backlog === undefined
        ? { group: g.name, inFlight, retrying, deadLetters }
        : { group: g.name, backlog, inFlight, retrying, deadLetters };
    }),
  );
}
