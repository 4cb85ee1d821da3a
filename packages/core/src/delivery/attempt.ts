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
 * invalid) plus the broker's `redeliveries` (0 when absent, negative or not an integer). A
 * transport not migrated yet that sets the deprecated `attempt` and no `redeliveries` is taken at
 * its word.
 */
export function attemptOf(delivery: Pick<Delivery, 'headers' | 'redeliveries' | 'attempt'>): number {
  const redeliveries = delivery.redeliveries;
  if (redeliveries === undefined) {
    const legacy = delivery.attempt;
    if (legacy !== undefined && Number.isInteger(legacy) && legacy >= 1) return legacy;
    return headerAttempt(delivery.headers);
  }
  return headerAttempt(delivery.headers) + (Number.isInteger(redeliveries) && redeliveries > 0 ? redeliveries : 0);
}
