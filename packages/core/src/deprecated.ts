/**
 * Transition exports: names that moved to `@busbar/core/transport` (the door for transport
 * authors), still exported from `@busbar/core` until every transport imports them from there.
 * Each is deprecated; this file is deleted once no package imports them from `@busbar/core`.
 */
import * as headers from './headers.js';
import * as naming from './naming.js';
import type * as spi from './spi.js';

/** @deprecated Import from `@busbar/core/transport`. */
export type Delivery = spi.Delivery;
/** @deprecated Import from `@busbar/core/transport`. */
export type DeadLetterScan = spi.DeadLetterScan;
/** @deprecated Import from `@busbar/core/transport`. */
export type DeadLetterTarget = spi.DeadLetterTarget;
/** @deprecated Import from `@busbar/core/transport`. */
export type OutgoingMessage = spi.OutgoingMessage;
/** @deprecated Import from `@busbar/core/transport`. */
export type PublishOutcome = spi.PublishOutcome;
/** @deprecated Import from `@busbar/core/transport`. */
export type StoredDeadLetter = spi.StoredDeadLetter;
/** @deprecated Import from `@busbar/core/transport`. */
export type SubscriptionSpec = spi.SubscriptionSpec;
/** @deprecated Import from `@busbar/core/transport`. */
export type TransportContext = spi.TransportContext;
/** @deprecated Import from `@busbar/core/transport`. */
export type TransportEvent = spi.TransportEvent;
/** @deprecated Import from `@busbar/core/transport`. */
export type TransportSubscription = spi.TransportSubscription;
/** @deprecated Import from `@busbar/core/transport`. */
export const DEAD_LETTER_HEADERS = headers.DEAD_LETTER_HEADERS;
/** @deprecated Import from `@busbar/core/transport`. */
export const checkBrokerName = naming.checkBrokerName;
