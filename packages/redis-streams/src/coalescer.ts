/**
 * @internal Gathers the items added during one turn of the event loop and hands them to `flush` in
 * one call (one command for many acknowledgements), after the I/O callbacks of that turn
 * (`setImmediate`): every delivery of a read that settles synchronously, or after awaiting only
 * resolved promises, joins the same flush. Every `add` of a flush gets the same promise, which
 * settles like that flush (one promise per flush, not per item).
 */
export class Coalescer<T> {
  private items: T[] = [];
  private waiting: { promise: Promise<void>; resolve: () => void; reject: (error: unknown) => void } | undefined;

  constructor(private readonly flush: (items: T[]) => Promise<void>) {}

  /** Queues `item` for the next flush; resolves or rejects with it. */
  add(item: T): Promise<void> {
    this.items.push(item);
    if (this.waiting === undefined) {
      let resolve!: () => void;
      let reject!: (error: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.waiting = { promise, resolve, reject };
      setImmediate(this.run);
    }
    return this.waiting.promise;
  }

  private readonly run = (): void => {
    const items = this.items;
    const waiting = this.waiting;
    this.items = [];
    this.waiting = undefined;
    if (waiting === undefined) return;
    let flushed: Promise<void>;
    try {
      flushed = this.flush(items);
    } catch (error) {
      flushed = Promise.reject(error);
    }
    flushed.then(waiting.resolve, waiting.reject);
  };
}
