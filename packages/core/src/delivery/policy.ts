/**
 * The decisions of a delivery's life, as pure functions of what core knows (no transport, no
 * clock, no I/O): what an idempotency claim means for the delivery, what a handler's failure asks
 * for, and whether a failed attempt is retried (after which delay) or dead-lettered (with which
 * reason). The subscription (delivery/subscription.ts) carries them out.
 */
import type { DeadLetterReason } from '../envelope.js';
import { DeadLetterRequestedError, describeError, NonRetryableError, RetryLaterError } from '../errors.js';
import type { ClaimResult } from '../idempotency.js';
import { type BackoffOptions, backoffDelay, type RandomSource } from '../resilience.js';
import { MAX_DEAD_LETTER_ERROR, truncate } from './copy-headers.js';

/** What a failed attempt asks for. */
export type Failure =
  /** Go to the dead letters now (the handler asked, or retrying cannot help, or the message is unreadable). */
  | { readonly kind: 'dead-letter'; readonly reason: DeadLetterReason }
  /** Try again: after `delayMs` when given, else after the policy's backoff; `detail` describes the failure. */
  | { readonly kind: 'retry'; readonly detail: string; readonly delayMs: number | undefined };

/**
 * What a handler's failure asks for: `DeadLetterRequestedError` (`ctx.deadLetter`) → dead letter
 * `handler-requested`; `NonRetryableError` → dead letter `non-retryable`; `RetryLaterError`
 * (`ctx.retry`) → retry after its delay; anything else → retry after the backoff.
 */
export function classifyFailure(error: unknown): Failure {
  if (error instanceof DeadLetterRequestedError) {
    return { kind: 'dead-letter', reason: { kind: 'handler-requested', detail: truncate(error.reason, MAX_DEAD_LETTER_ERROR) } };
  }
  if (error instanceof NonRetryableError) return { kind: 'dead-letter', reason: { kind: 'non-retryable', detail: describeError(error) } };
  if (error instanceof RetryLaterError) return { kind: 'retry', detail: `Error: ${error.message}`, delayMs: error.delayMs };
  return { kind: 'retry', detail: describeError(error), delayMs: undefined };
}

/** The retry policy of a subscription, resolved. */
export interface RetrySettings {
  /** Total attempts, the first included. */
  readonly maxAttempts: number;
  /** Backoff between attempts. */
  readonly backoff: BackoffOptions;
  /** Longest delay the transport can hold (`capabilities.maxRetryDelayMs`). */
  readonly maxRetryDelayMs: number;
  /** Jitter source. */
  readonly random: RandomSource;
}

/** What to do with a failed attempt. */
export type Decision =
  | { readonly action: 'retry'; readonly delayMs: number; readonly detail: string }
  | { readonly action: 'dead-letter'; readonly reason: DeadLetterReason };

/**
 * Retry or dead-letter attempt `attempt` after `failure`: a dead-letter failure stays one; a retry
 * past the last attempt becomes `max-attempts`; otherwise a retry after the requested delay or the
 * backoff for this attempt, capped to what the transport can hold and never negative.
 */
export function decide(failure: Failure, attempt: number, settings: RetrySettings): Decision {
  if (failure.kind === 'dead-letter') return { action: 'dead-letter', reason: failure.reason };
  if (attempt >= settings.maxAttempts) {
    return { action: 'dead-letter', reason: { kind: 'max-attempts', detail: `${attempt} attempts failed; last: ${failure.detail}` } };
  }
  const wanted = failure.delayMs ?? backoffDelay(attempt, settings.backoff, settings.random);
  return { action: 'retry', delayMs: Math.min(settings.maxRetryDelayMs, Math.max(0, wanted)), detail: failure.detail };
}

/** What an idempotency claim means for a delivery. */
export type ClaimDecision =
  /** Run the handler holding the claim's `token`. */
  | { readonly action: 'run'; readonly token: string }
  /** The key completed for this group: acknowledge without running the handler. */
  | { readonly action: 'duplicate' }
  /** Another delivery holds the key: a failed attempt, to retry later. */
  | { readonly action: 'retry'; readonly failure: Failure; readonly error: Error };

/** See {@link ClaimDecision}. */
export function claimDecision(claim: ClaimResult, key: string): ClaimDecision {
  switch (claim.status) {
    case 'acquired':
      return { action: 'run', token: claim.token };
    case 'completed':
      return { action: 'duplicate' };
    default: {
      const error = new Error(`idempotency key ${key} is being handled elsewhere`);
      return { action: 'retry', failure: classifyFailure(error), error };
    }
  }
}
