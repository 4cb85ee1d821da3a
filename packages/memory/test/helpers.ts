import { type Clock, defineEvent, EventBus, OutcomeSpy, type RetryPolicy } from '@busbar/core';
import { MemoryBroker, MemoryTransport } from '@busbar/memory';
import { afterEach } from 'vitest';
import { z } from 'zod';

/** The event used throughout the tests. */
export const Placed = defineEvent({ type: 'order.placed', schema: z.object({ n: z.number() }) });

const open: EventBus[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((bus) => bus.close({ timeoutMs: 50 })));
});

/** A bus on a memory transport (closed after each test), with an outcome spy. */
export function setup(options: { broker?: MemoryBroker; clock?: Clock; retry?: RetryPolicy } = {}) {
  const transport = new MemoryTransport({ broker: options.broker ?? new MemoryBroker(), clock: options.clock });
  const bus = new EventBus({ transport, retry: options.retry ?? { maxAttempts: 3, backoff: { initialMs: 1, minMs: 1, maxMs: 1 } } });
  open.push(bus);
  return { bus, transport, spy: new OutcomeSpy(bus) };
}

/** A promise with its resolve function exposed. */
export function deferred<T = void>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Collects items and lets a test await the n-th one. */
export function collector<T>() {
  const items: T[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  return {
    items,
    push(item: T) {
      items.push(item);
      for (const w of waiters.filter((w) => items.length >= w.n)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    },
    /** Resolves once at least `n` items were pushed. */
    count(n: number): Promise<T[]> {
      if (items.length >= n) return Promise.resolve(items);
      return new Promise((resolve) => waiters.push({ n, resolve: () => resolve(items) }));
    },
  };
}
