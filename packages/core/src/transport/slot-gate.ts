/**
 * A gate over a subscription's in-flight deliveries: at most `limit` slots taken at once and, for
 * deliveries ordered by key, at most one holder per key. Transports use it for `concurrency`
 * (`SubscriptionSpec.concurrency`) and for `orderedByKey` (one delivery per key in flight).
 *
 * A key may outlive its slot: a transport that hands the same record over again later (a retry
 * held in place, a release) gives the slot back with {@link SlotGate.releaseSlot} and keeps the
 * key, so later records of the key keep waiting, then gives the key back with
 * {@link SlotGate.releaseKey} (or re-takes a slot for it with `acquire(undefined)`).
 *
 * Waiters are granted in arrival order, except that a waiter whose key is busy is skipped (and
 * stays first in line for that key). Synchronous, single-threaded; no timers.
 */

/** A waiter queued with {@link SlotGate.enqueue}. */
export interface SlotWaiter<K = string> {
  /** The key it needs besides a slot, or `undefined` for a slot only. */
  readonly key: K | undefined;
  /** Called once: `true` when granted (it now holds a slot and its key), `false` when cancelled. */
  done(granted: boolean): void;
}

export class SlotGate<K = string> {
  #inFlight = 0;
  readonly #busy = new Set<K>();
  #waiters: SlotWaiter<K>[] = [];

  /** @param limit - slots available at once (≥ 1). */
  constructor(readonly limit: number) {
    if (!(limit >= 1)) throw new RangeError(`SlotGate limit must be at least 1, got ${limit}`);
  }

  /** Slots taken now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Waiters not granted yet. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Whether `key` is held (by a delivery in flight, or kept past its slot). */
  isBusy(key: K): boolean {
    return this.#busy.has(key);
  }

  /** Takes a slot and (if given) the key — or nothing, returning false, when either is taken. */
  tryAcquire(key?: K): boolean {
    if (this.#inFlight >= this.limit || (key !== undefined && this.#busy.has(key))) return false;
    this.#inFlight++;
    if (key !== undefined) this.#busy.add(key);
    return true;
  }

  /**
   * Resolves `true` once a slot (and the key, if given) is held — at once when free — or `false`
   * when {@link SlotGate.cancelAll} withdrew the wait.
   */
  acquire(key?: K): Promise<boolean> {
    if (this.#waiters.length === 0 && this.tryAcquire(key)) return Promise.resolve(true);
    return new Promise((done) => this.enqueue({ key, done }));
  }

  /** Gives back a slot and (if given) its key. */
  release(key?: K): void {
    this.#inFlight--;
    if (key !== undefined) this.#busy.delete(key);
    this.#pump();
  }

  /** Gives back a slot, keeping its key (the same record is handed over again later). */
  releaseSlot(): void {
    this.#inFlight--;
    this.#pump();
  }

  /** Gives back a key held without a slot (see {@link SlotGate.releaseSlot}). */
  releaseKey(key: K | undefined): void {
    if (key === undefined || !this.#busy.delete(key)) return;
    this.#pump();
  }

  /** Queues `waiter`; it is told `done(true)` once it holds a slot (and its key), `done(false)` on cancel. */
  enqueue(waiter: SlotWaiter<K>): void {
    this.#waiters.push(waiter);
    this.#pump();
  }

  /** Withdraws a waiter not granted yet and tells it `done(false)`; no-op for an unknown one. */
  cancel(waiter: SlotWaiter<K>): void {
    const i = this.#waiters.indexOf(waiter);
    if (i < 0) return;
    this.#waiters.splice(i, 1);
    waiter.done(false);
  }

  /** Withdraws every waiter (`done(false)`), e.g. when the subscription stops. */
  cancelAll(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w.done(false);
  }

  #pump(): void {
    const waiters = this.#waiters;
    for (let i = 0; i < waiters.length && this.#inFlight < this.limit; ) {
      const w = waiters[i] as SlotWaiter<K>;
      if (this.tryAcquire(w.key)) {
        waiters.splice(i, 1);
        w.done(true);
      } else i++;
    }
  }
}
