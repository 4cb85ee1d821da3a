/**
 * The attempt number of a delivery: core's, computed from what the transport reports (see
 * `Delivery.redeliveries`). Transports never parse or compute attempt numbers.
 */
import { HeaderNames } from '../headers.js';
import type { Delivery } from '../spi.js';

/** The attempt carried in `ce_busbarattempt`: a positive integer, else 1 (absent or invalid). */
export function headerAttempt(headers: Readonly<Record<string, string>>): number {
  const text = headers[HeaderNames.attempt];
  if (text === undefined) return 1;
  const n = Number(text);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

/**
 * The 1-based attempt number of `delivery`: the `ce_busbarattempt` header (1 when absent or
 * invalid) plus the broker's `redeliveries` (counted as 0 when negative or not an integer).
 */
export function attemptOf(delivery: Pick<Delivery, 'headers' | 'redeliveries'>): number {
  const redeliveries = delivery.redeliveries;
  return headerAttempt(delivery.headers) + (Number.isInteger(redeliveries) && redeliveries > 0 ? redeliveries : 0);
}
