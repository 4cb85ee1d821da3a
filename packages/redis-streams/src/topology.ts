/**
 * Key names of a topic and its groups (the Redis topology). Every key of one topic carries the
 * topic in a hash tag (`{<topic>}`), so the stream and its per-group side keys hash to one slot on
 * Redis Cluster and one Lua script may touch them together.
 */

/** The keys of one (topic, group). */
export interface GroupKeys {
  /** The event's shared stream: every group reads it. */
  readonly stream: string;
  /** The group's own retry stream: due retries and replayed dead letters, read by this group only. */
  readonly retry: string;
  /** The group's delayed set: retries waiting for their due time (score = due epoch ms). */
  readonly delayed: string;
  /** The group's dead-letter stream. */
  readonly dlq: string;
}

/** Key of the shared stream of `topic`: `<prefix>:{<topic>}`. */
export function streamKey(prefix: string, topic: string): string {
  return `${prefix}:{${topic}}`;
}

/** Keys of one (topic, group): `<prefix>:{<topic>}:<group>:retry|delayed|dlq`. */
export function groupKeys(prefix: string, topic: string, group: string): GroupKeys {
  const stream = streamKey(prefix, topic);
  return {
    stream,
    retry: `${stream}:${group}:retry`,
    delayed: `${stream}:${group}:delayed`,
    dlq: `${stream}:${group}:dlq`,
  };
}
