/**
 * The complete headers of every copy of a message a transport is asked to write: the retry copy,
 * the dead letter, the released copy and the replayed dead letter. Pure functions of the original
 * headers and the facts core knows; a transport writes the body with exactly these headers.
 *
 * The wire format is fixed: these are the `ce_busbar*` extension headers of `HeaderNames`.
 */
import type { DeadLetterReason } from '../envelope.js';
import { DEAD_LETTER_HEADERS, HeaderNames } from '../headers.js';
import type { BrokerDeadLettered } from '../spi.js';
import { headerAttempt } from './attempt.js';

type HeaderMap = Readonly<Record<string, string>>;

/** Longest error description a dead letter carries (characters; longer ones end in `…`). */
export const MAX_DEAD_LETTER_ERROR = 2000;

/** `s`, cut to `n` characters with a trailing `…` when longer. */
export function truncate(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n)}…` : s;
}

/**
 * Headers of the retry copy of a message that failed: the original headers, the next attempt
 * number, and the time of the first failure (kept from the original when it has one, else
 * `nowMs`: this is the first).
 */
export function retryHeaders(original: HeaderMap, nextAttempt: number, nowMs: number): Record<string, string> {
  const first = original[HeaderNames.firstFailure] ?? String(nowMs);
  return { ...original, [HeaderNames.firstFailure]: first, [HeaderNames.attempt]: String(nextAttempt) };
}

/** Headers of the copy that gives a message back without counting a failure: the original ones with the current attempt. */
export function releaseHeaders(original: HeaderMap, attempt: number): Record<string, string> {
  return { ...original, [HeaderNames.attempt]: String(attempt) };
}

/** What core knows when it dead-letters a delivery. */
export interface DeadLetterFacts {
  /** Why. */
  readonly reason: DeadLetterReason;
  /** Credential-free error description (the reason's detail when empty). */
  readonly error: string;
  /** Attempts made (the attempt number of the delivery being dead-lettered). */
  readonly attempts: number;
  /** The original destination (the namespaced topic). */
  readonly origin: string;
  /** The broker position of the original. */
  readonly position: string;
  /** The consumer group that failed. */
  readonly group: string;
  /** Now, epoch ms (the last failure). */
  readonly nowMs: number;
}

/** The dead-letter metadata headers (`ce_busbardl*`) for `facts`; the first failure is taken from the original's retry header when it has one. */
export function deadLetterMetadata(original: HeaderMap, facts: DeadLetterFacts): Record<string, string> {
  const now = new Date(facts.nowMs).toISOString();
  const first = Number(original[HeaderNames.firstFailure]);
  return {
    [HeaderNames.deadLetterReason]: facts.reason.kind,
    [HeaderNames.deadLetterError]: truncate(facts.error || facts.reason.detail, MAX_DEAD_LETTER_ERROR),
    [HeaderNames.deadLetterFirstFailure]: Number.isFinite(first) && first > 0 ? new Date(first).toISOString() : now,
    [HeaderNames.deadLetterLastFailure]: now,
    [HeaderNames.deadLetterAttempts]: String(facts.attempts),
    [HeaderNames.deadLetterOrigin]: facts.origin,
    [HeaderNames.deadLetterPosition]: facts.position,
    [HeaderNames.deadLetterGroup]: facts.group,
  };
}

/** Headers of the dead letter of a message: the original headers plus {@link deadLetterMetadata}. */
export function deadLetterHeaders(original: HeaderMap, facts: DeadLetterFacts): Record<string, string> {
  return { ...original, ...deadLetterMetadata(original, facts) };
}

/** Headers a dead letter is replayed with: dead-letter metadata and first failure removed, attempt reset to 1, replay count raised. */
export function replayHeaders(headers: HeaderMap): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) {
    if (!DEAD_LETTER_HEADERS.includes(k) && k !== HeaderNames.firstFailure) out[k] = v;
  }
  out[HeaderNames.attempt] = '1';
  out[HeaderNames.replayCount] = String(Number(headers[HeaderNames.replayCount] ?? 0) + 1);
  return out;
}

/**
 * The dead-letter metadata core reports for a message the broker dead-lettered by itself (see
 * `StoredDeadLetter.brokerDeadLettered`): reason `'broker-dead-lettered'`, attempts = the
 * original's attempt header + the broker's redelivery count, first and last failure = when the
 * broker dead-lettered it (`nowMs` when it did not say).
 */
export function brokerDeadLetterMetadata(
  original: HeaderMap,
  facts: BrokerDeadLettered,
  target: { readonly topic: string; readonly group: string },
  transport: string,
  nowMs: number,
): Record<string, string> {
  const at =
    facts.at !== undefined && Number.isFinite(Date.parse(facts.at)) ? new Date(facts.at).toISOString() : new Date(nowMs).toISOString();
  const attempt = headerAttempt(original);
  const redeliveries = Number.isInteger(facts.redeliveries) && facts.redeliveries > 0 ? facts.redeliveries : 0;
  return {
    [HeaderNames.deadLetterReason]: 'broker-dead-lettered',
    [HeaderNames.deadLetterError]: truncate(
      `${transport} dead-lettered the message from ${facts.from} (${facts.cause}): it was redelivered too often without being settled`,
      MAX_DEAD_LETTER_ERROR,
    ),
    [HeaderNames.deadLetterFirstFailure]: at,
    [HeaderNames.deadLetterLastFailure]: at,
    [HeaderNames.deadLetterAttempts]: String(attempt + redeliveries),
    [HeaderNames.deadLetterOrigin]: target.topic,
    [HeaderNames.deadLetterPosition]: facts.from,
    [HeaderNames.deadLetterGroup]: target.group,
  };
}
