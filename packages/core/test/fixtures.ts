/** Shared pieces of the core unit tests' hand-written transports. */
import { z } from 'zod';
import { defineEvent, type EventBus, type Transport, type TransportCapabilities } from '../src/index.js';
import { type Delivery, encode, type OutgoingMessage } from '../src/transport/index.js';

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

/** A transport that is connected at once and accepts every publish (nothing is delivered). */
export function connectedTransport(): Transport {
  return {
    name: 'connected',
    endpoint: 'connected',
    capabilities: basicCapabilities,
    async connect() {},
    async publish(batch) {
      return batch.map(() => ({ ok: true as const }));
    },
    async subscribe() {
      return { stop: async () => {}, close: async () => {} };
    },
    async processDeadLetters() {
      return [];
    },
    health: () => ({ state: 'connected', since: 0 }),
    async close() {},
  };
}

/** The event of {@link HandTransport}'s deliveries. */
export const Ping = defineEvent({ type: 'ping', schema: z.object({ n: z.number() }) });

/** A transport whose deliveries the test hands over itself, recording how each was settled. */
export class HandTransport implements Transport {
  readonly name = 'hand';
  readonly capabilities = basicCapabilities;
  onDelivery: ((d: Delivery) => void) | undefined;
  settled: string[] = [];
  published: OutgoingMessage[] = [];
  hold = false;
  async connect() {}
  async publish(batch: readonly OutgoingMessage[], signal: AbortSignal) {
    this.published.push(...batch);
    if (this.hold) {
      await new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
    }
    return batch.map(() => ({ ok: true as const }));
  }
  async subscribe(_spec: unknown, onDelivery: (d: Delivery) => void) {
    this.onDelivery = onDelivery;
    return { stop: async () => {}, close: async () => {} };
  }
  async processDeadLetters() {
    return [];
  }
  health() {
    return { state: 'connected' as const, since: 0 };
  }
  async close() {}
  /** Hands over `data` as a delivery of `Ping`; resolves when core settles it. */
  deliver(bus: EventBus, data: unknown, id = 'm1'): Promise<string> {
    const m = encode(bus, Ping, data as never, { id });
    return new Promise((resolve) => {
      const settle = (how: string) => async () => {
        this.settled.push(how);
        resolve(how);
      };
      this.onDelivery?.({
        headers: m.headers,
        body: m.body,
        redeliveries: 0,
        position: 'p@1',
        ack: settle('ack'),
        retry: settle('retry'),
        deadLetter: settle('dead-letter'),
        release: settle('release'),
      });
    });
  }
}
