/**
 * Gathers the items added during one turn of the event loop and hands them to `flush` in one call
 * (one broker command for many acknowledgements, one socket write for many frames). Every `add`
 * of one round gets the same promise, which settles as that round's flush does: one promise per
 * round, not per item.
 *
 * When the round runs is the transport's choice ({@link TickCoalescerOptions.schedule}):
 * - `'immediate'` (default): after the I/O callbacks of this turn (`setImmediate`) — every
 *   delivery of one read that settles synchronously, or after awaiting only resolved promises,
 *   joins the same round.
 * - `'next-tick'`: before any I/O of this turn (`process.nextTick`) — the items added by the
 *   current synchronous run and its microtasks queued before the tick.
 * - `'microtask'`: after the current synchronous run (`queueMicrotask`).
 *
 * A flush that throws rejects its round like one that rejects. Items added while a flush runs join
 * the next round (flushes of different rounds may overlap; serialise inside `flush` if the broker
 * needs it).
 */

/** When a {@link TickCoalescer} round runs. */
export type TickSchedule = 'immediate' | 'next-tick' | 'microtask';

/** Options of {@link TickCoalescer}. */
export interface TickCoalescerOptions {
  /** When the round runs; see {@link TickCoalescer}. @defaultValue 'immediate' */
  readonly schedule?: TickSchedule;
}

const SCHEDULERS: Record<TickSchedule, (run: () => void) => void> = {
  immediate: (run) => setImmediate(run),
  'next-tick': (run) => process.nextTick(run),
  microtask: (run) => queueMicrotask(run),
};

export class TickCoalescer<T> {
  #items: T[] = [];
  #round: { readonly promise: Promise<void>; readonly resolve: () => void; readonly reject: (error: unknown) => void } | undefined;
  readonly #schedule: (run: () => void) => void;

  /** @param flush - called once per round with its items (in the order added), never with none. */
  constructor(
    private readonly flush: (items: T[]) => Promise<void> | void,
    options: TickCoalescerOptions = {},
  ) {
    const schedule = SCHEDULERS[options.schedule ?? 'immediate'];
    if (schedule === undefined) throw new RangeError(`unknown TickCoalescer schedule ${String(options.schedule)}`);
    this.#schedule = schedule;
  }

  /** Items waiting for the next round. */
  get pending(): number {
    return this.#items.length;
  }

  /** Queues `item` for the next round; resolves or rejects with that round's flush. */
  add(item: T): Promise<void> {
    this.#items.push(item);
    if (this.#round === undefined) {
      let resolve!: () => void;
      let reject!: (error: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.#round = { promise, resolve, reject };
      this.#schedule(this.#run);
    }
    return this.#round.promise;
  }

  readonly #run = (): void => {
    const items = this.#items;
    const round = this.#round;
    this.#items = [];
    this.#round = undefined;
    if (round === undefined) return;
    let flushed: Promise<void> | void;
    try {
      flushed = this.flush(items);
    } catch (error) {
      round.reject(error);
      return;
    }
    if (flushed === undefined) round.resolve();
    else flushed.then(round.resolve, round.reject);
  };
}
