/** Shared pieces of the core unit tests' hand-written transports. */
import type { TransportCapabilities } from '../src/index.js';

/** Capabilities of a minimal in-process test transport (nothing optional supported). */
export const basicCapabilities: TransportCapabilities = {
  durability: 'memory',
  orderedByKey: false,
  newGroupFromEarliest: false,
  balancedAssignment: false,
  leaseExtension: false,
  maxRetryDelayMs: 1000,
  maxNameLength: 255,
  namePattern: /^[\w.-]+$/,
};
