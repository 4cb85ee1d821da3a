/**
 * The concurrency gate of one subscription: in-flight deliveries (slots) and busy keys.
 * @internal
 */

/** A delivery (or record) waiting for a concurrency slot and, if it has one, its key. */
export interface GateWaiter {
  readonly key: string | undefined;
  readonly done: (granted: boolean) => void;
}

/**
 * Counts in-flight deliveries (slots) and busy keys. A waiter asks for a slot and, unless it
 * already holds it, its key; waiters are granted in arrival order where they can proceed. No timer
 * per waiter: a waiter ends when it is granted or cancelled.
 */
export class Gate {
  private inFlight = 0;
  private readonly busy = new Set<string>();
  private readonly waiters: GateWaiter[] = [];

  constructor(private readonly limit: number) {}

  /** Takes a slot and (if given) the key, or nothing. */
  tryAcquire(key: string | undefined): boolean {
    if (this.inFlight >= this.limit || (key !== undefined && this.busy.has(key))) return false;
    this.inFlight++;
    if (key !== undefined) this.busy.add(key);
    return true;
  }

  /** Gives back a slot and (if given) the key. */
  release(key: string | undefined): void {
    this.inFlight--;
    if (key !== undefined) this.busy.delete(key);
    if (this.waiters.length > 0) this.pump();
  }

  /** Gives back a key held without a slot. */
  releaseKey(key: string | undefined): void {
    if (key === undefined) return;
    this.busy.delete(key);
    if (this.waiters.length > 0) this.pump();
  }

  /** Queues `waiter`: `done(true)` once it holds a slot (and its key), `done(false)` on cancel. */
  enqueue(waiter: GateWaiter): void {
    this.waiters.push(waiter);
    this.pump();
  }

  /** Withdraws a waiter not granted yet and tells it `done(false)`. */
  cancel(waiter: GateWaiter): void {
    const i = this.waiters.indexOf(waiter);
    if (i < 0) return;
    this.waiters.splice(i, 1);
    waiter.done(false);
  }

  /** Cancels every waiter (`done(false)`). */
  cancelAll(): void {
    for (const w of this.waiters.splice(0)) w.done(false);
  }

  private pump(): void {
    for (let i = 0; i < this.waiters.length && this.inFlight < this.limit; ) {
      const w = this.waiters[i] as GateWaiter;
      if (this.tryAcquire(w.key)) {
        this.waiters.splice(i, 1);
        w.done(true);
      } else i++;
    }
  }
}
