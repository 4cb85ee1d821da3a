/**
 * The dead letters of a group: its dead-letter stream (`<p>:{<topic>}:<group>:dlq`), walked oldest
 * first; each dead letter a scan selects moves atomically to the group's retry stream (`REPLAY`).
 * Dead letters are written by a delivery's settle (`DEAD_LETTER`, see `subscription.ts`).
 */
import type { DeadLetterScan, StoredDeadLetter } from '@busbar/core/transport';
import type { Redis } from 'ioredis';
import { REPLAY } from './scripts.js';
import type { GroupKeys } from './topology.js';
import { decodeFields, encodeFields } from './wire.js';

/** Dead letters read per `XRANGE`. */
const PAGE = 100;

/** @internal Walks the dead letters of `keys` (see the module comment); a dry run moves nothing. */
export async function scanDeadLetters(client: Redis, keys: GroupKeys, scan: DeadLetterScan): Promise<StoredDeadLetter[]> {
  const selected: StoredDeadLetter[] = [];
  let from = '-';
  while (selected.length < scan.limit) {
    const page = (await client.callBuffer('XRANGE', keys.dlq, from, '+', 'COUNT', PAGE)) as [Buffer, Buffer[]][];
    if (page.length === 0) break;
    for (const [idBuf, fields] of page) {
      const handle = idBuf.toString();
      const stored: StoredDeadLetter = { ...decodeFields(fields), handle };
      const headers = scan.select(stored);
      if (headers === undefined) continue;
      selected.push(stored);
      if (!scan.dryRun) {
        await REPLAY.run(client, [keys.dlq, keys.retry], [handle, ...encodeFields(headers, stored.body)]);
      }
      if (selected.length >= scan.limit) break;
    }
    const last = page[page.length - 1]?.[0].toString() as string;
    from = `(${last}`;
  }
  return selected;
}
