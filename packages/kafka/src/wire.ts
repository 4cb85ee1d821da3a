/**
 * How the transport lays its own data out on Kafka, beside core's `ce_*` headers: the due time of
 * a retry copy, the attempt counts of in-place retries kept in offset-commit metadata, the headers
 * a record is handed over with, and a record's rough size on the wire.
 * @internal
 */
import { Headers } from '@busbar/core';
import type { IncomingRecord } from './client.js';

/** Header carrying when a retry copy becomes due (epoch ms); internal to the transport. */
export const RETRY_AT_HEADER = 'ce_busbarretryat';

/** Prefix of the offset-commit metadata that carries attempt counts of ordered subscriptions. */
const ATTEMPTS_METADATA = 'busbar-attempts:';
/** Attempt counts kept in one commit's metadata at most (Kafka caps metadata at 4096 bytes by default). */
const MAX_ATTEMPTS_IN_METADATA = 100;

/** `busbar-attempts:<offset>=<next attempt>,…` → map (unknown or malformed metadata: empty). */
export function parseAttemptsMetadata(metadata: string | undefined): Map<bigint, number> {
  const out = new Map<bigint, number>();
  if (!metadata?.startsWith(ATTEMPTS_METADATA)) return out;
  for (const part of metadata.slice(ATTEMPTS_METADATA.length).split(',')) {
    const m = /^(\d{1,19})=(\d{1,9})$/.exec(part);
    if (m) out.set(BigInt(m[1] as string), Number(m[2]));
  }
  return out;
}

/** The metadata for `attempts` (offset → next attempt) of the records at or after `from`; undefined when there are none. */
export function formatAttemptsMetadata(attempts: ReadonlyMap<bigint, number>, from: bigint): string | undefined {
  const parts: string[] = [];
  for (const [offset, next] of attempts) {
    if (offset >= from && parts.length < MAX_ATTEMPTS_IN_METADATA) parts.push(`${offset}=${next}`);
  }
  return parts.length > 0 ? `${ATTEMPTS_METADATA}${parts.join(',')}` : undefined;
}

/** The attempt a header value names (1 when absent or invalid). */
export function parseAttempt(value: string | undefined): number {
  const n = Number(value);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

/** No extra headers (the common case: a record's first hand-over). */
export const NO_EXTRA: Readonly<Record<string, string>> = Object.freeze({});

/**
 * Headers of one hand-over. A record's first hand-over (attempt 1, nothing to add or strip) uses
 * the record's own headers object: nothing writes to a delivery's headers (they are read-only for
 * core, and copies spread them). Otherwise a fresh object, without `delete` (which would turn it
 * into a slow dictionary-mode object).
 */
export function deliveryHeaders(
  rec: IncomingRecord,
  attempt: number,
  extra: Readonly<Record<string, string>>,
): Readonly<Record<string, string>> {
  const plain = rec.headers[RETRY_AT_HEADER] === undefined;
  if (plain && attempt === 1 && extra === NO_EXTRA) return rec.headers;
  let headers: Record<string, string>;
  if (plain) headers = { ...rec.headers, ...extra };
  else {
    headers = {};
    for (const k in rec.headers) if (k !== RETRY_AT_HEADER) headers[k] = rec.headers[k] as string;
    Object.assign(headers, extra);
  }
  if (attempt > 1 || extra[Headers.attempt] !== undefined) headers[Headers.attempt] = String(attempt);
  return headers;
}

/** Rough size of a record on the wire, for splitting produce requests. */
export function recordBytes(key: string | undefined, value: Uint8Array, headers: Readonly<Record<string, string>>): number {
  let n = value.byteLength + (key?.length ?? 0) * 3 + 70;
  for (const k in headers) n += k.length + (headers[k] as string).length * 3 + 10;
  return n;
}
