/**
 * How the transport lays its own data out on Kafka, beside core's `ce_*` headers (which it writes
 * and hands over as core gave them): the due time of a retry copy, the hand-over counts of
 * in-place retries kept in offset-commit metadata, the headers a record is handed over with, and a
 * record's rough size on the wire.
 * @internal
 */
import type { IncomingRecord } from './client.js';

/** Header carrying when a retry copy becomes due (epoch ms); internal to the transport. */
export const RETRY_AT_HEADER = 'ce_busbarretryat';

/**
 * Prefix of the offset-commit metadata that carries, for records an ordered subscription retries in
 * place, the number of each record's next hand-over (its attempt, for a record without an attempt
 * header): `busbar-attempts:<offset>=<n>,…`.
 */
const ATTEMPTS_METADATA = 'busbar-attempts:';
/** Counts kept in one commit's metadata at most (Kafka caps metadata at 4096 bytes by default). */
const MAX_ATTEMPTS_IN_METADATA = 100;

/** `busbar-attempts:<offset>=<n>,…` → map offset → n (unknown or malformed metadata: empty). */
export function parseAttemptsMetadata(metadata: string | undefined): Map<bigint, number> {
  const out = new Map<bigint, number>();
  if (!metadata?.startsWith(ATTEMPTS_METADATA)) return out;
  for (const part of metadata.slice(ATTEMPTS_METADATA.length).split(',')) {
    const m = /^(\d{1,19})=(\d{1,9})$/.exec(part);
    if (m) out.set(BigInt(m[1] as string), Number(m[2]));
  }
  return out;
}

/** The metadata for `attempts` (offset → next hand-over) of the records at or after `from`; undefined when there are none. */
export function formatAttemptsMetadata(attempts: ReadonlyMap<bigint, number>, from: bigint): string | undefined {
  const parts: string[] = [];
  for (const [offset, next] of attempts) {
    if (offset >= from && parts.length < MAX_ATTEMPTS_IN_METADATA) parts.push(`${offset}=${next}`);
  }
  return parts.length > 0 ? `${ATTEMPTS_METADATA}${parts.join(',')}` : undefined;
}

/**
 * The headers a record is handed over with: its own, without the transport's due-time header. A
 * record without one (every record of the event topic) is handed over with its own headers
 * object: nothing writes to a delivery's headers (they are read-only for core, and copies spread
 * them). Otherwise a fresh object, without `delete` (which would turn it into a slow
 * dictionary-mode object).
 */
export function deliveryHeaders(rec: IncomingRecord): Readonly<Record<string, string>> {
  if (rec.headers[RETRY_AT_HEADER] === undefined) return rec.headers;
  const headers: Record<string, string> = {};
  for (const k in rec.headers) if (k !== RETRY_AT_HEADER) headers[k] = rec.headers[k] as string;
  return headers;
}

/** Rough size of a record on the wire, for splitting produce requests. */
export function recordBytes(key: string | undefined, value: Uint8Array, headers: Readonly<Record<string, string>>): number {
  let n = value.byteLength + (key?.length ?? 0) * 3 + 70;
  for (const k in headers) n += k.length + (headers[k] as string).length * 3 + 10;
  return n;
}
